//! Config drives: built from Ironic's dict, or decoded from a (gzip+)base64 image or a URL of one,
//! then written for whole-disk images to a `config-2` partition at the end of the disk, as IPA does
//! (`partition_utils.create_config_drive_partition`), but without sgdisk or parted in the ramdisk.

use std::io::{self, Read};

use base64::Engine;
use serde_json::{Map, Value};

use crate::disklabel::{
    self, DiskLabel, DiskLabelError, Gpt, LabelKind, PartUuid, Partition, PartitionType, GPT_ALTERNATE_LBA,
    GPT_ENTRIES_CRC, GPT_ENTRIES_LBA, GPT_ENTRY_FIRST_LBA, GPT_ENTRY_GUID, GPT_ENTRY_LAST_LBA, GPT_ENTRY_NAME,
    GPT_ENTRY_TYPE, GPT_HEADER_CRC, GPT_LAST_USABLE, GPT_MY_LBA, MBR_ENTRIES_OFFSET, MBR_ENTRY_SIZE, MBR_SECTOR,
    MBR_TYPE_PROTECTIVE,
};
use crate::download::{self, DownloadError};
use crate::iso9660;
use crate::target::Target;

/// IPA's `MAX_CONFIG_DRIVE_SIZE_MB`: larger config drives are refused, as are larger downloads.
pub const MAX_BYTES: u64 = 64 * MIB;
/// The volume label (and GPT partition name) cloud-init looks for.
pub const LABEL: &str = "config-2";
/// The keys Ironic's config drive dict may hold.
pub const DICT_KEYS: [&str; 4] = ["meta_data", "network_data", "user_data", "vendor_data"];
/// The metadata versions written, as `openstack.baremetal.configdrive` writes them.
const VERSIONS: [&str; 2] = ["2012-08-10", "latest"];
const MIB: u64 = 1 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// GPT partition type of the added partition: "Linux filesystem data".
const LINUX_FILESYSTEM_GUID: uuid::Uuid = uuid::uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");
/// MBR partition type of the added partition: Linux.
const MBR_TYPE_LINUX: u8 = 0x83;
/// On MBR disks over 2 TiB the config drive ends 1 MiB below 2 TiB, where MBR can still address it (IPA's rule).
const MBR_ADDRESSABLE_END: u64 = (2 << 40) - MIB;

/// The partition the config drive was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrivePartition {
    /// Partition number as Linux numbers it (`/dev/sda<number>`).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// GPT partition GUID, or for MBR `<disk signature>-<number>` in hex, as blkid's PARTUUID.
    pub uuid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("configdrive must be a JSON object or a string, not {found}")]
    NotObjectOrString { found: &'static str },
    #[error("configdrive has the unknown key {key:?} (allowed: meta_data, network_data, user_data, vendor_data)")]
    UnknownKey { key: String },
    #[error("configdrive.{key} must be {expected}, not {found}")]
    WrongType { key: &'static str, expected: &'static str, found: &'static str },
    #[error("downloading the config drive failed")]
    Download(#[source] DownloadError),
    #[error("the config drive string is neither a URL nor valid base64")]
    Base64(#[source] base64::DecodeError),
    #[error("the config drive starts like gzip data but does not decompress")]
    Gunzip(#[source] io::Error),
    #[error("the config drive is {bytes} bytes or more, over the {limit} bytes allowed")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("the config drive ({bytes} bytes after decoding) is neither an ISO 9660 nor a VFAT image")]
    NotAnImage { bytes: u64 },
    #[error("reading {what} at byte {offset} of {device} failed")]
    Read {
        device: String,
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("writing {what} at byte {offset} of {device} failed")]
    Write {
        device: String,
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing {device} failed")]
    Sync {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Label(#[from] DiskLabelError),
    #[error("the GPT of {device} cannot be extended to the end of the disk: {reason}")]
    InvalidGpt { device: String, reason: String },
    #[error("{device} has several config-2 partitions (numbers {numbers:?}); at most one is allowed")]
    SeveralConfigDrives { device: String, numbers: Vec<u32> },
    #[error("config-2 partition {number} of {device} holds {size} bytes, less than the {needed}-byte config drive")]
    PartitionTooSmall { device: String, number: u32, size: u64, needed: u64 },
    #[error("{device} has no free primary partition slot for the config drive")]
    NoFreePrimarySlot { device: String },
    #[error("{device} has no free GPT partition entry for the config drive")]
    NoFreeGptEntry { device: String },
    #[error(
        "{device} has no room for a {bytes}-byte config drive partition between byte {used_end} (end of the last \
         partition) and byte {end}"
    )]
    NoRoom { device: String, bytes: u64, used_end: u64, end: u64 },
}

/// The config drive image (ISO 9660 or VFAT bytes) for the `configdrive` of `image_info`: a dict is
/// built into an ISO; a string containing `://` is downloaded, then base64-decoded unless it is not
/// base64 (a raw image, as IPA accepts); any other string is base64; gzip is undone in both cases.
pub async fn resolve(value: &Value, client: &reqwest::Client) -> Result<Vec<u8>, ConfigDriveError> {
    match value {
        Value::Object(dict) => build_from_dict(dict),
        Value::String(url) if url.contains("://") => {
            let body = download::fetch_small(client, url, MAX_BYTES).await.map_err(ConfigDriveError::Download)?;
            let image = decode_base64(&body).unwrap_or(body);
            unpack(image)
        }
        Value::String(text) => unpack(decode_base64(text.as_bytes()).map_err(ConfigDriveError::Base64)?),
        other => Err(ConfigDriveError::NotObjectOrString { found: json_kind(other) }),
    }
}

/// The ISO of Ironic's config drive dict, laid out as `openstack.baremetal.configdrive` does: every
/// version directory gets `meta_data.json`, and `network_data.json`, `vendor_data2.json`, `user_data`
/// when given (a dict or list `user_data` is JSON; a string is written as is).
fn build_from_dict(dict: &Map<String, Value>) -> Result<Vec<u8>, ConfigDriveError> {
    if let Some(key) = dict.keys().find(|key| !DICT_KEYS.contains(&key.as_str())) {
        return Err(ConfigDriveError::UnknownKey { key: key.clone() });
    }
    let object = |key: &'static str| match dict.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object)),
        Some(other) => Err(ConfigDriveError::WrongType { key, expected: "an object", found: json_kind(other) }),
    };
    let meta_data = serde_json::to_vec(&object("meta_data")?.cloned().unwrap_or_default()).unwrap_or_default();
    // Empty ones are left out, as openstacksdk's `if network_data:`.
    let json_file = |object: Option<&Map<String, Value>>| {
        object.filter(|object| !object.is_empty()).map(|object| serde_json::to_vec(object).unwrap_or_default())
    };
    let network_data = json_file(object("network_data")?);
    let vendor_data = json_file(object("vendor_data")?);
    let user_data = match dict.get("user_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_bytes().to_vec()).filter(|bytes| !bytes.is_empty()),
        Some(value @ (Value::Object(_) | Value::Array(_))) => Some(serde_json::to_vec(value).unwrap_or_default()),
        Some(other) => {
            return Err(ConfigDriveError::WrongType {
                key: "user_data",
                expected: "an object, an array or a string",
                found: json_kind(other),
            })
        }
    };
    let mut files = Vec::new();
    for version in VERSIONS {
        let path = |name: &str| format!("openstack/{version}/{name}");
        files.push((path("meta_data.json"), meta_data.clone()));
        let optional =
            [("network_data.json", &network_data), ("vendor_data2.json", &vendor_data), ("user_data", &user_data)];
        for (name, contents) in optional {
            if let Some(contents) = contents {
                files.push((path(name), contents.clone()));
            }
        }
    }
    let iso = iso9660::build(LABEL, &files);
    check_size(iso.len() as u64)?;
    Ok(iso)
}

/// Base64 as IPA accepts it: line breaks and other whitespace ignored, padding optional.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: Vec<u8> = text.iter().copied().filter(|byte| !byte.is_ascii_whitespace()).collect();
    let config = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, config).decode(compact)
}

/// Gunzips `data` when it is gzip (never past [`MAX_BYTES`]), then checks it is an image.
fn unpack(data: Vec<u8>) -> Result<Vec<u8>, ConfigDriveError> {
    let image = if data.starts_with(&GZIP_MAGIC) {
        let mut image = Vec::new();
        flate2::read::MultiGzDecoder::new(data.as_slice())
            .take(MAX_BYTES + 1)
            .read_to_end(&mut image)
            .map_err(ConfigDriveError::Gunzip)?;
        image
    } else {
        data
    };
    check_size(image.len() as u64)?;
    if !is_iso9660(&image) && !is_vfat(&image) {
        return Err(ConfigDriveError::NotAnImage { bytes: image.len() as u64 });
    }
    Ok(image)
}

fn check_size(bytes: u64) -> Result<(), ConfigDriveError> {
    if bytes > MAX_BYTES {
        return Err(ConfigDriveError::TooLarge { bytes, limit: MAX_BYTES });
    }
    Ok(())
}

fn is_iso9660(image: &[u8]) -> bool {
    image.get(iso9660::MAGIC_OFFSET..iso9660::MAGIC_OFFSET + iso9660::MAGIC.len()) == Some(iso9660::MAGIC)
}

fn is_vfat(image: &[u8]) -> bool {
    let boot_signature = image.get(510..512) == Some(&[0x55, 0xAA]);
    boot_signature && (image.get(54..57) == Some(b"FAT") || image.get(82..87) == Some(b"FAT32"))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes `image` to the disk `target` holding a whole-disk image: into the partition named or
/// labelled `config-2` if there is one, else into a new partition of the image's size (rounded up to
/// MiB) at the end of the disk. A GPT also gets its backup moved to the end of the disk (the image was
/// usually smaller than the disk), as `sgdisk -e` would. Nothing is written when a check fails.
pub fn write_to_whole_disk(target: &mut dyn Target, image: &[u8]) -> Result<ConfigDrivePartition, ConfigDriveError> {
    check_size(image.len() as u64)?;
    let DiskLabel { kind, sector_size, partitions, mbr } = disklabel::read(&mut *target)?;
    let mut disk = Disk { target };
    let partition = match kind {
        LabelKind::Gpt(gpt) => write_gpt(&mut disk, gpt, sector_size, &partitions, mbr, image)?,
        LabelKind::Mbr { disk_id } => write_mbr(&mut disk, disk_id, &partitions, mbr, image)?,
    };
    disk.target.sync().map_err(|source| ConfigDriveError::Sync { device: disk.name(), source })?;
    let partition = ConfigDrivePartition::from(partition);
    tracing::info!(
        device = %disk.name(),
        number = partition.number,
        start = partition.start,
        size = partition.size,
        uuid = %partition.uuid,
        "config drive written"
    );
    Ok(partition)
}

/// The target with errors that name the device, the offset and what was read or written.
struct Disk<'a> {
    target: &'a mut dyn Target,
}

impl Disk<'_> {
    fn name(&self) -> String {
        self.target.describe()
    }

    fn read(&mut self, offset: u64, len: usize, what: &'static str) -> Result<Vec<u8>, ConfigDriveError> {
        let mut buf = vec![0u8; len];
        self.target.read_at(offset, &mut buf).map_err(|source| ConfigDriveError::Read {
            device: self.target.describe(),
            what,
            offset,
            source,
        })?;
        Ok(buf)
    }

    fn write(&mut self, offset: u64, data: &[u8], what: &'static str) -> Result<(), ConfigDriveError> {
        self.target.write_at(offset, data).map_err(|source| ConfigDriveError::Write {
            device: self.target.describe(),
            what,
            offset,
            source,
        })
    }

    fn size(&self) -> u64 {
        self.target.size()
    }
}

impl From<Partition> for ConfigDrivePartition {
    fn from(partition: Partition) -> Self {
        ConfigDrivePartition {
            number: partition.number,
            start: partition.start,
            size: partition.size,
            uuid: partition.uuid.to_string(),
        }
    }
}

/// The one partition named `config-2` or holding a filesystem labelled so (case-insensitive, as IPA).
fn find_config_drive(disk: &mut Disk<'_>, partitions: &[Partition]) -> Result<Option<Partition>, ConfigDriveError> {
    let mut found = Vec::new();
    for partition in partitions {
        let named = partition.name.as_deref().is_some_and(|name| name.eq_ignore_ascii_case(LABEL));
        if named || filesystem_label(disk, partition)?.is_some_and(|label| label.eq_ignore_ascii_case(LABEL)) {
            found.push(partition.clone());
        }
    }
    if found.len() > 1 {
        let numbers = found.iter().map(|partition| partition.number).collect();
        return Err(ConfigDriveError::SeveralConfigDrives { device: disk.name(), numbers });
    }
    Ok(found.pop())
}

/// The ISO 9660 volume identifier or the VFAT boot-sector label of a partition's contents (which lies
/// inside the disk, so offsets within it do not overflow).
fn filesystem_label(disk: &mut Disk<'_>, partition: &Partition) -> Result<Option<String>, ConfigDriveError> {
    let text = |bytes: &[u8]| Some(String::from_utf8_lossy(bytes).trim_end_matches([' ', '\0']).to_owned());
    let descriptor_offset = iso9660::MAGIC_OFFSET as u64 - 1;
    if partition.size >= descriptor_offset + iso9660::SECTOR as u64 {
        let descriptor = disk.read(partition.start + descriptor_offset, iso9660::SECTOR, "a volume descriptor")?;
        if descriptor[0] == 1 && &descriptor[1..6] == iso9660::MAGIC {
            return Ok(text(&descriptor[40..72]));
        }
    }
    if partition.size >= MBR_SECTOR {
        let boot = disk.read(partition.start, MBR_SECTOR as usize, "a boot sector")?;
        if is_vfat(&boot) {
            // FAT32 keeps the extended boot record further in.
            let (signature, label) = if &boot[82..87] == b"FAT32" { (66, 71..82) } else { (38, 43..54) };
            if boot[signature] == 0x29 {
                return Ok(text(&boot[label]));
            }
        }
    }
    Ok(None)
}

/// Where a new config drive partition of `bytes` goes: ending on the last MiB boundary at or
/// before `end`, after every byte in use (`used_end`).
fn place_at_end(disk: &Disk<'_>, bytes: u64, used_end: u64, end: u64) -> Result<(u64, u64), ConfigDriveError> {
    let size = bytes.div_ceil(MIB).max(1) * MIB;
    let aligned_end = end / MIB * MIB;
    match aligned_end.checked_sub(size) {
        Some(start) if start >= used_end => Ok((start, size)),
        _ => Err(ConfigDriveError::NoRoom { device: disk.name(), bytes: size, used_end, end }),
    }
}

fn write_image_into(disk: &mut Disk<'_>, partition: &Partition, image: &[u8]) -> Result<(), ConfigDriveError> {
    if (image.len() as u64) > partition.size {
        return Err(ConfigDriveError::PartitionTooSmall {
            device: disk.name(),
            number: partition.number,
            size: partition.size,
            needed: image.len() as u64,
        });
    }
    disk.write(partition.start, image, "the config drive")
}

// ---- MBR ----

fn write_mbr(
    disk: &mut Disk<'_>,
    disk_id: u32,
    partitions: &[Partition],
    mut mbr: [u8; 512],
    image: &[u8],
) -> Result<Partition, ConfigDriveError> {
    if let Some(partition) = find_config_drive(disk, partitions)? {
        write_image_into(disk, &partition, image)?;
        return Ok(partition);
    }
    let primaries = disklabel::mbr_entries(&mbr);
    let Some(slot) = primaries.iter().position(|entry| !entry.is_used()) else {
        return Err(ConfigDriveError::NoFreePrimarySlot { device: disk.name() });
    };
    let end = if disk.size() > 2 << 40 { MBR_ADDRESSABLE_END } else { disk.size() };
    // Primary (and extended) partitions only end before `start` if none overlaps the new range.
    let mut used_end = MIB;
    let (start, size) = loop {
        let (start, size) = place_at_end(disk, image.len() as u64, used_end, end)?;
        let overlapping = primaries
            .iter()
            .filter(|entry| entry.is_used())
            .map(|entry| entry.end_lba() * MBR_SECTOR)
            .filter(|entry_end| *entry_end > start)
            .max();
        match overlapping {
            Some(entry_end) => used_end = entry_end,
            None => break (start, size),
        }
    };
    let number = slot as u32 + 1;
    let partition = Partition {
        number,
        start,
        size,
        kind: PartitionType::Mbr(MBR_TYPE_LINUX),
        uuid: PartUuid::Mbr { disk_id, number },
        name: None,
    };
    write_image_into(disk, &partition, image)?;
    let (first, sectors) = (start / MBR_SECTOR, size / MBR_SECTOR);
    let entry = &mut mbr[MBR_ENTRIES_OFFSET + MBR_ENTRY_SIZE * slot..][..MBR_ENTRY_SIZE];
    entry[0] = 0;
    entry[1..4].copy_from_slice(&disklabel::chs(first));
    entry[4] = MBR_TYPE_LINUX;
    entry[5..8].copy_from_slice(&disklabel::chs(first + sectors - 1));
    entry[8..12].copy_from_slice(&(first as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    disk.write(0, &mbr, "the MBR")?;
    Ok(partition)
}

// ---- GPT ----

/// LBAs of the backup entries and header at the end of a disk of `disk_bytes`, and the last usable LBA.
fn end_layout(gpt: &Gpt, sector: u64, disk_bytes: u64) -> Option<(u64, u64, u64)> {
    let backup_lba = (disk_bytes / sector).checked_sub(1)?;
    let backup_entries_lba = backup_lba.checked_sub((gpt.entries.len() as u64).div_ceil(sector))?;
    let last_usable = backup_entries_lba.checked_sub(1)?;
    Some((backup_lba, backup_entries_lba, last_usable))
}

/// Writes both copies of `gpt` with the backup at the end of the disk: the backup first, the primary
/// header last, so an interruption leaves the old primary in place. The primary entries stay where
/// [`disklabel::read`] found them, inside the disk.
fn write_gpt_copies(disk: &mut Disk<'_>, gpt: &Gpt, sector: u64) -> Result<(), ConfigDriveError> {
    let (backup_lba, backup_entries_lba, last_usable) = end_layout(gpt, sector, disk.size()).ok_or_else(|| {
        ConfigDriveError::InvalidGpt { device: disk.name(), reason: "disk too small for a GPT".to_owned() }
    })?;
    let mut primary = gpt.header.clone();
    put_u64(&mut primary, GPT_ALTERNATE_LBA, backup_lba);
    put_u64(&mut primary, GPT_LAST_USABLE, last_usable);
    put_u32(&mut primary, GPT_ENTRIES_CRC, disklabel::crc32(&gpt.entries));
    let mut backup = primary.clone();
    put_u64(&mut backup, GPT_MY_LBA, backup_lba);
    put_u64(&mut backup, GPT_ALTERNATE_LBA, 1);
    put_u64(&mut backup, GPT_ENTRIES_LBA, backup_entries_lba);
    let sealed = |mut header: Vec<u8>| {
        let crc = disklabel::gpt_header_crc(&header);
        put_u32(&mut header, GPT_HEADER_CRC, crc);
        header.resize(sector as usize, 0);
        header
    };
    disk.write(backup_entries_lba * sector, &gpt.entries, "the backup GPT entries")?;
    disk.write(backup_lba * sector, &sealed(backup), "the backup GPT header")?;
    disk.write(gpt.entries_lba * sector, &gpt.entries, "the GPT entries")?;
    disk.write(sector, &sealed(primary), "the GPT header")
}

fn write_gpt(
    disk: &mut Disk<'_>,
    mut gpt: Gpt,
    sector: u64,
    partitions: &[Partition],
    mut mbr: [u8; 512],
    image: &[u8],
) -> Result<Partition, ConfigDriveError> {
    let Some((_, _, last_usable)) = end_layout(&gpt, sector, disk.size()) else {
        return Err(ConfigDriveError::InvalidGpt { device: disk.name(), reason: "disk too small".to_owned() });
    };
    // Derived from the disk's size, not from the table: no overflow.
    let usable_end = (last_usable + 1) * sector;
    if let Some(beyond) = partitions.iter().find(|partition| partition.end() > usable_end) {
        let reason = format!("partition {} ends past the last usable byte of the disk", beyond.number);
        return Err(ConfigDriveError::InvalidGpt { device: disk.name(), reason });
    }
    let partition = match find_config_drive(disk, partitions)? {
        Some(partition) => {
            write_image_into(disk, &partition, image)?;
            partition
        }
        None => {
            let Some(slot) = (0..gpt.entry_count()).find(|index| !gpt.is_used(*index)) else {
                return Err(ConfigDriveError::NoFreeGptEntry { device: disk.name() });
            };
            // disklabel::read checked the first usable LBA lies inside the disk.
            let first_usable = gpt.first_usable_lba * sector;
            let used_end = partitions.iter().map(Partition::end).max().unwrap_or(0).max(first_usable);
            let (start, size) = place_at_end(disk, image.len() as u64, used_end, usable_end)?;
            let guid = uuid::Uuid::new_v4();
            let partition = Partition {
                number: slot as u32 + 1,
                start,
                size,
                kind: PartitionType::Gpt(LINUX_FILESYSTEM_GUID),
                uuid: PartUuid::Gpt(guid),
                name: Some(LABEL.to_owned()),
            };
            write_image_into(disk, &partition, image)?;
            let entry = gpt.entry_mut(slot);
            entry.fill(0);
            entry[GPT_ENTRY_TYPE..][..16].copy_from_slice(&LINUX_FILESYSTEM_GUID.to_bytes_le());
            entry[GPT_ENTRY_GUID..][..16].copy_from_slice(&guid.to_bytes_le());
            put_u64(entry, GPT_ENTRY_FIRST_LBA, start / sector);
            put_u64(entry, GPT_ENTRY_LAST_LBA, (start + size) / sector - 1);
            for (index, unit) in LABEL.encode_utf16().enumerate() {
                entry[GPT_ENTRY_NAME + 2 * index..][..2].copy_from_slice(&unit.to_le_bytes());
            }
            partition
        }
    };
    write_gpt_copies(disk, &gpt, sector)?;
    // A plain protective MBR covers the whole disk (hybrid MBRs are left alone).
    let entries = disklabel::mbr_entries(&mbr);
    let used: Vec<usize> = (0..4).filter(|index| entries[*index].is_used()).collect();
    if let [only] = used[..] {
        if entries[only].kind == MBR_TYPE_PROTECTIVE {
            let sectors = (disk.size() / sector).saturating_sub(1).min(u32::MAX as u64) as u32;
            put_u32(&mut mbr, MBR_ENTRIES_OFFSET + MBR_ENTRY_SIZE * only + 12, sectors);
            disk.write(0, &mbr, "the protective MBR")?;
        }
    }
    Ok(partition)
}

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso9660::linux_check;
    use crate::target::FileTarget;
    use serde_json::json;
    use sha2::Digest;
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;

    fn sh(script: &str) -> String {
        ferric_runner::run(script, Command::new("sh").arg("-c").arg(script)).unwrap().stdout
    }

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// A small config drive whose contents say which one it is.
    fn iso(tag: &str) -> Vec<u8> {
        iso9660::build(
            LABEL,
            &[("openstack/latest/meta_data.json".to_owned(), format!("{{\"tag\":\"{tag}\"}}").into_bytes())],
        )
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn base64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A VFAT filesystem image made by mkfs.vfat.
    fn vfat_image(label: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fat.img");
        sh(&format!("mkfs.vfat -n {label} -C {} 2048 >/dev/null", path.display()));
        std::fs::read(path).unwrap()
    }

    /// The files of an ISO as Linux-independent tools read them through Joliet: path → contents.
    fn iso_files(iso: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), iso).unwrap();
        let image = file.path().display();
        let listing = sh(&format!("isoinfo -J -f -i {image}"));
        let mut files = std::collections::BTreeMap::new();
        for path in listing.lines().filter(|path| path.contains('.') || path.ends_with("user_data")) {
            let mut extract = Command::new("isoinfo");
            extract.args(["-J", "-i"]).arg(file.path()).args(["-x", path]);
            let output = extract.output().unwrap();
            assert!(output.status.success());
            files.insert(path.trim_start_matches('/').to_owned(), output.stdout);
        }
        files
    }

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn a_dict_is_built_into_the_config_2_layout_of_both_versions() {
        let value = json!({
            "meta_data": {"uuid": "0c7e1a1e", "name": "node-1", "public_keys": {"0": "ssh-ed25519 AAAA"}},
            "network_data": {"links": [], "networks": [], "services": []},
            "vendor_data": {"static": {"x": 1}},
            "user_data": "#cloud-config\nhostname: node-1\n",
        });
        let iso = resolve(&value, &client()).await.unwrap();
        let mut expected = std::collections::BTreeMap::new();
        for version in ["2012-08-10", "latest"] {
            let path = |name: &str| format!("openstack/{version}/{name}");
            expected.insert(path("meta_data.json"), serde_json::to_vec(&value["meta_data"]).unwrap());
            expected.insert(path("network_data.json"), serde_json::to_vec(&value["network_data"]).unwrap());
            expected.insert(path("vendor_data2.json"), serde_json::to_vec(&value["vendor_data"]).unwrap());
            expected.insert(path("user_data"), b"#cloud-config\nhostname: node-1\n".to_vec());
        }
        assert_eq!(iso_files(&iso), expected);
        let probe = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(probe.path(), &iso).unwrap();
        let blkid = sh(&format!("blkid -o export {}", probe.path().display()));
        assert!(blkid.contains("LABEL=config-2\n") && blkid.contains("TYPE=iso9660\n"), "{blkid}");
    }

    #[tokio::test]
    async fn user_data_and_optional_files_follow_openstacksdk() {
        let cases: [(&str, Value, Option<&[u8]>); 6] = [
            ("dict is JSON", json!({"user_data": {"a": 1}}), Some(br#"{"a":1}"#)),
            ("list is JSON", json!({"user_data": [1, "b"]}), Some(br#"[1,"b"]"#)),
            ("string as is", json!({"user_data": "ignition: {}"}), Some(b"ignition: {}")),
            ("empty string left out", json!({"user_data": ""}), None),
            ("null left out", json!({"user_data": null}), None),
            ("absent", json!({}), None),
        ];
        for (name, value, expected) in cases {
            let files = iso_files(&resolve(&value, &client()).await.unwrap());
            assert_eq!(files.get("openstack/latest/user_data").map(Vec::as_slice), expected, "{name}");
            assert_eq!(files.get("openstack/2012-08-10/user_data").map(Vec::as_slice), expected, "{name}");
            // meta_data.json is always there ({} without meta_data); empty optional dicts are not.
            assert!(files.contains_key("openstack/latest/meta_data.json"), "{name}");
        }
        let files = iso_files(&resolve(&json!({"network_data": {}, "vendor_data": {}}), &client()).await.unwrap());
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["openstack/2012-08-10/meta_data.json", "openstack/latest/meta_data.json"]);
        assert_eq!(files["openstack/latest/meta_data.json"], b"{}");
    }

    #[tokio::test]
    async fn malformed_dicts_and_values_are_refused_naming_the_problem() {
        let cases = [
            (json!({"userdata": "x"}), "unknown key \"userdata\""),
            (json!({"meta_data": "x"}), "configdrive.meta_data must be an object, not a string"),
            (json!({"network_data": [1]}), "configdrive.network_data must be an object, not an array"),
            (json!({"user_data": 5}), "configdrive.user_data must be an object, an array or a string, not a number"),
            (json!(17), "configdrive must be a JSON object or a string, not a number"),
            (json!("not base64!"), "neither a URL nor valid base64"),
            (json!(base64(b"plain text, not an image")), "neither an ISO 9660 nor a VFAT image"),
        ];
        for (value, expected) in cases {
            let error = resolve(&value, &client()).await.unwrap_err().to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }

    #[tokio::test]
    async fn strings_are_base64_of_a_gzipped_or_plain_iso_or_vfat_image() {
        let image = iso("inline");
        let wrapped: String = base64(&gzip(&image))
            .as_bytes()
            .chunks(76)
            .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
            .collect();
        let unpadded = base64(&image).trim_end_matches('=').to_owned();
        let vfat = vfat_image("CONFIG-2");
        let cases = [
            ("gzip+base64", base64(&gzip(&image)), &image),
            ("gzip+base64 in 76-column lines", wrapped, &image),
            ("plain ISO base64", base64(&image), &image),
            ("base64 without padding", unpadded, &image),
            ("VFAT base64", base64(&gzip(&vfat)), &vfat),
        ];
        for (name, text, expected) in cases {
            assert_eq!(&resolve(&Value::String(text), &client()).await.unwrap(), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn more_than_64_mib_is_refused_even_when_it_compresses_well() {
        let mut huge = iso("huge");
        huge.resize(MAX_BYTES as usize + 1, 0);
        let error = resolve(&Value::String(base64(&gzip(&huge))), &client()).await.unwrap_err();
        assert!(matches!(error, ConfigDriveError::TooLarge { limit: MAX_BYTES, .. }), "{error}");
        let mut exact = iso("exact");
        exact.resize(MAX_BYTES as usize, 0);
        assert_eq!(resolve(&Value::String(base64(&gzip(&exact))), &client()).await.unwrap().len(), exact.len());
    }

    #[tokio::test]
    async fn urls_are_downloaded_then_decoded_or_taken_as_the_raw_image() {
        use axum::routing::get;
        let image = iso("downloaded");
        let encoded = base64(&gzip(&image));
        let (raw, gzipped) = (image.clone(), gzip(&image));
        let app = axum::Router::new()
            .route("/b64", get(move || async move { encoded }))
            .route("/raw", get(move || async move { raw }))
            .route("/gz", get(move || async move { gzipped }))
            .route("/text", get(|| async { "neither base64 nor an image" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        for path in ["/b64", "/raw", "/gz"] {
            let value = Value::String(format!("{base}{path}"));
            assert_eq!(resolve(&value, &client()).await.unwrap(), image, "{path}");
        }
        let error = resolve(&Value::String(format!("{base}/text")), &client()).await.unwrap_err();
        assert!(matches!(error, ConfigDriveError::NotAnImage { .. }), "{error}");
        let error = resolve(&Value::String(format!("{base}/missing")), &client()).await.unwrap_err();
        assert!(matches!(error, ConfigDriveError::Download(_)), "{error}");
    }

    // ---- writing to disks ----

    const MIB_USIZE: usize = MIB as usize;

    /// A disk image file of `mib` MiB set up by `setup` (a shell command with `$D` the file).
    fn disk(mib: u64, setup: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(mib * MIB).unwrap();
        sh(&format!("D={}; {setup}", file.path().display()));
        file
    }

    fn write(path: &Path, image: &[u8]) -> Result<ConfigDrivePartition, ConfigDriveError> {
        write_to_whole_disk(&mut FileTarget::open(path).unwrap(), image)
    }

    fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        std::fs::File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    fn put_at(path: &Path, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
    }

    fn file_hash(path: &Path) -> String {
        sha256(&std::fs::read(path).unwrap())
    }

    /// The disk attached read-only to a loop device with its partitions added by partx (this host's
    /// kernel does not scan partition tables itself); detached on drop.
    /// Tests attach one at a time, so that partitions of one never linger on another's device.
    struct Loop {
        device: String,
        _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    }

    impl Loop {
        fn attach(path: &Path, sector_size: u32) -> Loop {
            static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let device = sh(&format!("losetup -f --show -r -b {sector_size} {}", path.display())).trim().to_owned();
            let attached = Loop { device, _one_at_a_time: guard };
            sh(&format!("partx -a {}", attached.device));
            attached
        }

        fn blkid(&self, number: u32) -> String {
            sh(&format!("blkid -o export {}p{number}", self.device))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("partx").arg("-d").arg(&self.device).status();
            let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        }
    }

    /// A 64 MiB GPT image (ESP + root) grown to `disk_mib`: its backup GPT is not at the end.
    fn gpt_image_on_larger_disk(disk_mib: u64) -> tempfile::NamedTempFile {
        let file = disk(64, "sgdisk -n 1:2048:+8M -t 1:ef00 -c 1:efi -n 2:0:0 -t 2:8300 -c 2:root $D >/dev/null");
        put_at(file.path(), 20 * MIB, b"root filesystem data");
        file.as_file().set_len(disk_mib * MIB).unwrap();
        file
    }

    #[test]
    fn gpt_gets_a_config_2_partition_at_the_end_and_its_backup_moved_there() {
        let file = gpt_image_on_larger_disk(200);
        let before = sh(&format!("sgdisk -v {}", file.path().display()));
        assert!(before.contains("doesn't reside\nat the end of the disk"), "{before}");
        let partitions_before = sh(&format!("sgdisk -i 1 {0}; sgdisk -i 2 {0}", file.path().display()));
        let image = iso("gpt");
        let partition = write(file.path(), &image).unwrap();
        // The disk ends at 200 MiB; the backup GPT takes its last 33 sectors, so the last whole MiB ends at 199.
        let expected_start = 198 * MIB;
        assert_eq!((partition.number, partition.start, partition.size), (3, expected_start, MIB));
        assert_eq!(read_at(file.path(), expected_start, image.len()), image);
        let verify = sh(&format!("sgdisk -v {}", file.path().display()));
        assert!(verify.contains("No problems found"), "{verify}");
        let info = sh(&format!("sgdisk -i 3 {}", file.path().display()));
        assert!(info.contains("Partition name: 'config-2'"), "{info}");
        assert!(info.contains("(Linux filesystem)"), "{info}");
        assert!(info.contains(&format!("Partition unique GUID: {}", partition.uuid.to_uppercase())), "{info}");
        assert!(info.contains(&format!("First sector: {} ", expected_start / 512)), "{info}");
        assert!(info.contains(&format!("Last sector: {} ", 199 * MIB / 512 - 1)), "{info}");
        let fdisk = sh(&format!("fdisk -l {} 2>&1", file.path().display()));
        assert!(
            !fdisk.contains("mismatch") && !fdisk.contains("corrupt"),
            "the protective MBR covers the disk: {fdisk}"
        );
        let print = sh(&format!("sgdisk -p {}", file.path().display()));
        assert!(print.contains("last usable sector is 409566"), "{print}");
        assert_eq!(sh(&format!("sgdisk -i 1 {0}; sgdisk -i 2 {0}", file.path().display())), partitions_before);
        assert_eq!(read_at(file.path(), 20 * MIB, 20), b"root filesystem data");
        let device = Loop::attach(file.path(), 512);
        let blkid = device.blkid(3);
        for expected in
            ["LABEL=config-2", "TYPE=iso9660", "PARTLABEL=config-2", &format!("PARTUUID={}", partition.uuid)]
        {
            assert!(blkid.lines().any(|line| line == expected), "{expected} missing from {blkid}");
        }
    }

    #[test]
    fn gpt_reuses_the_partition_named_config_2_wherever_it_is() {
        let file = disk(
            64,
            "sgdisk -n 1:2048:+8M -n 2:0:+4M -c 2:CONFIG-2 -n 3:0:+8M $D >/dev/null && \
             truncate -s 100M $D",
        );
        let table_before = sh(&format!("sgdisk -p {}", file.path().display()));
        let image = iso("reused");
        let partition = write(file.path(), &image).unwrap();
        assert_eq!((partition.number, partition.start, partition.size), (2, 9 * MIB, 4 * MIB));
        assert_eq!(read_at(file.path(), 9 * MIB, image.len()), image);
        let table_after = sh(&format!("sgdisk -p {}", file.path().display()));
        let rows = |table: &str| {
            table.lines().skip_while(|line| !line.starts_with("Number")).map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(rows(&table_after), rows(&table_before), "no partition added");
        let verify = sh(&format!("sgdisk -v {}", file.path().display()));
        assert!(verify.contains("No problems found"), "the backup moved to the end: {verify}");
    }

    #[test]
    fn gpt_reuses_a_partition_whose_filesystem_is_labelled_config_2() {
        let file = disk(64, "sgdisk -n 1:2048:+8M -n 2:0:+2M -n 3:0:+8M $D >/dev/null");
        put_at(file.path(), 9 * MIB, &vfat_image("config-2")[..MIB_USIZE]);
        let partition = write(file.path(), &iso("relabelled")).unwrap();
        assert_eq!((partition.number, partition.start), (2, 9 * MIB));
        assert_eq!(read_at(file.path(), 9 * MIB, 4096), iso("relabelled")[..4096]);
    }

    #[test]
    fn refusals_leave_the_disk_unchanged() {
        let two_config_drives = disk(64, "sgdisk -n 1:2048:+4M -c 1:config-2 -n 2:0:+4M -c 2:config-2 $D >/dev/null");
        let full_gpt = disk(64, "sgdisk -n 1:2048:0 $D >/dev/null");
        let full_mbr = disk(64, "printf 'start=2048,size=2048\\nsize=2048\\nsize=2048\\nsize=2048\\n' | sfdisk -q $D");
        let blank = disk(8, "true");
        let full_table =
            disk(64, "sgdisk --resize-table=4 -n 1:2048:+1M -n 2:0:+1M -n 3:0:+1M -n 4:0:+1M $D >/dev/null");
        let small_config_drive = disk(64, "sgdisk -n 1:2048:+1M -c 1:config-2 $D >/dev/null");
        let mut two_mib = iso("two MiB");
        two_mib.resize(2 * MIB_USIZE, 0);
        let roomy = gpt_image_on_larger_disk(200);
        let mut too_large = iso("too large");
        too_large.resize(MAX_BYTES as usize + 1, 0);
        let cases: [(&str, &Path, Vec<u8>, &str); 7] = [
            (
                "two config-2 partitions",
                two_config_drives.path(),
                iso("x"),
                "several config-2 partitions (numbers [1, 2])",
            ),
            ("no room after the last partition", full_gpt.path(), iso("x"), "no room for a 1048576-byte"),
            ("four primary partitions", full_mbr.path(), iso("x"), "no free primary partition slot"),
            ("no partition table", blank.path(), iso("x"), "has no partition table"),
            ("all GPT entries used", full_table.path(), iso("x"), "no free GPT partition entry"),
            (
                "config-2 too small",
                small_config_drive.path(),
                two_mib,
                "holds 1048576 bytes, less than the 2097152-byte",
            ),
            ("over 64 MiB", roomy.path(), too_large, "over the 67108864 bytes allowed"),
        ];
        for (name, path, image, expected) in cases {
            let before = file_hash(path);
            let error = write(path, &image).unwrap_err().to_string();
            assert!(error.contains(expected), "{name}: {error}");
            assert_eq!(file_hash(path), before, "{name}: the disk changed");
        }
    }

    #[test]
    fn hostile_gpt_values_are_refused_not_overflowed() {
        let seal = |path: &Path, offset: usize, value: u64| {
            let mut header = read_at(path, 512, 92);
            header[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
            let crc = disklabel::gpt_header_crc(&header);
            header[GPT_HEADER_CRC..GPT_HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
            put_at(path, 512, &header);
        };
        let cases = [
            ("entries LBA near u64::MAX", GPT_ENTRIES_LBA, u64::MAX - 1, "partition entry array LBA overflows"),
            ("huge first usable LBA", disklabel::GPT_FIRST_USABLE, u64::MAX - 1, "do not fit the disk's"),
            ("huge last usable LBA", GPT_LAST_USABLE, u64::MAX, "do not fit the disk's"),
        ];
        for (name, offset, value, expected) in cases {
            let file = gpt_image_on_larger_disk(100);
            seal(file.path(), offset, value);
            let before = file_hash(file.path());
            let error = write(file.path(), &iso("x")).unwrap_err();
            assert!(matches!(error, ConfigDriveError::Label(_)), "{name}: {error}");
            assert!(error.to_string().contains(expected), "{name}: {error}");
            assert_eq!(file_hash(file.path()), before, "{name}: the disk changed");
        }
    }

    #[test]
    fn gpt_with_4096_byte_sectors_is_read_and_extended_in_its_own_units() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * MIB).unwrap();
        sh(&format!(
            "L=$(losetup -f --show -b 4096 {0}) && sgdisk -n 1:256:+8M -c 1:root $L >/dev/null; R=$?; losetup -d $L; exit $R",
            file.path().display()
        ));
        file.as_file().set_len(100 * MIB).unwrap();
        let image = iso("4k");
        let partition = write(file.path(), &image).unwrap();
        // 25600 sectors: backup header at 25599, its 4 sectors of entries before, last usable 25594.
        assert_eq!((partition.number, partition.start, partition.size), (2, 98 * MIB, MIB));
        assert_eq!(read_at(file.path(), 98 * MIB, image.len()), image);
        let device = Loop::attach(file.path(), 4096);
        let verify = sh(&format!("sgdisk -v {}", device.device));
        assert!(verify.contains("No problems found"), "{verify}");
        let info = sh(&format!("sgdisk -i 2 {}", device.device));
        assert!(info.contains("Partition name: 'config-2'"), "{info}");
        assert!(info.contains(&format!("First sector: {} ", 98 * MIB / 4096)), "{info}");
    }

    #[test]
    fn mbr_gets_a_primary_linux_partition_at_the_end() {
        let file = disk(
            100,
            "printf 'label-id: 0x12345678\\nstart=2048,size=16384,type=83\\nsize=32768,type=83\\n' | sfdisk -q $D",
        );
        let image = iso("mbr");
        let partition = write(file.path(), &image).unwrap();
        assert_eq!(
            partition,
            ConfigDrivePartition { number: 3, start: 99 * MIB, size: MIB, uuid: "12345678-03".into() }
        );
        assert_eq!(read_at(file.path(), 99 * MIB, image.len()), image);
        let dump = sh(&format!("sfdisk -d {}", file.path().display()));
        assert!(dump.contains("3 : start=      202752, size=        2048, type=83"), "{dump}");
        assert!(dump.contains("1 : start=        2048, size=       16384, type=83"), "{dump}");
        sh(&format!("sfdisk -V {}", file.path().display()));
        let device = Loop::attach(file.path(), 512);
        let blkid = device.blkid(3);
        for expected in ["LABEL=config-2", "TYPE=iso9660", "PARTUUID=12345678-03"] {
            assert!(blkid.lines().any(|line| line == expected), "{expected} missing from {blkid}");
        }
    }

    #[test]
    fn mbr_reuses_a_logical_partition_holding_a_config_2_volume() {
        let file = disk(
            64,
            "printf 'start=2048,size=8192,type=83\\nstart=10240,type=5\\nstart=12288,size=4096,type=83\\nstart=18432,size=4096,type=83\\n' | sfdisk -q $D",
        );
        // Logical partition 6 starts at sector 18432 (9 MiB) and holds an older config drive.
        put_at(file.path(), 9 * MIB, &iso("old"));
        let image = iso("new");
        let partition = write(file.path(), &image).unwrap();
        assert_eq!((partition.number, partition.start, partition.size), (6, 9 * MIB, 2 * MIB));
        assert_eq!(read_at(file.path(), 9 * MIB, image.len()), image);
        let dump = sh(&format!("sfdisk -d {}", file.path().display()));
        assert_eq!(dump.lines().filter(|line| line.contains(": start=")).count(), 4, "nothing added: {dump}");
    }

    #[test]
    fn mbr_disks_over_2_tib_get_the_partition_just_below_2_tib() {
        let file = disk(3 << 20, "printf 'start=2048,size=16384,type=83\\n' | sfdisk -q $D");
        let partition = write(file.path(), &iso("big disk")).unwrap();
        let end = (2 << 40) - MIB;
        assert_eq!((partition.number, partition.start, partition.size), (2, end - MIB, MIB));
        let dump = sh(&format!("sfdisk -d {}", file.path().display()));
        assert!(dump.contains(&format!("2 : start=  {}, size=        2048, type=83", (end - MIB) / 512)), "{dump}");
    }

    #[test]
    fn linux_mounts_the_written_config_drive_partitions() {
        let gpt = gpt_image_on_larger_disk(200);
        let mbr = disk(100, "printf 'start=2048,size=16384,type=83\\n' | sfdisk -q $D");
        let files = vec![
            ("openstack/latest/meta_data.json".to_owned(), br#"{"uuid": "u"}"#.to_vec()),
            ("openstack/latest/user_data".to_owned(), vec![7; 3 * MIB_USIZE + 5]),
        ];
        let image = iso9660::build(LABEL, &files);
        assert_eq!(write(gpt.path(), &image).unwrap().number, 3);
        assert_eq!(write(mbr.path(), &image).unwrap().number, 2);
        let script = [("vda3", "gpt"), ("vdb2", "mbr")]
            .map(|(device, tag)| {
                let listing = linux_check::list_tree(&format!("/mnt/{tag}"), tag);
                format!("mkdir /mnt/{tag} && mount -t iso9660 -o ro /dev/{device} /mnt/{tag} && {listing}")
            })
            .join("\n");
        let output = linux_check::run(&[gpt.path(), mbr.path()], &script);
        let mut expected = linux_check::expected_listing("gpt", &files);
        expected.extend(linux_check::expected_listing("mbr", &files));
        assert_eq!(output.lines().collect::<Vec<_>>(), expected, "full output:\n{output}");
    }
}
