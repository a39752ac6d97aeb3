//! What an entity persists between batches (DTF `SchedulerState`, the input of each new
//! execution) and what clients read of it.

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::EntityId;
use super::messages::RequestMessage;
use super::sorter::MessageSorter;

/// The persisted state of an entity's scheduler: the entity state, the requests waiting behind
/// a lock, the lock holder and the de-duplication streams. Field names are DTF's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    #[serde(rename = "exists", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) entity_exists: bool,
    #[serde(rename = "state", default, skip_serializing_if = "Option::is_none")]
    pub(crate) entity_state: Option<String>,
    #[serde(rename = "queue", default, skip_serializing_if = "VecDeque::is_empty")]
    pub(crate) queue: VecDeque<RequestMessage>,
    #[serde(rename = "lockedBy", default, skip_serializing_if = "Option::is_none")]
    pub(crate) locked_by: Option<String>,
    /// The critical section holding the lock (its lock request id).
    #[serde(rename = "lockId", default, skip_serializing_if = "Option::is_none")]
    pub(crate) lock_id: Option<String>,
    #[serde(rename = "sorter", default)]
    pub(crate) sorter: MessageSorter,
    /// What the batch that wrote this state sends (its checkpoint commits the state first; a
    /// batch that cannot know whether that send finished sends these again).
    #[serde(rename = "outbox", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) outbox: Vec<crate::history::TaskMessage>,
}

impl SchedulerState {
    /// Parses the scheduler state stored as an entity execution's input (`None`: a new entity).
    ///
    /// # Errors
    /// The JSON error text when the input is not a scheduler state.
    pub fn from_input(input: Option<&str>) -> Result<Self, String> {
        match input {
            None | Some("") | Some("null") => Ok(Self::default()),
            Some(s) => serde_json::from_str(s).map_err(|e| {
                format!("entity scheduler state is corrupt or of another version: {e}")
            }),
        }
    }

    pub(crate) fn to_input(&self) -> String {
        super::messages::to_json(self)
    }

    /// Whether the entity has state.
    pub fn exists(&self) -> bool {
        self.entity_exists
    }

    /// The serialized entity state.
    pub fn state(&self) -> Option<&str> {
        self.entity_state.as_deref()
    }

    /// The orchestration holding the entity's lock.
    pub fn locked_by(&self) -> Option<&str> {
        self.locked_by.as_deref()
    }

    /// Requests waiting (behind a lock).
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Messages waiting for a predecessor from their sender.
    pub fn out_of_order(&self) -> usize {
        self.sorter.buffered_count()
    }

    /// Nothing is stored, queued, locked or waiting: the entity can be removed.
    pub fn is_empty(&self) -> bool {
        !self.entity_exists
            && self.queue.is_empty()
            && self.locked_by.is_none()
            && self.sorter.buffered_count() == 0
    }

    pub(crate) fn status(&self) -> EntityStatus {
        EntityStatus {
            entity_exists: self.entity_exists,
            queue_size: self.queue.len(),
            locked_by: self.locked_by.clone(),
        }
    }
}

/// The custom status of an entity instance (DTF `EntityStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityStatus {
    /// Whether the entity has state.
    #[serde(rename = "entityExists")]
    pub entity_exists: bool,
    /// Requests waiting.
    #[serde(rename = "queueSize")]
    pub queue_size: usize,
    /// The lock holder.
    #[serde(rename = "lockedBy", default, skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<String>,
}

/// An entity as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityMetadata<S> {
    /// The entity.
    pub id: EntityId,
    /// When its last batch was checkpointed.
    #[serde(with = "time::serde::rfc3339")]
    pub last_modified: OffsetDateTime,
    /// Its state (`None` when not fetched, or when it has none).
    pub state: Option<S>,
    /// Whether it has state.
    pub exists: bool,
    /// The orchestration holding its lock.
    pub locked_by: Option<String>,
    /// Requests waiting behind the lock.
    pub backlog: usize,
}

impl<S: DeserializeOwned> EntityMetadata<S> {
    /// Builds the metadata from a scheduler state.
    ///
    /// # Errors
    /// The JSON error when the state does not deserialize as `S`.
    pub fn from_scheduler(
        id: EntityId,
        last_modified: OffsetDateTime,
        s: &SchedulerState,
        include_state: bool,
    ) -> Result<Self, serde_json::Error> {
        let state = match (include_state, s.entity_state.as_deref()) {
            (true, Some(text)) if s.entity_exists => Some(serde_json::from_str(text)?),
            _ => None,
        };
        Ok(Self {
            id,
            last_modified,
            state,
            exists: s.entity_exists,
            locked_by: s.locked_by.clone(),
            backlog: s.queue.len(),
        })
    }
}
