//! Provider settings with DurableTask.AzureStorage's defaults, validated before anything touches
//! storage.

use crate::error::{Error, Result};
use crate::naming::TaskHubName;
use std::time::Duration;

/// Which partition manager balances control queues between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartitionManagerKind {
    /// `{hub}Partitions` table with ETag-guarded rows and cooperative stealing (DTF V3, default).
    #[default]
    Table,
    /// Blob intent + ownership leases (DTF V2).
    SafeBlob,
    /// One blob lease per partition with stealing (DTF V1).
    LegacyBlob,
}

/// Settings of the Azure Storage provider. Field defaults match DurableTask.AzureStorage's
/// `AzureStorageOrchestrationServiceSettings` unless a field's doc says otherwise.
#[derive(Debug, Clone)]
pub struct AzureStorageSettings {
    /// The task hub: prefix of every queue, table and container.
    pub task_hub_name: TaskHubName,
    /// Number of control queues (1-16, default 4). Must never change for a live hub.
    pub partition_count: u8,
    /// Messages fetched per control-queue receive (1-32, default 32).
    pub control_queue_batch_size: u8,
    /// Worker-wide limit of buffered control-queue messages before polling pauses (default 64).
    pub control_queue_buffer_threshold: usize,
    /// Visibility timeout of received control-queue messages (default 5 min).
    pub control_queue_visibility_timeout: Duration,
    /// Visibility timeout of received work-item messages (default 5 min).
    pub work_item_queue_visibility_timeout: Duration,
    /// Concurrent orchestration work items (default 100).
    pub max_concurrent_orchestration_work_items: usize,
    /// Concurrent activity work items (default 10).
    pub max_concurrent_activity_work_items: usize,
    /// Concurrent storage calls of one worker (default 25 per CPU).
    pub max_storage_operation_concurrency: usize,
    /// Longest wait between polls of an idle queue (default 30 s).
    pub max_queue_polling_interval: Duration,
    /// This worker's name in partition leases (default: host name + process ID).
    pub worker_id: String,
    /// Partition manager variant (default table).
    pub partition_manager: PartitionManagerKind,
    /// Lease duration (default 30 s; blob leases allow 15-60 s).
    pub lease_interval: Duration,
    /// How often owned leases are renewed (default 10 s).
    pub lease_renew_interval: Duration,
    /// How often free or stealable leases are looked for (default 10 s).
    pub lease_acquire_interval: Duration,
    /// Serialized queue messages above this many UTF-8 bytes go to a gzip blob (default 45 KiB).
    pub max_queue_payload_bytes: usize,
    /// Table properties above this many UTF-16 bytes go to a gzip blob (default 60 KiB).
    pub max_table_property_bytes: usize,
    /// Largest serialized message a client or orchestration may send (inputs, event payloads,
    /// results), even through a blob; larger ones are refused with `InvalidInput` before anything
    /// is written (not a DTF setting; default 32 MiB).
    pub max_message_bytes: usize,
    /// Timeout of each storage call (not a DTF setting; default 30 s).
    pub storage_operation_timeout: Duration,
    /// Deadline of each partition-table (or lease-blob) call of the partition manager; a slower
    /// call counts as failed (DTF `PartitionTableOperationTimeout`, default 2 s). Raise it for a
    /// slow emulator: a renewal that keeps timing out gives the partition up.
    pub partition_table_operation_timeout: Duration,
    /// How long a well-formed queue message of a *newer* envelope format version (written by an
    /// upgraded worker during a rolling upgrade) is abandoned with back-off, waiting for an
    /// upgraded worker to take it, before it is moved to the poison queue (not a DTF setting;
    /// default 1 h; zero quarantines at the first delivery).
    pub newer_version_quarantine_age: Duration,
    /// Skip the ExecutionStarted de-duplication of 3.12 (default false).
    pub disable_execution_started_deduplication: bool,
    /// Process messages sent to completed/failed/terminated instances (default false).
    pub allow_replaying_terminal_instances: bool,
    /// Guard Instances-row writes with its ETag so a stalled worker cannot overwrite a newer status.
    /// DTF defaults this to false; we default to true: a status once written is never overwritten
    /// by a stale worker.
    pub use_instance_table_etag: bool,
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

impl AzureStorageSettings {
    /// Defaults for `task_hub_name`.
    pub fn new(task_hub_name: TaskHubName) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self {
            task_hub_name,
            partition_count: 4,
            control_queue_batch_size: 32,
            control_queue_buffer_threshold: 64,
            control_queue_visibility_timeout: Duration::from_secs(5 * 60),
            work_item_queue_visibility_timeout: Duration::from_secs(5 * 60),
            max_concurrent_orchestration_work_items: 100,
            max_concurrent_activity_work_items: 10,
            max_storage_operation_concurrency: cpus * 25,
            max_queue_polling_interval: Duration::from_secs(30),
            worker_id: default_worker_id(),
            partition_manager: PartitionManagerKind::Table,
            lease_interval: Duration::from_secs(30),
            lease_renew_interval: Duration::from_secs(10),
            lease_acquire_interval: Duration::from_secs(10),
            max_queue_payload_bytes: 45 * 1024,
            max_table_property_bytes: 60 * 1024,
            max_message_bytes: 32 * 1024 * 1024,
            storage_operation_timeout: Duration::from_secs(30),
            partition_table_operation_timeout: Duration::from_secs(2),
            newer_version_quarantine_age: Duration::from_secs(3600),
            disable_execution_started_deduplication: false,
            allow_replaying_terminal_instances: false,
            use_instance_table_etag: true,
        }
    }

    /// Checks every range; the error names the setting and the rule.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |setting: &'static str, reason: String| Err(Error::InvalidSetting { setting, reason });
        if !(1..=crate::MAX_PARTITIONS).contains(&self.partition_count) {
            return bad(
                "partition_count",
                format!("must be 1-{}, got {}", crate::MAX_PARTITIONS, self.partition_count),
            );
        }
        if !(1..=32).contains(&self.control_queue_batch_size) {
            return bad(
                "control_queue_batch_size",
                format!(
                    "must be 1-32 (the queue service limit), got {}",
                    self.control_queue_batch_size
                ),
            );
        }
        if self.control_queue_buffer_threshold == 0 {
            return bad("control_queue_buffer_threshold", "must be at least 1".into());
        }
        for (name, d) in [
            ("control_queue_visibility_timeout", self.control_queue_visibility_timeout),
            ("work_item_queue_visibility_timeout", self.work_item_queue_visibility_timeout),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 24 * 3600) {
                return bad(name, format!("must be 1 s to 7 days, got {d:?}"));
            }
        }
        for (name, n) in [
            (
                "max_concurrent_orchestration_work_items",
                self.max_concurrent_orchestration_work_items,
            ),
            ("max_concurrent_activity_work_items", self.max_concurrent_activity_work_items),
            ("max_storage_operation_concurrency", self.max_storage_operation_concurrency),
        ] {
            if n == 0 {
                return bad(name, "must be at least 1".into());
            }
        }
        if self.max_queue_polling_interval < Duration::from_millis(50) {
            return bad("max_queue_polling_interval", "must be at least 50 ms".into());
        }
        if self.worker_id.trim().is_empty() {
            return bad("worker_id", "must not be empty".into());
        }
        if self.lease_renew_interval >= self.lease_interval {
            return bad(
                "lease_renew_interval",
                format!(
                    "must be shorter than lease_interval ({:?} >= {:?})",
                    self.lease_renew_interval, self.lease_interval
                ),
            );
        }
        if self.lease_acquire_interval.is_zero() || self.lease_renew_interval.is_zero() {
            return bad("lease_acquire_interval", "lease intervals must be positive".into());
        }
        if self.partition_manager != PartitionManagerKind::Table
            && !(Duration::from_secs(15)..=Duration::from_secs(60)).contains(&self.lease_interval)
        {
            return bad(
                "lease_interval",
                format!("blob leases last 15-60 s, got {:?}", self.lease_interval),
            );
        }
        if !(1024..=48 * 1024).contains(&self.max_queue_payload_bytes) {
            return bad(
                "max_queue_payload_bytes",
                format!(
                    "must be 1 KiB-48 KiB (queue messages are at most 64 KiB), got {}",
                    self.max_queue_payload_bytes
                ),
            );
        }
        if !(64 * 1024..=100 * 1024 * 1024).contains(&self.max_message_bytes) {
            return bad(
                "max_message_bytes",
                format!("must be 64 KiB-100 MiB, got {}", self.max_message_bytes),
            );
        }
        if !(1024..=64 * 1024).contains(&self.max_table_property_bytes) {
            return bad(
                "max_table_property_bytes",
                format!("must be 1 KiB-64 KiB, got {}", self.max_table_property_bytes),
            );
        }
        if self.partition_table_operation_timeout < Duration::from_millis(100) {
            return bad("partition_table_operation_timeout", "must be at least 100 ms".into());
        }
        if self.storage_operation_timeout < Duration::from_millis(100) {
            return bad("storage_operation_timeout", "must be at least 100 ms".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AzureStorageSettings {
        AzureStorageSettings::new(TaskHubName::new("Hub").unwrap())
    }

    #[test]
    fn defaults_are_the_dtf_defaults_and_valid() {
        let s = settings();
        s.validate().unwrap();
        assert_eq!(s.partition_count, 4);
        assert_eq!(s.control_queue_batch_size, 32);
        assert_eq!(s.control_queue_buffer_threshold, 64);
        assert_eq!(s.control_queue_visibility_timeout, Duration::from_secs(300));
        assert_eq!(s.max_concurrent_activity_work_items, 10);
        assert_eq!(s.max_concurrent_orchestration_work_items, 100);
        assert_eq!(s.lease_interval, Duration::from_secs(30));
        assert_eq!(s.lease_renew_interval, Duration::from_secs(10));
        assert_eq!(s.lease_acquire_interval, Duration::from_secs(10));
        assert_eq!(s.max_queue_polling_interval, Duration::from_secs(30));
        assert_eq!(s.max_queue_payload_bytes, 45 * 1024);
        assert_eq!(s.max_table_property_bytes, 60 * 1024);
        assert_eq!(s.max_message_bytes, 32 * 1024 * 1024);
        assert_eq!(s.partition_table_operation_timeout, Duration::from_secs(2));
        assert_eq!(s.partition_manager, PartitionManagerKind::Table);
    }

    #[test]
    fn out_of_range_settings_name_the_setting() {
        type Change = fn(&mut AzureStorageSettings);
        let cases: Vec<(Change, &str)> = vec![
            (|s| s.partition_count = 0, "partition_count"),
            (|s| s.partition_count = 17, "partition_count"),
            (|s| s.control_queue_batch_size = 33, "control_queue_batch_size"),
            (|s| s.lease_renew_interval = Duration::from_secs(30), "lease_renew_interval"),
            (|s| s.max_queue_payload_bytes = 64 * 1024, "max_queue_payload_bytes"),
            (|s| s.worker_id = " ".into(), "worker_id"),
            (|s| s.max_message_bytes = 1024, "max_message_bytes"),
            (
                |s| s.partition_table_operation_timeout = Duration::from_millis(10),
                "partition_table_operation_timeout",
            ),
            (
                |s| {
                    s.partition_manager = PartitionManagerKind::SafeBlob;
                    s.lease_interval = Duration::from_secs(5);
                    s.lease_renew_interval = Duration::from_secs(1);
                },
                "lease_interval",
            ),
        ];
        for (change, name) in cases {
            let mut s = settings();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn table_partitions_allow_short_leases() {
        let mut s = settings();
        s.lease_interval = Duration::from_secs(3);
        s.lease_renew_interval = Duration::from_secs(1);
        s.validate().unwrap();
    }
}
