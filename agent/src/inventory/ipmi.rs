//! The BMC's LAN address through the in-band IPMI device (`/dev/ipmi0`, kernel modules `ipmi_si` and
//! `ipmi_devintf`, which pulls in `ipmi_msghandler`): Get LAN Configuration Parameters (NetFn
//! Transport, command 0x02) for channels 1 to 11, as IPA's `ipmitool lan print <channel>` loop does.
//! The first channel with an IPv4 address other than 0.0.0.0 gives `bmc_address` and `bmc_mac`.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const NETFN_TRANSPORT: u8 = 0x0c;
const CMD_GET_LAN_CONFIG: u8 = 0x02;
const PARAM_IP_ADDRESS: u8 = 3;
const PARAM_MAC_ADDRESS: u8 = 5;
/// Channels 1-11 are the ones IPMI lets a vendor assign to a medium (0 is IPMB, 14-15 are special).
const LAN_CHANNELS: std::ops::RangeInclusive<u8> = 1..=11;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcLan {
    /// `0.0.0.0` when channels answered but none has an address (IPA's value then).
    pub address: Ipv4Addr,
    pub mac: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpmiError {
    #[error("IPMI ioctl {op} failed")]
    Ioctl {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("the BMC did not answer within {0:?}")]
    Timeout(Duration),
    #[error("completion code {0:#04x}")]
    Completion(u8),
    #[error("short response ({0} bytes)")]
    Short(usize),
}

/// The request data: channel (bit 7 clear: get the value, not the revision), parameter, set 0, block 0.
pub fn lan_config_request(channel: u8, parameter: u8) -> [u8; 4] {
    [channel & 0x0f, parameter, 0, 0]
}

/// The parameter's data from a response (completion code, revision, data), at least `len` bytes.
pub fn lan_config_data(response: &[u8], len: usize) -> Result<&[u8], IpmiError> {
    match response {
        [0, _revision, data @ ..] if data.len() >= len => Ok(&data[..len]),
        [0, ..] => Err(IpmiError::Short(response.len())),
        [code, ..] => Err(IpmiError::Completion(*code)),
        [] => Err(IpmiError::Short(0)),
    }
}

/// Walks the LAN channels with `query(channel, parameter)` (the response data). A transport failure
/// (no answer at all) ends the walk; a channel that is not LAN answers with an error code and is
/// skipped. `None` when no channel answered.
pub fn find_lan(mut query: impl FnMut(u8, u8) -> Result<Vec<u8>, IpmiError>) -> Option<BmcLan> {
    let mut answered = false;
    for channel in LAN_CHANNELS {
        let address = match query(channel, PARAM_IP_ADDRESS) {
            Ok(response) => lan_config_data(&response, 4).map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3])),
            Err(e @ (IpmiError::Ioctl { .. } | IpmiError::Timeout(_))) => {
                tracing::warn!("BMC address: channel {channel}: {e}");
                break;
            }
            Err(e) => Err(e),
        };
        let address = match address {
            Ok(address) => address,
            Err(e) => {
                tracing::debug!("BMC address: channel {channel}: {e}");
                continue;
            }
        };
        answered = true;
        if address.is_unspecified() {
            continue;
        }
        let mac = query(channel, PARAM_MAC_ADDRESS).ok().and_then(|response| {
            let mac = lan_config_data(&response, 6).ok()?;
            Some(mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
        });
        return Some(BmcLan { address, mac });
    }
    answered.then_some(BmcLan { address: Ipv4Addr::UNSPECIFIED, mac: None })
}

/// The BMC LAN settings through `device`; `None` without a device or an answering BMC.
pub fn bmc_lan(device: &Path, timeout: Duration) -> Option<BmcLan> {
    if !device.exists() {
        return None;
    }
    let file = match OpenOptions::new().read(true).write(true).open(device) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!("BMC address: cannot open {}: {e}", device.display());
            return None;
        }
    };
    let mut msgid = 0;
    find_lan(|channel, parameter| {
        msgid += 1;
        let request = lan_config_request(channel, parameter);
        device::request(&file, msgid, NETFN_TRANSPORT, CMD_GET_LAN_CONFIG, &request, timeout)
    })
}

/// The Linux IPMI device interface (`linux/ipmi.h`): send a request to the BMC's system interface,
/// wait, receive the response with the same message id.
#[allow(unsafe_code)]
mod device {
    use std::fs::File;
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::{Duration, Instant};

    use nix::libc::{c_int, c_long, c_short, c_uchar, c_uint, c_ushort};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::IpmiError;

    const SYSTEM_INTERFACE_ADDR_TYPE: c_int = 0x0c;
    const BMC_CHANNEL: c_short = 0x0f;
    const RESPONSE_RECV_TYPE: c_int = 1;

    #[repr(C)]
    struct IpmiMsg {
        netfn: c_uchar,
        cmd: c_uchar,
        data_len: c_ushort,
        data: *mut c_uchar,
    }

    #[repr(C)]
    struct IpmiReq {
        addr: *mut c_uchar,
        addr_len: c_uint,
        msgid: c_long,
        msg: IpmiMsg,
    }

    #[repr(C)]
    struct IpmiRecv {
        recv_type: c_int,
        addr: *mut c_uchar,
        addr_len: c_uint,
        msgid: c_long,
        msg: IpmiMsg,
    }

    #[repr(C)]
    struct SystemInterfaceAddr {
        addr_type: c_int,
        channel: c_short,
        lun: c_uchar,
    }

    nix::ioctl_read!(ipmictl_send_command, b'i', 13, IpmiReq);
    nix::ioctl_readwrite!(ipmictl_receive_msg_trunc, b'i', 11, IpmiRecv);

    pub(super) fn request(
        file: &File,
        msgid: c_long,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, IpmiError> {
        let mut address = SystemInterfaceAddr { addr_type: SYSTEM_INTERFACE_ADDR_TYPE, channel: BMC_CHANNEL, lun: 0 };
        let mut payload = data.to_vec();
        let mut req = IpmiReq {
            addr: (&mut address as *mut SystemInterfaceAddr).cast(),
            addr_len: std::mem::size_of::<SystemInterfaceAddr>() as c_uint,
            msgid,
            msg: IpmiMsg { netfn, cmd, data_len: payload.len() as c_ushort, data: payload.as_mut_ptr() },
        };
        // SAFETY: `req` and the address and data it points to live across the call; the kernel copies
        // `addr_len` and `data_len` bytes from them.
        unsafe { ipmictl_send_command(file.as_raw_fd(), &mut req) }
            .map_err(|source| IpmiError::Ioctl { op: "IPMICTL_SEND_COMMAND", source })?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) => return Err(IpmiError::Timeout(timeout)),
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(source) => return Err(IpmiError::Ioctl { op: "poll", source }),
            }
            // An `ipmi_addr` is at most 40 bytes (type, channel, 32 data bytes); responses at most 272.
            let mut from = [0u8; 40];
            let mut response = [0u8; 272];
            let mut recv = IpmiRecv {
                recv_type: 0,
                addr: from.as_mut_ptr(),
                addr_len: from.len() as c_uint,
                msgid: 0,
                msg: IpmiMsg { netfn: 0, cmd: 0, data_len: response.len() as c_ushort, data: response.as_mut_ptr() },
            };
            // SAFETY: the buffers `recv` points to live across the call and their sizes are the
            // lengths given; the TRUNC variant truncates a longer message instead of failing.
            unsafe { ipmictl_receive_msg_trunc(file.as_raw_fd(), &mut recv) }
                .map_err(|source| IpmiError::Ioctl { op: "IPMICTL_RECEIVE_MSG_TRUNC", source })?;
            if recv.recv_type == RESPONSE_RECV_TYPE && recv.msgid == msgid {
                let len = usize::from(recv.msg.data_len).min(response.len());
                return Ok(response[..len].to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        assert_eq!(lan_config_request(1, PARAM_IP_ADDRESS), [0x01, 0x03, 0, 0]);
        assert_eq!(lan_config_request(0x8b, PARAM_MAC_ADDRESS), [0x0b, 0x05, 0, 0], "revision-only bit cleared");
    }

    /// Name, response, wanted length, data or error message.
    type DecodingCase = (&'static str, &'static [u8], usize, Result<&'static [u8], &'static str>);

    #[test]
    fn response_decoding() {
        let cases: [DecodingCase; 5] = [
            ("IPv4 address", &[0x00, 0x11, 10, 0, 0, 5], 4, Ok(&[10, 0, 0, 5])),
            ("MAC with trailing bytes", &[0x00, 0x11, 1, 2, 3, 4, 5, 6, 7], 6, Ok(&[1, 2, 3, 4, 5, 6])),
            ("invalid channel", &[0xcc], 4, Err("completion code 0xcc")),
            ("parameter not supported", &[0x80, 0x11], 4, Err("completion code 0x80")),
            ("short", &[0x00, 0x11, 10, 0], 4, Err("short response (4 bytes)")),
        ];
        for (case, response, len, expected) in cases {
            let got = lan_config_data(response, len).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{case}");
        }
    }

    /// LAN channels: (channel, IPv4, MAC).
    type LanChannels = &'static [(u8, [u8; 4], [u8; 6])];

    /// A BMC whose LAN channels are `lan`; every other channel is not LAN.
    fn bmc(lan: LanChannels) -> impl FnMut(u8, u8) -> Result<Vec<u8>, IpmiError> {
        move |channel, parameter| {
            let Some((_, ip, mac)) = lan.iter().find(|(c, _, _)| *c == channel) else {
                return Ok(vec![0xcc]);
            };
            let data: &[u8] = if parameter == PARAM_IP_ADDRESS { ip } else { mac };
            Ok([&[0x00, 0x11][..], data].concat())
        }
    }

    #[test]
    fn channel_walk() {
        let cases: [(&str, LanChannels, Option<BmcLan>); 3] = [
            (
                "first channel with an address wins",
                &[(1, [0, 0, 0, 0], [0; 6]), (3, [192, 168, 10, 21], [0x3c, 0xfd, 0xfe, 0, 0x1a, 0x2b])],
                Some(BmcLan { address: Ipv4Addr::new(192, 168, 10, 21), mac: Some("3c:fd:fe:00:1a:2b".into()) }),
            ),
            (
                "LAN channels without an address",
                &[(1, [0, 0, 0, 0], [0; 6])],
                Some(BmcLan { address: Ipv4Addr::UNSPECIFIED, mac: None }),
            ),
            ("no LAN channel", &[], None),
        ];
        for (case, lan, expected) in cases {
            assert_eq!(find_lan(bmc(lan)), expected, "{case}");
        }
    }

    #[test]
    fn a_silent_bmc_ends_the_walk_at_once() {
        let mut asked = 0;
        let found = find_lan(|_, _| {
            asked += 1;
            Err(IpmiError::Timeout(Duration::from_secs(1)))
        });
        assert_eq!((found, asked), (None, 1));
    }

    #[test]
    fn no_device_no_address() {
        assert_eq!(bmc_lan(Path::new("/nonexistent/dev/ipmi0"), Duration::from_secs(1)), None);
    }
}
