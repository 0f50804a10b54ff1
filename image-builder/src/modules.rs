//! Picks the kernel modules the ramdisk carries, stores them uncompressed (init loads plain
//! `.ko` files only) and writes kmod's text indices for just those. The indices are read with
//! init's own parser, so that the builder and init agree on module names and dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use ferric_init::modindex::{module_name_of_path, normalize_module_name, ModuleIndex};

use crate::error::BuildError;

/// Storage, network, firmware-partition, entropy and in-band IPMI drivers a provisioning ramdisk
/// needs on QEMU and on common server hardware.
pub const REQUIRED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "virtio_rng",
    "nvme",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "megaraid_sas",
    "mpt3sas",
    "hpsa",
    "smartpqi",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "efivarfs",
    // The BMC's system interface (KCS/SMIC/BT, found through ACPI IPI0001, SMBIOS or PCI) and its
    // /dev/ipmi0, through which the agent reads the BMC's LAN address for the inventory.
    "ipmi_si",
    "ipmi_devintf",
    // The agent mounts ext4 root filesystems of partition images (ESP contents, grub-install).
    "ext4",
    // ext4 and jbd2 ask for crc32c by its crypto name (a softdep, absent from modules.dep);
    // there is no modprobe in the ramdisk to resolve it, so the generic implementation is carried.
    "crc32c_generic",
];

/// Compression suffixes kmod accepts after `.ko`, with the tool that decompresses each.
const COMPRESSIONS: &[(&str, &str)] = &[(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")];

/// Where a module is stored in the ramdisk: its path without a compression suffix, as init
/// loads plain `.ko` files only (`kernel/a/b.ko.xz` -> `kernel/a/b.ko`).
pub fn plain_path(path: &str) -> &str {
    COMPRESSIONS
        .iter()
        .find_map(|(suffix, _)| path.strip_suffix(suffix).filter(|stem| stem.ends_with(".ko")))
        .unwrap_or(path)
}

/// A module file's ELF bytes: decompressed (by xz, zstd or gzip) if its name says it is
/// compressed, as it is read otherwise.
pub fn read_plain(path: &Path) -> Result<Vec<u8>, BuildError> {
    let name = path.to_string_lossy();
    let tool = COMPRESSIONS.iter().find(|(suffix, _)| name.ends_with(&format!(".ko{suffix}"))).map(|(_, tool)| tool);
    let Some(tool) = tool else {
        return std::fs::read(path).map_err(BuildError::io("cannot read", path));
    };
    let mut plain =
        tempfile::tempfile().map_err(BuildError::io("cannot create a temporary file in", std::env::temp_dir()))?;
    let stdout =
        plain.try_clone().map_err(BuildError::io("cannot create a temporary file in", std::env::temp_dir()))?;
    ferric_runner::run(
        format!("decompress kernel module {}", path.display()),
        Command::new(tool).arg("-dc").arg(path).stdout(stdout),
    )?;
    let mut bytes = Vec::new();
    plain
        .seek(SeekFrom::Start(0))
        .and_then(|_| plain.read_to_end(&mut bytes))
        .map_err(BuildError::io("cannot read the decompressed", path))?;
    Ok(bytes)
}

/// The modules chosen for the ramdisk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Module name -> path relative to lib/modules/<release> in the kernel (possibly
    /// compressed), dependencies included.
    pub modules: BTreeMap<String, String>,
    /// Requested modules that are compiled into the kernel, so need no file.
    pub builtin: BTreeSet<String>,
}

/// The requested modules closed over their dependencies (modules.dep); built-in ones
/// (modules.builtin) are noted, not selected; any other unknown name is an error.
pub fn select<'a>(index: &ModuleIndex, requested: impl IntoIterator<Item = &'a str>) -> Result<Selection, BuildError> {
    let mut selection = Selection::default();
    for name in requested.into_iter().map(normalize_module_name) {
        if index.module(&name).is_some() {
            for module in index.load_order(&name) {
                selection.modules.insert(module.name.clone(), module.path.to_string_lossy().into_owned());
            }
        } else if index.is_builtin(&name) {
            selection.builtin.insert(name);
        } else {
            return Err(BuildError::MissingModule { module: name });
        }
    }
    Ok(selection)
}

impl Selection {
    /// modules.dep restricted to the selected modules, in the original order, with every
    /// path made plain as the modules are stored.
    pub fn filter_dep(&self, modules_dep: &str) -> String {
        let mut filtered = String::new();
        for (path, deps) in modules_dep.lines().filter_map(|line| line.split_once(':')) {
            let path = path.trim();
            if self.modules.contains_key(&module_name_of_path(path)) {
                filtered.push_str(plain_path(path));
                filtered.push(':');
                for dep in deps.split_whitespace() {
                    filtered.push(' ');
                    filtered.push_str(plain_path(dep));
                }
                filtered.push('\n');
            }
        }
        filtered
    }

    /// modules.alias restricted to aliases of the selected modules (comments kept).
    pub fn filter_alias(&self, modules_alias: &str) -> String {
        let keep = |line: &str| {
            line.starts_with('#')
                || line
                    .split_whitespace()
                    .nth(2)
                    .is_some_and(|module| self.modules.contains_key(&normalize_module_name(module)))
        };
        modules_alias.lines().filter(|line| keep(line)).flat_map(|line| [line, "\n"]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/nls/nls_iso8859-1.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/char/hw_random/rng-core.ko.zst
kernel/drivers/char/hw_random/rng-core.ko.zst:
kernel/drivers/net/dummy.ko:
";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(PathBuf::from("/m"), "", DEP, BUILTIN)
    }

    #[test]
    fn selection_closes_over_dependencies_and_notes_builtins() {
        let selection = select(&index(), ["virtio_net", "virtio-pci", "nls_iso8859_1", "virtio_rng"]).unwrap();
        let names: Vec<&str> = selection.modules.keys().map(String::as_str).collect();
        assert_eq!(names, ["failover", "net_failover", "nls_iso8859_1", "rng_core", "virtio_net", "virtio_rng"]);
        assert_eq!(selection.modules["virtio_rng"], "kernel/drivers/char/hw_random/virtio-rng.ko.xz");
        assert_eq!(selection.builtin.iter().collect::<Vec<_>>(), ["virtio_pci"]);
    }

    /// modules.dep lines of Debian's 6.1 kernel for ext4.
    const EXT4_DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
";

    #[test]
    fn required_modules_mount_ext4_with_its_dependencies_and_crc32c() {
        let index = ModuleIndex::parse(PathBuf::from("/m"), "", EXT4_DEP, "");
        let known = REQUIRED_MODULES.iter().copied().filter(|name| index.module(name).is_some());
        let selection = select(&index, known).unwrap();
        let names: Vec<&str> = selection.modules.keys().map(String::as_str).collect();
        assert_eq!(names, ["crc16", "crc32c_generic", "ext4", "jbd2", "mbcache"]);
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let err = select(&index(), ["virtio_net", "no-such-driver"]).unwrap_err();
        assert!(matches!(&err, BuildError::MissingModule { module } if module == "no_such_driver"), "{err}");
        assert!(err.to_string().contains("no_such_driver"));
    }

    #[test]
    fn indices_are_filtered_to_the_selection_with_plain_paths() {
        let selection = select(&index(), ["net_failover", "nls_iso8859_1", "virtio_rng"]).unwrap();
        assert_eq!(
            selection.filter_dep(DEP),
            "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\nkernel/fs/nls/nls_iso8859-1.ko:\n\
             kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/char/hw_random/rng-core.ko\n\
             kernel/drivers/char/hw_random/rng-core.ko:\n"
        );
        let alias = "# Aliases extracted from modules themselves.\n\
                     alias virtio:d00000001v* virtio_net\nalias nls_iso8859-1 nls_iso8859_1\nalias x failover\n";
        assert_eq!(
            selection.filter_alias(alias),
            "# Aliases extracted from modules themselves.\nalias nls_iso8859-1 nls_iso8859_1\nalias x failover\n"
        );
    }

    #[test]
    fn plain_path_drops_only_a_compression_suffix_after_ko() {
        assert_eq!(plain_path("kernel/a/b.ko.xz"), "kernel/a/b.ko");
        assert_eq!(plain_path("kernel/a/b.ko.zst"), "kernel/a/b.ko");
        assert_eq!(plain_path("kernel/a/b.ko.gz"), "kernel/a/b.ko");
        assert_eq!(plain_path("kernel/a/b.ko"), "kernel/a/b.ko");
        assert_eq!(plain_path("kernel/a/notes.xz"), "kernel/a/notes.xz");
    }

    #[test]
    fn compressed_modules_are_read_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let elf = crate::elf::fake_module(&["license=GPL", "firmware=a.bin"]);
        for (tool, suffix) in [("xz", "xz"), ("zstd", "zst"), ("gzip", "gz")] {
            let plain = dir.path().join(format!("m-{suffix}.ko"));
            fs::write(&plain, &elf).unwrap();
            ferric_runner::run("compress module", Command::new(tool).args(["-k", "-q"]).arg(&plain)).unwrap();
            let compressed = dir.path().join(format!("m-{suffix}.ko.{suffix}"));
            assert_ne!(fs::read(&compressed).unwrap(), elf, "{tool} compressed it");
            assert_eq!(read_plain(&compressed).unwrap(), elf, "{tool}");
        }
        let plain = dir.path().join("plain.ko");
        fs::write(&plain, &elf).unwrap();
        assert_eq!(read_plain(&plain).unwrap(), elf);
        let broken = dir.path().join("broken.ko.xz");
        fs::write(&broken, b"not xz").unwrap();
        assert!(matches!(read_plain(&broken), Err(BuildError::Command(_))));
    }
}
