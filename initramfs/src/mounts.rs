//! The kernel filesystems the agent and its tools expect.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("could not create mount point {path}")]
    CreateMountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not mount {fstype} on {path}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// One filesystem to mount, relative to the root.
struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// Where efivarfs goes, below sysfs.
const EFIVARS: &str = "sys/firmware/efi/efivars";

/// In order: later targets live inside earlier ones.
const MOUNTS: &[Mount] = &[
    Mount { fstype: "proc", target: "proc", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Mount { fstype: "sysfs", target: "sys", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Mount { fstype: "devtmpfs", target: "dev", flags: MsFlags::MS_NOSUID, data: "mode=0755" },
    Mount {
        fstype: "devpts",
        target: "dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
    },
    Mount { fstype: "tmpfs", target: "run", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=0755" },
    Mount { fstype: "tmpfs", target: "tmp", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=1777" },
];

/// Mounts proc, sysfs, devtmpfs, devpts, and tmpfs on /run and /tmp below `root`.
/// Targets that are already mount points are left alone, so a retry after a partial
/// failure (or a kernel that mounted /dev itself) is harmless.
pub fn mount_all(root: &Path) -> Result<(), MountError> {
    for entry in MOUNTS {
        let target = root.join(entry.target);
        if is_mount_point(&target) {
            continue;
        }
        std::fs::create_dir_all(&target)
            .map_err(|source| MountError::CreateMountPoint { path: target.clone(), source })?;
        let data = (!entry.data.is_empty()).then_some(entry.data);
        match mount(Some(entry.fstype), &target, Some(entry.fstype), entry.flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => return Err(MountError::Mount { fstype: entry.fstype, path: target, source }),
        }
    }
    Ok(())
}

/// Mounts efivarfs (EFI variables, for boot entries) on UEFI machines. It is often a
/// module, so this runs after drivers are loaded; a failure is only logged.
pub fn mount_efivarfs(root: &Path) {
    let target = root.join(EFIVARS);
    if !root.join("sys/firmware/efi").is_dir() || is_mount_point(&target) {
        return;
    }
    match mount(Some("efivarfs"), &target, Some("efivarfs"), NOSUID_NODEV_NOEXEC, None::<&str>) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(error) => log!("efivarfs not mounted on {}: {error}", target.display()),
    }
}

/// A directory on another device than its parent is a mount point.
fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else { return true };
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(own), Ok(parent)) => own.dev() != parent.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{umount2, MntFlags};

    /// Lazily unmounts everything below a directory, deepest first, even if the test fails.
    struct UnmountBelow(PathBuf);

    impl UnmountBelow {
        fn mount_points(&self) -> Vec<PathBuf> {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            mountinfo
                .lines()
                .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
                .filter(|point| point.starts_with(&self.0))
                .collect()
        }
    }

    impl Drop for UnmountBelow {
        fn drop(&mut self) {
            for point in self.mount_points().iter().rev() {
                let _ = umount2(point, MntFlags::MNT_DETACH);
            }
        }
    }

    #[test]
    fn mounts_everything_once_below_root() {
        let root = tempfile::tempdir().unwrap();
        let guard = UnmountBelow(root.path().to_path_buf());

        mount_all(root.path()).unwrap();
        let first = guard.mount_points();
        for target in ["proc", "sys", "dev", "dev/pts", "run", "tmp"] {
            assert!(first.contains(&root.path().join(target)), "{target} not mounted: {first:?}");
        }
        assert!(root.path().join("proc/self/status").exists(), "proc is not procfs");
        assert!(root.path().join("sys/class/net/lo").exists(), "sys is not sysfs");
        assert!(root.path().join("dev/null").exists(), "dev is not devtmpfs");

        mount_all(root.path()).unwrap();
        assert_eq!(guard.mount_points(), first, "a second run must not stack mounts");
    }

    #[test]
    fn efivarfs_only_on_uefi_and_never_fatal() {
        let root = tempfile::tempdir().unwrap();
        let guard = UnmountBelow(root.path().to_path_buf());
        std::fs::create_dir_all(root.path().join("sys/firmware")).unwrap();
        mount_efivarfs(root.path());
        assert!(guard.mount_points().is_empty(), "no sys/firmware/efi: not UEFI");

        // A UEFI-looking tree; whether the mount works depends on the kernel having efivarfs.
        std::fs::create_dir_all(root.path().join(EFIVARS)).unwrap();
        mount_efivarfs(root.path());
        let kernel_has_efivarfs = std::fs::read_to_string("/proc/filesystems").unwrap().contains("\tefivarfs");
        assert_eq!(guard.mount_points().contains(&root.path().join(EFIVARS)), kernel_has_efivarfs);
    }
}
