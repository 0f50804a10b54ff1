//! The deploy scenario shared by the end-to-end tests and the demo: a blank UEFI VM network-boots the
//! ramdisk from the real controller, the agent writes the test OS image to the VM's disk, and the VM
//! reboots into it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::controller::{ApiClient, ClientError, Controller, ControllerError};
use crate::disk;
use crate::image_server::ImageServer;
use crate::ipmi_sim::{ChassisVm, IpmiSim, IpmiSimError};
use crate::path_io::PathIoError;
use crate::paths::{self, PathError};
use crate::ramdisk::{RamdiskError, RamdiskPaths};
use crate::testos::{self, TestOsError, TestOsImage, TestOsOptions};
use crate::vm::{Firmware, NetworkBoot, Vm, VmDisk, VmError, VmSpec, SERIAL_TAIL_LINES};

/// The name the image server serves the test OS under.
pub const IMAGE_NAME: &str = "testos.img";
/// The agent deploys to the smallest disk of at least 4 GiB.
pub const DISK_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// The ramdisk holds the agent, modules and buffers; the test OS needs far less. A [`DeploySetup`] may
/// give its VM another size.
pub const VM_MEMORY_MIB: u32 = 1024;
/// How far past the image the deployed disk must still be zero.
pub const ZERO_AFTER_IMAGE_BYTES: u64 = 1024 * 1024;
/// The test OS prints its marker about 10 s after the firmware hands over; powering off takes less.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
/// From `active` to the deployed OS's marker: a reboot or power cycle, the firmware and the test OS (about
/// 15 s under TCG). Bounds the wait when what was written does not boot.
const MARKER_TIMEOUT: Duration = Duration::from_secs(180);
const STABLE_STATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Ramdisk(#[from] RamdiskError),
    #[error("building the test OS failed")]
    TestOs(#[from] TestOsError),
    #[error("starting the image server failed")]
    ImageServer(#[source] std::io::Error),
    #[error("starting the controller failed")]
    Controller(#[from] ControllerError),
    #[error("controller API call failed")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{source}\n--- last VM serial lines ---\n{serial_tail}\n--- last controller log lines ---\n{controller_log_tail}")]
    Deploy {
        #[source]
        source: Box<ClientError>,
        serial_tail: String,
        controller_log_tail: String,
    },
    #[error("the simulated BMC failed")]
    Bmc(#[from] IpmiSimError),
    #[error("the time budget of {budget:?} ran out before {step}")]
    OutOfTime { budget: Duration, step: &'static str },
    #[error("disk {disk} differs from image {image} at byte {offset} of the disk")]
    DiskDiffers { disk: PathBuf, image: PathBuf, offset: u64 },
    #[error("disk {disk} has non-zero byte at {offset}, in the {len} bytes after the image")]
    DiskDirtyAfterImage { disk: PathBuf, offset: u64, len: u64 },
}

/// A deadline for a whole scenario: every wait gets what remains of it.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    total: Duration,
    deadline: Instant,
}

impl Budget {
    pub fn new(total: Duration) -> Budget {
        Budget { total, deadline: Instant::now() + total }
    }

    /// What remains, or an error naming the `step` that could not start in time.
    pub fn remaining(&self, step: &'static str) -> Result<Duration, ScenarioError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ScenarioError::OutOfTime { budget: self.total, step })
        } else {
            Ok(left)
        }
    }
}

/// An enrolled, available node with everything it needs to deploy: test OS image, image server,
/// controller and a blank disk.
#[derive(Debug)]
pub struct DeployEnv {
    pub work_dir: PathBuf,
    pub image: TestOsImage,
    pub image_server: ImageServer,
    pub controller: Controller,
    pub client: ApiClient,
    pub node: String,
    pub mac: String,
    pub disk: PathBuf,
    /// The VM's RAM.
    pub memory_mib: u32,
}

/// What a deploy request sets: the image (served by the scenario's image server) and its checksum,
/// further `instance_info` members, and the provision request's `configdrive`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployRequest {
    /// The name the image server serves the image under.
    pub image_name: String,
    pub image_checksum: String,
    /// More `instance_info`: `image_disk_format`, `image_type`, `root_gb`, `swap_mb`, `deploy_boot_mode`...
    pub instance_info: serde_json::Map<String, Value>,
    /// Ironic's `configdrive` (a dict from API 1.56, or a URL or gzip+base64 ISO string).
    pub configdrive: Option<Value>,
}

impl DeployRequest {
    /// The image `image_name` with `image_checksum` and nothing else.
    pub fn image(image_name: &str, image_checksum: &str) -> DeployRequest {
        DeployRequest {
            image_name: image_name.to_owned(),
            image_checksum: image_checksum.to_owned(),
            instance_info: serde_json::Map::new(),
            configdrive: None,
        }
    }

    /// Adds an `instance_info` member.
    pub fn with(mut self, key: &str, value: Value) -> DeployRequest {
        self.instance_info.insert(key.to_owned(), value);
        self
    }

    /// The provision request's body: `{"target": "active"}`, with the `configdrive` if there is one.
    pub fn provision_body(&self) -> Value {
        let mut body = json!({"target": "active"});
        if let Some(configdrive) = &self.configdrive {
            body["configdrive"] = configdrive.clone();
        }
        body
    }
}

/// A deploy in flight: the request has been made and the VM is booting.
#[derive(Debug)]
pub struct DeployStarted {
    pub vm: Vm,
    pub requested_at: Instant,
    pub requested_wall: SystemTime,
}

/// How long the stages of a successful deploy took, from the deploy request.
#[derive(Debug, Clone)]
pub struct BootOutcome {
    pub to_active: Duration,
    pub to_marker: Duration,
    pub to_poweroff: Duration,
    /// The node as it was when it became `active`.
    pub node: Value,
}

impl BootOutcome {
    /// The agent's write speed as it reported it in its `write_image` result, if the node still shows
    /// that result (`driver_internal_info.agent_command.command_result.mib_per_second`).
    pub fn agent_write_mib_per_second(&self) -> Option<f64> {
        self.node["driver_internal_info"]["agent_command"]["command_result"]["mib_per_second"].as_f64()
    }
}

/// The deploying VM: UEFI, network boot first (to the controller's iPXE script), then the blank disk.
fn node_vm_spec(work_dir: &Path, controller: &Controller, mac: &str, disk: &Path, memory_mib: u32) -> VmSpec {
    VmSpec {
        name: "node".into(),
        work_dir: work_dir.join("vm"),
        firmware: Firmware::Uefi,
        memory_mib,
        network_boot: Some(NetworkBoot { boot_url: controller.boot_url(), mac: mac.to_owned() }),
        disks: vec![VmDisk::virtio(disk)],
        ipmi_bmc_port: None,
    }
}

/// Everything a deploy needs but the node: test OS image, image server, controller and a blank disk.
#[derive(Debug)]
pub struct DeploySetup {
    pub name: String,
    pub work_dir: PathBuf,
    pub image: TestOsImage,
    pub image_server: ImageServer,
    pub controller: Controller,
    pub client: ApiClient,
    pub mac: String,
    pub disk: PathBuf,
    /// The VM's RAM ([`VM_MEMORY_MIB`] unless changed before the VM is made).
    pub memory_mib: u32,
}

impl DeploySetup {
    /// Prepares `name` (a fresh work directory under the scratch dir): builds the test OS with a unique
    /// token, starts the image server and the controller (with `controller_flags`), creates the blank disk.
    pub fn new(
        name: &str,
        ramdisk: &RamdiskPaths,
        mac: &str,
        controller_flags: &[&str],
    ) -> Result<DeploySetup, ScenarioError> {
        DeploySetup::with_test_os(name, ramdisk, mac, controller_flags, &TestOsOptions::default())
    }

    /// [`DeploySetup::new`] with a test OS built with `test_os` options.
    pub fn with_test_os(
        name: &str,
        ramdisk: &RamdiskPaths,
        mac: &str,
        controller_flags: &[&str],
        test_os: &TestOsOptions,
    ) -> Result<DeploySetup, ScenarioError> {
        let work_dir = paths::scratch_dir()?.join("runs").join(name);
        if work_dir.exists() {
            fs::remove_dir_all(&work_dir).map_err(PathIoError::at("remove the old work directory", &work_dir))?;
        }
        fs::create_dir_all(&work_dir).map_err(PathIoError::at("create directory", &work_dir))?;
        tracing::info!(work_dir = %work_dir.display(), "preparing deploy scenario");

        let token = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let image = testos::build_with(&work_dir.join("testos"), &ramdisk.vmlinuz, &token, test_os)?;
        let image_server =
            ImageServer::start([(IMAGE_NAME.to_string(), image.path.clone())]).map_err(ScenarioError::ImageServer)?;
        let controller = Controller::start_with(&work_dir.join("controller"), &ramdisk.dir, controller_flags)?;
        let client = controller.client()?;
        let disk = work_dir.join("disk.raw");
        disk::create_sparse(&disk, DISK_BYTES)?;
        Ok(DeploySetup {
            name: name.to_owned(),
            work_dir,
            image,
            image_server,
            controller,
            client,
            mac: mac.to_owned(),
            disk,
            memory_mib: VM_MEMORY_MIB,
        })
    }

    /// The VM that deploys: UEFI, network boot first (to the controller's iPXE script), then the blank disk.
    pub fn vm_spec(&self) -> VmSpec {
        node_vm_spec(&self.work_dir, &self.controller, &self.mac, &self.disk, self.memory_mib)
    }

    /// Enrolls the node with `fields` (its driver and driver_info) and the VM's MAC, and takes it through
    /// enroll -> manageable -> available. Without automated cleaning, unless `fields` set
    /// `automated_clean`: cleaning boots the ramdisk once more (20-30 s under TCG), and only tests about
    /// cleaning want that.
    pub fn enroll(self, fields: Value, budget: &Budget) -> Result<DeployEnv, ScenarioError> {
        let DeploySetup { name, work_dir, image, image_server, controller, client, mac, disk, memory_mib } = self;
        let mut body = json!({"name": name, "boot_mode": "uefi", "automated_clean": false});
        if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        let node = client.create_node_from(body)?["uuid"].as_str().unwrap_or_default().to_owned();
        client.create_port(&mac, &node)?;
        client.set_provision_state(&node, "manage")?;
        let timeout = STABLE_STATE_TIMEOUT.min(budget.remaining("manage")?);
        // Not failing on "enroll": a controller may apply the transition after answering; a failed
        // verification shows up as the timeout's last_error.
        client.wait_for_provision_state(&node, &["manageable"], &[], timeout)?;
        client.set_provision_state(&node, "provide")?;
        let timeout = STABLE_STATE_TIMEOUT.min(budget.remaining("provide")?);
        client.wait_for_provision_state(&node, &["available"], &["clean failed", "error"], timeout)?;
        Ok(DeployEnv { work_dir, image, image_server, controller, client, node, mac, disk, memory_mib })
    }
}

impl DeployEnv {
    /// A [`DeploySetup`] whose node has no BMC (`manual-management`): the test powers the VM.
    pub fn prepare(name: &str, ramdisk: &RamdiskPaths, mac: &str, budget: &Budget) -> Result<DeployEnv, ScenarioError> {
        DeploySetup::new(name, ramdisk, mac, &[])?.enroll(json!({"driver": "manual-management"}), budget)
    }

    /// Points the node's instance at the test OS image (with `image_checksum`) and requests the deploy.
    pub fn request_deploy(&self, image_checksum: &str) -> Result<(Instant, SystemTime), ScenarioError> {
        self.request(&DeployRequest::image(IMAGE_NAME, image_checksum))
    }

    /// Sets the node's `instance_info` as `request` says (the image at the image server's guest URL) and
    /// requests the deploy, with the request's config drive.
    pub fn request(&self, request: &DeployRequest) -> Result<(Instant, SystemTime), ScenarioError> {
        let source = json!(self.image_server.guest_url(&request.image_name));
        let checksum = json!(request.image_checksum);
        let fields = [("image_source", &source), ("image_checksum", &checksum)]
            .into_iter()
            .chain(request.instance_info.iter().map(|(key, value)| (key.as_str(), value)));
        self.client.add_instance_info(&self.node, fields)?;
        let requested = (Instant::now(), SystemTime::now());
        self.client.request_provision(&self.node, request.provision_body())?;
        Ok(requested)
    }

    /// Sets the node's image (with `image_checksum`), requests the deploy, then powers the VM on: UEFI,
    /// network boot first (to the controller's iPXE script), then the blank disk.
    pub fn start_deploy(&self, image_checksum: &str) -> Result<DeployStarted, ScenarioError> {
        let (requested_at, requested_wall) = self.request_deploy(image_checksum)?;
        let vm = Vm::start(node_vm_spec(&self.work_dir, &self.controller, &self.mac, &self.disk, self.memory_mib))?;
        Ok(DeployStarted { vm, requested_at, requested_wall })
    }

    /// Waits for the node to reach one of `wanted`; a failure carries the VM's serial tail and the
    /// controller's log tail, which is where the reason usually is.
    pub fn wait_for_state(
        &self,
        started: &DeployStarted,
        wanted: &[&str],
        fail_states: &[&str],
        budget: &Budget,
    ) -> Result<Value, ScenarioError> {
        let timeout = budget.remaining("waiting for the deploy")?;
        self.client.wait_for_provision_state(&self.node, wanted, fail_states, timeout).map_err(|source| {
            ScenarioError::Deploy {
                source: Box::new(source),
                serial_tail: started.vm.serial_tail(SERIAL_TAIL_LINES),
                controller_log_tail: self.controller.log_tail(),
            }
        })
    }

    /// Waits for `active`, then for the deployed test OS's marker on the serial console, then for it to
    /// power the VM off.
    pub fn wait_deployed_and_booted(
        &self,
        started: &mut DeployStarted,
        budget: &Budget,
    ) -> Result<BootOutcome, ScenarioError> {
        let node = self.wait_for_state(started, &["active"], &["deploy failed", "error"], budget)?;
        let to_active = started.requested_at.elapsed();
        tracing::info!(seconds = to_active.as_secs_f64(), "node active");
        started.vm.wait_for_serial(
            &self.image.marker(),
            MARKER_TIMEOUT.min(budget.remaining("waiting for the test OS marker")?),
        )?;
        let to_marker = started.requested_at.elapsed();
        tracing::info!(seconds = to_marker.as_secs_f64(), "deployed test OS booted");
        started.vm.wait_exit(POWEROFF_TIMEOUT.min(budget.remaining("waiting for power-off")?))?;
        let to_poweroff = started.requested_at.elapsed();
        Ok(BootOutcome { to_active, to_marker, to_poweroff, node })
    }

    /// The disk holds the test OS image byte for byte, and the MiB after it is still zero (nothing else
    /// written). Call once QEMU has stopped.
    pub fn check_disk_holds_image(&self) -> Result<(), ScenarioError> {
        self.check_disk_holds(&self.image.path, self.image.size_bytes)
    }

    /// The disk holds the raw image `image` of `image_bytes` byte for byte, and the MiB after it is still
    /// zero. Call once QEMU has stopped.
    pub fn check_disk_holds(&self, image: &Path, image_bytes: u64) -> Result<(), ScenarioError> {
        if let Some(offset) = disk::first_difference(&self.disk, image)? {
            return Err(ScenarioError::DiskDiffers { disk: self.disk.clone(), image: image.to_owned(), offset });
        }
        if let Some(offset) = disk::first_nonzero(&self.disk, image_bytes, ZERO_AFTER_IMAGE_BYTES)? {
            return Err(ScenarioError::DiskDirtyAfterImage {
                disk: self.disk.clone(),
                offset,
                len: ZERO_AFTER_IMAGE_BYTES,
            });
        }
        Ok(())
    }
}

/// Controller flags of the IPMI scenario: a fast power state sync, so the deployed OS powering itself
/// off shows on the node within seconds.
pub const IPMI_CONTROLLER_FLAGS: &[&str] = &["--power-sync-interval", "2", "--bmc-min-command-interval-ms", "200"];

/// A node whose BMC is OpenIPMI's `ipmi_sim`, powering the VM: the controller drives the whole deploy.
pub struct IpmiDeployEnv {
    pub env: DeployEnv,
    pub bmc: IpmiSim,
}

/// How an IPMI-driven deploy went, from the deploy request.
#[derive(Debug, Clone)]
pub struct IpmiDeployOutcome {
    pub boot: BootOutcome,
    pub requested_wall: SystemTime,
}

impl IpmiDeployEnv {
    /// A [`DeploySetup`] with the VM behind `ipmi_sim`, enrolled with the `ipmi` driver and available.
    pub fn prepare(name: &str, ramdisk: &RamdiskPaths, mac: &str, budget: &Budget) -> Result<Self, ScenarioError> {
        IpmiDeployEnv::enroll(DeploySetup::new(name, ramdisk, mac, IPMI_CONTROLLER_FLAGS)?, budget)
    }

    /// Puts the VM of `setup` (made with [`IPMI_CONTROLLER_FLAGS`]) behind `ipmi_sim` and enrolls the node
    /// with the `ipmi` driver; the node is available.
    pub fn enroll(setup: DeploySetup, budget: &Budget) -> Result<Self, ScenarioError> {
        let chassis = ChassisVm::new(&setup.vm_spec())?;
        let bmc = IpmiSim::start(&setup.work_dir.join("bmc"), Some(chassis))?;
        let env = setup.enroll(json!({"driver": "ipmi", "driver_info": Value::Object(bmc.driver_info())}), budget)?;
        Ok(IpmiDeployEnv { env, bmc })
    }

    /// Requests the deploy of the test OS and waits for `active`, the deployed OS's marker, and the
    /// node seen powered off (the OS powers off; the power state sync records it).
    pub fn deploy_and_boot(&self, budget: &Budget) -> Result<IpmiDeployOutcome, ScenarioError> {
        self.deploy_and_boot_with(&DeployRequest::image(IMAGE_NAME, &self.env.image.sha256), budget)
    }

    /// [`IpmiDeployEnv::deploy_and_boot`] of what `request` says; the image must boot the test OS.
    pub fn deploy_and_boot_with(
        &self,
        request: &DeployRequest,
        budget: &Budget,
    ) -> Result<IpmiDeployOutcome, ScenarioError> {
        let env = &self.env;
        let (requested_at, requested_wall) = env.request(request)?;
        let timeout = budget.remaining("waiting for the deploy")?;
        let node = env.client.wait_for_provision_state(&env.node, &["active"], &["deploy failed", "error"], timeout);
        let node = node.map_err(|source| self.deploy_error(source))?;
        let to_active = requested_at.elapsed();
        self.bmc.wait_for_serial(
            &env.image.marker(),
            MARKER_TIMEOUT.min(budget.remaining("waiting for the test OS marker")?),
        )?;
        let to_marker = requested_at.elapsed();
        let timeout = POWEROFF_TIMEOUT.min(budget.remaining("waiting for power-off")?);
        env.client
            .wait_for_node(&env.node, "seen powered off", timeout, |node| node["power_state"] == "power off")
            .map_err(|source| self.deploy_error(source))?;
        let to_poweroff = requested_at.elapsed();
        Ok(IpmiDeployOutcome { boot: BootOutcome { to_active, to_marker, to_poweroff, node }, requested_wall })
    }

    /// A failed wait of the scenario with the VM's serial tail, the BMC's chassis calls and the
    /// controller's log tail.
    pub fn deploy_error(&self, source: ClientError) -> ScenarioError {
        let serial = self.bmc.serial_log().unwrap_or_default();
        ScenarioError::Deploy {
            source: Box::new(source),
            serial_tail: format!(
                "{}\n--- BMC chassis calls ---\n{}",
                ferric_runner::tail_lines(&serial, SERIAL_TAIL_LINES),
                self.bmc.chassis_log().join("\n")
            ),
            controller_log_tail: self.env.controller.log_tail(),
        }
    }
}

/// One line of a deploy timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    /// Seconds since the deploy request (negative: before it).
    pub seconds: f64,
    pub what: String,
}

/// The node's history entries (Ironic's `{"history": [{"created_at", "event", ...}]}`) placed on the
/// timeline of a deploy requested at `requested_wall`, sorted by time, each as `from -> to: event` when
/// it records a state change. Entries without a parseable `created_at` are left out.
pub fn history_timeline(history: &Value, requested_wall: SystemTime) -> Vec<TimelineEntry> {
    let requested = chrono::DateTime::<chrono::Utc>::from(requested_wall);
    let mut entries: Vec<TimelineEntry> = history["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let created = chrono::DateTime::parse_from_rfc3339(entry["created_at"].as_str()?).ok()?;
            let seconds = (created.with_timezone(&chrono::Utc) - requested).num_milliseconds() as f64 / 1000.0;
            let event = entry["event"].as_str().unwrap_or_default();
            let what = match (entry["from_state"].as_str(), entry["to_state"].as_str()) {
                (Some(from), Some(to)) => format!("{from} -> {to}: {event}"),
                _ => event.to_string(),
            };
            Some(TimelineEntry { seconds, what })
        })
        .collect();
    entries.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_is_placed_relative_to_the_deploy_request_and_sorted() {
        let requested: SystemTime = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00+00:00").unwrap().into();
        let history = json!({"history": [
            {"created_at": "2026-01-01T10:01:30.500+00:00", "event": "Deployment finished",
             "from_state": "wait call-back", "to_state": "active", "event_type": "provisioning"},
            {"created_at": "2026-01-01T09:59:58+00:00", "event": "Node verified", "from_state": null, "to_state": null},
            {"created_at": "not a time", "event": "ignored"},
            {"created_at": "2026-01-01T10:00:01Z", "event": "Deploy requested",
             "from_state": "available", "to_state": "deploying", "severity": "INFO"},
        ]});
        let timeline = history_timeline(&history, requested);
        assert_eq!(
            timeline,
            vec![
                TimelineEntry { seconds: -2.0, what: "Node verified".into() },
                TimelineEntry { seconds: 1.0, what: "available -> deploying: Deploy requested".into() },
                TimelineEntry { seconds: 90.5, what: "wait call-back -> active: Deployment finished".into() },
            ]
        );
    }

    #[test]
    fn agent_write_speed_comes_from_the_reported_command_result() {
        let outcome = |node| BootOutcome {
            to_active: Duration::ZERO,
            to_marker: Duration::ZERO,
            to_poweroff: Duration::ZERO,
            node,
        };
        let reported = outcome(json!({"driver_internal_info": {"agent_command": {
            "command_name": "write_image", "command_result": {"image_bytes": 50331648, "mib_per_second": 38.25}
        }}}));
        assert_eq!(reported.agent_write_mib_per_second(), Some(38.25));
        let rebooting = outcome(json!({"driver_internal_info": {"agent_command": {"command_name": "reboot"}}}));
        assert_eq!(rebooting.agent_write_mib_per_second(), None);
    }

    #[test]
    fn a_deploy_request_carries_instance_info_and_the_config_drive_in_the_provision_body() {
        let plain = DeployRequest::image("root.ext4", "ab12");
        assert_eq!(plain.provision_body(), json!({"target": "active"}));
        let request = DeployRequest {
            configdrive: Some(json!({"meta_data": {"meta": {"ferric_probe": "p"}}})),
            ..plain.with("image_type", json!("partition")).with("root_gb", json!(1))
        };
        assert_eq!(
            request.provision_body(),
            json!({"target": "active", "configdrive": {"meta_data": {"meta": {"ferric_probe": "p"}}}})
        );
        assert_eq!(Value::Object(request.instance_info), json!({"image_type": "partition", "root_gb": 1}));
        assert_eq!((request.image_name.as_str(), request.image_checksum.as_str()), ("root.ext4", "ab12"));
    }

    #[test]
    fn an_exhausted_budget_names_the_step() {
        let budget = Budget::new(Duration::ZERO);
        let err = budget.remaining("waiting for the marker").unwrap_err();
        assert!(err.to_string().contains("waiting for the marker"), "{err}");
    }
}
