//! The Ferric agent: runs in the ramdisk, pulls its work from the controller through
//! heartbeats, inventories the hardware, picks the root disk and streams images onto it.

pub mod agent;
pub mod bootloader;
pub mod checksum;
pub mod clean;
pub mod client;
pub mod configdrive;
pub mod deploy;
pub mod disklabel;
pub mod download;
pub mod efi;
pub mod image;
pub mod inventory;
pub mod iso9660;
pub mod logtail;
pub mod partition;
pub mod progress;
pub mod qcow2;
pub mod root_disk;
pub mod target;
#[cfg(test)]
mod test_support;

/// Present only in the Ferric ramdisk (written by image-builder). Power actions and disk
/// auto-selection require it, so running the agent on a workstation cannot reboot or wipe it.
pub const RAMDISK_MARKER: &str = "/etc/ferric/build.json";

pub fn in_ramdisk() -> bool {
    std::path::Path::new(RAMDISK_MARKER).exists()
}
