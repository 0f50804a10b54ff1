//! The node fields clients may write, with Ironic's schema (`node_schema()`), patchability
//! (`PATCH_ALLOWED_FIELDS`) and minimum microversions (`VERSIONED_FIELDS`), plus the
//! validation that turns a JSON document into [`Node`] fields with jsonschema-like messages.

use std::sync::LazyLock;

use serde_json::Value;

use super::microversion::ApiVersion;
use crate::error::Error;
use crate::model::{JsonObject, Node};

/// The JSON type of a writable field, and what `null` becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// string or null.
    Text,
    /// string, never null (`driver`).
    RequiredText,
    /// string or null, stored as "" when null (`conductor_group`).
    TextOrEmpty,
    /// object or null; null stores `{}`.
    Object,
    /// boolean, a boolean-like string, or null (stored as false).
    Flag,
    /// boolean, a boolean-like string, or null (stored as null).
    OptionalFlag,
    /// a UUID string or null.
    Uuid,
}

#[derive(Debug, Clone, Copy)]
pub struct WritableField {
    pub name: &'static str,
    pub kind: Kind,
    /// Lowest API minor version showing and accepting the field.
    pub min_minor: u32,
    /// Accepted by `POST /v1/nodes`.
    pub on_create: bool,
    /// Accepted by `PATCH /v1/nodes/{node}`.
    pub patchable: bool,
    pub max_length: Option<usize>,
}

pub(super) const fn field(
    name: &'static str,
    kind: Kind,
    min_minor: u32,
    on_create: bool,
    patchable: bool,
) -> WritableField {
    WritableField { name, kind, min_minor, on_create, patchable, max_length: None }
}

/// Hardware interface fields; each `<type>_interface` is stored in `Node::interfaces` under `<type>`.
pub const INTERFACE_FIELDS: &[(&str, u32)] = &[
    ("bios_interface", 40),
    ("boot_interface", 31),
    ("console_interface", 31),
    ("deploy_interface", 31),
    ("firmware_interface", 86),
    ("inspect_interface", 31),
    ("management_interface", 31),
    ("network_interface", 20),
    ("power_interface", 31),
    ("raid_interface", 31),
    ("rescue_interface", 38),
    ("storage_interface", 33),
    ("vendor_interface", 31),
];

const INTERFACE_SUFFIX: &str = "_interface";

/// Every field a client may write, interfaces excepted (see [`WRITABLE_FIELDS`]).
const FIELDS: &[WritableField] = &[
    field("automated_clean", Kind::OptionalFlag, 47, true, true),
    // Ironic sets boot_mode through `PUT .../states/boot_mode`, which needs a BMC; Ferric
    // has none yet, so PATCH may set it too.
    field("boot_mode", Kind::Text, 75, true, true),
    field("chassis_uuid", Kind::Uuid, 1, true, true),
    field("conductor_group", Kind::TextOrEmpty, 46, true, true),
    field("console_enabled", Kind::Flag, 1, true, false),
    WritableField { max_length: Some(4096), ..field("description", Kind::Text, 51, true, true) },
    field("disable_power_off", Kind::Flag, 95, true, true),
    field("driver", Kind::RequiredText, 1, true, true),
    field("driver_info", Kind::Object, 1, true, true),
    field("extra", Kind::Object, 1, true, true),
    field("instance_info", Kind::Object, 1, true, true),
    field("instance_uuid", Kind::Uuid, 1, true, true),
    field("lessee", Kind::Text, 65, true, true),
    field("maintenance", Kind::Flag, 1, true, true),
    field("name", Kind::Text, 5, true, true),
    field("network_data", Kind::Object, 66, true, true),
    field("owner", Kind::Text, 50, true, true),
    field("parent_node", Kind::Text, 83, true, true),
    field("properties", Kind::Object, 1, true, true),
    field("protected", Kind::Flag, 48, false, true),
    field("protected_reason", Kind::Text, 48, false, true),
    WritableField { max_length: Some(80), ..field("resource_class", Kind::Text, 21, true, true) },
    field("retired", Kind::Flag, 61, true, true),
    field("retired_reason", Kind::Text, 61, true, true),
    field("secure_boot", Kind::OptionalFlag, 75, true, false),
    field("shard", Kind::Text, 82, true, true),
    field("uuid", Kind::Uuid, 1, true, false),
];

/// All writable fields, interfaces included, sorted by name.
pub static WRITABLE_FIELDS: LazyLock<Vec<WritableField>> = LazyLock::new(|| {
    let interfaces = INTERFACE_FIELDS.iter().map(|(name, min_minor)| field(name, Kind::Text, *min_minor, true, true));
    let mut all: Vec<WritableField> = FIELDS.iter().copied().chain(interfaces).collect();
    all.sort_by_key(|field| field.name);
    all
});

/// Checks a request object against the allowed fields and their types, like jsonschema
/// under Ironic's `args.schema` (`Schema error for <what>: <jsonschema message>`).
pub fn check_schema(
    what: &str,
    object: &JsonObject,
    allowed: &[WritableField],
    required: &[&str],
) -> Result<(), Error> {
    let schema_error = |message: String| Error::Invalid(format!("Schema error for {what}: {message}"));
    let unexpected: Vec<String> = object
        .keys()
        .filter(|key| !allowed.iter().any(|field| field.name == *key))
        .map(|key| py_repr_str(key))
        .collect();
    match unexpected.len() {
        0 => {}
        1 => {
            return Err(schema_error(format!(
                "Additional properties are not allowed ({} was unexpected)",
                unexpected[0]
            )))
        }
        _ => {
            return Err(schema_error(format!(
                "Additional properties are not allowed ({} were unexpected)",
                unexpected.join(", ")
            )))
        }
    }
    if let Some(missing) = required.iter().find(|name| !object.contains_key(**name)) {
        return Err(schema_error(format!("{} is a required property", py_repr_str(missing))));
    }
    for field in allowed {
        let Some(value) = object.get(field.name) else { continue };
        let types: &[&str] = match field.kind {
            Kind::Text | Kind::TextOrEmpty | Kind::Uuid => &["string", "null"],
            Kind::RequiredText => &["string"],
            Kind::Object => &["object", "null"],
            Kind::Flag | Kind::OptionalFlag => &["string", "boolean", "null"],
        };
        if !types.contains(&json_type(value)) {
            let listed: Vec<String> = types.iter().map(|name| py_repr_str(name)).collect();
            return Err(schema_error(format!("{} is not of type {}", py_repr(value), listed.join(", "))));
        }
        if let (Some(limit), Some(text)) = (field.max_length, value.as_str()) {
            if text.chars().count() > limit {
                return Err(schema_error(format!("{} is too long", py_repr(value))));
            }
        }
    }
    Ok(())
}

/// 406 when the request sets a field its version does not have (`reject_fields_in_newer_versions`).
pub fn reject_newer_fields(object: &JsonObject, fields: &[WritableField], version: ApiVersion) -> Result<(), Error> {
    for field in fields.iter().filter(|field| !version.at_least(field.min_minor)) {
        let value = object.get(field.name).unwrap_or(&Value::Null);
        let empty = match field.kind {
            Kind::TextOrEmpty => value.is_null() || value == "",
            _ => value.is_null(),
        };
        if !empty {
            return Err(Error::not_acceptable());
        }
    }
    Ok(())
}

/// The current values of `fields`, as the document a JSON patch applies to.
pub fn document(node: &Node, fields: &[WritableField]) -> JsonObject {
    let Ok(Value::Object(stored)) = serde_json::to_value(node) else {
        unreachable!("a node serialises to an object");
    };
    fields
        .iter()
        .map(|field| {
            let value = match field.name.strip_suffix(INTERFACE_SUFFIX) {
                Some(kind) => node.interfaces.get(kind).cloned().unwrap_or(Value::Null),
                None => stored.get(field.name).cloned().unwrap_or(Value::Null),
            };
            (field.name.to_owned(), value)
        })
        .collect()
}

/// Writes the schema-checked `object`'s fields into `node`, converting boolean strings
/// and nulls as Ironic does.
pub fn apply(node: &mut Node, object: &JsonObject, fields: &[WritableField]) -> Result<(), Error> {
    let Ok(Value::Object(mut stored)) = serde_json::to_value(&*node) else {
        unreachable!("a node serialises to an object");
    };
    for field in fields {
        let Some(value) = object.get(field.name) else { continue };
        let value = normalise(field, value)?;
        match field.name.strip_suffix(INTERFACE_SUFFIX) {
            Some(kind) => {
                let Value::Object(interfaces) = stored.entry("interfaces").or_insert(Value::Object(JsonObject::new()))
                else {
                    unreachable!("interfaces is an object");
                };
                match value {
                    Value::Null => interfaces.remove(kind),
                    chosen => interfaces.insert(kind.to_owned(), chosen),
                };
            }
            None => {
                stored.insert(field.name.to_owned(), value);
            }
        }
    }
    *node = serde_json::from_value(Value::Object(stored))
        .map_err(|error| Error::Invalid(format!("Invalid node fields: {error}")))?;
    Ok(())
}

/// A schema-checked value as stored: boolean strings parsed, UUIDs canonical, and nulls
/// of fields that cannot be null replaced by their empty value.
pub fn normalise(field: &WritableField, value: &Value) -> Result<Value, Error> {
    Ok(match (field.kind, value) {
        (Kind::Object, Value::Null) => Value::Object(JsonObject::new()),
        (Kind::TextOrEmpty, Value::Null) => Value::String(String::new()),
        (Kind::Flag, Value::Null) => Value::Bool(false),
        (Kind::Flag | Kind::OptionalFlag, Value::String(text)) => Value::Bool(parse_bool(field.name, text)?),
        (Kind::Uuid, Value::String(text)) => match super::canonical_uuid(text) {
            Some(uuid) => Value::String(uuid),
            None => return Err(Error::Invalid(format!("Expected a UUID for {}: {text}", field.name))),
        },
        (_, other) => other.clone(),
    })
}

/// oslo's strict `bool_from_string`.
pub fn parse_bool(name: &str, text: &str) -> Result<bool, Error> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(false),
        _ => Err(Error::Invalid(format!("Invalid {name}: expected a boolean value, got '{text}'"))),
    }
}

/// Whether `name` is a valid node name: not UUID-like, and made of RFC 3986 unreserved
/// characters (from 1.10) or a valid host name (before).
pub fn is_valid_node_name(name: &str, version: ApiVersion) -> bool {
    if name.is_empty() || name.len() > 255 || uuid::Uuid::parse_str(name).is_ok() {
        return false;
    }
    if version.at_least(super::microversion::UNRESTRICTED_NODE_NAME) {
        name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
    } else {
        name.trim_end_matches('.').split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Python's `repr` of a string, as jsonschema messages quote values.
fn py_repr_str(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Python's `repr` of a JSON value.
pub(super) fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => py_repr_str(text),
        Value::Array(items) => format!("[{}]", items.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(object) => format!(
            "{{{}}}",
            object
                .iter()
                .map(|(key, value)| format!("{}: {}", py_repr_str(key), py_repr(value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::ProvisionState;
    use serde_json::json;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            _ => unreachable!(),
        }
    }

    fn create_fields() -> Vec<WritableField> {
        WRITABLE_FIELDS.iter().filter(|field| field.on_create).copied().collect()
    }

    #[test]
    fn unknown_fields_are_named_like_jsonschema() {
        let error = check_schema("node", &object(json!({"driver": "ipmi", "bogus": 1})), &create_fields(), &["driver"]);
        assert_eq!(
            error.unwrap_err().to_string(),
            "Schema error for node: Additional properties are not allowed ('bogus' was unexpected)"
        );
        let missing = check_schema("node", &object(json!({})), &create_fields(), &["driver"]).unwrap_err();
        assert_eq!(missing.to_string(), "Schema error for node: 'driver' is a required property");
        let wrong = check_schema("node", &object(json!({"driver": "x", "name": 5})), &create_fields(), &[]);
        assert_eq!(wrong.unwrap_err().to_string(), "Schema error for node: 5 is not of type 'string', 'null'");
    }

    #[test]
    fn interface_fields_exist_for_every_type() {
        let fields = &*WRITABLE_FIELDS;
        for (name, _) in INTERFACE_FIELDS {
            assert!(fields.iter().any(|field| field.name == *name), "{name}");
        }
        assert_eq!(fields.len(), FIELDS.len() + INTERFACE_FIELDS.len());
    }

    #[test]
    fn applying_converts_strings_and_nulls() {
        let mut node = Node::new("u".into(), "ipmi".into(), ProvisionState::Enroll, "t".into());
        let fields = &*WRITABLE_FIELDS;
        let update = object(json!({
            "maintenance": "yes", "extra": null, "power_interface": "ipmitool", "conductor_group": null,
            "instance_uuid": "0C7E1A1E5C3F4F7B9A5E3F1F6F0F2A11"
        }));
        apply(&mut node, &update, fields).unwrap();
        assert!(node.maintenance);
        assert_eq!(node.interfaces["power"], "ipmitool");
        assert_eq!(node.instance_uuid.as_deref(), Some("0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11"));
        assert_eq!(document(&node, fields)["power_interface"], "ipmitool");
        apply(&mut node, &object(json!({"power_interface": null})), fields).unwrap();
        assert!(node.interfaces.is_empty());
        assert!(apply(&mut node, &object(json!({"maintenance": "maybe"})), fields).is_err());
    }

    #[test]
    fn newer_fields_are_refused_on_old_versions() {
        let fields = &*WRITABLE_FIELDS;
        let old = ApiVersion { minor: 1 };
        assert!(reject_newer_fields(&object(json!({"name": "n"})), fields, old).is_err());
        assert!(reject_newer_fields(&object(json!({"name": null, "conductor_group": ""})), fields, old).is_ok());
        assert!(reject_newer_fields(&object(json!({"name": "n"})), fields, ApiVersion { minor: 5 }).is_ok());
    }

    #[test]
    fn node_names() {
        let new = ApiVersion::MAX;
        assert!(is_valid_node_name("node-1.rack_2~x", new));
        assert!(!is_valid_node_name("has space", new));
        assert!(!is_valid_node_name("0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11", new));
        let old = ApiVersion { minor: 5 };
        assert!(is_valid_node_name("node-1.example", old));
        assert!(!is_valid_node_name("Node_1", old));
    }
}
