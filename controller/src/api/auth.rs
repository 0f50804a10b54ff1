//! API authentication, as Ironic's `[DEFAULT]auth_strategy`: `noauth` for local use, or
//! `http_basic` with an Apache htpasswd file of bcrypt entries (oslo.middleware's `basic_auth`),
//! optionally alongside bearer tokens. The agent's routes stay public: they use the agent token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::AppState;

/// Ironic's realm in the `WWW-Authenticate` challenge.
const CHALLENGE: &str = "Basic realm=\"Baremetal API\"";

/// Who may call the API.
#[derive(Clone, Default)]
pub enum ApiAuth {
    /// Everyone (Ironic's `noauth`).
    #[default]
    NoAuth,
    /// Only callers presenting one of these credentials.
    Required(Arc<Credentials>),
}

impl std::fmt::Debug for ApiAuth {
    /// Never prints hashes or digests.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAuth::NoAuth => f.write_str("NoAuth"),
            ApiAuth::Required(credentials) => f
                .debug_struct("Required")
                .field("htpasswd_users", &credentials.htpasswd.len())
                .field("bearer_tokens", &credentials.bearer_token_digests.len())
                .finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Htpasswd { path: PathBuf, line: usize, reason: &'static str },
    #[error("http_basic needs an htpasswd file or a bearer token file")]
    NoCredentials,
}

/// The accepted credentials: bcrypt hashes by user, and SHA-256 digests of bearer tokens (the
/// tokens themselves are not kept).
#[derive(Default)]
pub struct Credentials {
    htpasswd: HashMap<String, String>,
    bearer_token_digests: Vec<[u8; 32]>,
}

impl ApiAuth {
    /// `http_basic` from an htpasswd file and/or a bearer token file (one token per line).
    pub fn from_files(htpasswd: Option<&Path>, bearer_tokens: Option<&Path>) -> Result<ApiAuth, AuthFileError> {
        if htpasswd.is_none() && bearer_tokens.is_none() {
            return Err(AuthFileError::NoCredentials);
        }
        let mut credentials = Credentials::default();
        if let Some(path) = htpasswd {
            credentials.htpasswd = parse_htpasswd(path, &read(path)?)?;
        }
        if let Some(path) = bearer_tokens {
            credentials.bearer_token_digests =
                read(path)?.lines().map(str::trim).filter(|line| !line.is_empty()).map(digest).collect();
        }
        Ok(ApiAuth::Required(Arc::new(credentials)))
    }
}

fn read(path: &Path) -> Result<String, AuthFileError> {
    std::fs::read_to_string(path).map_err(|source| AuthFileError::Read { path: path.to_owned(), source })
}

/// `user:$2y$...` lines; like oslo's `basic_auth`, only bcrypt entries are accepted.
fn parse_htpasswd(path: &Path, text: &str) -> Result<HashMap<String, String>, AuthFileError> {
    let mut users = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason| AuthFileError::Htpasswd { path: path.to_owned(), line: index + 1, reason };
        let (user, hash) = line.split_once(':').ok_or_else(|| error("expected user:hash"))?;
        if !["$2y$", "$2a$", "$2b$"].iter().any(|prefix| hash.starts_with(prefix)) {
            return Err(error("only bcrypt digested passwords are supported"));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares in time independent of where the digests differ.
fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    left.iter().zip(right).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
}

impl Credentials {
    /// Checks an `Authorization` header; the error is Ironic's reason for the 401.
    async fn verify(self: Arc<Self>, header: Option<HeaderValue>) -> Result<(), &'static str> {
        let header = header.ok_or("Authorization required")?;
        let text = header.to_str().map_err(|_| "Invalid authorization header")?;
        let (scheme, value) = text.split_once(' ').ok_or("Invalid authorization header")?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let presented = digest(value);
            // Every digest is compared, so the time taken does not reveal which matched.
            let matched = self
                .bearer_token_digests
                .iter()
                .fold(false, |found, known| constant_time_eq(known, &presented) | found);
            return if matched { Ok(()) } else { Err("Invalid bearer token") };
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err("Only HTTP Basic authentication is supported");
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or("Invalid authorization header")?;
        let (user, password) = decoded.split_once(':').ok_or("Invalid authorization header")?;
        let hash = self.htpasswd.get(user).ok_or("Incorrect username or password")?.clone();
        let password = password.to_owned();
        // bcrypt is deliberately slow: keep it off the async workers.
        let valid = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if valid {
            Ok(())
        } else {
            Err("Incorrect username or password")
        }
    }
}

/// Ironic's public routes (`ironic/api/app.py`): version discovery and the agent's endpoints.
fn is_public(path: &str) -> bool {
    if let Some(node) = path.strip_prefix("/v1/heartbeat/") {
        return !node.is_empty() && !node.contains('/');
    }
    matches!(path, "/" | "/v1" | "/v1/" | "/v1/lookup" | "/v1/continue_inspection")
}

/// Refuses API requests without valid credentials when authentication is configured; boot
/// files and the public routes pass.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let ApiAuth::Required(credentials) = &state.config.auth else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if !super::is_api_path(path) || is_public(path) {
        return next.run(request).await;
    }
    match Arc::clone(credentials).verify(request.headers().get(AUTHORIZATION).cloned()).await {
        Ok(()) => next.run(request).await,
        Err(reason) => {
            tracing::warn!(path, reason, "API request refused");
            let mut response = Error::Unauthorized(reason.to_owned()).into_response();
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_routes_are_ironics() {
        for path in ["/", "/v1", "/v1/", "/v1/lookup", "/v1/heartbeat/node-1"] {
            assert!(is_public(path), "{path}");
        }
        for path in ["/v1/nodes", "/v1/heartbeat/", "/v1/heartbeat/a/b", "/v1/lookupx"] {
            assert!(!is_public(path), "{path}");
        }
    }

    #[test]
    fn htpasswd_accepts_only_bcrypt() {
        let path = Path::new("htpasswd");
        let users = parse_htpasswd(path, "# admins\nadmin:$2y$05$abc\n\n").unwrap();
        assert_eq!(users.get("admin").map(String::as_str), Some("$2y$05$abc"));
        let refused = parse_htpasswd(path, "admin:{SHA}0DPiKuNIrrVmD8IUCuw1hQxNqZc=").unwrap_err();
        assert!(matches!(refused, AuthFileError::Htpasswd { line: 1, .. }), "{refused}");
    }

    #[test]
    fn digests_compare_equal_only_when_identical() {
        assert!(constant_time_eq(&digest("a"), &digest("a")));
        assert!(!constant_time_eq(&digest("a"), &digest("b")));
    }
}
