//! One action per node at a time: a node locked by another conductor refuses provision and
//! power actions with Ironic's 409 NodeLocked until its lock expires; other nodes are unaffected.

mod common;

use chrono::Utc;
use common::{fault, NODE_UUID};
use ferric_controller::model::timestamp;
use ferric_controller::store::{Reservation, Store};
use reqwest::{Method, StatusCode};
use serde_json::json;

const OTHER_HOST: &str = "conductor-2";

/// Locks the node as another controller sharing the database would, until `expires_in_secs`
/// from now (negative: already expired).
async fn lock_as_other_host(server: &common::Server, expires_in_secs: i64) {
    let store = Store::open(&server.dir.path().join("ferric.sqlite")).unwrap();
    let now = Utc::now();
    let expires_at = timestamp(now + chrono::Duration::seconds(expires_in_secs));
    let granted =
        store.run(move |tx| tx.reserve_node(NODE_UUID, OTHER_HOST, &timestamp(now), &expires_at)).await.unwrap();
    assert_eq!(granted, Reservation::Granted);
}

async fn power(server: &common::Server, target: &str) -> reqwest::Response {
    let path = format!("/v1/nodes/{NODE_UUID}/states/power");
    server.api(Method::PUT, &path).json(&json!({"target": target})).send().await.unwrap()
}

#[tokio::test]
async fn a_locked_node_refuses_actions_with_409() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    lock_as_other_host(&server, 60).await;
    assert_eq!(server.node().await["reservation"], OTHER_HOST);

    let expected = format!(
        "Node {NODE_UUID} is locked by host {OTHER_HOST}, please retry after the current operation is completed."
    );
    let refused = server.provision("manage").await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(fault(refused).await, expected);
    let refused = power(&server, "power on").await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(fault(refused).await, expected);

    let node = server.node().await;
    assert_eq!(node["provision_state"], "enroll", "nothing changed: {node:#}");
    assert_eq!(node["reservation"], OTHER_HOST);
}

#[tokio::test]
async fn an_expired_lock_is_taken_over_and_released() {
    let server = common::start().await;
    server.enroll(json!({})).await;
    lock_as_other_host(&server, -1).await;

    assert_eq!(server.provision("manage").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "manageable");
    assert!(node["reservation"].is_null(), "the lock is released after the action: {node:#}");
    // Released, the node takes the next action at once.
    assert_eq!(power(&server, "power on").await.status(), StatusCode::ACCEPTED);
    assert_eq!(server.provision("provide").await.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_nodes_take_actions_at_the_same_time() {
    let server = common::start().await;
    let uuids: Vec<String> = (0..20).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for uuid in &uuids {
        let body = json!({"uuid": uuid, "driver": "manual-management"});
        assert_eq!(server.api(Method::POST, "/v1/nodes").json(&body).send().await.unwrap().status(), 201);
    }
    let requests: Vec<_> = uuids
        .iter()
        .map(|uuid| {
            let path = format!("/v1/nodes/{uuid}/states/provision");
            tokio::spawn(server.api(Method::PUT, &path).json(&json!({"target": "manage"})).send())
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::ACCEPTED);
    }
    for uuid in &uuids {
        let node = server.get(&format!("/v1/nodes/{uuid}")).await;
        assert_eq!(node["provision_state"], "manageable");
        assert!(node["reservation"].is_null());
    }
}
