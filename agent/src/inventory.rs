//! Hardware inventory read from sysfs and procfs under a root path, so tests run on fixture trees.

use std::fs;
use std::path::Path;

use ferric_protocol::inventory::{Boot, Cpu, Disk, Interface, Memory};
use ferric_protocol::Inventory;

/// Block devices that are never install targets (IPA drops ram, zram, loop, floppy, optical).
const SKIPPED_BLOCK_PREFIXES: [&str; 6] = ["loop", "ram", "zram", "fd", "sr", "dm-"];

/// Reads the inventory of the system whose `/sys` and `/proc` are under `root`.
pub fn scan(root: &Path, boot_mac: Option<&str>) -> Inventory {
    Inventory {
        interfaces: interfaces(root),
        cpu: cpu(root),
        disks: disks(root),
        memory: memory(root),
        boot: Boot {
            current_boot_mode: if root.join("sys/firmware/efi").exists() { "uefi" } else { "bios" }.to_owned(),
            pxe_interface: boot_mac.map(str::to_owned),
            secure_boot: None,
        },
        hostname: read_trimmed(&root.join("proc/sys/kernel/hostname")),
        ..Default::default()
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn interfaces(root: &Path) -> Vec<Interface> {
    let net = root.join("sys/class/net");
    sorted_entries(&net)
        .into_iter()
        .filter(|name| name != "lo")
        .filter_map(|name| {
            let dir = net.join(&name);
            let mac = ferric_protocol::normalize_mac(&read_trimmed(&dir.join("address"))?)?;
            Some(Interface {
                mac_address: mac,
                ipv4_address: None,
                has_carrier: read_trimmed(&dir.join("carrier")).as_deref() == Some("1"),
                speed_mbps: read_trimmed(&dir.join("speed")).and_then(|s| s.parse().ok()),
                driver: link_name(&dir.join("device/driver")),
                pci_address: pci_address(&dir.join("device")),
                name,
                ..Default::default()
            })
        })
        .collect()
}

/// The PCI address (`0000:00:02.0`) in the resolved device path; virtio NICs sit one level below it.
fn pci_address(device: &Path) -> Option<String> {
    let resolved = fs::canonicalize(device).ok()?;
    resolved.components().rev().map(|c| c.as_os_str().to_string_lossy().into_owned()).find(|name| {
        let b = name.as_bytes();
        b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
    })
}

fn cpu(root: &Path) -> Cpu {
    let text = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    Cpu {
        model_name: field("model name"),
        frequency: field("cpu MHz"),
        count: text.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count() as u32,
        architecture: std::env::consts::ARCH.to_owned(),
        flags: field("flags").map(|f| f.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
        socket_count: 1,
    }
}

fn memory(root: &Path) -> Memory {
    let text = fs::read_to_string(root.join("proc/meminfo")).unwrap_or_default();
    let total_kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Memory { total: total_kib * 1024, physical_mb: physical_mb(root).unwrap_or(total_kib.div_ceil(1024)) }
}

/// Installed memory from the memory-block view, which (unlike MemTotal) includes what the kernel reserved.
fn physical_mb(root: &Path) -> Option<u64> {
    let dir = root.join("sys/devices/system/memory");
    let block = u64::from_str_radix(&read_trimmed(&dir.join("block_size_bytes"))?, 16).ok()?;
    let online = sorted_entries(&dir)
        .iter()
        .filter(|n| n.starts_with("memory"))
        .filter(|n| read_trimmed(&dir.join(n).join("online")).as_deref() == Some("1"))
        .count() as u64;
    (online > 0).then_some(online * block / (1 << 20))
}

fn disks(root: &Path) -> Vec<Disk> {
    let block = root.join("sys/block");
    sorted_entries(&block)
        .into_iter()
        .filter(|name| !SKIPPED_BLOCK_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter_map(|name| {
            let dir = block.join(&name);
            let sectors: u64 = read_trimmed(&dir.join("size"))?.parse().ok()?;
            (sectors > 0).then(|| Disk {
                model: read_trimmed(&dir.join("device/model")),
                vendor: read_trimmed(&dir.join("device/vendor")),
                size: sectors * 512,
                rotational: read_trimmed(&dir.join("queue/rotational")).as_deref() == Some("1"),
                serial: read_trimmed(&dir.join("serial")).or_else(|| read_trimmed(&dir.join("device/serial"))),
                wwn: read_trimmed(&dir.join("wwid")).or_else(|| read_trimmed(&dir.join("device/wwid"))),
                name: format!("/dev/{name}"),
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    fn put(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn link(root: &Path, rel: &str, target: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    /// A tree shaped like the sysfs/procfs of a small QEMU VM with two disks and one NIC.
    pub(crate) fn qemu_like_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "proc/cpuinfo", "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\ncpu MHz\t\t: 2095.076\nflags\t\t: fpu vme sse2\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n");
        put(r, "proc/meminfo", "MemTotal:        1004000 kB\nMemFree:          900000 kB\n");
        put(r, "proc/sys/kernel/hostname", "ferric-ramdisk\n");
        put(r, "sys/devices/system/memory/block_size_bytes", "8000000\n");
        for i in 0..8 {
            put(r, &format!("sys/devices/system/memory/memory{i}/online"), "1\n");
        }
        fs::create_dir_all(r.join("sys/firmware/efi")).unwrap();
        put(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        put(r, "sys/class/net/enp0s2/address", "52:54:00:FE:00:01\n");
        put(r, "sys/class/net/enp0s2/carrier", "1\n");
        fs::create_dir_all(r.join("sys/devices/pci0000:00/0000:00:02.0/virtio0")).unwrap();
        fs::create_dir_all(r.join("sys/bus/virtio/drivers/virtio_net")).unwrap();
        link(r, "sys/devices/pci0000:00/0000:00:02.0/virtio0/driver", "../../../../bus/virtio/drivers/virtio_net");
        link(r, "sys/class/net/enp0s2/device", "../../../devices/pci0000:00/0000:00:02.0/virtio0");
        put(r, "sys/block/vda/size", "10485760\n");
        put(r, "sys/block/vda/serial", "DISK-A\n");
        put(r, "sys/block/vda/queue/rotational", "1\n");
        put(r, "sys/block/vdb/size", "2097152\n");
        put(r, "sys/block/loop0/size", "100\n");
        put(r, "sys/block/sr0/size", "100\n");
        put(r, "sys/block/nvme0n1/size", "0\n");
        dir
    }

    #[test]
    fn scans_a_qemu_like_tree() {
        let root = qemu_like_root();
        let inv = scan(root.path(), Some("52:54:00:fe:00:01"));
        assert_eq!(inv.cpu.count, 2);
        assert_eq!(inv.cpu.model_name.as_deref(), Some("QEMU Virtual CPU version 2.5+"));
        assert_eq!(inv.cpu.frequency.as_deref(), Some("2095.076"));
        assert_eq!(inv.cpu.flags, ["fpu", "vme", "sse2"]);
        assert_eq!(inv.memory.total, 1004000 * 1024);
        assert_eq!(inv.memory.physical_mb, 1024);
        assert_eq!(inv.boot.current_boot_mode, "uefi");
        assert_eq!(inv.hostname.as_deref(), Some("ferric-ramdisk"));
        assert_eq!(inv.interfaces.len(), 1);
        assert_eq!(inv.interfaces[0].mac_address, "52:54:00:fe:00:01");
        assert!(inv.interfaces[0].has_carrier);
        assert_eq!(inv.interfaces[0].driver.as_deref(), Some("virtio_net"));
        assert_eq!(inv.interfaces[0].pci_address.as_deref(), Some("0000:00:02.0"));
        let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["/dev/vda", "/dev/vdb"]);
        assert_eq!(inv.disks[0].size, 5 << 30);
        assert_eq!(inv.disks[0].serial.as_deref(), Some("DISK-A"));
        assert!(inv.disks[0].rotational && !inv.disks[1].rotational);
    }

    #[test]
    fn empty_root_gives_an_empty_inventory_without_panicking() {
        let inv = scan(&PathBuf::from("/nonexistent-ferric-root"), None);
        assert!(inv.disks.is_empty() && inv.interfaces.is_empty());
        assert_eq!(inv.boot.current_boot_mode, "bios");
    }
}
