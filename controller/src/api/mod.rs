//! The HTTP surface: Ironic's `/` and `/v1` API (with microversions and Ironic's error
//! bodies), the agent's lookup and heartbeat, and the boot files.

pub mod auth;
mod collection;
mod drivers;
mod lock;
mod management;
pub mod microversion;
mod node_fields;
mod node_view;
mod nodes;
mod patch;
mod ports;
mod power;
mod provision;
mod ramdisk;
mod root;

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::Value;

use self::microversion::{ApiVersion, MAX_VERSION_HEADER, MIN_VERSION_HEADER, VERSION_HEADER};
use crate::error::{error_body, Error};
use crate::model::Node;
use crate::store::Tx;
use crate::AppState;

/// The whole application: API routes, boot routes, Ironic's error handling and request logs.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/", get(root::root))
        .route("/v1", get(root::v1))
        .route("/v1/", get(root::v1))
        .route("/v1/nodes", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/detail", get(nodes::list_detail))
        .route("/v1/nodes/{node}", get(nodes::show).patch(nodes::update).delete(nodes::delete))
        .route("/v1/nodes/{node}/maintenance", put(nodes::set_maintenance).delete(nodes::clear_maintenance))
        .route("/v1/nodes/{node}/ports", get(ports::list_for_node))
        .route("/v1/nodes/{node}/states", get(provision::states))
        .route("/v1/nodes/{node}/states/provision", put(provision::set_provision_state))
        .route("/v1/nodes/{node}/states/power", put(power::set_power_state))
        .route("/v1/nodes/{node}/history", get(provision::history))
        .route("/v1/nodes/{node}/validate", get(management::validate))
        .route(
            "/v1/nodes/{node}/management/boot_device",
            get(management::get_boot_device).put(management::set_boot_device),
        )
        .route("/v1/nodes/{node}/management/boot_device/supported", get(management::supported_boot_devices))
        .route("/v1/nodes/{node}/inventory", get(provision::inventory))
        .route("/v1/ports", get(ports::list).post(ports::create))
        .route("/v1/ports/detail", get(ports::list_detail))
        .route("/v1/ports/{port}", get(ports::show).patch(ports::update).delete(ports::delete))
        .route("/v1/drivers", get(drivers::list))
        .route("/v1/drivers/{driver}", get(drivers::show))
        .route("/v1/drivers/{driver}/properties", get(drivers::properties))
        .route("/v1/lookup", get(ramdisk::lookup))
        .route("/v1/heartbeat/{node}", post(ramdisk::heartbeat));
    api.merge(crate::boot::router(&state.config))
        .fallback(|| async { Error::ResourceNotFound })
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn(ironic_api))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Ironic's text for a 405, which the router produces without a body.
const METHOD_NOT_ALLOWED_MESSAGE: &str = "The method specified is not allowed for this resource.";

fn is_api_path(path: &str) -> bool {
    path == "/" || path == "/v1" || path.starts_with("/v1/")
}

/// Negotiates the microversion, puts Ironic's body on bare error responses (405s...) and
/// adds the version headers to every API response, errors included.
async fn ironic_api(mut request: Request, next: Next) -> Response {
    if !is_api_path(request.uri().path()) {
        return next.run(request).await;
    }
    let (version, mut response) = match microversion::negotiate(request.headers()) {
        Ok(version) => {
            request.extensions_mut().insert(version);
            (Some(version), next.run(request).await)
        }
        Err(refused) => {
            let header = refused.requested.clone();
            let mut response = Error::NotAcceptable(refused.message).into_response();
            if let Some(value) = header.and_then(|text| HeaderValue::from_str(&text).ok()) {
                response.headers_mut().insert(VERSION_HEADER, value);
            }
            (None, response)
        }
    };
    let status = response.status();
    let is_json =
        response.headers().get(CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let message = match status {
            StatusCode::METHOD_NOT_ALLOWED => METHOD_NOT_ALLOWED_MESSAGE.to_owned(),
            other => other.canonical_reason().unwrap_or("Error").to_owned(),
        };
        let headers = std::mem::take(response.headers_mut());
        response = (status, Json(error_body(status, &message))).into_response();
        for (name, value) in
            headers.iter().filter(|(name, _)| **name != CONTENT_TYPE && name.as_str() != "content-length")
        {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let headers = response.headers_mut();
    headers.insert(MIN_VERSION_HEADER, ApiVersion::MIN.to_header());
    headers.insert(MAX_VERSION_HEADER, ApiVersion::MAX.to_header());
    if let Some(version) = version {
        headers.insert(VERSION_HEADER, version.to_header());
    }
    response
}

/// One log line per request: method, path, status and duration.
async fn log_request(request: Request, next: Next) -> Response {
    let method: Method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(%method, %path, status = response.status().as_u16(), ms = %format_args!("{ms:.1}"), "request");
    response
}

/// Scheme and authority the client used, for links and `Location` (Ironic's `public_url`).
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let host = parts.headers.get(HOST).and_then(|value| value.to_str().ok());
        Ok(BaseUrl(match host {
            Some(host) => format!("http://{host}"),
            None => state.config.public_url.clone(),
        }))
    }
}

/// A JSON request body, refused with Ironic's 400 when it does not parse.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Error;

    async fn from_request(request: Request<Body>, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| Error::Invalid(format!("Cannot read the request body: {rejection}")))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| Error::Invalid(format!("The request body is not valid JSON: {error}")))
    }
}

/// `text` as a lowercase hyphenated UUID, if it is a UUID in any spelling `uuid` accepts.
fn canonical_uuid(text: &str) -> Option<String> {
    uuid::Uuid::parse_str(text).ok().map(|parsed| parsed.hyphenated().to_string())
}

/// Parses and checks `fields=a,b` against a resource's `(field, minimum minor version)`
/// table: needs 1.8, names known fields or `links` (else 400), visible at this version (else 406).
fn parse_fields<'a>(
    text: &str,
    version: ApiVersion,
    known: impl IntoIterator<Item = (&'a str, u32)>,
) -> Result<Vec<String>, Error> {
    version.require(microversion::FETCH_FIELDS)?;
    let known: Vec<(&str, u32)> = known.into_iter().chain([("links", 1)]).collect();
    let requested: Vec<String> =
        text.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect();
    let minimum = |name: &str| known.iter().find(|(field, _)| *field == name).map(|(_, minor)| *minor);
    let unknown: Vec<&str> = requested.iter().map(String::as_str).filter(|name| minimum(name).is_none()).collect();
    if !unknown.is_empty() {
        return Err(Error::Invalid(format!("Field(s) \"{}\" are not valid", unknown.join(", "))));
    }
    if requested.iter().any(|name| minimum(name).is_some_and(|minor| !version.at_least(minor))) {
        return Err(Error::not_acceptable());
    }
    Ok(requested)
}

/// Query parameters; an unknown one is refused like Ironic's `Unknown argument`.
pub struct QueryParams(pub BTreeMap<String, String>);

impl QueryParams {
    pub fn only(&self, known: &[&str]) -> Result<(), Error> {
        match self.0.keys().find(|name| !known.contains(&name.as_str())) {
            Some(unknown) => Err(Error::Invalid(format!("Unknown argument: \"{unknown}\""))),
            None => Ok(()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A boolean parameter (`detail=true`), with oslo's spellings.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, Error> {
        self.get(name).map(|text| node_fields::parse_bool(name, text)).transpose()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| QueryParams(pairs.into_iter().collect()))
            .map_err(|rejection| Error::Invalid(format!("Invalid query string: {rejection}")))
    }
}

/// How a request names a node: by UUID or (from 1.5) by name, as Ironic's `get_rpc_node`.
#[derive(Debug, Clone)]
pub enum NodeIdent {
    Uuid(String),
    Name(String),
}

impl NodeIdent {
    pub fn parse(ident: &str, version: ApiVersion) -> Result<NodeIdent, Error> {
        if let Some(uuid) = canonical_uuid(ident) {
            return Ok(NodeIdent::Uuid(uuid));
        }
        if !version.at_least(microversion::NODE_NAME) {
            return Err(Error::NodeNotFound(ident.to_owned()));
        }
        if !node_fields::is_valid_node_name(ident, version) {
            return Err(Error::Invalid(format!("Expected a logical name or UUID but received {ident}.")));
        }
        Ok(NodeIdent::Name(ident.to_owned()))
    }

    /// The node, inside a transaction that may then change it.
    pub fn load(&self, tx: &Tx<'_>) -> Result<Node, Error> {
        let found = match self {
            NodeIdent::Uuid(uuid) => tx.node_by_uuid(uuid)?,
            NodeIdent::Name(name) => tx.node_by_name(name)?,
        };
        found.ok_or_else(|| Error::NodeNotFound(self.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            NodeIdent::Uuid(text) | NodeIdent::Name(text) => text,
        }
    }

    /// Parses and loads in one go, for read-only requests.
    pub async fn find(state: &AppState, ident: &str, version: ApiVersion) -> Result<Node, Error> {
        let ident = NodeIdent::parse(ident, version)?;
        state.store.run(move |tx| ident.load(tx)).await
    }
}
