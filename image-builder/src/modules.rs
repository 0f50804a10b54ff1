//! Picks the kernel modules the ramdisk carries and writes kmod's text indices for just those.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::BuildError;

/// Storage, network, firmware-partition and entropy drivers a provisioning ramdisk needs on
/// QEMU and on common server hardware.
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
];

/// kmod treats `-` and `_` in module names as the same character; `_` is canonical.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path like `kernel/fs/nls/nls_iso8859-1.ko[.xz|.zst|.gz]`.
pub fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = ["", ".xz", ".zst", ".gz"]
        .iter()
        .find_map(|compression| file.strip_suffix(&format!(".ko{compression}")))
        .unwrap_or(file);
    normalize_name(stem)
}

/// What modules.dep and modules.builtin say about a kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name -> (path relative to lib/modules/<release>, dependency paths).
    modules: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

/// The modules chosen for the ramdisk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Module name -> path relative to lib/modules/<release>, dependencies included.
    pub modules: BTreeMap<String, String>,
    /// Requested modules that are compiled into the kernel, so need no file.
    pub builtin: BTreeSet<String>,
}

impl ModuleIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let modules = modules_dep
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(path, deps)| {
                let deps = deps.split_whitespace().map(str::to_string).collect();
                (name_from_path(path), (path.trim().to_string(), deps))
            })
            .collect();
        let builtin = modules_builtin.lines().filter(|l| !l.trim().is_empty()).map(name_from_path).collect();
        Self { modules, builtin }
    }

    /// The requested modules closed over their dependencies; built-in ones are noted, not
    /// selected; any other unknown name is an error.
    pub fn select<'a>(&self, requested: impl IntoIterator<Item = &'a str>) -> Result<Selection, BuildError> {
        let mut selection = Selection::default();
        let mut pending: Vec<String> = Vec::new();
        for name in requested.into_iter().map(normalize_name) {
            if self.modules.contains_key(&name) {
                pending.push(name);
            } else if self.builtin.contains(&name) {
                selection.builtin.insert(name);
            } else {
                return Err(BuildError::MissingModule { module: name });
            }
        }
        while let Some(name) = pending.pop() {
            if selection.modules.contains_key(&name) {
                continue;
            }
            let (path, deps) =
                self.modules.get(&name).ok_or_else(|| BuildError::MissingModule { module: name.clone() })?;
            pending.extend(deps.iter().map(|dep| name_from_path(dep)));
            selection.modules.insert(name, path.clone());
        }
        Ok(selection)
    }
}

impl Selection {
    /// modules.dep restricted to the selected modules, in the original order.
    pub fn filter_dep(&self, modules_dep: &str) -> String {
        keep_lines(modules_dep, |line| {
            line.split_once(':').is_some_and(|(path, _)| self.modules.contains_key(&name_from_path(path)))
        })
    }

    /// modules.alias restricted to aliases of the selected modules (comments kept).
    pub fn filter_alias(&self, modules_alias: &str) -> String {
        keep_lines(modules_alias, |line| {
            line.starts_with('#')
                || line
                    .split_whitespace()
                    .nth(2)
                    .is_some_and(|module| self.modules.contains_key(&normalize_name(module)))
        })
    }
}

fn keep_lines(text: &str, keep: impl Fn(&str) -> bool) -> String {
    text.lines().filter(|line| keep(line)).flat_map(|line| [line, "\n"]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/nls/nls_iso8859-1.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/drivers/net/dummy.ko:
";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";

    #[test]
    fn names_normalise_dashes_and_drop_extensions() {
        assert_eq!(name_from_path("kernel/fs/nls/nls_iso8859-1.ko"), "nls_iso8859_1");
        assert_eq!(name_from_path("kernel/drivers/char/hw_random/virtio-rng.ko.zst"), "virtio_rng");
        assert_eq!(normalize_name("mlx5-core"), "mlx5_core");
    }

    #[test]
    fn selection_closes_over_dependencies_and_notes_builtins() {
        let index = ModuleIndex::parse(DEP, BUILTIN);
        let selection = index.select(["virtio_net", "virtio-pci", "nls_iso8859_1", "virtio_rng"]).unwrap();
        let names: Vec<&str> = selection.modules.keys().map(String::as_str).collect();
        assert_eq!(names, ["failover", "net_failover", "nls_iso8859_1", "virtio_net", "virtio_rng"]);
        assert_eq!(selection.modules["virtio_rng"], "kernel/drivers/char/hw_random/virtio-rng.ko.xz");
        assert_eq!(selection.builtin.iter().collect::<Vec<_>>(), ["virtio_pci"]);
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let index = ModuleIndex::parse(DEP, BUILTIN);
        let err = index.select(["virtio_net", "no-such-driver"]).unwrap_err();
        assert!(matches!(&err, BuildError::MissingModule { module } if module == "no_such_driver"), "{err}");
        assert!(err.to_string().contains("no_such_driver"));
    }

    #[test]
    fn indices_are_filtered_to_the_selection() {
        let index = ModuleIndex::parse(DEP, BUILTIN);
        let selection = index.select(["net_failover", "nls_iso8859_1"]).unwrap();
        assert_eq!(
            selection.filter_dep(DEP),
            "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\nkernel/fs/nls/nls_iso8859-1.ko:\n"
        );
        let alias = "# Aliases extracted from modules themselves.\n\
                     alias virtio:d00000001v* virtio_net\nalias nls_iso8859-1 nls_iso8859_1\nalias x failover\n";
        assert_eq!(
            selection.filter_alias(alias),
            "# Aliases extracted from modules themselves.\nalias nls_iso8859-1 nls_iso8859_1\nalias x failover\n"
        );
    }
}
