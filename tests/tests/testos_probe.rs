//! Proves the test OS's config drive probe on its own, without a deploy: the probe variant, booted by UEFI
//! firmware from a disk whose last partition holds a `config-2` ISO made with genisoimage, prints the value
//! of that ISO's `meta_data.json` and powers off. The end-to-end config drive test relies on it.
//!
//! It boots the ramdisk's kernel, so it needs the workspace binaries like the end-to-end tests:
//! `cargo build --release --workspace --bins` (scripts/test.sh does it).

use std::time::Duration;

use ferric_tests::images;
use ferric_tests::ramdisk::shared_ramdisk;
use ferric_tests::testos::{self, TestOsOptions, CONFIG_DRIVE_PROBE_KEY};
use ferric_tests::vm::{qemu_lock, Firmware, Vm, VmDisk, VmSpec};
use ferric_tests::{init_logging, ok};
use serde_json::json;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn probe_test_os_prints_the_value_from_a_config_drive_partition() {
    init_logging();
    let _qemu = qemu_lock();
    let work = tempfile::tempdir().unwrap();
    let ramdisk = shared_ramdisk();
    let token = format!("probe-os-{}", uuid::Uuid::new_v4().simple());
    let options = TestOsOptions { config_drive_probe: Some(ramdisk.kernel_package.clone()) };
    let image = ok(testos::build_with(&work.path().join("testos"), &ramdisk.vmlinuz, &token, &options));

    // The disk as a deploy leaves it: the whole-disk image, then a config-2 partition at the end.
    let disk = work.path().join("disk.img");
    std::fs::copy(&image.path, &disk).unwrap();
    let probe = format!("value-{}", uuid::Uuid::new_v4().simple());
    let meta_data = json!({"uuid": "5f1d4a3e-0000-4000-8000-000000000001", "meta": {CONFIG_DRIVE_PROBE_KEY: probe}});
    let iso = ok(images::config_drive_iso(&meta_data, Some("#cloud-config\n"), &work.path().join("config-2.iso")));
    let partition = ok(images::append_partition(&disk, &iso.path, "config-2", "0700"));
    assert_eq!(partition.number, 2, "{partition:?}");

    let mut vm = ok(Vm::start(VmSpec {
        name: "testos-probe".into(),
        work_dir: work.path().join("vm"),
        firmware: Firmware::Uefi,
        memory_mib: 512,
        network_boot: None,
        disks: vec![VmDisk::virtio(&disk)],
        ipmi_bmc_port: None,
    }));
    let marker_at = ok(vm.wait_for_serial(&image.marker(), BOOT_TIMEOUT));
    let probed_at = ok(vm.wait_for_serial(&testos::config_drive_line(&probe), POWEROFF_TIMEOUT));
    let exited_at = ok(vm.wait_exit(POWEROFF_TIMEOUT));
    println!("TIMING testos_probe_marker_seconds={:.1}", marker_at.as_secs_f64());
    println!("TIMING testos_probe_config_drive_seconds={:.1}", probed_at.as_secs_f64());
    println!("TIMING testos_probe_exit_seconds={:.1}", exited_at.as_secs_f64());

    // Exactly the value in this ISO, read from the partition (not the whole disk), and nothing missing.
    let serial = vm.serial_log();
    let reports = testos::config_drive_reports(&serial);
    assert!(!reports.is_empty() && reports.iter().all(|value| *value == probe), "{reports:?}");
    assert!(serial.contains("config drive on /dev/vda2"), "{}", vm.serial_tail(20));
}
