//! Choosing the disk to install on: Ironic's root-device hints and `skip_block_devices`, or without
//! hints the smallest disk of at least 4 GiB; disks that appear late (NVMe, SAN) are waited for.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferric_protocol::hints::{self, HintError, RootDeviceHints};
use ferric_protocol::inventory::Disk;
use serde_json::Value;

use crate::inventory;

/// Ironic's default without hints: the smallest disk of at least 4 GiB.
pub const MIN_ROOT_DISK_BYTES: u64 = 4 << 30;

/// Every variant lists the disks seen, so a failed deploy says what the node has.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootDiskError {
    #[error("no disk of at least 4 GiB found; disks seen: {}", seen(.disks))]
    NoneLargeEnough { disks: Vec<String> },
    #[error("no disk matches the root device hints {hints}; disks seen: {}", seen(.disks))]
    NoMatch { hints: String, disks: Vec<String> },
    #[error("the root device hints are invalid (disks seen: {})", seen(.disks))]
    InvalidHints {
        #[source]
        source: HintError,
        disks: Vec<String>,
    },
    #[error("the skip_block_devices entry {entry} is invalid (disks seen: {})", seen(.disks))]
    InvalidSkip {
        entry: String,
        #[source]
        source: HintError,
        disks: Vec<String>,
    },
}

impl RootDiskError {
    /// Whether a disk that appears later could still make a choice possible.
    fn may_resolve_later(&self) -> bool {
        matches!(self, RootDiskError::NoneLargeEnough { .. } | RootDiskError::NoMatch { .. })
    }
}

/// How long to wait for the install disk to appear (IPA's `disk_wait_attempts`, `disk_wait_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskWait {
    /// Scans in all; at least one is made.
    pub attempts: u32,
    /// Pause between two scans.
    pub delay: Duration,
}

impl Default for DiskWait {
    fn default() -> Self {
        Self { attempts: 10, delay: Duration::from_secs(3) }
    }
}

fn seen(disks: &[String]) -> String {
    if disks.is_empty() {
        "none".to_owned()
    } else {
        disks.join("; ")
    }
}

/// A disk and every field a hint can name, so an operator can write a hint from the message.
fn describe(disk: &Disk, skipped: bool) -> String {
    let rotational = if disk.rotational { "rotational" } else { "non-rotational" };
    let mut text =
        format!("{} ({} bytes = {:.2} GiB, {rotational}", disk.name, disk.size, disk.size as f64 / (1u64 << 30) as f64);
    let fields = [
        ("model", &disk.model),
        ("vendor", &disk.vendor),
        ("serial", &disk.serial),
        ("wwn", &disk.wwn),
        ("wwn_with_extension", &disk.wwn_with_extension),
        ("wwn_vendor_extension", &disk.wwn_vendor_extension),
        ("hctl", &disk.hctl),
        ("by_path", &disk.by_path),
    ];
    for (label, value) in fields {
        if let Some(value) = value.as_deref().filter(|v| !v.trim().is_empty()) {
            text.push_str(&format!(", {label} {value:?}"));
        }
    }
    if skipped {
        text.push_str(", skipped by skip_block_devices");
    }
    text.push(')');
    text
}

fn describe_all(disks: &[Disk], skipped: &BTreeSet<String>) -> Vec<String> {
    disks.iter().map(|disk| describe(disk, skipped.contains(&disk.name))).collect()
}

/// Names of the disks matching any entry of `skip_block_devices` (IPA's
/// `get_skip_list_from_node_for_disks`). `{"volume_name": ..}` entries name RAID volumes: ignored here.
fn skipped_names(disks: &[Disk], skip: &[Value]) -> Result<BTreeSet<String>, RootDiskError> {
    let mut names = BTreeSet::new();
    for entry in skip {
        if entry.get("volume_name").is_some() {
            continue;
        }
        let invalid = |source| RootDiskError::InvalidSkip {
            entry: entry.to_string(),
            source,
            disks: describe_all(disks, &BTreeSet::new()),
        };
        let hints = hints::parse_root_device_hints(entry).map_err(invalid)?;
        // An empty entry would skip every disk; IPA fails on it too.
        if hints.is_empty() {
            return Err(invalid(HintError {
                hint: "skip_block_devices".to_owned(),
                reason: "an entry without hints would skip every disk".to_owned(),
            }));
        }
        let matched: Vec<&Disk> = hints::find_devices(disks, &hints);
        if !matched.is_empty() {
            tracing::info!(entry = %entry, disks = ?matched.iter().map(|d| &d.name).collect::<Vec<_>>(), "skipping disks");
        }
        names.extend(matched.into_iter().map(|disk| disk.name.clone()));
    }
    Ok(names)
}

/// Drops disks matching any entry of `skip_block_devices` (hint dicts; `{"volume_name": ..}` entries are
/// RAID volumes, ignored here). An invalid entry is an error.
pub fn without_skipped(disks: Vec<Disk>, skip: &[Value]) -> Result<Vec<Disk>, RootDiskError> {
    let skipped = skipped_names(&disks, skip)?;
    Ok(disks.into_iter().filter(|disk| !skipped.contains(&disk.name)).collect())
}

/// Picks the install disk: with hints, the first disk in list order matching them all (whatever its
/// size, as IPA does); without, the smallest disk of at least 4 GiB, ties by name.
pub fn choose<'a>(disks: &'a [Disk], hints: Option<&Value>) -> Result<&'a Disk, RootDiskError> {
    select(disks, hints, &BTreeSet::new())
}

/// [`choose`] among the disks not in `skipped`; errors list every disk, the skipped ones marked.
fn select<'a>(disks: &'a [Disk], hints: Option<&Value>, skipped: &BTreeSet<String>) -> Result<&'a Disk, RootDiskError> {
    let seen = || describe_all(disks, skipped);
    let parsed = match hints {
        Some(hints) => hints::parse_root_device_hints(hints)
            .map_err(|source| RootDiskError::InvalidHints { source, disks: seen() })?,
        None => RootDeviceHints::default(),
    };
    let mut candidates = disks.iter().filter(|disk| !skipped.contains(&disk.name));
    if parsed.is_empty() {
        return candidates
            .filter(|disk| disk.size >= MIN_ROOT_DISK_BYTES)
            .min_by(|a, b| a.size.cmp(&b.size).then_with(|| a.name.cmp(&b.name)))
            .ok_or_else(|| RootDiskError::NoneLargeEnough { disks: seen() });
    }
    let disk = candidates.find(|disk| parsed.matches(disk)).ok_or_else(|| RootDiskError::NoMatch {
        hints: hints.map(Value::to_string).unwrap_or_default(),
        disks: seen(),
    })?;
    tracing::info!(disk = %disk.name, hints = %parsed, "the root device hints match");
    Ok(disk)
}

/// Chooses the install disk; waits for disks that appear late (rescans `root`), bounded by `wait`.
/// Invalid hints or skip entries fail at once: no new disk can fix them. Blocking.
pub fn wait_and_choose(
    root: &Path,
    hints: Option<&Value>,
    skip: &[Value],
    wait: &DiskWait,
) -> Result<Disk, RootDiskError> {
    let attempts = wait.attempts.max(1);
    let mut attempt = 1;
    loop {
        let disks = inventory::scan(root, None).disks;
        let choice = skipped_names(&disks, skip).and_then(|skipped| select(&disks, hints, &skipped).cloned());
        match choice {
            Ok(disk) => {
                tracing::info!(disk = %disk.name, attempt, "chose the root disk");
                return Ok(disk);
            }
            Err(error) if error.may_resolve_later() && attempt < attempts => {
                tracing::info!(attempt, attempts, "no root disk yet, rescanning in {:?}: {error}", wait.delay);
                std::thread::sleep(wait.delay);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::time::Instant;

    fn disk(name: &str, gib: u64) -> Disk {
        Disk { name: name.into(), size: gib << 30, ..Default::default() }
    }

    fn with_serial(mut disk: Disk, serial: &str) -> Disk {
        disk.serial = Some(serial.into());
        disk
    }

    fn names(disks: &[Disk]) -> Vec<&str> {
        disks.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn default_choice_table() {
        let cases: [(&str, Vec<Disk>, Option<&str>); 6] = [
            ("single large disk", vec![disk("/dev/vda", 5)], Some("/dev/vda")),
            (
                "smallest of several",
                vec![disk("/dev/sda", 100), disk("/dev/vdb", 8), disk("/dev/nvme0n1", 20)],
                Some("/dev/vdb"),
            ),
            ("too small disks skipped", vec![disk("/dev/vda", 1), disk("/dev/vdb", 4)], Some("/dev/vdb")),
            ("tie broken by name", vec![disk("/dev/vdb", 8), disk("/dev/vda", 8)], Some("/dev/vda")),
            ("nothing large enough", vec![disk("/dev/vda", 3)], None),
            ("empty hints mean the default", vec![disk("/dev/vdb", 9), disk("/dev/vda", 5)], Some("/dev/vda")),
        ];
        for (name, disks, expected) in cases {
            let got = choose(&disks, Some(&json!({}))).ok().map(|d| d.name.as_str());
            assert_eq!(got, expected, "case {name}");
            assert_eq!(choose(&disks, None).ok().map(|d| d.name.as_str()), expected, "case {name} (None)");
        }
    }

    #[test]
    fn hinted_choice_table() {
        let disks = vec![
            with_serial(disk("/dev/sda", 3), "USB-STICK"),
            with_serial(disk("/dev/sdb", 500), "BIG-1"),
            with_serial(disk("/dev/sdc", 500), "BIG-2"),
            with_serial(disk("/dev/vda", 8), "small"),
        ];
        let cases = [
            ("hints ignore the 4 GiB minimum", json!({"serial": "usb-stick"}), "/dev/sda"),
            ("first match in list order, not the smallest", json!({"size": ">= 8"}), "/dev/sdb"),
            ("later disk when the first does not match", json!({"serial": "BIG-2"}), "/dev/sdc"),
            ("all hints must match", json!({"size": 500, "serial": "<in> 2"}), "/dev/sdc"),
            ("null hints mean the default", Value::Null, "/dev/vda"),
        ];
        for (name, hints, expected) in cases {
            assert_eq!(choose(&disks, Some(&hints)).map(|d| d.name.as_str()), Ok(expected), "case {name}");
        }
    }

    #[test]
    fn failures_list_every_disk_seen() {
        let mut sda = with_serial(disk("/dev/sda", 1), "S1");
        sda.model = Some("QEMU HARDDISK".into());
        sda.wwn = Some("0x5000c50015ea71ac".into());
        sda.by_path = Some("/dev/disk/by-path/pci-0000:00:05.0-scsi-0:0:0:0".into());
        sda.hctl = Some("0:0:0:0".into());
        sda.rotational = true;
        let nvme = disk("/dev/nvme0n1", 2);
        let disks = [sda, nvme];
        let listed = "/dev/sda (1073741824 bytes = 1.00 GiB, rotational, model \"QEMU HARDDISK\", serial \"S1\", \
                      wwn \"0x5000c50015ea71ac\", hctl \"0:0:0:0\", by_path \"/dev/disk/by-path/pci-0000:00:05.0-scsi-0:0:0:0\"); \
                      /dev/nvme0n1 (2147483648 bytes = 2.00 GiB, non-rotational)";
        assert_eq!(
            choose(&disks, None).unwrap_err().to_string(),
            format!("no disk of at least 4 GiB found; disks seen: {listed}")
        );
        assert_eq!(
            choose(&disks, Some(&json!({"serial": "NOPE"}))).unwrap_err().to_string(),
            format!("no disk matches the root device hints {{\"serial\":\"NOPE\"}}; disks seen: {listed}")
        );
        let invalid = choose(&disks, Some(&json!({"size": "big"}))).unwrap_err();
        assert_eq!(invalid.to_string(), format!("the root device hints are invalid (disks seen: {listed})"));
        assert_eq!(
            format!("{:#}", anyhow::Error::from(invalid)),
            format!("the root device hints are invalid (disks seen: {listed}): invalid root device hint size: \"big\" is not an integer")
        );
        assert_eq!(choose(&[], None).unwrap_err().to_string(), "no disk of at least 4 GiB found; disks seen: none");
    }

    #[test]
    fn skip_block_devices_table() {
        let disks = || {
            vec![
                with_serial(disk("/dev/sda", 10), "OS-1"),
                with_serial(disk("/dev/sdb", 20), "DATA-1"),
                with_serial(disk("/dev/sdc", 30), "DATA-2"),
            ]
        };
        let cases: Vec<(&str, Vec<Value>, Vec<&str>)> = vec![
            ("no entries", vec![], vec!["/dev/sda", "/dev/sdb", "/dev/sdc"]),
            ("by serial", vec![json!({"serial": "data-1"})], vec!["/dev/sda", "/dev/sdc"]),
            ("by operator, several disks", vec![json!({"serial": "<in> data"})], vec!["/dev/sda"]),
            ("by size", vec![json!({"size": ">= 20"})], vec!["/dev/sda"]),
            ("several entries", vec![json!({"name": "/dev/sda"}), json!({"size": 30})], vec!["/dev/sdb"]),
            ("matching nothing", vec![json!({"vendor": "nobody"})], vec!["/dev/sda", "/dev/sdb", "/dev/sdc"]),
            (
                "raid volume entries ignored",
                vec![json!({"volume_name": "root"})],
                vec!["/dev/sda", "/dev/sdb", "/dev/sdc"],
            ),
        ];
        for (name, skip, expected) in cases {
            let kept = without_skipped(disks(), &skip).unwrap_or_else(|e| panic!("case {name}: {e}"));
            assert_eq!(names(&kept), expected, "case {name}");
        }
        let invalid: Vec<(&str, Value, &str)> = vec![
            ("unknown hint", json!({"colour": "red"}), "invalid root device hint colour: unknown hint"),
            ("bad size", json!({"size": 0}), "invalid root device hint size: \"0\" is not a positive integer"),
            ("empty entry", json!({}), "an entry without hints would skip every disk"),
            ("not an object", json!("/dev/sda"), "must be a JSON object of hints"),
        ];
        for (name, entry, reason) in invalid {
            let err = without_skipped(disks(), std::slice::from_ref(&entry)).unwrap_err();
            let message = format!("{:#}", anyhow::Error::from(err));
            assert!(
                message.starts_with(&format!("the skip_block_devices entry {entry} is invalid (disks seen: /dev/sda")),
                "case {name}: {message}"
            );
            assert!(message.contains(reason), "case {name}: {message}");
        }
    }

    #[test]
    fn skipped_disks_are_never_chosen_and_marked_in_errors() {
        let disks = [with_serial(disk("/dev/sda", 8), "OS-1"), with_serial(disk("/dev/sdb", 20), "DATA-1")];
        let skipped: BTreeSet<String> = ["/dev/sda".to_owned()].into();
        assert_eq!(select(&disks, None, &skipped).map(|d| d.name.as_str()), Ok("/dev/sdb"));
        let err = select(&disks, Some(&json!({"serial": "OS-1"})), &skipped).unwrap_err().to_string();
        assert!(err.contains("/dev/sda (8589934592 bytes = 8.00 GiB, non-rotational, serial \"OS-1\", skipped by skip_block_devices)"), "{err}");
        assert!(err.contains("/dev/sdb (21474836480 bytes = 20.00 GiB, non-rotational, serial \"DATA-1\")"), "{err}");
    }

    /// A sysfs tree with one disk: `sys/block/<name>/{size,serial}` (512-byte sectors).
    fn put_disk(block: &Path, name: &str, gib: u64, serial: &str) {
        let dir = block.join(name);
        fs::create_dir_all(dir.join("device")).unwrap();
        fs::write(dir.join("serial"), format!("{serial}\n")).unwrap();
        fs::write(dir.join("device/model"), "QEMU HARDDISK\n").unwrap();
        fs::write(dir.join("size"), format!("{}\n", (gib << 30) / 512)).unwrap();
    }

    fn fixture() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        put_disk(&root.path().join("sys/block"), "sda", 1, "USB-1");
        root
    }

    #[test]
    fn waits_for_a_disk_that_appears_late() {
        let appear_after = Duration::from_millis(300);
        let wait = DiskWait { attempts: 50, delay: Duration::from_millis(50) };
        let cases = [("by hint", json!({"serial": "san-lun-7"})), ("by default", Value::Null)];
        for (name, hints) in cases {
            let root = fixture();
            let late = root.path().to_owned();
            let adder = std::thread::spawn(move || {
                std::thread::sleep(appear_after);
                // Built aside and renamed in, so no scan sees a half-written disk.
                let staging = late.join("staging");
                put_disk(&staging, "nvme0n1", 50, "SAN-LUN-7");
                fs::rename(staging.join("nvme0n1"), late.join("sys/block/nvme0n1")).unwrap();
            });
            let started = Instant::now();
            let chosen =
                wait_and_choose(root.path(), Some(&hints), &[], &wait).unwrap_or_else(|e| panic!("case {name}: {e}"));
            assert!(started.elapsed() >= appear_after, "case {name}: chose after {:?}", started.elapsed());
            assert_eq!(chosen.name, "/dev/nvme0n1", "case {name}");
            assert_eq!(chosen.serial.as_deref(), Some("SAN-LUN-7"), "case {name}");
            adder.join().unwrap();
        }
    }

    #[test]
    fn gives_up_after_the_last_attempt_listing_the_disks() {
        let root = fixture();
        let wait = DiskWait { attempts: 3, delay: Duration::from_millis(40) };
        let started = Instant::now();
        let err = wait_and_choose(root.path(), Some(&json!({"serial": "NOPE"})), &[], &wait).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(80), "two pauses expected: {:?}", started.elapsed());
        assert_eq!(
            err.to_string(),
            "no disk matches the root device hints {\"serial\":\"NOPE\"}; disks seen: /dev/sda (1073741824 bytes = 1.00 GiB, \
             non-rotational, model \"QEMU HARDDISK\", serial \"USB-1\")"
        );
        let skip = [json!({"serial": "USB-1"})];
        let err = wait_and_choose(root.path(), None, &skip, &wait).unwrap_err().to_string();
        assert!(err.starts_with("no disk of at least 4 GiB found; disks seen: /dev/sda"), "{err}");
        assert!(err.ends_with("skipped by skip_block_devices)"), "{err}");
    }

    #[test]
    fn invalid_hints_or_skip_entries_fail_without_waiting() {
        let root = fixture();
        let wait = DiskWait { attempts: 5, delay: Duration::from_secs(10) };
        let started = Instant::now();
        let cases: [(&str, Value, Vec<Value>); 2] = [
            ("invalid hints", json!({"rotational": "maybe"}), vec![]),
            ("invalid skip entry", json!({"serial": "x"}), vec![json!({"size": -1})]),
        ];
        for (name, hints, skip) in cases {
            let err = wait_and_choose(root.path(), Some(&hints), &skip, &wait).unwrap_err();
            assert!(!err.may_resolve_later(), "case {name}: {err}");
            assert!(err.to_string().contains("/dev/sda (1073741824 bytes"), "case {name}: {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "waited: {:?}", started.elapsed());
    }

    #[test]
    fn default_wait_is_ipas() {
        assert_eq!(DiskWait::default(), DiskWait { attempts: 10, delay: Duration::from_secs(3) });
    }
}
