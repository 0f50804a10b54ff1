//! dnsmasq configurations against golden files. Set `UPDATE_GOLDEN=1` to rewrite them after a deliberate change.
//! `tests/tests/dhcp_dnsmasq.rs` (ferric-tests) checks the same configurations with a real dnsmasq.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferric_controller::dhcp::{render, AddressMode, DhcpConfig, IpxeBinaries};

const PUBLIC_URL: &str = "http://10.0.2.2:6385/";
const STATE_DIR: &str = "/var/lib/ferric/dhcp";

fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

fn config(addresses: &str, uefi: Option<&str>) -> DhcpConfig {
    let ipxe = IpxeBinaries {
        bios: "/usr/lib/ipxe/undionly.kpxe".into(),
        uefi: uefi.map(|name| Path::new("/usr/lib/ipxe").join(name)),
    };
    DhcpConfig::new("eno1", addresses.parse().unwrap(), PUBLIC_URL, ipxe, Path::new(STATE_DIR))
}

#[test]
fn configurations_match_their_golden_files() {
    let mut uefi = config("10.0.2.100,10.0.2.200,255.255.255.0", Some("snponly.efi"));
    uefi.router = Some(Ipv4Addr::new(10, 0, 2, 1));
    uefi.dns_servers = vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)];
    uefi.lease_time = Duration::from_secs(600);
    check_golden("dnsmasq-uefi.conf", &render(&uefi));

    let mut bios = config("10.0.2.100,10.0.2.200,255.255.255.0", None);
    bios.user = Some("dnsmasq".into());
    check_golden("dnsmasq-bios.conf", &render(&bios));

    let proxy = config("10.0.2.0,proxy,255.255.255.0", Some("ipxe.efi"));
    assert!(matches!(proxy.addresses, AddressMode::Proxy { .. }));
    check_golden("dnsmasq-proxy.conf", &render(&proxy));
}

#[test]
fn the_boot_script_url_is_the_controllers_boot_ipxe() {
    let config = config("10.0.2.100,10.0.2.200,255.255.255.0", None);
    assert_eq!(config.boot_script_url, "http://10.0.2.2:6385/boot.ipxe");
    assert_eq!(config.hosts_file(), Path::new("/var/lib/ferric/dhcp/hosts"));
    assert_eq!(config.tftp_root(), Path::new("/var/lib/ferric/dhcp/tftp"));
}
