//! Drivers, and the node and port collections: sorting, paging by `next`, filters; plus
//! the node fields with set-once or naming rules.

mod common;

use common::{fault, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn create_node(server: &Server, body: Value) -> Value {
    let response = server.api(Method::POST, "/v1/nodes").json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{body}");
    response.json().await.unwrap()
}

async fn patch_node(server: &Server, ident: &str, patch: Value) -> reqwest::Response {
    server.api(Method::PATCH, &format!("/v1/nodes/{ident}")).json(&patch).send().await.unwrap()
}

fn uuids(list: &Value, key: &str) -> Vec<String> {
    list[key].as_array().unwrap().iter().map(|item| item["uuid"].as_str().unwrap().to_owned()).collect()
}

fn names(list: &Value) -> Vec<String> {
    list["nodes"].as_array().unwrap().iter().map(|node| node["name"].as_str().unwrap().to_owned()).collect()
}

/// The path and query of an absolute `next` link, to request it from the test server.
fn path_of(next: &str) -> &str {
    let after_scheme = next.split_once("://").unwrap().1;
    &after_scheme[after_scheme.find('/').unwrap()..]
}

#[tokio::test]
async fn drivers_are_listed_and_shown_with_their_interfaces() {
    let server = common::start().await;
    let list = server.get("/v1/drivers").await;
    let listed: Vec<&str> = list["drivers"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["fake-hardware", "ipmi", "manual-management", "redfish"]);
    let fake = &list["drivers"][0];
    assert_eq!(fake["type"], "dynamic");
    assert_eq!(fake["hosts"], json!(["ferric"]));
    assert_eq!(fake["links"][0]["href"], format!("{}/v1/drivers/fake-hardware", server.base));
    assert_eq!(fake["properties"][0]["href"], format!("{}/v1/drivers/fake-hardware/properties", server.base));
    assert!(fake.get("default_power_interface").is_none(), "the list is not detailed: {fake}");
    assert_eq!(server.get("/v1/drivers?type=classic").await["drivers"], json!([]));
    let detailed = server.get("/v1/drivers?detail=true").await;
    assert_eq!(detailed["drivers"][1]["default_power_interface"], "ipmitool");

    let ipmi = server.get("/v1/drivers/ipmi").await;
    assert_eq!(ipmi["name"], "ipmi");
    assert_eq!(ipmi["default_power_interface"], "ipmitool");
    assert_eq!(ipmi["default_management_interface"], "ipmitool");
    assert_eq!(ipmi["default_boot_interface"], "ipxe");
    assert_eq!(ipmi["default_deploy_interface"], "direct");
    assert_eq!(ipmi["enabled_boot_interfaces"], json!(["ipxe", "pxe"]));
    let redfish = server.get("/v1/drivers/redfish").await;
    assert_eq!(redfish["default_power_interface"], "redfish");
    let manual = server.get("/v1/drivers/manual-management").await;
    assert_eq!(manual["default_power_interface"], "fake");
    assert_eq!(manual["enabled_power_interfaces"], json!(["fake"]));

    let missing = server.api(Method::GET, "/v1/drivers/bogus").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(fault(missing).await, "Could not find the following driver(s) or hardware type(s): bogus.");
    // The properties link each driver carries answers with the driver_info keys it reads.
    let properties_link = ipmi["properties"][0]["href"].as_str().unwrap();
    let properties = server.get(path_of(properties_link)).await;
    assert!(properties["ipmi_address"].as_str().unwrap().ends_with("Required."), "{properties}");
    assert!(properties.get("redfish_address").is_none(), "{properties}");
    assert_eq!(server.get("/v1/drivers/fake-hardware/properties").await, json!({}));
    let missing = server.api(Method::GET, "/v1/drivers/bogus/properties").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // A node shows its driver's default for every interface it did not choose.
    let node = create_node(&server, json!({"driver": "fake-hardware", "boot_interface": "pxe"})).await;
    assert_eq!(node["power_interface"], "fake");
    assert_eq!(node["boot_interface"], "pxe");
    assert_eq!(node["deploy_interface"], "direct");
    let wrong = server
        .api(Method::POST, "/v1/nodes")
        .json(&json!({"driver": "ipmi", "power_interface": "redfish"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(wrong).await, "power interface implementation 'redfish' is not supported by hardware type ipmi.");
}

#[tokio::test]
async fn sorted_listing_pages_through_next_links() {
    let server = common::start().await;
    // Created out of name order, so creation order and name order differ.
    for name in ["n3", "n6", "n1", "n5", "n2", "n7", "n4"] {
        create_node(&server, json!({"driver": "ipmi", "name": name})).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/nodes?sort_key=name&sort_dir=desc&limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = server.get(&path).await;
        pages += 1;
        seen.extend(names(&page));
        let Some(next) = page["next"].as_str() else { break };
        for parameter in ["limit=3", "sort_key=name", "sort_dir=desc", "marker="] {
            assert!(next.contains(parameter), "{next} lacks {parameter}");
        }
        path = path_of(next).to_owned();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["n7", "n6", "n5", "n4", "n3", "n2", "n1"]);

    let ascending = server.get("/v1/nodes/detail?sort_key=name").await;
    assert_eq!(names(&ascending), ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]);
    let by_creation = server.get("/v1/nodes").await;
    assert_eq!(names(&by_creation), ["n3", "n6", "n1", "n5", "n2", "n7", "n4"]);
    let default_next = server.get("/v1/nodes?limit=2").await;
    let next = default_next["next"].as_str().unwrap();
    assert!(next.contains("sort_key=id") && next.contains("sort_dir=asc"), "{next}");
    let second = server.get(path_of(next)).await;
    assert_eq!(names(&second), ["n1", "n5"]);

    // Unnamed nodes sort first, and paging with a null in the sort column still visits each node once.
    let unnamed =
        [create_node(&server, json!({"driver": "ipmi"})).await, create_node(&server, json!({"driver": "ipmi"})).await];
    let mut visited = Vec::new();
    let mut path = "/v1/nodes?sort_key=name&limit=2".to_owned();
    loop {
        let page = server.get(&path).await;
        visited.extend(page["nodes"].as_array().unwrap().iter().map(|node| node["name"].clone()));
        let Some(next) = page["next"].as_str() else { break };
        path = path_of(next).to_owned();
    }
    let mut expected = vec![Value::Null, Value::Null];
    expected.extend(["n1", "n2", "n3", "n4", "n5", "n6", "n7"].map(Value::from));
    assert_eq!(visited, expected);
    let first_two = server.get("/v1/nodes?sort_key=name&limit=2").await;
    assert_eq!(uuids(&first_two, "nodes"), unnamed.map(|node| node["uuid"].as_str().unwrap().to_owned()));

    for (query, message) in [
        ("sort_key=bogus", "The sort_key value \"bogus\" is an invalid field for sorting"),
        ("sort_key=properties", "The sort_key value properties is an invalid field for sorting"),
        ("sort_dir=up", "Invalid sort direction: up. Acceptable values are 'asc' or 'desc'"),
    ] {
        let response = server.api(Method::GET, &format!("/v1/nodes?{query}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(fault(response).await, message);
    }
}

#[tokio::test]
async fn node_filters_select_nodes_on_both_listings() {
    let server = common::start().await;
    // Before 1.11 new nodes start available.
    let plain = server
        .http
        .post(format!("{}/v1/nodes", server.base))
        .header("X-OpenStack-Ironic-API-Version", "1.10")
        .json(&json!({"driver": "ipmi", "name": "plain"}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::CREATED);
    let plain: Value = plain.json().await.unwrap();
    let gpu = create_node(
        &server,
        json!({"driver": "redfish", "name": "gpu", "resource_class": "gpu",
               "instance_uuid": "0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11"}),
    )
    .await;
    let resting = create_node(&server, json!({"driver": "ipmi", "name": "resting", "maintenance": true})).await;
    let uuid = |node: &Value| node["uuid"].as_str().unwrap().to_owned();
    for base in ["/v1/nodes", "/v1/nodes/detail"] {
        let select = |query: &str| format!("{base}?{query}");
        assert_eq!(uuids(&server.get(&select("driver=redfish")).await, "nodes"), [uuid(&gpu)]);
        assert_eq!(uuids(&server.get(&select("resource_class=gpu")).await, "nodes"), [uuid(&gpu)]);
        assert_eq!(uuids(&server.get(&select("maintenance=true")).await, "nodes"), [uuid(&resting)]);
        assert_eq!(uuids(&server.get(&select("maintenance=false")).await, "nodes"), [uuid(&plain), uuid(&gpu)]);
        assert_eq!(uuids(&server.get(&select("associated=true")).await, "nodes"), [uuid(&gpu)]);
        assert_eq!(uuids(&server.get(&select("associated=false")).await, "nodes"), [uuid(&plain), uuid(&resting)]);
        assert_eq!(uuids(&server.get(&select("provision_state=enroll")).await, "nodes"), [uuid(&gpu), uuid(&resting)]);
        assert_eq!(uuids(&server.get(&select("provision_state=available")).await, "nodes"), [uuid(&plain)]);
        assert_eq!(uuids(&server.get(&select("driver=ipmi&maintenance=false")).await, "nodes"), [uuid(&plain)]);
        let bad = server.api(Method::GET, &select("provision_state=bogus")).send().await.unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }
    // Filters travel in the next link.
    let page = server.get("/v1/nodes?driver=ipmi&limit=1").await;
    let next = page["next"].as_str().unwrap();
    assert!(next.contains("driver=ipmi"), "{next}");
    assert_eq!(uuids(&server.get(path_of(next)).await, "nodes"), [uuid(&resting)]);
}

#[tokio::test]
async fn port_filters_select_by_node_and_address() {
    let server = common::start().await;
    let first = create_node(&server, json!({"driver": "ipmi", "name": "first"})).await;
    let second = create_node(&server, json!({"driver": "ipmi", "name": "second"})).await;
    let mut ports = Vec::new();
    for (node, address) in
        [(&first, "52:54:00:00:00:01"), (&first, "52:54:00:00:00:02"), (&second, "52:54:00:00:00:03")]
    {
        let body = json!({"address": address, "node_uuid": node["uuid"]});
        let response = server.api(Method::POST, "/v1/ports").json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        ports.push(response.json::<Value>().await.unwrap()["uuid"].as_str().unwrap().to_owned());
    }
    assert_eq!(uuids(&server.get("/v1/ports?node=first").await, "ports"), ports[..2]);
    assert_eq!(
        uuids(&server.get(&format!("/v1/ports?node={}", second["uuid"].as_str().unwrap())).await, "ports"),
        ports[2..]
    );
    assert_eq!(
        uuids(&server.get(&format!("/v1/ports/detail?node_uuid={}", first["uuid"].as_str().unwrap())).await, "ports"),
        ports[..2]
    );
    assert_eq!(uuids(&server.get("/v1/ports?address=52:54:00:00:00:02").await, "ports"), ports[1..2]);
    assert_eq!(uuids(&server.get("/v1/ports?address=52-54-00-00-00-03").await, "ports"), ports[2..]);
    assert_eq!(
        uuids(&server.get("/v1/ports?node=first&address=52:54:00:00:00:03").await, "ports"),
        Vec::<String>::new()
    );

    let page = server.get("/v1/ports?sort_key=address&sort_dir=desc&limit=2").await;
    assert_eq!(uuids(&page, "ports"), [ports[2].clone(), ports[1].clone()]);
    let next = page["next"].as_str().unwrap();
    assert!(next.contains("sort_key=address") && next.contains("sort_dir=desc"), "{next}");
    let last = server.get(path_of(next)).await;
    assert_eq!(uuids(&last, "ports"), ports[..1]);
    assert!(last.get("next").is_none(), "{last}");
    let node_page = server.get("/v1/nodes/first/ports?limit=1").await;
    assert_eq!(uuids(&node_page, "ports"), ports[..1]);
    assert_eq!(uuids(&server.get(path_of(node_page["next"].as_str().unwrap())).await, "ports"), ports[1..2]);
    let unsortable = server.api(Method::GET, "/v1/ports?sort_key=extra").send().await.unwrap();
    assert_eq!(unsortable.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fault(unsortable).await, "The sort_key value extra is an invalid field for sorting");
}

#[tokio::test]
async fn instance_uuid_is_set_once() {
    let server = common::start().await;
    create_node(&server, json!({"driver": "ipmi", "name": "n1"})).await;
    let first = "0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11";
    let second = "1d8f2b2f-6d4a-4a8c-8b6f-4a2a7a1a3b22";
    let set = |value: &str| json!([{"op": "add", "path": "/instance_uuid", "value": value}]);
    assert_eq!(patch_node(&server, "n1", set(first)).await.status(), StatusCode::OK);
    // The same instance again is no change.
    assert_eq!(patch_node(&server, "n1", set(first)).await.status(), StatusCode::OK);
    let replace = json!([{"op": "replace", "path": "/instance_uuid", "value": second}]);
    let refused = patch_node(&server, "n1", replace.clone()).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let node = server.get("/v1/nodes/n1").await;
    assert_eq!(
        fault(refused).await,
        format!("Node {} is associated with instance {first}.", node["uuid"].as_str().unwrap())
    );
    assert_eq!(node["instance_uuid"], first);
    let remove = json!([{"op": "remove", "path": "/instance_uuid"}]);
    assert_eq!(patch_node(&server, "n1", remove).await.status(), StatusCode::OK);
    assert!(server.get("/v1/nodes/n1").await["instance_uuid"].is_null());
    assert_eq!(patch_node(&server, "n1", replace).await.status(), StatusCode::OK);
    assert_eq!(server.get("/v1/nodes/n1").await["instance_uuid"], second);
}

#[tokio::test]
async fn node_names_follow_ironics_rules() {
    let server = common::start().await;
    for (name, allowed) in [
        ("rack-1.node_2~a", true),
        ("has space", false),
        ("slash/name", false),
        ("colon:name", false),
        ("", false),
        ("0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11", false),
        ("0c7e1a1e5c3f4f7b9a5e3f1f6f0f2a11", false),
    ] {
        let response =
            server.api(Method::POST, "/v1/nodes").json(&json!({"driver": "ipmi", "name": name})).send().await.unwrap();
        if allowed {
            assert_eq!(response.status(), StatusCode::CREATED, "{name:?}");
        } else {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name:?}");
            assert_eq!(fault(response).await, format!("Cannot create node with invalid name '{name}'"));
        }
    }
    let renamed =
        patch_node(&server, "rack-1.node_2~a", json!([{"op": "replace", "path": "/name", "value": "a b"}])).await;
    assert_eq!(renamed.status(), StatusCode::BAD_REQUEST);
    assert!(fault(renamed).await.ends_with("Cannot change name to invalid name 'a b'"));

    create_node(&server, json!({"driver": "ipmi", "name": "taken"})).await;
    let duplicate =
        server.api(Method::POST, "/v1/nodes").json(&json!({"driver": "ipmi", "name": "taken"})).send().await.unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(fault(duplicate).await, "A node with name taken already exists.");
    let rename =
        patch_node(&server, "rack-1.node_2~a", json!([{"op": "replace", "path": "/name", "value": "taken"}])).await;
    assert_eq!(rename.status(), StatusCode::CONFLICT);
    assert_eq!(fault(rename).await, "A node with name taken already exists.");
}

#[tokio::test]
async fn resource_class_defaults_to_the_configured_one() {
    let unset = common::start().await;
    assert!(create_node(&unset, json!({"driver": "ipmi"})).await["resource_class"].is_null());
    let server = common::start_with(|config| config.default_resource_class = Some("baremetal".to_owned())).await;
    assert_eq!(create_node(&server, json!({"driver": "ipmi"})).await["resource_class"], "baremetal");
    assert_eq!(create_node(&server, json!({"driver": "ipmi", "resource_class": "gpu"})).await["resource_class"], "gpu");
    let old = server
        .http
        .get(format!("{}/v1/nodes?resource_class=gpu", server.base))
        .header("X-OpenStack-Ironic-API-Version", "1.20")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn ports_are_patched_with_json_patch() {
    let server = common::start().await;
    let first = create_node(&server, json!({"driver": "ipmi", "name": "first"})).await;
    let second = create_node(&server, json!({"driver": "ipmi", "name": "second"})).await;
    let mut port_uuids = Vec::new();
    for address in ["52:54:00:00:01:01", "52:54:00:00:01:02"] {
        let body = json!({"address": address, "node_uuid": first["uuid"]});
        let response = server.api(Method::POST, "/v1/ports").json(&body).send().await.unwrap();
        port_uuids.push(response.json::<Value>().await.unwrap()["uuid"].as_str().unwrap().to_owned());
    }
    let patch_port =
        |uuid: &str, patch: Value| server.api(Method::PATCH, &format!("/v1/ports/{uuid}")).json(&patch).send();

    let moved = patch_port(
        &port_uuids[0],
        json!([
            {"op": "replace", "path": "/address", "value": "52-54-00-00-01-0A"},
            {"op": "replace", "path": "/node_uuid", "value": second["uuid"]},
            {"op": "replace", "path": "/pxe_enabled", "value": false},
            {"op": "add", "path": "/extra/rack", "value": "r1"},
        ]),
    )
    .await
    .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    let shown = server.get(&format!("/v1/ports/{}", port_uuids[0])).await;
    assert_eq!(shown["address"], "52:54:00:00:01:0a");
    assert_eq!(shown["node_uuid"], second["uuid"]);
    assert_eq!(shown["pxe_enabled"], false);
    assert_eq!(shown["extra"], json!({"rack": "r1"}));
    assert!(shown["updated_at"].is_string(), "{shown}");
    assert_eq!(uuids(&server.get("/v1/ports?node=second").await, "ports"), port_uuids[..1]);

    let refusals = [
        (json!([{"op": "replace", "path": "/uuid", "value": "x"}]), StatusCode::BAD_REQUEST, "Cannot patch /uuid."),
        (
            json!([{"op": "replace", "path": "/address", "value": "nope"}]),
            StatusCode::BAD_REQUEST,
            "Expected a MAC address",
        ),
        (
            json!([{"op": "replace", "path": "/address", "value": "52:54:00:00:01:0a"}]),
            StatusCode::CONFLICT,
            "A port with MAC address 52:54:00:00:01:0a already exists.",
        ),
        (
            json!([{"op": "replace", "path": "/node_uuid", "value": "6c4b5a7e-5e1d-4b59-9d0c-0d7f6d2b8a11"}]),
            StatusCode::BAD_REQUEST,
            "Node 6c4b5a7e-5e1d-4b59-9d0c-0d7f6d2b8a11 could not be found.",
        ),
    ];
    for (patch, status, message) in refusals {
        let response = patch_port(&port_uuids[1], patch.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{patch}");
        let text = fault(response).await;
        assert!(text.starts_with(message), "{patch}: {text}");
    }
    assert_eq!(server.get(&format!("/v1/ports/{}", port_uuids[1])).await["address"], "52:54:00:00:01:02");
    let missing = patch_port("6c4b5a7e-5e1d-4b59-9d0c-0d7f6d2b8a11", json!([])).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
