//! `PUT /v1/nodes/{node}/states/power`. Ferric drives no BMC yet, so only nodes whose power
//! interface is Ironic's `fake` (the fake-hardware and manual-management hardware types) take
//! power actions: as Ironic's fake power interface, the new power state is simply recorded.

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::Value;

use super::microversion::{self, ApiVersion};
use super::{lock, BaseUrl, JsonBody, NodeIdent};
use crate::error::Error;
use crate::fsm::ProvisionState;
use crate::model::{timestamp, HistoryEvent, Node, Severity};
use crate::AppState;

pub const POWER_ON: &str = "power on";
pub const POWER_OFF: &str = "power off";

/// History `event_type` of power actions.
const EVENT_TYPE_POWER: &str = "power";

/// A power action of Ironic's `ALLOWED_TARGET_POWER_STATES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerTarget {
    On,
    Off,
    Reboot,
    SoftReboot,
    SoftOff,
}

impl PowerTarget {
    fn parse(text: &str) -> Option<PowerTarget> {
        Some(match text {
            POWER_ON => PowerTarget::On,
            POWER_OFF => PowerTarget::Off,
            "rebooting" => PowerTarget::Reboot,
            "soft rebooting" => PowerTarget::SoftReboot,
            "soft power off" => PowerTarget::SoftOff,
            _ => return None,
        })
    }

    fn is_soft(self) -> bool {
        matches!(self, PowerTarget::SoftReboot | PowerTarget::SoftOff)
    }

    /// The power state the action ends in (Ironic's `_calculate_target_state`).
    fn resulting_state(self) -> &'static str {
        match self {
            PowerTarget::On | PowerTarget::Reboot | PowerTarget::SoftReboot => POWER_ON,
            PowerTarget::Off | PowerTarget::SoftOff => POWER_OFF,
        }
    }
}

/// The power interface a node uses: its explicit `power_interface`, else its hardware type's default.
fn power_interface(node: &Node) -> &str {
    if let Some(Value::String(explicit)) = node.interfaces.get("power") {
        return explicit;
    }
    match node.driver.as_str() {
        "fake-hardware" | "manual-management" => "fake",
        "ipmi" => "ipmitool",
        other => other,
    }
}

/// Applies `target` to `node` as Ironic's API and fake power interface do, refusing what Ironic refuses.
fn apply(node: &mut Node, target: PowerTarget, target_text: &str) -> Result<(), Error> {
    if matches!(node.provision_state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
        return Err(Error::InvalidStateRequested {
            action: target_text.to_owned(),
            node: node.uuid.clone(),
            state: node.provision_state.to_string(),
        });
    }
    if node.disable_power_off && matches!(target, PowerTarget::Off | PowerTarget::SoftOff) {
        return Err(Error::Invalid(format!(
            "Node {} does not support power off because disable_power_off is set",
            node.uuid
        )));
    }
    let interface = power_interface(node);
    if interface != "fake" {
        return Err(Error::Invalid(format!(
            "Power actions through the \"{interface}\" power interface are not supported by Ferric yet"
        )));
    }
    node.power_state = Some(target.resulting_state().to_owned());
    node.target_power_state = None;
    Ok(())
}

/// `PUT /v1/nodes/{node}/states/power {"target": ..., "timeout": N}`: done before the 202.
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
    match request.get("timeout") {
        None | Some(Value::Null) => {}
        Some(timeout) => {
            version.require(microversion::SOFT_POWER_OFF)?;
            if timeout.as_u64().is_none_or(|seconds| seconds < 1) {
                return Err(Error::Invalid(format!("Invalid timeout value {timeout}: it must be an integer >= 1")));
            }
        }
    }
    let node_ident = NodeIdent::parse(&ident, version)?;
    let target = PowerTarget::parse(&target_text);
    if target.is_some_and(PowerTarget::is_soft) {
        version.require(microversion::SOFT_POWER_OFF)?;
    }
    let conductor = state.conductor.clone();
    let node = lock::with_node_locked(&state, node_ident.clone(), move |tx, mut node| {
        let Some(target) = target else {
            return Err(Error::InvalidStateRequested {
                action: target_text,
                node: node_ident.as_str().to_owned(),
                state: node.power_state.clone().unwrap_or_else(|| "None".to_owned()),
            });
        };
        let from = node.power_state.clone();
        apply(&mut node, target, &target_text)?;
        let now = timestamp(Utc::now());
        node.updated_at = Some(now.clone());
        tx.update_node(&node)?;
        tx.insert_history(&HistoryEvent {
            uuid: uuid::Uuid::new_v4().to_string(),
            node_uuid: node.uuid.clone(),
            created_at: now,
            severity: Severity::Info,
            event_type: EVENT_TYPE_POWER.to_owned(),
            event: format!(
                "Power action \"{target_text}\": {} -> {}",
                from.as_deref().unwrap_or("None"),
                target.resulting_state()
            ),
            conductor: Some(conductor.name().to_owned()),
            user: None,
            from_state: None,
            to_state: None,
        })?;
        Ok(node)
    })
    .await?;
    tracing::info!(node = %node.uuid, power_state = ?node.power_state, "power action applied");
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
    fn fake_power_records_the_resulting_state() {
        let mut fake = node("fake-hardware", ProvisionState::Manageable);
        apply(&mut fake, PowerTarget::Reboot, "rebooting").unwrap();
        assert_eq!(fake.power_state.as_deref(), Some(POWER_ON));
        apply(&mut fake, PowerTarget::SoftOff, "soft power off").unwrap();
        assert_eq!(fake.power_state.as_deref(), Some(POWER_OFF));
        assert_eq!(fake.target_power_state, None);
    }

    #[test]
    fn cleaning_nodes_and_real_bmcs_are_refused() {
        let mut cleaning = node("manual-management", ProvisionState::CleanWait);
        let error = apply(&mut cleaning, PowerTarget::On, POWER_ON).unwrap_err();
        assert!(error.to_string().contains("while it is in state \"clean wait\""), "{error}");
        let mut ipmi = node("ipmi", ProvisionState::Manageable);
        let error = apply(&mut ipmi, PowerTarget::On, POWER_ON).unwrap_err();
        assert!(error.to_string().contains("\"ipmitool\""), "{error}");
        assert_eq!(ipmi.power_state, None);
        let mut pinned = node("fake-hardware", ProvisionState::Manageable);
        pinned.disable_power_off = true;
        assert!(apply(&mut pinned, PowerTarget::Off, POWER_OFF).is_err());
    }
}
