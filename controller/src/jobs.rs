//! The BMC part of a node action. BMCs take seconds to answer, so it runs after the action's
//! state change, outside any store transaction, while the node stays locked; its outcome then
//! lands on the node in one transaction: the next state, the power state, an event per step, and
//! on failure `last_error` and an error event. The lock is released whatever happened.

use std::time::Duration;

use chrono::Utc;

use crate::bmc::{
    Bmc, BmcError, BmcSettings, BootDeviceSetting, ManagementInterface, PowerAction, PowerInterface, PowerState,
};
use crate::error::{error_chain, Error};
use crate::fsm::Event;
use crate::ipxe::BootMode;
use crate::model::timestamp;
use crate::store::{Reservation, Store, Tx};
use crate::AppState;

/// How long a node lock holds: past the longest BMC job these settings allow (two calls and two
/// power waits, each bounded, with room to spare), so in practice only a crashed controller's
/// lock expires; a job that outlives it anyway finds its outcome refused and fails the node.
pub fn lock_ttl(settings: &BmcSettings) -> Duration {
    const MARGIN: Duration = Duration::from_secs(60);
    (settings.command_timeout + settings.power_timeout) * 4 + MARGIN
}

/// One BMC call of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcStep {
    SetBootDevice(BootDeviceSetting),
    Power(PowerAction),
    ReadPowerState,
}

impl BmcStep {
    fn describe(self) -> String {
        match self {
            BmcStep::SetBootDevice(setting) => format!(
                "setting the boot device to {} ({})",
                setting.device,
                if setting.persistent { "persistent" } else { "next boot only" }
            ),
            BmcStep::Power(action) => format!("power action \"{action}\""),
            BmcStep::ReadPowerState => "reading the power state".to_owned(),
        }
    }
}

/// BMC work and what it leads to.
#[derive(Debug, Clone)]
pub struct BmcJob {
    pub bmc: Bmc,
    pub boot_mode: BootMode,
    /// What the job is for, starting failure messages: "Booting the ramdisk for deploy".
    pub purpose: String,
    pub steps: Vec<BmcStep>,
    /// How long each power action may take to show in the BMC's state.
    pub power_timeout: Duration,
    /// Transitions applied, in order, once every step succeeded, each with its cause.
    pub on_success: Vec<(Event, String)>,
    /// The transition of a failure, `None` when the node stays in its state (a power action at rest).
    pub on_failure: Option<Event>,
}

/// What the BMC did, handed to [`crate::conductor::Conductor::finish_job`].
#[derive(Debug)]
pub struct JobOutcome {
    /// A line per step done, for the node's history.
    pub done: Vec<String>,
    /// The power state last seen or reached.
    pub power_state: Option<PowerState>,
    /// The step that failed and why; the steps after it were not tried.
    pub failure: Option<(BmcStep, BmcError)>,
}

impl JobOutcome {
    /// The node's `last_error` for a failed job.
    pub fn failure_message(&self, purpose: &str) -> Option<String> {
        self.failure.as_ref().map(|(step, error)| format!("{purpose} failed while {}: {error}", step.describe()))
    }
}

/// Runs the job's steps in order, stopping at the first failure.
pub async fn execute(job: &BmcJob) -> JobOutcome {
    let mut outcome = JobOutcome { done: Vec::new(), power_state: None, failure: None };
    for &step in &job.steps {
        let result = match step {
            BmcStep::SetBootDevice(setting) => job.bmc.set_boot_device(setting, job.boot_mode).await.map(|()| None),
            BmcStep::Power(action) => {
                job.bmc.set_power_state(action, job.power_timeout).await.map(|()| Some(action.resulting_state()))
            }
            BmcStep::ReadPowerState => job.bmc.power_state().await.map(Some),
        };
        match result {
            Ok(power_state) => {
                outcome.power_state = power_state.or(outcome.power_state);
                let mut line = format!("BMC {}: done {}", job.bmc.address(), step.describe());
                if let Some(state) = power_state {
                    line.push_str(&format!(": {state}"));
                }
                outcome.done.push(line);
            }
            Err(error) => {
                tracing::warn!(bmc = %job.bmc.address(), step = %step.describe(), error = %error, "BMC step failed");
                outcome.failure = Some((step, error));
                break;
            }
        }
    }
    outcome
}

/// A node lock held across tasks: taken by an action, released when its job ends.
#[derive(Debug, Clone)]
pub struct NodeLock {
    pub uuid: String,
    pub owner: String,
    pub expires_at: String,
}

impl NodeLock {
    /// Takes the node's lock inside `tx` for `ttl`: fails with Ironic's `NodeLocked` if held.
    pub fn take(tx: &Tx<'_>, uuid: &str, owner: &str, ttl: Duration) -> Result<NodeLock, Error> {
        let now = Utc::now();
        let expires_at = timestamp(now + ttl);
        match tx.reserve_node(uuid, owner, &timestamp(now), &expires_at)? {
            Reservation::Granted => Ok(NodeLock { uuid: uuid.to_owned(), owner: owner.to_owned(), expires_at }),
            Reservation::HeldBy(host) => Err(Error::NodeLocked { node: uuid.to_owned(), host }),
            Reservation::NoSuchNode => Err(Error::NodeNotFound(uuid.to_owned())),
        }
    }

    /// The same lock held for `ttl` from now, for more work under it; fails with Ironic's
    /// `NodeLocked` if it lapsed and someone took it over.
    pub fn renew(&self, tx: &Tx<'_>, ttl: Duration) -> Result<NodeLock, Error> {
        let expires_at = timestamp(Utc::now() + ttl);
        if tx.renew_reservation(&self.uuid, &self.owner, &self.expires_at, &expires_at)? {
            return Ok(NodeLock { expires_at, ..self.clone() });
        }
        let host = tx.node_by_uuid(&self.uuid)?.and_then(|node| node.reservation).unwrap_or_default();
        Err(Error::NodeLocked { node: self.uuid.clone(), host })
    }

    /// Ends the lock, unless it expired and someone took it over.
    pub async fn release(self, store: &Store) {
        let NodeLock { uuid, owner, expires_at } = self;
        if let Err(error) = store.run(move |tx| tx.release_node(&uuid, &owner, &expires_at)).await {
            // The lock lapses at its expiry anyway.
            tracing::warn!(error = %error_chain(&error), "cannot release a node lock");
        }
    }
}

/// Runs `job` in the background, then records its outcome, runs the job that follows it if any
/// (the ramdisk boot of the cleaning after a tear down) under the renewed lock, and releases the
/// lock. Whatever happens (a panic in a driver, a failed transaction), the node leaves its job
/// state and its lock.
pub fn spawn(state: AppState, mut lock: NodeLock, mut job: BmcJob) {
    tokio::spawn(async move {
        loop {
            let running = job.clone();
            let outcome = match tokio::spawn(async move { execute(&running).await }).await {
                Ok(outcome) => outcome,
                Err(panic) => JobOutcome {
                    done: Vec::new(),
                    power_state: None,
                    failure: Some((job.steps[0], crate::bmc::BmcError::Internal(panic.to_string()))),
                },
            };
            let conductor = state.conductor.clone();
            let (uuid, job_lock) = (lock.uuid.clone(), lock.clone());
            let recorded =
                state.store.run(move |tx| conductor.finish_job(tx, &uuid, &job_lock, &job, outcome, Utc::now())).await;
            match recorded {
                Ok(Some((renewed, next))) => (lock, job) = (renewed, next),
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(node = %lock.uuid, error = %error_chain(&error), "cannot record the outcome of BMC work");
                    let conductor = state.conductor.clone();
                    let uuid = lock.uuid.clone();
                    let reason = format!("The outcome of the BMC work could not be recorded: {}", error_chain(&error));
                    let abandoned =
                        state.store.run(move |tx| conductor.abandon_job(tx, &uuid, &reason, Utc::now())).await;
                    if let Err(error) = abandoned {
                        tracing::error!(node = %lock.uuid, error = %error_chain(&error), "cannot fail the node either");
                    }
                    break;
                }
            }
        }
        lock.release(&state.store).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::ProvisionState;
    use crate::model::Node;

    #[tokio::test]
    async fn a_lock_is_renewed_only_while_it_is_still_held() {
        let store = Store::open_in_memory().unwrap();
        store
            .run(|tx| {
                tx.insert_node(&Node::new("n1".into(), "ipmi".into(), ProvisionState::Active, "t0".into()))?;
                let lock = NodeLock::take(tx, "n1", "ferric", Duration::from_secs(1))?;
                let renewed = lock.renew(tx, Duration::from_secs(600))?;
                assert!(renewed.expires_at > lock.expires_at, "{} <= {}", renewed.expires_at, lock.expires_at);
                assert!(tx.holds_reservation("n1", "ferric", &renewed.expires_at)?);
                // The lock as it was before is gone: it cannot be renewed again.
                assert!(matches!(lock.renew(tx, Duration::from_secs(600)), Err(Error::NodeLocked { .. })));
                // Once the renewed lock lapses and another controller takes the node, it is theirs.
                let later = Utc::now() + Duration::from_secs(700);
                let taken = tx.reserve_node("n1", "other", &timestamp(later), &timestamp(later))?;
                assert_eq!(taken, crate::store::Reservation::Granted);
                let refused = renewed.renew(tx, Duration::from_secs(600));
                assert!(matches!(&refused, Err(Error::NodeLocked { host, .. }) if host == "other"), "{refused:?}");
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }
}
