//! A deploy whose agent never calls back fails after the deploy call-back timeout, through
//! the real server and its background watcher. Only upper bounds on time are waited for, with
//! wide margins; that heartbeats keep a deploy alive is tested with explicit clocks in the
//! conductor's unit tests.

mod common;

use std::time::Duration;

use chrono::DateTime;
use common::NODE_UUID;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(1);

fn at(event: &Value) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(event["created_at"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_silent_agent_fails_the_deploy_after_the_timeout() {
    let server = common::start_with(|config| {
        config.deploy_callback_timeout = TIMEOUT;
        config.timeout_check_interval = Duration::from_millis(100);
    })
    .await;
    server.deploying_node().await;

    let node = server.wait_for_node(Duration::from_secs(60), |node| node["provision_state"] == "deploy failed").await;
    assert_eq!(node["last_error"], format!("Timeout reached while waiting for callback for node {NODE_UUID}"));
    assert_eq!(node["target_provision_state"], "active");

    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let events = history["history"].as_array().unwrap();
    let waiting = events.iter().find(|event| event["to_state"] == "wait call-back").expect("a wait call-back event");
    let failed = events.last().unwrap();
    assert_eq!(failed["severity"], "ERROR");
    assert_eq!(failed["from_state"], "wait call-back");
    assert_eq!(failed["to_state"], "deploy failed");
    // Not before the timeout had passed.
    let waited = (at(failed) - at(waiting)).to_std().unwrap();
    assert!(waited >= TIMEOUT, "failed after only {waited:?}");
}
