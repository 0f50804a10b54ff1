//! Disk files of a VM with several disks, seen from the host once QEMU has stopped: known content
//! written at a few places, a fingerprint of the whole content that shows whether anything changed,
//! partition tables and file system signatures for an erase to remove, and the host tools' look for
//! any signature left.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_runner::CommandError;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::disk;
use crate::images::{self, ImageError};
use crate::path_io::PathIoError;

/// The unit of the fingerprint: a file system block, and the granularity of a hole.
pub const BLOCK: u64 = 4096;
pub const MIB: u64 = 1024 * 1024;
/// blkid's exit status when it found nothing.
const BLKID_NOTHING_FOUND: &str = "exit status: 2";

#[derive(Debug, thiserror::Error)]
pub enum DisksError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("qemu-img map of {disk} is not the JSON expected: {output}")]
    Map { disk: PathBuf, output: String },
    #[error("{disk} ({size} bytes) is too small for {what}")]
    TooSmall { disk: PathBuf, size: u64, what: &'static str },
}

/// A file's content, independent of which of its ranges are holes: its size and the SHA-256 of each
/// non-zero [`BLOCK`], by offset. Reads only the ranges `qemu-img map` reports as data, so a sparse
/// file of gigabytes with a few MiB written takes milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    blocks: BTreeMap<u64, [u8; 32]>,
}

impl Fingerprint {
    pub fn of(path: &Path) -> Result<Fingerprint, DisksError> {
        let size = fs::metadata(path).map_err(PathIoError::at("stat", path))?.len();
        let mut file = File::open(path).map_err(PathIoError::at("open", path))?;
        let mut blocks = BTreeMap::new();
        let mut buf = vec![0u8; MIB as usize];
        for (start, length) in data_ranges(path)? {
            // Whole blocks: a data range of a raw file is block-aligned but for the file's end.
            let (first, end) = (start / BLOCK * BLOCK, (start + length).min(size));
            file.seek(SeekFrom::Start(first)).map_err(PathIoError::at("seek", path))?;
            let mut offset = first;
            while offset < end {
                let want = (end - offset).min(MIB) as usize;
                file.read_exact(&mut buf[..want]).map_err(PathIoError::at("read", path))?;
                for (index, block) in buf[..want].chunks(BLOCK as usize).enumerate() {
                    if block.iter().any(|&byte| byte != 0) {
                        blocks.insert(offset + index as u64 * BLOCK, Sha256::digest(block).into());
                    }
                }
                offset += want as u64;
            }
        }
        Ok(Fingerprint { size, blocks })
    }

    /// One SHA-256 over the size and every non-zero block, for logs.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.size.to_le_bytes());
        for (offset, block) in &self.blocks {
            hash.update(offset.to_le_bytes());
            hash.update(block);
        }
        hex::encode(hash.finalize())
    }

    /// Bytes in non-zero blocks.
    pub fn nonzero_bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK
    }

    /// The offsets of the blocks that differ from `other`'s (written, changed or zeroed), in order.
    pub fn differing_blocks(&self, other: &Fingerprint) -> Vec<u64> {
        let mut offsets: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(offset, hash)| other.blocks.get(offset) != Some(hash))
            .map(|(offset, _)| *offset)
            .chain(other.blocks.keys().filter(|offset| !self.blocks.contains_key(offset)).copied())
            .collect();
        offsets.sort_unstable();
        offsets
    }

    /// The offsets of the non-zero blocks, in order.
    pub fn nonzero_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.keys().copied()
    }
}

/// The `(start, length)` ranges `qemu-img map` reports as holding data (the rest reads as zeroes).
fn data_ranges(path: &Path) -> Result<Vec<(u64, u64)>, DisksError> {
    let mapped = ferric_runner::run(
        "map the data ranges of a disk file",
        Command::new("qemu-img").args(["map", "--output=json", "-f", "raw"]).arg(path),
    )?;
    let bad = || DisksError::Map { disk: path.to_owned(), output: mapped.stdout.clone() };
    let entries: Value = serde_json::from_str(&mapped.stdout).map_err(|_| bad())?;
    let mut ranges = Vec::new();
    for entry in entries.as_array().ok_or_else(bad)? {
        if entry["data"] == true && entry["zero"] != true {
            ranges.push((entry["start"].as_u64().ok_or_else(bad)?, entry["length"].as_u64().ok_or_else(bad)?));
        }
    }
    Ok(ranges)
}

/// Makes `path` a sparse file of `size` bytes holding only three marks: its first, middle and last MiB,
/// each filled with lines that name `tag`, the region and the sector, so that no two sectors of any disk
/// of any round are alike.
pub fn write_marks(path: &Path, size: u64, tag: &str) -> Result<(), DisksError> {
    if size < 3 * MIB {
        return Err(DisksError::TooSmall { disk: path.to_owned(), size, what: "three MiB marks" });
    }
    disk::create_sparse(path, size)?;
    for (region, offset) in [("head", 0), ("middle", size / 2 / MIB * MIB), ("tail", size - MIB)] {
        write_mark(path, offset, &format!("{tag} {region}"))?;
    }
    Ok(())
}

/// Writes a MiB at `offset` of `path` whose every sector says `tag` and its number.
pub fn write_mark(path: &Path, offset: u64, tag: &str) -> Result<(), DisksError> {
    let mut content = Vec::with_capacity(MIB as usize);
    for sector in (offset / 512)..((offset + MIB) / 512) {
        let line = format!("{tag} sector {sector}\n");
        let mut bytes = line.repeat(512 / line.len() + 1).into_bytes();
        bytes.truncate(512);
        content.extend(bytes);
    }
    let mut file = OpenOptions::new().write(true).open(path).map_err(PathIoError::at("open for writing", path))?;
    file.seek(SeekFrom::Start(offset)).map_err(PathIoError::at("seek", path))?;
    file.write_all(&content).map_err(PathIoError::at("write", path))?;
    file.sync_all().map_err(PathIoError::at("sync", path))?;
    Ok(())
}

/// The partition table an erase must remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// GPT: protective MBR, primary header and entries, backup header at the disk's end.
    Gpt,
    /// An MBR (DOS) partition table.
    Dos,
}

/// A signature put on a disk, where a prober finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// What blkid calls it: `ext4`, `swap`.
    pub kind: &'static str,
    pub offset: u64,
}

/// Makes `path` a sparse file of `size` bytes with a `table` of two partitions, an ext4 file system
/// (64 MiB, made by mke2fs at the partition's offset) and a swap signature (mkswap's first page): what a
/// tenant leaves. Returns where the file systems are.
pub fn write_signatures(path: &Path, size: u64, table: Table, scratch: &Path) -> Result<Vec<Signature>, DisksError> {
    if size < 128 * MIB {
        return Err(DisksError::TooSmall { disk: path.to_owned(), size, what: "two partitions" });
    }
    disk::create_sparse(path, size)?;
    ferric_runner::run(
        "partition the disk file",
        Command::new("sgdisk")
            .args(["--clear", "--new=1:2048:+64M", "--typecode=1:8300", "--new=2:0:+32M", "--typecode=2:8200"])
            .arg(path),
    )?;
    let partitions = images::gpt_partitions(path)?;
    let partition = |number| {
        let found = partitions.iter().find(|p: &&images::GptPartition| p.number == number).cloned();
        found.ok_or_else(|| ImageError::MissingPartition {
            disk: path.to_owned(),
            number,
            partitions: partitions.clone(),
        })
    };
    let (ext4, swap) = (partition(1)?, partition(2)?);
    ferric_runner::run(
        "make an ext4 file system in partition 1",
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "tenant-root", "-E"])
            .arg(format!("offset={}", ext4.offset()))
            .arg(path)
            .arg(format!("{}k", ext4.size_bytes() / 1024)),
    )?;
    fs::create_dir_all(scratch).map_err(PathIoError::at("create directory", scratch))?;
    let swap_file = scratch.join("swap.img");
    disk::create_sparse(&swap_file, swap.size_bytes())?;
    ferric_runner::run(
        "make a swap signature",
        Command::new("mkswap").args(["-q", "-L", "tenant-swap"]).arg(&swap_file),
    )?;
    let mut page = vec![0u8; 64 * 1024];
    File::open(&swap_file)
        .and_then(|mut file| file.read_exact(&mut page))
        .map_err(PathIoError::at("read", &swap_file))?;
    let mut file = OpenOptions::new().write(true).open(path).map_err(PathIoError::at("open for writing", path))?;
    file.seek(SeekFrom::Start(swap.offset())).map_err(PathIoError::at("seek", path))?;
    file.write_all(&page).map_err(PathIoError::at("write", path))?;
    file.sync_all().map_err(PathIoError::at("sync", path))?;
    drop(file);
    if table == Table::Dos {
        ferric_runner::run(
            "turn the GPT into an MBR partition table",
            Command::new("sgdisk").arg("--gpttombr=1:2").arg(path),
        )?;
    }
    Ok(vec![Signature { kind: "ext4", offset: ext4.offset() }, Signature { kind: "swap", offset: swap.offset() }])
}

/// What blkid's low-level probe finds at `offset` of `path` (`TYPE=ext4`, `PTTYPE=gpt`...), one
/// `KEY=value` per line; empty when it finds nothing.
pub fn probe_at(path: &Path, offset: u64) -> Result<String, DisksError> {
    let probed = ferric_runner::run(
        format!("probe {} at byte {offset}", path.display()),
        Command::new("blkid").args(["-p", "-o", "export", "-O"]).arg(offset.to_string()).arg(path),
    );
    match probed {
        Ok(found) => {
            Ok(found.stdout.lines().filter(|line| !line.starts_with("DEVNAME=")).collect::<Vec<_>>().join("\n"))
        }
        Err(CommandError::Failed { status, .. }) if status == BLKID_NOTHING_FOUND => Ok(String::new()),
        Err(error) => Err(error.into()),
    }
}

/// The signatures `wipefs` finds on the whole of `path` (partition tables, a file system at its start),
/// as its `OFFSET TYPE` lines; empty when there are none.
pub fn wipefs_signatures(path: &Path) -> Result<Vec<String>, DisksError> {
    let found = ferric_runner::run(
        format!("list the signatures on {}", path.display()),
        Command::new("wipefs").args(["--no-act", "--noheadings", "--output", "OFFSET,TYPE"]).arg(path),
    )?;
    Ok(found.stdout.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    fn the_fingerprint_sees_every_changed_block_but_not_holes_versus_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let size = 64 * MIB;
        write_marks(&path, size, "d1 r1").unwrap();
        let before = Fingerprint::of(&path).unwrap();
        assert_eq!(before.size, size);
        assert_eq!(before.nonzero_bytes(), 3 * MIB, "three MiB marks");
        let first: Vec<u64> = before.nonzero_blocks().take(1).collect();
        assert_eq!(first, [0]);

        // Zeroes written over a hole change nothing; one byte anywhere does.
        write_at(&path, 10 * MIB, &vec![0u8; MIB as usize]);
        assert_eq!(Fingerprint::of(&path).unwrap(), before);
        write_at(&path, 40 * MIB + 5, b"x");
        let after = Fingerprint::of(&path).unwrap();
        assert_eq!(after.differing_blocks(&before), [40 * MIB]);
        assert_ne!(after.digest(), before.digest());
        // Zeroing a marked block is a change too.
        write_at(&path, size - BLOCK, &[0u8; BLOCK as usize]);
        assert_eq!(Fingerprint::of(&path).unwrap().differing_blocks(&before), [40 * MIB, size - BLOCK]);

        // Another tag marks every sector differently.
        write_marks(&path, size, "d1 r2").unwrap();
        let other = Fingerprint::of(&path).unwrap();
        assert_eq!(other.differing_blocks(&before).len() as u64, 3 * MIB / BLOCK);
    }

    #[test]
    fn signatures_are_where_the_probes_find_them_and_gone_once_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        for (name, table, pttype) in [("gpt", Table::Gpt, "PTTYPE=gpt"), ("dos", Table::Dos, "PTTYPE=dos")] {
            let path = dir.path().join(name);
            let size = 256 * MIB;
            let signatures = write_signatures(&path, size, table, &dir.path().join("scratch")).unwrap();
            assert_eq!(signatures.iter().map(|s| s.kind).collect::<Vec<_>>(), ["ext4", "swap"], "{name}");
            for signature in &signatures {
                let found = probe_at(&path, signature.offset).unwrap();
                assert!(found.contains(&format!("TYPE={}", signature.kind)), "{name}: {found}");
            }
            assert!(probe_at(&path, 0).unwrap().contains(pttype), "{name}");
            let listed = wipefs_signatures(&path).unwrap();
            assert!(!listed.is_empty(), "{name}: {listed:?}");
            assert_eq!(disk::boot_structures(&path).unwrap().backup_gpt, table == Table::Gpt, "{name}");

            // Zeroing the first MiB of each file system and of the disk, and the disk's last MiB, is enough
            // for the probes; ext4's other metadata (inode tables, journal, backup superblocks) remains.
            for offset in [0, signatures[0].offset, signatures[1].offset, size - MIB] {
                write_at(&path, offset, &vec![0u8; MIB as usize]);
            }
            for offset in [0, signatures[0].offset, signatures[1].offset] {
                assert_eq!(probe_at(&path, offset).unwrap(), "", "{name} at {offset}");
            }
            assert_eq!(wipefs_signatures(&path).unwrap(), Vec::<String>::new(), "{name}");
            let left = Fingerprint::of(&path).unwrap();
            assert!(left.nonzero_blocks().all(|offset| offset > signatures[0].offset + MIB), "{name}");
        }
    }
}
