//! The root-disk choice on fixture sysfs trees: `ferric-agent debug root-disk` (the built binary) and
//! the `write_image` task's failure when the hints cannot be used.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferric_agent::deploy::{write_image_task, DeployConfig, Disk as Target};
use ferric_agent::download::DownloadConfig;
use ferric_agent::partition::BootMode;
use ferric_agent::progress::ProgressTracker;
use ferric_protocol::inventory::Disk;
use ferric_protocol::ImageInfo;

/// `sys/block/<name>`: size in 512-byte sectors, serial, and a model when given.
fn put_disk(root: &Path, name: &str, gib: u64, serial: &str, model: Option<&str>) {
    let dir = root.join("sys/block").join(name);
    std::fs::create_dir_all(dir.join("device")).unwrap();
    std::fs::write(dir.join("size"), format!("{}\n", (gib << 30) / 512)).unwrap();
    std::fs::write(dir.join("serial"), format!("{serial}\n")).unwrap();
    if let Some(model) = model {
        std::fs::write(dir.join("device/model"), format!("{model}\n")).unwrap();
    }
}

/// A small USB stick, a SCSI disk, a virtio disk and an NVMe drive.
fn fixture() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    put_disk(root.path(), "sda", 1, "USB-STICK", Some("Cruzer Blade"));
    put_disk(root.path(), "sdb", 10, "SCSI-1", Some("QEMU HARDDISK"));
    put_disk(root.path(), "vda", 20, "VIRTIO-ROOT", None);
    put_disk(root.path(), "nvme0n1", 50, "NVME-9", Some("QEMU NVMe Ctrl"));
    root
}

fn debug_root_disk(root: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferric-agent"))
        .args(["debug", "root-disk", "--root", root.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn debug_root_disk_prints_the_chosen_disk() {
    let root = fixture();
    let cases: [(&str, &[&str], &str); 8] = [
        ("no hints: smallest of at least 4 GiB", &[], "/dev/sdb"),
        ("empty hints", &["--hints", "{}"], "/dev/sdb"),
        ("serial, any case", &["--hints", r#"{"serial": "nvme-9"}"#], "/dev/nvme0n1"),
        ("size range", &["--hints", r#"{"size": "<range-in> [15 25]"}"#], "/dev/vda"),
        ("model with a space", &["--hints", r#"{"model": "qemu harddisk"}"#], "/dev/sdb"),
        ("first match in kernel order, below 4 GiB", &["--hints", r#"{"size": "<= 20"}"#], "/dev/sda"),
        (
            "skip list drops the first match",
            &["--hints", r#"{"size": "<= 20"}"#, "--skip", r#"[{"size": "< 4"}]"#],
            "/dev/sdb",
        ),
        ("skip list without hints", &["--skip", r#"[{"serial": "SCSI-1"}, {"volume_name": "r"}]"#], "/dev/vda"),
    ];
    for (name, args, expected) in cases {
        let output = debug_root_disk(root.path(), args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "case {name}: {stderr}");
        let disk: Disk = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("case {name}: {e}"));
        assert_eq!(disk.name, expected, "case {name}");
    }
}

#[test]
fn debug_root_disk_fails_listing_the_disks_seen() {
    let root = fixture();
    let every_disk = [
        "/dev/nvme0n1 (53687091200 bytes = 50.00 GiB",
        "serial \"NVME-9\"",
        "/dev/sda (1073741824 bytes = 1.00 GiB",
        "model \"Cruzer Blade\"",
        "/dev/sdb (10737418240 bytes = 10.00 GiB",
        "/dev/vda (21474836480 bytes = 20.00 GiB",
        "serial \"VIRTIO-ROOT\"",
    ];
    let cases: [(&str, &[&str], &str, bool); 5] = [
        (
            "hint matching nothing",
            &["--hints", r#"{"serial": "NOPE"}"#],
            r#"no disk matches the root device hints {"serial":"NOPE"}; disks seen: "#,
            true,
        ),
        (
            "invalid hint",
            &["--hints", r#"{"size": 0}"#],
            "invalid root device hint size: \"0\" is not a positive",
            true,
        ),
        (
            "every disk skipped",
            &["--skip", r#"[{"size": ">= 1"}]"#],
            "no disk of at least 4 GiB found; disks seen: ",
            true,
        ),
        ("hints not JSON", &["--hints", "serial=NOPE"], "--hints is not JSON", false),
        ("skip not a list", &["--skip", r#"{"size": 1}"#], "--skip is not a JSON list", false),
    ];
    for (name, args, message, lists_disks) in cases {
        let output = debug_root_disk(root.path(), args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "case {name}: succeeded with {}", String::from_utf8_lossy(&output.stdout));
        assert!(output.stdout.is_empty(), "case {name}");
        assert!(stderr.contains(message), "case {name}: {stderr}");
        if lists_disks {
            for disk in every_disk {
                assert!(stderr.contains(disk), "case {name}: {disk:?} missing from {stderr}");
            }
        }
    }
}

/// The command error a deploy reports (and the controller puts in `last_error`) names the bad hint
/// and lists the disks. Invalid hints fail at once; hints matching nothing would wait IPA's 10 × 3 s first.
#[tokio::test]
async fn write_image_with_invalid_hints_fails_listing_the_disks() {
    let root = fixture();
    let config = DeployConfig {
        disk: Target::Choose { root: root.path().to_owned() },
        download: DownloadConfig::default(),
        booted: BootMode::Bios,
        configure_boot: false,
    };
    let cases = [
        (
            "invalid hints",
            Some(serde_json::json!({"rotational": "maybe"})),
            vec![],
            "invalid root device hint rotational",
        ),
        (
            "invalid skip entry",
            None,
            vec![serde_json::json!({"colour": "red"})],
            "the skip_block_devices entry {\"colour\":\"red\"} is invalid",
        ),
    ];
    for (name, root_device, skip_block_devices, message) in cases {
        let info = ImageInfo {
            id: "img".into(),
            // Never fetched: the disk is chosen before the download starts.
            urls: vec!["http://127.0.0.1:9/image.raw".into()],
            checksum: Some("0".repeat(64)),
            root_device,
            skip_block_devices,
            ..Default::default()
        };
        let started = Instant::now();
        let outcome =
            write_image_task(&reqwest::Client::new(), &info, &config, Arc::new(ProgressTracker::default())).await;
        let error = format!("{:#}", anyhow::Error::from(outcome.unwrap_err()));
        assert!(started.elapsed() < Duration::from_secs(2), "case {name}: waited {:?}", started.elapsed());
        assert!(error.contains(message), "case {name}: {error}");
        for disk in ["/dev/nvme0n1 (", "/dev/sda (", "/dev/sdb (", "/dev/vda ("] {
            assert!(error.contains(disk), "case {name}: {disk} missing from {error}");
        }
    }
}
