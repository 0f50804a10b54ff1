//! A deploy whose agent stops calling back fails after the deploy call-back timeout.

mod common;

use std::time::Duration;

use common::NODE_UUID;
use ferric_protocol::Heartbeat;
use serde_json::Value;

#[tokio::test]
async fn silent_agents_fail_the_deploy_and_heartbeats_keep_it_alive() {
    let server = common::start_with(|config| {
        config.deploy_callback_timeout = Duration::from_secs(1);
        config.timeout_check_interval = Duration::from_millis(100);
    })
    .await;
    server.deploying_node().await;
    let token = server.lookup_ok().await.config.agent_token;

    // Heartbeats every 300 ms keep the node waiting well past the 1 s timeout.
    for _ in 0..6 {
        let heartbeat = Heartbeat {
            agent_token: token.clone(),
            agent_version: "0.1.0".into(),
            command: None,
            progress: None,
            log_tail: vec![],
            inventory: None,
        };
        server.heartbeat(&heartbeat).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(server.node().await["provision_state"], "wait call-back");

    // Then silence: the node fails.
    let node = server.wait_for_node(Duration::from_secs(5), |node| node["provision_state"] == "deploy failed").await;
    assert_eq!(node["last_error"], format!("Timeout reached while waiting for callback for node {NODE_UUID}"));
    assert_eq!(node["target_provision_state"], "active");
    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let last: &Value = history["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["severity"], "ERROR");
    assert_eq!(last["from_state"], "wait call-back");
    assert_eq!(last["to_state"], "deploy failed");
}
