//! A controller killed in the middle of a deploy and restarted on the same database and port:
//! the agent keeps heartbeating through the outage and the deploy completes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{heartbeat, report, LATEST, MAC, NODE_UUID, PUBLIC_URL};
use ferric_controller::{serve, Config};
use ferric_protocol::{Command, CommandStatus, Heartbeat, HeartbeatResponse, LookupResponse};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// A controller in a runtime of its own, so that killing it ends every connection and task,
/// as killing the process would.
struct Controller(Option<tokio::runtime::Runtime>);

impl Controller {
    fn start(dir: &Path, address: SocketAddr) -> (Controller, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = {
            let _context = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(address).unwrap();
            socket.listen(128).unwrap()
        };
        let bound = listener.local_addr().unwrap();
        let ramdisk = dir.join("ramdisk");
        std::fs::create_dir_all(&ramdisk).unwrap();
        let config = Config::new(dir.join("ferric.sqlite"), PUBLIC_URL, ramdisk);
        runtime.spawn(async move {
            if let Err(error) = serve(config, listener).await {
                panic!("controller failed: {error:?}");
            }
        });
        (Controller(Some(runtime)), bound)
    }

    fn kill(mut self) {
        self.0.take().unwrap().shutdown_background();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn operator(http: &Client, base: &str, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let response = http
        .request(method, format!("{base}{path}"))
        .header("X-OpenStack-Ironic-API-Version", LATEST)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends a heartbeat as the agent does, retrying while the controller is unreachable;
/// returns the answer and how many attempts failed.
async fn heartbeat_with_retries(http: &Client, base: &str, body: &Heartbeat) -> (HeartbeatResponse, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    loop {
        let sent = http
            .post(format!("{base}{}", ferric_protocol::heartbeat_path(NODE_UUID)))
            .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
            .timeout(Duration::from_secs(5))
            .json(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::OK => return (response.json().await.unwrap(), failures),
            Ok(response) => panic!("heartbeat refused: {} {}", response.status(), response.text().await.unwrap()),
            Err(_) => failures += 1,
        }
        assert!(tokio::time::Instant::now() < deadline, "the controller never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_deploy_survives_a_controller_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, address) = Controller::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let base = format!("http://{address}");
    let http = Client::new();

    let node = json!({"uuid": NODE_UUID, "name": "node-0", "driver": "manual-management"});
    assert_eq!(operator(&http, &base, Method::POST, "/v1/nodes", node).await.0, StatusCode::CREATED);
    let port = json!({"address": MAC, "node_uuid": NODE_UUID});
    assert_eq!(operator(&http, &base, Method::POST, "/v1/ports", port).await.0, StatusCode::CREATED);
    let image = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://10.0.2.2:8080/disk.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "a".repeat(64)},
    ]);
    let node_path = format!("/v1/nodes/{NODE_UUID}");
    assert_eq!(operator(&http, &base, Method::PATCH, &node_path, image).await.0, StatusCode::OK);
    for target in ["manage", "provide", "active"] {
        let path = format!("{node_path}/states/provision");
        let (status, _) = operator(&http, &base, Method::PUT, &path, json!({"target": target})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{target}");
    }

    // The agent looks up, gets write_image and reports it running.
    let lookup: LookupResponse = http
        .get(format!("{base}{}?addresses={MAC}", ferric_protocol::LOOKUP_PATH))
        .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = lookup.config.agent_token;
    let (answer, _) = heartbeat_with_retries(&http, &base, &heartbeat(&token, None)).await;
    let task = answer.task.expect("the write_image task");
    assert!(matches!(task.command, Command::WriteImage { .. }), "{task:?}");
    let (answer, _) =
        heartbeat_with_retries(&http, &base, &heartbeat(&token, Some(report(&task, CommandStatus::Running, None))))
            .await;
    assert_eq!(answer.task, None);

    // The controller dies mid-write; the agent's next heartbeats fail until a new one starts.
    first.kill();
    let running = heartbeat(&token, Some(report(&task, CommandStatus::Running, None)));
    let agent = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { heartbeat_with_retries(&http, &base, &running).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_second, _) = Controller::start(dir.path(), address);
    let (answer, failures) = agent.await.unwrap();
    assert!(failures > 0, "the agent never saw the controller down");
    assert_eq!(answer.task, None, "the running task is not handed out again");

    // The write finishes: the new controller completes the deploy with the same token.
    let done = heartbeat(&token, Some(report(&task, CommandStatus::Succeeded, None)));
    let (answer, _) = heartbeat_with_retries(&http, &base, &done).await;
    assert_eq!(answer.task.map(|task| task.command), Some(Command::Reboot));
    let (_, node) = operator(&http, &base, Method::GET, &node_path, Value::Null).await;
    assert_eq!(node["provision_state"], "active", "{node:#}");
    assert!(node["target_provision_state"].is_null());
    assert!(node["last_error"].is_null());

    let (_, history) = operator(&http, &base, Method::GET, &format!("{node_path}/history"), Value::Null).await;
    let transitions: Vec<(&str, &str)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| !event["from_state"].is_null())
        .map(|event| (event["from_state"].as_str().unwrap(), event["to_state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        transitions,
        [
            ("enroll", "verifying"),
            ("verifying", "manageable"),
            ("manageable", "cleaning"),
            ("cleaning", "available"),
            ("available", "deploying"),
            ("deploying", "wait call-back"),
            ("wait call-back", "deploying"),
            ("deploying", "active"),
        ]
    );
}
