//! NVMe Format NVM with a secure erase, sent through the kernel's admin passthrough
//! (NVME_IOCTL_ADMIN_CMD) as IPA does with `nvme format -s`: the drive erases its user data itself,
//! spare and remapped blocks included, which no overwrite from the host reaches.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const OPCODE_IDENTIFY: u8 = 0x06;
pub const OPCODE_FORMAT_NVM: u8 = 0x80;
/// Identify's CNS values (Controller or Namespace Structure).
pub const CNS_NAMESPACE: u32 = 0;
pub const CNS_CONTROLLER: u32 = 1;
/// Both Identify structures are this long.
pub const IDENTIFY_BYTES: usize = 4096;
/// Identify Controller fields (NVMe Base Specification 2.0): Optional Admin Command Support (16 bits)
/// and Format NVM Attributes.
const ID_CTRL_OACS: usize = 256;
const ID_CTRL_FNA: usize = 524;
const OACS_FORMAT_NVM: u16 = 1 << 1;
const FNA_FORMAT_ALL_NAMESPACES: u8 = 1 << 0;
const FNA_ERASE_ALL_NAMESPACES: u8 = 1 << 1;
const FNA_CRYPTO_ERASE: u8 = 1 << 2;
/// Identify Namespace fields: Formatted LBA Size and End-to-end Data Protection Type Settings.
const ID_NS_FLBAS: usize = 26;
const ID_NS_DPS: usize = 29;
/// A user-data erase rewrites the whole namespace inside the drive; the kernel's default admin timeout
/// (60 s) would abort it and reset the controller.
const FORMAT_TIMEOUT_MS: u32 = 2 * 60 * 60 * 1000;

/// `struct nvme_passthru_cmd` of linux/nvme_ioctl.h (72 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AdminCommand {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub metadata: u64,
    pub addr: u64,
    pub metadata_len: u32,
    pub data_len: u32,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
    pub timeout_ms: u32,
    pub result: u32,
}

impl AdminCommand {
    /// Identify (`cns` says which structure) into a [`IDENTIFY_BYTES`] buffer set by [`submit`].
    pub fn identify(cns: u32, nsid: u32) -> Self {
        Self { opcode: OPCODE_IDENTIFY, nsid, data_len: IDENTIFY_BYTES as u32, cdw10: cns, ..Self::default() }
    }

    /// Format NVM of namespace `nsid` keeping its current format, with secure erase setting `erase`.
    pub fn format(nsid: u32, current: &CurrentFormat, erase: SecureErase) -> Self {
        let lbaf = u32::from(current.lba_format);
        let cdw10 = (lbaf & 0xf)
            | u32::from(current.metadata_extended) << 4
            | u32::from(current.protection & 0x7) << 5
            | u32::from(current.protection_first) << 8
            | (erase as u32) << 9
            | ((lbaf >> 4) & 0x3) << 12;
        Self { opcode: OPCODE_FORMAT_NVM, nsid, cdw10, timeout_ms: FORMAT_TIMEOUT_MS, ..Self::default() }
    }
}

/// Format NVM's Secure Erase Settings (SES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureErase {
    UserData = 1,
    Crypto = 2,
}

impl SecureErase {
    /// As reported in `ErasedDevice::method`.
    pub fn method(self) -> &'static str {
        match self {
            SecureErase::UserData => "nvme format (user data erase)",
            SecureErase::Crypto => "nvme format (crypto erase)",
        }
    }
}

/// What Identify Controller says about formatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerCaps {
    pub format_nvm: bool,
    pub crypto_erase: bool,
    /// A format (or its secure erase) of one namespace applies to all of them.
    pub format_all_namespaces: bool,
    pub erase_all_namespaces: bool,
}

impl ControllerCaps {
    pub fn parse(identify: &[u8; IDENTIFY_BYTES]) -> Self {
        let oacs = u16::from_le_bytes([identify[ID_CTRL_OACS], identify[ID_CTRL_OACS + 1]]);
        let fna = identify[ID_CTRL_FNA];
        Self {
            format_nvm: oacs & OACS_FORMAT_NVM != 0,
            crypto_erase: fna & FNA_CRYPTO_ERASE != 0,
            format_all_namespaces: fna & FNA_FORMAT_ALL_NAMESPACES != 0,
            erase_all_namespaces: fna & FNA_ERASE_ALL_NAMESPACES != 0,
        }
    }

    /// IPA's choice: crypto erase when supported, else user-data erase; none without Format NVM.
    pub fn secure_erase(&self) -> Option<SecureErase> {
        match (self.format_nvm, self.crypto_erase) {
            (false, _) => None,
            (true, true) => Some(SecureErase::Crypto),
            (true, false) => Some(SecureErase::UserData),
        }
    }
}

/// The namespace's current format, which the erase keeps (sector size, metadata, protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentFormat {
    /// Index of the LBA format in use (FLBAS bits 3:0, and 6:5 as the upper bits).
    pub lba_format: u8,
    pub metadata_extended: bool,
    pub protection: u8,
    pub protection_first: bool,
}

impl CurrentFormat {
    pub fn parse(identify: &[u8; IDENTIFY_BYTES]) -> Self {
        let flbas = identify[ID_NS_FLBAS];
        let dps = identify[ID_NS_DPS];
        Self {
            lba_format: (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4,
            metadata_extended: flbas & (1 << 4) != 0,
            protection: dps & 0x7,
            protection_first: dps & (1 << 3) != 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("opening {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the namespace id (NVME_IOCTL_ID) failed")]
    NamespaceId(#[source] nix::Error),
    #[error("{command} failed")]
    Ioctl {
        command: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{command} failed with NVMe status {status:#x}")]
    Status { command: &'static str, status: i32 },
}

/// What [`format`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Erased(SecureErase),
    /// Not done, and why (the caller moves on to the next method).
    Unsupported(String),
}

/// Formats the namespace at `device` with the strongest secure erase it offers. `other_namespaces` are
/// the controller's other namespaces: when a format would reach them too, nothing is done (they may be
/// disks this step was told to skip).
pub fn format(device: &Path, other_namespaces: &[String]) -> Result<Outcome, NvmeError> {
    let file = File::open(device).map_err(|source| NvmeError::Open { path: device.to_owned(), source })?;
    let nsid = namespace_id(&file).map_err(NvmeError::NamespaceId)?;
    let mut identify = [0u8; IDENTIFY_BYTES];
    submit(&file, AdminCommand::identify(CNS_CONTROLLER, 0), Some(&mut identify), "Identify Controller")?;
    let caps = ControllerCaps::parse(&identify);
    let Some(erase) = caps.secure_erase() else {
        return Ok(Outcome::Unsupported("the controller does not support Format NVM (OACS bit 1 is clear)".into()));
    };
    if (caps.format_all_namespaces || caps.erase_all_namespaces) && !other_namespaces.is_empty() {
        return Ok(Outcome::Unsupported(format!(
            "a format applies to all namespaces of this controller and would also erase {}",
            other_namespaces.join(", ")
        )));
    }
    submit(&file, AdminCommand::identify(CNS_NAMESPACE, nsid), Some(&mut identify), "Identify Namespace")?;
    let current = CurrentFormat::parse(&identify);
    tracing::info!(device = %device.display(), nsid, ?current, method = erase.method(), "formatting");
    submit(&file, AdminCommand::format(nsid, &current, erase), None, "Format NVM")?;
    Ok(Outcome::Erased(erase))
}

/// The other namespaces of the controller of the block device whose sysfs directory is `block_dir`
/// (`sys/block/nvme0n1`): its `device` is the controller (or the subsystem with native multipath),
/// whose entries include every namespace, `nvmeXnY`.
pub fn sibling_namespaces(block_dir: &Path) -> Vec<String> {
    let own = block_dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(block_dir.join("device")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .filter(|name| *name != own && is_namespace_name(name))
        .collect();
    names.sort();
    names
}

/// `nvme<digits>n<digits>` (not the per-path `nvme0c0n1` nor partitions `nvme0n1p1`).
fn is_namespace_name(name: &str) -> bool {
    let Some((controller, namespace)) = name.strip_prefix("nvme").and_then(|rest| rest.split_once('n')) else {
        return false;
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    digits(controller) && digits(namespace)
}

#[allow(unsafe_code)]
mod ioctl {
    // From linux/nvme_ioctl.h: NVME_IOCTL_ID = _IO('N', 0x40), NVME_IOCTL_ADMIN_CMD = _IOWR('N', 0x41,
    // struct nvme_admin_cmd).
    nix::ioctl_none!(nvme_ioctl_id, b'N', 0x40);
    nix::ioctl_readwrite!(nvme_ioctl_admin_cmd, b'N', 0x41, super::AdminCommand);
}

#[allow(unsafe_code)]
fn namespace_id(file: &File) -> nix::Result<u32> {
    // SAFETY: NVME_IOCTL_ID takes no argument and returns the id; the descriptor is open for the call.
    let id = unsafe { ioctl::nvme_ioctl_id(file.as_raw_fd()) }?;
    u32::try_from(id).map_err(|_| nix::Error::EINVAL)
}

/// Sends `command` with `buffer` as its data (the kernel reads or fills it); NVMe errors come back as a
/// positive status.
#[allow(unsafe_code)]
fn submit(
    file: &File,
    mut command: AdminCommand,
    buffer: Option<&mut [u8; IDENTIFY_BYTES]>,
    name: &'static str,
) -> Result<u32, NvmeError> {
    match buffer {
        Some(buffer) => {
            command.addr = buffer.as_mut_ptr() as u64;
            command.data_len = IDENTIFY_BYTES as u32;
        }
        None => command.data_len = 0,
    }
    // SAFETY: `command` is a valid nvme_passthru_cmd that lives across the call; its `addr`, when set,
    // points at a buffer of `data_len` bytes borrowed mutably for the call, so the kernel may fill it.
    let status = unsafe { ioctl::nvme_ioctl_admin_cmd(file.as_raw_fd(), &mut command) }
        .map_err(|source| NvmeError::Ioctl { command: name, source })?;
    if status != 0 {
        return Err(NvmeError::Status { command: name, status });
    }
    Ok(command.result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_command_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<AdminCommand>(), 72);
        assert_eq!(std::mem::align_of::<AdminCommand>(), 8);
        // `_IOWR('N', 0x41, struct nvme_admin_cmd)` as nvme-cli's headers spell it.
        assert_eq!(nix::request_code_readwrite!(b'N', 0x41, std::mem::size_of::<AdminCommand>()), 0xC048_4E41);
    }

    #[test]
    fn identify_commands() {
        let cases = [
            ("controller", AdminCommand::identify(CNS_CONTROLLER, 0), 0, 1),
            ("namespace 1", AdminCommand::identify(CNS_NAMESPACE, 1), 1, 0),
            ("namespace 7", AdminCommand::identify(CNS_NAMESPACE, 7), 7, 0),
        ];
        for (name, command, nsid, cdw10) in cases {
            assert_eq!(command.opcode, 0x06, "{name}");
            assert_eq!((command.nsid, command.cdw10, command.data_len), (nsid, cdw10, 4096), "{name}");
            assert_eq!((command.cdw11, command.timeout_ms, command.addr), (0, 0, 0), "{name}");
        }
    }

    fn format_of(lba_format: u8, metadata_extended: bool, protection: u8, protection_first: bool) -> CurrentFormat {
        CurrentFormat { lba_format, metadata_extended, protection, protection_first }
    }

    #[test]
    fn format_commands_keep_the_current_format() {
        let cases = [
            ("lbaf 0, user data erase", format_of(0, false, 0, false), SecureErase::UserData, 0x0200),
            ("lbaf 0, crypto erase", format_of(0, false, 0, false), SecureErase::Crypto, 0x0400),
            ("4K format 1", format_of(1, false, 0, false), SecureErase::UserData, 0x0201),
            ("extended metadata, PI type 1 first", format_of(3, true, 1, true), SecureErase::Crypto, 0x0533),
            ("format index 17 (upper bits)", format_of(17, false, 0, false), SecureErase::UserData, 0x1201),
        ];
        for (name, current, erase, cdw10) in cases {
            let command = AdminCommand::format(5, &current, erase);
            assert_eq!(command.opcode, 0x80, "{name}");
            assert_eq!(command.cdw10, cdw10, "{name}: cdw10 {:#06x}", command.cdw10);
            assert_eq!((command.nsid, command.data_len), (5, 0), "{name}");
            assert!(command.timeout_ms >= 60 * 60 * 1000, "{name}: long enough for a user-data erase");
        }
    }

    fn controller(oacs: u16, fna: u8) -> [u8; IDENTIFY_BYTES] {
        let mut identify = [0u8; IDENTIFY_BYTES];
        identify[256..258].copy_from_slice(&oacs.to_le_bytes());
        identify[524] = fna;
        identify
    }

    #[test]
    fn secure_erase_choice_from_oacs_and_fna() {
        let cases = [
            ("no format support", controller(0x0000, 0x04), None),
            ("format, no crypto erase", controller(0x0002, 0x00), Some(SecureErase::UserData)),
            ("format and crypto erase", controller(0x0002, 0x04), Some(SecureErase::Crypto)),
            ("QEMU: ns management, format, dbbuf", controller(0x010a, 0x00), Some(SecureErase::UserData)),
            ("other OACS bits only", controller(0x00fd, 0x07), None),
        ];
        for (name, identify, expected) in cases {
            assert_eq!(ControllerCaps::parse(&identify).secure_erase(), expected, "{name}");
        }
        let caps = ControllerCaps::parse(&controller(0x0002, 0x03));
        assert!(caps.format_all_namespaces && caps.erase_all_namespaces && !caps.crypto_erase);
    }

    #[test]
    fn current_format_from_flbas_and_dps() {
        let namespace = |flbas: u8, dps: u8| {
            let mut identify = [0u8; IDENTIFY_BYTES];
            identify[26] = flbas;
            identify[29] = dps;
            identify
        };
        let cases = [
            ("format 0", namespace(0x00, 0x00), format_of(0, false, 0, false)),
            ("format 4, extended metadata", namespace(0x14, 0x00), format_of(4, true, 0, false)),
            ("PI type 2, first bytes", namespace(0x01, 0x0a), format_of(1, false, 2, true)),
            ("format 33 (upper bits 6:5)", namespace(0x21, 0x00), format_of(17, false, 0, false)),
        ];
        for (name, identify, expected) in cases {
            assert_eq!(CurrentFormat::parse(&identify), expected, "{name}");
        }
    }

    #[test]
    fn sibling_namespaces_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let controller = root.path().join("devices/nvme0");
        for entry in ["nvme0n1", "nvme0n2", "nvme0c0n1", "hwmon1", "power"] {
            std::fs::create_dir_all(controller.join(entry)).unwrap();
        }
        let block = root.path().join("block");
        std::fs::create_dir_all(block.join("nvme0n1")).unwrap();
        std::os::unix::fs::symlink(&controller, block.join("nvme0n1/device")).unwrap();
        assert_eq!(sibling_namespaces(&block.join("nvme0n1")), ["nvme0n2"]);
        assert!(sibling_namespaces(&block.join("vda")).is_empty(), "no sysfs entry: none known");
        let names =
            [("nvme0n1", true), ("nvme12n3", true), ("nvme0c0n1", false), ("nvme0n1p1", false), ("nvme0", false)];
        for (name, expected) in names {
            assert_eq!(is_namespace_name(name), expected, "{name}");
        }
    }
}
