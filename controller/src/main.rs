//! `ferric-controller serve ...`: runs the controller.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferric_controller::api::auth::ApiAuth;
use ferric_controller::{
    serve, Config, DEFAULT_CLEAN_CALLBACK_TIMEOUT_SECS, DEFAULT_DEPLOY_CALLBACK_TIMEOUT_SECS,
    DEFAULT_HEARTBEAT_INTERVAL_SECS, DEFAULT_INSPECT_WAIT_TIMEOUT_SECS, DEFAULT_KERNEL_ARGS,
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
    config.auth = match args.auth_strategy {
        AuthStrategy::Noauth if args.htpasswd.is_some() || args.bearer_tokens.is_some() => {
            anyhow::bail!("--htpasswd and --bearer-tokens need --auth-strategy http_basic")
        }
        AuthStrategy::Noauth => ApiAuth::NoAuth,
        AuthStrategy::HttpBasic => ApiAuth::from_files(args.htpasswd.as_deref(), args.bearer_tokens.as_deref())
            .context("cannot load the API credentials")?,
    };
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        config.conductor_name = hostname.trim().to_owned();
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    serve(config, listener).await.context("controller stopped")
}
