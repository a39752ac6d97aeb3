//! What a provider reports about its task hub and its own processing, for health endpoints,
//! dashboards and operator tools, whatever the backend: [`ProviderAdmin`] and its serializable
//! views.

use async_trait::async_trait;
use serde::Serialize;
use std::fmt;

use crate::provider::ProviderError;

/// One queue and its approximate length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueLength {
    /// Queue name.
    pub name: String,
    /// Approximate number of messages.
    pub approximate_length: u64,
}

/// A task hub's queues and partition ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubStatus {
    /// Whether the task hub's resources exist.
    pub exists: bool,
    /// The task hub name.
    pub task_hub: String,
    /// Number of control queues (partitions).
    pub partition_count: u8,
    /// Control queues with their approximate lengths.
    pub control_queues: Vec<QueueLength>,
    /// Approximate length of the work-item (activity) queue.
    pub work_item_queue_length: u64,
    /// Approximate length of the poison queue (undecodable messages).
    pub poison_queue_length: u64,
    /// Control queues owned by this process.
    pub owned_partitions: Vec<String>,
}

/// What a worker's provider is doing, from its in-memory bookkeeping (no storage calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessingStatus {
    /// Messages held in memory; polling pauses at the buffer threshold of these.
    pub held_messages: usize,
    /// Messages waiting for their instance's next work item.
    pub buffered_messages: usize,
    /// Messages in a prefetch, a prepared or a locked work item.
    pub in_flight_messages: usize,
    /// Held messages that are neither buffered nor in flight (always 0 unless bookkeeping leaked).
    pub leaked_messages: usize,
    /// Locked activity work items.
    pub active_activities: usize,
    /// One entry per owned control queue with a running poller.
    pub pollers: Vec<PollerStatus>,
}

/// One control-queue poller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PollerStatus {
    /// The control queue.
    pub control_queue: String,
    /// Milliseconds since its last successful receive, if any.
    pub ms_since_last_receive: Option<u64>,
    /// Milliseconds it has been paused at the buffer threshold, while it is.
    pub ms_paused: Option<u64>,
    /// Fenced: the partition's lease renewal is overdue, so it neither receives nor checkpoints
    /// until a renewal proves it is still ours.
    pub fenced: bool,
}

/// Who owns a partition, as the provider's lease store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// The control queue.
    pub control_queue: String,
    /// The worker named as owner, if any.
    pub owner: Option<String>,
    /// A worker waiting to take it over.
    pub next_owner: Option<String>,
    /// When the ownership expires unless renewed, where the store records it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<time::OffsetDateTime>,
}

/// A quarantined message (one the provider could never decode), as the poison queue holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoisonMessage {
    /// The poison-queue message id.
    pub id: String,
    /// When it was quarantined.
    #[serde(with = "time::serde::rfc3339")]
    pub quarantined_at: time::OffsetDateTime,
    /// The quarantine record (source queue, original message id, dequeue count, reason, the
    /// original text or the blob holding it), as JSON.
    pub record: serde_json::Value,
}

/// The administrative view of a provider, implemented by every backend; the worker host's
/// health and the operator tools use only this.
#[async_trait]
pub trait ProviderAdmin: Send + Sync + fmt::Debug {
    /// Queue lengths and partition ownership of the task hub (storage calls).
    ///
    /// # Errors
    /// When storage fails.
    async fn hub_status(&self) -> Result<HubStatus, ProviderError>;

    /// Every partition and its owner across all workers (storage calls); empty for a provider
    /// without partitions.
    ///
    /// # Errors
    /// When storage fails.
    async fn partitions(&self) -> Result<Vec<PartitionStatus>, ProviderError> {
        Ok(Vec::new())
    }

    /// Up to `max` (1-32) quarantined messages, oldest first, read without removing them;
    /// empty for a provider that quarantines nothing.
    ///
    /// # Errors
    /// When storage fails, or `max` is out of range.
    async fn poison_messages(&self, max: u8) -> Result<Vec<PoisonMessage>, ProviderError> {
        let _ = max;
        Ok(Vec::new())
    }

    /// The in-memory processing state (no storage calls), for a provider that keeps one.
    fn processing_status(&self) -> Option<ProcessingStatus> {
        None
    }

    /// Why this worker is not ready, judged from its own bookkeeping without storage calls (a
    /// fenced or silent partition, leaked bookkeeping); `None` when nothing is wrong.
    fn not_ready(&self) -> Option<String> {
        None
    }
}
