//! The `ferric` binary against a real controller, with a simulated agent speaking ferric_protocol.

mod common;

use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use common::report;
use ferric_controller::api::auth::ApiAuth;
use ferric_controller::cli::client::{Auth, Client};
use ferric_controller::cli::{self, Watch};
use ferric_protocol::{
    heartbeat_path, CommandResult, CommandStatus, Heartbeat, HeartbeatResponse, LookupResponse, Progress, Task,
    AGENT_API_VERSION, API_VERSION_HEADER, LOOKUP_PATH,
};
use serde_json::Value;

const NODES_YAML: &str = "\
- name: node-a
  boot_mode: uefi
  properties:
    cpus: 2
    root_device: {name: /dev/vda}
  ports: [52-54-00-AA-00-01]
- name: node-b
  driver: manual-management
  ports:
    - 52:54:00:aa:00:02
    - 52:54:00:aa:00:03
";

/// A controller served by a runtime of its own, so the test thread can run the CLI.
struct Controller {
    server: common::Server,
    runtime: tokio::runtime::Runtime,
}

impl Controller {
    fn start() -> Controller {
        Controller::start_with(|_| {})
    }

    fn start_with(adjust: impl FnOnce(&mut ferric_controller::Config)) -> Controller {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(common::start_with(adjust));
        Controller { server, runtime }
    }

    fn ferric(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferric"))
            .arg("--url")
            .arg(&self.server.base)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `ferric`, expecting success; returns its stdout.
    fn ferric_ok(&self, args: &[&str]) -> String {
        let output = self.ferric(args);
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "ferric {args:?} failed: {}{stdout}", String::from_utf8_lossy(&output.stderr));
        stdout
    }

    fn get(&self, path: &str) -> Value {
        self.runtime.block_on(self.server.get(path))
    }

    fn enroll_file(&self, text: &str) -> std::path::PathBuf {
        let path = self.server.dir.path().join("nodes.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn enroll_list_show_deploy_watch_events_and_logs() {
    let controller = Controller::start();
    let file = controller.enroll_file(NODES_YAML);
    let enrolled = controller.ferric_ok(&["enroll", path_arg(&file)]);
    assert_eq!(enrolled.lines().count(), 2, "{enrolled}");
    assert!(enrolled.contains("node-b") && enrolled.contains("52:54:00:aa:00:03"), "{enrolled}");

    let node_a = controller.get("/v1/nodes/node-a");
    assert_eq!(node_a["provision_state"], "available");
    assert_eq!(node_a["boot_mode"], "uefi");
    assert_eq!(node_a["properties"]["root_device"]["name"], "/dev/vda");
    let node_b = controller.get("/v1/nodes/node-b");
    assert_eq!(node_b["provision_state"], "available");
    let ports = controller.get("/v1/ports?detail=true");
    let mut addresses: Vec<(String, String)> = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| (port["address"].as_str().unwrap().into(), port["node_uuid"].as_str().unwrap().into()))
        .collect();
    addresses.sort();
    let uuid = |node: &Value| node["uuid"].as_str().unwrap().to_owned();
    assert_eq!(
        addresses,
        vec![
            ("52:54:00:aa:00:01".to_owned(), uuid(&node_a)),
            ("52:54:00:aa:00:02".to_owned(), uuid(&node_b)),
            ("52:54:00:aa:00:03".to_owned(), uuid(&node_b)),
        ]
    );

    let listed = controller.ferric_ok(&["list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(lines[0].starts_with("UUID"), "{listed}");
    assert!(lines
        .iter()
        .any(|line| line.contains(&uuid(&node_a)) && line.contains("node-a") && line.contains("available")));

    let base = controller.server.base.clone();
    let agent = thread::spawn(move || simulated_agent(base, "52:54:00:aa:00:01"));
    let deploy = controller.ferric(&[
        "deploy",
        "node-a",
        "--image",
        "http://127.0.0.1:9/disk.raw",
        "--checksum",
        &"ab".repeat(32),
        "--watch",
    ]);
    let stdout = String::from_utf8(deploy.stdout).unwrap();
    assert!(deploy.status.success(), "deploy failed: {}{stdout}", String::from_utf8_lossy(&deploy.stderr));
    agent.join().unwrap();
    assert!(stdout.contains("node-a: wait call-back"), "{stdout}");
    assert!(stdout.lines().last().unwrap().ends_with("node-a: active"), "{stdout}");
    let bar =
        format!("[{}{}]  50%  1.0 MiB / 2.0 MiB  512.0 KiB/s  ETA 0:02  writing image", "#".repeat(15), "-".repeat(15));
    assert!(stdout.lines().any(|line| line == bar), "no progress line {bar:?} in:\n{stdout}");
    let node_a = controller.get("/v1/nodes/node-a");
    assert_eq!(node_a["provision_state"], "active");
    assert_eq!(node_a["instance_info"]["image_source"], "http://127.0.0.1:9/disk.raw");

    let shown = controller.ferric_ok(&["show", "node-a"]);
    assert!(shown.lines().any(|line| line.starts_with("provision_state") && line.ends_with("active")), "{shown}");

    let events = controller.ferric_ok(&["events", "node-a"]);
    for transition in
        ["enroll -> verifying", "available -> deploying", "deploying -> wait call-back", "deploying -> active"]
    {
        assert!(
            events.lines().any(|line| line.contains(transition) && line.contains("INFO")),
            "{transition}:\n{events}"
        );
    }

    let logs = controller.ferric_ok(&["logs", "node-a"]);
    assert_eq!(logs, "downloading image\nwriting image\nimage written\n");
}

#[test]
fn a_failed_deploy_exits_1_with_the_last_error() {
    let controller = Controller::start();
    let file = controller.enroll_file("- name: node-a\n  ports: ['52:54:00:aa:00:01']\n");
    controller.ferric_ok(&["enroll", path_arg(&file)]);
    let agent = thread::spawn({
        let base = controller.server.base.clone();
        move || {
            let (token, uuid, task) = agent_gets_task(&base, "52:54:00:aa:00:01");
            let failed = report(&task, CommandStatus::Failed, Some("checksum mismatch"));
            heartbeat(&base, &uuid, &agent_heartbeat(&token, Some(failed), None, vec![]));
        }
    });
    let deploy =
        controller.ferric(&["deploy", "node-a", "--image", "http://127.0.0.1:9/x", "--checksum", "aa", "--watch"]);
    agent.join().unwrap();
    assert_eq!(deploy.status.code(), Some(1), "{deploy:?}");
    let stderr = String::from_utf8(deploy.stderr).unwrap();
    assert!(stderr.contains("node-a ended in deploy failed") && stderr.contains("checksum mismatch"), "{stderr}");
}

#[test]
fn bad_enroll_files_fail_naming_the_entry_and_field_and_create_nothing() {
    let controller = Controller::start();
    let cases = [
        ("- name: good\n- driver: manual-management\n", "entry 2: field `name`: missing"),
        ("- name: good\n- name: bad-mac\n  ports: [52:54:00:zz:00:01]\n", "entry 2 (node bad-mac): field `ports[0]`"),
    ];
    for (text, expected) in cases {
        let file = controller.enroll_file(text);
        let output = controller.ferric(&["enroll", path_arg(&file)]);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{text}");
        assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    }
    assert_eq!(controller.get("/v1/nodes")["nodes"], serde_json::json!([]));

    // A refusal by the API names the node and the step, with Ironic's faultstring.
    let file = controller
        .enroll_file("- name: one\n  ports: ['52:54:00:aa:00:01']\n- name: two\n  ports: ['52:54:00:aa:00:01']\n");
    let output = controller.ferric(&["enroll", path_arg(&file)]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(stderr.contains("node two: creating port 52:54:00:aa:00:01 failed"), "{stderr}");
    assert!(stderr.contains("A port with MAC address 52:54:00:aa:00:01 already exists."), "{stderr}");
}

#[test]
fn on_a_terminal_the_progress_line_is_redrawn_in_place() {
    let controller = Controller::start();
    let file = controller.enroll_file("- name: node-a\n  ports: ['52:54:00:aa:00:01']\n");
    controller.ferric_ok(&["enroll", path_arg(&file)]);
    let base = controller.server.base.clone();
    let agent = thread::spawn(move || simulated_agent(base, "52:54:00:aa:00:01"));
    let client = Client::new(&controller.server.base, Auth::None).unwrap();
    let watch = Watch { interval: Duration::from_millis(200), redraw: true };
    let mut out = Vec::new();
    cli::deploy(&client, "node-a", "http://127.0.0.1:9/disk.raw", "ab", Some(watch), &mut out).unwrap();
    agent.join().unwrap();
    let out = String::from_utf8(out).unwrap();
    // Drawn once (it did not change between polls), erased to the line's end, then ended by the next state.
    let drawn =
        "\r[###############---------------]  50%  1.0 MiB / 2.0 MiB  512.0 KiB/s  ETA 0:02  writing image\x1b[K\n";
    assert_eq!(out.matches(drawn).count(), 1, "{out:?}");
    assert!(out.ends_with("\nnode-a: active\n"), "{out:?}");
}

#[test]
fn credentials_are_passed_through_and_refusals_show_the_faultstring() {
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("tokens");
    std::fs::write(&token_file, "operator-token\n").unwrap();
    let auth = ApiAuth::from_files(None, Some(&token_file)).unwrap();
    let controller = Controller::start_with(move |config| config.auth = auth);
    assert_eq!(controller.ferric_ok(&["--token", "operator-token", "list"]).lines().count(), 1);
    let refused = controller.ferric(&["--token", "wrong", "list"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(stderr.contains("Invalid bearer token (HTTP 401 from GET /v1/nodes"), "{stderr}");
}

/// Lookup (retried until the node waits for its agent), then heartbeats until a task arrives.
fn agent_gets_task(base: &str, mac: &str) -> (String, String, Task) {
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lookup: LookupResponse = loop {
        let response = http
            .get(format!("{base}{LOOKUP_PATH}?addresses={mac}"))
            .header(API_VERSION_HEADER, AGENT_API_VERSION)
            .send()
            .unwrap();
        if response.status().is_success() {
            break response.json().unwrap();
        }
        assert!(Instant::now() < deadline, "the node never waited for its agent");
        thread::sleep(Duration::from_millis(100));
    };
    let token = lookup.config.agent_token;
    let uuid = lookup.node.uuid;
    let answer = heartbeat(base, &uuid, &agent_heartbeat(&token, None, None, vec!["agent started"]));
    (token, uuid, answer.task.expect("a task in the first heartbeat answer"))
}

/// Reports progress long enough for a 1 s poll to see it, then success.
fn simulated_agent(base: String, mac: &str) {
    let (token, uuid, task) = agent_gets_task(&base, mac);
    let progress = Progress {
        stage: "writing image".into(),
        bytes_done: 1 << 20,
        bytes_total: Some(2 << 20),
        bytes_per_second: 512.0 * 1024.0,
        eta_seconds: Some(2.0),
    };
    let running = report(&task, CommandStatus::Running, None);
    let log = vec!["downloading image", "writing image"];
    heartbeat(&base, &uuid, &agent_heartbeat(&token, Some(running), Some(progress), log));
    thread::sleep(Duration::from_millis(2500));
    let done = report(&task, CommandStatus::Succeeded, None);
    let log = vec!["downloading image", "writing image", "image written"];
    heartbeat(&base, &uuid, &agent_heartbeat(&token, Some(done), None, log));
}

fn agent_heartbeat(
    token: &str,
    command: Option<CommandResult>,
    progress: Option<Progress>,
    log: Vec<&str>,
) -> Heartbeat {
    Heartbeat {
        agent_token: token.to_owned(),
        agent_version: "0.1.0".to_owned(),
        command,
        progress,
        log_tail: log.into_iter().map(str::to_owned).collect(),
        inventory: None,
    }
}

fn heartbeat(base: &str, uuid: &str, heartbeat: &Heartbeat) -> HeartbeatResponse {
    let response = reqwest::blocking::Client::new()
        .post(format!("{base}{}", heartbeat_path(uuid)))
        .header(API_VERSION_HEADER, AGENT_API_VERSION)
        .json(heartbeat)
        .send()
        .unwrap();
    assert!(response.status().is_success(), "heartbeat refused: {}", response.text().unwrap());
    response.json().unwrap()
}
