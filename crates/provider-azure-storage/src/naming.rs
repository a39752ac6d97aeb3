//! Task hub names and the storage resources derived from them, exactly as
//! DurableTask.AzureStorage names them.

use crate::error::{Error, Result};
use std::fmt;

/// Longest accepted task hub name. Queue and container names are `{hub}-largemessages` and the like
/// (at most 63 characters), and tables take the hub as an alphanumeric prefix.
pub const MAX_TASK_HUB_NAME_LEN: usize = 45;

/// A validated task hub name: ASCII letters and digits, starting with a letter, 3-45 characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TaskHubName(String);

impl TaskHubName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.len() < 3 {
            Some("must be at least 3 characters")
        } else if name.len() > MAX_TASK_HUB_NAME_LEN {
            Some("must be at most 45 characters")
        } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            Some("must start with a letter")
        } else if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            Some("may contain only ASCII letters and digits")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidTaskHubName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as given (tables keep its case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskHubName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskHubName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskHubName({:?})", self.0)
    }
}

/// Names of every storage resource of one task hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceNames {
    /// `{hub}-control-00` … one per partition (lowercase).
    pub control_queues: Vec<String>,
    /// `{hub}-workitems` (lowercase).
    pub work_item_queue: String,
    /// `{Hub}History`.
    pub history_table: String,
    /// `{Hub}Instances`.
    pub instances_table: String,
    /// `{Hub}Partitions`.
    pub partitions_table: String,
    /// `{hub}-leases` (lowercase).
    pub leases_container: String,
    /// `{hub}-largemessages` (lowercase).
    pub large_messages_container: String,
    /// `{hub}-poison` (lowercase): undecodable messages are moved here after repeated failures
    /// (not part of the .NET layout; .NET leaves them in the source queue forever).
    pub poison_queue: String,
}

/// The most control queues (partitions) a task hub can have.
pub const MAX_PARTITIONS: u8 = 16;

impl ResourceNames {
    /// Every resource name `hub` can have: all [`MAX_PARTITIONS`] control queues.
    pub fn all_possible(hub: &TaskHubName) -> Self {
        Self::new(hub, MAX_PARTITIONS)
    }

    /// The resources of `hub` with `partition_count` control queues.
    pub fn new(hub: &TaskHubName, partition_count: u8) -> Self {
        let lower = hub.as_str().to_ascii_lowercase();
        Self {
            control_queues: (0..partition_count)
                .map(|i| format!("{lower}-control-{i:02}"))
                .collect(),
            work_item_queue: format!("{lower}-workitems"),
            history_table: format!("{hub}History"),
            instances_table: format!("{hub}Instances"),
            partitions_table: format!("{hub}Partitions"),
            leases_container: format!("{lower}-leases"),
            large_messages_container: format!("{lower}-largemessages"),
            poison_queue: format!("{lower}-poison"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_the_dotnet_layout() {
        let names = ResourceNames::new(&TaskHubName::new("MyHub").unwrap(), 4);
        assert_eq!(
            names.control_queues,
            ["myhub-control-00", "myhub-control-01", "myhub-control-02", "myhub-control-03"]
        );
        assert_eq!(names.work_item_queue, "myhub-workitems");
        assert_eq!(names.history_table, "MyHubHistory");
        assert_eq!(names.instances_table, "MyHubInstances");
        assert_eq!(names.partitions_table, "MyHubPartitions");
        assert_eq!(names.leases_container, "myhub-leases");
        assert_eq!(names.large_messages_container, "myhub-largemessages");
    }

    #[test]
    fn invalid_hub_names_are_rejected_with_the_rule() {
        for (name, rule) in [
            ("ab", "at least 3"),
            ("1hub", "start with a letter"),
            ("my-hub", "letters and digits"),
            ("hub name", "letters and digits"),
            ("häb", "letters and digits"),
            (&"h".repeat(46), "at most 45"),
        ] {
            let err = TaskHubName::new(name).unwrap_err();
            assert!(err.to_string().contains(rule), "{name:?}: {err}");
        }
        assert!(TaskHubName::new("h".repeat(45)).is_ok());
        assert!(TaskHubName::new("Hub1").is_ok());
    }
}
