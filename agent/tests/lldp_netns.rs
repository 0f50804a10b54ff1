//! LLDP collection against a real lldpd: lldpd in one network namespace, our listener in another,
//! joined by a veth pair. Needs root, iproute2 and lldpd (Debian package `lldpd`; the daemon is
//! started only here, inside the namespace, never on the host's network).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferric_agent::inventory::lldp::{self, Tlvs};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TEST_TIME_LIMIT: Duration = Duration::from_secs(60);
const PEER_IFACE: &str = "veth-lldpd";
const NODE_IFACE: &str = "veth-node";
const PEER_MAC: &str = "52:54:00:aa:bb:01";
const PEER_NAME: &str = "ferric-lldp-peer";
const LOG_LINES: usize = 30;

fn ip(description: &str, args: &[&str]) {
    ferric_runner::run(description, Command::new("ip").args(args)).unwrap_or_else(|error| panic!("{error}"));
}

/// Two namespaces joined by a veth pair, lldpd on the peer side. Dropping it stops lldpd and deletes
/// the namespaces (and with them the veth pair), also when the test failed.
struct Lab {
    peer_ns: String,
    node_ns: String,
    dir: tempfile::TempDir,
    lldpd: Option<Child>,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let lab = Lab {
            peer_ns: format!("ferric-lldpd-{tag}-{pid}"),
            node_ns: format!("ferric-node-{tag}-{pid}"),
            dir: tempfile::tempdir().unwrap(),
            lldpd: None,
        };
        ip("create peer namespace", &["netns", "add", &lab.peer_ns]);
        // From here on a failing command's panic drops `lab`, which cleans up.
        ip("create node namespace", &["netns", "add", &lab.node_ns]);
        #[rustfmt::skip]
        ip("create veth pair", &[
            "link", "add", PEER_IFACE, "netns", &lab.peer_ns, "address", PEER_MAC, "type", "veth",
            "peer", "name", NODE_IFACE, "netns", &lab.node_ns,
        ]);
        ip("bring peer side up", &["-n", &lab.peer_ns, "link", "set", PEER_IFACE, "up"]);
        ip("bring node side up", &["-n", &lab.node_ns, "link", "set", NODE_IFACE, "up"]);
        lab
    }

    /// lldpd in the foreground with its own control socket, announcing a fixed system name every
    /// second (the default is every 30 s) with the interface name as port id.
    fn start_lldpd(&mut self) {
        let config = self.dir.path().join("lldpd.conf");
        std::fs::write(
            &config,
            format!(
                "configure system hostname {PEER_NAME}\nconfigure lldp tx-interval 1\nconfigure lldp portidsubtype ifname\n"
            ),
        )
        .unwrap();
        let log = File::create(self.dir.path().join("lldpd.log")).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.peer_ns, "lldpd", "-d", "-I", PEER_IFACE])
            .arg("-u")
            .arg(self.dir.path().join("lldpd.socket"))
            .arg("-O")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = ferric_runner::spawn("start lldpd in the peer namespace", &mut command)
            .unwrap_or_else(|error| panic!("{error} (lldpd is in Debian package lldpd)"));
        self.lldpd = Some(child);
    }

    fn lldpd_said(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("lldpd.log")).unwrap_or_default();
        format!("lldpd said:\n{}", ferric_runner::tail_lines(&log, LOG_LINES))
    }

    /// Listens on `interfaces` from a thread that joined the node namespace (a network namespace is
    /// per thread). Panics past the time limit.
    fn listen_in_node(
        &self,
        interfaces: &'static [&'static str],
        window: Duration,
        started: Instant,
    ) -> BTreeMap<String, Tlvs> {
        let namespace = File::open(Path::new("/run/netns").join(&self.node_ns)).unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let result = setns(&namespace, CloneFlags::CLONE_NEWNET)
                .map(|()| lldp::listen(interfaces, window))
                .map_err(|error| format!("setns: {error}"));
            let _ = sender.send(result);
        });
        let remaining = TEST_TIME_LIMIT.saturating_sub(started.elapsed());
        receiver
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("LLDP listening took over {TEST_TIME_LIMIT:?}; {}", self.lldpd_said()))
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(lldpd) = &mut self.lldpd {
            // SIGTERM lets lldpd's privilege-separated child go with it.
            let _ = kill(Pid::from_raw(lldpd.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while lldpd.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = lldpd.kill();
            let _ = lldpd.wait();
        }
        for namespace in [&self.node_ns, &self.peer_ns] {
            let _ = ferric_runner::run("delete namespace", Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

fn tlv(tlvs: &Tlvs, kind: u8) -> Option<&str> {
    tlvs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_str())
}

#[test]
fn hears_lldpd_chassis_port_and_system_name() {
    let started = Instant::now();
    let mut lab = Lab::new("heard");
    lab.start_lldpd();
    let heard = lab.listen_in_node(&[NODE_IFACE], Duration::from_secs(20), started);
    let tlvs = heard.get(NODE_IFACE).unwrap_or_else(|| panic!("nothing heard on {NODE_IFACE}; {}", lab.lldpd_said()));

    let mac = PEER_MAC.replace(':', "");
    assert_eq!(tlv(tlvs, 1), Some(format!("04{mac}").as_str()), "chassis id: subtype 4 (MAC) {tlvs:?}");
    assert_eq!(tlv(tlvs, 2), Some(format!("05{}", hex::encode(PEER_IFACE)).as_str()), "port id: subtype 5 (ifname)");
    assert_eq!(tlv(tlvs, 5), Some(hex::encode(PEER_NAME).as_str()), "system name");
    assert!(tlv(tlvs, 3).is_some_and(|ttl| ttl.len() == 4), "TTL: {tlvs:?}");
    assert_eq!(tlvs.last(), Some(&(0, String::new())), "ends with the End TLV, padding not parsed");
    assert_eq!(heard.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(20), "an interface that heard a frame is done at once");
}

#[test]
fn a_silent_link_yields_nothing_within_the_window() {
    let started = Instant::now();
    let lab = Lab::new("silent");
    let window = Duration::from_millis(1500);
    let heard = lab.listen_in_node(&[NODE_IFACE, "no-such-nic"], window, started);
    assert!(heard.is_empty(), "{heard:?}");
    let took = started.elapsed();
    assert!(took >= window && took < window + Duration::from_secs(10), "listened {took:?} for a {window:?} window");
}
