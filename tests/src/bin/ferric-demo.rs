//! Ferric demo: deploys a whole-disk image to a blank UEFI QEMU VM through the real controller, agent and
//! ramdisk, and prints the timeline. Needs `cargo build --release --workspace --bins` first
//! (scripts/demo.sh does it).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferric_tests::demo::{self, DemoOptions};

#[derive(Debug, Parser)]
#[command(about = "Deploy a test OS to a UEFI QEMU VM with Ferric and show the timeline")]
struct Args {
    /// MAC address of the VM's boot NIC.
    #[arg(long, default_value = "52:54:00:fe:00:10")]
    mac: String,
    /// Give up after this many minutes.
    #[arg(long, default_value_t = 15)]
    timeout_minutes: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let options = DemoOptions { mac: args.mac, budget: Duration::from_secs(args.timeout_minutes * 60) };
    match demo::run(&options).map_err(anyhow::Error::new) {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
