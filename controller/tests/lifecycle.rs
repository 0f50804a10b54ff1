//! Inspection, manual cleaning and every provisioning verb in every resting state, against a
//! real server with a simulated agent speaking ferric_protocol.

mod common;

use std::time::Duration;

use common::{assert_clean_failed, fault, heartbeat, report, Server, MAC, NODE_UUID};
use ferric_protocol::inventory::{Cpu, Disk, Interface, Memory};
use ferric_protocol::{CleanStep, Command, CommandStatus, Heartbeat, Inventory, MASKED_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// Two CPUs, 2 GiB of RAM, and three disks: too small for a root disk (2 GiB), the root
/// disk (10.5 GiB, the smallest of at least 4 GiB) and a larger one (100 GiB).
fn inventory() -> Inventory {
    let disk = |name: &str, size| Disk { name: name.into(), size, ..Default::default() };
    Inventory {
        interfaces: vec![Interface { name: "eth0".into(), mac_address: MAC.into(), ..Default::default() }],
        cpu: Cpu { count: 2, architecture: "x86_64".into(), ..Default::default() },
        disks: vec![disk("/dev/vda", 100 * GIB), disk("/dev/vdb", 2 * GIB), disk("/dev/vdc", 10 * GIB + GIB / 2)],
        memory: Memory { total: 2 * GIB - 64 * (1 << 20), physical_mb: 2048 },
        hostname: Some("ramdisk".into()),
        ..Default::default()
    }
}

async fn managed_node(server: &Server) {
    server.enroll(json!({})).await;
    assert_eq!(server.provision("manage").await.status(), StatusCode::ACCEPTED);
}

async fn lookup_token(server: &Server) -> String {
    let token = server.lookup_ok().await.config.agent_token;
    assert_ne!(token, MASKED_TOKEN);
    token
}

async fn clean(server: &Server, steps: Value) -> reqwest::Response {
    server
        .api(Method::PUT, &format!("/v1/nodes/{NODE_UUID}/states/provision"))
        .json(&json!({"target": "clean", "clean_steps": steps}))
        .send()
        .await
        .unwrap()
}

/// The `(from, to)` state changes in the node's history.
async fn transitions(server: &Server) -> Vec<(String, String)> {
    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    history["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| !event["from_state"].is_null())
        .map(|event| (event["from_state"].as_str().unwrap().into(), event["to_state"].as_str().unwrap().into()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(from, to)| ((*from).into(), (*to).into())).collect()
}

#[tokio::test]
async fn inspection_stores_the_inventory_sets_properties_and_powers_off() {
    let server = common::start().await;
    managed_node(&server).await;
    assert_eq!(server.provision("inspect").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "inspect wait");
    assert_eq!(node["target_provision_state"], "manageable");
    assert!(node["inspection_started_at"].is_string(), "{node:#}");
    assert!(node["inspection_finished_at"].is_null());
    // The node boots the ramdisk while it is inspected.
    let script = server.http.get(format!("{}/ipxe/52-54-00-12-34-56", server.base)).send().await.unwrap();
    assert!(script.text().await.unwrap().contains("ramdisk/vmlinuz"));

    let token = lookup_token(&server).await;
    let mut first = heartbeat(&token, None);
    first.inventory = Some(inventory());
    let power_off = server.heartbeat(&first).await.task.expect("a task answering the inventory");
    assert_eq!(power_off.command, Command::PowerOff);

    let node = server.node().await;
    assert_eq!(node["provision_state"], "manageable");
    assert!(node["target_provision_state"].is_null());
    assert!(node["last_error"].is_null());
    assert!(node["inspection_finished_at"].is_string(), "{node:#}");
    let properties = &node["properties"];
    assert_eq!(properties["cpus"], 2);
    assert_eq!(properties["memory_mb"], 2048);
    assert_eq!(properties["cpu_arch"], "x86_64");
    // 10.5 GiB rounds down to 10, less the 1 GiB ironic-inspector keeps for partitioning.
    assert_eq!(properties["local_gb"], 9);
    let stored = server.get(&format!("/v1/nodes/{NODE_UUID}/inventory")).await;
    assert_eq!(stored["inventory"]["interfaces"][0]["mac_address"], MAC);
    assert_eq!(stored["inventory"]["disks"].as_array().unwrap().len(), 3);

    // An agent that missed the answer is told again; once it reports the power off, its token ends.
    assert_eq!(server.heartbeat(&heartbeat(&token, None)).await.task.as_ref(), Some(&power_off));
    let acknowledged = heartbeat(&token, Some(report(&power_off, CommandStatus::Succeeded, None)));
    assert_eq!(server.heartbeat(&acknowledged).await.task, None);
    let after = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(after.status(), StatusCode::BAD_REQUEST);

    let expected = [
        ("enroll", "verifying"),
        ("verifying", "manageable"),
        ("manageable", "inspecting"),
        ("inspecting", "inspect wait"),
        ("inspect wait", "inspecting"),
        ("inspecting", "manageable"),
    ];
    assert_eq!(transitions(&server).await, pairs(&expected));
}

#[tokio::test]
async fn an_inspection_without_inventory_fails_after_the_inspect_wait_timeout() {
    let timeout = Duration::from_secs(1);
    let server = common::start_with(|config| {
        config.inspect_wait_timeout = timeout;
        config.timeout_check_interval = Duration::from_millis(100);
    })
    .await;
    managed_node(&server).await;
    assert_eq!(server.provision("inspect").await.status(), StatusCode::ACCEPTED);
    let started = tokio::time::Instant::now();
    // Heartbeats without an inventory do not renew the wait: inspection is timed from its start.
    let token = lookup_token(&server).await;
    assert_eq!(server.heartbeat(&heartbeat(&token, None)).await.task, None);

    let node = server.wait_for_node(Duration::from_secs(60), |node| node["provision_state"] == "inspect failed").await;
    assert!(started.elapsed() >= timeout);
    assert_eq!(node["last_error"], "timeout reached while inspecting the node");
    assert_eq!(node["target_provision_state"], "manageable");
    let refused = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    // Inspection can be retried from inspect failed.
    assert_eq!(server.provision("inspect").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "inspect wait");
    assert!(node["last_error"].is_null());
}

#[tokio::test]
async fn abort_in_inspect_wait_fails_the_inspection() {
    let server = common::start().await;
    managed_node(&server).await;
    assert_eq!(server.provision("inspect").await.status(), StatusCode::ACCEPTED);
    let token = lookup_token(&server).await;
    assert_eq!(server.provision("abort").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "inspect failed");
    assert_eq!(node["target_provision_state"], "manageable");
    assert_eq!(node["last_error"], "Inspection was aborted by request.");
    let refused = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(server.provision("manage").await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.node().await["provision_state"], "manageable");
}

#[tokio::test]
async fn manual_cleaning_runs_each_step_in_order_and_returns_to_manageable() {
    let server = common::start().await;
    managed_node(&server).await;
    let steps = json!([
        {"interface": "deploy", "step": "erase_devices_metadata"},
        {"interface": "raid", "step": "delete_configuration", "args": {"force": true}},
    ]);
    assert_eq!(clean(&server, steps).await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "clean wait");
    assert_eq!(node["target_provision_state"], "manageable");

    let token = lookup_token(&server).await;
    let first = server.heartbeat(&heartbeat(&token, None)).await.task.expect("the first clean step");
    let expected_first =
        CleanStep { interface: "deploy".into(), step: "erase_devices_metadata".into(), args: json!({}) };
    assert_eq!(first.command, Command::ExecuteCleanStep { step: expected_first, skip_block_devices: vec![] });
    let node = server.node().await;
    assert_eq!(node["clean_step"], json!({"interface": "deploy", "step": "erase_devices_metadata", "args": {}}));
    assert_eq!(
        server.heartbeat(&heartbeat(&token, Some(report(&first, CommandStatus::Running, None)))).await.task,
        None
    );

    let done = heartbeat(&token, Some(report(&first, CommandStatus::Succeeded, None)));
    let second = server.heartbeat(&done).await.task.expect("the second clean step");
    let expected_second =
        CleanStep { interface: "raid".into(), step: "delete_configuration".into(), args: json!({"force": true}) };
    assert_eq!(second.command, Command::ExecuteCleanStep { step: expected_second, skip_block_devices: vec![] });
    let node = server.node().await;
    assert_eq!(node["provision_state"], "clean wait");
    assert_eq!(node["target_provision_state"], "manageable");
    assert_eq!(node["clean_step"]["step"], "delete_configuration");

    let done = heartbeat(&token, Some(report(&second, CommandStatus::Succeeded, None)));
    let power_off = server.heartbeat(&done).await.task.expect("a power off after cleaning");
    assert_eq!(power_off.command, Command::PowerOff);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "manageable");
    assert!(node["target_provision_state"].is_null());
    assert_eq!(node["clean_step"], json!({}));
    assert!(node["last_error"].is_null());
    assert_eq!(node["maintenance"], false);
    // The power off is told again until the agent acknowledges it; then its token ends.
    assert_eq!(server.heartbeat(&heartbeat(&token, None)).await.task.as_ref(), Some(&power_off));
    let acknowledged = heartbeat(&token, Some(report(&power_off, CommandStatus::Succeeded, None)));
    assert_eq!(server.heartbeat(&acknowledged).await.task, None);
    let after = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(after.status(), StatusCode::BAD_REQUEST);

    let expected = [
        ("enroll", "verifying"),
        ("verifying", "manageable"),
        ("manageable", "cleaning"),
        ("cleaning", "clean wait"),
        ("clean wait", "cleaning"),
        ("cleaning", "clean wait"),
        ("clean wait", "cleaning"),
        ("cleaning", "manageable"),
    ];
    assert_eq!(transitions(&server).await, pairs(&expected));
}

#[tokio::test]
async fn a_failed_clean_step_fails_the_cleaning_with_the_agents_reason() {
    let server = common::start().await;
    managed_node(&server).await;
    assert_eq!(clean(&server, json!([{"interface": "deploy", "step": "erase_devices"}])).await.status(), 202);
    let token = lookup_token(&server).await;
    let step = server.heartbeat(&heartbeat(&token, None)).await.task.unwrap();
    let refusal = "clean step deploy.erase_devices is not supported by this agent yet";
    let failed = heartbeat(&token, Some(report(&step, CommandStatus::Failed, Some(refusal))));
    assert_eq!(server.heartbeat(&failed).await.task, None);

    let reason = format!("Clean step deploy.erase_devices failed: {refusal}");
    assert_clean_failed(&server, &token, &reason, "manageable").await;
}

#[tokio::test]
async fn a_silent_agent_fails_the_cleaning_after_the_clean_callback_timeout() {
    let server = common::start_with(|config| {
        config.clean_callback_timeout = Duration::from_secs(1);
        config.timeout_check_interval = Duration::from_millis(100);
    })
    .await;
    managed_node(&server).await;
    assert_eq!(clean(&server, json!([{"interface": "deploy", "step": "erase_devices"}])).await.status(), 202);
    let token = lookup_token(&server).await;
    assert!(server.heartbeat(&heartbeat(&token, None)).await.task.is_some());

    let node = server.wait_for_node(Duration::from_secs(60), |node| node["provision_state"] == "clean failed").await;
    let step = json!({"interface": "deploy", "step": "erase_devices", "args": {}});
    let expected = format!(
        "Timeout reached while cleaning the node. Please check if the ramdisk responsible for the cleaning is \
         running on the node. Failed on step {step}."
    );
    assert_eq!(node["last_error"], expected.as_str());
    assert_eq!(node["maintenance"], true);
}

#[tokio::test]
async fn abort_in_clean_wait_names_the_step() {
    let server = common::start().await;
    managed_node(&server).await;
    assert_eq!(clean(&server, json!([{"interface": "deploy", "step": "erase_devices"}])).await.status(), 202);
    let token = lookup_token(&server).await;
    assert!(server.heartbeat(&heartbeat(&token, None)).await.task.is_some());
    assert_eq!(server.provision("abort").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "clean failed");
    assert_eq!(
        node["last_error"],
        "By request, the clean operation was aborted during or after the completion of step \"deploy.erase_devices\""
    );
    assert_eq!(node["maintenance"], false);
}

#[tokio::test]
async fn clean_requests_are_checked() {
    let server = common::start().await;
    managed_node(&server).await;
    let missing = server.provision("clean").await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(missing).await, "\"clean_steps\" is required when setting target provision state to clean");
    for malformed in [
        json!([]),
        json!({"interface": "deploy", "step": "erase_devices"}),
        json!([{"step": "erase_devices"}]),
        json!([{"interface": "deploy"}]),
        json!([{"interface": "bogus", "step": "erase_devices"}]),
        json!([{"interface": "deploy", "step": "erase_devices", "args": []}]),
        json!([{"interface": "deploy", "step": "erase_devices", "priority": 10}]),
    ] {
        let refused = clean(&server, malformed.clone()).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{malformed}");
        let message = fault(refused).await;
        assert!(message.contains("clean_steps"), "{malformed}: {message}");
    }
    // The deploy interface's steps are the agent's; another name is refused, listing them.
    let unknown = clean(&server, json!([{"interface": "deploy", "step": "erase_devices_express"}])).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        fault(unknown).await,
        "node does not support this clean step: {'interface': 'deploy', 'step': 'erase_devices_express'}; the \
         deploy interface's clean steps are erase_devices, erase_devices_metadata"
    );
    let elsewhere = server
        .api(Method::PUT, &format!("/v1/nodes/{NODE_UUID}/states/provision"))
        .json(&json!({"target": "provide", "clean_steps": [{"interface": "deploy", "step": "erase_devices"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(elsewhere).await, "\"clean_steps\" is only valid when setting target provision state to clean");
    assert_eq!(server.node().await["provision_state"], "manageable");

    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
    let from_available = clean(&server, json!([{"interface": "deploy", "step": "erase_devices"}])).await;
    assert_eq!(from_available.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        fault(from_available).await,
        format!("The requested action \"clean\" can not be performed on node \"{NODE_UUID}\" while it is in state \"available\".")
    );
}

/// What a verb does to a node in a given state.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// 202, and the node is then in this state.
    Accepted(&'static str),
    /// 400 InvalidStateRequested.
    InvalidState,
    /// 400: a verb of Ironic that Ferric does not implement.
    Unsupported,
}

use Outcome::{Accepted as Ok_, InvalidState as No, Unsupported as Unsup};

const VERBS: [&str; 15] = [
    "active", "deploy", "rebuild", "deleted", "undeploy", "manage", "provide", "inspect", "abort", "clean", "adopt",
    "rescue", "unrescue", "unhold", "service",
];

/// Every verb (in [`VERBS`] order) in every resting state the API can bring a node to.
const TABLE: &[(&str, [Outcome; 15])] = &[
    ("enroll", [No, No, No, No, No, Ok_("manageable"), No, No, No, No, No, No, No, No, No]),
    (
        "manageable",
        [No, No, No, No, No, No, Ok_("available"), Ok_("inspect wait"), No, Ok_("clean wait"), Unsup, No, No, No, No],
    ),
    (
        "available",
        [
            Ok_("wait call-back"),
            Ok_("wait call-back"),
            No,
            No,
            No,
            Ok_("manageable"),
            No,
            No,
            No,
            No,
            No,
            No,
            No,
            No,
            No,
        ],
    ),
    (
        "active",
        [
            No,
            No,
            Ok_("wait call-back"),
            Ok_("available"),
            Ok_("available"),
            No,
            No,
            No,
            No,
            No,
            No,
            Unsup,
            No,
            No,
            Unsup,
        ],
    ),
    (
        "deploy failed",
        [
            Ok_("wait call-back"),
            Ok_("wait call-back"),
            Ok_("wait call-back"),
            Ok_("available"),
            Ok_("available"),
            No,
            No,
            No,
            No,
            No,
            No,
            No,
            No,
            No,
            No,
        ],
    ),
    ("inspect failed", [No, No, No, No, No, Ok_("manageable"), No, Ok_("inspect wait"), No, No, No, No, No, No, No]),
    ("clean failed", [No, No, No, No, No, Ok_("manageable"), No, No, No, No, No, No, No, No, No]),
];

/// Drives a node, created with its own UUID and MAC, into `state` through the API and a
/// simulated agent.
struct TableNode<'a> {
    server: &'a Server,
    uuid: String,
    mac: String,
}

impl TableNode<'_> {
    async fn provision(&self, body: Value, version: &str) -> reqwest::Response {
        self.server
            .http
            .put(format!("{}/v1/nodes/{}/states/provision", self.server.base, self.uuid))
            .header("X-OpenStack-Ironic-API-Version", version)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn verb(&self, verb: &str, version: &str) -> reqwest::Response {
        let body = match verb {
            "clean" => json!({"target": verb, "clean_steps": [{"interface": "deploy", "step": "erase_devices"}]}),
            _ => json!({"target": verb}),
        };
        self.provision(body, version).await
    }

    async fn step(&self, verb: &str) {
        let response = self.verb(verb, common::LATEST).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{verb} on {}", self.uuid);
    }

    async fn state(&self) -> String {
        let node = self.server.get(&format!("/v1/nodes/{}", self.uuid)).await;
        node["provision_state"].as_str().unwrap().to_owned()
    }

    async fn reach(&self, state: &str) {
        let create = json!({"uuid": self.uuid, "driver": "manual-management", "instance_info": {
            "image_source": "http://10.0.2.2:8080/disk.raw", "image_checksum": "a".repeat(64)}});
        let created = self.server.api(Method::POST, "/v1/nodes").json(&create).send().await.unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let port = json!({"address": self.mac, "node_uuid": self.uuid});
        let port = self.server.api(Method::POST, "/v1/ports").json(&port).send().await.unwrap();
        assert_eq!(port.status(), StatusCode::CREATED);
        let path: &[&str] = match state {
            "enroll" => &[],
            "manageable" => &["manage"],
            "available" | "active" => &["manage", "provide"],
            "deploy failed" => &["manage", "provide", "active", "abort"],
            "inspect failed" => &["manage", "inspect", "abort"],
            "clean failed" => &["manage", "clean", "abort"],
            other => panic!("no path to {other}"),
        };
        for verb in path {
            self.step(verb).await;
        }
        if state == "active" {
            self.deploy_with_agent().await;
        }
        assert_eq!(self.state().await, state);
    }

    async fn deploy_with_agent(&self) {
        self.step("active").await;
        let lookup = self
            .server
            .http
            .get(format!("{}{}?addresses={}", self.server.base, ferric_protocol::LOOKUP_PATH, self.mac))
            .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
            .send()
            .await
            .unwrap();
        let token = lookup.json::<ferric_protocol::LookupResponse>().await.unwrap().config.agent_token;
        let beat = |heartbeat: Heartbeat| async move {
            let response = self
                .server
                .http
                .post(format!("{}{}", self.server.base, ferric_protocol::heartbeat_path(&self.uuid)))
                .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
                .json(&heartbeat)
                .send()
                .await
                .unwrap();
            response.json::<ferric_protocol::HeartbeatResponse>().await.unwrap()
        };
        let task = beat(heartbeat(&token, None)).await.task.unwrap();
        beat(heartbeat(&token, Some(report(&task, CommandStatus::Succeeded, None)))).await;
    }
}

#[tokio::test]
async fn every_verb_in_every_resting_state() {
    let server = common::start().await;
    let mut number = 0u32;
    for (state, outcomes) in TABLE {
        for (verb, outcome) in VERBS.iter().zip(outcomes) {
            number += 1;
            let node = TableNode {
                server: &server,
                uuid: format!("00000000-0000-4000-8000-{number:012}"),
                mac: format!("52:54:00:00:{:02x}:{:02x}", number / 256, number % 256),
            };
            node.reach(state).await;
            let response = node.verb(verb, common::LATEST).await;
            let status = response.status();
            let case = format!("{verb} in {state}");
            match outcome {
                Outcome::Accepted(next) => {
                    assert_eq!(status, StatusCode::ACCEPTED, "{case}: {}", response.text().await.unwrap());
                    assert_eq!(node.state().await, *next, "{case}");
                }
                Outcome::InvalidState => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
                    let expected = format!(
                        "The requested action \"{verb}\" can not be performed on node \"{}\" while it is in state \
                         \"{state}\".",
                        node.uuid
                    );
                    assert_eq!(fault(response).await, expected, "{case}");
                    assert_eq!(node.state().await, *state, "{case}");
                }
                Outcome::Unsupported => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
                    let expected = format!("The requested action \"{verb}\" is not supported by Ferric yet.");
                    assert_eq!(fault(response).await, expected, "{case}");
                    assert_eq!(node.state().await, *state, "{case}");
                }
            }
        }
    }
}

#[tokio::test]
async fn verbs_below_their_microversion_are_not_acceptable() {
    let server = common::start().await;
    let node = TableNode { server: &server, uuid: NODE_UUID.into(), mac: MAC.into() };
    node.reach("manageable").await;
    let minimums = [
        ("manage", 4),
        ("provide", 4),
        ("inspect", 6),
        ("abort", 13),
        ("clean", 15),
        ("adopt", 17),
        ("rescue", 38),
        ("unrescue", 38),
        ("deploy", 73),
        ("undeploy", 73),
        ("unhold", 85),
        ("service", 87),
    ];
    for (verb, minimum) in minimums {
        let below = node.verb(verb, &format!("1.{}", minimum - 1)).await;
        assert_eq!(below.status(), StatusCode::NOT_ACCEPTABLE, "{verb} at 1.{}", minimum - 1);
        assert_eq!(node.state().await, "manageable", "{verb}");
    }
    // At its version the verb passes the version check (and inspect is accepted).
    assert_eq!(node.verb("inspect", "1.6").await.status(), StatusCode::ACCEPTED);
}
