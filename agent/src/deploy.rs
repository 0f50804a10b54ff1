//! The `write_image` task: choose the disk, stream the image onto it, report what happened.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::TryStreamExt;
use serde_json::{json, Value};
use tokio_util::io::{StreamReader, SyncIoBridge};

use ferric_protocol::ImageInfo;

use crate::checksum::{ChecksumError, Expected};
use crate::image::{write_image, WriteError};
use crate::inventory;
use crate::progress::ProgressTracker;
use crate::root_disk::{self, RootDiskError};
use crate::target::FileTarget;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error("image_info has no URL")]
    NoUrl,
    #[error(transparent)]
    RootDisk(#[from] RootDiskError),
    #[error("cannot open {path} for writing")]
    OpenTarget {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("downloading {url} failed")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url} failed: HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("writing {url} to {disk} failed")]
    Write {
        url: String,
        disk: PathBuf,
        #[source]
        source: WriteError,
    },
    #[error("the image writer stopped unexpectedly")]
    Worker(#[from] tokio::task::JoinError),
}

/// Where the image goes: a fixed path (tests, debugging) or the disk chosen from the inventory.
#[derive(Debug, Clone)]
pub enum Disk {
    Fixed(PathBuf),
    Choose { root: PathBuf },
}

/// Runs `write_image`; the JSON result names the disk and the measured throughput.
pub async fn write_image_task(
    http: &reqwest::Client,
    info: &ImageInfo,
    disk: &Disk,
    progress: Arc<ProgressTracker>,
) -> Result<Value, DeployError> {
    let expected = Expected::from_image_info(info)?;
    let url = info.urls.first().ok_or(DeployError::NoUrl)?.clone();
    let disk_path = match disk {
        Disk::Fixed(path) => path.clone(),
        Disk::Choose { root } => {
            let disks = inventory::scan(root, None).disks;
            PathBuf::from(&root_disk::choose(&disks, info.root_device.as_ref())?.name)
        }
    };
    tracing::info!(disk = %disk_path.display(), %url, "writing image");
    let mut target =
        FileTarget::open(&disk_path).map_err(|source| DeployError::OpenTarget { path: disk_path.clone(), source })?;

    progress.set_stage("connecting");
    let response = http.get(&url).send().await.map_err(|source| DeployError::Connect { url: url.clone(), source })?;
    if !response.status().is_success() {
        return Err(DeployError::HttpStatus { url, status: response.status().as_u16() });
    }
    progress.set_total(response.content_length());
    let body = StreamReader::new(response.bytes_stream().map_err(std::io::Error::other));
    let source = SyncIoBridge::new(body);

    let worker_progress = progress.clone();
    let report = tokio::task::spawn_blocking(move || write_image(source, &expected, &mut target, &worker_progress))
        .await?
        .map_err(|source| DeployError::Write { url: url.clone(), disk: disk_path.clone(), source })?;
    let seconds = report.elapsed.as_secs_f64();
    let mib_per_second = report.image_bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9);
    tracing::info!(disk = %disk_path.display(), bytes = report.image_bytes, seconds, mib_per_second, "image written");
    Ok(json!({
        "root_device": disk_path,
        "image_bytes": report.image_bytes,
        "source_bytes": report.source_bytes,
        "seconds": seconds,
        "mib_per_second": mib_per_second,
    }))
}
