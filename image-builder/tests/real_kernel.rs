//! Builds the ramdisk from Debian's real kernel package, twice, and checks the result.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image_builder::{
    build, default_tools, newest_cached_package, BuildOptions, BuildReport, KernelSource, REQUIRED_MODULES,
};
use ferric_init::modindex::ModuleIndex;

/// Upper bound for vmlinuz + compressed initramfs: what we are willing to push over iPXE.
const MAX_RAMDISK_BYTES: u64 = 40_000_000;

fn kernel_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kernel")
}

/// The newest cached linux-image .deb if there is one; otherwise apt downloads it into the cache.
fn kernel_source() -> KernelSource {
    match newest_cached_package(&kernel_cache()).unwrap() {
        Some(deb) => KernelSource::Deb(deb),
        None => KernelSource::Package("linux-image-amd64".to_string()),
    }
}

fn build_into(out_dir: PathBuf, kernel: KernelSource) -> BuildReport {
    let opts = BuildOptions {
        out_dir,
        kernel,
        agent: PathBuf::from("/bin/true"),
        init: PathBuf::from("/bin/busybox"),
        cache_dir: kernel_cache(),
        extra_modules: Vec::new(),
        firmware_dir: PathBuf::from("/lib/firmware"),
        source_date_epoch: 0,
        ca_bundle: None,
        tools: default_tools(),
    };
    build(&opts, &mut |line| eprintln!("{line}")).unwrap()
}

fn cpio_listing(initramfs: &Path) -> Vec<String> {
    let mut list = Command::new("sh");
    list.arg("-c").arg(format!("gzip -dc '{}' | cpio -it --quiet", initramfs.display()));
    let listing = ferric_runner::run("list initramfs", &mut list).unwrap().stdout;
    listing.lines().map(str::to_string).collect()
}

/// Unpacks just the module indices, which is what init's module index reads.
fn extract_module_indices(initramfs: &Path, release: &str, into: &Path) {
    let mut extract = Command::new("sh");
    extract
        .current_dir(into)
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -id --quiet 'lib/modules/{release}/modules.*'", initramfs.display()));
    ferric_runner::run("extract module indices", &mut extract).unwrap();
}

#[test]
fn real_kernel_ramdisk_is_reproducible_complete_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_source();
    let first = build_into(dir.path().join("one"), kernel.clone());
    let second = build_into(dir.path().join("two"), kernel);
    for name in ["vmlinuz", "initramfs", "manifest.json"] {
        let one = fs::read(dir.path().join("one").join(name)).unwrap();
        assert!(one == fs::read(dir.path().join("two").join(name)).unwrap(), "{name} differs between builds");
    }
    if let Some(package) = &first.kernel_package {
        let expected = format!("linux-image-{}_", first.kernel_release);
        assert!(package.starts_with(&expected), "release {} is not that of {package}", first.kernel_release);
    }
    assert_eq!(second.initramfs_bytes, first.initramfs_bytes);

    let listing = cpio_listing(&first.initramfs);
    let has = |wanted: &str| listing.iter().any(|entry| entry == wanted);
    let modules_dir = format!("lib/modules/{}", first.kernel_release);
    for wanted in [
        format!("{modules_dir}/kernel/drivers/net/virtio_net.ko"),
        format!("{modules_dir}/modules.dep"),
        format!("{modules_dir}/modules.alias"),
        format!("{modules_dir}/modules.builtin"),
        format!("{modules_dir}/kernel/drivers/block/virtio_blk.ko"),
        "init".to_string(),
        "usr/bin/ferric-agent".to_string(),
        "dev/console".to_string(),
        "dev/null".to_string(),
        "etc/ferric/build.json".to_string(),
        // What the agent runs to make ext2/3/4 ephemeral file systems.
        "usr/sbin/mke2fs".to_string(),
        "usr/sbin/mkfs.ext2".to_string(),
        "usr/sbin/mkfs.ext3".to_string(),
        "usr/sbin/mkfs.ext4".to_string(),
    ] {
        assert!(has(&wanted), "{wanted} missing from the initramfs");
    }
    let libc = first.libraries.iter().find(|l| l.ends_with("/libc.so.6")).expect("agent /bin/true links libc");
    assert!(has(libc.trim_start_matches('/')), "{libc} missing from the initramfs");
    assert!(first.libraries.iter().any(|l| has(l.trim_start_matches('/')) && l.contains("ld-linux")));
    let libext2fs = first.libraries.iter().find(|l| l.ends_with("/libext2fs.so.2")).expect("mke2fs links libext2fs");
    assert!(has(libext2fs.trim_start_matches('/')), "{libext2fs} missing from the initramfs");

    // Every module file init's index points to for a required module must be in the image.
    let indices = dir.path().join("indices");
    fs::create_dir_all(&indices).unwrap();
    extract_module_indices(&first.initramfs, &first.kernel_release, &indices);
    let index = ModuleIndex::load(&indices, &first.kernel_release).unwrap();
    for name in REQUIRED_MODULES {
        let order = index.load_order(name);
        assert!(index.is_builtin(name) || !order.is_empty(), "init finds no module file for {name}");
        for module in order {
            let path = format!("{modules_dir}/{}", module.path.display());
            assert!(has(&path), "{path} (for {name}) is not in the image");
        }
    }

    let total = first.vmlinuz_bytes + first.initramfs_bytes;
    eprintln!("vmlinuz {} + initramfs {} = {total} bytes", first.vmlinuz_bytes, first.initramfs_bytes);
    assert!(total <= MAX_RAMDISK_BYTES, "ramdisk is {total} bytes, over {MAX_RAMDISK_BYTES}");
}
