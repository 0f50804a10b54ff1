//! Choosing the disk to install on.

use ferric_protocol::inventory::Disk;
use serde_json::Value;

/// Ironic's default without hints: the smallest disk of at least 4 GiB.
pub const MIN_ROOT_DISK_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootDiskError {
    #[error("no disk of at least 4 GiB found; disks seen: {}", seen(.disks))]
    NoneLargeEnough { disks: Vec<String> },
    #[error("root device hints are not supported by this agent yet (got {hints}); disks seen: {}", seen(.disks))]
    HintsUnsupported { hints: String, disks: Vec<String> },
}

fn seen(disks: &[String]) -> String {
    if disks.is_empty() {
        "none".to_owned()
    } else {
        disks.join(", ")
    }
}

fn describe(disk: &Disk) -> String {
    let mut text = format!("{} ({} bytes", disk.name, disk.size);
    for (label, value) in [("model", &disk.model), ("serial", &disk.serial), ("wwn", &disk.wwn)] {
        if let Some(v) = value {
            text.push_str(&format!(", {label} {v}"));
        }
    }
    text.push(')');
    text
}

/// Picks the install disk: with no hints, the smallest disk of at least 4 GiB, ties by name.
pub fn choose<'a>(disks: &'a [Disk], hints: Option<&Value>) -> Result<&'a Disk, RootDiskError> {
    let seen = || disks.iter().map(describe).collect();
    if let Some(hints) = hints.filter(|h| !h.is_null() && h.as_object().is_none_or(|o| !o.is_empty())) {
        return Err(RootDiskError::HintsUnsupported { hints: hints.to_string(), disks: seen() });
    }
    disks
        .iter()
        .filter(|d| d.size >= MIN_ROOT_DISK_BYTES)
        .min_by(|a, b| a.size.cmp(&b.size).then_with(|| a.name.cmp(&b.name)))
        .ok_or_else(|| RootDiskError::NoneLargeEnough { disks: seen() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64) -> Disk {
        Disk { name: name.into(), size: gib << 30, ..Default::default() }
    }

    #[test]
    fn default_choice_table() {
        let cases: [(&str, Vec<Disk>, Option<&str>); 5] = [
            ("single large disk", vec![disk("/dev/vda", 5)], Some("/dev/vda")),
            (
                "smallest of several",
                vec![disk("/dev/sda", 100), disk("/dev/vdb", 8), disk("/dev/nvme0n1", 20)],
                Some("/dev/vdb"),
            ),
            ("too small disks skipped", vec![disk("/dev/vda", 1), disk("/dev/vdb", 4)], Some("/dev/vdb")),
            ("tie broken by name", vec![disk("/dev/vdb", 8), disk("/dev/vda", 8)], Some("/dev/vda")),
            ("nothing large enough", vec![disk("/dev/vda", 3)], None),
        ];
        for (name, disks, expected) in cases {
            let got = choose(&disks, None).ok().map(|d| d.name.as_str());
            assert_eq!(got, expected, "case {name}");
        }
    }

    #[test]
    fn failure_lists_the_disks_seen() {
        let mut small = disk("/dev/vda", 1);
        small.serial = Some("S1".into());
        let err = choose(&[small], None).unwrap_err().to_string();
        assert_eq!(err, "no disk of at least 4 GiB found; disks seen: /dev/vda (1073741824 bytes, serial S1)");
        assert_eq!(choose(&[], None).unwrap_err().to_string(), "no disk of at least 4 GiB found; disks seen: none");
    }

    #[test]
    fn hints_are_refused_with_the_disks_seen_until_supported() {
        let hints = serde_json::json!({"serial": "S1"});
        let err = choose(&[disk("/dev/vda", 5)], Some(&hints)).unwrap_err();
        assert!(matches!(err, RootDiskError::HintsUnsupported { .. }));
        assert!(err.to_string().contains("/dev/vda"));
        assert!(choose(&[disk("/dev/vda", 5)], Some(&serde_json::json!({}))).is_ok());
    }
}
