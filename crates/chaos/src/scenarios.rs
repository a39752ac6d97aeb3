//! The reliability scenarios. Each runs on its own task hub,
//! audits the result and returns a [`ScenarioReport`] whose [`Display`](std::fmt::Display) is
//! the one summary line `cargo xtask stress` prints.

use crate::audit::{self, Audit, StatsMonitor};
use crate::entities::EntitySize;
use crate::ledger::Ledger;
use crate::logs;
use crate::procs::WorkerProcess;
use crate::setup::{ChaosEnv, Node, NodeSpec, chaos_settings, client_provider, fresh_hub};
use crate::storm::StormSize;
use crate::workload::{self, Planned};
use crate::{ChaosError, Result};
use durabletask_azure_storage::envelope::MessageData;
use durabletask_azure_storage::storage::fault::{FaultPlan, FaultStats, FaultyStorage, Reorder};
use durabletask_azure_storage::storage::{AzureStorage, QueueStore, StorageOp, TableStore};
use durabletask_azure_storage::{
    AzureStorageOrchestrationService, AzureStorageSettings, CrashHook, CrashPoint, StorageStack,
    TaskHubName,
};
use durabletask_core::{
    ClientError, Clock, EventKind, HistoryEvent, OrchestrationInstance, OrchestrationService,
    OrchestrationServiceClient, ProviderErrorKind, StartOptions, TaskHubClient, TaskMessage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How often the stats of in-process workers are sampled.
pub const STATS_PERIOD: Duration = Duration::from_millis(500);

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name printed in reports.
    pub name: &'static str,
    /// Instances per crash point.
    pub crash_n: usize,
    /// Instances of the process-kill scenario.
    pub kill_n: usize,
    /// Worker processes of the process-kill scenario.
    pub kill_workers: usize,
    /// SIGKILLs.
    pub kills: usize,
    /// Gap before each kill, seconds (uniform in the range).
    pub kill_gap: (u64, u64),
    /// Instances of the stall scenario.
    pub stall_n: usize,
    /// SIGSTOP/SIGCONT rounds.
    pub stalls: usize,
    /// Instances of the storage-fault scenario.
    pub fault_n: usize,
    /// Share of faulted calls split over errors, timeouts, ambiguous successes.
    pub fault_rate: f64,
    /// Instances of the reorder scenario.
    pub reorder_n: usize,
    /// Healthy instances beside the poison messages.
    pub poison_n: usize,
    /// Instances of the clock-jump scenario.
    pub clock_n: usize,
    /// Clock jumps (seconds, signed) applied to one worker, one case each.
    pub clock_jumps: &'static [i64],
    /// The start storm.
    pub storm: StormSize,
    /// The entity scenario.
    pub entities: EntitySize,
    /// Longest wait for a scenario's instances.
    pub timeout: Duration,
}

impl Profile {
    /// The CI profile.
    pub const LIGHT: Profile = Profile {
        name: "light",
        crash_n: 8,
        kill_n: 60,
        kill_workers: 2,
        kills: 3,
        kill_gap: (1, 2),
        stall_n: 20,
        stalls: 1,
        fault_n: 30,
        fault_rate: 0.10,
        reorder_n: 30,
        poison_n: 20,
        clock_n: 20,
        clock_jumps: &[45],
        storm: StormSize {
            normal: 40,
            dup_ids: 6,
            dup_starts: 8,
            recreate_ids: 3,
            recreate_tasks: 3,
            recreate_rounds: 3,
            loops: 3,
            loop_generations: 4,
            targets: 4,
            missing: 6,
        },
        entities: EntitySize {
            entities: 6,
            workers: 2,
            client_signals: 300,
            relay_share: 0.25,
            signallers: 16,
            rounds: 3,
            signals_per_round: 4,
            lockers: 4,
            kills: 4,
            kill_gap_ms: (2000, 4000),
            worker_fault_rate: 0.05,
            crash_rate: 0.004,
            client_fault_rate: 0.4,
        },
        timeout: Duration::from_secs(200),
    };

    /// The `cargo xtask stress` profile.
    pub const HEAVY: Profile = Profile {
        name: "heavy",
        crash_n: 20,
        kill_n: 200,
        kill_workers: 3,
        kills: 8,
        kill_gap: (1, 5),
        stall_n: 100,
        stalls: 3,
        fault_n: 200,
        fault_rate: 0.20,
        reorder_n: 100,
        poison_n: 50,
        clock_n: 100,
        clock_jumps: &[90, -90],
        storm: StormSize {
            normal: 200,
            dup_ids: 20,
            dup_starts: 16,
            recreate_ids: 8,
            recreate_tasks: 4,
            recreate_rounds: 6,
            loops: 10,
            loop_generations: 15,
            targets: 10,
            missing: 30,
        },
        entities: EntitySize {
            entities: 12,
            workers: 3,
            client_signals: 1500,
            relay_share: 0.25,
            signallers: 60,
            rounds: 4,
            signals_per_round: 5,
            lockers: 16,
            kills: 10,
            kill_gap_ms: (1500, 5000),
            worker_fault_rate: 0.08,
            crash_rate: 0.004,
            client_fault_rate: 0.4,
        },
        timeout: Duration::from_secs(600),
    };
}

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// RNG seed.
    pub seed: u64,
    /// Instances (children included).
    pub n: usize,
    /// Faults injected (kills, crashes, stalls, poison messages, ...).
    pub k: u64,
    /// The audit (absent for scenarios that check something else).
    pub audit: Option<Audit>,
    /// Large-message blobs left after purging every instance.
    pub orphan_blobs: Option<usize>,
    /// Counted log events.
    pub events: BTreeMap<String, u64>,
    /// Storage faults injected.
    pub faults: Option<FaultStats>,
    /// Scenario-specific figures.
    pub extra: Vec<(String, String)>,
    /// Scenario-specific failures.
    pub failures: Vec<String>,
    /// Wall time.
    pub wall: Duration,
}

impl ScenarioReport {
    pub(crate) fn new(name: impl Into<String>, seed: u64) -> Self {
        Self {
            name: name.into(),
            seed,
            n: 0,
            k: 0,
            audit: None,
            orphan_blobs: None,
            events: BTreeMap::new(),
            faults: None,
            extra: Vec::new(),
            failures: Vec::new(),
            wall: Duration::ZERO,
        }
    }

    /// True when the audit is clean, no blob is orphaned and no scenario check failed.
    pub fn passed(&self) -> bool {
        self.audit.as_ref().is_none_or(Audit::ok)
            && self.orphan_blobs.unwrap_or(0) == 0
            && self.failures.is_empty()
    }

    /// Everything that went wrong, for an assertion message.
    pub fn explain(&self) -> String {
        let mut s = self.to_string();
        if let Some(a) = &self.audit {
            for p in &a.problems {
                s.push_str("\n  audit: ");
                s.push_str(p);
            }
        }
        for f in &self.failures {
            s.push_str("\n  failure: ");
            s.push_str(f);
        }
        s
    }

    pub(crate) fn extra(&mut self, k: &str, v: impl fmt::Display) {
        self.extra.push((k.to_owned(), v.to_string()));
    }

    pub(crate) fn fail(&mut self, f: impl Into<String>) {
        self.failures.push(f.into());
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} seed={} N={} K={}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.name,
            self.seed,
            self.n,
            self.k
        )?;
        if let Some(a) = &self.audit {
            write!(
                f,
                " completed={}/{} lost={} stuck={} wrong_output={} history_mismatch={} \
                 dup_activity_exec={} uncommitted_activity_exec={} missing_activity_exec={} \
                 absorbed_dup_msgs={} p50={:.1}s p99={:.1}s",
                a.completed,
                a.expected,
                a.lost,
                a.stuck,
                a.wrong_output,
                a.history_mismatch,
                a.dup_activity_exec,
                a.uncommitted_activity_exec,
                a.missing_activity_exec,
                a.duplicate_completions_in_history,
                a.latency_p50,
                a.latency_p99
            )?;
        }
        if let Some(o) = self.orphan_blobs {
            write!(f, " orphan_blobs={o}")?;
        }
        let sb = self.events.get("SplitBrainDetected").copied().unwrap_or(0);
        write!(f, " split_brain_aborts={sb}")?;
        for (k, v) in &self.events {
            if k != "SplitBrainDetected" {
                write!(f, " log.{k}={v}")?;
            }
        }
        if let Some(s) = &self.faults {
            write!(f, " faults[{s}]")?;
        }
        for (k, v) in &self.extra {
            write!(f, " {k}={v}")?;
        }
        write!(f, " wall={:.1}s", self.wall.as_secs_f64())
    }
}

/// A task hub under test: its name, an un-faulted client provider, the ledger.
#[derive(Debug)]
pub struct TestHub {
    /// Environment.
    pub env: ChaosEnv,
    /// Hub name.
    pub hub: TaskHubName,
    /// Client-side provider (never started: no partitions, no dispatchers).
    pub admin: AzureStorageOrchestrationService,
    /// Un-faulted storage.
    pub storage: Arc<AzureStorage>,
    /// The activity ledger.
    pub ledger: Arc<Ledger>,
    /// Samples the stats of every in-process worker [`node`](Self::node) starts.
    pub monitor: Arc<StatsMonitor>,
}

impl TestHub {
    /// Creates a fresh hub (resources and ledger table).
    ///
    /// # Errors
    /// When storage fails.
    pub async fn create(env: &ChaosEnv, test: &str) -> Result<Self> {
        let hub = fresh_hub(test);
        let admin = client_provider(env, &hub)?;
        admin.create_if_not_exists().await?;
        let storage = env.storage();
        let ledger = Arc::new(Ledger::new(storage.clone(), &hub, "harness"));
        ledger.create().await?;
        let lease = admin.azure_settings().lease_interval;
        let monitor = StatsMonitor::start(lease, STATS_PERIOD);
        Ok(Self { env: env.clone(), hub, admin, storage, ledger, monitor })
    }

    /// A ledger handle for a worker named `worker`.
    pub fn ledger_for(&self, worker: &str) -> Arc<Ledger> {
        Arc::new(Ledger::new(self.storage.clone(), &self.hub, worker))
    }

    /// Settings for a worker of this hub.
    pub fn settings(&self, worker: &str) -> AzureStorageSettings {
        chaos_settings(&self.hub, worker)
    }

    /// The plain storage stack of `settings`.
    pub fn stack(&self, settings: &AzureStorageSettings) -> StorageStack {
        StorageStack::azure(self.env.account(), settings)
    }

    /// An in-process worker.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn node(&self, spec: NodeSpec) -> Result<Node> {
        let ledger = self.ledger_for(&spec.settings.worker_id);
        Ok(Node::start(&self.env, spec, &ledger).await?.watched_by(&self.monitor))
    }

    /// The stats monitor's findings into `report`: figures as extras, every breach a failure.
    pub fn stats_into(&self, report: &mut ScenarioReport) {
        self.monitor.sample_now();
        let f = self.monitor.findings();
        report.extra("stats_samples", f.samples);
        report.extra("max_held", f.max_held);
        report.extra("max_leaked", f.max_leaked);
        report.extra("max_recv_age", format!("{:.1}s", f.max_receive_age.as_secs_f64()));
        report.extra("max_paused", format!("{:.1}s", f.max_paused.as_secs_f64()));
        for v in f.violations.into_values() {
            report.fail(format!("stats: {v}"));
        }
    }

    /// A client over the admin provider.
    pub fn client(&self) -> TaskHubClient {
        TaskHubClient::new(Arc::new(self.admin.clone()))
            .with_max_poll_interval(Duration::from_millis(250))
    }

    /// Audits `planned` into `report`, then purges them and counts orphaned blobs.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn finish(
        &self,
        report: &mut ScenarioReport,
        planned: &[Planned],
        timeout: Duration,
    ) -> Result<()> {
        self.audit_into(report, planned, timeout).await?;
        self.purge_into(report, planned).await
    }

    /// Audits `planned` into `report`.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn audit_into(
        &self,
        report: &mut ScenarioReport,
        planned: &[Planned],
        timeout: Duration,
    ) -> Result<()> {
        report.n = planned.len();
        report.audit = Some(audit::audit(&self.admin, planned, &self.ledger, timeout).await?);
        Ok(())
    }

    /// When the audit is clean: purges `planned` and counts the large-message blobs left (I6).
    ///
    /// # Errors
    /// When storage fails.
    pub async fn purge_into(&self, report: &mut ScenarioReport, planned: &[Planned]) -> Result<()> {
        if !report.audit.as_ref().is_some_and(Audit::ok) {
            return Ok(());
        }
        let left = audit::purge_and_count_orphan_blobs(&self.admin, self.storage.as_ref(), planned)
            .await?;
        report.orphan_blobs = Some(left.len());
        if !left.is_empty() {
            report.fail(format!("orphaned blobs after purge: {left:?}"));
        }
        Ok(())
    }

    /// Deletes the hub and its ledger (and stops the stats monitor).
    pub async fn delete(&self) {
        self.monitor.stop();
        let _ = self.admin.delete().await;
        let _ = self.ledger.delete().await;
    }
}

pub(crate) fn merge_events(report: &mut ScenarioReport, counts: BTreeMap<&'static str, u64>) {
    for (k, v) in counts {
        *report.events.entry(k.to_owned()).or_insert(0) += v;
    }
}

pub(crate) fn count_logs(report: &mut ScenarioReport, text: &str) {
    for name in logs::WATCHED {
        let n = logs::count_in_text(text, name);
        if n > 0 {
            *report.events.entry((*name).to_owned()).or_insert(0) += n;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Crash points

/// Crashes at `point` the first time each instance reaches it.
#[derive(Debug)]
pub struct FirstHitCrash {
    point: CrashPoint,
    seen: Mutex<HashMap<String, u32>>,
    crashes: AtomicU64,
}

impl FirstHitCrash {
    /// A hook for `point`.
    pub fn new(point: CrashPoint) -> Self {
        Self { point, seen: Mutex::new(HashMap::new()), crashes: AtomicU64::new(0) }
    }

    /// Crashes so far.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// Instances that crashed.
    pub fn instances(&self) -> usize {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

impl CrashHook for FirstHitCrash {
    fn crash_at(&self, point: CrashPoint, instance_id: &str) -> bool {
        if point != self.point {
            return false;
        }
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hits = seen.entry(instance_id.to_owned()).or_insert(0);
        *hits += 1;
        if *hits == 1 {
            self.crashes.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Every crash point the provider offers.
pub const CRASH_POINTS: [CrashPoint; 5] = [
    CrashPoint::AfterSend,
    CrashPoint::AfterHistory,
    CrashPoint::AfterInstances,
    CrashPoint::BeforeDelete,
    CrashPoint::ActivityAfterSend,
];

/// Worker A crashes at `point` the first time each instance gets there (the work item is left
/// exactly as a dead process leaves it); once every instance has crashed (or 30 s passed) A is
/// killed without releasing its leases, and a fresh worker B takes over and must finish
/// everything with the right outputs.
///
/// # Errors
/// When the harness fails (findings are in the report).
pub async fn crash_point(env: &ChaosEnv, point: CrashPoint, n: usize) -> Result<ScenarioReport> {
    let started = Instant::now();
    let before = logs::snapshot();
    let mut report = ScenarioReport::new(format!("crash-{point:?}"), 0);
    let hub = TestHub::create(env, &format!("crash{point:?}")).await?;
    let hook = Arc::new(FirstHitCrash::new(point));
    let mut spec = NodeSpec::new(hub.settings("crash-a"));
    spec.crash_hook = Some(hook.clone());
    let a = hub.node(spec).await?;
    let planned = workload::plan("cp", n);
    workload::start_all(&hub.client(), &planned).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every orchestration work item passes the checkpoint points; only instances that run
    // activities pass the activity point.
    let reach = if point == CrashPoint::ActivityAfterSend {
        planned.iter().filter(|p| p.name != workload::PARENT).count()
    } else {
        planned.len()
    };
    while hook.instances() < reach && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.k = hook.crashes();
    a.kill().await;
    let b = hub.node(NodeSpec::new(hub.settings("crash-b"))).await?;
    hub.finish(&mut report, &planned, Duration::from_secs(120)).await?;
    if report.k == 0 {
        report.fail("the crash point was never reached");
    }
    b.stop(Duration::from_secs(10)).await?;
    hub.stats_into(&mut report);
    merge_events(&mut report, logs::since(&before));
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Worker processes: SIGKILL, SIGSTOP/SIGCONT

pub(crate) fn log_dir(hub: &TaskHubName) -> PathBuf {
    std::env::temp_dir().join(format!("durabletask-chaos-{}", hub.as_str()))
}

/// `workers` `chaos_worker` processes run `W(n)`; `kills` times, after a random gap, one random
/// worker is SIGKILLed and restarted a second later under the same worker id. Nothing may be
/// lost, stuck or wrong.
///
/// # Errors
/// When the harness fails.
pub async fn process_kills(
    env: &ChaosEnv,
    worker_bin: &Path,
    profile: &Profile,
    seed: u64,
) -> Result<ScenarioReport> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("kill-workers", seed);
    let hub = TestHub::create(env, "killworkers").await?;
    let dir = log_dir(&hub.hub);
    let ids: Vec<String> = (0..profile.kill_workers).map(|i| format!("w{i}")).collect();
    let mut procs = Vec::new();
    for id in &ids {
        procs.push(Some(WorkerProcess::spawn(worker_bin, env, hub.hub.as_str(), id, &dir)?));
    }
    let planned = workload::plan("kw", profile.kill_n);
    // Start the workload in waves, one before each kill, so every kill lands while work is in
    // flight (started all at once, it can finish before the first kill).
    let wave = planned.len().div_ceil(profile.kills + 1).max(1);
    let mut waves = planned.chunks(wave);
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..profile.kills {
        if let Some(w) = waves.next() {
            workload::start_all(&hub.client(), w).await?;
        }
        let gap = rng.gen_range(profile.kill_gap.0..=profile.kill_gap.1);
        tokio::time::sleep(Duration::from_millis(gap * 1000 / 2)).await;
        let slot = rng.gen_range(0..procs.len());
        if let Some(p) = procs[slot].take() {
            p.kill()?;
            report.k += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        procs[slot] =
            Some(WorkerProcess::spawn(worker_bin, env, hub.hub.as_str(), &ids[slot], &dir)?);
    }
    for w in waves {
        workload::start_all(&hub.client(), w).await?;
    }
    hub.finish(&mut report, &planned, profile.timeout).await?;
    for p in procs.iter_mut().flatten() {
        if !p.is_running() {
            report.fail(format!("worker {} exited on its own", p.worker_id));
        }
    }
    let mut text = String::new();
    for p in procs.into_iter().flatten() {
        text.push_str(&p.log());
        p.kill()?;
    }
    count_logs(&mut report, &text);
    report.extra("workers", profile.kill_workers);
    report.extra("residual_msgs", audit::queue_residue(&hub.admin).await.unwrap_or(0));
    hub.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
    report.wall = started.elapsed();
    Ok(report)
}

/// Two `chaos_worker` processes run `W(n)`; the one owning the most partitions is frozen with
/// SIGSTOP for longer than the lease, so the other takes its partitions over, then thawed with
/// SIGCONT: the zombie owner must drop its partitions and any checkpoint it still attempts must
/// be refused (split-brain abort), with nothing lost or completed twice.
///
/// # Errors
/// When the harness fails.
pub async fn stalled_worker(
    env: &ChaosEnv,
    worker_bin: &Path,
    profile: &Profile,
    seed: u64,
) -> Result<ScenarioReport> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("stall-sigstop", seed);
    let hub = TestHub::create(env, "stall").await?;
    let dir = log_dir(&hub.hub);
    let a = WorkerProcess::spawn(worker_bin, env, hub.hub.as_str(), "stall-a", &dir)?;
    let b = WorkerProcess::spawn(worker_bin, env, hub.hub.as_str(), "stall-b", &dir)?;
    let planned = workload::plan("st", profile.stall_n);
    // Let both workers settle their partitions first, then load them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    workload::start_all(&hub.client(), &planned).await?;
    let lease = hub.settings("x").lease_interval;
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..profile.stalls {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
        let victim = if round % 2 == 0 { &a } else { &b };
        victim.pause()?;
        report.k += 1;
        tokio::time::sleep(lease + Duration::from_secs(8)).await;
        victim.resume()?;
    }
    hub.finish(&mut report, &planned, profile.timeout).await?;
    let text = format!("{}{}", a.log(), b.log());
    count_logs(&mut report, &text);
    report.extra("stall_secs", (lease + Duration::from_secs(8)).as_secs());
    report.extra(
        "partition_losses",
        logs::count_in_text(&text, "control queue lost") + logs::count_in_text(&text, "draining"),
    );
    a.kill()?;
    b.kill()?;
    hub.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
    report.wall = started.elapsed();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Storage faults and reordering (in process)

async fn run_faulty(
    env: &ChaosEnv,
    name: &str,
    n: usize,
    plans: [FaultPlan; 2],
    timeout: Duration,
) -> Result<ScenarioReport> {
    let started = Instant::now();
    let before = logs::snapshot();
    let mut report = ScenarioReport::new(name, plans[0].seed);
    let hub = TestHub::create(env, name).await?;
    let mut nodes = Vec::new();
    let mut faulty = Vec::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let settings = hub.settings(&format!("{name}-{i}"));
        let base = hub.stack(&settings);
        let f = FaultyStorage::over(&base, plan);
        // Hub resources exist already; faults from the first call on.
        let mut spec = NodeSpec::new(settings);
        spec.stack = Some(f.stack(&base));
        faulty.push(f);
        nodes.push(start_node_retrying(&hub, spec).await?);
    }
    let planned = workload::plan(&name.replace('-', ""), n);
    workload::start_all(&hub.client(), &planned).await?;
    hub.finish(&mut report, &planned, timeout).await?;
    let mut total = FaultStats::default();
    for f in &faulty {
        f.set_enabled(false);
        let s = f.stats();
        total.calls += s.calls;
        total.errors += s.errors;
        total.timeouts += s.timeouts;
        total.committed_timeouts += s.committed_timeouts;
        total.duplicated_puts += s.duplicated_puts;
        total.reordered_batches += s.reordered_batches;
        total.held_back += s.held_back;
        total.delayed += s.delayed;
    }
    report.k = total.injected_failures() + total.duplicated_puts + total.held_back;
    report.faults = Some(total);
    for node in nodes {
        node.stop(Duration::from_secs(10)).await?;
    }
    hub.stats_into(&mut report);
    merge_events(&mut report, logs::since(&before));
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

/// Starting a worker is itself subject to faults (partition-manager setup): retry it.
async fn start_node_retrying(hub: &TestHub, spec: NodeSpec) -> Result<Node> {
    let mut attempt = 0;
    loop {
        match hub.node(spec.clone()).await {
            Ok(n) => return Ok(n),
            Err(e) if attempt < 20 => {
                tracing::warn!(error = %e, "chaos: worker start failed under faults; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Two in-process workers whose every storage call may fail (503/500), time out before being
/// sent, or commit and then time out, at `profile.fault_rate` in total.
///
/// Blob downloads are left out when `include_blob_get` is false: a transient failure while
/// downloading a large message's blob counts as "undecodable" in the provider and, on a message
/// already delivered 4 times, quarantines a valid message (provider bug, see
/// [`blob_outage`]).
///
/// # Errors
/// When the harness fails.
pub async fn storage_faults(
    env: &ChaosEnv,
    profile: &Profile,
    seed: u64,
    include_blob_get: bool,
) -> Result<ScenarioReport> {
    let r = profile.fault_rate;
    let ops = (!include_blob_get).then(|| {
        StorageOp::ALL
            .into_iter()
            .filter(|op| {
                !matches!(
                    op,
                    StorageOp::BlobGet
                        | StorageOp::QueueAdmin
                        | StorageOp::TableAdmin
                        | StorageOp::BlobAdmin
                )
            })
            .collect::<Vec<_>>()
    });
    let plan = |seed| FaultPlan {
        seed,
        error_rate: r * 0.5,
        timeout_rate: r * 0.2,
        committed_timeout_rate: r * 0.3,
        timeout_delay: Duration::from_millis(300),
        latency: Some((Duration::ZERO, Duration::from_millis(20))),
        ops: ops.clone(),
        ..FaultPlan::default()
    };
    let name = if include_blob_get { "storage-faults" } else { "storage-faults-noblobget" };
    run_faulty(env, name, profile.fault_n, [plan(seed), plan(seed + 1)], profile.timeout).await
}

/// Blob downloads fail for 40 s (a storage hiccup), then work again. Instances with large
/// payloads must still complete: a valid message whose blob could not be downloaded must not be
/// quarantined as "undecodable". Fails today: `control::decode` maps a transient `get blob`
/// error to `undecodable`, which quarantines at dequeue count 5 (reached after ~30 s of
/// back-off), so the orchestration waits forever for the quarantined message.
///
/// # Errors
/// When the harness fails.
pub async fn blob_outage(env: &ChaosEnv) -> Result<ScenarioReport> {
    let started = Instant::now();
    let before = logs::snapshot();
    let mut report = ScenarioReport::new("blob-outage", 0);
    let hub = TestHub::create(env, "blob-outage").await?;
    let settings = hub.settings("blob-outage");
    let base = hub.stack(&settings);
    let f = FaultyStorage::over(
        &base,
        FaultPlan { error_rate: 1.0, ops: Some(vec![StorageOp::BlobGet]), ..FaultPlan::default() },
    );
    let mut spec = NodeSpec::new(settings);
    spec.stack = Some(f.stack(&base));
    let node = hub.node(spec).await?;
    // The large-payload instances of W(20) (one chain, one fan-out).
    let planned: Vec<Planned> =
        workload::plan("bo", 20).into_iter().filter(|p| p.input.len() > 1024).collect();
    workload::start_all(&hub.client(), &planned).await?;
    tokio::time::sleep(Duration::from_secs(40)).await;
    f.set_enabled(false);
    report.k = f.stats().errors;
    hub.finish(&mut report, &planned, Duration::from_secs(90)).await?;
    report.extra("quarantined", hub.admin.hub_info().await?.poison_queue_length);
    node.stop(Duration::from_secs(10)).await?;
    hub.stats_into(&mut report);
    merge_events(&mut report, logs::since(&before));
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

/// Two in-process workers whose received batches are shuffled, with 10% of received messages
/// held back for 1-3 s and 5% of sent messages put twice (redelivery).
///
/// # Errors
/// When the harness fails.
pub async fn reorder_and_redeliver(
    env: &ChaosEnv,
    profile: &Profile,
    seed: u64,
) -> Result<ScenarioReport> {
    let plan = |seed| FaultPlan {
        seed,
        reorder: Reorder::Shuffle,
        hold_back_rate: 0.10,
        hold_back_max: Duration::from_secs(3),
        duplicate_put_rate: 0.05,
        ops: Some(vec![StorageOp::QueueGet, StorageOp::QueuePut]),
        ..FaultPlan::default()
    };
    run_faulty(env, "reorder", profile.reorder_n, [plan(seed), plan(seed + 1)], profile.timeout)
        .await
}

// ---------------------------------------------------------------------------------------------
// Poison and foreign messages

fn envelope(instance: &str, kind: EventKind) -> MessageData {
    MessageData::new(
        TaskMessage::new(
            OrchestrationInstance::new(instance),
            HistoryEvent::new(-1, OffsetDateTime::now_utc(), kind),
        ),
        1,
    )
}

fn encoded(data: &MessageData) -> Result<String> {
    let bytes = data.to_bytes().map_err(|e| ChaosError::Harness(e.to_string()))?;
    Ok(MessageData::encode_text(&bytes))
}

/// What the provider does with a junk message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Undecodable: quarantined in `{hub}-poison` after 5 deliveries (in either queue).
    Quarantined,
    /// Valid, for an instance that does not exist: discarded from a control queue (quarantined
    /// from the work-item queue, where it is foreign).
    Discarded,
    /// Its large-message blob is gone (a consumed duplicate or a purged instance): deleted at
    /// its first delivery from either queue.
    Deleted,
}

/// Messages nobody can decode, valid ones for instances that do not exist, and one whose blob is
/// gone, with what the provider does with each.
fn junk_messages() -> Result<Vec<(String, Fate)>> {
    let real = encoded(&envelope(
        "ghost",
        EventKind::TaskCompleted { task_scheduled_id: 0, result: Some("1".into()) },
    ))?;
    let truncated = real[..real.len() / 2].to_owned();
    let missing_blob = encoded(&MessageData::wrapper(
        &envelope("ghost", EventKind::EventRaised { name: "e".into(), input: None }),
        "ghost/message-00000000000000000000000000000000-EventRaised.json.gz".into(),
    ))?;
    let foreign_url = encoded(&MessageData::wrapper(
        &envelope("ghost", EventKind::EventRaised { name: "e".into(), input: None }),
        "http://127.0.0.1:9/x".into(),
    ))?;
    let traversal = encoded(&MessageData::wrapper(
        &envelope("ghost", EventKind::EventRaised { name: "e".into(), input: None }),
        "../../other/x".into(),
    ))?;
    Ok(vec![
        ("not base64 !!".into(), Fate::Quarantined),
        ("AAAAAAAA".into(), Fate::Quarantined),
        ("{ garbage".into(), Fate::Quarantined),
        ("{\"$type\":\"Some.Other.Framework\",\"x\":1}".into(), Fate::Quarantined),
        ("[".repeat(60 * 1024), Fate::Quarantined),
        (truncated, Fate::Quarantined),
        (missing_blob, Fate::Deleted),
        (foreign_url, Fate::Quarantined),
        (traversal, Fate::Quarantined),
        (real, Fate::Discarded),
        (
            encoded(&envelope("ghost-2", EventKind::ExecutionTerminated { input: None }))?,
            Fate::Discarded,
        ),
    ])
}

/// Malformed, truncated and foreign messages are put straight into a control queue and the
/// work-item queue before and while a worker runs `W(n)`: the worker keeps running, the healthy
/// instances complete, and every undecodable message ends up in `{hub}-poison`.
///
/// # Errors
/// When the harness fails.
pub async fn poison_messages(env: &ChaosEnv, profile: &Profile) -> Result<ScenarioReport> {
    let started = Instant::now();
    let before = logs::snapshot();
    let mut report = ScenarioReport::new("poison-messages", 0);
    let hub = TestHub::create(env, "poison").await?;
    let names = hub.admin.resource_names().clone();
    let junk = junk_messages()?;
    let mut expected_poison = 0u64;
    for (text, fate) in &junk {
        for q in [&names.control_queues[0], &names.work_item_queue] {
            hub.storage.put_message(q, text, Duration::ZERO).await?;
            report.k += 1;
            // In the work-item queue even a valid control message is foreign.
            let quarantined = match fate {
                Fate::Quarantined => true,
                Fate::Discarded => q == &names.work_item_queue,
                Fate::Deleted => false,
            };
            if quarantined {
                expected_poison += 1;
            }
        }
    }
    let node = hub.node(NodeSpec::new(hub.settings("poison-w"))).await?;
    let planned = workload::plan("pm", profile.poison_n);
    workload::start_all(&hub.client(), &planned).await?;
    hub.finish(&mut report, &planned, profile.timeout).await?;
    // Quarantine needs 5 dequeues with back-off 2+4+8+16 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quarantined = 0;
    while Instant::now() < deadline {
        quarantined = hub.admin.hub_info().await?.poison_queue_length;
        if quarantined >= expected_poison {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.extra("quarantined", format!("{quarantined}/{expected_poison}"));
    if quarantined != expected_poison {
        report.fail(format!(
            "{quarantined} messages quarantined in {}, expected {expected_poison}",
            names.poison_queue
        ));
    }
    // The worker still works after all of it.
    let after = workload::plan("pm-after", 4);
    workload::start_all(&hub.client(), &after).await?;
    let late = audit::audit(&hub.admin, &after, &hub.ledger, Duration::from_secs(60)).await?;
    report.extra("completed_after_quarantine", format!("{}/{}", late.completed, late.expected));
    if !late.ok() {
        report.fail(format!("instances started after the poison failed: {:?}", late.problems));
    }
    report.extra("residual_msgs", audit::queue_residue(&hub.admin).await.unwrap_or(0));
    node.stop(Duration::from_secs(10)).await?;
    hub.stats_into(&mut report);
    merge_events(&mut report, logs::since(&before));
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// Illegal instance ids, illegal hub names, out-of-range settings and unserializable input are
/// refused with typed errors before any storage call (proved with a storage stack that fails
/// every call and counts them) and nothing is written (Instances and queues checked on a real
/// hub).
///
/// # Errors
/// When the harness fails.
pub async fn bad_input(env: &ChaosEnv) -> Result<ScenarioReport> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("bad-input", 0);
    let hub = TestHub::create(env, "badinput").await?;
    let settings = hub.settings("bad-input");
    let base = hub.stack(&settings);
    let fail_all = FaultyStorage::over(&base, FaultPlan::fail_everything());
    let svc = AzureStorageOrchestrationService::with_storage(settings, fail_all.stack(&base))?;
    let guarded = TaskHubClient::new(Arc::new(svc.clone()));
    let real = hub.client();
    let long = "x".repeat(300);
    // `/ \\ # ?` are valid (escaped in table keys, as DTF does); U+2028/U+2029 are refused.
    let bad_ids: Vec<&str> = vec![
        "line\u{2028}sep",
        "para\u{2029}sep",
        "tab\there",
        "nul\0",
        "ctl\u{1f}",
        "del\u{7f}",
        "",
        &long,
    ];
    for id in &bad_ids {
        for client in [&guarded, &real] {
            match client
                .schedule_new_orchestration(
                    workload::CHAIN,
                    &"x",
                    StartOptions::with_instance_id(*id),
                )
                .await
            {
                Err(ClientError::InvalidInstanceId(_)) => {}
                other => {
                    report.fail(format!("start {id:?}: expected InvalidInstanceId, got {other:?}"))
                }
            }
            match client.raise_event(id, "e", &1).await {
                Err(ClientError::InvalidInstanceId(_)) => {}
                other => {
                    report.fail(format!("raise {id:?}: expected InvalidInstanceId, got {other:?}"))
                }
            }
        }
        let msg = TaskMessage::new(
            OrchestrationInstance::new(*id),
            HistoryEvent::new(
                -1,
                OffsetDateTime::now_utc(),
                EventKind::EventRaised { name: "e".into(), input: None },
            ),
        );
        match svc.send_message(msg).await {
            Err(e) if e.kind() == ProviderErrorKind::InvalidInput => {}
            other => {
                report.fail(format!("provider send {id:?}: expected InvalidInput, got {other:?}"))
            }
        }
        report.k += 3;
    }
    // Input that cannot be serialized: a map with non-string keys.
    let mut unserializable = BTreeMap::new();
    unserializable.insert((1, 2), "v");
    match guarded
        .schedule_new_orchestration(
            workload::CHAIN,
            &unserializable,
            StartOptions::with_instance_id("ok-id"),
        )
        .await
    {
        Err(ClientError::Serialization(_)) => {}
        other => {
            report.fail(format!("unserializable input: expected Serialization, got {other:?}"))
        }
    }
    report.k += 1;
    for name in ["ab", "1abc", "hub-x", "Hub_X", &"h".repeat(46)] {
        if TaskHubName::new(name).is_ok() {
            report.fail(format!("hub name {name:?} accepted"));
        }
        report.k += 1;
    }
    for count in [0u8, 17] {
        let mut s = hub.settings("bad-input");
        s.partition_count = count;
        if AzureStorageOrchestrationService::with_storage(s, hub.stack(&hub.settings("x"))).is_ok()
        {
            report.fail(format!("partition_count {count} accepted"));
        }
        report.k += 1;
    }
    let calls = fail_all.stats().calls;
    report.extra("storage_calls_for_bad_input", calls);
    if calls != 0 {
        report.fail(format!("{calls} storage calls were made for rejected input"));
    }
    let rows = hub
        .storage
        .query(&hub.admin.resource_names().instances_table, None, None, None, None)
        .await?
        .entities
        .len();
    let residue = audit::queue_residue(&hub.admin).await?;
    report.extra("rows_written", rows);
    report.extra("messages_written", residue);
    if rows != 0 || residue != 0 {
        report.fail(format!("bad input wrote {rows} rows and {residue} messages"));
    }
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

/// The largest input the provider should accept (probe for a payload limit): a start with a
/// `mib` MiB input through a storage stack that fails every call. A typed `InvalidInput` with
/// no storage call means the limit is enforced client-side (G10).
///
/// # Errors
/// When the harness fails.
pub async fn oversized_input(env: &ChaosEnv, mib: usize) -> Result<ScenarioReport> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("oversized-input", 0);
    let mut settings = chaos_settings(&fresh_hub("oversized"), "oversized");
    // The limit under test: anything over `max_message_bytes` is refused before storage.
    settings.max_message_bytes = 4 * 1024 * 1024;
    let base = StorageStack::azure(env.account(), &settings);
    let fail_all = FaultyStorage::over(&base, FaultPlan::fail_everything());
    let svc = AzureStorageOrchestrationService::with_storage(settings, fail_all.stack(&base))?;
    let client = TaskHubClient::new(Arc::new(svc));
    let input = "x".repeat(mib * 1024 * 1024);
    let r = client
        .schedule_new_orchestration(workload::CHAIN, &input, StartOptions::with_instance_id("big"))
        .await;
    report.k = 1;
    let typed = match &r {
        Err(ClientError::Provider(e)) => e.kind() == ProviderErrorKind::InvalidInput,
        Err(ClientError::Serialization(_) | ClientError::InvalidInstanceId(_)) => false,
        _ => false,
    };
    let calls = fail_all.stats().calls;
    report.extra("input_mib", mib);
    report.extra("storage_calls", calls);
    if !typed || calls != 0 {
        report.fail(format!(
            "a {mib} MiB input was not refused before storage: result {:?}, {calls} storage calls",
            r.map(|i| i.instance_id).map_err(|e| e.to_string())
        ));
    }
    report.wall = started.elapsed();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Clock jump

/// A clock that is the system clock plus an offset that can jump at any time.
#[derive(Debug, Default)]
pub struct JumpClock {
    offset_ms: AtomicI64,
}

impl JumpClock {
    /// Sets the offset.
    pub fn jump_to(&self, offset: time::Duration) {
        let ms = i64::try_from(offset.whole_milliseconds()).unwrap_or(i64::MAX);
        self.offset_ms.store(ms, Ordering::Release);
    }
}

impl Clock for JumpClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
            + time::Duration::milliseconds(self.offset_ms.load(Ordering::Acquire))
    }
}

/// Two in-process workers; shortly after the workload starts, worker B's clock (provider and
/// dispatchers) jumps by `jump_secs`. Nothing may be lost; timestamp regressions in history
/// (`OrchestratorStarted` going backwards, I7) are reported.
///
/// # Errors
/// When the harness fails.
pub async fn clock_jump(env: &ChaosEnv, n: usize, jump_secs: i64) -> Result<ScenarioReport> {
    let started = Instant::now();
    let before = logs::snapshot();
    let mut report = ScenarioReport::new(format!("clock-jump{jump_secs:+}s"), 0);
    let hub = TestHub::create(env, "clockjump").await?;
    let a = hub.node(NodeSpec::new(hub.settings("clock-a"))).await?;
    let clock = Arc::new(JumpClock::default());
    let mut spec = NodeSpec::new(hub.settings("clock-b"));
    spec.clock = clock.clone();
    let b = hub.node(spec).await?;
    let planned = workload::plan("cj", n);
    workload::start_all(&hub.client(), &planned).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    clock.jump_to(time::Duration::seconds(jump_secs));
    report.k = 1;
    hub.audit_into(&mut report, &planned, Duration::from_secs(180)).await?;
    let mut regressions = 0;
    for p in &planned {
        if let Ok(h) = hub.admin.get_history(&p.instance_id, None).await {
            let ts: Vec<OffsetDateTime> = h
                .iter()
                .filter(|e| matches!(e.kind, EventKind::OrchestratorStarted))
                .map(|e| e.timestamp)
                .collect();
            regressions += ts.windows(2).filter(|w| w[1] < w[0]).count();
        }
    }
    report.extra("orchestrator_time_regressions", regressions);
    hub.purge_into(&mut report, &planned).await?;
    a.stop(Duration::from_secs(10)).await?;
    b.stop(Duration::from_secs(10)).await?;
    hub.stats_into(&mut report);
    merge_events(&mut report, logs::since(&before));
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

/// Every scenario of `profile`, in order (used by `chaos_stress`).
///
/// # Errors
/// When the harness fails.
pub async fn run_all(
    env: &ChaosEnv,
    worker_bin: &Path,
    profile: &Profile,
    seed: u64,
    only: Option<&str>,
    mut each: impl FnMut(&ScenarioReport),
) -> Result<Vec<ScenarioReport>> {
    let mut out = Vec::new();
    let wanted = |name: &str| only.is_none_or(|o| o.split(',').any(|p| name.starts_with(p)));
    let mut push = |r: ScenarioReport| {
        each(&r);
        out.push(r);
    };
    for point in CRASH_POINTS {
        if wanted("crash") {
            push(crash_point(env, point, profile.crash_n).await?);
        }
    }
    if wanted("kill-workers") {
        push(process_kills(env, worker_bin, profile, seed).await?);
    }
    if wanted("stall-sigstop") {
        push(stalled_worker(env, worker_bin, profile, seed).await?);
    }
    if wanted("storage-faults") {
        push(storage_faults(env, profile, seed, true).await?);
    }
    if wanted("blob-outage") {
        push(blob_outage(env).await?);
    }
    if wanted("reorder") {
        push(reorder_and_redeliver(env, profile, seed).await?);
    }
    if wanted("poison-messages") {
        push(poison_messages(env, profile).await?);
    }
    if wanted("entity-kill") {
        push(crate::entities::entity_kill(env, worker_bin, profile, seed).await?);
    }
    if wanted("start-storm") {
        push(crate::storm::start_storm(env, profile, seed).await?);
    }
    if wanted("bad-input") {
        push(bad_input(env).await?);
    }
    if wanted("oversized-input") {
        push(oversized_input(env, 10).await?);
    }
    for jump in profile.clock_jumps {
        if wanted("clock-jump") {
            push(clock_jump(env, profile.clock_n, *jump).await?);
        }
    }
    Ok(out)
}
