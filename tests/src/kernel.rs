//! The Debian kernel the test OS boots, taken from the kernel package in the repository's cache.
//!
//! The test OS must be testable before (and independently of) the ramdisk build, so it extracts only
//! `boot/vmlinuz-*` from the cached `.deb` instead of going through the image builder.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_runner::CommandError;

use crate::paths::{self, PathError};

/// Overrides the kernel the test OS boots (a vmlinuz path).
pub const VMLINUZ_ENV: &str = "FERRIC_TEST_VMLINUZ";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no versioned linux-image-*.deb in {dir}: run scripts/setup.sh (downloads it) or set {VMLINUZ_ENV}")]
    NoPackage { dir: PathBuf },
    #[error("{path}: {action}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel package {deb} holds no boot/vmlinuz-*")]
    NoVmlinuz { deb: PathBuf },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// `$FERRIC_TEST_VMLINUZ`, or the vmlinuz of the newest kernel package in `.cache/kernel` (extracted once).
pub fn debian_vmlinuz() -> Result<PathBuf, KernelError> {
    if let Some(path) = std::env::var_os(VMLINUZ_ENV) {
        return Ok(PathBuf::from(path));
    }
    let deb = newest_kernel_package(&paths::kernel_cache_dir())?;
    let stem = deb.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let out_dir = paths::scratch_dir()?.join("kernel").join(stem);
    if let Some(vmlinuz) = find_vmlinuz(&out_dir)? {
        return Ok(vmlinuz);
    }
    let partial = out_dir.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(io_err("remove", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(io_err("create directory", &partial))?;
    ferric_runner::run(
        "extract vmlinuz from the kernel package",
        Command::new("bash")
            .args([
                "-c",
                "set -eo pipefail; dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './boot/vmlinuz-*'",
                "extract-vmlinuz",
            ])
            .arg(&deb)
            .arg(&partial),
    )?;
    if out_dir.exists() {
        fs::remove_dir_all(&out_dir).map_err(io_err("remove", &out_dir))?;
    }
    fs::rename(&partial, &out_dir).map_err(io_err("rename extracted kernel dir", &partial))?;
    find_vmlinuz(&out_dir)?.ok_or(KernelError::NoVmlinuz { deb })
}

/// Versioned image packages (`linux-image-6.1.0-56-amd64_...`) carry the kernel; the metapackage does not.
fn newest_kernel_package(dir: &Path) -> Result<PathBuf, KernelError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KernelError::NoPackage { dir: dir.to_path_buf() })
        }
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut debs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("linux-image-")
                && name.ends_with(".deb")
                && name.chars().nth("linux-image-".len()).is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    debs.sort();
    debs.pop().ok_or(KernelError::NoPackage { dir: dir.to_path_buf() })
}

fn find_vmlinuz(root: &Path) -> Result<Option<PathBuf>, KernelError> {
    let boot = root.join("boot");
    let entries = match fs::read_dir(&boot) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("list", &boot)(e)),
    };
    Ok(entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.file_name().unwrap_or_default().to_string_lossy().starts_with("vmlinuz-")))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_versioned_package_and_skips_the_metapackage() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "linux-image-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-55-amd64_6.1.190-1_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let deb = newest_kernel_package(dir.path()).unwrap();
        assert_eq!(deb.file_name().unwrap(), "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb");
    }

    #[test]
    fn an_empty_cache_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = newest_kernel_package(dir.path()).unwrap_err();
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
    }
}
