//! What Ironic's conductor does: provisioning actions, agent lookup and heartbeat dispatch, the
//! call-back timeouts, and the outcome of BMC jobs. Every function runs inside one store
//! transaction, so each change to a node is atomic; the BMC calls themselves run outside any
//! transaction, in [`crate::jobs`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferric_protocol::hints::parse_root_device_hints;
use ferric_protocol::{
    CleanStep, CleanStepResult, Command, CommandResult, CommandStatus, Heartbeat, HeartbeatResponse, ImageInfo,
    Inventory, LookupConfig, LookupNode, LookupResponse, Task, WriteImageResult, MASKED_TOKEN,
};
use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use crate::agent_token;
use crate::bmc::{Bmc, BmcError, BootDevice, BootDeviceSetting, PowerAction};
use crate::boot::boot_mode;
use crate::error::{error_chain, Error};
use crate::fsm::{self, Event, ProvisionState, Verb};
use crate::jobs::{BmcJob, BmcStep, JobOutcome, NodeLock};
use crate::model::{timestamp, HistoryEvent, JsonObject, Node, Severity};
use crate::store::{Store, StoreError, Tx};
use crate::Config;

/// Ironic's `[api]ramdisk_heartbeat_timeout`, told to the agent by lookup.
pub const RAMDISK_HEARTBEAT_TIMEOUT_SECS: u64 = 300;
/// How many of the agent's last log lines are kept on the node.
pub const LOG_TAIL_LINES: usize = 50;

/// `driver_internal_info` keys written from heartbeats.
pub const AGENT_LAST_HEARTBEAT: &str = "agent_last_heartbeat";
pub const AGENT_VERSION: &str = "agent_version";
pub const AGENT_PROGRESS: &str = "agent_progress";
pub const AGENT_LOG_TAIL: &str = "agent_log_tail";
pub const AGENT_COMMAND: &str = "agent_command";
/// The task assigned to the agent and not yet reported finished.
pub const AGENT_TASK: &str = "agent_task";
/// `driver_internal_info` keys written when the image is on the disk (Ironic's names).
pub const ROOT_UUID_OR_DISK_ID: &str = "root_uuid_or_disk_id";
pub const EFI_SYSTEM_PARTITION_UUID: &str = "efi_system_partition_uuid";
pub const PARTITION_UUIDS: &str = "partition_uuids";
pub const IS_WHOLE_DISK_IMAGE: &str = "is_whole_disk_image";
/// `driver_internal_info` keys of a cleaning: its steps and the one running (Ironic's names).
pub const CLEAN_STEPS: &str = "clean_steps";
pub const CLEAN_STEP_INDEX: &str = "clean_step_index";
/// `driver_internal_info` key of what the agent reported for each step of the last cleaning: a list
/// of [`CleanStepResult`]s whose `step` is `interface.step`.
pub const CLEAN_STEP_RESULTS: &str = "clean_step_results";
/// Interfaces a clean step may name (Ironic's clean step schema, minus those without steps here).
pub const CLEAN_STEP_INTERFACES: &[&str] = &["deploy", "power", "management", "bios", "raid", "firmware", "vendor"];
/// Ironic's `fault` for a node put in maintenance by a failed clean step.
pub const FAULT_CLEAN_FAILURE: &str = "clean failure";
const INSPECTION_ABORTED: &str = "Inspection was aborted by request.";
const INSPECTION_TIMED_OUT: &str = "timeout reached while inspecting the node";

/// History `event_type`s.
const EVENT_TYPE_PROVISIONING: &str = "provisioning";
const EVENT_TYPE_DEPLOY: &str = "deploy";
const EVENT_TYPE_CLEANING: &str = "cleaning";
const EVENT_TYPE_INSPECTION: &str = "introspection";
/// History `event_type` of BMC calls and of power actions.
pub const EVENT_TYPE_POWER: &str = "power";

/// The BMC steps that boot a node into the ramdisk: network boot for the next boot, then a reboot
/// (power on when off).
const BOOT_RAMDISK: [BmcStep; 2] = [
    BmcStep::SetBootDevice(BootDeviceSetting { device: BootDevice::Pxe, persistent: false }),
    BmcStep::Power(PowerAction::Reboot),
];
/// The BMC steps that boot a deployed node from its disk, for good.
const BOOT_INSTANCE: [BmcStep; 2] = [
    BmcStep::SetBootDevice(BootDeviceSetting { device: BootDevice::Disk, persistent: true }),
    BmcStep::Power(PowerAction::Reboot),
];

/// A provisioning action's result: the node as saved, and the BMC work to run next, if any.
#[derive(Debug)]
pub struct Action {
    pub node: Node,
    pub job: Option<BmcJob>,
}

/// A heartbeat's answer, and the BMC work it started (with the node's lock), if any.
#[derive(Debug)]
pub struct HeartbeatOutcome {
    pub response: HeartbeatResponse,
    pub job: Option<(NodeLock, BmcJob)>,
}

/// Runs operations on nodes with the controller's settings (its name, the heartbeat
/// interval and the call-back timeouts).
#[derive(Debug, Clone)]
pub struct Conductor {
    config: Arc<Config>,
}

impl Conductor {
    pub fn new(config: Arc<Config>) -> Conductor {
        Conductor { config }
    }

    /// Recorded as `conductor` in history and shown on nodes.
    pub fn name(&self) -> &str {
        &self.config.conductor_name
    }

    /// The interval agents are told to heartbeat at, in whole seconds.
    fn heartbeat_interval_secs(&self) -> u64 {
        self.config.heartbeat_interval.as_secs().max(1)
    }

    /// The node's BMC, checked without I/O; Ironic's validation error (400) when `driver_info` is
    /// incomplete. `None` for hardware types without a BMC.
    pub fn bmc_for(&self, node: &Node) -> Result<Option<Bmc>, Error> {
        Bmc::for_node(node, &self.config.bmc).map_err(|error| {
            Error::Invalid(format!("Failed to validate power/management for node {}: {error}", node.uuid))
        })
    }

    /// Whether automated cleaning is on for `node`: its own `automated_clean`, else the controller's
    /// (Ironic's `skip_automated_cleaning`).
    pub fn automated_clean_enabled(&self, node: &Node) -> bool {
        node.automated_clean.unwrap_or(self.config.automated_clean)
    }

    /// The steps of automated cleaning, highest priority first: the agent's erase steps with their
    /// configured priorities, those at 0 left out (Ironic's `[deploy]erase_devices*_priority`).
    pub fn automated_clean_steps(&self) -> Vec<(CleanStep, u32)> {
        let mut steps: Vec<(CleanStep, u32)> = [
            ("erase_devices_metadata", self.config.erase_devices_metadata_priority),
            ("erase_devices", self.config.erase_devices_priority),
        ]
        .into_iter()
        .filter(|(_, priority)| *priority > 0)
        .map(|(step, priority)| {
            (CleanStep { interface: "deploy".to_owned(), step: step.to_owned(), args: json!({}) }, priority)
        })
        .collect();
        // A stable sort: on equal priorities the metadata erase, quick and already hiding the data, goes first.
        steps.sort_by_key(|(_, priority)| std::cmp::Reverse(*priority));
        steps
    }

    /// Whether `provide` or undeploy will have the agent clean `node` (if it has a BMC to boot the ramdisk).
    fn will_clean(&self, node: &Node) -> bool {
        self.automated_clean_enabled(node) && !self.automated_clean_steps().is_empty()
    }

    /// A job for `node`'s BMC; sets the node's `target_power_state` if the job changes power.
    pub fn job(
        &self,
        node: &mut Node,
        bmc: Bmc,
        purpose: &str,
        steps: &[BmcStep],
        on_success: &[(Event, &str)],
        on_failure: Option<Event>,
    ) -> BmcJob {
        // Ironic's target_power_state while a power action runs: the state it ends in.
        if let Some(action) = steps.iter().rev().find_map(|step| match step {
            BmcStep::Power(action) => Some(*action),
            _ => None,
        }) {
            node.target_power_state = Some(action.resulting_state().as_str().to_owned());
        }
        BmcJob {
            bmc,
            boot_mode: boot_mode(node),
            purpose: purpose.to_owned(),
            steps: steps.to_vec(),
            power_timeout: self.config.bmc.power_timeout,
            on_success: on_success.iter().map(|(event, cause)| (*event, (*cause).to_owned())).collect(),
            on_failure,
        }
    }

    /// Applies a provisioning verb. The state change, and the immediate follow-ups of
    /// operations that have no hardware work, happen before this returns; a node with a BMC
    /// stops in the transient state (`deploying`, `cleaning`...) and the returned job moves it on.
    /// Every verb but abort starts new work, which clears the previous `last_error` as in Ironic.
    pub fn provision(&self, tx: &Tx<'_>, mut node: Node, verb: Verb, now: DateTime<Utc>) -> Result<Action, Error> {
        let event = verb.event();
        if fsm::next_state(node.provision_state, event).is_none() {
            return Err(invalid_state(&node, verb.as_str()));
        }
        // Only the verbs with BMC work need a valid driver_info: abort or provide never refuse over it.
        let bmc = match verb {
            Verb::Manage
            | Verb::Active
            | Verb::Deploy
            | Verb::Rebuild
            | Verb::Deleted
            | Verb::Undeploy
            | Verb::Inspect => self.bmc_for(&node)?,
            _ => None,
        };
        let change = Change { tx, conductor: self, now };
        let requested = format!("Provisioning action \"{}\" requested", verb.as_str());
        let mut job = None;
        match verb {
            Verb::Manage => {
                node.last_error = None;
                change.apply(&mut node, event, &requested)?;
                if node.provision_state == ProvisionState::Verifying {
                    match bmc {
                        Some(bmc) => {
                            let done = [(Event::Done, "Verification finished: the BMC answered")];
                            job = Some(self.job(
                                &mut node,
                                bmc,
                                "Verification",
                                &[BmcStep::ReadPowerState],
                                &done,
                                Some(Event::Fail),
                            ));
                        }
                        None => change.apply(&mut node, Event::Done, "Verification finished: no BMC to check")?,
                    }
                }
            }
            Verb::Provide => {
                wipe_agent_state(&mut node);
                node.last_error = None;
                // Checked before the state changes, and only when the BMC will boot the ramdisk.
                let bmc = if self.will_clean(&node) { self.bmc_for(&node)? } else { None };
                change.apply(&mut node, event, &requested)?;
                job = change.start_automated_cleaning(&mut node, bmc)?;
            }
            Verb::Active | Verb::Deploy | Verb::Rebuild => {
                if node.maintenance {
                    return Err(Error::Invalid(format!(
                        "The {} operation can't be performed on node {} because it's in maintenance mode.",
                        verb.as_str(),
                        node.uuid
                    )));
                }
                if verb == Verb::Rebuild {
                    refuse_if_protected(&node)?;
                }
                validate_deploy_image(&node)?;
                wipe_agent_state(&mut node);
                node.last_error = None;
                change.apply(&mut node, event, &requested)?;
                let waiting = "Waiting for the agent to call back";
                match bmc {
                    Some(bmc) => {
                        let purpose = "Booting the ramdisk for deploy";
                        let on_success = [(Event::Wait, waiting)];
                        job = Some(self.job(&mut node, bmc, purpose, &BOOT_RAMDISK, &on_success, Some(Event::Fail)));
                    }
                    None => change.apply(&mut node, Event::Wait, waiting)?,
                }
            }
            Verb::Deleted | Verb::Undeploy => {
                refuse_if_protected(&node)?;
                wipe_agent_state(&mut node);
                node.last_error = None;
                change.apply(&mut node, event, &requested)?;
                node.instance_info = JsonObject::new();
                node.instance_uuid = None;
                let torn_down = "Tear down finished: instance_info cleared";
                match bmc {
                    // Automated cleaning follows once the node is off (see `finish_job`).
                    Some(bmc) => {
                        let purpose = "Tear down";
                        let steps = [BmcStep::Power(PowerAction::Off)];
                        let on_success = [(Event::Clean, torn_down)];
                        job = Some(self.job(&mut node, bmc, purpose, &steps, &on_success, Some(Event::Fail)));
                    }
                    None => {
                        change.apply(&mut node, Event::Clean, torn_down)?;
                        job = change.start_automated_cleaning(&mut node, None)?;
                    }
                }
            }
            Verb::Inspect => {
                wipe_agent_state(&mut node);
                node.last_error = None;
                node.inspection_started_at = Some(timestamp(now));
                node.inspection_finished_at = None;
                change.apply(&mut node, event, &requested)?;
                let waiting = "Waiting for the agent to send the inventory";
                match bmc {
                    Some(bmc) => {
                        let purpose = "Booting the ramdisk for inspection";
                        let on_success = [(Event::Wait, waiting)];
                        job = Some(self.job(&mut node, bmc, purpose, &BOOT_RAMDISK, &on_success, Some(Event::Fail)));
                    }
                    None => change.apply(&mut node, Event::Wait, waiting)?,
                }
            }
            Verb::Clean => return Err(clean_steps_required()),
            Verb::Abort if node.provision_state == ProvisionState::DeployWait => {
                node.last_error = Some("Deploy aborted".to_owned());
                end_agent_work(&mut node);
                change.apply(&mut node, event, &requested)?;
            }
            Verb::Abort if node.provision_state == ProvisionState::InspectWait => {
                node.last_error = Some(INSPECTION_ABORTED.to_owned());
                end_agent_work(&mut node);
                change.transition(&mut node, event, Severity::Error, EVENT_TYPE_INSPECTION, INSPECTION_ABORTED)?;
            }
            Verb::Abort if node.provision_state == ProvisionState::CleanWait => {
                // Ironic's `get_last_error`: the step named is the one running or just finished.
                let mut reason = "By request, the clean operation was aborted".to_owned();
                if let Some(step) = step_id(&node.clean_step) {
                    reason.push_str(&format!(" during or after the completion of step \"{step}\""));
                }
                node.last_error = Some(reason.clone());
                end_cleaning(&mut node);
                change.transition(&mut node, event, Severity::Error, EVENT_TYPE_CLEANING, &reason)?;
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "The requested action \"{}\" is not supported by Ferric yet.",
                    verb.as_str()
                )))
            }
        }
        change.save(&mut node)?;
        Ok(Action { node, job })
    }

    /// Starts manual cleaning (`clean` with `clean_steps`, checked by the API): the agent runs
    /// the steps one by one from its heartbeats, and the node returns to `manageable`.
    pub fn clean(&self, tx: &Tx<'_>, mut node: Node, steps: &[CleanStep], now: DateTime<Utc>) -> Result<Action, Error> {
        if fsm::next_state(node.provision_state, Event::Clean).is_none() {
            return Err(invalid_state(&node, Verb::Clean.as_str()));
        }
        if node.maintenance {
            return Err(Error::Invalid(format!(
                "The cleaning operation can't be performed on node {} because it's in maintenance mode.",
                node.uuid
            )));
        }
        let change = Change { tx, conductor: self, now };
        wipe_agent_state(&mut node);
        end_cleaning(&mut node);
        node.last_error = None;
        node.driver_internal_info.remove(CLEAN_STEP_RESULTS);
        node.driver_internal_info.insert(CLEAN_STEPS.to_owned(), to_json(&steps));
        change.apply(&mut node, Event::Clean, "Provisioning action \"clean\" requested")?;
        let waiting = "Waiting for the agent to call back";
        let job = match self.bmc_for(&node)? {
            Some(bmc) => {
                let purpose = "Booting the ramdisk for cleaning";
                let on_success = [(Event::Wait, waiting)];
                Some(self.job(&mut node, bmc, purpose, &BOOT_RAMDISK, &on_success, Some(Event::Fail)))
            }
            None => {
                change.apply(&mut node, Event::Wait, waiting)?;
                None
            }
        };
        change.save(&mut node)?;
        Ok(Action { node, job })
    }

    /// Answers an agent's lookup for `node`, handing out its token the first time.
    pub fn lookup(&self, tx: &Tx<'_>, mut node: Node, now: DateTime<Utc>) -> Result<LookupResponse, Error> {
        if !fsm::LOOKUP_ALLOWED_STATES.contains(&node.provision_state) {
            return Err(Error::ResourceNotFound);
        }
        let agent_token = if node.agent_token_hash.is_some() {
            MASKED_TOKEN.to_owned()
        } else {
            let token = agent_token::generate();
            node.agent_token_hash = Some(agent_token::hash(&token));
            Change { tx, conductor: self, now }.save(&mut node)?;
            token
        };
        Ok(LookupResponse {
            node: LookupNode {
                uuid: node.uuid,
                name: node.name,
                properties: Value::Object(node.properties),
                instance_info: Value::Object(crate::secrets::mask_object(&node.instance_info)),
            },
            config: LookupConfig {
                heartbeat_timeout: RAMDISK_HEARTBEAT_TIMEOUT_SECS,
                heartbeat_interval: self.heartbeat_interval_secs(),
                agent_token,
                agent_token_required: true,
            },
        })
    }

    /// Records a heartbeat and decides the agent's next task. An agent whose work ended
    /// (its token wiped) gets Ironic's 400, a client error.
    pub fn heartbeat(
        &self,
        tx: &Tx<'_>,
        mut node: Node,
        heartbeat: Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatOutcome, Error> {
        if !agent_token::matches(node.agent_token_hash.as_deref(), &heartbeat.agent_token) {
            return Err(Error::InvalidAgentToken);
        }
        let change = Change { tx, conductor: self, now };
        record_heartbeat(&mut node, &heartbeat, now);
        if let Some(inventory) = &heartbeat.inventory {
            tx.put_inventory(&node.uuid, &to_json(inventory), &timestamp(now))?;
        }
        let Dispatch { task, changed, job } = match node.provision_state {
            ProvisionState::DeployWait => {
                node.provision_updated_at = Some(timestamp(now));
                change.dispatch_deploy(&mut node, &heartbeat)?
            }
            ProvisionState::CleanWait => {
                node.provision_updated_at = Some(timestamp(now));
                change.dispatch_clean(&mut node, &heartbeat)?
            }
            // Not a call-back renewing the wait: Ironic times inspection from its start.
            ProvisionState::InspectWait => match &heartbeat.inventory {
                Some(inventory) => change.finish_inspection(&mut node, inventory)?,
                None => Dispatch::report_only(None),
            },
            ProvisionState::Active | ProvisionState::Manageable | ProvisionState::Available => {
                pending_final_task(&mut node, &heartbeat)
            }
            _ => Dispatch::report_only(None),
        };
        match changed {
            NodeChange::ReportOnly => {
                node.updated_at = Some(timestamp(now));
                tx.update_heartbeat_fields(&node)?;
            }
            NodeChange::More => change.save(&mut node)?,
        }
        Ok(HeartbeatOutcome {
            response: HeartbeatResponse { task, heartbeat_interval: self.heartbeat_interval_secs() },
            job,
        })
    }

    /// Fails nodes whose agent has not called back in time: deploys and cleanings after their
    /// call-back timeout since the last heartbeat, inspections after theirs since the start.
    /// Returns the UUIDs of the nodes failed.
    pub fn fail_expired_waits(&self, tx: &Tx<'_>, now: DateTime<Utc>) -> Result<Vec<String>, Error> {
        type Fail = fn(&Change<'_, '_>, &mut Node) -> Result<(), Error>;
        let waits: [(ProvisionState, Duration, Fail); 3] = [
            (ProvisionState::DeployWait, self.config.deploy_callback_timeout, |change, node| {
                let reason = format!("Timeout reached while waiting for callback for node {}", node.uuid);
                change.fail_deploy(node, &reason)
            }),
            (ProvisionState::CleanWait, self.config.clean_callback_timeout, |change, node| {
                let reason = format!(
                    "Timeout reached while cleaning the node. Please check if the ramdisk responsible for the \
                     cleaning is running on the node. Failed on step {}.",
                    Value::Object(node.clean_step.clone())
                );
                change.fail_clean(node, &reason)
            }),
            (ProvisionState::InspectWait, self.config.inspect_wait_timeout, |change, node| {
                change.fail_inspection(node, INSPECTION_TIMED_OUT)
            }),
        ];
        let change = Change { tx, conductor: self, now };
        let mut failed = Vec::new();
        for (state, timeout, fail) in waits {
            let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
            let cutoff = now.checked_sub_signed(timeout).unwrap_or(DateTime::<Utc>::MIN_UTC);
            for mut node in tx.nodes_in_state_since(state, &timestamp(cutoff))? {
                fail(&change, &mut node)?;
                change.save(&mut node)?;
                failed.push(node.uuid);
            }
        }
        Ok(failed)
    }
}

impl Conductor {
    /// Records what a BMC job did on its node (locked by the job): an event per step, the power
    /// state reached, then the job's transitions, or on failure `last_error`, an error event and
    /// the failure transition. A job whose lock lapsed and was taken over records nothing: the
    /// node is someone else's now. A tear down leaves the node in `cleaning`, where automated
    /// cleaning goes on: the job booting the ramdisk is returned, with the lock renewed for it.
    pub fn finish_job(
        &self,
        tx: &Tx<'_>,
        uuid: &str,
        lock: &NodeLock,
        job: &BmcJob,
        outcome: JobOutcome,
        now: DateTime<Utc>,
    ) -> Result<Option<(NodeLock, BmcJob)>, Error> {
        if !tx.holds_reservation(uuid, &lock.owner, &lock.expires_at)? {
            tracing::error!(node = %uuid, "the node's lock lapsed during its BMC work; its outcome is dropped");
            return Ok(None);
        }
        let mut node = tx.node_by_uuid(uuid)?.ok_or_else(|| Error::NodeNotFound(uuid.to_owned()))?;
        let change = Change { tx, conductor: self, now };
        for line in &outcome.done {
            change.record(&node, Severity::Info, EVENT_TYPE_POWER, line, None, None)?;
        }
        if let Some(state) = outcome.power_state {
            node.power_state = Some(state.as_str().to_owned());
        }
        node.target_power_state = None;
        let mut next = None;
        match outcome.failure_message(&job.purpose) {
            None => {
                for (event, cause) in &job.on_success {
                    change.apply(&mut node, *event, cause)?;
                }
                if node.provision_state == ProvisionState::Cleaning {
                    if let Some(boot) = change.start_automated_cleaning(&mut node, Some(job.bmc.clone()))? {
                        next = Some((lock.renew(tx, crate::jobs::lock_ttl(&self.config.bmc))?, boot));
                    }
                }
            }
            Some(reason) => self.fail_job(&change, &mut node, job.on_failure, &reason)?,
        }
        change.save(&mut node)?;
        Ok(next)
    }

    /// Fails the job of a node whose outcome could not be recorded, so that it leaves its job state.
    pub fn abandon_job(&self, tx: &Tx<'_>, uuid: &str, reason: &str, now: DateTime<Utc>) -> Result<(), Error> {
        let Some(mut node) = tx.node_by_uuid(uuid)? else { return Ok(()) };
        let change = Change { tx, conductor: self, now };
        node.target_power_state = None;
        let event = JOB_STATES.contains(&node.provision_state).then_some(Event::Fail);
        self.fail_job(&change, &mut node, event, reason)?;
        change.save(&mut node)?;
        Ok(())
    }

    fn fail_job(
        &self,
        change: &Change<'_, '_>,
        node: &mut Node,
        event: Option<Event>,
        reason: &str,
    ) -> Result<(), Error> {
        tracing::warn!(node = %node.uuid, "{reason}");
        node.last_error = Some(reason.to_owned());
        match event.filter(|event| fsm::next_state(node.provision_state, *event).is_some()) {
            Some(event) => {
                if is_cleaning(node.provision_state) {
                    end_cleaning(node);
                } else {
                    end_agent_work(node);
                }
                change.transition(node, event, Severity::Error, EVENT_TYPE_POWER, reason)
            }
            None => change.record(node, Severity::Error, EVENT_TYPE_POWER, reason, None, None),
        }
    }

    /// Fails the nodes this controller left in a state only a BMC job moves on from: the job
    /// died with the previous run. Called at start, before their locks are released.
    pub fn fail_interrupted_jobs(&self, tx: &Tx<'_>, now: DateTime<Utc>) -> Result<Vec<String>, Error> {
        let change = Change { tx, conductor: self, now };
        let mut failed = Vec::new();
        for mut node in tx.nodes_reserved_by(self.name())? {
            let reason = if JOB_STATES.contains(&node.provision_state) {
                format!(
                    "The controller stopped while the node was {}; its BMC work was interrupted",
                    node.provision_state
                )
            } else if node.target_power_state.is_some() {
                "The controller stopped during a power action; the pending power operation was aborted".to_owned()
            } else {
                continue;
            };
            node.target_power_state = None;
            let event = JOB_STATES.contains(&node.provision_state).then_some(Event::Fail);
            self.fail_job(&change, &mut node, event, &reason)?;
            change.save(&mut node)?;
            failed.push(node.uuid);
        }
        Ok(failed)
    }
}

/// States in which a node waits for its BMC job, and which a failure leaves.
const JOB_STATES: &[ProvisionState] = &[
    ProvisionState::Verifying,
    ProvisionState::Deploying,
    ProvisionState::Deleting,
    ProvisionState::Cleaning,
    ProvisionState::Inspecting,
];

/// Periodically fails nodes whose agent stopped calling back; never returns.
pub async fn watch_callback_timeouts(store: Store, conductor: Conductor, every: Duration) -> Infallible {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checker = conductor.clone();
        if let Err(error) = store.run(move |tx| checker.fail_expired_waits(tx, Utc::now())).await {
            tracing::error!(error = %error_chain(&error), "checking call-back timeouts failed");
        }
    }
}

/// What a heartbeat answers the agent, and what it changed on the node.
struct Dispatch {
    task: Option<Task>,
    changed: NodeChange,
    /// BMC work the heartbeat started, with the node's lock.
    job: Option<(NodeLock, BmcJob)>,
}

/// Whether a heartbeat changed more than its report, deciding how much is written back.
enum NodeChange {
    /// Only what [`Tx::update_heartbeat_fields`] writes.
    ReportOnly,
    /// Other fields too (a task assigned, a transition, the token wiped): the whole node.
    More,
}

impl Dispatch {
    fn report_only(task: Option<Task>) -> Dispatch {
        Dispatch { task, changed: NodeChange::ReportOnly, job: None }
    }

    fn node_changed(task: Option<Task>) -> Dispatch {
        Dispatch { task, changed: NodeChange::More, job: None }
    }
}

/// One operation's changes to nodes, all stamped with the same time.
struct Change<'a, 'tx> {
    tx: &'a Tx<'tx>,
    conductor: &'a Conductor,
    now: DateTime<Utc>,
}

impl Change<'_, '_> {
    /// Fires `event`, updates the target state and records the transition in the history.
    fn apply(&self, node: &mut Node, event: Event, cause: &str) -> Result<(), Error> {
        self.transition(node, event, Severity::Info, EVENT_TYPE_PROVISIONING, cause)
    }

    fn transition(
        &self,
        node: &mut Node,
        event: Event,
        severity: Severity,
        event_type: &str,
        cause: &str,
    ) -> Result<(), Error> {
        let from = node.provision_state;
        let to = fsm::next_state(from, event).ok_or_else(|| invalid_state(node, event.as_str()))?;
        node.provision_state = to;
        // A manual cleaning keeps the target it started with, `manageable`, to its end.
        let manual_clean = (from == ProvisionState::Manageable && event == Event::Clean)
            || (is_cleaning(from) && node.target_provision_state == Some(ProvisionState::Manageable));
        node.target_provision_state = match to.default_target() {
            Some(ProvisionState::Available) if manual_clean && is_cleaning(to) => Some(ProvisionState::Manageable),
            target => target,
        };
        node.provision_updated_at = Some(timestamp(self.now));
        tracing::info!(node = %node.uuid, %from, %to, %event, "{cause}");
        self.record(node, severity, event_type, cause, Some(from), Some(to))
    }

    fn record(
        &self,
        node: &Node,
        severity: Severity,
        event_type: &str,
        event: &str,
        from: Option<ProvisionState>,
        to: Option<ProvisionState>,
    ) -> Result<(), Error> {
        self.tx.insert_history(&HistoryEvent {
            uuid: uuid::Uuid::new_v4().to_string(),
            node_uuid: node.uuid.clone(),
            created_at: timestamp(self.now),
            severity,
            event_type: event_type.to_owned(),
            event: event.to_owned(),
            conductor: Some(self.conductor.name().to_owned()),
            user: None,
            from_state: from.map(|state| state.to_string()),
            to_state: to.map(|state| state.to_string()),
        })?;
        Ok(())
    }

    fn save(&self, node: &mut Node) -> Result<(), StoreError> {
        node.updated_at = Some(timestamp(self.now));
        self.tx.update_node(node)
    }

    /// Moves a node in `wait call-back` to `deploy failed` with `reason` as its last error,
    /// ending the agent's work: it stays in the ramdisk, but its heartbeats are refused.
    fn fail_deploy(&self, node: &mut Node, reason: &str) -> Result<(), Error> {
        tracing::warn!(node = %node.uuid, "{reason}");
        node.last_error = Some(reason.to_owned());
        end_agent_work(node);
        self.transition(node, Event::Fail, Severity::Error, EVENT_TYPE_DEPLOY, reason)
    }

    /// Moves a node in `clean wait` to `clean failed` with `reason` as its last error. A failure
    /// during a step also puts the node in maintenance, as Ironic's `cleaning_error_handler`.
    fn fail_clean(&self, node: &mut Node, reason: &str) -> Result<(), Error> {
        tracing::warn!(node = %node.uuid, "{reason}");
        if !node.clean_step.is_empty() {
            node.maintenance = true;
            node.maintenance_reason = Some(reason.to_owned());
            node.fault = Some(FAULT_CLEAN_FAILURE.to_owned());
        }
        node.last_error = Some(reason.to_owned());
        end_cleaning(node);
        self.transition(node, Event::Fail, Severity::Error, EVENT_TYPE_CLEANING, reason)
    }

    /// Moves a node in `inspect wait` to `inspect failed` with `reason` as its last error.
    fn fail_inspection(&self, node: &mut Node, reason: &str) -> Result<(), Error> {
        tracing::warn!(node = %node.uuid, "{reason}");
        node.last_error = Some(reason.to_owned());
        end_agent_work(node);
        self.transition(node, Event::Fail, Severity::Error, EVENT_TYPE_INSPECTION, reason)
    }

    /// Ends an inspection with the agent's inventory: the node's properties are set from it
    /// and, as Ironic does after inspecting, the agent powers the node off.
    fn finish_inspection(&self, node: &mut Node, inventory: &Inventory) -> Result<Dispatch, Error> {
        self.apply(node, Event::Resume, "Inventory received from the agent")?;
        set_properties_from_inventory(node, inventory);
        node.inspection_finished_at = Some(timestamp(self.now));
        self.apply(node, Event::Done, "Inspection finished: powering the node off")?;
        Ok(Dispatch::node_changed(Some(assign_final_task(node, Command::PowerOff))))
    }

    /// Automated cleaning of a node just moved to `cleaning` (by provide or a tear down), as Ironic's
    /// `do_node_clean`: the steps are stored and the BMC boots the ramdisk (the returned job), whose
    /// agent runs them one by one from its heartbeats. With automated cleaning off, no step enabled, or
    /// no BMC to boot the ramdisk (`bmc` is `None`), the cleaning finishes at once in `available`.
    fn start_automated_cleaning(&self, node: &mut Node, bmc: Option<Bmc>) -> Result<Option<BmcJob>, Error> {
        end_cleaning(node);
        node.driver_internal_info.remove(CLEAN_STEP_RESULTS);
        let steps = self.conductor.automated_clean_steps();
        let skipped = match bmc {
            _ if !self.conductor.automated_clean_enabled(node) => "automated cleaning is disabled".to_owned(),
            _ if steps.is_empty() => "no clean step is enabled (every priority is 0)".to_owned(),
            None => format!("the {} driver has no BMC to boot the ramdisk, so no clean steps", node.driver),
            Some(bmc) => {
                let planned: Vec<PlannedStep> =
                    steps.into_iter().map(|(step, priority)| PlannedStep { step, priority: Some(priority) }).collect();
                let listed: Vec<String> = planned
                    .iter()
                    .map(|planned| format!("{} (priority {})", planned.id(), planned.priority.unwrap_or_default()))
                    .collect();
                node.driver_internal_info.insert(CLEAN_STEPS.to_owned(), to_json(&planned));
                let event = format!("Automated cleaning: {}", listed.join(", "));
                self.record(node, Severity::Info, EVENT_TYPE_CLEANING, &event, None, None)?;
                let on_success = [(Event::Wait, "Waiting for the agent to call back")];
                let purpose = "Booting the ramdisk for cleaning";
                let job = self.conductor.job(node, bmc, purpose, &BOOT_RAMDISK, &on_success, Some(Event::Fail));
                return Ok(Some(job));
            }
        };
        self.apply(node, Event::Done, &format!("Cleaning finished: {skipped}"))?;
        Ok(None)
    }

    /// The cleaning's next task for a heartbeat in `clean wait`.
    fn dispatch_clean(&self, node: &mut Node, heartbeat: &Heartbeat) -> Result<Dispatch, Error> {
        let index = node.driver_internal_info.get(CLEAN_STEP_INDEX).and_then(Value::as_u64).unwrap_or(0) as usize;
        let Some(task) = assigned_task(node) else {
            return self.send_clean_step(node, index);
        };
        let Some(report) = heartbeat.command.as_ref().filter(|command| command.id == task.id) else {
            // The agent does not know the task (it restarted, or missed the answer): send it again.
            return Ok(Dispatch::report_only(Some(task)));
        };
        let step = step_id(&node.clean_step).unwrap_or_default();
        match report.command_status {
            CommandStatus::Running => Ok(Dispatch::report_only(None)),
            CommandStatus::Failed => {
                let error = report.command_error.as_deref().unwrap_or("the agent gave no reason");
                self.fail_clean(node, &format!("Clean step {step} failed: {error}"))?;
                Ok(Dispatch::node_changed(None))
            }
            CommandStatus::Succeeded => {
                node.driver_internal_info.remove(AGENT_TASK);
                let event = record_clean_step_result(node, &step, report);
                self.apply(node, Event::Resume, &event)?;
                if index + 1 < clean_steps(node).len() {
                    self.apply(node, Event::Wait, "Waiting for the agent to run the next clean step")?;
                }
                self.send_clean_step(node, index + 1)
            }
        }
    }

    /// Sends step `index` of the cleaning to the agent, or, past the last step, ends the cleaning
    /// (manual in `manageable`, automated in `available`) and has the agent power the node off
    /// (Ironic's tear down of the cleaning).
    fn send_clean_step(&self, node: &mut Node, index: usize) -> Result<Dispatch, Error> {
        let Some(planned) = clean_steps(node).into_iter().nth(index) else {
            if node.provision_state == ProvisionState::CleanWait {
                self.apply(node, Event::Resume, "No clean step left")?;
            }
            let manual = node.target_provision_state == Some(ProvisionState::Manageable);
            // The agent's token stays valid until it acknowledges the power off (see `pending_final_task`).
            forget_clean_steps(node);
            if manual {
                self.apply(node, Event::Manage, "Manual cleaning finished: powering the node off")?;
            } else {
                self.apply(node, Event::Done, "Automated cleaning finished: powering the node off")?;
            }
            return Ok(Dispatch::node_changed(Some(assign_final_task(node, Command::PowerOff))));
        };
        node.clean_step = json_object(to_json(&planned));
        node.driver_internal_info.insert(CLEAN_STEP_INDEX.to_owned(), Value::from(index));
        let event_step = planned.id();
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            command: Command::ExecuteCleanStep { step: planned.step, skip_block_devices: skip_block_devices(node) },
        };
        assign_task(node, &task);
        let event = format!("Clean step {event_step} sent to the agent as task {}", task.id);
        self.record(node, Severity::Info, EVENT_TYPE_CLEANING, &event, None, None)?;
        Ok(Dispatch::node_changed(Some(task)))
    }

    /// Ends a deploy whose image is written on a node with a BMC: the node is locked and the BMC
    /// makes it boot from its disk for good, then the node is `active`. The agent's work is over;
    /// the power cycle ends it. If the node is locked by an action, nothing changes: the agent
    /// reports its success again with its next heartbeat.
    fn boot_instance(
        &self,
        node: &mut Node,
        bmc: Result<Bmc, BmcError>,
        written: &WrittenImage,
    ) -> Result<Dispatch, Error> {
        let bmc = match bmc {
            Ok(bmc) => bmc,
            Err(error) => {
                self.fail_deploy(node, &format!("Cannot boot the instance: {error}"))?;
                return Ok(Dispatch::node_changed(None));
            }
        };
        let ttl = crate::jobs::lock_ttl(&self.conductor.config.bmc);
        let lock = match NodeLock::take(self.tx, &node.uuid, self.conductor.name(), ttl) {
            Ok(lock) => lock,
            Err(Error::NodeLocked { .. }) => return Ok(Dispatch::report_only(None)),
            Err(other) => return Err(other),
        };
        node.reservation = Some(lock.owner.clone());
        written.store(node);
        self.apply(node, Event::Resume, &written.event())?;
        end_agent_work(node);
        node.last_error = None;
        let on_success = [(Event::Done, "Deployment finished: the node boots the instance from its disk")];
        let job = self.conductor.job(node, bmc, "Booting the instance", &BOOT_INSTANCE, &on_success, Some(Event::Fail));
        Ok(Dispatch { task: None, changed: NodeChange::More, job: Some((lock, job)) })
    }

    /// The deploy's next task for a heartbeat in `wait call-back`.
    fn dispatch_deploy(&self, node: &mut Node, heartbeat: &Heartbeat) -> Result<Dispatch, Error> {
        let Some(task) = assigned_task(node) else {
            let image_info = match image_info(node) {
                Ok(image_info) => image_info,
                Err(reason) => {
                    self.fail_deploy(node, &format!("Cannot deploy: {reason}"))?;
                    return Ok(Dispatch::node_changed(None));
                }
            };
            let task = Task {
                id: uuid::Uuid::new_v4().to_string(),
                command: Command::WriteImage { image_info: Box::new(image_info) },
            };
            node.deploy_step = json_object(json!({
                "interface": "deploy", "step": "write_image", "args": {}, "priority": 80
            }));
            assign_task(node, &task);
            let event = format!("Deploy step deploy.write_image sent to the agent as task {}", task.id);
            self.record(node, Severity::Info, EVENT_TYPE_DEPLOY, &event, None, None)?;
            return Ok(Dispatch::node_changed(Some(task)));
        };
        let Some(report) = heartbeat.command.as_ref().filter(|command| command.id == task.id) else {
            // The agent does not know the task (it restarted, or missed the answer): send it again.
            return Ok(Dispatch::report_only(Some(task)));
        };
        match report.command_status {
            CommandStatus::Running => Ok(Dispatch::report_only(None)),
            CommandStatus::Failed => {
                let error = report.command_error.as_deref().unwrap_or("the agent gave no reason");
                self.fail_deploy(node, &format!("Deploy step deploy.write_image failed: {error}"))?;
                Ok(Dispatch::node_changed(None))
            }
            CommandStatus::Succeeded => {
                let written = WrittenImage::from_report(&task, report);
                match Bmc::for_node(node, &self.conductor.config.bmc) {
                    Ok(None) => self.finish_deploy_by_agent(node, &written),
                    Ok(Some(bmc)) => self.boot_instance(node, Ok(bmc), &written),
                    Err(error) => self.boot_instance(node, Err(error), &written),
                }
            }
        }
    }

    /// Ends a deploy whose image is written on a node without a BMC: the agent reboots it.
    fn finish_deploy_by_agent(&self, node: &mut Node, written: &WrittenImage) -> Result<Dispatch, Error> {
        node.driver_internal_info.remove(AGENT_TASK);
        written.store(node);
        self.apply(node, Event::Resume, &written.event())?;
        node.deploy_step = JsonObject::new();
        node.last_error = None;
        self.apply(node, Event::Done, "Deployment finished: rebooting into the instance")?;
        Ok(Dispatch::node_changed(Some(assign_final_task(node, Command::Reboot))))
    }
}

/// Ironic's refusal of `clean` without `clean_steps`: manual cleaning runs exactly the steps given.
pub fn clean_steps_required() -> Error {
    Error::Invalid("\"clean_steps\" is required when setting target provision state to clean".to_owned())
}

/// Ironic's `NodeProtected`.
pub fn refuse_if_protected(node: &Node) -> Result<(), Error> {
    if node.protected {
        return Err(Error::Forbidden(format!(
            "Node {} is protected and cannot be undeployed, rebuilt or deleted",
            node.uuid
        )));
    }
    Ok(())
}

/// Checks that `instance_info` says what to write and how to verify it, naming what is missing.
pub fn validate_deploy_image(node: &Node) -> Result<(), Error> {
    let info = &node.instance_info;
    let present = |key: &str| info.get(key).is_some_and(|value| !value.is_null() && value != "");
    let mut missing = Vec::new();
    if !present("image_source") {
        missing.push("instance_info.image_source");
    }
    match (present("image_os_hash_algo"), present("image_os_hash_value")) {
        (true, true) => {}
        (true, false) => missing.push("instance_info.image_os_hash_value"),
        (false, true) => missing.push("instance_info.image_os_hash_algo"),
        (false, false) if !present("image_checksum") => missing.push("instance_info.image_checksum"),
        (false, false) => {}
    }
    if missing.is_empty() {
        return image_info(node).map(|_| ()).map_err(|reason| {
            Error::Invalid(format!("Cannot validate image information for node {}: {reason}", node.uuid))
        });
    }
    let listed: Vec<String> = missing.iter().map(|name| format!("'{name}'")).collect();
    Err(Error::Invalid(format!(
        "Cannot validate image information for node {} because one or more parameters are missing from its \
         instance_info. Missing are: [{}]",
        node.uuid,
        listed.join(", ")
    )))
}

/// Checks the disk hints a node carries, as Ironic checks root device hints when they are set:
/// `properties.root_device`, `instance_info.root_device`, and each entry of
/// `properties.skip_block_devices` (hints, or a RAID volume's `{"volume_name": ...}`, as IPA reads
/// them). The message names the hint or the entry at fault.
pub fn check_disk_hints(node: &Node) -> Result<(), String> {
    for (field, object) in [("properties", &node.properties), ("instance_info", &node.instance_info)] {
        if let Some(hints) = object.get("root_device").filter(|hints| !hints.is_null()) {
            parse_root_device_hints(hints).map_err(|error| {
                format!("Invalid root device hint {}: {} ({field}.root_device)", error.hint, error.reason)
            })?;
        }
    }
    let entries = match node.properties.get("skip_block_devices") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(entries)) => entries,
        Some(other) => return Err(format!("Invalid properties.skip_block_devices: {other} is not a list")),
    };
    for entry in entries {
        let invalid = |reason: String| format!("Invalid properties.skip_block_devices entry {entry}: {reason}");
        let Value::Object(fields) = entry else { return Err(invalid("it is not an object".to_owned())) };
        match fields.get("volume_name") {
            Some(Value::String(_)) => continue,
            Some(other) => return Err(invalid(format!("volume_name {other} is not a string"))),
            None => {}
        }
        let hints = parse_root_device_hints(entry).map_err(|error| invalid(error.to_string()))?;
        if hints.is_empty() {
            return Err(invalid("an entry without hints would skip every disk".to_owned()));
        }
    }
    Ok(())
}

/// Ends the agent's work, as Ironic's `wipe_token_and_url` at the end of an operation: its
/// token stops working, and its task and step are dropped. Its last reports stay visible.
fn end_agent_work(node: &mut Node) {
    node.agent_token_hash = None;
    node.deploy_step = JsonObject::new();
    node.driver_internal_info.remove(AGENT_TASK);
}

/// Forgets the previous agent entirely, its reports included, before new work starts.
fn wipe_agent_state(node: &mut Node) {
    end_agent_work(node);
    node.driver_internal_info.retain(|key, _| !key.starts_with("agent_"));
}

/// Ironic's `InvalidStateRequested` for `action` on `node` in its current state.
fn invalid_state(node: &Node, action: &str) -> Error {
    Error::InvalidStateRequested {
        action: action.to_owned(),
        node: node.uuid.clone(),
        state: node.provision_state.to_string(),
    }
}

fn record_heartbeat(node: &mut Node, heartbeat: &Heartbeat, now: DateTime<Utc>) {
    let info = &mut node.driver_internal_info;
    info.insert(AGENT_LAST_HEARTBEAT.to_owned(), Value::String(timestamp(now)));
    info.insert(AGENT_VERSION.to_owned(), Value::String(heartbeat.agent_version.clone()));
    match &heartbeat.progress {
        Some(progress) => info.insert(AGENT_PROGRESS.to_owned(), to_json(progress)),
        None => info.remove(AGENT_PROGRESS),
    };
    let skip = heartbeat.log_tail.len().saturating_sub(LOG_TAIL_LINES);
    let tail: Vec<Value> = heartbeat.log_tail[skip..].iter().cloned().map(Value::String).collect();
    info.insert(AGENT_LOG_TAIL.to_owned(), Value::Array(tail));
    if let Some(command) = &heartbeat.command {
        info.insert(AGENT_COMMAND.to_owned(), to_json(command));
    }
}

/// The Reboot or PowerOff sent when a deploy, inspection or cleaning finished, until the
/// agent reports it: an agent that missed the answer keeps heartbeating on a node at rest and
/// must still reboot or power off. Once it has reported the task, its work is over and its
/// token is wiped.
fn pending_final_task(node: &mut Node, heartbeat: &Heartbeat) -> Dispatch {
    let Some(task) = assigned_task(node).filter(|task| matches!(task.command, Command::Reboot | Command::PowerOff))
    else {
        return Dispatch::report_only(None);
    };
    if heartbeat.command.as_ref().is_some_and(|command| command.id == task.id) {
        end_agent_work(node);
        return Dispatch::node_changed(None);
    }
    Dispatch::report_only(Some(task))
}

fn assigned_task(node: &Node) -> Option<Task> {
    node.driver_internal_info.get(AGENT_TASK).and_then(|task| serde_json::from_value(task.clone()).ok())
}

fn assign_task(node: &mut Node, task: &Task) {
    node.driver_internal_info.insert(AGENT_TASK.to_owned(), to_json(task));
}

/// Assigns the agent's last task of an operation; the token stays valid until the agent
/// acknowledges it (see [`pending_final_task`]).
fn assign_final_task(node: &mut Node, command: Command) -> Task {
    let task = Task { id: uuid::Uuid::new_v4().to_string(), command };
    assign_task(node, &task);
    task
}

fn is_cleaning(state: ProvisionState) -> bool {
    matches!(
        state,
        ProvisionState::Cleaning | ProvisionState::CleanWait | ProvisionState::CleanFailed | ProvisionState::CleanHold
    )
}

/// `properties.skip_block_devices`: disks the agent must neither choose nor clean.
fn skip_block_devices(node: &Node) -> Vec<Value> {
    node.properties.get("skip_block_devices").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// A step of the cleaning under way, as kept in `driver_internal_info` and shown as `clean_step`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PlannedStep {
    #[serde(flatten)]
    step: CleanStep,
    /// The step's priority in automated cleaning; manual cleaning runs steps in the order given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
}

impl PlannedStep {
    /// Ironic's `step_id`: `interface.step`.
    fn id(&self) -> String {
        format!("{}.{}", self.step.interface, self.step.step)
    }
}

/// The steps of the cleaning under way.
fn clean_steps(node: &Node) -> Vec<PlannedStep> {
    node.driver_internal_info
        .get(CLEAN_STEPS)
        .and_then(|steps| serde_json::from_value(steps.clone()).ok())
        .unwrap_or_default()
}

/// Keeps the figures of a succeeded step's [`CleanStepResult`] in `clean_step_results`, and returns
/// the history text: each disk with its method, size, time and throughput.
fn record_clean_step_result(node: &mut Node, step: &str, report: &CommandResult) -> String {
    let mut event = format!("Clean step {step} succeeded");
    let result = report.command_result.as_ref().and_then(|value| {
        serde_json::from_value::<CleanStepResult>(value.clone())
            .inspect_err(|error| tracing::warn!(node = %node.uuid, %error, "unreadable clean step result"))
            .ok()
    });
    let Some(mut result) = result else { return event };
    result.step = step.to_owned();
    let devices: Vec<String> = result.devices.iter().map(describe_erased_device).collect();
    let described = if devices.is_empty() { "no disk to clean".to_owned() } else { devices.join("; ") };
    event.push_str(&format!(": {described}"));
    let results = node.driver_internal_info.entry(CLEAN_STEP_RESULTS).or_insert_with(|| Value::Array(Vec::new()));
    match results {
        Value::Array(list) => list.push(to_json(&result)),
        other => *other = Value::Array(vec![to_json(&result)]),
    }
    event
}

/// `/dev/vda write zeroes 3072 MiB in 1.2 s (2560 MiB/s, 66 samples verified)`.
fn describe_erased_device(device: &ferric_protocol::ErasedDevice) -> String {
    const MIB: f64 = 1048576.0;
    let size = if device.bytes >= 1 << 20 {
        format!("{} MiB", figure(device.bytes as f64 / MIB))
    } else {
        format!("{} bytes", device.bytes)
    };
    let mut text = format!(
        "{} {} {size} in {:.1} s ({} MiB/s",
        device.device,
        device.method,
        device.seconds,
        figure(device.mib_per_second)
    );
    if device.samples_verified > 0 {
        text.push_str(&format!(", {} samples verified", device.samples_verified));
    }
    text.push(')');
    text
}

/// A figure with one decimal below 100, whole above.
fn figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Ironic's `step_id`: `interface.step`, or `None` without a step.
fn step_id(step: &JsonObject) -> Option<String> {
    let text = |key: &str| step.get(key).and_then(Value::as_str);
    Some(format!("{}.{}", text("interface")?, text("step")?))
}

/// Ends a cleaning: its steps are forgotten, and the agent's work ends.
fn end_cleaning(node: &mut Node) {
    end_agent_work(node);
    forget_clean_steps(node);
}

/// Forgets the steps of a cleaning and the running one. The results of its steps stay, for the operator.
fn forget_clean_steps(node: &mut Node) {
    node.clean_step = JsonObject::new();
    node.driver_internal_info.remove(CLEAN_STEPS);
    node.driver_internal_info.remove(CLEAN_STEP_INDEX);
}

/// Sets `properties` from an inventory as Ironic's inspection does: `cpus`, `memory_mb`,
/// `cpu_arch`, and `local_gb` from the root disk (the smallest of at least 4 GiB), less the
/// 1 GiB ironic-inspector leaves for partitioning; 0 without such a disk.
fn set_properties_from_inventory(node: &mut Node, inventory: &Inventory) {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let root_disk_gib = inventory.disks.iter().map(|disk| disk.size).filter(|size| *size >= 4 * GIB).min();
    let local_gb = root_disk_gib.map_or(0, |size| (size / GIB).saturating_sub(1));
    let memory_mb = match inventory.memory.physical_mb {
        0 => inventory.memory.total / MIB,
        physical => physical,
    };
    let properties = &mut node.properties;
    properties.insert("cpus".to_owned(), Value::from(inventory.cpu.count));
    properties.insert("memory_mb".to_owned(), Value::from(memory_mb));
    properties.insert("local_gb".to_owned(), Value::from(local_gb));
    properties.insert("cpu_arch".to_owned(), Value::from(inventory.cpu.architecture.clone()));
}

/// IPA's `image_info` from the node's `instance_info`, `properties` and root device hints, or what
/// is wrong with them (naming the field). Sizes may be JSON numbers or numeric strings, as Ironic
/// accepts both; gigabytes become mebibytes.
fn image_info(node: &Node) -> Result<ImageInfo, String> {
    check_disk_hints(node)?;
    let info = &node.instance_info;
    let text = |key: &str| info.get(key).and_then(Value::as_str).map(str::to_owned);
    let set = |key: &str| info.get(key).is_some_and(|value| !value.is_null() && value != "");
    let source = text("image_source").unwrap_or_default();
    let image_type = match text("image_type") {
        Some(kind) => Some(one_of(kind, &["partition", "whole-disk"], "instance_info.image_type")?),
        // A URL image is a partition image when it comes with its kernel and ramdisk (Ironic's rule).
        None => (set("kernel") && set("ramdisk")).then(|| "partition".to_owned()),
    };
    // A root size of 0 (Nova's `disk=0` flavours) means the rest of the disk, as an absent one.
    let root_mb = gigabytes_or_megabytes(info, "root_gb", "root_mb")?.filter(|size| *size > 0);
    let ephemeral_mb = gigabytes_or_megabytes(info, "ephemeral_gb", "ephemeral_mb")?;
    let ephemeral_format = match text("ephemeral_format") {
        None if ephemeral_mb.is_some_and(|size| size > 0) => Some(DEFAULT_EPHEMERAL_FORMAT.to_owned()),
        format => format,
    };
    Ok(ImageInfo {
        id: source.clone(),
        urls: vec![source],
        checksum: text("image_checksum"),
        os_hash_algo: text("image_os_hash_algo"),
        os_hash_value: text("image_os_hash_value"),
        disk_format: text("image_disk_format"),
        root_device: [info, &node.properties]
            .into_iter()
            .find_map(|fields| fields.get("root_device").filter(|hints| !hints.is_null()))
            .cloned(),
        skip_block_devices: skip_block_devices(node),
        image_type,
        root_mb,
        swap_mb: size_field(info, "swap_mb")?,
        ephemeral_mb,
        ephemeral_format,
        deploy_boot_mode: explicit_or_capability(node, "deploy_boot_mode", "boot_mode", &["uefi", "bios"])?,
        disk_label: explicit_or_capability(node, "disk_label", "disk_label", &["gpt", "msdos"])?,
        configdrive: configdrive(node),
        enable_bios_bootloader_install: bool_field(info, "enable_bios_bootloader_install")?.unwrap_or(false),
    })
}

/// `instance_info.<explicit_key>`, else `<capability_key>` in `instance_info.capabilities`, else in
/// `properties.capabilities` (as Ironic's `get_boot_mode_for_deploy`), lower-cased and checked.
fn explicit_or_capability(
    node: &Node,
    explicit_key: &str,
    capability_key: &str,
    allowed: &[&str],
) -> Result<Option<String>, String> {
    let explicit = || {
        let value = node.instance_info.get(explicit_key)?.as_str()?;
        Some((format!("instance_info.{explicit_key}"), value.to_owned()))
    };
    let in_capabilities = |field: &str, capabilities: Option<&Value>| {
        Some((format!("{field} {capability_key}"), capability(capabilities, capability_key)?))
    };
    let found = explicit()
        .or_else(|| in_capabilities("instance_info.capabilities", node.instance_info.get("capabilities")))
        .or_else(|| in_capabilities("properties.capabilities", node.properties.get("capabilities")));
    found.map(|(field, value)| one_of(value.to_ascii_lowercase(), allowed, &field)).transpose()
}

/// Ironic's `[pxe]default_ephemeral_format`.
const DEFAULT_EPHEMERAL_FORMAT: &str = "ext4";

fn one_of(value: String, allowed: &[&str], field: &str) -> Result<String, String> {
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    Err(format!("{field} must be one of {}, not {value:?}", allowed.join(", ")))
}

/// A non-negative integer field: a JSON number or a string of digits.
fn size_field(info: &JsonObject, key: &str) -> Result<Option<u64>, String> {
    let value = match info.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| format!("instance_info.{key} must be a non-negative integer, not {value}"))
}

/// `<gigabytes_key>` × 1024 if given, else `<megabytes_key>`.
fn gigabytes_or_megabytes(info: &JsonObject, gigabytes_key: &str, megabytes_key: &str) -> Result<Option<u64>, String> {
    match size_field(info, gigabytes_key)? {
        Some(gigabytes) => gigabytes
            .checked_mul(1024)
            .map(Some)
            .ok_or_else(|| format!("instance_info.{gigabytes_key} is too large: {gigabytes}")),
        None => size_field(info, megabytes_key),
    }
}

/// A boolean field: JSON `true`/`false` or the strings oslo's `bool_from_string` accepts.
fn bool_field(info: &JsonObject, key: &str) -> Result<Option<bool>, String> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Ok(Some(true)),
            "0" | "f" | "false" | "off" | "n" | "no" => Ok(Some(false)),
            _ => Err(format!("instance_info.{key} must be a boolean, not {text:?}")),
        },
        Some(other) => Err(format!("instance_info.{key} must be a boolean, not {other}")),
    }
}

/// `key` in capabilities: an object, a JSON object in a string (`instance_info.capabilities`), or
/// Ironic's `"k:v,k:v"` string (`properties.capabilities`).
fn capability(capabilities: Option<&Value>, key: &str) -> Option<String> {
    let from_object =
        |object: &JsonObject| object.get(key).and_then(Value::as_str).map(|value| value.trim().to_owned());
    match capabilities? {
        Value::Object(object) => from_object(object),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => from_object(&object),
            _ => text.split(',').find_map(|entry| {
                let (name, value) = entry.split_once(':')?;
                (name.trim() == key).then(|| value.trim().to_owned())
            }),
        },
        _ => None,
    }
}

/// The config drive for the agent: a string as given; a dict with Ironic's defaults,
/// `meta_data.uuid` the node's UUID and `meta_data.name` its name.
fn configdrive(node: &Node) -> Option<Value> {
    let mut drive = node.instance_info.get("configdrive").filter(|drive| !drive.is_null())?.clone();
    if let Value::Object(fields) = &mut drive {
        let meta_data = fields.entry("meta_data").or_insert_with(|| json!({}));
        if let Value::Object(meta_data) = meta_data {
            meta_data.entry("uuid").or_insert_with(|| Value::String(node.uuid.clone()));
            if let Some(name) = &node.name {
                meta_data.entry("name").or_insert_with(|| Value::String(name.clone()));
            }
        }
    }
    Some(drive)
}

/// A successful `write_image` as the agent reported it.
struct WrittenImage {
    whole_disk: bool,
    /// `None` when the agent sent no result (or one this controller cannot read).
    result: Option<WriteImageResult>,
}

impl WrittenImage {
    fn from_report(task: &Task, report: &CommandResult) -> WrittenImage {
        let whole_disk = match &task.command {
            Command::WriteImage { image_info } => image_info.image_type.as_deref() != Some("partition"),
            _ => true,
        };
        let result = report.command_result.as_ref().and_then(|value| {
            serde_json::from_value(value.clone())
                .inspect_err(
                    |error| tracing::warn!(%error, "unreadable write_image result; partition UUIDs not stored"),
                )
                .ok()
        });
        WrittenImage { whole_disk, result }
    }

    /// Replaces what a previous deploy stored with this one's partition UUIDs.
    fn store(&self, node: &mut Node) {
        let info = &mut node.driver_internal_info;
        for key in [ROOT_UUID_OR_DISK_ID, EFI_SYSTEM_PARTITION_UUID, PARTITION_UUIDS] {
            info.remove(key);
        }
        info.insert(IS_WHOLE_DISK_IMAGE.to_owned(), Value::Bool(self.whole_disk));
        let Some(result) = &self.result else { return };
        let uuids = &result.partition_uuids;
        if let Some(root) = uuids.get("root uuid") {
            info.insert(ROOT_UUID_OR_DISK_ID.to_owned(), Value::String(root.clone()));
        }
        if let Some(esp) = uuids.get("efi system partition uuid") {
            info.insert(EFI_SYSTEM_PARTITION_UUID.to_owned(), Value::String(esp.clone()));
        }
        info.insert(PARTITION_UUIDS.to_owned(), to_json(uuids));
    }

    /// The history text: what was written, how fast, and the boot entry made.
    fn event(&self) -> String {
        let mut event = "Deploy step deploy.write_image succeeded".to_owned();
        if let Some(result) = &self.result {
            event.push_str(&format!(
                ": {} image, {} bytes written to {} ({} bytes downloaded) in {:.1} s at {:.1} MiB/s",
                result.format,
                result.image_bytes,
                result.root_device,
                result.source_bytes,
                result.seconds,
                result.mib_per_second
            ));
            if let Some(entry) = &result.boot_entry {
                event.push_str(&format!("; boot entry {entry}"));
            }
        }
        event
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn json_object(value: Value) -> JsonObject {
    match value {
        Value::Object(object) => object,
        _ => JsonObject::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmc::PowerState;
    use ferric_protocol::CommandResult;

    const UUID: &str = "0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11";

    fn conductor(timeout: Duration) -> Conductor {
        let mut config = Config::new("unused.sqlite".into(), "http://h", "unused".into());
        config.deploy_callback_timeout = timeout;
        Conductor::new(Arc::new(config))
    }

    fn available_node() -> Node {
        let mut node = Node::new(UUID.into(), "fake-hardware".into(), ProvisionState::Available, "t0".into());
        node.instance_info = json_object(json!({"image_source": "http://img/disk.raw", "image_checksum": "ab"}));
        node
    }

    async fn with_node<T: Send + 'static>(
        node: Node,
        work: impl FnOnce(&Tx<'_>, Node) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Store::open_in_memory().unwrap();
        store
            .run(move |tx| {
                tx.insert_node(&node)?;
                work(tx, node)
            })
            .await
    }

    fn heartbeat(token: &str, command: Option<CommandResult>) -> Heartbeat {
        Heartbeat {
            agent_token: token.into(),
            agent_version: "1".into(),
            command,
            progress: None,
            log_tail: vec![],
            inventory: None,
        }
    }

    #[tokio::test]
    async fn deploy_without_checksum_names_the_missing_field() {
        let mut node = available_node();
        node.instance_info.remove("image_checksum");
        let result = with_node(node, |tx, node| {
            conductor(Duration::from_secs(60)).provision(tx, node, Verb::Active, Utc::now())
        })
        .await;
        let message = result.unwrap_err().to_string();
        assert!(message.contains("'instance_info.image_checksum'"), "{message}");
    }

    #[tokio::test]
    async fn expired_deploys_fail_and_fresh_ones_stay() {
        let failed = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let start = Utc::now();
            let node = conductor.provision(tx, node, Verb::Active, start).map(|action| action.node)?;
            assert_eq!(node.provision_state, ProvisionState::DeployWait);
            conductor.lookup(tx, node, start)?;
            assert!(tx.node_by_uuid(UUID)?.unwrap().agent_token_hash.is_some());
            let early = conductor.fail_expired_waits(tx, start + chrono::Duration::seconds(30))?;
            assert!(early.is_empty());
            let late = conductor.fail_expired_waits(tx, start + chrono::Duration::seconds(61))?;
            let node = tx.node_by_uuid(UUID)?.unwrap();
            Ok((late, node))
        })
        .await
        .unwrap();
        let (late, node) = failed;
        assert_eq!(late, vec![UUID.to_owned()]);
        assert_eq!(node.provision_state, ProvisionState::DeployFailed);
        assert_eq!(node.target_provision_state, Some(ProvisionState::Active));
        assert_eq!(node.last_error.unwrap(), format!("Timeout reached while waiting for callback for node {UUID}"));
        assert_eq!(node.agent_token_hash, None);
    }

    #[tokio::test]
    async fn undeploying_a_failed_deploy_clears_its_error() {
        let mut node = available_node();
        node.provision_state = ProvisionState::DeployFailed;
        node.target_provision_state = Some(ProvisionState::Active);
        node.last_error = Some("Deploy aborted".into());
        let node = with_node(node, |tx, node| {
            conductor(Duration::from_secs(60)).provision(tx, node, Verb::Deleted, Utc::now()).map(|action| action.node)
        })
        .await
        .unwrap();
        assert_eq!(node.provision_state, ProvisionState::Available);
        assert_eq!(node.last_error, None);
    }

    #[tokio::test]
    async fn a_restarted_agent_gets_its_task_again() {
        let (first, second, third) = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let node = conductor.provision(tx, node, Verb::Active, Utc::now()).map(|action| action.node)?;
            let node = tx.node_by_uuid(&node.uuid)?.unwrap();
            let lookup = conductor.lookup(tx, node, Utc::now())?;
            let token = lookup.config.agent_token;
            let beat = |command| {
                let node = tx.node_by_uuid(UUID)?.unwrap();
                conductor.heartbeat(tx, node, heartbeat(&token, command), Utc::now())
            };
            let first = beat(None)?.response.task.unwrap();
            let second = beat(Some(stale_report()))?.response.task.unwrap();
            let running = CommandResult { id: first.id.clone(), command_name: "write_image".into(), ..stale_report() };
            let third = beat(Some(running))?.response.task;
            Ok((first, second, third))
        })
        .await
        .unwrap();
        assert!(matches!(first.command, Command::WriteImage { .. }));
        assert_eq!(second, first);
        assert_eq!(third, None);
    }

    #[tokio::test]
    async fn heartbeats_keep_a_deploy_from_timing_out() {
        let (kept, failed) = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let start = Utc::now();
            let node = conductor.provision(tx, node, Verb::Active, start).map(|action| action.node)?;
            let token = conductor.lookup(tx, node, start)?.config.agent_token;
            let at = |seconds| start + chrono::Duration::seconds(seconds);
            // Heartbeats every 40 s keep the node waiting well past the 60 s timeout...
            for seconds in [40, 80, 120] {
                let node = tx.node_by_uuid(UUID)?.unwrap();
                conductor.heartbeat(tx, node, heartbeat(&token, None), at(seconds))?;
                assert!(conductor.fail_expired_waits(tx, at(seconds + 39))?.is_empty(), "failed at {seconds} s");
            }
            let kept = tx.node_by_uuid(UUID)?.unwrap().provision_state;
            // ...and 60 s of silence after the last one fails it.
            let failed = conductor.fail_expired_waits(tx, at(181))?;
            Ok((kept, failed))
        })
        .await
        .unwrap();
        assert_eq!(kept, ProvisionState::DeployWait);
        assert_eq!(failed, vec![UUID.to_owned()]);
    }

    /// Deploys, looks up and heartbeats once; returns the token and the write_image task.
    fn deploy_and_get_task(tx: &Tx<'_>, conductor: &Conductor, node: Node) -> Result<(String, Task), Error> {
        let node = conductor.provision(tx, node, Verb::Active, Utc::now()).map(|action| action.node)?;
        let token = conductor.lookup(tx, node, Utc::now())?.config.agent_token;
        let node = tx.node_by_uuid(UUID)?.unwrap();
        let task = conductor.heartbeat(tx, node, heartbeat(&token, None), Utc::now())?.response.task.unwrap();
        Ok((token, task))
    }

    fn report(task: &Task, command_status: CommandStatus) -> CommandResult {
        CommandResult {
            id: task.id.clone(),
            command_name: task.command.name().into(),
            command_status,
            command_error: None,
            command_result: None,
        }
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_agents_token() {
        let refused = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let (token, task) = deploy_and_get_task(tx, &conductor, node)?;
            let beat = |command| {
                let node = tx.node_by_uuid(UUID)?.unwrap();
                conductor.heartbeat(tx, node, heartbeat(&token, command), Utc::now())
            };
            assert_eq!(beat(Some(report(&task, CommandStatus::Failed)))?.response.task, None);
            assert_eq!(tx.node_by_uuid(UUID)?.unwrap().provision_state, ProvisionState::DeployFailed);
            Ok(beat(None))
        })
        .await
        .unwrap();
        let error = refused.unwrap_err();
        assert!(matches!(error, Error::InvalidAgentToken), "{error}");
        assert!(error.status().is_client_error());
    }

    #[tokio::test]
    async fn abort_ends_the_agents_token() {
        let node = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            deploy_and_get_task(tx, &conductor, node)?;
            let node = tx.node_by_uuid(UUID)?.unwrap();
            conductor.provision(tx, node, Verb::Abort, Utc::now()).map(|action| action.node)?;
            Ok(tx.node_by_uuid(UUID)?.unwrap())
        })
        .await
        .unwrap();
        assert_eq!(node.provision_state, ProvisionState::DeployFailed);
        assert_eq!(node.agent_token_hash, None);
        assert!(!node.driver_internal_info.contains_key(AGENT_TASK));
    }

    #[tokio::test]
    async fn the_token_outlives_the_deploy_until_the_reboot_is_acknowledged() {
        let (resent, acknowledged, after) = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let (token, task) = deploy_and_get_task(tx, &conductor, node)?;
            let beat = |command| {
                let node = tx.node_by_uuid(UUID)?.unwrap();
                conductor.heartbeat(tx, node, heartbeat(&token, command), Utc::now())
            };
            let reboot = beat(Some(report(&task, CommandStatus::Succeeded)))?.response.task.unwrap();
            assert_eq!(tx.node_by_uuid(UUID)?.unwrap().provision_state, ProvisionState::Active);
            let resent = beat(None)?.response.task;
            assert_eq!(resent.as_ref(), Some(&reboot));
            let acknowledged = beat(Some(report(&reboot, CommandStatus::Running)))?.response.task;
            Ok((resent, acknowledged, beat(None)))
        })
        .await
        .unwrap();
        assert_eq!(resent.map(|task| task.command), Some(Command::Reboot));
        assert_eq!(acknowledged, None);
        assert!(matches!(after, Err(Error::InvalidAgentToken)));
    }

    #[tokio::test]
    async fn record_only_heartbeats_write_the_report_and_keep_the_rest() {
        let (before, after) = with_node(available_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let (token, task) = deploy_and_get_task(tx, &conductor, node)?;
            let before = tx.node_by_uuid(UUID)?.unwrap();
            let later = Utc::now() + chrono::Duration::seconds(5);
            let mut running = heartbeat(&token, Some(report(&task, CommandStatus::Running)));
            running.log_tail = vec!["writing".into()];
            assert_eq!(conductor.heartbeat(tx, before.clone(), running, later)?.response.task, None);
            Ok((before, tx.node_by_uuid(UUID)?.unwrap()))
        })
        .await
        .unwrap();
        assert_eq!(after.driver_internal_info[AGENT_LOG_TAIL], json!(["writing"]));
        assert_eq!(after.driver_internal_info[AGENT_COMMAND]["command_status"], "RUNNING");
        assert!(after.provision_updated_at > before.provision_updated_at);
        assert!(after.updated_at > before.updated_at);
        let unchanged = Node {
            driver_internal_info: after.driver_internal_info.clone(),
            provision_updated_at: after.provision_updated_at.clone(),
            updated_at: after.updated_at.clone(),
            ..before
        };
        assert_eq!(after, unchanged);
    }

    #[test]
    fn properties_come_from_the_inventory_as_ironic_sets_them() {
        use ferric_protocol::inventory::{Cpu, Disk, Memory};
        const GIB: u64 = 1 << 30;
        let disk = |size| Disk { name: "/dev/sdx".into(), size, ..Default::default() };
        let mut inventory = Inventory {
            cpu: Cpu { count: 8, architecture: "aarch64".into(), ..Default::default() },
            disks: vec![disk(3 * GIB), disk(64 * GIB), disk(4 * GIB)],
            memory: Memory { total: 3 * GIB, physical_mb: 0 },
            ..Default::default()
        };
        let mut node = available_node();
        set_properties_from_inventory(&mut node, &inventory);
        // The 4 GiB disk is the smallest large enough; without a physical size, memory is the total.
        let expected = json!({"cpus": 8, "cpu_arch": "aarch64", "local_gb": 3, "memory_mb": 3072});
        assert_eq!(Value::Object(node.properties.clone()), expected);
        inventory.disks = vec![disk(3 * GIB)];
        set_properties_from_inventory(&mut node, &inventory);
        assert_eq!(node.properties["local_gb"], 0);
    }

    /// The lock an API action takes before its job runs.
    fn take_lock(tx: &Tx<'_>) -> Result<NodeLock, Error> {
        NodeLock::take(tx, UUID, "ferric", Duration::from_secs(60))
    }

    fn ipmi_node() -> Node {
        let mut node = available_node();
        node.driver = "ipmi".into();
        node.driver_info = json_object(json!({"ipmi_address": "127.0.0.1", "ipmi_port": 6230}));
        node
    }

    fn outcome(failure: Option<(BmcStep, crate::bmc::BmcError)>) -> JobOutcome {
        JobOutcome { done: vec!["BMC 127.0.0.1:6230: done".into()], power_state: Some(PowerState::On), failure }
    }

    /// Provisions a BMC node, has the BMC boot the ramdisk, then the agent look up and heartbeat:
    /// the agent's token and the task it was given.
    fn bmc_node_given_its_task(tx: &Tx<'_>, conductor: &Conductor, node: Node) -> Result<(String, Task), Error> {
        let boot = conductor.provision(tx, node, Verb::Active, Utc::now())?.job.unwrap();
        let boot_lock = take_lock(tx)?;
        conductor.finish_job(tx, UUID, &boot_lock, &boot, outcome(None), Utc::now())?;
        tx.release_node(UUID, &boot_lock.owner, &boot_lock.expires_at)?;
        let node = tx.node_by_uuid(UUID)?.unwrap();
        let token = conductor.lookup(tx, node, Utc::now())?.config.agent_token;
        let node = tx.node_by_uuid(UUID)?.unwrap();
        let task = conductor.heartbeat(tx, node, heartbeat(&token, None), Utc::now())?.response.task.unwrap();
        Ok((token, task))
    }

    fn unreachable() -> crate::bmc::BmcError {
        crate::bmc::BmcError::Unreachable {
            bmc: "127.0.0.1:6230".into(),
            action: "chassis power on".into(),
            attempts: 3,
            reason: "no answer".into(),
        }
    }

    #[tokio::test]
    async fn a_bmc_node_boots_the_ramdisk_before_waiting_for_its_agent() {
        let (started, waiting) = with_node(ipmi_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let action = conductor.provision(tx, node, Verb::Active, Utc::now())?;
            let job = action.job.expect("a BMC job");
            assert_eq!(job.steps, BOOT_RAMDISK);
            let started = tx.node_by_uuid(UUID)?.unwrap();
            conductor.finish_job(tx, UUID, &take_lock(tx)?, &job, outcome(None), Utc::now())?;
            Ok((started, tx.node_by_uuid(UUID)?.unwrap()))
        })
        .await
        .unwrap();
        assert_eq!(started.provision_state, ProvisionState::Deploying);
        assert_eq!(started.target_power_state.as_deref(), Some("power on"));
        assert_eq!(waiting.provision_state, ProvisionState::DeployWait);
        assert_eq!(waiting.power_state.as_deref(), Some("power on"));
        assert_eq!(waiting.target_power_state, None);
    }

    #[tokio::test]
    async fn a_failed_bmc_step_fails_the_deploy_with_the_bmcs_error() {
        let failed = with_node(ipmi_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let job = conductor.provision(tx, node, Verb::Active, Utc::now())?.job.unwrap();
            let failure = Some((BOOT_RAMDISK[1], unreachable()));
            conductor.finish_job(tx, UUID, &take_lock(tx)?, &job, outcome(failure), Utc::now())?;
            Ok(tx.node_by_uuid(UUID)?.unwrap())
        })
        .await
        .unwrap();
        assert_eq!(failed.provision_state, ProvisionState::DeployFailed);
        let error = failed.last_error.unwrap();
        assert!(error.starts_with("Booting the ramdisk for deploy failed while power action \"rebooting\""), "{error}");
        assert!(error.contains("127.0.0.1:6230 did not answer chassis power on"), "{error}");
    }

    #[tokio::test]
    async fn an_incomplete_driver_info_is_refused_before_any_state_change() {
        let mut node = ipmi_node();
        node.driver_info.remove("ipmi_address");
        let (refused, unchanged) = with_node(node, |tx, node| {
            let refused = conductor(Duration::from_secs(60)).provision(tx, node, Verb::Active, Utc::now());
            Ok((refused.unwrap_err(), tx.node_by_uuid(UUID)?.unwrap()))
        })
        .await
        .unwrap();
        assert!(refused.status().is_client_error());
        assert!(refused.to_string().contains("ipmi_address"), "{refused}");
        assert_eq!(unchanged.provision_state, ProvisionState::Available);
    }

    #[tokio::test]
    async fn a_written_image_on_a_bmc_node_is_booted_by_the_bmc_not_the_agent() {
        let (dispatched, job, deploying, active) = with_node(ipmi_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let (token, task) = bmc_node_given_its_task(tx, &conductor, node)?;
            let node = tx.node_by_uuid(UUID)?.unwrap();
            let done = heartbeat(&token, Some(report(&task, CommandStatus::Succeeded)));
            let outcome_of_report = conductor.heartbeat(tx, node, done, Utc::now())?;
            let (lock, job) = outcome_of_report.job.expect("the BMC boots the instance");
            assert_eq!(lock.uuid, UUID);
            let deploying = tx.node_by_uuid(UUID)?.unwrap();
            conductor.finish_job(tx, UUID, &lock, &job, outcome(None), Utc::now())?;
            Ok((outcome_of_report.response.task, job, deploying, tx.node_by_uuid(UUID)?.unwrap()))
        })
        .await
        .unwrap();
        assert_eq!(dispatched, None, "the agent gets no reboot task");
        assert_eq!(job.steps, BOOT_INSTANCE);
        assert_eq!(deploying.provision_state, ProvisionState::Deploying);
        assert_eq!(deploying.reservation.as_deref(), Some("ferric"));
        assert_eq!(deploying.agent_token_hash, None);
        assert_eq!(active.provision_state, ProvisionState::Active);
    }

    #[tokio::test]
    async fn work_interrupted_by_a_restart_fails_with_the_reason() {
        let node = with_node(ipmi_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            conductor.provision(tx, node, Verb::Active, Utc::now())?;
            NodeLock::take(tx, UUID, conductor.name(), Duration::from_secs(60))?;
            assert_eq!(conductor.fail_interrupted_jobs(tx, Utc::now())?, vec![UUID.to_owned()]);
            Ok(tx.node_by_uuid(UUID)?.unwrap())
        })
        .await
        .unwrap();
        assert_eq!(node.provision_state, ProvisionState::DeployFailed);
        assert!(node.last_error.unwrap().contains("interrupted"));
    }

    /// A report of a task from the agent's previous life.
    fn stale_report() -> CommandResult {
        CommandResult {
            id: "old".into(),
            command_name: "write_image".into(),
            command_status: CommandStatus::Running,
            command_error: None,
            command_result: None,
        }
    }

    fn info_of(instance_info: Value) -> Result<ImageInfo, String> {
        let mut node = available_node();
        node.instance_info.extend(json_object(instance_info));
        image_info(&node)
    }

    #[test]
    fn image_type_is_explicit_or_partition_when_kernel_and_ramdisk_come_along() {
        let cases = [
            ("nothing said", json!({}), None),
            ("kernel and ramdisk", json!({"kernel": "http://k", "ramdisk": "http://r"}), Some("partition")),
            ("kernel only", json!({"kernel": "http://k"}), None),
            ("explicit wins", json!({"kernel": "k", "ramdisk": "r", "image_type": "whole-disk"}), Some("whole-disk")),
            ("explicit partition", json!({"image_type": "partition"}), Some("partition")),
        ];
        for (name, instance_info, expected) in cases {
            assert_eq!(info_of(instance_info).unwrap().image_type.as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn sizes_accept_numbers_and_numeric_strings_and_gigabytes_become_mebibytes() {
        let cases = [
            (
                "numbers",
                json!({"root_gb": 10, "swap_mb": 512, "ephemeral_gb": 2}),
                (Some(10240), Some(512), Some(2048)),
            ),
            (
                "strings",
                json!({"root_gb": "10", "swap_mb": " 512", "ephemeral_mb": "300"}),
                (Some(10240), Some(512), Some(300)),
            ),
            ("megabytes", json!({"root_mb": 700, "ephemeral_mb": 0}), (Some(700), None, Some(0))),
            (
                "gigabytes win",
                json!({"root_gb": 1, "root_mb": 5, "ephemeral_gb": 1, "ephemeral_mb": 5}),
                (Some(1024), None, Some(1024)),
            ),
            ("zero root is the rest of the disk", json!({"root_gb": 0}), (None, None, None)),
            ("absent", json!({"root_gb": null}), (None, None, None)),
        ];
        for (name, instance_info, expected) in cases {
            let info = info_of(instance_info).unwrap();
            assert_eq!((info.root_mb, info.swap_mb, info.ephemeral_mb), expected, "{name}");
        }
    }

    #[test]
    fn ephemeral_format_defaults_to_ext4_only_with_an_ephemeral_partition() {
        assert_eq!(info_of(json!({"ephemeral_gb": 1})).unwrap().ephemeral_format.as_deref(), Some("ext4"));
        let given = info_of(json!({"ephemeral_mb": 64, "ephemeral_format": "vfat"})).unwrap();
        assert_eq!(given.ephemeral_format.as_deref(), Some("vfat"));
        assert_eq!(info_of(json!({"ephemeral_mb": 0})).unwrap().ephemeral_format, None);
    }

    #[test]
    fn boot_mode_and_disk_label_come_from_instance_info_then_capabilities() {
        let node_with = |instance_info: Value, properties: Value| {
            let mut node = available_node();
            node.instance_info.extend(json_object(instance_info));
            node.properties = json_object(properties);
            image_info(&node).unwrap()
        };
        let cases = [
            ("explicit", json!({"deploy_boot_mode": "BIOS"}), json!({"capabilities": "boot_mode:uefi"}), Some("bios")),
            (
                "instance capabilities dict",
                json!({"capabilities": {"boot_mode": "uefi"}}),
                json!({"capabilities": "boot_mode:bios"}),
                Some("uefi"),
            ),
            (
                "instance capabilities JSON string",
                json!({"capabilities": "{\"boot_mode\": \"bios\"}"}),
                json!({}),
                Some("bios"),
            ),
            (
                "node capabilities string",
                json!({}),
                json!({"capabilities": "secure_boot:false, boot_mode:bios"}),
                Some("bios"),
            ),
            ("node capabilities dict", json!({}), json!({"capabilities": {"boot_mode": "uefi"}}), Some("uefi")),
            ("nothing", json!({}), json!({"capabilities": "secure_boot:false"}), None),
        ];
        for (name, instance_info, properties, expected) in cases {
            assert_eq!(node_with(instance_info, properties).deploy_boot_mode.as_deref(), expected, "{name}");
        }
        let label =
            node_with(json!({"capabilities": {"disk_label": "gpt"}}), json!({"capabilities": "disk_label:msdos"}));
        assert_eq!(label.disk_label.as_deref(), Some("gpt"));
        let label = node_with(json!({"disk_label": "msdos"}), json!({}));
        assert_eq!(label.disk_label.as_deref(), Some("msdos"));
    }

    #[test]
    fn bios_bootloader_install_accepts_booleans_and_their_strings() {
        let cases = [
            (json!(true), true),
            (json!("true"), true),
            (json!("Yes"), true),
            (json!("0"), false),
            (json!(false), false),
        ];
        for (value, expected) in cases {
            let info = info_of(json!({"enable_bios_bootloader_install": value.clone()})).unwrap();
            assert_eq!(info.enable_bios_bootloader_install, expected, "{value}");
        }
        assert!(!info_of(json!({})).unwrap().enable_bios_bootloader_install);
    }

    #[test]
    fn a_configdrive_dict_gets_the_nodes_uuid_and_name_as_metadata_defaults() {
        let mut node = available_node();
        node.name = Some("node-1".into());
        node.instance_info.insert("configdrive".into(), json!({"user_data": "#cloud-config"}));
        let drive = image_info(&node).unwrap().configdrive.unwrap();
        assert_eq!(drive, json!({"user_data": "#cloud-config", "meta_data": {"uuid": UUID, "name": "node-1"}}));
        node.instance_info.insert("configdrive".into(), json!({"meta_data": {"uuid": "mine", "hostname": "h"}}));
        let drive = image_info(&node).unwrap().configdrive.unwrap();
        assert_eq!(drive, json!({"meta_data": {"uuid": "mine", "name": "node-1", "hostname": "h"}}));
        node.name = None;
        node.instance_info.insert("configdrive".into(), json!({}));
        assert_eq!(image_info(&node).unwrap().configdrive.unwrap(), json!({"meta_data": {"uuid": UUID}}));
        node.instance_info.insert("configdrive".into(), json!("H4sIAAAA"));
        assert_eq!(image_info(&node).unwrap().configdrive, Some(json!("H4sIAAAA")));
        node.instance_info.remove("configdrive");
        assert_eq!(image_info(&node).unwrap().configdrive, None);
    }

    #[tokio::test]
    async fn malformed_deploy_fields_are_refused_before_any_state_change() {
        let cases = [
            (json!({"root_gb": "ten"}), "instance_info.root_gb must be a non-negative integer"),
            (json!({"swap_mb": -1}), "instance_info.swap_mb must be a non-negative integer"),
            (json!({"ephemeral_gb": 1.5}), "instance_info.ephemeral_gb must be a non-negative integer"),
            (json!({"ephemeral_mb": [1]}), "instance_info.ephemeral_mb must be a non-negative integer"),
            (json!({"image_type": "iso"}), "instance_info.image_type must be one of partition, whole-disk"),
            (json!({"deploy_boot_mode": "efi"}), "instance_info.deploy_boot_mode must be one of uefi, bios"),
            (json!({"capabilities": "boot_mode:legacy"}), "instance_info.capabilities boot_mode must be one of"),
            (json!({"disk_label": "dos"}), "instance_info.disk_label must be one of gpt, msdos"),
            (
                json!({"enable_bios_bootloader_install": "maybe"}),
                "instance_info.enable_bios_bootloader_install must be a boolean",
            ),
        ];
        for (fields, expected) in cases {
            let mut node = available_node();
            node.instance_info.extend(json_object(fields.clone()));
            let (refused, unchanged) = with_node(node, |tx, node| {
                let refused = conductor(Duration::from_secs(60)).provision(tx, node, Verb::Active, Utc::now());
                Ok((refused.unwrap_err(), tx.node_by_uuid(UUID)?.unwrap()))
            })
            .await
            .unwrap();
            assert!(refused.status().is_client_error(), "{fields}: {refused}");
            assert!(refused.to_string().contains(expected), "{fields}: {refused}");
            assert_eq!(unchanged.provision_state, ProvisionState::Available, "{fields}");
        }
    }

    #[tokio::test]
    async fn the_write_image_task_carries_the_new_fields() {
        let mut node = available_node();
        node.instance_info.extend(json_object(json!({
            "kernel": "http://k", "ramdisk": "http://r", "root_gb": "4", "swap_mb": 256,
            "configdrive": {"user_data": "x"}, "deploy_boot_mode": "uefi"
        })));
        let task =
            with_node(node, |tx, node| Ok(deploy_and_get_task(tx, &conductor(Duration::from_secs(60)), node)?.1))
                .await
                .unwrap();
        let Command::WriteImage { image_info } = task.command else { panic!("not write_image: {task:?}") };
        assert_eq!(image_info.image_type.as_deref(), Some("partition"));
        assert_eq!((image_info.root_mb, image_info.swap_mb), (Some(4096), Some(256)));
        assert_eq!(image_info.deploy_boot_mode.as_deref(), Some("uefi"));
        assert_eq!(image_info.configdrive.unwrap()["meta_data"]["uuid"], UUID);
    }

    fn write_result() -> WriteImageResult {
        WriteImageResult {
            root_device: "/dev/vda".into(),
            format: "qcow2".into(),
            image_bytes: 1 << 30,
            source_bytes: 300 << 20,
            seconds: 12.5,
            mib_per_second: 81.92,
            partition_uuids: [
                ("root uuid".to_owned(), "1b2c3d4e-0000-4000-8000-000000000001".to_owned()),
                ("efi system partition uuid".to_owned(), "1b2c3d4e-0000-4000-8000-000000000002".to_owned()),
                (ferric_protocol::CONFIG_DRIVE_UUID_KEY.to_owned(), "1b2c3d4e-0000-4000-8000-000000000003".to_owned()),
            ]
            .into(),
            boot_entry: Some("Boot0003 \"ferric\" \\EFI\\debian\\shimx64.efi".into()),
        }
    }

    /// Deploys `node`, reports `write_image` succeeded with `result`, and returns the node and its history.
    async fn deployed_with(node: Node, result: Option<Value>) -> (Node, Vec<HistoryEvent>) {
        with_node(node, move |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let (token, task) = deploy_and_get_task(tx, &conductor, node)?;
            let done = CommandResult { command_result: result, ..report(&task, CommandStatus::Succeeded) };
            let node = tx.node_by_uuid(UUID)?.unwrap();
            conductor.heartbeat(tx, node, heartbeat(&token, Some(done)), Utc::now())?;
            Ok((tx.node_by_uuid(UUID)?.unwrap(), tx.history(UUID)?))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_successful_write_stores_the_partition_uuids_and_reports_the_figures() {
        let (node, history) = deployed_with(available_node(), Some(to_json(&write_result()))).await;
        assert_eq!(node.provision_state, ProvisionState::Active);
        let info = &node.driver_internal_info;
        assert_eq!(info[ROOT_UUID_OR_DISK_ID], "1b2c3d4e-0000-4000-8000-000000000001");
        assert_eq!(info[EFI_SYSTEM_PARTITION_UUID], "1b2c3d4e-0000-4000-8000-000000000002");
        assert_eq!(info[PARTITION_UUIDS], to_json(&write_result().partition_uuids));
        assert_eq!(info[IS_WHOLE_DISK_IMAGE], true);
        let event =
            history.iter().map(|event| event.event.as_str()).find(|event| event.contains("write_image succeeded"));
        let event = event.expect("a success event");
        for expected in [
            "qcow2 image",
            "1073741824 bytes written to /dev/vda",
            "314572800 bytes downloaded",
            "12.5 s",
            "81.9 MiB/s",
            "boot entry Boot0003 \"ferric\"",
        ] {
            assert!(event.contains(expected), "{expected:?} missing from {event:?}");
        }
    }

    #[tokio::test]
    async fn a_success_without_a_readable_result_still_finishes_the_deploy() {
        let mut partition_node = available_node();
        partition_node.instance_info.insert("image_type".into(), json!("partition"));
        partition_node.driver_internal_info.insert(ROOT_UUID_OR_DISK_ID.into(), json!("from a previous deploy"));
        let cases = [
            ("absent", available_node(), None, true),
            ("unreadable", partition_node, Some(json!({"format": 5})), false),
        ];
        for (name, node, result, whole_disk) in cases {
            let (node, history) = deployed_with(node, result).await;
            assert_eq!(node.provision_state, ProvisionState::Active, "{name}");
            let info = &node.driver_internal_info;
            assert_eq!(info[IS_WHOLE_DISK_IMAGE], whole_disk, "{name}");
            for key in [ROOT_UUID_OR_DISK_ID, EFI_SYSTEM_PARTITION_UUID, PARTITION_UUIDS] {
                assert!(!info.contains_key(key), "{name}: {key} = {:?}", info.get(key));
            }
            assert!(history.iter().any(|event| event.event == "Deploy step deploy.write_image succeeded"), "{name}");
        }
    }

    #[test]
    fn automated_steps_follow_the_configured_priorities() {
        /// Name, metadata and erase priorities, and the steps with their priorities.
        type Case = (&'static str, u32, u32, &'static [(&'static str, u32)]);
        let cases: [Case; 5] = [
            ("IPA's", 99, 10, &[("erase_devices_metadata", 99), ("erase_devices", 10)]),
            ("metadata only", 99, 0, &[("erase_devices_metadata", 99)]),
            ("erase only", 0, 10, &[("erase_devices", 10)]),
            ("reversed", 1, 2, &[("erase_devices", 2), ("erase_devices_metadata", 1)]),
            ("none", 0, 0, &[]),
        ];
        for (name, metadata, erase, expected) in cases {
            let mut config = Config::new("unused.sqlite".into(), "http://h", "unused".into());
            config.erase_devices_metadata_priority = metadata;
            config.erase_devices_priority = erase;
            let steps = Conductor::new(Arc::new(config)).automated_clean_steps();
            let got: Vec<(&str, u32)> = steps.iter().map(|(step, priority)| (step.step.as_str(), *priority)).collect();
            assert_eq!(got, expected, "{name}");
            assert!(steps.iter().all(|(step, _)| step.interface == "deploy" && step.args == json!({})), "{name}");
        }
    }

    #[test]
    fn erased_devices_read_as_method_size_time_and_throughput() {
        let device = |method: &str, bytes, seconds, mib_per_second, samples_verified| ferric_protocol::ErasedDevice {
            device: "/dev/vda".into(),
            method: method.into(),
            bytes,
            seconds,
            mib_per_second,
            samples_verified,
        };
        let cases = [
            (
                "verified zero fill",
                device("write zeroes", 3072 << 20, 1.2, 2560.0, 66),
                "/dev/vda write zeroes 3072 MiB in 1.2 s (2560 MiB/s, 66 samples verified)",
            ),
            (
                "metadata, under a MiB",
                device("metadata", 17408, 0.04, 0.42, 0),
                "/dev/vda metadata 17408 bytes in 0.0 s (0.4 MiB/s)",
            ),
            (
                "slow and partial MiB",
                device("zero fill", (3 << 20) + (1 << 19), 7.0, 0.5, 2),
                "/dev/vda zero fill 3.5 MiB in 7.0 s (0.5 MiB/s, 2 samples verified)",
            ),
        ];
        for (name, erased, expected) in cases {
            assert_eq!(describe_erased_device(&erased), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn bad_hints_are_refused_at_deploy_and_instance_hints_win() {
        let mut node = available_node();
        node.properties.insert("root_device".into(), json!({"size": "huge"}));
        let refused = with_node(node, |tx, node| {
            conductor(Duration::from_secs(60)).provision(tx, node, Verb::Active, Utc::now()).map(|_| ())
        })
        .await
        .unwrap_err();
        assert!(refused.to_string().contains("Invalid root device hint size: "), "{refused}");

        let cases = [
            ("properties only", json!({"serial": "P"}), None, Some(json!({"serial": "P"}))),
            ("instance wins", json!({"serial": "P"}), Some(json!({"serial": "I"})), Some(json!({"serial": "I"}))),
            ("null instance hints", json!({"serial": "P"}), Some(Value::Null), Some(json!({"serial": "P"}))),
            ("none", Value::Null, None, None),
        ];
        for (name, properties, instance, expected) in cases {
            let mut node = available_node();
            node.properties.insert("root_device".into(), properties);
            if let Some(instance) = instance {
                node.instance_info.insert("root_device".into(), instance);
            }
            assert_eq!(image_info(&node).unwrap().root_device, expected, "{name}");
        }
    }

    /// Undeploys an active ipmi node and runs the tear down job; the follow-up job and lock, and the node.
    async fn torn_down(automated_clean: Option<bool>) -> (Option<(NodeLock, BmcJob)>, NodeLock, Node) {
        let mut node = ipmi_node();
        node.provision_state = ProvisionState::Active;
        node.automated_clean = automated_clean;
        with_node(node, |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let tear_down = conductor.provision(tx, node, Verb::Deleted, Utc::now())?.job.unwrap();
            assert_eq!(tear_down.steps, [BmcStep::Power(PowerAction::Off)]);
            let lock = take_lock(tx)?;
            let next = conductor.finish_job(tx, UUID, &lock, &tear_down, outcome(None), Utc::now())?;
            Ok((next, lock, tx.node_by_uuid(UUID)?.unwrap()))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_torn_down_bmc_node_goes_on_to_boot_the_ramdisk_for_cleaning_under_its_renewed_lock() {
        let (next, lock, node) = torn_down(None).await;
        let (renewed, boot) = next.expect("the ramdisk boot follows");
        assert_eq!(boot.steps, BOOT_RAMDISK);
        assert_eq!(boot.purpose, "Booting the ramdisk for cleaning");
        assert_eq!((renewed.uuid.as_str(), renewed.owner.as_str()), (UUID, lock.owner.as_str()));
        assert!(renewed.expires_at > lock.expires_at, "{} <= {}", renewed.expires_at, lock.expires_at);
        assert_eq!(node.provision_state, ProvisionState::Cleaning);
        assert_eq!(node.target_provision_state, Some(ProvisionState::Available));
        assert_eq!(node.target_power_state.as_deref(), Some("power on"));
        let steps: Vec<String> = clean_steps(&node).into_iter().map(|planned| planned.id()).collect();
        assert_eq!(steps, ["deploy.erase_devices_metadata", "deploy.erase_devices"]);
    }

    #[tokio::test]
    async fn a_torn_down_bmc_node_without_automated_cleaning_is_available_at_once() {
        let (next, _, node) = torn_down(Some(false)).await;
        assert!(next.is_none());
        assert_eq!(node.provision_state, ProvisionState::Available);
        assert_eq!(node.target_provision_state, None);
        assert_eq!(node.target_power_state, None);
        assert!(!node.driver_internal_info.contains_key(CLEAN_STEPS));
    }

    #[tokio::test]
    async fn a_bmc_node_stores_the_result_when_it_takes_over_the_boot() {
        let node = with_node(ipmi_node(), |tx, node| {
            let conductor = conductor(Duration::from_secs(60));
            let (token, task) = bmc_node_given_its_task(tx, &conductor, node)?;
            let done = CommandResult {
                command_result: Some(to_json(&write_result())),
                ..report(&task, CommandStatus::Succeeded)
            };
            let node = tx.node_by_uuid(UUID)?.unwrap();
            assert!(conductor.heartbeat(tx, node, heartbeat(&token, Some(done)), Utc::now())?.job.is_some());
            Ok(tx.node_by_uuid(UUID)?.unwrap())
        })
        .await
        .unwrap();
        assert_eq!(node.driver_internal_info[ROOT_UUID_OR_DISK_ID], "1b2c3d4e-0000-4000-8000-000000000001");
        assert_eq!(node.driver_internal_info[IS_WHOLE_DISK_IMAGE], true);
    }
}
