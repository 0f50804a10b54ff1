//! Network interfaces: finding them in sysfs, and configuring them with the classic
//! `SIOC*` ioctls (a handful of calls; far smaller than an rtnetlink client).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("interface name {0:?} is too long")]
    NameTooLong(String),
    #[error("could not open a socket for interface ioctls")]
    Socket(#[source] Errno),
    #[error("{action} on {iface} failed")]
    Ioctl {
        action: &'static str,
        iface: String,
        #[source]
        source: Errno,
    },
}

/// An Ethernet interface found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// Lower-case, colon-separated, as the kernel prints it.
    pub mac: String,
}

impl Nic {
    /// The MAC as bytes, for DHCP's `chaddr`.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let mut bytes = [0; 6];
        let mut parts = self.mac.split(':');
        for byte in &mut bytes {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        parts.next().is_none().then_some(bytes)
    }
}

/// `ARPHRD_ETHER`: the `type` of Ethernet interfaces in sysfs (virtio-net, e1000, veth...).
const ARPHRD_ETHER: &str = "1";

/// The Ethernet interfaces in `sys_class_net` (e.g. `/sys/class/net`), sorted by name.
/// Loopback and non-Ethernet devices (tunnels, etc.) are left out.
pub fn list_nics(sys_class_net: &Path) -> std::io::Result<Vec<Nic>> {
    let mut nics = Vec::new();
    for entry in std::fs::read_dir(sys_class_net)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let read = |file: &str| std::fs::read_to_string(entry.path().join(file)).map(|text| text.trim().to_string());
        if name == "lo" || read("type").ok().as_deref() != Some(ARPHRD_ETHER) {
            continue;
        }
        if let Ok(mac) = read("address") {
            nics.push(Nic { name, mac });
        }
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

/// Whether the link is up. Reading `carrier` fails while the interface is down: no carrier.
pub fn has_carrier(sys_class_net: &Path, iface: &str) -> bool {
    std::fs::read_to_string(sys_class_net.join(iface).join("carrier")).is_ok_and(|text| text.trim() == "1")
}

/// Brings an interface up (`IFF_UP`), keeping its other flags.
pub fn set_up(iface: &str) -> Result<(), NetifError> {
    let socket = ioctl_socket()?;
    let mut request = ifreq(iface)?;
    ifreq_ioctl(&socket, libc::SIOCGIFFLAGS, &mut request).map_err(|source| ioctl_error("get flags", iface, source))?;
    request.ifr_ifru.ifru_flags = read_flags(&request) | libc::IFF_UP as libc::c_short;
    ifreq_ioctl(&socket, libc::SIOCSIFFLAGS, &mut request).map_err(|source| ioctl_error("set flags", iface, source))
}

/// Sets an interface's (primary) IPv4 address and netmask; the kernel adds the subnet route.
pub fn set_ipv4(iface: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> Result<(), NetifError> {
    let socket = ioctl_socket()?;
    let mut request = ifreq(iface)?;
    request.ifr_ifru.ifru_addr = sockaddr(address);
    ifreq_ioctl(&socket, libc::SIOCSIFADDR, &mut request)
        .map_err(|source| ioctl_error("set address", iface, source))?;
    request.ifr_ifru.ifru_netmask = sockaddr(netmask);
    ifreq_ioctl(&socket, libc::SIOCSIFNETMASK, &mut request).map_err(|source| ioctl_error("set netmask", iface, source))
}

/// Adds `default via <gateway> dev <iface>`. An existing default route is left alone.
pub fn add_default_route(iface: &str, gateway: Ipv4Addr) -> Result<(), NetifError> {
    let socket = ioctl_socket()?;
    let mut device = ifreq(iface)?.ifr_name;
    let mut route = libc::rtentry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: Default::default(),
        rt_metric: 0,
        rt_dev: device.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match add_route_ioctl(&socket, &mut route) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(ioctl_error("add default route", iface, source)),
    }
}

fn ioctl_error(action: &'static str, iface: &str, source: Errno) -> NetifError {
    NetifError::Ioctl { action, iface: iface.to_string(), source }
}

fn ioctl_socket() -> Result<OwnedFd, NetifError> {
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(NetifError::Socket)
}

/// An `ifreq` naming `iface` (NUL-terminated, so at most `IFNAMSIZ - 1` bytes).
fn ifreq(iface: &str) -> Result<libc::ifreq, NetifError> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(NetifError::NameTooLong(iface.to_string()));
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in name.iter_mut().zip(iface.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(libc::ifreq { ifr_name: name, ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 } })
}

/// An `AF_INET` `sockaddr` (port 0): family, then port and address in network order.
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (slot, octet) in data[2..6].iter_mut().zip(address.octets()) {
        *slot = octet as libc::c_char;
    }
    libc::sockaddr { sa_family: libc::AF_INET as libc::sa_family_t, sa_data: data }
}

#[allow(unsafe_code)]
fn read_flags(request: &libc::ifreq) -> libc::c_short {
    // SAFETY: called after SIOCGIFFLAGS filled the union's `ifru_flags` member; any bit
    // pattern is a valid c_short.
    unsafe { request.ifr_ifru.ifru_flags }
}

#[allow(unsafe_code)]
fn ifreq_ioctl(socket: &OwnedFd, request: libc::Ioctl, ifreq: &mut libc::ifreq) -> Result<(), Errno> {
    // SAFETY: the requests passed here (SIOC[GS]IFFLAGS, SIOCSIFADDR, SIOCSIFNETMASK) read
    // and write exactly one `struct ifreq`, which `ifreq` points to for the whole call.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), request, ifreq as *mut libc::ifreq) };
    Errno::result(result).map(drop)
}

#[allow(unsafe_code)]
fn add_route_ioctl(socket: &OwnedFd, route: &mut libc::rtentry) -> Result<(), Errno> {
    // SAFETY: SIOCADDRT reads one `struct rtentry`; `route` is valid for the call and its
    // `rt_dev` points to a NUL-terminated name that outlives the call (the caller's array).
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCADDRT, route as *mut libc::rtentry) };
    Errno::result(result).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_interface(sys_class_net: &Path, name: &str, kind: &str, mac: &str, carrier: Option<&str>) {
        let dir = sys_class_net.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
        if let Some(carrier) = carrier {
            std::fs::write(dir.join("carrier"), format!("{carrier}\n")).unwrap();
        }
    }

    #[test]
    fn lists_ethernet_nics_but_not_loopback_or_tunnels() {
        let net = tempfile::tempdir().unwrap();
        fake_interface(net.path(), "lo", "772", "00:00:00:00:00:00", Some("1"));
        fake_interface(net.path(), "ens4", "1", "52:54:00:12:34:57", Some("0"));
        fake_interface(net.path(), "ens3", "1", "52:54:00:12:34:56", Some("1"));
        fake_interface(net.path(), "sit0", "776", "00:00:00:00", None);

        let nics = list_nics(net.path()).unwrap();
        let names: Vec<&str> = nics.iter().map(|nic| nic.name.as_str()).collect();
        assert_eq!(names, ["ens3", "ens4"]);
        assert_eq!(nics[0].mac, "52:54:00:12:34:56");
        assert_eq!(nics[0].mac_bytes(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert!(has_carrier(net.path(), "ens3"));
        assert!(!has_carrier(net.path(), "ens4"));
        assert!(!has_carrier(net.path(), "sit0"), "no carrier file means down");
    }

    #[test]
    fn malformed_mac_has_no_bytes() {
        for mac in ["52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:zz"] {
            assert_eq!(Nic { name: "x".into(), mac: mac.into() }.mac_bytes(), None, "{mac}");
        }
    }

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let address = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(address.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = address.sa_data.iter().map(|&b| b as u8).collect();
        assert_eq!(bytes[..6], [0, 0, 10, 0, 2, 15]);
    }

    #[test]
    fn overlong_interface_name_is_rejected() {
        assert!(matches!(ifreq("a-very-long-ifname"), Err(NetifError::NameTooLong(_))));
        assert!(ifreq("fifteen-chars-x").is_ok());
    }
}
