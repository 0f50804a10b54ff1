//! A real controller on 127.0.0.1:0 with a fresh database, and helpers to talk to it.
#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod redfish;

use std::time::Duration;

use ferric_controller::{serve, Config};
use ferric_protocol::{CommandResult, CommandStatus, Heartbeat, HeartbeatResponse, LookupResponse, Task};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The public URL the boot scripts name (never contacted by the tests).
pub const PUBLIC_URL: &str = "http://10.0.2.2:6385";
pub const LATEST: &str = "1.115";
pub const NODE_UUID: &str = "4f3a2b1c-0d9e-4f8a-b7c6-d5e4f3a2b1c0";
pub const MAC: &str = "52:54:00:12:34:56";

pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    pub dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> Server {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ramdisk = dir.path().join("ramdisk");
    std::fs::create_dir(&ramdisk).unwrap();
    std::fs::write(ramdisk.join("vmlinuz"), b"kernel bytes").unwrap();
    std::fs::write(ramdisk.join("initramfs"), b"initramfs bytes").unwrap();
    let mut config = Config::new(dir.path().join("ferric.sqlite"), PUBLIC_URL, ramdisk);
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        if let Err(error) = serve(config, listener).await {
            panic!("controller failed: {error:?}");
        }
    });
    Server { base, http: reqwest::Client::new(), dir, task }
}

impl Server {
    /// A request at the latest microversion.
    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).header("X-OpenStack-Ironic-API-Version", LATEST)
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.api(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn node(&self) -> Value {
        self.get(&format!("/v1/nodes/{NODE_UUID}")).await
    }

    /// Enrolls [`NODE_UUID`] with a port for [`MAC`] and the given extra node fields.
    pub async fn enroll(&self, extra_fields: Value) -> Value {
        let mut body = json!({"uuid": NODE_UUID, "name": "node-0", "driver": "manual-management"});
        body.as_object_mut().unwrap().extend(extra_fields.as_object().unwrap().clone());
        let response = self.api(Method::POST, "/v1/nodes").json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let node: Value = response.json().await.unwrap();
        let port = self.api(Method::POST, "/v1/ports").json(&json!({"address": MAC, "node_uuid": NODE_UUID}));
        assert_eq!(port.send().await.unwrap().status(), StatusCode::CREATED);
        node
    }

    pub async fn provision(&self, target: &str) -> Response {
        self.api(Method::PUT, &format!("/v1/nodes/{NODE_UUID}/states/provision"))
            .json(&json!({"target": target}))
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, patch: Value) -> Response {
        self.api(Method::PATCH, &format!("/v1/nodes/{NODE_UUID}")).json(&patch).send().await.unwrap()
    }

    /// Enrolled, managed, provided, given an image and deployed: the node waits for its agent.
    pub async fn deploying_node(&self) {
        self.enroll(json!({})).await;
        for target in ["manage", "provide"] {
            assert_eq!(self.provision(target).await.status(), StatusCode::ACCEPTED, "{target}");
        }
        self.deploying_node_after_provide().await;
    }

    /// Gives an available node an image and deploys it.
    pub async fn deploying_node_after_provide(&self) {
        let image = json!([
            {"op": "add", "path": "/instance_info/image_source", "value": "http://10.0.2.2:8080/disk.raw"},
            {"op": "add", "path": "/instance_info/image_checksum", "value": "a".repeat(64)},
            {"op": "add", "path": "/instance_info/image_disk_format", "value": "raw"},
            {"op": "add", "path": "/properties/root_device", "value": {"serial": "S1"}},
        ]);
        assert_eq!(self.patch(image).await.status(), StatusCode::OK);
        assert_eq!(self.provision("active").await.status(), StatusCode::ACCEPTED);
    }

    /// `GET /v1/lookup` as the agent sends it.
    pub async fn lookup(&self, macs: &str) -> Response {
        self.http
            .get(format!("{}{}?addresses={macs}", self.base, ferric_protocol::LOOKUP_PATH))
            .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
            .send()
            .await
            .unwrap()
    }

    pub async fn lookup_ok(&self) -> LookupResponse {
        let response = self.lookup(MAC).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn heartbeat_raw(&self, body: &Value) -> Response {
        self.http
            .post(format!("{}{}", self.base, ferric_protocol::heartbeat_path(NODE_UUID)))
            .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> HeartbeatResponse {
        let response = self.heartbeat_raw(&serde_json::to_value(heartbeat).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Polls the node until `check` holds, for up to `timeout`.
    pub async fn wait_for_node(&self, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let node = self.node().await;
            if check(&node) {
                return node;
            }
            assert!(tokio::time::Instant::now() < deadline, "node never reached the expected state: {node:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `faultstring` of an Ironic error response, checking the double-encoded shape.
/// Checks the node a failed clean step left, as Ironic leaves it: `clean failed` with the reason as
/// last error and maintenance reason, the step cleared, the agent's token ended; `manage` takes it back.
pub async fn assert_clean_failed(server: &Server, token: &str, reason: &str, target: &str) {
    let node = server.node().await;
    assert_eq!(node["provision_state"], "clean failed");
    assert_eq!(node["target_provision_state"], target);
    assert_eq!(node["last_error"], reason);
    assert_eq!(node["clean_step"], json!({}));
    assert_eq!(node["maintenance"], true);
    assert_eq!(node["maintenance_reason"], reason);
    assert_eq!(node["fault"], "clean failure");
    let refused = server.heartbeat_raw(&serde_json::to_value(heartbeat(token, None)).unwrap()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(server.provision("manage").await.status(), StatusCode::ACCEPTED);
    let node = server.node().await;
    assert_eq!(node["provision_state"], "manageable");
    assert!(node["target_provision_state"].is_null());
    assert!(node["last_error"].is_null());
}

pub async fn fault(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    let encoded = body["error_message"].as_str().unwrap_or_else(|| panic!("no error_message string in {body}"));
    let inner: Value = serde_json::from_str(encoded).unwrap();
    inner["faultstring"].as_str().unwrap().to_owned()
}

/// A heartbeat of the simulated agent, reporting `command`.
pub fn heartbeat(token: &str, command: Option<CommandResult>) -> Heartbeat {
    Heartbeat {
        agent_token: token.to_owned(),
        agent_version: "0.1.0".to_owned(),
        command,
        progress: None,
        log_tail: Vec::new(),
        inventory: None,
    }
}

/// The simulated agent's report on `task`, in IPA's command result shape.
pub fn report(task: &Task, status: CommandStatus, error: Option<&str>) -> CommandResult {
    CommandResult {
        id: task.id.clone(),
        command_name: task.command.name().to_owned(),
        command_status: status,
        command_error: error.map(str::to_owned),
        command_result: None,
    }
}
