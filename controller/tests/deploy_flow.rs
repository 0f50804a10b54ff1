//! The walking-skeleton flow against a real server, with a simulated agent speaking ferric_protocol.

mod common;

use common::{fault, heartbeat, report, Server, MAC, NODE_UUID};
use ferric_protocol::{Command, CommandStatus, Inventory, Progress, Task, MASKED_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Looks up (getting the token) and heartbeats until the write_image task arrives.
async fn agent_gets_write_image(server: &Server) -> (String, Task) {
    let lookup = server.lookup_ok().await;
    assert_eq!(lookup.node.uuid, NODE_UUID);
    let token = lookup.config.agent_token;
    assert_ne!(token, MASKED_TOKEN);
    let mut first = heartbeat(&token, None);
    first.inventory = Some(Inventory { hostname: Some("ramdisk".into()), ..Default::default() });
    let task = server.heartbeat(&first).await.task.expect("a task in the first heartbeat answer");
    (token, task)
}

#[tokio::test]
async fn deploy_succeeds_and_the_agent_is_told_to_reboot() {
    let server = common::start().await;
    let created = server.enroll(json!({})).await;
    assert_eq!(created["provision_state"], "enroll");

    assert_eq!(server.provision("manage").await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.node().await["provision_state"], "manageable");
    // Lookup is refused outside the states where an agent has work.
    assert_eq!(server.lookup(MAC).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.node().await["provision_state"], "available");

    server.deploying_node_after_provide().await;
    let node = server.node().await;
    assert_eq!(node["provision_state"], "wait call-back");
    assert_eq!(node["target_provision_state"], "active");

    let (token, task) = agent_gets_write_image(&server).await;
    let Command::WriteImage { image_info } = &task.command else { panic!("expected write_image, got {task:?}") };
    assert_eq!(image_info.urls, vec!["http://10.0.2.2:8080/disk.raw".to_owned()]);
    assert_eq!(image_info.checksum.as_deref(), Some("a".repeat(64).as_str()));
    assert_eq!(image_info.disk_format.as_deref(), Some("raw"));
    assert_eq!(image_info.root_device, Some(json!({"serial": "S1"})));
    let node = server.node().await;
    assert_eq!(node["deploy_step"], json!({"interface": "deploy", "step": "write_image", "args": {}, "priority": 80}));

    // The token is handed out once; later lookups see it masked.
    assert_eq!(server.lookup_ok().await.config.agent_token, MASKED_TOKEN);
    // Heartbeats without the token, or with another, are refused.
    let mut missing = serde_json::to_value(heartbeat("", None)).unwrap();
    missing.as_object_mut().unwrap().remove("agent_token");
    let refused = server.heartbeat_raw(&missing).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(refused).await, "Invalid or missing agent token received.");
    let wrong = server.heartbeat_raw(&serde_json::to_value(heartbeat("not-the-token", None)).unwrap()).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);

    // Progress of the running task shows on the node, and each heartbeat renews the wait.
    let waiting_since = server.node().await["provision_updated_at"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let mut running = heartbeat(&token, Some(report(&task, CommandStatus::Running, None)));
    running.progress = Some(Progress {
        stage: "writing image".into(),
        bytes_done: 512,
        bytes_total: Some(2048),
        bytes_per_second: 1024.0,
        eta_seconds: Some(1.5),
    });
    running.log_tail = vec!["downloading".into(), "writing".into()];
    assert_eq!(server.heartbeat(&running).await.task, None);
    let node = server.node().await;
    assert!(node["provision_updated_at"].as_str().unwrap() > waiting_since.as_str(), "{node:#}");
    let internal = &node["driver_internal_info"];
    assert_eq!(internal["agent_progress"]["bytes_done"], 512);
    assert_eq!(internal["agent_progress"]["stage"], "writing image");
    assert_eq!(internal["agent_log_tail"], json!(["downloading", "writing"]));
    assert_eq!(internal["agent_command"]["command_status"], "RUNNING");
    assert_eq!(internal["agent_version"], "0.1.0");
    assert!(internal["agent_last_heartbeat"].as_str().unwrap().ends_with("+00:00"));
    let shown = node.to_string();
    assert!(!shown.contains(&token), "the token leaked through the API");

    // The inventory from the first heartbeat is kept.
    let inventory = server.get(&format!("/v1/nodes/{NODE_UUID}/inventory")).await;
    assert_eq!(inventory["inventory"]["hostname"], "ramdisk");
    assert_eq!(inventory["plugin_data"], json!({}));

    // Success: active, target and step cleared, and the agent reboots.
    let done = server.heartbeat(&heartbeat(&token, Some(report(&task, CommandStatus::Succeeded, None)))).await;
    let reboot = done.task.expect("a reboot task");
    assert_eq!(reboot.command, Command::Reboot);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "active");
    assert!(node["target_provision_state"].is_null());
    assert_eq!(node["deploy_step"], json!({}));
    assert!(node["last_error"].is_null());
    // An agent that missed that answer is told again; once it reports the reboot, nothing more.
    let again = server.heartbeat(&heartbeat(&token, Some(report(&task, CommandStatus::Succeeded, None)))).await;
    assert_eq!(again.task.as_ref(), Some(&reboot));
    let acknowledged = server.heartbeat(&heartbeat(&token, Some(report(&reboot, CommandStatus::Running, None)))).await;
    assert_eq!(acknowledged.task, None);
    // That ended the agent's work: its token no longer works.
    let after_reboot = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(after_reboot.status(), StatusCode::BAD_REQUEST);

    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let transitions: Vec<(String, String)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| !event["from_state"].is_null())
        .map(|event| (event["from_state"].as_str().unwrap().into(), event["to_state"].as_str().unwrap().into()))
        .collect();
    let expected = [
        ("enroll", "verifying"),
        ("verifying", "manageable"),
        ("manageable", "cleaning"),
        ("cleaning", "available"),
        ("available", "deploying"),
        ("deploying", "wait call-back"),
        ("wait call-back", "deploying"),
        ("deploying", "active"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
    assert_eq!(transitions, expected);
    let first = &history["history"][0];
    for field in ["uuid", "created_at", "severity", "event_type", "event", "conductor", "user"] {
        assert!(first.get(field).is_some(), "history events lack {field}: {first}");
    }
    assert_eq!(first["severity"], "INFO");

    // Undeploy goes back to available through deleting and cleaning, and wipes the instance.
    assert_eq!(server.provision("deleted").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "available");
    assert_eq!(node["instance_info"], json!({}));
    // Its token is gone: the old agent can no longer heartbeat.
    let stale = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(stale.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_failed_write_fails_the_deploy_with_the_agents_reason() {
    let server = common::start().await;
    server.deploying_node().await;
    let (token, task) = agent_gets_write_image(&server).await;
    let reason = "checksum mismatch: expected aaaa, computed bbbb";
    let answer = server.heartbeat(&heartbeat(&token, Some(report(&task, CommandStatus::Failed, Some(reason))))).await;
    assert_eq!(answer.task, None);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "deploy failed");
    assert_eq!(node["target_provision_state"], "active");
    assert_eq!(node["last_error"], format!("Deploy step deploy.write_image failed: {reason}"));
    assert_eq!(node["deploy_step"], json!({}));

    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let errors: Vec<&Value> =
        history["history"].as_array().unwrap().iter().filter(|event| event["severity"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{history:#}");
    assert!(errors[0]["event"].as_str().unwrap().contains(reason));
    assert_eq!(errors[0]["to_state"], "deploy failed");

    // The agent stays in the ramdisk, but its work is over: its heartbeats get Ironic's 400.
    let stale = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(stale.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(stale).await, "Invalid or missing agent token received.");

    // A failed deploy may be retried: the error is cleared, and it gets a fresh token and task.
    assert_eq!(server.provision("active").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "wait call-back");
    assert!(node["last_error"].is_null(), "{node:#}");
    let (new_token, new_task) = agent_gets_write_image(&server).await;
    assert_ne!(new_token, token);
    assert_ne!(new_task.id, task.id);
}

#[tokio::test]
async fn abort_stops_a_deploy_waiting_for_its_agent() {
    let server = common::start().await;
    server.deploying_node().await;
    let (token, _) = agent_gets_write_image(&server).await;
    // Abort is a verb from 1.13, but aborting `wait call-back` needs 1.110.
    let old = server
        .http
        .put(format!("{}/v1/nodes/{NODE_UUID}/states/provision", server.base))
        .header("X-OpenStack-Ironic-API-Version", "1.109")
        .json(&json!({"target": "abort"}))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(server.node().await["provision_state"], "wait call-back");
    assert_eq!(server.provision("abort").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "deploy failed");
    assert_eq!(node["last_error"], "Deploy aborted");
    let stale = server.heartbeat_raw(&serde_json::to_value(heartbeat(&token, None)).unwrap()).await;
    assert_eq!(stale.status(), StatusCode::BAD_REQUEST);
}
