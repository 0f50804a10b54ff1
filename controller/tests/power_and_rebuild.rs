//! Power actions through the fake power interface, and rebuilding a deployed node, against a real server.

mod common;

use common::{fault, heartbeat, report, Server, NODE_UUID};
use ferric_protocol::{Command, CommandStatus};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

async fn power(server: &Server, body: Value, version: &str) -> Response {
    server
        .http
        .put(format!("{}/v1/nodes/{NODE_UUID}/states/power", server.base))
        .header("X-OpenStack-Ironic-API-Version", version)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Plays the agent of a node in `wait call-back` through write_image and reboot, to `active`.
async fn agent_completes_the_deploy(server: &Server) {
    let token = server.lookup_ok().await.config.agent_token;
    let write = server.heartbeat(&heartbeat(&token, None)).await.task.expect("write_image task");
    assert!(matches!(write.command, Command::WriteImage { .. }), "{write:?}");
    let reboot = server
        .heartbeat(&heartbeat(&token, Some(report(&write, CommandStatus::Succeeded, None))))
        .await
        .task
        .expect("reboot task");
    assert_eq!(reboot.command, Command::Reboot);
    assert_eq!(server.node().await["provision_state"], "active");
    assert!(server
        .heartbeat(&heartbeat(&token, Some(report(&reboot, CommandStatus::Succeeded, None))))
        .await
        .task
        .is_none());
}

#[tokio::test]
async fn fake_power_actions_change_the_power_state_before_the_202() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    assert!(server.node().await["power_state"].is_null());

    let response = power(&server, json!({"target": "power on"}), common::LATEST).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.ends_with(&format!("/v1/nodes/{NODE_UUID}/states")), "{location}");
    let states = server.get(&format!("/v1/nodes/{NODE_UUID}/states")).await;
    assert_eq!(states["power_state"], "power on");
    assert!(states["target_power_state"].is_null());

    let soft_off = json!({"target": "soft power off", "timeout": 30});
    assert_eq!(power(&server, soft_off.clone(), "1.26").await.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(power(&server, soft_off, "1.27").await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.node().await["power_state"], "power off");
    assert_eq!(power(&server, json!({"target": "rebooting"}), common::LATEST).await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.node().await["power_state"], "power on");

    let zero_timeout = power(&server, json!({"target": "power off", "timeout": 0}), common::LATEST).await;
    assert_eq!(zero_timeout.status(), StatusCode::BAD_REQUEST);
    let bogus = power(&server, json!({"target": "power sideways"}), common::LATEST).await;
    assert_eq!(bogus.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        fault(bogus).await,
        format!(
            "The requested action \"power sideways\" can not be performed on node \"{NODE_UUID}\" while it is in \
             state \"power on\"."
        )
    );
    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let power_events = history["history"].as_array().unwrap().iter().filter(|e| e["event_type"] == "power").count();
    assert_eq!(power_events, 3, "{history:#}");

    // An ipmi node without its BMC's address: refused naming the missing field, the state untouched.
    let patch = json!([{"op": "replace", "path": "/driver", "value": "ipmi"}]);
    assert_eq!(server.patch(patch).await.status(), StatusCode::OK);
    let ipmi = power(&server, json!({"target": "power off"}), common::LATEST).await;
    assert_eq!(ipmi.status(), StatusCode::BAD_REQUEST);
    assert!(fault(ipmi).await.contains("ipmi_address"));
    assert_eq!(server.node().await["power_state"], "power on");

    let missing = server
        .api(Method::PUT, "/v1/nodes/no-such-node/states/power")
        .json(&json!({"target": "power on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rebuild_redeploys_an_active_node_through_its_agent() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    for target in ["manage", "provide"] {
        assert_eq!(server.provision(target).await.status(), StatusCode::ACCEPTED, "{target}");
    }
    let refused = server.provision("rebuild").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(fault(refused).await.contains("while it is in state \"available\""));

    server.deploying_node_after_provide().await;
    agent_completes_the_deploy(&server).await;

    assert_eq!(server.provision("rebuild").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "wait call-back");
    assert_eq!(node["target_provision_state"], "active");
    agent_completes_the_deploy(&server).await;

    let protect = json!([{"op": "replace", "path": "/protected", "value": true}]);
    assert_eq!(server.patch(protect).await.status(), StatusCode::OK);
    let protected = server.provision("rebuild").await;
    assert_eq!(protected.status(), StatusCode::FORBIDDEN);
    let unprotect = json!([{"op": "replace", "path": "/protected", "value": false}]);
    assert_eq!(server.patch(unprotect).await.status(), StatusCode::OK);

    let no_image = json!([{"op": "remove", "path": "/instance_info/image_source"}]);
    assert_eq!(server.patch(no_image).await.status(), StatusCode::OK);
    let invalid = server.provision("rebuild").await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert!(fault(invalid).await.contains("'instance_info.image_source'"));
    assert_eq!(server.node().await["provision_state"], "active");
}
