//! Ferric's thin controller: an Ironic-compatible HTTP API over SQLite, the provision state
//! machine, iPXE boot scripts, and task dispatch to ramdisk agents through their heartbeats.

pub mod agent_token;
pub mod api;
pub mod boot;
pub mod cli;
pub mod conductor;
pub mod error;
pub mod fsm;
pub mod ipxe;
pub mod model;
pub mod secrets;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::conductor::Conductor;
use crate::store::{Store, StoreError};

pub use crate::api::router;

/// Default kernel arguments of the ramdisk, after `ferric.api=` and `BOOTIF=`.
pub const DEFAULT_KERNEL_ARGS: &str = "console=tty0 console=ttyS0,115200n8";
/// Ironic's `[conductor]deploy_callback_timeout`: seconds a node may wait for its agent.
pub const DEFAULT_DEPLOY_CALLBACK_TIMEOUT_SECS: u64 = 1800;
/// Ironic's `[conductor]clean_callback_timeout`: seconds a node may wait in `clean wait`.
pub const DEFAULT_CLEAN_CALLBACK_TIMEOUT_SECS: u64 = 1800;
/// Ironic's `[conductor]inspect_wait_timeout`: seconds a node may wait in `inspect wait`.
pub const DEFAULT_INSPECT_WAIT_TIMEOUT_SECS: u64 = 1800;
/// Seconds between agent heartbeats: short, so deploy progress on the node stays current.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECS: u64 = 2;

#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite database file (created if missing).
    pub db_path: PathBuf,
    /// Base URL under which machines reach this controller, e.g. `http://10.0.2.2:6385`.
    pub public_url: String,
    /// Directory holding the ramdisk's `vmlinuz` and `initramfs`.
    pub ramdisk_dir: PathBuf,
    /// How long a node may stay in `wait call-back` without a heartbeat.
    pub deploy_callback_timeout: Duration,
    /// How long a node may stay in `clean wait` without a heartbeat.
    pub clean_callback_timeout: Duration,
    /// How long a node may stay in `inspect wait` without its inventory.
    pub inspect_wait_timeout: Duration,
    /// How often nodes are checked against the call-back timeouts.
    pub timeout_check_interval: Duration,
    /// Interval the agents are told to heartbeat at.
    pub heartbeat_interval: Duration,
    /// Extra kernel arguments of the ramdisk.
    pub kernel_args: String,
    /// This controller's name in node history and the node's `conductor` field.
    pub conductor_name: String,
    /// Who may call the API (the agent's endpoints are always open).
    pub auth: api::auth::ApiAuth,
    /// `resource_class` of nodes created without one (Ironic's `[DEFAULT]default_resource_class`).
    pub default_resource_class: Option<String>,
}

impl Config {
    /// A configuration with Ironic's defaults for everything but the paths and URL.
    pub fn new(db_path: PathBuf, public_url: &str, ramdisk_dir: PathBuf) -> Config {
        Config {
            db_path,
            public_url: public_url.trim_end_matches('/').to_owned(),
            ramdisk_dir,
            deploy_callback_timeout: Duration::from_secs(DEFAULT_DEPLOY_CALLBACK_TIMEOUT_SECS),
            clean_callback_timeout: Duration::from_secs(DEFAULT_CLEAN_CALLBACK_TIMEOUT_SECS),
            inspect_wait_timeout: Duration::from_secs(DEFAULT_INSPECT_WAIT_TIMEOUT_SECS),
            timeout_check_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(DEFAULT_HEARTBEAT_INTERVAL_SECS),
            kernel_args: DEFAULT_KERNEL_ARGS.to_owned(),
            conductor_name: "ferric".to_owned(),
            auth: api::auth::ApiAuth::NoAuth,
            default_resource_class: None,
        }
    }
}

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub conductor: Conductor,
    pub config: Arc<Config>,
}

impl AppState {
    /// Opens (and migrates) the database named by `config`.
    pub fn open(config: Config) -> Result<AppState, StoreError> {
        let store = Store::open(&config.db_path)?;
        let config = Arc::new(config);
        Ok(AppState { store, conductor: Conductor::new(Arc::clone(&config)), config })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database")]
    Store(#[from] StoreError),
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
}

/// Serves the API and boot files on `listener`, and fails nodes whose agent timed out in the background,
/// until the server fails (or the future is dropped).
pub async fn serve(config: Config, listener: TcpListener) -> Result<(), ServeError> {
    let state = AppState::open(config)?;
    // As Ironic's conductor on start: this controller's earlier life finished none of its actions.
    let owner = state.config.conductor_name.clone();
    let released = state.store.run(move |tx| tx.release_reservations_of(&owner)).await?;
    if released > 0 {
        tracing::info!(released, "released node locks left by a previous run");
    }
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, public_url = %state.config.public_url, "controller listening");
    }
    let watcher = conductor::watch_callback_timeouts(
        state.store.clone(),
        state.conductor.clone(),
        state.config.timeout_check_interval,
    );
    let server = axum::serve(listener, router(state));
    tokio::select! {
        result = server => result.map_err(ServeError::Http),
        never = watcher => match never {},
    }
}
