//! `PUT /v1/nodes/{node}/states/power`. A node with a BMC gets the action through it, in the
//! background with the node locked, `target_power_state` set meanwhile, and the outcome (or the
//! BMC's error as `last_error`) recorded on the node. Nodes of the `fake` power interface
//! (fake-hardware, manual-management) only record the new state, as Ironic's fake interface.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::Value;

use super::microversion::{self, ApiVersion};
use super::{lock, BaseUrl, JsonBody, NodeIdent};
use crate::bmc::PowerAction;
use crate::conductor::EVENT_TYPE_POWER;
use crate::error::Error;
use crate::fsm::ProvisionState;
use crate::jobs::BmcStep;
use crate::model::{timestamp, HistoryEvent, Node, Severity};
use crate::AppState;

/// Refuses what Ironic's API refuses before any power action.
fn check(node: &Node, action: PowerAction) -> Result<(), Error> {
    if matches!(node.provision_state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
        return Err(Error::InvalidStateRequested {
            action: action.as_str().to_owned(),
            node: node.uuid.clone(),
            state: node.provision_state.to_string(),
        });
    }
    if node.disable_power_off && matches!(action, PowerAction::Off | PowerAction::SoftOff) {
        return Err(Error::Invalid(format!(
            "Node {} does not support power off because disable_power_off is set",
            node.uuid
        )));
    }
    Ok(())
}

/// `PUT /v1/nodes/{node}/states/power {"target": ..., "timeout": N}`: recorded before the 202 for nodes
/// without a BMC; through the BMC in the background otherwise, `target_power_state` set until it ends.
pub async fn set_power_state(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Value::Object(request) = body else {
        return Err(Error::Invalid("The power request must be a JSON object".to_owned()));
    };
    if let Some(member) = request.keys().find(|key| *key != "target" && *key != "timeout") {
        return Err(Error::Invalid(format!("Unknown argument: \"{member}\"")));
    }
    let target_text = match request.get("target") {
        Some(Value::String(target)) => target.clone(),
        Some(other) => return Err(Error::Invalid(format!("Invalid target: {other}"))),
        None => return Err(Error::Invalid("Missing argument: \"target\"".to_owned())),
    };
    // Ironic's per-request power timeout, in place of the controller's `--power-timeout`.
    let timeout = match request.get("timeout") {
        None | Some(Value::Null) => None,
        Some(timeout) => {
            version.require(microversion::SOFT_POWER_OFF)?;
            match timeout.as_u64() {
                Some(seconds) if seconds >= 1 => Some(Duration::from_secs(seconds)),
                _ => {
                    return Err(Error::Invalid(format!("Invalid timeout value {timeout}: it must be an integer >= 1")))
                }
            }
        }
    };
    let node_ident = NodeIdent::parse(&ident, version)?;
    let action = PowerAction::parse(&target_text);
    if action.is_some_and(PowerAction::is_soft) {
        version.require(microversion::SOFT_POWER_OFF)?;
    }
    let conductor = state.conductor.clone();
    let node = lock::with_node_locked(&state, node_ident.clone(), move |tx, mut node| {
        let Some(action) = action else {
            return Err(Error::InvalidStateRequested {
                action: target_text,
                node: node_ident.as_str().to_owned(),
                state: node.power_state.clone().unwrap_or_else(|| "None".to_owned()),
            });
        };
        check(&node, action)?;
        let bmc = conductor.bmc_for(&node)?;
        let from = node.power_state.clone().unwrap_or_else(|| "None".to_owned());
        let event = match &bmc {
            Some(_) => format!("Power action \"{action}\" requested (now {from})"),
            None => format!("Power action \"{action}\": {from} -> {}", action.resulting_state()),
        };
        let job = match bmc {
            Some(bmc) => {
                node.last_error = None;
                let purpose = format!("Power action \"{action}\"");
                let mut job = conductor.job(&mut node, bmc, &purpose, &[BmcStep::Power(action)], &[], None);
                job.power_timeout = timeout.unwrap_or(job.power_timeout);
                Some(job)
            }
            None => {
                node.power_state = Some(action.resulting_state().as_str().to_owned());
                node.target_power_state = None;
                None
            }
        };
        let now = timestamp(Utc::now());
        node.updated_at = Some(now.clone());
        tx.update_node(&node)?;
        tx.insert_history(&HistoryEvent::note(
            &node.uuid,
            now,
            Severity::Info,
            EVENT_TYPE_POWER,
            event,
            conductor.name(),
        ))?;
        Ok((node, job))
    })
    .await?;
    tracing::info!(node = %node.uuid, power_state = ?node.power_state, target = ?node.target_power_state, "power action accepted");
    let location = format!("{base}/v1/nodes/{ident}/states");
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(driver: &str, state: ProvisionState) -> Node {
        Node::new("1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(), driver.into(), state, "t".into())
    }

    #[test]
    fn cleaning_nodes_and_pinned_nodes_are_refused() {
        let cleaning = node("ipmi", ProvisionState::CleanWait);
        let error = check(&cleaning, PowerAction::On).unwrap_err();
        assert!(error.to_string().contains("while it is in state \"clean wait\""), "{error}");
        let mut pinned = node("fake-hardware", ProvisionState::Manageable);
        pinned.disable_power_off = true;
        assert!(check(&pinned, PowerAction::Off).is_err());
        assert!(check(&pinned, PowerAction::Reboot).is_ok());
    }
}
