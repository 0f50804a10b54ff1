//! `ferric`: the operator CLI for a Ferric controller.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferric_controller::cli::client::{Auth, Client, DEFAULT_URL};
use ferric_controller::cli::{self, Watch};

#[derive(Parser)]
#[command(version, about = "Operate a Ferric controller: enroll, list, deploy and watch nodes")]
struct Args {
    /// The controller's API.
    #[arg(long, env = "FERRIC_URL", default_value = DEFAULT_URL, global = true)]
    url: String,
    /// User for HTTP basic authentication.
    #[arg(long, env = "FERRIC_USER", global = true, requires = "password")]
    user: Option<String>,
    /// Password for HTTP basic authentication.
    #[arg(long, env = "FERRIC_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Bearer token.
    #[arg(long, env = "FERRIC_TOKEN", global = true, hide_env_values = true, conflicts_with = "user")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll the nodes of a YAML or JSON file, with their ports, and make them available.
    Enroll {
        file: PathBuf,
        /// Leave the nodes in `enroll` instead of moving them to `available`.
        #[arg(long)]
        no_provide: bool,
    },
    /// List the nodes.
    List,
    /// Show a node's state, last error and deploy progress.
    Show { node: String },
    /// Deploy an image to a node.
    Deploy {
        node: String,
        /// URL of the whole-disk image.
        #[arg(long)]
        image: String,
        /// Hex digest of the image (sha256 or sha512).
        #[arg(long)]
        checksum: String,
        /// Follow the deploy until it ends, with a progress bar.
        #[arg(long)]
        watch: bool,
    },
    /// A node's history of state changes and errors.
    Events { node: String },
    /// The last lines logged by a node's agent.
    Logs { node: String },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let auth = match (args.user, args.password, args.token) {
        (Some(user), password, _) => Auth::Basic { user, password: password.unwrap_or_default() },
        (None, _, Some(token)) => Auth::Bearer(token),
        _ => Auth::None,
    };
    let client = Client::new(&args.url, auth)?;
    let stdout = std::io::stdout();
    let redraw = stdout.is_terminal();
    let out = &mut stdout.lock();
    match args.command {
        Command::Enroll { file, no_provide } => {
            cli::enroll(&client, &file, !no_provide, out).with_context(|| format!("enrolling {}", file.display()))
        }
        Command::List => cli::list(&client, out).context("listing nodes"),
        Command::Show { node } => cli::show(&client, &node, out).with_context(|| format!("showing {node}")),
        Command::Deploy { node, image, checksum, watch } => {
            let watch = watch.then_some(Watch { interval: Duration::from_secs(1), redraw });
            cli::deploy(&client, &node, &image, &checksum, watch, out).with_context(|| format!("deploying {node}"))
        }
        Command::Events { node } => cli::events(&client, &node, out).with_context(|| format!("events of {node}")),
        Command::Logs { node } => cli::logs(&client, &node, out).with_context(|| format!("agent log of {node}")),
    }
}
