//! The network step: loopback, the boot NIC (or every NIC with a link) configured by
//! DHCP, a default route and `/etc/resolv.conf`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cmdline::BootParams;
use crate::dhcp::{self, DhcpError, Lease};
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

/// Configures loopback, then DHCP on the boot NIC (or on every NIC with a link), adds a
/// default route via the first router offered and writes all DNS servers to resolv.conf.
/// Succeeds when at least one NIC got a lease.
pub fn configure(config: &NetworkConfig) -> Result<Vec<(Nic, Lease)>, NetworkError> {
    netif::set_ipv4("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0)).map_err(NetworkError::Loopback)?;
    netif::set_up("lo").map_err(NetworkError::Loopback)?;

    let candidates = choose_nics(config)?;
    let mut leases = Vec::new();
    let mut has_default_route = false;
    for nic in candidates {
        match lease_and_apply(config, &nic, !has_default_route) {
            Ok(lease) => {
                has_default_route |= lease.router.is_some();
                leases.push((nic, lease));
            }
            Err(error) => log!("{}", error_chain(&error)),
        }
    }
    if leases.is_empty() {
        return Err(NetworkError::NoLease);
    }
    let mut dns_servers: Vec<Ipv4Addr> = Vec::new();
    for server in leases.iter().flat_map(|(_, lease)| &lease.dns_servers) {
        if !dns_servers.contains(server) {
            dns_servers.push(*server);
        }
    }
    std::fs::write(&config.resolv_conf, resolv_conf(&dns_servers))
        .map_err(|source| NetworkError::ResolvConf { path: config.resolv_conf.clone(), source })?;
    Ok(leases)
}

/// The NICs to run DHCP on: the boot NIC once it exists, or every NIC that has a link
/// within `carrier_wait` of being brought up.
fn choose_nics(config: &NetworkConfig) -> Result<Vec<Nic>, NetworkError> {
    let started = Instant::now();
    let nics = loop {
        let nics = netif::list_nics(&config.sys_class_net).unwrap_or_default();
        let wanted: Vec<Nic> = match &config.boot_mac {
            Some(mac) => nics.into_iter().filter(|nic| &nic.mac == mac).collect(),
            None => nics,
        };
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
    for nic in &nics {
        if let Err(error) = netif::set_up(&nic.name) {
            log!("{}", error_chain(&error));
        }
    }
    let with_carrier = wait_for_carrier(config, &nics);
    if config.boot_mac.is_some() {
        // The boot NIC is the one that worked for PXE: try it even without a link report.
        if with_carrier.is_empty() {
            log!("{}: no link after {}s; trying DHCP anyway", nics[0].name, config.carrier_wait.as_secs());
        }
        return Ok(nics);
    }
    if with_carrier.is_empty() {
        return Err(NetworkError::NoCarrier { waited: config.carrier_wait });
    }
    Ok(with_carrier)
}

/// The NICs that have a link by the end of `carrier_wait` (returns as soon as all do).
fn wait_for_carrier(config: &NetworkConfig, nics: &[Nic]) -> Vec<Nic> {
    let started = Instant::now();
    loop {
        let with_carrier: Vec<Nic> =
            nics.iter().filter(|nic| netif::has_carrier(&config.sys_class_net, &nic.name)).cloned().collect();
        if with_carrier.len() == nics.len() || started.elapsed() >= config.carrier_wait {
            return with_carrier;
        }
        std::thread::sleep(POLL_INTERVAL);
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

fn lease_and_apply(config: &NetworkConfig, nic: &Nic, add_default_route: bool) -> Result<Lease, NicError> {
    let mac = nic.mac_bytes().ok_or_else(|| NicError::BadMac { iface: nic.name.clone(), mac: nic.mac.clone() })?;
    log!("{}: DHCP ({})", nic.name, nic.mac);
    let lease = dhcp::obtain_lease(&nic.name, mac, &config.dhcp_timeouts)?;
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
        let error = choose_nics(&config).unwrap_err();
        assert!(matches!(error, NetworkError::BootNicMissing { ref mac, .. } if mac == "52:54:00:00:00:02"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(300), "gave up before the wait was over");
    }
}
