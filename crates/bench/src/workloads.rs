//! The orchestrations, activities and entities of the benchmark, and the workloads that drive
//! them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use durabletask_azure_storage::storage::{StorageCounters, StorageOpCounts};
use durabletask_core::{
    ActivityContext, ClientError, Dispatchers, EntityContext, EntityError, EntityId,
    OrchestrationContext, OrchestrationServiceClient, OrchestrationState, OrchestrationStatus,
    Registry, RegistryBuilder, TaskHubClient,
};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backend::{Backend, BenchHub};
use crate::report::{
    BenchReport, DF_ENTITY_OPS_PER_SEC, EntityRun, HistoryGrowth, Latency, OpsBreakdown,
    WorkloadResult,
};
use crate::sys::{Machine, peak_rss_kib, reset_peak_rss};
use crate::{BenchConfig, Error, Result, Workload};

/// Concurrent client calls when starting orchestrations or raising events.
const CLIENT_CONCURRENCY: usize = 32;
/// The cities of W1.
const CITIES: [&str; 3] = ["Tokyo", "Seattle", "London"];
/// External events each W3 orchestration waits for.
const W3_EVENTS: u32 = 10;
/// The entity E1 and E2 signal.
const COUNTER: &str = "Counter";
/// Counter entities of E2.
const E2_ENTITIES: usize = 100;
/// E1 and E2 give up on a counter that stays below its expected value this long (a lost signal
/// would otherwise keep the run waiting for the whole timeout).
const ENTITY_STALL: Duration = Duration::from_secs(60);

/// The state of a counter entity: its value, and how many checkpointed batches changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    value: i64,
    /// Batches that applied an `add`.
    batches: u64,
    /// The time of the batch that applied the last `add` (every operation of a batch sees the
    /// same time, and a new batch a later one).
    #[serde(default, with = "time::serde::rfc3339::option")]
    batch_time: Option<OffsetDateTime>,
}

impl Tally {
    /// Adds `n` in the batch of time `batch_time`.
    fn add(&mut self, n: i64, batch_time: OffsetDateTime) {
        self.value += n;
        if self.batch_time != Some(batch_time) {
            self.batches += 1;
            self.batch_time = Some(batch_time);
        }
    }
}

/// The counter entity: `add n` (no result: signals discard it), `get`.
fn counter(ctx: &mut EntityContext<Tally>) -> Result<Option<i64>, EntityError> {
    match ctx.operation() {
        "add" => {
            let n: i64 = ctx.input()?;
            let now = ctx.current_utc_datetime();
            ctx.state_mut().add(n, now);
            Ok(None)
        }
        "get" => Ok(Some(ctx.state().map_or(0, |t| t.value))),
        other => Err(EntityError::new(format!("{COUNTER} has no operation '{other}'"))),
    }
}

/// When W4's activities started, and the storage counters at that moment.
#[derive(Debug, Default)]
struct MarkLog {
    counters: Mutex<Option<Arc<StorageCounters>>>,
    marks: Mutex<BTreeMap<u64, (Instant, Option<StorageOpCounts>)>>,
}

impl MarkLog {
    fn set_counters(&self, c: Option<Arc<StorageCounters>>) {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner) = c;
    }

    /// Records the first execution of activity `i` (a redelivery keeps the first mark).
    fn mark(&self, i: u64) {
        let now = Instant::now();
        let counts = self
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.snapshot());
        self.marks.lock().unwrap_or_else(PoisonError::into_inner).entry(i).or_insert((now, counts));
    }

    fn marks(&self) -> Vec<(Instant, Option<StorageOpCounts>)> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

/// Every orchestration and activity the workloads use.
fn registry(log: Arc<MarkLog>) -> RegistryBuilder {
    Registry::builder()
        .activity("SayHello", |_c: ActivityContext, city: String| async move {
            Ok(format!("Hello {city}!"))
        })
        .activity("Work", |_c: ActivityContext, i: u64| async move { Ok(i * 2) })
        .activity("Mark", move |_c: ActivityContext, i: u64| {
            let log = Arc::clone(&log);
            async move {
                log.mark(i);
                Ok(i)
            }
        })
        // W1
        .orchestration("HelloCities", |ctx: OrchestrationContext, (): ()| async move {
            let mut out = Vec::with_capacity(CITIES.len());
            for city in CITIES {
                let s: String = ctx.call_activity("SayHello", city).await?;
                out.push(s);
            }
            Ok(out)
        })
        // W2
        .orchestration("FanOutFanIn", |ctx: OrchestrationContext, n: u64| async move {
            let tasks: Vec<_> = (0..n).map(|i| ctx.call_activity::<_, u64>("Work", &i)).collect();
            let mut sum = 0u64;
            for r in OrchestrationContext::join_all(tasks).await {
                sum += r?;
            }
            Ok(sum)
        })
        // W3
        .orchestration("WaitEvents", |ctx: OrchestrationContext, n: u32| async move {
            let mut sum = 0u64;
            for _ in 0..n {
                let v: u64 = ctx.wait_for_external_event("Go").await?;
                sum += v;
            }
            Ok(sum)
        })
        // W4
        .orchestration("Sequence", |ctx: OrchestrationContext, n: u64| async move {
            for i in 0..n {
                let _: u64 = ctx.call_activity("Mark", &i).await?;
            }
            Ok(n)
        })
        // W5
        .orchestration("HelloOne", |ctx: OrchestrationContext, (): ()| async move {
            let s: String = ctx.call_activity("SayHello", "Tokyo").await?;
            Ok(s)
        })
        // E1, E2
        .entity(COUNTER, counter)
}

/// Runs `cfg.workloads` on `backend`, then the capacity probe (when the backend has storage), and
/// evaluates the targets.
///
/// # Errors
/// On a bad configuration, or when the provider fails or a workload times out. Orchestrations
/// that fail count as `failed` in the result rather than aborting the run.
pub async fn run(backend: &dyn Backend, cfg: &BenchConfig) -> Result<BenchReport> {
    cfg.validate()?;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut workloads = Vec::with_capacity(cfg.workloads.len());
    for w in &cfg.workloads {
        tracing::info!(workload = w.id(), provider = backend.name(), "workload starting");
        let r = match run_workload(backend, cfg, *w).await {
            Ok(r) => r,
            // Keep going: a report with the other workloads is worth more than none.
            Err(e) => {
                tracing::error!(workload = w.id(), error = %e, "workload failed");
                WorkloadResult::failed(*w, e.to_string())
            }
        };
        tracing::info!(workload = w.id(), wall_seconds = r.wall_seconds, "workload finished");
        workloads.push(r);
    }
    // After the workloads: the probe leaves thousands of deleted messages and entities behind,
    // and Azurite can stall for many seconds while it cleans them up.
    let (probe, probe_error) = match backend.capacity_probe(cfg).await {
        Ok(p) => (p, None),
        Err(e) => {
            tracing::error!(error = %e, "capacity probe failed");
            (None, Some(e.to_string()))
        }
    };
    let mut report = BenchReport {
        provider: backend.name(),
        date,
        machine: Machine::detect(),
        scale: cfg.scale,
        workloads,
        probe,
        probe_error,
        bound: None,
        targets: Vec::new(),
    };
    report.evaluate();
    Ok(report)
}

/// What a workload body reports back.
#[derive(Default)]
struct Outcome {
    orchestrations: u64,
    activities: u64,
    events: u64,
    entity_operations: u64,
    completed: u64,
    failed: u64,
    /// The end of the measured interval (W5 excludes nothing; others end at the last completion).
    end: Option<Instant>,
    /// Storage counters at `end`, when the workload does more after it (E1, E2 check that the
    /// counters stay put).
    counts_at_end: Option<StorageOpCounts>,
    latency: Option<Latency>,
    growth: Option<HistoryGrowth>,
    /// E1, E2 (`df_target_ratio` is filled in once the wall time is known).
    entities: Option<EntityRun>,
}

async fn run_workload(
    backend: &dyn Backend,
    cfg: &BenchConfig,
    w: Workload,
) -> Result<WorkloadResult> {
    let log = Arc::new(MarkLog::default());
    // Azurite sometimes stalls for tens of seconds after a heavy workload; give it a few chances.
    let mut attempt = 0;
    let hub = loop {
        attempt += 1;
        match backend.create_hub(w.id()).await {
            Ok(h) => break h,
            Err(Error::Provider(e)) if e.is_retryable() && attempt < 4 => {
                tracing::warn!(workload = w.id(), error = %e, "creating the task hub failed; retrying");
            }
            Err(e) => return Err(e),
        }
    };
    let result = run_on_hub(&hub, cfg, w, &log).await;
    let deleted = backend.delete_hub(&hub).await;
    let result = result?;
    deleted?;
    Ok(result)
}

async fn run_on_hub(
    hub: &BenchHub,
    cfg: &BenchConfig,
    w: Workload,
    log: &Arc<MarkLog>,
) -> Result<WorkloadResult> {
    log.set_counters(hub.counters.clone());
    let worker = Dispatchers::start(
        Arc::clone(&hub.service),
        registry(Arc::clone(log)).build(),
        hub.worker_options.clone(),
    )
    .await?;
    let measured = async {
        hub.wait_ready(Duration::from_secs(120)).await?;
        let client = TaskHubClient::new(Arc::clone(&hub.client));
        let poller_counts = poller_counter(hub);
        let poll_before = poller_counts.as_ref().map(|c| c.snapshot());
        let rss_reset = reset_peak_rss();
        let before = hub.counters.as_ref().map(|c| c.snapshot());
        let start = Instant::now();
        let deadline = start + cfg.timeout;
        let out = match w {
            Workload::W1 => w1(hub, &client, cfg, deadline).await?,
            Workload::W2 => w2(hub, &client, cfg, deadline).await?,
            Workload::W3 => w3(hub, &client, cfg, deadline).await?,
            Workload::W4 => w4(hub, &client, cfg, deadline, log).await?,
            Workload::W5 => w5(hub, &client, cfg, deadline).await?,
            Workload::E1 => e1(hub, &client, cfg, deadline).await?,
            Workload::E2 => e2(hub, &client, cfg, deadline).await?,
        };
        let end = out.end.unwrap_or_else(Instant::now);
        let after = out.counts_at_end.or_else(|| hub.counters.as_ref().map(|c| c.snapshot()));
        let peak = peak_rss_kib();
        let poller_total = match (&poller_counts, poll_before) {
            (Some(c), Some(b)) => Some(c.snapshot().since(&b).total()),
            _ => None,
        };
        let wall = (end - start).as_secs_f64().max(1e-9);
        let storage_ops = match (before, after) {
            (Some(b), Some(a)) => Some(OpsBreakdown::new(
                a.since(&b),
                out.orchestrations,
                out.activities,
                out.events,
                out.entity_operations,
                poller_total,
            )),
            _ => None,
        };
        let entity_operations_per_sec =
            (out.entity_operations > 0).then(|| out.entity_operations as f64 / wall);
        let entities = out.entities.map(|mut e| {
            if e.entities == 1 {
                e.df_target_ratio = entity_operations_per_sec.map(|r| r / DF_ENTITY_OPS_PER_SEC);
            }
            e
        });
        Ok::<_, Error>(WorkloadResult {
            workload: w.id(),
            description: w.description(),
            task_hub: hub.task_hub.clone(),
            orchestrations: out.orchestrations,
            activities: out.activities,
            events: out.events,
            entity_operations: out.entity_operations,
            completed: out.completed,
            failed: out.failed,
            wall_seconds: wall,
            orchestrations_per_sec: out.orchestrations as f64 / wall,
            activities_per_sec: (out.activities > 0).then(|| out.activities as f64 / wall),
            events_per_sec: (out.events > 0).then(|| out.events as f64 / wall),
            entity_operations_per_sec,
            storage_ops,
            peak_rss_kib: peak,
            peak_rss_reset: rss_reset,
            latency: out.latency,
            history_growth: out.growth,
            entities,
            error: None,
        })
    }
    .await;
    let stopped = worker.shutdown(Duration::from_secs(30)).await;
    let result = measured?;
    stopped?;
    Ok(result)
}

/// The poller's own counters, when it is a separate counted instance.
fn poller_counter(hub: &BenchHub) -> Option<Arc<StorageCounters>> {
    hub.poller_counters.clone()
}

/// Waits for `id` to be terminal, polling every `interval`.
async fn wait_terminal(
    poller: &Arc<dyn OrchestrationServiceClient>,
    id: &str,
    interval: Duration,
    deadline: Instant,
    workload: &'static str,
) -> Result<OrchestrationState> {
    loop {
        match poller.get_state(id, true).await {
            Ok(Some(s)) if s.orchestration_status.is_terminal() => return Ok(s),
            Ok(_) => {}
            // An overloaded emulator times out now and then; the poller just asks again.
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::debug!(workload, instance_id = id, error = %e, "poll failed; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(Error::Workload {
                workload,
                message: format!("instance {id} did not finish within the timeout"),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Starts `n` orchestrations of `name` with `input`, `CLIENT_CONCURRENCY` at a time.
async fn start_many<I: serde::Serialize + Sync>(
    client: &TaskHubClient,
    name: &str,
    input: &I,
    n: usize,
) -> Result<Vec<String>> {
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|_| client.start_orchestration(name, input))
        .buffer_unordered(CLIENT_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(ids)
}

/// Waits for all `ids`; counts those completed with an output accepted by `check`.
async fn wait_all(
    hub: &BenchHub,
    ids: &[String],
    deadline: Instant,
    workload: &'static str,
    check: impl Fn(&OrchestrationState) -> bool,
) -> Result<(u64, u64, Instant)> {
    let (mut ok, mut bad) = (0u64, 0u64);
    for id in ids {
        let s = wait_terminal(&hub.poller, id, hub.poll_interval, deadline, workload).await?;
        if s.orchestration_status == OrchestrationStatus::Completed && check(&s) {
            ok += 1;
        } else {
            bad += 1;
            tracing::warn!(workload, instance_id = %id, status = ?s.orchestration_status, output = ?s.output, "orchestration did not complete as expected");
        }
    }
    Ok((ok, bad, Instant::now()))
}

fn as_count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

async fn w1(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
) -> Result<Outcome> {
    let n = cfg.scaled(1000, 1);
    let ids = start_many(client, "HelloCities", &(), n).await?;
    let expected: Vec<String> = CITIES.iter().map(|c| format!("Hello {c}!")).collect();
    let (completed, failed, end) = wait_all(hub, &ids, deadline, "W1", |s| {
        s.output_as::<Vec<String>>().is_ok_and(|o| o == expected)
    })
    .await?;
    Ok(Outcome {
        orchestrations: as_count(n),
        activities: as_count(n * CITIES.len()),
        completed,
        failed,
        end: Some(end),
        ..Outcome::default()
    })
}

async fn w2(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
) -> Result<Outcome> {
    let n = as_count(cfg.scaled(1000, 1));
    let id = client.start_orchestration("FanOutFanIn", &n).await?;
    let expected = n * n.saturating_sub(1); // Σ 2i for i < n
    let (completed, failed, end) =
        wait_all(hub, &[id], deadline, "W2", |s| s.output_as::<u64>().is_ok_and(|o| o == expected))
            .await?;
    Ok(Outcome {
        orchestrations: 1,
        activities: n,
        completed,
        failed,
        end: Some(end),
        ..Outcome::default()
    })
}

async fn w3(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
) -> Result<Outcome> {
    let n = cfg.scaled(100, 1);
    let ids = start_many(client, "WaitEvents", &W3_EVENTS, n).await?;
    for round in 0..W3_EVENTS {
        let value = u64::from(round);
        futures::stream::iter(ids.iter())
            .map(|id| client.raise_event(id, "Go", &value))
            .buffer_unordered(CLIENT_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
    }
    let expected: u64 = (0..u64::from(W3_EVENTS)).sum();
    let (completed, failed, end) =
        wait_all(hub, &ids, deadline, "W3", |s| s.output_as::<u64>().is_ok_and(|o| o == expected))
            .await?;
    Ok(Outcome {
        orchestrations: as_count(n),
        events: as_count(n) * u64::from(W3_EVENTS),
        completed,
        failed,
        end: Some(end),
        ..Outcome::default()
    })
}

async fn w4(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
    log: &MarkLog,
) -> Result<Outcome> {
    let n = cfg.scaled(200, 4);
    let id = client.start_orchestration("Sequence", &as_count(n)).await?;
    let (completed, failed, end) = wait_all(hub, &[id], deadline, "W4", |s| {
        s.output_as::<u64>().is_ok_and(|o| o == as_count(n))
    })
    .await?;
    let marks = log.marks();
    let growth = history_growth(&marks).ok_or_else(|| Error::Workload {
        workload: "W4",
        message: format!("only {} of {n} activities were recorded", marks.len()),
    })?;
    Ok(Outcome {
        orchestrations: 1,
        activities: as_count(n),
        completed,
        failed,
        end: Some(end),
        growth: Some(growth),
        ..Outcome::default()
    })
}

/// First vs last window (a quarter of the activities, at most 50) of the time and storage calls
/// from one activity's start to the next one's.
fn history_growth(marks: &[(Instant, Option<StorageOpCounts>)]) -> Option<HistoryGrowth> {
    if marks.len() < 4 {
        return None;
    }
    let steps = marks.len() - 1;
    let window = (marks.len() / 4).clamp(1, 50).min(steps);
    let span = |from: usize| -> (f64, Option<StorageOpCounts>) {
        let (t0, c0) = &marks[from];
        let (t1, c1) = &marks[from + window];
        let ms = (*t1 - *t0).as_secs_f64() * 1000.0 / window as f64;
        let ops = match (c0, c1) {
            (Some(a), Some(b)) => Some(b.since(a)),
            _ => None,
        };
        (ms, ops)
    };
    let (first_ms, first_ops) = span(0);
    let (last_ms, last_ops) = span(steps - window);
    let per = |c: &StorageOpCounts| c.total() as f64 / window as f64;
    let by_kind = |c: &Option<StorageOpCounts>| -> BTreeMap<&'static str, f64> {
        c.iter()
            .flat_map(|c| c.non_zero())
            .map(|(op, n)| (op.name(), n as f64 / window as f64))
            .collect()
    };
    let first_per = first_ops.as_ref().map(per);
    let last_per = last_ops.as_ref().map(per);
    Some(HistoryGrowth {
        window,
        first_ms_per_activity: first_ms,
        last_ms_per_activity: last_ms,
        time_ratio: if first_ms > 0.0 { last_ms / first_ms } else { 0.0 },
        ops_ratio: match (first_per, last_per) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        },
        first_ops_per_activity: first_per,
        last_ops_per_activity: last_per,
        first_ops_by_kind: by_kind(&first_ops),
        last_ops_by_kind: by_kind(&last_ops),
    })
}

async fn w5(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
) -> Result<Outcome> {
    let runs = cfg.scaled(50, 3);
    let mut samples = Vec::with_capacity(runs);
    let (mut completed, mut failed) = (0u64, 0u64);
    for _ in 0..runs {
        tokio::time::sleep(cfg.w5_idle).await;
        let t0 = Instant::now();
        let id = client.start_orchestration("HelloOne", &()).await?;
        let s = wait_terminal(&hub.poller, &id, hub.latency_poll_interval, deadline, "W5").await?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        if s.orchestration_status == OrchestrationStatus::Completed
            && s.output_as::<String>().is_ok_and(|o| o == "Hello Tokyo!")
        {
            completed += 1;
        } else {
            failed += 1;
        }
    }
    Ok(Outcome {
        orchestrations: as_count(runs),
        activities: as_count(runs),
        completed,
        failed,
        latency: Some(Latency::from_samples(
            &samples,
            hub.latency_poll_interval.as_secs_f64() * 1000.0,
            cfg.w5_idle.as_secs_f64() * 1000.0,
        )),
        ..Outcome::default()
    })
}

async fn e1(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
) -> Result<Outcome> {
    signal_counters(hub, client, deadline, "E1", 1, cfg.scaled(2000, 10)).await
}

async fn e2(
    hub: &BenchHub,
    client: &TaskHubClient,
    cfg: &BenchConfig,
    deadline: Instant,
) -> Result<Outcome> {
    let n = cfg.scaled(2000, E2_ENTITIES);
    signal_counters(hub, client, deadline, "E2", E2_ENTITIES, n).await
}

/// Signals to counter `k` of `entities`, when `n` signals go round-robin.
fn expected_count(n: usize, entities: usize, k: usize) -> i64 {
    let c = n / entities + usize::from(k < n % entities);
    i64::try_from(c).unwrap_or(i64::MAX)
}

/// E1, E2: `n` client signals `add 1`, round-robin over `entities` counters,
/// `CLIENT_CONCURRENCY` at a time; ends when every counter shows exactly its signals, then
/// checks that they stay there (a duplicate applied late would push one past).
async fn signal_counters(
    hub: &BenchHub,
    client: &TaskHubClient,
    deadline: Instant,
    workload: &'static str,
    entities: usize,
    n: usize,
) -> Result<Outcome> {
    let ids: Vec<EntityId> =
        (0..entities).map(|k| EntityId::new(COUNTER, format!("bench{k}"))).collect();
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| client.signal_entity(&ids[i % entities], "add", &1i64))
        .buffer_unordered(CLIENT_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let send_seconds = t0.elapsed().as_secs_f64();
    // Reads go through the uncounted poller, as completion polling does in W1-W5.
    let poller = TaskHubClient::new(Arc::clone(&hub.poller));
    let mut batches = 0u64;
    for (k, id) in ids.iter().enumerate() {
        let expected = expected_count(n, entities, k);
        let t = match wait_counter(&poller, id, expected, hub.poll_interval, deadline, workload)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                // What the entity's stored scheduler state says (delivered sequence numbers per
                // stream, backlog, lock) tells a lost message from a lost update.
                let stored = hub.poller.get_state(&id.instance_id(), true).await;
                tracing::error!(workload, entity = %id, error = %e, stored = ?stored, "counter did not end right");
                return Err(e);
            }
        };
        batches += t.batches;
    }
    let end = Instant::now();
    let counts_at_end = hub.counters.as_ref().map(|c| c.snapshot());
    tokio::time::sleep((hub.poll_interval * 20).max(Duration::from_millis(200))).await;
    for (k, id) in ids.iter().enumerate() {
        let expected = expected_count(n, entities, k);
        let value = poller.get_entity::<Tally>(id).await?.and_then(|m| m.state).map(|t| t.value);
        if value != Some(expected) {
            return Err(Error::Workload {
                workload,
                message: format!(
                    "entity {id} showed {expected} of {expected} signals, then {value:?}: \
                     operations were applied more than once"
                ),
            });
        }
    }
    let operations = as_count(n);
    Ok(Outcome {
        entity_operations: operations,
        completed: as_count(entities),
        end: Some(end),
        counts_at_end,
        entities: Some(EntityRun {
            entities: as_count(entities),
            operations,
            client_concurrency: CLIENT_CONCURRENCY,
            send_seconds,
            batches,
            operations_per_batch: if batches > 0 {
                operations as f64 / batches as f64
            } else {
                0.0
            },
            df_target_ratio: None,
        }),
        ..Outcome::default()
    })
}

/// Waits until counter `id` shows `expected`. A counter past `expected`, one that stops moving
/// for [`ENTITY_STALL`], or the deadline fail the workload.
async fn wait_counter(
    poller: &TaskHubClient,
    id: &EntityId,
    expected: i64,
    interval: Duration,
    deadline: Instant,
    workload: &'static str,
) -> Result<Tally> {
    let (mut last, mut changed) = (None, Instant::now());
    loop {
        match poller.get_entity::<Tally>(id).await {
            Ok(meta) => {
                let t = meta.and_then(|m| m.state).unwrap_or_default();
                if t.value == expected {
                    return Ok(t);
                }
                if t.value > expected {
                    return Err(Error::Workload {
                        workload,
                        message: format!(
                            "entity {id} counted {} of {expected} signals: operations were \
                             applied more than once",
                            t.value
                        ),
                    });
                }
                if last != Some(t.value) {
                    (last, changed) = (Some(t.value), Instant::now());
                } else if changed.elapsed() >= ENTITY_STALL {
                    return Err(Error::Workload {
                        workload,
                        message: format!(
                            "entity {id} stayed at {} of {expected} signals for {ENTITY_STALL:?}: \
                             signals were lost or the worker stalled (its stored state is logged)",
                            t.value
                        ),
                    });
                }
            }
            // An overloaded emulator times out now and then; the poller just asks again.
            Err(ClientError::Provider(e)) if e.is_retryable() && Instant::now() < deadline => {
                tracing::debug!(workload, entity = %id, error = %e, "poll failed; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(Error::Workload {
                workload,
                message: format!(
                    "entity {id} reached {} of {expected} signals within the timeout",
                    last.unwrap_or(0)
                ),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_compares_first_and_last_window() {
        let t0 = Instant::now();
        // 9 marks: steps of 1 ms for the first half, 2 ms afterwards.
        let mut marks = Vec::new();
        let mut t = t0;
        for i in 0..9u32 {
            marks.push((t, None));
            t += Duration::from_millis(if i < 4 { 1 } else { 2 });
        }
        let g = history_growth(&marks).unwrap();
        assert_eq!(g.window, 2);
        assert!((g.first_ms_per_activity - 1.0).abs() < 1e-9);
        assert!((g.last_ms_per_activity - 2.0).abs() < 1e-9);
        assert!((g.time_ratio - 2.0).abs() < 1e-9);
        assert!(g.ops_ratio.is_none());
    }

    #[test]
    fn round_robin_counts_add_up() {
        let per: Vec<i64> = (0..100).map(|k| expected_count(2050, 100, k)).collect();
        assert_eq!(per.iter().sum::<i64>(), 2050);
        assert_eq!((per[0], per[49], per[50], per[99]), (21, 21, 20, 20));
        assert_eq!(expected_count(7, 1, 0), 7);
    }

    #[test]
    fn counter_counts_batches_by_batch_time() {
        let (a, b) =
            (OffsetDateTime::UNIX_EPOCH, OffsetDateTime::UNIX_EPOCH + Duration::from_millis(1));
        let mut t = Tally::default();
        for (n, now) in [(1, a), (2, a), (3, a), (4, b)] {
            t.add(n, now);
        }
        assert_eq!((t.value, t.batches, t.batch_time), (10, 2, Some(b)));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Tally>(&json).unwrap(), t, "{json}");
    }
}
