//! One action per node at a time, as Ironic's node reservation: the node's `reservation` names
//! the holding conductor until the action's synchronous part ends, and a request meanwhile gets
//! 409 NodeLocked. The lock carries an expiry, so one left by a crashed controller is taken over.

use std::time::Duration;

use chrono::Utc;

use super::NodeIdent;
use crate::error::Error;
use crate::model::{timestamp, Node};
use crate::store::{Reservation, Tx};
use crate::AppState;

/// How long a lock holds without being released: far longer than any synchronous action.
pub const NODE_LOCK_TTL: Duration = Duration::from_secs(60);

/// Runs `work` on the node while holding its lock: taken in one transaction, `work` in a second,
/// released in a third whatever `work` returned.
pub async fn with_node_locked<T, F>(state: &AppState, ident: NodeIdent, work: F) -> Result<T, Error>
where
    F: FnOnce(&Tx<'_>, Node) -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    let owner = state.config.conductor_name.clone();
    let now = Utc::now();
    let expires_at = timestamp(now + NODE_LOCK_TTL);
    let uuid = state
        .store
        .run({
            let (owner, expires_at) = (owner.clone(), expires_at.clone());
            move |tx| {
                let node = ident.load(tx)?;
                match tx.reserve_node(&node.uuid, &owner, &timestamp(now), &expires_at)? {
                    Reservation::Granted => Ok(node.uuid),
                    Reservation::HeldBy(host) => Err(Error::NodeLocked { node: node.uuid, host }),
                    Reservation::NoSuchNode => Err(Error::NodeNotFound(node.uuid)),
                }
            }
        })
        .await?;
    let result = state
        .store
        .run({
            let uuid = uuid.clone();
            move |tx| {
                let node = tx.node_by_uuid(&uuid)?.ok_or(Error::NodeNotFound(uuid))?;
                work(tx, node)
            }
        })
        .await;
    let released = state.store.run(move |tx| tx.release_node(&uuid, &owner, &expires_at)).await;
    if let Err(error) = released {
        // The lock lapses at its expiry anyway.
        tracing::warn!(error = %crate::error::error_chain(&error), "cannot release a node lock");
    }
    result
}
