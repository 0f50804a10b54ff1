//! Node states, provisioning actions, history and inventory.

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::microversion::{self, ApiVersion};
use super::{lock, node_view, BaseUrl, JsonBody, NodeIdent};
use crate::error::Error;
use crate::fsm::{ProvisionState, Verb};
use crate::AppState;

/// Members of Ironic's provision request that Ferric does not act on yet.
const UNSUPPORTED_PROVISION_MEMBERS: &[&str] =
    &["configdrive", "clean_steps", "deploy_steps", "service_steps", "rescue_password", "disable_ramdisk", "runbook"];

pub async fn states(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    let node = NodeIdent::find(&state, &ident, version).await?;
    Ok(Json(node_view::render_states(&node, version)))
}

/// `PUT /v1/nodes/{node}/states/provision {"target": ...}`: the state changes before the 202.
pub async fn set_provision_state(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Value::Object(request) = body else {
        return Err(Error::Invalid("The provision request must be a JSON object".to_owned()));
    };
    if let Some(member) = request.keys().find(|key| *key != "target") {
        return Err(if UNSUPPORTED_PROVISION_MEMBERS.contains(&member.as_str()) {
            Error::Invalid(format!("\"{member}\" is not supported by Ferric yet"))
        } else {
            Error::Invalid(format!("Unknown argument: \"{member}\""))
        });
    }
    let target = match request.get("target") {
        Some(Value::String(target)) => target.clone(),
        Some(other) => return Err(Error::Invalid(format!("Invalid target: {other}"))),
        None => return Err(Error::Invalid("Missing argument: \"target\"".to_owned())),
    };
    let verb = Verb::parse(&target)
        .ok_or_else(|| Error::Invalid(format!("The requested action \"{target}\" could not be understood.")))?;
    version.require(verb.min_api_minor())?;
    let node_ident = NodeIdent::parse(&ident, version)?;
    let conductor = state.conductor.clone();
    let node = lock::with_node_locked(&state, node_ident, move |tx, node| {
        if verb == Verb::Abort && node.provision_state == ProvisionState::DeployWait {
            version.require(microversion::ABORT_DEPLOY_WAIT)?;
        }
        conductor.provision(tx, node, verb, Utc::now())
    })
    .await?;
    tracing::info!(node = %node.uuid, target = %target, state = %node.provision_state, "provisioning action applied");
    let location = format!("{base}/v1/nodes/{ident}/states");
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)]).into_response())
}

/// `GET /v1/nodes/{node}/history` (1.78).
pub async fn history(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    if !version.at_least(microversion::NODE_HISTORY) {
        return Err(Error::ResourceNotFound);
    }
    let ident = NodeIdent::parse(&ident, version)?;
    let events = state
        .store
        .run(move |tx| {
            let node = ident.load(tx)?;
            Ok::<_, Error>(tx.history(&node.uuid)?)
        })
        .await?;
    let history: Vec<Value> = events
        .into_iter()
        .map(|event| {
            json!({
                "uuid": event.uuid,
                "created_at": event.created_at,
                "severity": event.severity,
                "event_type": event.event_type,
                "event": event.event,
                "conductor": event.conductor,
                "user": event.user,
                "from_state": event.from_state,
                "to_state": event.to_state,
            })
        })
        .collect();
    Ok(Json(json!({ "history": history })))
}

/// `GET /v1/nodes/{node}/inventory` (1.81): the inventory the agent reported.
pub async fn inventory(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    if !version.at_least(microversion::NODE_INVENTORY) {
        return Err(Error::ResourceNotFound);
    }
    let ident = NodeIdent::parse(&ident, version)?;
    let stored = state
        .store
        .run(move |tx| {
            let node = ident.load(tx)?;
            tx.inventory(&node.uuid)?.ok_or(Error::InventoryNotFound(node.uuid))
        })
        .await?;
    Ok(Json(json!({ "inventory": stored.inventory, "plugin_data": stored.plugin_data })))
}
