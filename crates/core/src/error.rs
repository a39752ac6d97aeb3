//! Error types seen by orchestration and activity authors.
//!
//! * [`OrchestrationError`]: what an orchestration function returns on failure. Any
//!   `std::error::Error` converts into it with `?`; a [`TaskFailedError`] keeps its
//!   [`FailureDetails`] as the inner failure.
//! * [`ActivityError`]: what an activity returns on failure; may be marked non-retriable.
//! * [`TaskFailedError`]: what an awaited activity or sub-orchestration yields when it failed.

use std::any::Any;
use std::fmt;

use crate::history::FailureDetails;

/// Error type used for failures of the orchestration code itself (DTF `OrchestrationFailureException`).
pub const ORCHESTRATION_FAILURE: &str = "OrchestrationFailure";
/// Error type for failed (de)serialization of payloads.
pub const SERIALIZATION_ERROR: &str = "SerializationError";
/// Error type recorded for a panic in user code.
pub const PANIC_ERROR: &str = "Panic";
/// Error type of a non-determinism failure.
pub const NON_DETERMINISTIC_ERROR: &str = "NonDeterministicOrchestrationException";
/// Prefix of every non-determinism failure message.
pub const NON_DETERMINISTIC_PREFIX: &str = "Non-Deterministic workflow detected: ";
/// Error type of a failed activity seen from the orchestration (`TaskFailedException`).
pub const TASK_FAILED: &str = "TaskFailedException";
/// Error type of a failed entity call seen from the orchestration (DTF
/// `EntityOperationFailedException`).
pub const ENTITY_OPERATION_FAILED: &str = "EntityOperationFailedException";
/// Error type of a failed sub-orchestration seen from the parent.
pub const SUB_ORCHESTRATION_FAILED: &str = "SubOrchestrationFailedException";

/// A failed orchestration (the `Err` of an orchestration function).
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestrationError {
    details: FailureDetails,
}

impl OrchestrationError {
    /// An orchestration failure with `message` (error type `OrchestrationFailure`).
    pub fn new(message: impl Into<String>) -> Self {
        Self { details: FailureDetails::new(ORCHESTRATION_FAILURE, message) }
    }

    /// A failure with an explicit error type.
    pub fn with_type(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { details: FailureDetails::new(error_type, message) }
    }

    /// A failure carrying exact failure details.
    pub fn from_details(details: FailureDetails) -> Self {
        Self { details }
    }

    /// The failure details recorded in history.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }

    /// Consumes the error, returning its details.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.details.error_message
    }
}

impl fmt::Display for OrchestrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.details, f)
    }
}

/// The last path segment of `E`'s type name (the error type recorded for a converted error).
pub(crate) fn type_name_of<E>() -> String {
    let full = std::any::type_name::<E>();
    full.rsplit("::").next().unwrap_or(full).to_owned()
}

/// The message of a panic payload (`&str` or `String`), or `default`.
pub(crate) fn panic_message(p: &(dyn Any + Send), default: &str) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| default.to_owned())
}

impl<E> From<E> for OrchestrationError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let any: &dyn Any = &e;
        if let Some(tf) = any.downcast_ref::<TaskFailedError>() {
            return Self { details: tf.to_orchestration_failure() };
        }
        if any.downcast_ref::<serde_json::Error>().is_some() {
            return Self::with_type(SERIALIZATION_ERROR, e.to_string());
        }
        Self::with_type(type_name_of::<E>(), e.to_string())
    }
}

/// A failed activity (the `Err` of an activity function).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityError {
    details: FailureDetails,
}

impl ActivityError {
    /// A retriable failure with `message` (error type `ActivityFailure`).
    pub fn new(message: impl Into<String>) -> Self {
        Self { details: FailureDetails::new("ActivityFailure", message) }
    }

    /// A failure with an explicit error type.
    pub fn with_type(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { details: FailureDetails::new(error_type, message) }
    }

    /// A failure that retry policies must not retry.
    pub fn non_retriable(message: impl Into<String>) -> Self {
        let mut e = Self::new(message);
        e.details.is_non_retriable = true;
        e
    }

    /// Marks this failure non-retriable.
    pub fn into_non_retriable(mut self) -> Self {
        self.details.is_non_retriable = true;
        self
    }

    /// The failure details sent back to the orchestration.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }

    /// Consumes the error, returning its details.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }
}

impl fmt::Display for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.details, f)
    }
}

impl<E> From<E> for ActivityError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let any: &dyn Any = &e;
        if any.downcast_ref::<serde_json::Error>().is_some() {
            return Self::with_type(SERIALIZATION_ERROR, e.to_string());
        }
        Self::with_type(type_name_of::<E>(), e.to_string())
    }
}

/// What kind of task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// An activity.
    Activity,
    /// A sub-orchestration.
    SubOrchestration,
    /// An entity operation (a call).
    Entity,
}

/// An awaited activity or sub-orchestration failed (DTF `TaskFailedException` /
/// `SubOrchestrationFailedException`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} '{name}' (#{task_id}) failed: {failure}", match .kind { TaskKind::Activity => "Task", TaskKind::SubOrchestration => "Sub-orchestration", TaskKind::Entity => "Entity operation" })]
pub struct TaskFailedError {
    /// Activity or sub-orchestration.
    pub kind: TaskKind,
    /// The task's name.
    pub name: String,
    /// The scheduling event id.
    pub task_id: i32,
    /// The failure reported by the task (boxed to keep `Result`s small).
    pub failure: Box<FailureDetails>,
}

impl TaskFailedError {
    /// True when the task's failure (or a cause) has `error_type`.
    pub fn is_caused_by(&self, error_type: &str) -> bool {
        self.failure.is_caused_by(error_type)
    }

    /// The failure recorded when an orchestration does not handle this error (DTF: `Task '{Name}'
    /// (#{ScheduleId}) failed with an unhandled exception: {msg}`).
    pub fn to_orchestration_failure(&self) -> FailureDetails {
        let (ty, what) = match self.kind {
            TaskKind::Activity => (TASK_FAILED, "Task"),
            TaskKind::SubOrchestration => (SUB_ORCHESTRATION_FAILED, "Sub-orchestration"),
            TaskKind::Entity => (ENTITY_OPERATION_FAILED, "Entity operation"),
        };
        FailureDetails {
            inner_failure: Some(self.failure.clone()),
            ..FailureDetails::new(
                ty,
                format!(
                    "{what} '{}' (#{}) failed with an unhandled exception: {}",
                    self.name, self.task_id, self.failure.error_message
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_failure_converts_with_inner_details() {
        let tf = TaskFailedError {
            kind: TaskKind::Activity,
            name: "Hello".into(),
            task_id: 2,
            failure: Box::new(FailureDetails::new("ActivityFailure", "boom")),
        };
        let oe: OrchestrationError = tf.into();
        assert_eq!(oe.details().error_type, TASK_FAILED);
        assert_eq!(oe.message(), "Task 'Hello' (#2) failed with an unhandled exception: boom");
        assert!(oe.details().is_caused_by("ActivityFailure"));
    }

    #[test]
    fn std_errors_convert_with_type_name() {
        let e = serde_json::from_str::<u32>("x").unwrap_err();
        let oe: OrchestrationError = e.into();
        assert_eq!(oe.details().error_type, SERIALIZATION_ERROR);
        let io = std::io::Error::other("disk");
        let ae: ActivityError = io.into();
        assert_eq!(ae.details().error_type, "Error");
        assert_eq!(ae.details().error_message, "disk");
        assert!(ActivityError::non_retriable("x").details().is_non_retriable);
    }
}
