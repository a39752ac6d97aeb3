//! Dispatchers (DTF `TaskOrchestrationDispatcher` / `TaskActivityDispatcher`) behind one
//! [`Dispatchers`].
//!
//! Each dispatcher is a fetch loop bounded by a semaphore (max concurrent work items). A fetched
//! work item is processed in its own tokio task with a lock-renewal loop beside it. Processing
//! errors abandon the work item with exponential back-off (by dequeue count). Shutdown stops
//! fetching, waits for in-flight work items up to a timeout, aborts the rest (their locks expire
//! and the messages reappear), then stops the provider.
//!
//! Tracing events use DTF log names as messages (`ProcessWorkItemStarting`,
//! `OrchestrationCompleted`, `TaskActivityStarting`, ...) with `instance_id` / `execution_id`
//! fields. No subscriber is installed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::history::{EventKind, FailureDetails, HistoryEvent, NO_EVENT_ID, TaskMessage};
use crate::ids::new_execution_id;
use crate::provider::{
    ActivityWorkItem, OrchestrationService, OrchestrationWorkItem, ProviderError,
};
use crate::registry::{ActivityContext, Registry};
use crate::runtime::{RuntimeOptions, WorkItemResult, process_locked_work_item};

/// Worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Max concurrent orchestration work items (`None`: the provider's hint).
    pub max_concurrent_orchestrations: Option<usize>,
    /// Max concurrent activity work items (`None`: the provider's hint).
    pub max_concurrent_activities: Option<usize>,
    /// How long one `lock_next_*` call may wait for work.
    pub fetch_timeout: Duration,
    /// Delay after a failed fetch (DTF Azure Storage: 10 s).
    pub fetch_error_delay: Duration,
    /// Renew a lock when it has less than this left (DTF: 30 s).
    pub lock_renewal_margin: Duration,
    /// First abandon back-off; doubles per delivery attempt.
    pub abandon_backoff_base: Duration,
    /// Cap on the abandon back-off (DTF Azure Storage: 600 s).
    pub abandon_backoff_max: Duration,
    /// Time source for episode timestamps.
    pub clock: Arc<dyn Clock>,
    /// Replay/runtime options.
    pub runtime: RuntimeOptions,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_concurrent_orchestrations: None,
            max_concurrent_activities: None,
            fetch_timeout: Duration::from_secs(5),
            fetch_error_delay: Duration::from_secs(10),
            lock_renewal_margin: Duration::from_secs(30),
            abandon_backoff_base: Duration::from_secs(1),
            abandon_backoff_max: Duration::from_secs(600),
            clock: Arc::new(SystemClock),
            runtime: RuntimeOptions::default(),
        }
    }
}

impl WorkerOptions {
    /// The abandon back-off for a work item delivered `dequeue_count` times:
    /// `base * 2^(dequeue_count - 1)`, capped.
    pub fn backoff_for(&self, dequeue_count: u32) -> Duration {
        crate::backoff::doubling(
            self.abandon_backoff_base,
            dequeue_count.saturating_sub(1),
            self.abandon_backoff_max,
        )
    }
}

/// Hosts the orchestration and activity dispatchers for one provider (DTF `TaskHubWorker`; the
/// worker host's `TaskHubWorker` wraps it with settings, health and signal handling).
#[derive(Debug)]
pub struct Dispatchers {
    service: Arc<dyn OrchestrationService>,
    shutdown: watch::Sender<Option<Duration>>,
    loops: JoinSet<()>,
}

struct Shared {
    service: Arc<dyn OrchestrationService>,
    registry: Registry,
    options: WorkerOptions,
}

impl Dispatchers {
    /// Starts the provider and both dispatchers.
    ///
    /// # Errors
    /// When the provider fails to start.
    pub async fn start(
        service: Arc<dyn OrchestrationService>,
        registry: Registry,
        mut options: WorkerOptions,
    ) -> Result<Self, ProviderError> {
        tracing::info!("TaskHubWorkerStarting");
        service.start().await?;
        let settings = service.settings();
        if options.runtime.max_message_bytes.is_none() {
            options.runtime.max_message_bytes = settings.max_message_bytes;
        }
        let max_o = options
            .max_concurrent_orchestrations
            .unwrap_or(settings.max_concurrent_orchestrations)
            .max(1);
        let max_a =
            options.max_concurrent_activities.unwrap_or(settings.max_concurrent_activities).max(1);
        let shared = Arc::new(Shared { service: Arc::clone(&service), registry, options });
        let (tx, rx) = watch::channel(None);
        let mut loops = JoinSet::new();
        loops.spawn(orchestration_loop(Arc::clone(&shared), max_o, rx.clone()));
        loops.spawn(activity_loop(shared, max_a, rx));
        tracing::info!(
            max_concurrent_orchestrations = max_o,
            max_concurrent_activities = max_a,
            "TaskHubWorkerStarted"
        );
        Ok(Self { service, shutdown: tx, loops })
    }

    /// Graceful shutdown: stop fetching, wait up to `drain_timeout` for in-flight work items
    /// (then abort them), stop the provider.
    ///
    /// # Errors
    /// When the provider fails to stop.
    pub async fn shutdown(mut self, drain_timeout: Duration) -> Result<(), ProviderError> {
        tracing::info!("TaskHubWorkerStopping");
        let _ = self.shutdown.send(Some(drain_timeout));
        while self.loops.join_next().await.is_some() {}
        self.service.stop(true).await?;
        tracing::info!("TaskHubWorkerStopped");
        Ok(())
    }
}

impl Drop for Dispatchers {
    fn drop(&mut self) {
        let _ = self.shutdown.send(Some(Duration::ZERO));
        self.loops.abort_all();
    }
}

async fn stopping(rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(d) = *rx.borrow_and_update() {
            return d;
        }
        if rx.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

async fn drain(name: &'static str, mut tasks: JoinSet<()>, timeout: Duration) {
    tracing::info!(dispatcher = name, in_flight = tasks.len(), "DispatchersStopping");
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!(
            dispatcher = name,
            aborted = tasks.len(),
            "Drain timed out; aborting in-flight work items"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    tracing::info!(dispatcher = name, "DispatcherStopped");
}

async fn orchestration_loop(
    shared: Arc<Shared>,
    max: usize,
    mut rx: watch::Receiver<Option<Duration>>,
) {
    tracing::info!(dispatcher = "TaskOrchestrationDispatcher", "DispatcherStarting");
    let sem = Arc::new(Semaphore::new(max));
    let mut tasks = JoinSet::new();
    let drain_timeout = loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = Arc::clone(&sem).acquire_owned() => match p { Ok(p) => p, Err(_) => break Duration::ZERO },
            d = stopping(&mut rx) => break d,
        };
        let fetched = tokio::select! {
            r = shared.service.lock_next_orchestration_work_item(shared.options.fetch_timeout) => r,
            d = stopping(&mut rx) => break d,
        };
        match fetched {
            Ok(Some(wi)) => {
                let s = Arc::clone(&shared);
                let span = tracing::info_span!(
                    "orchestration_work_item",
                    instance_id = %wi.instance_id,
                    execution_id = wi.runtime_state.execution_id().unwrap_or(""),
                    messages = wi.new_messages.len(),
                );
                tasks.spawn(
                    async move {
                        process_orchestration(&s, wi).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "FetchWorkItemFailure");
                tokio::select! {
                    () = tokio::time::sleep(shared.options.fetch_error_delay) => {}
                    d = stopping(&mut rx) => break d,
                }
            }
        }
    };
    drain("TaskOrchestrationDispatcher", tasks, drain_timeout).await;
}

async fn activity_loop(shared: Arc<Shared>, max: usize, mut rx: watch::Receiver<Option<Duration>>) {
    tracing::info!(dispatcher = "TaskActivityDispatcher", "DispatcherStarting");
    let sem = Arc::new(Semaphore::new(max));
    let mut tasks = JoinSet::new();
    let drain_timeout = loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = Arc::clone(&sem).acquire_owned() => match p { Ok(p) => p, Err(_) => break Duration::ZERO },
            d = stopping(&mut rx) => break d,
        };
        let fetched = tokio::select! {
            r = shared.service.lock_next_activity_work_item(shared.options.fetch_timeout) => r,
            d = stopping(&mut rx) => break d,
        };
        match fetched {
            Ok(Some(wi)) => {
                let s = Arc::clone(&shared);
                let span = tracing::info_span!(
                    "activity_work_item",
                    instance_id = %wi.message.orchestration_instance.instance_id,
                    task_id = wi.message.event.event_id,
                    work_item = %wi.id,
                );
                tasks.spawn(
                    async move {
                        process_activity(&s, wi).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "FetchWorkItemFailure");
                tokio::select! {
                    () = tokio::time::sleep(shared.options.fetch_error_delay) => {}
                    d = stopping(&mut rx) => break d,
                }
            }
        }
    };
    drain("TaskActivityDispatcher", tasks, drain_timeout).await;
}

/// How long to wait before renewing a lock that expires at `locked_until`.
fn renewal_delay(options: &WorkerOptions, locked_until: time::OffsetDateTime) -> Duration {
    let remaining =
        Duration::try_from(locked_until - options.clock.now()).unwrap_or(Duration::ZERO);
    if remaining > options.lock_renewal_margin + Duration::from_secs(5) {
        (remaining - options.lock_renewal_margin).min(Duration::from_secs(30))
    } else {
        (remaining / 2).max(Duration::from_millis(10))
    }
}

async fn process_orchestration(shared: &Shared, wi: OrchestrationWorkItem) {
    let service = &shared.service;
    let wi = Arc::new(wi);
    let instance_id = wi.instance_id.clone();
    let execution_id = wi.runtime_state.execution_id().unwrap_or_default().to_owned();
    tracing::debug!(
        instance_id = %instance_id,
        execution_id = %execution_id,
        messages = wi.new_messages.len(),
        dequeue_count = wi.dequeue_count,
        "ProcessWorkItemStarting"
    );
    let renewer = {
        let service = Arc::clone(service);
        let wi = Arc::clone(&wi);
        let options = shared.options.clone();
        tokio::spawn(async move {
            let mut locked_until = wi.locked_until;
            loop {
                tokio::time::sleep(renewal_delay(&options, locked_until)).await;
                match service.renew_orchestration_work_item_lock(&wi).await {
                    Ok(t) => {
                        tracing::debug!(instance_id = %wi.instance_id, "RenewOrchestrationWorkItemCompleted");
                        locked_until = t;
                    }
                    Err(e) => {
                        tracing::warn!(instance_id = %wi.instance_id, error = %e, "RenewOrchestrationWorkItemFailed");
                        break;
                    }
                }
            }
        })
    };
    let now = shared.options.clock.now();
    let mut gen_id = new_execution_id;
    let outcome =
        process_locked_work_item(&shared.registry, &wi, now, &shared.options.runtime, &mut gen_id);
    let failed = match outcome {
        Ok(result) => {
            let summary = match &result {
                WorkItemResult::Discard { reason } => {
                    tracing::info!(instance_id = %instance_id, reason = %reason, "DroppingOrchestrationWorkItem");
                    None
                }
                WorkItemResult::Checkpoint(c) => {
                    for m in &c.activity_messages {
                        if let EventKind::TaskScheduled { name, .. } = &m.event.kind {
                            tracing::debug!(instance_id = %instance_id, task_id = m.event.event_id, name = %name, "SchedulingActivity");
                        }
                    }
                    for m in &c.timer_messages {
                        if let EventKind::TimerFired { fire_at, timer_id } = &m.event.kind {
                            tracing::debug!(instance_id = %instance_id, timer_id, fire_at = %fire_at, "CreatingTimer");
                        }
                    }
                    Some((
                        c.state.orchestration_status,
                        c.state.orchestration_instance.execution_id.clone(),
                    ))
                }
            };
            match service.complete_orchestration_work_item(&wi, result).await {
                Ok(()) => {
                    if let Some((status, exec)) = summary
                        && status.is_terminal()
                    {
                        tracing::info!(
                            instance_id = %instance_id,
                            execution_id = exec.as_deref().unwrap_or(""),
                            status = %status,
                            "OrchestrationCompleted"
                        );
                    }
                    false
                }
                Err(e) => {
                    tracing::warn!(instance_id = %instance_id, error = %e, "ProcessWorkItemFailed");
                    true
                }
            }
        }
        Err(e) => {
            tracing::warn!(instance_id = %instance_id, execution_id = %execution_id, error = %e, "ProcessWorkItemFailed");
            true
        }
    };
    renewer.abort();
    if failed {
        let backoff = shared.options.backoff_for(wi.dequeue_count);
        tracing::info!(instance_id = %instance_id, backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "AbandoningWorkItem");
        if let Err(e) = service.abandon_orchestration_work_item(&wi, backoff).await {
            tracing::warn!(instance_id = %instance_id, error = %e, "Abandon failed");
        }
    } else {
        tracing::debug!(instance_id = %instance_id, "ProcessWorkItemCompleted");
    }
    if let Err(e) = service.release_orchestration_work_item(&wi).await {
        tracing::warn!(instance_id = %instance_id, error = %e, "Release failed");
    }
}

async fn process_activity(shared: &Shared, wi: ActivityWorkItem) {
    let service = &shared.service;
    let instance = wi.message.orchestration_instance.clone();
    let task_id = wi.message.event.event_id;
    let (name, input) = match &wi.message.event.kind {
        EventKind::TaskScheduled { name, input, .. } => (name.clone(), input.clone()),
        other => {
            tracing::warn!(work_item = %wi.id, event_type = %other.event_type(), "TaskActivityDispatcherError: not a TaskScheduled event; abandoning");
            let _ = service
                .abandon_activity_work_item(&wi, shared.options.backoff_for(wi.dequeue_count))
                .await;
            return;
        }
    };
    let Some(f) = shared.registry.activity(&name).cloned() else {
        tracing::warn!(instance_id = %instance.instance_id, name = %name, "TaskActivityDispatcherError: activity not registered; abandoning");
        let _ = service
            .abandon_activity_work_item(&wi, shared.options.backoff_for(wi.dequeue_count))
            .await;
        return;
    };
    tracing::debug!(
        instance_id = %instance.instance_id,
        execution_id = instance.execution_id.as_deref().unwrap_or(""),
        name = %name,
        task_id,
        "TaskActivityStarting"
    );
    let ctx = ActivityContext::new(instance.clone(), name.clone(), task_id);
    let mut handle = tokio::spawn(f(ctx, input));
    let mut locked_until = wi.locked_until;
    let joined = loop {
        tokio::select! {
            r = &mut handle => break r,
            () = tokio::time::sleep(renewal_delay(&shared.options, locked_until)) => {
                match service.renew_activity_work_item_lock(&wi).await {
                    Ok(t) => locked_until = t,
                    Err(e) => {
                        tracing::warn!(work_item = %wi.id, error = %e, "RenewActivityMessageFailed");
                        locked_until = shared.options.clock.now() + Duration::from_secs(3600);
                    }
                }
            }
        }
    };
    let kind = match joined {
        Ok(Ok(result)) => {
            tracing::debug!(instance_id = %instance.instance_id, name = %name, task_id, "TaskActivityCompleted");
            EventKind::TaskCompleted { task_scheduled_id: task_id, result }
        }
        Ok(Err(e)) => {
            let fd = e.into_details();
            tracing::info!(instance_id = %instance.instance_id, name = %name, task_id, error = %fd, "TaskActivityFailure");
            EventKind::TaskFailed {
                task_scheduled_id: task_id,
                reason: Some(fd.error_message.clone()),
                details: None,
                failure_details: Some(fd),
            }
        }
        Err(join) => {
            let msg = if join.is_panic() {
                crate::error::panic_message(join.into_panic().as_ref(), "activity panicked")
            } else {
                "activity was cancelled".into()
            };
            tracing::warn!(instance_id = %instance.instance_id, name = %name, task_id, error = %msg, "TaskActivityFailure");
            EventKind::TaskFailed {
                task_scheduled_id: task_id,
                reason: Some(msg.clone()),
                details: None,
                failure_details: Some(FailureDetails::new(crate::error::PANIC_ERROR, msg)),
            }
        }
    };
    let response = TaskMessage::new(
        instance.clone(),
        HistoryEvent::new(NO_EVENT_ID, shared.options.clock.now(), kind),
    );
    if let Err(e) = service.complete_activity_work_item(&wi, response).await {
        tracing::warn!(instance_id = %instance.instance_id, error = %e, "TaskActivityAborted: completing failed; abandoning");
        let _ = service
            .abandon_activity_work_item(&wi, shared.options.backoff_for(wi.dequeue_count))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let o = WorkerOptions::default();
        assert_eq!(o.backoff_for(0), Duration::from_secs(1));
        assert_eq!(o.backoff_for(1), Duration::from_secs(1));
        assert_eq!(o.backoff_for(4), Duration::from_secs(8));
        assert_eq!(o.backoff_for(30), Duration::from_secs(600));
    }
}
