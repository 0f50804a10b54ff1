//! Block devices as IPA lists them (`lsblk -bia` rows of type `disk` or `raid*`, with udev's
//! identities), read from sysfs alone: the ramdisk has no udev daemon.
//!
//! Field sources:
//! - `model`: ATA disks the full IDENTIFY model from `device/vpd_pg89` (udev `ata_id`), else
//!   `device/model`; `vendor`: `device/vendor` (IPA reads that file; virtio disks show `0x1af4`).
//! - `serial`: `serial` (virtio-blk), SCSI/ATA `device/vpd_pg80`, else `device/serial` (NVMe).
//!   For SCSI this is the unit serial number lsblk shows (udev's `ID_SCSI_SERIAL`).
//! - `wwn*`: SCSI/ATA from `device/vpd_pg83` (else `device/wwid` `naa.`), split as `scsi_id` does;
//!   NVMe `wwn` is the namespace's `wwid` as is (`eui.…`, `nvme.…`: udev's `ID_WWN` for NVMe, with no
//!   `_WITH_EXTENSION`).
//! - `hctl`: the SCSI device name; `by_path`: see [`super::path_id`]; `tran`: lsblk's TRAN rules
//!   (virtio-scsi disks have none there either).

use std::fs;
use std::path::Path;

use ferric_protocol::inventory::Disk;

use super::path_id::by_path;
use super::scsi::{ata_model_from_page89, serial_from_page80, wwn_from_page83, wwn_from_wwid, Wwn};
use super::sysfs::{hctl, read_trimmed, read_u64, sorted_entries, sysname, Sysfs};

/// Never install targets, like lsblk's types `loop`, `rom`, `dm`/`lvm`/`crypt` and IPA's floppy and
/// RAM disk filters. md RAID devices stay (IPA keeps lsblk type `raid*`).
const SKIPPED_PREFIXES: [&str; 7] = ["loop", "ram", "zram", "fd", "sr", "dm-", "nbd"];

pub(crate) fn disks(sys: &Sysfs) -> Vec<Disk> {
    let block = sys.path("sys/block");
    sorted_entries(&block)
        .into_iter()
        .filter(|name| !SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter_map(|name| disk(sys, &block.join(&name), &name))
        .collect()
}

fn disk(sys: &Sysfs, entry: &Path, name: &str) -> Option<Disk> {
    let dir = sys.resolve(entry)?;
    let size = read_u64(&dir.join("size"))?.checked_mul(512)?;
    let device = dir.join("device");
    // SCSI peripheral type 0 is a disk; others (tape, changer, optical memory) are not.
    if read_u64(&device.join("type")).is_some_and(|t| t != 0) || size == 0 {
        return None;
    }
    let page = |n: &str| fs::read(device.join(format!("vpd_pg{n}"))).ok();
    let scsi_name = sys.resolve(&device).map(|d| sysname(&d)).filter(|n| hctl(n).is_some());
    let wwn = if name.starts_with("nvme") {
        let wwid = read_trimmed(&dir.join("wwid"));
        Wwn { wwn: wwid, ..Wwn::default() }
    } else {
        page("83")
            .and_then(|p| wwn_from_page83(&p))
            .or_else(|| wwn_from_wwid(&read_trimmed(&device.join("wwid"))?))
            .unwrap_or_default()
    };
    Some(Disk {
        model: page("89").and_then(|p| ata_model_from_page89(&p)).or_else(|| read_trimmed(&device.join("model"))),
        vendor: read_trimmed(&device.join("vendor")),
        size,
        rotational: read_trimmed(&dir.join("queue/rotational")).as_deref() == Some("1"),
        serial: read_trimmed(&dir.join("serial"))
            .or_else(|| page("80").and_then(|p| serial_from_page80(&p)))
            .or_else(|| read_trimmed(&device.join("serial"))),
        wwn: wwn.wwn,
        wwn_with_extension: wwn.with_extension,
        wwn_vendor_extension: wwn.vendor_extension,
        tran: transport(sys, &dir, name, scsi_name.is_some()),
        hctl: scsi_name,
        by_path: by_path(sys, &dir),
        logical_sectors: read_u64(&dir.join("queue/logical_block_size")),
        physical_sectors: read_u64(&dir.join("queue/physical_block_size")),
        name: format!("/dev/{name}"),
    })
}

/// lsblk's TRAN column (util-linux `get_transport`): SCSI disks by their host's transport class and
/// driver, the others by name.
fn transport(sys: &Sysfs, dir: &Path, name: &str, scsi: bool) -> Option<String> {
    let host = scsi.then(|| sys.ancestors(dir).find(|d| sysname(d).starts_with("host"))).flatten();
    let Some(host) = host else {
        return [("nvme", "nvme"), ("vd", "virtio"), ("mmcblk", "mmc")]
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, tran)| (*tran).to_owned());
    };
    let host_name = sysname(&host);
    let class = |kind: &str| host.join(format!("{kind}_host")).join(&host_name);
    let path = sys.syspath(dir);
    let tran = if class("spi").exists() {
        "spi"
    } else if class("fc").exists() {
        let symbolic = read_trimmed(&class("fc").join("symbolic_name"))?;
        if symbolic.contains(" over ") {
            "fcoe"
        } else {
            "fc"
        }
    } else if class("sas").exists() || path.contains("/end_device-") {
        "sas"
    } else if dir.join("device/ieee1394_id").exists() {
        "sbp"
    } else if class("iscsi").exists() {
        "iscsi"
    } else if sys.syspath(&host).contains("usb") {
        "usb"
    } else {
        let driver = read_trimmed(&class("scsi").join("proc_name"))?;
        if driver.starts_with("ahci") || driver.starts_with("sata") {
            "sata"
        } else if driver.contains("ata") {
            "ata"
        } else {
            return None;
        }
    };
    Some(tran.to_owned())
}
