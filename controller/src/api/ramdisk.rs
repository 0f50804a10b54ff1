//! The agent's endpoints: lookup and heartbeat. No API authentication, but heartbeats must
//! carry the token lookup handed out.

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use ferric_protocol::{normalize_mac, Heartbeat, HeartbeatResponse, LookupResponse};
use serde_json::Value;

use super::microversion::{self, ApiVersion};
use super::{JsonBody, NodeIdent, QueryParams};
use crate::error::Error;
use crate::jobs;
use crate::AppState;

/// `GET /v1/lookup?addresses=<mac>,<mac>[&node_uuid=<uuid>]`.
pub async fn lookup(
    State(state): State<AppState>,
    version: ApiVersion,
    query: QueryParams,
) -> Result<Json<LookupResponse>, Error> {
    if !version.at_least(microversion::LOOKUP_HEARTBEAT) {
        return Err(Error::ResourceNotFound);
    }
    query.only(&["addresses", "node_uuid"])?;
    let addresses: Vec<String> =
        query.get("addresses").map(|list| list.split(',').filter_map(normalize_mac).collect()).unwrap_or_default();
    let node_uuid = query
        .get("node_uuid")
        .map(|text| {
            super::canonical_uuid(text).ok_or_else(|| Error::Invalid(format!("Expected a UUID for node_uuid: {text}")))
        })
        .transpose()?;
    if addresses.is_empty() && node_uuid.is_none() {
        return Err(Error::Invalid("At least one of 'addresses' and 'node_uuid' parameters is required".to_owned()));
    }
    let conductor = state.conductor.clone();
    let response = state
        .store
        .run(move |tx| {
            let node = match &node_uuid {
                Some(uuid) => tx.node_by_uuid(uuid)?,
                None => {
                    let mut nodes = tx.nodes_by_port_addresses(&addresses)?;
                    // Addresses of several nodes identify none of them.
                    if nodes.len() == 1 {
                        nodes.pop()
                    } else {
                        None
                    }
                }
            };
            conductor.lookup(tx, node.ok_or(Error::ResourceNotFound)?, Utc::now())
        })
        .await?;
    tracing::info!(node = %response.node.uuid, token_issued = response.config.agent_token != ferric_protocol::MASKED_TOKEN, "agent lookup");
    Ok(Json(response))
}

/// `POST /v1/heartbeat/{node}`: records the agent's report and answers its next task.
pub async fn heartbeat(
    State(state): State<AppState>,
    version: ApiVersion,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<HeartbeatResponse>, Error> {
    if !version.at_least(microversion::LOOKUP_HEARTBEAT) {
        return Err(Error::ResourceNotFound);
    }
    if body.get("agent_token").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(Error::InvalidAgentToken);
    }
    let heartbeat: Heartbeat =
        serde_json::from_value(body).map_err(|error| Error::Invalid(format!("Invalid heartbeat: {error}")))?;
    let ident = NodeIdent::parse(&ident, version)?;
    // In a task of its own: a heartbeat may start BMC work, which must start even if the agent
    // hangs up before the answer.
    let task = tokio::spawn(async move {
        let conductor = state.conductor.clone();
        let outcome = state
            .store
            .run(move |tx| {
                let node = ident.load(tx)?;
                conductor.heartbeat(tx, node, heartbeat, Utc::now())
            })
            .await?;
        if let Some((lock, job)) = outcome.job {
            jobs::spawn(state.clone(), lock, job);
        }
        Ok::<_, Error>(outcome.response)
    });
    let response = task.await.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
    Ok(Json(response))
}
