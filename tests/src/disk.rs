//! The VM's disk as a file: created sparse, then inspected byte by byte once QEMU has stopped.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::path_io::PathIoError;

/// "EFI PART", the GPT header signature.
pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const SECTOR: u64 = 512;
const CHUNK: usize = 1024 * 1024;

/// Creates (or truncates to zero and regrows) a sparse raw disk of `bytes`.
pub fn create_sparse(path: &Path, bytes: u64) -> Result<(), PathIoError> {
    let file = File::create(path).map_err(PathIoError::at("create", path))?;
    file.set_len(bytes).map_err(PathIoError::at("set the size of", path))
}

/// The offset of the first byte where `disk` differs from `image` (over the image's length), if any.
pub fn first_difference(disk: &Path, image: &Path) -> Result<Option<u64>, PathIoError> {
    first_difference_in(disk, 0, image, 0, u64::MAX)
}

/// Compares up to `len` bytes of `image` from `image_offset` (fewer where the image ends) with `disk` from
/// `disk_offset`: the disk offset of the first byte that differs, if any. For a partition, or a range
/// of a whole-disk image that the deploy must leave as it was.
pub fn first_difference_in(
    disk: &Path,
    disk_offset: u64,
    image: &Path,
    image_offset: u64,
    len: u64,
) -> Result<Option<u64>, PathIoError> {
    let mut disk_file = File::open(disk).map_err(PathIoError::at("open", disk))?;
    let mut image_file = File::open(image).map_err(PathIoError::at("open", image))?;
    disk_file.seek(SeekFrom::Start(disk_offset)).map_err(PathIoError::at("seek", disk))?;
    image_file.seek(SeekFrom::Start(image_offset)).map_err(PathIoError::at("seek", image))?;
    let (mut disk_buf, mut image_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let n = read_full(&mut image_file, &mut image_buf[..want]).map_err(PathIoError::at("read", image))?;
        if n == 0 {
            break;
        }
        let got = read_full(&mut disk_file, &mut disk_buf[..n]).map_err(PathIoError::at("read", disk))?;
        if let Some(i) = (0..n).find(|&i| i >= got || disk_buf[i] != image_buf[i]) {
            return Ok(Some(disk_offset + done + i as u64));
        }
        done += n as u64;
    }
    Ok(None)
}

/// The volume identifier of an ISO 9660 file system starting at `offset` (its primary volume
/// descriptor, sector 16 of 2048 bytes, says `CD001`), or `None` when there is none.
pub fn iso9660_volume_id(path: &Path, offset: u64) -> Result<Option<String>, PathIoError> {
    let mut file = File::open(path).map_err(PathIoError::at("open", path))?;
    file.seek(SeekFrom::Start(offset + 16 * 2048)).map_err(PathIoError::at("seek", path))?;
    let mut descriptor = [0u8; 2048];
    let got = read_full(&mut file, &mut descriptor).map_err(PathIoError::at("read", path))?;
    if got < descriptor.len() || descriptor[0] != 1 || &descriptor[1..6] != b"CD001" {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&descriptor[40..72]).trim_end().to_owned()))
}

/// The offset of the first non-zero byte in `[offset, offset + len)`, if any (bytes past the end count as zero).
pub fn first_nonzero(path: &Path, offset: u64, len: u64) -> Result<Option<u64>, PathIoError> {
    let mut file = File::open(path).map_err(PathIoError::at("open", path))?;
    file.seek(SeekFrom::Start(offset)).map_err(PathIoError::at("seek", path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let n = read_full(&mut file, &mut buf[..want]).map_err(PathIoError::at("read", path))?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Ok(Some(offset + done + i as u64));
        }
        if n < want {
            return Ok(None);
        }
        done += n as u64;
    }
    Ok(None)
}

/// What firmware would look at to boot the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStructures {
    /// "EFI PART" at LBA 1.
    pub primary_gpt: bool,
    /// 0x55 0xAA at bytes 510..512 (MBR or protective MBR).
    pub mbr_signature: bool,
    /// "EFI PART" at the disk's last sector.
    pub backup_gpt: bool,
}

/// Reads the partition-table signatures of a raw disk file.
pub fn boot_structures(path: &Path) -> Result<BootStructures, PathIoError> {
    let mut file = File::open(path).map_err(PathIoError::at("open", path))?;
    let size = file.metadata().map_err(PathIoError::at("stat", path))?.len();
    let mut head = [0u8; 2 * SECTOR as usize];
    let got = read_full(&mut file, &mut head).map_err(PathIoError::at("read", path))?;
    let head = &head[..got];
    let mut last = [0u8; 8];
    let backup_gpt = size >= 3 * SECTOR && {
        file.seek(SeekFrom::Start(size - SECTOR)).map_err(PathIoError::at("seek", path))?;
        read_full(&mut file, &mut last).map_err(PathIoError::at("read", path))? == 8 && &last == GPT_SIGNATURE
    };
    Ok(BootStructures {
        primary_gpt: head.get(512..520) == Some(GPT_SIGNATURE.as_slice()),
        mbr_signature: head.get(510..512) == Some([0x55, 0xAA].as_slice()),
        backup_gpt,
    })
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    fn finds_where_the_disk_differs_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, image) = (dir.path().join("disk"), dir.path().join("image"));
        let content: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i % 253) as u8 + 1).collect();
        std::fs::write(&image, &content).unwrap();
        create_sparse(&disk, 8 * CHUNK as u64).unwrap();
        assert_eq!(first_difference(&disk, &image).unwrap(), Some(0));
        write_at(&disk, 0, &content);
        assert_eq!(first_difference(&disk, &image).unwrap(), None);
        write_at(&disk, 2 * CHUNK as u64 + 7, &[0]);
        assert_eq!(first_difference(&disk, &image).unwrap(), Some(2 * CHUNK as u64 + 7));
    }

    #[test]
    fn compares_a_range_of_the_image_with_the_disk_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, image) = (dir.path().join("disk"), dir.path().join("image"));
        let content: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i % 253) as u8 + 1).collect();
        std::fs::write(&image, &content).unwrap();
        create_sparse(&disk, 8 * CHUNK as u64).unwrap();
        let at = 5 * CHUNK as u64 + 3;
        write_at(&disk, at, &content[100..]);
        assert_eq!(first_difference_in(&disk, at, &image, 100, u64::MAX).unwrap(), None);
        assert_eq!(first_difference_in(&disk, at, &image, 100, 10).unwrap(), None);
        assert_eq!(first_difference_in(&disk, at, &image, 99, 10).unwrap(), Some(at));
        write_at(&disk, at + CHUNK as u64 + 1, &[0]);
        assert_eq!(first_difference_in(&disk, at, &image, 100, u64::MAX).unwrap(), Some(at + CHUNK as u64 + 1));
        assert_eq!(first_difference_in(&disk, at, &image, 100, CHUNK as u64).unwrap(), None);
    }

    #[test]
    fn reads_the_volume_id_of_an_iso9660_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        create_sparse(&disk, 4 * CHUNK as u64).unwrap();
        assert_eq!(iso9660_volume_id(&disk, CHUNK as u64).unwrap(), None);
        let mut descriptor = vec![0u8; 2048];
        descriptor[..6].copy_from_slice(b"\x01CD001");
        descriptor[40..72].copy_from_slice(format!("{:<32}", "config-2").as_bytes());
        write_at(&disk, CHUNK as u64 + 16 * 2048, &descriptor);
        assert_eq!(iso9660_volume_id(&disk, CHUNK as u64).unwrap().as_deref(), Some("config-2"));
        assert_eq!(iso9660_volume_id(&disk, 0).unwrap(), None);
    }

    #[test]
    fn a_short_disk_differs_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, image) = (dir.path().join("disk"), dir.path().join("image"));
        std::fs::write(&image, [1u8; 100]).unwrap();
        std::fs::write(&disk, [1u8; 60]).unwrap();
        assert_eq!(first_difference(&disk, &image).unwrap(), Some(60));
    }

    #[test]
    fn finds_the_first_nonzero_byte_in_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        create_sparse(&disk, 4 * CHUNK as u64).unwrap();
        assert_eq!(first_nonzero(&disk, 0, 4 * CHUNK as u64).unwrap(), None);
        write_at(&disk, CHUNK as u64 + 5, &[9]);
        assert_eq!(first_nonzero(&disk, CHUNK as u64, CHUNK as u64).unwrap(), Some(CHUNK as u64 + 5));
        assert_eq!(first_nonzero(&disk, 2 * CHUNK as u64, 10 * CHUNK as u64).unwrap(), None);
    }

    #[test]
    fn sees_gpt_headers_and_the_mbr_signature() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let size = 4 * CHUNK as u64;
        create_sparse(&disk, size).unwrap();
        let blank = BootStructures { primary_gpt: false, mbr_signature: false, backup_gpt: false };
        assert_eq!(boot_structures(&disk).unwrap(), blank);
        write_at(&disk, 510, &[0x55, 0xAA]);
        write_at(&disk, 512, GPT_SIGNATURE);
        write_at(&disk, size - SECTOR, GPT_SIGNATURE);
        let found = boot_structures(&disk).unwrap();
        assert_eq!(found, BootStructures { primary_gpt: true, mbr_signature: true, backup_gpt: true });
    }
}
