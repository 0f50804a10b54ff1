//! `ferric-controller serve ...`: runs the controller.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferric_controller::api::auth::ApiAuth;
use ferric_controller::bmc::BmcSettings;
use ferric_controller::dhcp::{AddressMode, DhcpConfig, DhcpSetup, IpxeBinaries, DEFAULT_IPXE_DIR};
use ferric_controller::{
    serve, Config, DEFAULT_CLEAN_CALLBACK_TIMEOUT_SECS, DEFAULT_DEPLOY_CALLBACK_TIMEOUT_SECS,
    DEFAULT_ERASE_DEVICES_METADATA_PRIORITY, DEFAULT_ERASE_DEVICES_PRIORITY, DEFAULT_HEARTBEAT_INTERVAL_SECS,
    DEFAULT_INSPECT_WAIT_TIMEOUT_SECS, DEFAULT_KERNEL_ARGS, DEFAULT_POWER_SYNC_INTERVAL_SECS,
    DEFAULT_POWER_SYNC_MAX_FAILURES,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Ferric controller: Ironic-compatible API, boot scripts and agent task dispatch")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Serve the API, the iPXE scripts and the ramdisk.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6385")]
    listen: String,
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "ferric.sqlite")]
    db: PathBuf,
    /// Base URL under which machines reach this controller.
    #[arg(long)]
    public_url: String,
    /// Directory with the ramdisk's `vmlinuz` and `initramfs`.
    #[arg(long)]
    ramdisk_dir: PathBuf,
    /// Seconds a node may wait in `wait call-back` without hearing from its agent.
    #[arg(long, default_value_t = DEFAULT_DEPLOY_CALLBACK_TIMEOUT_SECS)]
    deploy_callback_timeout: u64,
    /// Seconds a node may wait in `clean wait` without hearing from its agent.
    #[arg(long, default_value_t = DEFAULT_CLEAN_CALLBACK_TIMEOUT_SECS)]
    clean_callback_timeout: u64,
    /// Seconds a node may wait in `inspect wait` for its agent's inventory.
    #[arg(long, default_value_t = DEFAULT_INSPECT_WAIT_TIMEOUT_SECS)]
    inspect_wait_timeout: u64,
    /// Seconds between agent heartbeats.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_INTERVAL_SECS)]
    heartbeat_interval: u64,
    /// Extra kernel arguments of the ramdisk.
    #[arg(long, default_value = DEFAULT_KERNEL_ARGS)]
    kernel_args: String,
    /// API authentication, as Ironic's `auth_strategy` (the agent's endpoints use agent tokens).
    #[arg(long, value_enum, default_value_t = AuthStrategy::Noauth)]
    auth_strategy: AuthStrategy,
    /// Apache htpasswd file with bcrypt entries (`user:$2y$...`), for http_basic.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// File with one API bearer token per line, accepted alongside http_basic credentials.
    #[arg(long)]
    bearer_tokens: Option<PathBuf>,
    /// `resource_class` given to nodes created without one.
    #[arg(long)]
    default_resource_class: Option<String>,
    /// Seconds between reads of the power state of nodes with a BMC.
    #[arg(long, default_value_t = DEFAULT_POWER_SYNC_INTERVAL_SECS)]
    power_sync_interval: u64,
    /// Failed power state reads in a row before a node goes into maintenance.
    #[arg(long, default_value_t = DEFAULT_POWER_SYNC_MAX_FAILURES)]
    power_sync_max_failures: u32,
    /// Seconds a power action may take to show in the BMC's reported state.
    #[arg(long, default_value_t = BmcSettings::default().power_timeout.as_secs())]
    power_timeout: u64,
    /// Seconds one BMC call may take, retries included.
    #[arg(long, default_value_t = BmcSettings::default().command_timeout.as_secs())]
    bmc_command_timeout: u64,
    /// Milliseconds between two commands to one BMC.
    #[arg(long, default_value_t = BmcSettings::default().min_command_interval.as_millis() as u64)]
    bmc_min_command_interval_ms: u64,
    /// Run dnsmasq for DHCP and TFTP on this interface: only enrolled MACs get boot options.
    #[arg(long, requires = "dhcp_range")]
    dhcp_interface: Option<String>,
    /// Addresses to lease, `START,END,NETMASK`, or `NETWORK,proxy,NETMASK` next to another DHCP server.
    #[arg(long)]
    dhcp_range: Option<AddressMode>,
    /// Default gateway handed out with leases.
    #[arg(long)]
    dhcp_router: Option<Ipv4Addr>,
    /// DNS server handed out with leases (repeatable).
    #[arg(long)]
    dhcp_dns: Vec<Ipv4Addr>,
    /// Where dnsmasq's configuration, hosts, leases, log and TFTP root live.
    #[arg(long, default_value = "/var/lib/ferric/dhcp")]
    dhcp_state_dir: PathBuf,
    /// Directory with iPXE's undionly.kpxe and snponly.efi/ipxe.efi, served over TFTP to PXE-only NICs.
    #[arg(long, default_value = DEFAULT_IPXE_DIR)]
    ipxe_dir: PathBuf,
    /// Keep this hosts file of enrolled MACs for an operator-run dnsmasq (`dhcp-hostsfile=`), instead of running one.
    #[arg(long, conflicts_with = "dhcp_interface")]
    dhcp_hosts_file: Option<PathBuf>,
    /// The operator's dnsmasq pid file, to signal it when the hosts file changed.
    #[arg(long, requires = "dhcp_hosts_file")]
    dhcp_pid_file: Option<PathBuf>,
    /// Clean nodes with a BMC after undeploy and on provide (Ironic's `[conductor]automated_clean`);
    /// a node's `automated_clean` field overrides it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    automated_clean: bool,
    /// Priority of the `erase_devices` clean step in automated cleaning (0 disables it).
    #[arg(long, default_value_t = DEFAULT_ERASE_DEVICES_PRIORITY)]
    erase_devices_priority: u32,
    /// Priority of the `erase_devices_metadata` clean step in automated cleaning (0 disables it).
    #[arg(long, default_value_t = DEFAULT_ERASE_DEVICES_METADATA_PRIORITY)]
    erase_devices_metadata_priority: u32,
}

#[derive(Clone, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
enum AuthStrategy {
    /// No authentication, for local use.
    Noauth,
    /// HTTP basic (htpasswd) and/or bearer tokens.
    HttpBasic,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let Commands::Serve(args) = Cli::parse().command;
    let mut config = Config::new(args.db, &args.public_url, args.ramdisk_dir);
    config.deploy_callback_timeout = Duration::from_secs(args.deploy_callback_timeout);
    config.clean_callback_timeout = Duration::from_secs(args.clean_callback_timeout);
    config.inspect_wait_timeout = Duration::from_secs(args.inspect_wait_timeout);
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_interval);
    config.kernel_args = args.kernel_args;
    config.default_resource_class = args.default_resource_class;
    config.power_sync_interval = Duration::from_secs(args.power_sync_interval.max(1));
    config.power_sync_max_failures = args.power_sync_max_failures.max(1);
    config.automated_clean = args.automated_clean;
    config.erase_devices_priority = args.erase_devices_priority;
    config.erase_devices_metadata_priority = args.erase_devices_metadata_priority;
    config.bmc = BmcSettings {
        power_timeout: Duration::from_secs(args.power_timeout),
        command_timeout: Duration::from_secs(args.bmc_command_timeout),
        min_command_interval: Duration::from_millis(args.bmc_min_command_interval_ms),
    };
    config.auth = match args.auth_strategy {
        AuthStrategy::Noauth if args.htpasswd.is_some() || args.bearer_tokens.is_some() => {
            anyhow::bail!("--htpasswd and --bearer-tokens need --auth-strategy http_basic")
        }
        AuthStrategy::Noauth => ApiAuth::NoAuth,
        AuthStrategy::HttpBasic => ApiAuth::from_files(args.htpasswd.as_deref(), args.bearer_tokens.as_deref())
            .context("cannot load the API credentials")?,
    };
    config.dhcp = match (args.dhcp_interface, args.dhcp_range, args.dhcp_hosts_file) {
        (Some(interface), Some(range), _) => {
            let ipxe = IpxeBinaries::find(&args.ipxe_dir).context("cannot serve iPXE over TFTP")?;
            let mut dhcp = DhcpConfig::new(&interface, range, &config.public_url, ipxe, &args.dhcp_state_dir);
            dhcp.router = args.dhcp_router;
            dhcp.dns_servers = args.dhcp_dns;
            Some(DhcpSetup::Managed(dhcp))
        }
        (_, _, Some(hosts_file)) => Some(DhcpSetup::External { hosts_file, pid_file: args.dhcp_pid_file }),
        _ => None,
    };
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        config.conductor_name = hostname.trim().to_owned();
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    serve(config, listener).await.context("controller stopped")
}
