//! The walking skeleton's acceptance test: a blank UEFI VM network-boots Ferric's ramdisk from the real
//! controller, the agent writes a whole-disk image to the VM's disk and reboots, and the VM boots it.
//!
//! Needs the workspace binaries: `cargo build --release --workspace --bins` (scripts/test.sh does it),
//! then `cargo test --release -p ferric-tests --test e2e_deploy -- --test-threads=1`.
//! The run's files (controller log, serial log, disk) stay in target/<profile>/ferric-tests/runs/<case>.

use std::time::Duration;

use ferric_tests::disk;
use ferric_tests::ramdisk::shared_ramdisk;
use ferric_tests::scenario::{Budget, DeployEnv};
use ferric_tests::vm::qemu_lock;
use ferric_tests::{init_logging, ok};
use sha2::{Digest, Sha256};

/// TCG is slow: a whole case (ramdisk boot, deploy, reboot into the test OS) must fit in this.
const CASE_BUDGET: Duration = Duration::from_secs(15 * 60);

#[test]
fn deploys_whole_disk_image_and_boots_it() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let env = ok(DeployEnv::prepare("e2e-deploy", shared_ramdisk(), "52:54:00:fe:00:01", &budget));

    let mut started = ok(env.start_deploy(&env.image.sha256));
    let outcome = ok(env.wait_deployed_and_booted(&mut started, &budget));
    println!("TIMING deploy_request_to_active_seconds={:.1}", outcome.to_active.as_secs_f64());
    println!("TIMING deploy_request_to_marker_seconds={:.1}", outcome.to_marker.as_secs_f64());
    println!("TIMING deploy_request_to_poweroff_seconds={:.1}", outcome.to_poweroff.as_secs_f64());
    if let Some(speed) = outcome.agent_write_mib_per_second() {
        println!("TIMING agent_write_mib_per_second={speed:.1}");
    }

    assert_eq!(outcome.node["provision_state"], "active");
    let fetched = env.image_server.served().iter().filter(|r| r.path == "/testos.img" && r.status == 200).count();
    assert!(fetched >= 1, "the agent never fetched the image: {:?}", env.image_server.served());
    // QEMU has exited, so every byte the guest wrote is in the file.
    ok(env.check_disk_holds_image());
}

#[test]
fn wrong_checksum_fails_deploy_and_leaves_nothing_bootable() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let env = ok(DeployEnv::prepare("e2e-bad-checksum", shared_ramdisk(), "52:54:00:fe:00:02", &budget));

    let wrong_checksum = hex::encode(Sha256::digest(b"not the test OS image"));
    assert_ne!(wrong_checksum, env.image.sha256);
    let mut started = ok(env.start_deploy(&wrong_checksum));
    let node = ok(env.wait_for_state(&started, &["deploy failed"], &["active"], &budget));
    println!(
        "TIMING bad_checksum_request_to_deploy_failed_seconds={:.1}",
        started.requested_at.elapsed().as_secs_f64()
    );

    let last_error = node["last_error"].as_str().unwrap_or_default();
    assert!(last_error.to_lowercase().contains("checksum"), "last_error does not mention the checksum: {last_error:?}");
    ok(started.vm.kill());
    assert!(!started.vm.serial_log().contains(&env.image.marker()), "the rejected image booted");

    let found = ok(disk::boot_structures(&env.disk));
    assert!(!found.primary_gpt, "primary GPT header left on the disk");
    assert!(!found.mbr_signature, "MBR boot signature left on the disk");
    assert!(!found.backup_gpt, "backup GPT header left at the disk's last sector");
    let dirty = ok(disk::first_nonzero(&env.disk, 0, 1024 * 1024));
    assert_eq!(dirty, None, "the disk's first MiB is not all zeros");
}
