//! `ID_PATH` as udev's `path_id` builtin composes it (systemd ≥ 253), from sysfs alone: the ramdisk
//! runs no udev, yet IPA reports `by_path` as the `/dev/disk/by-path/<ID_PATH>` link udev would create.
//!
//! The walk goes from the block device up to the root of `sys/devices`, prepending one element per
//! recognised parent: `pci-<address>` (only the innermost of nested PCI devices), `nvme-<nsid>`,
//! `scsi-H:C:T:L` (host renumbered from the lowest host on the same controller), `ata-<port>.<target>`
//! (systemd < 253 wrote `ata-<port>`), `sas-…`, `fc-…`, `usb-0:<port>`; virtio devices add nothing.
//! Examples: `pci-0000:00:04.0` (virtio-blk), `pci-0000:00:02.0-scsi-0:0:0:0` (virtio-scsi),
//! `pci-0000:41:00.0-nvme-1`, `pci-0000:00:17.0-ata-1.0`. Like udev, a device without a recognised bus
//! parent (md, dm, iSCSI here) has none.

use std::fs;
use std::path::{Path, PathBuf};

use super::sysfs::{hctl, read_trimmed, sysname, Sysfs};

/// `/dev/disk/by-path/<ID_PATH>` for the block device directory `dev` (canonical).
pub(crate) fn by_path(sys: &Sysfs, dev: &Path) -> Option<String> {
    path_id(sys, dev).map(|id| format!("/dev/disk/by-path/{id}"))
}

#[derive(Default)]
struct Walk {
    /// Elements, innermost first.
    parts: Vec<String>,
    transport: bool,
    parent: bool,
}

fn path_id(sys: &Sysfs, dev: &Path) -> Option<String> {
    let mut walk = Walk::default();
    let mut next = Some(dev.to_owned());
    while let Some(mut dir) = next {
        let name = sysname(&dir);
        match sys.subsystem(&dir).as_deref() {
            Some("scsi") => {
                walk.transport = true;
                match scsi(sys, &dir, &mut walk) {
                    Some(d) => dir = d,
                    None => break,
                }
            }
            Some("usb") => {
                walk.transport = true;
                dir = usb(sys, &dir, &mut walk);
            }
            Some("virtio") => {
                walk.transport = true;
                dir = skip_subsystem(sys, &dir, "virtio");
            }
            Some(bus @ ("pci" | "acpi" | "xen")) => {
                walk.parts.push(format!("{bus}-{name}"));
                dir = skip_subsystem(sys, &dir, bus);
                walk.parent = true;
            }
            Some(bus @ ("platform" | "amba" | "scm" | "ccw" | "ccwgroup" | "iucv")) => {
                walk.parts.push(format!("{bus}-{name}"));
                dir = skip_subsystem(sys, &dir, bus);
                walk.transport = true;
                walk.parent = true;
            }
            Some(subsystem @ ("nvme" | "nvme-subsystem")) => {
                if let Some(nsid) = read_trimmed(&dev.join("nsid")) {
                    walk.parts.push(format!("nvme-{nsid}"));
                    if subsystem == "nvme-subsystem" {
                        dir = real_nvme_parent(sys, dev)?;
                    }
                    dir = skip_subsystem(sys, &dir, "nvme");
                    walk.transport = true;
                    walk.parent = true;
                }
            }
            _ => {}
        }
        next = sys.parent(&dir);
    }
    if walk.parts.is_empty() || !walk.parent || !walk.transport {
        return None;
    }
    walk.parts.reverse();
    Some(walk.parts.join("-"))
}

/// The outermost of the consecutive ancestors of `dir` that belong to `subsystem`.
fn skip_subsystem(sys: &Sysfs, dir: &Path, subsystem: &str) -> PathBuf {
    let mut last = dir.to_owned();
    for ancestor in sys.ancestors(dir) {
        if sys.subsystem(&ancestor).as_deref() != Some(subsystem) {
            break;
        }
        last = ancestor;
    }
    last
}

/// With NVMe multipathing the namespace hangs below `virtual/nvme-subsystem/nvme-subsysN`; the bus
/// path is that of the controller (`nvme0` for `nvme0n1`), found through the `nvme` class.
fn real_nvme_parent(sys: &Sysfs, dev: &Path) -> Option<PathBuf> {
    let name = sysname(dev);
    let digits = name.strip_prefix("nvme")?;
    let controller = &name[..4 + digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len())];
    let dir = sys.resolve(&sys.path("sys/class/nvme").join(controller))?;
    (!sys.syspath(&dir).starts_with("/sys/devices/virtual/")).then_some(dir)
}

/// The SCSI parent: only a `H:C:T:L` device adds an element; hosts and targets pass through.
fn scsi(sys: &Sysfs, dir: &Path, walk: &mut Walk) -> Option<PathBuf> {
    let name = sysname(dir);
    let Some(address) = hctl(&name) else {
        return Some(dir.to_owned());
    };
    if let Some(id) = read_trimmed(&dir.join("ieee1394_id")) {
        walk.parts.push(format!("ieee1394-0x{id}"));
        walk.parent = true;
        return Some(skip_subsystem(sys, dir, "scsi"));
    }
    let path = sys.syspath(dir);
    if path.contains("/rport-") {
        walk.parent = true;
        return fibre_channel(sys, dir, address, walk);
    }
    if path.contains("/end_device-") {
        walk.parent = true;
        return sas(sys, dir, address, walk);
    }
    if path.contains("/session") || path.contains("/vmbus_") || path.contains("/VMBUS") {
        // iSCSI and Hyper-V paths need session and VMBus attributes this reader does not follow.
        return None;
    }
    if path.contains("/ata") {
        return ata(sys, dir, address, walk);
    }
    scsi_default(sys, dir, address, walk)
}

fn ancestor_named(sys: &Sysfs, dir: &Path, prefix: &str) -> Option<PathBuf> {
    sys.ancestors(dir)
        .find(|d| sysname(d).strip_prefix(prefix).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
}

fn class_attr(dir: &Path, class: &str, attr: &str) -> Option<String> {
    read_trimmed(&dir.join(class).join(sysname(dir)).join(attr))
}

fn lun(address: [u32; 4]) -> String {
    let lun = address[3];
    if lun < 256 {
        format!("lun-{lun}")
    } else {
        format!("lun-0x{:04x}{:04x}00000000", lun & 0xffff, (lun >> 16) & 0xffff)
    }
}

fn ata(sys: &Sysfs, dir: &Path, [_, bus, target, _]: [u32; 4], walk: &mut Walk) -> Option<PathBuf> {
    let host = ancestor_named(sys, dir, "host")?;
    let port = sys.parent(&host)?;
    let port_no = class_attr(&port, "ata_port", "port_no")?;
    walk.parts.push(if bus != 0 {
        // Behind a port multiplier.
        format!("ata-{port_no}.{bus}.0")
    } else {
        format!("ata-{port_no}.{target}")
    });
    Some(dir.to_owned())
}

fn scsi_default(sys: &Sysfs, dir: &Path, [host, bus, target, lun]: [u32; 4], walk: &mut Walk) -> Option<PathBuf> {
    let host_dir = ancestor_named(sys, dir, "host")?;
    let controller = host_dir.parent()?;
    let base = fs::read_dir(controller)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("host")?.parse::<u32>().ok())
        .min()?;
    walk.parts.push(format!("scsi-{}:{bus}:{target}:{lun}", host.saturating_sub(base)));
    Some(host_dir)
}

fn fibre_channel(sys: &Sysfs, dir: &Path, address: [u32; 4], walk: &mut Walk) -> Option<PathBuf> {
    let target = ancestor_named(sys, dir, "target")?;
    let port = class_attr(&target, "fc_transport", "port_name")?;
    walk.parts.push(format!("fc-{port}-{}", lun(address)));
    Some(dir.to_owned())
}

fn sas(sys: &Sysfs, dir: &Path, address: [u32; 4], walk: &mut Walk) -> Option<PathBuf> {
    let target = ancestor_named(sys, dir, "target")?;
    let end_device = sys.parent(&target)?;
    let port = sys.parent(&end_device)?;
    let phys = class_attr(&port, "sas_port", "num_phys")?;
    let lun = lun(address);
    if phys != "1" {
        let address = class_attr(&end_device, "sas_device", "sas_address")?;
        walk.parts.push(format!("sas-{address}-{lun}"));
        return Some(dir.to_owned());
    }
    let phy = class_attr(&end_device, "sas_device", "phy_identifier")?;
    let expander = sys.parent(&port).and_then(|e| class_attr(&e, "sas_device", "sas_address"));
    walk.parts.push(match expander {
        Some(expander) => format!("sas-exp{expander}-phy{phy}-{lun}"),
        None => format!("sas-phy{phy}-{lun}"),
    });
    Some(dir.to_owned())
}

/// `usb-0:<port>`: the host number is dropped because it changes between boots, and so is the USB
/// revision systemd ≥ 250 puts only in `ID_PATH_WITH_USB_REVISION`.
fn usb(sys: &Sysfs, dir: &Path, walk: &mut Walk) -> PathBuf {
    let name = sysname(dir);
    let Some((_, port)) = name.split_once('-') else {
        return dir.to_owned();
    };
    walk.parts.push(format!("usb-0:{port}"));
    skip_subsystem(sys, dir, "usb")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A device tree: `dirs` are `(path under sys/devices, subsystem)`; files are `(path, content)`.
    fn tree(dirs: &[(&str, &str)], files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (dir, subsystem) in dirs {
            let path = root.path().join("sys/devices").join(dir);
            fs::create_dir_all(&path).unwrap();
            if !subsystem.is_empty() {
                symlink(format!("/sys/bus/{subsystem}"), path.join("subsystem")).unwrap();
            }
        }
        for (file, content) in files {
            let path = root.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        root
    }

    fn id_of(root: &Path, dev: &str) -> Option<String> {
        let sys = Sysfs::new(root);
        let dev = sys.resolve(&root.join("sys/devices").join(dev)).unwrap();
        path_id(&sys, &dev)
    }

    #[test]
    fn sas_disk_on_a_direct_phy() {
        let base = "pci0000:00/0000:00:01.0/0000:03:00.0/host2/port-2:0/end_device-2:0";
        let scsi = format!("{base}/target2:0:0/2:0:0:0");
        let root = tree(
            &[
                ("pci0000:00", ""),
                ("pci0000:00/0000:00:01.0", "pci"),
                ("pci0000:00/0000:00:01.0/0000:03:00.0", "pci"),
                ("pci0000:00/0000:00:01.0/0000:03:00.0/host2", "scsi"),
                ("pci0000:00/0000:00:01.0/0000:03:00.0/host2/port-2:0", ""),
                (base, ""),
                (&format!("{base}/target2:0:0"), "scsi"),
                (&scsi, "scsi"),
                (&format!("{scsi}/block/sdc"), "block"),
            ],
            &[
                ("sys/devices/pci0000:00/0000:00:01.0/0000:03:00.0/host2/port-2:0/sas_port/port-2:0/num_phys", "1\n"),
                (&format!("sys/devices/{base}/sas_device/end_device-2:0/phy_identifier"), "4\n"),
                (&format!("sys/devices/{base}/sas_device/end_device-2:0/sas_address"), "0x5000c500a1b2c3d5\n"),
            ],
        );
        assert_eq!(
            id_of(root.path(), &format!("{scsi}/block/sdc")).as_deref(),
            Some("pci-0000:03:00.0-sas-phy4-lun-0")
        );
    }

    #[test]
    fn usb_stick_drops_the_host_number() {
        let usb = "pci0000:00/0000:00:14.0/usb2/2-3/2-3:1.0";
        let scsi = format!("{usb}/host7/target7:0:0/7:0:0:0");
        let root = tree(
            &[
                ("pci0000:00/0000:00:14.0", "pci"),
                ("pci0000:00/0000:00:14.0/usb2", "usb"),
                ("pci0000:00/0000:00:14.0/usb2/2-3", "usb"),
                (usb, "usb"),
                (&format!("{usb}/host7"), "scsi"),
                (&format!("{usb}/host7/target7:0:0"), "scsi"),
                (&scsi, "scsi"),
                (&format!("{scsi}/block/sdd"), "block"),
            ],
            &[],
        );
        assert_eq!(
            id_of(root.path(), &format!("{scsi}/block/sdd")).as_deref(),
            Some("pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0")
        );
    }

    #[test]
    fn fibre_channel_lun_and_large_lun_format() {
        let rport = "pci0000:00/0000:00:02.0/0000:05:00.0/host3/rport-3:0-0";
        let target = format!("{rport}/target3:0:0");
        let scsi = format!("{target}/3:0:0:300");
        let root = tree(
            &[
                ("pci0000:00/0000:00:02.0", "pci"),
                ("pci0000:00/0000:00:02.0/0000:05:00.0", "pci"),
                ("pci0000:00/0000:00:02.0/0000:05:00.0/host3", "scsi"),
                (rport, ""),
                (&target, "scsi"),
                (&scsi, "scsi"),
                (&format!("{scsi}/block/sde"), "block"),
            ],
            &[(&format!("sys/devices/{target}/fc_transport/target3:0:0/port_name"), "0x500a098188e4c1b2\n")],
        );
        assert_eq!(
            id_of(root.path(), &format!("{scsi}/block/sde")).as_deref(),
            Some("pci-0000:05:00.0-fc-0x500a098188e4c1b2-lun-0x012c000000000000")
        );
    }

    #[test]
    fn devices_without_a_bus_parent_have_no_path() {
        let root = tree(&[("virtual/block/md0", "block"), ("virtual/block/loop0", "block")], &[]);
        assert_eq!(id_of(root.path(), "virtual/block/md0"), None);
    }
}
