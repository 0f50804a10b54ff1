//! Network interfaces as IPA lists them: those with a `device` link (physical NICs; no loopback,
//! bridges, bonds or veths), with the PCI ids and driver of that device.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ferric_protocol::inventory::Interface;

use super::sysfs::{link_name, read_trimmed, sorted_entries, sysname, Sysfs};

pub(crate) fn interfaces(sys: &Sysfs) -> Vec<Interface> {
    let net = sys.path("sys/class/net");
    sorted_entries(&net)
        .into_iter()
        .filter_map(|name| {
            let dir = net.join(&name);
            let device = dir.join("device");
            if !device.exists() {
                return None;
            }
            Some(Interface {
                mac_address: ferric_protocol::normalize_mac(&read_trimmed(&dir.join("address"))?)?,
                has_carrier: read_trimmed(&dir.join("carrier")).as_deref() == Some("1"),
                // `-1` (unknown) when there is no link.
                speed_mbps: read_trimmed(&dir.join("speed")).and_then(|s| s.parse().ok()),
                driver: link_name(&device.join("driver")),
                pci_address: pci_address(sys, &device),
                vendor: read_trimmed(&device.join("vendor")),
                product: read_trimmed(&device.join("device")),
                name,
                ..Default::default()
            })
        })
        .collect()
}

/// The PCI address (`0000:00:02.0`) of the NIC: its device, or the PCI device above a virtio one.
fn pci_address(sys: &Sysfs, device: &Path) -> Option<String> {
    let resolved = sys.resolve(device)?;
    sys.ancestors(&resolved).map(|d| sysname(&d)).find(|name| {
        let b = name.as_bytes();
        b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
    })
}

/// Per interface name, its first IPv4 address and its IPv6 address (a global one before a
/// link-local one, without the `%scope`), from the live system.
pub(crate) fn addresses() -> BTreeMap<String, (Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let mut found: BTreeMap<String, (Option<Ipv4Addr>, Option<Ipv6Addr>)> = BTreeMap::new();
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return found;
    };
    for entry in addresses {
        let Some(address) = entry.address else { continue };
        let slot = found.entry(entry.interface_name).or_default();
        if let Some(v4) = address.as_sockaddr_in() {
            slot.0.get_or_insert(v4.ip());
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let ip = v6.ip();
            let better = match slot.1 {
                None => true,
                Some(current) => current.is_unicast_link_local() && !ip.is_unicast_link_local(),
            };
            if better {
                slot.1 = Some(ip);
            }
        }
    }
    found
}
