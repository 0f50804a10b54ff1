//! Partition images: the layout IPA makes (EFI system partition, BIOS boot partition, ephemeral,
//! swap, config drive, and root last so it can grow), written without parted, mkfs.vfat or mkswap.
//!
//! Order matters for "nothing bootable after a failure": the disk's first and last MiB are zeroed,
//! the root image is streamed into where its partition will be, and only once it verified are the
//! partition table and the small filesystems written.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferric_protocol::ImageInfo;
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types;
use uuid::Uuid;

use crate::checksum::Expected;
use crate::disklabel;
use crate::image::{write_image, WriteError, WriteReport};
use crate::progress::ProgressTracker;
use crate::target::{Slice, Target};

pub const MIB: u64 = 1 << 20;
/// IPA's `[disk_utils]efi_system_partition_size`.
pub const ESP_MB: u64 = 550;
pub const BIOS_BOOT_MB: u64 = 1;
/// Logical sector size of the partition tables written (disks with other sector sizes are refused).
pub const SECTOR: u64 = 512;
/// The backup GPT at the end of the disk: 32 sectors of entries and the header.
const GPT_BACKUP_BYTES: u64 = 33 * SECTOR;
/// An MBR addresses 2^32 sectors.
const MBR_LIMIT_BYTES: u64 = (1 << 32) * SECTOR;
const SWAP_PAGE: usize = 4096;
/// Label of the ESP's FAT volume (IPA: `mkfs.vfat -n efi-part`; FAT labels are conventionally upper case).
pub const ESP_VOLUME_LABEL: &str = "EFI-PART";
pub const EPHEMERAL_LABEL: &str = "ephemeral0";
pub const SWAP_LABEL: &str = "swap1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    Bios,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Gpt,
    Msdos,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Label::Gpt => "gpt",
            Label::Msdos => "msdos",
        })
    }
}

/// How the ephemeral partition is formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EphemeralFormat {
    /// Written by the agent itself (fatfs).
    Vfat,
    /// `mkfs.<name>` (ext2, ext3, ext4), run only when the binary is present.
    Ext(String),
}

impl EphemeralFormat {
    fn parse(name: &str) -> Result<Self, PartitionError> {
        match name.to_ascii_lowercase().as_str() {
            "vfat" | "fat" | "fat32" => Ok(EphemeralFormat::Vfat),
            ext @ ("ext2" | "ext3" | "ext4") => Ok(EphemeralFormat::Ext(ext.to_owned())),
            _ => Err(PartitionError::UnsupportedEphemeralFormat(name.to_owned())),
        }
    }

    /// The external tool this format needs, if any.
    pub fn tool(&self) -> Option<String> {
        match self {
            EphemeralFormat::Vfat => None,
            EphemeralFormat::Ext(name) => Some(format!("mkfs.{name}")),
        }
    }
}

/// What the deploy request asks for (IPA's `image_info` of a partition image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRequest {
    pub boot_mode: BootMode,
    /// Ignored under UEFI, which always gets GPT (as in IPA).
    pub label: Label,
    /// None: the root partition takes the rest of the disk.
    pub root_mb: Option<u64>,
    pub swap_mb: u64,
    pub ephemeral_mb: u64,
    pub ephemeral_format: String,
    /// Size of the config drive ISO; its partition is this rounded up to a MiB.
    pub configdrive_bytes: Option<u64>,
}

impl PartitionRequest {
    /// From `image_info`, with `boot_mode` already resolved from its `deploy_boot_mode` by the caller.
    pub fn from_image_info(
        info: &ImageInfo,
        boot_mode: BootMode,
        configdrive_bytes: Option<u64>,
    ) -> Result<Self, PartitionError> {
        let label = match info.disk_label.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("msdos") => Label::Msdos,
            Some("gpt") => Label::Gpt,
            Some(other) => return Err(PartitionError::InvalidField { field: "disk_label", value: other.to_owned() }),
        };
        Ok(Self {
            boot_mode,
            label,
            root_mb: info.root_mb.filter(|mb| *mb > 0),
            swap_mb: info.swap_mb.unwrap_or(0),
            ephemeral_mb: info.ephemeral_mb.unwrap_or(0),
            ephemeral_format: info.ephemeral_format.clone().unwrap_or_else(|| "ext4".to_owned()),
            configdrive_bytes,
        })
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Esp,
    BiosBoot,
    Ephemeral,
    Swap,
    ConfigDrive,
    Root,
}

impl Role {
    /// GPT partition name (IPA's labels).
    pub fn gpt_name(self) -> &'static str {
        match self {
            Role::Esp => "efi-part",
            Role::BiosBoot => "bios-boot",
            Role::Ephemeral => "ephemeral0",
            Role::Swap => "swap1",
            Role::ConfigDrive => "config-2",
            Role::Root => "root",
        }
    }

    fn gpt_type(self) -> partition_types::Type {
        match self {
            Role::Esp => partition_types::EFI,
            Role::BiosBoot => partition_types::BIOS,
            Role::Swap => partition_types::LINUX_SWAP,
            Role::Ephemeral | Role::ConfigDrive | Role::Root => partition_types::LINUX_FS,
        }
    }

    /// The key under which IPA reports this partition's UUID.
    pub fn uuid_key(self) -> Option<&'static str> {
        match self {
            Role::Root => Some("root uuid"),
            Role::Esp => Some("efi system partition uuid"),
            Role::ConfigDrive => Some(ferric_protocol::CONFIG_DRIVE_UUID_KEY),
            Role::Swap => Some("swap partition uuid"),
            Role::Ephemeral => Some("ephemeral partition uuid"),
            Role::BiosBoot => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Esp => "EFI system partition",
            Role::BiosBoot => "BIOS boot partition",
            Role::Ephemeral => "ephemeral",
            Role::Swap => "swap",
            Role::ConfigDrive => "config drive",
            Role::Root => "root",
        })
    }
}

/// One partition of a [`Layout`]; byte offsets, all multiples of a MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedPartition {
    pub number: u32,
    pub role: Role,
    pub start: u64,
    pub size: u64,
}

/// Where each partition goes on a disk of `disk_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub label: Label,
    pub boot_mode: BootMode,
    pub disk_bytes: u64,
    pub ephemeral_format: Option<EphemeralFormat>,
    /// In disk order, numbered from 1; root is last.
    pub partitions: Vec<PlannedPartition>,
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("image_info field {field} has the invalid value {value:?}")]
    InvalidField { field: &'static str, value: String },
    #[error("ephemeral_format {0:?} is not supported (supported: vfat, ext2, ext3, ext4)")]
    UnsupportedEphemeralFormat(String),
    #[error(
        "disk of {} MiB ({disk_bytes} bytes) is too small for the {label} layout: it needs {} MiB ({breakdown}) \
         and {} MiB are usable", disk_bytes / MIB, needed_bytes.div_ceil(MIB), usable_bytes / MIB
    )]
    DiskTooSmall { disk_bytes: u64, label: Label, needed_bytes: u64, usable_bytes: u64, breakdown: String },
    #[error(
        "the root partition ends at {end_bytes} bytes, beyond the 2 TiB an msdos label can address: use disk_label gpt"
    )]
    BeyondMbrLimit { end_bytes: u64 },
    #[error("partition images need {SECTOR}-byte sectors; {disk} has {sector_size}")]
    SectorSize { disk: PathBuf, sector_size: u64 },
    #[error("the layout was planned for a disk of {planned} bytes but {target} holds {actual} bytes")]
    LayoutMismatch { target: String, planned: u64, actual: u64 },
    #[error("the config drive is {iso_bytes} bytes but its partition holds {partition_bytes} bytes")]
    ConfigDriveSize { iso_bytes: u64, partition_bytes: u64 },
    #[error("a config drive was given but the layout has no config drive partition (or the reverse)")]
    ConfigDriveMismatch,
    #[error(
        "ephemeral_format {format} needs {tool}, which the ramdisk does not have (searched {searched}); \
         use ephemeral_format vfat or a ramdisk with {tool}; nothing was written"
    )]
    MissingTool { format: String, tool: String, searched: String },
    #[error("writing the root image into partition {number} of {disk} failed")]
    Root {
        disk: String,
        number: u32,
        #[source]
        source: WriteError,
    },
    #[error("{what} on {target} failed")]
    Io {
        what: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the GPT on {target} failed")]
    Gpt {
        target: String,
        #[source]
        source: gpt::GptError,
    },
    #[error("formatting the ephemeral partition failed")]
    Mkfs(#[source] ferric_runner::CommandError),
    #[error("re-reading the partition table of {disk} failed")]
    Reread {
        disk: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl Layout {
    /// The partitions IPA's `make_partitions` creates, 1 MiB aligned and contiguous from 1 MiB:
    /// ESP (UEFI), BIOS boot (BIOS + GPT), ephemeral, swap, config drive, root last.
    /// Under BIOS + msdos this is at most four partitions, so all are primary.
    pub fn plan(request: &PartitionRequest, disk_bytes: u64) -> Result<Layout, PartitionError> {
        let label = match request.boot_mode {
            BootMode::Uefi => Label::Gpt,
            BootMode::Bios => request.label,
        };
        let ephemeral_format =
            (request.ephemeral_mb > 0).then(|| EphemeralFormat::parse(&request.ephemeral_format)).transpose()?;
        let mut fixed: Vec<(Role, u64)> = Vec::new();
        if request.boot_mode == BootMode::Uefi {
            fixed.push((Role::Esp, ESP_MB));
        }
        if request.boot_mode == BootMode::Bios && label == Label::Gpt {
            fixed.push((Role::BiosBoot, BIOS_BOOT_MB));
        }
        if request.ephemeral_mb > 0 {
            fixed.push((Role::Ephemeral, request.ephemeral_mb));
        }
        if request.swap_mb > 0 {
            fixed.push((Role::Swap, request.swap_mb));
        }
        if let Some(bytes) = request.configdrive_bytes {
            fixed.push((Role::ConfigDrive, bytes.div_ceil(MIB).max(1)));
        }

        let usable_end = match label {
            Label::Gpt => disk_bytes.saturating_sub(GPT_BACKUP_BYTES) / MIB * MIB,
            // The rest of a disk larger than 2 TiB is left unused rather than refused.
            Label::Msdos => disk_bytes.min(MBR_LIMIT_BYTES) / MIB * MIB,
        };
        let fixed_bytes = fixed.iter().fold(0u64, |sum, (_, mb)| sum.saturating_add(mb.saturating_mul(MIB)));
        let root_start = MIB.saturating_add(fixed_bytes);
        let root_mb = request.root_mb.filter(|mb| *mb > 0);
        let root_size = match root_mb {
            Some(mb) => mb.saturating_mul(MIB),
            None => usable_end.saturating_sub(root_start).max(MIB),
        };
        let needed = root_start.saturating_add(root_size);
        if needed > usable_end {
            if label == Label::Msdos && needed <= disk_bytes {
                return Err(PartitionError::BeyondMbrLimit { end_bytes: needed });
            }
            let mut parts = vec!["1 MiB partition table".to_owned()];
            parts.extend(fixed.iter().map(|(role, mb)| format!("{role} {mb} MiB")));
            parts.push(match root_mb {
                Some(mb) => format!("root {mb} MiB"),
                None => "root at least 1 MiB".to_owned(),
            });
            return Err(PartitionError::DiskTooSmall {
                disk_bytes,
                label,
                needed_bytes: needed.saturating_add(if label == Label::Gpt { GPT_BACKUP_BYTES } else { 0 }),
                usable_bytes: usable_end,
                breakdown: parts.join(" + "),
            });
        }

        let mut partitions = Vec::with_capacity(fixed.len() + 1);
        let mut start = MIB;
        for (role, size) in fixed.into_iter().map(|(role, mb)| (role, mb * MIB)).chain([(Role::Root, root_size)]) {
            partitions.push(PlannedPartition { number: partitions.len() as u32 + 1, role, start, size });
            start += size;
        }
        Ok(Layout { label, boot_mode: request.boot_mode, disk_bytes, ephemeral_format, partitions })
    }

    pub fn get(&self, role: Role) -> Option<&PlannedPartition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    pub fn root(&self) -> &PlannedPartition {
        self.partitions.last().expect("a layout always has a root partition")
    }
}

/// A partition as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPartition {
    pub number: u32,
    pub role: Role,
    pub start: u64,
    pub size: u64,
    /// The PARTUUID: GPT partition GUID, or `<disk id>-<nn>` on msdos.
    pub uuid: String,
}

/// What [`deploy_partition_image`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionReport {
    pub image: WriteReport,
    pub label: Label,
    /// GPT disk GUID, or the msdos disk identifier as 8 hex digits.
    pub disk_identifier: String,
    /// IPA's keys (`root uuid`, `efi system partition uuid`, [`ferric_protocol::CONFIG_DRIVE_UUID_KEY`],
    /// `swap partition uuid`, `ephemeral partition uuid`). IPA reports a filesystem UUID where
    /// lsblk shows one and the PARTUUID otherwise; these are always PARTUUIDs (GPT partition GUID,
    /// msdos `<disk id>-<nn>`), which `root=PARTUUID=` and the firmware understand without
    /// reading the filesystem.
    pub partition_uuids: BTreeMap<String, String>,
    pub partitions: Vec<WrittenPartition>,
    /// Whether the kernel re-read the table (false for image files).
    pub table_reread: bool,
}

impl PartitionReport {
    pub fn partition(&self, role: Role) -> Option<&WrittenPartition> {
        self.partitions.iter().find(|p| p.role == role)
    }
}

/// Writes a partition image onto `target` (the disk at `disk`) with `layout`: the root image into the
/// root partition, then the partition table, ESP (FAT32), BIOS boot partition, ephemeral filesystem,
/// swap signature and the config drive ISO, then makes the kernel re-read the table.
pub fn deploy_partition_image<R: Read>(
    source: R,
    expected: &Expected,
    disk: &Path,
    target: &mut dyn Target,
    layout: &Layout,
    configdrive: Option<&[u8]>,
    progress: &Arc<ProgressTracker>,
) -> Result<PartitionReport, PartitionError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"));
    deploy_with_path(source, expected, disk, target, layout, configdrive, progress, &path)
}

#[allow(clippy::too_many_arguments)]
fn deploy_with_path<R: Read>(
    source: R,
    expected: &Expected,
    disk: &Path,
    target: &mut dyn Target,
    layout: &Layout,
    configdrive: Option<&[u8]>,
    progress: &Arc<ProgressTracker>,
    tool_path: &OsStr,
) -> Result<PartitionReport, PartitionError> {
    // Everything that can be refused is refused before the first byte is written.
    require_512_byte_sectors(disk)?;
    if target.size() != layout.disk_bytes {
        return Err(PartitionError::LayoutMismatch {
            target: target.describe(),
            planned: layout.disk_bytes,
            actual: target.size(),
        });
    }
    match (layout.get(Role::ConfigDrive), configdrive) {
        (Some(part), Some(iso)) if iso.len() as u64 > part.size => {
            return Err(PartitionError::ConfigDriveSize { iso_bytes: iso.len() as u64, partition_bytes: part.size })
        }
        (Some(_), None) | (None, Some(_)) => return Err(PartitionError::ConfigDriveMismatch),
        _ => {}
    }
    let mkfs = match &layout.ephemeral_format {
        Some(format @ EphemeralFormat::Ext(name)) => {
            let tool = format.tool().unwrap_or_default();
            Some(find_tool(&tool, tool_path).ok_or_else(|| PartitionError::MissingTool {
                format: name.clone(),
                tool,
                searched: tool_path.to_string_lossy().into_owned(),
            })?)
        }
        _ => None,
    };

    progress.set_stage("wiping old partition tables");
    let disk_bytes = target.size();
    zero(target, 0, MIB, "wiping the partition table")?;
    zero(target, disk_bytes - MIB, MIB, "wiping the backup partition table")?;
    sync(target)?;

    let root = layout.root();
    let image = write_image(source, expected, &mut Slice::new(&mut *target, root.start, root.size), progress)
        .map_err(|source| PartitionError::Root { disk: target.describe(), number: root.number, source })?;

    progress.set_stage("writing partition table");
    let (disk_identifier, uuids) = match layout.label {
        Label::Gpt => write_gpt(target, layout)?,
        Label::Msdos => write_mbr(target, layout)?,
    };
    let partitions: Vec<WrittenPartition> = layout
        .partitions
        .iter()
        .zip(uuids)
        .map(|(p, uuid)| WrittenPartition { number: p.number, role: p.role, start: p.start, size: p.size, uuid })
        .collect();

    for part in &layout.partitions {
        let mut slice = Slice::new(&mut *target, part.start, part.size);
        match part.role {
            Role::Root => {}
            Role::Esp => {
                progress.set_stage("formatting the EFI system partition");
                wipe_signatures(&mut slice)?;
                format_fat(&mut slice, ESP_VOLUME_LABEL, Some(fatfs::FatType::Fat32))?;
            }
            Role::BiosBoot => zero(&mut slice, 0, part.size, "clearing the BIOS boot partition")?,
            Role::Swap => {
                progress.set_stage("writing the swap signature");
                wipe_signatures(&mut slice)?;
                write_swap_header(&mut slice, SWAP_LABEL, Uuid::new_v4())?;
            }
            Role::Ephemeral => {
                progress.set_stage("formatting the ephemeral partition");
                wipe_signatures(&mut slice)?;
                match (&layout.ephemeral_format, &mkfs) {
                    (Some(EphemeralFormat::Ext(_)), Some(tool)) => {
                        sync(&mut slice)?;
                        run_mkfs_ext(tool, disk, part)?;
                    }
                    _ => format_fat(&mut slice, &EPHEMERAL_LABEL.to_ascii_uppercase(), None)?,
                }
            }
            Role::ConfigDrive => {
                progress.set_stage("writing the config drive");
                let iso = configdrive.unwrap_or_default();
                write_at(&mut slice, 0, iso, "writing the config drive")?;
                zero(&mut slice, iso.len() as u64, part.size - iso.len() as u64, "clearing after the config drive")?;
            }
        }
    }
    progress.set_stage("flushing");
    sync(target)?;
    let table_reread = reread_partition_table(disk)?;

    let partition_uuids =
        partitions.iter().filter_map(|p| p.role.uuid_key().map(|key| (key.to_owned(), p.uuid.clone()))).collect();
    Ok(PartitionReport { image, label: layout.label, disk_identifier, partition_uuids, partitions, table_reread })
}

/// Writes a protective MBR and both GPTs; returns the disk GUID and each partition's GUID (new, random).
fn write_gpt(target: &mut dyn Target, layout: &Layout) -> Result<(String, Vec<String>), PartitionError> {
    let describe = target.describe();
    let gpt_error = |source| PartitionError::Gpt { target: describe.clone(), source };
    let disk_guid = Uuid::new_v4();
    let mut entries = BTreeMap::new();
    let mut uuids = Vec::new();
    for part in &layout.partitions {
        let guid = Uuid::new_v4();
        uuids.push(guid.to_string());
        entries.insert(
            part.number,
            gpt::partition::Partition {
                part_type_guid: part.role.gpt_type(),
                part_guid: guid,
                first_lba: part.start / SECTOR,
                last_lba: (part.start + part.size) / SECTOR - 1,
                flags: 0,
                name: part.role.gpt_name().to_owned(),
            },
        );
    }
    let total_sectors = target.size() / SECTOR;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(TargetIo::new(&mut *target), Some(disk_guid))
        .map_err(gpt_error)?;
    disk.update_partitions(entries).map_err(gpt_error)?;
    disk.write_inplace().map_err(gpt_error)?;
    let mut io = disk.take_device();
    let protective = ProtectiveMBR::with_lb_size(u32::try_from(total_sectors - 1).unwrap_or(u32::MAX));
    protective.overwrite_lba0(&mut io).map_err(|source| PartitionError::Io {
        what: "writing the protective MBR".to_owned(),
        target: describe.clone(),
        source: io::Error::other(source.to_string()),
    })?;
    Ok((disk_guid.to_string(), uuids))
}

/// Writes an msdos table with a random disk identifier; returns it and each partition's PARTUUID.
fn write_mbr(target: &mut dyn Target, layout: &Layout) -> Result<(String, Vec<String>), PartitionError> {
    let disk_id = random_disk_id();
    let sector = mbr_sector(layout, disk_id);
    write_at(target, 0, &sector, "writing the msdos partition table")?;
    let uuids = layout.partitions.iter().map(|p| format!("{disk_id:08x}-{:02x}", p.number)).collect();
    Ok((format!("{disk_id:08x}"), uuids))
}

fn random_disk_id() -> u32 {
    loop {
        let bytes = Uuid::new_v4().into_bytes();
        let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if id != 0 {
            return id;
        }
    }
}

/// Sector 0 of an msdos disk (only BIOS layouts use one): no boot code (grub-install writes its own),
/// the disk identifier, primary partitions, the boot flag on root.
fn mbr_sector(layout: &Layout, disk_id: u32) -> [u8; 512] {
    let mut sector = [0u8; 512];
    sector[440..444].copy_from_slice(&disk_id.to_le_bytes());
    for (index, part) in layout.partitions.iter().enumerate() {
        let entry = &mut sector[446 + 16 * index..446 + 16 * (index + 1)];
        let first = (part.start / SECTOR) as u32;
        let count = (part.size / SECTOR) as u32;
        entry[0] = if part.role == Role::Root { 0x80 } else { 0 };
        entry[1..4].copy_from_slice(&disklabel::chs(first.into()));
        entry[4] = match (part.role, &layout.ephemeral_format) {
            (Role::Swap, _) => 0x82,
            (Role::Ephemeral, Some(EphemeralFormat::Vfat)) => 0x0c,
            _ => 0x83,
        };
        entry[5..8].copy_from_slice(&disklabel::chs((first + count - 1).into()));
        entry[8..12].copy_from_slice(&first.to_le_bytes());
        entry[12..16].copy_from_slice(&count.to_le_bytes());
    }
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// Formats `target` as FAT (FAT32 when asked, else the type fatfs picks for its size).
pub fn format_fat(
    target: &mut dyn Target,
    label: &str,
    fat_type: Option<fatfs::FatType>,
) -> Result<(), PartitionError> {
    let describe = target.describe();
    let mut volume_label = [b' '; 11];
    for (slot, byte) in volume_label.iter_mut().zip(label.bytes()) {
        *slot = byte;
    }
    let mut options = fatfs::FormatVolumeOptions::new().volume_label(volume_label).volume_id(random_disk_id());
    if let Some(fat_type) = fat_type {
        options = options.fat_type(fat_type);
    }
    let io_error = |source| PartitionError::Io {
        what: format!("formatting FAT volume {label}"),
        target: describe.clone(),
        source,
    };
    fatfs::format_volume(TargetIo::new(&mut *target), options).map_err(io_error)?;
    // fatfs leaves FAT32's free cluster count unknown; counting once stores it, as mkfs.fat does.
    let fs = fatfs::FileSystem::new(TargetIo::new(target), fatfs::FsOptions::new()).map_err(io_error)?;
    fs.stats().map_err(io_error)?;
    fs.unmount().map_err(io_error)
}

/// The first page of a Linux swap area (`mkswap`'s SWAPSPACE2, version 1), for a 4 KiB page size.
pub fn swap_header(area_bytes: u64, label: &str, uuid: Uuid) -> Vec<u8> {
    let mut page = vec![0u8; SWAP_PAGE];
    let last_page = (area_bytes / SWAP_PAGE as u64).saturating_sub(1).min(u64::from(u32::MAX)) as u32;
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    page[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    // nr_badpages (1032..1036) stays 0.
    page[1036..1052].copy_from_slice(uuid.as_bytes());
    let label = label.as_bytes();
    let len = label.len().min(15);
    page[1052..1052 + len].copy_from_slice(&label[..len]);
    page[SWAP_PAGE - 10..].copy_from_slice(b"SWAPSPACE2");
    page
}

fn write_swap_header(target: &mut dyn Target, label: &str, uuid: Uuid) -> Result<(), PartitionError> {
    let page = swap_header(target.size(), label, uuid);
    write_at(target, 0, &page, "writing the swap signature")
}

/// `mkfs.ext*` on the partition's byte range of the whole disk (`-E offset`), so it works the same on
/// block devices (whose partition nodes may not exist yet) and on image files.
fn run_mkfs_ext(tool: &Path, disk: &Path, part: &PlannedPartition) -> Result<(), PartitionError> {
    let mut command = Command::new(tool);
    command
        .args(["-F", "-q", "-L", EPHEMERAL_LABEL, "-E"])
        .arg(format!("offset={},nodiscard", part.start))
        .arg(disk)
        .arg(format!("{}k", part.size / 1024));
    ferric_runner::run(format!("format the ephemeral partition {} of {}", part.number, disk.display()), &mut command)
        .map(drop)
        .map_err(PartitionError::Mkfs)
}

/// The executable `name` in one of the directories of `path` (a PATH value).
fn find_tool(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path).map(|dir| dir.join(name)).find(|candidate| {
        candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    })
}

/// The device node of partition `number` of `disk`: `/dev/vda` → `/dev/vda2`,
/// `/dev/nvme0n1` or `/dev/loop0` → `/dev/nvme0n1p2`, `/dev/loop0p2`. Symlinks (`/dev/disk/by-id/…`,
/// whose partitions are `…-partN`) are resolved to the kernel's node first.
pub fn partition_device(disk: &Path, number: u32) -> PathBuf {
    let disk = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_owned());
    let mut name = disk.as_os_str().to_owned();
    if disk.to_string_lossy().ends_with(|c: char| c.is_ascii_digit()) {
        name.push("p");
    }
    name.push(number.to_string());
    PathBuf::from(name)
}

/// Refuses disks whose logical sector size is not [`SECTOR`] (4Kn disks): the tables, the ESP's device
/// path and the CHS addresses written for partition images are in 512-byte sectors.
pub fn require_512_byte_sectors(disk: &Path) -> Result<(), PartitionError> {
    let sector_size = disklabel::logical_sector_size(disk).map_err(|source| PartitionError::Io {
        what: "reading the logical sector size".to_owned(),
        target: disk.display().to_string(),
        source,
    })?;
    if sector_size != SECTOR {
        return Err(PartitionError::SectorSize { disk: disk.to_owned(), sector_size });
    }
    Ok(())
}

/// BLKRRPART on `disk` when it is a block device, retried while something holds it busy;
/// Ok(false) for image files.
pub fn reread_partition_table(disk: &Path) -> Result<bool, PartitionError> {
    let is_block = std::fs::metadata(disk).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        return Ok(false);
    }
    let file = File::open(disk).map_err(|source| PartitionError::Io {
        what: "opening for BLKRRPART".to_owned(),
        target: disk.display().to_string(),
        source,
    })?;
    let mut attempts = 0;
    loop {
        match blkrrpart(&file) {
            Ok(()) => return Ok(true),
            Err(nix::Error::EBUSY) if attempts < 10 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(source) => return Err(PartitionError::Reread { disk: disk.to_owned(), source }),
        }
    }
}

#[allow(unsafe_code)]
mod ioctl {
    // BLKRRPART = _IO(0x12, 95), from linux/fs.h.
    nix::ioctl_none!(blkrrpart, 0x12, 95);
}

#[allow(unsafe_code)]
fn blkrrpart(file: &File) -> nix::Result<()> {
    // SAFETY: BLKRRPART takes no argument; the descriptor is open for the whole call.
    unsafe { ioctl::blkrrpart(file.as_raw_fd()) }.map(drop)
}

/// Clears the places filesystem signatures live (first and last MiB), so blkid sees only the new one.
fn wipe_signatures(target: &mut dyn Target) -> Result<(), PartitionError> {
    let size = target.size();
    let head = size.min(MIB);
    zero(target, 0, head, "wiping old signatures")?;
    if size > head {
        let tail = (size - head).min(MIB);
        zero(target, size - tail, tail, "wiping old signatures")?;
    }
    Ok(())
}

/// Makes `len` bytes at `offset` read back as zeros: cheaply when the target can, else by writing.
fn zero(target: &mut dyn Target, offset: u64, len: u64, what: &str) -> Result<(), PartitionError> {
    if len == 0 {
        return Ok(());
    }
    let fast = target.zero_fast(offset, len).map_err(|source| io_error(&*target, what, source))?;
    if fast {
        return Ok(());
    }
    let zeros = vec![0u8; len.min(MIB) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        write_at(target, offset + done, &zeros[..n], what)?;
        done += n as u64;
    }
    Ok(())
}

fn write_at(target: &mut dyn Target, offset: u64, data: &[u8], what: &str) -> Result<(), PartitionError> {
    target.write_at(offset, data).map_err(|source| io_error(&*target, what, source))
}

fn sync(target: &mut dyn Target) -> Result<(), PartitionError> {
    target.sync().map_err(|source| io_error(&*target, "flushing", source))
}

fn io_error(target: &dyn Target, what: &str, source: io::Error) -> PartitionError {
    PartitionError::Io { what: what.to_owned(), target: target.describe(), source }
}

/// A [`Target`] as a file-like stream, for crates that want `Read + Write + Seek` (gpt, fatfs).
pub struct TargetIo<'a> {
    target: &'a mut dyn Target,
    position: u64,
}

impl<'a> TargetIo<'a> {
    pub fn new(target: &'a mut dyn Target) -> Self {
        Self { target, position: 0 }
    }
}

impl fmt::Debug for TargetIo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetIo").field("target", &self.target.describe()).field("position", &self.position).finish()
    }
}

impl Read for TargetIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.target.size().saturating_sub(self.position);
        let n = (buf.len() as u64).min(available) as usize;
        if n > 0 {
            self.target.read_at(self.position, &mut buf[..n])?;
            self.position += n as u64;
        }
        Ok(n)
    }
}

impl Write for TargetIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.target.write_at(self.position, buf)?;
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for TargetIo<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.target.size().checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Algorithm;
    use crate::target::FileTarget;
    use crate::test_support::{run, LoopDevice};
    use sha2::{Digest, Sha256};

    fn request(boot_mode: BootMode, label: Label) -> PartitionRequest {
        PartitionRequest {
            boot_mode,
            label,
            root_mb: Some(100),
            swap_mb: 0,
            ephemeral_mb: 0,
            ephemeral_format: "ext4".to_owned(),
            configdrive_bytes: None,
        }
    }

    /// (role, start MiB, size MiB) of each planned partition.
    fn shape(layout: &Layout) -> Vec<(Role, u64, u64)> {
        layout.partitions.iter().map(|p| (p.role, p.start / MIB, p.size / MIB)).collect()
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn plans_match_ipa_layouts() {
        use BootMode::*;
        use Label::*;
        use Role::*;
        let full = |mut r: PartitionRequest| {
            r.swap_mb = 64;
            r.ephemeral_mb = 32;
            r.configdrive_bytes = Some(MIB + 1);
            r
        };
        type Shape = Vec<(Role, u64, u64)>;
        let cases: Vec<(&str, PartitionRequest, Shape, Label)> = vec![
            ("uefi gpt, root only", request(Uefi, Gpt), vec![(Esp, 1, 550), (Root, 551, 100)], Gpt),
            (
                "uefi gpt with ephemeral, swap and config drive",
                full(request(Uefi, Gpt)),
                vec![(Esp, 1, 550), (Ephemeral, 551, 32), (Swap, 583, 64), (ConfigDrive, 647, 2), (Root, 649, 100)],
                Gpt,
            ),
            ("uefi forces gpt over msdos", request(Uefi, Msdos), vec![(Esp, 1, 550), (Root, 551, 100)], Gpt),
            ("bios msdos, root only", request(Bios, Msdos), vec![(Root, 1, 100)], Msdos),
            (
                "bios msdos with everything stays within four primaries",
                full(request(Bios, Msdos)),
                vec![(Ephemeral, 1, 32), (Swap, 33, 64), (ConfigDrive, 97, 2), (Root, 99, 100)],
                Msdos,
            ),
            ("bios gpt gets a BIOS boot partition", request(Bios, Gpt), vec![(BiosBoot, 1, 1), (Root, 2, 100)], Gpt),
        ];
        for (name, req, expected, label) in cases {
            let layout = Layout::plan(&req, 4 * GIB).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(shape(&layout), expected, "{name}");
            assert_eq!(layout.label, label, "{name}");
            let numbers: Vec<u32> = layout.partitions.iter().map(|p| p.number).collect();
            assert_eq!(numbers, (1..=expected.len() as u32).collect::<Vec<_>>(), "{name}");
            assert_eq!(layout.root().role, Root, "{name}: root is last");
        }
    }

    #[test]
    fn absent_root_size_takes_the_rest_of_the_disk() {
        let cases = [
            // GPT keeps the backup table's 33 sectors free, so the last MiB is not used.
            ("gpt", BootMode::Uefi, Label::Gpt, GIB + GPT_BACKUP_BYTES, GIB / MIB - 551),
            ("gpt without room for the backup table", BootMode::Uefi, Label::Gpt, GIB + 5 * 512, GIB / MIB - 552),
            ("msdos", BootMode::Bios, Label::Msdos, GIB + 5 * 512, GIB / MIB - 1),
        ];
        for (name, mode, label, disk, root_mib) in cases {
            let req = PartitionRequest { root_mb: None, ..request(mode, label) };
            let layout = Layout::plan(&req, disk).unwrap();
            let root = layout.root();
            assert_eq!(root.size / MIB, root_mib, "{name}");
            assert_eq!(root.size % MIB, 0, "{name}");
            let end = root.start + root.size;
            assert!(end <= disk - if label == Label::Gpt { GPT_BACKUP_BYTES } else { 0 }, "{name}");
        }
    }

    #[test]
    fn every_partition_is_mib_aligned_and_contiguous() {
        let req = PartitionRequest {
            root_mb: None,
            swap_mb: 3,
            ephemeral_mb: 5,
            configdrive_bytes: Some(123_457),
            ..request(BootMode::Uefi, Label::Gpt)
        };
        let layout = Layout::plan(&req, 3 * GIB + 12345).unwrap();
        let mut next = MIB;
        for p in &layout.partitions {
            assert_eq!((p.start % MIB, p.size % MIB), (0, 0), "{p:?}");
            assert_eq!(p.start, next, "{p:?}");
            next = p.start + p.size;
        }
    }

    #[test]
    fn too_small_disk_names_the_sizes() {
        let req = PartitionRequest { swap_mb: 1024, root_mb: Some(4096), ..request(BootMode::Uefi, Label::Gpt) };
        let err = Layout::plan(&req, 2 * GIB).unwrap_err();
        let text = err.to_string();
        for needle in ["2048 MiB", "5672 MiB", "EFI system partition 550 MiB", "swap 1024 MiB", "root 4096 MiB"] {
            assert!(text.contains(needle), "{needle:?} missing in: {text}");
        }
        let rest = PartitionRequest { root_mb: None, ..request(BootMode::Uefi, Label::Gpt) };
        let err = Layout::plan(&rest, 551 * MIB).unwrap_err();
        assert!(err.to_string().contains("root at least 1 MiB"), "{err}");
        let absurd = PartitionRequest { swap_mb: u64::MAX, ..request(BootMode::Bios, Label::Gpt) };
        assert!(matches!(Layout::plan(&absurd, GIB), Err(PartitionError::DiskTooSmall { .. })));
    }

    #[test]
    fn zero_root_size_means_the_rest_of_the_disk() {
        let req = PartitionRequest { root_mb: Some(0), ..request(BootMode::Bios, Label::Msdos) };
        assert_eq!(shape(&Layout::plan(&req, 64 * MIB).unwrap()), [(Role::Root, 1, 63)]);
    }

    #[test]
    fn msdos_cannot_reach_beyond_two_tib() {
        let disk = 3 << 40;
        let big = PartitionRequest { root_mb: Some(2 << 20), swap_mb: 1, ..request(BootMode::Bios, Label::Msdos) };
        assert!(matches!(Layout::plan(&big, disk), Err(PartitionError::BeyondMbrLimit { .. })));
        let rest = PartitionRequest { root_mb: None, ..request(BootMode::Bios, Label::Msdos) };
        let root = *Layout::plan(&rest, disk).unwrap().root();
        assert_eq!(root.start + root.size, MBR_LIMIT_BYTES);
    }

    #[test]
    fn ephemeral_format_is_checked_only_when_there_is_an_ephemeral_partition() {
        let req = PartitionRequest { ephemeral_format: "ntfs".into(), ..request(BootMode::Bios, Label::Msdos) };
        assert!(Layout::plan(&req, GIB).is_ok());
        let req = PartitionRequest { ephemeral_mb: 10, ..req };
        let err = Layout::plan(&req, GIB).unwrap_err();
        assert!(err.to_string().contains("\"ntfs\""), "{err}");
        let req = PartitionRequest { ephemeral_format: "VFAT".into(), ..req };
        assert_eq!(Layout::plan(&req, GIB).unwrap().ephemeral_format, Some(EphemeralFormat::Vfat));
    }

    #[test]
    fn request_comes_from_image_info() {
        let info = ImageInfo {
            image_type: Some("partition".into()),
            root_mb: Some(2048),
            swap_mb: Some(512),
            deploy_boot_mode: Some("uefi".into()),
            disk_label: Some("gpt".into()),
            ..Default::default()
        };
        // The caller resolved the boot mode (deploy.rs); deploy_boot_mode is not parsed again here.
        let req = PartitionRequest::from_image_info(&info, BootMode::Bios, Some(10)).unwrap();
        assert_eq!(
            req,
            PartitionRequest {
                boot_mode: BootMode::Bios,
                label: Label::Gpt,
                root_mb: Some(2048),
                swap_mb: 512,
                ephemeral_mb: 0,
                ephemeral_format: "ext4".into(),
                configdrive_bytes: Some(10),
            }
        );
        let defaults = PartitionRequest::from_image_info(&ImageInfo::default(), BootMode::Uefi, None).unwrap();
        assert_eq!((defaults.boot_mode, defaults.label, defaults.root_mb), (BootMode::Uefi, Label::Msdos, None));
        let unparsed = ImageInfo { deploy_boot_mode: Some("not a mode".into()), ..Default::default() };
        assert_eq!(
            PartitionRequest::from_image_info(&unparsed, BootMode::Uefi, None).unwrap().boot_mode,
            BootMode::Uefi
        );
        let bad = ImageInfo { disk_label: Some("bsd".into()), ..Default::default() };
        let err = PartitionRequest::from_image_info(&bad, BootMode::Bios, None).unwrap_err();
        assert!(err.to_string().contains("disk_label"), "{err}");
    }

    #[test]
    fn partition_device_names_follow_the_kernel() {
        assert_eq!(partition_device(Path::new("/dev/vda"), 2), Path::new("/dev/vda2"));
        assert_eq!(partition_device(Path::new("/dev/nvme0n1"), 1), Path::new("/dev/nvme0n1p1"));
        assert_eq!(partition_device(Path::new("/dev/loop7"), 3), Path::new("/dev/loop7p3"));
    }

    #[test]
    fn partition_device_of_a_symlink_is_named_after_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let dev = std::fs::canonicalize(dir.path()).unwrap();
        // udev's links are relative (`../../sda`); their own names may end in a digit or not.
        for (node, link, expected) in
            [("sda", "wwn-0x5000c50015", "sda2"), ("nvme0n1", "nvme-QEMU_NVMe_Ctrl", "nvme0n1p2")]
        {
            std::fs::write(dev.join(node), b"").unwrap();
            std::os::unix::fs::symlink(node, dev.join(link)).unwrap();
            assert_eq!(partition_device(&dev.join(link), 2), dev.join(expected), "{link}");
        }
    }

    #[test]
    fn disks_without_512_byte_sectors_are_refused_before_anything_is_written() {
        let file = disk(64 * MIB);
        require_512_byte_sectors(file.path()).unwrap();
        let dev = LoopDevice::attach(file.path(), &["-b", "4096"]);
        let dev_path = dev.path();
        let err = require_512_byte_sectors(dev_path).unwrap_err();
        assert_eq!(err.to_string(), format!("partition images need 512-byte sectors; {} has 4096", dev.0));
        let image = pattern(MIB as usize);
        let mut target = FileTarget::open(dev_path).unwrap();
        let req = PartitionRequest { root_mb: Some(8), ..request(BootMode::Bios, Label::Msdos) };
        let layout = Layout::plan(&req, target.size()).unwrap();
        let progress = Arc::new(ProgressTracker::default());
        let err = deploy_partition_image(&image[..], &sha256(&image), dev_path, &mut target, &layout, None, &progress)
            .unwrap_err();
        assert!(matches!(err, PartitionError::SectorSize { sector_size: 4096, .. }), "{err}");
        drop(dev);
        assert_untouched(file.path());
    }

    #[test]
    fn swap_header_has_mkswap_fields() {
        let uuid = Uuid::parse_str("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        let page = swap_header(64 * MIB, "swap1", uuid);
        assert_eq!(&page[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_le_bytes(page[1024..1028].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(page[1028..1032].try_into().unwrap()), 16383);
        assert_eq!(&page[1036..1052], uuid.as_bytes());
        assert_eq!(&page[1052..1058], b"swap1\0");
    }

    // ---- writing onto files and loop devices, checked with sfdisk, sgdisk, blkid, fsck.vfat, mtools ----

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8 ^ 0x5a).collect()
    }

    fn sha256(data: &[u8]) -> Expected {
        Expected { algorithm: Algorithm::Sha256, hex: hex::encode(Sha256::digest(data)) }
    }

    /// A sparse disk file with `0xee` in its first and last 2 MiB (an older image's tables).
    fn disk(len: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(len).unwrap();
        let mut target = FileTarget::open(file.path()).unwrap();
        target.write_at(0, &vec![0xee; 2 * MIB as usize]).unwrap();
        target.write_at(len - 2 * MIB, &vec![0xee; 2 * MIB as usize]).unwrap();
        file
    }

    fn sfdisk_json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&run("sfdisk", &["--json", path.to_str().unwrap()])).unwrap()
    }

    /// `blkid -p` of the byte range of a partition: (TYPE, LABEL, UUID).
    fn blkid(path: &Path, part: &WrittenPartition) -> (String, String, String) {
        let mut command = Command::new("blkid");
        command.args(["-p", "-o", "export", "-O", &part.start.to_string(), "-S", &part.size.to_string()]).arg(path);
        let out = ferric_runner::run("test: blkid", &mut command).map(|f| f.stdout).unwrap_or_default();
        let get =
            |key: &str| out.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().to_owned();
        (get("TYPE"), get("LABEL"), get("UUID"))
    }

    fn deploy(
        file: &Path,
        req: &PartitionRequest,
        image: &[u8],
        expected: &Expected,
        configdrive: Option<&[u8]>,
    ) -> Result<PartitionReport, PartitionError> {
        let mut target = FileTarget::open(file).unwrap();
        let layout = Layout::plan(req, target.size()).unwrap();
        let progress = Arc::new(ProgressTracker::default());
        deploy_partition_image(image, expected, file, &mut target, &layout, configdrive, &progress)
    }

    #[test]
    fn uefi_layout_on_a_loop_device_is_what_the_tools_expect() {
        let file = disk(GIB);
        let image = pattern(3 * MIB as usize + 4321);
        let iso = config_drive_iso();
        let req = PartitionRequest {
            root_mb: None,
            swap_mb: 8,
            ephemeral_mb: 40,
            ephemeral_format: "vfat".into(),
            configdrive_bytes: Some(iso.len() as u64),
            ..request(BootMode::Uefi, Label::Gpt)
        };
        // Partition scanning on, so BLKRRPART is accepted.
        let dev = LoopDevice::attach(file.path(), &["-P"]);
        let dev_path = dev.path();
        let mut target = FileTarget::open(dev_path).unwrap();
        let layout = Layout::plan(&req, target.size()).unwrap();
        let progress = Arc::new(ProgressTracker::default());
        let report =
            deploy_partition_image(&image[..], &sha256(&image), dev_path, &mut target, &layout, Some(&iso), &progress)
                .unwrap();
        assert!(report.table_reread, "BLKRRPART was issued on the loop device");
        assert_eq!(report.image.image_bytes, image.len() as u64);

        assert!(run("sgdisk", &["-v", &dev.0]).contains("No problems found"));
        let table = &sfdisk_json(dev_path)["partitiontable"];
        assert_eq!(table["label"], "gpt");
        assert_eq!(table["id"].as_str().unwrap().to_lowercase(), report.disk_identifier);
        let parts = table["partitions"].as_array().unwrap();
        let expected_types = [
            ("efi-part", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            ("ephemeral0", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            ("swap1", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
            ("config-2", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            ("root", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ];
        assert_eq!(parts.len(), expected_types.len());
        for ((part, written), (name, type_guid)) in parts.iter().zip(&report.partitions).zip(expected_types) {
            assert_eq!(part["name"], name);
            assert_eq!(part["type"], type_guid);
            assert_eq!(part["start"].as_u64().unwrap() * SECTOR, written.start, "{name}");
            assert_eq!(part["size"].as_u64().unwrap() * SECTOR, written.size, "{name}");
            assert_eq!(part["uuid"].as_str().unwrap().to_lowercase(), written.uuid, "{name}");
        }
        let root = report.partition(Role::Root).unwrap();
        assert_eq!(report.partition_uuids["root uuid"], root.uuid);
        assert_eq!(report.partition_uuids["efi system partition uuid"], report.partition(Role::Esp).unwrap().uuid);
        assert_eq!(report.partition_uuids.len(), 5);

        for role in [Role::Esp, Role::Ephemeral] {
            let part = report.partition(role).unwrap();
            let loop_part = LoopDevice::over(file.path(), part.start, part.size, false);
            // fsck.fat exits 0 even when it lists problems: only its header and summary may appear.
            let fsck = run("fsck.vfat", &["-n", &loop_part.0]);
            assert_eq!(fsck.lines().count(), 2, "{role}: {fsck}");
        }
        let esp = report.partition(Role::Esp).unwrap();
        assert_eq!(blkid(dev_path, esp).0, "vfat");
        assert_eq!(blkid(dev_path, esp).1, "EFI-PART");
        let loop_esp = LoopDevice::over(file.path(), esp.start, esp.size, false);
        assert_eq!(run("blkid", &["-p", "-s", "VERSION", "-o", "value", &loop_esp.0]).trim(), "FAT32");
        let (fs_type, label, _) = blkid(dev_path, report.partition(Role::Ephemeral).unwrap());
        assert_eq!((fs_type.as_str(), label.as_str()), ("vfat", "EPHEMERAL0"));
        let (fs_type, label, _) = blkid(dev_path, report.partition(Role::Swap).unwrap());
        assert_eq!((fs_type.as_str(), label.as_str()), ("swap", "swap1"));
        let (fs_type, label, _) = blkid(dev_path, report.partition(Role::ConfigDrive).unwrap());
        assert_eq!((fs_type.as_str(), label.as_str()), ("iso9660", "config-2"));

        let mut written = vec![0u8; image.len()];
        target.read_at(root.start, &mut written).unwrap();
        assert!(written == image, "root image in the root partition");
    }

    /// A small ISO 9660 volume labelled config-2, made with xorriso.
    fn config_drive_iso() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/openstack/latest")).unwrap();
        std::fs::write(dir.path().join("src/openstack/latest/meta_data.json"), b"{\"uuid\": \"x\"}").unwrap();
        let iso = dir.path().join("cd.iso");
        let mut command = Command::new("xorriso");
        command
            .args(["-as", "mkisofs", "-quiet", "-J", "-r", "-V", "config-2", "-o"])
            .arg(&iso)
            .arg(dir.path().join("src"));
        ferric_runner::run("test: build an ISO", &mut command).unwrap();
        std::fs::read(iso).unwrap()
    }

    #[test]
    fn bios_msdos_layout_has_boot_flag_types_and_disk_id() {
        let file = disk(256 * MIB);
        let image = pattern(2 * MIB as usize);
        let req = PartitionRequest {
            root_mb: Some(100),
            swap_mb: 16,
            ephemeral_mb: 40,
            ephemeral_format: "vfat".into(),
            ..request(BootMode::Bios, Label::Msdos)
        };
        let report = deploy(file.path(), &req, &image, &sha256(&image), None).unwrap();
        assert!(!report.table_reread);
        let table = &sfdisk_json(file.path())["partitiontable"];
        assert_eq!(table["label"], "dos");
        assert_eq!(table["id"], format!("0x{}", report.disk_identifier));
        let parts = table["partitions"].as_array().unwrap();
        let summary: Vec<(String, bool, u64, u64)> = parts
            .iter()
            .map(|p| {
                (
                    p["type"].as_str().unwrap().to_owned(),
                    p["bootable"].as_bool().unwrap_or(false),
                    p["start"].as_u64().unwrap() * SECTOR / MIB,
                    p["size"].as_u64().unwrap() * SECTOR / MIB,
                )
            })
            .collect();
        assert_eq!(summary, [("c".into(), false, 1, 40), ("82".into(), false, 41, 16), ("83".into(), true, 57, 100)]);
        let root = report.partition(Role::Root).unwrap();
        assert_eq!(root.uuid, format!("{}-03", report.disk_identifier));
        assert_eq!(report.partition_uuids["root uuid"], root.uuid);
        let (fs_type, label, _) = blkid(file.path(), report.partition(Role::Swap).unwrap());
        assert_eq!((fs_type.as_str(), label.as_str()), ("swap", "swap1"));
        let mdir = run("mdir", &["-i", &format!("{}@@{}", file.path().display(), MIB), "::"]);
        assert!(mdir.contains("EPHEMERAL0"), "{mdir}");
        let data = std::fs::read(file.path()).unwrap();
        assert_eq!(&data[root.start as usize..root.start as usize + image.len()], &image[..]);
        assert!(data[data.len() - MIB as usize..].iter().all(|b| *b == 0), "old backup table wiped");
    }

    #[test]
    fn bios_gpt_has_a_bios_boot_partition() {
        let file = disk(64 * MIB);
        let image = pattern(MIB as usize * 2);
        let req = PartitionRequest { root_mb: None, ..request(BootMode::Bios, Label::Gpt) };
        let report = deploy(file.path(), &req, &image, &sha256(&image), None).unwrap();
        let table = &sfdisk_json(file.path())["partitiontable"];
        let parts = table["partitions"].as_array().unwrap();
        assert_eq!(parts[0]["type"], "21686148-6449-6E6F-744E-656564454649");
        assert_eq!(parts[0]["size"].as_u64().unwrap() * SECTOR, MIB);
        assert_eq!(parts[1]["name"], "root");
        assert_eq!(report.partition_uuids.keys().collect::<Vec<_>>(), ["root uuid"]);
        run("sgdisk", &["-v", file.path().to_str().unwrap()]).contains("No problems found").then_some(()).unwrap();
    }

    #[test]
    fn ext4_ephemeral_is_made_with_mkfs() {
        let file = disk(128 * MIB);
        let image = pattern(MIB as usize * 2);
        let req = PartitionRequest {
            ephemeral_mb: 32,
            ephemeral_format: "ext4".into(),
            root_mb: Some(20),
            ..request(BootMode::Bios, Label::Msdos)
        };
        let report = deploy(file.path(), &req, &image, &sha256(&image), None).unwrap();
        let ephemeral = report.partition(Role::Ephemeral).unwrap();
        let (fs_type, label, _) = blkid(file.path(), ephemeral);
        assert_eq!((fs_type.as_str(), label.as_str()), ("ext4", "ephemeral0"));
        let data = std::fs::read(file.path()).unwrap();
        let root = report.partition(Role::Root).unwrap();
        assert_eq!(
            &data[root.start as usize..root.start as usize + image.len()],
            &image[..],
            "mkfs stayed in its partition"
        );
    }

    /// Everything the test disk held before: the untouched 0xee head is the proof nothing was written.
    fn assert_untouched(path: &Path) {
        let data = std::fs::read(path).unwrap();
        assert!(data[..2 * MIB as usize].iter().all(|b| *b == 0xee));
    }

    fn assert_no_partition_table(path: &Path) {
        let data = std::fs::read(path).unwrap();
        assert!(data[..MIB as usize].iter().all(|b| *b == 0), "first MiB must be zero");
        assert!(data[data.len() - MIB as usize..].iter().all(|b| *b == 0), "last MiB must be zero");
    }

    #[test]
    fn missing_mkfs_is_refused_before_anything_is_written() {
        let file = disk(64 * MIB);
        let image = pattern(MIB as usize * 2);
        let req = PartitionRequest {
            ephemeral_mb: 8,
            ephemeral_format: "ext3".into(),
            ..request(BootMode::Bios, Label::Msdos)
        };
        let mut target = FileTarget::open(file.path()).unwrap();
        let layout = Layout::plan(&PartitionRequest { root_mb: Some(20), ..req }, target.size()).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let progress = Arc::new(ProgressTracker::default());
        let err = deploy_with_path(
            &image[..],
            &sha256(&image),
            file.path(),
            &mut target,
            &layout,
            None,
            &progress,
            empty.path().as_os_str(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ext3") && text.contains("mkfs.ext3") && text.contains("nothing was written"), "{text}");
        assert_untouched(file.path());
    }

    #[test]
    fn failed_root_writes_leave_no_partition_table() {
        let image = pattern(MIB as usize * 3);
        let too_big = pattern(MIB as usize * 30);
        let uefi = PartitionRequest { root_mb: Some(20), swap_mb: 4, ..request(BootMode::Uefi, Label::Gpt) };
        let bios = PartitionRequest { root_mb: Some(20), swap_mb: 4, ..request(BootMode::Bios, Label::Msdos) };
        let cases: [(&str, &PartitionRequest, &[u8], Expected, u32); 3] = [
            ("checksum mismatch", &uefi, &image, sha256(b"something else"), 3),
            ("raw image larger than the root partition", &uefi, &too_big, sha256(&too_big), 3),
            ("raw image larger than the msdos root partition", &bios, &too_big, sha256(&too_big), 2),
        ];
        for (name, req, data, expected, root_number) in cases {
            let file = disk(600 * MIB);
            let err = deploy(file.path(), req, data, &expected, None).unwrap_err();
            assert!(matches!(err, PartitionError::Root { number, .. } if number == root_number), "{name}: {err}");
            assert_no_partition_table(file.path());
        }
    }

    #[test]
    fn qcow2_larger_than_the_root_partition_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let qcow2 = dir.path().join("root.qcow2");
        run("qemu-img", &["create", "-q", "-f", "qcow2", qcow2.to_str().unwrap(), "30M"]);
        let data = std::fs::read(&qcow2).unwrap();
        let req = PartitionRequest { root_mb: Some(20), ..request(BootMode::Bios, Label::Msdos) };
        let file = disk(64 * MIB);
        let err = deploy(file.path(), &req, &data, &sha256(&data), None).unwrap_err();
        let PartitionError::Root { source: WriteError::TargetTooSmall { needed, .. }, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(*needed, 30 * MIB);
        assert_no_partition_table(file.path());
    }

    #[test]
    fn config_drive_must_fit_and_match_the_layout() {
        let file = disk(64 * MIB);
        let image = pattern(MIB as usize * 2);
        let req = PartitionRequest {
            configdrive_bytes: Some(MIB),
            root_mb: Some(8),
            ..request(BootMode::Bios, Label::Msdos)
        };
        let big = vec![1u8; MIB as usize + 1];
        let err = deploy(file.path(), &req, &image, &sha256(&image), Some(&big)).unwrap_err();
        assert!(matches!(err, PartitionError::ConfigDriveSize { .. }), "{err}");
        let err = deploy(file.path(), &req, &image, &sha256(&image), None).unwrap_err();
        assert!(matches!(err, PartitionError::ConfigDriveMismatch), "{err}");
        assert_untouched(file.path());
    }

    #[test]
    fn target_io_reads_writes_and_seeks_within_the_target() {
        let file = disk(4 * MIB);
        let mut target = FileTarget::open(file.path()).unwrap();
        let mut io = TargetIo::new(&mut target);
        assert_eq!(io.seek(SeekFrom::End(-3)).unwrap(), 4 * MIB - 3);
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).unwrap(), 3);
        assert_eq!(io.read(&mut buf).unwrap(), 0);
        io.seek(SeekFrom::Start(10)).unwrap();
        io.write_all(b"abc").unwrap();
        assert_eq!(io.seek(SeekFrom::Current(-3)).unwrap(), 10);
        io.read_exact(&mut buf[..3]).unwrap();
        assert_eq!(&buf[..3], b"abc");
        assert!(io.seek(SeekFrom::Current(-100)).is_err());
    }
}
