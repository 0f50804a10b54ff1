//! HTTP client for the controller's agent endpoints (lookup and heartbeat).

use std::time::Duration;

use ferric_protocol::{Heartbeat, HeartbeatResponse, LookupResponse};

/// Bound on one lookup or heartbeat round trip.
const API_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
}

impl ClientError {
    /// The controller refused the request (4xx): retrying the same request will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if (400..500).contains(status))
    }
}

#[derive(Debug, Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: String,
}

impl ControllerClient {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self { http, base: base_url.trim_end_matches('/').to_owned() }
    }

    /// `GET /v1/lookup?addresses=...`: finds the node this agent runs on.
    pub async fn lookup(&self, macs: &[String]) -> Result<LookupResponse, ClientError> {
        let url = format!("{}{}?addresses={}", self.base, ferric_protocol::LOOKUP_PATH, macs.join(","));
        let request = self.http.get(&url);
        self.send(url, request).await
    }

    /// `POST /v1/heartbeat/{node}`: reports status and receives the next task.
    pub async fn heartbeat(&self, node: &str, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        let url = format!("{}{}", self.base, ferric_protocol::heartbeat_path(node));
        let request = self.http.post(&url).json(heartbeat);
        self.send(url, request).await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request
            .header(ferric_protocol::API_VERSION_HEADER, ferric_protocol::AGENT_API_VERSION)
            .timeout(API_TIMEOUT)
            .send()
            .await
            .map_err(|source| ClientError::Http { url: url.clone(), source })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Status { url, status: status.as_u16(), message: fault_string(&body) });
        }
        response.json().await.map_err(|source| ClientError::Http { url, source })
    }
}

/// Ironic's error body is `{"error_message": "<JSON text with faultstring>"}`; falls back to the raw body.
fn fault_string(body: &str) -> String {
    let inner = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error_message")?.as_str().map(str::to_owned));
    inner
        .and_then(|text| {
            let fault: serde_json::Value = serde_json::from_str(&text).ok()?;
            fault.get("faultstring")?.as_str().map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_string_unwraps_ironic_error_bodies() {
        let body = r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node x could not be found.\", \"debuginfo\": null}"}"#;
        assert_eq!(fault_string(body), "Node x could not be found.");
        assert_eq!(fault_string("plain text"), "plain text");
    }
}
