//! DHCP and TFTP for network boot, through dnsmasq: the configuration (a pure function, checked against golden
//! files), the hosts file naming the enrolled MACs, and a manager that runs dnsmasq itself.
//!
//! As Ironic's dnsmasq PXE filter: only MACs in the hosts file (ports with `pxe_enabled`) are answered
//! (`dhcp-ignore=tag:!known`), so the controller never hands boot options to machines it does not manage.
//! NICs that only do PXE get iPXE over TFTP (`undionly.kpxe` for BIOS, `snponly.efi`/`ipxe.efi` for UEFI);
//! iPXE, recognised by its user class, gets the controller's `boot.ipxe` over HTTP.
//!
//! The hosts file is a `dhcp-hostsfile` that dnsmasq re-reads on SIGHUP, rather than a `dhcp-hostsdir` watched
//! with inotify: dnsmasq only ever *adds* hosts read through inotify (a deleted port would keep getting boot
//! options until dnsmasq restarts), while SIGHUP replaces the whole set, and a rename-then-signal has no window
//! in which dnsmasq could read a half-written file.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fs::{File, Permissions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::error::error_chain;
use crate::model::Port;
use crate::store::{Store, StoreError};

/// Where Debian's `ipxe` package installs its binaries.
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";
/// Lease time in range mode, unless configured otherwise.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);
/// How often [`keep_hosts_in_sync`] compares the enrolled MACs with the hosts file, unless configured otherwise.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(3);

const DNSMASQ: &str = "dnsmasq";
/// How long dnsmasq may take to bind its sockets and write its pid file.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting or running dnsmasq is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const EXIT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How much of dnsmasq's log an error quotes.
const LOG_TAIL_LINES: usize = 20;
/// Readable by dnsmasq after it dropped root (to `nobody` by default), as it re-reads the hosts and serves TFTP.
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no iPXE binary for BIOS machines at {} (Debian package ipxe)", path.display())]
    MissingIpxe { path: PathBuf },
    #[error("dnsmasq's pid file {} holds {content:?}, not a process id", path.display())]
    InvalidPidFile { path: PathBuf, content: String },
    #[error("cannot make dnsmasq re-read {}", hosts_file.display())]
    Reload {
        hosts_file: PathBuf,
        #[source]
        source: ferric_runner::CommandError,
    },
    #[error("cannot start dnsmasq")]
    Spawn(#[source] ferric_runner::CommandError),
    #[error("dnsmasq exited ({status}); its log ends with:\n{log_tail}")]
    Exited { status: String, log_tail: String },
    #[error("dnsmasq did not write its pid file {} within {waited:?}; its log ends with:\n{log_tail}", pid_file.display())]
    StartTimeout { pid_file: PathBuf, waited: Duration, log_tail: String },
    #[error("cannot list the enrolled ports")]
    Store(#[from] StoreError),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DhcpError + 'a {
    move |source| DhcpError::Io { action, path: path.to_owned(), source }
}

/// Which addresses machines get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressMode {
    /// dnsmasq is the network's DHCP server and leases addresses from `start` to `end`.
    Range { start: Ipv4Addr, end: Ipv4Addr, netmask: Ipv4Addr },
    /// Another DHCP server leases the addresses on `network`: dnsmasq only adds the boot options (proxy DHCP).
    Proxy { network: Ipv4Addr, netmask: Ipv4Addr },
}

#[derive(Debug, thiserror::Error)]
#[error("invalid DHCP range {text:?}: {reason} (expected START,END,NETMASK or NETWORK,proxy,NETMASK)")]
pub struct InvalidAddressMode {
    pub text: String,
    pub reason: String,
}

/// dnsmasq's own `dhcp-range` syntax, e.g. `10.0.0.100,10.0.0.200,255.255.255.0` or `10.0.0.0,proxy,255.255.255.0`.
impl FromStr for AddressMode {
    type Err = InvalidAddressMode;

    fn from_str(text: &str) -> Result<AddressMode, InvalidAddressMode> {
        let invalid = |reason: String| InvalidAddressMode { text: text.to_owned(), reason };
        let address = |part: &str| {
            part.trim().parse::<Ipv4Addr>().map_err(|_| invalid(format!("{:?} is not an IPv4 address", part.trim())))
        };
        let parts: Vec<&str> = text.split(',').collect();
        let [first, second, netmask] = parts[..] else {
            return Err(invalid(format!("{} parts instead of 3", parts.len())));
        };
        let netmask = address(netmask)?;
        if (!u32::from(netmask)).wrapping_add(1) & !u32::from(netmask) != 0 {
            return Err(invalid(format!("{netmask} is not a netmask")));
        }
        if second.trim() == "proxy" {
            return Ok(AddressMode::Proxy { network: address(first)?, netmask });
        }
        let (start, end) = (address(first)?, address(second)?);
        if start > end {
            return Err(invalid(format!("{start} comes after {end}")));
        }
        Ok(AddressMode::Range { start, end, netmask })
    }
}

/// The iPXE binaries served over TFTP to NICs that only do PXE, under their file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpxeBinaries {
    /// For BIOS machines: `undionly.kpxe`, which drives the NIC through its PXE ROM's UNDI interface.
    pub bios: PathBuf,
    /// For UEFI machines; without it they get no boot file until their firmware runs iPXE itself.
    pub uefi: Option<PathBuf>,
}

impl IpxeBinaries {
    /// `undionly.kpxe` and, for UEFI, `snponly.efi` (the firmware's own NIC driver, as Ironic's default) or
    /// else `ipxe.efi`, from `dir` (usually [`DEFAULT_IPXE_DIR`]).
    pub fn find(dir: &Path) -> Result<IpxeBinaries, DhcpError> {
        let bios = dir.join("undionly.kpxe");
        if !bios.is_file() {
            return Err(DhcpError::MissingIpxe { path: bios });
        }
        let uefi = ["snponly.efi", "ipxe.efi"].into_iter().map(|name| dir.join(name)).find(|path| path.is_file());
        Ok(IpxeBinaries { bios, uefi })
    }

    fn bios_name(&self) -> String {
        file_name(&self.bios)
    }

    fn uefi_name(&self) -> Option<String> {
        self.uefi.as_deref().map(file_name)
    }
}

/// The last component of `path`, e.g. the name a binary is served under.
fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned()
}

/// What dnsmasq serves, and where it keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The interface on the machines' network (dnsmasq answers nowhere else).
    pub interface: String,
    pub addresses: AddressMode,
    /// Only in range mode: the proxy leases no addresses.
    pub lease_time: Duration,
    /// Default gateway handed out in range mode; without it dnsmasq names its own address.
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out; none by default, as this dnsmasq serves no DNS.
    pub dns_servers: Vec<Ipv4Addr>,
    /// The controller's `{public_url}/boot.ipxe`, handed to iPXE.
    pub boot_script_url: String,
    pub ipxe: IpxeBinaries,
    /// Holds the configuration, hosts, lease, pid and log files and the TFTP root.
    pub state_dir: PathBuf,
    /// The user dnsmasq runs as once it bound its sockets; dnsmasq's default (`nobody`) if `None`.
    pub user: Option<String>,
}

impl DhcpConfig {
    /// A configuration with the default lease time and no router, DNS servers or user.
    pub fn new(
        interface: &str,
        addresses: AddressMode,
        public_url: &str,
        ipxe: IpxeBinaries,
        state_dir: &Path,
    ) -> DhcpConfig {
        DhcpConfig {
            interface: interface.to_owned(),
            addresses,
            lease_time: DEFAULT_LEASE_TIME,
            router: None,
            dns_servers: Vec::new(),
            boot_script_url: format!("{}/boot.ipxe", public_url.trim_end_matches('/')),
            ipxe,
            state_dir: state_dir.to_owned(),
            user: None,
        }
    }

    pub fn conf_file(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.conf")
    }

    pub fn hosts_file(&self) -> PathBuf {
        self.state_dir.join("hosts")
    }

    pub fn lease_file(&self) -> PathBuf {
        self.state_dir.join("leases")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.pid")
    }

    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.log")
    }

    pub fn tftp_root(&self) -> PathBuf {
        self.state_dir.join("tftp")
    }
}

/// dnsmasq's configuration file for `config`.
pub fn render(config: &DhcpConfig) -> String {
    let mut text = String::new();
    let mut line = |line: &str| {
        text.push_str(line);
        text.push('\n');
    };
    line("# Written by the Ferric controller at every start: edit its settings, not this file.");
    line("# DHCP and TFTP only: no DNS.");
    line("port=0");
    line(&format!("interface={}", config.interface));
    line("bind-interfaces");
    line("log-dhcp");
    match config.addresses {
        AddressMode::Range { start, end, netmask } => {
            line(&format!("dhcp-range={start},{end},{netmask},{}", config.lease_time.as_secs()));
            if let Some(router) = config.router {
                line(&format!("dhcp-option=option:router,{router}"));
            }
        }
        AddressMode::Proxy { network, netmask } => {
            line("# Another server leases the addresses: only boot options are added (proxy DHCP).");
            line(&format!("dhcp-range={network},proxy,{netmask}"));
        }
    }
    if !config.dns_servers.is_empty() {
        let servers: Vec<String> = config.dns_servers.iter().map(Ipv4Addr::to_string).collect();
        line(&format!("dhcp-option=option:dns-server,{}", servers.join(",")));
    }
    if let Some(user) = &config.user {
        line(&format!("user={user}"));
    }
    line(&format!("dhcp-leasefile={}", config.lease_file().display()));
    line(&format!("pid-file={}", config.pid_file().display()));
    line("# The enrolled MACs, rewritten by the controller and re-read on SIGHUP; everyone else gets no answer.");
    line(&format!("dhcp-hostsfile={}", config.hosts_file().display()));
    line("dhcp-ignore=tag:!known");
    line("# iPXE names itself in its user class and sends its feature option 175.");
    line("dhcp-userclass=set:ipxe,iPXE");
    line("dhcp-match=set:ipxe,175");
    let bios = config.ipxe.bios_name();
    let uefi = config.ipxe.uefi_name();
    let url = &config.boot_script_url;
    match config.addresses {
        AddressMode::Range { .. } => {
            line("# iPXE fetches the controller's script; PXE firmware first gets iPXE over TFTP.");
            line(&format!("dhcp-boot=tag:ipxe,{url}"));
            match &uefi {
                Some(uefi) => {
                    line("# Client architectures 7 and 9 are x86-64 UEFI (RFC 4578 and its errata).");
                    line("dhcp-match=set:efi64,option:client-arch,7");
                    line("dhcp-match=set:efi64,option:client-arch,9");
                    line(&format!("dhcp-boot=tag:!ipxe,tag:efi64,{uefi}"));
                    line(&format!("dhcp-boot=tag:!ipxe,tag:!efi64,{bios}"));
                }
                None => line(&format!("dhcp-boot=tag:!ipxe,{bios}")),
            }
        }
        AddressMode::Proxy { .. } => {
            // Proxy DHCP answers PXE clients from the PXE services; dnsmasq boots a single matching one directly.
            line("# iPXE fetches the controller's script; PXE firmware first gets iPXE over TFTP.");
            let mut services = vec![("x86PC", &bios)];
            if let Some(uefi) = &uefi {
                services.extend([("X86-64_EFI", uefi), ("BC_EFI", uefi)]);
            }
            for (architecture, binary) in services {
                line(&format!("pxe-service=tag:!ipxe,{architecture},\"Ferric: iPXE\",{binary}"));
                line(&format!("pxe-service=tag:ipxe,{architecture},\"Ferric: boot script\",{url}"));
            }
        }
    }
    line("enable-tftp");
    line(&format!("tftp-root={}", config.tftp_root().display()));
    text
}

/// The MACs that get boot options: those of ports with `pxe_enabled`.
pub fn enrolled_macs(ports: &[Port]) -> BTreeSet<String> {
    ports.iter().filter(|port| port.pxe_enabled).map(|port| port.address.to_ascii_lowercase()).collect()
}

/// The hosts file for `macs`: one MAC a line, in order. Listed hosts get dnsmasq's `known` tag, which an operator's
/// own dnsmasq can condition boot options on. No `set:` tags: dnsmasq 2.90 crashes on SIGHUP when a hosts file
/// entry with one has a lease (seen with the real test).
pub fn hosts_file_text(macs: &BTreeSet<String>) -> String {
    macs.iter().map(|mac| format!("{mac}\n")).collect()
}

/// Replaces `path` with `contents` in one rename, readable by everyone, so a reader never sees half a file.
/// The temporary file starts with a dot, which dnsmasq's inotify watch on a `dhcp-hostsdir` skips.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DhcpError> {
    let temporary = temporary_path(path);
    std::fs::write(&temporary, contents).map_err(io_error("write", &temporary))?;
    finish_atomic_write(&temporary, path)
}

fn temporary_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(".{}.tmp", file_name(path)))
}

fn finish_atomic_write(temporary: &Path, path: &Path) -> Result<(), DhcpError> {
    std::fs::set_permissions(temporary, Permissions::from_mode(FILE_MODE))
        .map_err(io_error("set the permissions of", temporary))?;
    std::fs::rename(temporary, path).map_err(io_error("rename a temporary file to", path))
}

/// The hosts file and, when known, the dnsmasq that reads it.
#[derive(Debug)]
pub struct HostsFile {
    path: PathBuf,
    /// dnsmasq's pid file: its process gets SIGHUP after each rewrite.
    dnsmasq_pid_file: Option<PathBuf>,
    /// The MACs in the file, once written (and dnsmasq told) by this value.
    written: Option<BTreeSet<String>>,
}

impl HostsFile {
    /// Without `dnsmasq_pid_file` (an operator's dnsmasq) the file is only written: that dnsmasq reads it through
    /// `dhcp-hostsdir` pointed at its directory (new MACs are picked up at once, removals at its next SIGHUP), or
    /// through `dhcp-hostsfile` and a reload by the operator.
    pub fn new(path: PathBuf, dnsmasq_pid_file: Option<PathBuf>) -> HostsFile {
        HostsFile { path, dnsmasq_pid_file, written: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `macs` and has dnsmasq re-read them, unless that is what this value last wrote. Returns whether
    /// it wrote. After a failure the next call writes again.
    pub fn update(&mut self, macs: BTreeSet<String>) -> Result<bool, DhcpError> {
        if self.written.as_ref() == Some(&macs) {
            return Ok(false);
        }
        self.written = None;
        write_atomically(&self.path, hosts_file_text(&macs).as_bytes())?;
        if let Some(pid_file) = &self.dnsmasq_pid_file {
            let pid = read_pid(pid_file)?;
            let mut kill = Command::new("kill");
            kill.args(["-s", "HUP", &pid.to_string()]);
            ferric_runner::run("make dnsmasq re-read its hosts", &mut kill)
                .map_err(|source| DhcpError::Reload { hosts_file: self.path.clone(), source })?;
        }
        tracing::info!(path = %self.path.display(), enrolled = macs.len(), "DHCP hosts updated");
        self.written = Some(macs);
        Ok(true)
    }
}

fn read_pid(pid_file: &Path) -> Result<u32, DhcpError> {
    let content = std::fs::read_to_string(pid_file).map_err(io_error("read dnsmasq's pid file", pid_file))?;
    content
        .trim()
        .parse()
        .map_err(|_| DhcpError::InvalidPidFile { path: pid_file.to_owned(), content: content.clone() })
}

/// One round of [`keep_hosts_in_sync`]: reads the ports and updates `hosts` if the enrolled MACs changed.
pub async fn sync_hosts(store: &Store, hosts: &mut HostsFile) -> Result<bool, DhcpError> {
    let ports = store.run(|tx| tx.list_ports(None, None)).await?;
    hosts.update(enrolled_macs(&ports))
}

/// Keeps `hosts` naming the enrolled MACs, checking the store every `every`; failures are logged and retried.
pub async fn keep_hosts_in_sync(store: Store, mut hosts: HostsFile, every: Duration) -> Infallible {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = sync_hosts(&store, &mut hosts).await {
            tracing::error!(error = %error_chain(&error), "updating the DHCP hosts failed");
        }
    }
}

/// How the controller takes part in DHCP on the machines' network.
#[derive(Debug, Clone)]
pub enum DhcpSetup {
    /// The controller runs dnsmasq itself with this configuration.
    Managed(DhcpConfig),
    /// The operator runs dnsmasq; the controller keeps its hosts file, and signals it when a pid file is given.
    External { hosts_file: PathBuf, pid_file: Option<PathBuf> },
}

/// Runs the DHCP side of the controller until it fails: dnsmasq (if managed) and the hosts file sync.
pub async fn run(setup: DhcpSetup, store: Store) -> DhcpError {
    match setup {
        DhcpSetup::Managed(config) => {
            let mut dnsmasq = match DnsmasqManager::start(config, &[]).await {
                Ok(dnsmasq) => dnsmasq,
                Err(error) => return error,
            };
            let hosts = keep_hosts_in_sync(store, dnsmasq.hosts_file(), DEFAULT_SYNC_INTERVAL);
            tokio::select! {
                never = hosts => match never {},
                error = dnsmasq.exited() => error,
            }
        }
        DhcpSetup::External { hosts_file, pid_file } => {
            match keep_hosts_in_sync(store, HostsFile::new(hosts_file, pid_file), DEFAULT_SYNC_INTERVAL).await {}
        }
    }
}

/// dnsmasq run by the controller, stopped when this is dropped.
#[derive(Debug)]
pub struct DnsmasqManager {
    config: DhcpConfig,
    child: Child,
}

impl DnsmasqManager {
    /// Writes the configuration, copies the iPXE binaries into the TFTP root, creates an empty hosts file if
    /// there is none, and starts dnsmasq behind `command_prefix` (e.g. `ip netns exec NS`; empty to run it
    /// directly). Returns once dnsmasq serves, i.e. wrote its pid file.
    pub async fn start(config: DhcpConfig, command_prefix: &[String]) -> Result<DnsmasqManager, DhcpError> {
        prepare_state_dir(&config)?;
        let log_file = config.log_file();
        let log = File::create(&log_file).map_err(io_error("create", &log_file))?;
        let log_for_stdout = log.try_clone().map_err(io_error("reopen", &log_file))?;
        let (program, prefix_args) = match command_prefix.split_first() {
            Some((program, args)) => (program.as_str(), args),
            None => (DNSMASQ, &[][..]),
        };
        let mut command = Command::new(program);
        if !command_prefix.is_empty() {
            command.args(prefix_args).arg(DNSMASQ);
        }
        command
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", config.conf_file().display()))
            // To stderr, which is the log file: it also catches what dnsmasq says before it opens any log.
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log);
        let child = ferric_runner::spawn("start dnsmasq for DHCP and TFTP", &mut command).map_err(DhcpError::Spawn)?;
        let mut manager = DnsmasqManager { config, child };
        manager.wait_until_serving().await?;
        tracing::info!(interface = %manager.config.interface, "dnsmasq serves DHCP and TFTP");
        Ok(manager)
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// The hosts file of this dnsmasq, signalled after each change: hand it to [`keep_hosts_in_sync`].
    pub fn hosts_file(&self) -> HostsFile {
        HostsFile::new(self.config.hosts_file(), Some(self.config.pid_file()))
    }

    /// The last lines of dnsmasq's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.config.log_file()).unwrap_or_default();
        ferric_runner::tail_lines(&log, LOG_TAIL_LINES)
    }

    /// Resolves when dnsmasq exits, with why.
    pub async fn exited(&mut self) -> DhcpError {
        loop {
            if let Some(error) = self.exit_error() {
                return error;
            }
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
    }

    fn exit_error(&mut self) -> Option<DhcpError> {
        let status = match self.child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => status.to_string(),
            Err(error) => format!("cannot wait for it: {error}"),
        };
        Some(DhcpError::Exited { status, log_tail: self.log_tail() })
    }

    async fn wait_until_serving(&mut self) -> Result<(), DhcpError> {
        let pid_file = self.config.pid_file();
        let started = Instant::now();
        loop {
            if let Some(error) = self.exit_error() {
                return Err(error);
            }
            if read_pid(&pid_file).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(DhcpError::StartTimeout { pid_file, waited: START_TIMEOUT, log_tail: self.log_tail() });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for DnsmasqManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state directory as dnsmasq needs it at start; a stale pid file is removed so that a new one means
/// this dnsmasq is serving.
fn prepare_state_dir(config: &DhcpConfig) -> Result<(), DhcpError> {
    let tftp_root = config.tftp_root();
    for dir in [&config.state_dir, &tftp_root] {
        std::fs::create_dir_all(dir).map_err(io_error("create the directory", dir))?;
        std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
            .map_err(io_error("set the permissions of", dir))?;
    }
    for binary in std::iter::once(&config.ipxe.bios).chain(&config.ipxe.uefi) {
        let target = tftp_root.join(file_name(binary));
        let temporary = temporary_path(&target);
        std::fs::copy(binary, &temporary).map_err(io_error("copy the iPXE binary", binary))?;
        finish_atomic_write(&temporary, &target)?;
    }
    write_atomically(&config.conf_file(), render(config).as_bytes())?;
    let hosts_file = config.hosts_file();
    if !hosts_file.exists() {
        write_atomically(&hosts_file, b"")?;
    }
    let pid_file = config.pid_file();
    match std::fs::remove_file(&pid_file) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error("remove", &pid_file)(error)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(address: &str, pxe_enabled: bool) -> Port {
        Port {
            uuid: format!("port-{address}"),
            address: address.to_owned(),
            node_uuid: "node".into(),
            pxe_enabled,
            extra: Default::default(),
            created_at: "t".into(),
            updated_at: None,
        }
    }

    #[test]
    fn ranges_parse_as_dnsmasq_writes_them() {
        let range: AddressMode = "10.0.0.100, 10.0.0.200,255.255.255.0".parse().unwrap();
        let netmask = Ipv4Addr::new(255, 255, 255, 0);
        assert_eq!(
            range,
            AddressMode::Range { start: Ipv4Addr::new(10, 0, 0, 100), end: Ipv4Addr::new(10, 0, 0, 200), netmask }
        );
        let proxy: AddressMode = "10.0.0.0,proxy,255.255.255.0".parse().unwrap();
        assert_eq!(proxy, AddressMode::Proxy { network: Ipv4Addr::new(10, 0, 0, 0), netmask });
        for (text, reason) in [
            ("10.0.0.200,10.0.0.100,255.255.255.0", "comes after"),
            ("10.0.0.1,10.0.0.9", "2 parts"),
            ("10.0.0.1,10.0.0.9,255.0.255.0", "not a netmask"),
            ("10.0.0.1,ten,255.255.255.0", "\"ten\" is not an IPv4 address"),
        ] {
            let error = text.parse::<AddressMode>().unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn hosts_name_each_pxe_enabled_mac_once_in_order() {
        let ports = [
            port("52:54:00:00:00:02", true),
            port("52:54:00:00:00:01", true),
            port("52:54:00:00:00:03", false),
            port("52:54:00:00:00:02", true),
        ];
        assert_eq!(hosts_file_text(&enrolled_macs(&ports)), "52:54:00:00:00:01\n52:54:00:00:00:02\n");
        assert_eq!(hosts_file_text(&BTreeSet::new()), "");
    }

    #[test]
    fn hosts_are_rewritten_only_when_the_macs_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut hosts = HostsFile::new(dir.path().join("hosts"), None);
        let macs = enrolled_macs(&[port("52:54:00:00:00:01", true)]);
        assert!(hosts.update(macs.clone()).unwrap());
        std::fs::write(hosts.path(), "changed behind its back").unwrap();
        assert!(!hosts.update(macs).unwrap(), "same MACs: nothing to write");
        assert_eq!(std::fs::read_to_string(hosts.path()).unwrap(), "changed behind its back");
        assert!(hosts.update(BTreeSet::new()).unwrap());
        assert_eq!(std::fs::read_to_string(hosts.path()).unwrap(), "");
        let mode = std::fs::metadata(hosts.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, FILE_MODE);
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["hosts"]);
    }

    #[test]
    fn a_failed_reload_is_retried_by_the_next_update() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("dnsmasq.pid");
        let mut hosts = HostsFile::new(dir.path().join("hosts"), Some(pid_file.clone()));
        let macs = enrolled_macs(&[port("52:54:00:00:00:01", true)]);
        let error = hosts.update(macs.clone()).unwrap_err();
        assert!(matches!(error, DhcpError::Io { .. }), "{error}");
        std::fs::write(&pid_file, "garbage\n").unwrap();
        let error = hosts.update(macs).unwrap_err();
        assert!(matches!(error, DhcpError::InvalidPidFile { .. }), "{error}");
    }
}
