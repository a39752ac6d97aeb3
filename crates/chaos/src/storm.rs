//! The start storm: the ordinary traffic that once made a worker stop for good.
//!
//! One round, interleaved with the normal workload `W(n)`:
//! * every normal start is followed by a *stale* `ExecutionStarted` for the same id (another
//!   execution id, an hour old) put straight into its control queue, and every small one by a
//!   *duplicate* of its real start message (same execution id: a re-sent start);
//! * a few ids are started many times at once (duplicate starts, each a new execution id);
//! * a few ids are recreated over and over by concurrent tasks, while they run and after;
//! * continue-as-new loops carry inputs and outputs over 45 KiB (every generation uses blobs);
//! * raise event, terminate, suspend and resume go to missing ids and to completed instances,
//!   through the client (accepted answers: `Ok`, `NotFound` or another typed status error, never
//!   a raw storage error) and as raw messages injected into the control queues, so the provider
//!   path is exercised whatever the client checks.
//!
//! The round's [`StormRound::planned`] instances are audited like any workload (the completed
//! targets must stay completed with their output); missing ids must stay missing.

use crate::audit::{self, BlobCheck};
use crate::logs;
use crate::scenarios::{Profile, ScenarioReport, TestHub, merge_events};
use crate::setup::{ChaosEnv, NodeSpec};
use crate::workload::{self, Planned};
use crate::{ChaosError, Result};
use durabletask_azure_storage::envelope::MessageData;
use durabletask_azure_storage::keys::partition_index;
use durabletask_azure_storage::storage::{QueueStore, StorageError};
use durabletask_core::{
    ClientError, EventKind, ExecutionStartedEvent, HistoryEvent, OrchestrationInstance,
    OrchestrationServiceClient, StartOptions, TaskHubClient, TaskMessage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Sizes of one storm round.
#[derive(Debug, Clone, Copy)]
pub struct StormSize {
    /// Instances of the normal workload `W(n)` beside the storm.
    pub normal: usize,
    /// Ids started many times at once.
    pub dup_ids: usize,
    /// Concurrent starts per duplicate id.
    pub dup_starts: usize,
    /// Ids recreated by concurrent tasks.
    pub recreate_ids: usize,
    /// Concurrent recreating tasks per id.
    pub recreate_tasks: usize,
    /// Starts per recreating task.
    pub recreate_rounds: usize,
    /// Continue-as-new loops with large payloads.
    pub loops: usize,
    /// Generations per loop.
    pub loop_generations: u32,
    /// Completed instances that then receive events, terminates, suspends and resumes.
    pub targets: usize,
    /// Missing ids that receive the same.
    pub missing: usize,
}

/// Large payloads: over the 45 KiB queue threshold and, as UTF-16, the 60 KiB table threshold.
const LARGE: usize = 46 * 1024;

/// What the client answered to the storm's calls.
#[derive(Debug, Default, Clone)]
pub struct Outcomes {
    /// `Ok`.
    pub ok: u64,
    /// Typed errors, by variant.
    pub typed: BTreeMap<String, u64>,
    /// Raw provider or storage errors (each one is a finding), by call and text.
    pub raw: BTreeMap<String, u64>,
}

impl Outcomes {
    fn record<T>(&mut self, what: &str, r: &std::result::Result<T, ClientError>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(e) => match typed_name(e) {
                Some(name) => *self.typed.entry(name).or_insert(0) += 1,
                None => *self.raw.entry(format!("{what}: {e}")).or_insert(0) += 1,
            },
        }
    }

    /// Raw errors seen.
    pub fn raw_count(&self) -> u64 {
        self.raw.values().sum()
    }

    /// One field for a report: `ok:N,typed[Variant:N ...],raw:N`.
    pub fn summary(&self) -> String {
        let typed: Vec<String> = self.typed.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("ok:{},typed[{}],raw:{}", self.ok, typed.join(","), self.raw_count())
    }

    fn merge(&mut self, other: Outcomes) {
        self.ok += other.ok;
        for (k, v) in other.typed {
            *self.typed.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.raw {
            *self.raw.entry(k).or_insert(0) += v;
        }
    }
}

/// The name of a typed client answer, or `None` for a raw storage error: a provider error that
/// passes a non-retryable storage failure through (its source is a `StorageError`, e.g. the
/// 412 of a lost race). A provider error the provider made itself (e.g. `Transient` "the
/// Instances row kept changing", with what happened to the queued start) is a typed answer, and
/// so is a transient storage failure (a timeout of a busy emulator), counted apart.
fn typed_name(e: &ClientError) -> Option<String> {
    let name = match e {
        ClientError::NotFound(_) => "NotFound",
        ClientError::AlreadyExists { .. } => "AlreadyExists",
        ClientError::Superseded { .. } => "Superseded",
        ClientError::InvalidStatus { .. } => "InvalidStatus",
        ClientError::NotTerminal(_) => "NotTerminal",
        ClientError::InvalidInstanceId(_) => "InvalidInstanceId",
        ClientError::Serialization(_) => "Serialization",
        ClientError::Timeout { .. } => "Timeout",
        ClientError::Provider(p) => {
            let storage = p.source.as_deref().and_then(|s| s.downcast_ref::<StorageError>());
            return match storage {
                None => Some(format!("Provider{:?}", p.kind())),
                Some(_) if p.is_retryable() => Some(format!("Storage{:?}", p.kind())),
                Some(_) => None,
            };
        }
        // Variants added later are typed by construction.
        _ => "Other",
    };
    Some(name.to_owned())
}

/// One round of the storm, started.
#[derive(Debug, Default)]
pub struct StormRound {
    /// Everything to audit: the normal workload, duplicate-started and recreated ids, loops and
    /// the completed targets (expected outputs known; every one must end Completed on the
    /// execution its Instances row names).
    pub planned: Vec<Planned>,
    /// Ids that never existed and received events: they must still have no Instances row.
    pub missing: Vec<String>,
    /// Client answers.
    pub outcomes: Outcomes,
    /// Messages injected into control queues (stale and duplicate starts, raw events).
    pub injected: u64,
    /// Client calls made (starts, events, terminates, ...).
    pub calls: u64,
}

fn message(instance: OrchestrationInstance, timestamp: OffsetDateTime, kind: EventKind) -> String {
    let data =
        MessageData::new(TaskMessage::new(instance, HistoryEvent::new(-1, timestamp, kind)), 1);
    match data.to_bytes() {
        Ok(b) => MessageData::encode_text(&b),
        // Well-formed task messages always encode; an empty text would be quarantined, which
        // the audit of the hub's residue would show.
        Err(_) => String::new(),
    }
}

fn start_message(
    instance_id: &str,
    execution_id: &str,
    name: &str,
    input: &str,
    timestamp: OffsetDateTime,
) -> Result<String> {
    let instance = OrchestrationInstance::with_execution(instance_id, execution_id);
    let input = durabletask_core::registry::to_payload(input)
        .map_err(|e| ChaosError::Harness(e.to_string()))?;
    let started = ExecutionStartedEvent::new(instance.clone(), name, input);
    Ok(message(instance, timestamp, EventKind::ExecutionStarted(started)))
}

/// Puts a raw message into the control queue `instance_id` maps to.
async fn inject(hub: &TestHub, instance_id: &str, text: &str) -> Result<()> {
    let names = hub.admin.resource_names();
    let p = partition_index(instance_id, hub.admin.azure_settings().partition_count);
    let queue = &names.control_queues[usize::from(p)];
    crate::audit::retry(|| hub.storage.put_message(queue, text, Duration::ZERO)).await?;
    Ok(())
}

async fn start(
    client: &TaskHubClient,
    p: &Planned,
) -> std::result::Result<OrchestrationInstance, ClientError> {
    let mut attempt = 0;
    loop {
        let r = client
            .schedule_new_orchestration(
                p.name,
                &p.input,
                StartOptions::with_instance_id(p.instance_id.clone()),
            )
            .await;
        match r {
            Err(ClientError::Provider(e)) if e.is_retryable() && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

/// The normal workload, each start followed by a stale start and (small inputs) a re-sent copy.
async fn normal(hub: &TestHub, planned: &[Planned]) -> Result<(Outcomes, u64)> {
    let client = hub.client();
    let mut out = Outcomes::default();
    let mut injected = 0;
    let hour_ago = OffsetDateTime::now_utc() - time::Duration::hours(1);
    for p in planned.iter().filter(|p| p.top_level) {
        let r = start(&client, p).await;
        out.record("start", &r);
        let Ok(instance) = r else { continue };
        let stale = uuid::Uuid::new_v4().simple().to_string();
        inject(
            hub,
            &p.instance_id,
            &start_message(&p.instance_id, &stale, p.name, "stale", hour_ago)?,
        )
        .await?;
        injected += 1;
        if p.input.len() < 1024
            && let Some(exec) = instance.execution_id.as_deref()
        {
            let now = OffsetDateTime::now_utc();
            inject(
                hub,
                &p.instance_id,
                &start_message(&p.instance_id, exec, p.name, &p.input, now)?,
            )
            .await?;
            injected += 1;
        }
    }
    Ok((out, injected))
}

/// Every duplicate id started `starts` times at once.
async fn duplicate_starts(client: &TaskHubClient, ids: &[Planned], starts: usize) -> Outcomes {
    let calls = ids.iter().flat_map(|p| (0..starts).map(move |_| p)).map(|p| async move {
        client
            .schedule_new_orchestration(
                p.name,
                &p.input,
                StartOptions::with_instance_id(p.instance_id.clone()),
            )
            .await
    });
    let results = futures::future::join_all(calls).await;
    let mut out = Outcomes::default();
    for r in &results {
        out.record("duplicate start", r);
    }
    out
}

/// `tasks` concurrent tasks per id, each starting it `rounds` times with random gaps.
async fn recreations(
    client: &TaskHubClient,
    ids: &[Planned],
    tasks: usize,
    rounds: usize,
    seed: u64,
) -> Outcomes {
    let mut jobs = Vec::new();
    for (i, p) in ids.iter().enumerate() {
        for t in 0..tasks {
            let mut rng = StdRng::seed_from_u64(seed ^ ((i as u64) << 16) ^ t as u64);
            jobs.push(async move {
                let mut out = Outcomes::default();
                for _ in 0..rounds {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(50..800))).await;
                    let r = client
                        .schedule_new_orchestration(
                            p.name,
                            &p.input,
                            StartOptions::with_instance_id(p.instance_id.clone()),
                        )
                        .await;
                    out.record("recreate", &r);
                }
                out
            });
        }
    }
    let mut out = Outcomes::default();
    for o in futures::future::join_all(jobs).await {
        out.merge(o);
    }
    out
}

/// Raise event (small and large), terminate, suspend and resume through the client, and raw
/// events, terminates, responses and starts into the control queue, for each id.
async fn bombard(hub: &TestHub, ids: &[String], missing: bool) -> Result<(Outcomes, u64, u64)> {
    let client = hub.client();
    let mut out = Outcomes::default();
    let mut calls = 0;
    let mut injected = 0;
    let large = "E".repeat(LARGE);
    for (k, id) in ids.iter().enumerate() {
        out.record("raise", &client.raise_event(id, "storm", &k).await);
        if k % 3 == 0 {
            out.record("raise large", &client.raise_event(id, "storm-large", &large).await);
            calls += 1;
        }
        out.record("terminate", &client.terminate(id, "storm").await);
        out.record("suspend", &client.suspend(id, Some("storm")).await);
        out.record("resume", &client.resume(id, Some("storm")).await);
        calls += 4;
        let now = OffsetDateTime::now_utc();
        let inst = OrchestrationInstance::new(id.clone());
        let mut raw = vec![
            message(inst.clone(), now, EventKind::EventRaised { name: "raw".into(), input: None }),
            message(inst.clone(), now, EventKind::ExecutionTerminated { input: None }),
            message(
                inst.clone(),
                now,
                EventKind::TaskCompleted { task_scheduled_id: 0, result: Some("1".into()) },
            ),
        ];
        if missing {
            let exec = uuid::Uuid::new_v4().simple().to_string();
            raw.push(start_message(id, &exec, workload::CHAIN, "orphan", now)?);
        }
        for text in &raw {
            inject(hub, id, text).await?;
            injected += 1;
        }
    }
    Ok((out, calls, injected))
}

/// The planned instances of one round.
struct RoundPlan {
    normal: Vec<Planned>,
    dups: Vec<Planned>,
    recreated: Vec<Planned>,
    targets: Vec<Planned>,
    loops: Vec<Planned>,
}

/// The planned instances of a round with ids `{prefix}-...`.
fn plan(size: &StormSize, prefix: &str) -> RoundPlan {
    let normal = workload::plan(&format!("{prefix}-n"), size.normal);
    let chain = |id: String| {
        let seed = format!("{id}:seed");
        Planned {
            output: workload::step(&workload::step(&workload::step(&seed))),
            instance_id: id,
            name: workload::CHAIN,
            input: seed,
            top_level: true,
        }
    };
    let dups = (0..size.dup_ids).map(|k| chain(format!("{prefix}-d-{k:03}"))).collect();
    let recreated = (0..size.recreate_ids).map(|k| chain(format!("{prefix}-r-{k:03}"))).collect();
    let targets = (0..size.targets).map(|k| chain(format!("{prefix}-t-{k:03}"))).collect();
    let loops = (0..size.loops)
        .map(|k| {
            let id = format!("{prefix}-l-{k:03}");
            let pad = format!("{id}:{}", "P".repeat(LARGE));
            Planned {
                input: workload::loop_input(size.loop_generations, &pad),
                output: workload::loop_output(&pad),
                instance_id: id,
                name: workload::LOOP,
                top_level: true,
            }
        })
        .collect();
    RoundPlan { normal, dups, recreated, targets, loops }
}

/// Runs one storm round with ids under `prefix` and returns once every start and every message
/// has been sent (instances are still running). The targets are started first and awaited, so
/// they are completed when they are bombarded.
///
/// # Errors
/// When the harness fails (client answers are recorded, not errors).
pub async fn run_round(
    hub: &TestHub,
    size: &StormSize,
    prefix: &str,
    seed: u64,
) -> Result<StormRound> {
    let RoundPlan { normal: normal_plan, dups, recreated, targets, loops } = plan(size, prefix);
    let client = hub.client();
    let mut round = StormRound {
        missing: (0..size.missing).map(|k| format!("{prefix}-m-{k:03}")).collect(),
        ..StormRound::default()
    };
    for t in &targets {
        let r = start(&client, t).await;
        round.outcomes.record("target start", &r);
        round.calls += 1;
    }
    let bombard_after_targets = async {
        // The targets are chains of three activities: done within seconds on a healthy worker.
        let deadline = Duration::from_secs(60);
        crate::audit::wait_terminal(&hub.admin, &targets, deadline).await?;
        let ids: Vec<String> = targets.iter().map(|t| t.instance_id.clone()).collect();
        let a = bombard(hub, &ids, false).await?;
        let b = bombard(hub, &round.missing, true).await?;
        Ok::<_, ChaosError>((a, b))
    };
    let loops_started = async {
        let mut out = Outcomes::default();
        for l in &loops {
            out.record("loop start", &start(&client, l).await);
        }
        out
    };
    let (normal_r, dup_r, rec_r, loop_r, bomb_r) = tokio::join!(
        normal(hub, &normal_plan),
        duplicate_starts(&client, &dups, size.dup_starts),
        recreations(&client, &recreated, size.recreate_tasks, size.recreate_rounds, seed),
        loops_started,
        bombard_after_targets,
    );
    let (normal_out, normal_injected) = normal_r?;
    let ((t_out, t_calls, t_inj), (m_out, m_calls, m_inj)) = bomb_r?;
    round.calls += normal_plan.iter().filter(|p| p.top_level).count() as u64
        + (dups.len() * size.dup_starts) as u64
        + (recreated.len() * size.recreate_tasks * size.recreate_rounds) as u64
        + loops.len() as u64
        + t_calls
        + m_calls;
    round.injected += normal_injected + t_inj + m_inj;
    for o in [normal_out, dup_r, rec_r, loop_r, t_out, m_out] {
        round.outcomes.merge(o);
    }
    round.planned =
        normal_plan.into_iter().chain(dups).chain(recreated).chain(loops).chain(targets).collect();
    Ok(round)
}

/// Findings about the missing ids: any of them that now has an Instances row.
///
/// # Errors
/// When storage reads keep failing.
pub async fn check_missing(hub: &TestHub, round: &StormRound) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for id in &round.missing {
        if let Some(s) = crate::audit::retry(|| hub.admin.get_state(id, false)).await? {
            found.push(format!(
                "{id}: never started, but has an Instances row ({})",
                s.orchestration_status.as_str()
            ));
        }
    }
    Ok(found)
}

/// Waits until the hub's queues are empty (deferred duplicate and orphan starts are dropped
/// after 10 deliveries) or `timeout` passes; returns the messages left.
///
/// # Errors
/// When storage reads keep failing.
pub async fn wait_quiet(hub: &TestHub, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = audit::queue_residue(&hub.admin).await?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The hub's blob check (see [`audit::blob_references`]).
///
/// # Errors
/// When storage reads keep failing.
pub async fn blob_check(hub: &TestHub) -> Result<BlobCheck> {
    let stack = hub.stack(&hub.settings("blob-audit"));
    audit::blob_references(&stack, hub.admin.resource_names()).await
}

/// The start storm on one in-process worker, interleaved with `W(n)`: every planned
/// instance ends Completed with its output on the execution its Instances row names (duplicate
/// started and recreated ids included), missing ids stay missing, the client answers only `Ok`
/// or typed errors, the provider's stats stay sane, and the
/// large-message container holds exactly the blobs live rows reference, after the generations
/// and (empty) after purge.
///
/// # Errors
/// When the harness fails (findings are in the report).
pub async fn start_storm(env: &ChaosEnv, profile: &Profile, seed: u64) -> Result<ScenarioReport> {
    let started = Instant::now();
    let before = logs::snapshot();
    let mut report = ScenarioReport::new("start-storm", seed);
    let hub = TestHub::create(env, "storm").await?;
    let node = hub.node(NodeSpec::new(hub.settings("storm-w"))).await?;
    let round = run_round(&hub, &profile.storm, "ss", seed).await?;
    report.k = round.injected + round.calls;
    report.extra("client_calls", round.calls);
    report.extra("injected_msgs", round.injected);
    hub.audit_into(&mut report, &round.planned, profile.timeout).await?;
    for f in check_missing(&hub, &round).await? {
        report.fail(f);
    }
    report.extra("client", round.outcomes.summary());
    if round.outcomes.raw_count() > 0 {
        report.fail(format!("raw client errors: {:?}", round.outcomes.raw));
    }
    if report.audit.as_ref().is_some_and(audit::Audit::ok) {
        let residue = wait_quiet(&hub, Duration::from_secs(90)).await?;
        report.extra("residual_msgs", residue);
        let blobs = blob_check(&hub).await?;
        report.extra("blobs_live", blobs.in_container);
        if !blobs.exact() {
            report.fail(format!("after the generations: {blobs}"));
        }
    }
    hub.purge_into(&mut report, &round.planned).await?;
    node.stop(Duration::from_secs(10)).await?;
    hub.stats_into(&mut report);
    merge_events(&mut report, logs::since(&before));
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}
