//! Partition-manager settings with the DTF defaults, and their validation.

use std::time::Duration;

/// Which partition manager to run (DTF `UseTablePartitionManagement` / `UseLegacyPartitionManagement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ManagerKind {
    /// `{Hub}Partitions` table rows with ETag-guarded writes and cooperative stealing (DTF V3).
    #[default]
    Table,
    /// Blob `intent/` + `ownership/` leases: ownership only moves after a drain or an expiry (DTF V2).
    SafeBlob,
    /// One blob lease per partition under `default/`, stolen with ChangeLease (DTF V1). A stolen
    /// partition can be listened to by two workers for up to one renew interval.
    LegacyBlob,
}

/// Blob leases last 15-60 s (service limit).
pub const BLOB_LEASE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(15)..=Duration::from_secs(60);

/// Highest partition count DTF supports.
pub const MAX_PARTITIONS: u8 = 16;

/// Settings of one worker's partition manager.
///
/// Defaults follow `AzureStorageOrchestrationServiceSettings`: lease 30 s, renew 10 s, acquire 10 s,
/// 4 partitions, 2 s per partition-table operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionManagerSettings {
    /// Task hub name as configured (case kept; queue and container names are lowercased).
    pub task_hub: String,
    /// This worker's lease-owner name, unique per process (see [`default_worker_id`]).
    pub worker_id: String,
    /// Number of control queues, 1-16 (default 4).
    pub partition_count: u8,
    /// Blob lease duration; for the table manager, how far each renewal pushes `ExpiresAt`
    /// (default 30 s; blob variants need 15-60 s).
    pub lease_interval: Duration,
    /// How often owned leases are renewed (default 10 s). Must be shorter than
    /// `lease_interval - fence_margin`.
    pub lease_renew_interval: Duration,
    /// How often free, expired or stealable leases are looked for (default 10 s).
    pub lease_acquire_interval: Duration,
    /// Deadline of each storage call made by the manager (DTF `PartitionTableOperationTimeout`, 2 s).
    pub operation_timeout: Duration,
    /// How long a partition may drain before it is abandoned (`on_lost`) and released (60 s).
    pub drain_timeout: Duration,
    /// Self-fencing safety margin: an owned partition counts as lost locally at
    /// `renewal sent + lease_interval - fence_margin` unless renewed (default 5 s).
    pub fence_margin: Duration,
    /// How long a fenced partition (local deadline passed, storage not answering) is kept before
    /// it is given up with `on_lost` (default 5 min, the control queues' visibility timeout: by
    /// then every message held for it is visible to others anyway). A renewal that proves the
    /// lease is still ours ends the fence earlier; storage naming another owner ends it at once.
    pub max_fenced_duration: Duration,
}

impl PartitionManagerSettings {
    /// DTF defaults for `task_hub` and a fresh [`default_worker_id`].
    pub fn new(task_hub: impl Into<String>) -> Self {
        Self {
            task_hub: task_hub.into(),
            worker_id: default_worker_id(),
            partition_count: 4,
            lease_interval: Duration::from_secs(30),
            lease_renew_interval: Duration::from_secs(10),
            lease_acquire_interval: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(60),
            fence_margin: Duration::from_secs(5),
            max_fenced_duration: Duration::from_secs(5 * 60),
        }
    }

    /// Checks every setting for `kind`; the error names the setting and the rule.
    pub fn validate(&self, kind: ManagerKind) -> Result<(), SettingsError> {
        let bad = |setting: &'static str, rule: String| Err(SettingsError { setting, rule });
        if self.task_hub.is_empty() {
            return bad("task_hub", "must not be empty".into());
        }
        if self.worker_id.is_empty() {
            return bad("worker_id", "must not be empty".into());
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partition_count) {
            return bad(
                "partition_count",
                format!("must be 1-{MAX_PARTITIONS}, got {}", self.partition_count),
            );
        }
        for (setting, value) in [
            ("lease_interval", self.lease_interval),
            ("lease_renew_interval", self.lease_renew_interval),
            ("lease_acquire_interval", self.lease_acquire_interval),
            ("operation_timeout", self.operation_timeout),
            ("drain_timeout", self.drain_timeout),
            ("max_fenced_duration", self.max_fenced_duration),
        ] {
            if value.is_zero() {
                return bad(setting, "must be greater than zero".into());
            }
        }
        if kind != ManagerKind::Table && !BLOB_LEASE_RANGE.contains(&self.lease_interval) {
            return bad(
                "lease_interval",
                format!("blob leases last 15-60 s, got {:?}", self.lease_interval),
            );
        }
        if self.fence_margin >= self.lease_interval {
            return bad(
                "fence_margin",
                format!(
                    "must be shorter than lease_interval ({:?}), got {:?}",
                    self.lease_interval, self.fence_margin
                ),
            );
        }
        let fenced = self.lease_interval - self.fence_margin;
        if self.lease_renew_interval + self.operation_timeout > fenced {
            return bad(
                "lease_renew_interval",
                format!(
                    "renew interval + operation timeout ({:?} + {:?}) must not exceed \
                     lease_interval - fence_margin ({fenced:?}), or owned partitions are \
                     fenced between renewals",
                    self.lease_renew_interval, self.operation_timeout
                ),
            );
        }
        Ok(())
    }

    /// Control queue names `{hub lower}-control-NN`, one per partition.
    pub fn control_queues(&self) -> Vec<String> {
        let lower = self.task_hub.to_ascii_lowercase();
        (0..self.partition_count).map(|i| format!("{lower}-control-{i:02}")).collect()
    }
}

/// A worker ID unique to this process: `{host name}-{random hex}` (DTF uses the machine name).
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_else(|_| "worker".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..12])
}

/// A setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid partition manager setting `{setting}`: {rule}")]
pub struct SettingsError {
    /// The setting's field name.
    pub setting: &'static str,
    /// What is wrong.
    pub rule: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dtf_defaults_and_valid() {
        let s = PartitionManagerSettings::new("MyHub");
        assert_eq!(s.partition_count, 4);
        assert_eq!(s.lease_interval, Duration::from_secs(30));
        assert_eq!(s.lease_renew_interval, Duration::from_secs(10));
        assert_eq!(s.lease_acquire_interval, Duration::from_secs(10));
        for kind in [ManagerKind::Table, ManagerKind::SafeBlob, ManagerKind::LegacyBlob] {
            s.validate(kind).unwrap();
        }
        assert_eq!(s.control_queues()[3], "myhub-control-03");
        assert_ne!(default_worker_id(), default_worker_id());
    }

    #[test]
    fn out_of_range_settings_name_the_setting() {
        type Change = fn(&mut PartitionManagerSettings);
        let cases: [(Change, ManagerKind, &str, &str); 7] = [
            (|s| s.partition_count = 0, ManagerKind::Table, "partition_count", "1-16"),
            (|s| s.partition_count = 17, ManagerKind::Table, "partition_count", "got 17"),
            (|s| s.task_hub.clear(), ManagerKind::Table, "task_hub", "empty"),
            (
                |s| s.lease_interval = Duration::from_secs(10),
                ManagerKind::SafeBlob,
                "lease_interval",
                "15-60",
            ),
            (
                |s| s.lease_interval = Duration::from_secs(61),
                ManagerKind::LegacyBlob,
                "lease_interval",
                "15-60",
            ),
            (
                |s| s.lease_renew_interval = Duration::from_secs(30),
                ManagerKind::Table,
                "lease_renew_interval",
                "must not exceed",
            ),
            (
                |s| s.lease_acquire_interval = Duration::ZERO,
                ManagerKind::Table,
                "lease_acquire_interval",
                "greater than zero",
            ),
        ];
        for (change, kind, setting, rule) in cases {
            let mut s = PartitionManagerSettings::new("hub");
            change(&mut s);
            let err = s.validate(kind).unwrap_err();
            assert_eq!(err.setting, setting);
            assert!(err.to_string().contains(rule), "{err}");
        }
        let mut short = PartitionManagerSettings::new("hub");
        short.lease_interval = Duration::from_secs(3);
        short.lease_renew_interval = Duration::from_secs(1);
        short.fence_margin = Duration::from_millis(500);
        short.operation_timeout = Duration::from_secs(1);
        short.validate(ManagerKind::Table).unwrap();
        assert_eq!(short.validate(ManagerKind::SafeBlob).unwrap_err().setting, "lease_interval");
    }
}
