//! The orchestration authoring API: [`OrchestrationContext`], [`DurableFuture`], selection helpers
//! and [`RetryPolicy`].
//!
//! Every scheduling call (`call_activity`, `create_timer`, `call_sub_orchestration`, `send_event`)
//! takes the next action id *when it is called*, not when the future is first polled, exactly as
//! DTF's hot .NET tasks do. Futures complete when the replay engine delivers the matching history
//! event, and the engine polls the orchestration after every event, so completion order is history
//! order. [`OrchestrationContext::select2`] and [`OrchestrationContext::select_all`] pick the
//! future whose completion event comes first in history, so races replay identically.
//!
//! Orchestration code must be deterministic: no I/O, no system clock (use
//! [`OrchestrationContext::current_utc_datetime`]), no random ids (use
//! [`OrchestrationContext::new_guid`]), no other async runtimes' futures.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{Either, LocalBoxFuture};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::actions::OrchestratorAction;
use crate::error::{OrchestrationError, SERIALIZATION_ERROR, TaskFailedError, TaskKind};
use crate::history::{EventKind, FailureDetails, HistoryEvent, OrchestrationInstance};
use crate::registry::{from_payload, to_payload};

#[path = "orchestration_entities.rs"]
mod entities;

pub(crate) use entities::release_all as release_locks;
pub use entities::{EntityLock, LOCKING_RULES_VIOLATION};

/// Namespace for [`OrchestrationContext::new_guid`] (DTF uses a fixed namespace GUID too).
const GUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x9e95_2958_5e33_4daf_827f_2fa1_2937_b875);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SlotKey {
    /// A DTF task (activity, timer, sub-orchestration) by action id.
    Task(i32),
    /// An external-event waiter.
    Event(u64),
    /// A future that failed before anything was scheduled.
    Local(u64),
}

#[derive(Debug, Clone)]
pub(crate) enum SlotResult {
    Ok(Option<String>),
    Failed(FailureDetails),
    Fired,
}

#[derive(Debug, Default)]
struct Slot {
    /// (history position of the completing event, result)
    result: Option<(usize, SlotResult)>,
    waker: Option<Waker>,
}

#[derive(Debug, Clone)]
pub(crate) struct BufferedEvent {
    pub(crate) seq: usize,
    pub(crate) event: HistoryEvent,
}

#[derive(Debug, Clone)]
pub(crate) struct ContinueAsNewRequest {
    pub(crate) input: Option<String>,
    pub(crate) new_version: Option<String>,
    pub(crate) preserve_unprocessed_events: bool,
}

/// Shared mutable state behind an [`OrchestrationContext`] (one per replay).
#[derive(Debug)]
pub(crate) struct CtxInner {
    pub(crate) instance_id: String,
    pub(crate) execution_id: String,
    pub(crate) name: String,
    pub(crate) now: OffsetDateTime,
    pub(crate) replaying: bool,
    pub(crate) next_id: i32,
    guid_counter: u64,
    next_local: u64,
    pub(crate) actions: BTreeMap<i32, OrchestratorAction>,
    slots: HashMap<SlotKey, Slot>,
    /// Waiting event futures by lower-cased event name, FIFO.
    waiters: HashMap<String, VecDeque<u64>>,
    waiter_names: HashMap<u64, (String, Option<BufferedEvent>)>,
    /// Arrived but unconsumed events by lower-cased name, FIFO.
    pub(crate) buffered: HashMap<String, VecDeque<BufferedEvent>>,
    pub(crate) custom_status: Option<String>,
    pub(crate) continue_as_new: Option<ContinueAsNewRequest>,
    /// Entity message streams and the critical section.
    pub(crate) entities: entities::EntityCtx,
}

impl CtxInner {
    pub(crate) fn new(
        instance_id: String,
        execution_id: String,
        name: String,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            instance_id,
            execution_id,
            name,
            now,
            replaying: true,
            next_id: 0,
            guid_counter: 0,
            next_local: 0,
            actions: BTreeMap::new(),
            slots: HashMap::new(),
            waiters: HashMap::new(),
            waiter_names: HashMap::new(),
            buffered: HashMap::new(),
            custom_status: None,
            continue_as_new: None,
            entities: entities::EntityCtx::default(),
        }
    }

    fn take_id(&mut self) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(crate) fn take_completion_id(&mut self) -> i32 {
        self.take_id()
    }

    /// Delivers a result to a task slot. Returns the waker to wake, or `Err(())` if no open task
    /// matches (a duplicate or a cancelled task).
    pub(crate) fn complete_task(
        &mut self,
        id: i32,
        seq: usize,
        result: SlotResult,
    ) -> Result<Option<Waker>, ()> {
        match self.slots.get_mut(&SlotKey::Task(id)) {
            Some(slot) if slot.result.is_none() => {
                slot.result = Some((seq, result));
                Ok(slot.waker.take())
            }
            _ => Err(()),
        }
    }

    /// Hands an arrived event to the oldest waiter for its name, or buffers it.
    pub(crate) fn deliver_event(&mut self, seq: usize, event: &HistoryEvent) -> Option<Waker> {
        let EventKind::EventRaised { name, input } = &event.kind else {
            return None;
        };
        let key = name.to_lowercase();
        if let Some(w) = self.waiters.get_mut(&key).and_then(VecDeque::pop_front) {
            if let Some(entry) = self.waiter_names.get_mut(&w) {
                entry.1 = Some(BufferedEvent { seq, event: event.clone() });
            }
            if let Some(slot) = self.slots.get_mut(&SlotKey::Event(w)) {
                slot.result = Some((seq, SlotResult::Ok(input.clone())));
                return slot.waker.take();
            }
        }
        self.buffered
            .entry(key)
            .or_default()
            .push_back(BufferedEvent { seq, event: event.clone() });
        None
    }

    /// Unconsumed events in history order (for continue-as-new carry-over).
    pub(crate) fn unconsumed_events(&self) -> Vec<BufferedEvent> {
        let mut all: Vec<BufferedEvent> = self.buffered.values().flatten().cloned().collect();
        all.sort_by_key(|b| b.seq);
        all
    }

    fn cancel(&mut self, key: SlotKey) {
        self.slots.remove(&key);
        if let SlotKey::Event(w) = key
            && let Some((name, delivered)) = self.waiter_names.remove(&w)
        {
            if let Some(q) = self.waiters.get_mut(&name) {
                q.retain(|x| *x != w);
            }
            // An event handed to a waiter that was dropped unconsumed goes back to the buffer.
            if let Some(ev) = delivered {
                let q = self.buffered.entry(name).or_default();
                let pos = q.iter().position(|b| b.seq > ev.seq).unwrap_or(q.len());
                q.insert(pos, ev);
            }
        }
    }

    fn consume(&mut self, key: SlotKey) -> Option<(usize, SlotResult)> {
        let slot = self.slots.get_mut(&key)?;
        let r = slot.result.take()?;
        self.slots.remove(&key);
        if let SlotKey::Event(w) = key {
            self.waiter_names.remove(&w);
        }
        Some(r)
    }

    fn ready_seq(&self, key: SlotKey) -> Option<usize> {
        self.slots.get(&key).and_then(|s| s.result.as_ref()).map(|(seq, _)| *seq)
    }

    fn set_waker(&mut self, key: SlotKey, waker: &Waker) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.waker = Some(waker.clone());
        }
    }
}

/// The handle orchestration code uses to schedule work and read deterministic state.
///
/// Cheap to clone; not `Send` (orchestrations run single-threaded inside the replay engine).
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) inner: Rc<RefCell<CtxInner>>,
}

impl fmt::Debug for OrchestrationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.try_borrow() {
            Ok(i) => f
                .debug_struct("OrchestrationContext")
                .field("instance_id", &i.instance_id)
                .field("execution_id", &i.execution_id)
                .field("now", &i.now)
                .field("replaying", &i.replaying)
                .finish(),
            Err(_) => f.write_str("OrchestrationContext { .. }"),
        }
    }
}

/// Options for [`OrchestrationContext::continue_as_new_with`].
#[derive(Debug, Clone)]
pub struct ContinueAsNewOptions {
    /// Version of the next generation (`None` keeps the current one).
    pub new_version: Option<String>,
    /// Carry unconsumed external events into the next generation (default `true`, DTF's
    /// `BehaviorOnContinueAsNew.Carryover`).
    pub preserve_unprocessed_events: bool,
}

impl Default for ContinueAsNewOptions {
    fn default() -> Self {
        Self { new_version: None, preserve_unprocessed_events: true }
    }
}

fn decode_task<O: DeserializeOwned>(meta: &TaskMeta, r: SlotResult) -> Result<O, TaskFailedError> {
    let fail = |failure| TaskFailedError {
        kind: meta.kind,
        name: meta.name.clone(),
        task_id: meta.id,
        failure: Box::new(failure),
    };
    match r {
        SlotResult::Ok(payload) => from_payload(payload.as_deref()).map_err(|e| {
            fail(FailureDetails::new(
                SERIALIZATION_ERROR,
                format!("failed to deserialize the result of '{}': {e}", meta.name),
            ))
        }),
        SlotResult::Failed(fd) => Err(fail(fd)),
        SlotResult::Fired => Err(fail(FailureDetails::new("InvalidResult", "unexpected timer"))),
    }
}

fn decode_timer(_meta: &TaskMeta, _r: SlotResult) {}

fn decode_event<T: DeserializeOwned>(
    meta: &TaskMeta,
    r: SlotResult,
) -> Result<T, OrchestrationError> {
    match r {
        SlotResult::Ok(payload) => from_payload(payload.as_deref()).map_err(|e| {
            OrchestrationError::with_type(
                SERIALIZATION_ERROR,
                format!("failed to deserialize external event '{}': {e}", meta.name),
            )
        }),
        SlotResult::Failed(fd) => Err(OrchestrationError::from_details(fd)),
        SlotResult::Fired => Err(OrchestrationError::new("unexpected timer")),
    }
}

#[derive(Debug, Clone)]
struct TaskMeta {
    kind: TaskKind,
    name: String,
    id: i32,
}

/// A durable task: resolves when the replay engine delivers its completion event.
///
/// Dropping it before completion cancels the wait (a later completion event is ignored; an
/// external event handed to a dropped waiter returns to the buffer).
#[must_use = "durable futures do nothing unless awaited (the action is scheduled anyway)"]
pub struct DurableFuture<T> {
    ctx: OrchestrationContext,
    key: SlotKey,
    meta: TaskMeta,
    decode: fn(&TaskMeta, SlotResult) -> T,
    done: bool,
}

impl<T> fmt::Debug for DurableFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableFuture")
            .field("name", &self.meta.name)
            .field("id", &self.meta.id)
            .field("done", &self.done)
            .finish()
    }
}

impl<T> DurableFuture<T> {
    /// History position of the completion event, if it has arrived and not been consumed.
    fn ready_seq(&self) -> Option<usize> {
        if self.done {
            return None;
        }
        self.ctx.inner.borrow().ready_seq(self.key)
    }

    fn take(&mut self) -> Option<T> {
        if self.done {
            return None;
        }
        let r = self.ctx.inner.borrow_mut().consume(self.key)?;
        self.done = true;
        Some((self.decode)(&self.meta, r.1))
    }

    fn register(&self, waker: &Waker) {
        self.ctx.inner.borrow_mut().set_waker(self.key, waker);
    }

    /// The action id this future waits for (`-1` for external events and local failures).
    pub fn task_id(&self) -> i32 {
        self.meta.id
    }
}

impl<T> Future for DurableFuture<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.take() {
            Some(v) => Poll::Ready(v),
            None => {
                self.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for DurableFuture<T> {
    fn drop(&mut self) {
        if !self.done
            && let Ok(mut inner) = self.ctx.inner.try_borrow_mut()
        {
            inner.cancel(self.key);
        }
    }
}

/// Future returned by [`OrchestrationContext::select2`].
#[derive(Debug)]
pub struct Select2<A, B> {
    inner: Option<(DurableFuture<A>, DurableFuture<B>)>,
}

impl<A, B> Future for Select2<A, B> {
    type Output = Either<(A, DurableFuture<B>), (B, DurableFuture<A>)>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((a, b)) = self.inner.as_ref() else {
            return Poll::Pending;
        };
        let (sa, sb) = (a.ready_seq(), b.ready_seq());
        let a_first = match (sa, sb) {
            (None, None) => {
                a.register(cx.waker());
                b.register(cx.waker());
                return Poll::Pending;
            }
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x <= y,
        };
        let Some((mut a, mut b)) = self.inner.take() else {
            return Poll::Pending;
        };
        if a_first {
            match a.take() {
                Some(v) => Poll::Ready(Either::Left((v, b))),
                None => Poll::Pending,
            }
        } else {
            match b.take() {
                Some(v) => Poll::Ready(Either::Right((v, a))),
                None => Poll::Pending,
            }
        }
    }
}

/// Future returned by [`OrchestrationContext::select_all`].
#[derive(Debug)]
pub struct SelectAll<T> {
    futures: Vec<DurableFuture<T>>,
}

impl<T> Future for SelectAll<T> {
    type Output = (T, usize, Vec<DurableFuture<T>>);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let winner = self
            .futures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.ready_seq().map(|s| (s, i)))
            .min()
            .map(|(_, i)| i);
        match winner {
            Some(i) => {
                let mut f = self.futures.remove(i);
                match f.take() {
                    Some(v) => Poll::Ready((v, i, std::mem::take(&mut self.futures))),
                    None => Poll::Pending,
                }
            }
            None => {
                for f in &self.futures {
                    f.register(cx.waker());
                }
                Poll::Pending
            }
        }
    }
}

/// Predicate deciding whether a failure is retried (DTF `RetryOptions.Handle`).
pub type RetryPredicate = Arc<dyn Fn(&TaskFailedError) -> bool + Send + Sync>;

/// DTF `RetryOptions`: how [`OrchestrationContext::call_activity_with_retry`] retries.
///
/// Attempt *n* (0-based) that fails is followed by a durable timer of
/// `first_retry_interval * backoff_coefficient^n`, capped at `max_retry_interval`, unless
/// `max_attempts` is reached, the failure is non-retriable, `handle` rejects it, or
/// `retry_timeout` (measured from the first attempt's orchestration time) has passed.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Delay before the first retry (must be > 0).
    pub first_retry_interval: Duration,
    /// Multiplier applied per attempt (≥ 1.0; DTF default 1).
    pub backoff_coefficient: f64,
    /// Cap on a single delay.
    pub max_retry_interval: Duration,
    /// Total attempts, including the first (≥ 1).
    pub max_attempts: u32,
    /// Give up once this much orchestration time has passed since the first attempt.
    pub retry_timeout: Option<Duration>,
    /// Extra predicate: retry only failures it accepts.
    pub handle: Option<RetryPredicate>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("first_retry_interval", &self.first_retry_interval)
            .field("backoff_coefficient", &self.backoff_coefficient)
            .field("max_retry_interval", &self.max_retry_interval)
            .field("max_attempts", &self.max_attempts)
            .field("retry_timeout", &self.retry_timeout)
            .field("handle", &self.handle.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, `first_retry_interval` apart, coefficient 1, no cap beyond one day.
    pub fn new(max_attempts: u32, first_retry_interval: Duration) -> Self {
        Self {
            first_retry_interval: first_retry_interval.max(Duration::from_millis(1)),
            backoff_coefficient: 1.0,
            max_retry_interval: Duration::from_secs(86_400),
            max_attempts: max_attempts.max(1),
            retry_timeout: None,
            handle: None,
        }
    }

    /// Sets the back-off coefficient.
    pub fn with_backoff_coefficient(mut self, c: f64) -> Self {
        self.backoff_coefficient = if c.is_finite() && c >= 1.0 { c } else { 1.0 };
        self
    }

    /// Sets the maximum delay.
    pub fn with_max_retry_interval(mut self, d: Duration) -> Self {
        self.max_retry_interval = d;
        self
    }

    /// Sets the overall retry timeout.
    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = Some(d);
        self
    }

    /// Retries only failures for which `f` returns true.
    pub fn with_handle(
        mut self,
        f: impl Fn(&TaskFailedError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.handle = Some(Arc::new(f));
        self
    }

    /// The delay after failed attempt `attempt` (0-based), before caps by timeout.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        crate::backoff::scaled(
            self.first_retry_interval,
            self.backoff_coefficient,
            attempt,
            self.max_retry_interval,
        )
    }
}

impl OrchestrationContext {
    pub(crate) fn from_inner(inner: Rc<RefCell<CtxInner>>) -> Self {
        Self { inner }
    }

    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.inner.borrow().instance_id.clone()
    }

    /// This execution's id (changes on continue-as-new).
    pub fn execution_id(&self) -> String {
        self.inner.borrow().execution_id.clone()
    }

    /// The orchestration name.
    pub fn name(&self) -> String {
        self.inner.borrow().name.clone()
    }

    /// Deterministic "now": the timestamp of the current episode's `OrchestratorStarted` event.
    pub fn current_utc_datetime(&self) -> OffsetDateTime {
        self.inner.borrow().now
    }

    /// True while the code is re-executing events loaded from storage (use it to suppress
    /// duplicate logging).
    pub fn is_replaying(&self) -> bool {
        self.inner.borrow().replaying
    }

    /// Runs `f` only when the orchestration is not replaying: replay-safe logging with any
    /// `tracing` macro, e.g. `ctx.replay_safe(|| tracing::info!(city, "greeting"))`.
    pub fn replay_safe(&self, f: impl FnOnce()) {
        if !self.is_replaying() {
            f();
        }
    }

    /// Replay-safe structured log line at INFO (target `durabletask::orchestration`) with the
    /// instance id, execution id and orchestration name as fields. Emitted once per decision,
    /// not once per replay.
    pub fn log_info(&self, message: &str) {
        if !self.is_replaying() {
            let i = self.inner.borrow();
            tracing::info!(target: "durabletask::orchestration", instance_id = %i.instance_id, execution_id = %i.execution_id, orchestration = %i.name, "{message}");
        }
    }

    /// Replay-safe structured log line at WARN; see [`log_info`](Self::log_info).
    pub fn log_warn(&self, message: &str) {
        if !self.is_replaying() {
            let i = self.inner.borrow();
            tracing::warn!(target: "durabletask::orchestration", instance_id = %i.instance_id, execution_id = %i.execution_id, orchestration = %i.name, "{message}");
        }
    }

    /// A deterministic GUID (UUID v5 from instance, execution, current time and a counter).
    pub fn new_guid(&self) -> uuid::Uuid {
        let mut i = self.inner.borrow_mut();
        let counter = i.guid_counter;
        i.guid_counter += 1;
        let name = format!(
            "{}_{}_{}_{}",
            i.instance_id,
            i.execution_id,
            i.now.unix_timestamp_nanos(),
            counter
        );
        uuid::Uuid::new_v5(&GUID_NAMESPACE, name.as_bytes())
    }

    /// Sets the custom status (any serializable value; `()` clears it).
    pub fn set_custom_status<T: Serialize + ?Sized>(&self, status: &T) {
        let s = to_payload(status).ok().flatten();
        self.inner.borrow_mut().custom_status = s;
    }

    fn new_task_future<T>(
        &self,
        key: SlotKey,
        meta: TaskMeta,
        decode: fn(&TaskMeta, SlotResult) -> T,
    ) -> DurableFuture<T> {
        self.inner.borrow_mut().slots.insert(key, Slot::default());
        DurableFuture { ctx: self.clone(), key, meta, decode, done: false }
    }

    /// A future already failed with `fd`, scheduling nothing (bad input, bad instance id).
    fn failed_future<T>(
        &self,
        meta: TaskMeta,
        decode: fn(&TaskMeta, SlotResult) -> T,
        fd: FailureDetails,
    ) -> DurableFuture<T> {
        let key = {
            let mut i = self.inner.borrow_mut();
            let n = i.next_local;
            i.next_local += 1;
            let key = SlotKey::Local(n);
            i.slots.insert(key, Slot { result: Some((0, SlotResult::Failed(fd))), waker: None });
            key
        };
        DurableFuture { ctx: self.clone(), key, meta, decode, done: false }
    }

    /// Schedules activity `name` with `input`; resolves to its output or a [`TaskFailedError`].
    pub fn call_activity<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        match to_payload(input) {
            Ok(p) => self.call_activity_raw(name, p),
            Err(e) => self.failed_future(
                TaskMeta { kind: TaskKind::Activity, name: name.to_owned(), id: -1 },
                decode_task::<O>,
                FailureDetails::new(SERIALIZATION_ERROR, format!("failed to serialize input: {e}")),
            ),
        }
    }

    fn call_activity_raw<O: DeserializeOwned>(
        &self,
        name: &str,
        input: Option<String>,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        let id = {
            let mut i = self.inner.borrow_mut();
            let id = i.take_id();
            i.actions.insert(
                id,
                OrchestratorAction::ScheduleTask {
                    id,
                    name: name.to_owned(),
                    version: None,
                    input,
                },
            );
            id
        };
        self.new_task_future(
            SlotKey::Task(id),
            TaskMeta { kind: TaskKind::Activity, name: name.to_owned(), id },
            decode_task::<O>,
        )
    }

    /// Calls an activity, retrying failed attempts per `policy` with durable timers in between.
    pub fn call_activity_with_retry<I: Serialize + ?Sized, O: DeserializeOwned + 'static>(
        &self,
        name: &str,
        input: &I,
        policy: RetryPolicy,
    ) -> LocalBoxFuture<'static, Result<O, TaskFailedError>> {
        let ctx = self.clone();
        let name = name.to_owned();
        match to_payload(input) {
            Ok(p) => retry_loop(ctx.clone(), policy, move || {
                ctx.call_activity_raw::<O>(&name, p.clone())
            }),
            Err(_) => {
                let f = self.call_activity::<I, O>(&name, input);
                f.boxed_local()
            }
        }
    }

    /// Starts sub-orchestration `name`; the child instance id is `"{execution_id}:{action_id}"`.
    pub fn call_sub_orchestration<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        self.sub_orchestration_inner(name, None, input)
    }

    /// Starts sub-orchestration `name` with an explicit child instance id.
    pub fn call_sub_orchestration_with_id<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: &str,
        input: &I,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        self.sub_orchestration_inner(name, Some(instance_id), input)
    }

    /// Calls a sub-orchestration with retries (each retry reuses the same child instance id when
    /// one is given, otherwise a fresh `"{execution_id}:{action_id}"`).
    pub fn call_sub_orchestration_with_retry<
        I: Serialize + ?Sized,
        O: DeserializeOwned + 'static,
    >(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &I,
        policy: RetryPolicy,
    ) -> LocalBoxFuture<'static, Result<O, TaskFailedError>> {
        let ctx = self.clone();
        let name = name.to_owned();
        let id = instance_id.map(str::to_owned);
        match to_payload(input) {
            Ok(p) => retry_loop(ctx.clone(), policy, move || {
                ctx.sub_orchestration_raw::<O>(&name, id.as_deref(), p.clone())
            }),
            Err(_) => self.sub_orchestration_inner::<I, O>(&name, instance_id, input).boxed_local(),
        }
    }

    fn sub_orchestration_inner<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &I,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        match to_payload(input) {
            Ok(p) => self.sub_orchestration_raw(name, instance_id, p),
            Err(e) => self.failed_future(
                TaskMeta { kind: TaskKind::SubOrchestration, name: name.to_owned(), id: -1 },
                decode_task::<O>,
                FailureDetails::new(SERIALIZATION_ERROR, format!("failed to serialize input: {e}")),
            ),
        }
    }

    fn sub_orchestration_raw<O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: Option<String>,
    ) -> DurableFuture<Result<O, TaskFailedError>> {
        if let Some(id) = instance_id
            && let Err(e) = crate::ids::validate_orchestration_instance_id(id)
        {
            return self.failed_future(
                TaskMeta { kind: TaskKind::SubOrchestration, name: name.to_owned(), id: -1 },
                decode_task::<O>,
                FailureDetails::new("InvalidInstanceId", e.to_string()).non_retriable(),
            );
        }
        let id = {
            let mut i = self.inner.borrow_mut();
            let id = i.take_id();
            let child = match instance_id {
                Some(c) => c.to_owned(),
                None => format!("{}:{id}", i.execution_id),
            };
            i.actions.insert(
                id,
                OrchestratorAction::CreateSubOrchestration {
                    id,
                    name: name.to_owned(),
                    version: None,
                    instance_id: child,
                    input,
                },
            );
            id
        };
        self.new_task_future(
            SlotKey::Task(id),
            TaskMeta { kind: TaskKind::SubOrchestration, name: name.to_owned(), id },
            decode_task::<O>,
        )
    }

    /// A durable timer firing at `fire_at` (UTC).
    pub fn create_timer(&self, fire_at: OffsetDateTime) -> DurableFuture<()> {
        let id = {
            let mut i = self.inner.borrow_mut();
            let id = i.take_id();
            i.actions.insert(id, OrchestratorAction::CreateTimer { id, fire_at });
            id
        };
        self.new_task_future(
            SlotKey::Task(id),
            TaskMeta { kind: TaskKind::Activity, name: "timer".into(), id },
            decode_timer,
        )
    }

    /// A durable timer firing `delay` after [`Self::current_utc_datetime`].
    pub fn create_timer_after(&self, delay: Duration) -> DurableFuture<()> {
        let at = self.current_utc_datetime() + delay;
        self.create_timer(at)
    }

    /// Waits for the next external event named `name` (case-insensitive). Events that arrived
    /// before the wait are buffered by name and consumed FIFO.
    pub fn wait_for_external_event<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> DurableFuture<Result<T, OrchestrationError>> {
        let meta = TaskMeta { kind: TaskKind::Activity, name: name.to_owned(), id: -1 };
        self.event_waiter(name, meta, decode_event::<T>)
    }

    /// A future resolved by the next event named `name` (case-insensitive, FIFO).
    fn event_waiter<T>(
        &self,
        name: &str,
        meta: TaskMeta,
        decode: fn(&TaskMeta, SlotResult) -> T,
    ) -> DurableFuture<T> {
        let key_name = name.to_lowercase();
        let mut i = self.inner.borrow_mut();
        let w = i.next_local;
        i.next_local += 1;
        let key = SlotKey::Event(w);
        let buffered = i.buffered.get_mut(&key_name).and_then(VecDeque::pop_front);
        let slot = match &buffered {
            Some(b) => {
                let input = match &b.event.kind {
                    EventKind::EventRaised { input, .. } => input.clone(),
                    _ => None,
                };
                Slot { result: Some((b.seq, SlotResult::Ok(input))), waker: None }
            }
            None => {
                i.waiters.entry(key_name.clone()).or_default().push_back(w);
                Slot::default()
            }
        };
        i.slots.insert(key, slot);
        i.waiter_names.insert(w, (key_name, buffered));
        drop(i);
        DurableFuture { ctx: self.clone(), key, meta, decode, done: false }
    }

    /// Sends external event `name` with `data` to another instance (fire and forget). An event to
    /// an id that [`crate::validate_instance_id`] refuses is recorded in history but never sent
    /// (no such instance can exist), the same on every provider.
    pub fn send_event<T: Serialize + ?Sized>(&self, instance_id: &str, name: &str, data: &T) {
        let data = to_payload(data).ok().flatten();
        let mut i = self.inner.borrow_mut();
        let id = i.take_id();
        i.actions.insert(
            id,
            OrchestratorAction::SendEvent {
                id,
                instance: OrchestrationInstance::new(instance_id),
                name: name.to_owned(),
                data,
            },
        );
    }

    /// Restarts this instance with `input` once the orchestration function returns `Ok`,
    /// carrying unconsumed external events into the new generation.
    pub fn continue_as_new<T: Serialize + ?Sized>(&self, input: &T) {
        self.continue_as_new_with(input, ContinueAsNewOptions::default());
    }

    /// [`Self::continue_as_new`] with options.
    pub fn continue_as_new_with<T: Serialize + ?Sized>(
        &self,
        input: &T,
        options: ContinueAsNewOptions,
    ) {
        let input = to_payload(input).ok().flatten();
        self.inner.borrow_mut().continue_as_new = Some(ContinueAsNewRequest {
            input,
            new_version: options.new_version,
            preserve_unprocessed_events: options.preserve_unprocessed_events,
        });
    }

    /// Races two durable futures; the one whose completion event comes first in history wins.
    /// The loser is returned so it can still be awaited (or dropped to cancel it).
    pub fn select2<A, B>(a: DurableFuture<A>, b: DurableFuture<B>) -> Select2<A, B> {
        Select2 { inner: Some((a, b)) }
    }

    /// Races many durable futures; resolves to `(output, index, remaining)` for the future whose
    /// completion event comes first in history.
    pub fn select_all<T>(futures: Vec<DurableFuture<T>>) -> SelectAll<T> {
        SelectAll { futures }
    }

    /// Waits for all futures; outputs are in input order (fan-in).
    pub fn join_all<F: Future>(
        futures: impl IntoIterator<Item = F>,
    ) -> futures::future::JoinAll<F> {
        futures::future::join_all(futures)
    }
}

trait NonRetriable {
    fn non_retriable(self) -> Self;
}

impl NonRetriable for FailureDetails {
    fn non_retriable(mut self) -> Self {
        self.is_non_retriable = true;
        self
    }
}

fn retry_loop<O: 'static>(
    ctx: OrchestrationContext,
    policy: RetryPolicy,
    attempt_fn: impl Fn() -> DurableFuture<Result<O, TaskFailedError>> + 'static,
) -> LocalBoxFuture<'static, Result<O, TaskFailedError>> {
    async move {
        let first_attempt = ctx.current_utc_datetime();
        let mut attempt: u32 = 0;
        loop {
            let err = match attempt_fn().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let last = attempt + 1 >= policy.max_attempts;
            let handled = policy.handle.as_ref().is_none_or(|h| h(&err));
            if last || err.failure.is_non_retriable || !handled {
                return Err(err);
            }
            if let Some(t) = policy.retry_timeout
                && ctx.current_utc_datetime() >= first_attempt + t
            {
                return Err(err);
            }
            let delay = policy.delay_for(attempt);
            ctx.create_timer_after(delay).await;
            attempt += 1;
        }
    }
    .boxed_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_back_off_and_cap() {
        let p = RetryPolicy::new(5, Duration::from_secs(1))
            .with_backoff_coefficient(2.0)
            .with_max_retry_interval(Duration::from_secs(5));
        let d: Vec<u64> = (0..5).map(|a| p.delay_for(a).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 5, 5]);
        assert_eq!(RetryPolicy::new(0, Duration::ZERO).max_attempts, 1);
    }
}
