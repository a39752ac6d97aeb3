//! Entities seen from a client: signals, reads, queries and the storage clean-up.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::{ClientError, TaskHubClient};
use crate::entity::messages::{
    ReleaseMessage, RequestMessage, Sequencing, release_message, request_message,
};
use crate::entity::{EntityId, EntityMetadata, EntityStatus, SchedulerState};
use crate::provider::OrchestrationQuery;
use crate::registry::to_payload;
use crate::state::{OrchestrationState, OrchestrationStatus};

/// A client forgets its per-entity numbers (and starts a new stream) beyond this many entities.
const MAX_STREAM_DESTINATIONS: usize = 10_000;

/// A client's signal stream: numbers per entity, so that an entity drops a second copy of a
/// signal (a redelivered queue message, a storage retry of the same put). Client signals are not
/// ordered among themselves (concurrent sends race), only de-duplicated.
#[derive(Debug)]
pub(crate) struct ClientStreams {
    stream: String,
    seqs: HashMap<String, u64>,
}

impl ClientStreams {
    pub(crate) fn new() -> Mutex<Self> {
        Mutex::new(Self { stream: uuid::Uuid::new_v4().simple().to_string(), seqs: HashMap::new() })
    }

    fn label(&mut self, destination: &str, now: OffsetDateTime) -> Sequencing {
        if self.seqs.len() >= MAX_STREAM_DESTINATIONS && !self.seqs.contains_key(destination) {
            self.stream = uuid::Uuid::new_v4().simple().to_string();
            self.seqs.clear();
        }
        let n = self.seqs.entry(destination.to_owned()).or_insert(0);
        *n += 1;
        Sequencing {
            stream: Some(self.stream.clone()),
            seq: *n,
            ordered: false,
            timestamp: now,
            predecessor: None,
        }
    }
}

/// A query over entities ([`TaskHubClient::query_entities`]).
#[derive(Debug, Clone)]
pub struct EntityQuery {
    /// Entities whose name starts with this (case-insensitive; `None`: all).
    pub name_prefix: Option<String>,
    /// Read each entity's state.
    pub include_state: bool,
    /// Also list entities without state (deleted, or only holding a lock or a backlog).
    pub include_deleted: bool,
    /// Instances read per page (default 100). A page may hold fewer entities (deleted ones are
    /// skipped); only a missing continuation token means the end.
    pub page_size: usize,
    /// From the previous page.
    pub continuation_token: Option<String>,
}

impl Default for EntityQuery {
    fn default() -> Self {
        Self {
            name_prefix: None,
            include_state: false,
            include_deleted: false,
            page_size: 100,
            continuation_token: None,
        }
    }
}

/// One page of [`TaskHubClient::query_entities`].
#[derive(Debug, Clone)]
pub struct EntityQueryResult<S> {
    /// The entities of this page.
    pub entities: Vec<EntityMetadata<S>>,
    /// `Some` when more pages may follow.
    pub continuation_token: Option<String>,
}

/// What [`TaskHubClient::clean_entity_storage`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanEntityStorageResult {
    /// Entities without state, lock or backlog that were removed from storage.
    pub empty_entities_removed: usize,
    /// Locks held by orchestrations that no longer run, released.
    pub orphaned_locks_released: usize,
    /// Entities without state that were kept: they received a message within the workers'
    /// reorder window (their de-duplication memory is still needed), or did not complete within
    /// the wait (no worker running?). A later clean-up removes them.
    pub empty_entities_kept: usize,
}

fn status_of(state: &OrchestrationState) -> Option<EntityStatus> {
    state.status.as_deref().and_then(|s| serde_json::from_str(s).ok())
}

impl TaskHubClient {
    /// Signals `operation` on entity `id` (one-way). The entity is created by its first signal.
    ///
    /// # Errors
    /// An invalid id or input (nothing sent); provider errors.
    pub async fn signal_entity<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<(), ClientError> {
        self.signal_inner(id, operation, input, None).await
    }

    /// Signals `operation` on entity `id`, to be applied no earlier than `at`.
    ///
    /// # Errors
    /// As [`Self::signal_entity`].
    pub async fn signal_entity_at<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
        at: OffsetDateTime,
    ) -> Result<(), ClientError> {
        self.signal_inner(id, operation, input, Some(at)).await
    }

    async fn signal_inner<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
        at: Option<OffsetDateTime>,
    ) -> Result<(), ClientError> {
        id.validate()?;
        let input = to_payload(input)?;
        let now = self.clock.now();
        let seq = self
            .entity_streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .label(&id.instance_id(), now);
        let request = RequestMessage {
            operation: Some(operation.to_owned()),
            is_signal: true,
            input,
            id: uuid::Uuid::new_v4().to_string(),
            parent_instance_id: None,
            parent_execution_id: None,
            scheduled_time: at,
            lock_set: None,
            position: 0,
            cleanup: false,
            seq,
        };
        tracing::debug!(entity = %id, operation, "SignalingEntity");
        self.service.send_message(request_message(id, &request, now)).await?;
        Ok(())
    }

    /// The entity, if it has state (`None` when it never had any or it was deleted).
    ///
    /// # Errors
    /// An invalid id; a state that does not deserialize as `S`; provider errors.
    pub async fn get_entity<S: DeserializeOwned>(
        &self,
        id: &EntityId,
    ) -> Result<Option<EntityMetadata<S>>, ClientError> {
        id.validate()?;
        let Some(state) = self.service.get_state(&id.instance_id(), true).await? else {
            return Ok(None);
        };
        let scheduler = scheduler_of(&state)?;
        if !scheduler.exists() {
            return Ok(None);
        }
        Ok(Some(EntityMetadata::from_scheduler(
            id.clone(),
            state.last_updated_time,
            &scheduler,
            true,
        )?))
    }

    /// A page of entities (see [`EntityQuery`]).
    ///
    /// # Errors
    /// A state that does not deserialize as `S`; provider errors.
    pub async fn query_entities<S: DeserializeOwned>(
        &self,
        query: &EntityQuery,
    ) -> Result<EntityQueryResult<S>, ClientError> {
        let prefix = format!("@{}", query.name_prefix.as_deref().unwrap_or("").to_lowercase());
        let page = self
            .service
            .query(&OrchestrationQuery {
                instance_id_prefix: Some(prefix),
                page_size: query.page_size.max(1),
                continuation_token: query.continuation_token.clone(),
                fetch_inputs_and_outputs: query.include_state,
                ..OrchestrationQuery::default()
            })
            .await?;
        let mut entities = Vec::new();
        for state in page.states {
            let Ok(id) = EntityId::from_instance_id(state.instance_id()) else { continue };
            if state.orchestration_status.is_terminal() {
                continue; // removed by a clean-up, not purged yet
            }
            let meta = if query.include_state {
                EntityMetadata::from_scheduler(
                    id,
                    state.last_updated_time,
                    &scheduler_of(&state)?,
                    true,
                )?
            } else {
                let Some(s) = status_of(&state) else { continue };
                EntityMetadata {
                    id,
                    last_modified: state.last_updated_time,
                    state: None,
                    exists: s.entity_exists,
                    locked_by: s.locked_by,
                    backlog: s.queue_size,
                }
            };
            if meta.exists || query.include_deleted {
                entities.push(meta);
            }
        }
        Ok(EntityQueryResult { entities, continuation_token: page.continuation_token })
    }

    /// Removes empty entities (no state, lock, backlog, and no message for longer than the
    /// workers' reorder window, so that none of their de-duplication memory is still needed)
    /// and releases locks held by orchestrations that are no longer running. Empty entities
    /// are asked to complete (a worker must run); those that do within `wait` are purged, those
    /// that refuse (active within the window) or do not answer in time are counted as kept.
    ///
    /// # Errors
    /// Provider errors.
    pub async fn clean_entity_storage(
        &self,
        remove_empty: bool,
        release_orphaned_locks: bool,
        wait: Duration,
    ) -> Result<CleanEntityStorageResult, ClientError> {
        let mut result = CleanEntityStorageResult::default();
        let mut asked = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .service
                .query(&OrchestrationQuery {
                    instance_id_prefix: Some("@".into()),
                    continuation_token: token.take(),
                    fetch_inputs_and_outputs: false,
                    ..OrchestrationQuery::default()
                })
                .await?;
            for state in page.states {
                let Ok(id) = EntityId::from_instance_id(state.instance_id()) else { continue };
                if remove_empty && state.orchestration_status == OrchestrationStatus::Completed {
                    result.empty_entities_removed += self.purge_removed(&id).await?;
                    continue;
                }
                let Some(status) = status_of(&state) else { continue };
                if let Some(holder) = status.locked_by.as_deref()
                    && release_orphaned_locks
                    && self.release_if_orphaned(&id, holder).await?
                {
                    result.orphaned_locks_released += 1;
                } else if remove_empty
                    && !status.entity_exists
                    && status.queue_size == 0
                    && status.locked_by.is_none()
                {
                    self.send_request(&id, cleanup_request(self.clock.now())).await?;
                    asked.push((id, state.last_updated_time));
                }
            }
            token = page.continuation_token;
            if token.is_none() {
                break;
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Each asked entity answers by checkpointing: completed (purge it), or still running
        // with a newer last-updated time (it refused: not idle yet).
        while !asked.is_empty() {
            let mut pending = Vec::new();
            for (id, seen) in asked {
                match self.service.get_state(&id.instance_id(), false).await? {
                    Some(s) if s.orchestration_status == OrchestrationStatus::Completed => {
                        result.empty_entities_removed += self.purge_removed(&id).await?;
                    }
                    Some(s) if s.last_updated_time != seen => result.empty_entities_kept += 1,
                    Some(_) => pending.push((id, seen)),
                    None => {}
                }
            }
            asked = pending;
            if asked.is_empty() || tokio::time::Instant::now() >= deadline {
                result.empty_entities_kept += asked.len();
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(result)
    }

    async fn purge_removed(&self, id: &EntityId) -> Result<usize, ClientError> {
        match self.purge_instance(&id.instance_id()).await {
            Ok(r) => Ok(usize::from(r.deleted_instance_count > 0)),
            // Signalled again meanwhile: it lives on.
            Err(ClientError::NotTerminal(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn release_if_orphaned(&self, id: &EntityId, holder: &str) -> Result<bool, ClientError> {
        let running = match self.service.get_state(holder, false).await {
            Ok(Some(s)) => !s.orchestration_status.is_terminal(),
            Ok(None) => false,
            Err(e) => return Err(e.into()),
        };
        if running {
            return Ok(false);
        }
        let Some(state) = self.service.get_state(&id.instance_id(), true).await? else {
            return Ok(false);
        };
        let scheduler = scheduler_of(&state)?;
        let (Some(locked_by), Some(lock_id)) =
            (scheduler.locked_by(), scheduler.lock_id.as_deref())
        else {
            return Ok(false);
        };
        if locked_by != holder {
            return Ok(false);
        }
        let now = self.clock.now();
        let release = ReleaseMessage {
            parent_instance_id: holder.to_owned(),
            id: lock_id.to_owned(),
            seq: Sequencing::unsequenced(now),
        };
        tracing::info!(entity = %id, holder, "ReleasingOrphanedLock");
        self.service.send_message(release_message(id, &release, now)).await?;
        Ok(true)
    }

    async fn send_request(
        &self,
        id: &EntityId,
        request: RequestMessage,
    ) -> Result<(), ClientError> {
        let now = self.clock.now();
        self.service.send_message(request_message(id, &request, now)).await?;
        Ok(())
    }
}

fn cleanup_request(now: OffsetDateTime) -> RequestMessage {
    RequestMessage {
        operation: None,
        is_signal: true,
        input: None,
        id: uuid::Uuid::new_v4().to_string(),
        parent_instance_id: None,
        parent_execution_id: None,
        scheduled_time: None,
        lock_set: None,
        position: 0,
        cleanup: true,
        seq: Sequencing::unsequenced(now),
    }
}

fn scheduler_of(state: &OrchestrationState) -> Result<SchedulerState, ClientError> {
    SchedulerState::from_input(state.input.as_deref()).map_err(ClientError::CorruptEntity)
}
