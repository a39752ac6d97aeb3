//! The end-of-run auditor: the invariants I1-I8 below, as far as the client API shows them.
//!
//! For every planned instance: it reached Completed with the expected output (I1), nothing is
//! stuck, History and Instances agree on status and output (I4), the current execution has one
//! `ExecutionStarted` and one `ExecutionCompleted`, every completion refers to a scheduled task
//! (I3), the row and the history are on the same execution, and every scheduled activity
//! appears in the ledger at least once (I8). Duplicate
//! executions (ledger count - 1) are counted and reported, not failed: activities are
//! at-least-once. After a purge, the large-message container must be empty (I6).

use crate::Result;
use crate::ledger::Ledger;
use crate::workload::Planned;
use durabletask_azure_storage::AzureStorageOrchestrationService;
use durabletask_azure_storage::storage::BlobStore;
use durabletask_core::{
    EventKind, OrchestrationQuery, OrchestrationServiceClient, OrchestrationStatus,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Retries a harness read a few times: the auditor must not fail on one timeout of a storage
/// emulator that is busy with the scenario's own load.
pub(crate) async fn retry<T, E, F, Fut>(mut f: F) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 8 => {
                tracing::warn!(error = %e, attempt, "chaos: harness read failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the auditor found.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Planned instances (children included).
    pub expected: usize,
    /// Completed with the right output and consistent history.
    pub completed: usize,
    /// No Instances row at all.
    pub lost: usize,
    /// Not terminal by the deadline.
    pub stuck: usize,
    /// Terminal with the wrong status or output.
    pub wrong_output: usize,
    /// History and Instances disagree, or history is malformed.
    pub history_mismatch: usize,
    /// Extra executions of committed scheduled activities (ledger count - 1, summed).
    pub dup_activity_exec: usize,
    /// Executions of activities whose scheduling episode never committed (aborted episodes).
    pub uncommitted_activity_exec: usize,
    /// Scheduled activities with a completion but no ledger row (must be 0).
    pub missing_activity_exec: usize,
    /// Completions appended to history more than once for one scheduled task: redelivered
    /// responses that replay absorbed (reported, not a failure: I3).
    pub duplicate_completions_in_history: usize,
    /// Median and 99th percentile of created -> completed, seconds.
    pub latency_p50: f64,
    /// See `latency_p50`.
    pub latency_p99: f64,
    /// The first problems found, for the failure message.
    pub problems: Vec<String>,
}

impl Audit {
    /// True when nothing was lost, stuck, wrong or inconsistent.
    pub fn ok(&self) -> bool {
        self.completed == self.expected
            && self.lost == 0
            && self.stuck == 0
            && self.wrong_output == 0
            && self.history_mismatch == 0
            && self.missing_activity_exec == 0
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }
}

fn common_prefix(planned: &[Planned]) -> String {
    let mut it = planned.iter().map(|p| p.instance_id.as_str());
    let Some(first) = it.next() else { return String::new() };
    let mut len = first.len();
    for id in it {
        len = first.bytes().zip(id.bytes()).take(len).take_while(|(a, b)| a == b).count();
    }
    first[..len].to_owned()
}

/// Waits until every planned instance is terminal or `timeout` passes; returns how many are
/// terminal. Polls with one prefix query per round (cheap for the storage under test).
///
/// # Errors
/// When the query keeps failing.
pub async fn wait_terminal(
    svc: &AzureStorageOrchestrationService,
    planned: &[Planned],
    timeout: Duration,
) -> Result<usize> {
    let want: HashSet<&str> = planned.iter().map(|p| p.instance_id.as_str()).collect();
    let prefix = common_prefix(planned);
    let deadline = Instant::now() + timeout;
    let mut failures = 0;
    loop {
        let mut done = 0;
        let mut token = None;
        let mut ok = true;
        loop {
            let q = OrchestrationQuery {
                instance_id_prefix: Some(prefix.clone()),
                page_size: 1000,
                continuation_token: token,
                fetch_inputs_and_outputs: false,
                ..OrchestrationQuery::default()
            };
            match svc.query(&q).await {
                Ok(page) => {
                    done += page
                        .states
                        .iter()
                        .filter(|s| {
                            want.contains(s.instance_id()) && s.orchestration_status.is_terminal()
                        })
                        .count();
                    token = page.continuation_token;
                    if token.is_none() {
                        break;
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures > 20 {
                        return Err(e.into());
                    }
                    ok = false;
                    break;
                }
            }
        }
        if ok && done == want.len() {
            return Ok(done);
        }
        if Instant::now() >= deadline {
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits up to `timeout` for the planned instances, then audits each of them.
///
/// # Errors
/// When storage reads fail (not for findings).
pub async fn audit(
    svc: &AzureStorageOrchestrationService,
    planned: &[Planned],
    ledger: &Ledger,
    timeout: Duration,
) -> Result<Audit> {
    wait_terminal(svc, planned, timeout).await?;
    let executions = retry(|| ledger.executions()).await?;
    let mut a = Audit { expected: planned.len(), ..Audit::default() };
    let mut latencies = Vec::new();
    let mut committed_tasks = BTreeSet::new();
    for p in planned {
        let id = p.instance_id.as_str();
        let Some(state) = retry(|| svc.get_state(id, true)).await? else {
            a.lost += 1;
            a.problem(format!("{id}: lost (no Instances row)"));
            continue;
        };
        if !state.orchestration_status.is_terminal() {
            a.stuck += 1;
            // Enough to start a diagnosis: which execution the row names and where its history
            // stopped (the next message it waits for is the one to look for in the queues).
            let history = retry(|| svc.get_history(id, None)).await.unwrap_or_default();
            let tail: Vec<String> = history
                .iter()
                .rev()
                .take(6)
                .rev()
                .map(|e| format!("{}#{}", e.event_type(), e.event_id))
                .collect();
            let history_exec =
                durabletask_core::admission::history_execution(&history).map(str::to_owned);
            a.problem(format!(
                "{id}: stuck in {} (row execution {:?}, history execution {:?}, {} events, last {:?})",
                state.orchestration_status.as_str(),
                state.orchestration_instance.execution_id,
                history_exec,
                history.len(),
                tail
            ));
            continue;
        }
        let output: Option<String> =
            state.output.as_deref().and_then(|o| serde_json::from_str(o).ok());
        let mut good = true;
        if state.orchestration_status != OrchestrationStatus::Completed
            || output.as_deref() != Some(p.output.as_str())
        {
            a.wrong_output += 1;
            good = false;
            let shown: String = state.output.as_deref().unwrap_or("").chars().take(200).collect();
            a.problem(format!(
                "{id}: {} with output {shown:?}",
                state.orchestration_status.as_str()
            ));
        }
        let history = retry(|| svc.get_history(id, None)).await?;
        let exec = state.orchestration_instance.execution_id.clone().unwrap_or_default();
        let starts =
            history.iter().filter(|e| matches!(e.kind, EventKind::ExecutionStarted(_))).count();
        let ends: Vec<_> = history
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ExecutionCompleted { orchestration_status, result, .. } => {
                    Some((*orchestration_status, result.clone()))
                }
                _ => None,
            })
            .collect();
        // The Instances row must name the execution the history holds (a recreation storm once
        // left them on different executions).
        let history_exec =
            durabletask_core::admission::history_execution(&history).map(str::to_owned);
        let same_execution = history_exec.as_deref() == Some(exec.as_str());
        if !same_execution {
            a.problem(format!(
                "{id}: the Instances row names execution {exec:?}, the history {history_exec:?}"
            ));
        }
        let mut consistent = starts == 1 && ends.len() == 1 && same_execution;
        if let Some((status, result)) = ends.first()
            && (*status != state.orchestration_status || *result != state.output)
        {
            consistent = false;
        }
        let mut scheduled = BTreeMap::new();
        for e in &history {
            if let EventKind::TaskScheduled { name, .. } = &e.kind {
                scheduled.insert(e.event_id, (name.clone(), 0usize));
            }
        }
        for e in &history {
            if let EventKind::TaskCompleted { task_scheduled_id, .. }
            | EventKind::TaskFailed { task_scheduled_id, .. } = &e.kind
            {
                match scheduled.get_mut(task_scheduled_id) {
                    Some((_, n)) => *n += 1,
                    None => {
                        consistent = false;
                        a.problem(format!(
                            "{id}: completion of unscheduled task {task_scheduled_id}"
                        ));
                    }
                }
            }
        }
        for (task_id, (name, completions)) in &scheduled {
            if *completions > 1 {
                a.duplicate_completions_in_history += completions - 1;
            }
            if name != crate::workload::STEP {
                continue;
            }
            let key = (id.to_owned(), exec.clone(), *task_id);
            let n = executions.get(&key).copied().unwrap_or(0);
            if n == 0 && *completions > 0 {
                a.missing_activity_exec += 1;
                a.problem(format!("{id}: task {task_id} completed but never executed (ledger)"));
            }
            a.dup_activity_exec += n.saturating_sub(1);
            committed_tasks.insert(key);
        }
        if !consistent {
            a.history_mismatch += 1;
            good = false;
            a.problem(format!(
                "{id}: history disagrees with Instances (starts={starts}, ends={ends:?}, row={} {:?})",
                state.orchestration_status.as_str(),
                state.output.as_deref().map(|o| o.chars().take(80).collect::<String>())
            ));
        }
        if good {
            a.completed += 1;
            if let Some(done) = state.completed_time {
                latencies.push((done - state.created_time).as_seconds_f64());
            }
        }
    }
    a.uncommitted_activity_exec =
        executions.iter().filter(|(k, _)| !committed_tasks.contains(*k)).map(|(_, n)| *n).sum();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = (q * (latencies.len() - 1) as f64).round() as usize;
        latencies[idx.min(latencies.len() - 1)]
    };
    a.latency_p50 = pct(0.50);
    a.latency_p99 = pct(0.99);
    Ok(a)
}

/// Purges every planned instance and returns the large-message blobs left behind (I6: must be
/// none).
///
/// # Errors
/// When storage fails.
pub async fn purge_and_count_orphan_blobs(
    svc: &AzureStorageOrchestrationService,
    blobs: &dyn BlobStore,
    planned: &[Planned],
) -> Result<Vec<String>> {
    for p in planned {
        retry(|| svc.purge_instance(&p.instance_id)).await?;
    }
    let container = svc.resource_names().large_messages_container.clone();
    Ok(retry(|| blobs.list_blobs(&container, "")).await?)
}

/// Messages still in the hub's control and work-item queues (approximate).
///
/// # Errors
/// When storage fails.
pub async fn queue_residue(svc: &AzureStorageOrchestrationService) -> Result<u64> {
    let info = retry(|| svc.hub_info()).await?;
    Ok(info.control_queues.iter().map(|(_, n)| n).sum::<u64>() + info.work_item_queue_length)
}

/// The large-message container against the rows that reference it, from the
/// provider's one definition ([`durabletask_azure_storage::audit::blob_references`]): `orphans`
/// are in the container but referenced by no live History or Instances row, `dangling` are
/// referenced but missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobCheck {
    /// Blobs in the container.
    pub in_container: usize,
    /// Distinct blobs referenced by live History and Instances rows.
    pub referenced: usize,
    /// In the container, referenced by nothing.
    pub orphans: Vec<String>,
    /// Referenced, not in the container (with who references them).
    pub dangling: Vec<String>,
}

impl BlobCheck {
    /// True when the container holds exactly the referenced blobs.
    pub fn exact(&self) -> bool {
        self.orphans.is_empty() && self.dangling.is_empty()
    }
}

impl std::fmt::Display for BlobCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = |v: &[String]| -> Vec<String> { v.iter().take(8).cloned().collect() };
        write!(
            f,
            "{} blobs, {} referenced, {} orphans (first {:?}), {} dangling (first {:?})",
            self.in_container,
            self.referenced,
            self.orphans.len(),
            first(&self.orphans),
            self.dangling.len(),
            first(&self.dangling)
        )
    }
}

/// Compares the hub's large-message container with the blobs live rows reference (meaningful
/// when every instance is terminal and the queues are empty: an in-flight message's blob is not
/// referenced by a row).
///
/// # Errors
/// When storage reads keep failing.
pub async fn blob_references(
    stack: &durabletask_azure_storage::StorageStack,
    names: &durabletask_azure_storage::ResourceNames,
) -> Result<BlobCheck> {
    let a = retry(|| durabletask_azure_storage::audit::blob_references(stack, names)).await?;
    Ok(BlobCheck {
        in_container: a.in_container.len(),
        referenced: a.referenced.len(),
        orphans: a.orphans().into_iter().collect(),
        dangling: a
            .dangling()
            .into_iter()
            .map(|d| {
                let by = a.referenced_by.get(&d).map(|v| v.join(", ")).unwrap_or_default();
                format!("{d} (from {by})")
            })
            .collect(),
    })
}

/// Samples the provider stats of in-process workers during a run and records every breach of
/// the liveness invariants (the held-set leak that once stopped a worker for good would have
/// failed all three):
/// * a poller of an owned partition had no successful receive (empty or not) for longer than the
///   lease interval while no receive was waiting for the store, or stayed paused at the buffer threshold that long (a fenced poller, whose
///   lease renewal is overdue while storage stalls, waits on purpose: it fails only when the
///   fence lasts longer than [`FENCE_LEASES`] lease intervals);
/// * `leaked_messages()` (held ids that are neither buffered nor in flight) stayed above 0 in
///   [`LEAK_SAMPLES`] consecutive samples (one sample can catch a prefetch handing over);
/// * with [`StatsMonitor::expect_partitions`] (one worker owns every partition, as in the soak):
///   fewer pollers than partitions for longer than [`FENCE_LEASES`] lease intervals. A
///   partition fenced longer than `max_fenced_duration` is lost and re-acquired once storage
///   answers again, so a long storage stall leaves it unpolled for a while on purpose; a worker
///   that never polls it again fails.
#[derive(Debug)]
pub struct StatsMonitor {
    shared: Arc<MonitorShared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Consecutive samples with leaked messages that count as a leak.
pub const LEAK_SAMPLES: u32 = 2;

#[derive(Debug)]
struct MonitorShared {
    lease: Duration,
    /// Partitions the watched workers must poll between them (0: not checked).
    expected_partitions: std::sync::atomic::AtomicUsize,
    /// Since when fewer pollers than expected were seen.
    short_since: Mutex<Option<Instant>>,
    nodes: Mutex<BTreeMap<String, Watched>>,
    findings: Mutex<StatsFindings>,
}

/// How many lease intervals a poller may stay fenced before the monitor calls it stuck.
pub const FENCE_LEASES: u32 = 4;

#[derive(Debug)]
struct Watched {
    svc: AzureStorageOrchestrationService,
    leak_streak: u32,
    first_seen: BTreeMap<String, Instant>,
    /// Per fenced queue: when the fence was first and last seen.
    fenced: BTreeMap<String, (Instant, Instant)>,
}

/// What a [`StatsMonitor`] saw.
#[derive(Debug, Clone, Default)]
pub struct StatsFindings {
    /// Samples taken (one per watched worker per period).
    pub samples: u64,
    /// Largest held count.
    pub max_held: usize,
    /// Longest time since a poller's last successful receive.
    pub max_receive_age: Duration,
    /// Longest pause at the buffer threshold.
    pub max_paused: Duration,
    /// Largest leaked count in a sample.
    pub max_leaked: usize,
    /// Longest stretch with fewer pollers than [`StatsMonitor::expect_partitions`] asked for.
    pub max_unpolled: Duration,
    /// Breaches, one entry per worker, invariant and control queue (the worst value seen).
    pub violations: BTreeMap<String, String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StatsMonitor {
    /// Starts sampling every `period`; `lease` is the bound for receive ages and pauses.
    pub fn start(lease: Duration, period: Duration) -> Arc<Self> {
        let shared = Arc::new(MonitorShared {
            lease,
            expected_partitions: std::sync::atomic::AtomicUsize::new(0),
            short_since: Mutex::new(None),
            nodes: Mutex::new(BTreeMap::new()),
            findings: Mutex::new(StatsFindings::default()),
        });
        let weak = Arc::downgrade(&shared);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.sample();
            }
        });
        Arc::new(Self { shared, task: Mutex::new(Some(task)) })
    }

    /// Watches `svc` under `name` (replacing a worker of that name).
    pub fn watch(&self, name: &str, svc: AzureStorageOrchestrationService) {
        lock(&self.shared.nodes).insert(
            name.to_owned(),
            Watched { svc, leak_streak: 0, first_seen: BTreeMap::new(), fenced: BTreeMap::new() },
        );
    }

    /// From now on the watched workers must poll `n` partitions between them (one worker that
    /// owns the whole hub); see the type's invariants.
    pub fn expect_partitions(&self, n: usize) {
        self.shared.expected_partitions.store(n, std::sync::atomic::Ordering::Relaxed);
        *lock(&self.shared.short_since) = None;
    }

    /// Stops watching `name` (before it stops or is killed).
    pub fn unwatch(&self, name: &str) {
        lock(&self.shared.nodes).remove(name);
    }

    /// Takes one sample now (also done every period).
    pub fn sample_now(&self) {
        self.shared.sample();
    }

    /// What was seen so far.
    pub fn findings(&self) -> StatsFindings {
        lock(&self.shared.findings).clone()
    }

    /// Stops sampling.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

impl Drop for StatsMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

impl MonitorShared {
    fn sample(&self) {
        let now = Instant::now();
        let mut nodes = lock(&self.nodes);
        let mut f = lock(&self.findings);
        let mut polled = 0usize;
        for (name, w) in nodes.iter_mut() {
            let s = w.svc.stats();
            polled += s.control_queues.len();
            f.samples += 1;
            f.max_held = f.max_held.max(s.held_messages);
            let leaked = s.leaked_messages();
            f.max_leaked = f.max_leaked.max(leaked);
            w.leak_streak = if leaked > 0 { w.leak_streak + 1 } else { 0 };
            if w.leak_streak >= LEAK_SAMPLES {
                f.violations.insert(
                    format!("{name}: leak"),
                    format!(
                        "{name}: {leaked} held message ids neither buffered nor in flight for {} \
                         samples (held {}, buffered {}, in flight {})",
                        w.leak_streak, s.held_messages, s.buffered_messages, s.in_flight_messages
                    ),
                );
            }
            for q in &s.control_queues {
                let first = *w.first_seen.entry(q.control_queue.clone()).or_insert(now);
                if q.fenced {
                    let seen = w.fenced.entry(q.control_queue.clone()).or_insert((now, now));
                    seen.1 = now;
                    let since = seen.0;
                    if now - since > self.lease * FENCE_LEASES {
                        f.violations.insert(
                            format!("{name}: fenced {}", q.control_queue),
                            format!(
                                "{name}: the poller of {} has been fenced for {:.1}s",
                                q.control_queue,
                                (now - since).as_secs_f64()
                            ),
                        );
                    }
                    continue;
                }
                // Just resumed: the first receive after the fence may not have happened yet.
                if let Some(&(_, last)) = w.fenced.get(&q.control_queue) {
                    if now - last < self.lease {
                        continue;
                    }
                    w.fenced.remove(&q.control_queue);
                }
                // A receive the store has not answered yet: the poller keeps asking (storage is
                // slow, e.g. an Azurite freeze), which is not the stop-for-good this catches.
                if q.receiving_for.is_some() {
                    continue;
                }
                let age = q.since_last_receive.unwrap_or_else(|| now - first);
                f.max_receive_age = f.max_receive_age.max(age);
                if age > self.lease {
                    f.violations.insert(
                        format!("{name}: receive {}", q.control_queue),
                        format!(
                            "{name}: the poller of {} has not received for {:.1}s (lease {}s)",
                            q.control_queue,
                            age.as_secs_f64(),
                            self.lease.as_secs()
                        ),
                    );
                }
                if let Some(p) = q.paused_for {
                    f.max_paused = f.max_paused.max(p);
                    if p > self.lease {
                        f.violations.insert(
                            format!("{name}: paused {}", q.control_queue),
                            format!(
                                "{name}: the poller of {} paused at the buffer threshold for {:.1}s \
                                 (held {})",
                                q.control_queue,
                                p.as_secs_f64(),
                                s.held_messages
                            ),
                        );
                    }
                }
            }
            w.first_seen.retain(|q, _| s.control_queues.iter().any(|c| &c.control_queue == q));
        }
        self.check_polled(&mut f, polled, now);
    }

    fn check_polled(&self, f: &mut StatsFindings, polled: usize, now: Instant) {
        let expected = self.expected_partitions.load(std::sync::atomic::Ordering::Relaxed);
        let mut short = lock(&self.short_since);
        if expected == 0 || polled >= expected {
            *short = None;
            return;
        }
        let since = *short.get_or_insert(now);
        let unpolled = now - since;
        f.max_unpolled = f.max_unpolled.max(unpolled);
        if unpolled > self.lease * FENCE_LEASES {
            f.violations.insert(
                "unpolled".to_owned(),
                format!(
                    "{polled} of {expected} partitions polled for {:.1}s (bound {} lease intervals)",
                    unpolled.as_secs_f64(),
                    FENCE_LEASES
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(lease: Duration) -> MonitorShared {
        MonitorShared {
            lease,
            expected_partitions: std::sync::atomic::AtomicUsize::new(4),
            short_since: Mutex::new(None),
            nodes: Mutex::new(BTreeMap::new()),
            findings: Mutex::new(StatsFindings::default()),
        }
    }

    #[test]
    fn a_short_loss_after_a_stall_is_tolerated_and_its_length_reported() {
        let m = shared(Duration::from_secs(15));
        let mut f = StatsFindings::default();
        let t0 = Instant::now();
        m.check_polled(&mut f, 0, t0);
        m.check_polled(&mut f, 0, t0 + Duration::from_secs(20));
        m.check_polled(&mut f, 4, t0 + Duration::from_secs(21));
        m.check_polled(&mut f, 3, t0 + Duration::from_secs(30));
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert_eq!(f.max_unpolled, Duration::from_secs(20));
    }

    #[test]
    fn a_partition_never_polled_again_fails() {
        let m = shared(Duration::from_secs(15));
        let mut f = StatsFindings::default();
        let t0 = Instant::now();
        m.check_polled(&mut f, 3, t0);
        m.check_polled(&mut f, 3, t0 + Duration::from_secs(59));
        assert!(f.violations.is_empty());
        m.check_polled(&mut f, 3, t0 + Duration::from_secs(61));
        let v = f.violations.get("unpolled").expect("a violation");
        assert!(v.starts_with("3 of 4 partitions polled for 61.0s"), "{v}");
    }

    #[test]
    fn unpolled_partitions_are_not_checked_unless_asked_for() {
        let m = shared(Duration::from_secs(15));
        m.expected_partitions.store(0, std::sync::atomic::Ordering::Relaxed);
        let mut f = StatsFindings::default();
        let t0 = Instant::now();
        m.check_polled(&mut f, 0, t0);
        m.check_polled(&mut f, 0, t0 + Duration::from_secs(600));
        assert!(f.violations.is_empty());
        assert_eq!(f.max_unpolled, Duration::ZERO);
    }
}
