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
