//! Queue lengths and partition ownership of a task hub, and the provider's [`ProviderAdmin`]
//! view (hub status, processing status, readiness).

use super::buffer::ProviderStats;
use super::{AzureStorageOrchestrationService, Inner};
use crate::storage::StorageErrorKind;
use async_trait::async_trait;
use durabletask_core::ProviderError;
use durabletask_core::admin::{
    HubStatus, PartitionStatus, PoisonMessage, PollerStatus, ProcessingStatus, ProviderAdmin,
    QueueLength,
};

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

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<ProviderStats> for ProcessingStatus {
    fn from(s: ProviderStats) -> Self {
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

#[async_trait]
impl ProviderAdmin for AzureStorageOrchestrationService {
    async fn hub_status(&self) -> Result<HubStatus, ProviderError> {
        Ok(HubStatus::from(hub_info(&self.inner).await?))
    }

    async fn partitions(&self) -> Result<Vec<PartitionStatus>, ProviderError> {
        let owners = self.inner.partitions.owners().await.map_err(|e| {
            super::perr(durabletask_core::ProviderErrorKind::Transient, "partitions", e.to_string())
        })?;
        Ok(owners
            .into_iter()
            .map(|o| PartitionStatus {
                control_queue: o.control_queue,
                owner: o.owner,
                next_owner: o.next_owner,
                expires_at: o.expires_at,
            })
            .collect())
    }

    async fn poison_messages(&self, max: u8) -> Result<Vec<PoisonMessage>, ProviderError> {
        let queue = &self.inner.names.poison_queue;
        let peeked = self
            .inner
            .queues
            .peek_messages(queue, max)
            .await
            .map_err(|e| super::provider_error("poison_messages", e))?;
        Ok(peeked
            .into_iter()
            .map(|m| PoisonMessage {
                record: serde_json::from_str(&m.text).unwrap_or(serde_json::Value::String(m.text)),
                id: m.id,
                quarantined_at: m.insertion_time,
            })
            .collect())
    }

    fn processing_status(&self) -> Option<ProcessingStatus> {
        Some(ProcessingStatus::from(self.stats()))
    }

    fn not_ready(&self) -> Option<String> {
        let stats = self.stats();
        let limit = self.inner.settings.lease_interval;
        if let Some(q) = stats.control_queues.iter().find(|q| q.fenced) {
            return Some(format!(
                "control queue {} is fenced: its lease could not be renewed in time (storage slow or unreachable)",
                q.control_queue
            ));
        }
        let silent = stats.control_queues.iter().find(|q| {
            q.since_last_receive.is_some_and(|d| d > limit)
                || q.paused_for.is_some_and(|d| d > limit)
        });
        if let Some(q) = silent {
            return Some(format!(
                "control queue {} has not been received from for longer than the lease interval ({limit:?})",
                q.control_queue
            ));
        }
        (stats.leaked_messages() > 0).then(|| {
            format!("{} held messages are neither buffered nor in flight", stats.leaked_messages())
        })
    }
}

impl super::AzureStorageOrchestrationService {
    /// How many control queues the task hub has in storage, whatever this provider's
    /// `partition_count` says: `None` when the hub does not exist (no work-item queue),
    /// otherwise the number of consecutive `{hub}-control-NN` queues from 00 (probes all
    /// [`crate::MAX_PARTITIONS`] possible names at once). Operator tools use it instead of
    /// assuming a count: a wrong one sends messages to the wrong control queue or to one that
    /// does not exist.
    ///
    /// # Errors
    /// A storage failure other than "not found".
    pub async fn stored_partition_count(&self) -> Result<Option<u8>, ProviderError> {
        let inner = &self.inner;
        let exists = |q: String| async move {
            match inner.queues.approximate_message_count(&q).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == StorageErrorKind::NotFound => Ok(false),
                Err(e) => Err(super::provider_error("stored_partition_count", e)),
            }
        };
        if !exists(inner.names.work_item_queue.clone()).await? {
            return Ok(None);
        }
        let all = crate::ResourceNames::all_possible(&inner.settings.task_hub_name);
        let found = futures::future::join_all(all.control_queues.into_iter().map(exists)).await;
        let mut count = 0u8;
        for f in found {
            if !f? {
                break;
            }
            count += 1;
        }
        Ok(Some(count))
    }
}
