//! Mounting the deployed root filesystem, and GRUB for BIOS partition images.
//!
//! `grub-install` runs from the deployed OS (chrooted into its root with /dev, /proc, /sys and /run
//! bound in), because only that OS has the GRUB matching its kernel and config. Every mount is
//! undone in reverse order whatever happens, so the disk is never left busy for the reboot.
//! The ramdisk's init loads the drivers of the filesystems mounted here (ext4, vfat); a root on any
//! other filesystem the kernel lacks is refused with [`BootloaderError::NoDriver`].

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferric_runner::{CommandError, Finished};
use nix::mount::{MntFlags, MsFlags};

/// grub-install and grub-mkconfig probe every disk; a hung one must not hang the deploy forever.
const GRUB_TIMEOUT: Duration = Duration::from_secs(600);
/// Host directories bound into the chroot, in mount order.
const BIND_MOUNTS: &[&str] = &["dev", "proc", "sys", "run"];
const UNMOUNT_ATTEMPTS: u32 = 50;
const CHROOT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const TOOL_DIRS: &[&str] = &["usr/sbin", "usr/bin", "sbin", "bin"];

#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    #[error("cannot read the superblock of {device}")]
    ReadDevice {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no ext2/3/4, xfs, btrfs or vfat filesystem found on {device}")]
    UnknownFilesystem { device: PathBuf },
    #[error("cannot create the mount point {path}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {source_path} ({fstype}) on {target} failed")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        fstype: String,
        #[source]
        source: nix::Error,
    },
    #[error("unmounting {target} failed")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("mounting {source_path} failed: the ramdisk has no driver for {fstype}")]
    NoDriver { source_path: PathBuf, fstype: String },
    #[error("the deployed root on {device} has neither grub-install nor grub2-install in /usr/sbin, /usr/bin, /sbin or /bin")]
    NoGrub { device: PathBuf },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Mounting and running commands, injectable so the sequence can be tested without root filesystems.
pub trait System {
    fn mount(
        &mut self,
        source: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
    ) -> Result<(), BootloaderError>;
    fn unmount(&mut self, target: &Path) -> Result<(), BootloaderError>;
    /// Runs `program` (a path inside `root`) with `root` as its root directory.
    fn run_chrooted(&mut self, root: &Path, program: &str, args: &[String]) -> Result<Finished, CommandError>;
}

/// The real system: mount(2) and chroot(2).
#[derive(Default)]
pub struct HostSystem;

impl HostSystem {
    pub fn new() -> Self {
        Self
    }
}

impl System for HostSystem {
    fn mount(
        &mut self,
        source: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
    ) -> Result<(), BootloaderError> {
        nix::mount::mount(Some(source), target, fstype, flags, None::<&str>).map_err(|errno| match (errno, fstype) {
            // ENODEV: the kernel does not know the filesystem type.
            (nix::Error::ENODEV, Some(fstype)) => {
                BootloaderError::NoDriver { source_path: source.to_owned(), fstype: fstype.to_owned() }
            }
            _ => BootloaderError::Mount {
                source_path: source.to_owned(),
                target: target.to_owned(),
                fstype: fstype.unwrap_or("bind").to_owned(),
                source: errno,
            },
        })
    }

    /// Retries while busy: a process forked elsewhere in the agent holds copies of open
    /// descriptors until it execs.
    fn unmount(&mut self, target: &Path) -> Result<(), BootloaderError> {
        let mut attempts = 0;
        loop {
            match nix::mount::umount2(target, MntFlags::empty()) {
                Err(nix::Error::EBUSY) if attempts < UNMOUNT_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                result => {
                    return result.map_err(|source| BootloaderError::Unmount { target: target.to_owned(), source })
                }
            }
        }
    }

    fn run_chrooted(&mut self, root: &Path, program: &str, args: &[String]) -> Result<Finished, CommandError> {
        let mut command = Command::new(program);
        command.args(args).env("PATH", CHROOT_PATH);
        chroot_before_exec(&mut command, root);
        ferric_runner::run_with_timeout(format!("run {program} in the deployed root"), &mut command, GRUB_TIMEOUT)
    }
}

#[allow(unsafe_code)]
fn chroot_before_exec(command: &mut Command, root: &Path) {
    // Made before fork: the child must not allocate.
    let root = CString::new(root.as_os_str().as_bytes()).unwrap_or_default();
    let to_io = |e: nix::Error| io::Error::from_raw_os_error(e as i32);
    // SAFETY: the closure runs in the forked child before exec and only calls chroot(2) and chdir(2),
    // which are async-signal-safe; the paths are C strings made before the fork.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::chroot(root.as_c_str()).map_err(to_io)?;
            nix::unistd::chdir(c"/").map_err(to_io)
        });
    }
}

/// The filesystem type on `device`, from its superblock (ext2/3/4 are all mounted as ext4).
pub fn detect_filesystem(device: &Path) -> Result<&'static str, BootloaderError> {
    let read_error = |source| BootloaderError::ReadDevice { device: device.to_owned(), source };
    let mut head = Vec::with_capacity(128 << 10);
    File::open(device).and_then(|f| f.take(128 << 10).read_to_end(&mut head)).map_err(read_error)?;
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let fstype = if at(1080, &[0x53, 0xef]) {
        "ext4"
    } else if at(0, b"XFSB") {
        "xfs"
    } else if at(0x10040, b"_BHRfS_M") {
        "btrfs"
    } else if at(510, &[0x55, 0xaa]) && (at(82, b"FAT32   ") || at(54, b"FAT16   ") || at(54, b"FAT12   ")) {
        "vfat"
    } else {
        return Err(BootloaderError::UnknownFilesystem { device: device.to_owned() });
    };
    Ok(fstype)
}

/// Whether the deployed root is mounted writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Mounts the filesystem on `device` on a fresh directory and runs `work` with the system, that
/// directory and the list of mounts to undo (where `work` pushes what it mounts); then unmounts
/// everything in reverse order, whatever `work` returned.
pub fn with_mounted_root<T>(
    system: &mut dyn System,
    device: &Path,
    access: Access,
    work: impl FnOnce(&mut dyn System, &Path, &mut Vec<PathBuf>) -> Result<T, BootloaderError>,
) -> Result<T, BootloaderError> {
    let fstype = detect_filesystem(device)?;
    let dir = std::env::temp_dir().join(format!("ferric-root-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|source| BootloaderError::MountPoint { path: dir.clone(), source })?;
    let flags = match access {
        Access::ReadOnly => MsFlags::MS_RDONLY,
        Access::ReadWrite => MsFlags::empty(),
    };
    let mut mounted = Vec::new();
    let outcome = system.mount(device, &dir, Some(fstype), flags).and_then(|()| {
        mounted.push(dir.clone());
        work(system, &dir, &mut mounted)
    });
    let unmounted = unmount_all(system, &mut mounted);
    // A mount point still in use stays; removing it would fail anyway.
    if unmounted.is_ok() {
        let _ = std::fs::remove_dir(&dir);
    }
    let value = outcome?;
    unmounted?;
    Ok(value)
}

/// Unmounts in reverse order; tries every one and returns the first error.
fn unmount_all(system: &mut dyn System, mounted: &mut Vec<PathBuf>) -> Result<(), BootloaderError> {
    let mut first_error = None;
    while let Some(target) = mounted.pop() {
        if let Err(err) = system.unmount(&target) {
            tracing::warn!(error = %err, "unmount failed");
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What [`install_bios_grub`] ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubReport {
    /// e.g. `/usr/sbin/grub-install --target=i386-pc /dev/vda`
    pub install: String,
    /// e.g. `/usr/sbin/grub-mkconfig -o /boot/grub/grub.cfg`; None when the root has no grub-mkconfig.
    pub config: Option<String>,
}

/// `grub-install --target=i386-pc <disk>` (or grub2-install) chrooted into the root filesystem on
/// `root_device`, then `grub-mkconfig` when the root has it. The target is explicit because the
/// ramdisk may run under UEFI while installing for BIOS.
pub fn install_bios_grub(
    system: &mut dyn System,
    disk: &Path,
    root_device: &Path,
) -> Result<GrubReport, BootloaderError> {
    with_mounted_root(system, root_device, Access::ReadWrite, |system, root, mounted| {
        for dir in BIND_MOUNTS {
            let (inside, host) = (root.join(dir), Path::new("/").join(dir));
            if !inside.is_dir() || !host.is_dir() {
                continue;
            }
            system.mount(&host, &inside, None, MsFlags::MS_BIND)?;
            mounted.push(inside);
        }
        let (install, mkconfig, config) = match find_tool(root, "grub-install") {
            Some(install) => (install, find_tool(root, "grub-mkconfig"), "/boot/grub/grub.cfg"),
            None => match find_tool(root, "grub2-install") {
                Some(install) => (install, find_tool(root, "grub2-mkconfig"), "/boot/grub2/grub.cfg"),
                None => return Err(BootloaderError::NoGrub { device: root_device.to_owned() }),
            },
        };
        let install_args = vec!["--target=i386-pc".to_owned(), disk.to_string_lossy().into_owned()];
        system.run_chrooted(root, &install, &install_args)?;
        let config = match mkconfig {
            Some(mkconfig) => {
                let args = vec!["-o".to_owned(), config.to_owned()];
                system.run_chrooted(root, &mkconfig, &args)?;
                Some(format!("{mkconfig} {}", args.join(" ")))
            }
            None => {
                tracing::warn!("the deployed root has no grub-mkconfig; keeping its grub.cfg");
                None
            }
        };
        Ok(GrubReport { install: format!("{install} {}", install_args.join(" ")), config })
    })
}

/// `name` in the usual binary directories of `root`, as a path inside it.
fn find_tool(root: &Path, name: &str) -> Option<String> {
    TOOL_DIRS.iter().map(|dir| format!("/{dir}/{name}")).find(|inside| root.join(&inside[1..]).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{run, LoopDevice};

    /// A file of `len` zero bytes with `magic` at `offset`.
    fn with_magic(len: usize, offset: usize, magic: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; len];
        data[offset..offset + magic.len()].copy_from_slice(magic);
        std::fs::write(file.path(), data).unwrap();
        file
    }

    fn made_with(tool: &str, args: &[&str]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        let mut all: Vec<&str> = args.to_vec();
        all.push(file.path().to_str().unwrap());
        run(tool, &all);
        file
    }

    #[test]
    fn filesystems_are_recognised_by_their_superblock() {
        let cases: Vec<(&str, tempfile::NamedTempFile, Option<&str>)> = vec![
            ("mkfs.ext4", made_with("mkfs.ext4", &["-q", "-F"]), Some("ext4")),
            ("mkfs.ext2", made_with("mkfs.ext2", &["-q", "-F"]), Some("ext4")),
            ("mkfs.vfat", made_with("mkfs.vfat", &[]), Some("vfat")),
            ("mkfs.vfat -F 32", made_with("mkfs.vfat", &["-F", "32"]), Some("vfat")),
            ("xfs magic", with_magic(4096, 0, b"XFSB"), Some("xfs")),
            ("btrfs magic", with_magic(0x20000, 0x10040, b"_BHRfS_M"), Some("btrfs")),
            ("zeros", with_magic(4096, 0, b""), None),
            ("short file", with_magic(100, 0, b"XF"), None),
        ];
        for (name, file, expected) in cases {
            match (detect_filesystem(file.path()), expected) {
                (Ok(found), Some(expected)) => assert_eq!(found, expected, "{name}"),
                (Err(BootloaderError::UnknownFilesystem { device }), None) => assert_eq!(device, file.path()),
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_filesystem_type_names_the_missing_driver() {
        let (device, dir) = (with_magic(4096, 0, b""), tempfile::tempdir().unwrap());
        let err =
            HostSystem::new().mount(device.path(), dir.path(), Some("ferricnofs"), MsFlags::MS_RDONLY).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("mounting {} failed: the ramdisk has no driver for ferricnofs", device.path().display())
        );
    }

    /// Records what would be done; the root "mount" fills the mount point with `root_files`
    /// (paths ending in `/` are directories), the unmount empties it again.
    #[derive(Default)]
    struct FakeSystem {
        root_files: Vec<&'static str>,
        events: Vec<String>,
        /// An event prefix that fails.
        fail: Option<&'static str>,
    }

    impl FakeSystem {
        fn check(&self, event: &str) -> Result<(), nix::Error> {
            match self.fail {
                Some(prefix) if event.starts_with(prefix) => Err(nix::Error::EIO),
                _ => Ok(()),
            }
        }
    }

    impl System for FakeSystem {
        fn mount(
            &mut self,
            source: &Path,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
        ) -> Result<(), BootloaderError> {
            let event = match fstype {
                Some(fstype) => format!("mount {fstype} ro={}", flags.contains(MsFlags::MS_RDONLY)),
                None => format!("bind {}", source.display()),
            };
            self.check(&event).map_err(|source| BootloaderError::Mount {
                source_path: target.to_owned(),
                target: target.to_owned(),
                fstype: fstype.unwrap_or("bind").to_owned(),
                source,
            })?;
            if fstype.is_some() {
                for file in &self.root_files {
                    let path = target.join(file);
                    if file.ends_with('/') {
                        std::fs::create_dir_all(path).unwrap();
                    } else {
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::fs::write(path, b"").unwrap();
                    }
                }
            }
            self.events.push(event);
            Ok(())
        }

        fn unmount(&mut self, target: &Path) -> Result<(), BootloaderError> {
            let name = target.file_name().unwrap().to_string_lossy().into_owned();
            let event = if name.starts_with("ferric-root-") {
                for entry in std::fs::read_dir(target).unwrap() {
                    std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
                }
                "umount root".to_owned()
            } else {
                format!("umount {name}")
            };
            self.events.push(event);
            Ok(())
        }

        fn run_chrooted(&mut self, root: &Path, program: &str, args: &[String]) -> Result<Finished, CommandError> {
            assert!(root.join(&program[1..]).is_file(), "{program} is run from inside the root");
            let event = format!("run {program} {}", args.join(" "));
            let failed = self.check(&event).is_err();
            self.events.push(event.clone());
            if failed {
                return Err(CommandError::Failed {
                    description: "run grub".into(),
                    command_line: event,
                    status: "exit status: 1".into(),
                    stderr_tail: "grub-install: error: cannot find a GRUB drive for /dev/vda".into(),
                });
            }
            Ok(Finished { stdout: String::new(), stderr_tail: String::new() })
        }
    }

    const DEBIAN_ROOT: &[&str] = &["dev/", "proc/", "sys/", "run/", "usr/sbin/grub-install", "usr/sbin/grub-mkconfig"];

    #[test]
    fn grub_install_sequence_through_a_fake_system() {
        // A real chroot needs a root filesystem with GRUB and a kernel that sees its partitions;
        // the sequence of mounts, commands and unmounts is checked against a fake instead.
        let ext4 = with_magic(4096, 1080, &[0x53, 0xef]);
        let unmount_all = ["umount run", "umount sys", "umount proc", "umount dev", "umount root"];
        let binds = ["mount ext4 ro=false", "bind /dev", "bind /proc", "bind /sys", "bind /run"];
        /// Ok: (install command, mkconfig command); Err: text the error contains.
        type Outcome<'a> = Result<(&'a str, Option<&'a str>), &'a str>;
        let cases: Vec<(&str, FakeSystem, Outcome, Vec<&str>)> = vec![
            (
                "debian layout",
                FakeSystem { root_files: DEBIAN_ROOT.to_vec(), ..Default::default() },
                Ok((
                    "/usr/sbin/grub-install --target=i386-pc /dev/vda",
                    Some("/usr/sbin/grub-mkconfig -o /boot/grub/grub.cfg"),
                )),
                [
                    &binds[..],
                    &[
                        "run /usr/sbin/grub-install --target=i386-pc /dev/vda",
                        "run /usr/sbin/grub-mkconfig -o /boot/grub/grub.cfg",
                    ],
                    &unmount_all[..],
                ]
                .concat(),
            ),
            (
                "grub2 names, no /run, no mkconfig",
                FakeSystem { root_files: vec!["dev/", "proc/", "sys/", "sbin/grub2-install"], ..Default::default() },
                Ok(("/sbin/grub2-install --target=i386-pc /dev/vda", None)),
                vec![
                    "mount ext4 ro=false",
                    "bind /dev",
                    "bind /proc",
                    "bind /sys",
                    "run /sbin/grub2-install --target=i386-pc /dev/vda",
                    "umount sys",
                    "umount proc",
                    "umount dev",
                    "umount root",
                ],
            ),
            (
                "grub-install fails: its stderr is in the error and everything is unmounted",
                FakeSystem {
                    root_files: DEBIAN_ROOT.to_vec(),
                    fail: Some("run /usr/sbin/grub-install"),
                    ..Default::default()
                },
                Err("cannot find a GRUB drive"),
                [&binds[..], &["run /usr/sbin/grub-install --target=i386-pc /dev/vda"], &unmount_all[..]].concat(),
            ),
            (
                "no grub in the root",
                FakeSystem { root_files: vec!["dev/", "proc/"], ..Default::default() },
                Err("neither grub-install nor grub2-install"),
                vec!["mount ext4 ro=false", "bind /dev", "bind /proc", "umount proc", "umount dev", "umount root"],
            ),
            (
                "a bind mount fails: the ones made are undone",
                FakeSystem { root_files: DEBIAN_ROOT.to_vec(), fail: Some("bind /sys"), ..Default::default() },
                Err("mounting"),
                vec!["mount ext4 ro=false", "bind /dev", "bind /proc", "umount proc", "umount dev", "umount root"],
            ),
            (
                "the root mount fails: nothing to undo",
                FakeSystem { root_files: DEBIAN_ROOT.to_vec(), fail: Some("mount ext4"), ..Default::default() },
                Err("mounting"),
                vec![],
            ),
        ];
        for (name, mut system, expected, events) in cases {
            let result = install_bios_grub(&mut system, Path::new("/dev/vda"), ext4.path());
            match (result, expected) {
                (Ok(report), Ok((install, config))) => {
                    assert_eq!(report.install, install, "{name}");
                    assert_eq!(report.config.as_deref(), config, "{name}");
                }
                (Err(err), Err(needle)) => {
                    let chain = format!(
                        "{err}: {}",
                        std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default()
                    );
                    assert!(chain.contains(needle), "{name}: {chain}");
                }
                (other, _) => panic!("{name}: {other:?}"),
            }
            assert_eq!(system.events, events, "{name}");
        }
    }

    /// The scripts stand in for GRUB; everything else is real: the ext4 mount, the bind mounts, the
    /// chroot, the unmounts. What the scripts saw inside the chroot is read back with debugfs.
    #[test]
    fn real_chroot_runs_the_roots_grub_with_dev_and_proc_bound() {
        let tree = tempfile::tempdir().unwrap();
        for dir in ["bin", "usr/sbin", "dev", "proc", "sys", "run", "boot"] {
            std::fs::create_dir_all(tree.path().join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", tree.path().join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", tree.path().join("bin/sh")).unwrap();
        let script = |name: &str, body: &str| {
            let path = tree.path().join("usr/sbin").join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        };
        script(
            "grub-install",
            r#"echo "$@" > /install.args
/bin/busybox test -b "$2" && echo block > /disk.seen
/bin/busybox test -e /proc/self/mounts && echo mounted > /proc.seen"#,
        );
        script("grub-mkconfig", r#"/bin/busybox mkdir -p /boot/grub && echo "$@" > /boot/grub/grub.cfg"#);
        let image = made_with("mkfs.ext4", &["-q", "-F", "-d", tree.path().to_str().unwrap()]);
        let dev = LoopDevice::attach(image.path(), &[]);
        let report = install_bios_grub(&mut HostSystem::new(), dev.path(), dev.path()).unwrap();
        assert_eq!(report.install, format!("/usr/sbin/grub-install --target=i386-pc {}", dev.0));
        assert_eq!(report.config.as_deref(), Some("/usr/sbin/grub-mkconfig -o /boot/grub/grub.cfg"));
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&format!("{} ", dev.0)), "everything unmounted: {mounts}");
        drop(dev);
        let cat = |path: &str| run("debugfs", &["-R", &format!("cat {path}"), image.path().to_str().unwrap()]);
        assert_eq!(
            cat("/install.args").trim(),
            format!("--target=i386-pc {}", report.install.rsplit(' ').next().unwrap())
        );
        assert_eq!(cat("/disk.seen").trim(), "block");
        assert_eq!(cat("/proc.seen").trim(), "mounted");
        assert_eq!(cat("/boot/grub/grub.cfg").trim(), "-o /boot/grub/grub.cfg");
    }

    #[test]
    fn real_read_only_mount_is_undone() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("etc")).unwrap();
        std::fs::write(tree.path().join("etc/hostname"), b"deployed\n").unwrap();
        let image = made_with("mkfs.ext4", &["-q", "-F", "-d", tree.path().to_str().unwrap()]);
        let dev = LoopDevice::attach(image.path(), &[]);
        let mut seen = None;
        let content = with_mounted_root(&mut HostSystem::new(), dev.path(), Access::ReadOnly, |_, root, _| {
            seen = Some(root.to_owned());
            let writable = std::fs::write(root.join("etc/new"), b"x").is_ok();
            Ok((std::fs::read_to_string(root.join("etc/hostname")).unwrap(), writable))
        })
        .unwrap();
        assert_eq!(content, ("deployed\n".to_owned(), false));
        let mount_point = seen.unwrap();
        assert!(!mount_point.exists(), "mount point removed");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(mount_point.to_str().unwrap()), "unmounted");
    }
}
