//! Azure Storage wiring shared by the worker host and the `durabletask` CLI: building the provider
//! from [`HostSettings`] and a serializable view of its task hub.

use durabletask_azure_storage::{AzureStorageOrchestrationService, HubInfo};
use serde::Serialize;

use crate::config::{ConfigError, HostSettings};

/// The Azure Storage provider for `settings` (connection string, emulator, or account + token
/// credential). Nothing is sent to storage yet.
///
/// # Errors
/// [`ConfigError`] for a bad connection string, credential or setting.
pub fn azure_service(
    settings: &HostSettings,
) -> Result<AzureStorageOrchestrationService, ConfigError> {
    let account = settings.connection.storage_account()?;
    Ok(AzureStorageOrchestrationService::new(settings.provider.clone(), &account)?)
}

/// One queue and its approximate length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueLength {
    /// Queue name.
    pub name: String,
    /// Approximate number of messages.
    pub approximate_length: u64,
}

/// A task hub's queues and partition ownership (from the provider's `hub_info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubStatus {
    /// Whether the task hub's resources exist.
    pub exists: bool,
    /// The task hub name.
    pub task_hub: String,
    /// Number of control queues.
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

impl From<HubInfo> for HubStatus {
    fn from(info: HubInfo) -> Self {
        Self {
            exists: info.exists,
            task_hub: info.task_hub,
            partition_count: info.partition_count,
            control_queues: info
                .control_queues
                .into_iter()
                .map(|(name, approximate_length)| QueueLength { name, approximate_length })
                .collect(),
            work_item_queue_length: info.work_item_queue_length,
            poison_queue_length: info.poison_queue_length,
            owned_partitions: info.owned_partitions,
        }
    }
}

/// What the provider's control-queue side is doing, from its in-memory bookkeeping (no storage
/// calls). Serializable for health endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessingStatus {
    /// Messages held in memory; polling pauses at `control_queue_buffer_threshold` of these.
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

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<durabletask_azure_storage::ProviderStats> for ProcessingStatus {
    fn from(s: durabletask_azure_storage::ProviderStats) -> Self {
        Self {
            held_messages: s.held_messages,
            buffered_messages: s.buffered_messages,
            in_flight_messages: s.in_flight_messages,
            leaked_messages: s.leaked_messages(),
            active_activities: s.active_activities,
            pollers: s
                .control_queues
                .into_iter()
                .map(|q| PollerStatus {
                    ms_since_last_receive: q.since_last_receive.map(millis),
                    ms_paused: q.paused_for.map(millis),
                    fenced: q.fenced,
                    control_queue: q.control_queue,
                })
                .collect(),
        }
    }
}
