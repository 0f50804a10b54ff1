//! How a node reads through the API at a given microversion: Ironic's field list, version
//! gating, masked secrets, `fields=` selection and links.

use serde_json::{json, Map, Value};

use super::drivers;
use super::microversion::{self, ApiVersion};
use super::node_fields::INTERFACE_FIELDS;
use crate::error::Error;
use crate::fsm::ProvisionState;
use crate::model::Node;
use crate::secrets::mask_object;

/// Node fields with the minor version introducing them, in Ironic's order (interfaces follow).
const NODE_FIELDS: &[(&str, u32)] = &[
    ("uuid", 1),
    ("created_at", 1),
    ("updated_at", 1),
    ("name", 5),
    ("driver", 1),
    ("driver_info", 1),
    ("driver_internal_info", 3),
    ("extra", 1),
    ("instance_info", 1),
    ("instance_uuid", 1),
    ("properties", 1),
    ("power_state", 1),
    ("target_power_state", 1),
    ("provision_state", 1),
    ("target_provision_state", 1),
    ("provision_updated_at", 1),
    ("last_error", 1),
    ("maintenance", 1),
    ("maintenance_reason", 1),
    ("fault", 42),
    ("reservation", 1),
    ("console_enabled", 1),
    ("clean_step", 7),
    ("deploy_step", 44),
    ("service_step", 87),
    ("raid_config", 12),
    ("target_raid_config", 12),
    ("traits", 37),
    ("resource_class", 21),
    ("conductor_group", 46),
    ("conductor", 49),
    ("allocation_uuid", 52),
    ("chassis_uuid", 1),
    ("automated_clean", 47),
    ("protected", 48),
    ("protected_reason", 48),
    ("owner", 50),
    ("lessee", 65),
    ("description", 51),
    ("retired", 61),
    ("retired_reason", 61),
    ("network_data", 66),
    ("boot_mode", 75),
    ("secure_boot", 75),
    ("shard", 82),
    ("parent_node", 83),
    ("disable_power_off", 95),
    ("inspection_started_at", 6),
    ("inspection_finished_at", 6),
];

/// Link lists of a full node, with their minimum versions.
const LINK_FIELDS: &[(&str, u32)] = &[("ports", 1), ("states", microversion::STATES_LINK)];

/// What `GET /v1/nodes` shows without `fields` or `detail` (plus `links`).
pub const DEFAULT_LIST_FIELDS: &[&str] =
    &["instance_uuid", "maintenance", "power_state", "provision_state", "uuid", "name"];

fn all_fields() -> impl Iterator<Item = (&'static str, u32)> {
    NODE_FIELDS.iter().chain(INTERFACE_FIELDS).copied()
}

/// Parses and checks a node request's `fields=a,b` (see [`super::parse_fields`]).
pub fn parse_fields(text: &str, version: ApiVersion) -> Result<Vec<String>, Error> {
    super::parse_fields(text, version, all_fields().chain(LINK_FIELDS.iter().copied()))
}

/// Renders a node. `selection` limits the fields (links always stay), `None` shows all.
pub fn render(node: &Node, version: ApiVersion, base_url: &str, conductor: &str, selection: Option<&[&str]>) -> Value {
    let wanted = |name: &str| selection.is_none_or(|names| names.contains(&name));
    let Ok(Value::Object(mut stored)) = serde_json::to_value(node) else {
        unreachable!("a node serialises to an object");
    };
    let mut out = Map::new();
    for (name, minor) in all_fields() {
        if !version.at_least(minor) || !wanted(name) {
            continue;
        }
        let value = match name {
            "driver_info" => Value::Object(mask_object(&node.driver_info)),
            "driver_internal_info" => Value::Object(mask_object(&node.driver_internal_info)),
            "instance_info" => Value::Object(mask_object(&node.instance_info)),
            "provision_state" => shown_state(node.provision_state, version),
            "service_step" | "raid_config" | "target_raid_config" => json!({}),
            "traits" => json!([]),
            "conductor" => Value::String(conductor.to_owned()),
            _ => match name.strip_suffix("_interface") {
                // Unset interfaces read as the driver's default, as Ironic resolves them on create.
                Some(kind) => node
                    .interfaces
                    .get(kind)
                    .cloned()
                    .unwrap_or_else(|| json!(drivers::default_interface(&node.driver, kind))),
                // Each field is rendered once, so it can be moved out rather than cloned.
                None => stored.remove(name).unwrap_or(Value::Null),
            },
        };
        out.insert(name.to_owned(), value);
    }
    out.insert("links".to_owned(), links(base_url, "nodes", &node.uuid));
    for (name, minor) in LINK_FIELDS {
        if version.at_least(*minor) && wanted(name) {
            out.insert((*name).to_owned(), links(base_url, "nodes", &format!("{}/{name}", node.uuid)));
        }
    }
    Value::Object(out)
}

/// Older clients do not know some states (`update_state_in_older_versions`).
fn shown_state(state: ProvisionState, version: ApiVersion) -> Value {
    match state {
        ProvisionState::Available if !version.at_least(microversion::AVAILABLE_STATE) => Value::Null,
        ProvisionState::InspectWait if !version.at_least(microversion::INSPECT_WAIT) => {
            Value::String(ProvisionState::Inspecting.to_string())
        }
        other => Value::String(other.to_string()),
    }
}

/// Ironic's `self` and `bookmark` links to `<resource>/<path>`.
pub fn links(base_url: &str, resource: &str, path: &str) -> Value {
    json!([
        {"href": format!("{base_url}/v1/{resource}/{path}"), "rel": "self"},
        {"href": format!("{base_url}/{resource}/{path}"), "rel": "bookmark"},
    ])
}

/// `GET /v1/nodes/{node}/states`.
pub fn render_states(node: &Node, version: ApiVersion) -> Value {
    let mut states = json!({
        "console_enabled": node.console_enabled,
        "last_error": node.last_error,
        "power_state": node.power_state,
        "provision_state": shown_state(node.provision_state, version),
        "provision_updated_at": node.provision_updated_at,
        "target_power_state": node.target_power_state,
        "target_provision_state": node.target_provision_state,
    });
    if version.at_least(microversion::RAID_CONFIG) {
        states["raid_config"] = json!({});
        states["target_raid_config"] = json!({});
    }
    if version.at_least(microversion::NODE_BOOT_MODE) {
        states["boot_mode"] = json!(node.boot_mode);
        states["secure_boot"] = json!(node.secure_boot);
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut node = Node::new("u1".into(), "ipmi".into(), ProvisionState::Available, "t".into());
        node.name = Some("n1".into());
        node.driver_info.insert("ipmi_password".into(), json!("secret"));
        node
    }

    #[test]
    fn old_versions_hide_newer_fields_and_states() {
        let shown = render(&node(), ApiVersion::MIN, "http://h", "c", None);
        assert!(shown.get("name").is_none());
        assert!(shown["provision_state"].is_null());
        assert!(shown.get("deploy_step").is_none());
        let latest = render(&node(), ApiVersion::MAX, "http://h", "c", None);
        assert_eq!(latest["name"], "n1");
        assert_eq!(latest["provision_state"], "available");
        assert_eq!(latest["driver_info"]["ipmi_password"], "******");
        assert_eq!(latest["power_interface"], "ipmitool");
        assert_eq!(latest["deploy_interface"], "direct");
        assert_eq!(latest["links"][0]["href"], "http://h/v1/nodes/u1");
        assert_eq!(latest["states"][1]["href"], "http://h/nodes/u1/states");
        assert!(latest.get("agent_token_hash").is_none());
    }

    #[test]
    fn selection_keeps_links() {
        let shown = render(&node(), ApiVersion::MAX, "http://h", "c", Some(&["uuid", "name"]));
        let keys: Vec<&String> = shown.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(shown.get("links").is_some());
    }

    #[test]
    fn fields_parameter_is_checked() {
        assert!(parse_fields("uuid", ApiVersion { minor: 7 }).is_err());
        assert_eq!(parse_fields("uuid, name", ApiVersion::MAX).unwrap(), vec!["uuid", "name"]);
        assert!(matches!(parse_fields("bogus", ApiVersion::MAX), Err(Error::Invalid(_))));
        assert!(matches!(parse_fields("name,shard", ApiVersion { minor: 10 }), Err(Error::NotAcceptable(_))));
    }
}
