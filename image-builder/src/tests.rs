//! `build` end to end on a fake kernel tree (fake ELF modules, one of them xz-compressed; real
//! depmod, ldd and cpio).

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_init::modindex::ModuleIndex;

use super::*;

const RELEASE: &str = "6.1.0-fake";
/// The module the fake tree has xz-compressed (it also declares firmware).
const COMPRESSED_MODULE: &str = "tg3";

/// A tree shaped like an unpacked linux-image package: every required module but efivarfs,
/// which is built in, plus one module nobody asks for. [`COMPRESSED_MODULE`] is `.ko.xz`.
fn fake_kernel_tree(root: &Path) {
    let modules = root.join("lib/modules").join(RELEASE);
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join(format!("boot/vmlinuz-{RELEASE}")), b"not really a kernel").unwrap();
    fs::create_dir_all(modules.join("kernel/drivers/fake")).unwrap();
    let mut order = String::new();
    for name in REQUIRED_MODULES.iter().copied().filter(|&m| m != "efivarfs").chain(["unused"]) {
        let file_name = if name == "nls_iso8859_1" { "nls_iso8859-1" } else { name };
        let modinfo: &[&str] = match name {
            "tg3" => &["license=GPL", "firmware=tigon/tg3.bin", "firmware=tigon/missing.bin"],
            "virtio_net" => &["license=GPL", "alias=virtio:d00000001v*"],
            "unused" => &["license=GPL", "alias=pci:v0000DEADd*"],
            _ => &["license=GPL"],
        };
        let mut relative = format!("kernel/drivers/fake/{file_name}.ko");
        fs::write(modules.join(&relative), elf::fake_module(modinfo)).unwrap();
        if name == COMPRESSED_MODULE {
            ferric_runner::run("compress module", Command::new("xz").arg(modules.join(&relative))).unwrap();
            relative.push_str(".xz");
        }
        order.push_str(&relative);
        order.push('\n');
    }
    fs::write(modules.join("modules.order"), order).unwrap();
    fs::write(modules.join("modules.builtin"), "kernel/fs/efivarfs/efivarfs.ko\n").unwrap();
    fs::write(modules.join("modules.builtin.modinfo"), b"efivarfs.license=GPL\0").unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    firmware: PathBuf,
    base: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fake_kernel_tree(&tree);
    let firmware = dir.path().join("firmware");
    fs::create_dir_all(firmware.join("tigon")).unwrap();
    fs::write(firmware.join("tigon/tg3.bin"), b"tg3 firmware").unwrap();
    Fixture { tree, firmware, base: dir.path().to_path_buf(), _dir: dir }
}

/// Builds with the fixture's tree as the kernel.
fn build_from_tree(
    fixture: &Fixture,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildReport, BuildError> {
    let kernel = kernel::from_tree(&fixture.tree, progress)?;
    build_with_kernel(opts, &kernel, progress)
}

fn options(fixture: &Fixture, out: &str) -> BuildOptions {
    BuildOptions {
        out_dir: fixture.base.join(out),
        // Not used: build_from_tree takes the kernel from the fixture's tree.
        kernel: KernelSource::Host,
        agent: PathBuf::from("/bin/true"),
        init: PathBuf::from("/bin/busybox"),
        cache_dir: fixture.base.join("cache"),
        extra_modules: Vec::new(),
        firmware_dir: fixture.firmware.clone(),
        source_date_epoch: 0,
        ca_bundle: None,
        tools: Vec::new(),
    }
}

fn extract(initramfs: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let archive = into.with_extension("cpio");
    let mut gunzip = Command::new("sh");
    gunzip.arg("-c").arg(format!("gzip -dc '{}' > '{}'", initramfs.display(), archive.display()));
    ferric_runner::run("gunzip initramfs", &mut gunzip).unwrap();
    let mut cpio = Command::new("cpio");
    cpio.args(["-id", "--quiet", "-F"]).arg(&archive).current_dir(into);
    ferric_runner::run("unpack initramfs", &mut cpio).unwrap();
}

#[test]
fn fake_tree_builds_reproducibly_with_the_expected_content() {
    let fixture = fixture();
    let mut lines = Vec::new();
    let first = build_from_tree(&fixture, &options(&fixture, "one"), &mut |line| lines.push(line.to_string())).unwrap();
    let second = build_from_tree(&fixture, &options(&fixture, "two"), &mut |_| {}).unwrap();
    assert!(lines.iter().any(|l| l.contains("depmod")), "{lines:?}");
    for name in ["vmlinuz", "initramfs", "manifest.json"] {
        let one = fs::read(fixture.base.join("one").join(name)).unwrap();
        assert_eq!(one, fs::read(fixture.base.join("two").join(name)).unwrap(), "{name} differs between builds");
    }
    assert_eq!(fs::read(&first.vmlinuz).unwrap(), b"not really a kernel");
    assert_eq!(first.initramfs_bytes, fs::metadata(&second.initramfs).unwrap().len());
    assert_eq!(first.kernel_release, RELEASE);
    assert_eq!(first.modules.len(), REQUIRED_MODULES.len() - 1);
    assert!(!first.modules.contains(&"unused".to_string()));
    assert_eq!(first.builtin_modules, ["efivarfs"]);
    assert_eq!(first.firmware_found, ["tigon/tg3.bin"]);
    assert_eq!(first.firmware_missing, ["tigon/missing.bin"]);
    assert_eq!(first.binaries, ["/init", "/usr/bin/ferric-agent"]);
    assert_eq!(first.tools, [], "no tools asked for");
    assert!(first.libraries.iter().any(|l| l.ends_with("/libc.so.6")), "{:?}", first.libraries);
    assert_eq!(first.content_bytes.firmware, b"tg3 firmware".len() as u64);

    let root = fixture.base.join("unpacked");
    extract(&first.initramfs, &root);
    assert_eq!(fs::read(root.join("init")).unwrap(), fs::read("/bin/busybox").unwrap());
    assert_eq!(fs::read(root.join("usr/bin/ferric-agent")).unwrap(), fs::read("/bin/true").unwrap());
    for library in &first.libraries {
        let stored = fs::read(root.join(library.trim_start_matches('/'))).unwrap();
        assert_eq!(stored, fs::read(library).unwrap(), "{library}");
    }
    let modules = root.join("lib/modules").join(RELEASE);
    let description: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(BUILD_DESCRIPTION_PATH)).unwrap()).unwrap();
    assert!(modules.join("kernel/drivers/fake/nls_iso8859-1.ko").is_file());
    assert!(!modules.join("kernel/drivers/fake/unused.ko").exists());
    let dep = fs::read_to_string(modules.join("modules.dep")).unwrap();
    assert!(dep.lines().any(|l| l == "kernel/drivers/fake/virtio_net.ko:"), "{dep}");
    assert!(!dep.contains("unused"), "{dep}");
    let alias = fs::read_to_string(modules.join("modules.alias")).unwrap();
    assert!(alias.contains("alias virtio:d00000001v* virtio_net"), "{alias}");
    assert!(!alias.contains("unused"), "{alias}");
    assert_eq!(fs::read_to_string(modules.join("modules.builtin")).unwrap(), "kernel/fs/efivarfs/efivarfs.ko\n");
    assert!(!modules.join("modules.builtin.modinfo").exists(), "init does not read it");

    // The xz-compressed module is stored plain, and modules.dep names the plain file.
    let compressed = format!("kernel/drivers/fake/{COMPRESSED_MODULE}.ko");
    let source = fixture.tree.join("lib/modules").join(RELEASE).join(format!("{compressed}.xz"));
    assert!(source.is_file(), "the fixture's module is compressed");
    let plain = fs::read(modules.join(&compressed)).unwrap();
    assert_eq!(elf::modinfo_values(&plain, "firmware").unwrap(), ["tigon/tg3.bin", "tigon/missing.bin"]);
    assert!(!modules.join(format!("{compressed}.xz")).exists());
    assert!(dep.lines().any(|l| l == format!("{compressed}:")), "{dep}");
    assert!(!dep.contains(".xz"), "{dep}");
    let record = description["modules"].as_array().unwrap().iter().find(|m| m["name"] == COMPRESSED_MODULE);
    assert_eq!(record.unwrap()["path"], compressed.as_str());

    assert_every_required_module_resolves(&root);
    assert_eq!(fs::read(root.join("lib/firmware/tigon/tg3.bin")).unwrap(), b"tg3 firmware");
    assert!(fs::metadata(root.join("dev/console")).unwrap().file_type().is_char_device());
    for dir in ["proc", "sys", "run", "tmp", "var"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }

    assert_eq!(description["kernel_release"], RELEASE);
    assert_eq!(description["tools"], serde_json::json!([]));
    assert!(!root.join(TOOLS_DIR).exists());
    assert!(description["ca_bundle"].is_null() && !root.join(CA_BUNDLE_PATH).exists());
    assert_eq!(description["firmware"]["missing"][0], "tigon/missing.bin");
    let init_hash = sha256_hex(&fs::read("/bin/busybox").unwrap());
    assert_eq!(description["binaries"][0]["sha256"], init_hash.as_str());
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(&first.manifest).unwrap()).unwrap();
    assert_eq!(manifest["initramfs"]["sha256"], sha256_hex(&fs::read(&first.initramfs).unwrap()).as_str());
    assert_eq!(manifest["vmlinuz"]["bytes"], first.vmlinuz_bytes);
    assert_eq!(manifest["modules"], description["modules"]);
    let summary = first.summary();
    assert!(summary.starts_with(&format!("kernel          {RELEASE}\n")), "{summary}");
    assert!(summary.contains(&format!("modules         {} included, 1 required ones built in\n", first.modules.len())));
    assert!(summary.ends_with(&format!("manifest        {}\n", first.manifest.display())), "{summary}");
}

/// What init will do with the built tree: its module index must find a file (with
/// dependencies) for every required module, or know that the kernel has it built in.
fn assert_every_required_module_resolves(root: &Path) {
    let index = ModuleIndex::load(root, RELEASE).unwrap();
    for name in REQUIRED_MODULES {
        if index.is_builtin(name) {
            continue;
        }
        let order = index.load_order(name);
        assert!(!order.is_empty(), "init finds no module file for {name}");
        for module in order {
            assert!(index.path_of(module).is_file(), "{} (for {name}) is not in the image", module.path.display());
        }
    }
    assert!(index.is_builtin("efivarfs"));
}

#[test]
fn failed_rename_removes_the_new_files_and_leaves_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("manifest.json"), b"old").unwrap();
    // A non-empty directory where the second file goes makes its rename fail.
    fs::create_dir_all(dir.path().join("initramfs/busy")).unwrap();
    let files: [(&str, &[u8]); 3] = [("vmlinuz", b"new"), ("initramfs", b"new"), ("manifest.json", b"new")];
    let err = write_all_or_nothing(dir.path(), &files).unwrap_err();
    assert!(matches!(&err, BuildError::Io { path, .. } if path.ends_with("initramfs")), "{err}");
    let mut left: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["initramfs"], "vmlinuz removed again, no manifest, no temporary files");

    fs::remove_dir_all(dir.path().join("initramfs")).unwrap();
    let written = write_all_or_nothing(dir.path(), &files).unwrap();
    assert_eq!(written.map(|path| fs::read(path).unwrap()), [b"new".to_vec(), b"new".to_vec(), b"new".to_vec()]);
}

#[test]
fn source_date_epoch_changes_the_initramfs() {
    let fixture = fixture();
    let zero = build_from_tree(&fixture, &options(&fixture, "zero"), &mut |_| {}).unwrap();
    let later_options = BuildOptions { source_date_epoch: 1_700_000_000, ..options(&fixture, "later") };
    let later = build_from_tree(&fixture, &later_options, &mut |_| {}).unwrap();
    assert_ne!(fs::read(zero.initramfs).unwrap(), fs::read(later.initramfs).unwrap());
    assert_eq!(fs::read(zero.vmlinuz).unwrap(), fs::read(later.vmlinuz).unwrap());
}

#[test]
fn missing_module_fails_without_leaving_output() {
    let fixture = fixture();
    let opts = BuildOptions { extra_modules: vec!["no-such-driver".to_string()], ..options(&fixture, "out") };
    let err = build_from_tree(&fixture, &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(&err, BuildError::MissingModule { module } if module == "no_such_driver"), "{err}");
    assert!(!opts.out_dir.exists() || fs::read_dir(&opts.out_dir).unwrap().next().is_none());
}

#[test]
fn extra_modules_are_added_with_their_indices() {
    let fixture = fixture();
    let opts = BuildOptions { extra_modules: vec!["unused".to_string()], ..options(&fixture, "out") };
    let report = build_from_tree(&fixture, &opts, &mut |_| {}).unwrap();
    assert!(report.modules.contains(&"unused".to_string()));
    let root = fixture.base.join("unpacked");
    extract(&report.initramfs, &root);
    let alias = fs::read_to_string(root.join("lib/modules").join(RELEASE).join("modules.alias")).unwrap();
    assert!(alias.contains("alias pci:v0000DEADd* unused"), "{alias}");
}

#[test]
fn ca_bundle_is_installed_and_recorded() {
    let fixture = fixture();
    let bundle = fixture.base.join("ca.pem");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    fs::write(&bundle, pem).unwrap();
    let opts = BuildOptions { ca_bundle: Some(bundle), ..options(&fixture, "out") };
    let report = build_from_tree(&fixture, &opts, &mut |_| {}).unwrap();
    let root = fixture.base.join("unpacked");
    extract(&report.initramfs, &root);
    assert_eq!(format!("/{CA_BUNDLE_PATH}"), ferric_protocol::CA_BUNDLE_PATH, "the agent looks where we install");
    let installed = root.join(CA_BUNDLE_PATH);
    assert_eq!(fs::read_to_string(&installed).unwrap(), pem);
    assert_eq!(fs::metadata(&installed).unwrap().permissions().mode() & 0o7777, 0o644);
    let description: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(BUILD_DESCRIPTION_PATH)).unwrap()).unwrap();
    assert_eq!(description["ca_bundle"]["path"], "/etc/ferric/ca-bundle.pem");
    assert_eq!(description["ca_bundle"]["sha256"], sha256_hex(pem.as_bytes()).as_str());
    let build_json = fs::metadata(root.join(BUILD_DESCRIPTION_PATH)).unwrap().len();
    assert_eq!(report.content_bytes.metadata, build_json + pem.len() as u64);
}

#[test]
fn ca_bundle_without_a_certificate_is_refused() {
    let fixture = fixture();
    let key = fixture.base.join("server.key");
    fs::write(&key, "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n").unwrap();
    let cases = [(key, "not a PEM CA bundle:"), (fixture.base.join("missing.pem"), "cannot read")];
    for (bundle, message) in cases {
        let opts = BuildOptions { ca_bundle: Some(bundle.clone()), ..options(&fixture, "out") };
        let err = build_from_tree(&fixture, &opts, &mut |_| {}).unwrap_err();
        assert_eq!(err.to_string(), format!("{message} {}", bundle.display()));
        assert!(!opts.out_dir.exists(), "{err}");
    }
}

#[test]
fn tools_come_with_their_other_names_and_libraries_and_run_from_the_image_alone() {
    let fixture = fixture();
    let host_mke2fs = default_tools().into_iter().next().expect("e2fsprogs is installed on the build host");
    // A host directory shaped like Debian's /usr/sbin: mke2fs, mkfs.ext3/4 linking to it, an unrelated program.
    let sbin = fixture.base.join("host/sbin");
    fs::create_dir_all(&sbin).unwrap();
    fs::copy(&host_mke2fs, sbin.join("mke2fs")).unwrap();
    for alias in ["mkfs.ext3", "mkfs.ext4"] {
        std::os::unix::fs::symlink("mke2fs", sbin.join(alias)).unwrap();
    }
    fs::copy("/bin/true", sbin.join("other")).unwrap();
    // The same tool twice, by two of its names, goes in once.
    let opts = BuildOptions { tools: vec![sbin.join("mkfs.ext4"), sbin.join("mke2fs")], ..options(&fixture, "out") };
    let report = build_from_tree(&fixture, &opts, &mut |_| {}).unwrap();

    let links = ["/usr/sbin/mkfs.ext3", "/usr/sbin/mkfs.ext4"].map(String::from).to_vec();
    assert_eq!(report.tools, [InstalledTool { path: "/usr/sbin/mke2fs".to_string(), links: links.clone() }]);
    let mke2fs = fs::read(&host_mke2fs).unwrap();
    assert_eq!(report.content_bytes.tools, mke2fs.len() as u64);
    assert!(report.libraries.iter().any(|l| l.ends_with("/libext2fs.so.2")), "{:?}", report.libraries);
    let summary = report.summary();
    assert!(summary.contains("\ntools           /usr/sbin/mke2fs (also mkfs.ext3, mkfs.ext4)\n"), "{summary}");

    let root = fixture.base.join("unpacked");
    extract(&report.initramfs, &root);
    let installed = root.join("usr/sbin/mke2fs");
    assert_eq!(fs::read(&installed).unwrap(), mke2fs);
    assert_eq!(fs::metadata(&installed).unwrap().permissions().mode() & 0o7777, 0o755);
    for link in &links {
        assert_eq!(fs::read_link(root.join(link.trim_start_matches('/'))).unwrap(), Path::new("mke2fs"), "{link}");
    }
    assert!(!root.join("usr/sbin/other").exists());
    let description: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(BUILD_DESCRIPTION_PATH)).unwrap()).unwrap();
    let record = &description["tools"][0];
    assert_eq!(record["path"], "/usr/sbin/mke2fs");
    assert_eq!(record["sha256"], sha256_hex(&mke2fs).as_str());
    assert_eq!(record["source"], fs::canonicalize(sbin.join("mke2fs")).unwrap().to_str().unwrap());
    assert_eq!(record["links"], serde_json::json!(links));
    assert_eq!(description["tools"].as_array().unwrap().len(), 1);

    // Only what the image holds: each name makes its file system type, as the agent runs it.
    for (name, fs_type) in [("mkfs.ext3", "ext3"), ("mkfs.ext4", "ext4")] {
        let disk = root.join(format!("{fs_type}.img"));
        fs::write(&disk, vec![0u8; 8 << 20]).unwrap();
        let mut mkfs = Command::new("chroot");
        mkfs.arg(&root).arg(format!("/usr/sbin/{name}")).args(["-F", "-q", "-L", "ephemeral0"]);
        mkfs.arg(format!("/{fs_type}.img"));
        ferric_runner::run(format!("{name} inside the unpacked image"), &mut mkfs).unwrap();
        let mut blkid = Command::new("blkid");
        blkid.args(["-p", "-o", "export"]).arg(&disk);
        let probed = ferric_runner::run("probe the file system", &mut blkid).unwrap().stdout;
        assert!(probed.lines().any(|l| l == format!("TYPE={fs_type}")), "{name}: {probed}");
        assert!(probed.lines().any(|l| l == "LABEL=ephemeral0"), "{name}: {probed}");
    }
}

#[test]
fn missing_tool_fails_naming_it_without_leaving_output() {
    let fixture = fixture();
    let missing = fixture.base.join("host/sbin/mke2fs");
    let opts = BuildOptions { tools: vec![missing.clone()], ..options(&fixture, "out") };
    let err = build_from_tree(&fixture, &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(&err, BuildError::MissingTool { path, .. } if *path == missing), "{err}");
    assert_eq!(err.to_string(), format!("tool {} is not a program on the build host", missing.display()));
    assert!(!opts.out_dir.exists(), "{err}");
}
