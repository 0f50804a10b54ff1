//! Finds the firmware files the selected modules declare (`firmware=` in `.modinfo`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::elf::{self, ElfError};

/// The kernel loads firmware either plain or compressed (CONFIG_FW_LOADER_COMPRESS).
const VARIANT_SUFFIXES: &[&str] = &["", ".xz", ".zst"];

/// Firmware names a module (its uncompressed ELF bytes) declares.
pub fn declared_by(module: &[u8]) -> Result<Vec<String>, ElfError> {
    elf::modinfo_values(module, "firmware")
}

/// Which declared firmware exists under the firmware directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FirmwareLookup {
    /// Files to copy, relative to the firmware directory (every variant that exists).
    pub files: BTreeSet<String>,
    /// Declared names with at least one variant present.
    pub found: BTreeSet<String>,
    /// Declared names with no variant present.
    pub missing: BTreeSet<String>,
}

pub fn look_up<'a>(firmware_dir: &Path, names: impl IntoIterator<Item = &'a str>) -> FirmwareLookup {
    let mut lookup = FirmwareLookup::default();
    for name in names {
        let present: Vec<String> = VARIANT_SUFFIXES
            .iter()
            .map(|suffix| format!("{name}{suffix}"))
            .filter(|file| firmware_dir.join(file).is_file())
            .collect();
        if present.is_empty() {
            lookup.missing.insert(name.to_string());
        } else {
            lookup.found.insert(name.to_string());
            lookup.files.extend(present);
        }
    }
    lookup
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn modules_declare_firmware_in_modinfo() {
        let module = elf::fake_module(&["firmware=tigon/tg3.bin", "license=GPL", "firmware=tigon/tg3_tso.bin"]);
        assert_eq!(declared_by(&module).unwrap(), ["tigon/tg3.bin", "tigon/tg3_tso.bin"]);
        assert!(declared_by(&elf::fake_module(&["license=GPL"])).unwrap().is_empty());
        assert!(declared_by(b"not an ELF file").is_err());
    }

    #[test]
    fn lookup_copies_existing_variants_and_counts_missing() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tigon")).unwrap();
        fs::write(dir.path().join("tigon/tg3.bin"), b"fw").unwrap();
        fs::write(dir.path().join("tigon/tg3.bin.zst"), b"fw").unwrap();
        fs::write(dir.path().join("ice.pkg.xz"), b"fw").unwrap();
        std::os::unix::fs::symlink("ice.pkg.xz", dir.path().join("link.pkg")).unwrap();
        let lookup = look_up(dir.path(), ["tigon/tg3.bin", "ice.pkg", "link.pkg", "absent.fw"]);
        assert_eq!(
            lookup.files.iter().collect::<Vec<_>>(),
            ["ice.pkg.xz", "link.pkg", "tigon/tg3.bin", "tigon/tg3.bin.zst"]
        );
        assert_eq!(lookup.found.len(), 3);
        assert_eq!(lookup.missing.iter().collect::<Vec<_>>(), ["absent.fw"]);
    }
}
