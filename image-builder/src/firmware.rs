//! Finds the firmware files the selected modules declare (`firmware=` in `.modinfo`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::elf;
use crate::error::BuildError;

/// The kernel loads firmware either plain or compressed (CONFIG_FW_LOADER_COMPRESS).
const VARIANT_SUFFIXES: &[&str] = &["", ".xz", ".zst"];

/// Firmware names a module declares. Plain `.ko` files are parsed here; compressed ones
/// are handed to `modinfo`, which decompresses them.
pub fn declared_by(module: &Path) -> Result<Vec<String>, BuildError> {
    if module.extension().is_some_and(|ext| ext == "ko") {
        let bytes = std::fs::read(module).map_err(BuildError::io("cannot read", module))?;
        elf::modinfo_values(&bytes, "firmware")
            .map_err(|source| BuildError::ModuleElf { path: module.to_path_buf(), source })
    } else {
        let listed = ferric_runner::run(
            format!("list firmware of {}", module.display()),
            Command::new("modinfo").args(["-F", "firmware"]).arg(module),
        )?;
        Ok(listed.stdout.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
    }
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
    fn plain_and_compressed_modules_declare_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("tg3.ko");
        fs::write(&plain, elf::fake_module(&["firmware=tigon/tg3.bin", "license=GPL"])).unwrap();
        assert_eq!(declared_by(&plain).unwrap(), ["tigon/tg3.bin"]);

        let compressed = dir.path().join("tg3.ko.xz");
        fs::copy(&plain, dir.path().join("copy.ko")).unwrap();
        ferric_runner::run("compress", Command::new("xz").arg("-k").arg(dir.path().join("copy.ko"))).unwrap();
        fs::rename(dir.path().join("copy.ko.xz"), &compressed).unwrap();
        assert_eq!(declared_by(&compressed).unwrap(), ["tigon/tg3.bin"]);
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
