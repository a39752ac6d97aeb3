//! Instance status ([`OrchestrationStatus`]), the query/instance-row snapshot
//! ([`OrchestrationState`]) and the in-flight history of one execution
//! ([`OrchestrationRuntimeState`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::history::{
    EventKind, ExecutionStartedEvent, FailureDetails, HistoryEvent, OrchestrationInstance,
    ParentInstance, UnknownNameError,
};

/// DTF `OrchestrationStatus`, with its ordinals. Serialized by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum OrchestrationStatus {
    Running = 0,
    Completed = 1,
    ContinuedAsNew = 2,
    Failed = 3,
    Canceled = 4,
    Terminated = 5,
    Pending = 6,
    Suspended = 7,
}

impl OrchestrationStatus {
    /// Every status, in ordinal order.
    pub const ALL: [OrchestrationStatus; 8] = [
        Self::Running,
        Self::Completed,
        Self::ContinuedAsNew,
        Self::Failed,
        Self::Canceled,
        Self::Terminated,
        Self::Pending,
        Self::Suspended,
    ];

    /// The statuses purge accepts (DTF: Completed, Terminated, Canceled, Failed).
    pub const TERMINAL: [OrchestrationStatus; 4] =
        [Self::Completed, Self::Failed, Self::Canceled, Self::Terminated];

    /// The DTF ordinal.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The status with DTF ordinal `v`.
    pub fn from_i32(v: i32) -> Option<Self> {
        usize::try_from(v).ok().and_then(|i| Self::ALL.get(i).copied())
    }

    /// The DTF name (the Instances table's `RuntimeStatus` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::ContinuedAsNew => "ContinuedAsNew",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
            Self::Terminated => "Terminated",
            Self::Pending => "Pending",
            Self::Suspended => "Suspended",
        }
    }

    /// Completed, Failed, Canceled or Terminated: the instance will not run again unless
    /// recreated. (ContinuedAsNew, Running, Pending and Suspended are not terminal.)
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }
}

impl fmt::Display for OrchestrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrchestrationStatus {
    type Err = UnknownNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownNameError::new("orchestration status", s))
    }
}

/// DTF `OrchestrationState`: the snapshot of an instance returned by queries (and, for providers,
/// the instance row to write at each checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OrchestrationState {
    /// Instance and current execution.
    pub orchestration_instance: OrchestrationInstance,
    /// Orchestration name.
    pub name: String,
    /// Orchestration version.
    #[serde(default)]
    pub version: Option<String>,
    /// Runtime status.
    pub orchestration_status: OrchestrationStatus,
    /// Serialized input (`None` when not fetched).
    #[serde(default)]
    pub input: Option<String>,
    /// Serialized output; for Failed, `FailureDetails.to_string()`; for Terminated the reason.
    #[serde(default)]
    pub output: Option<String>,
    /// Custom status (JSON text).
    #[serde(default)]
    pub status: Option<String>,
    /// Creation time (the ExecutionStarted timestamp).
    #[serde(with = "time::serde::rfc3339")]
    pub created_time: OffsetDateTime,
    /// Last update.
    #[serde(with = "time::serde::rfc3339")]
    pub last_updated_time: OffsetDateTime,
    /// Completion time, when terminal.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub completed_time: Option<OffsetDateTime>,
    /// Parent, for sub-orchestrations.
    #[serde(default)]
    pub parent_instance: Option<ParentInstance>,
    /// Tags.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Generation.
    #[serde(default)]
    pub generation: Option<i32>,
    /// Delayed start, if any.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub scheduled_start_time: Option<OffsetDateTime>,
    /// Failure details when Failed.
    #[serde(default)]
    pub failure_details: Option<FailureDetails>,
}

impl OrchestrationState {
    /// The Pending row a client writes when it creates an instance from `started`.
    pub fn pending(started: &ExecutionStartedEvent, created: OffsetDateTime) -> Self {
        Self {
            orchestration_instance: started.orchestration_instance.clone(),
            name: started.name.clone(),
            version: started.version.clone(),
            orchestration_status: OrchestrationStatus::Pending,
            input: started.input.clone(),
            output: None,
            status: None,
            created_time: created,
            last_updated_time: created,
            completed_time: None,
            parent_instance: started.parent_instance.clone(),
            tags: started.tags.clone(),
            generation: started.generation,
            scheduled_start_time: started.scheduled_start_time,
            failure_details: None,
        }
    }

    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.orchestration_instance.instance_id
    }

    /// Deserializes the output as `T` (`None` output reads as JSON `null`).
    pub fn output_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.output.as_deref().unwrap_or("null"))
    }

    /// Deserializes the custom status as `T`.
    pub fn custom_status_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.status.as_deref().unwrap_or("null"))
    }

    /// A copy without input and output (what providers return when payloads are not requested).
    pub fn without_payloads(mut self) -> Self {
        self.input = None;
        self.output = None;
        self
    }
}

/// Error raised when a history cannot form a valid runtime state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid orchestration history: {0}")]
pub struct InvalidHistoryError(pub String);

/// DTF `OrchestrationRuntimeState`: the history of one execution split into past events (loaded
/// from storage) and new events (added by the current work item, to be persisted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrchestrationRuntimeState {
    past_events: Vec<HistoryEvent>,
    new_events: Vec<HistoryEvent>,
    started: Option<usize>,
    completed: Option<usize>,
    suspended: bool,
}

impl OrchestrationRuntimeState {
    /// An empty state (a new execution).
    pub fn new() -> Self {
        Self::default()
    }

    /// A state whose past events are `history` (as loaded from storage).
    ///
    /// # Errors
    /// A second `ExecutionStarted` ("Multiple ExecutionStartedEvent found").
    pub fn from_history(history: Vec<HistoryEvent>) -> Result<Self, InvalidHistoryError> {
        let mut s = Self::new();
        for e in history {
            s.add_event(e)?;
        }
        s.past_events = std::mem::take(&mut s.new_events);
        Ok(s)
    }

    /// Appends a new event, tracking start/completion/suspension markers as DTF does.
    ///
    /// # Errors
    /// A second `ExecutionStarted`.
    pub fn add_event(&mut self, event: HistoryEvent) -> Result<(), InvalidHistoryError> {
        let index = self.len();
        match &event.kind {
            EventKind::ExecutionStarted(_) => {
                if self.started.is_some() {
                    return Err(InvalidHistoryError(
                        "Multiple ExecutionStartedEvent found, potential corruption in state storage"
                            .into(),
                    ));
                }
                self.started = Some(index);
            }
            EventKind::ExecutionCompleted { orchestration_status, .. } => match self.completed {
                None => self.completed = Some(index),
                Some(prev) => {
                    // Only a termination may replace an earlier ContinuedAsNew.
                    let prev_can = matches!(
                        self.event(prev).map(|e| &e.kind),
                        Some(EventKind::ContinueAsNew { .. })
                    );
                    if prev_can && *orchestration_status == OrchestrationStatus::Terminated {
                        self.completed = Some(index);
                    }
                }
            },
            EventKind::ContinueAsNew { .. } if self.completed.is_none() => {
                self.completed = Some(index);
            }
            EventKind::ExecutionSuspended { .. } => self.suspended = true,
            EventKind::ExecutionResumed { .. } => self.suspended = false,
            _ => {}
        }
        self.new_events.push(event);
        Ok(())
    }

    fn event(&self, index: usize) -> Option<&HistoryEvent> {
        if index < self.past_events.len() {
            self.past_events.get(index)
        } else {
            self.new_events.get(index - self.past_events.len())
        }
    }

    /// Number of events (past + new).
    pub fn len(&self) -> usize {
        self.past_events.len() + self.new_events.len()
    }

    /// True when there are no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events loaded from storage.
    pub fn past_events(&self) -> &[HistoryEvent] {
        &self.past_events
    }

    /// Events added in this work item (what a checkpoint persists).
    pub fn new_events(&self) -> &[HistoryEvent] {
        &self.new_events
    }

    /// All events, past then new.
    pub fn events(&self) -> impl Iterator<Item = &HistoryEvent> {
        self.past_events.iter().chain(self.new_events.iter())
    }

    /// All events as one vector (past then new).
    pub fn into_events(self) -> Vec<HistoryEvent> {
        let mut v = self.past_events;
        v.extend(self.new_events);
        v
    }

    /// Mutable access to the new events (the replay engine sets `is_played`).
    pub(crate) fn new_events_mut(&mut self) -> &mut [HistoryEvent] {
        &mut self.new_events
    }

    /// The `ExecutionStarted` event's fields, if present.
    pub fn execution_started(&self) -> Option<&ExecutionStartedEvent> {
        match self.started.and_then(|i| self.event(i)).map(|e| &e.kind) {
            Some(EventKind::ExecutionStarted(s)) => Some(s),
            _ => None,
        }
    }

    /// The instance (with this execution's id), if started.
    pub fn instance(&self) -> Option<&OrchestrationInstance> {
        self.execution_started().map(|s| &s.orchestration_instance)
    }

    /// The execution id, if started.
    pub fn execution_id(&self) -> Option<&str> {
        self.instance().and_then(|i| i.execution_id.as_deref())
    }

    /// The orchestration name, if started.
    pub fn name(&self) -> Option<&str> {
        self.execution_started().map(|s| s.name.as_str())
    }

    /// DTF `IsValid`: empty, exactly `[OrchestratorStarted]`, or containing `ExecutionStarted`.
    pub fn is_valid(&self) -> bool {
        self.is_empty()
            || self.started.is_some()
            || (self.len() == 1
                && matches!(self.event(0).map(|e| &e.kind), Some(EventKind::OrchestratorStarted)))
    }

    /// The completion event (ExecutionCompleted or ContinueAsNew), if any.
    pub fn completed_event(&self) -> Option<&HistoryEvent> {
        self.completed.and_then(|i| self.event(i))
    }

    /// Current status (`None` when there is no `ExecutionStarted`).
    pub fn status(&self) -> Option<OrchestrationStatus> {
        self.started?;
        Some(match self.completed_event().map(|e| &e.kind) {
            Some(EventKind::ExecutionCompleted { orchestration_status, .. }) => {
                *orchestration_status
            }
            Some(EventKind::ContinueAsNew { .. }) => OrchestrationStatus::ContinuedAsNew,
            _ if self.suspended => OrchestrationStatus::Suspended,
            _ => OrchestrationStatus::Running,
        })
    }

    /// True once a completion event is present.
    pub fn is_completed(&self) -> bool {
        self.completed.is_some()
    }

    /// Output: `FailureDetails.to_string()` when failed, otherwise the result.
    pub fn output(&self) -> Option<String> {
        match self.completed_event().map(|e| &e.kind) {
            Some(EventKind::ExecutionCompleted { result, failure_details, .. }) => {
                match failure_details {
                    Some(fd) => Some(fd.to_string()),
                    None => result.clone(),
                }
            }
            Some(EventKind::ContinueAsNew { result }) => result.clone(),
            _ => None,
        }
    }

    /// Failure details of a Failed execution.
    pub fn failure_details(&self) -> Option<&FailureDetails> {
        match self.completed_event().map(|e| &e.kind) {
            Some(EventKind::ExecutionCompleted { failure_details, .. }) => failure_details.as_ref(),
            _ => None,
        }
    }

    /// Builds the instance snapshot (`Utils.BuildOrchestrationState`) with `custom_status`.
    /// Returns `None` when the state has no `ExecutionStarted`.
    pub fn to_state(
        &self,
        custom_status: Option<String>,
        now: OffsetDateTime,
    ) -> Option<OrchestrationState> {
        let started = self.execution_started()?;
        let created = self.started.and_then(|i| self.event(i)).map(|e| e.timestamp)?;
        let status = self.status()?;
        let last = self.events().last().map_or(now, |e| e.timestamp);
        Some(OrchestrationState {
            orchestration_instance: started.orchestration_instance.clone(),
            name: started.name.clone(),
            version: started.version.clone(),
            orchestration_status: status,
            input: started.input.clone(),
            output: self.output(),
            status: custom_status,
            created_time: created,
            last_updated_time: last.max(now),
            completed_time: if status.is_terminal() {
                self.completed_event().map(|e| e.timestamp)
            } else {
                None
            },
            parent_instance: started.parent_instance.clone(),
            tags: started.tags.clone(),
            generation: started.generation,
            scheduled_start_time: started.scheduled_start_time,
            failure_details: self.failure_details().cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ev(kind: EventKind) -> HistoryEvent {
        HistoryEvent::new(-1, datetime!(2024-01-01 0:00 UTC), kind)
    }

    fn started() -> EventKind {
        EventKind::ExecutionStarted(ExecutionStartedEvent::new(
            OrchestrationInstance::with_execution("i", "e"),
            "N",
            None,
        ))
    }

    #[test]
    fn status_names_ordinals_and_terminality() {
        assert_eq!(OrchestrationStatus::Running.as_i32(), 0);
        assert_eq!(OrchestrationStatus::Suspended.as_i32(), 7);
        for s in OrchestrationStatus::ALL {
            assert_eq!(OrchestrationStatus::from_i32(s.as_i32()), Some(s));
            assert_eq!(s.as_str().parse::<OrchestrationStatus>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        let terminal: Vec<_> =
            OrchestrationStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            vec![
                OrchestrationStatus::Completed,
                OrchestrationStatus::Failed,
                OrchestrationStatus::Canceled,
                OrchestrationStatus::Terminated
            ]
        );
    }

    #[test]
    fn runtime_state_tracks_markers() {
        let mut s = OrchestrationRuntimeState::new();
        assert!(s.is_valid());
        assert_eq!(s.status(), None);
        s.add_event(ev(EventKind::OrchestratorStarted)).unwrap();
        assert!(s.is_valid());
        s.add_event(ev(started())).unwrap();
        assert_eq!(s.status(), Some(OrchestrationStatus::Running));
        assert!(s.add_event(ev(started())).is_err(), "second ExecutionStarted is rejected");
        s.add_event(ev(EventKind::ExecutionSuspended { reason: None })).unwrap();
        assert_eq!(s.status(), Some(OrchestrationStatus::Suspended));
        s.add_event(ev(EventKind::ExecutionResumed { reason: None })).unwrap();
        assert_eq!(s.status(), Some(OrchestrationStatus::Running));
        s.add_event(ev(EventKind::ContinueAsNew { result: Some("1".into()) })).unwrap();
        assert_eq!(s.status(), Some(OrchestrationStatus::ContinuedAsNew));
        s.add_event(ev(EventKind::ExecutionCompleted {
            orchestration_status: OrchestrationStatus::Completed,
            result: None,
            failure_details: None,
        }))
        .unwrap();
        assert_eq!(
            s.status(),
            Some(OrchestrationStatus::ContinuedAsNew),
            "later completion ignored"
        );
        s.add_event(ev(EventKind::ExecutionCompleted {
            orchestration_status: OrchestrationStatus::Terminated,
            result: Some("stop".into()),
            failure_details: None,
        }))
        .unwrap();
        assert_eq!(s.status(), Some(OrchestrationStatus::Terminated), "terminate wins over CAN");
        assert_eq!(s.output().as_deref(), Some("stop"));
        let state = s.to_state(None, datetime!(2024-01-02 0:00 UTC)).unwrap();
        assert_eq!(state.orchestration_status, OrchestrationStatus::Terminated);
        assert!(state.completed_time.is_some());
    }

    #[test]
    fn from_history_puts_events_in_past() {
        let s = OrchestrationRuntimeState::from_history(vec![
            ev(EventKind::OrchestratorStarted),
            ev(started()),
        ])
        .unwrap();
        assert_eq!(s.past_events().len(), 2);
        assert!(s.new_events().is_empty());
        assert_eq!(s.execution_id(), Some("e"));
        let invalid = OrchestrationRuntimeState::from_history(vec![
            ev(EventKind::OrchestratorStarted),
            ev(EventKind::TaskCompleted { task_scheduled_id: 0, result: None }),
        ])
        .unwrap();
        assert!(!invalid.is_valid());
    }

    #[test]
    fn failed_output_is_failure_details_string() {
        let mut s = OrchestrationRuntimeState::new();
        s.add_event(ev(started())).unwrap();
        s.add_event(ev(EventKind::ExecutionCompleted {
            orchestration_status: OrchestrationStatus::Failed,
            result: Some("ignored".into()),
            failure_details: Some(FailureDetails::new("E", "bad")),
        }))
        .unwrap();
        assert_eq!(s.output().as_deref(), Some("E: bad"));
        assert_eq!(s.failure_details().unwrap().error_message, "bad");
    }
}
