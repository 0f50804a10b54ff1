//! `/v1/drivers`: the hardware types this controller serves, with their hardware interfaces
//! under Ironic's names, so clients see the same driver documents as from Ironic.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Map, Value};

use super::microversion::{self, ApiVersion};
use super::node_fields::INTERFACE_FIELDS;
use super::node_view::links;
use super::{BaseUrl, QueryParams};
use crate::error::Error;
use crate::model::Node;
use crate::AppState;

/// Hardware types a node may use, sorted by name.
pub const DRIVERS: &[&str] = &["fake-hardware", "ipmi", "manual-management", "redfish"];

/// The interfaces of `kind` (`power`, `boot`...) enabled for `driver`, the default first, as
/// Ironic orders a hardware type's supported interfaces. Deploying is always iPXE plus the
/// agent (`direct`); power and management follow the hardware type.
pub fn enabled_interfaces(driver: &str, kind: &str) -> &'static [&'static str] {
    match (driver, kind) {
        ("fake-hardware", "bios") => &["no-bios", "fake"],
        ("fake-hardware", "boot") => &["ipxe", "pxe", "fake"],
        ("fake-hardware", "console") => &["no-console", "fake"],
        ("fake-hardware", "deploy") => &["direct", "ramdisk", "fake"],
        ("fake-hardware", "firmware") => &["no-firmware", "fake"],
        ("fake-hardware", "inspect") => &["agent", "no-inspect", "fake"],
        ("fake-hardware", "raid") => &["no-raid", "agent", "fake"],
        ("fake-hardware", "rescue") => &["no-rescue", "agent", "fake"],
        ("fake-hardware", "storage") => &["noop", "fake"],
        ("fake-hardware", "vendor") => &["no-vendor", "fake"],
        ("fake-hardware" | "manual-management", "management" | "power") => &["fake"],
        ("ipmi", "console") => &["no-console", "ipmitool-socat", "ipmitool-shellinabox"],
        ("ipmi", "management" | "power") => &["ipmitool"],
        ("ipmi", "vendor") => &["ipmitool", "no-vendor"],
        ("redfish", "bios") => &["redfish", "no-bios"],
        ("redfish", "boot") => &["ipxe", "pxe", "redfish-virtual-media", "redfish-https"],
        ("redfish", "firmware") => &["redfish", "no-firmware"],
        ("redfish", "inspect") => &["agent", "redfish", "no-inspect"],
        ("redfish", "management" | "power") => &["redfish"],
        ("redfish", "raid") => &["redfish", "agent", "no-raid"],
        ("redfish", "vendor") => &["redfish", "no-vendor"],
        (_, "bios") => &["no-bios"],
        (_, "boot") => &["ipxe", "pxe"],
        (_, "console") => &["no-console"],
        (_, "deploy") => &["direct", "ramdisk"],
        (_, "firmware") => &["no-firmware"],
        (_, "inspect") => &["agent", "no-inspect"],
        (_, "network") => &["noop", "flat"],
        (_, "raid") => &["no-raid", "agent"],
        (_, "rescue") => &["no-rescue", "agent"],
        (_, "storage") => &["noop"],
        (_, "vendor") => &["no-vendor"],
        _ => &[],
    }
}

/// The interface of `kind` a node of `driver` uses when it chooses none.
pub fn default_interface(driver: &str, kind: &str) -> Option<&'static str> {
    enabled_interfaces(driver, kind).first().copied()
}

/// Ironic's `IncompatibleInterface` (400) for an interface `node` chose that its driver lacks.
pub fn check_interfaces(node: &Node) -> Result<(), Error> {
    for (kind, chosen) in &node.interfaces {
        let chosen = chosen.as_str().unwrap_or_default();
        if !enabled_interfaces(&node.driver, kind).contains(&chosen) {
            return Err(Error::Invalid(format!(
                "{kind} interface implementation '{chosen}' is not supported by hardware type {}.",
                node.driver
            )));
        }
    }
    Ok(())
}

/// Ironic's `DriverNotFound` (404) unless `name` is a hardware type served here.
fn known_driver(name: &str) -> Result<&'static str, Error> {
    DRIVERS.iter().copied().find(|driver| *driver == name).ok_or_else(|| Error::DriverNotFound(name.to_owned()))
}

fn render(driver: &str, version: ApiVersion, base: &str, conductor: &str, detail: bool) -> Value {
    let mut out = Map::new();
    out.insert("hosts".to_owned(), json!([conductor]));
    out.insert("name".to_owned(), json!(driver));
    out.insert("type".to_owned(), json!("dynamic"));
    if detail && version.at_least(microversion::DYNAMIC_DRIVER_INTERFACES) {
        for (field, minor) in INTERFACE_FIELDS {
            let Some(kind) = field.strip_suffix("_interface") else { continue };
            if !version.at_least((*minor).max(microversion::DYNAMIC_DRIVER_INTERFACES)) {
                continue;
            }
            out.insert(format!("default_{field}"), json!(default_interface(driver, kind)));
            out.insert(format!("enabled_{field}s"), json!(enabled_interfaces(driver, kind)));
        }
    }
    out.insert("links".to_owned(), links(base, "drivers", driver));
    out.insert("properties".to_owned(), links(base, "drivers", &format!("{driver}/properties")));
    Value::Object(out)
}

/// `GET /v1/drivers[?type=classic|dynamic][&detail=true]`.
pub async fn list(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    query: QueryParams,
) -> Result<Json<Value>, Error> {
    query.only(&["type", "detail"])?;
    let detail = match query.flag("detail")? {
        Some(detail) => {
            version.require(microversion::DYNAMIC_DRIVER_INTERFACES)?;
            detail
        }
        None => false,
    };
    let drivers: &[&str] = match query.get("type") {
        None | Some("dynamic") => DRIVERS,
        Some("classic") => &[],
        Some(other) => {
            return Err(Error::Invalid(format!(
                "Invalid value for 'type': {other}. Valid values are 'classic' and 'dynamic'."
            )))
        }
    };
    let rendered: Vec<Value> =
        drivers.iter().map(|driver| render(driver, version, &base, state.conductor.name(), detail)).collect();
    Ok(Json(json!({ "drivers": rendered })))
}

/// `GET /v1/drivers/{name}`: the list entry plus default and enabled interfaces.
pub async fn show(
    State(state): State<AppState>,
    version: ApiVersion,
    BaseUrl(base): BaseUrl,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let driver = known_driver(&name)?;
    Ok(Json(render(driver, version, &base, state.conductor.name(), true)))
}

/// `driver_info` keys of the `ipmi` hardware type, described as Ironic describes them.
const IPMI_PROPERTIES: &[(&str, &str)] = &[
    ("ipmi_address", "IP address or hostname of the node. Required."),
    ("ipmi_port", "remote IPMI RMCP port. Optional, 623 by default."),
    ("ipmi_username", "username. Optional."),
    ("ipmi_password", "password. Optional."),
    ("ipmi_priv_level", "privilege level: ADMINISTRATOR (default), OPERATOR or USER. Optional."),
    ("ipmi_protocol_version", "the version of the IPMI protocol: \"2.0\" (default) or \"1.5\". Optional."),
    ("ipmi_cipher_suite", "IPMI 2.0 cipher suite, 3 by default. Optional."),
];

/// `driver_info` keys of the `redfish` hardware type.
const REDFISH_PROPERTIES: &[(&str, &str)] = &[
    ("redfish_address", "The URL address to the Redfish controller. Required."),
    ("redfish_system_id", "The canonical path to the ComputerSystem resource. Optional when the BMC has one system."),
    ("redfish_username", "User account with admin/server-profile access privilege. Optional."),
    ("redfish_password", "User account password. Optional."),
    ("redfish_verify_ca", "true (default), false, or the path to a CA bundle to verify the BMC's certificate with."),
    ("redfish_auth_type", "Redfish HTTP client authentication method: auto (default), basic or session."),
];

/// `GET /v1/drivers/{name}/properties`: the `driver_info` keys the driver reads, with their descriptions.
pub async fn properties(Path(name): Path<String>) -> Result<Json<Value>, Error> {
    let properties = match known_driver(&name)? {
        "ipmi" => IPMI_PROPERTIES,
        "redfish" => REDFISH_PROPERTIES,
        _ => &[],
    };
    let map: Map<String, Value> =
        properties.iter().map(|(key, text)| ((*key).to_owned(), Value::String((*text).to_owned()))).collect();
    Ok(Json(Value::Object(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_driver_has_every_interface_kind() {
        for driver in DRIVERS {
            for (field, _) in INTERFACE_FIELDS {
                let kind = field.strip_suffix("_interface").unwrap();
                assert!(default_interface(driver, kind).is_some(), "{driver} {kind}");
            }
        }
        assert_eq!(default_interface("ipmi", "power"), Some("ipmitool"));
        assert_eq!(default_interface("manual-management", "power"), Some("fake"));
        assert_eq!(default_interface("redfish", "management"), Some("redfish"));
    }

    #[test]
    fn nodes_may_only_choose_their_drivers_interfaces() {
        let mut node = Node::new("u".into(), "ipmi".into(), crate::fsm::ProvisionState::Enroll, "t".into());
        node.interfaces.insert("power".into(), json!("ipmitool"));
        assert!(check_interfaces(&node).is_ok());
        node.interfaces.insert("power".into(), json!("redfish"));
        assert_eq!(
            check_interfaces(&node).unwrap_err().to_string(),
            "power interface implementation 'redfish' is not supported by hardware type ipmi."
        );
    }

    #[test]
    fn unknown_drivers_are_not_found() {
        assert_eq!(known_driver("ipmi").unwrap(), "ipmi");
        assert_eq!(
            known_driver("bogus").unwrap_err().to_string(),
            "Could not find the following driver(s) or hardware type(s): bogus."
        );
    }
}
