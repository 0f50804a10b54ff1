//! RFC 6902 JSON Patch, restricted as Ironic's `JsonPatchType` is to add, replace and remove.

use serde_json::Value;

use crate::error::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
}

impl Operation {
    pub fn path(&self) -> &str {
        match self {
            Operation::Add { path, .. } | Operation::Replace { path, .. } | Operation::Remove { path } => path,
        }
    }

    /// The top-level field the operation touches (`/instance_info/x` -> `instance_info`).
    pub fn root(&self) -> String {
        let first = self.path().trim_start_matches('/').split('/').next().unwrap_or("");
        unescape(first)
    }

    /// The value written, for add and replace.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Operation::Add { value, .. } | Operation::Replace { value, .. } => Some(value),
            Operation::Remove { .. } => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Operation::Add { path, value } => format!("{{'op': 'add', 'path': '{path}', 'value': {value}}}"),
            Operation::Replace { path, value } => format!("{{'op': 'replace', 'path': '{path}', 'value': {value}}}"),
            Operation::Remove { path } => format!("{{'op': 'remove', 'path': '{path}'}}"),
        }
    }
}

/// Parses a PATCH body: a list of `{"op", "path", "value"}` objects.
pub fn parse(body: &Value) -> Result<Vec<Operation>, Error> {
    let Some(items) = body.as_array() else {
        return Err(Error::Invalid("Invalid patch: a JSON Patch must be a list of operations".to_owned()));
    };
    items.iter().map(parse_operation).collect()
}

fn parse_operation(item: &Value) -> Result<Operation, Error> {
    let invalid = |message: &str| Error::Invalid(format!("Invalid patch {item}: {message}"));
    let object = item.as_object().ok_or_else(|| invalid("an operation must be an object"))?;
    if let Some(extra) = object.keys().find(|key| !matches!(key.as_str(), "op" | "path" | "value")) {
        return Err(invalid(&format!("unexpected member '{extra}'")));
    }
    let path = object.get("path").and_then(Value::as_str).ok_or_else(|| invalid("'path' is required"))?;
    if !path.starts_with('/') || path.len() < 2 {
        return Err(invalid("'path' must be a JSON pointer below the root, such as /extra/foo"));
    }
    let path = path.trim_end_matches('/').to_owned();
    let value = || object.get("value").cloned().ok_or_else(|| invalid("'value' is required for add and replace"));
    match object.get("op").and_then(Value::as_str) {
        Some("add") => Ok(Operation::Add { path, value: value()? }),
        Some("replace") => Ok(Operation::Replace { path, value: value()? }),
        Some("remove") => Ok(Operation::Remove { path }),
        _ => Err(invalid("'op' must be one of add, replace, remove")),
    }
}

/// Applies `operations` in order to `document`. Like Ironic, adding a field the document
/// does not have at its root is refused.
pub fn apply(document: &mut Value, operations: &[Operation]) -> Result<(), Error> {
    for operation in operations {
        let tokens: Vec<String> = operation.path()[1..].split('/').map(unescape).collect();
        if matches!(operation, Operation::Add { .. }) && tokens.len() == 1 && document.get(&tokens[0]).is_none() {
            return Err(Error::Invalid(format!(
                "Adding a new attribute ({}) to the root of the resource is not allowed",
                operation.path()
            )));
        }
        apply_one(document, operation, &tokens).map_err(|reason| {
            Error::Invalid(format!("Couldn't apply patch '{}'. Reason: {reason}", operation.describe()))
        })?;
    }
    Ok(())
}

fn apply_one(document: &mut Value, operation: &Operation, tokens: &[String]) -> Result<(), String> {
    let (last, parents) = tokens.split_last().ok_or("empty path")?;
    let mut parent = document;
    for token in parents {
        parent = match parent {
            Value::Object(object) => object.get_mut(token).ok_or_else(|| format!("member '{token}' not found"))?,
            Value::Array(items) => {
                let index = array_index(token, items.len())?;
                &mut items[index]
            }
            _ => return Err(format!("'{token}' is not a container")),
        };
    }
    match (parent, operation) {
        (Value::Object(object), Operation::Add { value, .. }) => {
            object.insert(last.clone(), value.clone());
        }
        (Value::Object(object), Operation::Replace { value, .. }) => match object.get_mut(last) {
            Some(slot) => *slot = value.clone(),
            None => return Err(format!("can't replace a non-existent object '{last}'")),
        },
        (Value::Object(object), Operation::Remove { .. }) => {
            object.remove(last).ok_or_else(|| format!("can't remove a non-existent object '{last}'"))?;
        }
        (Value::Array(items), Operation::Add { value, .. }) => {
            let index = if last == "-" { items.len() } else { array_index(last, items.len() + 1)? };
            items.insert(index, value.clone());
        }
        (Value::Array(items), Operation::Replace { value, .. }) => {
            let index = array_index(last, items.len())?;
            items[index] = value.clone();
        }
        (Value::Array(items), Operation::Remove { .. }) => {
            let index = array_index(last, items.len())?;
            items.remove(index);
        }
        _ => return Err(format!("cannot reach '{last}': its parent is not a container")),
    }
    Ok(())
}

fn array_index(token: &str, bound: usize) -> Result<usize, String> {
    token.parse::<usize>().ok().filter(|index| *index < bound).ok_or_else(|| format!("index '{token}' is out of range"))
}

/// RFC 6901 unescaping of one pointer token.
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(document: Value, patch: Value) -> Result<Value, Error> {
        let mut document = document;
        apply(&mut document, &parse(&patch)?)?;
        Ok(document)
    }

    #[test]
    fn add_replace_remove_nested_members() {
        let document = json!({"instance_info": {}, "extra": {"a": 1, "b/c": 2}, "name": null});
        let result = patched(
            document,
            json!([
                {"op": "add", "path": "/instance_info/image_source", "value": "http://x"},
                {"op": "replace", "path": "/name", "value": "n1"},
                {"op": "remove", "path": "/extra/b~1c"},
            ]),
        )
        .unwrap();
        assert_eq!(result, json!({"instance_info": {"image_source": "http://x"}, "extra": {"a": 1}, "name": "n1"}));
    }

    #[test]
    fn new_root_members_and_missing_targets_are_refused() {
        let root = patched(json!({"extra": {}}), json!([{"op": "add", "path": "/bogus", "value": 1}])).unwrap_err();
        assert_eq!(root.to_string(), "Adding a new attribute (/bogus) to the root of the resource is not allowed");
        let missing = patched(json!({"extra": {}}), json!([{"op": "remove", "path": "/extra/x"}])).unwrap_err();
        assert!(missing.to_string().contains("can't remove a non-existent object 'x'"), "{missing}");
        assert!(parse(&json!([{"op": "move", "path": "/extra"}])).is_err());
        assert!(parse(&json!([{"op": "add", "path": "/extra"}])).is_err());
        assert!(parse(&json!({"op": "add"})).is_err());
    }

    #[test]
    fn arrays_take_indexes_and_dash() {
        let result = patched(
            json!({"extra": {"l": [1, 2]}}),
            json!([{"op": "add", "path": "/extra/l/-", "value": 3}, {"op": "remove", "path": "/extra/l/0"}]),
        )
        .unwrap();
        assert_eq!(result, json!({"extra": {"l": [2, 3]}}));
    }
}
