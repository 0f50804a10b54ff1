//! The network step against a real DHCP server: dnsmasq in one network namespace, our
//! client in another, joined by a veth pair. Needs root, iproute2 and dnsmasq
//! (Debian package `dnsmasq-base`). Only addresses inside these namespaces are used.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferric_init::error_chain;
use ferric_init::network::{self, HeldLease, LeaseKeeper, NetworkConfig};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, CloneFlags};

const TEST_TIME_LIMIT: Duration = Duration::from_secs(60);
const SERVER_IFACE: &str = "veth-dhcpd";
const CLIENT_IFACE: &str = "veth-boot";
const CLIENT_MAC: &str = "52:54:00:12:34:56";
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 123, 45, 1);
const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 123, 45, 53);
/// How much of dnsmasq's log a failure message quotes.
const LOG_LINES: usize = 40;

fn ip(description: &str, args: &[&str]) -> String {
    ferric_runner::run(description, Command::new("ip").args(args)).unwrap_or_else(|error| panic!("{error}")).stdout
}

/// Two namespaces joined by a veth pair, optionally with dnsmasq serving the server side.
/// Dropping it stops dnsmasq, unmounts the client's sysfs and deletes the namespaces
/// (which deletes the veth pair), also when the test failed.
struct Lab {
    server_ns: String,
    client_ns: String,
    dir: tempfile::TempDir,
    dnsmasq: Option<Child>,
    sysfs: Option<PathBuf>,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let lab = Lab {
            server_ns: format!("ferric-dhcpd-{tag}-{pid}"),
            client_ns: format!("ferric-client-{tag}-{pid}"),
            dir: tempfile::tempdir().unwrap(),
            dnsmasq: None,
            sysfs: None,
        };
        ip("create server namespace", &["netns", "add", &lab.server_ns]);
        // From here on a failing command's panic drops `lab`, which cleans up.
        ip("create client namespace", &["netns", "add", &lab.client_ns]);
        #[rustfmt::skip]
        ip("create veth pair", &[
            "link", "add", SERVER_IFACE, "netns", &lab.server_ns, "type", "veth",
            "peer", "name", CLIENT_IFACE, "netns", &lab.client_ns, "address", CLIENT_MAC,
        ]);
        let server_cidr = format!("{SERVER_ADDRESS}/24");
        ip("address server side", &["-n", &lab.server_ns, "addr", "add", &server_cidr, "dev", SERVER_IFACE]);
        ip("bring server side up", &["-n", &lab.server_ns, "link", "set", SERVER_IFACE, "up"]);
        lab
    }

    fn start_dnsmasq(&mut self) {
        let log = File::create(self.dir.path().join("dnsmasq.log")).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.server_ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0"])
            .arg(format!("--interface={SERVER_IFACE}"))
            .args(["--bind-interfaces", "--user=root", "--log-dhcp"])
            .arg("--dhcp-range=10.123.45.100,10.123.45.200,255.255.255.0,1h")
            .arg(format!("--dhcp-option=option:router,{SERVER_ADDRESS}"))
            .arg(format!("--dhcp-option=option:dns-server,{DNS_ADDRESS}"))
            .arg(format!("--dhcp-leasefile={}", self.dir.path().join("leases").display()))
            .arg(format!("--pid-file={}", self.dir.path().join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = ferric_runner::spawn("start dnsmasq in the server namespace", &mut command)
            .unwrap_or_else(|error| panic!("{error} (dnsmasq is in Debian package dnsmasq-base)"));
        self.dnsmasq = Some(child);
    }

    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// The end of dnsmasq's log, for failure messages.
    fn dnsmasq_said(&self) -> String {
        format!("dnsmasq said:\n{}", ferric_runner::tail_lines(&self.dnsmasq_log(), LOG_LINES))
    }

    /// Runs `job` on the network step's settings inside the client namespace, on a thread
    /// that joined it (a network namespace is per thread), with a sysfs mounted from there
    /// so that `class/net` lists the namespace's interfaces. Panics past the time limit.
    fn in_client<T: Send + 'static>(
        &mut self,
        boot_mac: Option<&str>,
        started: Instant,
        job: impl FnOnce(NetworkConfig) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let sysfs = self.dir.path().join("sys");
        std::fs::create_dir_all(&sysfs).unwrap();
        let config = NetworkConfig {
            sys_class_net: sysfs.join("class/net"),
            resolv_conf: self.dir.path().join("resolv.conf"),
            boot_mac: boot_mac.map(str::to_string),
            nic_wait: Duration::from_secs(10),
            carrier_wait: Duration::from_secs(5),
            dhcp_timeouts: vec![Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(8)],
        };
        let namespace = File::open(Path::new("/run/netns").join(&self.client_ns)).unwrap();
        let (sender, receiver) = mpsc::channel();
        let thread_sysfs = sysfs.clone();
        std::thread::spawn(move || {
            let result = setns(&namespace, CloneFlags::CLONE_NEWNET)
                .map_err(|error| format!("setns: {error}"))
                .and_then(|()| {
                    mount(Some("sysfs"), &thread_sysfs, Some("sysfs"), MsFlags::empty(), None::<&str>)
                        .map_err(|error| format!("mount sysfs: {error}"))
                })
                .and_then(|()| job(config));
            let _ = sender.send(result);
        });
        self.sysfs = Some(sysfs);
        let remaining = TEST_TIME_LIMIT.saturating_sub(started.elapsed());
        receiver
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("network step took over {TEST_TIME_LIMIT:?}; {}", self.dnsmasq_said()))
    }

    /// Runs the network step in the client namespace.
    fn configure_in_client(&mut self, boot_mac: Option<&str>, started: Instant) -> Result<Vec<HeldLease>, String> {
        self.in_client(boot_mac, started, |config| {
            network::configure(&config, &mut || {}).map_err(|error| error_chain(&error))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(dnsmasq) = &mut self.dnsmasq {
            let _ = dnsmasq.kill();
            let _ = dnsmasq.wait();
        }
        if let Some(sysfs) = &self.sysfs {
            let _ = umount2(sysfs, MntFlags::MNT_DETACH);
        }
        for namespace in [&self.client_ns, &self.server_ns] {
            let _ = ferric_runner::run("delete namespace", Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

/// Checks the lease and that it is really on the interface, in the routes and in resolv.conf.
fn assert_lease_applied(lab: &Lab, leases: &[HeldLease]) {
    assert_eq!(leases.len(), 1, "{leases:?}");
    let HeldLease { nic, lease, .. } = &leases[0];
    assert_eq!((nic.name.as_str(), nic.mac.as_str()), (CLIENT_IFACE, CLIENT_MAC));
    let [a, b, c, d] = lease.address.octets();
    assert!((a, b, c) == (10, 123, 45) && (100..=200).contains(&d), "address {} outside the range", lease.address);
    assert_eq!(lease.netmask, Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(lease.router, Some(SERVER_ADDRESS));
    assert_eq!(lease.dns_servers, [DNS_ADDRESS]);
    assert_eq!(lease.server, SERVER_ADDRESS);

    let addresses = ip("read client address", &["-n", &lab.client_ns, "-4", "addr", "show", "dev", CLIENT_IFACE]);
    assert!(addresses.contains(&format!("inet {}/24 ", lease.address)), "{addresses}");
    let loopback = ip("read loopback address", &["-n", &lab.client_ns, "-4", "addr", "show", "dev", "lo"]);
    assert!(loopback.contains("inet 127.0.0.1/8 ") && loopback.contains("UP"), "{loopback}");
    let routes = ip("read default route", &["-n", &lab.client_ns, "-4", "route", "show", "default"]);
    assert!(routes.contains(&format!("default via {SERVER_ADDRESS} dev {CLIENT_IFACE}")), "{routes}");
    let resolv_conf = std::fs::read_to_string(lab.dir.path().join("resolv.conf")).unwrap();
    assert!(resolv_conf.lines().any(|line| line == format!("nameserver {DNS_ADDRESS}")), "{resolv_conf}");
}

#[test]
fn boot_nic_from_bootif_gets_and_applies_a_dnsmasq_lease() {
    let started = Instant::now();
    let mut lab = Lab::new("bootif");
    lab.start_dnsmasq();
    let leases = lab.configure_in_client(Some(CLIENT_MAC), started);
    let leases = leases.unwrap_or_else(|error| panic!("{error}; {}", lab.dnsmasq_said()));
    assert_lease_applied(&lab, &leases);
    assert!(lab.dnsmasq_log().contains("DHCPACK"), "{}", lab.dnsmasq_said());
}

#[test]
fn without_bootif_every_nic_with_carrier_gets_a_lease() {
    let started = Instant::now();
    let mut lab = Lab::new("carrier");
    lab.start_dnsmasq();
    let leases = lab.configure_in_client(None, started);
    let leases = leases.unwrap_or_else(|error| panic!("{error}; {}", lab.dnsmasq_said()));
    assert_lease_applied(&lab, &leases);
}

#[test]
fn without_a_server_the_step_fails_instead_of_hanging() {
    let started = Instant::now();
    let mut lab = Lab::new("silent");
    let error = lab.configure_in_client(Some(CLIENT_MAC), started).unwrap_err();
    assert!(error.contains("no interface got a DHCP lease"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "gave up only after {:?}", started.elapsed());
}

/// Drives the lease keeper with a clock moved past T1, T2 and the end of dnsmasq's hour-long
/// lease: it must renew (unicast), rebind (broadcast) and rediscover, each answered by
/// dnsmasq, and keep the same address on the interface throughout.
#[test]
fn lease_is_renewed_rebound_and_rediscovered_with_dnsmasq() {
    let started = Instant::now();
    let mut lab = Lab::new("renew");
    lab.start_dnsmasq();
    let result = lab.in_client(Some(CLIENT_MAC), started, |config| {
        let held = network::configure(&config, &mut || {}).map_err(|error| error_chain(&error))?;
        let first = held[0].clone();
        let lease = Duration::from_secs(first.lease.lease_seconds.ok_or("dnsmasq gave no lease time")?.into());
        let mut keeper = LeaseKeeper::new(config, held);
        let mut granted_after = Vec::new();
        // Each time counts from when the lease was last granted: before T1, past T1, past T2, past the end.
        for since_granted in [lease / 4, lease / 2 + Duration::from_secs(1), lease * 15 / 16, lease * 2] {
            let at = keeper.held()[0].granted + since_granted;
            keeper.maintain(at);
            granted_after.push((at, keeper.held()[0].granted, keeper.held()[0].lease.clone()));
        }
        Ok((first, granted_after))
    });
    let (first, steps) = result.unwrap_or_else(|error| panic!("{error}; {}", lab.dnsmasq_said()));
    let (bound_at, granted, _) = &steps[0];
    assert!(*granted == first.granted && *granted != *bound_at, "renewed before T1");
    for (phase, (at, granted, lease)) in ["renewing", "rebinding", "expired"].iter().zip(&steps[1..]) {
        assert_eq!(granted, at, "{phase}: lease not extended; {}", lab.dnsmasq_said());
        assert_eq!(lease.address, first.lease.address, "{phase}");
        assert_eq!(lease.lease_seconds, Some(3600), "{phase}");
    }
    let log = lab.dnsmasq_log();
    // Transactions, not lines: a retry under load resends with the same xid, which dnsmasq
    // logs again ("dnsmasq-dhcp: <xid> DHCPDISCOVER(...)").
    let count = |what: &str| {
        let xids = log.lines().filter(|line| line.contains(what)).filter_map(|line| line.split_whitespace().nth(1));
        xids.collect::<std::collections::BTreeSet<_>>().len()
    };
    assert_eq!(count("DHCPACK("), 4, "initial, renewal, rebinding, rediscovery; {}", lab.dnsmasq_said());
    assert_eq!(count("DHCPDISCOVER("), 2, "initial and after expiry; {}", lab.dnsmasq_said());
    let addresses = ip("read client address", &["-n", &lab.client_ns, "-4", "addr", "show", "dev", CLIENT_IFACE]);
    assert!(addresses.contains(&format!("inet {}/24 ", first.lease.address)), "{addresses}");
}
