//! Orchestrator actions (DTF `OrchestratorAction`s): the decisions the replay engine returns.

use time::OffsetDateTime;

use crate::history::{FailureDetails, HistoryEvent, OrchestrationInstance};
use crate::state::OrchestrationStatus;

/// A decision made by orchestration code that has no echo in history yet.
#[derive(Debug, Clone, PartialEq)]
pub enum OrchestratorAction {
    /// DTF `ScheduleTaskOrchestratorAction`.
    ScheduleTask {
        /// Action id (becomes the `TaskScheduled` event id).
        id: i32,
        /// Activity name.
        name: String,
        /// Activity version.
        version: Option<String>,
        /// Serialized input.
        input: Option<String>,
    },
    /// DTF `CreateTimerOrchestratorAction`.
    CreateTimer {
        /// Action id.
        id: i32,
        /// Due time (UTC).
        fire_at: OffsetDateTime,
    },
    /// DTF `CreateSubOrchestrationAction`.
    CreateSubOrchestration {
        /// Action id.
        id: i32,
        /// Orchestration name.
        name: String,
        /// Orchestration version.
        version: Option<String>,
        /// Child instance id.
        instance_id: String,
        /// Serialized input.
        input: Option<String>,
    },
    /// DTF `SendEventOrchestratorAction`.
    SendEvent {
        /// Action id.
        id: i32,
        /// Target instance (execution id `None` = current).
        instance: OrchestrationInstance,
        /// Event name.
        name: String,
        /// Serialized payload.
        data: Option<String>,
    },
    /// DTF `OrchestrationCompleteOrchestratorAction`.
    Complete(CompletionAction),
}

/// The end of an execution: completed, failed, terminated or continued as new.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionAction {
    /// Action id (consumes one id, as in DTF).
    pub id: i32,
    /// Completed, Failed, Terminated or ContinuedAsNew.
    pub status: OrchestrationStatus,
    /// Output (Completed), reason (Terminated) or the new input (ContinuedAsNew).
    pub result: Option<String>,
    /// Failure details (Failed).
    pub failure_details: Option<FailureDetails>,
    /// New version for ContinuedAsNew.
    pub new_version: Option<String>,
    /// `EventRaised` events carried into the next generation (ContinuedAsNew only), in history order.
    pub carryover_events: Vec<HistoryEvent>,
}

impl OrchestratorAction {
    /// The action id.
    pub fn id(&self) -> i32 {
        match self {
            Self::ScheduleTask { id, .. }
            | Self::CreateTimer { id, .. }
            | Self::CreateSubOrchestration { id, .. }
            | Self::SendEvent { id, .. } => *id,
            Self::Complete(c) => c.id,
        }
    }

    /// DTF `OrchestratorActionType` name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ScheduleTask { .. } => "ScheduleOrchestrator",
            Self::CreateTimer { .. } => "CreateTimer",
            Self::CreateSubOrchestration { .. } => "CreateSubOrchestration",
            Self::SendEvent { .. } => "SendEvent",
            Self::Complete(_) => "OrchestrationComplete",
        }
    }

    /// The name compared during determinism checks (activity, sub-orchestration, event name).
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::ScheduleTask { name, .. }
            | Self::CreateSubOrchestration { name, .. }
            | Self::SendEvent { name, .. } => Some(name),
            _ => None,
        }
    }
}
