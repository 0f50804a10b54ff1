//! API authentication: http_basic with a bcrypt htpasswd file and bearer tokens guard the API;
//! version discovery, the agent's lookup and heartbeat and the boot files stay open.

mod common;

use common::{fault, Server, MAC, NODE_UUID};
use ferric_controller::api::auth::ApiAuth;
use ferric_protocol::Heartbeat;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tempfile::TempDir;

const USER: &str = "admin";
const PASSWORD: &str = "s3cret";
const TOKEN: &str = "f3rr1c-api-token";

/// A controller requiring credentials: [`USER`]/[`PASSWORD`] (bcrypt) or the bearer [`TOKEN`].
async fn guarded_server() -> (Server, TempDir) {
    let files = tempfile::tempdir().unwrap();
    let htpasswd = files.path().join("htpasswd");
    // The lowest cost keeps the test fast; the format is the same as `htpasswd -B`.
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&htpasswd, format!("# operators\n{USER}:{hash}\nother:{}\n", bcrypt::hash("x", 4).unwrap()))
        .unwrap();
    let tokens = files.path().join("tokens");
    std::fs::write(&tokens, format!("another-token\n\n{TOKEN}\n")).unwrap();
    let auth = ApiAuth::from_files(Some(&htpasswd), Some(&tokens)).unwrap();
    let server = common::start_with(move |config| config.auth = auth).await;
    (server, files)
}

#[tokio::test]
async fn requests_without_credentials_get_ironics_401() {
    let (server, _files) = guarded_server().await;
    let response = server.api(Method::GET, "/v1/nodes").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic realm=\"Baremetal API\"");
    assert_eq!(response.headers()["X-OpenStack-Ironic-API-Maximum-Version"], common::LATEST);
    assert_eq!(fault(response).await, "Authorization required");
}

#[tokio::test]
async fn wrong_passwords_users_and_tokens_are_refused() {
    let (server, _files) = guarded_server().await;
    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD), ("other", PASSWORD)] {
        let response = server.api(Method::GET, "/v1/nodes").basic_auth(user, Some(password)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{user}:{password}");
        assert_eq!(fault(response).await, "Incorrect username or password");
    }
    let response = server.api(Method::GET, "/v1/nodes").bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fault(response).await, "Invalid bearer token");
    let response = server.api(Method::GET, "/v1/ports").header("Authorization", "Digest x").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_right_password_or_token_opens_the_api() {
    let (server, _files) = guarded_server().await;
    let created = server
        .api(Method::POST, "/v1/nodes")
        .basic_auth(USER, Some(PASSWORD))
        .json(&json!({"uuid": NODE_UUID, "driver": "manual-management"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let listed = server.api(Method::GET, "/v1/nodes").basic_auth(USER, Some(PASSWORD)).send().await.unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let shown = server.api(Method::GET, &format!("/v1/nodes/{NODE_UUID}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(shown.status(), StatusCode::OK);
    let node: serde_json::Value = shown.json().await.unwrap();
    assert_eq!(node["uuid"], NODE_UUID);
}

#[tokio::test]
async fn discovery_agent_endpoints_and_boot_files_need_no_credentials() {
    let (server, _files) = guarded_server().await;
    for path in ["/", "/v1", "/v1/", "/boot.ipxe"] {
        let response = server.api(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // Deployed with credentials, the node is then found and driven by its agent without them.
    let as_operator =
        |method, path: &str, body: serde_json::Value| server.api(method, path).bearer_auth(TOKEN).json(&body);
    let node = json!({"uuid": NODE_UUID, "driver": "manual-management"});
    let port = json!({"address": MAC, "node_uuid": NODE_UUID});
    for (path, body) in [("/v1/nodes", node), ("/v1/ports", port)] {
        assert_eq!(as_operator(Method::POST, path, body).send().await.unwrap().status(), StatusCode::CREATED, "{path}");
    }
    let image = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://10.0.2.2:8080/disk.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "a".repeat(64)},
    ]);
    let patched = as_operator(Method::PATCH, &format!("/v1/nodes/{NODE_UUID}"), image).send().await.unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    for target in ["manage", "provide", "active"] {
        let path = format!("/v1/nodes/{NODE_UUID}/states/provision");
        let response = as_operator(Method::PUT, &path, json!({"target": target})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{target}");
    }
    let lookup = server.lookup_ok().await;
    let heartbeat = server
        .heartbeat(&Heartbeat {
            agent_token: lookup.config.agent_token,
            agent_version: "0.1.0".to_owned(),
            command: None,
            progress: None,
            log_tail: Vec::new(),
            inventory: None,
        })
        .await;
    assert!(heartbeat.task.is_some(), "the agent gets its task: {heartbeat:?}");
}
