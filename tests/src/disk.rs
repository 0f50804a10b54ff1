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
    let mut disk_file = File::open(disk).map_err(PathIoError::at("open", disk))?;
    let mut image_file = File::open(image).map_err(PathIoError::at("open", image))?;
    let (mut disk_buf, mut image_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut image_file, &mut image_buf).map_err(PathIoError::at("read", image))?;
        if n == 0 {
            return Ok(None);
        }
        let got = read_full(&mut disk_file, &mut disk_buf[..n]).map_err(PathIoError::at("read", disk))?;
        if let Some(i) = (0..n).find(|&i| i >= got || disk_buf[i] != image_buf[i]) {
            return Ok(Some(offset + i as u64));
        }
        offset += n as u64;
    }
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
