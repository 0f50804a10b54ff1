//! The controller drives real BMC emulators through its Ironic-compatible API (and python-ironicclient's
//! `baremetal` CLI), with a simulated agent standing in for the ramdisk: verification, power actions and
//! their late effects, boot devices, the power state sync noticing out-of-band changes, deploy and
//! undeploy through the BMC, and a BMC that stops answering.
//!
//! Run: `cargo build -p ferric-controller && cargo test -p ferric-tests --test bmc_api -- --test-threads=1`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferric_controller::bmc::PowerState;
use ferric_tests::baremetal::Baremetal;
use ferric_tests::controller::{ApiClient, Controller};
use ferric_tests::paths;
use ferric_tests::sim_agent::SimulatedAgent;
use ferric_tests::sushy::{FakeSystem, SushyEmulator, SushyOptions};
use serde_json::{json, Value};

const IMAGE_SOURCE: &str = "http://127.0.0.1:9/testos.img";
const IMAGE_CHECKSUM: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// sushy applies power changes up to 11 s late; the controller's own wait is bounded by its `--power-timeout`.
const POWER_WAIT: Duration = Duration::from_secs(40);
/// The whole test, every wait included.
const TEST_BUDGET: Duration = Duration::from_secs(240);
/// Controller flags: a fast power sync, and BMC calls bounded tighter than the defaults.
const CONTROLLER_FLAGS: &[&str] = &[
    "--power-sync-interval",
    "1",
    "--power-sync-max-failures",
    "2",
    "--power-timeout",
    "30",
    "--bmc-command-timeout",
    "4",
    "--bmc-min-command-interval-ms",
    "100",
];

fn work_dir(test: &str) -> PathBuf {
    let dir = paths::scratch_dir().expect("scratch dir").join("bmc_api").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_controller(work: &std::path::Path) -> (Controller, ApiClient) {
    let ramdisk_dir = work.join("ramdisk");
    std::fs::create_dir_all(&ramdisk_dir).unwrap();
    let controller = Controller::start_with(&work.join("controller"), &ramdisk_dir, CONTROLLER_FLAGS)
        .unwrap_or_else(|error| panic!("{error}"));
    let client = controller.client().unwrap();
    (controller, client)
}

/// The node's history events, oldest first.
fn events(client: &ApiClient, node: &str) -> Vec<String> {
    let history = client.history(node).unwrap();
    history["history"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str().map(str::to_owned)).collect()
}

fn wait(client: &ApiClient, node: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    client.wait_for_node(node, what, POWER_WAIT, done).unwrap_or_else(|error| panic!("{error}"))
}

fn idle(node: &Value) -> bool {
    node["reservation"].is_null() && node["target_power_state"].is_null()
}

/// Posts a ComputerSystem.Reset to the emulator directly, as someone at the BMC would.
fn reset_out_of_band(emulator: &SushyEmulator, system_id: &str, reset_type: &str) {
    let url = format!("{}{}/Actions/ComputerSystem.Reset", emulator.base_url(), SushyEmulator::system_path(system_id));
    let response = reqwest::blocking::Client::new().post(url).json(&json!({"ResetType": reset_type})).send().unwrap();
    assert!(response.status().is_success(), "reset refused: {}", response.text().unwrap());
}

#[test]
fn redfish_node_through_the_api_power_boot_device_sync_deploy_and_a_silent_bmc() {
    ferric_tests::init_logging();
    let started = Instant::now();
    let work = work_dir("redfish");
    let system = FakeSystem::new("node-0", PowerState::Off);
    let mac = system.nics[0].mac.clone();
    let emulator = SushyEmulator::start(&work.join("sushy"), &[system], &SushyOptions::default())
        .unwrap_or_else(|error| panic!("{error}"));
    let system_id = emulator.system_ids()[0].clone();
    let (controller, client) = start_controller(&work);
    let cli = Baremetal::new(controller.base_url());

    let node = client
        .create_node_from(json!({
            "name": "redfish-0", "driver": "redfish", "boot_mode": "uefi",
            "driver_info": Value::Object(emulator.driver_info(&system_id)),
            // No ramdisk boots here to run clean steps (the controller's own tests cover cleaning).
            "automated_clean": false,
        }))
        .unwrap();
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    client.create_port(&mac, &uuid).unwrap();

    let validation = cli.json(&["node", "validate", &uuid]);
    let power = validation.as_array().unwrap().iter().find(|row| row["Interface"] == "power").expect("power row");
    assert_eq!(power["Result"], true, "{validation}");

    // Verification reads the power state through the BMC.
    client.set_provision_state(&uuid, "manage").unwrap();
    let managed = wait(&client, &uuid, "manageable", |n| n["provision_state"] == "manageable" && idle(n));
    assert_eq!(managed["power_state"], "power off", "{managed}");

    // A power action returns at once; the node shows its target until the late change holds.
    cli.run(&["node", "power", "on", &uuid]);
    let powering = client.node(&uuid).unwrap();
    assert!(powering["target_power_state"] == "power on" || powering["power_state"] == "power on", "{powering}");
    let on = wait(&client, &uuid, "powered on", |n| n["power_state"] == "power on" && idle(n));
    assert!(on["last_error"].is_null(), "{on}");

    cli.run(&["node", "boot", "device", "set", &uuid, "pxe", "--persistent"]);
    let shown = cli.json(&["node", "boot", "device", "show", &uuid]);
    assert_eq!(shown["boot_device"], "pxe", "{shown}");
    let supported = cli.json(&["node", "boot", "device", "show", &uuid, "--supported"]);
    assert!(supported["supported_boot_devices"].to_string().contains("disk"), "{supported}");

    // Someone powers the node off at the BMC: the power sync records it with an event.
    reset_out_of_band(&emulator, &system_id, "ForceOff");
    wait(&client, &uuid, "seen off by the sync", |n| n["power_state"] == "power off");
    assert!(
        events(&client, &uuid).iter().any(|e| e == "Power state changed out of band: power on -> power off"),
        "{:?}",
        events(&client, &uuid)
    );

    // Deploy through the BMC: network boot once + power on, the agent writes, disk for good + reboot.
    client.set_provision_state(&uuid, "provide").unwrap();
    wait(&client, &uuid, "available", |n| n["provision_state"] == "available" && idle(n));
    client.set_image(&uuid, IMAGE_SOURCE, IMAGE_CHECKSUM).unwrap();
    let agent = SimulatedAgent::start(&controller.base_url(), &mac);
    client.set_provision_state(&uuid, "active").unwrap();
    let active = wait(&client, &uuid, "active", |n| n["provision_state"] == "active" && idle(n));
    let tasks = agent.finish();
    let names: Vec<&str> = tasks.iter().map(|task| task.command.name()).collect();
    assert_eq!(names, ["write_image"], "the BMC, not the agent, reboots the node");
    assert_eq!(active["power_state"], "power on", "{active}");
    let boot_device = cli.json(&["node", "boot", "device", "show", &uuid]);
    assert_eq!(boot_device["boot_device"], "disk", "{boot_device}");
    let history = events(&client, &uuid).join("\n");
    let pxe = history.find("setting the boot device to pxe (next boot only)").expect(&history);
    let disk = history.find("setting the boot device to disk (persistent)").expect(&history);
    assert!(pxe < disk, "{history}");

    // Undeploy powers the node off before it is available again.
    client.set_provision_state(&uuid, "deleted").unwrap();
    let available = wait(&client, &uuid, "available", |n| n["provision_state"] == "available" && idle(n));
    assert_eq!(available["power_state"], "power off", "{available}");

    // The BMC stops answering: the action fails on the node with the reason, and the node is not locked.
    emulator.freeze().unwrap();
    client.set_power_state(&uuid, "power on").unwrap();
    let failed = wait(&client, &uuid, "failed power on", |n| !n["last_error"].is_null() && idle(n));
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("Power action \"power on\" failed"), "{error}");
    assert!(error.contains(emulator.base_url()), "{error}");
    // The sync fails too, twice in a row: maintenance with the power failure fault.
    let broken = wait(&client, &uuid, "in maintenance", |n| n["maintenance"] == true);
    assert_eq!(broken["fault"], "power failure", "{broken}");
    assert!(broken["maintenance_reason"].as_str().unwrap().contains("did not answer"), "{broken}");
    // Back: the first answer clears the maintenance.
    emulator.thaw().unwrap();
    let back = wait(&client, &uuid, "out of maintenance", |n| n["maintenance"] == false);
    assert!(back["fault"].is_null(), "{back}");
    assert_eq!(back["power_state"], "power off", "{back}");

    assert!(started.elapsed() < TEST_BUDGET, "took {:?}", started.elapsed());
}
