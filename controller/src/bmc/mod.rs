//! Talking to a node's BMC, split by concern as Ironic's hardware interfaces: [`PowerInterface`]
//! (power state and actions) and [`ManagementInterface`] (boot device). Boot configuration (the
//! iPXE scripts, DHCP and TFTP) is the controller's own and lives in [`crate::boot`] and
//! [`crate::dhcp`].
//!
//! A driver is built from the node's `driver_info` with Ironic's field names; building it is the
//! cheap `validate()`: it checks fields and touches no network. Every BMC call is bounded in time
//! and its error names the BMC and the action, never a credential.

pub mod ipmi;
pub mod redfish;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::ipxe::BootMode;
use crate::model::{JsonObject, Node};

/// Ironic's `power_state` values.
pub const POWER_ON: &str = "power on";
pub const POWER_OFF: &str = "power off";

/// A node's power state as a BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
}

impl PowerState {
    /// Ironic's name, as in the node's `power_state`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => POWER_ON,
            PowerState::Off => POWER_OFF,
        }
    }

    pub fn parse(text: &str) -> Option<PowerState> {
        match text {
            POWER_ON => Some(PowerState::On),
            POWER_OFF => Some(PowerState::Off),
            _ => None,
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A power action of Ironic's `ALLOWED_TARGET_POWER_STATES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    /// Off then on (Ironic's `rebooting`); on when the node is off.
    Reboot,
    /// An ACPI shutdown request, then on.
    SoftReboot,
    /// An ACPI shutdown request.
    SoftOff,
}

impl PowerAction {
    /// Parses the API's `target` (`power on`, `rebooting`, ...).
    pub fn parse(text: &str) -> Option<PowerAction> {
        Some(match text {
            POWER_ON => PowerAction::On,
            POWER_OFF => PowerAction::Off,
            "rebooting" => PowerAction::Reboot,
            "soft rebooting" => PowerAction::SoftReboot,
            "soft power off" => PowerAction::SoftOff,
            _ => return None,
        })
    }

    /// The API's name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => POWER_ON,
            PowerAction::Off => POWER_OFF,
            PowerAction::Reboot => "rebooting",
            PowerAction::SoftReboot => "soft rebooting",
            PowerAction::SoftOff => "soft power off",
        }
    }

    pub fn is_soft(self) -> bool {
        matches!(self, PowerAction::SoftReboot | PowerAction::SoftOff)
    }

    /// The power state the action ends in (Ironic's `_calculate_target_state`).
    pub fn resulting_state(self) -> PowerState {
        match self {
            PowerAction::On | PowerAction::Reboot | PowerAction::SoftReboot => PowerState::On,
            PowerAction::Off | PowerAction::SoftOff => PowerState::Off,
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ironic's boot devices (`ironic/common/boot_devices.py`), those Ferric's drivers can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    Pxe,
    Disk,
    Cdrom,
    Bios,
    Safe,
    UefiHttp,
}

impl BootDevice {
    pub const ALL: &'static [BootDevice] = &[
        BootDevice::Pxe,
        BootDevice::Disk,
        BootDevice::Cdrom,
        BootDevice::Bios,
        BootDevice::Safe,
        BootDevice::UefiHttp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Bios => "bios",
            BootDevice::Safe => "safe",
            BootDevice::UefiHttp => "uefihttp",
        }
    }

    pub fn parse(text: &str) -> Option<BootDevice> {
        BootDevice::ALL.iter().copied().find(|device| device.as_str() == text)
    }
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A boot device and whether it holds for every boot or only the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootDeviceSetting {
    pub device: BootDevice,
    pub persistent: bool,
}

/// What a BMC call failed with. Messages name the BMC (its address, never its credentials)
/// and the action; they end up in the node's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// `driver_info` lacks what the driver needs (Ironic's `MissingParameterValue`).
    #[error("missing required driver_info field(s) for the {driver} driver: {}", .fields.join(", "))]
    MissingDriverInfo { driver: &'static str, fields: Vec<&'static str> },
    /// A `driver_info` field has a value the driver cannot use.
    #[error("invalid driver_info field {field}: {reason}")]
    InvalidDriverInfo { field: &'static str, reason: String },
    /// The BMC did not answer (UDP loss, connection refused, timeouts), after all retries.
    #[error("BMC {bmc} did not answer {action} after {attempts} attempt(s): {reason}")]
    Unreachable { bmc: String, action: String, attempts: u32, reason: String },
    /// The BMC answered with an error.
    #[error("BMC {bmc} refused {action}: {reason}")]
    Refused { bmc: String, action: String, reason: String },
    /// The BMC accepted a power action but the node did not reach the state in time.
    #[error("BMC {bmc}: the node did not reach {expected} within {} s after {action}; it reports {actual}", .waited.as_secs())]
    PowerTimeout { bmc: String, action: String, expected: PowerState, actual: String, waited: Duration },
    /// The BMC does not offer something the request needs (a reset type, a boot device).
    #[error("BMC {bmc} does not support {what}")]
    Unsupported { bmc: String, what: String },
    /// The driver itself failed (a panic), not the BMC.
    #[error("the BMC driver failed: {0}")]
    Internal(String),
}

/// Settings shared by every BMC driver (controller flags).
#[derive(Debug, Clone)]
pub struct BmcSettings {
    /// How long a power action may take to show in the BMC's reported state (Ironic's
    /// `[conductor]power_state_change_timeout`).
    pub power_timeout: Duration,
    /// How long a single BMC call, retries included, may take (Ironic's `[ipmi]command_retry_timeout`).
    pub command_timeout: Duration,
    /// Minimum time between two commands to one BMC (Ironic's `[ipmi]min_command_interval`).
    pub min_command_interval: Duration,
}

impl Default for BmcSettings {
    fn default() -> BmcSettings {
        BmcSettings {
            power_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(60),
            min_command_interval: Duration::from_secs(1),
        }
    }
}

/// Power state and power actions.
pub trait PowerInterface {
    /// The node's current power state.
    fn power_state(&self) -> impl Future<Output = Result<PowerState, BmcError>> + Send;

    /// Performs `action` and returns once the BMC reports the resulting state, or fails after
    /// `timeout` (soft actions included: a node that ignores the ACPI request is an error).
    fn set_power_state(
        &self,
        action: PowerAction,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), BmcError>> + Send;
}

/// Boot device selection.
pub trait ManagementInterface {
    /// The boot devices this driver can set (`GET .../boot_device/supported`).
    fn supported_boot_devices(&self) -> &'static [BootDevice];

    /// The boot device the BMC will use next, when it tells.
    fn boot_device(&self) -> impl Future<Output = Result<Option<BootDeviceSetting>, BmcError>> + Send;

    /// Sets the boot device for the next boot (or every boot if `persistent`), in `mode`.
    fn set_boot_device(
        &self,
        setting: BootDeviceSetting,
        mode: BootMode,
    ) -> impl Future<Output = Result<(), BmcError>> + Send;
}

/// The BMC of a node whose hardware type has one.
#[derive(Debug, Clone)]
pub enum Bmc {
    Ipmi(ipmi::IpmiBmc),
    Redfish(redfish::RedfishBmc),
}

impl Bmc {
    /// The node's BMC, checked without any I/O (the driver's `validate()`): `Ok(None)` for the
    /// hardware types without one (`fake-hardware`, `manual-management`), whose power state is only
    /// recorded.
    pub fn for_node(node: &Node, settings: &BmcSettings) -> Result<Option<Bmc>, BmcError> {
        match power_interface(node) {
            "ipmitool" => Ok(Some(Bmc::Ipmi(ipmi::IpmiBmc::from_driver_info(&node.driver_info, settings)?))),
            "redfish" => Ok(Some(Bmc::Redfish(redfish::RedfishBmc::from_driver_info(&node.driver_info, settings)?))),
            _ => Ok(None),
        }
    }

    /// The BMC's address for messages and logs.
    pub fn address(&self) -> String {
        match self {
            Bmc::Ipmi(bmc) => bmc.address(),
            Bmc::Redfish(bmc) => bmc.address(),
        }
    }
}

impl PowerInterface for Bmc {
    async fn power_state(&self) -> Result<PowerState, BmcError> {
        match self {
            Bmc::Ipmi(bmc) => bmc.power_state().await,
            Bmc::Redfish(bmc) => bmc.power_state().await,
        }
    }

    async fn set_power_state(&self, action: PowerAction, timeout: Duration) -> Result<(), BmcError> {
        match self {
            Bmc::Ipmi(bmc) => bmc.set_power_state(action, timeout).await,
            Bmc::Redfish(bmc) => bmc.set_power_state(action, timeout).await,
        }
    }
}

impl ManagementInterface for Bmc {
    fn supported_boot_devices(&self) -> &'static [BootDevice] {
        match self {
            Bmc::Ipmi(bmc) => bmc.supported_boot_devices(),
            Bmc::Redfish(bmc) => bmc.supported_boot_devices(),
        }
    }

    async fn boot_device(&self) -> Result<Option<BootDeviceSetting>, BmcError> {
        match self {
            Bmc::Ipmi(bmc) => bmc.boot_device().await,
            Bmc::Redfish(bmc) => bmc.boot_device().await,
        }
    }

    async fn set_boot_device(&self, setting: BootDeviceSetting, mode: BootMode) -> Result<(), BmcError> {
        match self {
            Bmc::Ipmi(bmc) => bmc.set_boot_device(setting, mode).await,
            Bmc::Redfish(bmc) => bmc.set_boot_device(setting, mode).await,
        }
    }
}

/// The power interface a node uses: its explicit `power_interface`, else its hardware type's default.
pub fn power_interface(node: &Node) -> &str {
    if let Some(Value::String(explicit)) = node.interfaces.get("power") {
        return explicit;
    }
    match node.driver.as_str() {
        "fake-hardware" | "manual-management" => "fake",
        "ipmi" => "ipmitool",
        other => other,
    }
}

/// A string field of `driver_info`, `None` when absent, null or empty.
pub(crate) fn text_field<'a>(info: &'a JsonObject, field: &str) -> Option<&'a str> {
    info.get(field).and_then(Value::as_str).filter(|text| !text.is_empty())
}
