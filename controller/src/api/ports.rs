//! `/v1/ports`: the MAC addresses lookup and the iPXE scripts find nodes by.

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use ferric_protocol::normalize_mac;
use serde_json::{json, Map, Value};

use super::collection::Paging;
use super::microversion::ApiVersion;
use super::node_fields::{self, field, Kind, WritableField};
use super::node_view::links;
use super::{patch, BaseUrl, JsonBody, NodeIdent, QueryParams};
use crate::error::Error;
use crate::model::{timestamp, JsonObject, Port};
use crate::store::{PortQuery, StoreError, PORT_SORT_KEYS};
use crate::AppState;

/// What `POST /v1/ports` accepts (a subset of Ironic's port schema).
const PORT_FIELDS: &[WritableField] = &[
    field("address", Kind::RequiredText, 1, true, false),
    field("extra", Kind::Object, 1, true, false),
    field("node_uuid", Kind::Uuid, 1, true, false),
    // Null means the default, true.
    field("pxe_enabled", Kind::OptionalFlag, 19, true, false),
    field("uuid", Kind::Uuid, 1, true, false),
];

/// Port fields shown, with the minor version introducing them.
const PORT_VIEW_FIELDS: &[(&str, u32)] = &[
    ("uuid", 1),
    ("address", 1),
    ("node_uuid", 1),
    ("extra", 1),
    ("internal_info", 18),
    ("local_link_connection", 19),
    ("pxe_enabled", 19),
    ("portgroup_uuid", 24),
    ("physical_network", 34),
    ("is_smartnic", 53),
    ("created_at", 1),
    ("updated_at", 1),
];

/// Port fields held as JSON, which Ironic refuses to sort by.
const JSON_SORT_KEYS: &[&str] = &["extra", "internal_info", "local_link_connection"];

/// What a port list shows without `fields` or `detail` (plus `links`).
const DEFAULT_LIST_FIELDS: &[&str] = &["uuid", "address"];

fn render(port: &Port, version: ApiVersion, base: &str, selection: Option<&[String]>) -> Value {
    let mut out = Map::new();
    for (name, minor) in PORT_VIEW_FIELDS {
        if !version.at_least(*minor) || selection.is_some_and(|names| !names.iter().any(|wanted| wanted == name)) {
            continue;
        }
        let value = match *name {
            "uuid" => json!(port.uuid),
            "address" => json!(port.address),
            "node_uuid" => json!(port.node_uuid),
            "extra" => Value::Object(port.extra.clone()),
            "internal_info" | "local_link_connection" => json!({}),
            "pxe_enabled" => json!(port.pxe_enabled),
            "is_smartnic" => json!(false),
            "created_at" => json!(port.created_at),
            "updated_at" => json!(port.updated_at),
            _ => Value::Null,
        };
        out.insert((*name).to_owned(), value);
    }
    out.insert("links".to_owned(), links(base, "ports", &port.uuid));
    Value::Object(out)
}

/// Parses and checks a port request's `fields=a,b` (see [`super::parse_fields`]).
fn parse_fields(text: &str, version: ApiVersion) -> Result<Vec<String>, Error> {
    super::parse_fields(text, version, PORT_VIEW_FIELDS.iter().copied())
}

fn port_conflict(error: StoreError, port: &Port) -> Error {
    match &error {
        StoreError::Duplicate { column } if column == "ports.address" => {
            Error::Conflict(format!("A port with MAC address {} already exists.", port.address))
        }
        StoreError::Duplicate { column } if column == "ports.uuid" => {
            Error::Conflict(format!("A port with UUID {} already exists.", port.uuid))
        }
        _ => Error::Store(error),
    }
}

/// Validates a port document (a create body, or a stored port after a PATCH) and builds the port.
/// `created_at` is kept from the stored port on a PATCH; `updated_at` is set then.
fn port_from_document(object: &JsonObject, updated_at: Option<String>, created_at: String) -> Result<Port, Error> {
    node_fields::check_schema("port", object, PORT_FIELDS, &["address", "node_uuid"])?;
    // The schema-checked fields as stored (missing ones as null).
    let mut normalised = JsonObject::new();
    for field in PORT_FIELDS {
        let value = object.get(field.name).map(|value| node_fields::normalise(field, value)).transpose()?;
        normalised.insert(field.name.to_owned(), value.unwrap_or(Value::Null));
    }
    let text = |name: &str| normalised[name].as_str().map(str::to_owned);
    let raw_address = text("address").unwrap_or_default();
    let address = normalize_mac(&raw_address)
        .ok_or_else(|| Error::Invalid(format!("Expected a MAC address but received {raw_address}.")))?;
    Ok(Port {
        uuid: text("uuid").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        address,
        node_uuid: text("node_uuid").unwrap_or_default(),
        pxe_enabled: normalised["pxe_enabled"].as_bool().unwrap_or(true),
        extra: normalised["extra"].as_object().cloned().unwrap_or_default(),
        created_at,
        updated_at,
    })
}

/// Port fields a PATCH may change (Ironic refuses `uuid` and read-only fields).
const PATCHABLE_PORT_FIELDS: &[&str] = &["address", "extra", "node_uuid", "pxe_enabled"];

/// `PATCH /v1/ports/{port}` with an RFC 6902 JSON Patch, as for nodes.
pub async fn update(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let operations = patch::parse(&body)?;
    if let Some(refused) = operations.iter().find(|op| !PATCHABLE_PORT_FIELDS.contains(&op.root().as_str())) {
        return Err(Error::Invalid(format!(
            "Cannot patch {}. Only the following can be updated: {}",
            refused.path(),
            PATCHABLE_PORT_FIELDS.join(", ")
        )));
    }
    let uuid = port_uuid(&ident)?;
    let port = state
        .store
        .run(move |tx| {
            let current = tx.port_by_uuid(&uuid)?.ok_or(Error::PortNotFound(ident))?;
            let mut document = json!({
                "address": current.address,
                "extra": current.extra,
                "node_uuid": current.node_uuid,
                "pxe_enabled": current.pxe_enabled,
                "uuid": current.uuid,
            });
            patch::apply(&mut document, &operations)?;
            let Value::Object(patched) = document else { unreachable!("patching keeps the root an object") };
            node_fields::reject_newer_fields(&patched, PORT_FIELDS, version)?;
            let port = port_from_document(&patched, Some(timestamp(Utc::now())), current.created_at)?;
            if tx.node_by_uuid(&port.node_uuid)?.is_none() {
                return Err(Error::Invalid(format!("Node {} could not be found.", port.node_uuid)));
            }
            tx.update_port(&port).map_err(|error| port_conflict(error, &port))?;
            Ok(port)
        })
        .await?;
    tracing::info!(port = %port.uuid, address = %port.address, node = %port.node_uuid, "port updated");
    Ok(Json(render(&port, version, &base, None)))
}

pub async fn create(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Value::Object(object) = body else {
        return Err(Error::Invalid(format!("Schema error for port: {body} is not of type 'object'")));
    };
    node_fields::reject_newer_fields(&object, PORT_FIELDS, version)?;
    let port = port_from_document(&object, None, timestamp(Utc::now()))?;
    let stored = port.clone();
    state
        .store
        .run(move |tx| {
            if tx.node_by_uuid(&stored.node_uuid)?.is_none() {
                // Ironic answers 400, not 404: the port is what was not found wanting.
                return Err(Error::Invalid(format!("Node {} could not be found.", stored.node_uuid)));
            }
            tx.insert_port(&stored).map_err(|error| port_conflict(error, &stored))
        })
        .await?;
    tracing::info!(port = %port.uuid, address = %port.address, node = %port.node_uuid, "port created");
    let location = format!("{base}/v1/ports/{}", port.uuid);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(render(&port, version, &base, None))).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    list_ports(state, version, base, query, None, false).await
}

pub async fn list_detail(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    list_ports(state, version, base, query, None, true).await
}

/// `GET /v1/nodes/{node}/ports`.
pub async fn list_for_node(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    list_ports(state, version, base, query, Some(ident), false).await
}

async fn list_ports(
    state: AppState,
    version: ApiVersion,
    base: String,
    query: QueryParams,
    node_path: Option<String>,
    detail_path: bool,
) -> Result<Json<Value>, Error> {
    query.only(&["node", "node_uuid", "address", "fields", "detail", "limit", "marker", "sort_key", "sort_dir"])?;
    let paging = Paging::parse(&query, PORT_SORT_KEYS, JSON_SORT_KEYS)?;
    let detail = query.flag("detail")?.unwrap_or(false) || detail_path;
    let fields = query.get("fields").map(|text| parse_fields(text, version)).transpose()?;
    if detail && fields.is_some() {
        return Err(Error::Invalid("Can not specify ?detail=True and fields in the same request.".to_owned()));
    }
    let node = node_path.as_deref().or(query.get("node")).or(query.get("node_uuid"));
    let node = node.map(|ident| NodeIdent::parse(ident, version)).transpose()?;
    let address = match query.get("address") {
        Some(raw) => Some(
            normalize_mac(raw).ok_or_else(|| Error::Invalid(format!("Expected a MAC address but received {raw}.")))?,
        ),
        None => None,
    };
    let mut port_query = PortQuery {
        address,
        sort_key: paging.sort_key,
        descending: paging.descending,
        marker: paging.marker.clone(),
        limit: Some(paging.limit),
        ..PortQuery::default()
    };
    let ports = state
        .store
        .run(move |tx| {
            if let Some(marker) = &port_query.marker {
                tx.port_by_uuid(marker)?.ok_or_else(|| Error::PortNotFound(marker.clone()))?;
            }
            port_query.node_uuid = node.map(|ident| ident.load(tx)).transpose()?.map(|node| node.uuid);
            Ok::<_, Error>(tx.list_ports_page(&port_query)?)
        })
        .await?;
    let defaults: Vec<String> = DEFAULT_LIST_FIELDS.iter().map(|name| (*name).to_owned()).collect();
    let selection = match (&fields, detail) {
        (Some(fields), _) => Some(fields.as_slice()),
        (None, true) => None,
        (None, false) => Some(defaults.as_slice()),
    };
    let rendered: Vec<Value> = ports.iter().map(|port| render(port, version, &base, selection)).collect();
    // Not `json!`, which would deep-copy every rendered port through `to_value`.
    let mut body = Value::Object(Map::from_iter([("ports".to_owned(), Value::Array(rendered))]));
    let path = match (&node_path, detail_path) {
        (Some(ident), _) => format!("/v1/nodes/{ident}/ports"),
        (None, true) => "/v1/ports/detail".to_owned(),
        (None, false) => "/v1/ports".to_owned(),
    };
    if let Some(next) = ports.last().and_then(|last| paging.next_url(&base, &path, &query, ports.len(), &last.uuid)) {
        body["next"] = Value::String(next);
    }
    Ok(Json(body))
}

fn port_uuid(ident: &str) -> Result<String, Error> {
    super::canonical_uuid(ident).ok_or_else(|| Error::PortNotFound(ident.to_owned()))
}

pub async fn show(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    query.only(&["fields"])?;
    let fields = query.get("fields").map(|text| parse_fields(text, version)).transpose()?;
    let uuid = port_uuid(&ident)?;
    let port = state.store.run(move |tx| tx.port_by_uuid(&uuid)?.ok_or(Error::PortNotFound(ident))).await?;
    Ok(Json(render(&port, version, &base, fields.as_deref())))
}

pub async fn delete(State(state): State<AppState>, Path(ident): Path<String>) -> Result<StatusCode, Error> {
    let uuid = port_uuid(&ident)?;
    state.store.run(move |tx| if tx.delete_port(&uuid)? { Ok(()) } else { Err(Error::PortNotFound(ident)) }).await?;
    Ok(StatusCode::NO_CONTENT)
}
