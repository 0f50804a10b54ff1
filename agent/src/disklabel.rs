//! Partition tables as found on a disk: the one reader of GPT (512-byte or 4096-byte sectors) and msdos
//! labels, shared by the config drive, the UEFI boot entry and the reported disk identifier. Whole-disk
//! images come from users, so every field is validated (CRCs, sizes, ranges) and every offset computed
//! from one is checked: a hostile table gives an error naming the field, never a panic or a wrap-around.
//!
//! Also here: what the table writers share (CRC32, CHS addresses) and the logical sector size of a disk.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use uuid::Uuid;

use crate::target::Target;

/// msdos labels are addressed in 512-byte sectors (msdos on 4Kn disks is not handled).
pub const MBR_SECTOR: u64 = 512;
pub const MBR_TYPE_PROTECTIVE: u8 = 0xEE;
pub const MBR_EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// Offset of the four 16-byte primary entries in an MBR or extended boot record.
pub const MBR_ENTRIES_OFFSET: usize = 446;
pub const MBR_ENTRY_SIZE: usize = 16;
/// Offset of the disk identifier (signature) in the MBR.
const MBR_DISK_ID_OFFSET: usize = 440;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// Extended boot records followed at most (a chain may loop).
const MAX_LOGICAL_PARTITIONS: usize = 128;

/// Where the GPT header is looked for (LBA 1): 512-byte sectors first, then 4K native.
const GPT_SECTOR_SIZES: [u64; 2] = [512, 4096];
pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// GPT header fields (byte offsets, UEFI 2.10 §5.3.2).
pub const GPT_HEADER_SIZE: usize = 12;
pub const GPT_HEADER_CRC: usize = 16;
pub const GPT_MY_LBA: usize = 24;
pub const GPT_ALTERNATE_LBA: usize = 32;
pub const GPT_FIRST_USABLE: usize = 40;
pub const GPT_LAST_USABLE: usize = 48;
pub const GPT_DISK_GUID: usize = 56;
pub const GPT_ENTRIES_LBA: usize = 72;
pub const GPT_ENTRY_COUNT: usize = 80;
pub const GPT_ENTRY_SIZE: usize = 84;
pub const GPT_ENTRIES_CRC: usize = 88;
/// The header fields end here; its declared size may be larger (up to a sector).
const GPT_MIN_HEADER_SIZE: usize = 92;
/// Partition entries are multiples of 128 bytes; larger arrays than this are refused (tools write 16 KiB).
const GPT_ENTRY_UNIT: u64 = 128;
const GPT_MAX_ENTRIES_BYTES: u64 = 4 << 20;
/// Partition entry fields (byte offsets).
pub const GPT_ENTRY_TYPE: usize = 0;
pub const GPT_ENTRY_GUID: usize = 16;
pub const GPT_ENTRY_FIRST_LBA: usize = 32;
pub const GPT_ENTRY_LAST_LBA: usize = 40;
/// Partition names are 36 UTF-16LE code units.
pub const GPT_ENTRY_NAME: usize = 56;
pub const GPT_NAME_UNITS: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum DiskLabelError {
    #[error("reading {what} at byte {offset} of {device} failed")]
    Read {
        device: String,
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{device} has no partition table (no MBR boot signature)")]
    NoPartitionTable { device: String },
    #[error("{device} has an invalid GPT: {reason}")]
    InvalidGpt { device: String, reason: String },
    #[error("{device} has an invalid msdos partition table: {reason}")]
    InvalidMbr { device: String, reason: String },
    #[error("{device}: the byte offset computed from the partition table's {field} overflows")]
    Overflow { device: String, field: String },
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLabel {
    pub kind: LabelKind,
    /// Bytes per logical block the table is addressed in.
    pub sector_size: u64,
    /// The used partitions, by number.
    pub partitions: Vec<Partition>,
    /// Sector 0: the MBR, protective on GPT disks (writers update it).
    pub mbr: [u8; 512],
}

impl DiskLabel {
    /// The disk identifier in the MBR (also present, usually zero, in a GPT disk's protective MBR).
    pub fn mbr_disk_id(&self) -> u32 {
        le_u32(&self.mbr[MBR_DISK_ID_OFFSET..])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelKind {
    Gpt(Gpt),
    Mbr { disk_id: u32 },
}

/// The primary GPT: its header and entry array as on the disk (for writers that add a partition or
/// move the backup), and the validated fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Uuid,
    /// The primary header, its declared size.
    pub header: Vec<u8>,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub entries_lba: u64,
    pub entry_size: usize,
    /// The whole partition entry array, used entries or not.
    pub entries: Vec<u8>,
}

impl Gpt {
    pub fn entry_count(&self) -> usize {
        self.entries.len() / self.entry_size
    }

    pub fn entry(&self, index: usize) -> &[u8] {
        &self.entries[index * self.entry_size..(index + 1) * self.entry_size]
    }

    pub fn entry_mut(&mut self, index: usize) -> &mut [u8] {
        &mut self.entries[index * self.entry_size..(index + 1) * self.entry_size]
    }

    /// An entry is used when its type GUID is not zero.
    pub fn is_used(&self, index: usize) -> bool {
        self.entry(index)[GPT_ENTRY_TYPE..GPT_ENTRY_TYPE + 16].iter().any(|byte| *byte != 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    Gpt(Uuid),
    Mbr(u8),
}

/// What Linux shows as PARTUUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartUuid {
    /// The GPT partition GUID.
    Gpt(Uuid),
    /// `<disk identifier>-<partition number>` in hex.
    Mbr { disk_id: u32, number: u32 },
}

impl fmt::Display for PartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartUuid::Gpt(guid) => write!(f, "{guid}"),
            PartUuid::Mbr { disk_id, number } => write!(f, "{disk_id:08x}-{number:02x}"),
        }
    }
}

/// A used partition, its extent in bytes (inside the disk: [`read`] checked it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// As Linux numbers it: GPT entry index + 1; msdos primaries 1-4, logical partitions from 5.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub kind: PartitionType,
    pub uuid: PartUuid,
    /// GPT partition name; msdos partitions have none.
    pub name: Option<String>,
}

impl Partition {
    /// The byte after the partition (cannot overflow: [`read`] found it inside the disk).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// One of the four entries of an MBR or extended boot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrEntry {
    pub kind: u8,
    pub start_lba: u32,
    pub sectors: u32,
}

impl MbrEntry {
    pub fn is_used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }

    pub fn is_extended(&self) -> bool {
        MBR_EXTENDED_TYPES.contains(&self.kind)
    }

    /// The sector after the entry's extent (two u32 values: no u64 overflow).
    pub fn end_lba(&self) -> u64 {
        u64::from(self.start_lba) + u64::from(self.sectors)
    }
}

/// The four primary entries of an MBR (or of an extended boot record).
pub fn mbr_entries(sector: &[u8]) -> [MbrEntry; 4] {
    std::array::from_fn(|index| {
        let entry = &sector[MBR_ENTRIES_OFFSET + MBR_ENTRY_SIZE * index..][..MBR_ENTRY_SIZE];
        MbrEntry { kind: entry[4], start_lba: le_u32(&entry[8..]), sectors: le_u32(&entry[12..]) }
    })
}

/// The partition table of `target`: a GPT when the MBR has a protective entry (the GPT must then be
/// valid: there is no falling back to the MBR), else the msdos table.
pub fn read(target: &mut dyn Target) -> Result<DiskLabel, DiskLabelError> {
    let mut disk = Reader { device: target.describe(), target };
    let mut mbr = [0u8; 512];
    let sector_zero = disk.read(0, 512, "the MBR")?;
    mbr.copy_from_slice(&sector_zero);
    if mbr[510..512] != BOOT_SIGNATURE {
        return Err(DiskLabelError::NoPartitionTable { device: disk.device });
    }
    if mbr_entries(&mbr).iter().any(|entry| entry.kind == MBR_TYPE_PROTECTIVE) {
        let (gpt, sector_size, partitions) = read_gpt(&mut disk)?;
        Ok(DiskLabel { kind: LabelKind::Gpt(gpt), sector_size, partitions, mbr })
    } else {
        let (disk_id, partitions) = read_mbr(&mut disk, &mbr)?;
        Ok(DiskLabel { kind: LabelKind::Mbr { disk_id }, sector_size: MBR_SECTOR, partitions, mbr })
    }
}

/// Reads with errors naming the device; checked arithmetic with errors naming the field.
struct Reader<'a> {
    target: &'a mut dyn Target,
    device: String,
}

impl Reader<'_> {
    fn read(&mut self, offset: u64, len: usize, what: &'static str) -> Result<Vec<u8>, DiskLabelError> {
        let mut buf = vec![0u8; len];
        self.target.read_at(offset, &mut buf).map_err(|source| DiskLabelError::Read {
            device: self.device.clone(),
            what,
            offset,
            source,
        })?;
        Ok(buf)
    }

    fn checked(&self, value: Option<u64>, field: impl Into<String>) -> Result<u64, DiskLabelError> {
        value.ok_or_else(|| DiskLabelError::Overflow { device: self.device.clone(), field: field.into() })
    }

    fn invalid_gpt(&self, reason: String) -> DiskLabelError {
        DiskLabelError::InvalidGpt { device: self.device.clone(), reason }
    }
}

fn read_gpt(disk: &mut Reader<'_>) -> Result<(Gpt, u64, Vec<Partition>), DiskLabelError> {
    let disk_bytes = disk.target.size();
    let mut found = None;
    for sector in GPT_SECTOR_SIZES {
        if disk_bytes >= 2 * sector {
            let bytes = disk.read(sector, sector as usize, "the GPT header")?;
            if bytes.starts_with(GPT_SIGNATURE) {
                found = Some((sector, bytes));
                break;
            }
        }
    }
    let Some((sector, bytes)) = found else {
        return Err(disk.invalid_gpt("protective MBR but no GPT header at LBA 1".to_owned()));
    };
    let header_size = le_u32(&bytes[GPT_HEADER_SIZE..]) as usize;
    if !(GPT_MIN_HEADER_SIZE..=sector as usize).contains(&header_size) {
        return Err(disk.invalid_gpt(format!("header size {header_size} is not {GPT_MIN_HEADER_SIZE}..={sector}")));
    }
    let header = bytes[..header_size].to_vec();
    if gpt_header_crc(&header) != le_u32(&header[GPT_HEADER_CRC..]) {
        return Err(disk.invalid_gpt("header checksum (CRC32) mismatch".to_owned()));
    }
    let my_lba = le_u64(&header[GPT_MY_LBA..]);
    if my_lba != 1 {
        return Err(disk.invalid_gpt(format!("the primary header says it is at LBA {my_lba}, not 1")));
    }

    let entry_size = u64::from(le_u32(&header[GPT_ENTRY_SIZE..]));
    let entry_count = u64::from(le_u32(&header[GPT_ENTRY_COUNT..]));
    if entry_size == 0 || entry_size % GPT_ENTRY_UNIT != 0 {
        return Err(disk.invalid_gpt(format!("partition entry size {entry_size} is not a multiple of 128")));
    }
    let entries_bytes = disk.checked(entry_count.checked_mul(entry_size), "partition entry count × size")?;
    if entry_count == 0 || entries_bytes > GPT_MAX_ENTRIES_BYTES {
        return Err(disk.invalid_gpt(format!(
            "{entry_count} partition entries of {entry_size} bytes (1 to {GPT_MAX_ENTRIES_BYTES} bytes allowed)"
        )));
    }

    let disk_sectors = disk_bytes / sector;
    let first_usable = le_u64(&header[GPT_FIRST_USABLE..]);
    let last_usable = le_u64(&header[GPT_LAST_USABLE..]);
    if first_usable > last_usable || last_usable >= disk_sectors {
        return Err(disk.invalid_gpt(format!(
            "usable LBAs {first_usable}..={last_usable} do not fit the disk's {disk_sectors} sectors"
        )));
    }
    let entries_lba = le_u64(&header[GPT_ENTRIES_LBA..]);
    let entries_end =
        disk.checked(entries_lba.checked_add(entries_bytes.div_ceil(sector)), "partition entry array LBA")?;
    if entries_lba < 2 || entries_end > first_usable {
        return Err(disk.invalid_gpt(format!(
            "the partition entries at LBAs {entries_lba}..{entries_end} are not between the header and the first \
             usable LBA {first_usable}"
        )));
    }
    let entries_offset = disk.checked(entries_lba.checked_mul(sector), "partition entry array LBA")?;
    let entries = disk.read(entries_offset, entries_bytes as usize, "the GPT partition entries")?;
    if crc32(&entries) != le_u32(&header[GPT_ENTRIES_CRC..]) {
        return Err(disk.invalid_gpt("partition entries checksum (CRC32) mismatch".to_owned()));
    }

    let gpt = Gpt {
        disk_guid: guid_at(&header, GPT_DISK_GUID),
        header,
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        entries_lba,
        entry_size: entry_size as usize,
        entries,
    };
    let mut partitions = Vec::new();
    for index in (0..gpt.entry_count()).filter(|index| gpt.is_used(*index)) {
        let entry = gpt.entry(index);
        let number = index as u32 + 1;
        let (first, last) = (le_u64(&entry[GPT_ENTRY_FIRST_LBA..]), le_u64(&entry[GPT_ENTRY_LAST_LBA..]));
        if first > last || first < first_usable || last > last_usable {
            return Err(disk.invalid_gpt(format!(
                "partition {number} spans LBAs {first}..={last}, outside the usable {first_usable}..={last_usable}"
            )));
        }
        let start = disk.checked(first.checked_mul(sector), format!("partition {number} first LBA"))?;
        let sectors = disk.checked((last - first).checked_add(1), format!("partition {number} last LBA"))?;
        let size = disk.checked(sectors.checked_mul(sector), format!("partition {number} last LBA"))?;
        let units: Vec<u16> = entry[GPT_ENTRY_NAME..GPT_ENTRY_NAME + 2 * GPT_NAME_UNITS]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|unit| *unit != 0)
            .collect();
        partitions.push(Partition {
            number,
            start,
            size,
            kind: PartitionType::Gpt(guid_at(entry, GPT_ENTRY_TYPE)),
            uuid: PartUuid::Gpt(guid_at(entry, GPT_ENTRY_GUID)),
            name: Some(String::from_utf16_lossy(&units)),
        });
    }
    Ok((gpt, sector, partitions))
}

/// The disk identifier and the partitions of an msdos table: primaries, and the logical partitions of
/// an extended one (numbered from 5 in chain order, as Linux does).
fn read_mbr(disk: &mut Reader<'_>, mbr: &[u8]) -> Result<(u32, Vec<Partition>), DiskLabelError> {
    let disk_id = le_u32(&mbr[MBR_DISK_ID_OFFSET..]);
    let mut extents = Vec::new();
    for (index, entry) in mbr_entries(mbr).iter().enumerate().filter(|(_, entry)| entry.is_used()) {
        if entry.is_extended() {
            extents.extend(logical_partitions(disk, entry)?);
        } else {
            extents.push((index as u32 + 1, u64::from(entry.start_lba), entry.end_lba(), entry.kind));
        }
    }
    let disk_bytes = disk.target.size();
    let mut partitions = Vec::new();
    for (number, first, end, kind) in extents {
        let start = disk.checked(first.checked_mul(MBR_SECTOR), format!("partition {number} start"))?;
        let end = disk.checked(end.checked_mul(MBR_SECTOR), format!("partition {number} size"))?;
        if end > disk_bytes {
            return Err(DiskLabelError::InvalidMbr {
                device: disk.device.clone(),
                reason: format!("partition {number} ends at byte {end}, past the end of the disk ({disk_bytes} bytes)"),
            });
        }
        let uuid = PartUuid::Mbr { disk_id, number };
        partitions.push(Partition {
            number,
            start,
            size: end - start,
            kind: PartitionType::Mbr(kind),
            uuid,
            name: None,
        });
    }
    partitions.sort_by_key(|partition| partition.number);
    Ok((disk_id, partitions))
}

/// (number, first sector, sector after the end, type) of each logical partition in `extended`, following
/// its chain of extended boot records (whose links are relative to the extended partition's start).
fn logical_partitions(disk: &mut Reader<'_>, extended: &MbrEntry) -> Result<Vec<(u32, u64, u64, u8)>, DiskLabelError> {
    let mut found = Vec::new();
    let mut record_lba = u64::from(extended.start_lba);
    let mut visited = Vec::new();
    for _ in 0..MAX_LOGICAL_PARTITIONS {
        if visited.contains(&record_lba) {
            return Err(DiskLabelError::InvalidMbr {
                device: disk.device.clone(),
                reason: format!("the chain of extended boot records loops back to sector {record_lba}"),
            });
        }
        visited.push(record_lba);
        let offset = disk.checked(record_lba.checked_mul(MBR_SECTOR), "extended boot record LBA")?;
        let record = disk.read(offset, MBR_SECTOR as usize, "an extended boot record")?;
        if record[510..512] != BOOT_SIGNATURE {
            break;
        }
        let [logical, next, ..] = mbr_entries(&record);
        if logical.is_used() {
            let number = 5 + found.len() as u32;
            let first =
                disk.checked(record_lba.checked_add(u64::from(logical.start_lba)), "logical partition start")?;
            let end = disk.checked(first.checked_add(u64::from(logical.sectors)), "logical partition size")?;
            found.push((number, first, end, logical.kind));
        }
        if !next.is_used() || !next.is_extended() {
            break;
        }
        record_lba = u64::from(extended.start_lba) + u64::from(next.start_lba);
    }
    Ok(found)
}

/// CRC32 (IEEE, as GPT uses).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// The CRC32 of a GPT header, its CRC field taken as zero.
pub fn gpt_header_crc(header: &[u8]) -> u32 {
    let mut zeroed = header.to_vec();
    zeroed[GPT_HEADER_CRC..GPT_HEADER_CRC + 4].fill(0);
    crc32(&zeroed)
}

/// The CHS address of `lba` in the usual 255-head, 63-sector geometry; beyond cylinder 1023 the
/// "use LBA" marker (1023/254/63), as fdisk writes.
pub fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [head as u8, (sector as u8) | (((cylinder >> 8) as u8) << 6), cylinder as u8]
}

/// A GUID in GPT's mixed-endian encoding at `offset`.
pub fn guid_at(bytes: &[u8], offset: usize) -> Uuid {
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&bytes[offset..offset + 16]);
    Uuid::from_bytes_le(raw)
}

pub fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(raw)
}

/// The logical sector size of the block device at `path` (BLKSSZGET); 512 for anything else (image files).
pub fn logical_sector_size(path: &Path) -> io::Result<u64> {
    if !std::fs::metadata(path)?.file_type().is_block_device() {
        return Ok(512);
    }
    let file = File::open(path)?;
    let size = blksszget(&file)?;
    u64::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("sector size {size}")))
}

#[allow(unsafe_code)]
mod ioctl {
    // BLKSSZGET = _IO(0x12, 104) from linux/fs.h; it writes an int through its argument.
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), nix::libc::c_int);
}

#[allow(unsafe_code)]
fn blksszget(file: &File) -> nix::Result<nix::libc::c_int> {
    let mut size: nix::libc::c_int = 0;
    // SAFETY: the kernel writes one int into `size`, which outlives the call; the descriptor is open.
    unsafe { ioctl::blksszget(file.as_raw_fd(), &mut size) }?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FileTarget;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn sh(script: &str) -> String {
        ferric_runner::run(script, Command::new("sh").arg("-c").arg(script)).unwrap().stdout
    }

    /// A disk image file of `mib` MiB set up by `setup` (a shell command with `$D` the file).
    fn disk(mib: u64, setup: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(mib * MIB).unwrap();
        sh(&format!("D={}; {setup}", file.path().display()));
        file
    }

    fn read_file(path: &Path) -> Result<DiskLabel, DiskLabelError> {
        read(&mut FileTarget::open(path).unwrap())
    }

    /// `key: value` of sgdisk's output.
    fn field(output: &str, key: &str) -> String {
        output.lines().find_map(|line| line.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {output}")).to_owned()
    }

    #[test]
    fn gpt_partitions_are_what_sgdisk_wrote() {
        let file = disk(64, "sgdisk -n 1:2048:+8M -t 1:ef00 -c 1:efi -n 3:0:+4M -c '3:root fs' $D >/dev/null");
        let path = file.path().display();
        let label = read_file(file.path()).unwrap();
        let LabelKind::Gpt(gpt) = &label.kind else { panic!("{label:?}") };
        let print = sh(&format!("sgdisk -p {path}"));
        assert_eq!(gpt.disk_guid.to_string().to_uppercase(), field(&print, "Disk identifier (GUID): "));
        assert_eq!(
            (gpt.first_usable_lba, gpt.last_usable_lba, gpt.entries_lba, gpt.entry_count()),
            (34, 131038, 2, 128)
        );
        assert_eq!(label.sector_size, 512);
        let numbers: Vec<u32> = label.partitions.iter().map(|partition| partition.number).collect();
        assert_eq!(numbers, [1, 3]);
        for partition in &label.partitions {
            let info = sh(&format!("sgdisk -i {} {path}", partition.number));
            let sector = |key| field(&info, key).split(' ').next().unwrap().parse::<u64>().unwrap();
            assert_eq!(partition.start, sector("First sector: ") * 512);
            assert_eq!(partition.end(), (sector("Last sector: ") + 1) * 512);
            assert_eq!(partition.uuid.to_string().to_uppercase(), field(&info, "Partition unique GUID: "));
            let PartitionType::Gpt(kind) = partition.kind else { panic!("{partition:?}") };
            assert!(field(&info, "Partition GUID code: ").starts_with(&kind.to_string().to_uppercase()));
            assert_eq!(format!("'{}'", partition.name.as_deref().unwrap()), field(&info, "Partition name: "));
        }
    }

    #[test]
    fn gpt_with_4096_byte_sectors_is_read_in_its_units() {
        let file = disk(
            64,
            "L=$(losetup -f --show -b 4096 $D) && sgdisk -n 1:256:+8M -c 1:root $L >/dev/null; R=$?; losetup -d $L; exit $R",
        );
        let label = read_file(file.path()).unwrap();
        assert_eq!(label.sector_size, 4096);
        let [root] = &label.partitions[..] else { panic!("{label:?}") };
        assert_eq!((root.number, root.start, root.size, root.name.as_deref()), (1, MIB, 8 * MIB, Some("root")));
    }

    #[test]
    fn msdos_partitions_include_logical_ones_numbered_as_linux_does() {
        let file = disk(
            64,
            "printf 'label-id: 0x12345678\\nstart=2048,size=16384,type=83\\nstart=20480,type=5\\n\
             start=22528,size=4096,type=82\\nstart=28672,size=4096,type=c\\n' | sfdisk -q $D",
        );
        let label = read_file(file.path()).unwrap();
        assert_eq!(
            (label.kind.clone(), label.sector_size, label.mbr_disk_id()),
            (LabelKind::Mbr { disk_id: 0x12345678 }, 512, 0x12345678)
        );
        let json: serde_json::Value =
            serde_json::from_str(&sh(&format!("sfdisk --json {}", file.path().display()))).unwrap();
        // sfdisk lists the extended container too; it is not a partition holding data.
        let expected: Vec<(u32, u64, u64, u8)> = json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|partition| partition["type"] != "5")
            .map(|partition| {
                let node = partition["node"].as_str().unwrap();
                let number = node[node.len() - 1..].parse().unwrap();
                let kind = u8::from_str_radix(partition["type"].as_str().unwrap(), 16).unwrap();
                (number, partition["start"].as_u64().unwrap() * 512, partition["size"].as_u64().unwrap() * 512, kind)
            })
            .collect();
        let found: Vec<(u32, u64, u64, u8)> = label
            .partitions
            .iter()
            .map(|partition| {
                let PartitionType::Mbr(kind) = partition.kind else { panic!("{partition:?}") };
                (partition.number, partition.start, partition.size, kind)
            })
            .collect();
        assert_eq!(found, expected);
        let uuids: Vec<String> = label.partitions.iter().map(|partition| partition.uuid.to_string()).collect();
        assert_eq!(uuids, ["12345678-01", "12345678-05", "12345678-06"]);
    }

    #[test]
    fn disks_without_a_boot_signature_have_no_table() {
        let file = disk(1, "true");
        let error = read_file(file.path()).unwrap_err();
        assert!(matches!(error, DiskLabelError::NoPartitionTable { .. }), "{error}");
    }

    /// Rewrites the primary GPT of `path` through `header` and `entries`, then seals it with correct CRCs
    /// unless told not to: hostile values must be caught by the checks, not by a checksum.
    fn patch_gpt(path: &Path, header: impl Fn(&mut [u8]), entries: impl Fn(&mut [u8]), seal: bool) {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut sector = [0u8; 512];
        file.read_exact_at(&mut sector, 512).unwrap();
        let mut array = vec![0u8; 128 * 128];
        file.read_exact_at(&mut array, 1024).unwrap();
        entries(&mut array);
        header(&mut sector);
        if seal {
            let crc = crc32(&array).to_le_bytes();
            sector[GPT_ENTRIES_CRC..GPT_ENTRIES_CRC + 4].copy_from_slice(&crc);
            let crc = gpt_header_crc(&sector[..GPT_MIN_HEADER_SIZE]).to_le_bytes();
            sector[GPT_HEADER_CRC..GPT_HEADER_CRC + 4].copy_from_slice(&crc);
        }
        file.write_all_at(&sector, 512).unwrap();
        file.write_all_at(&array, 1024).unwrap();
    }

    fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
        bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    #[test]
    fn hostile_gpts_are_refused_naming_the_problem() {
        let template = disk(8, "sgdisk -n 1:2048:+2M -n 2:0:+2M $D >/dev/null");
        type Patch = Box<dyn Fn(&mut [u8])>;
        let none = || -> Patch { Box::new(|_| {}) };
        let header = |offset: usize, value: Vec<u8>| -> Patch { Box::new(move |bytes| put(bytes, offset, &value)) };
        let entry = |offset: usize, value: Vec<u8>| -> Patch { Box::new(move |bytes| put(bytes, offset, &value)) };
        let u64s = |values: [u64; 2]| values.iter().flat_map(|value| value.to_le_bytes()).collect::<Vec<u8>>();
        let cases: Vec<(&str, Patch, Patch, bool, &str)> = vec![
            (
                "entries LBA near u64::MAX",
                header(GPT_ENTRIES_LBA, (u64::MAX - 1).to_le_bytes().to_vec()),
                none(),
                true,
                "partition entry array LBA overflows",
            ),
            (
                "entries LBA whose byte offset overflows",
                header(GPT_ENTRIES_LBA, (u64::MAX / 512 + 1).to_le_bytes().to_vec()),
                none(),
                true,
                "are not between the header and the first usable LBA",
            ),
            (
                "huge first and last usable LBAs",
                header(GPT_FIRST_USABLE, u64s([u64::MAX - 1, u64::MAX])),
                none(),
                true,
                "usable LBAs 18446744073709551614..=18446744073709551615 do not fit the disk's 16384 sectors",
            ),
            (
                "partition with huge first and last LBAs",
                none(),
                entry(GPT_ENTRY_FIRST_LBA, u64s([u64::MAX - 1, u64::MAX])),
                true,
                "partition 1 spans LBAs 18446744073709551614..=18446744073709551615, outside the usable 34..=16350",
            ),
            (
                "partition ending before it starts",
                none(),
                entry(128 + GPT_ENTRY_FIRST_LBA, u64s([6000, 5000])),
                true,
                "partition 2 spans LBAs 6000..=5000",
            ),
            (
                "u32::MAX entries",
                header(GPT_ENTRY_COUNT, u32::MAX.to_le_bytes().to_vec()),
                none(),
                true,
                "4294967295 partition entries of 128 bytes",
            ),
            (
                "entry size not a multiple of 128",
                header(GPT_ENTRY_SIZE, 200u32.to_le_bytes().to_vec()),
                none(),
                true,
                "partition entry size 200 is not a multiple of 128",
            ),
            (
                "entry size zero",
                header(GPT_ENTRY_SIZE, 0u32.to_le_bytes().to_vec()),
                none(),
                true,
                "partition entry size 0",
            ),
            (
                "header size beyond the sector",
                header(GPT_HEADER_SIZE, u32::MAX.to_le_bytes().to_vec()),
                none(),
                true,
                "header size 4294967295 is not 92..=512",
            ),
            ("header not at LBA 1", header(GPT_MY_LBA, 7u64.to_le_bytes().to_vec()), none(), true, "at LBA 7, not 1"),
            (
                "header changed without its CRC",
                header(GPT_LAST_USABLE, 100u64.to_le_bytes().to_vec()),
                none(),
                false,
                "header checksum (CRC32) mismatch",
            ),
            (
                "entries changed without their CRC",
                header(0, Vec::new()),
                entry(GPT_ENTRY_LAST_LBA, 9000u64.to_le_bytes().to_vec()),
                false,
                "partition entries checksum (CRC32) mismatch",
            ),
            ("no GPT header", header(0, vec![0; 8]), none(), false, "protective MBR but no GPT header at LBA 1"),
        ];
        for (name, header, entries, seal, expected) in cases {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::copy(template.path(), file.path()).unwrap();
            patch_gpt(file.path(), header, entries, seal);
            let error = read_file(file.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    fn hostile_value(next: &mut impl FnMut() -> u64) -> u64 {
        match next() % 4 {
            0 => u64::MAX - next() % 4,
            1 => next() % 64,
            2 => 16384 - next() % 64,
            _ => next(),
        }
    }

    #[test]
    fn random_hostile_gpt_fields_give_errors_or_partitions_inside_the_disk() {
        let template = disk(8, "sgdisk -n 1:2048:+2M -n 2:0:+2M $D >/dev/null");
        let file = tempfile::NamedTempFile::new().unwrap();
        // xorshift64: the same cases on every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let fields = [GPT_FIRST_USABLE, GPT_LAST_USABLE, GPT_ENTRIES_LBA, GPT_ENTRY_COUNT, GPT_ENTRY_SIZE];
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..300 {
            std::fs::copy(template.path(), file.path()).unwrap();
            // Extreme values, small ones and values near the real ones, in one header field and one entry.
            let field = fields[(next() % 5) as usize];
            let field_value = hostile_value(&mut next);
            let entry_offset = (next() % 2) as usize * 128 + GPT_ENTRY_FIRST_LBA + (next() % 2) as usize * 8;
            let entry_value = hostile_value(&mut next);
            let width = if field >= GPT_ENTRY_COUNT { 4 } else { 8 };
            patch_gpt(
                file.path(),
                |bytes| put(bytes, field, &field_value.to_le_bytes()[..width]),
                |bytes| put(bytes, entry_offset, &entry_value.to_le_bytes()),
                true,
            );
            match read_file(file.path()) {
                Ok(label) => {
                    accepted += 1;
                    for partition in &label.partitions {
                        assert!(partition.start.checked_add(partition.size).is_some_and(|end| end <= 8 * MIB));
                    }
                }
                Err(_) => refused += 1,
            }
        }
        assert!(accepted > 0 && refused > 0, "{accepted} accepted, {refused} refused");
    }

    #[test]
    fn hostile_msdos_tables_are_refused() {
        let beyond = disk(8, "printf 'start=2048,size=2048,type=83\\n' | sfdisk -q $D");
        let mut entry = [0u8; 16];
        entry[4] = 0x83;
        entry[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        entry[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        beyond.as_file().write_all_at(&entry, 446 + 16).unwrap();
        let error = read_file(beyond.path()).unwrap_err().to_string();
        assert!(
            error.contains("partition 2 ends at byte 4398046510080, past the end of the disk (8388608 bytes)"),
            "{error}"
        );

        // An extended boot record whose link points back at itself.
        let looping = disk(8, "printf 'start=2048,size=2048,type=83\\nstart=4096,type=5\\nstart=6144,size=1024,type=83\\n' | sfdisk -q $D");
        let mut link = [0u8; 16];
        link[4] = 0x05;
        link[12..16].copy_from_slice(&100u32.to_le_bytes());
        looping.as_file().write_all_at(&link, 4096 * 512 + 446 + 16).unwrap();
        let error = read_file(looping.path()).unwrap_err().to_string();
        assert!(error.contains("loops back to sector 4096"), "{error}");
    }

    #[test]
    fn chs_addresses_match_sfdisk() {
        let file =
            disk(1024, "printf 'start=2048,size=16384,type=83\\nstart=18432,size=2000000,type=83\\n' | sfdisk -q $D");
        let mut mbr = [0u8; 512];
        file.as_file().read_exact_at(&mut mbr, 0).unwrap();
        for (index, entry) in mbr_entries(&mbr).iter().take(2).enumerate() {
            let raw = &mbr[446 + 16 * index..][..16];
            assert_eq!(raw[1..4], chs(entry.start_lba.into()), "start of partition {}", index + 1);
            assert_eq!(raw[5..8], chs(entry.end_lba() - 1), "end of partition {}", index + 1);
        }
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF], "beyond cylinder 1023");
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn logical_sector_size_of_devices_and_files() {
        let file = disk(8, "true");
        assert_eq!(logical_sector_size(file.path()).unwrap(), 512);
        for size in [512u64, 4096] {
            let device = sh(&format!("losetup -f --show -b {size} {}", file.path().display())).trim().to_owned();
            let found = logical_sector_size(Path::new(&device));
            sh(&format!("losetup -d {device}"));
            assert_eq!(found.unwrap(), size);
        }
        assert!(logical_sector_size(Path::new("/nonexistent/disk")).is_err());
    }
}
