//! The enrollment file: a YAML or JSON list of nodes, checked whole before anything is created
//! so that a typo never leaves half a fleet enrolled.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Driver of nodes that name none: Ferric powers nothing itself.
pub const DEFAULT_DRIVER: &str = "manual-management";

/// One node of the file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub driver: String,
    pub boot_mode: Option<String>,
    pub properties: Option<Map<String, Value>>,
    pub driver_info: Option<Map<String, Value>>,
    /// MAC addresses in Ironic's form.
    pub ports: Vec<String>,
}

impl NodeSpec {
    /// The body of `POST /v1/nodes`.
    pub fn create_body(&self) -> Value {
        let mut body = Map::new();
        body.insert("name".into(), self.name.clone().into());
        body.insert("driver".into(), self.driver.clone().into());
        if let Some(boot_mode) = &self.boot_mode {
            body.insert("boot_mode".into(), boot_mode.clone().into());
        }
        if let Some(properties) = &self.properties {
            body.insert("properties".into(), Value::Object(properties.clone()));
        }
        if let Some(driver_info) = &self.driver_info {
            body.insert("driver_info".into(), Value::Object(driver_info.clone()));
        }
        Value::Object(body)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollFileError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not valid YAML", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{}: expected a list of nodes (or an object with `nodes`)", path.display())]
    NotAList { path: PathBuf },
    /// `entry` counts from 1; `node` is the entry's name when it has one.
    #[error("{}: entry {entry}{}: field `{field}`: {reason}", path.display(), node.as_ref().map(|name| format!(" (node {name})")).unwrap_or_default())]
    Entry { path: PathBuf, entry: usize, node: Option<String>, field: String, reason: String },
}

/// Reads and checks an enrollment file; `.json` files (or text starting with `[`/`{`) are JSON,
/// anything else YAML.
pub fn read(path: &Path) -> Result<Vec<NodeSpec>, EnrollFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| EnrollFileError::Read { path: path.to_owned(), source })?;
    let is_json = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with(['[', '{']);
    let document: Value = if is_json {
        serde_json::from_str(&text).map_err(|source| EnrollFileError::Json { path: path.to_owned(), source })?
    } else {
        serde_norway::from_str(&text).map_err(|source| EnrollFileError::Yaml { path: path.to_owned(), source })?
    };
    parse(path, document)
}

/// Checks a parsed document: a list of nodes, or Ironic's `{"nodes": [...]}`.
pub fn parse(path: &Path, document: Value) -> Result<Vec<NodeSpec>, EnrollFileError> {
    let entries = match document {
        Value::Array(entries) => entries,
        Value::Object(mut object) => match object.remove("nodes") {
            Some(Value::Array(entries)) => entries,
            _ => return Err(EnrollFileError::NotAList { path: path.to_owned() }),
        },
        _ => return Err(EnrollFileError::NotAList { path: path.to_owned() }),
    };
    entries.into_iter().enumerate().map(|(index, entry)| parse_entry(path, index + 1, entry)).collect()
}

const KNOWN_FIELDS: &[&str] = &["name", "driver", "boot_mode", "properties", "driver_info", "ports"];

fn parse_entry(path: &Path, entry: usize, value: Value) -> Result<NodeSpec, EnrollFileError> {
    let refuse = |node: Option<&str>, field: &str, reason: String| EnrollFileError::Entry {
        path: path.to_owned(),
        entry,
        node: node.map(str::to_owned),
        field: field.to_owned(),
        reason,
    };
    let Value::Object(mut object) = value else {
        return Err(refuse(None, "-", "expected a mapping of node fields".into()));
    };
    let name = match object.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        Some(other) => return Err(refuse(None, "name", format!("expected a non-empty string, got {other}"))),
        None => return Err(refuse(None, "name", "missing".into())),
    };
    let node = Some(name.as_str());
    if let Some(unknown) = object.keys().find(|key| !KNOWN_FIELDS.contains(&key.as_str())) {
        return Err(refuse(node, unknown, format!("unknown field; expected one of {}", KNOWN_FIELDS.join(", "))));
    }
    let mut text = |field: &str| match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(refuse(node, field, format!("expected a string, got {other}"))),
    };
    let driver = text("driver")?.unwrap_or_else(|| DEFAULT_DRIVER.to_owned());
    let boot_mode = text("boot_mode")?;
    if let Some(mode) = boot_mode.as_deref().filter(|mode| !["uefi", "bios"].contains(mode)) {
        return Err(refuse(node, "boot_mode", format!("expected uefi or bios, got {mode}")));
    }
    let mut mapping = |field: &str| match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(refuse(node, field, format!("expected a mapping, got {other}"))),
    };
    let properties = mapping("properties")?;
    let driver_info = mapping("driver_info")?;
    let ports = match object.remove("ports") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(macs)) => macs
            .iter()
            .enumerate()
            .map(|(index, mac)| {
                let field = format!("ports[{index}]");
                match mac.as_str() {
                    Some(text) => ferric_protocol::normalize_mac(text)
                        .ok_or_else(|| refuse(node, &field, format!("{text:?} is not a MAC address"))),
                    None => Err(refuse(node, &field, format!("expected a MAC address string, got {mac}"))),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(refuse(node, "ports", format!("expected a list of MAC addresses, got {other}"))),
    };
    Ok(NodeSpec { name, driver, boot_mode, properties, driver_info, ports })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_one(entry: Value) -> Result<NodeSpec, EnrollFileError> {
        parse(Path::new("nodes.yaml"), json!([entry])).map(|mut nodes| nodes.remove(0))
    }

    #[test]
    fn defaults_and_macs_are_normalised() {
        let node = parse_one(json!({"name": "n1", "ports": ["52-54-00-AA-BB-CC"]})).unwrap();
        assert_eq!(node.driver, DEFAULT_DRIVER);
        assert_eq!(node.ports, vec!["52:54:00:aa:bb:cc".to_owned()]);
        assert_eq!(node.create_body(), json!({"name": "n1", "driver": DEFAULT_DRIVER}));
    }

    #[test]
    fn errors_name_the_entry_the_node_and_the_field() {
        let error = parse_one(json!({"name": "n1", "ports": ["52:54:00:aa:bb:cc", "nope"]})).unwrap_err();
        assert_eq!(error.to_string(), "nodes.yaml: entry 1 (node n1): field `ports[1]`: \"nope\" is not a MAC address");
        let error = parse_one(json!({"driver": "ipmi"})).unwrap_err();
        assert_eq!(error.to_string(), "nodes.yaml: entry 1: field `name`: missing");
        let error = parse_one(json!({"name": "n1", "boot_mode": "legacy"})).unwrap_err();
        assert!(error.to_string().contains("field `boot_mode`"), "{error}");
        let error = parse_one(json!({"name": "n1", "port": []})).unwrap_err();
        assert!(error.to_string().contains("field `port`: unknown field"), "{error}");
    }

    #[test]
    fn yaml_and_ironics_nodes_object_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.yaml");
        std::fs::write(&path, "nodes:\n  - name: n1\n    boot_mode: bios\n    properties: {cpus: 2}\n").unwrap();
        let nodes = read(&path).unwrap();
        assert_eq!(nodes[0].boot_mode.as_deref(), Some("bios"));
        assert_eq!(nodes[0].properties.as_ref().unwrap()["cpus"], 2);
    }
}
