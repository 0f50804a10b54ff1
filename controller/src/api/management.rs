//! `/v1/nodes/{node}/management/boot_device` (set, show, supported) and `/v1/nodes/{node}/validate`.
//! Setting the boot device is synchronous, as in Ironic: the BMC's answer is the response, with
//! the node locked meanwhile.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::microversion::ApiVersion;
use super::{JsonBody, NodeIdent};
use crate::bmc::{Bmc, BootDevice, BootDeviceSetting, ManagementInterface};
use crate::boot::boot_mode;
use crate::conductor::{validate_deploy_image, EVENT_TYPE_POWER};
use crate::error::Error;
use crate::jobs::{self, NodeLock};
use crate::model::{timestamp, HistoryEvent, Node, Severity};
use crate::AppState;

/// What Ironic's fake management interface supports and reports.
const FAKE_BOOT_DEVICES: &[BootDevice] = &[BootDevice::Pxe];

/// `PUT /v1/nodes/{node}/management/boot_device {"boot_device": "pxe", "persistent": false}`: 204.
pub async fn set_boot_device(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, Error> {
    let Value::Object(request) = body else {
        return Err(Error::Invalid("The boot device request must be a JSON object".to_owned()));
    };
    if let Some(member) = request.keys().find(|key| *key != "boot_device" && *key != "persistent") {
        return Err(Error::Invalid(format!("Unknown argument: \"{member}\"")));
    }
    let device = match request.get("boot_device") {
        Some(Value::String(name)) => BootDevice::parse(name).ok_or_else(|| {
            let valid: Vec<&str> = BootDevice::ALL.iter().map(|device| device.as_str()).collect();
            Error::Invalid(format!("Invalid boot_device \"{name}\": valid devices are {}", valid.join(", ")))
        })?,
        Some(other) => return Err(Error::Invalid(format!("Invalid boot_device: {other}"))),
        None => return Err(Error::Invalid("Missing argument: \"boot_device\"".to_owned())),
    };
    let persistent = match request.get("persistent") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(other) => return Err(Error::Invalid(format!("Invalid persistent: {other} is not a boolean"))),
    };
    let setting = BootDeviceSetting { device, persistent };
    let ident = NodeIdent::parse(&ident, version)?;
    // In a task of its own: a client that disconnects must not leave the node locked.
    let task = tokio::spawn(async move {
        let owner = state.config.conductor_name.clone();
        let ttl = jobs::lock_ttl(&state.config.bmc);
        let (node, lock) = state
            .store
            .run(move |tx| {
                let node = ident.load(tx)?;
                let lock = NodeLock::take(tx, &node.uuid, &owner, ttl)?;
                Ok::<_, Error>((node, lock))
            })
            .await?;
        let result = apply_boot_device(&state, &node, setting).await;
        let (severity, event) = match &result {
            Ok(()) => (Severity::Info, format!("Boot device set to {}", describe(setting))),
            Err(error) => {
                (Severity::Error, format!("Setting the boot device to {} failed: {error}", describe(setting)))
            }
        };
        let conductor = state.conductor.name().to_owned();
        let uuid = node.uuid.clone();
        let recorded = state.store.run(move |tx| record(tx, &uuid, severity, event, &conductor)).await;
        lock.release(&state.store).await;
        result?;
        recorded
    });
    task.await.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn apply_boot_device(state: &AppState, node: &Node, setting: BootDeviceSetting) -> Result<(), Error> {
    let Some(bmc) = state.conductor.bmc_for(node)? else {
        return check_supported(FAKE_BOOT_DEVICES, setting.device);
    };
    check_supported(bmc.supported_boot_devices(), setting.device)?;
    bmc.set_boot_device(setting, boot_mode(node)).await.map_err(|error| Error::BmcFailure(error.to_string()))
}

fn check_supported(supported: &[BootDevice], device: BootDevice) -> Result<(), Error> {
    if supported.contains(&device) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|device| device.as_str()).collect();
    Err(Error::Invalid(format!(
        "Invalid boot_device \"{device}\": this node's management interface supports {}",
        names.join(", ")
    )))
}

fn describe(setting: BootDeviceSetting) -> String {
    format!("{} ({})", setting.device, if setting.persistent { "persistent" } else { "next boot only" })
}

fn record(
    tx: &crate::store::Tx<'_>,
    uuid: &str,
    severity: Severity,
    event: String,
    conductor: &str,
) -> Result<(), Error> {
    tx.insert_history(&HistoryEvent::note(uuid, timestamp(Utc::now()), severity, EVENT_TYPE_POWER, event, conductor))?;
    Ok(())
}

/// `GET /v1/nodes/{node}/management/boot_device`: what the BMC will boot next.
pub async fn get_boot_device(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    let node = NodeIdent::find(&state, &ident, version).await?;
    let setting = match state.conductor.bmc_for(&node)? {
        Some(bmc) => bmc.boot_device().await.map_err(|error| Error::BmcFailure(error.to_string()))?,
        None => Some(BootDeviceSetting { device: BootDevice::Pxe, persistent: false }),
    };
    Ok(Json(match setting {
        Some(setting) => json!({"boot_device": setting.device.as_str(), "persistent": setting.persistent}),
        None => json!({"boot_device": null, "persistent": null}),
    }))
}

/// `GET /v1/nodes/{node}/management/boot_device/supported`.
pub async fn supported_boot_devices(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    let node = NodeIdent::find(&state, &ident, version).await?;
    let supported = match state.conductor.bmc_for(&node)? {
        Some(bmc) => bmc.supported_boot_devices(),
        None => FAKE_BOOT_DEVICES,
    };
    let names: Vec<&str> = supported.iter().map(|device| device.as_str()).collect();
    Ok(Json(json!({ "supported_boot_devices": names })))
}

/// Interfaces `validate` reports on that Ferric has nothing to check for.
const UNCHECKED_INTERFACES: &[&str] = &["boot", "inspect", "network", "storage"];
/// Interfaces Ferric does not implement (`no-*`).
const UNSUPPORTED_INTERFACES: &[&str] = &["bios", "console", "firmware", "raid", "rescue"];

/// `GET /v1/nodes/{node}/validate`: each interface's `{"result", "reason"}`, checked without I/O.
pub async fn validate(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, Error> {
    let node = NodeIdent::find(&state, &ident, version).await?;
    let verdict = |result: Result<(), String>| match result {
        Ok(()) => json!({"result": true}),
        Err(reason) => json!({"result": false, "reason": reason}),
    };
    let bmc = Bmc::for_node(&node, &state.config.bmc).map(|_| ()).map_err(|error| error.to_string());
    let mut report = Map::new();
    report.insert("power".to_owned(), verdict(bmc.clone()));
    report.insert("management".to_owned(), verdict(bmc));
    report.insert("deploy".to_owned(), verdict(validate_deploy_image(&node).map_err(|error| error.to_string())));
    for interface in UNCHECKED_INTERFACES {
        report.insert((*interface).to_owned(), verdict(Ok(())));
    }
    for interface in UNSUPPORTED_INTERFACES {
        report.insert((*interface).to_owned(), json!({"result": null, "reason": "not supported"}));
    }
    Ok(Json(Value::Object(report)))
}
