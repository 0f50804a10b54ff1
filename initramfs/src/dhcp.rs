//! A minimal DHCPv4 client (RFC 2131): DISCOVER, OFFER, REQUEST, ACK, on a UDP socket
//! bound to one interface. Replies are requested as broadcasts (BOOTP broadcast flag), as
//! the interface has no address to receive unicast on yet. A lease is later extended with
//! a REQUEST from the address held ([`extend_lease`]), at the times [`lease_phase`] gives.
//!
//! Packet encoding and decoding and the lease timing are pure functions; [`obtain_lease`]
//! and [`extend_lease`] do the I/O.

use std::ffi::OsString;
use std::hash::BuildHasher;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// The wait for an answer to each try; the number of entries is the number of tries.
pub const DEFAULT_TIMEOUTS: [Duration; 4] =
    [Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(8), Duration::from_secs(8)];
/// Shortest wait before retrying a failed extension (RFC 2131 4.4.5 says 60 seconds).
pub const MIN_RETRY: Duration = Duration::from_secs(60);
/// Option 51's value for a lease that never expires.
const INFINITE_LEASE: u32 = u32::MAX;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const BROADCAST_FLAG: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header before the magic cookie.
const HEADER_LEN: usize = 236;
/// RFC 1542: some servers drop shorter BOOTP messages.
const MIN_PACKET_LEN: usize = 300;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETER_REQUEST_LIST: u8 = 55;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_byte(byte: u8) -> Option<Self> {
        use MessageType::*;
        [Discover, Offer, Request, Decline, Ack, Nak, Release, Inform].into_iter().find(|kind| *kind as u8 == byte)
    }
}

/// What the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage {
    Discover,
    /// Accepts `address` offered by `server` (the SELECTING state's REQUEST).
    Request {
        address: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// Asks to extend the lease on `address`, which the client holds and puts in `ciaddr`
    /// (the RENEWING and REBINDING states' REQUEST); replies come by unicast.
    Renew {
        address: Ipv4Addr,
    },
}

impl ClientMessage {
    fn name(self) -> &'static str {
        match self {
            ClientMessage::Discover => "discover",
            ClientMessage::Request { .. } => "request",
            ClientMessage::Renew { .. } => "renewal request",
        }
    }
}

/// Encodes a client message: BOOTREQUEST with our MAC as `chaddr` and client identifier,
/// and a parameter request for netmask, router and DNS. Without an address yet, the
/// broadcast flag asks for broadcast replies.
pub fn encode(message: ClientMessage, xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut packet = vec![0; HEADER_LEN];
    packet[0] = BOOTREQUEST;
    packet[1] = HTYPE_ETHERNET;
    packet[2] = mac.len() as u8;
    packet[4..8].copy_from_slice(&xid.to_be_bytes());
    match message {
        ClientMessage::Renew { address } => packet[12..16].copy_from_slice(&address.octets()),
        ClientMessage::Discover | ClientMessage::Request { .. } => {
            packet[10..12].copy_from_slice(&BROADCAST_FLAG.to_be_bytes())
        }
    }
    packet[28..34].copy_from_slice(&mac);
    packet.extend_from_slice(&MAGIC_COOKIE);

    let mut option = |code: u8, data: &[u8]| {
        packet.push(code);
        packet.push(data.len() as u8);
        packet.extend_from_slice(data);
    };
    let kind = match message {
        ClientMessage::Discover => MessageType::Discover,
        ClientMessage::Request { .. } | ClientMessage::Renew { .. } => MessageType::Request,
    };
    option(OPT_MESSAGE_TYPE, &[kind as u8]);
    let mut client_id = vec![HTYPE_ETHERNET];
    client_id.extend_from_slice(&mac);
    option(OPT_CLIENT_ID, &client_id);
    if let ClientMessage::Request { address, server } = message {
        option(OPT_REQUESTED_IP, &address.octets());
        option(OPT_SERVER_ID, &server.octets());
    }
    option(OPT_PARAMETER_REQUEST_LIST, &[OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS]);
    packet.push(OPT_END);
    if packet.len() < MIN_PACKET_LEN {
        packet.resize(MIN_PACKET_LEN, OPT_PAD);
    }
    packet
}

/// A server's reply, with the fields the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_type: MessageType,
    pub xid: u32,
    pub client_mac: [u8; 6],
    /// `yiaddr`: the address offered or assigned.
    pub your_address: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub lease_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is too short for a DHCP message")]
    TooShort(usize),
    #[error("not a BOOTREPLY (op {0})")]
    NotReply(u8),
    #[error("no DHCP magic cookie")]
    NoMagicCookie,
    #[error("option {0} runs past the end of the packet")]
    TruncatedOption(u8),
    #[error("option {code} has length {len}, which is invalid for it")]
    BadOptionLength { code: u8, len: usize },
    #[error("no (known) DHCP message type")]
    NoMessageType,
}

/// Decodes a BOOTREPLY carrying DHCP options. Unknown options are skipped.
pub fn decode_reply(packet: &[u8]) -> Result<Reply, DecodeError> {
    if packet.len() < HEADER_LEN + MAGIC_COOKIE.len() {
        return Err(DecodeError::TooShort(packet.len()));
    }
    if packet[0] != BOOTREPLY {
        return Err(DecodeError::NotReply(packet[0]));
    }
    if packet[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
        return Err(DecodeError::NoMagicCookie);
    }
    let address_at =
        |offset: usize| Ipv4Addr::new(packet[offset], packet[offset + 1], packet[offset + 2], packet[offset + 3]);
    let mut client_mac = [0; 6];
    client_mac.copy_from_slice(&packet[28..34]);

    let mut message_type = None;
    let mut reply = Reply {
        message_type: MessageType::Offer,
        xid: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        client_mac,
        your_address: address_at(16),
        server_id: None,
        subnet_mask: None,
        routers: Vec::new(),
        dns_servers: Vec::new(),
        lease_seconds: None,
    };
    let mut rest = &packet[HEADER_LEN + 4..];
    while let Some((&code, after_code)) = rest.split_first() {
        match code {
            OPT_PAD => {
                rest = after_code;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let (&len, after_len) = after_code.split_first().ok_or(DecodeError::TruncatedOption(code))?;
        let len = usize::from(len);
        if after_len.len() < len {
            return Err(DecodeError::TruncatedOption(code));
        }
        let (data, after_data) = after_len.split_at(len);
        rest = after_data;
        let bad_length = || DecodeError::BadOptionLength { code, len };
        match code {
            OPT_MESSAGE_TYPE => message_type = data.first().copied().and_then(MessageType::from_byte),
            OPT_SERVER_ID => reply.server_id = Some(single_address(data).ok_or_else(bad_length)?),
            OPT_SUBNET_MASK => reply.subnet_mask = Some(single_address(data).ok_or_else(bad_length)?),
            OPT_ROUTER => reply.routers = address_list(data).ok_or_else(bad_length)?,
            OPT_DNS => reply.dns_servers = address_list(data).ok_or_else(bad_length)?,
            OPT_LEASE_TIME => {
                let bytes: [u8; 4] = data.try_into().map_err(|_| bad_length())?;
                reply.lease_seconds = Some(u32::from_be_bytes(bytes));
            }
            _ => {}
        }
    }
    reply.message_type = message_type.ok_or(DecodeError::NoMessageType)?;
    Ok(reply)
}

fn single_address(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

fn address_list(data: &[u8]) -> Option<Vec<Ipv4Addr>> {
    let chunks = data.chunks_exact(4);
    (!data.is_empty() && chunks.remainder().is_empty())
        .then(|| chunks.map(|chunk| Ipv4Addr::new(chunk[0], chunk[1], chunk[2], chunk[3])).collect())
}

/// An address assignment from a DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_seconds: Option<u32>,
}

impl Lease {
    /// The lease an ACK grants; options the ACK omits are taken from the OFFER.
    pub fn from_ack(ack: &Reply, offer: &Reply, server: Ipv4Addr) -> Self {
        let netmask = ack.subnet_mask.or(offer.subnet_mask).unwrap_or_else(|| classful_netmask(ack.your_address));
        let routers = if ack.routers.is_empty() { &offer.routers } else { &ack.routers };
        let dns_servers = if ack.dns_servers.is_empty() { &offer.dns_servers } else { &ack.dns_servers };
        Lease {
            address: ack.your_address,
            netmask,
            router: routers.first().copied(),
            dns_servers: dns_servers.clone(),
            server,
            lease_seconds: ack.lease_seconds.or(offer.lease_seconds),
        }
    }

    /// The lease an ACK to a renewal grants; options the ACK omits keep their old values.
    pub fn renewed(&self, ack: &Reply, server: Ipv4Addr) -> Self {
        Lease {
            address: if ack.your_address.is_unspecified() { self.address } else { ack.your_address },
            netmask: ack.subnet_mask.unwrap_or(self.netmask),
            router: ack.routers.first().copied().or(self.router),
            dns_servers: if ack.dns_servers.is_empty() { self.dns_servers.clone() } else { ack.dns_servers.clone() },
            server,
            lease_seconds: ack.lease_seconds.or(self.lease_seconds),
        }
    }

    /// The netmask as a prefix length (`/24`).
    pub fn prefix_len(&self) -> u32 {
        u32::from(self.netmask).leading_ones()
    }
}

/// Where a lease stands some time after it was granted (RFC 2131 4.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeasePhase {
    /// Before T1 (half the lease): nothing to do.
    Bound,
    /// From T1 to T2 (7/8 of the lease): ask the server that granted it to extend it.
    Renewing,
    /// From T2 to the end of the lease: ask any server.
    Rebinding,
    /// Over: start again with DISCOVER.
    Expired,
}

/// The lease's length, `None` if it never ends (no lease time, or the infinite one).
fn finite_lease(lease_seconds: Option<u32>) -> Option<Duration> {
    lease_seconds.filter(|&seconds| seconds != INFINITE_LEASE).map(|seconds| Duration::from_secs(seconds.into()))
}

/// T1, T2 and the end of a lease of length `lease`.
fn phase_starts(lease: Duration) -> [Duration; 3] {
    [lease / 2, lease * 7 / 8, lease]
}

/// The phase of a lease of `lease_seconds` (option 51) `elapsed` after it was granted.
pub fn lease_phase(lease_seconds: Option<u32>, elapsed: Duration) -> LeasePhase {
    let Some(lease) = finite_lease(lease_seconds) else { return LeasePhase::Bound };
    let [t1, t2, end] = phase_starts(lease);
    match elapsed {
        e if e < t1 => LeasePhase::Bound,
        e if e < t2 => LeasePhase::Renewing,
        e if e < end => LeasePhase::Rebinding,
        _ => LeasePhase::Expired,
    }
}

/// How long to wait after a failed attempt at `elapsed` before the next: half the time
/// left in the current phase, at least [`MIN_RETRY`], but never past the next phase's
/// start, which calls for a different attempt (RFC 2131 4.4.5).
pub fn retry_delay(lease_seconds: Option<u32>, elapsed: Duration) -> Duration {
    let next_phase =
        finite_lease(lease_seconds).and_then(|lease| phase_starts(lease).into_iter().find(|&t| t > elapsed));
    match next_phase {
        Some(start) => {
            let left = start - elapsed;
            (left / 2).max(MIN_RETRY).min(left)
        }
        None => MIN_RETRY,
    }
}

/// RFC 2131 lets a server omit the mask; fall back to the address class's.
fn classful_netmask(address: Ipv4Addr) -> Ipv4Addr {
    match address.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("could not set up the DHCP socket on {iface} ({step})")]
    Socket {
        iface: String,
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("could not send DHCP {what} on {iface}")]
    Send {
        iface: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not receive on {iface}")]
    Receive {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCP {waiting_for} on {iface} after {tries} tries")]
    NoAnswer { iface: String, waiting_for: &'static str, tries: usize },
    #[error("DHCP server {server} refused our request for {address} (NAK)")]
    Refused { server: Ipv4Addr, address: Ipv4Addr },
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on `iface` (which must be up). Each exchange is sent
/// once per entry of `timeouts`, waiting that long for an answer.
pub fn obtain_lease(iface: &str, mac: [u8; 6], timeouts: &[Duration]) -> Result<Lease, DhcpError> {
    let socket = open_socket(iface)?;
    let exchange = Exchange { socket: &socket, iface, xid: new_xid(mac), mac, timeouts, to: Ipv4Addr::BROADCAST };

    let (offer, offer_source) = exchange.run(ClientMessage::Discover, "offer", |reply| {
        reply.message_type == MessageType::Offer && !reply.your_address.is_unspecified()
    })?;
    let server = offer.server_id.unwrap_or(offer_source);
    let request = ClientMessage::Request { address: offer.your_address, server };
    let (answer, _) = exchange.run(request, "ack", |reply| {
        matches!(reply.message_type, MessageType::Ack | MessageType::Nak)
            && reply.server_id.is_none_or(|id| id == server)
    })?;
    if answer.message_type == MessageType::Nak {
        return Err(DhcpError::Refused { server, address: offer.your_address });
    }
    Ok(Lease::from_ack(&answer, &offer, server))
}

/// Asks to extend `lease`, whose address is on `iface`: sent to `to`, the server that
/// granted it (RENEWING) or the broadcast address (REBINDING). Each try waits for an
/// answer as long as the matching entry of `timeouts`.
pub fn extend_lease(
    iface: &str,
    mac: [u8; 6],
    lease: &Lease,
    to: Ipv4Addr,
    timeouts: &[Duration],
) -> Result<Lease, DhcpError> {
    let socket = open_socket(iface)?;
    let exchange = Exchange { socket: &socket, iface, xid: new_xid(mac), mac, timeouts, to };
    let (answer, source) = exchange.run(ClientMessage::Renew { address: lease.address }, "ack", |reply| {
        matches!(reply.message_type, MessageType::Ack | MessageType::Nak)
    })?;
    let server = answer.server_id.unwrap_or(source);
    if answer.message_type == MessageType::Nak {
        return Err(DhcpError::Refused { server, address: lease.address });
    }
    Ok(lease.renewed(&answer, server))
}

/// A transaction ID unlikely to repeat across boots and clients.
fn new_xid(mac: [u8; 6]) -> u32 {
    std::collections::hash_map::RandomState::new().hash_one((mac, Instant::now())) as u32
}

/// A socket on port 68 that only sees `iface` and may broadcast.
fn open_socket(iface: &str) -> Result<UdpSocket, DhcpError> {
    let error = |step: &'static str| move |source| DhcpError::Socket { iface: iface.to_string(), step, source };
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(error("socket"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(error("SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(error("SO_BROADCAST"))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(iface)).map_err(error("SO_BINDTODEVICE"))?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, CLIENT_PORT)).map_err(error("bind port 68"))?;
    Ok(UdpSocket::from(fd))
}

/// One transaction's sending and matching of replies.
struct Exchange<'a> {
    socket: &'a UdpSocket,
    iface: &'a str,
    xid: u32,
    mac: [u8; 6],
    timeouts: &'a [Duration],
    /// Where messages go: the broadcast address, or a server's when renewing.
    to: Ipv4Addr,
}

impl Exchange<'_> {
    /// Sends `message` and waits for a reply of this transaction that `wanted` accepts,
    /// resending after each timeout. Returns the reply and the address it came from.
    fn run(
        &self,
        message: ClientMessage,
        waiting_for: &'static str,
        wanted: impl Fn(&Reply) -> bool,
    ) -> Result<(Reply, Ipv4Addr), DhcpError> {
        let packet = encode(message, self.xid, self.mac);
        let destination = SocketAddr::from((self.to, SERVER_PORT));
        for timeout in self.timeouts {
            self.socket.send_to(&packet, destination).map_err(|source| DhcpError::Send {
                iface: self.iface.to_string(),
                what: message.name(),
                source,
            })?;
            if let Some(found) = self.receive_until(Instant::now() + *timeout, &wanted)? {
                return Ok(found);
            }
        }
        Err(DhcpError::NoAnswer { iface: self.iface.to_string(), waiting_for, tries: self.timeouts.len() })
    }

    fn receive_until(
        &self,
        deadline: Instant,
        wanted: &impl Fn(&Reply) -> bool,
    ) -> Result<Option<(Reply, Ipv4Addr)>, DhcpError> {
        let mut buffer = [0u8; 1500];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let receive_error = |source| DhcpError::Receive { iface: self.iface.to_string(), source };
            self.socket.set_read_timeout(Some(remaining)).map_err(receive_error)?;
            let (len, source) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(None),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(receive_error(error)),
            };
            // Other clients' transactions and non-DHCP noise on port 68 are not errors.
            let Ok(reply) = decode_reply(&buffer[..len]) else { continue };
            if reply.xid == self.xid && reply.client_mac == self.mac && wanted(&reply) {
                let source = match source {
                    SocketAddr::V4(v4) => *v4.ip(),
                    SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                return Ok(Some((reply, source)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A DHCPOFFER as dnsmasq 2.90 sent it on a veth (range 10.123.45.100-200, router .1,
    /// DNS .53, 1h), captured during development; it also carries options 58, 59 and 28.
    const DNSMASQ_OFFER: &[u8] = include_bytes!("../tests/fixtures/dhcp/dnsmasq-offer.bin");

    /// Walks the options of an encoded client message: (code, data) pairs before END.
    fn options(packet: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut found = Vec::new();
        let mut i = HEADER_LEN + 4;
        while packet[i] != OPT_END {
            let len = usize::from(packet[i + 1]);
            found.push((packet[i], packet[i + 2..i + 2 + len].to_vec()));
            i += 2 + len;
        }
        found
    }

    #[test]
    fn discover_is_a_broadcast_bootrequest_with_our_mac() {
        let packet = encode(ClientMessage::Discover, 0xdead_beef, MAC);
        assert_eq!(packet.len(), MIN_PACKET_LEN);
        assert_eq!(packet[..4], [BOOTREQUEST, HTYPE_ETHERNET, 6, 0]);
        assert_eq!(packet[4..8], [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(packet[10..12], [0x80, 0x00], "broadcast flag");
        assert_eq!(packet[12..28], [0; 16], "ciaddr, yiaddr, siaddr, giaddr are zero");
        assert_eq!(packet[28..34], MAC);
        assert_eq!(packet[236..240], MAGIC_COOKIE);
        assert_eq!(
            options(&packet),
            [
                (OPT_MESSAGE_TYPE, vec![1]),
                (OPT_CLIENT_ID, vec![1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
                (OPT_PARAMETER_REQUEST_LIST, vec![1, 3, 6]),
            ]
        );
    }

    #[test]
    fn request_names_the_address_and_server() {
        let request =
            ClientMessage::Request { address: Ipv4Addr::new(10, 0, 2, 15), server: Ipv4Addr::new(10, 0, 2, 2) };
        let packet = encode(request, 7, MAC);
        assert_eq!(packet[4..8], [0, 0, 0, 7]);
        assert_eq!(
            options(&packet),
            [
                (OPT_MESSAGE_TYPE, vec![3]),
                (OPT_CLIENT_ID, vec![1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
                (OPT_REQUESTED_IP, vec![10, 0, 2, 15]),
                (OPT_SERVER_ID, vec![10, 0, 2, 2]),
                (OPT_PARAMETER_REQUEST_LIST, vec![1, 3, 6]),
            ]
        );
    }

    #[test]
    fn renewal_request_comes_from_the_held_address_without_broadcast_flag() {
        let address = Ipv4Addr::new(10, 0, 2, 15);
        let packet = encode(ClientMessage::Renew { address }, 9, MAC);
        assert_eq!(packet[10..12], [0, 0], "no broadcast flag: we can take unicast now");
        assert_eq!(packet[12..16], address.octets(), "ciaddr");
        assert_eq!(
            options(&packet),
            [
                (OPT_MESSAGE_TYPE, vec![3]),
                (OPT_CLIENT_ID, vec![1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
                (OPT_PARAMETER_REQUEST_LIST, vec![1, 3, 6]),
            ],
            "no requested address or server id when renewing (RFC 2131 4.3.2)"
        );
    }

    #[test]
    fn lease_phases_follow_t1_and_t2() {
        let hour = Some(3600);
        #[rustfmt::skip]
        let cases = [
            (0, LeasePhase::Bound), (1799, LeasePhase::Bound),
            (1800, LeasePhase::Renewing), (3149, LeasePhase::Renewing),
            (3150, LeasePhase::Rebinding), (3599, LeasePhase::Rebinding),
            (3600, LeasePhase::Expired), (100_000, LeasePhase::Expired),
        ];
        for (seconds, phase) in cases {
            assert_eq!(lease_phase(hour, Duration::from_secs(seconds)), phase, "{seconds}s into an hour's lease");
        }
        for endless in [None, Some(u32::MAX)] {
            assert_eq!(lease_phase(endless, Duration::from_secs(u64::from(u32::MAX) * 2)), LeasePhase::Bound);
        }
    }

    #[test]
    fn retries_halve_the_time_left_but_never_skip_a_phase() {
        let secs = Duration::from_secs;
        let hour = Some(3600);
        assert_eq!(retry_delay(hour, secs(1800)), secs(675), "half of the 1350s left before T2");
        assert_eq!(retry_delay(hour, secs(3100)), secs(50), "60s minimum, but T2 comes after 50s");
        assert_eq!(retry_delay(hour, secs(3150)), secs(225), "rebinding: half of the 450s left");
        assert_eq!(retry_delay(hour, secs(3500)), secs(60), "at least a minute");
        assert_eq!(retry_delay(hour, secs(3600)), MIN_RETRY, "expired: keep trying to rediscover");
        let two_minutes = Some(120);
        assert_eq!(retry_delay(two_minutes, secs(60)), secs(45), "the 45s to T2");
    }

    #[test]
    fn renewed_lease_keeps_what_the_ack_omits() {
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_seconds: Some(600),
        };
        let mut ack = decode_reply(&slirp_reply(MessageType::Ack)).unwrap();
        assert_eq!(lease.renewed(&ack, lease.server).lease_seconds, Some(86400), "new lease time");
        ack.routers.clear();
        ack.dns_servers.clear();
        ack.subnet_mask = None;
        ack.lease_seconds = None;
        ack.your_address = Ipv4Addr::UNSPECIFIED;
        assert_eq!(lease.renewed(&ack, lease.server), lease);
    }

    #[test]
    fn decodes_a_real_dnsmasq_offer() {
        let offer = decode_reply(DNSMASQ_OFFER).unwrap();
        assert_eq!(offer.message_type, MessageType::Offer);
        assert_eq!(offer.xid, 0x0f0e_0d0c);
        assert_eq!(offer.client_mac, MAC);
        assert_eq!(offer.your_address, Ipv4Addr::new(10, 123, 45, 157));
        assert_eq!(offer.server_id, Some(Ipv4Addr::new(10, 123, 45, 1)));
        assert_eq!(offer.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(offer.routers, [Ipv4Addr::new(10, 123, 45, 1)]);
        assert_eq!(offer.dns_servers, [Ipv4Addr::new(10, 123, 45, 53)]);
        assert_eq!(offer.lease_seconds, Some(3600));
    }

    /// The reply QEMU's user-mode network (slirp) sends, built field by field.
    fn slirp_reply(message_type: MessageType) -> Vec<u8> {
        let mut packet = vec![0; HEADER_LEN];
        packet[0] = BOOTREPLY;
        packet[1] = 1;
        packet[2] = 6;
        packet[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        packet[16..20].copy_from_slice(&[10, 0, 2, 15]);
        packet[20..24].copy_from_slice(&[10, 0, 2, 2]);
        packet[28..34].copy_from_slice(&MAC);
        packet.extend_from_slice(&MAGIC_COOKIE);
        #[rustfmt::skip]
        packet.extend_from_slice(&[
            53, 1, message_type as u8,
            54, 4, 10, 0, 2, 2,
            51, 4, 0, 1, 0x51, 0x80,
            1, 4, 255, 255, 255, 0,
            3, 4, 10, 0, 2, 2,
            6, 4, 10, 0, 2, 3,
            0, 0,
            255,
        ]);
        packet.resize(548, 0);
        packet
    }

    #[test]
    fn decodes_a_slirp_ack_into_a_lease() {
        let offer = decode_reply(&slirp_reply(MessageType::Offer)).unwrap();
        let ack = decode_reply(&slirp_reply(MessageType::Ack)).unwrap();
        assert_eq!((offer.xid, ack.message_type), (0x1234_5678, MessageType::Ack));
        let lease = Lease::from_ack(&ack, &offer, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(
            lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
                server: Ipv4Addr::new(10, 0, 2, 2),
                lease_seconds: Some(86400),
            }
        );
        assert_eq!(lease.prefix_len(), 24);
    }

    #[test]
    fn ack_without_options_falls_back_to_offer_and_class() {
        let offer = decode_reply(&slirp_reply(MessageType::Offer)).unwrap();
        let mut ack = offer.clone();
        ack.message_type = MessageType::Ack;
        ack.routers.clear();
        ack.dns_servers.clear();
        ack.subnet_mask = None;
        let lease = Lease::from_ack(&ack, &offer, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns_servers, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.netmask, Ipv4Addr::new(255, 255, 255, 0), "from the offer");

        let bare = Reply { subnet_mask: None, ..ack.clone() };
        assert_eq!(Lease::from_ack(&bare, &bare, Ipv4Addr::new(10, 0, 2, 2)).netmask, Ipv4Addr::new(255, 0, 0, 0));
    }

    #[test]
    fn rejects_malformed_replies() {
        let good = slirp_reply(MessageType::Offer);
        assert_eq!(decode_reply(&good[..200]), Err(DecodeError::TooShort(200)));

        let mut request = good.clone();
        request[0] = BOOTREQUEST;
        assert_eq!(decode_reply(&request), Err(DecodeError::NotReply(1)));

        let mut no_cookie = good.clone();
        no_cookie[236] = 0;
        assert_eq!(decode_reply(&no_cookie), Err(DecodeError::NoMagicCookie));

        let mut truncated = good[..240].to_vec();
        truncated.extend_from_slice(&[53, 1, 2, 6, 8, 10, 0]);
        assert_eq!(decode_reply(&truncated), Err(DecodeError::TruncatedOption(6)));

        let mut bad_mask = good[..240].to_vec();
        bad_mask.extend_from_slice(&[53, 1, 2, 1, 3, 255, 255, 255, 255]);
        assert_eq!(decode_reply(&bad_mask), Err(DecodeError::BadOptionLength { code: 1, len: 3 }));

        let mut untyped = good[..240].to_vec();
        untyped.extend_from_slice(&[1, 4, 255, 255, 255, 0, 255]);
        assert_eq!(decode_reply(&untyped), Err(DecodeError::NoMessageType));
    }

    #[test]
    fn encoded_request_decodes_as_not_a_reply() {
        // Our own broadcast comes back to port 68 on some setups: it must be ignored.
        let packet = encode(ClientMessage::Discover, 1, MAC);
        assert_eq!(decode_reply(&packet), Err(DecodeError::NotReply(BOOTREQUEST)));
    }
}
