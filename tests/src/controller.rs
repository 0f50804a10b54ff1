//! The real `ferric-controller` binary as a child process, and a typed client for its Ironic-style API.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferric_runner::{tail_lines, CommandError};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};

use crate::path_io::PathIoError;
use crate::paths::{self, PathError};

/// The guest's address for the host's 127.0.0.1 on QEMU's user network.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// The microversion the client asks for (python-ironicclient's latest).
pub const API_VERSION: &str = "1.115";
/// How long the controller may take to answer `GET /v1` after start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How many controller log lines an error shows.
const LOG_TAIL_LINES: usize = 40;
/// How the OS error reads in the controller's log when its `--listen` port is taken.
const ADDRESS_IN_USE: &str = "Address already in use";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Spawn(#[from] CommandError),
    #[error("cannot find a free port on 127.0.0.1")]
    FreePort(#[source] std::io::Error),
    #[error("waiting for ferric-controller failed")]
    Wait(#[source] std::io::Error),
    #[error("ferric-controller exited ({status}) during startup; its log:\n{log_tail}")]
    ExitedDuringStartup { status: ExitStatus, log_tail: String },
    #[error("ferric-controller did not answer GET {url} within {timeout:?}; its log:\n{log_tail}")]
    StartupTimeout { url: String, timeout: Duration, log_tail: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A running `ferric-controller serve` on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct Controller {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl Controller {
    /// Starts the controller with its database and log in `work_dir`, serving the ramdisk in `ramdisk_dir`.
    ///
    /// The controller must know its public URL, which holds its port, before it binds; so the harness
    /// picks a free port and hands it over, and another process may take it in between. One retry on
    /// a fresh port makes that rare race negligible.
    pub fn start(work_dir: &Path, ramdisk_dir: &Path) -> Result<Controller, ControllerError> {
        Controller::start_with(work_dir, ramdisk_dir, &[])
    }

    /// As [`Controller::start`], with more `serve` flags (`--power-sync-interval 1`...).
    pub fn start_with(work_dir: &Path, ramdisk_dir: &Path, extra_args: &[&str]) -> Result<Controller, ControllerError> {
        let binary = paths::workspace_binary("ferric-controller")?;
        fs::create_dir_all(work_dir).map_err(PathIoError::at("create directory", work_dir))?;
        match Controller::start_on_free_port(&binary, work_dir, ramdisk_dir, extra_args) {
            Err(ControllerError::ExitedDuringStartup { log_tail, .. }) if log_tail.contains(ADDRESS_IN_USE) => {
                tracing::warn!("the controller's port was taken before it could bind; retrying on another");
                Controller::start_on_free_port(&binary, work_dir, ramdisk_dir, extra_args)
            }
            result => result,
        }
    }

    fn start_on_free_port(
        binary: &Path,
        work_dir: &Path,
        ramdisk_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Controller, ControllerError> {
        let port = free_loopback_port().map_err(ControllerError::FreePort)?;
        let log_path = work_dir.join("controller.log");
        let log = fs::File::create(&log_path).map_err(PathIoError::at("create", &log_path))?;
        let log_stderr = log.try_clone().map_err(PathIoError::at("duplicate the handle of", &log_path))?;
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--db")
            .arg(work_dir.join("ferric.sqlite"))
            .arg("--public-url")
            .arg(format!("http://{HOST_FROM_GUEST}:{port}"))
            .arg("--ramdisk-dir")
            .arg(ramdisk_dir)
            .args(extra_args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            // The log is a file that errors quote: no colour escapes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_stderr);
        let child = ferric_runner::spawn("start ferric-controller", &mut cmd)?;
        let mut controller = Controller { child, port, log_path };
        controller.wait_until_ready()?;
        Ok(controller)
    }

    /// `http://127.0.0.1:PORT`, how the harness reaches it.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://10.0.2.2:PORT`, how a VM reaches it.
    pub fn public_url(&self) -> String {
        format!("http://{HOST_FROM_GUEST}:{}", self.port)
    }

    /// The iPXE script a VM network-boots from.
    pub fn boot_url(&self) -> String {
        format!("{}/boot.ipxe", self.public_url())
    }

    /// The last lines of the controller's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        tail_lines(&log, LOG_TAIL_LINES)
    }

    pub fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.base_url())
    }

    fn wait_until_ready(&mut self) -> Result<(), ControllerError> {
        let url = format!("{}/v1", self.base_url());
        let probe = Client::builder().timeout(Duration::from_secs(2)).build().map_err(ClientError::Build)?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(ControllerError::Wait)? {
                return Err(ControllerError::ExitedDuringStartup { status, log_tail: self.log_tail() });
            }
            if probe.get(&url).send().is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ControllerError::StartupTimeout {
                    url,
                    timeout: STARTUP_TIMEOUT,
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Errors mean it already exited; `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now (the kernel picks it; it is free again once the probe closes).
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("{method} {url} failed")]
    Http {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status { method: Method, url: String, status: reqwest::StatusCode, body: String },
    #[error("{method} {url} answered something that is not JSON: {body}")]
    NotJson { method: Method, url: String, body: String },
    #[error("node {node} reached {state:?} instead of {wanted:?}; last_error: {last_error}")]
    FailState { node: String, state: String, wanted: Vec<String>, last_error: String },
    #[error("node {node} still {state:?} after {timeout:?} (wanted {wanted:?}); last_error: {last_error}")]
    Timeout { node: String, state: String, wanted: Vec<String>, timeout: Duration, last_error: String },
    #[error("node {node}: still not {what} after {timeout:?}; the node: {last}")]
    Condition { node: String, what: String, timeout: Duration, last: Value },
}

/// A blocking client for the controller's Ironic-style `/v1` API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: Client,
    base_url: String,
}

impl ApiClient {
    pub fn new(base_url: &str) -> Result<ApiClient, ClientError> {
        let mut headers = HeaderMap::new();
        headers.insert(ferric_protocol::API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
        let http =
            Client::builder().default_headers(headers).timeout(REQUEST_TIMEOUT).build().map_err(ClientError::Build)?;
        Ok(ApiClient { http, base_url: base_url.trim_end_matches('/').to_string() })
    }

    /// Enrolls a UEFI node with the manual-management driver (power is the harness's business); returns its UUID.
    pub fn create_node(&self, name: &str) -> Result<String, ClientError> {
        let body = json!({"name": name, "driver": "manual-management", "boot_mode": "uefi"});
        let node = self.send_json(Method::POST, "/v1/nodes", Some(body))?;
        Ok(node["uuid"].as_str().unwrap_or_default().to_string())
    }

    pub fn create_port(&self, mac: &str, node_uuid: &str) -> Result<Value, ClientError> {
        self.send_json(Method::POST, "/v1/ports", Some(json!({"address": mac, "node_uuid": node_uuid})))
    }

    /// `PUT /v1/nodes/{id}/states/provision` with `target` (`manage`, `provide`, `active`, ...).
    pub fn set_provision_state(&self, node: &str, target: &str) -> Result<(), ClientError> {
        self.send(Method::PUT, &format!("/v1/nodes/{node}/states/provision"), Some(json!({"target": target})))?;
        Ok(())
    }

    /// `PUT /v1/nodes/{id}/states/provision` with a whole request `body`, e.g. a `configdrive` with the target.
    pub fn request_provision(&self, node: &str, body: Value) -> Result<(), ClientError> {
        self.send(Method::PUT, &format!("/v1/nodes/{node}/states/provision"), Some(body))?;
        Ok(())
    }

    /// Points the node's instance at a whole-disk image and its checksum.
    pub fn set_image(&self, node: &str, image_source: &str, image_checksum: &str) -> Result<Value, ClientError> {
        let fields = [("image_source", json!(image_source)), ("image_checksum", json!(image_checksum))];
        self.add_instance_info(node, fields.iter().map(|(key, value)| (*key, value)))
    }

    /// Adds (or replaces) members of the node's `instance_info` with one JSON patch; returns the node.
    pub fn add_instance_info<'a>(
        &self,
        node: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<Value, ClientError> {
        let patch: Vec<Value> = fields
            .into_iter()
            .map(|(key, value)| json!({"op": "add", "path": format!("/instance_info/{key}"), "value": value}))
            .collect();
        self.send_json(Method::PATCH, &format!("/v1/nodes/{node}"), Some(Value::Array(patch)))
    }

    pub fn node(&self, node: &str) -> Result<Value, ClientError> {
        self.send_json(Method::GET, &format!("/v1/nodes/{node}"), None)
    }

    /// The node's event history with every field (`?detail=true`).
    pub fn history(&self, node: &str) -> Result<Value, ClientError> {
        self.send_json(Method::GET, &format!("/v1/nodes/{node}/history?detail=true"), None)
    }

    /// Polls the node every second until its provision state is one of `wanted` (returns the node) or one
    /// of `fail_states`, or `timeout` passes (errors carry the node's `last_error`).
    pub fn wait_for_provision_state(
        &self,
        node: &str,
        wanted: &[&str],
        fail_states: &[&str],
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let deadline = Instant::now() + timeout;
        let started = Instant::now();
        let mut last_state = String::new();
        loop {
            let current = self.node(node)?;
            let state = current["provision_state"].as_str().unwrap_or_default().to_string();
            if state != last_state {
                tracing::info!(%node, from = %last_state, to = %state, after_s = started.elapsed().as_secs_f64(), "provision state");
                last_state = state.clone();
            }
            let last_error = current["last_error"].as_str().unwrap_or_default().to_string();
            let wanted_list = || wanted.iter().map(|s| s.to_string()).collect();
            if wanted.contains(&state.as_str()) {
                return Ok(current);
            }
            if fail_states.contains(&state.as_str()) {
                return Err(ClientError::FailState { node: node.into(), state, wanted: wanted_list(), last_error });
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    node: node.into(),
                    state,
                    wanted: wanted_list(),
                    timeout,
                    last_error,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Creates a node from `body` (any of Ironic's node fields); returns it.
    pub fn create_node_from(&self, body: Value) -> Result<Value, ClientError> {
        self.send_json(Method::POST, "/v1/nodes", Some(body))
    }

    /// `PUT /v1/nodes/{id}/states/power` with `target` (`power on`, `rebooting`, ...).
    pub fn set_power_state(&self, node: &str, target: &str) -> Result<(), ClientError> {
        self.send(Method::PUT, &format!("/v1/nodes/{node}/states/power"), Some(json!({"target": target})))?;
        Ok(())
    }

    /// Polls the node every second until `done` holds for it (returns the node) or `timeout` passes;
    /// `what` names the awaited condition in the error.
    pub fn wait_for_node(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.node(node)?;
            if done(&current) {
                return Ok(current);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Condition { node: node.into(), what: what.into(), timeout, last: current });
            }
            std::thread::sleep(POLL_INTERVAL / 4);
        }
    }

    /// A request whose successful answer is JSON.
    pub fn send_json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let text = self.send(method.clone(), path, body)?;
        serde_json::from_str(&text).map_err(|_| ClientError::NotJson { method, url, body: text })
    }

    /// Sends a request and returns the body of a successful answer.
    pub fn send(&self, method: Method, path: &str, body: Option<Value>) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut request: RequestBuilder = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let http_err = |source| ClientError::Http { method: method.clone(), url: url.clone(), source };
        let response = request.send().map_err(http_err)?;
        let status = response.status();
        let text = response.text().map_err(http_err)?;
        if !status.is_success() {
            return Err(ClientError::Status { method, url, status, body: text });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::mpsc;

    use super::*;

    /// Answers every request with `status` and `body`, and sends each raw request (head and body) back.
    fn stub_server(status: &'static str, body: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let mut content_length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        content_length = value.trim().parse().unwrap();
                    }
                    request.push_str(&line);
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let mut request_body = vec![0; content_length];
                reader.read_exact(&mut request_body).unwrap();
                request.push_str(&String::from_utf8_lossy(&request_body));
                let _ = sender.send(request);
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).unwrap();
            }
        });
        (url, receiver)
    }

    #[test]
    fn requests_carry_the_microversion_and_ironic_shaped_bodies() {
        let (url, requests) = stub_server("201 Created", r#"{"uuid": "n-1", "provision_state": "enroll"}"#);
        let client = ApiClient::new(&url).unwrap();
        assert_eq!(client.create_node("node-a").unwrap(), "n-1");
        let request = requests.recv().unwrap();
        assert!(request.starts_with("POST /v1/nodes HTTP/1.1"), "{request}");
        assert!(request.to_ascii_lowercase().contains("x-openstack-ironic-api-version: 1.115"), "{request}");
        let body: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, json!({"name": "node-a", "driver": "manual-management", "boot_mode": "uefi"}));

        client.set_image("n-1", "http://10.0.2.2:1/testos.img", "abc").unwrap();
        let request = requests.recv().unwrap();
        assert!(request.starts_with("PATCH /v1/nodes/n-1 "), "{request}");
        let patch: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            patch[0],
            json!({"op": "add", "path": "/instance_info/image_source", "value": "http://10.0.2.2:1/testos.img"})
        );
        assert_eq!(patch[1], json!({"op": "add", "path": "/instance_info/image_checksum", "value": "abc"}));
    }

    #[test]
    fn a_fail_state_ends_the_wait_with_last_error() {
        let (url, _requests) = stub_server(
            "200 OK",
            r#"{"uuid": "n-1", "provision_state": "deploy failed", "last_error": "checksum mismatch"}"#,
        );
        let client = ApiClient::new(&url).unwrap();
        let err = client
            .wait_for_provision_state("n-1", &["active"], &["deploy failed"], Duration::from_secs(30))
            .unwrap_err();
        assert!(matches!(err, ClientError::FailState { .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_wait_is_bounded_and_reports_the_state_it_saw() {
        let (url, _requests) = stub_server("200 OK", r#"{"uuid": "n-1", "provision_state": "wait call-back"}"#);
        let client = ApiClient::new(&url).unwrap();
        let err = client.wait_for_provision_state("n-1", &["active"], &[], Duration::from_millis(10)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { ref state, .. } if state == "wait call-back"), "{err}");
    }

    #[test]
    fn error_answers_keep_status_and_body() {
        let (url, _requests) = stub_server("409 Conflict", r#"{"error_message": "locked"}"#);
        let err = ApiClient::new(&url).unwrap().set_provision_state("n-1", "active").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("409") && text.contains("locked") && text.contains("/states/provision"), "{text}");
    }
}
