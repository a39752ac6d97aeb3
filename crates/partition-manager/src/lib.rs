//! Control-queue partition ownership for durabletask-rs: which worker listens to which control
//! queue of a task hub.
//!
//! Three implementations of one [`PartitionManager`] trait, matching DurableTask.AzureStorage:
//!
//! * [`ManagerKind::Table`] (default, DTF V3): one `{Hub}Partitions` row per control queue with
//!   `CurrentOwner`, `NextOwner`, `OwnedSince`, `LastRenewal`, `ExpiresAt`, `IsDraining`; every
//!   write is ETag-conditional; stealing is cooperative (the thief sets `NextOwner`, the owner
//!   drains and releases, then the thief claims).
//! * [`ManagerKind::SafeBlob`] (DTF V2): `intent/` leases are balanced and stolen; `ownership/`
//!   leases are only acquired by the intent holder and only when free or expired.
//! * [`ManagerKind::LegacyBlob`] (DTF V1): one stealable `default/` lease per partition.
//!
//! Storage is reached only through [`store::PartitionTableStore`] and [`store::LeaseBlobStore`];
//! the Azure implementations live in the provider crate, in-memory ones in [`memory`].
//!
//! A worker listens to a partition only while it holds it and is not draining it. On top of the
//! storage protocol every owned partition carries a local, monotonic deadline (renewal *sent* +
//! lease interval − fence margin): when it passes without a successful renewal the partition is
//! *fenced* even if storage is unreachable: [`PartitionManager::is_owned`] turns false, so the
//! provider stops dequeues and checkpoints, and [`PartitionListener::on_fenced`] is called. A
//! timed-out renewal is unknown, not lost: the provider keeps the partition's buffered work, and
//! a later renewal that proves the lease is still ours resumes it
//! ([`PartitionListener::on_resumed`]). Storage naming another owner, or a fence longer than
//! [`PartitionManagerSettings::max_fenced_duration`], ends in [`PartitionListener::on_lost`].
//!
//! ```no_run
//! use durabletask_partition_manager::{
//!     clock::SystemClock, memory, LeaseStores, ManagerKind, Partition, PartitionListener,
//!     PartitionManagerSettings,
//! };
//! use std::sync::Arc;
//!
//! #[derive(Debug)]
//! struct Queues;
//! #[async_trait::async_trait]
//! impl PartitionListener for Queues {
//!     async fn on_acquired(&self, p: &Partition) { /* start polling p.control_queue */ }
//!     async fn drain(&self, p: &Partition) { /* stop polling; wait for in-flight work */ }
//!     async fn on_lost(&self, p: &Partition) { /* stop now; abandon prefetched messages */ }
//! }
//!
//! # async fn demo() -> durabletask_partition_manager::Result<()> {
//! let clock = Arc::new(SystemClock);
//! let stores = LeaseStores {
//!     table: memory::InMemoryPartitionTable::new(),
//!     blobs: memory::InMemoryLeaseBlobs::new(clock.clone()),
//! };
//! let settings = PartitionManagerSettings::new("MyHub");
//! let manager = durabletask_partition_manager::create(ManagerKind::Table, settings, stores, clock)?;
//! manager.create_lease_store().await?;
//! manager.start(Arc::new(Queues)).await?;
//! // ... serve; before each dequeue and checkpoint: manager.is_owned("myhub-control-00")
//! manager.stop(std::time::Duration::from_secs(600)).await?;
//! # Ok(()) }
//! ```
//!
//! Tracing: every event has target [`TRACE_TARGET`] and fields `event` (DTF names:
//! `LeaseAcquisitionSucceeded`, `LeaseStealingSucceeded`, `LeaseRenewalFailed`, `LeaseReleased`,
//! `PartitionLost`, `PartitionManagerInfo`, `PartitionManagerWarning`), `task_hub`, `worker`,
//! `partition`. The crate never installs a subscriber.

#![warn(missing_docs, unreachable_pub)]

mod blob;
pub mod clock;
pub mod conformance;
mod core;
pub mod memory;
pub mod settings;
pub mod store;
mod table;

pub use crate::core::TRACE_TARGET;
pub use settings::{ManagerKind, PartitionManagerSettings, SettingsError};

use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One control-queue partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// 0-based partition index (`hash(instance) % partition_count`).
    pub index: u8,
    /// `{hub lower}-control-NN`.
    pub control_queue: String,
}

/// Who owns a partition, as the lease store says (not this process's local view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    /// The control queue.
    pub control_queue: String,
    /// The worker named as owner, if any (a lease that has expired may still name one).
    pub owner: Option<String>,
    /// A worker waiting to take the partition over (table `NextOwner`; the holder of the
    /// safe-blob intent lease when it is not the owner).
    pub next_owner: Option<String>,
    /// When the ownership expires unless renewed (table `ExpiresAt`; blob leases do not say).
    pub expires_at: Option<time::OffsetDateTime>,
}

/// What the provider does when ownership changes. The manager calls these in order per
/// partition and never concurrently for the same partition, except that `on_lost` may interrupt
/// a running `drain`.
///
/// Lifecycle: `on_acquired` → (`on_fenced` → `on_resumed`)* → (`drain` resolves | `on_lost`).
/// After `drain` resolves the partition is no longer the provider's (the manager then releases it
/// in storage); if the drain exceeds [`PartitionManagerSettings::drain_timeout`] the manager calls
/// `on_lost` and releases. A fenced partition may also end in `on_lost` directly.
#[async_trait]
pub trait PartitionListener: Send + Sync + fmt::Debug {
    /// Start listening to the control queue. Should return quickly.
    async fn on_acquired(&self, partition: &Partition);
    /// Stop fetching from the queue at once; resolve when in-flight work of this partition has
    /// finished (checkpointed or abandoned).
    async fn drain(&self, partition: &Partition);
    /// The partition was lost (stolen, expired, self-fenced): stop immediately and abandon
    /// prefetched and in-flight work; its checkpoints will fail their ETag conditions anyway.
    async fn on_lost(&self, partition: &Partition);
    /// The lease could not be renewed before its local deadline (storage slow or unreachable):
    /// `is_owned` is false until [`PartitionListener::on_resumed`]; stop dequeuing and
    /// checkpointing, but keep buffered work. Default: nothing (callers check `is_owned`).
    async fn on_fenced(&self, _partition: &Partition) {}
    /// A renewal proved a fenced lease is still ours: `is_owned` is true again.
    async fn on_resumed(&self, _partition: &Partition) {}
}

/// Errors of the partition managers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A storage call failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// `start` was called twice.
    #[error("the partition manager was already started")]
    AlreadyStarted,
    /// Graceful stop did not finish in time; the remaining partitions were abandoned (`on_lost`).
    #[error("graceful stop timed out with {still_owned} partition(s) still owned")]
    StopTimedOut {
        /// Partitions that had not been released.
        still_owned: usize,
    },
}

/// Result of partition-manager calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Decides which control-queue partitions this worker listens to.
#[async_trait]
pub trait PartitionManager: Send + Sync + fmt::Debug {
    /// The variant.
    fn kind(&self) -> ManagerKind;
    /// This worker's owner name.
    fn worker_id(&self) -> &str;
    /// Creates the lease store (table + empty rows, or container + lease blobs + `taskhub.json`);
    /// idempotent (DTF `CreateLeaseStore` + `CreateLease`).
    async fn create_lease_store(&self) -> Result<()>;
    /// Deletes the lease store (table or container).
    async fn delete_lease_store(&self) -> Result<()>;
    /// Starts the background loops; ownership changes are reported to `listener`.
    async fn start(&self, listener: Arc<dyn PartitionListener>) -> Result<()>;
    /// Graceful stop: drain every owned partition, release it in storage so that other workers
    /// take over without waiting for expiry, then end the loops. After `timeout` the remaining
    /// partitions are abandoned (`on_lost`) and [`Error::StopTimedOut`] is returned.
    async fn stop(&self, timeout: Duration) -> Result<()>;
    /// Ends the loops at once without storage writes or listener calls (leases expire); for a
    /// process that is going away.
    fn abort(&self);
    /// Whether this worker owns `control_queue` right now: held and within the local fencing
    /// deadline (true while draining, so in-flight work can checkpoint). Check before every
    /// dequeue and checkpoint.
    fn is_owned(&self, control_queue: &str) -> bool;
    /// Whether this worker still holds `control_queue` locally, fenced or not: its buffered work
    /// is kept (true from `on_acquired` until `on_lost` or the release after a drain).
    fn is_held(&self, control_queue: &str) -> bool;
    /// The partitions held now and not fenced (listening or draining).
    fn owned_partitions(&self) -> Vec<Partition>;
    /// Every partition's owner as the lease store records it, in partition order (one read of
    /// the store; for operators and dashboards).
    async fn owners(&self) -> Result<Vec<PartitionOwner>>;
}

/// The stores a manager may use: the table variant uses `table`, the blob variants `blobs`.
#[derive(Debug, Clone)]
pub struct LeaseStores {
    /// `{Hub}Partitions`.
    pub table: Arc<dyn store::PartitionTableStore>,
    /// `{hub}-leases`.
    pub blobs: Arc<dyn store::LeaseBlobStore>,
}

/// Builds the manager of `kind` after validating `settings`.
pub fn create(
    kind: ManagerKind,
    settings: PartitionManagerSettings,
    stores: LeaseStores,
    clock: Arc<dyn clock::Clock>,
) -> Result<Arc<dyn PartitionManager>> {
    settings.validate(kind)?;
    let core = Arc::new(core::Core::new(kind, settings, clock));
    Ok(match kind {
        ManagerKind::Table => Arc::new(table::TablePartitionManager::new(core, stores.table)),
        ManagerKind::SafeBlob | ManagerKind::LegacyBlob => {
            Arc::new(blob::BlobPartitionManager::new(core, stores.blobs))
        }
    })
}

/// Runs `fut` under the operation timeout, mapping elapsed to `Unavailable`.
pub(crate) async fn timed<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = store::StoreResult<T>>,
) -> store::StoreResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(store::StoreError::Unavailable(format!("timed out after {timeout:?}"))),
    }
}
