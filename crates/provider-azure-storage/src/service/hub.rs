//! Queue lengths and partition ownership of a task hub.

use super::Inner;
use crate::storage::StorageErrorKind;
use durabletask_core::ProviderError;

/// Queue lengths and ownership of a task hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubInfo {
    /// Whether the hub's queues exist.
    pub exists: bool,
    /// The task hub name.
    pub task_hub: String,
    /// Number of control queues.
    pub partition_count: u8,
    /// Control queues with their approximate lengths.
    pub control_queues: Vec<(String, u64)>,
    /// Approximate length of the work-item queue.
    pub work_item_queue_length: u64,
    /// Approximate length of the poison queue.
    pub poison_queue_length: u64,
    /// Control queues this process owns now.
    pub owned_partitions: Vec<String>,
}

pub(crate) async fn hub_info(inner: &Inner) -> Result<HubInfo, ProviderError> {
    let count = |q: String| async move {
        match inner.queues.approximate_message_count(&q).await {
            Ok(n) => Ok((q, Some(n))),
            Err(e) if e.kind() == StorageErrorKind::NotFound => Ok((q, None)),
            Err(e) => Err(super::provider_error("hub_info", e)),
        }
    };
    let (_, work) = count(inner.names.work_item_queue.clone()).await?;
    let (_, poison) = count(inner.names.poison_queue.clone()).await?;
    let mut control = Vec::new();
    for q in &inner.names.control_queues {
        let (q, n) = count(q.clone()).await?;
        control.push((q, n.unwrap_or(0)));
    }
    Ok(HubInfo {
        exists: work.is_some(),
        task_hub: inner.settings.task_hub_name.as_str().to_owned(),
        partition_count: inner.settings.partition_count,
        control_queues: control,
        work_item_queue_length: work.unwrap_or(0),
        poison_queue_length: poison.unwrap_or(0),
        owned_partitions: inner
            .partitions
            .owned_partitions()
            .into_iter()
            .map(|p| p.control_queue)
            .collect(),
    })
}
