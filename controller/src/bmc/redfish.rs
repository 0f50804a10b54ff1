//! The Redfish driver, as Ironic's `redfish` hardware type does it with sushy: power through the
//! system's `ComputerSystem.Reset` action, the boot device through its `Boot` override.
//!
//! Redfish sessions are kept per BMC and credentials for the whole process, so the periodic power
//! sync and every action reuse one session instead of using up the BMC's few session slots.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::{
    BmcError, BmcSettings, BootDevice, BootDeviceSetting, ManagementInterface, PowerAction, PowerInterface, PowerState,
};
use crate::ipxe::BootMode;
use crate::model::JsonObject;

const DRIVER: &str = "redfish";
const SYSTEMS_PATH: &str = "/redfish/v1/Systems";
const SESSIONS_PATH: &str = "/redfish/v1/SessionService/Sessions";
const AUTH_TOKEN_HEADER: &str = "X-Auth-Token";
/// Attempts for a request whose connection is refused or reset (nothing was sent: retrying is safe).
const CONNECT_ATTEMPTS: u32 = 3;
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How often the power state is read while waiting for an action to show.
const POWER_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How much of a non-Redfish error body a refusal quotes.
const QUOTED_BODY_CHARS: usize = 200;

const SUPPORTED_BOOT_DEVICES: &[BootDevice] =
    &[BootDevice::Pxe, BootDevice::Disk, BootDevice::Cdrom, BootDevice::Bios, BootDevice::UefiHttp];

/// `redfish_auth_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthType {
    /// A session when the BMC offers one, else basic authentication.
    Auto,
    Basic,
    Session,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Credentials {
    username: String,
    password: String,
}

/// `redfish_verify_ca`, kept to show in `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaVerification {
    /// The built-in web PKI roots.
    Default,
    Disabled,
    Bundle(PathBuf),
}

/// A node's Redfish BMC. Clones share the discovered system path.
#[derive(Clone)]
pub struct RedfishBmc {
    /// `scheme://host[:port]`, the base of every request and the BMC's name in messages.
    origin: String,
    /// `redfish_system_id` as a path; `None` means the only system the BMC lists.
    system_path: Option<String>,
    discovered_system_path: Arc<OnceLock<String>>,
    credentials: Option<Credentials>,
    auth_type: AuthType,
    verify_ca: CaVerification,
    client: reqwest::Client,
    command_timeout: Duration,
    poll_interval: Duration,
}

impl fmt::Debug for RedfishBmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishBmc")
            .field("address", &self.origin)
            .field("system_path", &self.system_path)
            .field("username", &self.credentials.as_ref().map(|c| c.username.as_str()))
            .field("password", &self.credentials.as_ref().map(|_| "***"))
            .field("auth_type", &self.auth_type)
            .field("verify_ca", &self.verify_ca)
            .finish_non_exhaustive()
    }
}

impl RedfishBmc {
    /// Checks `driver_info` and builds the HTTP client (reading a `redfish_verify_ca` bundle); no
    /// network I/O.
    pub fn from_driver_info(info: &JsonObject, settings: &BmcSettings) -> Result<RedfishBmc, BmcError> {
        let address = super::text_field(info, "redfish_address")
            .ok_or(BmcError::MissingDriverInfo { driver: DRIVER, fields: vec!["redfish_address"] })?;
        let origin = parse_address(address)?;
        let system_path = super::text_field(info, "redfish_system_id").map(parse_system_id).transpose()?;
        let auth_type = match super::text_field(info, "redfish_auth_type").unwrap_or("auto") {
            "auto" => AuthType::Auto,
            "basic" => AuthType::Basic,
            "session" => AuthType::Session,
            other => {
                return Err(invalid("redfish_auth_type", format!("{other:?} is not one of auto, basic, session")));
            }
        };
        let username = super::text_field(info, "redfish_username");
        let password = super::text_field(info, "redfish_password");
        let credentials = match (username, password) {
            (Some(username), password) => {
                Some(Credentials { username: username.to_owned(), password: password.unwrap_or_default().to_owned() })
            }
            (None, Some(_)) => {
                return Err(BmcError::MissingDriverInfo { driver: DRIVER, fields: vec!["redfish_username"] });
            }
            (None, None) if auth_type == AuthType::Session => {
                return Err(BmcError::MissingDriverInfo {
                    driver: DRIVER,
                    fields: vec!["redfish_username", "redfish_password"],
                });
            }
            (None, None) => None,
        };
        let verify_ca = parse_verify_ca(info.get("redfish_verify_ca"))?;
        let client = build_client(&verify_ca, settings.command_timeout)?;
        Ok(RedfishBmc {
            origin,
            system_path,
            discovered_system_path: Arc::default(),
            credentials,
            auth_type,
            verify_ca,
            client,
            command_timeout: settings.command_timeout,
            poll_interval: POWER_POLL_INTERVAL.max(settings.min_command_interval),
        })
    }

    /// The BMC's URL (`scheme://host[:port]`), never credentials.
    pub fn address(&self) -> String {
        self.origin.clone()
    }

    /// The system's path: `redfish_system_id`, else the only member of the systems collection.
    async fn system_path(&self) -> Result<String, BmcError> {
        if let Some(path) = self.system_path.as_ref().or(self.discovered_system_path.get()) {
            return Ok(path.clone());
        }
        let collection = self.get(SYSTEMS_PATH).await?.body;
        let members = collection_members(&collection);
        match members.as_slice() {
            [only] => Ok(self.discovered_system_path.get_or_init(|| only.clone()).clone()),
            [] => Err(self.refused(format!("GET {SYSTEMS_PATH}"), "it lists no systems".to_owned())),
            several => Err(invalid(
                "redfish_system_id",
                format!("is required: {} manages {} systems: {}", self.origin, several.len(), several.join(", ")),
            )),
        }
    }

    async fn get(&self, path: &str) -> Result<Reply, BmcError> {
        self.call(Method::GET, path, None, None).await
    }

    /// One Redfish call with the node's authentication. A session the BMC no longer knows (401) is
    /// opened again once; an error status is a refusal quoting the BMC's message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let request = Request { method, path, body, etag };
        let auth = self.authentication().await?;
        let mut response = self.exchange(&request, &auth).await?;
        if response.status() == StatusCode::UNAUTHORIZED && matches!(auth, Auth::Token(_)) {
            tracing::info!(bmc = %self.origin, "the Redfish session expired; opening a new one");
            self.forget_authentication();
            let auth = self.authentication().await?;
            response = self.exchange(&request, &auth).await?;
        }
        let status = response.status();
        let etag = response.headers().get(ETAG).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let text = self.read_body(&request, response).await?;
        tracing::debug!(bmc = %self.origin, action = %request.action(), %status, "Redfish call");
        if !status.is_success() {
            return Err(self.refused(request.action(), refusal_reason(status, &text)));
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|err| self.refused(request.action(), format!("the answer is not JSON: {err}")))?
        };
        Ok(Reply { body, etag })
    }

    async fn read_body(&self, request: &Request<'_>, response: reqwest::Response) -> Result<String, BmcError> {
        response.text().await.map_err(|err| BmcError::Unreachable {
            bmc: self.origin.clone(),
            action: request.action(),
            attempts: 1,
            reason: describe_error(&err, self.command_timeout),
        })
    }

    /// Sends `request` within the command timeout, retrying connection failures.
    async fn exchange(&self, request: &Request<'_>, auth: &Auth) -> Result<reqwest::Response, BmcError> {
        let url = format!("{}{}", self.origin, request.path);
        let deadline = Instant::now() + self.command_timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let budget = deadline.saturating_duration_since(Instant::now());
            let mut builder = self
                .client
                .request(request.method.clone(), &url)
                .timeout(budget)
                .header(ACCEPT, "application/json")
                .header("OData-Version", "4.0");
            builder = match auth {
                Auth::Anonymous => builder,
                Auth::Basic(credentials) => builder.basic_auth(&credentials.username, Some(&credentials.password)),
                Auth::Token(token) => builder.header(AUTH_TOKEN_HEADER, token),
            };
            if let Some(body) = request.body {
                builder = builder.json(body);
            }
            if let Some(etag) = request.etag {
                builder = builder.header(IF_MATCH, etag);
            }
            match builder.send().await {
                Ok(response) => return Ok(response),
                Err(err) => {
                    let retry = is_transient_connect_error(&err)
                        && attempts < CONNECT_ATTEMPTS
                        && deadline.saturating_duration_since(Instant::now()) > CONNECT_RETRY_DELAY;
                    let reason = describe_error(&err, budget);
                    if !retry {
                        return Err(BmcError::Unreachable {
                            bmc: self.origin.clone(),
                            action: request.action(),
                            attempts,
                            reason,
                        });
                    }
                    tracing::debug!(bmc = %self.origin, action = %request.action(), %reason, "retrying");
                    tokio::time::sleep(CONNECT_RETRY_DELAY).await;
                }
            }
        }
    }

    /// How to authenticate the next call: basic, or a session opened once per BMC and credentials.
    async fn authentication(&self) -> Result<Auth, BmcError> {
        let Some(credentials) = &self.credentials else { return Ok(Auth::Anonymous) };
        if self.auth_type == AuthType::Basic {
            return Ok(Auth::Basic(credentials.clone()));
        }
        let key = self.session_key(credentials);
        match lock_sessions().get(&key) {
            Some(Auth::Token(token)) => return Ok(Auth::Token(token.clone())),
            // Only `auto` may fall back; `session` asks the BMC again.
            Some(known) if self.auth_type == AuthType::Auto => return Ok(known.clone()),
            _ => {}
        }
        let auth = self.open_session(credentials).await?;
        lock_sessions().insert(key, auth.clone());
        Ok(auth)
    }

    fn forget_authentication(&self) {
        if let Some(credentials) = &self.credentials {
            lock_sessions().remove(&self.session_key(credentials));
        }
    }

    fn session_key(&self, credentials: &Credentials) -> SessionKey {
        SessionKey { origin: self.origin.clone(), credentials: credentials.clone() }
    }

    /// Opens a session; in `auto` mode a BMC that refuses falls back to basic authentication.
    async fn open_session(&self, credentials: &Credentials) -> Result<Auth, BmcError> {
        let body = json!({"UserName": credentials.username, "Password": credentials.password});
        let request = Request { method: Method::POST, path: SESSIONS_PATH, body: Some(&body), etag: None };
        let response = self.exchange(&request, &Auth::Anonymous).await?;
        let status = response.status();
        let token = response.headers().get(AUTH_TOKEN_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let text = self.read_body(&request, response).await?;
        match token {
            Some(token) if status.is_success() => {
                tracing::info!(bmc = %self.origin, "opened a Redfish session");
                Ok(Auth::Token(token))
            }
            _ => {
                let reason = if status.is_success() {
                    format!("HTTP {status} without an {AUTH_TOKEN_HEADER} header")
                } else {
                    refusal_reason(status, &text)
                };
                if self.auth_type == AuthType::Session {
                    return Err(self.refused(request.action(), reason));
                }
                tracing::info!(bmc = %self.origin, %reason, "no Redfish session; using basic authentication");
                Ok(Auth::Basic(credentials.clone()))
            }
        }
    }

    fn refused(&self, action: String, reason: String) -> BmcError {
        BmcError::Refused { bmc: self.origin.clone(), action, reason }
    }

    /// The reset types the BMC allows, `None` when it does not say.
    async fn allowed_reset_types(&self, reset: &Value) -> Result<Option<Vec<String>>, BmcError> {
        if let Some(values) = allowable_values(reset, "ResetType") {
            return Ok(Some(values));
        }
        let Some(action_info) = reset.get("@Redfish.ActionInfo").and_then(Value::as_str) else { return Ok(None) };
        let info = self.get(action_info).await?.body;
        Ok(action_info_allowable_values(&info, "ResetType"))
    }

    /// Polls the power state until it settles in `expected`, for up to `timeout`.
    async fn wait_for_power_state(
        &self,
        system_path: &str,
        expected: PowerState,
        action: String,
        timeout: Duration,
    ) -> Result<(), BmcError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut reported = "nothing (no answer in time)".to_owned();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.get(system_path)).await {
                Ok(Ok(reply)) => {
                    let power = reported_power_state(&reply.body);
                    if settled_power_state(power) == Some(expected) {
                        tracing::info!(bmc = %self.origin, %action, waited = ?started.elapsed(), "power state reached");
                        return Ok(());
                    }
                    reported = power.unwrap_or("no PowerState").to_owned();
                }
                // BMCs often stop answering for a moment during a reset: keep asking until the deadline.
                Ok(Err(err)) => {
                    tracing::warn!(bmc = %self.origin, %action, error = %err, "power state poll failed");
                    reported = format!("an error: {err}");
                }
                Err(_elapsed) => break,
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            tokio::time::sleep(self.poll_interval.min(remaining)).await;
        }
        Err(BmcError::PowerTimeout {
            bmc: self.origin.clone(),
            action,
            expected,
            actual: reported,
            waited: started.elapsed(),
        })
    }
}

impl PowerInterface for RedfishBmc {
    /// `PoweringOn` reads as on and `PoweringOff` as off, as in Ironic.
    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let path = self.system_path().await?;
        let system = self.get(&path).await?.body;
        let reported = reported_power_state(&system);
        reported.and_then(heading_power_state).ok_or_else(|| {
            self.refused(format!("GET {path}"), format!("it reports PowerState {}", reported.unwrap_or("null")))
        })
    }

    async fn set_power_state(&self, action: PowerAction, timeout: Duration) -> Result<(), BmcError> {
        let path = self.system_path().await?;
        let system = self.get(&path).await?.body;
        let heading = reported_power_state(&system).and_then(heading_power_state);
        let expected = action.resulting_state();
        let Some(candidates) = reset_type_candidates(action, heading) else {
            tracing::info!(bmc = %self.origin, %action, "the node is already {expected}");
            return self.wait_for_power_state(&path, expected, action.to_string(), timeout).await;
        };
        let reset = system.pointer("/Actions/#ComputerSystem.Reset").unwrap_or(&Value::Null);
        let target = reset.get("target").and_then(Value::as_str).ok_or_else(|| BmcError::Unsupported {
            bmc: self.origin.clone(),
            what: format!("{action}: {path} has no ComputerSystem.Reset action"),
        })?;
        let allowed = self.allowed_reset_types(reset).await?;
        let reset_type = choose_reset_type(candidates, allowed.as_deref()).ok_or_else(|| BmcError::Unsupported {
            bmc: self.origin.clone(),
            what: format!(
                "{action}: it needs ResetType {} and {path} allows {}",
                candidates.join(" or "),
                allowed.as_deref().unwrap_or_default().join(", ")
            ),
        })?;
        tracing::info!(bmc = %self.origin, %action, reset_type, "resetting the system");
        self.call(Method::POST, target, Some(&json!({"ResetType": reset_type})), None).await?;
        self.wait_for_power_state(&path, expected, format!("{action} (ResetType {reset_type})"), timeout).await
    }
}

impl ManagementInterface for RedfishBmc {
    fn supported_boot_devices(&self) -> &'static [BootDevice] {
        SUPPORTED_BOOT_DEVICES
    }

    async fn boot_device(&self) -> Result<Option<BootDeviceSetting>, BmcError> {
        let path = self.system_path().await?;
        let system = self.get(&path).await?.body;
        Ok(system.get("Boot").and_then(boot_override))
    }

    async fn set_boot_device(&self, setting: BootDeviceSetting, mode: BootMode) -> Result<(), BmcError> {
        let device = setting.device;
        let unsupported = |what: String| BmcError::Unsupported { bmc: self.origin.clone(), what };
        let target = boot_source_target(device).ok_or_else(|| unsupported(format!("boot device {device}")))?;
        let path = self.system_path().await?;
        let system = self.get(&path).await?;
        let boot = system.body.get("Boot").ok_or_else(|| unsupported(format!("boot override: {path} has no Boot")))?;
        let enabled = if setting.persistent { "Continuous" } else { "Once" };
        let mut change = json!({"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled});
        if boot.get("BootSourceOverrideMode").is_some() {
            change["BootSourceOverrideMode"] = json!(boot_source_mode(mode));
        }
        for (property, value) in change.as_object().into_iter().flatten() {
            let value = value.as_str().unwrap_or_default();
            if let Some(allowed) =
                allowable_values(boot, property).filter(|allowed| !allowed.iter().any(|a| a == value))
            {
                return Err(unsupported(format!(
                    "boot device {device}: {property} {value} (it allows {})",
                    allowed.join(", ")
                )));
            }
        }
        tracing::info!(bmc = %self.origin, %device, enabled, "setting the boot override");
        self.call(Method::PATCH, &path, Some(&json!({"Boot": change})), system.etag.as_deref()).await?;
        Ok(())
    }
}

/// A request's parts, for sending it again after a new session and for messages.
struct Request<'a> {
    method: Method,
    path: &'a str,
    body: Option<&'a Value>,
    etag: Option<&'a str>,
}

impl Request<'_> {
    /// `GET /redfish/v1/Systems/1`, the action in messages.
    fn action(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A successful answer.
struct Reply {
    /// `Null` for an empty body (a 204).
    body: Value,
    etag: Option<String>,
}

#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic(Credentials),
    Token(String),
}

#[derive(PartialEq, Eq, Hash)]
struct SessionKey {
    origin: String,
    credentials: Credentials,
}

/// How each BMC and credentials authenticate: a session token, or basic where sessions failed.
fn lock_sessions() -> std::sync::MutexGuard<'static, HashMap<SessionKey, Auth>> {
    static SESSIONS: OnceLock<Mutex<HashMap<SessionKey, Auth>>> = OnceLock::new();
    // A panic while holding the lock leaves a map that is still whole.
    SESSIONS.get_or_init(Mutex::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn invalid(field: &'static str, reason: String) -> BmcError {
    BmcError::InvalidDriverInfo { field, reason }
}

/// `https://host:port`, from `http(s)://host[:port]` or a bare host (https, as in Ironic).
fn parse_address(address: &str) -> Result<String, BmcError> {
    let with_scheme = if address.contains("://") { address.to_owned() } else { format!("https://{address}") };
    let url = Url::parse(&with_scheme).map_err(|err| invalid("redfish_address", format!("{address:?}: {err}")))?;
    let problem = if !matches!(url.scheme(), "http" | "https") {
        Some("the scheme must be http or https")
    } else if url.host_str().is_none() {
        Some("it has no host")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("credentials belong in redfish_username and redfish_password")
    } else if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        Some("it must be scheme://host[:port] without a path")
    } else {
        None
    };
    match problem {
        // Never echo an address that carries credentials.
        Some(reason) if url.password().is_some() || !url.username().is_empty() => {
            Err(invalid("redfish_address", reason.to_owned()))
        }
        Some(reason) => Err(invalid("redfish_address", format!("{address:?}: {reason}"))),
        None => Ok(url.origin().ascii_serialization()),
    }
}

/// `/redfish/v1/Systems/ID` or `ID` to the system's path.
fn parse_system_id(system_id: &str) -> Result<String, BmcError> {
    let unusable = |c: char| c.is_whitespace() || matches!(c, '?' | '#');
    if system_id.contains(unusable) {
        return Err(invalid("redfish_system_id", format!("{system_id:?} is not a Redfish path or id")));
    }
    if system_id.starts_with('/') {
        let path = system_id.trim_end_matches('/');
        if path.is_empty() {
            return Err(invalid("redfish_system_id", "\"/\" is not a system's path".to_owned()));
        }
        Ok(path.to_owned())
    } else if system_id.contains('/') {
        Err(invalid("redfish_system_id", format!("{system_id:?}: a path must start with /redfish/v1/Systems/")))
    } else {
        Ok(format!("{SYSTEMS_PATH}/{system_id}"))
    }
}

/// A boolean (JSON or oslo's strings, as Ironic's `bool_from_string`) or a CA bundle's path.
fn parse_verify_ca(value: Option<&Value>) -> Result<CaVerification, BmcError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(CaVerification::Default),
        Some(Value::Bool(true)) => return Ok(CaVerification::Default),
        Some(Value::Bool(false)) => return Ok(CaVerification::Disabled),
        Some(Value::String(text)) => text.trim(),
        Some(other) => return Err(invalid("redfish_verify_ca", format!("{other} is neither a boolean nor a path"))),
    };
    match text.to_ascii_lowercase().as_str() {
        "" | "1" | "t" | "true" | "on" | "y" | "yes" => Ok(CaVerification::Default),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(CaVerification::Disabled),
        _ => Ok(CaVerification::Bundle(PathBuf::from(text))),
    }
}

fn build_client(verify_ca: &CaVerification, command_timeout: Duration) -> Result<reqwest::Client, BmcError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(command_timeout)
        .timeout(command_timeout)
        .user_agent(concat!("ferric-controller/", env!("CARGO_PKG_VERSION")));
    match verify_ca {
        CaVerification::Default => {}
        CaVerification::Disabled => builder = builder.danger_accept_invalid_certs(true),
        CaVerification::Bundle(path) => {
            let unusable = |reason: String| invalid("redfish_verify_ca", format!("{}: {reason}", path.display()));
            if path.is_dir() {
                return Err(unusable("a directory; give a PEM bundle file".to_owned()));
            }
            let pem = std::fs::read(path)
                .map_err(|err| unusable(format!("neither a boolean nor a readable CA bundle ({err})")))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| unusable(format!("not a PEM CA bundle ({err})")))?;
            if certificates.is_empty() {
                return Err(unusable("holds no PEM certificate".to_owned()));
            }
            // Like requests' `verify=<path>`: the bundle replaces the built-in roots.
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
    }
    builder.build().map_err(|err| invalid("redfish_verify_ca", format!("cannot set up TLS: {err}")))
}

/// Why a request got no answer: the error's causes, without reqwest's wrapper naming the URL again,
/// and what to do about a certificate that does not verify.
fn describe_error(err: &reqwest::Error, budget: Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {:.1} s", budget.as_secs_f64());
    }
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let reason = if causes.is_empty() { err.to_string() } else { causes.join(": ") };
    if reason.contains("invalid peer certificate") {
        format!("{reason} (give the BMC's CA bundle as redfish_verify_ca, or false to skip verification)")
    } else {
        reason
    }
}

/// A connection that failed before anything was sent, for a reason that may pass (a BMC
/// restarting); not a TLS failure, which the same request would meet again.
fn is_transient_connect_error(err: &reqwest::Error) -> bool {
    use std::io::ErrorKind;
    if !err.is_connect() || err.is_timeout() {
        return false;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NotConnected
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            );
        }
        source = cause.source();
    }
    false
}

/// `HTTP 401 Unauthorized: <the Redfish error message>`.
fn refusal_reason(status: StatusCode, body: &str) -> String {
    match redfish_error_message(body) {
        Some(message) => format!("HTTP {status}: {message}"),
        None if body.trim().is_empty() => format!("HTTP {status}"),
        None => format!("HTTP {status}: {}", body.trim().chars().take(QUOTED_BODY_CHARS).collect::<String>()),
    }
}

/// A Redfish error body's first extended message, else its `message`.
fn redfish_error_message(body: &str) -> Option<String> {
    let body: Value = serde_json::from_str(body).ok()?;
    let error = body.get("error")?;
    error
        .pointer("/@Message.ExtendedInfo/0/Message")
        .or_else(|| error.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn collection_members(collection: &Value) -> Vec<String> {
    let members = collection.get("Members").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    members.iter().filter_map(|member| member.get("@odata.id")?.as_str()).map(str::to_owned).collect()
}

fn reported_power_state(system: &Value) -> Option<&str> {
    system.get("PowerState").and_then(Value::as_str)
}

/// `On` and `Off` only: a `Powering*` state has not settled yet.
fn settled_power_state(reported: Option<&str>) -> Option<PowerState> {
    match reported? {
        "On" => Some(PowerState::On),
        "Off" => Some(PowerState::Off),
        _ => None,
    }
}

/// Where the node is or is going (Ironic's reading of `PoweringOn`/`PoweringOff`).
fn heading_power_state(reported: &str) -> Option<PowerState> {
    match reported {
        "On" | "PoweringOn" => Some(PowerState::On),
        "Off" | "PoweringOff" => Some(PowerState::Off),
        _ => None,
    }
}

/// The reset types that perform `action`, preferred first; `None` when the node is already where
/// an on or off action leads.
fn reset_type_candidates(action: PowerAction, heading: Option<PowerState>) -> Option<&'static [&'static str]> {
    const POWER_ON: &[&str] = &["On", "ForceOn"];
    match action {
        PowerAction::On | PowerAction::Off | PowerAction::SoftOff if heading == Some(action.resulting_state()) => None,
        PowerAction::On => Some(POWER_ON),
        PowerAction::Off => Some(&["ForceOff"]),
        PowerAction::SoftOff => Some(&["GracefulShutdown"]),
        PowerAction::Reboot | PowerAction::SoftReboot if heading == Some(PowerState::Off) => Some(POWER_ON),
        PowerAction::Reboot => Some(&["ForceRestart"]),
        PowerAction::SoftReboot => Some(&["GracefulRestart"]),
    }
}

/// The first candidate the BMC allows; any when it does not list what it allows.
fn choose_reset_type(candidates: &[&'static str], allowed: Option<&[String]>) -> Option<&'static str> {
    match allowed {
        None => candidates.first().copied(),
        Some(allowed) => candidates.iter().copied().find(|candidate| allowed.iter().any(|a| a == candidate)),
    }
}

/// `<property>@Redfish.AllowableValues` of `object`.
fn allowable_values(object: &Value, property: &str) -> Option<Vec<String>> {
    let values = object.get(format!("{property}@Redfish.AllowableValues"))?.as_array()?;
    Some(values.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

/// The `AllowableValues` of parameter `name` in an `ActionInfo` resource.
fn action_info_allowable_values(action_info: &Value, name: &str) -> Option<Vec<String>> {
    let parameters = action_info.get("Parameters")?.as_array()?;
    let parameter = parameters.iter().find(|parameter| parameter.get("Name").and_then(Value::as_str) == Some(name))?;
    let values = parameter.get("AllowableValues")?.as_array()?;
    Some(values.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

fn boot_source_target(device: BootDevice) -> Option<&'static str> {
    Some(match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::Cdrom => "Cd",
        BootDevice::Bios => "BiosSetup",
        BootDevice::UefiHttp => "UefiHttp",
        BootDevice::Safe => return None,
    })
}

fn boot_source_mode(mode: BootMode) -> &'static str {
    match mode {
        BootMode::Uefi => "UEFI",
        BootMode::Bios => "Legacy",
    }
}

/// The override a `Boot` object holds; `None` when disabled or for a target Ironic has no name for.
fn boot_override(boot: &Value) -> Option<BootDeviceSetting> {
    let persistent = match boot.get("BootSourceOverrideEnabled")?.as_str()? {
        "Once" => false,
        "Continuous" => true,
        _ => return None,
    };
    let target = boot.get("BootSourceOverrideTarget")?.as_str()?;
    let device = BootDevice::ALL.iter().copied().find(|device| boot_source_target(*device) == Some(target))?;
    Some(BootDeviceSetting { device, persistent })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::routing::{get, post};
    use axum::{Json, Router};

    use super::*;

    fn info(value: Value) -> JsonObject {
        value.as_object().expect("driver_info is an object").clone()
    }

    fn build(value: Value) -> Result<RedfishBmc, BmcError> {
        RedfishBmc::from_driver_info(&info(value), &BmcSettings::default())
    }

    fn invalid_field(result: Result<RedfishBmc, BmcError>) -> (&'static str, String) {
        match result {
            Err(BmcError::InvalidDriverInfo { field, reason }) => (field, reason),
            other => panic!("expected InvalidDriverInfo, got {other:?}"),
        }
    }

    #[test]
    fn address_forms_become_the_origin() {
        for (address, origin) in [
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
            ("https://bmc.example.com/", "https://bmc.example.com"),
            ("bmc.example.com", "https://bmc.example.com"),
            ("10.0.0.5:8443", "https://10.0.0.5:8443"),
            ("[fd00::5]:8000", "https://[fd00::5]:8000"),
            ("https://bmc:443", "https://bmc"),
        ] {
            let bmc = build(json!({"redfish_address": address})).unwrap();
            assert_eq!(bmc.address(), origin, "{address}");
        }
    }

    #[test]
    fn unusable_addresses_name_the_field() {
        for address in ["ftp://bmc", "https://bmc/redfish/v1", "http://bmc:99999", "https://bmc?x=1"] {
            let (field, reason) = invalid_field(build(json!({"redfish_address": address})));
            assert_eq!(field, "redfish_address");
            assert!(reason.contains(address.trim_start_matches("https://")), "{reason}");
        }
        let (field, reason) = invalid_field(build(json!({"redfish_address": "https://root:hunter2@bmc"})));
        assert_eq!(field, "redfish_address");
        assert!(!reason.contains("hunter2") && reason.contains("redfish_username"), "{reason}");
        match build(json!({})) {
            Err(BmcError::MissingDriverInfo { fields, .. }) => assert_eq!(fields, ["redfish_address"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn system_ids_become_paths() {
        let path = |id: &str| build(json!({"redfish_address": "bmc", "redfish_system_id": id})).unwrap().system_path;
        assert_eq!(path("/redfish/v1/Systems/1/"), Some("/redfish/v1/Systems/1".to_owned()));
        assert_eq!(path("abc-123"), Some("/redfish/v1/Systems/abc-123".to_owned()));
        assert_eq!(build(json!({"redfish_address": "bmc"})).unwrap().system_path, None);
        for bad in ["Systems/1", "/", "a b", "1?x"] {
            let (field, _) = invalid_field(build(json!({"redfish_address": "bmc", "redfish_system_id": bad})));
            assert_eq!(field, "redfish_system_id", "{bad}");
        }
    }

    #[test]
    fn verify_ca_accepts_booleans_strings_and_bundles() {
        let verify = |value: Value| build(json!({"redfish_address": "bmc", "redfish_verify_ca": value}));
        assert_eq!(verify(json!(true)).unwrap().verify_ca, CaVerification::Default);
        assert_eq!(verify(json!("True")).unwrap().verify_ca, CaVerification::Default);
        assert_eq!(verify(json!(false)).unwrap().verify_ca, CaVerification::Disabled);
        assert_eq!(verify(json!("false")).unwrap().verify_ca, CaVerification::Disabled);
        assert_eq!(verify(json!("no")).unwrap().verify_ca, CaVerification::Disabled);
        assert_eq!(build(json!({"redfish_address": "bmc"})).unwrap().verify_ca, CaVerification::Default);

        let (field, reason) = invalid_field(verify(json!("/nonexistent/ca.pem")));
        assert_eq!(field, "redfish_verify_ca");
        assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
        assert_eq!(invalid_field(verify(json!(3))).0, "redfish_verify_ca");
        let dir = tempfile::tempdir().unwrap();
        assert!(invalid_field(verify(json!(dir.path()))).1.contains("directory"));
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        assert!(invalid_field(verify(json!(not_pem))).1.contains("no PEM certificate"));
    }

    #[test]
    fn auth_type_and_credentials_are_checked() {
        let (field, _) = invalid_field(build(json!({"redfish_address": "bmc", "redfish_auth_type": "digest"})));
        assert_eq!(field, "redfish_auth_type");
        match build(json!({"redfish_address": "bmc", "redfish_password": "pw"})) {
            Err(BmcError::MissingDriverInfo { fields, .. }) => assert_eq!(fields, ["redfish_username"]),
            other => panic!("{other:?}"),
        }
        match build(json!({"redfish_address": "bmc", "redfish_auth_type": "session"})) {
            Err(BmcError::MissingDriverInfo { fields, .. }) => {
                assert_eq!(fields, ["redfish_username", "redfish_password"])
            }
            other => panic!("{other:?}"),
        }
        let bmc = build(json!({"redfish_address": "bmc", "redfish_username": "admin", "redfish_auth_type": "basic"}))
            .unwrap();
        assert_eq!(bmc.auth_type, AuthType::Basic);
    }

    #[test]
    fn debug_hides_the_password() {
        let bmc =
            build(json!({"redfish_address": "bmc", "redfish_username": "admin", "redfish_password": "s3cr3t-pw"}))
                .unwrap();
        let shown = format!("{bmc:?}");
        assert!(shown.contains("admin") && shown.contains("***") && !shown.contains("s3cr3t-pw"), "{shown}");
    }

    #[test]
    fn power_states_settle_only_on_on_and_off() {
        assert_eq!(settled_power_state(reported_power_state(&json!({"PowerState": "On"}))), Some(PowerState::On));
        assert_eq!(settled_power_state(reported_power_state(&json!({"PowerState": "Off"}))), Some(PowerState::Off));
        assert_eq!(settled_power_state(Some("PoweringOn")), None);
        assert_eq!(settled_power_state(reported_power_state(&json!({}))), None);
        assert_eq!(heading_power_state("PoweringOn"), Some(PowerState::On));
        assert_eq!(heading_power_state("PoweringOff"), Some(PowerState::Off));
        assert_eq!(heading_power_state("Paused"), None);
    }

    #[test]
    fn reset_types_follow_the_action_and_the_current_state() {
        use PowerAction::*;
        let on = Some(PowerState::On);
        let off = Some(PowerState::Off);
        assert_eq!(reset_type_candidates(On, off), Some(&["On", "ForceOn"][..]));
        assert_eq!(reset_type_candidates(On, on), None);
        assert_eq!(reset_type_candidates(Off, on), Some(&["ForceOff"][..]));
        assert_eq!(reset_type_candidates(SoftOff, off), None);
        assert_eq!(reset_type_candidates(SoftOff, None), Some(&["GracefulShutdown"][..]));
        assert_eq!(reset_type_candidates(Reboot, on), Some(&["ForceRestart"][..]));
        assert_eq!(reset_type_candidates(Reboot, off), Some(&["On", "ForceOn"][..]));
        assert_eq!(reset_type_candidates(SoftReboot, on), Some(&["GracefulRestart"][..]));

        let allowed = vec!["ForceOn".to_owned(), "ForceOff".to_owned()];
        assert_eq!(choose_reset_type(&["On", "ForceOn"], Some(&allowed)), Some("ForceOn"));
        assert_eq!(choose_reset_type(&["GracefulShutdown"], Some(&allowed)), None);
        assert_eq!(choose_reset_type(&["On", "ForceOn"], None), Some("On"));
    }

    #[test]
    fn allowed_reset_types_come_from_the_action_or_its_action_info() {
        let reset = json!({"target": "/x", "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]});
        assert_eq!(allowable_values(&reset, "ResetType"), Some(vec!["On".to_owned(), "ForceOff".to_owned()]));
        assert_eq!(allowable_values(&json!({"target": "/x"}), "ResetType"), None);
        let action_info = json!({"Parameters": [
            {"Name": "Other", "AllowableValues": ["X"]},
            {"Name": "ResetType", "AllowableValues": ["ForceRestart", "GracefulShutdown"]}
        ]});
        assert_eq!(
            action_info_allowable_values(&action_info, "ResetType"),
            Some(vec!["ForceRestart".to_owned(), "GracefulShutdown".to_owned()])
        );
    }

    #[test]
    fn boot_overrides_read_back() {
        let boot = |enabled: &str, target: &str| {
            boot_override(&json!({"BootSourceOverrideEnabled": enabled, "BootSourceOverrideTarget": target}))
        };
        assert_eq!(boot("Once", "Pxe"), Some(BootDeviceSetting { device: BootDevice::Pxe, persistent: false }));
        assert_eq!(boot("Continuous", "Hdd"), Some(BootDeviceSetting { device: BootDevice::Disk, persistent: true }));
        assert_eq!(boot("Once", "BiosSetup").map(|s| s.device), Some(BootDevice::Bios));
        assert_eq!(boot("Disabled", "Pxe"), None);
        assert_eq!(boot("Once", "Usb"), None);
        assert_eq!(boot_override(&json!({"BootSourceOverrideTarget": "Pxe"})), None);
        assert_eq!(boot_source_target(BootDevice::Safe), None);
        for device in SUPPORTED_BOOT_DEVICES {
            assert!(boot_source_target(*device).is_some(), "{device}");
        }
    }

    #[test]
    fn refusals_quote_the_redfish_message() {
        let extended = r#"{"error": {"code": "Base.1.0.GeneralError", "message": "general",
            "@Message.ExtendedInfo": [{"MessageId": "Base.1.0.PropertyValueNotInList", "Message": "not in list"}]}}"#;
        assert_eq!(refusal_reason(StatusCode::BAD_REQUEST, extended), "HTTP 400 Bad Request: not in list");
        // sushy-tools' errors: an ExtendedInfo entry without a Message.
        let sushy = r#"{"error": {"message": "Fake system nope was not found",
            "@Message.ExtendedInfo": [{"MessageId": "Base.1.0.GeneralError"}]}}"#;
        assert_eq!(refusal_reason(StatusCode::NOT_FOUND, sushy), "HTTP 404 Not Found: Fake system nope was not found");
        assert_eq!(refusal_reason(StatusCode::BAD_GATEWAY, ""), "HTTP 502 Bad Gateway");
        assert_eq!(refusal_reason(StatusCode::BAD_REQUEST, "plain words"), "HTTP 400 Bad Request: plain words");
    }

    #[test]
    fn collection_members_are_paths() {
        let collection =
            json!({"Members": [{"@odata.id": "/redfish/v1/Systems/a"}, {"@odata.id": "/redfish/v1/Systems/b"}]});
        assert_eq!(collection_members(&collection), ["/redfish/v1/Systems/a", "/redfish/v1/Systems/b"]);
        assert!(collection_members(&json!({})).is_empty());
    }

    /// A BMC with sessions (sushy-tools has none): it hands out numbered tokens and accepts only the
    /// latest, which the test can expire.
    #[derive(Default)]
    struct SessionBmc {
        sessions_opened: AtomicU32,
        valid_token: Mutex<Option<String>>,
    }

    async fn open_session(State(bmc): State<Arc<SessionBmc>>, Json(body): Json<Value>) -> (AxumStatus, AxumHeaders) {
        let mut headers = AxumHeaders::new();
        if body != json!({"UserName": "admin", "Password": "s3cr3t-pw"}) {
            return (AxumStatus::UNAUTHORIZED, headers);
        }
        let number = bmc.sessions_opened.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("token-{number}");
        headers.insert(AUTH_TOKEN_HEADER, token.parse().unwrap());
        *bmc.valid_token.lock().unwrap() = Some(token);
        (AxumStatus::CREATED, headers)
    }

    async fn system(State(bmc): State<Arc<SessionBmc>>, headers: AxumHeaders) -> Result<Json<Value>, AxumStatus> {
        let token = headers.get(AUTH_TOKEN_HEADER).and_then(|value| value.to_str().ok());
        if token.is_none() || token != bmc.valid_token.lock().unwrap().as_deref() {
            return Err(AxumStatus::UNAUTHORIZED);
        }
        Ok(Json(json!({"PowerState": "PoweringOn"})))
    }

    async fn serve_session_bmc() -> (Arc<SessionBmc>, String) {
        let bmc = Arc::new(SessionBmc::default());
        let router = Router::new()
            .route(SESSIONS_PATH, post(open_session))
            .route("/redfish/v1/Systems/1", get(system))
            .with_state(bmc.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (bmc, address)
    }

    #[tokio::test]
    async fn a_session_is_shared_and_reopened_once_it_expires() {
        let (server, address) = serve_session_bmc().await;
        let driver_info = json!({"redfish_address": address, "redfish_system_id": "1", "redfish_auth_type": "session",
            "redfish_username": "admin", "redfish_password": "s3cr3t-pw"});
        let bmc = build(driver_info.clone()).unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
        // Another driver for the same BMC, as the conductor builds per action, reuses the session;
        // `auto` takes a session where the BMC offers one.
        let mut auto = driver_info;
        auto["redfish_auth_type"] = json!("auto");
        assert_eq!(build(auto).unwrap().power_state().await.unwrap(), PowerState::On);
        assert_eq!(server.sessions_opened.load(Ordering::SeqCst), 1);

        *server.valid_token.lock().unwrap() = None;
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
        assert_eq!(server.sessions_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_session_names_the_action_and_not_the_password() {
        let (_server, address) = serve_session_bmc().await;
        let bmc = build(json!({"redfish_address": address, "redfish_system_id": "1", "redfish_auth_type": "session",
            "redfish_username": "admin", "redfish_password": "wrong-pw"}))
        .unwrap();
        let err = bmc.power_state().await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, BmcError::Refused { .. }), "{err:?}");
        assert!(message.contains("POST /redfish/v1/SessionService/Sessions") && message.contains("401"), "{message}");
        assert!(!message.contains("wrong-pw"), "{message}");
    }
}
