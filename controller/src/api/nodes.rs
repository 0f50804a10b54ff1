//! `/v1/nodes`: create, list, show, patch, delete, maintenance.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{Map, Value};

use super::collection::Paging;
use super::drivers::{self, DRIVERS};
use super::microversion::{self, ApiVersion};
use super::node_fields::{self, WritableField, WRITABLE_FIELDS};
use super::node_view::{self, DEFAULT_LIST_FIELDS};
use super::{patch, BaseUrl, JsonBody, NodeIdent, QueryParams};
use crate::conductor::{check_disk_hints, refuse_if_protected};
use crate::error::Error;
use crate::fsm::{self, ProvisionState};
use crate::model::{timestamp, Node};
use crate::store::{NodeQuery, StoreError, NODE_SORT_KEYS};
use crate::AppState;

const LIST_PARAMETERS: &[&str] = &[
    "fields",
    "detail",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "provision_state",
    "driver",
    "maintenance",
    "associated",
    "resource_class",
];

/// Node fields held as JSON, which Ironic refuses to sort by (`invalid_sort_key_list`).
const JSON_SORT_KEYS: &[&str] = &[
    "properties",
    "driver_info",
    "extra",
    "instance_info",
    "driver_internal_info",
    "clean_step",
    "deploy_step",
    "raid_config",
    "target_raid_config",
    "traits",
    "network_data",
    "service_step",
];

static CREATE_FIELDS: LazyLock<Vec<WritableField>> =
    LazyLock::new(|| WRITABLE_FIELDS.iter().filter(|field| field.on_create).copied().collect());

static PATCH_FIELDS: LazyLock<Vec<WritableField>> =
    LazyLock::new(|| WRITABLE_FIELDS.iter().filter(|field| field.patchable).copied().collect());

/// Ironic's `NoValidHost` (turned into a 400) for a driver no conductor has.
fn check_driver(driver: &str, conductor_group: &str) -> Result<(), Error> {
    if DRIVERS.contains(&driver) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "No valid host was found. Reason: No conductor service registered which supports driver {driver} for \
         conductor group \"{conductor_group}\"."
    )))
}

/// Maps a unique-constraint failure on a node to Ironic's 409s.
fn node_conflict(error: StoreError, node: &Node) -> Error {
    let StoreError::Duplicate { column } = &error else { return Error::Store(error) };
    match column.as_str() {
        "nodes.name" => {
            Error::Conflict(format!("A node with name {} already exists.", node.name.as_deref().unwrap_or("")))
        }
        "nodes.uuid" => Error::Conflict(format!("A node with UUID {} already exists.", node.uuid)),
        "nodes.instance_uuid" => Error::Conflict(format!(
            "Instance {} is already associated with a node.",
            node.instance_uuid.as_deref().unwrap_or("")
        )),
        _ => Error::Store(error),
    }
}

fn render_full(state: &AppState, node: &Node, version: ApiVersion, base: &str) -> Value {
    node_view::render(node, version, base, state.conductor.name(), None)
}

pub async fn create(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Value::Object(mut object) = body else {
        return Err(Error::Invalid(format!("Schema error for node: {body} is not of type 'object'")));
    };
    let fields = &*CREATE_FIELDS;
    node_fields::check_schema("node", &object, fields, &["driver"])?;
    node_fields::reject_newer_fields(&object, fields, version)?;
    if let Some(name) = object.get("name").and_then(Value::as_str) {
        if !node_fields::is_valid_node_name(name, version) {
            return Err(Error::Invalid(format!("Cannot create node with invalid name '{name}'")));
        }
    }
    let driver = object.get("driver").and_then(Value::as_str).unwrap_or_default().to_owned();
    check_driver(&driver, object.get("conductor_group").and_then(Value::as_str).unwrap_or(""))?;
    let initial_state =
        if version.at_least(microversion::ENROLL_STATE) { ProvisionState::Enroll } else { ProvisionState::Available };
    if object.get("uuid").is_some_and(Value::is_null) {
        object.remove("uuid");
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut node = Node::new(uuid, driver, initial_state, timestamp(Utc::now()));
    node_fields::apply(&mut node, &object, fields)?;
    drivers::check_interfaces(&node)?;
    check_disk_hints(&node).map_err(Error::Invalid)?;
    if node.resource_class.is_none() {
        node.resource_class.clone_from(&state.config.default_resource_class);
    }
    let stored = node.clone();
    state.store.run(move |tx| tx.insert_node(&stored).map_err(|error| node_conflict(error, &stored))).await?;
    tracing::info!(node = %node.uuid, driver = %node.driver, state = %node.provision_state, "node enrolled");
    let location = format!("{base}/v1/nodes/{}", node.uuid);
    let body = render_full(&state, &node, version, &base);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(body)).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    list_nodes(state, version, base, query, false).await
}

pub async fn list_detail(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    list_nodes(state, version, base, query, true).await
}

async fn list_nodes(
    state: AppState,
    version: ApiVersion,
    base: String,
    query: QueryParams,
    detail_path: bool,
) -> Result<Json<Value>, Error> {
    query.only(LIST_PARAMETERS)?;
    let detail = match query.flag("detail")? {
        Some(detail) => {
            version.require(microversion::DETAIL_QUERY)?;
            detail || detail_path
        }
        None => detail_path,
    };
    let fields = query.get("fields").map(|text| node_view::parse_fields(text, version)).transpose()?;
    if detail && fields.is_some() {
        return Err(Error::Invalid("Can not specify ?detail=True and fields in the same request.".to_owned()));
    }
    let provision_state = match query.get("provision_state") {
        Some(text) => {
            version.require(microversion::PROVISION_STATE_FILTER)?;
            Some(text.parse().map_err(|_| Error::Invalid(format!("Provision state \"{text}\" is not valid")))?)
        }
        None => None,
    };
    if query.get("driver").is_some() {
        version.require(microversion::DRIVER_FILTER)?;
    }
    if query.get("resource_class").is_some() {
        version.require(microversion::RESOURCE_CLASS)?;
    }
    let paging = Paging::parse(&query, NODE_SORT_KEYS, JSON_SORT_KEYS)?;
    let marker = paging.marker.clone();
    let node_query = NodeQuery {
        provision_state,
        driver: query.get("driver").map(str::to_owned),
        maintenance: query.flag("maintenance")?,
        associated: query.flag("associated")?,
        resource_class: query.get("resource_class").map(str::to_owned),
        sort_key: paging.sort_key,
        descending: paging.descending,
        marker: marker.clone(),
        limit: Some(paging.limit),
    };
    let nodes = state
        .store
        .run(move |tx| {
            if let Some(marker) = &marker {
                tx.node_by_uuid(marker)?.ok_or_else(|| Error::NodeNotFound(marker.clone()))?;
            }
            Ok::<_, Error>(tx.list_nodes(&node_query)?)
        })
        .await?;
    let names: Vec<&str> = match &fields {
        Some(fields) => fields.iter().map(String::as_str).collect(),
        None => DEFAULT_LIST_FIELDS.to_vec(),
    };
    let selection = if detail { None } else { Some(names.as_slice()) };
    let rendered: Vec<Value> =
        nodes.iter().map(|node| node_view::render(node, version, &base, state.conductor.name(), selection)).collect();
    // Not `json!`, which would deep-copy every rendered node through `to_value`.
    let mut body = Value::Object(Map::from_iter([("nodes".to_owned(), Value::Array(rendered))]));
    let path = if detail_path { "/v1/nodes/detail" } else { "/v1/nodes" };
    if let Some(next) = nodes.last().and_then(|last| paging.next_url(&base, path, &query, nodes.len(), &last.uuid)) {
        body["next"] = Value::String(next);
    }
    Ok(Json(body))
}

pub async fn show(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    query.only(&["fields"])?;
    let fields = query.get("fields").map(|text| node_view::parse_fields(text, version)).transpose()?;
    let node = NodeIdent::find(&state, &ident, version).await?;
    let names: Option<Vec<&str>> = fields.as_ref().map(|fields| fields.iter().map(String::as_str).collect());
    Ok(Json(node_view::render(&node, version, &base, state.conductor.name(), names.as_deref())))
}

pub async fn update(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let operations = patch::parse(&body)?;
    // A field newer than the request's version may not be given a value, nor may anything
    // inside it (`add /network_data/x`).
    let too_new = operations.iter().any(|operation| {
        let root = operation.root();
        WRITABLE_FIELDS.iter().any(|field| {
            field.name == root
                && !version.at_least(field.min_minor)
                && operation.value().is_some_and(|value| !value.is_null())
        })
    });
    if too_new {
        return Err(Error::not_acceptable());
    }
    let fields = &*PATCH_FIELDS;
    if let Some(refused) =
        operations.iter().find(|operation| !fields.iter().any(|field| field.name == operation.root()))
    {
        let allowed: Vec<&str> = fields.iter().map(|field| field.name).collect();
        return Err(Error::Invalid(format!(
            "Cannot patch {}. Only the following can be updated: {}",
            refused.path(),
            allowed.join(", ")
        )));
    }
    let ident = NodeIdent::parse(&ident, version)?;
    let node = state
        .store
        .run(move |tx| {
            let mut node = ident.load(tx)?;
            if node.target_provision_state.is_some() && !fsm::UPDATE_ALLOWED_STATES.contains(&node.provision_state) {
                return Err(Error::Conflict(format!(
                    "Node {} can not be updated while a state transition is in progress.",
                    ident.as_str()
                )));
            }
            let mut document = Value::Object(node_fields::document(&node, fields));
            patch::apply(&mut document, &operations)?;
            let Value::Object(mut patched) = document else { unreachable!("patching keeps the root an object") };
            // A removed field returns to its default (null or empty), as Ironic resets it.
            for field in fields {
                patched.entry(field.name).or_insert(Value::Null);
            }
            node_fields::check_schema("patch", &patched, fields, &[])?;
            // Set-once, as Ironic's database layer: an instance is released (removed) before another takes the node.
            if let (Some(current), Some(requested)) = (
                &node.instance_uuid,
                patched.get("instance_uuid").and_then(Value::as_str).and_then(super::canonical_uuid),
            ) {
                if &requested != current {
                    return Err(Error::Conflict(format!("Node {} is associated with instance {current}.", node.uuid)));
                }
            }
            if let Some(name) = patched.get("name").and_then(Value::as_str) {
                if node.name.as_deref() != Some(name) && !node_fields::is_valid_node_name(name, version) {
                    return Err(Error::Invalid(format!(
                        "Node {}: Cannot change name to invalid name '{name}'",
                        node.uuid
                    )));
                }
            }
            if let Some(driver) = patched.get("driver").and_then(Value::as_str) {
                check_driver(driver, &node.conductor_group)?;
            }
            node_fields::apply(&mut node, &patched, fields)?;
            drivers::check_interfaces(&node)?;
            check_disk_hints(&node).map_err(Error::Invalid)?;
            if !node.maintenance {
                node.maintenance_reason = None;
            }
            node.updated_at = Some(timestamp(Utc::now()));
            tx.update_node(&node).map_err(|error| node_conflict(error, &node))?;
            Ok(node)
        })
        .await?;
    Ok(Json(render_full(&state, &node, version, &base)))
}

pub async fn delete(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<StatusCode, Error> {
    let ident = NodeIdent::parse(&ident, version)?;
    state
        .store
        .run(move |tx| {
            let node = ident.load(tx)?;
            if let Some(host) = &node.reservation {
                return Err(Error::NodeLocked { node: node.uuid.clone(), host: host.clone() });
            }
            refuse_if_protected(&node)?;
            if let Some(instance) = &node.instance_uuid {
                return Err(Error::Conflict(format!("Node {} is associated with instance {instance}.", node.uuid)));
            }
            if !fsm::DELETE_ALLOWED_STATES.contains(&node.provision_state) && !node.maintenance {
                let valid: Vec<String> = fsm::DELETE_ALLOWED_STATES.iter().map(|state| format!("'{state}'")).collect();
                return Err(Error::Conflict(format!(
                    "Can not delete node \"{}\" while it is in provision state \"{}\". Valid provision states to \
                     perform deletion are: \"({})\", or set the node into maintenance mode",
                    node.uuid,
                    node.provision_state,
                    valid.join(", ")
                )));
            }
            tx.delete_node(&node.uuid)?;
            tracing::info!(node = %node.uuid, "node deleted");
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/nodes/{node}/maintenance {"reason": ...}`.
pub async fn set_maintenance(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, Error> {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|error| Error::Invalid(format!("The request body is not valid JSON: {error}")))?;
        let object = parsed.as_object().ok_or_else(|| Error::Invalid("Expected a JSON object".to_owned()))?;
        if let Some(unknown) = object.keys().find(|key| *key != "reason") {
            return Err(Error::Invalid(format!("Unknown argument: \"{unknown}\"")));
        }
        object.get("reason").and_then(Value::as_str).map(str::to_owned)
    };
    change_maintenance(state, version, ident, true, reason).await
}

/// `DELETE /v1/nodes/{node}/maintenance`.
pub async fn clear_maintenance(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<StatusCode, Error> {
    change_maintenance(state, version, ident, false, None).await
}

async fn change_maintenance(
    state: AppState,
    version: ApiVersion,
    ident: String,
    maintenance: bool,
    reason: Option<String>,
) -> Result<StatusCode, Error> {
    let ident = NodeIdent::parse(&ident, version)?;
    state
        .store
        .run(move |tx| {
            let mut node = ident.load(tx)?;
            node.maintenance = maintenance;
            node.maintenance_reason = reason;
            node.updated_at = Some(timestamp(Utc::now()));
            Ok::<_, Error>(tx.update_node(&node)?)
        })
        .await?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_drivers_are_named() {
        assert!(check_driver("ipmi", "").is_ok());
        assert!(check_driver("bogus", "").unwrap_err().to_string().contains("driver bogus"));
    }
}
