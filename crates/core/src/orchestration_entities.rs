//! Entities seen from an orchestration: signals, calls and critical sections.
//!
//! Every message an orchestration sends to an entity is an `EventSent` in its history and carries
//! the execution's stream and the next number towards that entity; the numbers come from the
//! code's own calls, so a replay (or the re-run of an episode whose checkpoint failed) sends the
//! same numbers and the entity applies each message once. Responses come back as `EventRaised`
//! events named after the request id.

use std::collections::HashMap;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::{CtxInner, DurableFuture, OrchestrationContext, SlotResult, TaskMeta};
use crate::actions::OrchestratorAction;
use crate::entity::EntityId;
use crate::entity::messages::{
    LOCK_ACQUIRED, RELEASE_EVENT_NAME, REQUEST_EVENT_NAME, ReleaseMessage, RequestMessage,
    ResponseMessage, Sequencing, scheduled_request_event_name, to_json,
};
use crate::error::{OrchestrationError, SERIALIZATION_ERROR, TaskFailedError, TaskKind};
use crate::history::{FailureDetails, OrchestrationInstance};
use crate::registry::{from_payload, to_payload};

/// Error type of a misuse of entities from an orchestration (DTF `LockingRulesViolationException`).
pub const LOCKING_RULES_VIOLATION: &str = "LockingRulesViolation";

#[derive(Debug, Clone, Default)]
struct SendCounter {
    seq: u64,
    last: Option<OffsetDateTime>,
    scheduled: u64,
}

/// The orchestration's entity bookkeeping (rebuilt identically by every replay).
#[derive(Debug, Default)]
pub(crate) struct EntityCtx {
    sends: HashMap<String, SendCounter>,
    /// The critical section: its id and sorted lock set, and whether the lock is held yet.
    critical: Option<(String, Vec<EntityId>)>,
}

impl EntityCtx {
    fn label(
        &mut self,
        execution_id: &str,
        destination: &str,
        now: OffsetDateTime,
        scheduled: bool,
    ) -> Sequencing {
        let c = self.sends.entry(destination.to_owned()).or_default();
        if scheduled {
            c.scheduled += 1;
            return Sequencing {
                stream: Some(format!("{execution_id}#s")),
                seq: c.scheduled,
                ordered: false,
                timestamp: now,
                predecessor: None,
            };
        }
        c.seq += 1;
        let predecessor = c.last;
        let ts = c.last.map_or(now, |l| l.max(now));
        c.last = Some(ts);
        Sequencing {
            stream: Some(execution_id.to_owned()),
            seq: c.seq,
            ordered: true,
            timestamp: ts,
            predecessor,
        }
    }
}

/// Namespace of the request ids orchestrations give their entity messages.
const REQUEST_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x2f6c_91d4_7a0b_4e8e_b3d2_5c17_0e9a_64f1);

/// A request's id: derived from its stream and number towards its destination, so that the
/// re-run of an episode whose checkpoint failed after sending gives the same request the same
/// id (a time-based id would differ: the entity would keep the first copy and answer an id the
/// orchestration no longer waits for).
fn request_id(instance_id: &str, destination: &str, seq: &Sequencing) -> String {
    let name = format!(
        "{instance_id}\n{destination}\n{}\n{}",
        seq.stream.as_deref().unwrap_or(""),
        seq.seq
    );
    uuid::Uuid::new_v5(&REQUEST_NAMESPACE, name.as_bytes()).to_string()
}

fn violation(message: impl Into<String>) -> OrchestrationError {
    OrchestrationError::with_type(LOCKING_RULES_VIOLATION, message)
}

/// Records the send of `name`/`data` to `target` (an `EventSent`).
fn push_send(i: &mut CtxInner, target: &EntityId, name: String, data: String) -> i32 {
    let id = i.take_id();
    i.actions.insert(
        id,
        OrchestratorAction::SendEvent {
            id,
            instance: OrchestrationInstance::new(target.instance_id()),
            name,
            data: Some(data),
        },
    );
    id
}

/// What distinguishes the requests an orchestration sends (operation or lock set).
struct RequestBody {
    operation: Option<String>,
    is_signal: bool,
    input: Option<String>,
    scheduled_time: Option<OffsetDateTime>,
    lock_set: Option<Vec<EntityId>>,
}

/// Numbers a request to `target` in this execution's stream, names it after stream and number,
/// and records its send (an `EventSent`). Returns the action id and the request id.
fn send_request(i: &mut CtxInner, target: &EntityId, body: RequestBody) -> (i32, String) {
    let (exec, now) = (i.execution_id.clone(), i.now);
    let seq = i.entities.label(&exec, &target.instance_id(), now, body.scheduled_time.is_some());
    let id = request_id(&i.instance_id, &target.instance_id(), &seq);
    let request = RequestMessage {
        operation: body.operation,
        is_signal: body.is_signal,
        input: body.input,
        id: id.clone(),
        parent_instance_id: Some(i.instance_id.clone()),
        parent_execution_id: Some(exec),
        scheduled_time: body.scheduled_time,
        lock_set: body.lock_set,
        position: 0,
        cleanup: false,
        seq,
    };
    let name = body
        .scheduled_time
        .map_or_else(|| REQUEST_EVENT_NAME.to_owned(), scheduled_request_event_name);
    (push_send(i, target, name, to_json(&request)), id)
}

/// Sends a release to every entity of the critical section and leaves it: on
/// [`EntityLock::release`], and when the orchestration completes, fails, continues as new or is
/// terminated while it holds locks (as DTF does).
pub(crate) fn release_all(i: &mut CtxInner) {
    let Some((lock_id, locks)) = i.entities.critical.take() else { return };
    let me = i.instance_id.clone();
    for target in locks {
        let seq = i.entities.label(&i.execution_id.clone(), &target.instance_id(), i.now, false);
        let release = ReleaseMessage { parent_instance_id: me.clone(), id: lock_id.clone(), seq };
        push_send(i, &target, RELEASE_EVENT_NAME.to_owned(), to_json(&release));
    }
}

fn decode_entity_response<O: DeserializeOwned>(
    meta: &TaskMeta,
    r: SlotResult,
) -> Result<O, TaskFailedError> {
    let fail = |failure| TaskFailedError {
        kind: TaskKind::Entity,
        name: meta.name.clone(),
        task_id: meta.id,
        failure: Box::new(failure),
    };
    let SlotResult::Ok(payload) = r else {
        return Err(fail(FailureDetails::new("InvalidResult", "unexpected completion")));
    };
    let response: ResponseMessage = serde_json::from_str(payload.as_deref().unwrap_or("null"))
        .map_err(|e| {
            fail(FailureDetails::new(
                SERIALIZATION_ERROR,
                format!("malformed entity response: {e}"),
            ))
        })?;
    if let Some(fd) = response.failure_details {
        return Err(fail(fd));
    }
    from_payload(response.result.as_deref()).map_err(|e| {
        fail(FailureDetails::new(
            SERIALIZATION_ERROR,
            format!("failed to deserialize the result of '{}': {e}", meta.name),
        ))
    })
}

fn decode_lock_response(_meta: &TaskMeta, r: SlotResult) -> Result<(), OrchestrationError> {
    let SlotResult::Ok(payload) = r else {
        return Err(OrchestrationError::new("unexpected lock completion"));
    };
    let response: Option<ResponseMessage> =
        serde_json::from_str(payload.as_deref().unwrap_or("null")).ok();
    match response {
        Some(ResponseMessage { result: Some(r), .. }) if r == LOCK_ACQUIRED => Ok(()),
        other => Err(OrchestrationError::new(format!("unexpected lock response: {other:?}"))),
    }
}

/// A held critical section: exclusive access to its entities until [`EntityLock::release`] or
/// the end of the orchestration.
#[derive(Debug)]
#[must_use = "the locks are held until release() or the end of the orchestration"]
pub struct EntityLock {
    ctx: OrchestrationContext,
    entities: Vec<EntityId>,
}

impl EntityLock {
    /// The locked entities, sorted.
    pub fn entities(&self) -> &[EntityId] {
        &self.entities
    }

    /// Leaves the critical section: every entity is released (a release message each).
    pub fn release(self) {
        release_all(&mut self.ctx.inner.borrow_mut());
    }
}

impl OrchestrationContext {
    /// Signals `operation` on entity `id` (one-way: no result, no wait).
    ///
    /// # Errors
    /// `LockingRulesViolation` when `id` is locked by this orchestration's critical section
    /// (call it instead); a `SerializationError` when `input` does not serialize; an invalid id.
    pub fn signal_entity<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> Result<(), OrchestrationError> {
        self.signal_inner(id, operation, input, None)
    }

    /// Signals `operation` on entity `id`, to be applied no earlier than `at`.
    ///
    /// # Errors
    /// As [`Self::signal_entity`].
    pub fn signal_entity_at<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
        at: OffsetDateTime,
    ) -> Result<(), OrchestrationError> {
        self.signal_inner(id, operation, input, Some(at))
    }

    fn signal_inner<I: Serialize + ?Sized>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
        at: Option<OffsetDateTime>,
    ) -> Result<(), OrchestrationError> {
        id.validate()
            .map_err(|e| OrchestrationError::with_type("InvalidEntityId", e.to_string()))?;
        let input = to_payload(input)?;
        if self.locked(id) {
            return Err(violation(format!(
                "must not signal {id}: it is locked by this orchestration's critical section (call it instead)"
            )));
        }
        let body = RequestBody {
            operation: Some(operation.to_owned()),
            is_signal: true,
            input,
            scheduled_time: at,
            lock_set: None,
        };
        send_request(&mut self.inner.borrow_mut(), id, body);
        Ok(())
    }

    fn locked(&self, id: &EntityId) -> bool {
        self.inner.borrow().entities.critical.as_ref().is_some_and(|(_, l)| l.contains(id))
    }

    /// Whether this orchestration is inside a critical section (between
    /// [`Self::lock_entities`] and [`EntityLock::release`]).
    pub fn is_in_critical_section(&self) -> bool {
        self.inner.borrow().entities.critical.is_some()
    }

    /// Calls `operation` on entity `id` and waits for its result. Inside a critical section
    /// only the locked entities may be called.
    pub fn call_entity<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        id: &EntityId,
        operation: &str,
        input: &I,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        let meta = TaskMeta { kind: TaskKind::Entity, name: format!("{id}.{operation}"), id: -1 };
        let decode = decode_entity_response::<O>;
        if let Err(e) = id.validate() {
            return self.failed_future(
                meta,
                decode,
                FailureDetails::new("InvalidEntityId", e.to_string()),
            );
        }
        let input = match to_payload(input) {
            Ok(i) => i,
            Err(e) => {
                return self.failed_future(
                    meta,
                    decode,
                    FailureDetails::new(SERIALIZATION_ERROR, e.to_string()),
                );
            }
        };
        let in_section = self.is_in_critical_section();
        if in_section && !self.locked(id) {
            let msg = format!("must not call {id} from a critical section that does not lock it");
            return self.failed_future(
                meta,
                decode,
                FailureDetails::new(LOCKING_RULES_VIOLATION, msg),
            );
        }
        let body = RequestBody {
            operation: Some(operation.to_owned()),
            is_signal: false,
            input,
            scheduled_time: None,
            lock_set: None,
        };
        let (task_id, request_id) = send_request(&mut self.inner.borrow_mut(), id, body);
        self.event_waiter(&request_id, TaskMeta { id: task_id, ..meta }, decode)
    }

    /// Enters a critical section: locks `ids` (sorted, de-duplicated; acquired one after the
    /// other in that order, so overlapping critical sections cannot deadlock) and resolves once
    /// all are held. The locks last until [`EntityLock::release`] or the end of the
    /// orchestration.
    ///
    /// # Errors
    /// `LockingRulesViolation` when already in a critical section or `ids` is empty; an
    /// invalid id.
    pub fn lock_entities(
        &self,
        ids: &[EntityId],
    ) -> impl Future<Output = Result<EntityLock, OrchestrationError>> + 'static {
        let mut locks: Vec<EntityId> = ids.to_vec();
        locks.sort();
        locks.dedup();
        let checked = if self.is_in_critical_section() {
            Err(violation("must not enter a critical section from inside another"))
        } else if locks.is_empty() {
            Err(violation("a critical section must lock at least one entity"))
        } else if let Some(e) = locks.iter().find_map(|l| l.validate().err()) {
            Err(OrchestrationError::with_type("InvalidEntityId", e.to_string()))
        } else {
            Ok(())
        };
        let waiter = checked.map(|()| {
            let mut i = self.inner.borrow_mut();
            let body = RequestBody {
                operation: None,
                is_signal: false,
                input: None,
                scheduled_time: None,
                lock_set: Some(locks.clone()),
            };
            let (task_id, request_id) = send_request(&mut i, &locks[0], body);
            i.entities.critical = Some((request_id.clone(), locks.clone()));
            drop(i);
            let meta = TaskMeta { kind: TaskKind::Entity, name: "lock".into(), id: task_id };
            self.event_waiter(&request_id, meta, decode_lock_response)
        });
        let ctx = self.clone();
        async move {
            waiter?.await?;
            Ok(EntityLock { ctx, entities: locks })
        }
    }
}
