//! A Redfish BMC reduced to what the controller's driver uses on one system: its power state, its
//! boot override and the reset action. Changes take effect at once, and every change is logged so
//! tests can check what the controller asked of the BMC, in order.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub const SYSTEM_PATH: &str = "/redfish/v1/Systems/1";

#[derive(Debug)]
struct System {
    on: bool,
    boot: Value,
    /// `ForceOff`, `On`, `boot Pxe Once`...
    changes: Vec<String>,
}

type Shared = Arc<Mutex<System>>;

pub struct FakeRedfish {
    address: String,
    system: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRedfish {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRedfish {
    /// A powered-off system on 127.0.0.1, with no boot override.
    pub async fn start() -> FakeRedfish {
        let system = Arc::new(Mutex::new(System {
            on: false,
            boot: json!({"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}),
            changes: Vec::new(),
        }));
        let router = Router::new()
            .route(SYSTEM_PATH, get(show).patch(set_boot))
            .route(&format!("{SYSTEM_PATH}/Actions/ComputerSystem.Reset"), post(reset))
            .with_state(Arc::clone(&system));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeRedfish { address, system, task }
    }

    /// The node's `driver_info` for this BMC (no credentials: anonymous calls).
    pub fn driver_info(&self) -> Value {
        json!({"redfish_address": self.address, "redfish_system_id": SYSTEM_PATH})
    }

    /// The changes made so far, oldest first.
    pub fn changes(&self) -> Vec<String> {
        self.system.lock().unwrap().changes.clone()
    }
}

async fn show(State(system): State<Shared>) -> Json<Value> {
    let system = system.lock().unwrap();
    Json(json!({
        "@odata.id": SYSTEM_PATH,
        "Id": "1",
        "PowerState": if system.on { "On" } else { "Off" },
        "Boot": system.boot,
        "Actions": {"#ComputerSystem.Reset": {"target": format!("{SYSTEM_PATH}/Actions/ComputerSystem.Reset")}},
    }))
}

async fn set_boot(State(system): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    let Some(Value::Object(change)) = body.get("Boot") else { return StatusCode::BAD_REQUEST };
    let mut system = system.lock().unwrap();
    for (key, value) in change {
        system.boot[key] = value.clone();
    }
    let text = |key: &str| system.boot[key].as_str().unwrap_or_default().to_owned();
    let logged = format!("boot {} {}", text("BootSourceOverrideTarget"), text("BootSourceOverrideEnabled"));
    system.changes.push(logged);
    StatusCode::NO_CONTENT
}

async fn reset(State(system): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    let reset_type = body["ResetType"].as_str().unwrap_or_default().to_owned();
    let on = match reset_type.as_str() {
        "On" | "ForceOn" | "ForceRestart" | "GracefulRestart" | "PowerCycle" => true,
        "ForceOff" | "GracefulShutdown" => false,
        _ => return StatusCode::BAD_REQUEST,
    };
    let mut system = system.lock().unwrap();
    system.on = on;
    system.changes.push(reset_type);
    StatusCode::NO_CONTENT
}
