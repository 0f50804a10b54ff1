//! The deployable test OS: a whole-disk image that proves it booted.
//!
//! A GPT disk whose only partition is an EFI system partition holding `\EFI\BOOT\BOOTX64.EFI`, a unified
//! kernel image (systemd's EFI stub + kernel + command line + initrd). UEFI firmware boots it from the
//! removable-media path without any boot entry, so a deployed copy boots exactly as a real OS image would.
//! Its initrd prints `FERRIC-TESTOS-BOOTED <token>` on the serial console and powers off, so a test sees
//! both that *this* image (the token is unique per test) booted and that the VM stopped by itself.
//!
//! A variant also reads the config drive before powering off: it loads the virtio disk and ISO 9660
//! drivers (taken from the kernel package), mounts the file system labelled `config-2` and prints
//! `FERRIC-CONFIGDRIVE <value>` with the `ferric_probe` member of `openstack/latest/meta_data.json`, so a
//! test sees that the deployed OS found the config drive the agent wrote, as cloud-init would.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image_builder::cpio::{Archive, CpioError};
use ferric_runner::CommandError;
use sha2::{Digest, Sha256};

use crate::images::remove_if_present;
use crate::path_io::PathIoError;

/// The marker line's prefix; the full line is `FERRIC-TESTOS-BOOTED <token>`.
pub const MARKER_PREFIX: &str = "FERRIC-TESTOS-BOOTED";
/// Size of the whole-disk image.
pub const IMAGE_BYTES: u64 = 48 * MIB;
/// Kernel command line baked into the unified kernel image.
pub const CMDLINE: &str = "console=ttyS0,115200n8 quiet panic=-1";
/// The config drive probe's line prefix; the full line is `FERRIC-CONFIGDRIVE <value>`.
pub const CONFIG_DRIVE_PREFIX: &str = "FERRIC-CONFIGDRIVE";
/// The probe's line when it found no value: `FERRIC-CONFIGDRIVE-MISSING <why>`.
pub const CONFIG_DRIVE_MISSING_PREFIX: &str = "FERRIC-CONFIGDRIVE-MISSING";
/// The member of `meta_data.json`'s `meta` object the probe prints (`{"meta": {"ferric_probe": "..."}}`).
pub const CONFIG_DRIVE_PROBE_KEY: &str = "ferric_probe";
/// Modules the probe loads, dependencies first (the `depends` of Debian 12's 6.1 kernel modules), by path
/// in the kernel package's `lib/modules/<release>/`.
const PROBE_MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/cdrom/cdrom.ko",
    "kernel/fs/isofs/isofs.ko",
];

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
/// The ESP starts at 1 MiB, the usual alignment.
const ESP_FIRST_SECTOR: u64 = 2048;
/// The ESP ends 1 MiB before the end of the disk, leaving room for the backup GPT.
const ESP_BYTES: u64 = IMAGE_BYTES - 2 * MIB;
const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum TestOsError {
    #[error("token `{0}` may only hold ASCII letters, digits, '.', '_' and '-'")]
    BadToken(String),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("assembling the test OS initrd failed")]
    Archive(#[from] CpioError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("kernel package {package} has no {module}")]
    MissingModule { package: PathBuf, module: String },
}

/// What the test OS does besides printing its marker and powering off.
#[derive(Debug, Clone, Default)]
pub struct TestOsOptions {
    /// Read the config drive before powering off, with drivers from this kernel package (`.deb`), which
    /// must be the package of the kernel the image boots.
    pub config_drive_probe: Option<PathBuf>,
}

/// A built test OS image.
#[derive(Debug, Clone)]
pub struct TestOsImage {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    /// The initrd inside the image (gzip-compressed cpio), also usable for booting the kernel directly.
    pub initrd: PathBuf,
    /// The unified kernel image (`\EFI\BOOT\BOOTX64.EFI` in the image), for images of other layouts.
    pub uki: PathBuf,
    /// The token in the marker line.
    pub token: String,
}

impl TestOsImage {
    /// The line the booted test OS prints on its serial console.
    pub fn marker(&self) -> String {
        marker_line(&self.token)
    }
}

/// The marker line for `token`.
pub fn marker_line(token: &str) -> String {
    format!("{MARKER_PREFIX} {token}")
}

/// The config drive probe's line for `value`.
pub fn config_drive_line(value: &str) -> String {
    format!("{CONFIG_DRIVE_PREFIX} {value}")
}

/// What the config drive probe printed on a serial console: the value of each `FERRIC-CONFIGDRIVE` line,
/// and the reason of each `FERRIC-CONFIGDRIVE-MISSING` line prefixed with `missing: `.
pub fn config_drive_reports(serial: &str) -> Vec<String> {
    serial
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter_map(|line| {
            let (prefix, rest) = line.split_once(' ')?;
            match prefix {
                CONFIG_DRIVE_PREFIX => Some(rest.to_owned()),
                CONFIG_DRIVE_MISSING_PREFIX => Some(format!("missing: {rest}")),
                _ => None,
            }
        })
        .collect()
}

/// Builds `testos.img` (and its intermediate files) in `out_dir`, booting the kernel at `vmlinuz`.
pub fn build(out_dir: &Path, vmlinuz: &Path, token: &str) -> Result<TestOsImage, TestOsError> {
    build_with(out_dir, vmlinuz, token, &TestOsOptions::default())
}

/// [`build`] with `options`.
pub fn build_with(
    out_dir: &Path,
    vmlinuz: &Path,
    token: &str,
    options: &TestOsOptions,
) -> Result<TestOsImage, TestOsError> {
    let token_is_safe = !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !token_is_safe {
        return Err(TestOsError::BadToken(token.to_string()));
    }
    create_dir(out_dir)?;

    let probe_modules = match &options.config_drive_probe {
        Some(package) => Some(extract_probe_modules(package, &out_dir.join("modules"))?),
        None => None,
    };
    let initrd = out_dir.join("initrd.cpio.gz");
    write_initrd(&initrd, token, probe_modules.as_deref())?;

    let cmdline = out_dir.join("cmdline.txt");
    write(&cmdline, CMDLINE.as_bytes())?;
    let uki = out_dir.join("BOOTX64.EFI");
    remove_if_present(&uki)?;
    ferric_runner::run(
        "build the test OS unified kernel image",
        Command::new("objcopy")
            .arg("--add-section")
            .arg(section(".cmdline", &cmdline))
            .args(["--change-section-vma", ".cmdline=0x30000", "--add-section"])
            .arg(section(".linux", vmlinuz))
            .args(["--change-section-vma", ".linux=0x2000000", "--add-section"])
            .arg(section(".initrd", &initrd))
            .args(["--change-section-vma", ".initrd=0x3000000", EFI_STUB])
            .arg(&uki),
    )?;

    let esp = out_dir.join("esp.fat");
    build_esp(&esp, &uki)?;

    let image = out_dir.join("testos.img");
    remove_if_present(&image)?;
    let file = fs::File::create(&image).map_err(PathIoError::at("create", &image))?;
    file.set_len(IMAGE_BYTES).map_err(PathIoError::at("set the size of", &image))?;
    drop(file);
    let esp_last_sector = ESP_FIRST_SECTOR + ESP_BYTES / SECTOR - 1;
    ferric_runner::run(
        "partition the test OS image",
        Command::new("sgdisk")
            .arg("--clear")
            .arg(format!("--new=1:{ESP_FIRST_SECTOR}:{esp_last_sector}"))
            .args(["--typecode=1:EF00", "--change-name=1:EFI system partition"])
            .arg(&image),
    )?;
    copy_into(&esp, &image, ESP_FIRST_SECTOR * SECTOR)?;

    let sha256 = file_sha256(&image)?;
    Ok(TestOsImage { path: image, sha256, size_bytes: IMAGE_BYTES, initrd, uki, token: token.to_string() })
}

/// The config drive probe, run after the marker: load the drivers, wait for a file system labelled
/// `config-2` (busybox's findfs reads ISO 9660 labels), mount it read-only and print the probe value.
const CONFIG_DRIVE_PROBE: &str = r#"for module in $PROBE_MODULES; do $bb insmod "/lib/modules/$module" || say "ferric-testos: insmod $module failed"; done
dev=
for attempt in $($bb seq 100); do
    dev=$($bb findfs LABEL=config-2 2>/dev/null) && break
    dev=
    $bb sleep 0.1
done
meta=/mnt/openstack/latest/meta_data.json
if [ -z "$dev" ]; then
    say "FERRIC-CONFIGDRIVE-MISSING no file system labelled config-2"
elif ! $bb mkdir -p /mnt || ! $bb mount -t iso9660 -o ro "$dev" /mnt; then
    say "FERRIC-CONFIGDRIVE-MISSING cannot mount $dev"
elif [ ! -f "$meta" ]; then
    say "FERRIC-CONFIGDRIVE-MISSING $dev has no openstack/latest/meta_data.json"
else
    say "ferric-testos: config drive on $dev"
    value=$($bb sed -n 's/.*"ferric_probe": *"\([^"]*\)".*/\1/p' "$meta")
    if [ -n "$value" ]; then
        say "FERRIC-CONFIGDRIVE $value"
    else
        say "FERRIC-CONFIGDRIVE-MISSING no ferric_probe in $dev:openstack/latest/meta_data.json"
    fi
fi
"#;

/// A gzip cpio with busybox at /bin/busybox and an /init script that prints the marker and powers off;
/// with `probe_modules` (module files), it reads the config drive in between.
fn write_initrd(out: &Path, token: &str, probe_modules: Option<&[PathBuf]>) -> Result<(), TestOsError> {
    let marker = marker_line(token);
    let mut init = format!(
        "#!/bin/busybox sh\n\
         bb=/bin/busybox\n\
         say() {{ echo \"$1\" > /dev/console; echo \"$1\" > /dev/ttyS0; }}\n\
         $bb mount -t proc proc /proc\n\
         $bb mount -t sysfs sysfs /sys\n\
         $bb mount -t devtmpfs devtmpfs /dev\n\
         say '{marker}'\n"
    );
    let mut archive = Archive::new(0);
    for dir in ["dev", "proc", "sys"] {
        archive.add_dir(dir, 0o755)?;
    }
    if let Some(modules) = probe_modules {
        archive.add_dir("lib", 0o755)?;
        archive.add_dir("lib/modules", 0o755)?;
        let mut names = Vec::new();
        for module in modules {
            let name = module.file_name().unwrap_or_default().to_string_lossy().into_owned();
            archive.add_file_from_path(&format!("lib/modules/{name}"), 0o644, module)?;
            names.push(name);
        }
        init.push_str(&format!("PROBE_MODULES='{}'\n", names.join(" ")));
        init.push_str(CONFIG_DRIVE_PROBE);
    }
    init.push_str("$bb poweroff -f\n");
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_file_from_path("bin/busybox", 0o755, Path::new(BUSYBOX))?;
    archive.add_file("init", 0o755, init.into_bytes())?;
    let file = fs::File::create(out).map_err(PathIoError::at("create", out))?;
    archive.write_gzip(file).map_err(PathIoError::at("write", out))?;
    Ok(())
}

/// Extracts [`PROBE_MODULES`] from the kernel package `deb` into `dir`; returns their paths in loading order.
fn extract_probe_modules(deb: &Path, dir: &Path) -> Result<Vec<PathBuf>, TestOsError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(PathIoError::at("remove", dir))?;
    }
    create_dir(dir)?;
    let patterns = PROBE_MODULES.iter().map(|module| format!("./lib/modules/*/{module}"));
    ferric_runner::run(
        "extract the config drive probe's modules from the kernel package",
        Command::new("bash")
            .args(["-o", "pipefail", "-c", r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "${@:3}""#])
            .arg("extract")
            .arg(deb)
            .arg(dir)
            .args(patterns),
    )?;
    let releases = dir.join("lib/modules");
    let release = fs::read_dir(&releases)
        .map_err(PathIoError::at("list", &releases))?
        .next()
        .transpose()
        .map_err(PathIoError::at("list", &releases))?
        .map(|entry| entry.path())
        .unwrap_or_default();
    PROBE_MODULES
        .iter()
        .map(|module| {
            let path = release.join(module);
            if path.is_file() {
                Ok(path)
            } else {
                Err(TestOsError::MissingModule { package: deb.to_owned(), module: (*module).to_owned() })
            }
        })
        .collect()
}

/// A FAT file system of the ESP's size holding the unified kernel image at the removable-media path.
fn build_esp(esp: &Path, uki: &Path) -> Result<(), TestOsError> {
    remove_if_present(esp)?;
    ferric_runner::run(
        "format the test OS EFI system partition",
        Command::new("mkfs.vfat").args(["-C", "-n", "FERRIC-ESP"]).arg(esp).arg((ESP_BYTES / 1024).to_string()),
    )?;
    let image_arg = esp.as_os_str();
    ferric_runner::run(
        "create \\EFI\\BOOT on the ESP",
        Command::new("mmd").env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(image_arg).args(["::/EFI", "::/EFI/BOOT"]),
    )?;
    ferric_runner::run(
        "copy BOOTX64.EFI to the ESP",
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image_arg)
            .arg(uki)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    )?;
    Ok(())
}

/// Hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> Result<String, PathIoError> {
    let mut file = fs::File::open(path).map_err(PathIoError::at("open", path))?;
    let mut sha256 = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut buf).map_err(PathIoError::at("read", path))?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
    }
    Ok(hex::encode(sha256.finalize()))
}

fn section(name: &str, file: &Path) -> String {
    format!("{name}={}", file.display())
}

fn copy_into(source: &Path, target: &Path, offset: u64) -> Result<(), PathIoError> {
    let mut from = fs::File::open(source).map_err(PathIoError::at("open", source))?;
    let mut to =
        fs::OpenOptions::new().write(true).open(target).map_err(PathIoError::at("open for writing", target))?;
    to.seek(SeekFrom::Start(offset)).map_err(PathIoError::at("seek", target))?;
    io::copy(&mut from, &mut to).map_err(PathIoError::at("copy the ESP into", target))?;
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), PathIoError> {
    fs::create_dir_all(path).map_err(PathIoError::at("create directory", path))
}

fn write(path: &Path, contents: &[u8]) -> Result<(), PathIoError> {
    fs::write(path, contents).map_err(PathIoError::at("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_tokens_that_could_break_the_init_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(dir.path(), Path::new("/nonexistent"), "x'; reboot").unwrap_err();
        assert!(matches!(err, TestOsError::BadToken(_)), "{err}");
    }

    #[test]
    fn the_probe_finds_its_value_in_compact_and_pretty_meta_data() {
        let dir = tempfile::tempdir().unwrap();
        let sed_line = CONFIG_DRIVE_PROBE.lines().find(|line| line.contains("sed -n")).unwrap();
        let expression = sed_line.split('\'').nth(1).unwrap();
        assert!(expression.contains(&format!("\"{CONFIG_DRIVE_PROBE_KEY}\"")), "{expression}");
        let meta = serde_json::json!({"uuid": "u", "meta": {"other": "x", CONFIG_DRIVE_PROBE_KEY: "tok-1.a_b"}});
        let cases = [
            ("compact", meta.to_string(), "tok-1.a_b"),
            ("pretty", serde_json::to_string_pretty(&meta).unwrap(), "tok-1.a_b"),
            ("absent", r#"{"meta": {"other": "x"}}"#.to_owned(), ""),
        ];
        for (name, json, expected) in cases {
            let file = dir.path().join(name);
            fs::write(&file, json).unwrap();
            let out = ferric_runner::run(name, Command::new(BUSYBOX).args(["sed", "-n", expression]).arg(&file));
            assert_eq!(out.unwrap().stdout.trim_end(), expected, "{name}");
        }
    }

    #[test]
    fn probe_reports_are_read_from_the_serial_console() {
        let serial = "FERRIC-TESTOS-BOOTED t\r\nferric-testos: config drive on /dev/vda2\r\nFERRIC-CONFIGDRIVE v-1\r\n\
                      FERRIC-CONFIGDRIVE-MISSING no file system labelled config-2\n";
        assert_eq!(config_drive_reports(serial), ["v-1", "missing: no file system labelled config-2"]);
        assert_eq!(config_drive_line("v-1"), "FERRIC-CONFIGDRIVE v-1");
    }

    #[test]
    fn digest_matches_the_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(file_sha256(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
