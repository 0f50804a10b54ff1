//! The controller keeps an operator-run dnsmasq's hosts file in step with the enrolled ports.

mod common;

use std::time::{Duration, Instant};

use common::{Server, MAC, NODE_UUID};
use ferric_controller::dhcp::DhcpSetup;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn wait_for_hosts(path: &std::path::Path, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text == expected {
            return;
        }
        assert!(Instant::now() < deadline, "hosts file is {text:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn enrolled_macs_appear_in_the_hosts_file_and_leave_with_their_port() {
    let dir = tempfile::tempdir().unwrap();
    let hosts_file = dir.path().join("ferric.hosts");
    let setup = DhcpSetup::External { hosts_file: hosts_file.clone(), pid_file: None };
    let server: Server = common::start_with(move |config| config.dhcp = Some(setup)).await;
    server.enroll(json!({})).await;
    wait_for_hosts(&hosts_file, &format!("{MAC}\n")).await;

    let ports = server.get(&format!("/v1/nodes/{NODE_UUID}/ports")).await;
    let port = ports["ports"][0]["uuid"].as_str().unwrap().to_owned();
    let deleted = server.api(Method::DELETE, &format!("/v1/ports/{port}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    wait_for_hosts(&hosts_file, "").await;
}
