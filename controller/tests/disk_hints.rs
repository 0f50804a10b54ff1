//! Root device hints and `skip_block_devices` are checked when they are set on a node (create and
//! PATCH), with a 400 naming the hint or entry at fault, not when the node is deployed.

mod common;

use common::{fault, NODE_UUID};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Bad hints: the case's name, the node fields, and what the error message starts and ends with.
fn refused_cases() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    vec![
        (
            "size not a number",
            json!({"properties": {"root_device": {"size": "big"}}}),
            "Invalid root device hint size: ",
            "(properties.root_device)",
        ),
        (
            "unknown hint",
            json!({"properties": {"root_device": {"colour": "blue"}}}),
            "Invalid root device hint colour: ",
            "(properties.root_device)",
        ),
        (
            "instance_info hints too",
            json!({"instance_info": {"root_device": {"rotational": "maybe"}}}),
            "Invalid root device hint rotational: ",
            "(instance_info.root_device)",
        ),
        (
            "skip list not a list",
            json!({"properties": {"skip_block_devices": {"name": "/dev/sda"}}}),
            "Invalid properties.skip_block_devices: ",
            "is not a list",
        ),
        (
            "skip entry not an object",
            json!({"properties": {"skip_block_devices": ["/dev/sda"]}}),
            "Invalid properties.skip_block_devices entry \"/dev/sda\": ",
            "it is not an object",
        ),
        (
            "skip entry with a bad hint",
            json!({"properties": {"skip_block_devices": [{"name": "/dev/sdb"}, {"size": "big"}]}}),
            "Invalid properties.skip_block_devices entry {\"size\":\"big\"}: invalid root device hint size: ",
            "",
        ),
        (
            "skip entry with a volume name not a string",
            json!({"properties": {"skip_block_devices": [{"volume_name": 5}]}}),
            "Invalid properties.skip_block_devices entry {\"volume_name\":5}: ",
            "volume_name 5 is not a string",
        ),
        (
            "skip entry without hints",
            json!({"properties": {"skip_block_devices": [{}]}}),
            "Invalid properties.skip_block_devices entry {}: ",
            "would skip every disk",
        ),
    ]
}

async fn create(server: &common::Server, fields: &Value) -> reqwest::Response {
    let mut body = json!({"uuid": NODE_UUID, "driver": "fake-hardware"});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    server.api(Method::POST, "/v1/nodes").json(&body).send().await.unwrap()
}

#[tokio::test]
async fn bad_hints_are_refused_on_create_naming_the_hint() {
    let server = common::start().await;
    for (name, fields, starts, ends) in refused_cases() {
        let refused = create(&server, &fields).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{name}");
        let message = fault(refused).await;
        assert!(message.starts_with(starts) && message.ends_with(ends), "{name}: {message}");
    }
    let listed = server.get("/v1/nodes").await;
    assert_eq!(listed["nodes"], json!([]), "no node was created");
}

#[tokio::test]
async fn bad_hints_are_refused_on_patch_and_the_node_keeps_its_fields() {
    let server = common::start().await;
    let good = json!({"properties": {"root_device": {"serial": "S1"}}});
    assert_eq!(create(&server, &good).await.status(), StatusCode::CREATED);
    for (name, fields, starts, ends) in refused_cases() {
        let patch: Vec<Value> =
            fields
                .as_object()
                .unwrap()
                .iter()
                .flat_map(|(field, object)| {
                    object.as_object().unwrap().iter().map(
                        move |(key, value)| json!({"op": "add", "path": format!("/{field}/{key}"), "value": value}),
                    )
                })
                .collect();
        let refused = server.patch(Value::Array(patch)).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{name}");
        let message = fault(refused).await;
        assert!(message.starts_with(starts) && message.ends_with(ends), "{name}: {message}");
    }
    let node = server.node().await;
    assert_eq!(node["properties"], good["properties"]);
    assert_eq!(node["instance_info"], json!({}));
}

#[tokio::test]
async fn good_hints_and_skip_lists_are_accepted() {
    let server = common::start().await;
    let fields = json!({
        "properties": {
            "root_device": {"size": ">= 10", "rotational": false, "model": "<in> QEMU HARDDISK"},
            "skip_block_devices": [{"name": "/dev/sdb"}, {"volume_name": "raid-0"}, {"serial": "S2", "vendor": "ATA"}],
        },
        "instance_info": {"root_device": {"wwn": "0x5000c500a1b2c3d4"}},
    });
    let created = create(&server, &fields).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let node: Value = created.json().await.unwrap();
    assert_eq!(node["properties"], fields["properties"], "stored as given");
    let patch = json!([{"op": "replace", "path": "/properties/root_device", "value": {"by_path": "/dev/disk/by-path/pci-0000:00:05.0"}}]);
    assert_eq!(server.patch(patch).await.status(), StatusCode::OK);
    // A null root_device is no hint.
    let patch = json!([{"op": "replace", "path": "/properties/root_device", "value": null}]);
    assert_eq!(server.patch(patch).await.status(), StatusCode::OK);
}
