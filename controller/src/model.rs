//! The records the controller keeps, with Ironic's field names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsm::ProvisionState;

/// A JSON object column (`properties`, `instance_info`, ...).
pub type JsonObject = Map<String, Value>;

/// Ironic's timestamp format: ISO 8601 with microseconds and an explicit `+00:00`.
/// Fixed width, so stored timestamps also compare correctly as text.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// A bare-metal node. Serialised field names are the database column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub uuid: String,
    pub name: Option<String>,
    pub driver: String,
    pub provision_state: ProvisionState,
    pub target_provision_state: Option<ProvisionState>,
    pub power_state: Option<String>,
    pub target_power_state: Option<String>,
    pub last_error: Option<String>,
    pub maintenance: bool,
    pub maintenance_reason: Option<String>,
    pub fault: Option<String>,
    pub boot_mode: Option<String>,
    pub secure_boot: Option<bool>,
    pub properties: JsonObject,
    pub instance_info: JsonObject,
    pub driver_info: JsonObject,
    pub driver_internal_info: JsonObject,
    pub extra: JsonObject,
    pub deploy_step: JsonObject,
    /// The clean step the agent runs (manual cleaning), `{}` otherwise.
    pub clean_step: JsonObject,
    pub network_data: JsonObject,
    /// Explicitly chosen hardware interfaces, keyed by interface type (`power` -> `ipmitool`).
    pub interfaces: JsonObject,
    pub reservation: Option<String>,
    pub instance_uuid: Option<String>,
    pub chassis_uuid: Option<String>,
    pub resource_class: Option<String>,
    pub conductor_group: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub lessee: Option<String>,
    pub shard: Option<String>,
    pub parent_node: Option<String>,
    pub automated_clean: Option<bool>,
    pub console_enabled: bool,
    pub protected: bool,
    pub protected_reason: Option<String>,
    pub retired: bool,
    pub retired_reason: Option<String>,
    pub disable_power_off: bool,
    /// SHA-256 (hex) of the agent token handed out by lookup; the token itself is never stored.
    pub agent_token_hash: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub provision_updated_at: Option<String>,
    pub inspection_started_at: Option<String>,
    pub inspection_finished_at: Option<String>,
}

impl Node {
    /// A node as `POST /v1/nodes` creates it before the request's fields are applied.
    pub fn new(uuid: String, driver: String, provision_state: ProvisionState, created_at: String) -> Node {
        Node {
            uuid,
            name: None,
            driver,
            provision_state,
            target_provision_state: None,
            power_state: None,
            target_power_state: None,
            last_error: None,
            maintenance: false,
            maintenance_reason: None,
            fault: None,
            boot_mode: None,
            secure_boot: None,
            properties: JsonObject::new(),
            instance_info: JsonObject::new(),
            driver_info: JsonObject::new(),
            driver_internal_info: JsonObject::new(),
            extra: JsonObject::new(),
            deploy_step: JsonObject::new(),
            clean_step: JsonObject::new(),
            network_data: JsonObject::new(),
            interfaces: JsonObject::new(),
            reservation: None,
            instance_uuid: None,
            chassis_uuid: None,
            resource_class: None,
            conductor_group: String::new(),
            description: None,
            owner: None,
            lessee: None,
            shard: None,
            parent_node: None,
            automated_clean: None,
            console_enabled: false,
            protected: false,
            protected_reason: None,
            retired: false,
            retired_reason: None,
            disable_power_off: false,
            agent_token_hash: None,
            created_at,
            updated_at: None,
            provision_updated_at: None,
            inspection_started_at: None,
            inspection_finished_at: None,
        }
    }
}

/// A network port of a node; lookup and the iPXE script find nodes by its MAC address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub uuid: String,
    /// Normalised MAC (`aa:bb:cc:dd:ee:ff`).
    pub address: String,
    pub node_uuid: String,
    pub pxe_enabled: bool,
    pub extra: JsonObject,
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// Ironic's node history severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One entry of a node's history (`GET /v1/nodes/{node}/history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub uuid: String,
    pub node_uuid: String,
    pub created_at: String,
    pub severity: Severity,
    pub event_type: String,
    pub event: String,
    pub conductor: Option<String>,
    pub user: Option<String>,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
}

impl HistoryEvent {
    /// An event of `node_uuid` that is not a state transition (a power or BMC event).
    pub fn note(
        node_uuid: &str,
        created_at: String,
        severity: Severity,
        event_type: &str,
        event: String,
        conductor: &str,
    ) -> HistoryEvent {
        HistoryEvent {
            uuid: uuid::Uuid::new_v4().to_string(),
            node_uuid: node_uuid.to_owned(),
            created_at,
            severity,
            event_type: event_type.to_owned(),
            event,
            conductor: Some(conductor.to_owned()),
            user: None,
            from_state: None,
            to_state: None,
        }
    }
}

/// The hardware inventory last reported by a node's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInventory {
    pub inventory: Value,
    pub plugin_data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_look_like_ironics() {
        let at = Utc.with_ymd_and_hms(2024, 3, 5, 7, 8, 9).unwrap();
        assert_eq!(timestamp(at), "2024-03-05T07:08:09.000000+00:00");
    }
}
