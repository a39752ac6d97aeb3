//! [`AzureStorageOrchestrationService`]: the core provider traits over Azure Storage.
//!
//! * `buffer`: the worker-wide control-queue bookkeeping (buffered, held, in-flight and prepared
//!   messages, the history cache) and [`ProviderStats`].
//! * `poller`: one control-queue poller per owned partition.
//! * `messages`: decoding, poison handling, visibility changes and deletes of received messages.
//! * `prefetch`: a buffered batch, its history and row, the admission rules -> a prepared work
//!   item.
//! * `listener`: the partition listener that starts, drains and drops pollers.
//! * `hub`: queue lengths and ownership ([`HubInfo`]).
//!
//! Life of an instance's messages: a poller receives and decodes them (large envelopes are
//! downloaded; undecodable ones back off and are quarantined), re-arms timers that are not due
//! yet, and buffers them by instance. An instance with buffered messages and no work in progress
//! becomes *busy*: its batch is taken and a prefetch task loads its history (from the owner's
//! cache when the sentinel ETag is known) and, when needed, its Instances row; applies the
//! admission rules; and queues the result as a prepared work item. Messages that arrive while an
//! instance is busy wait in the buffer for the next work item (one work item per instance at a
//! time).
//! * `worker`: [`OrchestrationService`](durabletask_core::OrchestrationService), the checkpoint
//!   in its exact order, the activity work-item queue.
//! * `client`: [`OrchestrationServiceClient`](durabletask_core::OrchestrationServiceClient): create,
//!   send, state, history, query, purge.

mod buffer;
mod checkpoint;
mod client;
mod hub;
mod listener;
mod messages;
mod outbound;
mod poller;
mod prefetch;
mod session;
#[cfg(test)]
mod tests;
mod tracking;
mod worker;

use crate::error::{Error, Result};
use crate::large::LargePayloads;
use crate::naming::ResourceNames;
use crate::partition_store::lease_stores;
use crate::settings::{AzureStorageSettings, PartitionManagerKind};
use crate::storage::{
    AzureStorage, BlobStore, QueueStore, RetryPolicy, RetryingStorage, StorageAccount,
    StorageCounters, StorageError, StorageErrorKind, StorageOpCounts, TableStore,
};
use durabletask_core::{Clock, ProviderError, ProviderErrorKind, SystemClock};
use durabletask_partition_manager::{ManagerKind, PartitionManager, PartitionManagerSettings};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

pub use buffer::{ControlQueueStats, ProviderStats};
pub use hub::HubInfo;

/// The storage clients a provider runs over. [`StorageStack::azure`] builds the real one; tests
/// wrap the same traits with fault injection.
#[derive(Debug, Clone)]
pub struct StorageStack {
    /// Queue operations.
    pub queues: Arc<dyn QueueStore>,
    /// Table operations.
    pub tables: Arc<dyn TableStore>,
    /// Blob operations.
    pub blobs: Arc<dyn BlobStore>,
    /// Counters every call is recorded in.
    pub counters: Arc<StorageCounters>,
    /// URL of the task hub's large-message container (how payload URLs are formed and checked).
    pub large_messages_container_url: String,
}

impl StorageStack {
    /// The Azure SDK stack for `account`, with `settings.storage_operation_timeout` per call.
    pub fn azure(account: &StorageAccount, settings: &AzureStorageSettings) -> Self {
        let storage = AzureStorage::new(account, settings.storage_operation_timeout);
        let names = ResourceNames::new(&settings.task_hub_name, settings.partition_count);
        let counters = storage.counters();
        let storage = Arc::new(storage);
        Self {
            queues: storage.clone(),
            tables: storage.clone(),
            blobs: storage,
            counters,
            large_messages_container_url: account
                .blob_container_url(&names.large_messages_container),
        }
    }
}

/// A point in the checkpoint and activity-completion paths where tests can simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrashPoint {
    /// Outbound messages of an orchestration checkpoint were sent; history not yet written.
    AfterSend,
    /// History was written; the Instances row not yet.
    AfterHistory,
    /// The Instances row was written; the triggering messages not yet deleted.
    AfterInstances,
    /// About to delete the triggering messages (same place as `AfterInstances`, named for tests
    /// that think of it from the queue's side).
    BeforeDelete,
    /// An activity's response was sent; the work-item message not yet deleted.
    ActivityAfterSend,
}

/// Decides, at each [`CrashPoint`], whether the provider "crashes" there: it stops the operation
/// and returns an error without touching the work item again (no abandon), exactly as a process
/// that died would leave it. Messages reappear when their visibility timeout expires.
pub trait CrashHook: Send + Sync + fmt::Debug {
    /// `true` to crash at `point` while working on `instance_id`.
    fn crash_at(&self, point: CrashPoint, instance_id: &str) -> bool;
}

/// The Azure Storage provider: implements both
/// [`OrchestrationService`](durabletask_core::OrchestrationService) and
/// [`OrchestrationServiceClient`](durabletask_core::OrchestrationServiceClient). Cheap to clone;
/// clones share everything.
#[derive(Clone)]
pub struct AzureStorageOrchestrationService {
    inner: Arc<Inner>,
}

impl fmt::Debug for AzureStorageOrchestrationService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStorageOrchestrationService")
            .field("task_hub", &self.inner.settings.task_hub_name.as_str())
            .field("worker_id", &self.inner.settings.worker_id)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) settings: AzureStorageSettings,
    pub(crate) names: ResourceNames,
    pub(crate) queues: Arc<dyn QueueStore>,
    pub(crate) tables: Arc<dyn TableStore>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) counters: Arc<StorageCounters>,
    pub(crate) large: LargePayloads,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) partitions: Arc<dyn PartitionManager>,
    pub(crate) control: buffer::ControlState,
    pub(crate) activities: session::ActivityState,
    /// Enforces `max_storage_operation_concurrency` on every storage call (under the retries,
    /// so a retry's back-off holds no permit).
    pub(crate) limiter: Arc<crate::storage::ConcurrencyLimitedStorage>,
    pub(crate) crash_hook: Option<Arc<dyn CrashHook>>,
    pub(crate) sequence: AtomicI64,
}

impl AzureStorageOrchestrationService {
    /// A provider for `settings` over the account behind `account`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when a setting is out of range.
    pub fn new(settings: AzureStorageSettings, account: &StorageAccount) -> Result<Self> {
        let stack = StorageStack::azure(account, &settings);
        Self::with_storage(settings, stack)
    }

    /// A provider over an explicit storage stack (fault injection, counting decorators).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when a setting is out of range.
    pub fn with_storage(settings: AzureStorageSettings, storage: StorageStack) -> Result<Self> {
        Self::build(settings, storage, Arc::new(SystemClock), None)
    }

    /// Like [`with_storage`](Self::with_storage) with a clock (timer visibility, timestamps) and an
    /// optional crash hook, for reliability tests.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when a setting is out of range.
    pub fn with_test_hooks(
        settings: AzureStorageSettings,
        storage: StorageStack,
        clock: Arc<dyn Clock>,
        crash_hook: Option<Arc<dyn CrashHook>>,
    ) -> Result<Self> {
        Self::build(settings, storage, clock, crash_hook)
    }

    fn build(
        settings: AzureStorageSettings,
        storage: StorageStack,
        clock: Arc<dyn Clock>,
        crash_hook: Option<Arc<dyn CrashHook>>,
    ) -> Result<Self> {
        settings.validate()?;
        let names = ResourceNames::new(&settings.task_hub_name, settings.partition_count);
        let kind = match settings.partition_manager {
            PartitionManagerKind::Table => ManagerKind::Table,
            PartitionManagerKind::SafeBlob => ManagerKind::SafeBlob,
            PartitionManagerKind::LegacyBlob => ManagerKind::LegacyBlob,
        };
        let mut pm = PartitionManagerSettings::new(settings.task_hub_name.as_str());
        pm.worker_id = settings.worker_id.clone();
        pm.partition_count = settings.partition_count;
        pm.lease_interval = settings.lease_interval;
        pm.lease_renew_interval = settings.lease_renew_interval;
        pm.lease_acquire_interval = settings.lease_acquire_interval;
        pm.operation_timeout = settings.partition_table_operation_timeout;
        // A fence lasts at most as long as the messages held for the partition stay invisible:
        // after that they are visible to whoever owns it anyway.
        pm.max_fenced_duration = settings.control_queue_visibility_timeout;
        if pm.fence_margin >= settings.lease_interval / 2 {
            pm.fence_margin = settings.lease_interval / 4;
        }
        // At most `max_storage_operation_concurrency` calls of any kind at once (partition
        // leases included), then retries of the calls that are safe to repeat on transient
        // failures (see `RetryingStorage`).
        let limiter = crate::storage::ConcurrencyLimitedStorage::limit(
            &storage,
            settings.max_storage_operation_concurrency,
        );
        let retrying = Arc::new(RetryingStorage::new(
            limiter.clone(),
            limiter.clone(),
            limiter.clone(),
            RetryPolicy::default(),
        ));
        let storage = StorageStack {
            queues: retrying.clone(),
            tables: retrying.clone(),
            blobs: retrying,
            ..storage
        };
        let stores = lease_stores(storage.tables.clone(), storage.blobs.clone(), &names);
        let partitions = durabletask_partition_manager::create(
            kind,
            pm,
            stores,
            Arc::new(durabletask_partition_manager::clock::SystemClock),
        )
        .map_err(|e| Error::InvalidSetting {
            setting: "partition manager",
            reason: e.to_string(),
        })?;
        let large = LargePayloads::new(
            storage.blobs.clone(),
            names.large_messages_container.clone(),
            storage.large_messages_container_url.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                control: buffer::ControlState::new(&names),
                activities: session::ActivityState::default(),
                settings,
                names,
                queues: storage.queues,
                tables: storage.tables,
                blobs: storage.blobs,
                counters: storage.counters,
                large,
                clock,
                partitions,
                limiter,
                crash_hook,
                sequence: AtomicI64::new(0),
            }),
        })
    }

    /// The limiter every storage call goes through (`max_storage_operation_concurrency`): its
    /// call count and the most calls it saw running at once.
    pub fn storage_limiter(&self) -> &crate::storage::ConcurrencyLimitedStorage {
        &self.inner.limiter
    }

    /// Storage calls made so far, by kind.
    pub fn storage_counters(&self) -> StorageOpCounts {
        self.inner.counters.snapshot()
    }

    /// The shared counters (for decorators that count too).
    pub fn counters(&self) -> Arc<StorageCounters> {
        self.inner.counters.clone()
    }

    /// The task hub's resource names.
    pub fn resource_names(&self) -> &ResourceNames {
        &self.inner.names
    }

    /// The provider settings.
    pub fn azure_settings(&self) -> &AzureStorageSettings {
        &self.inner.settings
    }

    /// The partition manager (ownership queries for health endpoints and tests).
    pub fn partition_manager(&self) -> &Arc<dyn PartitionManager> {
        &self.inner.partitions
    }

    /// The provider's in-memory bookkeeping: held, buffered and in-flight control-queue
    /// messages, cached histories, locked activities, and each running poller's last successful
    /// receive and pause. Cheap (no storage calls); for health endpoints and audits.
    pub fn stats(&self) -> ProviderStats {
        let active = self.inner.activities.active.load(std::sync::atomic::Ordering::Relaxed);
        let mut stats = self.inner.control.stats(active);
        for q in &mut stats.control_queues {
            q.fenced = self.inner.partitions.is_held(&q.control_queue)
                && !self.inner.partitions.is_owned(&q.control_queue);
        }
        stats
    }

    /// Queue lengths and partition ownership of the task hub.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn hub_info(&self) -> Result<HubInfo, ProviderError> {
        hub::hub_info(&self.inner).await
    }
}

/// Maps a storage failure to the provider contract's error.
pub(crate) fn provider_error(op: &'static str, e: StorageError) -> ProviderError {
    let kind = match e.kind() {
        StorageErrorKind::NotFound => ProviderErrorKind::NotFound,
        StorageErrorKind::Conflict => ProviderErrorKind::Conflict,
        StorageErrorKind::PreconditionFailed => ProviderErrorKind::PreconditionFailed,
        StorageErrorKind::Throttled => ProviderErrorKind::Throttled,
        StorageErrorKind::Transient => ProviderErrorKind::Transient,
        StorageErrorKind::InvalidInput => ProviderErrorKind::InvalidInput,
        StorageErrorKind::Unauthorized | StorageErrorKind::Permanent => {
            ProviderErrorKind::Permanent
        }
    };
    ProviderError::new(kind, op, e.to_string()).with_source(e)
}

pub(crate) fn perr(
    kind: ProviderErrorKind,
    op: &'static str,
    msg: impl Into<String>,
) -> ProviderError {
    ProviderError::new(kind, op, msg)
}

/// Visibility delays are capped by the queue service's 7-day maximum.
pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600 - 60);
