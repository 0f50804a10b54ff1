//! One action per node at a time, as Ironic's node reservation: the node's `reservation` names
//! the holding conductor until the action ends (its BMC job included), and a request meanwhile
//! gets 409 NodeLocked. The lock carries an expiry, so one left by a crashed controller is taken over.

use super::NodeIdent;
use crate::error::Error;
use crate::jobs::{self, BmcJob, NodeLock};
use crate::model::Node;
use crate::store::Tx;
use crate::AppState;

/// Runs `work` on the node while holding its lock: taken in one transaction, `work` in a second.
/// Without a job the lock is released in a third, whatever `work` returned; with one, the lock
/// passes to the job, which releases it when it ends.
pub async fn with_node_locked<T, F>(state: &AppState, ident: NodeIdent, work: F) -> Result<T, Error>
where
    F: FnOnce(&Tx<'_>, Node) -> Result<(T, Option<BmcJob>), Error> + Send + 'static,
    T: Send + 'static,
{
    // In a task of its own: a client that disconnects drops this request's future, and the lock
    // must still pass to the job or be released.
    let state = state.clone();
    let locked = tokio::spawn(async move {
        let owner = state.config.conductor_name.clone();
        let ttl = jobs::lock_ttl(&state.config.bmc);
        let lock = state
            .store
            .run(move |tx| {
                let node = ident.load(tx)?;
                NodeLock::take(tx, &node.uuid, &owner, ttl)
            })
            .await?;
        let result = state
            .store
            .run({
                let uuid = lock.uuid.clone();
                move |tx| {
                    let node = tx.node_by_uuid(&uuid)?.ok_or(Error::NodeNotFound(uuid))?;
                    work(tx, node)
                }
            })
            .await;
        match result {
            Ok((value, Some(job))) => {
                jobs::spawn(state.clone(), lock, job);
                Ok(value)
            }
            Ok((value, None)) => {
                lock.release(&state.store).await;
                Ok(value)
            }
            Err(error) => {
                lock.release(&state.store).await;
                Err(error)
            }
        }
    });
    locked.await.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}
