//! The agent's life in the ramdisk: look itself up, then heartbeat and run the tasks it is given.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use ferric_protocol::{Command, CommandResult, CommandStatus, Heartbeat, Inventory, LookupResponse, Task};

use crate::clean::{self, CleanEnv};
use crate::client::ControllerClient;
use crate::deploy::{self, DeployConfig};
use crate::inventory;
use crate::logtail::LogTail;
use crate::progress::ProgressTracker;

const LOOKUP_MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEARTBEAT_RETRY: Duration = Duration::from_secs(5);
/// After this many refused heartbeats in a row the agent looks itself up again.
const REFUSALS_BEFORE_RELOOKUP: u32 = 3;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub api_url: String,
    pub boot_mac: Option<String>,
    /// Root of the system to inventory (`/` in the ramdisk, a fixture tree in tests).
    pub root: PathBuf,
    /// Where the per-boot token is kept so a restarted agent can carry on (`/run/ferric`).
    pub state_dir: PathBuf,
    pub deploy: DeployConfig,
    /// Whether `reboot`/`power_off` act on the machine (only inside the Ferric ramdisk).
    pub power_actions: bool,
}

/// The state one heartbeat reports.
#[derive(Clone, Default)]
struct Shared {
    command: Arc<Mutex<Option<CommandResult>>>,
    progress: Arc<Mutex<Option<Arc<ProgressTracker>>>>,
    wake: Arc<Notify>,
}

impl Shared {
    fn command(&self) -> Option<CommandResult> {
        self.command.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_command(&self, result: CommandResult) {
        *self.command.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        self.wake.notify_one();
    }
}

/// Runs until a reboot or power-off task ends the boot. Errors are retried, never fatal.
pub async fn run(config: AgentConfig, log_tail: LogTail) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).build()?;
    let client = ControllerClient::new(http, &config.api_url);
    // Images may come from servers the controller does not know, with their own CA.
    let downloads = crate::download::http_client(&config.deploy.download)?;
    let shared = Shared::default();
    loop {
        let (node, token, interval) = lookup(&client, &config).await;
        tracing::info!(node = %node, "found my node; heartbeating every {interval:?}");
        heartbeat_loop(&client, &downloads, &config, &log_tail, &shared, &node, &token, interval).await;
    }
}

/// Looks the node up by MAC until the controller answers with it and a usable token.
async fn lookup(client: &ControllerClient, config: &AgentConfig) -> (String, String, Duration) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let macs = boot_mac_first(config);
        match client.lookup(&macs).await.map_err(anyhow::Error::from).and_then(|r| adopt_token(config, r)) {
            Ok(found) => return found,
            Err(e) => tracing::warn!("lookup by {} failed, retrying in {backoff:?}: {e:#}", macs.join(",")),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LOOKUP_MAX_BACKOFF);
    }
}

fn boot_mac_first(config: &AgentConfig) -> Vec<String> {
    let mut macs: Vec<String> = config.boot_mac.iter().cloned().collect();
    for interface in inventory::scan(&config.root, None).interfaces {
        if !macs.contains(&interface.mac_address) {
            macs.push(interface.mac_address);
        }
    }
    macs
}

/// The inventory sent with the first heartbeat. On the live system (root `/`) it includes what
/// only sockets and the BMC device tell (addresses, LLDP, BMC address), which takes a few seconds.
async fn gather_inventory(config: &AgentConfig) -> Inventory {
    let (root, boot_mac) = (config.root.clone(), config.boot_mac.clone());
    let gathered = tokio::task::spawn_blocking(move || {
        if root == Path::new("/") {
            inventory::collect(&root, boot_mac.as_deref(), &inventory::LiveOptions::default())
        } else {
            inventory::scan(&root, boot_mac.as_deref())
        }
    });
    match gathered.await {
        Ok(found) => found,
        Err(error) => {
            tracing::error!("gathering the inventory failed: {error}");
            inventory::scan(&config.root, config.boot_mac.as_deref())
        }
    }
}

/// Keeps a fresh token on disk, or reuses the saved one when the controller masks it (agent restart).
fn adopt_token(config: &AgentConfig, found: LookupResponse) -> anyhow::Result<(String, String, Duration)> {
    let path = config.state_dir.join("agent-token");
    let token = if found.config.agent_token == ferric_protocol::MASKED_TOKEN {
        std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "the controller already handed out this boot's token and none is saved at {}: {e}",
                path.display()
            )
        })?
    } else {
        std::fs::create_dir_all(&config.state_dir)?;
        std::fs::write(&path, &found.config.agent_token)?;
        found.config.agent_token
    };
    Ok((found.node.uuid, token, Duration::from_secs(found.config.heartbeat_interval.max(1))))
}

#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    client: &ControllerClient,
    http: &reqwest::Client,
    config: &AgentConfig,
    log_tail: &LogTail,
    shared: &Shared,
    node: &str,
    token: &str,
    mut interval: Duration,
) {
    let mut inventory = Some(gather_inventory(config).await);
    let mut refusals = 0;
    loop {
        let command = shared.command();
        let running = command.as_ref().is_some_and(|c| c.command_status == CommandStatus::Running);
        let heartbeat = Heartbeat {
            agent_token: token.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            command,
            progress: running
                .then(|| shared.progress.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.snapshot()))
                .flatten(),
            log_tail: log_tail.lines(),
            inventory: inventory.clone(),
        };
        let pause = match client.heartbeat(node, &heartbeat).await {
            Ok(response) => {
                inventory = None;
                refusals = 0;
                interval = Duration::from_secs(response.heartbeat_interval.max(1));
                if let Some(task) = response.task {
                    start(task, http, config, shared);
                }
                interval
            }
            Err(e) => {
                tracing::warn!("heartbeat failed: {e:#}");
                if e.is_refusal() {
                    refusals += 1;
                    if refusals >= REFUSALS_BEFORE_RELOOKUP {
                        return;
                    }
                }
                HEARTBEAT_RETRY.min(interval.max(Duration::from_secs(1)))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shared.wake.notified() => {}
        }
    }
}

/// Starts `task` unless it is the one already known (the controller resends until it hears back).
fn start(task: Task, http: &reqwest::Client, config: &AgentConfig, shared: &Shared) {
    if let Some(current) = shared.command() {
        if current.id == task.id {
            return;
        }
        if current.command_status == CommandStatus::Running {
            tracing::warn!(running = %current.id, refused = %task.id, "a task is running; ignoring the new one");
            return;
        }
    }
    tracing::info!(task = %task.id, command = task.command.name(), "starting task");
    let report = Report { id: task.id.clone(), command_name: task.command.name() };
    shared.set_command(report.result(CommandStatus::Running, None, None));
    match task.command {
        Command::WriteImage { image_info } => {
            let progress = Arc::new(ProgressTracker::default());
            *shared.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
            let (http, deploy, shared) = (http.clone(), config.deploy.clone(), shared.clone());
            tokio::spawn(async move {
                let outcome = deploy::write_image_task(&http, &image_info, &deploy, progress).await;
                shared.set_command(report.finish(outcome));
            });
        }
        Command::Reboot => power(config, shared, report.result(CommandStatus::Succeeded, None, None), Power::Reboot),
        Command::PowerOff => power(config, shared, report.result(CommandStatus::Succeeded, None, None), Power::Off),
        Command::ExecuteCleanStep { step, skip_block_devices } => {
            let progress = Arc::new(ProgressTracker::default());
            *shared.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
            let (env, shared) = (clean_env(config), shared.clone());
            tokio::spawn(async move {
                // Erasing blocks for minutes to hours: a blocking thread, so heartbeats keep going.
                let cleaned = tokio::task::spawn_blocking(move || {
                    clean::execute_clean_step(&step, &skip_block_devices, &env, &progress)
                        .map(|result| serde_json::to_value(result).unwrap_or(serde_json::Value::Null))
                })
                .await;
                shared.set_command(match cleaned {
                    Ok(outcome) => report.finish(outcome),
                    Err(stopped) => report.finish(Err::<serde_json::Value, _>(stopped)),
                });
            });
        }
    }
}

/// Cleaning touches the disks a deploy could: the inventory's in the ramdisk, only `--target-disk`
/// when one is given (outside the ramdisk the agent must not erase the machine it runs on).
fn clean_env(config: &AgentConfig) -> CleanEnv {
    let mut env = CleanEnv::new(&config.root);
    if let deploy::Disk::Fixed(path) = &config.deploy.disk {
        env.devices = Some(vec![path.clone()]);
    }
    env
}

/// Builds the IPA-shaped result objects of one task.
struct Report {
    id: String,
    command_name: &'static str,
}

impl Report {
    fn result(&self, status: CommandStatus, error: Option<String>, value: Option<serde_json::Value>) -> CommandResult {
        CommandResult {
            id: self.id.clone(),
            command_name: self.command_name.to_owned(),
            command_status: status,
            command_error: error,
            command_result: value,
        }
    }

    fn finish<E>(&self, outcome: Result<serde_json::Value, E>) -> CommandResult
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match outcome {
            Ok(value) => self.result(CommandStatus::Succeeded, None, Some(value)),
            Err(e) => {
                let reason = format!("{:#}", anyhow::Error::from(e));
                tracing::error!("task failed: {reason}");
                self.result(CommandStatus::Failed, Some(reason), None)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Power {
    Reboot,
    Off,
}

fn power(config: &AgentConfig, shared: &Shared, done: CommandResult, action: Power) {
    shared.set_command(done);
    if !config.power_actions {
        tracing::warn!("not running in the Ferric ramdisk: not performing {action:?}");
        return;
    }
    tracing::info!("flushing disks and performing {action:?}");
    nix::unistd::sync();
    let how = match action {
        Power::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        Power::Off => nix::sys::reboot::RebootMode::RB_POWER_OFF,
    };
    let Err(e) = nix::sys::reboot::reboot(how);
    tracing::error!("{action:?} failed: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::DownloadConfig;
    use crate::partition::BootMode;

    #[test]
    fn cleaning_reaches_only_the_target_disk_when_one_is_given() {
        let cases = [
            ("--target-disk", deploy::Disk::Fixed("/dev/loop7".into()), Some(vec![PathBuf::from("/dev/loop7")])),
            ("ramdisk: the inventory", deploy::Disk::Choose { root: "/".into() }, None),
        ];
        for (name, disk, devices) in cases {
            let config = AgentConfig {
                api_url: "http://127.0.0.1:1".into(),
                boot_mac: None,
                root: "/fixture".into(),
                state_dir: "/run/ferric".into(),
                deploy: DeployConfig {
                    disk,
                    download: DownloadConfig::default(),
                    booted: BootMode::Uefi,
                    configure_boot: false,
                },
                power_actions: false,
            };
            let env = clean_env(&config);
            assert_eq!((env.devices, env.root), (devices, PathBuf::from("/fixture")), "{name}");
        }
    }
}
