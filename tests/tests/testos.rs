//! Proves the deployable test OS on its own: booted directly from a virtio disk by UEFI firmware, it prints
//! its marker on the serial console and powers the VM off. The end-to-end deploy test relies on both.
//!
//! It boots the ramdisk's kernel, so it needs the workspace binaries like the end-to-end tests:
//! `cargo build --release --workspace --bins` (scripts/test.sh does it).

use std::time::Duration;

use ferric_tests::ramdisk::build_ramdisk;
use ferric_tests::vm::{qemu_lock, Firmware, Vm, VmDisk, VmSpec};
use ferric_tests::{disk, init_logging, paths, testos};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn test_os_boots_from_disk_prints_its_marker_and_powers_off() {
    init_logging();
    let _qemu = qemu_lock();
    let work = tempfile::tempdir().unwrap();
    let ramdisk = build_ramdisk(&paths::scratch_dir().unwrap().join("ramdisk"))
        .unwrap_or_else(|e| panic!("building the ramdisk failed: {:#}", anyhow::Error::new(e)));
    let token = format!("direct-{}", uuid::Uuid::new_v4().simple());
    let image = testos::build(&work.path().join("testos"), &ramdisk.vmlinuz, &token).unwrap();

    assert_eq!(image.size_bytes, std::fs::metadata(&image.path).unwrap().len());
    assert_eq!(image.sha256.len(), 64);
    // sgdisk wrote a protective MBR and both GPT headers; the bad-checksum e2e case checks their absence.
    let found = disk::boot_structures(&image.path).unwrap();
    assert!(found.primary_gpt && found.mbr_signature && found.backup_gpt, "{found:?}");

    let image_before = std::fs::read(&image.path).unwrap();
    let mut vm = Vm::start(VmSpec {
        name: "testos-direct".into(),
        work_dir: work.path().join("vm"),
        firmware: Firmware::Uefi,
        memory_mib: 512,
        network_boot: None,
        disks: vec![VmDisk::virtio(&image.path)],
        ipmi_bmc_port: None,
    })
    .unwrap();
    let marker_at = vm.wait_for_serial(&image.marker(), BOOT_TIMEOUT).unwrap();
    let exited_at = vm.wait_exit(POWEROFF_TIMEOUT).unwrap();
    println!("TIMING testos_direct_boot_marker_seconds={:.1}", marker_at.as_secs_f64());
    println!("TIMING testos_direct_boot_exit_seconds={:.1}", exited_at.as_secs_f64());

    // Only this image's token may appear: a stale image would print another one.
    let serial = vm.serial_log();
    let markers: Vec<&str> = serial.lines().filter(|l| l.contains(testos::MARKER_PREFIX)).collect();
    assert!(!markers.is_empty() && markers.iter().all(|l| l.trim_end().ends_with(&token)), "{markers:?}");
    // The test OS only reads its disk, so the image is unchanged and can be compared after a deploy.
    assert!(std::fs::read(&image.path).unwrap() == image_before, "booting modified the test OS image");
}
