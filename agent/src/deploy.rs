//! The `write_image` task: choose the disk, stream the image onto it (a whole disk, or a root
//! partition in a fresh layout), add the config drive, make the deployed OS bootable, report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use ferric_protocol::{ImageInfo, WriteImageResult};

use crate::bootloader::{self, BootloaderError, HostSystem};
use crate::checksum::{self, ChecksumError, Expected};
use crate::configdrive::{self, ConfigDriveError};
use crate::disklabel::{self, DiskLabelError, LabelKind};
use crate::download::{self, DownloadConfig, DownloadError};
use crate::efi::{self, EfiError};
use crate::image::{write_image, WriteError, WriteReport};
use crate::partition::{self, BootMode, Layout, PartitionError, PartitionRequest, Role};
use crate::progress::ProgressTracker;
use crate::root_disk::{self, DiskWait, RootDiskError};
use crate::target::{FileTarget, Target};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error("the config drive is unusable")]
    ConfigDrive(#[source] ConfigDriveError),
    #[error(transparent)]
    RootDisk(#[from] RootDiskError),
    #[error("cannot open {path} for writing")]
    OpenTarget {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("writing {url} to {disk} failed")]
    Write {
        url: String,
        disk: PathBuf,
        #[source]
        source: WriteError,
    },
    #[error("deploying the partition image {url} on {disk} failed")]
    Partition {
        url: String,
        disk: PathBuf,
        #[source]
        source: Box<PartitionError>,
    },
    #[error("writing the config drive to {disk} failed")]
    WriteConfigDrive {
        disk: PathBuf,
        #[source]
        source: ConfigDriveError,
    },
    #[error("creating the UEFI boot entry for {disk} failed")]
    BootEntry {
        disk: PathBuf,
        #[source]
        source: EfiError,
    },
    #[error("installing GRUB on {disk} failed")]
    Bootloader {
        disk: PathBuf,
        #[source]
        source: BootloaderError,
    },
    #[error("deploy_boot_mode {0:?} is neither uefi nor bios")]
    BootMode(String),
    #[error("the image writer stopped unexpectedly")]
    Worker(#[from] tokio::task::JoinError),
}

/// Where the image goes: a fixed path (tests, debugging) or the disk chosen from the inventory.
#[derive(Debug, Clone)]
pub enum Disk {
    Fixed(PathBuf),
    Choose { root: PathBuf },
}

/// How the agent deploys, besides what each task's `image_info` says.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub disk: Disk,
    pub download: DownloadConfig,
    /// The mode the ramdisk booted in: the default for `deploy_boot_mode`.
    pub booted: BootMode,
    /// Whether to make the deployed OS bootable through the running system: mount its root,
    /// write UEFI variables, run grub-install. Only inside the ramdisk, never on a workstation.
    pub configure_boot: bool,
}

/// Runs `write_image`; the JSON result is a [`WriteImageResult`].
pub async fn write_image_task(
    http: &reqwest::Client,
    info: &ImageInfo,
    config: &DeployConfig,
    progress: Arc<ProgressTracker>,
) -> Result<Value, DeployError> {
    progress.set_stage("resolving checksum");
    let expected = checksum::resolve(info, http).await?;
    let configdrive = match info.configdrive.as_ref().filter(|drive| !drive.is_null()) {
        Some(drive) => {
            progress.set_stage("building config drive");
            Some(configdrive::resolve(drive, http).await.map_err(DeployError::ConfigDrive)?)
        }
        None => None,
    };
    let boot_mode = boot_mode(info, config.booted)?;
    let disk_path = match &config.disk {
        Disk::Fixed(path) => path.clone(),
        Disk::Choose { root } => {
            // Waits for late disks with blocking sleeps: off the async workers.
            let (root, hints, skip) = (root.clone(), info.root_device.clone(), info.skip_block_devices.clone());
            let chosen = tokio::task::spawn_blocking(move || {
                root_disk::wait_and_choose(&root, hints.as_ref(), &skip, &DiskWait::default())
            })
            .await??;
            PathBuf::from(chosen.name)
        }
    };
    let mut target =
        FileTarget::open(&disk_path).map_err(|source| DeployError::OpenTarget { path: disk_path.clone(), source })?;
    let partition_image = info.image_type.as_deref() == Some("partition");
    // Plan before downloading, so a request that cannot fit fails without touching the disk.
    let layout = if partition_image {
        let configdrive_bytes = configdrive.as_ref().map(|iso| iso.len() as u64);
        let request = partition::require_512_byte_sectors(&disk_path)
            .and_then(|()| PartitionRequest::from_image_info(info, boot_mode, configdrive_bytes))
            .and_then(|request| Layout::plan(&request, target.size()));
        Some(request.map_err(|source| partition_error(info, &disk_path, source))?)
    } else {
        None
    };

    progress.set_stage("connecting");
    let download = download::open(http, &info.urls, &config.download).await?;
    let url = download.url().to_owned();
    tracing::info!(disk = %disk_path.display(), %url, partition_image, ?boot_mode, "writing image");
    progress.set_total(download.content_length());
    let source = download.into_reader(tokio::runtime::Handle::current());

    let job = Job { url, disk: disk_path, boot_mode, configure_boot: config.configure_boot, progress };
    let bios_grub = info.enable_bios_bootloader_install;
    let result = tokio::task::spawn_blocking(move || match layout {
        Some(layout) => job.partition_image(source, &expected, &mut target, &layout, configdrive.as_deref(), bios_grub),
        None => job.whole_disk(source, &expected, &mut target, configdrive.as_deref()),
    })
    .await??;
    tracing::info!(
        disk = %result.root_device, format = %result.format, bytes = result.image_bytes,
        seconds = result.seconds, mib_per_second = result.mib_per_second, "image written"
    );
    Ok(serde_json::to_value(&result).unwrap_or(Value::Null))
}

/// `deploy_boot_mode`, parsed once for every step: absent or empty means the mode the ramdisk booted in.
fn boot_mode(info: &ImageInfo, booted: BootMode) -> Result<BootMode, DeployError> {
    match info.deploy_boot_mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok(booted),
        Some("uefi") => Ok(BootMode::Uefi),
        Some("bios") => Ok(BootMode::Bios),
        Some(other) => Err(DeployError::BootMode(other.to_owned())),
    }
}

fn partition_error(info: &ImageInfo, disk: &Path, source: PartitionError) -> DeployError {
    let url = info.urls.first().cloned().unwrap_or_default();
    DeployError::Partition { url, disk: disk.to_owned(), source: Box::new(source) }
}

/// The blocking half of one deploy.
struct Job {
    url: String,
    disk: PathBuf,
    boot_mode: BootMode,
    configure_boot: bool,
    progress: Arc<ProgressTracker>,
}

impl Job {
    fn whole_disk(
        &self,
        source: impl std::io::Read,
        expected: &Expected,
        target: &mut FileTarget,
        configdrive: Option<&[u8]>,
    ) -> Result<WriteImageResult, DeployError> {
        let report = write_image(source, expected, target, &self.progress).map_err(|source| DeployError::Write {
            url: self.url.clone(),
            disk: self.disk.clone(),
            source,
        })?;
        let mut uuids = BTreeMap::new();
        if let Some(identifier) = disk_identifier(target) {
            uuids.insert("root uuid".to_owned(), identifier);
        }
        if let Ok(esp) = efi::find_esp(target) {
            uuids.insert("efi system partition uuid".to_owned(), esp.uuid.to_string());
        }
        if let Some(iso) = configdrive {
            self.progress.set_stage("writing config drive");
            let partition = configdrive::write_to_whole_disk(target, iso)
                .map_err(|source| DeployError::WriteConfigDrive { disk: self.disk.clone(), source })?;
            tracing::info!(number = partition.number, uuid = %partition.uuid, "config drive written");
            uuids.insert(ferric_protocol::CONFIG_DRIVE_UUID_KEY.to_owned(), partition.uuid);
        }
        self.reread_partitions();
        // An image without an ESP or a loader we recognise (a BIOS image, say) boots as the firmware
        // finds it, as with IPA; failing to write the variables for a loader we found fails the deploy.
        let boot_entry = match self.uefi_boot_entry(target) {
            Ok(entry) => entry,
            Err(DeployError::BootEntry {
                source:
                    source @ (EfiError::DiskLabel(
                        DiskLabelError::NoPartitionTable { .. }
                        | DiskLabelError::InvalidGpt { .. }
                        | DiskLabelError::InvalidMbr { .. }
                        | DiskLabelError::Overflow { .. },
                    )
                    | EfiError::NoEsp { .. }
                    | EfiError::NoLoader { .. }),
                ..
            }) => {
                tracing::warn!("no UEFI boot entry created: {source}");
                None
            }
            Err(error) => return Err(error),
        };
        Ok(self.result(report, uuids, boot_entry))
    }

    fn partition_image(
        &self,
        source: impl std::io::Read,
        expected: &Expected,
        target: &mut FileTarget,
        layout: &Layout,
        configdrive: Option<&[u8]>,
        bios_grub: bool,
    ) -> Result<WriteImageResult, DeployError> {
        let fail = |source| DeployError::Partition {
            url: self.url.clone(),
            disk: self.disk.clone(),
            source: Box::new(source),
        };
        let report = partition::deploy_partition_image(
            source,
            expected,
            &self.disk,
            target,
            layout,
            configdrive,
            &self.progress,
        )
        .map_err(fail)?;
        let root = report.partition(Role::Root).map(|root| partition::partition_device(&self.disk, root.number));
        let mut boot_entry = None;
        match (self.boot_mode, root) {
            (_, _) if !self.configure_boot => tracing::warn!("not in the ramdisk: the bootloader is left alone"),
            (BootMode::Uefi, Some(root)) => {
                if let Some(esp) = report.partition(Role::Esp) {
                    self.progress.set_stage("copying EFI files into the ESP");
                    let copied = efi::fill_esp_from_root(&mut HostSystem::new(), &root, target, esp.start, esp.size)
                        .map_err(|source| DeployError::BootEntry { disk: self.disk.clone(), source })?;
                    tracing::info!(files = copied, "EFI system partition filled from the root filesystem");
                }
                boot_entry = self.uefi_boot_entry(target)?;
            }
            (BootMode::Bios, Some(root)) if bios_grub => {
                self.progress.set_stage("installing GRUB");
                let grub = bootloader::install_bios_grub(&mut HostSystem::new(), &self.disk, &root)
                    .map_err(|source| DeployError::Bootloader { disk: self.disk.clone(), source })?;
                tracing::info!(?grub, "GRUB installed");
            }
            _ => {}
        }
        Ok(self.result(report.image, report.partition_uuids, boot_entry))
    }

    /// Under UEFI in the ramdisk: the boot entry for the loader on the disk's ESP, first in BootOrder.
    fn uefi_boot_entry(&self, target: &mut FileTarget) -> Result<Option<String>, DeployError> {
        if self.boot_mode != BootMode::Uefi || !self.configure_boot {
            return Ok(None);
        }
        self.progress.set_stage("creating UEFI boot entry");
        let entry = efi::create_boot_entry(target, Path::new(efi::EFIVARS_DIR))
            .map_err(|source| DeployError::BootEntry { disk: self.disk.clone(), source })?;
        tracing::info!(%entry, "UEFI boot entry created, first in BootOrder");
        Ok(Some(entry.to_string()))
    }

    /// Lets the kernel see the new partitions (the deployed OS does not need it; tools in the ramdisk do).
    fn reread_partitions(&self) {
        if let Err(error) = partition::reread_partition_table(&self.disk) {
            tracing::warn!("{:#}", anyhow::Error::from(error));
        }
    }

    fn result(
        &self,
        report: WriteReport,
        partition_uuids: BTreeMap<String, String>,
        boot_entry: Option<String>,
    ) -> WriteImageResult {
        let seconds = report.elapsed.as_secs_f64();
        WriteImageResult {
            root_device: self.disk.display().to_string(),
            format: report.format,
            image_bytes: report.image_bytes,
            source_bytes: report.source_bytes,
            seconds,
            mib_per_second: report.image_bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
            partition_uuids,
            boot_entry,
        }
    }
}

/// IPA's `root uuid` of a whole-disk image: the MBR disk signature as `0x%08x` (zero on pure GPT
/// disks, whose protective MBR has none, so then the GPT disk GUID); None without a valid table.
fn disk_identifier(target: &mut dyn Target) -> Option<String> {
    let label = match disklabel::read(target) {
        Ok(label) => label,
        Err(error) => {
            tracing::warn!("the image has no disk identifier: {error}");
            return None;
        }
    };
    match (label.mbr_disk_id(), &label.kind) {
        (0, LabelKind::Gpt(gpt)) => Some(gpt.disk_guid.to_string()),
        (0, LabelKind::Mbr { .. }) => None,
        (signature, _) => Some(format!("0x{signature:08x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FileTarget;
    use std::process::Command;

    fn sh(script: &str) -> String {
        ferric_runner::run(script, Command::new("sh").arg("-c").arg(script)).unwrap().stdout
    }

    #[test]
    fn deploy_boot_mode_is_parsed_once_here() {
        let cases = [
            ("absent", None, BootMode::Bios, Some(BootMode::Bios)),
            ("empty means the booted mode", Some(""), BootMode::Uefi, Some(BootMode::Uefi)),
            ("uefi", Some("UEFI"), BootMode::Bios, Some(BootMode::Uefi)),
            ("bios", Some("bios"), BootMode::Uefi, Some(BootMode::Bios)),
            ("anything else", Some("legacy"), BootMode::Uefi, None),
        ];
        for (name, value, booted, expected) in cases {
            let info = ImageInfo { deploy_boot_mode: value.map(str::to_owned), ..Default::default() };
            match (boot_mode(&info, booted), expected) {
                (Ok(mode), Some(expected)) => assert_eq!(mode, expected, "{name}"),
                (Err(error), None) => assert!(error.to_string().contains("\"legacy\""), "{name}: {error}"),
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn disk_identifier_is_the_mbr_signature_or_the_gpt_disk_guid() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 << 20).unwrap();
        let path = file.path().display();
        let identifier = || disk_identifier(&mut FileTarget::open(file.path()).unwrap());
        assert_eq!(identifier(), None, "no partition table");
        sh(&format!("printf 'label-id: 0x1234abcd\\nstart=2048,type=83\\n' | sfdisk -q {path}"));
        assert_eq!(identifier().as_deref(), Some("0x1234abcd"));
        sh(&format!(
            "sgdisk -Z {path} >/dev/null; sgdisk -U 0C7E1A1E-5A2B-4C3D-8E9F-0123456789AB -n 1:2048:0 {path} >/dev/null"
        ));
        assert_eq!(identifier().as_deref(), Some("0c7e1a1e-5a2b-4c3d-8e9f-0123456789ab"));
    }

    #[tokio::test]
    async fn partition_images_on_4kn_disks_are_refused_before_downloading() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        let device = sh(&format!("losetup -f --show -b 4096 {}", file.path().display())).trim().to_owned();
        // Nothing may connect here: the refusal comes before the download.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let info = ImageInfo {
            id: "img".into(),
            urls: vec![format!("http://{}/root.img", listener.local_addr().unwrap())],
            checksum: Some("0".repeat(64)),
            image_type: Some("partition".into()),
            root_mb: Some(8),
            ..Default::default()
        };
        let config = DeployConfig {
            disk: Disk::Fixed(device.clone().into()),
            download: DownloadConfig::default(),
            booted: BootMode::Uefi,
            configure_boot: false,
        };
        let result =
            write_image_task(&reqwest::Client::new(), &info, &config, Arc::new(ProgressTracker::default())).await;
        sh(&format!("losetup -d {device}"));
        let error = result.unwrap_err();
        let DeployError::Partition { source, .. } = &error else { panic!("{error}") };
        assert_eq!(source.to_string(), format!("partition images need 512-byte sectors; {device} has 4096"));
        assert!(listener.accept().is_err_and(|error| error.kind() == std::io::ErrorKind::WouldBlock));
        assert!(std::fs::read(file.path()).unwrap().iter().all(|byte| *byte == 0), "nothing written");
    }
}
