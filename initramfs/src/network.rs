//! The network step: loopback, the boot NIC (or every NIC with a link) configured by
//! DHCP, a default route and `/etc/resolv.conf`; then keeping the leases alive.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline::BootParams;
use crate::dhcp::{self, DhcpError, Lease, LeasePhase};
use crate::error_chain;
use crate::netif::{self, NetifError, Nic};

/// How often sysfs is polled while waiting for NICs or links.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("could not configure loopback")]
    Loopback(#[source] NetifError),
    #[error("no network interface with MAC {mac} appeared within {}s", .waited.as_secs())]
    BootNicMissing { mac: String, waited: Duration },
    #[error("no network interface appeared within {}s", .waited.as_secs())]
    NoNics { waited: Duration },
    #[error("no interface got a link within {}s", .waited.as_secs())]
    NoCarrier { waited: Duration },
    #[error("no interface got a DHCP lease")]
    NoLease,
    #[error("could not write {path}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the network step works on; paths are parameters so tests can point them elsewhere.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Where interfaces are listed, normally `/sys/class/net`.
    pub sys_class_net: PathBuf,
    /// Where DNS servers are written, normally `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Normalised MAC of the boot NIC (`BOOTIF`); without it every NIC with a link is used.
    pub boot_mac: Option<String>,
    /// How long to wait for NICs (drivers may still be probing).
    pub nic_wait: Duration,
    /// How long to wait for a link after bringing NICs up.
    pub carrier_wait: Duration,
    /// DHCP per-try timeouts.
    pub dhcp_timeouts: Vec<Duration>,
}

impl NetworkConfig {
    /// The ramdisk's settings.
    pub fn new(params: &BootParams) -> Self {
        Self {
            sys_class_net: PathBuf::from("/sys/class/net"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            boot_mac: params.boot_mac.clone(),
            nic_wait: Duration::from_secs(20),
            carrier_wait: Duration::from_secs(10),
            dhcp_timeouts: dhcp::DEFAULT_TIMEOUTS.to_vec(),
        }
    }
}

/// A lease on a NIC, with when it was granted (its times count from there).
#[derive(Debug, Clone)]
pub struct HeldLease {
    pub nic: Nic,
    pub lease: Lease,
    /// When the request that got the lease was sent.
    pub granted: Instant,
    /// Whether the default route goes via this lease's router, to restore it should the
    /// address change.
    pub default_route: bool,
    /// After a failed extension: not before then.
    retry_at: Option<Instant>,
}

/// Configures loopback, then DHCP on the boot NIC (or on every NIC with a link), adds a
/// default route via the first router offered and writes all DNS servers to resolv.conf.
/// Succeeds when at least one NIC got a lease. `load_drivers` runs on every poll for NICs,
/// so that a NIC whose device appears late still gets its driver.
pub fn configure(config: &NetworkConfig, load_drivers: &mut dyn FnMut()) -> Result<Vec<HeldLease>, NetworkError> {
    netif::set_ipv4("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0)).map_err(NetworkError::Loopback)?;
    netif::set_up("lo").map_err(NetworkError::Loopback)?;

    let candidates = choose_nics(config, load_drivers)?;
    let mut held: Vec<HeldLease> = Vec::new();
    for nic in candidates {
        let add_default_route = !held.iter().any(|lease| lease.default_route);
        let granted = Instant::now();
        match lease_and_apply(config, &nic, add_default_route) {
            Ok(lease) => {
                let default_route = add_default_route && lease.router.is_some();
                held.push(HeldLease { nic, lease, granted, default_route, retry_at: None });
            }
            Err(error) => log!("{}", error_chain(&error)),
        }
    }
    if held.is_empty() {
        return Err(NetworkError::NoLease);
    }
    write_resolv_conf(&config.resolv_conf, &held)?;
    Ok(held)
}

/// Writes the DNS servers of all leases, each once, in order.
fn write_resolv_conf(path: &Path, held: &[HeldLease]) -> Result<(), NetworkError> {
    let mut dns_servers: Vec<Ipv4Addr> = Vec::new();
    for server in held.iter().flat_map(|held| &held.lease.dns_servers) {
        if !dns_servers.contains(server) {
            dns_servers.push(*server);
        }
    }
    std::fs::write(path, resolv_conf(&dns_servers))
        .map_err(|source| NetworkError::ResolvConf { path: path.to_path_buf(), source })
}

/// The NICs to run DHCP on: the boot NIC once it exists (given up to `carrier_wait` to get
/// a link), or every NIC that has a link at the end of `carrier_wait`, counting NICs that
/// appear meanwhile. `load_drivers` runs before every look at the NICs.
fn choose_nics(config: &NetworkConfig, load_drivers: &mut dyn FnMut()) -> Result<Vec<Nic>, NetworkError> {
    let started = Instant::now();
    let mut found = loop {
        load_drivers();
        let wanted = wanted_nics(config);
        if !wanted.is_empty() {
            break wanted;
        }
        if started.elapsed() >= config.nic_wait {
            return Err(match &config.boot_mac {
                Some(mac) => NetworkError::BootNicMissing { mac: mac.clone(), waited: config.nic_wait },
                None => NetworkError::NoNics { waited: config.nic_wait },
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let carrier_started = Instant::now();
    let mut up: Vec<Nic> = Vec::new();
    loop {
        for nic in found {
            if !up.contains(&nic) {
                if let Err(error) = netif::set_up(&nic.name) {
                    log!("{}", error_chain(&error));
                }
                up.push(nic);
            }
        }
        let mut with_carrier: Vec<Nic> =
            up.iter().filter(|nic| netif::has_carrier(&config.sys_class_net, &nic.name)).cloned().collect();
        // The boot NIC is the only one wanted: no need to wait once it has a link.
        let boot_nic_ready = config.boot_mac.is_some() && !with_carrier.is_empty();
        if boot_nic_ready || carrier_started.elapsed() >= config.carrier_wait {
            if config.boot_mac.is_some() {
                // The boot NIC is the one that worked for PXE: try it even without a link report.
                if with_carrier.is_empty() {
                    log!("{}: no link after {}s; trying DHCP anyway", up[0].name, config.carrier_wait.as_secs());
                }
                return Ok(up);
            }
            if with_carrier.is_empty() {
                return Err(NetworkError::NoCarrier { waited: config.carrier_wait });
            }
            with_carrier.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(with_carrier);
        }
        std::thread::sleep(POLL_INTERVAL);
        load_drivers();
        found = wanted_nics(config);
    }
}

/// The boot NIC if it exists, or without `BOOTIF` every NIC.
fn wanted_nics(config: &NetworkConfig) -> Vec<Nic> {
    let nics = netif::list_nics(&config.sys_class_net).unwrap_or_default();
    match &config.boot_mac {
        Some(mac) => nics.into_iter().filter(|nic| &nic.mac == mac).collect(),
        None => nics,
    }
}

#[derive(Debug, thiserror::Error)]
enum NicError {
    #[error("{iface}: MAC {mac:?} is malformed")]
    BadMac { iface: String, mac: String },
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    #[error(transparent)]
    Netif(#[from] NetifError),
}

fn mac_of(nic: &Nic) -> Result<[u8; 6], NicError> {
    nic.mac_bytes().ok_or_else(|| NicError::BadMac { iface: nic.name.clone(), mac: nic.mac.clone() })
}

fn lease_and_apply(config: &NetworkConfig, nic: &Nic, add_default_route: bool) -> Result<Lease, NicError> {
    log!("{}: DHCP ({})", nic.name, nic.mac);
    let lease = dhcp::obtain_lease(&nic.name, mac_of(nic)?, &config.dhcp_timeouts)?;
    apply_lease(&nic.name, &lease, add_default_route)?;
    log!(
        "{}: {}/{} router {} dns {:?} from {}",
        nic.name,
        lease.address,
        lease.prefix_len(),
        lease.router.map_or_else(|| "none".to_string(), |router| router.to_string()),
        lease.dns_servers,
        lease.server
    );
    Ok(lease)
}

/// Puts a lease's address on `iface` and, if asked, the default route via its router.
pub fn apply_lease(iface: &str, lease: &Lease, add_default_route: bool) -> Result<(), NetifError> {
    netif::set_ipv4(iface, lease.address, lease.netmask)?;
    if let (true, Some(router)) = (add_default_route, lease.router) {
        netif::add_default_route(iface, router)?;
    }
    Ok(())
}

/// Keeps the leases alive (RFC 2131 4.4.5): renews each from T1 with the server that
/// granted it, rebinds from T2 with any server, and starts over with DISCOVER once it has
/// expired or was refused. A failed attempt keeps the address and is retried later.
/// [`LeaseKeeper::maintain`] is called from PID 1's waiting loops, so no thread is needed.
pub struct LeaseKeeper {
    config: NetworkConfig,
    held: Vec<HeldLease>,
}

impl LeaseKeeper {
    pub fn new(config: NetworkConfig, held: Vec<HeldLease>) -> Self {
        Self { config, held }
    }

    pub fn held(&self) -> &[HeldLease] {
        &self.held
    }

    /// Does what is due at `now` for each lease; blocks while a DHCP exchange runs.
    pub fn maintain(&mut self, now: Instant) {
        let mut dns_changed = false;
        for held in &mut self.held {
            if held.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            let elapsed = now.saturating_duration_since(held.granted);
            let phase = dhcp::lease_phase(held.lease.lease_seconds, elapsed);
            let result = match phase {
                LeasePhase::Bound => continue,
                LeasePhase::Renewing => extend_or_rediscover(&self.config, held, held.lease.server),
                LeasePhase::Rebinding => extend_or_rediscover(&self.config, held, Ipv4Addr::BROADCAST),
                LeasePhase::Expired => rediscover(&self.config, held),
            };
            match result {
                Ok(lease) => {
                    let length = lease.lease_seconds.map_or_else(|| "ever".to_string(), |s| format!("{s}s"));
                    log!("{}: lease on {} ({phase:?}) now runs for {length}", held.nic.name, lease.address);
                    dns_changed |= lease.dns_servers != held.lease.dns_servers;
                    held.lease = lease;
                    held.granted = now;
                    held.retry_at = None;
                }
                Err(error) => {
                    let delay = dhcp::retry_delay(held.lease.lease_seconds, elapsed);
                    log!("{}: {phase:?}: {}; retrying in {}s", held.nic.name, error_chain(&error), delay.as_secs());
                    held.retry_at = Some(now + delay);
                }
            }
        }
        if dns_changed {
            if let Err(error) = write_resolv_conf(&self.config.resolv_conf, &self.held) {
                log!("{}", error_chain(&error));
            }
        }
    }
}

/// Asks `to` to extend the held lease; a refusal means starting over with DISCOVER.
fn extend_or_rediscover(config: &NetworkConfig, held: &HeldLease, to: Ipv4Addr) -> Result<Lease, NicError> {
    match dhcp::extend_lease(&held.nic.name, mac_of(&held.nic)?, &held.lease, to, &config.dhcp_timeouts) {
        Ok(lease) => {
            reapply_if_changed(held, &lease)?;
            Ok(lease)
        }
        Err(error @ DhcpError::Refused { .. }) => {
            log!("{}: {}; starting over", held.nic.name, error_chain(&error));
            rediscover(config, held)
        }
        Err(error) => Err(error.into()),
    }
}

fn rediscover(config: &NetworkConfig, held: &HeldLease) -> Result<Lease, NicError> {
    let lease = dhcp::obtain_lease(&held.nic.name, mac_of(&held.nic)?, &config.dhcp_timeouts)?;
    reapply_if_changed(held, &lease)?;
    Ok(lease)
}

/// Puts a new address on the NIC (and the default route back, which the kernel drops
/// with the old address); an unchanged one is left alone.
fn reapply_if_changed(held: &HeldLease, lease: &Lease) -> Result<(), NetifError> {
    if (lease.address, lease.netmask) == (held.lease.address, held.lease.netmask) {
        return Ok(());
    }
    log!("{}: address changes from {} to {}/{}", held.nic.name, held.lease.address, lease.address, lease.prefix_len());
    apply_lease(&held.nic.name, lease, held.default_route)
}

/// resolv.conf text naming the DNS servers.
pub fn resolv_conf(dns_servers: &[Ipv4Addr]) -> String {
    let mut text = String::from("# written by ferric-init from DHCP\n");
    for server in dns_servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_servers_in_order() {
        let text = resolv_conf(&[Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]);
        let nameservers: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(nameservers, ["nameserver 10.0.2.3", "nameserver 1.1.1.1"]);
    }

    #[test]
    fn missing_boot_nic_is_reported_after_the_wait() {
        let net = tempfile::tempdir().unwrap();
        let dir = net.path().join("eth0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), "1\n").unwrap();
        std::fs::write(dir.join("address"), "52:54:00:00:00:01\n").unwrap();
        let config = NetworkConfig {
            sys_class_net: net.path().to_path_buf(),
            resolv_conf: net.path().join("resolv.conf"),
            boot_mac: Some("52:54:00:00:00:02".into()),
            nic_wait: Duration::from_millis(300),
            carrier_wait: Duration::ZERO,
            dhcp_timeouts: Vec::new(),
        };
        let started = Instant::now();
        let error = choose_nics(&config, &mut || {}).unwrap_err();
        assert!(matches!(error, NetworkError::BootNicMissing { ref mac, .. } if mac == "52:54:00:00:00:02"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(300), "gave up before the wait was over");
    }

    fn config_for(net: &Path, boot_mac: Option<&str>, carrier_wait: Duration) -> NetworkConfig {
        NetworkConfig {
            sys_class_net: net.to_path_buf(),
            resolv_conf: net.join("resolv.conf"),
            boot_mac: boot_mac.map(str::to_string),
            nic_wait: Duration::from_secs(5),
            carrier_wait,
            dhcp_timeouts: Vec::new(),
        }
    }

    /// A NIC as sysfs shows it, with a link. The names exist on no host, so bringing them
    /// up fails (logged) and touches nothing real.
    fn fake_nic(net: &Path, name: &str, mac: &str) {
        let dir = net.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in [("type", "1\n"), ("address", &format!("{mac}\n")), ("carrier", "1\n")] {
            std::fs::write(dir.join(file), text).unwrap();
        }
    }

    #[test]
    fn boot_nic_whose_driver_loads_late_is_found() {
        let net = tempfile::tempdir().unwrap();
        let config = config_for(net.path(), Some("52:54:00:00:00:07"), Duration::from_secs(5));
        let mut driver_passes = 0;
        // The third driver pass "loads the driver" that creates the interface.
        let mut load_drivers = || {
            driver_passes += 1;
            if driver_passes == 3 {
                fake_nic(net.path(), "ferrictest7", "52:54:00:00:00:07");
            }
        };
        let nics = choose_nics(&config, &mut load_drivers).unwrap();
        assert_eq!(nics, [Nic { name: "ferrictest7".into(), mac: "52:54:00:00:00:07".into() }]);
        assert_eq!(driver_passes, 3, "found on the pass that created it, and ready at once");
    }

    #[test]
    fn without_bootif_nics_appearing_before_the_carrier_wait_ends_count() {
        let net = tempfile::tempdir().unwrap();
        fake_nic(net.path(), "ferrictest1", "52:54:00:00:00:01");
        let config = config_for(net.path(), None, Duration::from_millis(800));
        let mut driver_passes = 0;
        let mut load_drivers = || {
            driver_passes += 1;
            if driver_passes == 3 {
                fake_nic(net.path(), "ferrictest0", "52:54:00:00:00:02");
            }
        };
        let started = Instant::now();
        let nics = choose_nics(&config, &mut load_drivers).unwrap();
        let names: Vec<&str> = nics.iter().map(|nic| nic.name.as_str()).collect();
        assert_eq!(names, ["ferrictest0", "ferrictest1"]);
        assert!(started.elapsed() >= Duration::from_millis(800), "stopped polling before the carrier wait ended");
    }

    #[test]
    fn without_bootif_and_without_links_the_step_fails() {
        let net = tempfile::tempdir().unwrap();
        fake_nic(net.path(), "ferrictest2", "52:54:00:00:00:03");
        std::fs::write(net.path().join("ferrictest2/carrier"), "0\n").unwrap();
        let config = config_for(net.path(), None, Duration::from_millis(300));
        assert!(matches!(choose_nics(&config, &mut || {}), Err(NetworkError::NoCarrier { .. })));
    }
}
