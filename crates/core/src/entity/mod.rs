//! Durable entities, DTF's third programming model: small objects with durable state, addressed
//! by an [`EntityId`] (name + key), that process one operation at a time.
//!
//! * An entity is an instance whose id is `@name@key`. It has no code of its own in history: each
//!   work item (a batch of operations) ends by starting a new execution whose input is the
//!   serialized scheduler state ([`SchedulerState`]: the entity state, the operations waiting
//!   behind a lock, the lock holder and the de-duplication streams). Providers therefore store
//!   entities exactly as they store orchestrations that continue as new, in DTF's layout.
//! * Messages to an entity are `EventRaised` events named `op` (a call, a signal or a lock
//!   request), `op@<due time>` (a scheduled signal; providers deliver it no earlier than the due
//!   time, [`crate::TaskMessage::deliver_at`]) or `release`. Responses to orchestrations are
//!   `EventRaised` events named after the request id.
//! * **Exactly once, in order.** Every message from an orchestration, an entity or a client
//!   carries a stream id and a sequence number. The receiver records which numbers it has applied
//!   per stream and drops a second copy (a redelivered queue message, or the re-send of a sender
//!   whose checkpoint failed after sending: the same deterministic numbers). Streams from
//!   orchestrations and entities are ordered: a message waits until its predecessor has been
//!   applied. Streams idle for longer than the reorder window are forgotten.
//! * **Critical sections**: an orchestration locks a sorted set of entities one after the other
//!   (a lock request travels from entity to entity), so two orchestrations locking overlapping
//!   sets in any order cannot deadlock. A locked entity runs only its holder's operations.
//!
//! [`executor::process_entity_work_item`] is the pure batch step; [`EntityContext`] is what an
//! entity function sees.

mod context;
pub(crate) mod executor;
pub(crate) mod messages;
pub(crate) mod sorter;
mod state;

use std::fmt;

use serde::{Deserialize, Serialize};

pub(crate) use context::typed;
pub use context::{
    BatchRequest, BatchResult, ENTITY_OPERATION_FAILED, EntityContext, EntityError, EntityFn,
    EntitySignal, MESSAGE_TOO_LARGE, OperationRequest,
};
pub use messages::{
    LOCK_ACQUIRED, RELEASE_EVENT_NAME, REQUEST_EVENT_NAME, scheduled_request_event_name,
    scheduled_time_of,
};
pub use state::{EntityMetadata, EntityStatus, SchedulerState};

pub use executor::process_entity_work_item;

/// The default reorder window (DTF `EntityMessageReorderWindowInMinutes`, 30 minutes): how long
/// a receiver remembers a sender's stream after its last message, and how long a message waits
/// for a missing predecessor.
pub const DEFAULT_REORDER_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Whether `instance_id` names an entity (`@name@key`).
pub fn is_entity_instance(instance_id: &str) -> bool {
    instance_id.starts_with('@')
}

/// Why an entity id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntityIdError {
    /// The name is empty.
    #[error("entity name must not be empty")]
    EmptyName,
    /// The name contains `@`, which separates name and key.
    #[error("entity name {0:?} must not contain '@'")]
    AtInName(String),
    /// The instance id is not of the form `@name@key`.
    #[error("{0:?} is not an entity instance id (expected \"@name@key\")")]
    NotAnEntity(String),
    /// The instance id `@name@key` is not a valid instance id.
    #[error("entity instance id is invalid: {0}")]
    InvalidInstanceId(#[from] crate::ids::InstanceIdError),
}

/// An entity's identity: a name (lower-cased, as DTF does) and a key. Its instance id is
/// `@name@key`; ids order by that string (DTF's lock order).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EntityId {
    name: String,
    key: String,
}

impl EntityId {
    /// An entity id; the name is lower-cased. Use [`Self::try_new`] to validate.
    pub fn new(name: impl AsRef<str>, key: impl Into<String>) -> Self {
        Self { name: name.as_ref().to_lowercase(), key: key.into() }
    }

    /// An entity id that can be stored: a non-empty name without `@`, and an instance id that
    /// [`crate::validate_instance_id`] accepts.
    ///
    /// # Errors
    /// [`EntityIdError`].
    pub fn try_new(name: impl AsRef<str>, key: impl Into<String>) -> Result<Self, EntityIdError> {
        let id = Self::new(name, key);
        id.validate()?;
        Ok(id)
    }

    /// Checks the rules of [`Self::try_new`].
    ///
    /// # Errors
    /// [`EntityIdError`].
    pub fn validate(&self) -> Result<(), EntityIdError> {
        if self.name.is_empty() {
            return Err(EntityIdError::EmptyName);
        }
        if self.name.contains('@') {
            return Err(EntityIdError::AtInName(self.name.clone()));
        }
        crate::ids::validate_instance_id(&self.instance_id())?;
        Ok(())
    }

    /// Parses `@name@key` (the name is lower-cased) and validates it as [`Self::try_new`] does.
    ///
    /// # Errors
    /// [`EntityIdError::NotAnEntity`] when the id has no such form; the others of
    /// [`Self::validate`].
    pub fn from_instance_id(instance_id: &str) -> Result<Self, EntityIdError> {
        let rest = instance_id
            .strip_prefix('@')
            .ok_or_else(|| EntityIdError::NotAnEntity(instance_id.to_owned()))?;
        let (name, key) = rest
            .split_once('@')
            .ok_or_else(|| EntityIdError::NotAnEntity(instance_id.to_owned()))?;
        let id = Self::new(name, key);
        id.validate()?;
        Ok(id)
    }

    /// The (lower-cased) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `@name@key`.
    pub fn instance_id(&self) -> String {
        format!("@{}@{}", self.name, self.key)
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId(@{}@{})", self.name, self.key)
    }
}

impl PartialOrd for EntityId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntityId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // The instance-id string order ('@' separates name and key), DTF's lock order.
        self.instance_id().cmp(&other.instance_id())
    }
}

impl Serialize for EntityId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.instance_id())
    }
}

impl<'de> Deserialize<'de> for EntityId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_instance_id(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_lowercase_the_name_and_round_trip() {
        let id = EntityId::new("Counter", "MyKey");
        assert_eq!(id.instance_id(), "@counter@MyKey");
        assert_eq!(EntityId::from_instance_id("@counter@MyKey").unwrap(), id);
        // A key may contain '@'.
        let at = EntityId::from_instance_id("@a@b@c").unwrap();
        assert_eq!((at.name(), at.key()), ("a", "b@c"));
        assert!(EntityId::from_instance_id("counter@x").is_err());
        assert!(EntityId::from_instance_id("@nokey").is_err());
        assert_eq!(EntityId::try_new("", "k"), Err(EntityIdError::EmptyName));
        assert!(matches!(EntityId::try_new("a@b", "k"), Err(EntityIdError::AtInName(_))));
        assert!(matches!(
            EntityId::try_new("a", "k\u{1}"),
            Err(EntityIdError::InvalidInstanceId(_))
        ));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"@counter@MyKey\"");
        assert_eq!(serde_json::from_str::<EntityId>(&json).unwrap(), id);
    }

    #[test]
    fn ids_order_by_instance_id_string() {
        let mut ids = [
            EntityId::new("b", "1"),
            EntityId::new("a", "2"),
            EntityId::new("ab", "0"),
            EntityId::new("a", "10"),
        ];
        ids.sort();
        let s: Vec<String> = ids.iter().map(EntityId::instance_id).collect();
        let mut expected = s.clone();
        expected.sort();
        assert_eq!(s, expected);
    }
}
