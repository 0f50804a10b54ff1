//! LLDP neighbours heard on the live system within a short window, in IPA's shape: per interface the
//! TLVs of the first LLDPDU heard, as `(type, value as lower-case hex)`, the End TLV included.
//!
//! One `AF_PACKET` socket listens on all interfaces at once and joins the LLDP multicast group on each
//! (as lldpd does) instead of switching the NICs to promiscuous mode (as IPA does).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType};
use nix::sys::time::TimeVal;

const ETHERTYPE_LLDP: u16 = 0x88cc;
/// Nearest-bridge group address; the other two LLDP groups are not forwarded to hosts either way.
const LLDP_MULTICAST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
/// `PACKET_OUTGOING` in `sockaddr_ll.sll_pkttype`: our own transmissions, looped back to the socket.
const PACKET_OUTGOING: u8 = 4;
const ETHERNET_HEADER: usize = 14;

pub type Tlvs = Vec<(u8, String)>;

/// Listens on `interfaces` for at most `window`; returns as soon as each has heard one LLDPDU.
/// Interfaces that heard nothing are absent. Failures are logged: LLDP never fails an inventory.
pub fn listen(interfaces: &[&str], window: Duration) -> BTreeMap<String, Tlvs> {
    let mut heard = BTreeMap::new();
    if interfaces.is_empty() || window.is_zero() {
        return heard;
    }
    let deadline = Instant::now() + window;
    let socket =
        match socket::socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::EthAll) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!("LLDP: cannot open a packet socket: {e}");
                return heard;
            }
        };
    let mut waiting: HashMap<usize, &str> = HashMap::new();
    for name in interfaces {
        match nix::net::if_::if_nametoindex(*name) {
            Ok(index) => {
                if let Err(e) = membership::join(socket.as_fd(), index, LLDP_MULTICAST) {
                    tracing::debug!("LLDP: cannot join the LLDP group on {name}: {e}");
                }
                waiting.insert(index as usize, name);
            }
            Err(e) => tracing::warn!("LLDP: no interface {name}: {e}"),
        }
    }
    let mut frame = [0u8; 1600];
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let timeout = TimeVal::new(left.as_secs() as _, left.subsec_micros().max(1) as _);
        if let Err(e) = socket::setsockopt(&socket, sockopt::ReceiveTimeout, &timeout) {
            tracing::warn!("LLDP: cannot set the receive timeout: {e}");
            break;
        }
        let (len, from) = match socket::recvfrom::<LinkAddr>(socket.as_raw_fd(), &mut frame) {
            Ok(received) => received,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("LLDP: receive failed: {e}");
                break;
            }
        };
        let Some(from) = from.filter(|from| from.pkttype() != PACKET_OUTGOING) else { continue };
        let frame = &frame[..len];
        if frame.len() < ETHERNET_HEADER || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_LLDP {
            continue;
        }
        if let Some(name) = waiting.remove(&from.ifindex()) {
            let tlvs = parse_tlvs(&frame[ETHERNET_HEADER..]);
            tracing::info!("LLDP: heard a neighbour on {name} ({} TLVs)", tlvs.len());
            heard.insert(name.to_owned(), tlvs);
        }
    }
    heard
}

/// Splits an LLDPDU into TLVs (7-bit type, 9-bit length); stops after the End TLV, so that Ethernet
/// padding is not read as more End TLVs. A value cut short by the frame end is kept as far as it goes.
pub fn parse_tlvs(mut pdu: &[u8]) -> Tlvs {
    let mut tlvs = Vec::new();
    while pdu.len() >= 2 {
        let header = u16::from_be_bytes([pdu[0], pdu[1]]);
        let kind = (header >> 9) as u8;
        let len = usize::from(header & 0x1ff);
        let value = &pdu[2..(2 + len).min(pdu.len())];
        tlvs.push((kind, hex::encode(value)));
        pdu = &pdu[(2 + len).min(pdu.len())..];
        if kind == 0 {
            break;
        }
    }
    tlvs
}

#[allow(unsafe_code)]
mod membership {
    use std::os::fd::{AsRawFd, BorrowedFd};

    use nix::errno::Errno;
    use nix::libc;

    /// `PACKET_ADD_MEMBERSHIP` of a multicast address on one interface; dropped with the socket.
    pub(super) fn join(socket: BorrowedFd<'_>, ifindex: u32, group: [u8; 6]) -> nix::Result<()> {
        let mut request = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_MULTICAST as libc::c_ushort,
            mr_alen: group.len() as libc::c_ushort,
            mr_address: [0; 8],
        };
        request.mr_address[..group.len()].copy_from_slice(&group);
        // SAFETY: `request` is a valid `packet_mreq` that lives across the call, and the length passed
        // is its size; the kernel only reads it.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&request as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        Errno::result(result).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_parsing() {
        // Chassis id (MAC), port id (ifname "va"), TTL 120, system name "sw1", End, then padding.
        let frame =
            hex::decode("020704aa4c76b86a49040305766106020078 0a03737731 0000 000000".replace(' ', "")).unwrap();
        let cases: [(&str, &[u8], Tlvs); 4] = [
            (
                "full LLDPDU with padding after the End TLV",
                &frame,
                vec![
                    (1, "04aa4c76b86a49".into()),
                    (2, "057661".into()),
                    (3, "0078".into()),
                    (5, "737731".into()),
                    (0, String::new()),
                ],
            ),
            ("value cut by the frame end", &[0x02, 0x07, 0x04, 0xaa], vec![(1, "04aa".into())]),
            ("a lone byte", &[0x02], vec![]),
            ("empty", &[], vec![]),
        ];
        for (case, pdu, expected) in cases {
            assert_eq!(parse_tlvs(pdu), expected, "{case}");
        }
    }

    #[test]
    fn nothing_to_listen_on_returns_at_once() {
        let started = Instant::now();
        assert!(listen(&[], Duration::from_secs(30)).is_empty());
        assert!(listen(&["lo"], Duration::ZERO).is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
