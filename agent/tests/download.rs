//! The write_image task against a real HTTP server on 127.0.0.1.

use std::io::Write;
use std::sync::Arc;

use axum::routing::get;
use ferric_agent::deploy::{write_image_task, DeployConfig, Disk};
use ferric_agent::download::DownloadConfig;
use ferric_agent::partition::BootMode;
use ferric_agent::progress::ProgressTracker;
use ferric_protocol::ImageInfo;
use sha2::{Digest, Sha512};

const DISK_BYTES: u64 = 32 << 20;

fn image() -> Vec<u8> {
    let mut data: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    data[510] = 0x55;
    data[511] = 0xaa;
    data
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Serves `/raw` and `/gz` until the test ends; returns the base URL.
async fn serve(raw: Vec<u8>, gz: Vec<u8>) -> String {
    let app =
        axum::Router::new().route("/raw", get(move || async move { raw })).route("/gz", get(move || async move { gz }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn disk() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(DISK_BYTES).unwrap();
    file
}

/// Writes to `path`, touching nothing of the machine running the test.
fn fixed(path: &std::path::Path) -> DeployConfig {
    DeployConfig {
        disk: Disk::Fixed(path.into()),
        download: DownloadConfig::default(),
        booted: BootMode::Bios,
        configure_boot: false,
    }
}

fn info(url: String, checksum: String) -> ImageInfo {
    ImageInfo { id: "img".into(), urls: vec![url], checksum: Some(checksum), ..Default::default() }
}

#[tokio::test]
async fn streams_raw_and_gzip_images_from_http() {
    let data = image();
    let compressed = gzip(&data);
    let base = serve(data.clone(), compressed.clone()).await;
    let http = reqwest::Client::new();
    for (path, served) in [("raw", &data), ("gz", &compressed)] {
        let file = disk();
        let progress = Arc::new(ProgressTracker::default());
        let checksum = hex::encode(Sha512::digest(served));
        let result =
            write_image_task(&http, &info(format!("{base}/{path}"), checksum), &fixed(file.path()), progress.clone())
                .await
                .unwrap();
        assert_eq!(result["image_bytes"], data.len() as u64, "{path}");
        assert_eq!(result["source_bytes"], served.len() as u64, "{path}");
        assert_eq!(progress.snapshot().bytes_total, Some(served.len() as u64), "{path}");
        assert_eq!(&std::fs::read(file.path()).unwrap()[..data.len()], &data[..], "{path}");
    }
}

#[tokio::test]
async fn http_errors_and_mismatches_name_the_url_and_write_nothing_bootable() {
    let data = image();
    let base = serve(data.clone(), gzip(&data)).await;
    let http = reqwest::Client::new();

    let file = disk();
    let missing = format!("{base}/missing");
    let err = write_image_task(
        &http,
        &info(missing.clone(), "0".repeat(64)),
        &fixed(file.path()),
        Arc::new(ProgressTracker::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), format!("downloading {missing} failed: HTTP 404 (0 bytes received, 1 attempt(s))"));

    let err = write_image_task(
        &http,
        &info(format!("{base}/raw"), "0".repeat(64)),
        &fixed(file.path()),
        Arc::new(ProgressTracker::default()),
    )
    .await
    .unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("checksum mismatch") && text.contains("/raw"), "{text}");
    let written = std::fs::read(file.path()).unwrap();
    assert!(written[..1 << 20].iter().all(|b| *b == 0), "no partition table may be left behind");
}
