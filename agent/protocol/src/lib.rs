//! The wire protocol between the Ferric ramdisk agent and the controller.
//!
//! The agent pulls its work: it looks itself up by MAC address, then heartbeats and
//! gets its next task in the heartbeat answer, so it never listens on a port. Paths,
//! field names and shapes follow Ironic/IPA wherever an equivalent exists (lookup,
//! heartbeat, `agent_token`, IPA's command result object, IPA's inventory), so that
//! the controller stays compatible with Ironic's API and tools.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod hints;
pub mod inventory;

pub use inventory::Inventory;

/// Kernel command-line parameter carrying the controller's base URL (`ferric.api=http://...`).
pub const CMDLINE_API_URL: &str = "ferric.api";
/// Kernel command-line parameter set by PXE/iPXE with the boot NIC (`BOOTIF=01-aa-bb-..`).
pub const CMDLINE_BOOTIF: &str = "BOOTIF";
/// Where the ramdisk holds the agent binary: image-builder puts it there, init runs it.
pub const AGENT_PATH: &str = "/usr/bin/ferric-agent";
/// Where the ramdisk holds extra CAs for HTTPS image servers (image-builder `--ca-bundle`).
pub const CA_BUNDLE_PATH: &str = "/etc/ferric/ca-bundle.pem";
/// Ironic's microversion header; the agent sends it so the controller applies the agent routes.
pub const API_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";
/// The microversion the agent speaks: 1.62 is the first with `agent_token` (as IPA uses).
pub const AGENT_API_VERSION: &str = "1.62";
/// What a lookup returns instead of the token once it has been handed out.
pub const MASKED_TOKEN: &str = "******";

/// Path of the lookup endpoint: `GET /v1/lookup?addresses=<mac>,<mac>`.
pub const LOOKUP_PATH: &str = "/v1/lookup";

/// Path of a node's heartbeat endpoint: `POST /v1/heartbeat/{node}`.
pub fn heartbeat_path(node_uuid: &str) -> String {
    format!("/v1/heartbeat/{node_uuid}")
}

/// Normalises a MAC address to Ironic's form: lower-case hex pairs joined by `:`.
/// Accepts `:` or `-` separators (PXE's `BOOTIF=01-aa-bb-...` form without its `01-` prefix).
pub fn normalize_mac(mac: &str) -> Option<String> {
    let pairs: Vec<&str> = mac.trim().split([':', '-']).collect();
    let well_formed =
        pairs.len() == 6 && pairs.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    well_formed.then(|| pairs.join(":").to_ascii_lowercase())
}

/// Answer to a lookup (Ironic's shape: `node` plus `config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LookupResponse {
    pub node: LookupNode,
    pub config: LookupConfig,
}

/// The part of the node the agent needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LookupNode {
    pub uuid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub properties: Value,
    #[serde(default)]
    pub instance_info: Value,
}

/// Agent configuration handed out by lookup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LookupConfig {
    /// Seconds without a heartbeat after which the controller gives up on the agent.
    pub heartbeat_timeout: u64,
    /// Seconds between heartbeats (Ferric heartbeats often: progress is live).
    pub heartbeat_interval: u64,
    /// The per-boot token, or [`MASKED_TOKEN`] when it was already handed out.
    pub agent_token: String,
    pub agent_token_required: bool,
}

/// A heartbeat: `POST /v1/heartbeat/{node}`; answered with [`HeartbeatResponse`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub agent_token: String,
    pub agent_version: String,
    /// Status of the task the agent runs or last ran, in IPA's command result shape.
    #[serde(default)]
    pub command: Option<CommandResult>,
    /// Progress of the running task, if it has any.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// The last lines the agent logged, oldest first.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Sent with the first heartbeat of a boot.
    #[serde(default)]
    pub inventory: Option<Inventory>,
}

/// The controller's answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatResponse {
    /// The next task, or `None` to keep heartbeating.
    pub task: Option<Task>,
    /// Seconds until the next heartbeat.
    pub heartbeat_interval: u64,
}

/// One unit of work for the agent. `id` identifies it in [`CommandResult::id`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub id: String,
    pub command: Command,
}

/// What the agent is asked to do. Names follow IPA's commands and deploy steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command_name", content = "params", rename_all = "snake_case")]
pub enum Command {
    /// Stream an image to the root disk (IPA's `write_image` deploy step).
    WriteImage { image_info: Box<ImageInfo> },
    /// Flush and reboot into whatever boots next (IPA's `standby.run_image`).
    Reboot,
    /// Flush and power the node off (IPA's `standby.power_off`).
    PowerOff,
    /// Run one clean step (IPA's `clean.execute_clean_step`) on every disk but the skipped ones.
    ExecuteCleanStep {
        step: CleanStep,
        /// `properties.skip_block_devices`: hint dicts of disks never touched.
        #[serde(default)]
        skip_block_devices: Vec<Value>,
    },
}

impl Command {
    /// The IPA command name, as it appears in [`CommandResult::command_name`].
    pub fn name(&self) -> &'static str {
        match self {
            Command::WriteImage { .. } => "write_image",
            Command::Reboot => "reboot",
            Command::PowerOff => "power_off",
            Command::ExecuteCleanStep { .. } => "execute_clean_step",
        }
    }
}

/// The deploy interface's clean steps, the ones the agent runs (IPA priorities: erase_devices 10,
/// erase_devices_metadata 99).
pub const DEPLOY_CLEAN_STEPS: [&str; 2] = ["erase_devices", "erase_devices_metadata"];

/// A clean step as Ironic names it: `{"interface": "deploy", "step": "erase_devices_metadata", "args": {}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CleanStep {
    pub interface: String,
    pub step: String,
    #[serde(default)]
    pub args: Value,
}

/// IPA's `image_info`, the subset Ferric uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub urls: Vec<String>,
    /// Hex digest (algorithm inferred from its length: 64 sha256, 128 sha512).
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub disk_format: Option<String>,
    /// Root-device hints (`properties.root_device`); absent means Ironic's default choice.
    #[serde(default)]
    pub root_device: Option<Value>,
    /// `properties.skip_block_devices`: hint dicts of disks never chosen.
    #[serde(default)]
    pub skip_block_devices: Vec<Value>,
    /// `partition` for a partition image (a root filesystem); absent or `whole-disk` for a whole disk.
    #[serde(default)]
    pub image_type: Option<String>,
    /// Partition images: size of the root partition; absent means the rest of the disk.
    #[serde(default)]
    pub root_mb: Option<u64>,
    /// Partition images: a swap partition of this size.
    #[serde(default)]
    pub swap_mb: Option<u64>,
    /// Partition images: an ephemeral partition of this size, formatted with `ephemeral_format`.
    #[serde(default)]
    pub ephemeral_mb: Option<u64>,
    /// Filesystem of the ephemeral partition (Ironic's default: `ext4`).
    #[serde(default)]
    pub ephemeral_format: Option<String>,
    /// `uefi` or `bios`; absent means the mode the ramdisk booted in.
    #[serde(default)]
    pub deploy_boot_mode: Option<String>,
    /// Partition images under BIOS: `msdos` (default) or `gpt`. UEFI always gets GPT.
    #[serde(default)]
    pub disk_label: Option<String>,
    /// The config drive: Ironic's dict (`meta_data`, `user_data`, `network_data`, `vendor_data`),
    /// a gzip+base64 ISO 9660 image, or a URL of either.
    #[serde(default)]
    pub configdrive: Option<Value>,
    /// BIOS partition images: run `grub-install` in the deployed root (Ironic's
    /// `enable_bios_bootloader_install`, off by default).
    #[serde(default)]
    pub enable_bios_bootloader_install: bool,
}

/// The key of the config drive's PARTUUID in [`WriteImageResult::partition_uuids`]. Not spelled
/// `configdrive`: the API masks every key containing that word, as Ironic does.
pub const CONFIG_DRIVE_UUID_KEY: &str = "config drive partition uuid";

/// What a successful `write_image` reports in [`CommandResult::command_result`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WriteImageResult {
    /// The disk written, e.g. `/dev/vda`.
    pub root_device: String,
    /// The format found from the image's magic bytes, e.g. `qcow2`, `raw (zstd)`.
    pub format: String,
    /// Bytes written to the disk (the image's virtual size).
    pub image_bytes: u64,
    /// Bytes downloaded.
    pub source_bytes: u64,
    pub seconds: f64,
    pub mib_per_second: f64,
    /// IPA's `get_partition_uuids` shape: `root uuid`, `efi system partition uuid`,
    /// [`CONFIG_DRIVE_UUID_KEY`], ...; whole-disk images give the disk's identifier as `root uuid`.
    #[serde(default)]
    pub partition_uuids: std::collections::BTreeMap<String, String>,
    /// The UEFI boot entry created for the deployed OS, e.g. `Boot0003 "ferric" \EFI\ferric\grubx64.efi`.
    #[serde(default)]
    pub boot_entry: Option<String>,
}

/// What a successful clean step reports in [`CommandResult::command_result`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CleanStepResult {
    pub step: String,
    /// One entry per disk the step worked on, in the order done.
    pub devices: Vec<ErasedDevice>,
}

/// How one disk was cleaned and how fast.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErasedDevice {
    /// e.g. `/dev/nvme0n1`.
    pub device: String,
    /// e.g. `nvme format (user data erase)`, `ata secure erase`, `write zeroes`, `discard`, `zero fill`,
    /// `metadata`.
    pub method: String,
    /// Bytes the method covered (the disk's size for a full erase).
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_second: f64,
    /// Sampled blocks read back and found zero after the erase (0 for metadata erasure).
    #[serde(default)]
    pub samples_verified: u32,
}

/// IPA's command result object, reported by the agent in every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandResult {
    pub id: String,
    pub command_name: String,
    pub command_status: CommandStatus,
    #[serde(default)]
    pub command_error: Option<String>,
    #[serde(default)]
    pub command_result: Option<Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandStatus {
    Running,
    Succeeded,
    Failed,
}

/// Progress of a long task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// What is happening now, e.g. `writing image`.
    pub stage: String,
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    pub bytes_per_second: f64,
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_normalisation_accepts_ironic_and_pxe_forms() {
        assert_eq!(normalize_mac("52:54:00:AB:cd:01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(normalize_mac("52-54-00-ab-cd-01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:zz"), None);
    }

    #[test]
    fn commands_use_ipa_names_on_the_wire() {
        let task = Task {
            id: "t1".into(),
            command: Command::WriteImage {
                image_info: Box::new(ImageInfo {
                    id: "img".into(),
                    urls: vec!["http://x/img".into()],
                    ..Default::default()
                }),
            },
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["command"]["command_name"], "write_image");
        assert_eq!(json["command"]["params"]["image_info"]["urls"][0], "http://x/img");
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, task);
        let reboot = serde_json::to_value(Command::Reboot).unwrap();
        assert_eq!(reboot["command_name"], "reboot");
    }

    #[test]
    fn clean_steps_travel_with_interface_step_and_args() {
        let step = CleanStep { interface: "deploy".into(), step: "erase_devices".into(), args: serde_json::json!({}) };
        let command = Command::ExecuteCleanStep { step: step.clone(), skip_block_devices: vec![] };
        let json = serde_json::to_value(&command).unwrap();
        assert_eq!(json["command_name"], "execute_clean_step");
        assert_eq!(json["params"]["step"]["step"], "erase_devices");
        assert_eq!(serde_json::from_value::<Command>(json).unwrap(), command);
    }

    #[test]
    fn command_status_uses_ipa_spelling() {
        assert_eq!(serde_json::to_value(CommandStatus::Succeeded).unwrap(), "SUCCEEDED");
    }
}
