//! The storage the partition managers need, as small object-safe traits.
//!
//! The Azure implementations live in the provider crate (`durabletask_azure_storage::partition_store`);
//! [`crate::memory`] has in-memory ones for tests. Implementations map the service's answers to
//! [`StoreError`]: a failed ETag condition or an existing row (412/409) is [`StoreError::LostRace`],
//! a lease held by someone else or a stale lease ID (409/412) is [`StoreError::LeaseLost`].

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;

/// A storage failure, classified for the managers' decisions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A conditional write lost to a concurrent writer (412 stale ETag, 409 row exists).
    #[error("lost the race: {0}")]
    LostRace(String),
    /// The blob lease is held by someone else, or ours is no longer valid (409/412).
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The row, blob or container does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else (timeouts, throttling, outages): the outcome of a write is unknown.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Result of a lease-store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// One row of `{Hub}Partitions` (PartitionKey `""`, RowKey = control queue name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionRow {
    /// RowKey: the control queue name.
    pub row_key: String,
    /// The ETag as read; required for every write.
    pub etag: String,
    /// `CurrentOwner`.
    pub current_owner: Option<String>,
    /// `NextOwner`: a worker waiting for the current owner to drain and release.
    pub next_owner: Option<String>,
    /// `OwnedSince`.
    pub owned_since: Option<OffsetDateTime>,
    /// `LastRenewal`.
    pub last_renewal: Option<OffsetDateTime>,
    /// `ExpiresAt`.
    pub expires_at: Option<OffsetDateTime>,
    /// `IsDraining`.
    pub is_draining: bool,
}

/// The `{Hub}Partitions` table.
#[async_trait]
pub trait PartitionTableStore: Send + Sync + fmt::Debug {
    /// Creates the table if it does not exist.
    async fn create_if_not_exists(&self) -> StoreResult<()>;
    /// Deletes the table if it exists.
    async fn delete_if_exists(&self) -> StoreResult<()>;
    /// Every row, each with its ETag.
    async fn list(&self) -> StoreResult<Vec<PartitionRow>>;
    /// Inserts an empty row for `row_key`; `Ok(false)` if it already exists.
    async fn insert_empty(&self, row_key: &str) -> StoreResult<bool>;
    /// Replaces the row if its ETag still equals `row.etag`; returns the new ETag.
    /// `LostRace` on 412 (or 404/409: the row changed under us).
    async fn replace(&self, row: &PartitionRow) -> StoreResult<String>;
}

/// The JSON body of a lease blob (`{"PartitionId","Owner","Token","Epoch"}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LeaseBody {
    /// The control queue name.
    #[serde(rename = "PartitionId")]
    pub partition_id: String,
    /// The owning worker, `None` when released.
    #[serde(rename = "Owner", default)]
    pub owner: Option<String>,
    /// The owner's lease ID, published so that a thief can `ChangeLease`.
    #[serde(rename = "Token", default)]
    pub token: Option<String>,
    /// Incremented on every acquisition.
    #[serde(rename = "Epoch", default)]
    pub epoch: i64,
}

/// The `{hub}-leases` container and its leased blobs.
#[async_trait]
pub trait LeaseBlobStore: Send + Sync + fmt::Debug {
    /// Creates the container if it does not exist.
    async fn create_container_if_not_exists(&self) -> StoreResult<()>;
    /// Deletes the container if it exists.
    async fn delete_container_if_exists(&self) -> StoreResult<()>;
    /// Names of the blobs starting with `prefix`.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>>;
    /// A blob's body, `None` if absent.
    async fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Writes a blob, under `lease_id` when leased; `LeaseLost` if the lease does not match.
    async fn write(&self, name: &str, body: Vec<u8>, lease_id: Option<&str>) -> StoreResult<()>;
    /// Acquires the blob's lease with our (GUID) ID; `LeaseLost` if it is held.
    async fn acquire(&self, name: &str, duration: Duration, lease_id: &str) -> StoreResult<()>;
    /// Renews our lease; `LeaseLost` if it is not ours any more.
    async fn renew(&self, name: &str, lease_id: &str) -> StoreResult<()>;
    /// Releases our lease; `LeaseLost` if it is not ours any more.
    async fn release(&self, name: &str, lease_id: &str) -> StoreResult<()>;
    /// Replaces the lease ID `current` with `proposed` (stealing); `LeaseLost` if `current` is stale.
    async fn change(&self, name: &str, current: &str, proposed: &str) -> StoreResult<()>;
}
