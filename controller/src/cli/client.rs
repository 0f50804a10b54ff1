//! A blocking client for the Ironic-style API: the credentials, the microversion header, and
//! Ironic's error bodies turned into their `faultstring`.

use reqwest::blocking::{Client as HttpClient, RequestBuilder};
use reqwest::Method;
use serde_json::{json, Value};

/// The microversion every request asks for: the newest the controller speaks.
pub const API_VERSION: &str = "1.115";
/// Ironic's default API address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:6385";

/// How requests authenticate, as the controller is configured.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// Ironic's `http_basic`.
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("{method} {url} failed")]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The controller refused: `message` is Ironic's `faultstring`.
    #[error("{message} (HTTP {status} from {method} {path})")]
    Api { method: Method, path: String, status: u16, message: String },
    #[error("{method} {path} answered with a body that is not JSON")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The controller's API at `base`, e.g. `http://127.0.0.1:6385`.
#[derive(Debug, Clone)]
pub struct Client {
    http: HttpClient,
    base: String,
    auth: Auth,
}

impl Client {
    pub fn new(base: &str, auth: Auth) -> Result<Client, ClientError> {
        let http = HttpClient::builder().build().map_err(ClientError::Build)?;
        Ok(Client { http, base: base.trim_end_matches('/').to_owned(), auth })
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(Method::PATCH, path, Some(body))
    }

    /// `PUT /v1/nodes/{node}/states/provision` with a verb (`manage`, `provide`, `active`...).
    pub fn set_provision_state(&self, node: &str, target: &str) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{node}/states/provision");
        self.send(Method::PUT, &path, Some(&json!({ "target": target }))).map(drop)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(ferric_protocol::API_VERSION_HEADER, API_VERSION);
        match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// Sends a request; an empty success body (202, 204) reads as `null`.
    fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport =
            |source| ClientError::Transport { method: method.clone(), url: format!("{}{path}", self.base), source };
        let response = request.send().map_err(transport)?;
        let status = response.status();
        let text = response.text().map_err(transport)?;
        if !status.is_success() {
            let message = fault_string(&text).unwrap_or_else(|| text.trim().to_owned());
            return Err(ClientError::Api { method, path: path.to_owned(), status: status.as_u16(), message });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|source| ClientError::Decode { method, path: path.to_owned(), source })
    }
}

/// The message of an Ironic error body: `error_message` holds JSON text whose `faultstring`
/// is the message (as python-ironicclient reads it), else `description` or `title`.
fn fault_string(body: &str) -> Option<String> {
    let body: Value = serde_json::from_str(body).ok()?;
    let encoded = body.get("error_message")?;
    let inner = match encoded {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| json!({ "faultstring": text })),
        other => other.clone(),
    };
    ["faultstring", "description", "title"].iter().find_map(|key| inner.get(key)?.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faultstring_is_read_from_ironics_double_encoded_body() {
        let body = r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node foo could not be found.\", \"debuginfo\": null}"}"#;
        assert_eq!(fault_string(body).as_deref(), Some("Node foo could not be found."));
        assert_eq!(fault_string(r#"{"error_message": {"description": "gone"}}"#).as_deref(), Some("gone"));
        assert_eq!(fault_string("<html>proxy error</html>"), None);
    }
}
