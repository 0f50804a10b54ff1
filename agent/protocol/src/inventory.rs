//! Hardware inventory with IPA's field names (`hardware.py::list_hardware_info`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    pub interfaces: Vec<Interface>,
    pub cpu: Cpu,
    pub disks: Vec<Disk>,
    pub memory: Memory,
    pub boot: Boot,
    #[serde(default)]
    pub hostname: Option<String>,
    /// IPv4 address of the BMC, from the node's in-band IPMI device; `None` without one.
    #[serde(default)]
    pub bmc_address: Option<String>,
    #[serde(default)]
    pub bmc_v6address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_mac: Option<String>,
    /// From DMI (`/sys/class/dmi/id`).
    #[serde(default)]
    pub system_vendor: SystemVendor,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac_address: String,
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub ipv6_address: Option<String>,
    pub has_carrier: bool,
    /// LLDP TLVs heard on the interface: `[type, value as hex]` pairs, IPA's shape.
    #[serde(default)]
    pub lldp: Option<Vec<(u8, String)>>,
    /// PCI vendor and device IDs, e.g. `0x1af4`.
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub biosdevname: Option<String>,
    #[serde(default)]
    pub speed_mbps: Option<u64>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub pci_address: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    pub model_name: Option<String>,
    /// MHz, as a string (IPA's type).
    pub frequency: Option<String>,
    pub count: u32,
    pub architecture: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub socket_count: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Disk {
    /// Device path, e.g. `/dev/vda`.
    pub name: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    /// Bytes.
    pub size: u64,
    pub rotational: bool,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub wwn: Option<String>,
    #[serde(default)]
    pub wwn_with_extension: Option<String>,
    #[serde(default)]
    pub wwn_vendor_extension: Option<String>,
    /// SCSI address `host:channel:target:lun`, for SCSI, SATA and SAS disks.
    #[serde(default)]
    pub hctl: Option<String>,
    /// Stable path, e.g. `/dev/disk/by-path/pci-0000:00:04.0`.
    #[serde(default)]
    pub by_path: Option<String>,
    /// Logical sector size in bytes.
    #[serde(default)]
    pub logical_sectors: Option<u64>,
    /// Physical sector size in bytes.
    #[serde(default)]
    pub physical_sectors: Option<u64>,
    /// Transport, as lsblk's TRAN: `sata`, `sas`, `nvme`, `virtio`, `usb`, ...
    #[serde(default)]
    pub tran: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Bytes.
    pub total: u64,
    pub physical_mb: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Boot {
    /// `uefi` or `bios`.
    pub current_boot_mode: String,
    /// MAC of the interface the node PXE-booted from (`BOOTIF`).
    #[serde(default)]
    pub pxe_interface: Option<String>,
    /// UEFI Secure Boot is on (the `SecureBoot` EFI variable); `None` under BIOS or when unreadable.
    #[serde(default)]
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SystemVendor {
    #[serde(default)]
    pub product_name: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub firmware: Firmware,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Firmware {
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub build_date: Option<String>,
}
