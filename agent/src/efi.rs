//! UEFI boot entries for the deployed OS, without efibootmgr: find the EFI system partition in the
//! disk's partition table, find the OS loader in it (read with fatfs, no mount), encode an
//! EFI_LOAD_OPTION and write `Boot####` and `BootOrder` through efivarfs.
//!
//! For partition images the new ESP is empty: [`fill_esp_from_root`] first copies the deployed
//! root filesystem's `/boot/efi/EFI` tree into it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use fatfs::{FileSystem, FsOptions, ReadWriteSeek};
use uuid::Uuid;

use crate::bootloader::{self, Access, BootloaderError, System};
use crate::disklabel::{self, DiskLabelError, PartUuid, Partition, PartitionType};
use crate::partition::TargetIo;
use crate::target::{Slice, Target};

/// Where efivarfs is mounted.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// EFI_GLOBAL_VARIABLE, the vendor GUID of Boot#### and BootOrder.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const VARIABLE_ATTRIBUTES: u32 = 0x7;
const ESP_TYPE: Uuid = uuid::uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
const MBR_ESP_TYPE: u8 = 0xef;
/// Label of the entry for the removable-media path `\EFI\BOOT\BOOTX64.EFI`, which names no vendor.
pub const FALLBACK_LABEL: &str = "ferric";
/// FS_IMMUTABLE_FL from linux/fs.h: efivarfs sets it on variables so a stray `rm -rf` cannot brick.
const FS_IMMUTABLE_FL: nix::libc::c_long = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum EfiError {
    #[error(transparent)]
    DiskLabel(#[from] DiskLabelError),
    #[error("{disk} has no EFI system partition ({label} partition of type {wanted})")]
    NoEsp { disk: String, label: &'static str, wanted: String },
    #[error("{action} the EFI system partition {esp} failed")]
    Fat {
        /// What was done, e.g. "reading", "writing to".
        action: &'static str,
        esp: String,
        #[source]
        source: io::Error,
    },
    #[error("the EFI system partition {esp} holds no OS loader (no EFI/<vendor>/BOOTX64.CSV, EFI/<vendor>/*.efi or EFI/BOOT/BOOTX64.EFI)")]
    NoLoader { esp: String },
    #[error("EFI/{vendor} on {esp} holds several loaders and none is shimx64.efi or grubx64.efi: {found:?}")]
    AmbiguousLoader { esp: String, vendor: String, found: Vec<String> },
    #[error("{action} EFI variable {path} failed")]
    Variable {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("all 65536 Boot#### numbers are taken")]
    NoFreeBootNumber,
    #[error("the deployed root filesystem on {device} has no /boot/efi/EFI to copy into the EFI system partition")]
    NoEfiTree { device: PathBuf },
    #[error("copying {path} into the EFI system partition failed")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(#[from] BootloaderError),
}

/// What identifies the partition in a device path: GPT partition GUID, or msdos disk identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSignature {
    Gpt(Uuid),
    Mbr(u32),
}

/// HARDDRIVE_DEVICE_PATH: the partition the loader is on, in the disk's logical sectors (the units its
/// partition table uses: 4096 bytes on 4Kn GPT disks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    pub partition_number: u32,
    pub start_lba: u64,
    pub size_lba: u64,
    pub signature: PartitionSignature,
}

impl HardDrive {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x04, 0x01, 42, 0]);
        out.extend_from_slice(&self.partition_number.to_le_bytes());
        out.extend_from_slice(&self.start_lba.to_le_bytes());
        out.extend_from_slice(&self.size_lba.to_le_bytes());
        let (signature, mbr_type, signature_type) = match self.signature {
            // GUIDs are stored mixed-endian, as in the GPT itself.
            PartitionSignature::Gpt(guid) => (guid.to_bytes_le(), 0x02, 0x02),
            PartitionSignature::Mbr(id) => {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&id.to_le_bytes());
                (bytes, 0x01, 0x01)
            }
        };
        out.extend_from_slice(&signature);
        out.extend_from_slice(&[mbr_type, signature_type]);
    }
}

impl fmt::Display for HardDrive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signature {
            PartitionSignature::Gpt(guid) => write!(f, "HD({},GPT,{guid})", self.partition_number),
            PartitionSignature::Mbr(id) => write!(f, "HD({},MBR,0x{id:08x})", self.partition_number),
        }
    }
}

/// An EFI_LOAD_OPTION: active, `description`, device path HD(..)/File(loader)/End, no optional data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    pub description: String,
    pub partition: HardDrive,
    /// Path in the ESP with backslashes, e.g. `\EFI\debian\shimx64.efi`.
    pub loader: String,
}

impl LoadOption {
    pub fn encode(&self) -> Vec<u8> {
        let mut path = Vec::new();
        self.partition.encode(&mut path);
        let file = ucs2(&self.loader);
        path.extend_from_slice(&[0x04, 0x04]);
        path.extend_from_slice(&(4 + file.len() as u16).to_le_bytes());
        path.extend_from_slice(&file);
        path.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);

        let mut out = Vec::with_capacity(6 + 2 * self.description.len() + 2 + path.len());
        out.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(&ucs2(&self.description));
        out.extend_from_slice(&path);
        out
    }
}

/// NUL-terminated UCS-2 (UTF-16LE).
fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// The description of an encoded EFI_LOAD_OPTION.
pub fn load_option_description(data: &[u8]) -> Option<String> {
    let units: Vec<u16> = data.get(6..)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let end = units.iter().position(|u| *u == 0)?;
    String::from_utf16(&units[..end]).ok()
}

/// EFI variables in an efivarfs directory (a plain directory in tests): each file holds the
/// 4-byte attributes, then the data.
pub struct EfiVars {
    dir: PathBuf,
}

impl EfiVars {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{EFI_GLOBAL_VARIABLE}"))
    }

    /// A global variable's data (without the attributes), None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, EfiError> {
        read_variable(self.path(name))
    }

    /// Sets a global variable in place, as systemd does: attributes and data in a single write (efivarfs
    /// needs one), which replaces an existing variable's value at once. An existing variable is made
    /// mutable first and never deleted, so a failed write leaves the old value (BootOrder stays).
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), EfiError> {
        let path = self.path(name);
        let mut content = VARIABLE_ATTRIBUTES.to_le_bytes().to_vec();
        content.extend_from_slice(data);
        let written = if path.exists() {
            make_mutable(&path).and_then(|()| OpenOptions::new().write(true).open(&path))
        } else {
            OpenOptions::new().write(true).create_new(true).open(&path)
        }
        .and_then(|mut file| {
            let n = file.write(&content)?;
            if n != content.len() {
                return Err(io::Error::new(io::ErrorKind::WriteZero, format!("wrote {n} of {} bytes", content.len())));
            }
            // efivarfs now shows exactly the new value; a plain file (test fixtures) may keep an older, longer tail.
            if file.metadata()?.len() > content.len() as u64 {
                file.set_len(content.len() as u64)?;
            }
            Ok(())
        });
        written.map_err(|source| EfiError::Variable { action: "writing", path, source })
    }

    pub fn remove(&self, name: &str) -> Result<(), EfiError> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(());
        }
        let removed = make_mutable(&path).and_then(|()| std::fs::remove_file(&path));
        removed.map_err(|source| EfiError::Variable { action: "deleting", path, source })
    }

    /// Every `Boot####` variable: number → encoded load option.
    pub fn boot_entries(&self) -> Result<BTreeMap<u16, Vec<u8>>, EfiError> {
        let listing = std::fs::read_dir(&self.dir).map_err(|source| EfiError::Variable {
            action: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut entries = BTreeMap::new();
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(number) = name
                .strip_suffix(EFI_GLOBAL_VARIABLE)
                .and_then(|n| n.strip_suffix('-'))
                .and_then(|n| n.strip_prefix("Boot"))
                .filter(|hex| hex.len() == 4)
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            else {
                continue;
            };
            if let Some(data) = read_variable(entry.path())? {
                entries.insert(number, data);
            }
        }
        Ok(entries)
    }

    pub fn boot_order(&self) -> Result<Vec<u16>, EfiError> {
        let data = self.read("BootOrder")?.unwrap_or_default();
        Ok(data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }

    /// Writes `option` as a boot entry first in BootOrder: it replaces an entry with the same
    /// description (others with that description are deleted), else takes the lowest free number.
    pub fn install(&self, option: &LoadOption) -> Result<u16, EfiError> {
        let entries = self.boot_entries()?;
        let same: Vec<u16> = entries
            .iter()
            .filter(|(_, data)| load_option_description(data).as_deref() == Some(option.description.as_str()))
            .map(|(number, _)| *number)
            .collect();
        let number = match same.first() {
            Some(number) => *number,
            None => (0..=u16::MAX).find(|n| !entries.contains_key(n)).ok_or(EfiError::NoFreeBootNumber)?,
        };
        self.write(&boot_name(number), &option.encode())?;
        for duplicate in &same[same.len().min(1)..] {
            self.remove(&boot_name(*duplicate))?;
        }
        let mut order = vec![number];
        for existing in self.boot_order()? {
            if !order.contains(&existing) && !same.contains(&existing) {
                order.push(existing);
            }
        }
        let bytes: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
        self.write("BootOrder", &bytes)?;
        Ok(number)
    }
}

fn read_variable(path: PathBuf) -> Result<Option<Vec<u8>>, EfiError> {
    let mut data = Vec::new();
    match File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
        Ok(_) => Ok(Some(data.split_off(data.len().min(4)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EfiError::Variable { action: "reading", path, source }),
    }
}

fn boot_name(number: u16) -> String {
    format!("Boot{number:04X}")
}

/// Clears FS_IMMUTABLE_FL; directories that do not support inode flags (test fixtures) are fine.
fn make_mutable(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let flags = match inode_flags::get(&file) {
        Ok(flags) => flags,
        Err(nix::Error::ENOTTY | nix::Error::EOPNOTSUPP | nix::Error::EINVAL) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if flags & FS_IMMUTABLE_FL != 0 {
        inode_flags::set(&file, flags & !FS_IMMUTABLE_FL)?;
    }
    Ok(())
}

#[allow(unsafe_code)]
mod inode_flags {
    use super::*;

    // FS_IOC_GETFLAGS / FS_IOC_SETFLAGS = _IOR/_IOW('f', 1/2, long) from linux/fs.h.
    nix::ioctl_read!(fs_ioc_getflags, b'f', 1, nix::libc::c_long);
    nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, nix::libc::c_long);

    pub fn get(file: &File) -> nix::Result<nix::libc::c_long> {
        let mut flags: nix::libc::c_long = 0;
        // SAFETY: the kernel writes at most a long into `flags`, which lives across the call.
        unsafe { fs_ioc_getflags(file.as_raw_fd(), &mut flags) }?;
        Ok(flags)
    }

    pub fn set(file: &File, flags: nix::libc::c_long) -> nix::Result<()> {
        // SAFETY: the kernel reads at most a long from `flags`, which lives across the call.
        unsafe { fs_ioc_setflags(file.as_raw_fd(), &flags) }.map(drop)
    }
}

/// The EFI system partition of a disk: where it is, and the device path node naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Esp {
    pub device_path: HardDrive,
    /// Byte offset on the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Its PARTUUID (IPA's `efi system partition uuid`).
    pub uuid: PartUuid,
}

/// The EFI system partition of `disk`: GPT type C12A7328-…, or msdos type 0xef on a primary partition.
pub fn find_esp(disk: &mut dyn Target) -> Result<Esp, EfiError> {
    let label = disklabel::read(disk)?;
    let is_esp = |partition: &Partition| match partition.kind {
        PartitionType::Gpt(kind) => kind == ESP_TYPE,
        PartitionType::Mbr(kind) => kind == MBR_ESP_TYPE && partition.number <= 4,
    };
    let Some(esp) = label.partitions.into_iter().find(is_esp) else {
        let (label, wanted) = match label.kind {
            disklabel::LabelKind::Gpt(_) => ("GPT", ESP_TYPE.to_string().to_uppercase()),
            disklabel::LabelKind::Mbr { .. } => ("msdos", "0xef".to_owned()),
        };
        return Err(EfiError::NoEsp { disk: disk.describe(), label, wanted });
    };
    let uuid = esp.uuid;
    let signature = match esp.uuid {
        PartUuid::Gpt(guid) => PartitionSignature::Gpt(guid),
        PartUuid::Mbr { disk_id, .. } => PartitionSignature::Mbr(disk_id),
    };
    // disklabel computed both as multiples of the sector size.
    let device_path = HardDrive {
        partition_number: esp.number,
        start_lba: esp.start / label.sector_size,
        size_lba: esp.size / label.sector_size,
        signature,
    };
    Ok(Esp { device_path, start: esp.start, size: esp.size, uuid })
}

/// An OS loader in the ESP and the label its boot entry gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    /// `\EFI\<vendor>\<file>`
    pub path: String,
    pub label: String,
}

/// The loader to boot, as shim's fallback would pick it: the first vendor directory (by name) with
/// a BOOTX64.CSV naming an existing loader; else the first with a single `*.efi` (or shimx64.efi,
/// then grubx64.efi, among several); else `\EFI\BOOT\BOOTX64.EFI`. Names match case-insensitively.
pub fn find_loader<T: ReadWriteSeek>(fs: &FileSystem<T>, esp: &str) -> Result<Loader, EfiError> {
    let fat_error = |source| EfiError::Fat { action: "reading", esp: esp.to_owned(), source };
    let no_loader = || EfiError::NoLoader { esp: esp.to_owned() };
    let efi = match fs.root_dir().open_dir("EFI") {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_loader()),
        Err(e) => return Err(fat_error(e)),
    };
    let mut vendors = Vec::new();
    let mut fallback = None;
    for entry in efi.iter() {
        let entry = entry.map_err(fat_error)?;
        let name = entry.file_name();
        if !entry.is_dir() || name == "." || name == ".." {
            continue;
        }
        if name.eq_ignore_ascii_case("BOOT") {
            let boot = entry.to_dir();
            let found = boot
                .iter()
                .filter_map(Result::ok)
                .find(|e| e.is_file() && e.file_name().eq_ignore_ascii_case("BOOTX64.EFI"));
            fallback = found.map(|e| Loader {
                path: format!("\\EFI\\{name}\\{}", e.file_name()),
                label: FALLBACK_LABEL.to_owned(),
            });
        } else {
            let files: Vec<String> =
                entry.to_dir().iter().filter_map(Result::ok).filter(|e| e.is_file()).map(|e| e.file_name()).collect();
            let csv = match files.iter().find(|f| f.eq_ignore_ascii_case("BOOTX64.CSV")) {
                Some(csv) => {
                    let mut bytes = Vec::new();
                    entry.to_dir().open_file(csv).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(fat_error)?;
                    parse_shim_csv(&bytes)
                }
                None => None,
            };
            vendors.push((name, files, csv));
        }
    }
    vendors.sort();
    for (vendor, files, csv) in &vendors {
        let present = |wanted: &str| files.iter().find(|f| f.eq_ignore_ascii_case(wanted)).cloned();
        if let Some((loader, label)) = csv {
            if let Some(file) = present(loader) {
                return Ok(Loader { path: format!("\\EFI\\{vendor}\\{file}"), label: label.clone() });
            }
            tracing::warn!(%vendor, %loader, "BOOTX64.CSV names a loader that is not there");
        }
    }
    for (vendor, files, _) in &vendors {
        let loaders: Vec<&String> = files.iter().filter(|f| f.to_ascii_lowercase().ends_with(".efi")).collect();
        let chosen = match loaders.as_slice() {
            [] => continue,
            [only] => (*only).clone(),
            several => ["shimx64.efi", "grubx64.efi"]
                .iter()
                .find_map(|wanted| several.iter().find(|f| f.eq_ignore_ascii_case(wanted)))
                .map(|f| (*f).clone())
                .ok_or_else(|| EfiError::AmbiguousLoader {
                    esp: esp.to_owned(),
                    vendor: vendor.clone(),
                    found: several.iter().map(|f| (*f).clone()).collect(),
                })?,
        };
        return Ok(Loader { path: format!("\\EFI\\{vendor}\\{chosen}"), label: vendor.clone() });
    }
    fallback.ok_or_else(no_loader)
}

/// The loader file and label from shim's `BOOTX64.CSV` (UCS-2 with a BOM, or UTF-8):
/// lines of `loader,label,options,comment`; the first line with both wins.
pub fn parse_shim_csv(bytes: &[u8]) -> Option<(String, String)> {
    let text = match bytes {
        [0xff, 0xfe, rest @ ..] => String::from_utf16_lossy(
            &rest.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
        ),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    text.lines().find_map(|line| {
        let mut fields = line.split(',').map(|f| f.trim_matches(|c: char| c.is_whitespace() || c == '\0'));
        match (fields.next(), fields.next()) {
            (Some(loader), Some(label)) if !loader.is_empty() && !label.is_empty() => {
                Some((loader.to_owned(), label.to_owned()))
            }
            _ => None,
        }
    })
}

/// The boot entry made for the deployed OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub number: u16,
    pub option: LoadOption,
}

impl fmt::Display for BootEntry {
    /// e.g. `Boot0004 "debian" HD(1,GPT,<guid>)/\EFI\debian\shimx64.efi`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} \"{}\" {}/{}",
            boot_name(self.number),
            self.option.description,
            self.option.partition,
            self.option.loader
        )
    }
}

/// Creates the boot entry for what is installed on `disk`: its ESP, the loader found there, first in
/// BootOrder; `efivars` is the efivarfs directory ([`EFIVARS_DIR`] on a UEFI machine).
pub fn create_boot_entry(disk: &mut dyn Target, efivars: &Path) -> Result<BootEntry, EfiError> {
    let esp = find_esp(disk)?;
    let mut slice = Slice::new(disk, esp.start, esp.size);
    let name = slice.describe();
    let fs = FileSystem::new(TargetIo::new(&mut slice), FsOptions::new()).map_err(|source| EfiError::Fat {
        action: "reading",
        esp: name.clone(),
        source,
    })?;
    let loader = find_loader(&fs, &name)?;
    drop(fs);
    let option = LoadOption { description: loader.label, partition: esp.device_path, loader: loader.path };
    let number = EfiVars::new(efivars).install(&option)?;
    let entry = BootEntry { number, option };
    tracing::info!(%entry, "UEFI boot entry created");
    Ok(entry)
}

/// Partition images: copies `/boot/efi/EFI` of the root filesystem on `root_device` (mounted
/// read-only) into the FAT filesystem at `esp_start`..+`esp_len` of `disk`. Returns the files copied.
pub fn fill_esp_from_root(
    system: &mut dyn System,
    root_device: &Path,
    disk: &mut dyn Target,
    esp_start: u64,
    esp_len: u64,
) -> Result<usize, EfiError> {
    // The copy's own error is kept apart from the mount's, which the unmount must not hide.
    bootloader::with_mounted_root(system, root_device, Access::ReadOnly, |_, root, _| {
        let efi = root.join("boot/efi/EFI");
        Ok(if efi.is_dir() {
            copy_efi_tree(&efi, &mut Slice::new(disk, esp_start, esp_len))
        } else {
            Err(EfiError::NoEfiTree { device: root_device.to_owned() })
        })
    })?
}

/// Copies the directory tree `source` into `/EFI` of the FAT filesystem on `esp`.
pub fn copy_efi_tree(source: &Path, esp: &mut dyn Target) -> Result<usize, EfiError> {
    let describe = esp.describe();
    let fat_error = |action| {
        let esp = describe.clone();
        move |source| EfiError::Fat { action, esp, source }
    };
    let fs = FileSystem::new(TargetIo::new(esp), FsOptions::new()).map_err(fat_error("opening"))?;
    let copied = copy_dir(source, &fs.root_dir().create_dir("EFI").map_err(fat_error("creating /EFI in"))?)?;
    fs.unmount().map_err(fat_error("writing to"))?;
    fix_dot_entries(esp).map_err(fat_error("repairing the directory entries of"))?;
    Ok(copied)
}

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory it
/// creates, which fsck.fat reports as damage and which firmware FAT drivers need not accept.
/// This walks the directory tree and moves `.` and `..` back to the first two slots, marking
/// the two long-name slots deleted. FAT16 and FAT32 only (an ESP is FAT32).
fn fix_dot_entries(volume: &mut dyn Target) -> io::Result<usize> {
    let fat = FatGeometry::read(volume)?;
    let mut fixed = 0;
    // (directory cluster, whether its parent is the root); None: the root directory itself.
    let mut pending = vec![(None, false)];
    let mut visited = std::collections::BTreeSet::new();
    while let Some((dir, parent_is_root)) = pending.pop() {
        let (mut entries, offsets) = fat.read_dir(volume, dir)?;
        if dir.is_some()
            && is_long_name(&entries[0..32])
            && &entries[32..43] == b".          "
            && is_long_name(&entries[64..96])
            && &entries[96..107] == b"..         "
        {
            let (long_dot, dot, long_dotdot, mut dotdot) = (
                entries[0..32].to_vec(),
                entries[32..64].to_vec(),
                entries[64..96].to_vec(),
                entries[96..128].to_vec(),
            );
            if parent_is_root {
                // `..` of a top-level directory points at cluster 0, even on FAT32 (fatfs writes the root cluster).
                dotdot[20..22].fill(0);
                dotdot[26..28].fill(0);
            }
            entries[0..32].copy_from_slice(&dot);
            entries[32..64].copy_from_slice(&dotdot);
            entries[64..96].copy_from_slice(&long_dot);
            entries[96..128].copy_from_slice(&long_dotdot);
            entries[64] = 0xe5;
            entries[96] = 0xe5;
            volume.write_at(offsets[0], &entries[..128])?;
            fixed += 1;
        }
        for entry in entries.chunks_exact(32) {
            match entry[0] {
                0x00 => break,
                0xe5 | b'.' => continue,
                _ => {}
            }
            let attributes = entry[11];
            if attributes & 0x10 != 0 && !is_long_name(entry) && attributes & 0x08 == 0 {
                let cluster = u32::from(u16::from_le_bytes([entry[20], entry[21]])) << 16
                    | u32::from(u16::from_le_bytes([entry[26], entry[27]]));
                if cluster >= 2 && visited.insert(cluster) {
                    pending.push((Some(cluster), dir.is_none()));
                }
            }
        }
    }
    volume.sync()?;
    Ok(fixed)
}

fn is_long_name(entry: &[u8]) -> bool {
    entry[11] == 0x0f && entry[0] != 0xe5
}

/// Where things are on a FAT16/FAT32 volume, from its boot sector.
struct FatGeometry {
    cluster_bytes: u64,
    fat_offset: u64,
    /// FAT16's fixed root directory region (offset, bytes); FAT32 has a root cluster instead.
    root_region: Option<(u64, u64)>,
    root_cluster: u32,
    data_offset: u64,
    fat32: bool,
}

impl FatGeometry {
    fn read(volume: &mut dyn Target) -> io::Result<Self> {
        let mut boot = [0u8; 512];
        volume.read_at(0, &mut boot)?;
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
        let u32_at = |at: usize| u64::from(u32::from_le_bytes([boot[at], boot[at + 1], boot[at + 2], boot[at + 3]]));
        let bytes_per_sector = u16_at(11);
        let sectors_per_cluster = u64::from(boot[13]);
        let reserved = u16_at(14);
        let fats = u64::from(boot[16]);
        let root_entries = u16_at(17);
        let total = if u16_at(19) != 0 { u16_at(19) } else { u32_at(32) };
        let fat_sectors = if u16_at(22) != 0 { u16_at(22) } else { u32_at(36) };
        if bytes_per_sector < 512 || sectors_per_cluster == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a FAT boot sector"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        let clusters = total.saturating_sub(data_sector) / sectors_per_cluster;
        if clusters < 4085 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "FAT12 volumes are not supported"));
        }
        let fat32 = clusters >= 65525;
        Ok(Self {
            cluster_bytes: sectors_per_cluster * bytes_per_sector,
            fat_offset: reserved * bytes_per_sector,
            root_region: (!fat32)
                .then_some(((data_sector - root_sectors) * bytes_per_sector, root_sectors * bytes_per_sector)),
            root_cluster: u32_at(44) as u32,
            data_offset: data_sector * bytes_per_sector,
            fat32,
        })
    }

    /// A directory's bytes and the volume offset of each of its clusters (the root: its region).
    fn read_dir(&self, volume: &mut dyn Target, dir: Option<u32>) -> io::Result<(Vec<u8>, Vec<u64>)> {
        let mut cluster = match (dir, self.root_region) {
            (None, Some((offset, len))) => {
                let mut data = vec![0u8; len as usize];
                volume.read_at(offset, &mut data)?;
                return Ok((data, vec![offset]));
            }
            (None, None) => self.root_cluster,
            (Some(cluster), _) => cluster,
        };
        let (mut data, mut offsets) = (Vec::new(), Vec::new());
        // A directory holds at most 65536 entries; a longer chain is a loop.
        let max_clusters = (65536 * 32 / self.cluster_bytes).max(1);
        while cluster >= 2 && (offsets.len() as u64) < max_clusters {
            let offset = self.data_offset + u64::from(cluster - 2) * self.cluster_bytes;
            let start = data.len();
            data.resize(start + self.cluster_bytes as usize, 0);
            volume.read_at(offset, &mut data[start..])?;
            offsets.push(offset);
            cluster = self.next_cluster(volume, cluster)?;
        }
        if data.len() < 128 {
            data.resize(128, 0);
        }
        Ok((data, offsets))
    }

    fn next_cluster(&self, volume: &mut dyn Target, cluster: u32) -> io::Result<u32> {
        if self.fat32 {
            let mut entry = [0u8; 4];
            volume.read_at(self.fat_offset + u64::from(cluster) * 4, &mut entry)?;
            let next = u32::from_le_bytes(entry) & 0x0fff_ffff;
            Ok(if next >= 0x0fff_fff8 { 0 } else { next })
        } else {
            let mut entry = [0u8; 2];
            volume.read_at(self.fat_offset + u64::from(cluster) * 2, &mut entry)?;
            let next = u32::from(u16::from_le_bytes(entry));
            Ok(if next >= 0xfff8 { 0 } else { next })
        }
    }
}

fn copy_dir<T: ReadWriteSeek>(source: &Path, target: &fatfs::Dir<T>) -> Result<usize, EfiError> {
    let copy_error = |path: &Path| {
        let path = path.to_owned();
        move |source| EfiError::Copy { path, source }
    };
    let mut copied = 0;
    for entry in std::fs::read_dir(source).map_err(copy_error(source))? {
        let entry = entry.map_err(copy_error(source))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(copy_error(&path))?;
        if kind.is_dir() {
            let dir = target.create_dir(&name).map_err(copy_error(&path))?;
            copied += copy_dir(&path, &dir)?;
        } else if kind.is_file() {
            let mut file = target.create_file(&name).map_err(copy_error(&path))?;
            file.truncate().map_err(copy_error(&path))?;
            File::open(&path).and_then(|mut src| io::copy(&mut src, &mut file)).map_err(copy_error(&path))?;
            file.flush().map_err(copy_error(&path))?;
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::HostSystem;
    use crate::partition::{format_fat, MIB, SECTOR};
    use crate::target::FileTarget;
    use crate::test_support::{run, LoopDevice};
    use std::process::Command;

    fn hex_bytes(text: &str) -> Vec<u8> {
        hex::decode(text.split_whitespace().collect::<String>()).unwrap()
    }

    const GUID: Uuid = uuid::uuid!("0d4d5b8e-0b0e-4c5b-8a6f-1f2e3d4c5b6a");

    fn debian_option() -> LoadOption {
        LoadOption {
            description: "debian".into(),
            partition: HardDrive {
                partition_number: 1,
                start_lba: 0x800,
                size_lba: 0x113000,
                signature: PartitionSignature::Gpt(GUID),
            },
            loader: "\\EFI\\debian\\shimx64.efi".into(),
        }
    }

    #[test]
    fn load_option_bytes_match_efibootmgr() {
        // What `efibootmgr -c -d /dev/sda -p 1 -L debian -l '\EFI\debian\shimx64.efi'` stores for a
        // 550 MiB ESP at sector 2048 (UEFI spec 2.10 §3.1.3, §10.3.5.1, §10.3.5.4): attributes,
        // FilePathListLength 0x62, "debian" in UCS-2, HD(1, start, size, GUID mixed-endian, GPT),
        // File(path), End.
        let expected = hex_bytes(
            "01000000 6200
             6400 6500 6200 6900 6100 6e00 0000
             0401 2a00 01000000 0008000000000000 0030110000000000
             8e5b4d0d 0e0b 5b4c 8a6f1f2e3d4c5b6a 02 02
             0404 3400
             5c00 4500 4600 4900 5c00 6400 6500 6200 6900 6100 6e00 5c00
             7300 6800 6900 6d00 7800 3600 3400 2e00 6500 6600 6900 0000
             7fff 0400",
        );
        assert_eq!(debian_option().encode(), expected);
    }

    #[test]
    fn load_option_bytes_match_a_firmware_dump() {
        // Boot000A as the EFI shell's `dmpstore` printed it (linupedia.org, "UEFI Boot Konfiguration");
        // the dump shows the first 0x70 bytes, up to `\EFI\opensuse\bzImag`. Its File node is
        // 0x38 bytes long, so the path has 25 characters: `\EFI\opensuse\bzImage.efi`.
        let dump = hex_bytes(
            "01 00 00 00 66 00 6E 00 65 00 75 00 65 00 72 00
             6B 00 65 00 72 00 6E 00 00 00 04 01 2A 00 01 00
             00 00 00 08 00 00 00 00 00 00 00 E0 04 00 00 00
             00 00 77 C4 90 F8 D1 DE 69 4B BC 85 0C 1F 30 79
             40 F6 02 02 04 04 38 00 5C 00 45 00 46 00 49 00
             5C 00 6F 00 70 00 65 00 6E 00 73 00 75 00 73 00
             65 00 5C 00 62 00 7A 00 49 00 6D 00 61 00 67 00",
        );
        let guid = Uuid::from_bytes_le(dump[0x32..0x42].try_into().unwrap());
        let option = LoadOption {
            description: "neuerkern".into(),
            partition: HardDrive {
                partition_number: 1,
                start_lba: 0x800,
                size_lba: 0x4e000,
                signature: PartitionSignature::Gpt(guid),
            },
            loader: "\\EFI\\opensuse\\bzImage.efi".into(),
        };
        let encoded = option.encode();
        assert_eq!(encoded[..dump.len()], dump[..]);
        assert_eq!(encoded.len(), 4 + 2 + 20 + 0x66, "attributes, length, description, device path");
    }

    #[test]
    fn mbr_disks_are_signed_with_the_disk_identifier() {
        let mut out = Vec::new();
        HardDrive {
            partition_number: 2,
            start_lba: 2048,
            size_lba: 4096,
            signature: PartitionSignature::Mbr(0x1234abcd),
        }
        .encode(&mut out);
        let expected = hex_bytes(
            "0401 2a00 02000000 0008000000000000 0010000000000000
             cdab3412 000000000000000000000000 01 01",
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn description_is_read_back_from_encoded_options() {
        assert_eq!(load_option_description(&debian_option().encode()).as_deref(), Some("debian"));
        let unicode = LoadOption { description: "Système ★".into(), ..debian_option() };
        assert_eq!(load_option_description(&unicode.encode()).as_deref(), Some("Système ★"));
        assert_eq!(load_option_description(&[1, 0, 0, 0, 4]), None);
    }

    fn var_name(name: &str) -> String {
        format!("{name}-{EFI_GLOBAL_VARIABLE}")
    }

    /// Writes a fixture variable as efivarfs shows it: attributes then data.
    fn put(dir: &Path, name: &str, data: &[u8]) {
        let mut content = 7u32.to_le_bytes().to_vec();
        content.extend_from_slice(data);
        std::fs::write(dir.join(var_name(name)), content).unwrap();
    }

    fn entry(description: &str) -> Vec<u8> {
        LoadOption { description: description.into(), ..debian_option() }.encode()
    }

    fn order(numbers: &[u16]) -> Vec<u8> {
        numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
    }

    #[test]
    fn install_reuses_or_allocates_and_puts_the_entry_first() {
        type Fixture = Vec<(&'static str, Vec<u8>)>;
        /// (name, variables, entry number, BootOrder, Boot#### left)
        type Case = (&'static str, Fixture, u16, Vec<u16>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            ("empty NVRAM", vec![], 0, vec![0], vec!["Boot0000"]),
            (
                "lowest free number, existing order kept after it",
                vec![
                    ("Boot0000", entry("UEFI PXEv4")),
                    ("Boot0001", entry("UEFI Shell")),
                    ("Boot0003", entry("other")),
                    ("BootOrder", order(&[1, 0, 3])),
                ],
                2,
                vec![2, 1, 0, 3],
                vec!["Boot0000", "Boot0001", "Boot0002", "Boot0003"],
            ),
            (
                "same description is replaced, duplicates removed",
                vec![
                    ("Boot0000", entry("UEFI PXEv4")),
                    ("Boot0001", entry("debian")),
                    ("Boot000A", entry("debian")),
                    ("BootOrder", order(&[0, 10, 1, 0])),
                ],
                1,
                vec![1, 0],
                vec!["Boot0000", "Boot0001"],
            ),
        ];
        for (name, fixture, number, boot_order, remaining) in cases {
            let dir = tempfile::tempdir().unwrap();
            for (var, data) in &fixture {
                put(dir.path(), var, data);
            }
            let vars = EfiVars::new(dir.path());
            assert_eq!(vars.install(&debian_option()).unwrap(), number, "{name}");
            assert_eq!(vars.boot_order().unwrap(), boot_order, "{name}");
            let raw = std::fs::read(dir.path().join(var_name(&boot_name(number)))).unwrap();
            assert_eq!(raw[..4], [7, 0, 0, 0], "{name}: NV|BS|RT");
            assert_eq!(raw[4..], debian_option().encode(), "{name}");
            let mut names: Vec<String> = vars.boot_entries().unwrap().keys().map(|n| boot_name(*n)).collect();
            names.sort();
            assert_eq!(names, remaining, "{name}");
        }
    }

    #[test]
    fn existing_variables_are_rewritten_in_place_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "Boot0001", &entry("debian"));
        put(dir.path(), "Boot0002", &entry("UEFI Shell"));
        put(dir.path(), "BootOrder", &order(&[2, 1, 2, 1]));
        // Hard links outside the directory see what happens to the files themselves: a variable deleted
        // and created again would leave them with the old content.
        let links = tempfile::tempdir().unwrap();
        for name in ["Boot0001", "BootOrder"] {
            std::fs::hard_link(dir.path().join(var_name(name)), links.path().join(name)).unwrap();
        }
        let vars = EfiVars::new(dir.path());
        let option = LoadOption { loader: "\\EFI\\debian\\grubx64.efi".into(), ..debian_option() };
        assert_eq!(vars.install(&option).unwrap(), 1);
        let mut expected_entry = 7u32.to_le_bytes().to_vec();
        expected_entry.extend(option.encode());
        assert_eq!(std::fs::read(links.path().join("Boot0001")).unwrap(), expected_entry);
        // Attributes and the new, shorter value, with nothing of the old one left behind.
        assert_eq!(std::fs::read(links.path().join("BootOrder")).unwrap(), [7, 0, 0, 0, 1, 0, 2, 0]);
        assert_eq!(vars.install(&LoadOption { description: "new".into(), ..debian_option() }).unwrap(), 0);
        assert_eq!(std::fs::read(links.path().join("BootOrder")).unwrap(), [7, 0, 0, 0, 0, 0, 1, 0, 2, 0]);
    }

    #[test]
    fn immutable_variables_are_made_mutable_before_replacing() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "Boot0001", &entry("debian"));
        put(dir.path(), "BootOrder", &order(&[1]));
        for name in ["Boot0001", "BootOrder"] {
            run("chattr", &["+i", dir.path().join(var_name(name)).to_str().unwrap()]);
        }
        let option = LoadOption { loader: "\\EFI\\debian\\grubx64.efi".into(), ..debian_option() };
        let result = EfiVars::new(dir.path()).install(&option);
        // Leave nothing immutable behind for the temporary directory's cleanup.
        let _ = Command::new("chattr").arg("-R").arg("-i").arg(dir.path()).status();
        assert_eq!(result.unwrap(), 1);
        assert_eq!(EfiVars::new(dir.path()).read("Boot0001").unwrap().unwrap(), option.encode());
    }

    #[test]
    fn shim_csv_is_utf16_with_a_bom() {
        let text = "shimx64.efi,Red Hat Enterprise Linux,,This is the boot entry for Red Hat\n";
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(parse_shim_csv(&utf16), Some(("shimx64.efi".into(), "Red Hat Enterprise Linux".into())));
        assert_eq!(parse_shim_csv(b"\ngrubx64.efi,ubuntu\n"), Some(("grubx64.efi".into(), "ubuntu".into())));
        assert_eq!(parse_shim_csv(b"only-one-field\n"), None);
    }

    /// A FAT file system image of `len` bytes made by fatfs holding `files` (path → content) under /EFI,
    /// checked with fsck.vfat.
    fn esp_image(files: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(40 * MIB).unwrap();
        let mut target = FileTarget::open(file.path()).unwrap();
        format_fat(&mut target, "EFI-PART", None).unwrap();
        let tree = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = tree.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        assert_eq!(copy_efi_tree(tree.path(), &mut target).unwrap(), files.len());
        fsck_clean(file.path());
        file
    }

    /// `fsck.vfat -n` finds nothing to repair (it exits 0 even after listing some problems).
    fn fsck_clean(image: &Path) {
        let output = Command::new("fsck.vfat").arg("-n").arg(image).output().unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && report.lines().count() == 2, "{report}");
    }

    fn loader_in(image: &Path) -> Result<Loader, EfiError> {
        let mut target = FileTarget::open(image).unwrap();
        let fs = FileSystem::new(TargetIo::new(&mut target), FsOptions::new()).unwrap();
        find_loader(&fs, "test ESP")
    }

    fn csv(text: &str) -> Vec<u8> {
        [0xff, 0xfe].into_iter().chain(text.encode_utf16().flat_map(u16::to_le_bytes)).collect()
    }

    #[test]
    fn loaders_are_found_like_shim_fallback() {
        let debian_csv = csv("shimx64.efi,debian,,This is the boot entry for debian\n");
        let redhat_csv = csv("shimx64.efi,Red Hat Enterprise Linux,,\n");
        let stale_csv = csv("shimx64.efi,stale,,\n");
        type Files<'a> = Vec<(&'a str, &'a [u8])>;
        /// Ok: (loader path, label); Err: text the error contains.
        type Outcome<'a> = Result<(&'a str, &'a str), &'a str>;
        let cases: Vec<(&str, Files, Outcome)> = vec![
            (
                "shim CSV gives loader and label",
                vec![
                    ("debian/BOOTX64.CSV", &debian_csv),
                    ("debian/shimx64.efi", b"shim"),
                    ("debian/grubx64.efi", b"grub"),
                    ("debian/mmx64.efi", b"mm"),
                    ("BOOT/BOOTX64.EFI", b"shim"),
                ],
                Ok(("\\EFI\\debian\\shimx64.efi", "debian")),
            ),
            (
                "CSV label differs from the directory",
                vec![("redhat/BOOTX64.CSV", &redhat_csv), ("redhat/shimx64.efi", b"shim")],
                Ok(("\\EFI\\redhat\\shimx64.efi", "Red Hat Enterprise Linux")),
            ),
            (
                "single loader in a vendor directory, labelled by the directory",
                vec![("ferric/grubx64.efi", b"grub"), ("BOOT/BOOTX64.EFI", b"x")],
                Ok(("\\EFI\\ferric\\grubx64.efi", "ferric")),
            ),
            (
                "CSV naming a missing loader is ignored",
                vec![("ferric/BOOTX64.CSV", &stale_csv), ("ferric/linux.efi", b"uki")],
                Ok(("\\EFI\\ferric\\linux.efi", "ferric")),
            ),
            (
                "grub preferred among several without shim",
                vec![("ubuntu/grubx64.efi", b"g"), ("ubuntu/mmx64.efi", b"m")],
                Ok(("\\EFI\\ubuntu\\grubx64.efi", "ubuntu")),
            ),
            (
                "names match case-insensitively",
                vec![("Fedora/SHIMX64.EFI", b"s"), ("Fedora/grubx64.efi", b"g")],
                Ok(("\\EFI\\Fedora\\SHIMX64.EFI", "Fedora")),
            ),
            (
                "removable-media path last",
                vec![("BOOT/BOOTX64.EFI", b"x"), ("empty/README.txt", b"no loader")],
                Ok(("\\EFI\\BOOT\\BOOTX64.EFI", FALLBACK_LABEL)),
            ),
            ("ambiguous", vec![("vendor/a.efi", b"a"), ("vendor/b.efi", b"b")], Err("several loaders")),
            ("nothing", vec![("vendor/notes.txt", b"n")], Err("no OS loader")),
        ];
        for (name, files, expected) in cases {
            let image = esp_image(&files);
            match (loader_in(image.path()), expected) {
                (Ok(loader), Ok((path, label))) => {
                    assert_eq!((loader.path.as_str(), loader.label.as_str()), (path, label), "{name}")
                }
                (Err(err), Err(needle)) => assert!(err.to_string().contains(needle), "{name}: {err}"),
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn esp_without_efi_directory_has_no_loader() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 * MIB).unwrap();
        format_fat(&mut FileTarget::open(file.path()).unwrap(), "EMPTY", None).unwrap();
        let listing = run("mdir", &["-i", file.path().to_str().unwrap(), "::"]);
        assert!(listing.contains("EMPTY"), "{listing}");
        assert!(matches!(loader_in(file.path()), Err(EfiError::NoLoader { .. })));
    }

    /// A GPT disk image made by sgdisk with the ESP as partition 2, filled with mtools.
    #[test]
    fn whole_disk_gpt_image_gets_an_entry_for_its_esp() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(80 * MIB).unwrap();
        let path = file.path().to_str().unwrap();
        run("sgdisk", &["-n", "1:2048:+4M", "-t", "1:8300", "-n", "2:0:+40M", "-t", "2:ef00", path]);
        let info = run("sgdisk", &["-i", "2", path]);
        let guid = info.lines().find_map(|l| l.strip_prefix("Partition unique GUID: ")).unwrap().trim().to_lowercase();
        let first: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("First sector: "))
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let esp_spec = format!("{path}@@{}", first * SECTOR);
        run("mkfs.vfat", &["-F", "32", "--offset", &first.to_string(), path, &(40 * 1024).to_string()]);
        let loader = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(loader.path(), b"MZ loader").unwrap();
        run("mmd", &["-i", &esp_spec, "::/EFI", "::/EFI/debian"]);
        run("mcopy", &["-i", &esp_spec, loader.path().to_str().unwrap(), "::/EFI/debian/grubx64.efi"]);

        let vars = tempfile::tempdir().unwrap();
        put(vars.path(), "Boot0000", &entry("UEFI PXEv4"));
        put(vars.path(), "BootOrder", &order(&[0]));
        let mut disk = FileTarget::open(file.path()).unwrap();
        let boot = create_boot_entry(&mut disk, vars.path()).unwrap();
        assert_eq!(boot.to_string(), format!("Boot0001 \"debian\" HD(2,GPT,{guid})/\\EFI\\debian\\grubx64.efi"));
        assert_eq!(
            boot.option.partition,
            HardDrive {
                partition_number: 2,
                start_lba: first,
                size_lba: 40 * 2048,
                signature: PartitionSignature::Gpt(guid.parse().unwrap())
            }
        );
        assert_eq!(EfiVars::new(vars.path()).boot_order().unwrap(), [1, 0]);
    }

    #[test]
    fn whole_disk_msdos_image_gets_an_entry_signed_with_the_disk_id() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * MIB).unwrap();
        let mut command = Command::new("sfdisk");
        command.arg("-q").arg(file.path()).stdin(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"label: dos\nlabel-id: 0x1234abcd\n,8M,83\n,40M,ef\n").unwrap();
        assert!(child.wait().unwrap().success());
        let path = file.path().to_str().unwrap();
        let start = 9 * 2048;
        run("mkfs.vfat", &["--offset", &start.to_string(), path, &(40 * 1024).to_string()]);
        let spec = format!("{path}@@{}", start * SECTOR);
        run("mmd", &["-i", &spec, "::/EFI", "::/EFI/BOOT"]);
        run("mcopy", &["-i", &spec, "/dev/null", "::/EFI/BOOT/BOOTX64.EFI"]);
        let vars = tempfile::tempdir().unwrap();
        let boot = create_boot_entry(&mut FileTarget::open(file.path()).unwrap(), vars.path()).unwrap();
        assert_eq!(boot.to_string(), "Boot0000 \"ferric\" HD(2,MBR,0x1234abcd)/\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!((boot.option.partition.start_lba, boot.option.partition.size_lba), (start, 40 * 2048));
    }

    #[test]
    fn disks_without_an_esp_or_a_table_are_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(16 * MIB).unwrap();
        let vars = tempfile::tempdir().unwrap();
        let err = create_boot_entry(&mut FileTarget::open(file.path()).unwrap(), vars.path()).unwrap_err();
        assert!(matches!(err, EfiError::DiskLabel(DiskLabelError::NoPartitionTable { .. })), "{err}");
        run("sgdisk", &["-n", "1:2048:+4M", "-t", "1:8300", file.path().to_str().unwrap()]);
        let err = create_boot_entry(&mut FileTarget::open(file.path()).unwrap(), vars.path()).unwrap_err();
        assert!(err.to_string().contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "{err}");
        // A corrupted GPT header is not trusted.
        let mut disk = FileTarget::open(file.path()).unwrap();
        disk.write_at(SECTOR + 40, &[0xff]).unwrap();
        let err = create_boot_entry(&mut disk, vars.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(std::fs::read_dir(vars.path()).unwrap().next().is_none(), "no variable written");
    }

    #[test]
    fn whole_disk_4kn_gpt_image_gets_an_entry_in_4096_byte_sectors() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(80 * MIB).unwrap();
        let path = file.path().to_str().unwrap();
        let device = LoopDevice::attach(file.path(), &["-b", "4096"]);
        let partitioned = Command::new("sgdisk")
            .args(["-n", "1:256:+4M", "-t", "1:8300", "-n", "2:0:+40M", "-t", "2:ef00", &device.0])
            .output();
        drop(device);
        assert!(partitioned.unwrap().status.success());
        // The ESP starts at 4096-byte sector 1280 (5 MiB).
        let esp_spec = format!("{path}@@{}", 5 * MIB);
        run("mkfs.vfat", &["-F", "32", "--offset", &(5 * MIB / SECTOR).to_string(), path, &(40 * 1024).to_string()]);
        run("mmd", &["-i", &esp_spec, "::/EFI", "::/EFI/debian"]);
        run("mcopy", &["-i", &esp_spec, "/dev/null", "::/EFI/debian/grubx64.efi"]);
        let vars = tempfile::tempdir().unwrap();
        let boot = create_boot_entry(&mut FileTarget::open(file.path()).unwrap(), vars.path()).unwrap();
        let hd = boot.option.partition;
        assert_eq!((hd.partition_number, hd.start_lba, hd.size_lba), (2, 1280, 40 * MIB / 4096));
        assert!(boot.to_string().ends_with("/\\EFI\\debian\\grubx64.efi"), "{boot}");
    }

    #[test]
    fn hostile_partition_tables_are_errors_not_panics() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(16 * MIB).unwrap();
        run("sgdisk", &["-n", "1:2048:+4M", "-t", "1:ef00", file.path().to_str().unwrap()]);
        let mut disk = FileTarget::open(file.path()).unwrap();
        // The ESP's entry claims LBAs up to u64::MAX, its CRCs made to match.
        let mut entries = vec![0u8; 128 * 128];
        disk.read_at(2 * SECTOR, &mut entries).unwrap();
        entries[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut header = vec![0u8; 92];
        disk.read_at(SECTOR, &mut header).unwrap();
        header[88..92].copy_from_slice(&disklabel::crc32(&entries).to_le_bytes());
        let header_crc = disklabel::gpt_header_crc(&header);
        header[16..20].copy_from_slice(&header_crc.to_le_bytes());
        disk.write_at(2 * SECTOR, &entries).unwrap();
        disk.write_at(SECTOR, &header).unwrap();
        let vars = tempfile::tempdir().unwrap();
        let err = create_boot_entry(&mut disk, vars.path()).unwrap_err();
        assert!(matches!(err, EfiError::DiskLabel(DiskLabelError::InvalidGpt { .. })), "{err}");
        assert!(err.to_string().contains("partition 1 spans LBAs 2048..=18446744073709551615"), "{err}");
        assert!(std::fs::read_dir(vars.path()).unwrap().next().is_none(), "no variable written");
    }

    #[test]
    fn fat_errors_say_what_was_being_done() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 * MIB).unwrap();
        let tree = tempfile::tempdir().unwrap();
        let err = copy_efi_tree(tree.path(), &mut FileTarget::open(file.path()).unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("opening the EFI system partition"), "{err}");
        // A disk whose ESP holds no FAT file system.
        run("sgdisk", &["-n", "1:2048:+4M", "-t", "1:ef00", file.path().to_str().unwrap()]);
        let vars = tempfile::tempdir().unwrap();
        let err = create_boot_entry(&mut FileTarget::open(file.path()).unwrap(), vars.path()).unwrap_err();
        assert!(err.to_string().starts_with("reading the EFI system partition"), "{err}");
    }

    #[test]
    fn partition_image_esp_is_filled_from_the_root_filesystem_and_booted_through_its_entry() {
        use crate::checksum::{Algorithm, Expected};
        use crate::partition::{deploy_partition_image, BootMode, Label, Layout, PartitionRequest, Role};
        use crate::progress::ProgressTracker;
        use sha2::{Digest, Sha256};

        // The root filesystem image, as a partition image would carry it.
        let tree = tempfile::tempdir().unwrap();
        let efi = tree.path().join("boot/efi/EFI/debian");
        std::fs::create_dir_all(&efi).unwrap();
        std::fs::write(efi.join("shimx64.efi"), vec![0x4d; 300_000]).unwrap();
        std::fs::write(efi.join("grubx64.efi"), b"grub").unwrap();
        std::fs::write(efi.join("BOOTX64.CSV"), csv("shimx64.efi,debian,,This is the boot entry for debian\n"))
            .unwrap();
        let rootfs = tempfile::NamedTempFile::new().unwrap();
        rootfs.as_file().set_len(16 * MIB).unwrap();
        let mut command = Command::new("mkfs.ext4");
        command.args(["-q", "-F", "-d"]).arg(tree.path()).arg(rootfs.path());
        ferric_runner::run("test: root filesystem", &mut command).unwrap();
        let image = std::fs::read(rootfs.path()).unwrap();

        let disk_file = tempfile::NamedTempFile::new().unwrap();
        disk_file.as_file().set_len(600 * MIB).unwrap();
        let mut disk = FileTarget::open(disk_file.path()).unwrap();
        let request = PartitionRequest {
            boot_mode: BootMode::Uefi,
            label: Label::Gpt,
            root_mb: Some(20),
            swap_mb: 0,
            ephemeral_mb: 0,
            ephemeral_format: "ext4".into(),
            configdrive_bytes: None,
        };
        let layout = Layout::plan(&request, disk.size()).unwrap();
        let expected = Expected { algorithm: Algorithm::Sha256, hex: hex::encode(Sha256::digest(&image)) };
        let progress = std::sync::Arc::new(ProgressTracker::default());
        let report =
            deploy_partition_image(&image[..], &expected, disk_file.path(), &mut disk, &layout, None, &progress)
                .unwrap();

        // The kernel of the test machine may not read partition tables: the root partition is
        // reached through a loop device over its byte range.
        let root = report.partition(Role::Root).unwrap();
        let esp = report.partition(Role::Esp).unwrap();
        let dev = LoopDevice::over(disk_file.path(), root.start, root.size, true);
        let copied = fill_esp_from_root(&mut HostSystem::new(), dev.path(), &mut disk, esp.start, esp.size).unwrap();
        assert_eq!(copied, 3);
        let esp_spec = format!("{}@@{}", disk_file.path().display(), esp.start);
        let listing = run("mdir", &["-i", &esp_spec, "::/EFI/debian"]);
        assert!(listing.contains("shimx64.efi") && listing.contains("BOOTX64.CSV"), "{listing}");
        let shim = run("mtype", &["-i", &esp_spec, "::/EFI/debian/shimx64.efi"]);
        assert_eq!(shim.len(), 300_000);
        let esp_dev = LoopDevice::over(disk_file.path(), esp.start, esp.size, true);
        assert_eq!(run("blkid", &["-p", "-s", "VERSION", "-o", "value", &esp_dev.0]).trim(), "FAT32");
        fsck_clean(esp_dev.path());

        let vars = tempfile::tempdir().unwrap();
        let boot = create_boot_entry(&mut disk, vars.path()).unwrap();
        assert_eq!(boot.to_string(), format!("Boot0000 \"debian\" HD(1,GPT,{})/\\EFI\\debian\\shimx64.efi", esp.uuid));
        assert_eq!(
            (boot.option.partition.start_lba * SECTOR, boot.option.partition.size_lba * SECTOR),
            (esp.start, esp.size)
        );
    }

    #[test]
    fn root_without_an_efi_tree_is_a_clear_error() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("etc")).unwrap();
        let rootfs = tempfile::NamedTempFile::new().unwrap();
        rootfs.as_file().set_len(8 * MIB).unwrap();
        let mut command = Command::new("mkfs.ext4");
        command.args(["-q", "-F", "-d"]).arg(tree.path()).arg(rootfs.path());
        ferric_runner::run("test: root filesystem", &mut command).unwrap();
        let dev = LoopDevice::attach(rootfs.path(), &["-r"]);
        let esp = tempfile::NamedTempFile::new().unwrap();
        esp.as_file().set_len(8 * MIB).unwrap();
        let mut target = FileTarget::open(esp.path()).unwrap();
        let err = fill_esp_from_root(&mut HostSystem::new(), dev.path(), &mut target, 0, 8 * MIB).unwrap_err();
        assert!(err.to_string().contains("/boot/efi/EFI"), "{err}");
    }
}
