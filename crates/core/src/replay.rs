//! The replay engine (DTF `TaskOrchestrationExecutor`): a pure, synchronous function of
//! (orchestration, past events, new events) → (actions, custom status).
//!
//! It walks the past events with `is_replaying = true`, then the new events, driving the
//! orchestration future after every event with a local waker. Decision echoes are checked against
//! the actions the code produced (by id, then type, then case-insensitive name); a mismatch ends the
//! execution Failed with a message starting [`NON_DETERMINISTIC_PREFIX`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::future::LocalBoxFuture;
use time::OffsetDateTime;

use crate::actions::{CompletionAction, OrchestratorAction};
use crate::error::{
    NON_DETERMINISTIC_ERROR, NON_DETERMINISTIC_PREFIX, OrchestrationError, PANIC_ERROR,
};
use crate::history::{EventKind, FAKE_TIMER_ID_TO_SPLIT_DECISION, FailureDetails, HistoryEvent};
use crate::orchestration::{CtxInner, OrchestrationContext, SlotResult};
use crate::registry::{OrchestrationFn, Registry};
use crate::state::OrchestrationStatus;

/// Upper bound on consecutive self-wakes while driving the orchestration after one event.
const MAX_POLLS_PER_EVENT: usize = 100_000;

/// Output of one replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayResult {
    /// New decisions in action-id order (the completion action, if any, last).
    pub actions: Vec<OrchestratorAction>,
    /// The custom status last set by the code (`None` if never set in this execution).
    pub custom_status: Option<String>,
}

impl ReplayResult {
    /// The completion action, if the execution ended.
    pub fn completion(&self) -> Option<&CompletionAction> {
        self.actions.iter().rev().find_map(|a| match a {
            OrchestratorAction::Complete(c) => Some(c),
            _ => None,
        })
    }
}

/// Why replay could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The history names an orchestration the registry does not have (DTF `TypeMissingException`).
    #[error("orchestration '{0}' is not registered")]
    NotRegistered(String),
}

/// Replays `past` then `new` against the orchestration registered under the history's name.
///
/// A history without `ExecutionStarted` yields no actions.
///
/// # Errors
/// [`ReplayError::NotRegistered`].
pub fn execute(
    registry: &Registry,
    past: &[HistoryEvent],
    new: &[HistoryEvent],
) -> Result<ReplayResult, ReplayError> {
    let started = past.iter().chain(new).find_map(|e| match &e.kind {
        EventKind::ExecutionStarted(s) => Some(s),
        _ => None,
    });
    let Some(started) = started else {
        return Ok(ReplayResult { actions: Vec::new(), custom_status: None });
    };
    let f = registry
        .orchestration(&started.name)
        .ok_or_else(|| ReplayError::NotRegistered(started.name.clone()))?;
    Ok(execute_fn(f, past, new))
}

/// Replays `past` then `new` against `orchestration` (see [`execute`]).
pub fn execute_fn(
    orchestration: &OrchestrationFn,
    past: &[HistoryEvent],
    new: &[HistoryEvent],
) -> ReplayResult {
    let mut ex = Executor::new(Arc::clone(orchestration));
    for (seq, ev) in past.iter().chain(new).enumerate() {
        ex.set_replaying(seq < past.len());
        ex.on_event(seq, ev);
    }
    ex.finish()
}

struct FlagWaker(AtomicBool);

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type RootFuture = LocalBoxFuture<'static, Result<Option<String>, OrchestrationError>>;

struct Executor {
    orchestration: OrchestrationFn,
    inner: Rc<RefCell<CtxInner>>,
    root: Option<RootFuture>,
    flag: Arc<FlagWaker>,
    waker: Waker,
    completion: Option<CompletionAction>,
    /// Set after a non-determinism failure or termination: user code no longer runs.
    halted: bool,
    suspended: bool,
    queued_while_suspended: Vec<(usize, HistoryEvent)>,
    suspended_actions: BTreeMap<i32, OrchestratorAction>,
}

impl Executor {
    fn new(orchestration: OrchestrationFn) -> Self {
        let flag = Arc::new(FlagWaker(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        Self {
            orchestration,
            inner: Rc::new(RefCell::new(CtxInner::new(
                String::new(),
                String::new(),
                String::new(),
                OffsetDateTime::UNIX_EPOCH,
            ))),
            root: None,
            flag,
            waker,
            completion: None,
            halted: false,
            suspended: false,
            queued_while_suspended: Vec::new(),
            suspended_actions: BTreeMap::new(),
        }
    }

    fn set_replaying(&mut self, replaying: bool) {
        self.inner.borrow_mut().replaying = replaying;
    }

    fn on_event(&mut self, seq: usize, ev: &HistoryEvent) {
        if self.suspended
            && !matches!(
                ev.kind,
                EventKind::ExecutionResumed { .. } | EventKind::ExecutionTerminated { .. }
            )
        {
            // Markers still move the clock so resumed code sees the time of its episode.
            if matches!(ev.kind, EventKind::OrchestratorStarted) {
                self.inner.borrow_mut().now = ev.timestamp;
            } else {
                self.queued_while_suspended.push((seq, ev.clone()));
            }
            return;
        }
        self.process(seq, ev);
    }

    fn process(&mut self, seq: usize, ev: &HistoryEvent) {
        match &ev.kind {
            EventKind::OrchestratorStarted => self.inner.borrow_mut().now = ev.timestamp,
            EventKind::ExecutionStarted(s) => {
                if self.root.is_some() || self.completion.is_some() {
                    return;
                }
                {
                    let mut i = self.inner.borrow_mut();
                    i.instance_id.clone_from(&s.orchestration_instance.instance_id);
                    i.execution_id =
                        s.orchestration_instance.execution_id.clone().unwrap_or_default();
                    i.name.clone_from(&s.name);
                }
                let ctx = OrchestrationContext::from_inner(Rc::clone(&self.inner));
                let orchestration = Arc::clone(&self.orchestration);
                let input = s.input.clone();
                match std::panic::catch_unwind(AssertUnwindSafe(|| orchestration(ctx, input))) {
                    Ok(fut) => {
                        self.root = Some(fut);
                        self.poll_root();
                    }
                    Err(p) => self.on_root_done(Err(panic_error(&p))),
                }
            }
            EventKind::TaskScheduled { name, .. } => {
                self.check_echo(ev.event_id, ev, Some(name));
            }
            EventKind::SubOrchestrationInstanceCreated { name, .. }
            | EventKind::EventSent { name, .. } => {
                self.check_echo(ev.event_id, ev, Some(name));
            }
            EventKind::TimerCreated { .. } => {
                if ev.event_id != FAKE_TIMER_ID_TO_SPLIT_DECISION {
                    self.check_echo(ev.event_id, ev, None);
                }
            }
            EventKind::TaskCompleted { task_scheduled_id, result }
            | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, result } => {
                self.complete(*task_scheduled_id, seq, SlotResult::Ok(result.clone()), ev);
            }
            EventKind::TaskFailed { task_scheduled_id, reason, details, failure_details }
            | EventKind::SubOrchestrationInstanceFailed {
                task_scheduled_id,
                reason,
                details,
                failure_details,
            } => {
                let fd = failure_details.clone().unwrap_or_else(|| FailureDetails {
                    stack_trace: details.clone(),
                    ..FailureDetails::new(
                        ev.event_type().as_str(),
                        reason.clone().unwrap_or_default(),
                    )
                });
                self.complete(*task_scheduled_id, seq, SlotResult::Failed(fd), ev);
            }
            EventKind::TimerFired { timer_id, .. } => {
                self.complete(*timer_id, seq, SlotResult::Fired, ev);
            }
            EventKind::EventRaised { .. } => {
                if let Some(c) = &mut self.completion {
                    if c.status == OrchestrationStatus::ContinuedAsNew && !self.halted {
                        let preserve = self
                            .inner
                            .borrow()
                            .continue_as_new
                            .as_ref()
                            .is_none_or(|r| r.preserve_unprocessed_events);
                        if preserve {
                            c.carryover_events.push(ev.clone());
                        }
                    }
                    return;
                }
                if self.halted {
                    return;
                }
                let waker = self.inner.borrow_mut().deliver_event(seq, ev);
                if let Some(w) = waker {
                    w.wake();
                }
                self.poll_root();
            }
            EventKind::ExecutionTerminated { input } => {
                self.suspended = false;
                self.queued_while_suspended.clear();
                self.suspended_actions.clear();
                let replace = match &self.completion {
                    None => true,
                    Some(c) => c.status == OrchestrationStatus::ContinuedAsNew,
                };
                if replace {
                    let id = match &self.completion {
                        Some(c) => c.id,
                        None => self.inner.borrow_mut().take_completion_id(),
                    };
                    self.completion = Some(CompletionAction {
                        id,
                        status: OrchestrationStatus::Terminated,
                        result: input.clone(),
                        failure_details: None,
                        new_version: None,
                        carryover_events: Vec::new(),
                    });
                }
                self.halt();
                if replace {
                    // A terminated orchestration releases the entity locks it holds.
                    crate::orchestration::release_locks(&mut self.inner.borrow_mut());
                }
            }
            EventKind::ExecutionSuspended { .. } => {
                if self.completion.is_none() && !self.suspended {
                    self.suspended = true;
                    let mut moved = std::mem::take(&mut self.inner.borrow_mut().actions);
                    self.suspended_actions.append(&mut moved);
                }
            }
            EventKind::ExecutionResumed { .. } => {
                if !self.suspended {
                    return;
                }
                self.suspended = false;
                let mut restored = std::mem::take(&mut self.suspended_actions);
                self.inner.borrow_mut().actions.append(&mut restored);
                let queued = std::mem::take(&mut self.queued_while_suspended);
                for (s, e) in queued {
                    self.on_event(s, &e);
                }
            }
            EventKind::ExecutionCompleted { .. }
            | EventKind::ExecutionFailed
            | EventKind::ContinueAsNew { .. }
            | EventKind::OrchestratorCompleted
            | EventKind::GenericEvent { .. }
            | EventKind::HistoryState { .. }
            | EventKind::ExecutionRewound { .. } => {}
        }
    }

    fn complete(&mut self, id: i32, seq: usize, result: SlotResult, ev: &HistoryEvent) {
        if self.halted {
            return;
        }
        let r = self.inner.borrow_mut().complete_task(id, seq, result);
        match r {
            Ok(w) => {
                if let Some(w) = w {
                    w.wake();
                }
                self.poll_root();
            }
            Err(()) => {
                tracing::debug!(
                    event_type = %ev.event_type(),
                    task_id = id,
                    "Duplicate or orphaned {} event ignored (no open task)",
                    ev.event_type()
                );
            }
        }
    }

    fn check_echo(&mut self, id: i32, ev: &HistoryEvent, name: Option<&String>) {
        if self.halted {
            return;
        }
        let expected = ev.event_type();
        let found = self.inner.borrow_mut().actions.remove(&id);
        let what = match expected {
            crate::history::EventType::TaskScheduled => "an activity",
            crate::history::EventType::TimerCreated => "a timer",
            crate::history::EventType::SubOrchestrationInstanceCreated => "a sub-orchestration",
            _ => "a send-event",
        };
        let label = name.map(|n| format!(" named '{n}'")).unwrap_or_default();
        let message = match found {
            None => Some(format!(
                "A previous execution of this orchestration scheduled {what}{label} with sequence \
                 ID {id}, but the current replay execution hasn't (yet?) scheduled it. Was a change \
                 made to the orchestration code after this instance had already started running?"
            )),
            Some(action) => {
                let type_ok = matches!(
                    (&action, expected),
                    (
                        OrchestratorAction::ScheduleTask { .. },
                        crate::history::EventType::TaskScheduled
                    ) | (
                        OrchestratorAction::CreateTimer { .. },
                        crate::history::EventType::TimerCreated
                    ) | (
                        OrchestratorAction::CreateSubOrchestration { .. },
                        crate::history::EventType::SubOrchestrationInstanceCreated
                    ) | (
                        OrchestratorAction::SendEvent { .. },
                        crate::history::EventType::EventSent
                    )
                );
                if !type_ok {
                    Some(format!(
                        "A previous execution of this orchestration scheduled {what}{label} with \
                         sequence ID {id}, but the current replay execution instead produced a \
                         {} action with this sequence ID.",
                        action.type_name()
                    ))
                } else {
                    match (name, action.name()) {
                        (Some(h), Some(c)) if h.to_lowercase() != c.to_lowercase() => {
                            Some(format!(
                                "A previous execution of this orchestration scheduled {what} named \
                                 '{h}' with sequence ID {id}, but the current replay execution \
                                 scheduled one named '{c}' with this sequence ID."
                            ))
                        }
                        _ => None,
                    }
                }
            }
        };
        if let Some(m) = message {
            self.fail_non_deterministic(m);
        }
    }

    fn fail_non_deterministic(&mut self, message: String) {
        let id = self.inner.borrow_mut().take_completion_id();
        self.completion = Some(CompletionAction {
            id,
            status: OrchestrationStatus::Failed,
            result: None,
            failure_details: Some(FailureDetails::new(
                NON_DETERMINISTIC_ERROR,
                format!("{NON_DETERMINISTIC_PREFIX}{message}"),
            )),
            new_version: None,
            carryover_events: Vec::new(),
        });
        self.halt();
    }

    /// Stops running user code and discards its pending decisions.
    fn halt(&mut self) {
        self.halted = true;
        let root = self.root.take();
        drop(root);
        self.inner.borrow_mut().actions.clear();
        self.suspended_actions.clear();
    }

    fn poll_root(&mut self) {
        if self.halted || self.suspended {
            return;
        }
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(&self.waker);
        let mut polls = 0;
        let outcome = loop {
            self.flag.0.store(false, Ordering::SeqCst);
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| root.as_mut().poll(&mut cx)));
            match r {
                Ok(Poll::Ready(res)) => break Some(res),
                Ok(Poll::Pending) => {
                    polls += 1;
                    if !self.flag.0.load(Ordering::SeqCst) || polls >= MAX_POLLS_PER_EVENT {
                        break None;
                    }
                }
                Err(p) => break Some(Err(panic_error(&p))),
            }
        };
        if let Some(res) = outcome {
            let root = self.root.take();
            drop(root);
            self.on_root_done(res);
        }
    }

    fn on_root_done(&mut self, res: Result<Option<String>, OrchestrationError>) {
        if self.completion.is_some() {
            return;
        }
        let mut i = self.inner.borrow_mut();
        crate::orchestration::release_locks(&mut i);
        let id = i.take_completion_id();
        let completion = match res {
            Ok(output) => match i.continue_as_new.clone() {
                Some(req) => CompletionAction {
                    id,
                    status: OrchestrationStatus::ContinuedAsNew,
                    result: req.input,
                    failure_details: None,
                    new_version: req.new_version,
                    carryover_events: if req.preserve_unprocessed_events {
                        i.unconsumed_events().into_iter().map(|b| b.event).collect()
                    } else {
                        Vec::new()
                    },
                },
                None => CompletionAction {
                    id,
                    status: OrchestrationStatus::Completed,
                    result: output,
                    failure_details: None,
                    new_version: None,
                    carryover_events: Vec::new(),
                },
            },
            Err(e) => CompletionAction {
                id,
                status: OrchestrationStatus::Failed,
                result: None,
                failure_details: Some(e.into_details()),
                new_version: None,
                carryover_events: Vec::new(),
            },
        };
        drop(i);
        self.completion = Some(completion);
    }

    fn finish(mut self) -> ReplayResult {
        let mut actions: Vec<OrchestratorAction> =
            std::mem::take(&mut self.inner.borrow_mut().actions).into_values().collect();
        if let Some(c) = self.completion.take() {
            actions.push(OrchestratorAction::Complete(c));
        }
        let custom_status = self.inner.borrow().custom_status.clone();
        // Drop the user future before the context state it references.
        let root = self.root.take();
        drop(root);
        ReplayResult { actions, custom_status }
    }
}

fn panic_error(p: &Box<dyn std::any::Any + Send>) -> OrchestrationError {
    let msg = crate::error::panic_message(p.as_ref(), "orchestration panicked");
    OrchestrationError::with_type(PANIC_ERROR, msg)
}
