//! Deploy images made from the test OS, with the tools an operator would use: qcow2 with compressed
//! clusters (`qemu-img convert -c`), zstd-compressed raw, a raw image larger than a VM's RAM, an ext4
//! root file system as a partition image (`mke2fs -d`, no mount), a config drive ISO (`genisoimage`).
//! And the host's look into a deployed disk once QEMU has stopped: its GPT (`sgdisk`) and the FAT file
//! systems in it (mtools at an offset, no mount).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_runner::CommandError;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::path_io::PathIoError;

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
const CHUNK: usize = MIB as usize;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{base} ({base_bytes} bytes) is larger than the {total_bytes} bytes asked for")]
    BaseTooLarge { base: PathBuf, base_bytes: u64, total_bytes: u64 },
    #[error("{disk} has no partition {number} after adding it; its partitions: {partitions:?}")]
    MissingPartition { disk: PathBuf, number: u32, partitions: Vec<GptPartition> },
    #[error("partition {number} of {disk} ({partition_bytes} bytes) cannot hold {content} ({content_bytes} bytes)")]
    PartitionTooSmall { disk: PathBuf, number: u32, partition_bytes: u64, content: PathBuf, content_bytes: u64 },
}

/// An image file as a deploy request names it: where it is, its SHA-256 (`image_checksum`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
}

impl ImageFile {
    /// Hashes `path`.
    pub fn of(path: &Path) -> Result<ImageFile, PathIoError> {
        let mut file = fs::File::open(path).map_err(PathIoError::at("open", path))?;
        let mut sha256 = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size_bytes = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(PathIoError::at("read", path))?;
            if n == 0 {
                break;
            }
            sha256.update(&buf[..n]);
            size_bytes += n as u64;
        }
        Ok(ImageFile { path: path.to_owned(), sha256: hex::encode(sha256.finalize()), size_bytes })
    }
}

/// `raw` converted to qcow2 with every cluster compressed (zero clusters stay unallocated), as
/// `qemu-img convert -c -O qcow2` makes it.
pub fn qcow2_compressed(raw: &Path, out: &Path) -> Result<ImageFile, ImageError> {
    remove_if_present(out)?;
    ferric_runner::run(
        "convert the image to compressed qcow2",
        Command::new("qemu-img").args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(out),
    )?;
    Ok(ImageFile::of(out)?)
}

/// `input` compressed with `zstd -1`.
pub fn zstd_compressed(input: &Path, out: &Path) -> Result<ImageFile, ImageError> {
    ferric_runner::run(
        "compress the image with zstd",
        Command::new("zstd").args(["-1", "-q", "-f", "--no-progress", "-o"]).arg(out).arg(input),
    )?;
    Ok(ImageFile::of(out)?)
}

/// `base` followed by pseudo-random bytes (from `seed`) up to `total_bytes`: a raw whole-disk image
/// of any size that no compressor shrinks and no zero detection skips.
pub fn padded_with_noise(base: &Path, out: &Path, total_bytes: u64, seed: u64) -> Result<ImageFile, ImageError> {
    let base_bytes = fs::metadata(base).map_err(PathIoError::at("stat", base))?.len();
    if base_bytes > total_bytes {
        return Err(ImageError::BaseTooLarge { base: base.to_owned(), base_bytes, total_bytes });
    }
    remove_if_present(out)?;
    fs::copy(base, out).map_err(PathIoError::at("copy the base image to", out))?;
    let mut file = fs::OpenOptions::new().append(true).open(out).map_err(PathIoError::at("open for appending", out))?;
    let mut noise = Noise(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = total_bytes - base_bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        noise.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).map_err(PathIoError::at("write", out))?;
        left -= n as u64;
    }
    file.sync_all().map_err(PathIoError::at("sync", out))?;
    drop(file);
    Ok(ImageFile::of(out)?)
}

/// splitmix64: fast, and plenty random for "incompressible".
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// An ext4 file system of `bytes` labelled `label`, holding the tree under `staging` (owned by root):
/// a partition image, made without mounting anything.
pub fn ext4_filesystem(staging: &Path, out: &Path, bytes: u64, label: &str) -> Result<ImageFile, ImageError> {
    remove_if_present(out)?;
    ferric_runner::run(
        "make the ext4 partition image",
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0", "-d"])
            .arg(staging)
            .arg(out)
            .arg(format!("{}k", bytes / 1024)),
    )?;
    Ok(ImageFile::of(out)?)
}

/// A config drive as OpenStack lays it out (`openstack/latest/meta_data.json`, plus `user_data` when
/// given), as an ISO 9660 file system labelled `config-2` with Rock Ridge and Joliet, made with
/// `genisoimage` from a staging directory `out` + `.d`.
pub fn config_drive_iso(meta_data: &Value, user_data: Option<&str>, out: &Path) -> Result<ImageFile, ImageError> {
    let staging = out.with_extension("d");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(PathIoError::at("remove", &staging))?;
    }
    let latest = staging.join("openstack").join("latest");
    fs::create_dir_all(&latest).map_err(PathIoError::at("create directory", &latest))?;
    let meta_path = latest.join("meta_data.json");
    fs::write(&meta_path, meta_data.to_string()).map_err(PathIoError::at("write", &meta_path))?;
    if let Some(user_data) = user_data {
        let user_path = latest.join("user_data");
        fs::write(&user_path, user_data).map_err(PathIoError::at("write", &user_path))?;
    }
    remove_if_present(out)?;
    ferric_runner::run(
        "make the config drive ISO",
        Command::new("genisoimage").args(["-quiet", "-V", "config-2", "-R", "-J", "-o"]).arg(out).arg(&staging),
    )?;
    Ok(ImageFile::of(out)?)
}

/// A GPT partition as `sgdisk --print` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
    /// sgdisk's short type code: `EF00` (EFI system), `8200` (Linux swap), `8300` (Linux data), ...
    pub type_code: String,
    pub name: String,
}

impl GptPartition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// The partitions of the GPT on `disk`, in table order.
pub fn gpt_partitions(disk: &Path) -> Result<Vec<GptPartition>, ImageError> {
    let printed = ferric_runner::run("read the GPT", Command::new("sgdisk").arg("--print").arg(disk))?;
    Ok(parse_sgdisk_print(&printed.stdout))
}

/// `sgdisk --verify`'s report on `disk` (`No problems found. ...` when both GPT copies are consistent
/// and where they belong).
pub fn gpt_verify(disk: &Path) -> Result<String, ImageError> {
    Ok(ferric_runner::run("verify the GPT", Command::new("sgdisk").arg("--verify").arg(disk))?.stdout)
}

/// The partition rows after sgdisk's `Number  Start (sector) ...` heading.
fn parse_sgdisk_print(printed: &str) -> Vec<GptPartition> {
    printed
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("Number"))
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let number = fields.next()?.parse().ok()?;
            let first_lba = fields.next()?.parse().ok()?;
            let last_lba = fields.next()?.parse().ok()?;
            let (_size, _unit) = (fields.next()?, fields.next()?);
            let type_code = fields.next()?.to_owned();
            let name = fields.collect::<Vec<_>>().join(" ");
            Some(GptPartition { number, first_lba, last_lba, type_code, name })
        })
        .collect()
}

/// Grows the GPT disk image `disk` to make room for `content` (rounded up to whole MiB), adds a
/// partition named `name` of type `type_code` in the free space at its end, and copies `content` into it,
/// as a deploy adds a config drive partition to a whole-disk image. Returns the new partition.
pub fn append_partition(disk: &Path, content: &Path, name: &str, type_code: &str) -> Result<GptPartition, ImageError> {
    let content_bytes = fs::metadata(content).map_err(PathIoError::at("stat", content))?.len();
    let disk_bytes = fs::metadata(disk).map_err(PathIoError::at("stat", disk))?.len();
    // A MiB for alignment and for the backup GPT.
    let grown = disk_bytes + content_bytes.div_ceil(MIB) * MIB + MIB;
    let file = fs::OpenOptions::new().write(true).open(disk).map_err(PathIoError::at("open for writing", disk))?;
    file.set_len(grown).map_err(PathIoError::at("grow", disk))?;
    drop(file);
    let number = gpt_partitions(disk)?.iter().map(|p| p.number).max().unwrap_or(0) + 1;
    ferric_runner::run(
        format!("add partition {number} at the end of {}", disk.display()),
        Command::new("sgdisk")
            .arg("--move-second-header")
            .arg(format!("--new={number}:0:0"))
            .arg(format!("--typecode={number}:{type_code}"))
            .arg(format!("--change-name={number}:{name}"))
            .arg(disk),
    )?;
    let partitions = gpt_partitions(disk)?;
    let Some(partition) = partitions.iter().find(|p| p.number == number).cloned() else {
        return Err(ImageError::MissingPartition { disk: disk.to_owned(), number, partitions });
    };
    if partition.size_bytes() < content_bytes {
        return Err(ImageError::PartitionTooSmall {
            disk: disk.to_owned(),
            number,
            partition_bytes: partition.size_bytes(),
            content: content.to_owned(),
            content_bytes,
        });
    }
    let mut from = fs::File::open(content).map_err(PathIoError::at("open", content))?;
    let mut to = fs::OpenOptions::new().write(true).open(disk).map_err(PathIoError::at("open for writing", disk))?;
    to.seek(SeekFrom::Start(partition.offset())).map_err(PathIoError::at("seek", disk))?;
    io::copy(&mut from, &mut to).map_err(PathIoError::at("copy the partition content into", disk))?;
    Ok(partition)
}

/// Every path in the FAT file system at byte `offset` of `disk`, as mtools prints them: `::/EFI/`,
/// `::/EFI/BOOT/BOOTX64.EFI` (directories end with `/`).
pub fn fat_paths(disk: &Path, offset: u64) -> Result<Vec<String>, ImageError> {
    let listed = ferric_runner::run(
        "list the FAT file system",
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-/", "-b", "-i"])
            .arg(at_offset(disk, offset))
            .arg("::/"),
    )?;
    Ok(listed.stdout.lines().map(|line| line.trim().to_owned()).filter(|line| !line.is_empty()).collect())
}

/// Copies the file `path` (like `::/EFI/BOOT/BOOTX64.EFI`) of the FAT file system at byte `offset` of
/// `disk` to `out`.
pub fn fat_copy_out(disk: &Path, offset: u64, path: &str, out: &Path) -> Result<(), ImageError> {
    remove_if_present(out)?;
    ferric_runner::run(
        format!("copy {path} out of the FAT file system"),
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-n", "-i"])
            .arg(at_offset(disk, offset))
            .arg(path)
            .arg(out),
    )?;
    Ok(())
}

/// mtools' `FILE@@OFFSET` image argument.
fn at_offset(disk: &Path, offset: u64) -> std::ffi::OsString {
    let mut arg = disk.as_os_str().to_owned();
    arg.push(format!("@@{offset}"));
    arg
}

/// Removes `path`; one that is already absent is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), PathIoError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PathIoError::at("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_pads_to_the_size_and_does_not_compress() {
        let dir = tempfile::tempdir().unwrap();
        let (base, out) = (dir.path().join("base"), dir.path().join("padded"));
        fs::write(&base, vec![7u8; 1000]).unwrap();
        let padded = padded_with_noise(&base, &out, 3 * MIB + 5, 42).unwrap();
        assert_eq!(padded.size_bytes, 3 * MIB + 5);
        let bytes = fs::read(&out).unwrap();
        assert!(bytes[..1000].iter().all(|&b| b == 7));
        let again = padded_with_noise(&base, &dir.path().join("again"), 3 * MIB + 5, 42).unwrap();
        assert_eq!(again.sha256, padded.sha256, "the same seed gives the same image");
        let compressed = zstd_compressed(&out, &dir.path().join("padded.zst")).unwrap();
        assert!(compressed.size_bytes > 3 * MIB, "zstd shrank the noise to {} bytes", compressed.size_bytes);
        let err = padded_with_noise(&base, &dir.path().join("small"), 10, 1).unwrap_err();
        assert!(matches!(err, ImageError::BaseTooLarge { .. }), "{err}");
    }

    #[test]
    fn a_compressed_qcow2_converts_back_to_the_raw_image() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut content = vec![0u8; 4 * MIB as usize];
        content[MIB as usize..2 * MIB as usize].fill(0x5a);
        fs::write(&raw, &content).unwrap();
        let qcow2 = qcow2_compressed(&raw, &dir.path().join("disk.qcow2")).unwrap();
        assert_eq!(&fs::read(&qcow2.path).unwrap()[..4], b"QFI\xfb");
        assert!(qcow2.size_bytes < MIB, "{} bytes: not compressed", qcow2.size_bytes);
        let back = dir.path().join("back.raw");
        let convert = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&qcow2.path).arg(&back).status();
        assert!(convert.unwrap().success());
        assert!(fs::read(&back).unwrap() == content, "qcow2 -> raw differs");
    }

    #[test]
    fn an_ext4_image_holds_the_staged_tree() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("root");
        fs::create_dir_all(staging.join("boot/efi/EFI/ferric")).unwrap();
        fs::write(staging.join("boot/efi/EFI/ferric/testos.efi"), b"MZ fake loader").unwrap();
        let image = ext4_filesystem(&staging, &dir.path().join("root.ext4"), 16 * MIB, "root").unwrap();
        assert_eq!(image.size_bytes, 16 * MIB);
        let out = ferric_runner::run(
            "read the loader back",
            Command::new("debugfs").args(["-R", "cat /boot/efi/EFI/ferric/testos.efi"]).arg(&image.path),
        )
        .unwrap();
        assert_eq!(out.stdout, "MZ fake loader");
        let label =
            ferric_runner::run("label", Command::new("blkid").args(["-o", "value", "-s", "LABEL"]).arg(&image.path));
        assert_eq!(label.unwrap().stdout.trim(), "root");
    }

    #[test]
    fn an_appended_partition_holds_its_content_and_the_gpt_stays_valid() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        fs::File::create(&disk).unwrap().set_len(8 * MIB).unwrap();
        let made =
            Command::new("sgdisk").args(["--clear", "--new=1:2048:8191", "--typecode=1:EF00"]).arg(&disk).status();
        assert!(made.unwrap().success());
        let meta = serde_json::json!({"uuid": "u-1", "meta": {"ferric_probe": "p-1"}});
        let iso = config_drive_iso(&meta, Some("#cloud-config\n"), &dir.path().join("cd.iso")).unwrap();

        let partition = append_partition(&disk, &iso.path, "config-2", "0700").unwrap();
        assert_eq!(partition.number, 2);
        assert_eq!(partition.name, "config-2");
        assert!(partition.size_bytes() >= iso.size_bytes);
        assert_eq!(crate::disk::iso9660_volume_id(&disk, partition.offset()).unwrap().as_deref(), Some("config-2"));
        let partitions = gpt_partitions(&disk).unwrap();
        assert_eq!(partitions.len(), 2, "{partitions:?}");
        assert_eq!((partitions[0].first_lba, partitions[0].type_code.as_str()), (2048, "EF00"));
        let verified = gpt_verify(&disk).unwrap();
        assert!(verified.contains("No problems found"), "{verified}");
        let extracted = ferric_runner::run(
            "read meta_data.json from the ISO",
            Command::new("isoinfo").args(["-R", "-x", "/openstack/latest/meta_data.json", "-i"]).arg(&iso.path),
        )
        .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&extracted.stdout).unwrap(), meta);
    }

    #[test]
    fn lists_and_copies_files_of_a_fat_file_system_inside_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fat = dir.path().join("esp.fat");
        ferric_runner::run("format", Command::new("mkfs.vfat").arg("-C").arg(&fat).arg("2048")).unwrap();
        let loader = dir.path().join("loader.efi");
        fs::write(&loader, b"loader bytes").unwrap();
        let mtools = |program: &str, args: &[&str]| {
            let mut command = Command::new(program);
            ferric_runner::run(program, command.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&fat).args(args)).unwrap();
        };
        mtools("mmd", &["::/EFI", "::/EFI/ferric"]);
        mtools("mcopy", &[loader.to_str().unwrap(), "::/EFI/ferric/testos.efi"]);
        let disk = dir.path().join("disk");
        let mut content = vec![0u8; MIB as usize];
        content.extend(fs::read(&fat).unwrap());
        fs::write(&disk, content).unwrap();

        let paths = fat_paths(&disk, MIB).unwrap();
        assert_eq!(paths, ["::/EFI/", "::/EFI/ferric/", "::/EFI/ferric/testos.efi"]);
        let out = dir.path().join("out.efi");
        fat_copy_out(&disk, MIB, "::/EFI/ferric/testos.efi", &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"loader bytes");
    }

    #[test]
    fn reads_partition_rows_of_sgdisk_print() {
        let printed = "Disk x: 98304 sectors, 48.0 MiB\n\
                       Total free space is 4029 sectors (2.0 MiB)\n\n\
                       Number  Start (sector)    End (sector)  Size       Code  Name\n\
                       \x20  1            2048         1128447   550.0 MiB   EF00  EFI system partition\n\
                       \x20  2         1128448         1259519   64.0 MiB    8200  \n\
                       \x20  3         1259520         3356671   1024.0 MiB  8300  root\n";
        let partitions = parse_sgdisk_print(printed);
        assert_eq!(partitions.len(), 3);
        assert_eq!(
            partitions[0],
            GptPartition {
                number: 1,
                first_lba: 2048,
                last_lba: 1128447,
                type_code: "EF00".into(),
                name: "EFI system partition".into()
            }
        );
        assert_eq!((partitions[1].type_code.as_str(), partitions[1].name.as_str()), ("8200", ""));
        assert_eq!(partitions[2].size_bytes(), 1024 * MIB);
        assert_eq!(partitions[2].offset(), 1259520 * 512);
    }
}
