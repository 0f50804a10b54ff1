//! A deploy driven only through IPMI: OpenIPMI's `ipmi_sim` is the node's BMC, and its chassis program
//! starts and stops a UEFI QEMU VM, network-booting it or booting its disk as the BMC's boot device says.
//! The controller sets PXE and powers the node on, the agent writes the image, the controller sets the
//! disk for good and power-cycles the node, and the deployed OS prints its marker and powers off, which
//! the power state sync records.
//!
//! Needs the workspace binaries: `cargo build --release --workspace --bins` (scripts/test.sh does it),
//! then `cargo test --release -p ferric-tests --test e2e_ipmi -- --test-threads=1`.

use std::sync::OnceLock;
use std::time::Duration;

use ferric_tests::ipmi_sim::{ChassisVm, IpmiSim};
use ferric_tests::ramdisk::{build_ramdisk, RamdiskPaths};
use ferric_tests::scenario::{Budget, DeploySetup};
use ferric_tests::vm::qemu_lock;
use ferric_tests::{init_logging, paths};
use serde_json::{json, Value};

/// TCG is slow: the whole case (ramdisk boot, deploy, power cycle, the test OS) must fit in this.
const CASE_BUDGET: Duration = Duration::from_secs(15 * 60);
const MAC: &str = "52:54:00:fe:00:04";
/// A fast power state sync, so the OS powering itself off shows on the node within seconds.
const CONTROLLER_FLAGS: &[&str] = &["--power-sync-interval", "2", "--bmc-min-command-interval-ms", "200"];

fn ramdisk() -> &'static RamdiskPaths {
    static RAMDISK: OnceLock<RamdiskPaths> = OnceLock::new();
    RAMDISK.get_or_init(|| {
        let out_dir = paths::scratch_dir().expect("scratch dir").join("ramdisk");
        build_ramdisk(&out_dir).unwrap_or_else(|e| panic!("building the ramdisk failed: {:#}", anyhow::Error::new(e)))
    })
}

fn ok<T, E: std::error::Error + Send + Sync + 'static>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{:#}", anyhow::Error::new(e)))
}

/// Position of the first chassis setting equal to `wanted` at or after `from`.
fn position(settings: &[String], from: usize, wanted: &str) -> Option<usize> {
    settings.iter().skip(from).position(|setting| setting == wanted).map(|index| index + from)
}

#[test]
fn deploys_through_ipmi_from_power_on_to_the_deployed_os() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let setup = ok(DeploySetup::new("e2e-ipmi", ramdisk(), MAC, CONTROLLER_FLAGS));
    let chassis = ok(ChassisVm::uefi(&setup.vm_spec()));
    let bmc = ok(IpmiSim::start(&setup.work_dir.join("bmc"), Some(chassis)));
    let env = ok(setup.enroll(json!({"driver": "ipmi", "driver_info": Value::Object(bmc.driver_info())}), &budget));
    let verified = ok(env.client.node(&env.node));
    assert_eq!(verified["power_state"], "power off", "verification reads the power state: {verified}");
    assert!(bmc.vm_pid().is_none());

    let (requested, _) = ok(env.request_deploy(&env.image.sha256));
    let remaining = ok(budget.remaining("the deploy"));
    let active = env.client.wait_for_provision_state(&env.node, &["active"], &["deploy failed", "error"], remaining);
    let active = active.unwrap_or_else(|error| {
        panic!(
            "{error}\n--- chassis ---\n{:?}\n--- serial ---\n{}\n--- controller ---\n{}",
            bmc.chassis_log(),
            bmc.serial_log().unwrap_or_default(),
            env.controller.log_tail()
        )
    });
    let to_active = requested.elapsed();
    ok(bmc.wait_for_serial(&env.image.marker(), ok(budget.remaining("the test OS marker"))));
    let to_marker = requested.elapsed();
    println!("TIMING ipmi_deploy_request_to_active_seconds={:.1}", to_active.as_secs_f64());
    println!("TIMING ipmi_deploy_request_to_marker_seconds={:.1}", to_marker.as_secs_f64());
    assert_eq!(active["power_state"], "power on", "{active}");

    // The test OS powers the VM off; the power state sync records that change, made out of band.
    let off = env.client.wait_for_node(&env.node, "seen powered off", Duration::from_secs(90), |node| {
        node["power_state"] == "power off"
    });
    let off = ok(off);
    assert_eq!(off["provision_state"], "active", "{off}");
    assert!(bmc.vm_pid().is_none(), "the VM still runs");
    let history = ok(env.client.history(&env.node));
    let events: Vec<&str> = history["history"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(events.contains(&"Power state changed out of band: power on -> power off"), "{events:#?}");

    // What the BMC was told, in order: network boot, power on; then the disk, power off and on again.
    let settings = bmc.chassis_settings();
    let pxe = position(&settings, 0, "set boot pxe").unwrap_or_else(|| panic!("no PXE boot: {settings:?}"));
    let first_on = position(&settings, pxe, "set power 1").unwrap_or_else(|| panic!("no power on: {settings:?}"));
    let disk = position(&settings, first_on, "set boot default").unwrap_or_else(|| panic!("no disk: {settings:?}"));
    let cycle_off = position(&settings, disk, "set power 0").unwrap_or_else(|| panic!("no power off: {settings:?}"));
    assert!(position(&settings, cycle_off, "set power 1").is_some(), "no power on after the disk: {settings:?}");

    // QEMU has exited, so every byte the guest wrote is in the file.
    ok(env.check_disk_holds_image());
}
