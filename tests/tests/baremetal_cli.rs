//! The real `baremetal` CLI (python-ironicclient, installed into `.venv` by `scripts/setup.sh`) drives the
//! real controller through a node's whole life, unchanged and without Keystone, while a simulated agent
//! speaking the agent protocol makes the deploy complete.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferric_protocol::{
    heartbeat_path, CommandResult, CommandStatus, Heartbeat, HeartbeatResponse, LookupResponse, Task,
    AGENT_API_VERSION, API_VERSION_HEADER, LOOKUP_PATH,
};
use ferric_runner::CommandError;
use ferric_tests::controller::Controller;
use ferric_tests::paths;
use serde_json::Value;

const MAC: &str = "52:54:00:c1:10:01";
const NODE_NAME: &str = "cli-node";
const IMAGE_SOURCE: &str = "http://127.0.0.1:9/testos.img";
const IMAGE_CHECKSUM: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// The whole test; the client polls a deploy every 10 s, so one deploy takes 10-20 s.
const TEST_BUDGET: Duration = Duration::from_secs(120);
/// What one CLI invocation may take (`--wait` included), enforced by coreutils' `timeout`.
const COMMAND_TIMEOUT_SECS: &str = "90";
const WAIT_SECS: &str = "60";
const AGENT_POLL: Duration = Duration::from_millis(300);

/// Runs `.venv/bin/baremetal` against the controller with no authentication, as an operator would.
struct Baremetal {
    binary: PathBuf,
    endpoint: String,
    home: tempfile::TempDir,
}

impl Baremetal {
    fn new(endpoint: String) -> Baremetal {
        let binary = paths::repo_root().join(".venv/bin/baremetal");
        assert!(binary.is_file(), "{} is missing: run `bash scripts/setup.sh` first", binary.display());
        // The client caches negotiated versions under $HOME; a fresh one keeps runs independent.
        Baremetal { binary, endpoint, home: tempfile::tempdir().unwrap() }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg(COMMAND_TIMEOUT_SECS)
            .arg(&self.binary)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("LANG", "C.UTF-8")
            .env("OS_AUTH_TYPE", "none")
            .env("OS_ENDPOINT", &self.endpoint);
        cmd
    }

    fn try_run(&self, args: &[&str]) -> Result<String, CommandError> {
        let description = format!("baremetal {}", args.join(" "));
        ferric_runner::run(description, &mut self.command(args)).map(|finished| finished.stdout)
    }

    fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|error| panic!("{error}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut with_format = args.to_vec();
        with_format.extend(["-f", "json"]);
        let stdout = self.run(&with_format);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("baremetal {args:?} printed no JSON ({error}): {stdout}"))
    }

    fn node(&self, node: &str) -> Value {
        self.json(&["node", "show", node])
    }
}

/// An agent in the ramdisk, reduced to its protocol: looks the node up by MAC until the controller
/// knows it, heartbeats, reports `write_image` running then succeeded, and stops once it reported
/// the reboot. Returns the tasks it was given.
fn simulated_agent(base_url: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Task>> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut tasks = Vec::new();
        let lookup_url = format!("{base_url}{LOOKUP_PATH}?addresses={MAC}");
        let lookup = loop {
            if stop.load(Ordering::Relaxed) {
                return tasks;
            }
            let response = http.get(&lookup_url).header(API_VERSION_HEADER, AGENT_API_VERSION).send().unwrap();
            if response.status().is_success() {
                break response.json::<LookupResponse>().unwrap();
            }
            std::thread::sleep(AGENT_POLL);
        };
        let heartbeat_url = format!("{base_url}{}", heartbeat_path(&lookup.node.uuid));
        let mut report: Option<CommandResult> = None;
        while !stop.load(Ordering::Relaxed) {
            let heartbeat = Heartbeat {
                agent_token: lookup.config.agent_token.clone(),
                agent_version: "simulated".into(),
                command: report.clone(),
                progress: None,
                log_tail: vec!["simulated agent".into()],
                inventory: None,
            };
            let response = http
                .post(&heartbeat_url)
                .header(API_VERSION_HEADER, AGENT_API_VERSION)
                .json(&heartbeat)
                .send()
                .unwrap();
            assert!(response.status().is_success(), "heartbeat refused: {}", response.text().unwrap());
            let answer: HeartbeatResponse = response.json().unwrap();
            let reported_reboot = report
                .as_ref()
                .is_some_and(|r| r.command_name == "reboot" && r.command_status == CommandStatus::Succeeded);
            if reported_reboot {
                return tasks;
            }
            report = match (answer.task, report.take()) {
                (Some(task), _) => {
                    // A reboot is done at once; an image write is first seen running.
                    let status =
                        if task.command.name() == "reboot" { CommandStatus::Succeeded } else { CommandStatus::Running };
                    let result = command_result(&task, status);
                    tasks.push(task);
                    Some(result)
                }
                (None, Some(running)) if running.command_status == CommandStatus::Running => {
                    Some(CommandResult { command_status: CommandStatus::Succeeded, ..running })
                }
                (None, previous) => previous,
            };
            std::thread::sleep(AGENT_POLL);
        }
        tasks
    })
}

fn command_result(task: &Task, status: CommandStatus) -> CommandResult {
    CommandResult {
        id: task.id.clone(),
        command_name: task.command.name().into(),
        command_status: status,
        command_error: None,
        command_result: None,
    }
}

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
    let stop_agent = Arc::new(AtomicBool::new(false));
    let agent = simulated_agent(controller.base_url(), stop_agent.clone());
    let deployed = cli.try_run(&["node", "deploy", NODE_NAME, "--wait", WAIT_SECS]);
    stop_agent.store(true, Ordering::Relaxed);
    let tasks = agent.join().expect("the simulated agent panicked");
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
