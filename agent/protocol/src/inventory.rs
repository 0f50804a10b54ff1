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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac_address: String,
    #[serde(default)]
    pub ipv4_address: Option<String>,
    pub has_carrier: bool,
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
}
