//! What network-booting machines fetch: `/boot.ipxe`, their per-MAC script, and the ramdisk.

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferric_protocol::normalize_mac;
use serde_json::Value;
use tower_http::services::ServeFile;

use crate::fsm::LOOKUP_ALLOWED_STATES;
use crate::ipxe::{BootMode, BootScript};
use crate::model::Node;
use crate::{AppState, Config};

pub fn router(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe/{mac}", get(machine_script))
        .route_service("/ramdisk/vmlinuz", ServeFile::new(config.ramdisk_dir.join("vmlinuz")))
        .route_service("/ramdisk/initramfs", ServeFile::new(config.ramdisk_dir.join("initramfs")))
}

fn script_response(script: &BootScript) -> Response {
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], script.render()).into_response()
}

async fn boot_ipxe(State(state): State<AppState>) -> Response {
    script_response(&BootScript::Chain { public_url: state.config.public_url.clone() })
}

/// `GET /ipxe/{mac}`: the script for the machine booting from that NIC (`aa-bb-..` or `aa:bb:..`).
async fn machine_script(State(state): State<AppState>, Path(mac): Path<String>) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return (StatusCode::BAD_REQUEST, format!("invalid MAC address {mac:?}\n")).into_response();
    };
    let address = mac.clone();
    let found = state
        .store
        .run(move |tx| match tx.list_ports(None, Some(&address))?.pop() {
            Some(port) => tx.node_by_uuid(&port.node_uuid),
            None => Ok(None),
        })
        .await;
    match found {
        Ok(node) => {
            let script = script_for(node.as_ref(), &mac, &state.config);
            tracing::info!(%mac, node = node.as_ref().map(|node| node.uuid.as_str()), script = script_kind(&script), "boot script");
            script_response(&script)
        }
        Err(error) => crate::error::Error::from(error).into_response(),
    }
}

fn script_kind(script: &BootScript) -> &'static str {
    match script {
        BootScript::Chain { .. } => "chain",
        BootScript::Ramdisk { .. } => "ramdisk",
        BootScript::LocalBoot { .. } => "local boot",
        BootScript::UnknownMac { .. } => "unknown MAC",
    }
}

/// The script for a machine whose boot NIC is `mac`, owned by `node` if any.
pub fn script_for(node: Option<&Node>, mac: &str, config: &Config) -> BootScript {
    let Some(node) = node else {
        return BootScript::UnknownMac { mac: mac.to_owned() };
    };
    let boot_mode = boot_mode(node);
    // The ramdisk boots where its agent may look itself up: it has work to do.
    if LOOKUP_ALLOWED_STATES.contains(&node.provision_state) {
        BootScript::Ramdisk {
            public_url: config.public_url.clone(),
            node_uuid: node.uuid.clone(),
            state: node.provision_state.to_string(),
            mac: mac.to_owned(),
            boot_mode,
            kernel_args: config.kernel_args.clone(),
        }
    } else {
        BootScript::LocalBoot { node_uuid: node.uuid.clone(), state: node.provision_state.to_string(), boot_mode }
    }
}

/// The node's `boot_mode`, else `boot_mode:` in `properties.capabilities`, else UEFI.
pub fn boot_mode(node: &Node) -> BootMode {
    if let Some(mode) = node.boot_mode.as_deref().and_then(BootMode::parse) {
        return mode;
    }
    let from_capabilities = match node.properties.get("capabilities") {
        // Ironic's usual form: "boot_mode:bios,secure_boot:false".
        Some(Value::String(list)) => list.split(',').find_map(|entry| {
            let (key, value) = entry.split_once(':')?;
            (key.trim() == "boot_mode").then(|| BootMode::parse(value)).flatten()
        }),
        Some(Value::Object(map)) => map.get("boot_mode").and_then(Value::as_str).and_then(BootMode::parse),
        _ => None,
    };
    from_capabilities.unwrap_or(BootMode::Uefi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::ProvisionState;
    use serde_json::json;

    fn node(state: ProvisionState) -> Node {
        Node::new("u".into(), "manual-management".into(), state, "t".into())
    }

    #[test]
    fn boot_mode_comes_from_the_field_then_capabilities() {
        let mut node = node(ProvisionState::Active);
        assert_eq!(boot_mode(&node), BootMode::Uefi);
        node.properties.insert("capabilities".into(), json!("secure_boot:false, boot_mode:bios"));
        assert_eq!(boot_mode(&node), BootMode::Bios);
        node.properties.insert("capabilities".into(), json!({"boot_mode": "uefi"}));
        assert_eq!(boot_mode(&node), BootMode::Uefi);
        node.boot_mode = Some("bios".into());
        assert_eq!(boot_mode(&node), BootMode::Bios);
    }

    #[test]
    fn scripts_follow_the_state() {
        let config = Config::new("db".into(), "http://h", "r".into());
        let mac = "52:54:00:12:34:56";
        assert!(matches!(script_for(None, mac, &config), BootScript::UnknownMac { .. }));
        assert!(matches!(
            script_for(Some(&node(ProvisionState::DeployWait)), mac, &config),
            BootScript::Ramdisk { .. }
        ));
        assert!(matches!(
            script_for(Some(&node(ProvisionState::Available)), mac, &config),
            BootScript::LocalBoot { .. }
        ));
    }
}
