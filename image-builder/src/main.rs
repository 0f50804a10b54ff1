//! `image-builder build`: produces the Ferric ramdisk (vmlinuz, initramfs, manifest.json).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferric_image_builder::{build, default_tools, BuildOptions, KernelSource};

#[derive(Debug, Parser)]
#[command(version, about = "Builds the Ferric ramdisk: kernel + reproducible initramfs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build vmlinuz, initramfs and manifest.json into --out.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
#[group(id = "kernel", multiple = false)]
struct KernelArgs {
    /// A linux-image .deb to take the kernel and modules from.
    #[arg(long, value_name = "FILE")]
    kernel_deb: Option<PathBuf>,
    /// An apt package to download (metapackages are resolved) [default: linux-image-amd64].
    #[arg(long, value_name = "NAME")]
    kernel_package: Option<String>,
    /// Use the running kernel (/boot/vmlinuz-$(uname -r), /lib/modules/$(uname -r)).
    #[arg(long)]
    host_kernel: bool,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    kernel: KernelArgs,
    /// The agent binary, installed as /usr/bin/ferric-agent.
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// The init binary, installed as /init.
    #[arg(long, value_name = "PATH")]
    init: PathBuf,
    /// Where downloaded kernel packages are kept.
    #[arg(long, value_name = "DIR", default_value = ".cache/kernel")]
    cache: PathBuf,
    /// Additional kernel modules to include (repeatable).
    #[arg(long = "extra-module", value_name = "NAME", num_args = 1..)]
    extra_modules: Vec<String>,
    /// Where firmware declared by the modules is looked up.
    #[arg(long, value_name = "DIR", default_value = "/lib/firmware")]
    firmware_dir: PathBuf,
    /// mtime of every initramfs entry.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    /// PEM CA certificates the agent trusts for HTTPS image downloads, installed as /etc/ferric/ca-bundle.pem.
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// A host program the agent runs, installed in /usr/sbin with its shared libraries and its other names in
    /// its host directory as symlinks (repeatable; replaces the default) [default: those of mke2fs, for
    /// ext2/3/4 ephemeral partitions, and hdparm, for ATA secure erase, that the host has].
    #[arg(long = "tool", value_name = "PATH")]
    tools: Vec<PathBuf>,
    /// Install no tools, not even the default ones.
    #[arg(long, conflicts_with = "tools")]
    no_tools: bool,
}

impl KernelArgs {
    fn source(self) -> KernelSource {
        match (self.kernel_deb, self.kernel_package, self.host_kernel) {
            (Some(deb), _, _) => KernelSource::Deb(deb),
            (_, Some(package), _) => KernelSource::Package(package),
            (_, _, true) => KernelSource::Host,
            _ => KernelSource::Package("linux-image-amd64".to_string()),
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let Command::Build(args) = Cli::parse().command;
    let opts = BuildOptions {
        out_dir: args.out,
        kernel: args.kernel.source(),
        agent: args.agent,
        init: args.init,
        cache_dir: args.cache,
        extra_modules: args.extra_modules,
        firmware_dir: args.firmware_dir,
        source_date_epoch: args.source_date_epoch,
        ca_bundle: args.ca_bundle,
        tools: match (args.no_tools, args.tools.is_empty()) {
            (true, _) => Vec::new(),
            (false, true) => default_tools(),
            (false, false) => args.tools,
        },
    };
    let started = Instant::now();
    let mut progress = |line: &str| eprintln!("[{:6.1}s] {line}", started.elapsed().as_secs_f64());
    let report =
        build(&opts, &mut progress).with_context(|| format!("building the ramdisk into {}", opts.out_dir.display()))?;
    print!("{}", report.summary());
    Ok(())
}
