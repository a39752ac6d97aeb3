//! What an entity function sees ([`EntityContext`]) and the type-erased batch function a
//! registration becomes ([`EntityFn`]).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::EntityId;
use crate::error::{PANIC_ERROR, SERIALIZATION_ERROR};
use crate::history::FailureDetails;
use crate::registry::{from_payload, to_payload};

/// Error type of an operation failure created with [`EntityError::new`].
pub const ENTITY_OPERATION_FAILED: &str = "EntityOperationFailed";
/// Error type of an operation whose result or signal would exceed the provider's message limit.
pub const MESSAGE_TOO_LARGE: &str = "MessageTooLarge";

/// A failed entity operation (the `Err` of an entity function). Its state change is rolled back,
/// its signals are not sent, and a caller receives the failure.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityError {
    details: FailureDetails,
}

impl EntityError {
    /// A failure with `message` (error type `EntityOperationFailed`).
    pub fn new(message: impl Into<String>) -> Self {
        Self { details: FailureDetails::new(ENTITY_OPERATION_FAILED, message) }
    }

    /// A failure with an explicit error type.
    pub fn with_type(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { details: FailureDetails::new(error_type, message) }
    }

    /// The failure details a caller receives.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }

    /// Consumes the error, returning its details.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }
}

impl fmt::Display for EntityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.details, f)
    }
}

impl<E> From<E> for EntityError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let any: &dyn std::any::Any = &e;
        if any.downcast_ref::<serde_json::Error>().is_some() {
            return Self::with_type(SERIALIZATION_ERROR, e.to_string());
        }
        Self::with_type(crate::error::type_name_of::<E>(), e.to_string())
    }
}

/// A signal an operation sends (sent only if the operation succeeds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySignal {
    /// The target.
    pub target: EntityId,
    /// The operation.
    pub operation: String,
    /// The serialized input.
    pub input: Option<String>,
    /// Deliver no earlier than this.
    pub at: Option<OffsetDateTime>,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRequest {
    /// The operation name.
    pub operation: String,
    /// The serialized input.
    pub input: Option<String>,
    /// A call (its result is sent back) rather than a signal.
    pub call: bool,
}

/// What an [`EntityFn`] is given: the entity, its serialized state and the operations, in order.
#[derive(Debug, Clone)]
pub struct BatchRequest<'a> {
    /// The entity.
    pub id: &'a EntityId,
    /// Its serialized state (`None`: it has none).
    pub state: Option<&'a str>,
    /// The operations, in order.
    pub operations: &'a [OperationRequest],
    /// The batch's time.
    pub now: OffsetDateTime,
    /// The provider's message limit: a call's result or a signal that would not fit fails the
    /// operation.
    pub max_message_bytes: Option<usize>,
}

/// What an [`EntityFn`] returns: the state after the batch, one result per operation and the
/// signals of the operations that succeeded, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult {
    /// The serialized state after the batch (`None`: deleted / none).
    pub state: Option<String>,
    /// One result per operation: the serialized output, or the failure.
    pub results: Vec<Result<Option<String>, FailureDetails>>,
    /// Signals to send.
    pub signals: Vec<EntitySignal>,
}

/// A registered entity, type-erased: applies a batch of operations.
pub type EntityFn = Arc<dyn Fn(BatchRequest<'_>) -> BatchResult + Send + Sync>;

/// The context of one entity operation, with typed state `S`.
///
/// The state is loaded once per batch and saved once after it; an operation that returns `Err`
/// (or panics) leaves the state as it found it.
#[derive(Debug)]
pub struct EntityContext<S> {
    id: EntityId,
    operation: String,
    input: Option<String>,
    state: Option<S>,
    signals: Vec<EntitySignal>,
    now: OffsetDateTime,
    max_message_bytes: Option<usize>,
}

impl<S> EntityContext<S> {
    /// The entity.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// The operation name, as the caller gave it.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The operation input.
    ///
    /// # Errors
    /// A `SerializationError` when the input does not deserialize as `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, EntityError> {
        from_payload(self.input.as_deref()).map_err(|e| {
            EntityError::with_type(
                SERIALIZATION_ERROR,
                format!("failed to deserialize the input of operation '{}': {e}", self.operation),
            )
        })
    }

    /// Whether the entity has state.
    pub fn has_state(&self) -> bool {
        self.state.is_some()
    }

    /// The state, if any.
    pub fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    /// The state, created with `S::default()` if there is none.
    pub fn state_mut(&mut self) -> &mut S
    where
        S: Default,
    {
        self.state.get_or_insert_with(S::default)
    }

    /// Replaces the state.
    pub fn set_state(&mut self, state: S) {
        self.state = Some(state);
    }

    /// Deletes the state (the entity stops existing once its batch is checkpointed).
    pub fn delete_state(&mut self) {
        self.state = None;
    }

    /// The batch's time (the same for every operation of a batch).
    pub fn current_utc_datetime(&self) -> OffsetDateTime {
        self.now
    }

    /// Signals `operation` on another entity (sent once this operation succeeds, in order).
    ///
    /// # Errors
    /// An invalid target id, or an input that does not serialize.
    pub fn signal_entity<I: Serialize + ?Sized>(
        &mut self,
        target: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<(), EntityError> {
        self.push_signal(target, operation, input, None)
    }

    /// Signals `operation` on another entity, to be applied no earlier than `at`.
    ///
    /// # Errors
    /// As [`Self::signal_entity`].
    pub fn signal_entity_at<I: Serialize + ?Sized>(
        &mut self,
        target: &EntityId,
        operation: &str,
        input: &I,
        at: OffsetDateTime,
    ) -> Result<(), EntityError> {
        self.push_signal(target, operation, input, Some(at))
    }

    fn push_signal<I: Serialize + ?Sized>(
        &mut self,
        target: &EntityId,
        operation: &str,
        input: &I,
        at: Option<OffsetDateTime>,
    ) -> Result<(), EntityError> {
        target.validate().map_err(|e| EntityError::with_type("InvalidEntityId", e.to_string()))?;
        let input = to_payload(input)?;
        if let Err(size) = super::messages::signal_fits(
            target,
            operation,
            input.as_deref(),
            self.max_message_bytes,
        ) {
            return Err(EntityError::with_type(
                MESSAGE_TOO_LARGE,
                format!(
                    "a signal of '{operation}' to {target} would be a message of about {size} bytes; \
                     the provider accepts {} at most",
                    self.max_message_bytes.unwrap_or_default()
                ),
            ));
        }
        self.signals.push(EntitySignal {
            target: target.clone(),
            operation: operation.to_owned(),
            input,
            at,
        });
        Ok(())
    }
}

/// A call's result must fit in a response message; a signal's result is not sent.
fn result_fits(
    op: &OperationRequest,
    payload: Option<String>,
    limit: Option<usize>,
) -> Result<Option<String>, FailureDetails> {
    if !op.call {
        return Ok(payload);
    }
    match super::messages::response_fits(payload.as_deref(), limit) {
        Ok(()) => Ok(payload),
        Err(size) => Err(FailureDetails::new(
            MESSAGE_TOO_LARGE,
            format!(
                "the result of '{}' would be a response of about {size} bytes; the provider \
                 accepts {} at most (the operation was rolled back)",
                op.operation,
                limit.unwrap_or_default()
            ),
        )),
    }
}

/// Wraps a typed entity function as an [`EntityFn`].
pub(crate) fn typed<S, R, F>(f: F) -> EntityFn
where
    S: Serialize + DeserializeOwned + Clone + Send + 'static,
    R: Serialize,
    F: Fn(&mut EntityContext<S>) -> Result<R, EntityError> + Send + Sync + 'static,
{
    Arc::new(move |req: BatchRequest<'_>| {
        let fail_all = |details: FailureDetails| BatchResult {
            state: req.state.map(str::to_owned),
            results: req.operations.iter().map(|_| Err(details.clone())).collect(),
            signals: Vec::new(),
        };
        let mut state: Option<S> = match req.state.map(serde_json::from_str::<S>) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                return fail_all(FailureDetails::new(
                    SERIALIZATION_ERROR,
                    format!("failed to deserialize the state of entity {}: {e}", req.id),
                ));
            }
        };
        let mut results = Vec::with_capacity(req.operations.len());
        let mut signals = Vec::new();
        for op in req.operations {
            let mut ctx = EntityContext {
                id: req.id.clone(),
                operation: op.operation.clone(),
                input: op.input.clone(),
                state: state.clone(),
                signals: Vec::new(),
                now: req.now,
                max_message_bytes: req.max_message_bytes,
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut ctx)));
            let result = match outcome {
                Ok(Ok(out)) => to_payload(&out)
                    .map_err(|e| {
                        FailureDetails::new(
                            SERIALIZATION_ERROR,
                            format!("failed to serialize the result of '{}': {e}", op.operation),
                        )
                    })
                    .and_then(|p| result_fits(op, p, req.max_message_bytes)),
                Ok(Err(e)) => Err(e.into_details()),
                Err(p) => Err(FailureDetails::new(
                    PANIC_ERROR,
                    crate::error::panic_message(p.as_ref(), "entity operation panicked"),
                )),
            };
            if result.is_ok() {
                state = ctx.state;
                signals.append(&mut ctx.signals);
            }
            results.push(result);
        }
        match state.as_ref().map(serde_json::to_string).transpose() {
            Ok(state) => BatchResult { state, results, signals },
            Err(e) => fail_all(FailureDetails::new(
                SERIALIZATION_ERROR,
                format!("failed to serialize the state of entity {}: {e}", req.id),
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn counter() -> EntityFn {
        typed(|ctx: &mut EntityContext<i64>| match ctx.operation() {
            "add" => {
                let n: i64 = ctx.input()?;
                *ctx.state_mut() += n;
                Ok(None)
            }
            "get" => Ok(Some(ctx.state().copied().unwrap_or(0))),
            "fail_after_add" => {
                *ctx.state_mut() += 100;
                ctx.signal_entity(&EntityId::new("log", "x"), "never", &1)?;
                Err(EntityError::new("nope"))
            }
            "panic" => {
                *ctx.state_mut() += 1000;
                panic!("boom")
            }
            "delete" => {
                ctx.delete_state();
                Ok(None)
            }
            "signal" => {
                ctx.signal_entity(&EntityId::new("log", "x"), "wrote", &ctx.state().copied())?;
                Ok(None)
            }
            other => Err(EntityError::new(format!("unknown operation {other}"))),
        })
    }

    fn ops(list: &[(&str, Option<&str>)]) -> Vec<OperationRequest> {
        list.iter()
            .map(|(o, i)| OperationRequest {
                operation: (*o).into(),
                input: i.map(Into::into),
                call: true,
            })
            .collect()
    }

    #[test]
    fn failures_and_panics_roll_back_only_their_own_operation() {
        let id = EntityId::new("counter", "a");
        let f = counter();
        let operations = ops(&[
            ("add", Some("5")),
            ("fail_after_add", None),
            ("panic", None),
            ("add", Some("\"x\"")),
            ("signal", None),
            ("get", None),
        ]);
        let r = f(BatchRequest {
            id: &id,
            state: Some("1"),
            operations: &operations,
            now: datetime!(2026-01-01 0:00 UTC),
            max_message_bytes: None,
        });
        assert_eq!(r.state.as_deref(), Some("6"));
        assert_eq!(r.results[0], Ok(None));
        assert_eq!(r.results[1].as_ref().unwrap_err().error_message, "nope");
        let p = r.results[2].as_ref().unwrap_err();
        assert_eq!((p.error_type.as_str(), p.error_message.as_str()), (PANIC_ERROR, "boom"));
        assert_eq!(r.results[3].as_ref().unwrap_err().error_type, SERIALIZATION_ERROR);
        assert_eq!(r.results[5], Ok(Some("6".into())));
        // Only the successful operation's signal is kept.
        assert_eq!(r.signals.len(), 1);
        assert_eq!(r.signals[0].operation, "wrote");
    }

    #[test]
    fn delete_and_bad_stored_state() {
        let id = EntityId::new("counter", "a");
        let f = counter();
        let operations = ops(&[("delete", None)]);
        let now = datetime!(2026-01-01 0:00 UTC);
        let r = f(BatchRequest {
            id: &id,
            state: Some("3"),
            operations: &operations,
            now,
            max_message_bytes: None,
        });
        assert_eq!(r.state, None);
        let r = f(BatchRequest {
            id: &id,
            state: Some("{\"not\":1}"),
            operations: &operations,
            now,
            max_message_bytes: None,
        });
        assert_eq!(r.state.as_deref(), Some("{\"not\":1}"), "a state that does not load is kept");
        assert_eq!(r.results[0].as_ref().unwrap_err().error_type, SERIALIZATION_ERROR);
    }
}
