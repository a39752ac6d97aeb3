//! The entity scenario `entity-kill`: durable entities signalled and called while their workers
//! are SIGKILLed, must apply every operation exactly once.
//!
//! * Entities: [`COUNTER`] counters (`@chaoscounter@k0`, ...). Every operation carries a tag
//!   unique in the run, and the counter's state records how many times each tag was applied
//!   ([`CounterState`]), so the auditor can name exactly which operation was lost or doubled.
//!   `add` records its tag; `relay` records its tag and signals another counter (an
//!   entity-to-entity signal) with [`relayed_tag`]; `check` records its tag and answers
//!   [`CHECK_OK`] when the tags it was given (what its caller sent to this counter before) are
//!   each recorded exactly once.
//! * Senders: a client signals (`add` and `relay`) through a provider whose queue puts fail, time
//!   out, commit and then report a timeout, or are sent twice; [`SIGNALLER`] orchestrations send
//!   rounds of signals and then `check` every counter they signalled (`call_entity`, so each
//!   check also proves the orchestration's stream is applied in order); [`LOCKER`] orchestrations
//!   lock two counters, `check` both inside the critical section, release and signal both.
//! * Chaos: `chaos_worker` processes over faulty storage (errors, timeouts, ambiguous commits,
//!   duplicate puts, shuffled and held-back receives) that SIGKILL themselves at checkpoint crash
//!   points now and then ([`crate::procs::SelfKill`]), and that the harness SIGKILLs at random;
//!   every dead worker is restarted under its id. Then the workers are replaced by calm ones.
//! * Audit: every orchestration Completed with the expected answers (the workload auditor);
//!   after quiescence (queues empty, no entity locked, nothing queued behind a lock or waiting
//!   for a predecessor, and still so after a settle period), the [`SignalLedger`] against the
//!   counters: a client signal whose call returned `Ok`, and every operation of a completed
//!   orchestration, applied exactly once; a client signal whose call failed (unknown) at most
//!   once; a relay's forwarded signal as many times (0 or 1) as the relay; no tag nobody sent.

use crate::audit;
use crate::ledger::{SendFate, SentOperation, SignalLedger};
use crate::procs::{SELF_KILL_LOG, WorkerProcess};
use crate::scenarios::{Profile, ScenarioReport, TestHub, count_logs, log_dir};
use crate::setup::{CRASH_RATE_VAR, ChaosEnv, FAULT_RATE_VAR, SEED_VAR};
use crate::workload::{self, Planned};
use crate::{ChaosError, Result};
use durabletask_azure_storage::AzureStorageOrchestrationService;
use durabletask_azure_storage::storage::StorageOp;
use durabletask_azure_storage::storage::fault::{FaultPlan, FaultStats, FaultyStorage};
use durabletask_core::entity::SchedulerState;
use durabletask_core::{
    EntityContext, EntityError, EntityId, EventKind, OrchestrationContext,
    OrchestrationServiceClient, OrchestrationStatus, RegistryBuilder, TaskHubClient,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The counter entity.
pub const COUNTER: &str = "ChaosCounter";
/// Orchestration: rounds of signals, then a `check` call to every counter signalled.
pub const SIGNALLER: &str = "ChaosEntitySignaller";
/// Orchestration: locks two counters, checks both, releases, signals both.
pub const LOCKER: &str = "ChaosEntityLocker";
/// What `check` answers when everything it was asked about is applied exactly once.
pub const CHECK_OK: &str = "ok";

/// The counter with key `key`.
pub fn counter(key: &str) -> EntityId {
    EntityId::new(COUNTER, key)
}

/// The tag a `relay` of `tag` forwards to counter `to`.
pub fn relayed_tag(tag: &str, to: &str) -> String {
    format!("{tag}>{to}")
}

/// A counter's state: how many times each tag was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// Applications per tag.
    pub applied: BTreeMap<String, u32>,
    /// Operations applied (the sum of `applied`).
    pub ops: u64,
    /// For each tag a relay forwarded here: the relaying counter's `ops` when it relayed, one
    /// per application (two different values for one tag: the relay ran on two base states;
    /// equal values: one batch sent it twice under different sequence numbers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, Vec<u64>>,
}

impl CounterState {
    fn apply(&mut self, tag: &str) -> u32 {
        self.ops += 1;
        let n = self.applied.entry(tag.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    /// How many times `tag` was applied.
    pub fn count(&self, tag: &str) -> u32 {
        self.applied.get(tag).copied().unwrap_or(0)
    }
}

/// Input of `relay`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relay {
    /// Its own tag.
    pub tag: String,
    /// The counter it forwards [`relayed_tag`] to.
    pub to: String,
}

/// What a `relay` forwards to its target's `add` (an `add` also takes a bare tag).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relayed {
    /// [`relayed_tag`].
    pub tag: String,
    /// The relaying counter's `ops` when it relayed.
    pub src: u64,
}

/// Input of `check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// Its own tag.
    pub tag: String,
    /// Tags that must each be applied exactly once already.
    pub expect: Vec<String>,
}

fn counter_entity(ctx: &mut EntityContext<CounterState>) -> Result<String, EntityError> {
    match ctx.operation() {
        "add" => {
            let input: serde_json::Value = ctx.input()?;
            let s = ctx.state_mut();
            match serde_json::from_value::<Relayed>(input.clone()) {
                Ok(r) => {
                    s.sources.entry(r.tag.clone()).or_default().push(r.src);
                    Ok(s.apply(&r.tag).to_string())
                }
                Err(_) => {
                    let tag: String = serde_json::from_value(input)?;
                    Ok(s.apply(&tag).to_string())
                }
            }
        }
        "relay" => {
            let r: Relay = ctx.input()?;
            let s = ctx.state_mut();
            s.apply(&r.tag);
            let relayed = Relayed { tag: relayed_tag(&r.tag, &r.to), src: s.ops };
            ctx.signal_entity(&counter(&r.to), "add", &relayed)?;
            Ok(String::new())
        }
        "check" => {
            let c: Check = ctx.input()?;
            let s = ctx.state_mut();
            let own = s.apply(&c.tag);
            let missing: Vec<&String> = c.expect.iter().filter(|t| s.count(t) == 0).collect();
            let doubled: Vec<&String> = c.expect.iter().filter(|t| s.count(t) > 1).collect();
            if own == 1 && missing.is_empty() && doubled.is_empty() {
                Ok(CHECK_OK.to_owned())
            } else {
                Ok(format!("own={own} missing={missing:?} doubled={doubled:?}"))
            }
        }
        other => Err(EntityError::new(format!("{COUNTER} has no operation '{other}'"))),
    }
}

/// One signal of a [`SignallerPlan`] round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedSignal {
    /// Target counter.
    pub key: String,
    /// Its tag.
    pub tag: String,
    /// `Some`: a `relay` forwarding to this counter; `None`: an `add`.
    pub relay_to: Option<String>,
}

/// One round: the signals, then a `check` (key, tag) per counter signalled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// Signals, in order.
    pub signals: Vec<PlannedSignal>,
    /// Checks, called concurrently after the signals.
    pub checks: Vec<(String, String)>,
}

/// The input of a [`SIGNALLER`] (as JSON text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignallerPlan {
    /// Rounds, in order.
    pub rounds: Vec<Round>,
}

impl SignallerPlan {
    /// Its expected output: one [`CHECK_OK`] per check.
    pub fn output(&self) -> String {
        let n = self.rounds.iter().map(|r| r.checks.len()).sum();
        vec![CHECK_OK; n].join("|")
    }
}

/// The input of a [`LOCKER`] (as JSON text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockerPlan {
    /// Counters locked (and checked in this order).
    pub keys: Vec<String>,
    /// Tags of the checks inside the critical section, one per key.
    pub in_tags: Vec<String>,
    /// Tags of the `add` signals after the release, one per key.
    pub after_tags: Vec<String>,
}

impl LockerPlan {
    /// Its expected output: one [`CHECK_OK`] per key.
    pub fn output(&self) -> String {
        vec![CHECK_OK; self.keys.len()].join("|")
    }
}

/// Registers the counter and the two orchestrations (the worker registry chains this).
pub fn register(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .entity(COUNTER, counter_entity)
        .orchestration(SIGNALLER, |ctx: OrchestrationContext, input: String| async move {
            let plan: SignallerPlan = serde_json::from_str(&input)?;
            let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut answers = Vec::new();
            for round in &plan.rounds {
                for s in &round.signals {
                    let id = counter(&s.key);
                    match &s.relay_to {
                        Some(to) => ctx.signal_entity(
                            &id,
                            "relay",
                            &Relay { tag: s.tag.clone(), to: to.clone() },
                        )?,
                        None => ctx.signal_entity(&id, "add", &s.tag)?,
                    }
                    sent.entry(s.key.clone()).or_default().push(s.tag.clone());
                }
                let calls: Vec<_> = round
                    .checks
                    .iter()
                    .map(|(key, tag)| {
                        let expect = sent.get(key).cloned().unwrap_or_default();
                        ctx.call_entity::<_, String>(
                            &counter(key),
                            "check",
                            &Check { tag: tag.clone(), expect },
                        )
                    })
                    .collect();
                for r in OrchestrationContext::join_all(calls).await {
                    answers.push(r?);
                }
                for (key, tag) in &round.checks {
                    sent.entry(key.clone()).or_default().push(tag.clone());
                }
            }
            Ok(answers.join("|"))
        })
        .orchestration(LOCKER, |ctx: OrchestrationContext, input: String| async move {
            let plan: LockerPlan = serde_json::from_str(&input)?;
            let ids: Vec<EntityId> = plan.keys.iter().map(|k| counter(k)).collect();
            let lock = ctx.lock_entities(&ids).await?;
            let mut answers = Vec::new();
            for (id, tag) in ids.iter().zip(&plan.in_tags) {
                let check = Check { tag: tag.clone(), expect: Vec::new() };
                answers.push(ctx.call_entity::<_, String>(id, "check", &check).await?);
            }
            lock.release();
            for (id, tag) in ids.iter().zip(&plan.after_tags) {
                ctx.signal_entity(id, "add", tag)?;
            }
            Ok(answers.join("|"))
        })
}

/// Sizes of the entity scenario.
#[derive(Debug, Clone, Copy)]
pub struct EntitySize {
    /// Counters.
    pub entities: usize,
    /// `chaos_worker` processes.
    pub workers: usize,
    /// Client signals (at most: the sender stops 20 s after the last kill).
    pub client_signals: usize,
    /// Share of client and orchestration signals that are relays.
    pub relay_share: f64,
    /// [`SIGNALLER`] orchestrations.
    pub signallers: usize,
    /// Rounds per signaller.
    pub rounds: usize,
    /// Signals per round.
    pub signals_per_round: usize,
    /// [`LOCKER`] orchestrations.
    pub lockers: usize,
    /// SIGKILLs by the harness.
    pub kills: usize,
    /// Gap before each kill, milliseconds (uniform in the range).
    pub kill_gap_ms: (u64, u64),
    /// Storage fault rate of the workers ([`crate::setup::worker_fault_plan`]).
    pub worker_fault_rate: f64,
    /// Probability per crash point that a worker SIGKILLs itself there.
    pub crash_rate: f64,
    /// Share of the client's queue puts that fail, time out or commit and report a timeout.
    pub client_fault_rate: f64,
}

/// The wall-clock time, for a timeline that can be laid beside the workers' logs.
fn wall() -> String {
    let t = OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02}.{:03}", t.hour(), t.minute(), t.second(), t.millisecond())
}

/// The `chaos_worker` processes of the scenario: SIGKILLed by the harness, killing themselves at
/// crash points, restarted under the same id; every event goes to a timeline.
struct Fleet<'a> {
    bin: &'a Path,
    env: &'a ChaosEnv,
    hub: String,
    dir: PathBuf,
    ids: Vec<String>,
    slots: Vec<Option<WorkerProcess>>,
    /// Faulty storage and crash points (off once calm).
    chaos: bool,
    size: EntitySize,
    seed: u64,
    spawns: u64,
    started: Instant,
    timeline: Vec<String>,
    sigkills: u64,
    crash_exits: u64,
}

impl Fleet<'_> {
    fn note(&mut self, what: String) {
        let line = format!("t={:.1}s {} UTC {what}", self.started.elapsed().as_secs_f64(), wall());
        tracing::info!("chaos: {line}");
        self.timeline.push(line);
    }

    fn spawn(&mut self, slot: usize) -> Result<()> {
        self.spawns += 1;
        let mut vars = vec![
            (SEED_VAR, (self.seed * 1000 + self.spawns).to_string()),
            // Plain text: the harness quotes log lines in its report.
            ("NO_COLOR", "1".to_owned()),
        ];
        if self.chaos {
            vars.push((FAULT_RATE_VAR, self.size.worker_fault_rate.to_string()));
            vars.push((CRASH_RATE_VAR, self.size.crash_rate.to_string()));
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // The entity batch events (operations, duplicates per batch) help a diagnosis.
            vars.push(("RUST_LOG", "info,durabletask_core::entity=debug".to_owned()));
        }
        let p = WorkerProcess::spawn_with(
            self.bin,
            self.env,
            &self.hub,
            &self.ids[slot],
            &self.dir,
            &vars,
        )?;
        let what = format!("started {} pid {} chaos={}", self.ids[slot], p.pid(), self.chaos);
        self.slots[slot] = Some(p);
        self.note(what);
        Ok(())
    }

    /// Restarts every worker that died on its own (a crash-point self-kill).
    fn reap(&mut self) -> Result<()> {
        for slot in 0..self.slots.len() {
            let dead = self.slots[slot].as_mut().is_some_and(|p| !p.is_running());
            if dead && let Some(p) = self.slots[slot].take() {
                self.crash_exits += 1;
                let what = format!("{} pid {} died (crash point)", p.worker_id, p.pid());
                drop(p);
                self.note(what);
                self.spawn(slot)?;
            }
        }
        Ok(())
    }

    /// Waits `d`, restarting dead workers every 250 ms.
    async fn watch(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        loop {
            self.reap()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
    }

    fn kill(&mut self, slot: usize) -> Result<()> {
        if let Some(p) = self.slots[slot].take() {
            let what = format!("SIGKILL {} pid {}", p.worker_id, p.pid());
            p.kill()?;
            self.sigkills += 1;
            self.note(what);
        }
        Ok(())
    }

    /// SIGKILLs every worker and starts calm ones (no faults, no crash points) in their place.
    async fn calm(&mut self) -> Result<()> {
        self.reap()?;
        self.chaos = false;
        for slot in 0..self.slots.len() {
            self.kill(slot)?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for slot in 0..self.slots.len() {
            self.spawn(slot)?;
        }
        Ok(())
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for id in &self.ids {
            text.push_str(
                &std::fs::read_to_string(self.dir.join(format!("{id}.log"))).unwrap_or_default(),
            );
        }
        text
    }

    fn stop(&mut self) -> Result<()> {
        for p in self.slots.iter_mut().filter_map(Option::take) {
            p.kill()?;
        }
        Ok(())
    }
}

/// The client's faults: `rate` of its queue puts fail before they are sent, time out, or commit
/// and then report a timeout; 5% are sent twice.
fn client_fault_plan(rate: f64, seed: u64) -> FaultPlan {
    FaultPlan {
        seed,
        error_rate: rate * 0.4,
        timeout_rate: rate * 0.2,
        committed_timeout_rate: rate * 0.4,
        timeout_delay: Duration::from_millis(200),
        duplicate_put_rate: 0.05,
        ops: Some(vec![StorageOp::QueuePut]),
        ..FaultPlan::default()
    }
}

/// The orchestrations of the run, their operations recorded in `ledger` (as sent: their fate
/// is decided by whether they complete).
fn plan(
    size: &EntitySize,
    keys: &[String],
    rng: &mut StdRng,
    ledger: &SignalLedger,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let record = |key: &str, tag: &str, operation, sender: String, relay_to, iid: &str| {
        ledger.record(SentOperation {
            entity: key.to_owned(),
            tag: tag.to_owned(),
            operation,
            sender,
            fate: SendFate::Sent,
            relay_to,
            orchestration: Some(iid.to_owned()),
            at: Duration::ZERO,
        });
    };
    let lockers_every = size.signallers.checked_div(size.lockers).map_or(usize::MAX, |n| n.max(1));
    let mut lockers = 0;
    for i in 0..size.signallers {
        let iid = format!("ek-s-{i:03}");
        let mut rounds = Vec::new();
        for r in 0..size.rounds {
            let mut signals = Vec::new();
            for k in 0..size.signals_per_round {
                let key = keys[rng.gen_range(0..keys.len())].clone();
                let relay_to = rng
                    .gen_bool(size.relay_share)
                    .then(|| keys.iter().filter(|o| **o != key).collect::<Vec<_>>())
                    .and_then(|others| others.choose(rng).map(|o| (*o).clone()));
                let tag = format!("{iid}/{r}.{k}");
                let op = if relay_to.is_some() { "relay" } else { "add" };
                record(
                    &key,
                    &tag,
                    op,
                    format!("{iid} round {r} signal {k}"),
                    relay_to.clone(),
                    &iid,
                );
                signals.push(PlannedSignal { key, tag, relay_to });
            }
            let targets: BTreeSet<&String> = signals.iter().map(|s| &s.key).collect();
            let checks: Vec<(String, String)> =
                targets.into_iter().map(|k| (k.clone(), format!("{iid}/{r}.check.{k}"))).collect();
            for (key, tag) in &checks {
                record(key, tag, "check", format!("{iid} round {r} check (call)"), None, &iid);
            }
            rounds.push(Round { signals, checks });
        }
        let p = SignallerPlan { rounds };
        out.push(Planned {
            instance_id: iid,
            name: SIGNALLER,
            input: serde_json::to_string(&p).unwrap_or_default(),
            output: p.output(),
            top_level: true,
        });
        if (i + 1) % lockers_every == 0 && lockers < size.lockers {
            let iid = format!("ek-l-{lockers:03}");
            lockers += 1;
            let mut chosen: Vec<String> =
                keys.choose_multiple(rng, 2.min(keys.len())).cloned().collect();
            chosen.sort();
            let in_tags: Vec<String> = chosen.iter().map(|k| format!("{iid}/in.{k}")).collect();
            let after_tags: Vec<String> =
                chosen.iter().map(|k| format!("{iid}/after.{k}")).collect();
            for (k, t) in chosen.iter().zip(&in_tags) {
                record(k, t, "check", format!("{iid} critical-section check (call)"), None, &iid);
            }
            for (k, t) in chosen.iter().zip(&after_tags) {
                record(k, t, "add", format!("{iid} signal after release"), None, &iid);
            }
            let p = LockerPlan { keys: chosen, in_tags, after_tags };
            out.push(Planned {
                instance_id: iid,
                name: LOCKER,
                input: serde_json::to_string(&p).unwrap_or_default(),
                output: p.output(),
                top_level: true,
            });
        }
    }
    out
}

/// What the client sender did.
#[derive(Debug, Default, Clone, Copy)]
struct ClientCounts {
    sent: usize,
    unknown: usize,
}

/// The client sender: up to `n` signals, one every `gap`, each with a fresh tag; a failed send is
/// recorded as unknown (never re-sent under the same tag).
struct ClientSender {
    client: TaskHubClient,
    ledger: Arc<SignalLedger>,
    keys: Vec<String>,
    n: usize,
    gap: Duration,
    relay_share: f64,
    seed: u64,
    started: Instant,
    /// Set when the chaos phase is over: the sender stops early (a slow emulator must not
    /// stretch the run).
    stop: Arc<AtomicBool>,
}

async fn client_signals(c: ClientSender) -> ClientCounts {
    let ClientSender { client, ledger, keys, n, gap, relay_share, seed, started, stop } = c;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = ClientCounts::default();
    for i in 0..n {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let tag = format!("c{i}");
        let relay_to = if rng.gen_bool(relay_share) {
            keys.iter()
                .filter(|k| **k != key)
                .collect::<Vec<_>>()
                .choose(&mut rng)
                .map(|k| (*k).clone())
        } else {
            None
        };
        let at = started.elapsed();
        let r = match &relay_to {
            Some(to) => {
                client
                    .signal_entity(
                        &counter(&key),
                        "relay",
                        &Relay { tag: tag.clone(), to: to.clone() },
                    )
                    .await
            }
            None => client.signal_entity(&counter(&key), "add", &tag).await,
        };
        let fate = match r {
            Ok(()) => {
                counts.sent += 1;
                SendFate::Sent
            }
            Err(e) => {
                tracing::warn!(tag, error = %e, "chaos: client signal failed; its fate is unknown");
                counts.unknown += 1;
                SendFate::Unknown
            }
        };
        ledger.record(SentOperation {
            entity: key,
            tag,
            operation: if relay_to.is_some() { "relay" } else { "add" },
            sender: format!("client signal #{i}"),
            fate,
            relay_to,
            orchestration: None,
            at,
        });
        tokio::time::sleep(gap).await;
    }
    counts
}

/// One counter as storage shows it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Observed {
    /// No Instances row at all.
    missing: bool,
    status: String,
    state: CounterState,
    locked_by: Option<String>,
    /// The request id of the critical section holding the lock.
    lock_id: Option<String>,
    backlog: usize,
    out_of_order: usize,
    /// Tags of the requests queued behind the lock.
    queued: BTreeSet<String>,
    /// Tags of the messages waiting for a predecessor.
    waiting: BTreeSet<String>,
    /// The state in the current execution's `ExecutionStarted` in History (what the entity's
    /// next batch starts from); `None` when it could not be read.
    history_state: Option<CounterState>,
    /// Receive streams: (stream id, sender, delivered ranges).
    received: Vec<(String, String, String)>,
    /// Send streams: (destination, stream id, last number).
    sent: Vec<(String, String, u64)>,
    input_chars: usize,
    /// The state did not parse.
    corrupt: Option<String>,
}

impl Observed {
    /// The entity's own state: History's current execution (what its next batch starts from),
    /// or the Instances row when History could not be read.
    fn truth(&self) -> &CounterState {
        self.history_state.as_ref().unwrap_or(&self.state)
    }
}

/// The tag in an operation input (`"tag"` or `{"tag": ...}`).
fn tag_of(input: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(input).ok()? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(m) => m.get("tag")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The tags of every operation input found under `v`.
fn tags_under(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x.as_str()) {
                    ("input", Some(input)) => out.extend(tag_of(input)),
                    _ => tags_under(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| tags_under(x, out)),
        _ => {}
    }
}

/// Reads the stored scheduler state's JSON (DTF field names) for what the typed view does not
/// show: the lock id and which operations are queued or waiting.
fn read_raw(input: &str, o: &mut Observed) {
    let Ok(raw) = serde_json::from_str::<serde_json::Value>(input) else { return };
    o.lock_id = raw.get("lockId").and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(queue) = raw.get("queue") {
        tags_under(queue, &mut o.queued);
    }
    if let Some(received) = raw.pointer("/sorter/received") {
        tags_under(received, &mut o.waiting);
        if let Some(m) = received.as_object() {
            for (stream, r) in m {
                let sender = r.get("sender").and_then(|v| v.as_str()).unwrap_or("client");
                let delivered = r.get("delivered").map(ToString::to_string).unwrap_or_default();
                o.received.push((stream.clone(), sender.to_owned(), delivered));
            }
        }
    }
    if let Some(m) = raw.pointer("/sorter/sent").and_then(|v| v.as_object()) {
        for (dest, st) in m {
            let stream = st.get("stream").and_then(|v| v.as_str()).unwrap_or_default();
            let seq = st.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(0);
            o.sent.push((dest.clone(), stream.to_owned(), seq));
        }
    }
}

/// The counter state an entity execution's input holds.
fn counter_state_of(input: Option<&str>) -> std::result::Result<CounterState, String> {
    let s = SchedulerState::from_input(input)?;
    s.state()
        .map(serde_json::from_str::<CounterState>)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| e.to_string())
}

async fn observe(
    svc: &AzureStorageOrchestrationService,
    keys: &[String],
) -> Result<BTreeMap<String, Observed>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let iid = counter(key).instance_id();
        let row = audit::retry(|| svc.get_state(&iid, true)).await?;
        let Some(row) = row else {
            out.insert(key.clone(), Observed { missing: true, ..Observed::default() });
            continue;
        };
        let mut o = Observed {
            status: row.orchestration_status.as_str().to_owned(),
            input_chars: row.input.as_deref().map_or(0, str::len),
            ..Observed::default()
        };
        read_raw(row.input.as_deref().unwrap_or("null"), &mut o);
        match SchedulerState::from_input(row.input.as_deref()) {
            Ok(s) => {
                o.locked_by = s.locked_by().map(str::to_owned);
                o.backlog = s.backlog();
                o.out_of_order = s.out_of_order();
                match s.state().map(serde_json::from_str::<CounterState>).transpose() {
                    Ok(state) => o.state = state.unwrap_or_default(),
                    Err(e) => o.corrupt = Some(e.to_string()),
                }
            }
            Err(e) => o.corrupt = Some(e),
        }
        let history = audit::retry(|| svc.get_history(&iid, None)).await?;
        let started = history.iter().rev().find_map(|e| match &e.kind {
            EventKind::ExecutionStarted(s) => Some(s.input.clone()),
            _ => None,
        });
        o.history_state = started.and_then(|input| counter_state_of(input.as_deref()).ok());
        out.insert(key.clone(), o);
    }
    Ok(out)
}

/// Whether every counter is idle: nothing locked, queued behind a lock or waiting for a
/// predecessor, and every operation known as sent applied at least once.
fn idle(obs: &BTreeMap<String, Observed>, ops: &[SentOperation]) -> bool {
    let count = |key: &str, tag: &str| obs.get(key).map_or(0, |o| o.truth().count(tag));
    obs.values().all(|o| o.locked_by.is_none() && o.backlog == 0 && o.out_of_order == 0)
        && ops.iter().all(|op| op.fate == SendFate::Unknown || count(&op.entity, &op.tag) > 0)
}

/// Waits until the queues are empty and the counters idle, and stay so for `settle` (longer
/// than the visibility timeout, so a redelivered copy would have been applied); returns the
/// last observation and whether it was quiescent. Gives up after `timeout`, or once the queues
/// have been empty and the counters unchanged for `stall` without being idle (an entity locked
/// for good).
async fn quiesce(
    hub: &TestHub,
    keys: &[String],
    ops: &[SentOperation],
    timeout: Duration,
    settle: Duration,
    stall: Duration,
) -> Result<(BTreeMap<String, Observed>, bool)> {
    let deadline = Instant::now() + timeout;
    let mut still = Duration::ZERO;
    let mut last = observe(&hub.admin, keys).await?;
    loop {
        let residue = audit::queue_residue(&hub.admin).await.unwrap_or(u64::MAX);
        if residue == 0 && idle(&last, ops) {
            tokio::time::sleep(settle).await;
            let again = observe(&hub.admin, keys).await?;
            let residue = audit::queue_residue(&hub.admin).await.unwrap_or(u64::MAX);
            if again == last && residue == 0 {
                return Ok((again, true));
            }
            last = again;
            continue;
        }
        if residue == 0 {
            still += Duration::from_secs(1);
        } else {
            still = Duration::ZERO;
        }
        if Instant::now() >= deadline || still >= stall {
            return Ok((last, false));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = observe(&hub.admin, keys).await?;
        if now != last {
            still = Duration::ZERO;
        }
        last = now;
    }
}

/// The comparison of the [`SignalLedger`] with the counters.
#[derive(Debug, Default)]
struct EntityAudit {
    sent: usize,
    unknown: usize,
    unknown_applied: usize,
    applied: u64,
    doubles: usize,
    losses: usize,
    /// Entities whose Instances row (what `get_entity` reads) is behind History.
    stale_rows: usize,
    /// Known-sent operations not applied because they are still queued behind a lock or
    /// waiting for a predecessor (the run did not finish; not a loss yet).
    queued: usize,
    phantoms: usize,
    relays: usize,
    /// (entity key, finding) for the report.
    problems: Vec<(String, String)>,
    /// Counters a loss, double or phantom involves (the relaying one too).
    involved: BTreeSet<String>,
    /// (relaying counter, stream id) of each copy of a doubled relay: a stream is named after
    /// the relaying counter's execution when it opened it, so its log lines with that
    /// `execution_id` show the batch that sent the copy.
    streams: BTreeSet<(String, String)>,
}

fn audit_entities(
    ops: &[SentOperation],
    incomplete: &BTreeSet<String>,
    obs: &BTreeMap<String, Observed>,
) -> EntityAudit {
    let mut a = EntityAudit::default();
    let count = |key: &str, tag: &str| obs.get(key).map_or(0, |o| o.truth().count(tag));
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for op in ops {
        let fate = match &op.orchestration {
            Some(iid) if incomplete.contains(iid) => SendFate::Unknown,
            _ => op.fate,
        };
        match fate {
            SendFate::Sent => a.sent += 1,
            SendFate::Unknown => a.unknown += 1,
        }
        expected.insert((op.entity.clone(), op.tag.clone()));
        let n = count(&op.entity, &op.tag);
        let what = format!(
            "{} {} {:?} to {} (issued at t={:.1}s, {:?})",
            op.sender,
            op.operation,
            op.tag,
            counter(&op.entity),
            op.at.as_secs_f64(),
            fate
        );
        let o = obs.get(&op.entity);
        match (fate, n) {
            (SendFate::Sent, 0) if o.is_some_and(|o| o.queued.contains(&op.tag)) => {
                a.queued += 1;
                let holder = o.and_then(|o| o.locked_by.clone()).unwrap_or_default();
                a.problems.push((
                    op.entity.clone(),
                    format!("NOT APPLIED: {what}: still queued behind the lock of {holder}"),
                ));
            }
            (SendFate::Sent, 0) if o.is_some_and(|o| o.waiting.contains(&op.tag)) => {
                a.queued += 1;
                a.problems.push((
                    op.entity.clone(),
                    format!("NOT APPLIED: {what}: still waiting for a predecessor"),
                ));
            }
            (SendFate::Sent, 0) => {
                a.losses += 1;
                a.problems.push((op.entity.clone(), format!("LOST: {what}: applied 0 times")));
            }
            (_, n) if n > 1 => {
                a.doubles += 1;
                a.problems.push((op.entity.clone(), format!("DOUBLED: {what}: applied {n} times")));
            }
            (SendFate::Unknown, 1) => a.unknown_applied += 1,
            _ => {}
        }
        if let Some(to) = &op.relay_to {
            a.relays += 1;
            let rt = relayed_tag(&op.tag, to);
            expected.insert((to.clone(), rt.clone()));
            let m = count(to, &rt);
            let what = format!(
                "entity-to-entity signal {rt:?} from {} to {} (relay of {})",
                counter(&op.entity),
                counter(to),
                op.sender
            );
            let held =
                obs.get(to).is_some_and(|o| o.queued.contains(&rt) || o.waiting.contains(&rt));
            if n >= 1 && m == 0 && held {
                a.queued += 1;
                a.problems
                    .push((to.clone(), format!("NOT APPLIED: {what}: still queued or waiting")));
            } else if n >= 1 && m == 0 {
                a.losses += 1;
                a.problems.push((to.clone(), format!("LOST: {what}: applied 0 times")));
            } else if m > 1 {
                a.doubles += 1;
                let (from, dest) = (counter(&op.entity).instance_id(), counter(to).instance_id());
                let target = obs.get(to);
                let srcs = target.and_then(|o| o.truth().sources.get(&rt)).cloned();
                let streams_in: Vec<String> = target
                    .map(|o| {
                        o.received
                            .iter()
                            .filter(|(_, sender, _)| *sender == from)
                            .map(|(st, _, d)| {
                                a.streams.insert((op.entity.clone(), st.clone()));
                                format!("{st} delivered {d}")
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let stream_out = obs
                    .get(&op.entity)
                    .and_then(|o| o.sent.iter().find(|(d, _, _)| *d == dest))
                    .map(|(_, st, n)| format!("{st} at #{n}"));
                a.problems.push((
                    to.clone(),
                    format!(
                        "DOUBLED: {what}: applied {m} times (the relaying counter's operation count at each relay: {srcs:?}; {dest}'s receive streams from {from}: {streams_in:?}; {from}'s send stream to {dest}: {stream_out:?})"
                    ),
                ));
            } else if n == 0 && m == 1 {
                a.phantoms += 1;
                a.problems.push((
                    to.clone(),
                    format!("PHANTOM: {what}: applied though the relay was not"),
                ));
            }
        }
    }
    for (key, p) in &a.problems {
        if ["LOST", "DOUBLED", "PHANTOM"].iter().any(|w| p.starts_with(w)) {
            a.involved.insert(key.clone());
            for k in obs.keys() {
                if p.contains(&counter(k).instance_id()) {
                    a.involved.insert(k.clone());
                }
            }
        }
    }
    for (key, o) in obs {
        let row = &o.state;
        let o_truth = o.truth();
        if !o.missing && o.history_state.as_ref().is_some_and(|h| h != row) {
            let behind: Vec<&String> =
                o_truth.applied.keys().filter(|t| row.count(t) < o_truth.count(t)).collect();
            a.stale_rows += 1;
            a.problems.push((
                key.clone(),
                format!(
                    "{}: Instances row behind History: get_entity shows {} operations, the current execution in History {}; applied in History but not shown: {behind:?}",
                    counter(key),
                    row.ops,
                    o_truth.ops
                ),
            ));
        }
        a.applied += o_truth.ops;
        let id = counter(key);
        for (tag, n) in &o_truth.applied {
            if !expected.contains(&(key.clone(), tag.clone())) {
                a.phantoms += 1;
                a.problems.push((
                    key.clone(),
                    format!("PHANTOM: {id} applied {tag:?} {n} times; nobody sent it"),
                ));
            }
        }
        let sum: u64 = o_truth.applied.values().map(|n| u64::from(*n)).sum();
        if sum != o_truth.ops {
            a.problems.push((
                key.clone(),
                format!("{id}: {} operations counted, {sum} recorded per tag", o_truth.ops),
            ));
        }
        if o.missing {
            a.problems.push((key.clone(), format!("{id}: no Instances row")));
        }
        if let Some(e) = &o.corrupt {
            a.problems.push((key.clone(), format!("{id}: state does not parse: {e}")));
        }
        if let Some(holder) = &o.locked_by {
            a.problems.push((
                key.clone(),
                format!("{id}: left locked by {holder} (lock request id {:?})", o.lock_id),
            ));
        }
        if o.backlog > 0 {
            a.problems
                .push((key.clone(), format!("{id}: {} requests queued behind a lock", o.backlog)));
        }
        if o.out_of_order > 0 {
            a.problems.push((
                key.clone(),
                format!("{id}: {} messages wait for a predecessor", o.out_of_order),
            ));
        }
        if !o.missing && o.status != OrchestrationStatus::Running.as_str() {
            a.problems.push((key.clone(), format!("{id}: status {}", o.status)));
        }
    }
    a
}

/// A request to an entity in an orchestration's committed history.
#[derive(Debug, Clone)]
struct SentRequest {
    event_id: i32,
    to: String,
    request_id: String,
    /// `call`, `lock` or `signal`.
    kind: &'static str,
    seq: u64,
    tag: Option<String>,
    /// An `EventRaised` named after the request id is in the history.
    answered: bool,
}

/// The entity requests in `iid`'s history, and its event count.
async fn requests_of(
    svc: &AzureStorageOrchestrationService,
    iid: &str,
) -> Result<(Vec<SentRequest>, usize)> {
    let history = audit::retry(|| svc.get_history(iid, None)).await?;
    let raised: BTreeSet<&str> = history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::EventRaised { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for e in &history {
        let EventKind::EventSent { instance_id, name, input } = &e.kind else { continue };
        if name != "op" {
            continue;
        }
        let Some(v) =
            input.as_deref().and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        else {
            continue;
        };
        let request_id = v.get("id").and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        let kind = if v.get("op").is_none() {
            "lock"
        } else if v.get("signal").and_then(serde_json::Value::as_bool).unwrap_or(false) {
            "signal"
        } else {
            "call"
        };
        out.push(SentRequest {
            event_id: e.event_id,
            to: instance_id.clone(),
            answered: raised.contains(request_id.as_str()),
            request_id,
            kind,
            seq: v.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(0),
            tag: v.get("input").and_then(|x| x.as_str()).and_then(tag_of),
        });
    }
    Ok((out, history.len()))
}

/// For every orchestration that did not complete, and every entity left locked: what the
/// committed histories show (open requests, lock ids) against what the entities recorded.
async fn diagnose(
    svc: &AzureStorageOrchestrationService,
    incomplete: &BTreeSet<String>,
    obs: &BTreeMap<String, Observed>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut requests = BTreeMap::new();
    for iid in incomplete {
        let (reqs, events) = requests_of(svc, iid).await?;
        let state = audit::retry(|| svc.get_state(iid, true)).await?;
        let status = state.as_ref().map_or("missing", |s| s.orchestration_status.as_str());
        let open: Vec<String> = reqs
            .iter()
            .filter(|r| r.kind != "signal" && !r.answered)
            .map(|r| {
                let key = EntityId::from_instance_id(&r.to)
                    .map(|e| e.key().to_owned())
                    .unwrap_or_default();
                let applied = match (&r.tag, obs.get(&key)) {
                    (Some(tag), Some(o)) => {
                        format!(
                            ", the entity applied its tag {tag:?} {} times",
                            o.truth().count(tag)
                        )
                    }
                    _ => String::new(),
                };
                format!(
                    "{} {} (event #{}, seq {}) to {}{applied}",
                    r.kind, r.request_id, r.event_id, r.seq, r.to
                )
            })
            .collect();
        let output: String = state
            .as_ref()
            .and_then(|s| s.output.clone())
            .unwrap_or_default()
            .chars()
            .take(400)
            .collect();
        out.push(format!(
            "{iid}: {status}, {events} history events; requests without a response in history: [{}]{}",
            open.join("; "),
            if output.is_empty() { String::new() } else { format!("; output {output:?}") }
        ));
        requests.insert(iid.clone(), reqs);
    }
    let mut locked = Vec::new();
    for (key, o) in obs {
        let (Some(holder), Some(lock_id)) = (&o.locked_by, &o.lock_id) else { continue };
        let reqs = match requests.get(holder) {
            Some(r) => r.clone(),
            None => requests_of(svc, holder).await?.0,
        };
        let locks: Vec<&SentRequest> = reqs.iter().filter(|r| r.kind == "lock").collect();
        if locks.iter().any(|r| &r.request_id == lock_id) {
            continue;
        }
        let sent: Vec<String> = locks
            .iter()
            .map(|r| format!("{} (event #{}, seq {} to {})", r.request_id, r.event_id, r.seq, r.to))
            .collect();
        locked.push(format!(
            "{} is locked by {holder} under lock request id {lock_id}, which {holder}'s committed \
             history never sent; it sent lock request(s) [{}]: the lock was granted to a copy from \
             a checkpoint attempt that did not commit, whose response {holder} drops as stale",
            counter(key),
            sent.join("; ")
        ));
    }
    // The locks first: they explain most of the rest.
    locked.extend(out);
    Ok(locked)
}

/// Waits for the planned orchestrations like the workload auditor, but gives up early once
/// nothing has changed for `stall` with the queues empty (a stuck orchestration then stays
/// stuck; waiting out the whole timeout proves nothing more).
async fn wait_orchestrations(
    hub: &TestHub,
    planned: &[Planned],
    timeout: Duration,
    stall: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    let mut still = Duration::ZERO;
    loop {
        let step = Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()));
        let done = audit::wait_terminal(&hub.admin, planned, step).await?;
        if done == planned.len() || Instant::now() >= deadline {
            return Ok(done);
        }
        let residue = audit::queue_residue(&hub.admin).await.unwrap_or(u64::MAX);
        if done == last && residue == 0 {
            still += step;
            if still >= stall {
                return Ok(done);
            }
        } else {
            still = Duration::ZERO;
        }
        last = done;
    }
}

/// Log lines about orchestration `iid` that explain a stuck or failed instance: failed
/// checkpoints (after their messages were sent), discarded messages, crash-point kills.
fn orchestration_evidence(logs: &str, iid: &str) -> Vec<String> {
    let quoted = format!("instance_id=\"{iid}\"");
    let plain = format!("instance_id={iid} ");
    logs.lines()
        .filter(|l| l.contains(&quoted) || l.contains(&plain))
        .filter(|l| {
            ["ProcessWorkItemFailed", "stale or duplicates", "NonDeterministic", SELF_KILL_LOG]
                .iter()
                .any(|w| l.contains(w))
        })
        .take(5)
        .map(|l| l.chars().take(400).collect())
        .collect()
}

/// Log lines of entity `key` about crash-point kills, failed checkpoints (their messages were
/// sent, their state not committed) and split-brain aborts.
fn failure_lines<'a>(logs: &'a str, key: &str) -> impl Iterator<Item = &'a str> {
    let iid = counter(key).instance_id();
    let quoted = format!("instance_id=\"{iid}\"");
    let plain = format!("instance_id={iid} ");
    logs.lines().filter(move |l| {
        (l.contains(&quoted) || l.contains(&plain))
            && [SELF_KILL_LOG, "ProcessWorkItemFailed", "SplitBrain"].iter().any(|w| l.contains(w))
    })
}

/// The failure lines of the batch of entity `key` on `execution`.
fn batch_evidence(logs: &str, key: &str, execution: &str) -> Vec<String> {
    let exec = format!("execution_id=\"{execution}\"");
    failure_lines(logs, key).filter(|l| l.contains(&exec)).take(4).map(str::to_owned).collect()
}

/// The first failure lines of entity `key`, shortened.
fn evidence(logs: &str, key: &str) -> Vec<String> {
    failure_lines(logs, key).take(8).map(|l| l.chars().take(400).collect()).collect()
}

/// `workers` `chaos_worker` processes over faulty storage, killing themselves at crash points
/// and SIGKILLed by the harness, serve counters that a faulty client and orchestrations signal
/// and call; see the [module docs](self) for the audit.
///
/// # Errors
/// When the harness fails.
pub async fn entity_kill(
    env: &ChaosEnv,
    worker_bin: &Path,
    profile: &Profile,
    seed: u64,
) -> Result<ScenarioReport> {
    let started = Instant::now();
    let size = profile.entities;
    let mut report = ScenarioReport::new("entity-kill", seed);
    let hub = TestHub::create(env, "entitykill").await?;
    let dir = log_dir(&hub.hub);
    let keys: Vec<String> = (0..size.entities).map(|j| format!("k{j}")).collect();
    let ledger = Arc::new(SignalLedger::default());
    let mut rng = StdRng::seed_from_u64(seed);
    let planned = plan(&size, &keys, &mut rng, &ledger);

    let mut fleet = Fleet {
        bin: worker_bin,
        env,
        hub: hub.hub.as_str().to_owned(),
        dir: dir.clone(),
        ids: (0..size.workers).map(|i| format!("ek{i}")).collect(),
        slots: (0..size.workers).map(|_| None).collect(),
        chaos: true,
        size,
        seed,
        spawns: 0,
        started,
        timeline: Vec::new(),
        sigkills: 0,
        crash_exits: 0,
    };
    for slot in 0..size.workers {
        fleet.spawn(slot)?;
    }

    // The client: its own provider, over storage whose queue puts fail.
    let settings = hub.settings("entity-client");
    let base = hub.stack(&settings);
    let faulty = FaultyStorage::over(&base, client_fault_plan(size.client_fault_rate, seed + 7));
    let svc = AzureStorageOrchestrationService::with_storage(settings, faulty.stack(&base))?;
    let client = TaskHubClient::new(Arc::new(svc));
    let avg_gap = (size.kill_gap_ms.0 + size.kill_gap_ms.1) / 2 + 1000;
    let phase = Duration::from_millis(avg_gap * u64::try_from(size.kills.max(1)).unwrap_or(1));
    let gap = phase / u32::try_from(size.client_signals.max(1)).unwrap_or(u32::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(client_signals(ClientSender {
        client,
        ledger: ledger.clone(),
        keys: keys.clone(),
        n: size.client_signals,
        gap,
        relay_share: size.relay_share,
        seed: seed + 3,
        started,
        stop: stop.clone(),
    }));

    // Orchestrations in waves, one before each kill, so every kill lands on work in flight.
    let wave = planned.len().div_ceil(size.kills + 1).max(1);
    let mut waves = planned.chunks(wave);
    for _ in 0..size.kills {
        if let Some(w) = waves.next() {
            workload::start_all(&hub.client(), w).await?;
        }
        fleet
            .watch(Duration::from_millis(rng.gen_range(size.kill_gap_ms.0..=size.kill_gap_ms.1)))
            .await?;
        let slot = rng.gen_range(0..size.workers);
        fleet.kill(slot)?;
        fleet.watch(Duration::from_secs(1)).await?;
        fleet.spawn(slot)?;
    }
    for w in waves {
        workload::start_all(&hub.client(), w).await?;
    }
    let grace = Instant::now() + Duration::from_secs(20);
    while !sender.is_finished() && Instant::now() < grace {
        fleet.watch(Duration::from_millis(250)).await?;
    }
    stop.store(true, Ordering::Release);
    let counts = sender.await.map_err(|e| ChaosError::Harness(format!("client sender: {e}")))?;
    // Let the chaos run a little longer on the last signals, then calm workers finish the rest.
    fleet.watch(Duration::from_secs(3)).await?;
    fleet.calm().await?;
    faulty.set_enabled(false);
    let client_faults: FaultStats = faulty.stats();

    wait_orchestrations(&hub, &planned, profile.timeout, Duration::from_secs(40)).await?;
    hub.audit_into(&mut report, &planned, Duration::ZERO).await?;
    let mut incomplete = BTreeSet::new();
    for p in &planned {
        let done = audit::retry(|| hub.admin.get_state(&p.instance_id, false))
            .await?
            .is_some_and(|s| s.orchestration_status == OrchestrationStatus::Completed);
        if !done {
            incomplete.insert(p.instance_id.clone());
        }
    }
    let ops = ledger.operations();
    let sure: Vec<SentOperation> = ops
        .iter()
        .filter(|o| o.orchestration.as_ref().is_none_or(|i| !incomplete.contains(i)))
        .cloned()
        .collect();
    let (obs, quiet) = quiesce(
        &hub,
        &keys,
        &sure,
        Duration::from_secs(120),
        Duration::from_secs(12),
        Duration::from_secs(30),
    )
    .await?;
    if !quiet {
        report.fail(format!(
            "the counters did not settle (queue residue {}, or an entity still locked, queued or waiting for a predecessor, or an operation known as sent not applied)",
            audit::queue_residue(&hub.admin).await.unwrap_or(u64::MAX)
        ));
    }
    let mut a = audit_entities(&ops, &incomplete, &obs);
    // Entity-level findings (locks, backlogs) first: they explain the operation findings.
    a.problems.sort_by_key(|(_, p)| !p.starts_with('@'));
    let diagnosis = diagnose(&hub.admin, &incomplete, &obs).await?;
    let logs = fleet.logs();
    fleet.stop()?;
    count_logs(&mut report, &logs);
    let self_kills = crate::logs::count_in_text(&logs, SELF_KILL_LOG);

    report.k = fleet.sigkills + fleet.crash_exits;
    report.extra("entities", size.entities);
    report.extra("workers", size.workers);
    report.extra("client_signals_sent", counts.sent);
    report.extra("client_signals_unknown", counts.unknown);
    report.extra("ops_sent", a.sent);
    report.extra("ops_unknown", a.unknown);
    report.extra("unknown_applied", a.unknown_applied);
    report.extra("relays", a.relays);
    report.extra("applied", a.applied);
    report.extra("losses", a.losses);
    report.extra("doubles", a.doubles);
    report.extra("phantoms", a.phantoms);
    report.extra("stale_rows", a.stale_rows);
    report.extra("sigkills", fleet.sigkills);
    report.extra("crash_exits", fleet.crash_exits);
    report.extra("self_kill_logs", self_kills);
    report.extra("max_entity_input_chars", obs.values().map(|o| o.input_chars).max().unwrap_or(0));
    report.extra("client_faults", format!("[{client_faults}]"));
    report.extra("residual_msgs", audit::queue_residue(&hub.admin).await.unwrap_or(0));

    report.extra("not_applied_yet", a.queued);
    report.extra("incomplete_orchestrations", incomplete.len());
    for d in diagnosis.iter().take(16) {
        report.fail(format!("diagnosis: {d}"));
    }
    for iid in incomplete.iter().take(4) {
        for line in orchestration_evidence(&logs, iid) {
            report.fail(format!("evidence {iid}: {line}"));
        }
    }
    let failed_entities = a.involved.clone();
    for (_, p) in a.problems.iter().take(30) {
        report.fail(p.clone());
    }
    if a.problems.len() > 30 {
        report.fail(format!("... and {} more entity findings", a.problems.len() - 30));
    }
    let keep_logs = !report.passed();
    if !a.problems.is_empty() {
        for (key, stream) in &a.streams {
            for line in batch_evidence(&logs, key, stream) {
                report.fail(format!(
                    "evidence: the batch of {} on execution {stream} (which named the stream of a copy): {line}",
                    counter(key)
                ));
            }
        }
        for key in &failed_entities {
            for line in evidence(&logs, key) {
                report.fail(format!("evidence {}: {line}", counter(key)));
            }
        }
        report.fail(format!("kill timeline: {}", fleet.timeline.join("; ")));
    }
    if keep_logs {
        let mut full = diagnosis.join("\n");
        full.push('\n');
        for (_, p) in &a.problems {
            full.push_str(p);
            full.push('\n');
        }
        full.push_str(&fleet.timeline.join("\n"));
        let _ = std::fs::write(dir.join("findings.txt"), full);
        report.fail(format!("worker logs and findings.txt kept in {}", dir.display()));
    }
    hub.delete().await;
    if !keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.wall = started.elapsed();
    Ok(report)
}

#[cfg(test)]
#[path = "entities_tests.rs"]
mod tests;
