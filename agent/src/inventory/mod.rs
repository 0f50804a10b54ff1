//! Hardware inventory with IPA's fields, read from sysfs, procfs, DMI and efivars under a root path
//! (tests run on fixture trees, see agent/tests/fixtures/inventory), plus what only the live system
//! can tell: addresses, LLDP neighbours and the BMC address.

mod disks;
mod ipmi;
pub mod lldp;
mod net;
mod path_id;
mod scsi;
pub(crate) mod sysfs;
mod system;

use std::path::Path;
use std::time::Duration;

use ferric_protocol::Inventory;

/// What [`collect`] does beyond [`scan`].
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// How long to listen for LLDP frames on the interfaces with carrier (switches send every 30 s
    /// by default, so a short window catches a neighbour only sometimes; IPA waits up to 30 s).
    pub lldp_window: Duration,
    /// How long to wait for each answer of the BMC.
    pub bmc_timeout: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions { lldp_window: Duration::from_secs(3), bmc_timeout: Duration::from_secs(5) }
    }
}

/// Everything readable under `root` (sysfs, procfs, DMI, efivars): no sockets, no ioctls.
/// `disks` are in kernel name order.
pub fn scan(root: &Path, boot_mac: Option<&str>) -> Inventory {
    let sys = sysfs::Sysfs::new(root);
    Inventory {
        interfaces: net::interfaces(&sys),
        cpu: system::cpu(&sys),
        disks: disks::disks(&sys),
        memory: system::memory(&sys),
        boot: system::boot(&sys, boot_mac),
        hostname: sysfs::read_trimmed(&sys.path("proc/sys/kernel/hostname")),
        system_vendor: system::system_vendor(&sys),
        ..Default::default()
    }
}

/// [`scan`] plus what only the live system can tell: interface addresses, LLDP heard within
/// `options.lldp_window` (in parallel with the BMC query), the BMC address from `root`/dev/ipmi0.
/// Blocking (call from `spawn_blocking`); never fails, a missing part is left empty.
pub fn collect(root: &Path, boot_mac: Option<&str>, options: &LiveOptions) -> Inventory {
    let mut inventory = scan(root, boot_mac);
    let with_carrier: Vec<&str> =
        inventory.interfaces.iter().filter(|i| i.has_carrier).map(|i| i.name.as_str()).collect();
    let (mut neighbours, bmc) = std::thread::scope(|scope| {
        let bmc = scope.spawn(|| ipmi::bmc_lan(&root.join("dev/ipmi0"), options.bmc_timeout));
        let neighbours = lldp::listen(&with_carrier, options.lldp_window);
        (neighbours, bmc.join().ok().flatten())
    });
    let mut addresses = net::addresses();
    for interface in &mut inventory.interfaces {
        if let Some((v4, v6)) = addresses.remove(&interface.name) {
            interface.ipv4_address = v4.map(|a| a.to_string());
            interface.ipv6_address = v6.map(|a| a.to_string());
        }
        interface.lldp = neighbours.remove(&interface.name);
    }
    if let Some(bmc) = bmc {
        inventory.bmc_address = Some(bmc.address.to_string());
        inventory.bmc_mac = bmc.mac;
    }
    inventory
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
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

    /// A tree shaped like the sysfs/procfs of a small QEMU VM with two virtio disks and one NIC.
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
        link(r, "sys/class/net/lo", "../../devices/virtual/net/lo");
        put(r, "sys/devices/virtual/net/lo/address", "00:00:00:00:00:00\n");
        let nic = "sys/devices/pci0000:00/0000:00:02.0/virtio0";
        put(r, &format!("{nic}/net/enp0s2/address"), "52:54:00:FE:00:01\n");
        put(r, &format!("{nic}/net/enp0s2/carrier"), "1\n");
        put(r, &format!("{nic}/vendor"), "0x1af4\n");
        link(r, &format!("{nic}/net/enp0s2/device"), "../../../virtio0");
        link(r, &format!("{nic}/driver"), "../../../../bus/virtio/drivers/virtio_net");
        link(r, "sys/class/net/enp0s2", "../../devices/pci0000:00/0000:00:02.0/virtio0/net/enp0s2");
        for (disk, pci, sectors) in [("vda", "0000:00:04.0", "10485760"), ("vdb", "0000:00:05.0", "2097152")] {
            let dir = format!("sys/devices/pci0000:00/{pci}/virtio1/block/{disk}");
            put(r, &format!("{dir}/size"), sectors);
            link(r, &format!("sys/block/{disk}"), &format!("../{}", dir.trim_start_matches("sys/")));
            link(r, &format!("sys/devices/pci0000:00/{pci}/subsystem"), "../../../bus/pci");
            link(r, &format!("sys/devices/pci0000:00/{pci}/virtio1/subsystem"), "../../../../bus/virtio");
        }
        put(r, "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/serial", "DISK-A\n");
        put(r, "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/queue/rotational", "1\n");
        for (name, sectors) in [("loop0", "100"), ("sr0", "100"), ("nvme0n1", "0")] {
            put(r, &format!("sys/devices/virtual/block/{name}/size"), sectors);
            link(r, &format!("sys/block/{name}"), &format!("../devices/virtual/block/{name}"));
        }
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
        assert_eq!(inv.cpu.socket_count, 1);
        assert_eq!(inv.memory.total, 1004000 * 1024);
        assert_eq!(inv.memory.physical_mb, 1024);
        assert_eq!(inv.boot.current_boot_mode, "uefi");
        assert_eq!(inv.boot.pxe_interface.as_deref(), Some("52:54:00:fe:00:01"));
        assert_eq!(inv.hostname.as_deref(), Some("ferric-ramdisk"));
        assert_eq!(inv.interfaces.len(), 1, "lo has no device link");
        assert_eq!(inv.interfaces[0].mac_address, "52:54:00:fe:00:01");
        assert!(inv.interfaces[0].has_carrier);
        assert_eq!(inv.interfaces[0].driver.as_deref(), Some("virtio_net"));
        assert_eq!(inv.interfaces[0].pci_address.as_deref(), Some("0000:00:02.0"));
        assert_eq!(inv.interfaces[0].vendor.as_deref(), Some("0x1af4"));
        let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["/dev/vda", "/dev/vdb"]);
        assert_eq!(inv.disks[0].size, 5 << 30);
        assert_eq!(inv.disks[0].serial.as_deref(), Some("DISK-A"));
        assert_eq!(inv.disks[0].by_path.as_deref(), Some("/dev/disk/by-path/pci-0000:00:04.0"));
        assert_eq!(inv.disks[1].tran.as_deref(), Some("virtio"));
        assert!(inv.disks[0].rotational && !inv.disks[1].rotational);
    }

    #[test]
    fn empty_root_gives_an_empty_inventory_without_panicking() {
        let inv = scan(&PathBuf::from("/nonexistent-ferric-root"), None);
        assert!(inv.disks.is_empty() && inv.interfaces.is_empty());
        assert_eq!(inv.boot.current_boot_mode, "bios");
        assert_eq!(inv.boot.secure_boot, None);
        assert_eq!(inv.cpu.socket_count, 1);
    }

    #[test]
    fn collect_on_a_fixture_root_adds_nothing_it_cannot_see() {
        let root = qemu_like_root();
        let options = LiveOptions { lldp_window: Duration::from_millis(200), bmc_timeout: Duration::from_secs(1) };
        let inv = collect(root.path(), None, &options);
        assert_eq!(inv.bmc_address, None, "no dev/ipmi0 under the root");
        assert_eq!(inv.interfaces.len(), 1);
        assert_eq!(inv.interfaces[0].lldp, None, "enp0s2 does not exist on this machine");
    }
}
