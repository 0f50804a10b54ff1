//! The real `baremetal` CLI (python-ironicclient, installed into `.venv` by `scripts/setup.sh`) drives the
//! real controller through a node's whole life, unchanged and without Keystone, while a simulated agent
//! speaking the agent protocol makes the deploy complete.

use std::time::{Duration, Instant};

use ferric_runner::CommandError;
use ferric_tests::baremetal::Baremetal;
use ferric_tests::controller::Controller;
use ferric_tests::sim_agent::SimulatedAgent;
use serde_json::Value;

const MAC: &str = "52:54:00:c1:10:01";
const NODE_NAME: &str = "cli-node";
const IMAGE_SOURCE: &str = "http://127.0.0.1:9/testos.img";
const IMAGE_CHECKSUM: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// The whole test; the client polls a deploy every 10 s, so one deploy takes 10-20 s.
const TEST_BUDGET: Duration = Duration::from_secs(120);
const WAIT_SECS: &str = "60";

fn power_state(cli: &Baremetal, node: &str) -> Value {
    cli.node(node)["power_state"].clone()
}

#[test]
fn the_baremetal_cli_drives_a_node_through_its_life() {
    ferric_tests::init_logging();
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let ramdisk_dir = work.path().join("ramdisk");
    std::fs::create_dir_all(&ramdisk_dir).unwrap();
    let controller = Controller::start(&work.path().join("controller"), &ramdisk_dir).unwrap();
    let cli = Baremetal::new(controller.base_url());

    let created = cli.json(&["node", "create", "--driver", "fake-hardware", "--name", NODE_NAME]);
    let uuid = created["uuid"].as_str().expect("node create prints the uuid").to_owned();
    assert_eq!(created["name"], NODE_NAME);
    assert_eq!(created["provision_state"], "enroll", "{created}");

    let port = cli.json(&["port", "create", MAC, "--node", &uuid]);
    assert_eq!(port["address"], MAC);
    assert_eq!(port["node_uuid"], uuid.as_str());

    cli.run(&["node", "manage", NODE_NAME, "--wait", WAIT_SECS]);
    assert_eq!(cli.node(NODE_NAME)["provision_state"], "manageable");
    cli.run(&["node", "provide", NODE_NAME, "--wait", WAIT_SECS]);
    assert_eq!(cli.node(NODE_NAME)["provision_state"], "available");

    let listed = cli.json(&["node", "list"]);
    let row = listed.as_array().unwrap().iter().find(|row| row["uuid"] == uuid.as_str()).expect("node listed");
    assert_eq!(row["name"], NODE_NAME, "{row}");
    assert_eq!(row["provision_state"], "available", "{row}");

    let drivers = cli.json(&["driver", "list"]);
    let driver_names: Vec<&str> = drivers.as_array().unwrap().iter().filter_map(|row| row["name"].as_str()).collect();
    assert!(driver_names.contains(&"fake-hardware"), "{drivers}");
    let ipmi = cli.json(&["driver", "show", "ipmi"]);
    assert_eq!(ipmi["default_power_interface"], "ipmitool", "{ipmi}");

    for name in ["cli-a", "cli-z"] {
        cli.run(&["node", "create", "--driver", "fake-hardware", "--name", name]);
    }
    let sorted = cli.json(&["node", "list", "--sort", "name:desc"]);
    let sorted_names: Vec<&str> = sorted.as_array().unwrap().iter().filter_map(|row| row["name"].as_str()).collect();
    assert_eq!(sorted_names, ["cli-z", NODE_NAME, "cli-a"], "{sorted}");

    cli.run(&["node", "power", "on", NODE_NAME]);
    assert_eq!(power_state(&cli, NODE_NAME), "power on");
    let states: Value =
        reqwest::blocking::get(format!("{}/v1/nodes/{uuid}/states", controller.base_url())).unwrap().json().unwrap();
    assert_eq!(states["power_state"], "power on", "{states}");
    assert!(states["target_power_state"].is_null(), "{states}");
    cli.run(&["node", "power", "off", NODE_NAME]);
    let shown = cli.node(NODE_NAME);
    assert_eq!(shown["power_state"], "power off", "{shown}");
    assert!(shown["target_power_state"].is_null(), "{shown}");

    let image_source = format!("image_source={IMAGE_SOURCE}");
    let image_checksum = format!("image_checksum={IMAGE_CHECKSUM}");
    cli.run(&["node", "set", NODE_NAME, "--instance-info", &image_source, "--instance-info", &image_checksum]);
    let agent = SimulatedAgent::start(&controller.base_url(), MAC);
    let deployed = cli.try_run(&["node", "deploy", NODE_NAME, "--wait", WAIT_SECS]);
    let tasks = agent.finish();
    deployed.unwrap_or_else(|error| panic!("{error}\n--- controller log ---\n{}", controller.log_tail()));
    let names: Vec<&str> = tasks.iter().map(|task| task.command.name()).collect();
    assert_eq!(names, ["write_image", "reboot"]);
    let active = cli.node(NODE_NAME);
    assert_eq!(active["provision_state"], "active", "{active}");
    assert!(active["target_provision_state"].is_null(), "{active}");
    assert_eq!(active["instance_info"]["image_source"], IMAGE_SOURCE, "{active}");

    cli.run(&["node", "undeploy", NODE_NAME, "--wait", WAIT_SECS]);
    let available = cli.node(&uuid);
    assert_eq!(available["provision_state"], "available", "{available}");
    assert!(available["instance_info"].as_object().is_some_and(|info| info.is_empty()), "{available}");

    let missing = cli.try_run(&["node", "show", "nonexistent"]).expect_err("showing a missing node must fail");
    assert!(matches!(missing, CommandError::Failed { .. }), "{missing}");
    assert!(missing.to_string().contains("Node nonexistent could not be found"), "{missing}");

    assert!(started.elapsed() < TEST_BUDGET, "took {:?}, over the {TEST_BUDGET:?} budget", started.elapsed());
}
