//! [`InMemoryOrchestrationService`]: a complete provider (worker and client side) kept in process
//! memory. It is the reference implementation of the provider contract in
//! `durabletask_core::provider` and runs the conformance suite on every `cargo test`.
//!
//! Model: an ordered orchestration message queue with per-message visibility times and per-instance
//! locks, an activity queue with per-message locks, and per-instance rows and histories. All state
//! sits behind one mutex; waiting `lock_next_*` calls are woken through [`tokio::sync::Notify`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use durabletask_core::admission::{
    Admission, AdmissionInput, AdmissionRules, Candidate, InstanceAction, RowState, RowView,
    Verdict, admit, history_execution,
};
use durabletask_core::provider::{
    ActivityWorkItem, LockToken, OrchestrationQuery, OrchestrationService,
    OrchestrationServiceClient, OrchestrationWorkItem, ProviderError, ProviderErrorKind,
    ProviderSettings, PurgeFilter, PurgeResult, QueryResult,
};
use durabletask_core::{
    Clock, EventKind, FailureDetails, HistoryEvent, OrchestrationRuntimeState, OrchestrationState,
    OrchestrationStatus, SystemClock, TaskMessage, WorkItemResult, validate_instance_id,
};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Settings of the in-memory provider.
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// How long a lock lasts before it must be renewed.
    pub lock_duration: Duration,
    /// Hint for the orchestration dispatcher.
    pub max_concurrent_orchestrations: usize,
    /// Hint for the activity dispatcher.
    pub max_concurrent_activities: usize,
    /// Largest message accepted (its JSON encoding, in bytes); larger ones are refused with
    /// `InvalidInput` before anything is written, as the Azure Storage provider refuses messages
    /// over its `max_message_bytes` (same default: 32 MiB).
    pub max_message_bytes: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            lock_duration: Duration::from_secs(60),
            max_concurrent_orchestrations: 50,
            max_concurrent_activities: 50,
            max_message_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
struct QueuedMessage {
    instance_id: String,
    message: TaskMessage,
    visible_at: OffsetDateTime,
    dequeue_count: u32,
    locked_by: Option<u64>,
}

#[derive(Debug, Clone)]
struct QueuedActivity {
    message: TaskMessage,
    visible_at: OffsetDateTime,
    dequeue_count: u32,
    lock: Option<(u64, OffsetDateTime)>,
}

#[derive(Debug)]
struct InstanceLock {
    lock_id: u64,
    locked_until: OffsetDateTime,
    seqs: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Instance {
    row: OrchestrationState,
    history: Vec<HistoryEvent>,
}

#[derive(Debug, Default)]
struct Hub {
    instances: BTreeMap<String, Instance>,
    orchestration_queue: BTreeMap<u64, QueuedMessage>,
    instance_locks: HashMap<String, InstanceLock>,
    activity_queue: BTreeMap<u64, QueuedActivity>,
    next_seq: u64,
    next_lock: u64,
    stopped: bool,
}

#[derive(Debug)]
struct MemLock {
    lock_id: u64,
    seq: u64,
}

#[derive(Debug)]
struct Shared {
    hub: Mutex<Hub>,
    orchestration_ready: Notify,
    activity_ready: Notify,
    clock: Arc<dyn Clock>,
    settings: MemorySettings,
    rules: AdmissionRules,
}

/// An in-memory task hub implementing both provider traits.
#[derive(Debug, Clone)]
pub struct InMemoryOrchestrationService {
    shared: Arc<Shared>,
}

impl Default for InMemoryOrchestrationService {
    fn default() -> Self {
        Self::new(MemorySettings::default())
    }
}

fn err(kind: ProviderErrorKind, op: &'static str, msg: impl Into<String>) -> ProviderError {
    ProviderError::new(kind, op, msg)
}

/// The same instance-id rule and error kind as the Azure Storage provider.
fn check_id(op: &'static str, id: &str) -> Result<(), ProviderError> {
    validate_instance_id(id).map_err(|e| err(ProviderErrorKind::InvalidInput, op, e.to_string()))
}

/// The start timestamp of a new execution: at least 1 ms after the created time of the row it
/// replaces (so a row's created time only moves forward), truncated to 100 ns as Azure stores it.
fn start_time_after(t: OffsetDateTime, replaced: Option<OffsetDateTime>) -> OffsetDateTime {
    let t = match replaced {
        Some(c) if t < c + Duration::from_millis(1) => c + Duration::from_millis(1),
        _ => t,
    };
    durabletask_core::clock::storage_precision(t)
}

fn is_start(m: &TaskMessage) -> bool {
    matches!(m.event.kind, EventKind::ExecutionStarted(_))
}

impl InMemoryOrchestrationService {
    /// A new, empty task hub with the system clock.
    pub fn new(settings: MemorySettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// A new, empty task hub reading time from `clock`.
    pub fn with_clock(settings: MemorySettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: Arc::new(Shared {
                hub: Mutex::new(Hub::default()),
                orchestration_ready: Notify::new(),
                activity_ready: Notify::new(),
                clock,
                settings,
                rules: AdmissionRules::default(),
            }),
        }
    }

    /// `InvalidInput` when `m` is over [`MemorySettings::max_message_bytes`].
    fn check_size(&self, op: &'static str, m: &TaskMessage) -> Result<(), ProviderError> {
        let len = serde_json::to_vec(m)
            .map_err(|e| err(ProviderErrorKind::InvalidInput, op, e.to_string()))?
            .len();
        let max = self.shared.settings.max_message_bytes;
        if len > max {
            return Err(err(
                ProviderErrorKind::InvalidInput,
                op,
                format!("message of {len} bytes exceeds max_message_bytes ({max})"),
            ));
        }
        Ok(())
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.shared.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> OffsetDateTime {
        self.shared.clock.now()
    }

    fn wake_all(&self) {
        self.shared.orchestration_ready.notify_waiters();
        self.shared.activity_ready.notify_waiters();
    }

    /// Messages ever queued (orchestration and activity) — for tests.
    pub fn messages_enqueued(&self) -> u64 {
        self.hub().next_seq
    }

    /// Number of queued orchestration messages (visible or not) — for tests.
    pub fn queued_orchestration_messages(&self) -> usize {
        self.hub().orchestration_queue.len()
    }

    fn enqueue(hub: &mut Hub, message: TaskMessage, visible_at: OffsetDateTime) {
        // Timers, delayed starts and scheduled entity signals wait for their time.
        let visible_at = message.deliver_at().map_or(visible_at, |at| at.max(visible_at));
        let seq = hub.next_seq;
        hub.next_seq += 1;
        hub.orchestration_queue.insert(
            seq,
            QueuedMessage {
                instance_id: message.orchestration_instance.instance_id.clone(),
                message,
                visible_at,
                dequeue_count: 0,
                locked_by: None,
            },
        );
    }

    fn expire_locks(hub: &mut Hub, now: OffsetDateTime) {
        let expired: Vec<String> = hub
            .instance_locks
            .iter()
            .filter(|(_, l)| l.locked_until < now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            if let Some(l) = hub.instance_locks.remove(&id) {
                for s in l.seqs {
                    if let Some(m) = hub.orchestration_queue.get_mut(&s) {
                        m.locked_by = None;
                    }
                }
            }
        }
        for a in hub.activity_queue.values_mut() {
            if a.lock.is_some_and(|(_, until)| until < now) {
                a.lock = None;
            }
        }
    }

    /// Tries to build a work item; returns it, or the earliest time something may become ready.
    fn try_lock_orchestration(
        &self,
        hub: &mut Hub,
        now: OffsetDateTime,
    ) -> Result<Result<OrchestrationWorkItem, ProviderError>, Option<OffsetDateTime>> {
        Self::expire_locks(hub, now);
        let mut skipped: Vec<String> = Vec::new();
        let mut next_due: Option<OffsetDateTime> = None;
        loop {
            let candidate = hub
                .orchestration_queue
                .values()
                .filter(|m| m.locked_by.is_none())
                .filter(|m| !hub.instance_locks.contains_key(&m.instance_id))
                .filter(|m| !skipped.contains(&m.instance_id))
                .filter(|m| {
                    if m.visible_at > now {
                        next_due = Some(next_due.map_or(m.visible_at, |d| d.min(m.visible_at)));
                        false
                    } else {
                        true
                    }
                })
                .map(|m| m.instance_id.clone())
                .next();
            let Some(instance_id) = candidate else {
                return Err(next_due);
            };
            // The batch: visible, unlocked messages of this instance, up to a second start.
            let mut batch: Vec<u64> = Vec::new();
            let mut starts = 0;
            for (seq, m) in &hub.orchestration_queue {
                if m.instance_id != instance_id || m.locked_by.is_some() || m.visible_at > now {
                    continue;
                }
                if is_start(&m.message) {
                    starts += 1;
                    if starts > 1 {
                        break;
                    }
                }
                batch.push(*seq);
            }
            // Admission: the rules every provider shares (durabletask_core::admission).
            let decision = {
                let inst = hub.instances.get(&instance_id);
                let history: &[HistoryEvent] = inst.map_or(&[], |i| i.history.as_slice());
                // The row and the start are written together here, so the row is always known
                // and never in flight.
                let row =
                    inst.map_or(RowState::Absent, |i| RowState::Present(RowView::from(&i.row)));
                let candidates: Vec<Candidate<'_>> = batch
                    .iter()
                    .filter_map(|s| hub.orchestration_queue.get(s))
                    .map(|m| Candidate {
                        message: &m.message,
                        deliveries: u64::from(m.dequeue_count) + 1,
                    })
                    .collect();
                let input = AdmissionInput {
                    messages: &candidates,
                    history,
                    row: &row,
                    row_reread: true,
                    now,
                    rules: &self.shared.rules,
                };
                match admit(&input) {
                    Admission::Decided(d) => {
                        d.log(&instance_id, &candidates);
                        d
                    }
                    // Not reachable with a known, re-read row; leave the instance for now.
                    Admission::NeedsRow { .. } => {
                        skipped.push(instance_id);
                        continue;
                    }
                }
            };
            match &decision.action {
                Some(InstanceAction::TerminatePending { reason }) => {
                    if let Some(i) = hub.instances.get_mut(&instance_id) {
                        i.row.orchestration_status = OrchestrationStatus::Terminated;
                        i.row.output.clone_from(reason);
                        i.row.completed_time = Some(now);
                        i.row.last_updated_time = now;
                    }
                    tracing::info!(instance_id = %instance_id, "InstanceStatusUpdate: terminated before start");
                }
                Some(InstanceAction::RepairRow { .. }) => {
                    if let Some(i) = hub.instances.get_mut(&instance_id)
                        && let Ok(rt) = OrchestrationRuntimeState::from_history(i.history.clone())
                        && let Some(state) = rt.to_state(i.row.status.clone(), now)
                    {
                        i.row = state;
                    }
                }
                None => {}
            }
            let mut run = Vec::new();
            for (seq, verdict) in batch.iter().zip(&decision.verdicts) {
                match verdict {
                    Verdict::Run => run.push(*seq),
                    Verdict::Discard(_) => {
                        hub.orchestration_queue.remove(seq);
                    }
                    Verdict::Defer { after, .. } => {
                        if let Some(m) = hub.orchestration_queue.get_mut(seq) {
                            m.visible_at = now + *after;
                            m.dequeue_count += 1;
                        }
                    }
                }
            }
            if run.is_empty() {
                continue;
            }
            let batch = run;
            let history =
                hub.instances.get(&instance_id).map(|i| i.history.clone()).unwrap_or_default();
            let runtime_state = match OrchestrationRuntimeState::from_history(history) {
                Ok(s) => s,
                Err(e) => {
                    // A corrupt history is an error, never an empty history (which would start
                    // the instance over): the messages wait and the dispatcher sees the error.
                    for s in &batch {
                        if let Some(m) = hub.orchestration_queue.get_mut(s) {
                            m.dequeue_count += 1;
                            m.visible_at = now
                                + durabletask_core::backoff::dtf_abandon(u64::from(
                                    m.dequeue_count,
                                ));
                        }
                    }
                    tracing::error!(instance_id = %instance_id, error = %e, "OrchestrationProcessingFailure: stored history is corrupt");
                    return Ok(Err(err(
                        ProviderErrorKind::Permanent,
                        "lock_next_orchestration_work_item",
                        format!("the stored history of '{instance_id}' is corrupt: {e}"),
                    )));
                }
            };
            // Lock it.
            let lock_id = hub.next_lock;
            hub.next_lock += 1;
            let locked_until = now + self.shared.settings.lock_duration;
            let mut messages = Vec::with_capacity(batch.len());
            let mut dequeue_count = 0;
            for s in &batch {
                if let Some(m) = hub.orchestration_queue.get_mut(s) {
                    m.locked_by = Some(lock_id);
                    m.dequeue_count += 1;
                    dequeue_count = dequeue_count.max(m.dequeue_count);
                    messages.push(m.message.clone());
                }
            }
            hub.instance_locks
                .insert(instance_id.clone(), InstanceLock { lock_id, locked_until, seqs: batch });
            return Ok(Ok(OrchestrationWorkItem {
                instance_id,
                runtime_state,
                new_messages: messages,
                locked_until,
                dequeue_count,
                // Checkpoints commit atomically: the last one always finished.
                previous_checkpoint_finished: true,
                token: LockToken::new(MemLock { lock_id, seq: 0 }),
            }));
        }
    }

    fn try_lock_activity(
        &self,
        hub: &mut Hub,
        now: OffsetDateTime,
    ) -> Result<ActivityWorkItem, Option<OffsetDateTime>> {
        Self::expire_locks(hub, now);
        let mut next_due: Option<OffsetDateTime> = None;
        let mut found = None;
        for (seq, a) in &hub.activity_queue {
            if a.lock.is_some() {
                continue;
            }
            if a.visible_at > now {
                next_due = Some(next_due.map_or(a.visible_at, |d| d.min(a.visible_at)));
                continue;
            }
            found = Some(*seq);
            break;
        }
        let Some(seq) = found else {
            return Err(next_due);
        };
        let lock_id = hub.next_lock;
        hub.next_lock += 1;
        let locked_until = now + self.shared.settings.lock_duration;
        let a = hub.activity_queue.get_mut(&seq).ok_or(None)?;
        a.lock = Some((lock_id, locked_until));
        a.dequeue_count += 1;
        Ok(ActivityWorkItem {
            id: seq.to_string(),
            message: a.message.clone(),
            locked_until,
            dequeue_count: a.dequeue_count,
            token: LockToken::new(MemLock { lock_id, seq }),
        })
    }

    /// Waits up to `timeout` for `try_lock` to hand out a work item: retries when `ready` is
    /// notified or when the earliest not-yet-visible message becomes due.
    async fn wait_for_work<T>(
        &self,
        ready: &Notify,
        timeout: Duration,
        try_lock: impl Fn(&Self, &mut Hub, OffsetDateTime) -> Result<T, Option<OffsetDateTime>>,
    ) -> Result<Option<T>, ProviderError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut hub = self.hub();
                if hub.stopped {
                    return Ok(None);
                }
                match try_lock(self, &mut hub, self.now()) {
                    Ok(wi) => return Ok(Some(wi)),
                    Err(next) => next,
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            let mut wake_at = deadline;
            if let Some(t) = next {
                let d = Duration::try_from(t - self.now()).unwrap_or(Duration::ZERO);
                wake_at = wake_at.min(tokio::time::Instant::now() + d + Duration::from_millis(1));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    fn lock_of<'a>(
        wi_token: &'a LockToken,
        op: &'static str,
    ) -> Result<&'a MemLock, ProviderError> {
        wi_token
            .downcast_ref::<MemLock>()
            .ok_or_else(|| err(ProviderErrorKind::InvalidInput, op, "foreign work item"))
    }
}

#[async_trait]
impl OrchestrationService for InMemoryOrchestrationService {
    async fn create_if_not_exists(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn delete(&self) -> Result<(), ProviderError> {
        let mut hub = self.hub();
        let stopped = hub.stopped;
        *hub = Hub { stopped, ..Hub::default() };
        Ok(())
    }

    async fn start(&self) -> Result<(), ProviderError> {
        self.hub().stopped = false;
        Ok(())
    }

    async fn stop(&self, _graceful: bool) -> Result<(), ProviderError> {
        self.hub().stopped = true;
        self.wake_all();
        Ok(())
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            max_concurrent_orchestrations: self.shared.settings.max_concurrent_orchestrations,
            max_concurrent_activities: self.shared.settings.max_concurrent_activities,
            max_message_bytes: Some(self.shared.settings.max_message_bytes),
        }
    }

    async fn lock_next_orchestration_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, ProviderError> {
        let locked = self
            .wait_for_work(&self.shared.orchestration_ready, timeout, |svc, hub, now| {
                svc.try_lock_orchestration(hub, now)
            })
            .await?;
        locked.transpose()
    }

    async fn renew_orchestration_work_item_lock(
        &self,
        work_item: &OrchestrationWorkItem,
    ) -> Result<OffsetDateTime, ProviderError> {
        const OP: &str = "renew_orchestration_work_item_lock";
        let lock = Self::lock_of(&work_item.token, OP)?;
        let now = self.now();
        let mut hub = self.hub();
        match hub.instance_locks.get_mut(&work_item.instance_id) {
            Some(l) if l.lock_id == lock.lock_id => {
                l.locked_until = now + self.shared.settings.lock_duration;
                Ok(l.locked_until)
            }
            _ => Err(err(ProviderErrorKind::LeaseLost, OP, "lock expired or taken over")),
        }
    }

    async fn complete_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
        result: WorkItemResult,
    ) -> Result<(), ProviderError> {
        const OP: &str = "complete_orchestration_work_item";
        let lock = Self::lock_of(&work_item.token, OP)?;
        let now = self.now();
        if let WorkItemResult::Checkpoint(cp) = &result {
            // Azure refuses an over-size outbound message before it writes history.
            for m in cp
                .orchestrator_messages
                .iter()
                .chain(&cp.timer_messages)
                .chain(&cp.activity_messages)
            {
                self.check_size(OP, m)?;
            }
        }
        {
            let mut hub = self.hub();
            let seqs = match hub.instance_locks.get(&work_item.instance_id) {
                Some(l) if l.lock_id == lock.lock_id => l.seqs.clone(),
                _ => {
                    return Err(err(
                        ProviderErrorKind::LeaseLost,
                        OP,
                        "lock expired or taken over",
                    ));
                }
            };
            if let WorkItemResult::Checkpoint(cp) = result {
                let cp = *cp;
                let id = work_item.instance_id.clone();
                // History concurrency check before anything is sent (the in-memory "ETag").
                let past = cp.runtime_state.past_events().len();
                if past > 0 {
                    let stored = hub.instances.get(&id).map(|i| {
                        (i.history.len(), history_execution(&i.history).map(str::to_owned))
                    });
                    let expected_exec = cp.runtime_state.execution_id().map(str::to_owned);
                    if stored != Some((past, expected_exec)) {
                        return Err(err(
                            ProviderErrorKind::PreconditionFailed,
                            OP,
                            "history changed since the work item was locked",
                        ));
                    }
                }
                // 1. Send.
                for m in cp.orchestrator_messages {
                    if let EventKind::ExecutionStarted(s) = &m.event.kind {
                        let child = m.orchestration_instance.instance_id.clone();
                        let needs_row = hub
                            .instances
                            .get(&child)
                            .is_none_or(|i| i.row.orchestration_status.is_terminal());
                        if needs_row {
                            let row = OrchestrationState::pending(s, now);
                            let history =
                                hub.instances.remove(&child).map(|i| i.history).unwrap_or_default();
                            hub.instances.insert(child, Instance { row, history });
                        }
                    }
                    Self::enqueue(&mut hub, m, now);
                }
                for m in cp.timer_messages {
                    let at = match &m.event.kind {
                        EventKind::TimerFired { fire_at, .. } => *fire_at,
                        _ => now,
                    };
                    Self::enqueue(&mut hub, m, at);
                }
                for m in cp.activity_messages {
                    let seq = hub.next_seq;
                    hub.next_seq += 1;
                    hub.activity_queue.insert(
                        seq,
                        QueuedActivity {
                            message: m,
                            visible_at: now,
                            dequeue_count: 0,
                            lock: None,
                        },
                    );
                }
                // 2. History, 3. row.
                let events = cp.runtime_state.new_events().to_vec();
                let state = cp.state;
                match hub.instances.get_mut(&id) {
                    Some(inst) => {
                        if past == 0 {
                            inst.history = events;
                        } else {
                            inst.history.extend(events);
                        }
                        // Do not clobber a newer Pending row written by a concurrent recreate.
                        let newer_pending = inst.row.orchestration_status
                            == OrchestrationStatus::Pending
                            && inst.row.orchestration_instance.execution_id
                                != state.orchestration_instance.execution_id
                            && past > 0;
                        if !newer_pending {
                            inst.row = state;
                        }
                    }
                    None => {
                        hub.instances.insert(id.clone(), Instance { row: state, history: events });
                    }
                }
            }
            // 4. Delete the messages, release the lock.
            for s in &seqs {
                hub.orchestration_queue.remove(s);
            }
            hub.instance_locks.remove(&work_item.instance_id);
        }
        self.wake_all();
        Ok(())
    }

    async fn abandon_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
        retry_after: Duration,
    ) -> Result<(), ProviderError> {
        let lock = Self::lock_of(&work_item.token, "abandon_orchestration_work_item")?;
        let visible_at = self.now() + retry_after;
        {
            let mut hub = self.hub();
            let owned = hub
                .instance_locks
                .get(&work_item.instance_id)
                .is_some_and(|l| l.lock_id == lock.lock_id);
            if owned && let Some(l) = hub.instance_locks.remove(&work_item.instance_id) {
                for s in l.seqs {
                    if let Some(m) = hub.orchestration_queue.get_mut(&s) {
                        m.locked_by = None;
                        m.visible_at = visible_at;
                    }
                }
            }
        }
        self.wake_all();
        Ok(())
    }

    async fn release_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
    ) -> Result<(), ProviderError> {
        let lock = Self::lock_of(&work_item.token, "release_orchestration_work_item")?;
        {
            let mut hub = self.hub();
            let owned = hub
                .instance_locks
                .get(&work_item.instance_id)
                .is_some_and(|l| l.lock_id == lock.lock_id);
            if owned && let Some(l) = hub.instance_locks.remove(&work_item.instance_id) {
                for s in l.seqs {
                    if let Some(m) = hub.orchestration_queue.get_mut(&s) {
                        m.locked_by = None;
                    }
                }
            }
        }
        self.wake_all();
        Ok(())
    }

    async fn lock_next_activity_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<ActivityWorkItem>, ProviderError> {
        self.wait_for_work(&self.shared.activity_ready, timeout, |svc, hub, now| {
            svc.try_lock_activity(hub, now)
        })
        .await
    }

    async fn renew_activity_work_item_lock(
        &self,
        work_item: &ActivityWorkItem,
    ) -> Result<OffsetDateTime, ProviderError> {
        const OP: &str = "renew_activity_work_item_lock";
        let lock = Self::lock_of(&work_item.token, OP)?;
        let until = self.now() + self.shared.settings.lock_duration;
        let mut hub = self.hub();
        match hub.activity_queue.get_mut(&lock.seq) {
            Some(a) if a.lock.is_some_and(|(id, _)| id == lock.lock_id) => {
                a.lock = Some((lock.lock_id, until));
                Ok(until)
            }
            _ => Err(err(ProviderErrorKind::LeaseLost, OP, "activity lock lost")),
        }
    }

    async fn complete_activity_work_item(
        &self,
        work_item: &ActivityWorkItem,
        response: TaskMessage,
    ) -> Result<(), ProviderError> {
        const OP: &str = "complete_activity_work_item";
        let lock = Self::lock_of(&work_item.token, OP)?;
        let now = self.now();
        // As on Azure: a result too large to send fails the activity instead.
        let response = match self.check_size(OP, &response) {
            Ok(()) => response,
            Err(e) => {
                let task_id = match &response.event.kind {
                    EventKind::TaskCompleted { task_scheduled_id, .. }
                    | EventKind::TaskFailed { task_scheduled_id, .. } => *task_scheduled_id,
                    _ => response.event.event_id,
                };
                tracing::warn!(task_id, error = %e, "GeneralWarning: activity result refused; reporting a failure");
                TaskMessage::new(
                    response.orchestration_instance,
                    HistoryEvent::new(
                        -1,
                        now,
                        EventKind::TaskFailed {
                            task_scheduled_id: task_id,
                            reason: Some(e.to_string()),
                            details: None,
                            failure_details: Some(FailureDetails::new(
                                "PayloadTooLarge",
                                e.to_string(),
                            )),
                        },
                    ),
                )
            }
        };
        {
            let mut hub = self.hub();
            let owned = hub
                .activity_queue
                .get(&lock.seq)
                .is_some_and(|a| a.lock.is_some_and(|(id, _)| id == lock.lock_id));
            if !owned {
                return Err(err(ProviderErrorKind::LeaseLost, OP, "activity lock lost"));
            }
            Self::enqueue(&mut hub, response, now);
            hub.activity_queue.remove(&lock.seq);
        }
        self.shared.orchestration_ready.notify_waiters();
        Ok(())
    }

    async fn abandon_activity_work_item(
        &self,
        work_item: &ActivityWorkItem,
        retry_after: Duration,
    ) -> Result<(), ProviderError> {
        let lock = Self::lock_of(&work_item.token, "abandon_activity_work_item")?;
        let visible_at = self.now() + retry_after;
        {
            let mut hub = self.hub();
            if let Some(a) = hub.activity_queue.get_mut(&lock.seq)
                && a.lock.is_some_and(|(id, _)| id == lock.lock_id)
            {
                a.lock = None;
                a.visible_at = visible_at;
            }
        }
        self.shared.activity_ready.notify_waiters();
        Ok(())
    }
}

/// The in-memory hub as one partition: its orchestration queue is the control queue, its
/// activity queue the work-item queue; nothing is ever poisoned and no poller runs.
#[async_trait]
impl durabletask_core::admin::ProviderAdmin for InMemoryOrchestrationService {
    async fn hub_status(&self) -> Result<durabletask_core::admin::HubStatus, ProviderError> {
        let hub = self.hub();
        let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Ok(durabletask_core::admin::HubStatus {
            exists: true,
            task_hub: "in-memory".into(),
            partition_count: 1,
            control_queues: vec![durabletask_core::admin::QueueLength {
                name: "orchestrations".into(),
                approximate_length: len(hub.orchestration_queue.len()),
            }],
            work_item_queue_length: len(hub.activity_queue.len()),
            poison_queue_length: 0,
            owned_partitions: vec!["orchestrations".into()],
        })
    }
}

#[async_trait]
impl OrchestrationServiceClient for InMemoryOrchestrationService {
    async fn create_orchestration(
        &self,
        start: TaskMessage,
        dedupe_statuses: &[OrchestrationStatus],
    ) -> Result<(), ProviderError> {
        const OP: &str = "create_orchestration";
        let mut start = start;
        durabletask_core::validate_orchestration_instance_id(
            &start.orchestration_instance.instance_id,
        )
        .map_err(|e| err(ProviderErrorKind::InvalidInput, OP, e.to_string()))?;
        let EventKind::ExecutionStarted(started) = &mut start.event.kind else {
            return Err(err(
                ProviderErrorKind::InvalidInput,
                OP,
                "only ExecutionStarted messages create instances",
            ));
        };
        let id = started.orchestration_instance.instance_id.clone();
        if id != start.orchestration_instance.instance_id {
            return Err(err(
                ProviderErrorKind::InvalidInput,
                OP,
                "the message and its ExecutionStarted name different instances",
            ));
        }
        if started.orchestration_instance.execution_id.is_none() {
            started.orchestration_instance.execution_id =
                Some(durabletask_core::new_execution_id());
            start.orchestration_instance.execution_id =
                started.orchestration_instance.execution_id.clone();
        }
        let now = self.now();
        {
            let mut hub = self.hub();
            let existing = hub.instances.get(&id);
            if let Some(i) = existing
                && dedupe_statuses.contains(&i.row.orchestration_status)
            {
                return Err(err(
                    ProviderErrorKind::Conflict,
                    OP,
                    format!(
                        "instance '{id}' already exists with status {}; nothing was written",
                        i.row.orchestration_status
                    ),
                ));
            }
            // Same rule as Azure: a recreation starts strictly after the row it replaces.
            start.event.timestamp =
                start_time_after(start.event.timestamp, existing.map(|i| i.row.created_time));
            if started.generation.is_none() {
                started.generation =
                    Some(existing.and_then(|i| i.row.generation).map_or(0, |g| g + 1));
            }
            let mut row = OrchestrationState::pending(started, start.event.timestamp);
            row.last_updated_time = now;
            let visible_at = started.scheduled_start_time.unwrap_or(now).max(now);
            self.check_size(OP, &start)?;
            // Enqueue first, then write the row (contract order). The hub lock makes the pair
            // atomic, so a concurrent create can neither supersede this one nor be superseded.
            Self::enqueue(&mut hub, start, visible_at);
            let history = hub.instances.remove(&id).map(|i| i.history).unwrap_or_default();
            hub.instances.insert(id, Instance { row, history });
        }
        self.shared.orchestration_ready.notify_waiters();
        Ok(())
    }

    async fn send_message(&self, message: TaskMessage) -> Result<(), ProviderError> {
        const OP: &str = "send_message";
        check_id(OP, &message.orchestration_instance.instance_id)?;
        if matches!(message.event.kind, EventKind::TaskScheduled { .. }) {
            return Err(err(
                ProviderErrorKind::InvalidInput,
                OP,
                "clients cannot schedule activities",
            ));
        }
        self.check_size(OP, &message)?;
        let now = self.now();
        Self::enqueue(&mut self.hub(), message, now);
        self.shared.orchestration_ready.notify_waiters();
        Ok(())
    }

    async fn get_state(
        &self,
        instance_id: &str,
        include_payloads: bool,
    ) -> Result<Option<OrchestrationState>, ProviderError> {
        check_id("get_state", instance_id)?;
        let hub = self.hub();
        Ok(hub.instances.get(instance_id).map(|i| {
            if include_payloads { i.row.clone() } else { i.row.clone().without_payloads() }
        }))
    }

    async fn get_history(
        &self,
        instance_id: &str,
        execution_id: Option<&str>,
    ) -> Result<Vec<HistoryEvent>, ProviderError> {
        check_id("get_history", instance_id)?;
        let hub = self.hub();
        let Some(i) = hub.instances.get(instance_id) else {
            return Ok(Vec::new());
        };
        if let Some(e) = execution_id
            && history_execution(&i.history) != Some(e)
        {
            return Err(err(
                ProviderErrorKind::NotFound,
                "get_history",
                format!("execution '{e}' is not current"),
            ));
        }
        Ok(i.history.clone())
    }

    async fn query(&self, query: &OrchestrationQuery) -> Result<QueryResult, ProviderError> {
        let hub = self.hub();
        let page = query.page_size.max(1);
        let start = query.continuation_token.clone();
        let mut states = Vec::new();
        let mut more = false;
        let range = hub
            .instances
            .iter()
            .filter(|(k, _)| start.as_ref().is_none_or(|s| k.as_str() > s.as_str()));
        for (id, inst) in range {
            let r = &inst.row;
            let ok = (query.runtime_status.is_empty()
                || query.runtime_status.contains(&r.orchestration_status))
                && query.created_from.is_none_or(|f| r.created_time >= f)
                && query.created_to.is_none_or(|t| r.created_time <= t)
                && query.instance_id_prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str()))
                && !(query.exclude_entities && durabletask_core::entity::is_entity_instance(id));
            if !ok {
                continue;
            }
            if states.len() == page {
                more = true;
                break;
            }
            states.push(if query.fetch_inputs_and_outputs {
                r.clone()
            } else {
                r.clone().without_payloads()
            });
        }
        let continuation_token =
            if more { states.last().map(|s| s.instance_id().to_owned()) } else { None };
        Ok(QueryResult { states, continuation_token })
    }

    async fn purge_instance(&self, instance_id: &str) -> Result<PurgeResult, ProviderError> {
        check_id("purge_instance", instance_id)?;
        let mut hub = self.hub();
        match hub.instances.get(instance_id) {
            None => Ok(PurgeResult::default()),
            Some(i) if !i.row.orchestration_status.is_terminal() => Err(err(
                ProviderErrorKind::PreconditionFailed,
                "purge_instance",
                format!("instance '{instance_id}' is {}", i.row.orchestration_status),
            )),
            Some(_) => {
                hub.instances.remove(instance_id);
                Ok(PurgeResult { deleted_instance_count: 1 })
            }
        }
    }

    async fn purge_by_filter(&self, filter: &PurgeFilter) -> Result<PurgeResult, ProviderError> {
        let mut hub = self.hub();
        let doomed: Vec<String> = hub
            .instances
            .iter()
            .filter(|(_, i)| filter.matches(&i.row))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            hub.instances.remove(k);
        }
        Ok(PurgeResult { deleted_instance_count: doomed.len() })
    }
}

impl crate::conformance::WriteProbe for InMemoryOrchestrationService {
    /// Every write of a client or worker call queues a message first, so counting queued messages
    /// counts the calls that wrote anything.
    fn writes(&self) -> u64 {
        self.messages_enqueued()
    }
}

/// [`ProviderFactory`](crate::conformance::ProviderFactory) for the in-memory provider: every hub
/// is a new [`InMemoryOrchestrationService`].
#[derive(Debug, Clone, Default)]
pub struct MemoryFactory {
    /// Settings for each hub.
    pub settings: MemorySettings,
}

#[async_trait]
impl crate::conformance::ProviderFactory for MemoryFactory {
    async fn create_hub(&self) -> crate::conformance::TestHub {
        let svc = Arc::new(InMemoryOrchestrationService::new(self.settings.clone()));
        crate::conformance::TestHub { service: svc.clone(), client: svc.clone(), writes: Some(svc) }
    }
}
