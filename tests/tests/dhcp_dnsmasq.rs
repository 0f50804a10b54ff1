//! The controller's dnsmasq against real DHCP and TFTP clients: dnsmasq, started by `DnsmasqManager`, serves one
//! end of a veth pair in a server network namespace; busybox udhcpc and curl on the other end, in a client
//! namespace, play the machines (each MAC a different one). Needs root, iproute2, dnsmasq (`dnsmasq-base`),
//! busybox (`busybox-static`), curl and the `ipxe` package. Only addresses inside these namespaces are used.

use std::fs::Permissions;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferric_controller::dhcp::{
    render, sync_hosts, AddressMode, DhcpConfig, DnsmasqManager, HostsFile, IpxeBinaries, DEFAULT_IPXE_DIR as IPXE_DIR,
};
use ferric_controller::fsm::ProvisionState;
use ferric_controller::model::{Node, Port};
use ferric_controller::store::{Store, StoreError};

const SERVER_IFACE: &str = "dh-srv";
const CLIENT_IFACE: &str = "dh-cli";
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Static address of the client side for TFTP (the udhcpc script configures nothing).
const CLIENT_ADDRESS: &str = "10.77.0.50/24";
const RANGE: &str = "10.77.0.100,10.77.0.200,255.255.255.0";
const PUBLIC_URL: &str = "http://10.77.0.1:6385";
const NODE_UUID: &str = "1f6b7c1e-5c1d-4a8e-9d3e-2b1a0c9d8e7f";
const FIRST_MAC: &str = "52:54:00:d4:00:01";
const SECOND_MAC: &str = "52:54:00:d4:00:02";
/// Hex of the user class iPXE sends (option 77).
const IPXE_USER_CLASS: &str = "69505845";
/// How much of dnsmasq's log a failure message quotes.
const LOG_LINES: usize = 40;
/// DHCPDISCOVERs a client sends, one a second, before it gives up.
const ANSWERED_TRIES: &str = "5";
/// Fewer for a client that should get no answer: the test waits for all of them.
const UNANSWERED_TRIES: &str = "3";
const COMMAND_TIME_LIMIT: &str = "20";
const TEST_TIME_LIMIT: Duration = Duration::from_secs(60);

fn run(description: &str, command: &mut Command) -> String {
    ferric_runner::run(description, command).unwrap_or_else(|error| panic!("{error}")).stdout
}

fn ip(description: &str, args: &[&str]) -> String {
    run(description, Command::new("ip").args(args))
}

/// What udhcpc's script saw when it got a lease.
#[derive(Debug, Default, PartialEq)]
struct Offer {
    boot_file: String,
    siaddr: String,
    address: String,
}

/// Two namespaces joined by a veth pair; dnsmasq serves the server end. Dropping it stops dnsmasq and deletes
/// the namespaces (and so the veth pair), also when the test failed.
struct Lab {
    server_ns: String,
    client_ns: String,
    files: tempfile::TempDir,
    /// dnsmasq's state directory: its own temporary directory, as dnsmasq reads it after dropping root.
    state: tempfile::TempDir,
    dnsmasq: Option<DnsmasqManager>,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            server_ns: format!("ferric-dh-{pid}-s"),
            client_ns: format!("ferric-dh-{pid}-c"),
            files: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            dnsmasq: None,
        };
        ip("create server namespace", &["netns", "add", &lab.server_ns]);
        // From here on a failing command's panic drops `lab`, which cleans up.
        ip("create client namespace", &["netns", "add", &lab.client_ns]);
        #[rustfmt::skip]
        ip("create veth pair", &[
            "link", "add", SERVER_IFACE, "netns", &lab.server_ns, "type", "veth",
            "peer", "name", CLIENT_IFACE, "netns", &lab.client_ns, "address", FIRST_MAC,
        ]);
        let server_cidr = format!("{SERVER_ADDRESS}/24");
        ip("address server side", &["-n", &lab.server_ns, "addr", "add", &server_cidr, "dev", SERVER_IFACE]);
        ip("bring server side up", &["-n", &lab.server_ns, "link", "set", SERVER_IFACE, "up"]);
        ip("address client side", &["-n", &lab.client_ns, "addr", "add", CLIENT_ADDRESS, "dev", CLIENT_IFACE]);
        ip("bring client side up", &["-n", &lab.client_ns, "link", "set", CLIENT_IFACE, "up"]);
        let script = lab.files.path().join("udhcpc.script");
        let offer = lab.offer_file();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nprintf '%s\\n' \"$boot_file\" \"$siaddr\" \"$ip\" > {}\n",
                offer.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, Permissions::from_mode(0o755)).unwrap();
        lab
    }

    fn config(&self) -> DhcpConfig {
        let ipxe = IpxeBinaries {
            bios: Path::new(IPXE_DIR).join("undionly.kpxe"),
            uefi: Some(Path::new(IPXE_DIR).join("ipxe.efi")),
        };
        DhcpConfig::new(SERVER_IFACE, RANGE.parse().unwrap(), PUBLIC_URL, ipxe, self.state.path())
    }

    async fn start_dnsmasq(&mut self) -> HostsFile {
        let prefix = ["ip", "netns", "exec", &self.server_ns].map(str::to_owned);
        let manager = DnsmasqManager::start(self.config(), &prefix).await.unwrap_or_else(|error| panic!("{error}"));
        let hosts = manager.hosts_file();
        self.dnsmasq = Some(manager);
        hosts
    }

    fn offer_file(&self) -> PathBuf {
        self.files.path().join("offer")
    }

    fn dnsmasq_pid(&self) -> String {
        std::fs::read_to_string(self.config().pid_file()).unwrap()
    }

    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.config().log_file()).unwrap_or_default()
    }

    /// The end of dnsmasq's log, for failure messages.
    fn dnsmasq_said(&self) -> String {
        format!("dnsmasq said:\n{}", ferric_runner::tail_lines(&self.dnsmasq_log(), LOG_LINES))
    }

    /// Makes the client end the NIC of another machine.
    fn become_machine(&self, mac: &str) {
        ip("set client MAC", &["-n", &self.client_ns, "link", "set", CLIENT_IFACE, "address", mac]);
    }

    /// Asks for a lease with udhcpc, sending `options` (`-x` values); `None` when no server answered.
    fn ask(&self, tries: &str, options: &[&str]) -> Option<Offer> {
        let _ = std::fs::remove_file(self.offer_file());
        let mut command = Command::new("timeout");
        command.args([COMMAND_TIME_LIMIT, "ip", "netns", "exec", &self.client_ns, "busybox", "udhcpc"]);
        command.args(["-i", CLIENT_IFACE, "-f", "-q", "-n", "-t", tries, "-T", "1", "-s"]);
        command.arg(self.files.path().join("udhcpc.script"));
        for option in options {
            command.args(["-x", option]);
        }
        let outcome = ferric_runner::run("ask for a DHCP lease", &mut command);
        let offer = std::fs::read_to_string(self.offer_file()).ok().map(|text| {
            let mut lines = text.lines().map(str::to_owned);
            let mut next = || lines.next().unwrap_or_default();
            Offer { boot_file: next(), siaddr: next(), address: next() }
        });
        assert_eq!(outcome.is_ok(), offer.is_some(), "udhcpc's exit and its script disagree: {outcome:?}");
        offer
    }

    fn assert_boot_file(&self, options: &[&str], expected: &str) {
        let offer = self.ask(ANSWERED_TRIES, options).unwrap_or_else(|| panic!("no lease; {}", self.dnsmasq_said()));
        assert_eq!(offer.boot_file, expected, "with {options:?}; {}", self.dnsmasq_said());
        assert_eq!(offer.siaddr, SERVER_ADDRESS.to_string(), "next server");
        let address: Ipv4Addr = offer.address.parse().unwrap();
        assert!((100..=200).contains(&address.octets()[3]), "{address} outside the range");
    }

    fn assert_ignored(&self, mac: &str) {
        let offer = self.ask(UNANSWERED_TRIES, &[]);
        assert_eq!(offer, None, "{mac} is not enrolled; {}", self.dnsmasq_said());
        assert!(self.dnsmasq_log().contains(&format!("{mac} ignored")), "{}", self.dnsmasq_said());
    }

    /// Fetches `name` over TFTP from the client side and checks it is the iPXE binary of that name.
    fn assert_tftp_serves(&self, name: &str) {
        let fetched = self.files.path().join(name);
        run(
            "fetch over TFTP",
            Command::new("timeout")
                .args([COMMAND_TIME_LIMIT, "ip", "netns", "exec", &self.client_ns, "curl", "-sS", "--max-time", "15"])
                .arg("-o")
                .arg(&fetched)
                .arg(format!("tftp://{SERVER_ADDRESS}/{name}")),
        );
        let original = std::fs::read(Path::new(IPXE_DIR).join(name)).unwrap();
        assert!(std::fs::read(&fetched).unwrap() == original, "{name} differs from {IPXE_DIR}/{name}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.dnsmasq.take());
        for namespace in [&self.client_ns, &self.server_ns] {
            let _ = ferric_runner::run("delete namespace", Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

fn port(mac: &str) -> Port {
    Port {
        uuid: uuid::Uuid::new_v4().to_string(),
        address: mac.to_owned(),
        node_uuid: NODE_UUID.to_owned(),
        pxe_enabled: true,
        extra: Default::default(),
        created_at: "2024-01-01T00:00:00+00:00".to_owned(),
        updated_at: None,
    }
}

#[tokio::test]
async fn only_enrolled_macs_get_ipxe_over_tftp_then_the_boot_script() {
    let started = Instant::now();
    let store = Store::open_in_memory().unwrap();
    let first_port = port(FIRST_MAC);
    let first_uuid = first_port.uuid.clone();
    store
        .run::<_, StoreError, _>(move |tx| {
            let node = Node::new(NODE_UUID.into(), "ipmi".into(), ProvisionState::Manageable, "t".into());
            tx.insert_node(&node)?;
            tx.insert_port(&first_port)
        })
        .await
        .unwrap();
    let mut lab = Lab::new();
    let mut hosts = lab.start_dnsmasq().await;
    assert!(sync_hosts(&store, &mut hosts).await.unwrap(), "the enrolled MAC is written");
    assert_eq!(std::fs::read_to_string(hosts.path()).unwrap(), format!("{FIRST_MAC}\n"));
    let pid = lab.dnsmasq_pid();

    // PXE firmware gets iPXE for its architecture over TFTP; iPXE (user class or option 175) the script.
    lab.assert_boot_file(&[], "undionly.kpxe");
    lab.assert_boot_file(&["93:0007"], "ipxe.efi");
    lab.assert_boot_file(&["93:0009"], "ipxe.efi");
    let boot_script = format!("{PUBLIC_URL}/boot.ipxe");
    lab.assert_boot_file(&[&format!("77:{IPXE_USER_CLASS}")], &boot_script);
    lab.assert_boot_file(&["93:0007", "175:130101"], &boot_script);
    lab.assert_tftp_serves("undionly.kpxe");
    lab.assert_tftp_serves("ipxe.efi");

    lab.become_machine(SECOND_MAC);
    lab.assert_ignored(SECOND_MAC);

    // Enrolling the second machine and removing the first take effect without restarting dnsmasq.
    store.run::<_, StoreError, _>(move |tx| tx.insert_port(&port(SECOND_MAC))).await.unwrap();
    assert!(sync_hosts(&store, &mut hosts).await.unwrap());
    assert!(!sync_hosts(&store, &mut hosts).await.unwrap(), "nothing changed: nothing written");
    lab.assert_boot_file(&[], "undionly.kpxe");
    store.run::<_, StoreError, _>(move |tx| tx.delete_port(&first_uuid)).await.unwrap();
    assert!(sync_hosts(&store, &mut hosts).await.unwrap());
    lab.become_machine(FIRST_MAC);
    lab.assert_ignored(FIRST_MAC);
    assert_eq!(lab.dnsmasq_pid(), pid, "dnsmasq was restarted");
    let manager = lab.dnsmasq.as_mut().unwrap();
    if let Ok(exited) = tokio::time::timeout(Duration::from_millis(100), manager.exited()).await {
        panic!("{exited}");
    }
    assert!(started.elapsed() < TEST_TIME_LIMIT, "took {:?}", started.elapsed());
}

/// dnsmasq itself accepts each variant of the configuration (the golden files only pin the text).
#[test]
fn dnsmasq_accepts_every_configuration_variant() {
    let dir = tempfile::tempdir().unwrap();
    let ipxe = IpxeBinaries::find(Path::new(IPXE_DIR)).unwrap();
    let bios_only = IpxeBinaries { uefi: None, ..ipxe.clone() };
    let proxy: AddressMode = "10.77.0.0,proxy,255.255.255.0".parse().unwrap();
    let variants = [(RANGE.parse().unwrap(), ipxe.clone()), (RANGE.parse().unwrap(), bios_only), (proxy, ipxe)];
    for (index, (addresses, ipxe)) in variants.into_iter().enumerate() {
        let mut config = DhcpConfig::new("lo", addresses, PUBLIC_URL, ipxe, dir.path());
        config.router = Some(SERVER_ADDRESS);
        config.dns_servers = vec![SERVER_ADDRESS];
        let file = dir.path().join(format!("dnsmasq-{index}.conf"));
        std::fs::write(&file, render(&config)).unwrap();
        let checked = ferric_runner::run(
            "check the dnsmasq configuration",
            Command::new("dnsmasq").arg("--test").arg(format!("--conf-file={}", file.display())),
        )
        .unwrap_or_else(|error| panic!("{error}\n{}", render(&config)));
        assert!(checked.stderr_tail.contains("syntax check OK"), "{}", checked.stderr_tail);
    }
}
