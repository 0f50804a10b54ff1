//! Errors with Ironic's messages and HTTP codes (`ironic/common/exception.py`), rendered as
//! Ironic's error body: `{"error_message": "<JSON text of {faultcode, faultstring, debuginfo}>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Node {0} could not be found.")]
    NodeNotFound(String),
    #[error("Port {0} could not be found.")]
    PortNotFound(String),
    #[error("Could not find the following driver(s) or hardware type(s): {0}.")]
    DriverNotFound(String),
    #[error("Node inventory for node {0} could not be found.")]
    InventoryNotFound(String),
    /// A path, or an agent lookup that must not reveal why it failed.
    #[error("The resource could not be found.")]
    ResourceNotFound,
    /// Ironic's `Invalid`, `InvalidParameterValue`, `MissingParameterValue`, `PatchError`...
    #[error("{0}")]
    Invalid(String),
    #[error(
        "The requested action \"{action}\" can not be performed on node \"{node}\" while it is in state \"{state}\"."
    )]
    InvalidStateRequested { action: String, node: String, state: String },
    #[error("Invalid or missing agent token received.")]
    InvalidAgentToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("Node {node} is locked by host {host}, please retry after the current operation is completed.")]
    NodeLocked { node: String, host: String },
    /// A missing or wrong credential on an API that requires one.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotAcceptable(String),
    /// A BMC call made for the request failed (Ironic's `IPMIFailure`, `RedfishError`: 500).
    #[error("{0}")]
    BmcFailure(String),
    #[error("An internal error occurred; see the controller's log.")]
    Store(#[from] StoreError),
}

impl Error {
    /// Ironic's bare `NotAcceptable()`, used when a field or verb needs a newer microversion.
    pub fn not_acceptable() -> Error {
        Error::NotAcceptable("Request not acceptable.".to_owned())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NodeNotFound(_)
            | Error::PortNotFound(_)
            | Error::DriverNotFound(_)
            | Error::InventoryNotFound(_)
            | Error::ResourceNotFound => StatusCode::NOT_FOUND,
            Error::Invalid(_) | Error::InvalidStateRequested { .. } | Error::InvalidAgentToken => {
                StatusCode::BAD_REQUEST
            }
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) | Error::NodeLocked { .. } => StatusCode::CONFLICT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::BmcFailure(_) | Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The inner object, in Ironic's key order.
#[derive(Serialize)]
struct Fault<'a> {
    faultcode: &'a str,
    faultstring: &'a str,
    debuginfo: Option<&'a str>,
}

/// Ironic's error body for `status` and `message`.
pub fn error_body(status: StatusCode, message: &str) -> serde_json::Value {
    let faultcode = if status.is_server_error() { "Server" } else { "Client" };
    let fault = Fault { faultcode, faultstring: message, debuginfo: None };
    let encoded = serde_json::to_string(&fault).unwrap_or_default();
    serde_json::json!({ "error_message": encoded })
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = ?error_chain(&self), "request failed");
        }
        (status, Json(error_body(status, &self.to_string()))).into_response()
    }
}

pub(crate) use ferric_runner::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_is_json_text_inside_json() {
        let body = error_body(StatusCode::NOT_FOUND, "Node foo could not be found.");
        let inner: serde_json::Value = serde_json::from_str(body["error_message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["faultcode"], "Client");
        assert_eq!(inner["faultstring"], "Node foo could not be found.");
        assert!(inner["debuginfo"].is_null());
        let server = error_body(StatusCode::INTERNAL_SERVER_ERROR, "x");
        assert!(server["error_message"].as_str().unwrap().contains("\"Server\""));
    }
}
