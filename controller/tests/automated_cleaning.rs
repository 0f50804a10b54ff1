//! Automated cleaning of nodes with a BMC, against a real server, a fake Redfish BMC and a simulated
//! agent: undeploy and provide go through `cleaning` and `clean wait`, the agent runs the enabled erase
//! steps from its heartbeats, highest priority first, their figures are kept, and the node ends
//! `available`; priorities of 0, `automated_clean` and the controller's switch leave steps or the
//! whole cleaning out; a failed step leaves the node in `clean failed`.

mod common;

use std::time::Duration;

use common::redfish::FakeRedfish;
use common::{assert_clean_failed, fault, heartbeat, report, Server, NODE_UUID};
use ferric_controller::Config;
use ferric_protocol::{CleanStepResult, Command, CommandStatus, ErasedDevice, Progress, Task};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn server_with(adjust: impl FnOnce(&mut Config)) -> Server {
    common::start_with(|config| {
        config.bmc.min_command_interval = Duration::from_millis(10);
        adjust(config);
    })
    .await
}

/// Enrolls the node on `bmc`, with `fields` added, and waits for it to be manageable.
async fn managed_redfish_node(server: &Server, bmc: &FakeRedfish, fields: Value) {
    let mut body = json!({"driver": "redfish", "driver_info": bmc.driver_info()});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    server.enroll(body).await;
    assert_eq!(server.provision("manage").await.status(), StatusCode::ACCEPTED);
    wait_until_idle_in(server, "manageable").await;
}

/// Waits for the node to rest in `state` with no BMC work under way.
async fn wait_until_idle_in(server: &Server, state: &str) -> Value {
    server
        .wait_for_node(WAIT, |node| {
            node["provision_state"] == state && node["reservation"].is_null() && node["target_power_state"].is_null()
        })
        .await
}

async fn lookup_token(server: &Server) -> String {
    server.lookup_ok().await.config.agent_token
}

/// The clean step a task asks for, as `interface.step`.
fn clean_step_of(task: &Task) -> String {
    match &task.command {
        Command::ExecuteCleanStep { step, .. } => format!("{}.{}", step.interface, step.step),
        other => panic!("not a clean step: {other:?}"),
    }
}

/// What the agent reports for `step`: one erased disk per `(device, method, MiB, seconds, samples)`.
fn step_result(step: &str, devices: &[(&str, &str, u64, f64, u32)]) -> Value {
    let devices = devices
        .iter()
        .map(|(device, method, mib, seconds, samples)| ErasedDevice {
            device: (*device).into(),
            method: (*method).into(),
            bytes: mib << 20,
            seconds: *seconds,
            mib_per_second: *mib as f64 / seconds,
            samples_verified: *samples,
        })
        .collect();
    serde_json::to_value(CleanStepResult { step: step.into(), devices }).unwrap()
}

/// Plays the agent through a whole cleaning: every clean step succeeds at once, reporting `result_of`
/// its name; returns the steps in the order they were asked for, once the agent is told to power off.
async fn agent_runs_every_step(server: &Server, result_of: impl Fn(&str) -> Option<Value>) -> Vec<String> {
    let token = lookup_token(server).await;
    let mut steps = Vec::new();
    let mut task = server.heartbeat(&heartbeat(&token, None)).await.task.expect("a first clean step");
    while task.command != Command::PowerOff {
        let step = clean_step_of(&task);
        let mut done = report(&task, CommandStatus::Succeeded, None);
        done.command_result = result_of(&step);
        steps.push(step);
        task = server.heartbeat(&heartbeat(&token, Some(done))).await.task.expect("a next task");
    }
    steps
}

/// The `(from, to)` state changes in the node's history, and its events.
async fn history(server: &Server) -> (Vec<(String, String)>, Vec<String>) {
    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let events = history["history"].as_array().unwrap();
    let transitions = events
        .iter()
        .filter(|event| !event["from_state"].is_null())
        .map(|event| (event["from_state"].as_str().unwrap().into(), event["to_state"].as_str().unwrap().into()))
        .collect();
    (transitions, events.iter().map(|event| event["event"].as_str().unwrap().to_owned()).collect())
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(from, to)| ((*from).into(), (*to).into())).collect()
}

/// Takes an available BMC node to `active`: the BMC boots the ramdisk, the agent writes, the BMC
/// boots the instance.
async fn deploy(server: &Server) {
    server.deploying_node_after_provide().await;
    wait_until_idle_in(server, "wait call-back").await;
    let token = lookup_token(server).await;
    let write = server.heartbeat(&heartbeat(&token, None)).await.task.expect("write_image");
    server.heartbeat(&heartbeat(&token, Some(report(&write, CommandStatus::Succeeded, None)))).await;
    wait_until_idle_in(server, "active").await;
}

#[tokio::test]
async fn undeploy_cleans_with_the_erase_steps_in_priority_order_and_keeps_their_figures() {
    let server = server_with(|_| {}).await;
    let bmc = FakeRedfish::start().await;
    // Provided without cleaning, then deployed; cleaning follows the controller again for the undeploy.
    let skip = json!([{"serial": "S2"}, {"volume_name": "raid-0"}]);
    let fields = json!({"automated_clean": false, "properties": {"skip_block_devices": skip}});
    managed_redfish_node(&server, &bmc, fields).await;
    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
    wait_until_idle_in(&server, "available").await;
    deploy(&server).await;
    let patch = server.patch(json!([{"op": "replace", "path": "/automated_clean", "value": null}])).await;
    assert_eq!(patch.status(), StatusCode::OK);
    let changes_before_undeploy = bmc.changes().len();

    assert_eq!(server.provision("deleted").await.status(), StatusCode::ACCEPTED);
    let node = wait_until_idle_in(&server, "clean wait").await;
    assert_eq!(node["target_provision_state"], "available");
    assert_eq!(node["power_state"], "power on");
    // Tear down powers the node off; cleaning then boots the ramdisk from the network.
    assert_eq!(bmc.changes()[changes_before_undeploy..], ["ForceOff", "boot Pxe Once", "On"]);

    let token = lookup_token(&server).await;
    let first = server.heartbeat(&heartbeat(&token, None)).await.task.expect("the first clean step");
    assert_eq!(clean_step_of(&first), "deploy.erase_devices_metadata");
    let Command::ExecuteCleanStep { skip_block_devices, .. } = &first.command else { unreachable!() };
    assert_eq!(Value::Array(skip_block_devices.clone()), skip);
    let node = server.node().await;
    assert_eq!(
        node["clean_step"],
        json!({"interface": "deploy", "step": "erase_devices_metadata", "args": {}, "priority": 99})
    );

    // Progress shows while a step runs, as during a deploy.
    let mut running = heartbeat(&token, Some(report(&first, CommandStatus::Running, None)));
    running.progress = Some(Progress {
        stage: "erasing metadata of /dev/vda".into(),
        bytes_done: 1 << 20,
        bytes_total: Some(4 << 20),
        bytes_per_second: 1048576.0,
        eta_seconds: Some(3.0),
    });
    assert_eq!(server.heartbeat(&running).await.task, None);
    let node = server.node().await;
    assert_eq!(node["driver_internal_info"]["agent_progress"]["stage"], "erasing metadata of /dev/vda");
    assert_eq!(node["provision_state"], "clean wait");

    let mut done = report(&first, CommandStatus::Succeeded, None);
    done.command_result = Some(step_result("erase_devices_metadata", &[("/dev/vda", "metadata", 1, 0.5, 0)]));
    let second = server.heartbeat(&heartbeat(&token, Some(done))).await.task.expect("the second clean step");
    assert_eq!(clean_step_of(&second), "deploy.erase_devices");
    assert_eq!(server.node().await["clean_step"]["priority"], 10);

    let mut done = report(&second, CommandStatus::Succeeded, None);
    let erased =
        [("/dev/vda", "write zeroes", 3072, 1.2, 66), ("/dev/nvme0n1", "nvme format (user data erase)", 512, 2.0, 8)];
    done.command_result = Some(step_result("erase_devices", &erased));
    let power_off = server.heartbeat(&heartbeat(&token, Some(done))).await.task.expect("a power off");
    assert_eq!(power_off.command, Command::PowerOff);

    let node = server.node().await;
    assert_eq!(node["provision_state"], "available");
    assert!(node["target_provision_state"].is_null());
    assert_eq!(node["clean_step"], json!({}));
    assert!(node["last_error"].is_null());
    assert_eq!(node["maintenance"], false);
    let results = &node["driver_internal_info"]["clean_step_results"];
    assert_eq!(results.as_array().map(Vec::len), Some(2), "{results}");
    assert_eq!(results[0]["step"], "deploy.erase_devices_metadata");
    assert_eq!(results[1]["step"], "deploy.erase_devices");
    assert_eq!(results[1]["devices"][0]["device"], "/dev/vda");
    assert_eq!(results[1]["devices"][0]["samples_verified"], 66);
    assert_eq!(results[1]["devices"][1]["method"], "nvme format (user data erase)");

    let (transitions, events) = history(&server).await;
    let undeploy = transitions.iter().position(|(from, _)| from == "active").expect("the undeploy");
    let expected = [
        ("active", "deleting"),
        ("deleting", "cleaning"),
        ("cleaning", "clean wait"),
        ("clean wait", "cleaning"),
        ("cleaning", "clean wait"),
        ("clean wait", "cleaning"),
        ("cleaning", "available"),
    ];
    assert_eq!(transitions[undeploy..], pairs(&expected));
    let expected_events = [
        "Automated cleaning: deploy.erase_devices_metadata (priority 99), deploy.erase_devices (priority 10)",
        "Clean step deploy.erase_devices_metadata succeeded: /dev/vda metadata 1.0 MiB in 0.5 s (2.0 MiB/s)",
        "Clean step deploy.erase_devices succeeded: /dev/vda write zeroes 3072 MiB in 1.2 s (2560 MiB/s, 66 samples \
         verified); /dev/nvme0n1 nvme format (user data erase) 512 MiB in 2.0 s (256 MiB/s, 8 samples verified)",
        "Automated cleaning finished: powering the node off",
    ];
    for expected in expected_events {
        assert!(events.iter().any(|event| event == expected), "{expected:?} missing from {events:#?}");
    }

    // The agent's power off is its last task: told again until acknowledged, then its token ends.
    assert_eq!(server.heartbeat(&heartbeat(&token, None)).await.task.as_ref(), Some(&power_off));
    let acknowledged = heartbeat(&token, Some(report(&power_off, CommandStatus::Succeeded, None)));
    assert_eq!(server.heartbeat(&acknowledged).await.task, None);
    let after = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(after.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn priorities_choose_and_order_the_steps_and_zero_leaves_a_step_out() {
    let cases: [(&str, u32, u32, &[&str]); 4] = [
        ("IPA's defaults", 99, 10, &["deploy.erase_devices_metadata", "deploy.erase_devices"]),
        ("full erase disabled, as devstack", 99, 0, &["deploy.erase_devices_metadata"]),
        ("full erase first", 5, 50, &["deploy.erase_devices", "deploy.erase_devices_metadata"]),
        ("both disabled", 0, 0, &[]),
    ];
    for (name, metadata, erase, expected) in cases {
        let server = server_with(|config| {
            config.erase_devices_metadata_priority = metadata;
            config.erase_devices_priority = erase;
        })
        .await;
        let bmc = FakeRedfish::start().await;
        managed_redfish_node(&server, &bmc, json!({})).await;
        assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED, "{name}");
        if expected.is_empty() {
            // Nothing to run: available before the 202, without booting the ramdisk.
            let node = server.node().await;
            assert_eq!(node["provision_state"], "available", "{name}");
            assert!(!bmc.changes().iter().any(|change| change.starts_with("boot")), "{name}: {:?}", bmc.changes());
            let (_, events) = history(&server).await;
            let finished = "Cleaning finished: no clean step is enabled (every priority is 0)";
            assert!(events.iter().any(|event| event == finished), "{name}: {events:#?}");
            continue;
        }
        let node = wait_until_idle_in(&server, "clean wait").await;
        assert_eq!(node["target_provision_state"], "available", "{name}");
        let steps = agent_runs_every_step(&server, |_| None).await;
        assert_eq!(steps, expected, "{name}");
        let node = server.node().await;
        assert_eq!(node["provision_state"], "available", "{name}");
        // A step that reported no figures is still done, with nothing kept for it.
        assert!(node["driver_internal_info"].get("clean_step_results").is_none(), "{name}: {node:#}");
    }
}

#[tokio::test]
async fn automated_clean_on_the_node_overrides_the_controllers_switch() {
    let cases = [
        ("controller on, node unset", true, json!(null), true),
        ("controller on, node off", true, json!(false), false),
        ("controller off, node unset", false, json!(null), false),
        ("controller off, node on", false, json!(true), true),
    ];
    for (name, controller, node_field, cleans) in cases {
        let server = server_with(|config| config.automated_clean = controller).await;
        let bmc = FakeRedfish::start().await;
        managed_redfish_node(&server, &bmc, json!({"automated_clean": node_field})).await;
        assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED, "{name}");
        let node = server.node().await;
        if cleans {
            assert_eq!(node["provision_state"], "cleaning", "{name}");
            let node = wait_until_idle_in(&server, "clean wait").await;
            assert_eq!(node["target_provision_state"], "available", "{name}");
            assert_eq!(bmc.changes(), ["boot Pxe Once", "On"], "{name}");
        } else {
            assert_eq!(node["provision_state"], "available", "{name}");
            assert!(bmc.changes().is_empty(), "{name}: {:?}", bmc.changes());
            let (transitions, events) = history(&server).await;
            assert_eq!(transitions.last().unwrap(), &("cleaning".to_owned(), "available".to_owned()), "{name}");
            assert!(events.contains(&"Cleaning finished: automated cleaning is disabled".to_owned()), "{name}");
        }
    }
}

#[tokio::test]
async fn a_failed_automated_step_leaves_the_node_in_clean_failed_and_maintenance() {
    let server = server_with(|_| {}).await;
    let bmc = FakeRedfish::start().await;
    managed_redfish_node(&server, &bmc, json!({})).await;
    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
    wait_until_idle_in(&server, "clean wait").await;
    let token = lookup_token(&server).await;
    let step = server.heartbeat(&heartbeat(&token, None)).await.task.unwrap();
    assert_eq!(clean_step_of(&step), "deploy.erase_devices_metadata");
    let refusal = "wipefs --force --all /dev/vda failed: exit status 1";
    let failed = heartbeat(&token, Some(report(&step, CommandStatus::Failed, Some(refusal))));
    assert_eq!(server.heartbeat(&failed).await.task, None);

    let reason = format!("Clean step deploy.erase_devices_metadata failed: {refusal}");
    assert_clean_failed(&server, &token, &reason, "available").await;
}

#[tokio::test]
async fn provide_refuses_a_node_to_clean_whose_bmc_is_unusable_before_any_state_change() {
    let server = server_with(|_| {}).await;
    let bmc = FakeRedfish::start().await;
    managed_redfish_node(&server, &bmc, json!({})).await;
    let patch = json!([{"op": "remove", "path": "/driver_info/redfish_address"}]);
    assert_eq!(server.patch(patch).await.status(), StatusCode::OK);
    let refused = server.provision("provide").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let message = fault(refused).await;
    assert!(message.contains("redfish_address"), "{message}");
    assert_eq!(server.node().await["provision_state"], "manageable");
    // Without cleaning, the BMC is not needed: provide goes through.
    let patch = json!([{"op": "add", "path": "/automated_clean", "value": false}]);
    assert_eq!(server.patch(patch).await.status(), StatusCode::OK);
    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.node().await["provision_state"], "available");
}

#[tokio::test]
async fn automated_clean_is_a_node_field_from_1_47() {
    let server = common::start().await;
    let create = |version: &'static str, body: Value| {
        server
            .http
            .post(format!("{}/v1/nodes", server.base))
            .header("X-OpenStack-Ironic-API-Version", version)
            .json(&body)
    };
    let too_old = create("1.46", json!({"driver": "fake-hardware", "automated_clean": false})).send().await.unwrap();
    assert_eq!(too_old.status(), StatusCode::NOT_ACCEPTABLE);
    let created = create("1.47", json!({"uuid": NODE_UUID, "driver": "fake-hardware", "automated_clean": "false"}));
    let created = created.send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.json::<Value>().await.unwrap()["automated_clean"], false);

    let server = &server;
    let show = |version: &'static str| async move {
        let response = server
            .http
            .get(format!("{}/v1/nodes/{NODE_UUID}", server.base))
            .header("X-OpenStack-Ironic-API-Version", version)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    };
    assert!(show("1.46").await.get("automated_clean").is_none());
    let patch = server.patch(json!([{"op": "replace", "path": "/automated_clean", "value": true}])).await;
    assert_eq!(patch.status(), StatusCode::OK);
    assert_eq!(show("1.47").await["automated_clean"], true);
    let patch = server.patch(json!([{"op": "remove", "path": "/automated_clean"}])).await;
    assert_eq!(patch.status(), StatusCode::OK);
    let shown = show("1.47").await;
    assert_eq!(shown.get("automated_clean"), Some(&Value::Null), "{shown:#}");
}
