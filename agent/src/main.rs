use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use ferric_agent::agent::{self, AgentConfig};
use ferric_agent::deploy::{DeployConfig, Disk};
use ferric_agent::download::DownloadConfig;
use ferric_agent::logtail::LogTail;
use ferric_agent::partition::BootMode;
use ferric_agent::{in_ramdisk, inventory, root_disk};
use ferric_protocol::CA_BUNDLE_PATH;

/// Ferric's in-band agent.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Look this node up at the controller and work through the tasks it hands out.
    Run {
        /// Controller base URL (the ramdisk's `ferric.api=` parameter).
        #[arg(long)]
        api_url: String,
        /// MAC of the NIC the node booted from.
        #[arg(long)]
        boot_mac: Option<String>,
        /// Write images here instead of the disk chosen from the inventory (needed outside the ramdisk).
        #[arg(long)]
        target_disk: Option<PathBuf>,
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, default_value = "/run/ferric")]
        state_dir: PathBuf,
        #[command(flatten)]
        download: DownloadArgs,
    },
    /// Print what the agent sees, without changing anything.
    Debug {
        #[command(subcommand)]
        what: DebugCmd,
    },
}

/// How images are downloaded.
#[derive(clap::Args)]
struct DownloadArgs {
    /// PEM bundle of extra CAs trusted for HTTPS image servers (image-builder --ca-bundle puts one
    /// at /etc/ferric/ca-bundle.pem, used when present).
    #[arg(long, env = "FERRIC_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,
    /// Tries per URL; each resumes where the last one stopped.
    #[arg(long, default_value_t = DownloadConfig::default().attempts)]
    download_attempts: u32,
    /// Seconds without a byte from the image server before the download is retried.
    #[arg(long, default_value_t = DownloadConfig::default().read_timeout.as_secs())]
    download_read_timeout: u64,
}

impl DownloadArgs {
    fn config(self) -> DownloadConfig {
        let default_bundle = Path::new(CA_BUNDLE_PATH);
        DownloadConfig {
            ca_bundle: self.ca_bundle.or_else(|| default_bundle.exists().then(|| default_bundle.to_owned())),
            attempts: self.download_attempts.max(1),
            read_timeout: Duration::from_secs(self.download_read_timeout.max(1)),
            ..DownloadConfig::default()
        }
    }
}

#[derive(Subcommand)]
enum DebugCmd {
    /// The hardware inventory as JSON. With root `/` it includes the live-only data (addresses, LLDP,
    /// BMC address); any other root (a fixture tree) is only scanned.
    Inventory {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// MAC of the NIC the node booted from (`boot.pxe_interface`).
        #[arg(long)]
        boot_mac: Option<String>,
        /// Seconds to listen for LLDP neighbours on the interfaces with carrier.
        #[arg(long, default_value_t = inventory::LiveOptions::default().lldp_window.as_secs())]
        lldp_seconds: u64,
    },
    /// The disk a deploy would write to, as JSON; or why there is none, listing the disks seen.
    RootDisk {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Root-device hints as JSON (Ironic's `root_device`), e.g. '{"serial": "S123", "size": ">= 100"}'.
        #[arg(long)]
        hints: Option<String>,
        /// `skip_block_devices` as a JSON list of hint dicts, e.g. '[{"name": "/dev/sda"}]'.
        #[arg(long)]
        skip: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_tail = LogTail::default();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
        .with(log_tail.layer())
        .init();
    match cli.command {
        Cmd::Run { api_url, boot_mac, target_disk, root, state_dir, download } => {
            let boot_mac = match boot_mac {
                Some(mac) => Some(ferric_protocol::normalize_mac(&mac).context("--boot-mac is not a MAC address")?),
                None => None,
            };
            let disk = match target_disk {
                Some(path) => Disk::Fixed(path),
                None if in_ramdisk() => Disk::Choose { root: root.clone() },
                None => bail!("outside the Ferric ramdisk the agent only writes to an explicit --target-disk"),
            };
            let booted = if root.join("sys/firmware/efi").is_dir() { BootMode::Uefi } else { BootMode::Bios };
            let deploy = DeployConfig { disk, download: download.config(), booted, configure_boot: in_ramdisk() };
            let config = AgentConfig { api_url, boot_mac, root, state_dir, deploy, power_actions: in_ramdisk() };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(agent::run(config, log_tail))
        }
        Cmd::Debug { what: DebugCmd::Inventory { root, boot_mac, lldp_seconds } } => {
            let boot_mac = match boot_mac {
                Some(mac) => Some(ferric_protocol::normalize_mac(&mac).context("--boot-mac is not a MAC address")?),
                None => None,
            };
            let inventory = if root == Path::new("/") {
                let options =
                    inventory::LiveOptions { lldp_window: Duration::from_secs(lldp_seconds), ..Default::default() };
                inventory::collect(&root, boot_mac.as_deref(), &options)
            } else {
                inventory::scan(&root, boot_mac.as_deref())
            };
            println!("{}", serde_json::to_string_pretty(&inventory)?);
            Ok(())
        }
        Cmd::Debug { what: DebugCmd::RootDisk { root, hints, skip } } => {
            let hints: Option<serde_json::Value> =
                hints.map(|h| serde_json::from_str(&h)).transpose().context("--hints is not JSON")?;
            let skip: Vec<serde_json::Value> = skip
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .context("--skip is not a JSON list")?
                .unwrap_or_default();
            // One look, as a deploy's first: a debug command does not wait for late disks.
            let once = root_disk::DiskWait { attempts: 1, delay: Duration::ZERO };
            let disk = root_disk::wait_and_choose(&root, hints.as_ref(), &skip, &once)?;
            println!("{}", serde_json::to_string_pretty(&disk)?);
            Ok(())
        }
    }
}
