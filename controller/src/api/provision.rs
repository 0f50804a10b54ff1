//! Node states, provisioning actions, history and inventory.

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::microversion::{self, ApiVersion};
use super::node_fields::py_repr;
use super::{lock, node_view, BaseUrl, JsonBody, NodeIdent};
use crate::conductor::{clean_steps_required, CLEAN_STEP_INTERFACES};
use crate::error::Error;
use crate::fsm::{ProvisionState, Verb};
use crate::AppState;
use ferric_protocol::CleanStep;
use ferric_protocol::DEPLOY_CLEAN_STEPS;

/// Members of Ironic's provision request that Ferric does not act on yet.
const UNSUPPORTED_PROVISION_MEMBERS: &[&str] =
    &["deploy_steps", "service_steps", "rescue_password", "disable_ramdisk", "runbook"];

pub async fn states(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    let node = NodeIdent::find(&state, &ident, version).await?;
    Ok(Json(node_view::render_states(&node, version)))
}

/// `PUT /v1/nodes/{node}/states/provision {"target": ...}`: the state changes before the 202; BMC work
/// (booting the ramdisk, powering off) follows in the background with the node locked.
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
    if let Some(member) = request.keys().find(|key| !["target", "clean_steps", "configdrive"].contains(&key.as_str())) {
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
    let clean_steps = match (verb, request.get("clean_steps")) {
        (Verb::Clean, Some(steps)) => Some(parse_clean_steps(steps)?),
        (Verb::Clean, None) => return Err(clean_steps_required()),
        (_, Some(_)) => {
            return Err(Error::Invalid(
                "\"clean_steps\" is only valid when setting target provision state to clean".to_owned(),
            ))
        }
        (_, None) => None,
    };
    let configdrive = request.get("configdrive").map(|drive| check_configdrive(drive, verb, version)).transpose()?;
    let node_ident = NodeIdent::parse(&ident, version)?;
    let conductor = state.conductor.clone();
    let node = lock::with_node_locked(&state, node_ident, move |tx, mut node| {
        // Kept with the instance, as Ironic stores it, and masked whenever the node is shown.
        if let Some(drive) = configdrive {
            node.instance_info.insert("configdrive".to_owned(), drive);
        }
        if verb == Verb::Abort && node.provision_state == ProvisionState::DeployWait {
            version.require(microversion::ABORT_DEPLOY_WAIT)?;
        }
        let action = match &clean_steps {
            Some(steps) => conductor.clean(tx, node, steps, Utc::now())?,
            None => conductor.provision(tx, node, verb, Utc::now())?,
        };
        Ok((action.node, action.job))
    })
    .await?;
    tracing::info!(node = %node.uuid, target = %target, state = %node.provision_state, "provisioning action applied");
    let location = format!("{base}/v1/nodes/{ident}/states");
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)]).into_response())
}

/// Checks a `configdrive` as Ironic does: only with `active`/`deploy` (and `rebuild` from 1.35);
/// a URL or base64 (gzipped ISO) string, or (from 1.56) an object of `meta_data`, `network_data`,
/// `user_data` and (from 1.59) `vendor_data`.
fn check_configdrive(drive: &Value, verb: Verb, version: ApiVersion) -> Result<Value, Error> {
    let allowed = match verb {
        Verb::Active | Verb::Deploy => true,
        Verb::Rebuild => version.at_least(microversion::REBUILD_CONFIGDRIVE),
        _ => false,
    };
    if !allowed {
        return Err(Error::Invalid(
            "Adding a config drive is only supported when setting provision state to active or rebuild".to_owned(),
        ));
    }
    let invalid = |reason: String| Error::Invalid(format!("Invalid configdrive format: {reason}"));
    match drive {
        Value::String(text) if text.contains("://") || is_base64(text) => Ok(drive.clone()),
        Value::String(_) => Err(invalid("a string must be a URL or base64-encoded gzipped ISO".to_owned())),
        Value::Object(fields) => {
            version.require(microversion::CONFIGDRIVE_DICT)?;
            for (key, value) in fields {
                let fits = match key.as_str() {
                    "meta_data" | "network_data" => value.is_object(),
                    "user_data" => value.is_object() || value.is_array() || value.is_string() || value.is_null(),
                    "vendor_data" => {
                        version.require(microversion::CONFIGDRIVE_VENDOR_DATA)?;
                        value.is_object()
                    }
                    other => {
                        return Err(invalid(format!(
                            "Additional properties are not allowed ('{other}' was unexpected)"
                        )))
                    }
                };
                if !fits {
                    return Err(invalid(format!("{value} is not valid for '{key}'")));
                }
            }
            Ok(drive.clone())
        }
        other => Err(invalid(format!("{other} is not of type 'object', 'string'"))),
    }
}

/// Standard base64 with padding, as Ironic's client sends a gzipped ISO.
fn is_base64(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty()
        && text.len().is_multiple_of(4)
        && text.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Checks `clean_steps` against Ironic's clean step schema: a non-empty list of objects with
/// an `interface`, a `step` name and optional `args`, and nothing else.
fn parse_clean_steps(steps: &Value) -> Result<Vec<CleanStep>, Error> {
    let invalid = |reason: String| Error::Invalid(format!("Invalid clean_steps: {reason}"));
    let list = match steps {
        Value::Array(list) if !list.is_empty() => list,
        Value::Array(_) => return Err(clean_steps_required()),
        other => return Err(invalid(format!("{other} is not of type 'array'"))),
    };
    list.iter()
        .map(|step| {
            let Value::Object(fields) = step else {
                return Err(invalid(format!("{step} is not of type 'object'")));
            };
            if let Some(extra) = fields.keys().find(|key| !["interface", "step", "args"].contains(&key.as_str())) {
                return Err(invalid(format!("Additional properties are not allowed ('{extra}' was unexpected)")));
            }
            let interface = match fields.get("interface") {
                Some(Value::String(name)) if CLEAN_STEP_INTERFACES.contains(&name.as_str()) => name.clone(),
                Some(other) => {
                    return Err(invalid(format!("{other} is not one of {CLEAN_STEP_INTERFACES:?} (\"interface\")")))
                }
                None => return Err(invalid("'interface' is a required property".to_owned())),
            };
            let name = match fields.get("step") {
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                Some(other) => return Err(invalid(format!("{other} is not a step name (\"step\")"))),
                None => return Err(invalid("'step' is a required property".to_owned())),
            };
            let args = match fields.get("args") {
                None => Value::Object(Default::default()),
                Some(args @ Value::Object(_)) => args.clone(),
                Some(other) => return Err(invalid(format!("{other} is not of type 'object' (\"args\")"))),
            };
            // Ironic's check of the steps against the driver's (`_validate_user_steps`), listing the agent's.
            if interface == "deploy" && !DEPLOY_CLEAN_STEPS.contains(&name.as_str()) {
                return Err(Error::Invalid(format!(
                    "node does not support this clean step: {}; the deploy interface's clean steps are {}",
                    py_repr(step),
                    DEPLOY_CLEAN_STEPS.join(", ")
                )));
            }
            Ok(CleanStep { interface, step: name, args })
        })
        .collect()
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
