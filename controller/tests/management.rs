//! Boot device and validation endpoints against a real server, with nodes whose BMC needs no network:
//! the fake management interface, and ipmi/redfish nodes whose driver_info is checked without I/O.

mod common;

use common::{fault, Server, LATEST, NODE_UUID};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn put_boot_device(server: &Server, body: Value) -> reqwest::Response {
    server
        .api(Method::PUT, &format!("/v1/nodes/{NODE_UUID}/management/boot_device"))
        .header("X-OpenStack-Ironic-API-Version", LATEST)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn boot_device_requests_are_checked_and_the_fake_interface_accepts_pxe() {
    let server = common::start().await;
    server.enroll(json!({"driver": "fake-hardware"})).await;
    let base = format!("/v1/nodes/{NODE_UUID}/management/boot_device");
    assert_eq!(server.get(&format!("{base}/supported")).await, json!({"supported_boot_devices": ["pxe"]}));
    assert_eq!(server.get(&base).await, json!({"boot_device": "pxe", "persistent": false}));

    let accepted = put_boot_device(&server, json!({"boot_device": "pxe", "persistent": true})).await;
    assert_eq!(accepted.status(), StatusCode::NO_CONTENT);
    let history = server.get(&format!("/v1/nodes/{NODE_UUID}/history")).await;
    let events: Vec<&str> = history["history"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(events.contains(&"Boot device set to pxe (persistent)"), "{events:?}");
    assert!(server.node().await["reservation"].is_null());

    let cases = [
        (json!({"boot_device": "floppy"}), "Invalid boot_device \"floppy\""),
        (json!({"boot_device": "disk"}), "supports pxe"),
        (json!({"boot_device": "pxe", "persistent": "yes"}), "Invalid persistent"),
        (json!({"boot_device": "pxe", "bogus": 1}), "Unknown argument: \"bogus\""),
        (json!({"persistent": true}), "Missing argument: \"boot_device\""),
    ];
    for (body, expected) in cases {
        let refused = put_boot_device(&server, body.clone()).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{body}");
        let message = fault(refused).await;
        assert!(message.contains(expected), "{body}: {message}");
    }
}

#[tokio::test]
async fn validate_reports_each_interface_and_names_missing_driver_info() {
    let server = common::start().await;
    server.enroll(json!({"driver": "ipmi", "driver_info": {"ipmi_username": "admin"}})).await;
    let report = server.get(&format!("/v1/nodes/{NODE_UUID}/validate")).await;
    assert_eq!(report["power"]["result"], false, "{report}");
    assert!(report["power"]["reason"].as_str().unwrap().contains("ipmi_address"), "{report}");
    assert_eq!(report["management"]["result"], false, "{report}");
    assert_eq!(report["deploy"]["result"], false, "{report}");
    assert!(report["deploy"]["reason"].as_str().unwrap().contains("instance_info.image_source"), "{report}");
    assert_eq!(report["boot"]["result"], true, "{report}");
    assert!(report["console"]["result"].is_null(), "{report}");

    // The same gap refuses actions that need the BMC, naming the field, and leaves the node unlocked.
    let manage = server.provision("manage").await;
    assert_eq!(manage.status(), StatusCode::BAD_REQUEST);
    assert!(fault(manage).await.contains("ipmi_address"));
    let node = server.node().await;
    assert_eq!(node["provision_state"], "enroll");
    assert!(node["reservation"].is_null());

    let patch = json!([{"op": "add", "path": "/driver_info/ipmi_address", "value": "127.0.0.1"}]);
    assert_eq!(server.patch(patch).await.status(), StatusCode::OK);
    let report = server.get(&format!("/v1/nodes/{NODE_UUID}/validate")).await;
    assert_eq!(report["power"], json!({"result": true}), "{report}");
}
