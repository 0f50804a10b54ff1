//! Ironic's power state sync: every node with a BMC is asked for its power state periodically,
//! and a change made out of band (someone at the BMC, a node that powered itself off) is
//! recorded on the node with an event. A BMC that keeps failing puts its node in maintenance
//! with the `power failure` fault and the reason as `last_error`; the first answer after that
//! takes the node out of maintenance again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::bmc::{Bmc, BmcError, PowerInterface, PowerState};
use crate::conductor::EVENT_TYPE_POWER;
use crate::error::{error_chain, Error};
use crate::fsm::ProvisionState;
use crate::model::{timestamp, HistoryEvent, Node, Severity};
use crate::store::{NodeQuery, Tx};
use crate::AppState;

/// Ironic's `fault` for a node whose BMC stopped answering the sync.
pub const FAULT_POWER_FAILURE: &str = "power failure";
/// States whose power changes belong to the work under way (Ironic's `SYNC_EXCLUDED_STATES`): the
/// agent powers the node off or reboots it itself.
const SYNC_EXCLUDED_STATES: &[ProvisionState] =
    &[ProvisionState::Enroll, ProvisionState::DeployWait, ProvisionState::CleanWait, ProvisionState::InspectWait];
/// BMCs asked at once: slow ones must not hold up the rest.
const CONCURRENT_QUERIES: usize = 8;

/// Syncs power states every `every`; never returns.
pub async fn watch_power_states(state: AppState, every: Duration) -> Infallible {
    let mut failures = HashMap::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = sync_once(&state, &mut failures).await {
            tracing::error!(error = %error_chain(&error), "power state sync failed");
        }
    }
}

/// One pass over the nodes with a BMC that no action holds. `failures` counts each node's
/// consecutive failed queries across passes.
pub async fn sync_once(state: &AppState, failures: &mut HashMap<String, u32>) -> Result<(), Error> {
    let nodes = state.store.run(|tx| tx.list_nodes(&NodeQuery::default())).await?;
    let semaphore = Arc::new(Semaphore::new(CONCURRENT_QUERIES));
    let mut queries = JoinSet::new();
    for node in nodes
        .into_iter()
        .filter(|node| node.reservation.is_none() && !SYNC_EXCLUDED_STATES.contains(&node.provision_state))
    {
        // A node without a BMC, or with an incomplete driver_info (reported by validate and by
        // the actions that need it), has nothing to sync: not a BMC failure.
        let Ok(Some(bmc)) = Bmc::for_node(&node, &state.config.bmc) else { continue };
        let semaphore = Arc::clone(&semaphore);
        queries.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let result = bmc.power_state().await;
            (node, result)
        });
    }
    let max_failures = state.config.power_sync_max_failures;
    while let Some(joined) = queries.join_next().await {
        let Ok((queried, result)) = joined else { continue };
        let uuid = queried.uuid.clone();
        let failed = match &result {
            Ok(_) => {
                failures.remove(&uuid);
                0
            }
            Err(_) => {
                let count = failures.entry(uuid.clone()).or_default();
                *count += 1;
                *count
            }
        };
        let conductor = state.conductor.name().to_owned();
        state
            .store
            .run(move |tx| {
                let Some(node) = tx.node_by_uuid(&uuid)? else { return Ok::<_, Error>(()) };
                // An action took the node, or ran and finished, meanwhile: its outcome is the truth.
                if node.reservation.is_some() || node.updated_at != queried.updated_at {
                    return Ok(());
                }
                record(tx, node, result, failed, max_failures, &conductor)
            })
            .await?;
    }
    Ok(())
}

/// Records one query's outcome on `node`.
fn record(
    tx: &Tx<'_>,
    mut node: Node,
    result: Result<PowerState, BmcError>,
    failed: u32,
    max_failures: u32,
    conductor: &str,
) -> Result<(), Error> {
    let mut events = Vec::new();
    match result {
        Ok(actual) => {
            if node.maintenance && node.fault.as_deref() == Some(FAULT_POWER_FAILURE) {
                node.maintenance = false;
                if node.last_error == node.maintenance_reason {
                    node.last_error = None;
                }
                node.maintenance_reason = None;
                node.fault = None;
                events
                    .push((Severity::Info, "The BMC answers again: maintenance for power failure cleared".to_owned()));
            }
            let recorded = node.power_state.clone();
            if recorded.as_deref() != Some(actual.as_str()) {
                let from = recorded.as_deref().unwrap_or("None");
                tracing::warn!(node = %node.uuid, %from, to = %actual, "power state changed out of band");
                events.push((Severity::Warning, format!("Power state changed out of band: {from} -> {actual}")));
                node.power_state = Some(actual.as_str().to_owned());
            }
        }
        Err(error) if failed >= max_failures && !node.maintenance => {
            let reason = format!(
                "During power state sync the BMC failed {failed} times in a row; the node is in maintenance \
                 until it answers again. Last error: {error}"
            );
            tracing::error!(node = %node.uuid, "{reason}");
            node.maintenance = true;
            node.maintenance_reason = Some(reason.clone());
            node.fault = Some(FAULT_POWER_FAILURE.to_owned());
            node.last_error = Some(reason.clone());
            node.power_state = None;
            events.push((Severity::Error, reason));
        }
        Err(error) => {
            tracing::warn!(node = %node.uuid, failed, error = %error, "power state sync: the BMC did not answer");
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let now = timestamp(Utc::now());
    node.updated_at = Some(now.clone());
    tx.update_node(&node)?;
    for (severity, event) in events {
        tx.insert_history(&HistoryEvent::note(&node.uuid, now.clone(), severity, EVENT_TYPE_POWER, event, conductor))?;
    }
    Ok(())
}
