//! The deployable test OS: a whole-disk image that proves it booted.
//!
//! A GPT disk whose only partition is an EFI system partition holding `\EFI\BOOT\BOOTX64.EFI`, a unified
//! kernel image (systemd's EFI stub + kernel + command line + initrd). UEFI firmware boots it from the
//! removable-media path without any boot entry, so a deployed copy boots exactly as a real OS image would.
//! Its initrd prints `FERRIC-TESTOS-BOOTED <token>` on the serial console and powers off, so a test sees
//! both that *this* image (the token is unique per test) booted and that the VM stopped by itself.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image_builder::cpio::{Archive, CpioError};
use ferric_runner::CommandError;
use sha2::{Digest, Sha256};

use crate::path_io::PathIoError;

/// The marker line's prefix; the full line is `FERRIC-TESTOS-BOOTED <token>`.
pub const MARKER_PREFIX: &str = "FERRIC-TESTOS-BOOTED";
/// Size of the whole-disk image.
pub const IMAGE_BYTES: u64 = 48 * MIB;
/// Kernel command line baked into the unified kernel image.
pub const CMDLINE: &str = "console=ttyS0,115200n8 quiet panic=-1";

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
}

/// A built test OS image.
#[derive(Debug, Clone)]
pub struct TestOsImage {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    /// The initrd inside the image (gzip-compressed cpio), also usable for booting the kernel directly.
    pub initrd: PathBuf,
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

/// Builds `testos.img` (and its intermediate files) in `out_dir`, booting the kernel at `vmlinuz`.
pub fn build(out_dir: &Path, vmlinuz: &Path, token: &str) -> Result<TestOsImage, TestOsError> {
    let token_is_safe = !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !token_is_safe {
        return Err(TestOsError::BadToken(token.to_string()));
    }
    create_dir(out_dir)?;

    let initrd = out_dir.join("initrd.cpio.gz");
    write_initrd(&initrd, token)?;

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
    Ok(TestOsImage { path: image, sha256, size_bytes: IMAGE_BYTES, initrd, token: token.to_string() })
}

/// A gzip cpio with busybox at /bin/busybox and an /init script that prints the marker and powers off.
fn write_initrd(out: &Path, token: &str) -> Result<(), TestOsError> {
    let marker = marker_line(token);
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         echo '{marker}' > /dev/console\n\
         echo '{marker}' > /dev/ttyS0\n\
         /bin/busybox poweroff -f\n"
    );
    let mut archive = Archive::new(0);
    for dir in ["dev", "proc", "sys"] {
        archive.add_dir(dir, 0o755)?;
    }
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_file_from_path("bin/busybox", 0o755, Path::new(BUSYBOX))?;
    archive.add_file("init", 0o755, init.into_bytes())?;
    let file = fs::File::create(out).map_err(PathIoError::at("create", out))?;
    archive.write_gzip(file).map_err(PathIoError::at("write", out))?;
    Ok(())
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

fn remove_if_present(path: &Path) -> Result<(), PathIoError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PathIoError::at("remove", path)(e)),
        _ => Ok(()),
    }
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
    fn digest_matches_the_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(file_sha256(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
