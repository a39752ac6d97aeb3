//! The entity batch step (DTF `TaskEntityDispatcher.OnProcessWorkItemAsync`, minus I/O): decode
//! the batch's messages, de-duplicate and order them, decide which requests run now (locks),
//! apply the operations in one call of the entity function, and continue as new with the
//! scheduler state as input.

use std::collections::VecDeque;
use std::time::Duration;

use time::OffsetDateTime;

use super::EntityId;
use super::context::{BatchRequest, OperationRequest};
use super::messages::{
    Incoming, LOCK_ACQUIRED, RequestMessage, ResponseMessage, Sequencing, request_message,
    response_message,
};
use super::sorter::Sorted;
use super::state::SchedulerState;
use crate::history::{
    EventKind, ExecutionStartedEvent, HistoryEvent, NO_EVENT_ID, OrchestrationInstance, TaskMessage,
};
use crate::registry::Registry;
use crate::runtime::{Checkpoint, ProcessError, RuntimeOptions, WorkItemResult};
use crate::state::{InvalidHistoryError, OrchestrationRuntimeState};

/// Namespace of the ids of the signals entities send (derived from stream and number, so a
/// re-run batch sends the same ids).
const SIGNAL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5b1c_0e0a_3f7d_4c1e_9d55_8a0f_6c2b_e417);

/// A scheduled signal that arrives more than this before its due time is sent again (a queue
/// caps visibility delays).
/// Marks a release in the scheduler's queue (a release has no operation and no lock set).
pub(crate) const RELEASE_POSITION: usize = usize::MAX;

const EARLY_TOLERANCE: time::Duration = time::Duration::milliseconds(100);

/// What one batch did (for logs and tests).
#[derive(Debug, Default)]
struct Work {
    operations: Vec<RequestMessage>,
    outgoing: Vec<TaskMessage>,
    duplicates: usize,
    /// A client asked the entity to complete if it is empty and idle.
    cleanup: bool,
}

struct Batch<'a> {
    id: EntityId,
    instance_id: String,
    /// Names streams opened by this batch (deterministic for a re-run of the same batch).
    stream_seed: String,
    scheduler: SchedulerState,
    now: OffsetDateTime,
    window: Duration,
    max_message_bytes: Option<usize>,
    work: Work,
    registry: &'a Registry,
}

/// Processes one entity work item: `state` is the entity's stored execution, `messages` the
/// batch. The result continues as new with the scheduler state as input (also for a batch of
/// duplicates, so that a row a crash left behind is rewritten), or is a discard when no message
/// of the batch was an entity message that changed anything.
///
/// # Errors
/// [`ProcessError`] when the stored scheduler state is corrupt or the entity is not registered.
pub fn process_entity_work_item(
    registry: &Registry,
    state: OrchestrationRuntimeState,
    messages: Vec<TaskMessage>,
    now: OffsetDateTime,
    options: &RuntimeOptions,
    previous_checkpoint_finished: bool,
    new_id: &mut dyn FnMut() -> String,
) -> Result<WorkItemResult, ProcessError> {
    let instance_id = messages
        .first()
        .map(|m| m.orchestration_instance.instance_id.clone())
        .or_else(|| state.execution_started().map(|s| s.orchestration_instance.instance_id.clone()))
        .unwrap_or_default();
    let Ok(id) = EntityId::from_instance_id(&instance_id) else {
        return Ok(WorkItemResult::Discard { reason: format!("{instance_id:?} is not an entity") });
    };
    // An entity that completed (removed by a clean-up, not purged yet) starts afresh.
    let started = state.execution_started().filter(|_| !state.is_completed());
    let old_input = started.and_then(|s| s.input.clone());
    let scheduler =
        SchedulerState::from_input(old_input.as_deref()).map_err(InvalidHistoryError)?;
    let stream_seed = started
        .and_then(|s| s.orchestration_instance.execution_id.clone())
        .unwrap_or_else(&mut *new_id);
    let mut b = Batch {
        id,
        instance_id,
        stream_seed,
        scheduler,
        now,
        window: options.entity_reorder_window,
        max_message_bytes: options.max_message_bytes,
        work: Work::default(),
        registry,
    };
    if !previous_checkpoint_finished && !b.scheduler.outbox.is_empty() {
        // The last checkpoint committed these but may have died before sending them: send them
        // again first (same numbers: receivers drop the copies).
        tracing::debug!(instance_id = %b.instance_id, messages = b.scheduler.outbox.len(), "EntityOutboxResent");
        b.work.outgoing = std::mem::take(&mut b.scheduler.outbox);
    } else {
        b.scheduler.outbox.clear();
    }
    b.receive(messages);
    b.run()?;
    // What this batch sends is part of its committed state (the checkpoint commits before it
    // sends).
    b.scheduler.outbox.clone_from(&b.work.outgoing);
    let new_input = b.scheduler.to_input();
    if b.work.cleanup && b.scheduler.is_empty() && b.scheduler.sorter.is_idle() {
        tracing::info!(instance_id = %b.instance_id, "EntityRemoved: empty and idle");
        return b.complete(new_input, new_id());
    }
    // A batch of copies still checkpoints: copies come back when a checkpoint died between its
    // History and Instances writes, and rewriting the row is what repairs it. So does a refused
    // clean-up request: the new last-updated time is its answer. Only a batch with nothing an
    // entity understands is a discard.
    if b.work.outgoing.is_empty()
        && b.work.duplicates == 0
        && !b.work.cleanup
        && old_input.as_deref() == Some(new_input.as_str())
    {
        return Ok(WorkItemResult::Discard {
            reason: "no entity message in the batch changed the entity".to_owned(),
        });
    }
    tracing::debug!(
        instance_id = %b.instance_id,
        operations = b.work.operations.len(),
        duplicates = b.work.duplicates,
        backlog = b.scheduler.queue.len(),
        locked_by = b.scheduler.locked_by.as_deref().unwrap_or(""),
        "EntityBatchExecuted"
    );
    b.checkpoint(new_input, new_id())
}

impl Batch<'_> {
    /// Decodes, de-duplicates and orders the messages into the scheduler's queue.
    fn receive(&mut self, messages: Vec<TaskMessage>) {
        let mut arrived = Vec::new();
        for m in messages {
            let EventKind::EventRaised { name, input } = &m.event.kind else {
                tracing::warn!(instance_id = %self.instance_id, event_type = %m.event.event_type(), "DiscardingMessage: entities only process entity messages");
                continue;
            };
            match Incoming::decode(name, input.as_deref()) {
                Ok(Some(incoming)) => arrived.push(incoming),
                Ok(None) => {
                    tracing::warn!(instance_id = %self.instance_id, event_name = %name, "DiscardingMessage: not an entity message")
                }
                Err(e) => {
                    tracing::warn!(instance_id = %self.instance_id, error = %e, "DiscardingMessage: malformed entity message")
                }
            }
        }
        for m in arrived {
            if let Incoming::Request(r) = &m
                && let Some(due) = r.scheduled_time
                && due - self.now > EARLY_TOLERANCE
            {
                // Delivered before its time (a queue's delay limit): send it again.
                let again = request_message(&self.id, r, self.now);
                self.work.outgoing.push(again);
                continue;
            }
            match self.scheduler.sorter.receive(m, self.now, self.window) {
                Sorted::Deliver(list) => list.into_iter().for_each(|m| self.enqueue(m)),
                Sorted::Duplicate => self.work.duplicates += 1,
                Sorted::Buffered => {}
            }
        }
        for m in self.scheduler.sorter.expire(self.now, self.window) {
            self.enqueue(m);
        }
    }

    /// Queues a delivered message: the lock holder's go before everyone else's.
    fn enqueue(&mut self, m: Incoming) {
        let request = match m {
            Incoming::Request(r) => r,
            Incoming::Release(r) => {
                // A release is a request without an operation in the queue, so that it applies
                // after the holder's earlier requests of the same batch.
                RequestMessage {
                    operation: None,
                    is_signal: true,
                    input: None,
                    id: r.id,
                    parent_instance_id: Some(r.parent_instance_id),
                    parent_execution_id: None,
                    scheduled_time: None,
                    lock_set: None,
                    position: RELEASE_POSITION,
                    cleanup: false,
                    seq: r.seq,
                }
            }
        };
        let holder = self.scheduler.locked_by.is_some()
            && request.parent_instance_id == self.scheduler.locked_by;
        if holder {
            let pos = self
                .scheduler
                .queue
                .iter()
                .position(|q| q.parent_instance_id != self.scheduler.locked_by)
                .unwrap_or(self.scheduler.queue.len());
            self.scheduler.queue.insert(pos, request);
        } else {
            self.scheduler.queue.push_back(request);
        }
    }

    /// Takes requests off the queue while the lock allows, processing lock requests and releases
    /// in order, then applies the operations.
    fn run(&mut self) -> Result<(), ProcessError> {
        while let Some(front) = self.scheduler.queue.front() {
            let from_holder = front.parent_instance_id.is_some()
                && front.parent_instance_id == self.scheduler.locked_by;
            let is_release = front.position == RELEASE_POSITION && front.operation.is_none();
            if self.scheduler.locked_by.is_some() && !from_holder && !is_release {
                break;
            }
            let Some(r) = self.scheduler.queue.pop_front() else { break };
            if is_release {
                if from_holder {
                    self.release();
                }
                continue;
            }
            if r.cleanup {
                self.work.cleanup = true;
            } else if r.is_lock_request() {
                self.acquire(r);
            } else if r.operation.is_some() {
                self.work.operations.push(r);
            }
        }
        self.apply()
    }

    fn release(&mut self) {
        tracing::debug!(instance_id = %self.instance_id, locked_by = self.scheduler.locked_by.as_deref().unwrap_or(""), "EntityLockReleased");
        self.scheduler.locked_by = None;
        self.scheduler.lock_id = None;
    }

    fn acquire(&mut self, mut r: RequestMessage) {
        let holder = r.parent_instance_id.clone();
        tracing::debug!(instance_id = %self.instance_id, locked_by = holder.as_deref().unwrap_or(""), request_id = %r.id, "EntityLockAcquired");
        self.scheduler.locked_by = holder.clone();
        self.scheduler.lock_id = Some(r.id.clone());
        // The holder's requests already queued go first now.
        let (mut mine, others): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.scheduler.queue)
                .into_iter()
                .partition(|q| q.parent_instance_id == holder);
        mine.extend(others);
        self.scheduler.queue = mine;
        let lock_set = r.lock_set.clone().unwrap_or_default();
        r.position += 1;
        if let Some(next) = lock_set.get(r.position) {
            r.seq = self.label(&next.instance_id(), false);
            self.work.outgoing.push(request_message(next, &r, self.now));
        } else if let Some(parent) = holder {
            let to = instance_of(parent, r.parent_execution_id.clone());
            let response =
                ResponseMessage { result: Some(LOCK_ACQUIRED.to_owned()), failure_details: None };
            self.work.outgoing.push(response_message(to, &r.id, &response, self.now));
        }
    }

    fn label(&mut self, destination: &str, scheduled: bool) -> Sequencing {
        self.scheduler.sorter.label(destination, self.now, scheduled, &self.stream_seed)
    }

    /// Applies the operations in one call of the entity function; responses go to callers,
    /// signals of successful operations to their targets.
    fn apply(&mut self) -> Result<(), ProcessError> {
        if self.work.operations.is_empty() {
            return Ok(());
        }
        let f = self
            .registry
            .entity(self.id.name())
            .cloned()
            .ok_or_else(|| ProcessError::EntityNotRegistered(self.id.name().to_owned()))?;
        let requests: Vec<OperationRequest> = self
            .work
            .operations
            .iter()
            .map(|r| OperationRequest {
                operation: r.operation.clone().unwrap_or_default(),
                input: r.input.clone(),
                call: !r.is_signal && r.parent_instance_id.is_some(),
            })
            .collect();
        let result = f(BatchRequest {
            id: &self.id,
            state: self.scheduler.entity_state.as_deref(),
            operations: &requests,
            now: self.now,
            max_message_bytes: self.max_message_bytes,
        });
        let operations = std::mem::take(&mut self.work.operations);
        for (r, outcome) in operations.iter().zip(&result.results) {
            let failed = outcome.as_ref().err();
            if let Some(fd) = failed {
                tracing::debug!(instance_id = %self.instance_id, operation = r.operation.as_deref().unwrap_or(""), error = %fd, "EntityOperationFailed");
            }
            if r.is_signal {
                continue;
            }
            let Some(parent) = r.parent_instance_id.clone() else { continue };
            let response = match outcome {
                Ok(out) => ResponseMessage { result: out.clone(), failure_details: None },
                Err(fd) => ResponseMessage { result: None, failure_details: Some(fd.clone()) },
            };
            let to = instance_of(parent, r.parent_execution_id.clone());
            let mut m = response_message(to.clone(), &r.id, &response, self.now);
            if self.too_large(&m) {
                // An entity function that does not check (the typed ones do, and roll back).
                let fd = crate::history::FailureDetails::new(
                    super::context::MESSAGE_TOO_LARGE,
                    "the result is larger than the provider's message limit",
                );
                let failed = ResponseMessage { result: None, failure_details: Some(fd) };
                m = response_message(to, &r.id, &failed, self.now);
            }
            self.work.outgoing.push(m);
        }
        self.work.operations = operations;
        self.scheduler.entity_exists = result.state.is_some();
        self.scheduler.entity_state = result.state;
        for s in result.signals {
            let seq = self.label(&s.target.instance_id(), s.at.is_some());
            let id = signal_id(&seq);
            let request = RequestMessage {
                operation: Some(s.operation),
                is_signal: true,
                input: s.input,
                id,
                parent_instance_id: Some(self.instance_id.clone()),
                parent_execution_id: None,
                scheduled_time: s.at,
                lock_set: None,
                position: 0,
                cleanup: false,
                seq,
            };
            let m = request_message(&s.target, &request, self.now);
            if self.too_large(&m) {
                tracing::error!(instance_id = %self.instance_id, target = %s.target, "EntitySignalDropped: larger than the provider's message limit");
                continue;
            }
            self.work.outgoing.push(m);
        }
        Ok(())
    }

    fn too_large(&self, m: &TaskMessage) -> bool {
        self.max_message_bytes.is_some_and(|limit| super::messages::message_size(m) > limit)
    }

    /// Completes the (empty, idle) entity: a terminal instance a client can purge.
    fn complete(self, input: String, execution: String) -> Result<WorkItemResult, ProcessError> {
        self.finish(input, execution, true)
    }

    /// Continues as new: the next execution's input is the scheduler state.
    fn checkpoint(
        self,
        input: String,
        next_execution: String,
    ) -> Result<WorkItemResult, ProcessError> {
        self.finish(input, next_execution, false)
    }

    fn finish(
        self,
        input: String,
        next_execution: String,
        completed: bool,
    ) -> Result<WorkItemResult, ProcessError> {
        let mut start = ExecutionStartedEvent::new(
            OrchestrationInstance::with_execution(self.instance_id.clone(), next_execution),
            self.id.name(),
            Some(input),
        );
        start.version = None;
        let mut state = OrchestrationRuntimeState::new();
        state.add_event(HistoryEvent::new(
            NO_EVENT_ID,
            self.now,
            EventKind::OrchestratorStarted,
        ))?;
        state.add_event(HistoryEvent::new(
            NO_EVENT_ID,
            self.now,
            EventKind::ExecutionStarted(start),
        ))?;
        if completed {
            state.add_event(HistoryEvent::new(
                NO_EVENT_ID,
                self.now,
                EventKind::ExecutionCompleted {
                    orchestration_status: crate::state::OrchestrationStatus::Completed,
                    result: None,
                    failure_details: None,
                },
            ))?;
        }
        state.add_event(HistoryEvent::new(
            NO_EVENT_ID,
            self.now,
            EventKind::OrchestratorCompleted,
        ))?;
        let status = super::messages::to_json(&self.scheduler.status());
        let orchestration_state = state
            .to_state(Some(status), self.now)
            .ok_or_else(|| InvalidHistoryError("missing ExecutionStarted".into()))?;
        Ok(WorkItemResult::Checkpoint(Box::new(Checkpoint {
            runtime_state: state,
            activity_messages: Vec::new(),
            orchestrator_messages: self.work.outgoing,
            timer_messages: Vec::new(),
            state: orchestration_state,
            generations_continued: 1,
            commit_before_send: true,
        })))
    }
}

fn instance_of(instance_id: String, execution_id: Option<String>) -> OrchestrationInstance {
    OrchestrationInstance { instance_id, execution_id }
}

/// The id of a signal an entity sends: derived from its stream and number.
fn signal_id(seq: &Sequencing) -> String {
    let name = format!("{}#{}", seq.stream.as_deref().unwrap_or(""), seq.seq);
    uuid::Uuid::new_v5(&SIGNAL_NAMESPACE, name.as_bytes()).to_string()
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
