//! `ferric`, the operator CLI: enroll nodes from a file, list and show them, deploy and watch a
//! deploy's progress, read a node's events and its agent's log tail. Every command writes to
//! the `out` it is given, so the binary stays a thin shell around these functions.

pub mod client;
pub mod enroll;
pub mod progress;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ferric_protocol::Progress;
use serde_json::{json, Value};

use self::client::{Client, ClientError};
use self::enroll::{EnrollFileError, NodeSpec};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    EnrollFile(#[from] EnrollFileError),
    /// A request made while enrolling `node` failed; `step` says which.
    #[error("node {node}: {step} failed")]
    Enroll {
        node: String,
        step: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("node {node} ended in {state}: {last_error}")]
    DeployFailed { node: String, state: String, last_error: String },
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
}

/// Creates each node of `file` with its ports, then (unless `provide` is false) moves it
/// through `manage` and `provide` to `available`. Prints a line per node.
pub fn enroll(client: &Client, file: &Path, provide: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let nodes = enroll::read(file)?;
    for spec in &nodes {
        let (uuid, state) = enroll_one(client, spec, provide)?;
        let ports = if spec.ports.is_empty() { "no ports".to_owned() } else { spec.ports.join(", ") };
        writeln!(out, "{}  {uuid}  {state}  {ports}", spec.name)?;
    }
    Ok(())
}

/// Enrolls one node and returns its UUID and provision state.
fn enroll_one(client: &Client, spec: &NodeSpec, provide: bool) -> Result<(String, String), CliError> {
    let failed = |step: String| {
        let node = spec.name.clone();
        move |source| CliError::Enroll { node, step, source: Box::new(source) }
    };
    let created = client.post("/v1/nodes", &spec.create_body()).map_err(failed("creating the node".into()))?;
    let uuid = created["uuid"].as_str().unwrap_or(&spec.name).to_owned();
    for mac in &spec.ports {
        client
            .post("/v1/ports", &json!({ "address": mac, "node_uuid": uuid }))
            .map_err(failed(format!("creating port {mac}")))?;
    }
    if provide {
        for verb in ["manage", "provide"] {
            client.set_provision_state(&uuid, verb).map_err(failed(format!("`{verb}`")))?;
        }
    }
    let node = client.get(&node_path(&uuid)).map_err(failed("reading the node back".into()))?;
    Ok((uuid, text(&node["provision_state"])))
}

/// A table of all nodes (following the API's `next` links).
pub fn list(client: &Client, out: &mut dyn Write) -> Result<(), CliError> {
    let mut path = "/v1/nodes?fields=uuid,name,provision_state,power_state,maintenance".to_owned();
    let mut rows = vec![["UUID", "NAME", "PROVISION STATE", "POWER STATE", "MAINTENANCE"].map(str::to_owned).to_vec()];
    loop {
        let page = client.get(&path)?;
        for node in page["nodes"].as_array().into_iter().flatten() {
            let fields = ["uuid", "name", "provision_state", "power_state", "maintenance"];
            rows.push(fields.iter().map(|field| text(&node[*field])).collect());
        }
        match page["next"].as_str().and_then(|next| next.find("/v1/").map(|start| next[start..].to_owned())) {
            Some(next) if next != path => path = next,
            _ => break,
        }
    }
    write_table(&rows, out)
}

/// The fields an operator looks at, the last error, and the agent's progress.
pub fn show(client: &Client, node: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let node = client.get(&node_path(node))?;
    let mut lines: Vec<(&str, String)> = [
        "uuid",
        "name",
        "driver",
        "provision_state",
        "target_provision_state",
        "power_state",
        "maintenance",
        "maintenance_reason",
        "boot_mode",
        "instance_uuid",
        "provision_updated_at",
        "last_error",
    ]
    .iter()
    .map(|field| (*field, text(&node[*field])))
    .collect();
    lines.push(("image_source", text(&node["instance_info"]["image_source"])));
    let internal = &node["driver_internal_info"];
    lines.push(("agent_last_heartbeat", text(&internal["agent_last_heartbeat"])));
    lines.push((
        "agent_progress",
        agent_progress(&node).map(|progress| progress::render(&progress)).unwrap_or_default(),
    ));
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in lines {
        writeln!(out, "{name:width$}  {value}")?;
    }
    Ok(())
}

/// How `deploy` follows the node.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    pub interval: Duration,
    /// Redraw the progress line in place (a terminal) instead of printing a line per change.
    pub redraw: bool,
}

/// Gives the node its image and requests `active`; with `watch`, follows it until it is active
/// (`Ok`) or has failed ([`CliError::DeployFailed`] with the node's `last_error`).
pub fn deploy(
    client: &Client,
    node: &str,
    image: &str,
    checksum: &str,
    watch: Option<Watch>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let patch = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": image},
        {"op": "add", "path": "/instance_info/image_checksum", "value": checksum},
    ]);
    client.patch(&node_path(node), &patch)?;
    client.set_provision_state(node, "active")?;
    writeln!(out, "{node}: deploy requested")?;
    match watch {
        Some(watch) => watch_deploy(client, node, watch, out),
        None => Ok(()),
    }
}

fn watch_deploy(client: &Client, node: &str, watch: Watch, out: &mut dyn Write) -> Result<(), CliError> {
    let mut last_state = String::new();
    let mut last_progress = String::new();
    // Whether the cursor sits after a progress line drawn in place.
    let mut mid_line = false;
    loop {
        let shown = client.get(&node_path(node))?;
        let state = text(&shown["provision_state"]);
        if state != last_state {
            if mid_line {
                writeln!(out)?;
                mid_line = false;
            }
            writeln!(out, "{node}: {state}")?;
            last_state.clone_from(&state);
        }
        if let Some(line) = agent_progress(&shown).map(|progress| progress::render(&progress)) {
            if line != last_progress {
                if watch.redraw {
                    write!(out, "\r{line}\x1b[K")?;
                    mid_line = true;
                } else {
                    writeln!(out, "{line}")?;
                }
                last_progress = line;
            }
        }
        out.flush()?;
        let target = &shown["target_provision_state"];
        if state == "active" {
            if mid_line {
                writeln!(out)?;
            }
            return Ok(());
        }
        if state.ends_with("failed") || state == "error" || target.is_null() {
            if mid_line {
                writeln!(out)?;
            }
            let last_error = shown["last_error"].as_str().unwrap_or("no last_error recorded").to_owned();
            return Err(CliError::DeployFailed { node: node.to_owned(), state, last_error });
        }
        std::thread::sleep(watch.interval);
    }
}

/// The node's history: time, transition, severity and event.
pub fn events(client: &Client, node: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let history = client.get(&format!("{}/history", node_path(node)))?;
    let mut rows = vec![["TIME", "TRANSITION", "SEVERITY", "EVENT"].map(str::to_owned).to_vec()];
    for event in history["history"].as_array().into_iter().flatten() {
        let transition = match (event["from_state"].as_str(), event["to_state"].as_str()) {
            (None, None) => String::new(),
            (from, to) => format!("{} -> {}", from.unwrap_or("-"), to.unwrap_or("-")),
        };
        rows.push(vec![text(&event["created_at"]), transition, text(&event["severity"]), text(&event["event"])]);
    }
    write_table(&rows, out)
}

/// The last lines the node's agent logged, as reported in its heartbeats.
pub fn logs(client: &Client, node: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let shown = client.get(&node_path(node))?;
    for line in shown["driver_internal_info"]["agent_log_tail"].as_array().into_iter().flatten() {
        writeln!(out, "{}", text(line))?;
    }
    Ok(())
}

fn node_path(node: &str) -> String {
    format!("/v1/nodes/{node}")
}

/// The agent's last reported progress, if the node carries one.
fn agent_progress(node: &Value) -> Option<Progress> {
    serde_json::from_value(node["driver_internal_info"]["agent_progress"].clone()).ok()
}

/// A JSON value as a table cell: strings bare, `null` empty.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn write_table(rows: &[Vec<String>], out: &mut dyn Write) -> Result<(), CliError> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:width$}  ", width = widths[column]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let rows = vec![vec!["A".to_owned(), "B".to_owned()], vec!["long".to_owned(), "x".to_owned()]];
        let mut out = Vec::new();
        write_table(&rows, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A     B\nlong  x\n");
    }
}
