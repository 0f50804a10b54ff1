//! Ferric's thin controller: an Ironic-compatible HTTP API over SQLite, the provision state
//! machine, iPXE boot scripts, and task dispatch to ramdisk agents through their heartbeats.

pub mod agent_token;
pub mod api;
pub mod bmc;
pub mod boot;
pub mod cli;
pub mod conductor;
pub mod dhcp;
pub mod error;
pub mod fsm;
pub mod ipxe;
pub mod jobs;
pub mod model;
pub mod power_sync;
pub mod secrets;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::bmc::BmcSettings;
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
/// Ironic's `[conductor]sync_power_state_interval`: seconds between power state syncs.
pub const DEFAULT_POWER_SYNC_INTERVAL_SECS: u64 = 60;
/// Ironic's `[conductor]power_state_sync_max_retries`: failed syncs in a row before maintenance.
pub const DEFAULT_POWER_SYNC_MAX_FAILURES: u32 = 3;
/// IPA's priority of `erase_devices`, which Ironic's `[deploy]erase_devices_priority` overrides.
pub const DEFAULT_ERASE_DEVICES_PRIORITY: u32 = 10;
/// IPA's priority of `erase_devices_metadata` (Ironic's `[deploy]erase_devices_metadata_priority`).
pub const DEFAULT_ERASE_DEVICES_METADATA_PRIORITY: u32 = 99;

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
    /// Timeouts and pacing of BMC calls.
    pub bmc: BmcSettings,
    /// How often the power state of nodes with a BMC is read and recorded.
    pub power_sync_interval: Duration,
    /// Failed power state reads in a row before a node goes into maintenance.
    pub power_sync_max_failures: u32,
    /// DHCP for the machines' network (dnsmasq), if the controller takes part in it.
    pub dhcp: Option<dhcp::DhcpSetup>,
    /// Whether nodes are cleaned between tenants and before their first use (Ironic's
    /// `[conductor]automated_clean`); a node's own `automated_clean` overrides it.
    pub automated_clean: bool,
    /// Priority of the `erase_devices` step in automated cleaning; 0 leaves it out.
    pub erase_devices_priority: u32,
    /// Priority of the `erase_devices_metadata` step in automated cleaning; 0 leaves it out.
    pub erase_devices_metadata_priority: u32,
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
            bmc: BmcSettings::default(),
            power_sync_interval: Duration::from_secs(DEFAULT_POWER_SYNC_INTERVAL_SECS),
            power_sync_max_failures: DEFAULT_POWER_SYNC_MAX_FAILURES,
            dhcp: None,
            automated_clean: true,
            erase_devices_priority: DEFAULT_ERASE_DEVICES_PRIORITY,
            erase_devices_metadata_priority: DEFAULT_ERASE_DEVICES_METADATA_PRIORITY,
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
    #[error("DHCP (dnsmasq) failed")]
    Dhcp(#[source] dhcp::DhcpError),
}

/// Serves the API and boot files on `listener`; in the background, fails nodes whose agent timed out,
/// syncs power states and (if configured) runs DHCP; until one of them fails (or the future is dropped).
pub async fn serve(config: Config, listener: TcpListener) -> Result<(), ServeError> {
    let state = AppState::open(config)?;
    // As Ironic's conductor on start: this controller's earlier life finished none of its actions.
    let conductor = state.conductor.clone();
    let failed = state.store.run(move |tx| conductor.fail_interrupted_jobs(tx, chrono::Utc::now())).await;
    match failed {
        Ok(failed) if !failed.is_empty() => tracing::warn!(?failed, "failed nodes whose BMC work was interrupted"),
        Ok(_) => {}
        Err(error) => tracing::error!(error = %crate::error::error_chain(&error), "cannot fail interrupted BMC work"),
    }
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
    let power_sync = power_sync::watch_power_states(state.clone(), state.config.power_sync_interval);
    let dhcp = {
        let (setup, store) = (state.config.dhcp.clone(), state.store.clone());
        async move {
            match setup {
                Some(setup) => dhcp::run(setup, store).await,
                None => std::future::pending().await,
            }
        }
    };
    let server = axum::serve(listener, router(state));
    tokio::select! {
        result = server => result.map_err(ServeError::Http),
        never = watcher => match never {},
        never = power_sync => match never {},
        error = dhcp => Err(ServeError::Dhcp(error)),
    }
}
