//! The inventory of fixture trees (agent/tests/fixtures/inventory, see its README.md): a QEMU VM
//! captured by scripts/capture-sysfs-fixture.sh and a constructed NVMe + SATA server. Every field of
//! every disk and interface is compared.

use std::path::PathBuf;

use ferric_agent::inventory;
use ferric_protocol::inventory::{Disk, Firmware, Interface, SystemVendor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory").join(name)
}

fn s(value: &str) -> Option<String> {
    Some(value.to_owned())
}

const GIB: u64 = 1 << 30;

#[test]
fn qemu_vm_with_four_kinds_of_disk() {
    let inv = inventory::scan(&fixture("qemu-4disk"), Some("52:54:00:fe:00:01"));

    let expected = [
        Disk {
            name: "/dev/nvme0n1".into(),
            model: s("QEMU NVMe Ctrl"),
            vendor: None,
            size: 5 * GIB,
            rotational: false,
            serial: s("FERRIC-NVME-1"),
            // QEMU gives the namespace neither an EUI-64 nor an NGUID: the kernel composes an `nvme.` id.
            wwn: s("nvme.1b36-4645525249432d4e564d452d31-51454d55204e564d65204374726c-00000001"),
            wwn_with_extension: None,
            wwn_vendor_extension: None,
            hctl: None,
            by_path: s("/dev/disk/by-path/pci-0000:00:03.0-nvme-1"),
            logical_sectors: Some(512),
            physical_sectors: Some(512),
            tran: s("nvme"),
        },
        Disk {
            name: "/dev/sda".into(),
            model: s("FERRIC IDE DISK"),
            vendor: s("ATA"),
            size: 2 * GIB,
            rotational: true,
            serial: s("QM00001"),
            wwn: None,
            wwn_with_extension: None,
            wwn_vendor_extension: None,
            hctl: s("0:0:0:0"),
            by_path: s("/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0"),
            logical_sectors: Some(512),
            physical_sectors: Some(512),
            tran: s("sata"),
        },
        Disk {
            name: "/dev/sdb".into(),
            model: s("QEMU HARDDISK"),
            vendor: s("QEMU"),
            size: 4 * GIB,
            rotational: true,
            serial: s("FERRIC-SCSI-1"),
            wwn: s("0x5000c500a1b2c3d4"),
            wwn_with_extension: s("0x5000c500a1b2c3d4"),
            wwn_vendor_extension: None,
            hctl: s("6:0:0:0"),
            // host6 is the first (only) host of the virtio-scsi controller: udev renumbers it to 0.
            by_path: s("/dev/disk/by-path/pci-0000:00:02.0-scsi-0:0:0:0"),
            logical_sectors: Some(512),
            physical_sectors: Some(512),
            // lsblk names no transport for virtio-scsi either.
            tran: None,
        },
        Disk {
            name: "/dev/vda".into(),
            model: None,
            // The virtio device's vendor id, which IPA reads from the same file.
            vendor: s("0x1af4"),
            size: 3 * GIB,
            rotational: true,
            serial: s("FERRIC-VIRTIO-1"),
            wwn: None,
            wwn_with_extension: None,
            wwn_vendor_extension: None,
            hctl: None,
            by_path: s("/dev/disk/by-path/pci-0000:00:01.0"),
            logical_sectors: Some(512),
            physical_sectors: Some(512),
            tran: s("virtio"),
        },
    ];
    assert_eq!(inv.disks, expected);

    assert_eq!(
        inv.interfaces,
        [Interface {
            name: "eth0".into(),
            mac_address: "52:54:00:fe:00:01".into(),
            has_carrier: true,
            vendor: s("0x1af4"),
            product: s("0x0001"),
            driver: s("virtio_net"),
            pci_address: s("0000:00:04.0"),
            // virtio-net reports -1 (unknown); no addresses or LLDP in a scan.
            speed_mbps: None,
            ..Default::default()
        }],
        "lo has no device link and is not listed"
    );

    assert_eq!(inv.cpu.model_name.as_deref(), Some("QEMU Virtual CPU version 2.5+"));
    assert_eq!(inv.cpu.frequency.as_deref(), Some("2598.200"), "no cpufreq in the VM: cpuinfo's cpu MHz");
    assert_eq!((inv.cpu.count, inv.cpu.socket_count), (2, 1));
    assert_eq!(inv.cpu.flags.len(), 37);
    assert!(inv.cpu.flags.iter().any(|f| f == "hypervisor"));
    assert_eq!(inv.cpu.architecture, std::env::consts::ARCH);
    assert_eq!(inv.memory.total, 468_108 * 1024);
    assert_eq!(inv.memory.physical_mb, 512, "four 128 MiB memory blocks");
    assert_eq!(
        inv.system_vendor,
        SystemVendor {
            product_name: s("Standard PC (Q35 + ICH9, 2009)"),
            serial_number: s("FERRIC-QEMU-0001"),
            manufacturer: s("QEMU"),
            firmware: Firmware {
                vendor: s("SeaBIOS"),
                version: s("1.16.2-debian-1.16.2-1"),
                build_date: s("04/01/2014")
            },
        }
    );
    assert_eq!(inv.boot.current_boot_mode, "bios");
    assert_eq!(inv.boot.secure_boot, None);
    assert_eq!(inv.boot.pxe_interface.as_deref(), Some("52:54:00:fe:00:01"));
    assert_eq!(inv.hostname.as_deref(), Some("ferric-fixture"));
    assert_eq!((inv.bmc_address, inv.bmc_mac), (None, None), "a scan does not query the BMC");
}

#[test]
fn server_with_nvme_namespaces_and_sata_disks() {
    let inv = inventory::scan(&fixture("server-nvme-sata"), None);

    let nvme = |nsid: u64, size: u64, logical: u64| Disk {
        name: format!("/dev/nvme0n{nsid}"),
        model: s("SAMSUNG MZQL23T8HCLS-00A07"),
        vendor: None,
        size,
        rotational: false,
        // The controller's serial: both namespaces carry it.
        serial: s("S64HNE0T512345"),
        wwn: Some(format!("eui.3634483052900123002538450000000{nsid}")),
        wwn_with_extension: None,
        wwn_vendor_extension: None,
        hctl: None,
        // Multipath layout: the namespace hangs below virtual/nvme-subsystem; the path is the controller's.
        by_path: Some(format!("/dev/disk/by-path/pci-0000:b1:00.0-nvme-{nsid}")),
        logical_sectors: Some(logical),
        physical_sectors: Some(4096),
        tran: s("nvme"),
    };
    let expected = [
        nvme(1, 1_920_383_410_176, 512),
        nvme(2, 960_197_124_096, 4096),
        Disk {
            name: "/dev/sda".into(),
            // The full ATA model from the IDENTIFY data; sysfs `model` holds "SAMSUNG MZ7LH480".
            model: s("SAMSUNG MZ7LH480HAHQ-00005"),
            vendor: s("ATA"),
            size: 480_103_981_056,
            rotational: false,
            serial: s("S45PNA0M512345"),
            wwn: s("0x5002538e40a1b2c3"),
            wwn_with_extension: s("0x5002538e40a1b2c3"),
            wwn_vendor_extension: None,
            hctl: s("0:0:0:0"),
            by_path: s("/dev/disk/by-path/pci-0000:00:17.0-ata-1.0"),
            logical_sectors: Some(512),
            physical_sectors: Some(4096),
            tran: s("sata"),
        },
        Disk {
            name: "/dev/sdb".into(),
            model: s("ST4000NM0035-1V4107"),
            vendor: s("ATA"),
            size: 4_000_787_030_016,
            rotational: true,
            serial: s("ZC1ABCDE"),
            wwn: s("0x5000c500b1c2d3e4"),
            wwn_with_extension: s("0x5000c500b1c2d3e4"),
            wwn_vendor_extension: None,
            hctl: s("2:0:0:0"),
            by_path: s("/dev/disk/by-path/pci-0000:00:17.0-ata-3.0"),
            logical_sectors: Some(512),
            physical_sectors: Some(4096),
            tran: s("sata"),
        },
    ];
    assert_eq!(inv.disks, expected);

    assert_eq!(
        inv.interfaces,
        [
            Interface {
                name: "eno1".into(),
                mac_address: "b0:7b:25:d4:5e:10".into(),
                has_carrier: false,
                vendor: s("0x14e4"),
                product: s("0x165f"),
                driver: s("tg3"),
                pci_address: s("0000:04:00.0"),
                speed_mbps: None,
                ..Default::default()
            },
            Interface {
                name: "ens3f0".into(),
                mac_address: "3c:fd:fe:a1:b2:c0".into(),
                has_carrier: true,
                vendor: s("0x8086"),
                product: s("0x1572"),
                driver: s("i40e"),
                pci_address: s("0000:31:00.0"),
                speed_mbps: Some(10_000),
                ..Default::default()
            },
        ]
    );

    assert_eq!(inv.cpu.model_name.as_deref(), Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"));
    assert_eq!(inv.cpu.frequency.as_deref(), Some("3200.0000"), "lscpu's CPU max MHz from cpufreq");
    assert_eq!((inv.cpu.count, inv.cpu.socket_count), (8, 2));
    assert_eq!(inv.cpu.flags.len(), 149);
    assert!(inv.cpu.flags.iter().any(|f| f == "avx512f"));
    assert_eq!(inv.memory.total, 65_452_388 * 1024);
    assert_eq!(inv.memory.physical_mb, 64 * 1024, "32 online 2 GiB memory blocks around the PCI hole");
    assert_eq!(
        inv.system_vendor,
        SystemVendor {
            product_name: s("PowerEdge R650"),
            serial_number: s("7XK2FH3"),
            manufacturer: s("Dell Inc."),
            firmware: Firmware { vendor: s("Dell Inc."), version: s("1.10.2"), build_date: s("03/14/2023") },
        }
    );
    assert_eq!(inv.boot.current_boot_mode, "uefi");
    assert_eq!(inv.boot.secure_boot, Some(true));
    assert_eq!(inv.boot.pxe_interface, None);
    assert_eq!(inv.hostname.as_deref(), Some("node-r650-07"));
}
