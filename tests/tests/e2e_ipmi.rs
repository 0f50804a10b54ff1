//! Nodes driven only through IPMI: OpenIPMI's `ipmi_sim` is the node's BMC, and its chassis program
//! starts and stops a QEMU VM, network-booting it or booting its disk as the BMC's boot device says.
//!
//! A deploy (UEFI): the controller sets PXE and powers the node on, the agent writes the image, the
//! controller sets the disk for good and power-cycles the node, and the deployed OS prints its marker and
//! powers off, which the power state sync records.
//!
//! An inspection (legacy BIOS, SeaBIOS): the controller sets PXE and powers the node on, iPXE runs the
//! controller's BIOS script, the agent in the ramdisk sends its inventory and powers the node off.
//!
//! Needs the workspace binaries: `cargo build --release --workspace --bins` (scripts/test.sh does it),
//! then `cargo test --release -p ferric-tests --test e2e_ipmi -- --test-threads=1`.

use std::time::{Duration, Instant};

use ferric_runner::tail_lines;
use ferric_tests::ipmi_sim::{ChassisVm, IpmiSim};
use ferric_tests::ramdisk::shared_ramdisk;
use ferric_tests::scenario::{Budget, DeploySetup, DISK_BYTES, IPMI_CONTROLLER_FLAGS, VM_MEMORY_MIB};
use ferric_tests::vm::{qemu_lock, Firmware, VmSpec, SERIAL_TAIL_LINES};
use ferric_tests::{init_logging, ok};
use reqwest::Method;
use serde_json::{json, Value};

/// TCG is slow: the whole case (ramdisk boot, deploy, power cycle, the test OS) must fit in this.
const CASE_BUDGET: Duration = Duration::from_secs(15 * 60);
const MAC: &str = "52:54:00:fe:00:04";
/// Booting the ramdisk and reporting takes far less than a deploy.
const INSPECT_CASE_BUDGET: Duration = Duration::from_secs(10 * 60);
const BIOS_MAC: &str = "52:54:00:fe:00:14";
/// From the inventory to the power state sync seeing the VM off: the agent powers off at once.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(90);
const GIB: u64 = 1 << 30;

/// Position of the first chassis setting equal to `wanted` at or after `from`.
fn position(settings: &[String], from: usize, wanted: &str) -> Option<usize> {
    settings.iter().skip(from).position(|setting| setting == wanted).map(|index| index + from)
}

#[test]
fn deploys_through_ipmi_from_power_on_to_the_deployed_os() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(CASE_BUDGET);
    let setup = ok(DeploySetup::new("e2e-ipmi", shared_ramdisk(), MAC, IPMI_CONTROLLER_FLAGS));
    let chassis = ok(ChassisVm::new(&setup.vm_spec()));
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

#[test]
fn inspects_a_bios_node_through_ipmi() {
    init_logging();
    let _qemu = qemu_lock();
    let budget = Budget::new(INSPECT_CASE_BUDGET);
    let setup = ok(DeploySetup::new("e2e-ipmi-bios", shared_ramdisk(), BIOS_MAC, IPMI_CONTROLLER_FLAGS));
    let spec = VmSpec { firmware: Firmware::Bios, ..setup.vm_spec() };
    let bmc = ok(IpmiSim::start(&setup.work_dir.join("bmc"), Some(ok(ChassisVm::new(&spec)))));
    let fields = json!({"driver": "ipmi", "boot_mode": "bios", "driver_info": Value::Object(bmc.driver_info())});
    let env = ok(setup.enroll(fields, &budget));
    ok(env.client.set_provision_state(&env.node, "manage"));
    ok(env.client.wait_for_provision_state(&env.node, &["manageable"], &[], ok(budget.remaining("manage"))));
    assert!(bmc.vm_pid().is_none(), "the VM runs before the inspection");
    let diagnostics = || {
        format!(
            "--- chassis ---\n{:?}\n--- serial ---\n{}\n--- controller ---\n{}",
            bmc.chassis_log(),
            tail_lines(&bmc.serial_log().unwrap_or_default(), SERIAL_TAIL_LINES),
            env.controller.log_tail()
        )
    };

    let requested = Instant::now();
    ok(env.client.set_provision_state(&env.node, "inspect"));
    let remaining = ok(budget.remaining("the inspection"));
    let inspected = env.client.wait_for_provision_state(&env.node, &["manageable"], &["inspect failed"], remaining);
    let inspected = inspected.unwrap_or_else(|error| panic!("{error}\n{}", diagnostics()));
    let to_manageable = requested.elapsed();
    println!("TIMING ipmi_bios_inspect_request_to_manageable_seconds={:.1}", to_manageable.as_secs_f64());
    assert!(inspected["inspection_finished_at"].is_string(), "{inspected}");

    let properties = &inspected["properties"];
    assert_eq!(properties["cpu_arch"], "x86_64", "{properties}");
    assert!(properties["cpus"].as_u64().is_some_and(|cpus| cpus >= 1), "{properties}");
    let memory_mb = properties["memory_mb"].as_u64().unwrap_or_else(|| panic!("no memory_mb in {properties}"));
    assert!(
        memory_mb > u64::from(VM_MEMORY_MIB) * 3 / 4 && memory_mb <= u64::from(VM_MEMORY_MIB),
        "memory_mb {memory_mb} for a VM of {VM_MEMORY_MIB} MiB"
    );
    assert_eq!(properties["local_gb"], DISK_BYTES / GIB - 1, "{properties}");
    let stored = ok(env.client.send_json(Method::GET, &format!("/v1/nodes/{}/inventory", env.node), None));
    let inventory = &stored["inventory"];
    assert_eq!(inventory["boot"]["current_boot_mode"], "bios", "{}", inventory["boot"]);
    let macs: Vec<&str> =
        inventory["interfaces"].as_array().unwrap().iter().filter_map(|i| i["mac_address"].as_str()).collect();
    assert!(macs.contains(&BIOS_MAC), "the VM's MAC is not among {macs:?}");

    // The BMC was told: network boot, then power on.
    let settings = bmc.chassis_settings();
    let pxe = position(&settings, 0, "set boot pxe").unwrap_or_else(|| panic!("no PXE boot: {settings:?}"));
    assert!(position(&settings, pxe, "set power 1").is_some(), "no power on after PXE: {settings:?}");

    // SeaBIOS ran iPXE, iPXE ran the controller's BIOS script for this node, whose kernel line names no
    // initrd (only an EFI-stub kernel needs that), and the ramdisk saw a BIOS machine.
    let serial = bmc.serial_log().unwrap_or_default();
    let expect = |found: bool, what: &str| assert!(found, "{what}\n{}", diagnostics());
    expect(serial.contains("SeaBIOS"), "SeaBIOS is not on the serial console");
    // SeaBIOS's serial console wraps lines at 80 columns: read the firmware's output without line breaks.
    let firmware_output: String = serial[..serial.find("Linux version").unwrap_or(serial.len())]
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    let announced = |state: &str| {
        firmware_output.contains(&format!("Ferric: node {} is {state}: booting the ramdisk (bios)", env.node))
    };
    // The script names the state the node was in when iPXE fetched it: the controller records the wait
    // once the BMC has powered the node on, usually long before iPXE asks.
    expect(
        announced("inspect wait") || announced("inspecting"),
        "iPXE did not run the controller's BIOS ramdisk script",
    );
    let command_line = serial.lines().find(|line| line.contains("Command line: ")).unwrap_or_else(|| {
        panic!("the kernel printed no command line\n{}", diagnostics());
    });
    assert!(command_line.contains(&format!("BOOTIF=01-{}", BIOS_MAC.replace(':', "-"))), "{command_line}");
    assert!(!command_line.contains("initrd="), "{command_line}");
    expect(serial.contains("ferric-init: starting"), "ferric-init did not start");
    expect(!serial.contains("ferric-init: loaded efivarfs"), "the ramdisk loaded efivarfs on a BIOS machine");
    expect(serial.contains("found my node"), "the agent did not find its node");

    // The agent powers the VM off; the power state sync records that change, made out of band.
    let off = env
        .client
        .wait_for_node(&env.node, "seen powered off", POWEROFF_TIMEOUT, |node| node["power_state"] == "power off");
    let off = off.unwrap_or_else(|error| panic!("{error}\n{}", diagnostics()));
    println!("TIMING ipmi_bios_inspect_request_to_power_off_seconds={:.1}", requested.elapsed().as_secs_f64());
    assert_eq!(off["provision_state"], "manageable", "{off}");
    assert!(bmc.vm_pid().is_none(), "the VM still runs");
    let history = ok(env.client.history(&env.node));
    let events: Vec<&str> = history["history"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(events.contains(&"Power state changed out of band: power on -> power off"), "{events:#?}");
}
