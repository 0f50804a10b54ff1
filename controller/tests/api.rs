//! Ironic API behaviour: microversions, error bodies, validation, node and port CRUD.

mod common;

use common::{fault, Server, MAC, NODE_UUID};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|value| value.to_str().ok())
}

async fn raw(server: &Server, method: Method, path: &str, version: Option<&str>) -> reqwest::RequestBuilder {
    let request = server.http.request(method, format!("{}{path}", server.base));
    match version {
        Some(version) => request.header("X-OpenStack-Ironic-API-Version", version),
        None => request,
    }
}

#[tokio::test]
async fn unsupported_versions_get_406_with_the_supported_range() {
    let server = common::start().await;
    let response = raw(&server, Method::GET, "/v1/nodes", Some("1.200")).await.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(header(&response, "X-OpenStack-Ironic-API-Minimum-Version"), Some("1.1"));
    assert_eq!(header(&response, "X-OpenStack-Ironic-API-Maximum-Version"), Some("1.115"));
    assert_eq!(header(&response, "X-OpenStack-Ironic-API-Version"), Some("1.200"));
    assert_eq!(
        fault(response).await,
        "Version 1.200 was requested but the minor version is not supported by this service. \
         The supported version range is: [1.1, 1.115]."
    );
    let malformed = raw(&server, Method::GET, "/v1", Some("banana")).await.send().await.unwrap();
    assert_eq!(malformed.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(header(&malformed, "X-OpenStack-Ironic-API-Minimum-Version"), Some("1.1"));
    assert_eq!(header(&malformed, "X-OpenStack-Ironic-API-Version"), Some("banana"));
    let standard = server
        .http
        .get(format!("{}/v1", server.base))
        .header("OpenStack-API-Version", "baremetal 1.73")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&standard, "X-OpenStack-Ironic-API-Version"), Some("1.73"));
    let latest = raw(&server, Method::GET, "/v1", Some("latest")).await.send().await.unwrap();
    assert_eq!(header(&latest, "X-OpenStack-Ironic-API-Version"), Some("1.115"));
}

#[tokio::test]
async fn version_documents_and_headers_without_a_version() {
    let server = common::start().await;
    let response = raw(&server, Method::GET, "/", None).await.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "X-OpenStack-Ironic-API-Version"), Some("1.1"));
    let root: Value = response.json().await.unwrap();
    assert_eq!(root["name"], "OpenStack Ironic API");
    assert_eq!(root["default_version"]["version"], "1.115");
    assert_eq!(root["default_version"]["min_version"], "1.1");
    assert_eq!(root["versions"][0]["id"], "v1");
    assert_eq!(root["default_version"]["links"][0]["href"], format!("{}/v1/", server.base));
    let v1 = server.get("/v1").await;
    assert_eq!(v1["id"], "v1");
    assert_eq!(v1["media_types"]["type"], "application/vnd.openstack.ironic.v1+json");
    assert!(v1["lookup"].is_array());
    let old: Value = raw(&server, Method::GET, "/v1/", None).await.send().await.unwrap().json().await.unwrap();
    assert!(old.get("lookup").is_none());
}

#[tokio::test]
async fn errors_carry_ironics_double_encoded_body_and_version_headers() {
    let server = common::start().await;
    let response = server.api(Method::GET, "/v1/nodes/missing-node").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&response, "X-OpenStack-Ironic-API-Maximum-Version"), Some("1.115"));
    let body: Value = response.json().await.unwrap();
    let encoded = body["error_message"].as_str().expect("error_message is a string");
    let inner: Value = serde_json::from_str(encoded).unwrap();
    assert_eq!(
        inner,
        json!({"faultcode": "Client", "faultstring": "Node missing-node could not be found.", "debuginfo": null})
    );

    let wrong_method = server.api(Method::PUT, "/v1/nodes").send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&wrong_method, "X-OpenStack-Ironic-API-Version"), Some("1.115"));
    assert_eq!(fault(wrong_method).await, "The method specified is not allowed for this resource.");

    let no_route = server.api(Method::GET, "/v1/chassis-that-is-not").send().await.unwrap();
    assert_eq!(no_route.status(), StatusCode::NOT_FOUND);
    assert!(fault(no_route).await.contains("could not be found"));

    let malformed = server
        .api(Method::POST, "/v1/nodes")
        .header("Content-Type", "application/json")
        .body("{\"driver\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert!(fault(malformed).await.contains("not valid JSON"));
}

#[tokio::test]
async fn node_creation_is_validated_like_ironic() {
    let server = common::start().await;
    let create = |body: Value| server.api(Method::POST, "/v1/nodes").json(&body).send();

    let unknown = create(json!({"driver": "ipmi", "bogus": 1})).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        fault(unknown).await,
        "Schema error for node: Additional properties are not allowed ('bogus' was unexpected)"
    );
    let no_driver = create(json!({"name": "x"})).await.unwrap();
    assert_eq!(fault(no_driver).await, "Schema error for node: 'driver' is a required property");
    let bad_driver = create(json!({"driver": "warp-drive"})).await.unwrap();
    assert_eq!(bad_driver.status(), StatusCode::BAD_REQUEST);
    assert!(fault(bad_driver).await.contains("driver warp-drive"));
    let bad_name = create(json!({"driver": "ipmi", "name": "has space"})).await.unwrap();
    assert_eq!(fault(bad_name).await, "Cannot create node with invalid name 'has space'");

    let response = create(json!({
        "driver": "ipmi", "name": "n1",
        "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_password": "hunter2"},
        "properties": {"cpus": 2}, "power_interface": "ipmitool", "maintenance": "false"
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let node: Value = response.json().await.unwrap();
    let uuid = node["uuid"].as_str().unwrap();
    assert_eq!(node["provision_state"], "enroll");
    assert_eq!(node["driver_info"]["ipmi_password"], "******");
    assert_eq!(node["driver_info"]["ipmi_address"], "127.0.0.1");
    assert_eq!(node["power_interface"], "ipmitool");
    assert_eq!(node["maintenance"], false);
    assert!(node["created_at"].as_str().unwrap().ends_with("+00:00"));
    for field in ["instance_uuid", "last_error", "boot_mode", "conductor_group", "traits", "clean_step", "links"] {
        assert!(node.get(field).is_some(), "missing {field}");
    }

    let duplicate = create(json!({"driver": "ipmi", "name": "n1"})).await.unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(fault(duplicate).await, "A node with name n1 already exists.");

    // Old clients: nodes start available (shown as null before 1.2), names are hidden and cannot be set.
    let old = raw(&server, Method::POST, "/v1/nodes", None).await.json(&json!({"driver": "fake-hardware"}));
    let old: Value = old.send().await.unwrap().json().await.unwrap();
    assert!(old["provision_state"].is_null());
    assert!(old.get("name").is_none());
    let old_uuid = old["uuid"].as_str().unwrap();
    let seen: Value = raw(&server, Method::GET, &format!("/v1/nodes/{old_uuid}"), Some("1.10"))
        .await
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["provision_state"], "available");
    let named =
        raw(&server, Method::POST, "/v1/nodes", Some("1.4")).await.json(&json!({"driver": "ipmi", "name": "x"}));
    assert_eq!(named.send().await.unwrap().status(), StatusCode::NOT_ACCEPTABLE);

    // Show by name, with fields; list shows the default fields only.
    let by_name = server.get("/v1/nodes/n1?fields=uuid,provision_state").await;
    assert_eq!(by_name["uuid"], uuid);
    let keys: Vec<&str> = by_name.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["links", "provision_state", "uuid"]);
    let listed = server.get("/v1/nodes").await;
    let first = listed["nodes"][0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["instance_uuid", "links", "maintenance", "name", "power_state", "provision_state", "uuid"]);
    let detailed = server.get("/v1/nodes/detail").await;
    assert_eq!(detailed["nodes"].as_array().unwrap().len(), 2);
    assert!(detailed["nodes"][0].get("driver_info").is_some());
    let filtered = server.get("/v1/nodes?provision_state=enroll").await;
    assert_eq!(filtered["nodes"].as_array().unwrap().len(), 1);
    let paged = server.get("/v1/nodes?limit=1").await;
    assert!(paged["next"].as_str().unwrap().contains(&format!("marker={uuid}")));
}

#[tokio::test]
async fn patching_nodes() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    let patched = server
        .patch(json!([
            {"op": "add", "path": "/instance_info/image_source", "value": "http://img"},
            {"op": "replace", "path": "/name", "value": "renamed"},
            {"op": "add", "path": "/extra/rack", "value": "r1"},
            {"op": "replace", "path": "/boot_mode", "value": "bios"},
            {"op": "replace", "path": "/maintenance", "value": true},
        ]))
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let node: Value = patched.json().await.unwrap();
    assert_eq!(node["instance_info"]["image_source"], "http://img");
    assert_eq!(node["name"], "renamed");
    assert_eq!(node["extra"]["rack"], "r1");
    assert_eq!(node["boot_mode"], "bios");
    assert_eq!(node["maintenance"], true);

    let removed = server.patch(json!([{"op": "remove", "path": "/extra/rack"}])).await;
    assert_eq!(removed.json::<Value>().await.unwrap()["extra"], json!({}));

    let root = server.patch(json!([{"op": "add", "path": "/bogus", "value": 1}])).await;
    assert_eq!(root.status(), StatusCode::BAD_REQUEST);
    assert!(fault(root).await.starts_with("Cannot patch /bogus. Only the following can be updated:"));
    let internal = server.patch(json!([{"op": "replace", "path": "/provision_state", "value": "active"}])).await;
    assert_eq!(internal.status(), StatusCode::BAD_REQUEST);
    let missing = server.patch(json!([{"op": "remove", "path": "/extra/nope"}])).await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let wrong_type = server.patch(json!([{"op": "replace", "path": "/properties", "value": "text"}])).await;
    assert_eq!(fault(wrong_type).await, "Schema error for patch: 'text' is not of type 'object', 'null'");
}

#[tokio::test]
async fn patching_inside_a_newer_field_needs_its_version() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    let patch_at = |version: &'static str, path: &str| {
        let body = json!([{"op": "add", "path": path, "value": 1}]);
        server
            .http
            .patch(format!("{}/v1/nodes/{NODE_UUID}", server.base))
            .header("X-OpenStack-Ironic-API-Version", version)
            .json(&body)
            .send()
    };
    // network_data arrived in 1.66.
    assert_eq!(patch_at("1.1", "/network_data/x").await.unwrap().status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(patch_at("1.65", "/network_data/x").await.unwrap().status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(patch_at("1.1", "/extra/x").await.unwrap().status(), StatusCode::OK);
    assert_eq!(patch_at("1.66", "/network_data/x").await.unwrap().status(), StatusCode::OK);
    assert_eq!(server.node().await["network_data"], json!({"x": 1}));
}

#[tokio::test]
async fn secrets_are_masked_whatever_their_value() {
    let server = common::start().await;
    server
        .enroll(json!({
            "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_password": "hunter2"},
            "instance_info": {
                "image_source": "http://img",
                "configdrive": {"meta_data": {"hostname": "h"}, "user_data": "#cloud-config\npassword: x"},
            },
        }))
        .await;
    let node = server.node().await;
    assert_eq!(node["driver_info"]["ipmi_password"], "******");
    assert_eq!(node["driver_info"]["ipmi_address"], "127.0.0.1");
    assert_eq!(node["instance_info"]["configdrive"], "******");
    assert_eq!(node["instance_info"]["image_source"], "http://img");
    let shown = node.to_string();
    assert!(!shown.contains("hunter2") && !shown.contains("cloud-config"), "{shown}");
}

#[tokio::test]
async fn provisioning_verbs_are_checked() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    let deploy = server.provision("deploy").await;
    assert_eq!(deploy.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        fault(deploy).await,
        format!("The requested action \"deploy\" can not be performed on node \"{NODE_UUID}\" while it is in state \"enroll\".")
    );
    let unknown = server.provision("teleport").await;
    assert_eq!(fault(unknown).await, "The requested action \"teleport\" could not be understood.");
    let too_old = raw(&server, Method::PUT, &format!("/v1/nodes/{NODE_UUID}/states/provision"), Some("1.3"))
        .await
        .json(&json!({"target": "manage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_old.status(), StatusCode::NOT_ACCEPTABLE);
    let extra = server
        .api(Method::PUT, &format!("/v1/nodes/{NODE_UUID}/states/provision"))
        .json(&json!({"target": "manage", "bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(extra.status(), StatusCode::BAD_REQUEST);

    let managed = server.provision("manage").await;
    assert_eq!(managed.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&managed, "Location"), Some(format!("{}/v1/nodes/{NODE_UUID}/states", server.base).as_str()));
    let states = server.get(&format!("/v1/nodes/{NODE_UUID}/states")).await;
    assert_eq!(states["provision_state"], "manageable");
    assert!(states["target_provision_state"].is_null());
    assert!(states["provision_updated_at"].is_string());

    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
    let no_checksum =
        server.patch(json!([{"op": "add", "path": "/instance_info/image_source", "value": "http://img"}]));
    assert_eq!(no_checksum.await.status(), StatusCode::OK);
    let refused = server.provision("active").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let message = fault(refused).await;
    assert!(message.contains("image_checksum"), "{message}");
    assert_eq!(server.node().await["provision_state"], "available");

    let hash_only = json!([{"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"}]);
    assert_eq!(server.patch(hash_only).await.status(), StatusCode::OK);
    let message = fault(server.provision("active").await).await;
    assert!(message.contains("image_os_hash_value"), "{message}");
}

#[tokio::test]
async fn deleting_nodes_follows_ironics_states() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    for target in ["manage", "provide"] {
        server.provision(target).await;
    }
    let refused = server.api(Method::DELETE, &format!("/v1/nodes/{NODE_UUID}")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert!(fault(refused).await.contains("while it is in provision state \"available\""));
    server.provision("manage").await;
    let deleted = server.api(Method::DELETE, &format!("/v1/nodes/{NODE_UUID}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        server.api(Method::GET, &format!("/v1/nodes/{NODE_UUID}")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // Its port went with it.
    assert_eq!(server.get("/v1/ports").await["ports"], json!([]));
}

#[tokio::test]
async fn ports() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    let create = |body: Value| server.api(Method::POST, "/v1/ports").json(&body).send();
    let invalid = create(json!({"address": "not-a-mac", "node_uuid": NODE_UUID})).await.unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(invalid).await, "Expected a MAC address but received not-a-mac.");
    let duplicate = create(json!({"address": MAC.to_uppercase(), "node_uuid": NODE_UUID})).await.unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let orphan = create(json!({"address": "52:54:00:00:00:09", "node_uuid": "6a4bbf55-8b47-4a1f-bb3a-4cbc8f6c2fb2"}));
    assert_eq!(orphan.await.unwrap().status(), StatusCode::BAD_REQUEST);

    let created = create(json!({"address": "52-54-00-AB-CD-EF", "node_uuid": NODE_UUID, "pxe_enabled": false}));
    let created: Value = created.await.unwrap().json().await.unwrap();
    assert_eq!(created["address"], "52:54:00:ab:cd:ef");
    assert_eq!(created["pxe_enabled"], false);
    let uuid = created["uuid"].as_str().unwrap();

    let listed = server.get(&format!("/v1/ports?node={NODE_UUID}")).await;
    assert_eq!(listed["ports"].as_array().unwrap().len(), 2);
    let keys: Vec<&str> = listed["ports"][0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["address", "links", "uuid"]);
    assert_eq!(server.get(&format!("/v1/ports/{uuid}")).await["node_uuid"], NODE_UUID);
    let gone = server.api(Method::DELETE, &format!("/v1/ports/{uuid}")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let missing = server.api(Method::GET, &format!("/v1/ports/{uuid}")).send().await.unwrap();
    assert_eq!(fault(missing).await, format!("Port {uuid} could not be found."));
}

#[tokio::test]
async fn lookup_needs_an_address_or_uuid_and_hides_why_it_fails() {
    let server = common::start().await;
    let empty = server.lookup("zz").await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let unknown = server.lookup("52:54:00:99:99:99").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    server.enroll(json!({})).await;
    assert_eq!(server.lookup(MAC).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn configdrive_is_validated_and_kept_masked_with_the_instance() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    for target in ["manage", "provide"] {
        assert_eq!(server.provision(target).await.status(), StatusCode::ACCEPTED);
    }
    let image = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://10.0.2.2:8080/disk.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "a".repeat(64)},
    ]);
    assert_eq!(server.patch(image).await.status(), StatusCode::OK);
    let provision = |body: Value, version: &'static str| {
        server
            .http
            .put(format!("{}/v1/nodes/{NODE_UUID}/states/provision", server.base))
            .header("X-OpenStack-Ironic-API-Version", version)
            .json(&body)
            .send()
    };
    let drive = json!({"meta_data": {"hostname": "h"}, "user_data": "#cloud-config", "vendor_data": {}});
    let refusals = [
        (json!({"target": "manage", "configdrive": "http://x/cd"}), "1.115", StatusCode::BAD_REQUEST),
        (json!({"target": "active", "configdrive": drive}), "1.55", StatusCode::NOT_ACCEPTABLE),
        (json!({"target": "active", "configdrive": drive}), "1.58", StatusCode::NOT_ACCEPTABLE),
        (json!({"target": "active", "configdrive": {"bogus": {}}}), "1.115", StatusCode::BAD_REQUEST),
        (json!({"target": "active", "configdrive": {"meta_data": "x"}}), "1.115", StatusCode::BAD_REQUEST),
        (json!({"target": "active", "configdrive": "not base64!"}), "1.115", StatusCode::BAD_REQUEST),
        (json!({"target": "active", "configdrive": 7}), "1.115", StatusCode::BAD_REQUEST),
    ];
    for (body, version, status) in refusals {
        let response = provision(body.clone(), version).await.unwrap();
        assert_eq!(response.status(), status, "{body} at {version}");
    }
    assert_eq!(server.node().await["provision_state"], "available", "refusals change nothing");

    let accepted = provision(json!({"target": "active", "configdrive": drive}), "1.115").await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "wait call-back");
    assert_eq!(node["instance_info"]["configdrive"], "******");
    assert_eq!(node["instance_info"]["image_source"], "http://10.0.2.2:8080/disk.raw");
}
