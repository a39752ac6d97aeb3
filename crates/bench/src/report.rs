//! Results: per-workload figures, the storage bound, the targets, the table and the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use durabletask_azure_storage::storage::{StorageOp, StorageOpCounts};
use serde::Serialize;

use crate::probe::{ProbeResult, proxy_for};
use crate::sys::Machine;
use crate::{Error, Result};

/// Storage operations of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct OpsBreakdown {
    /// All counted calls (worker and in-process client; completion polling excluded).
    pub total: u64,
    /// Calls by kind (`StorageOp::name`), non-zero kinds only.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// `total / orchestrations`.
    pub per_orchestration: f64,
    /// `by_kind / orchestrations` (all zero for E1 and E2, which start no orchestration).
    pub per_orchestration_by_kind: BTreeMap<&'static str, f64>,
    /// `total / activities`, when the workload runs activities.
    pub per_activity: Option<f64>,
    /// `total / events`, when the workload raises events.
    pub per_event: Option<f64>,
    /// `total / entity_operations`, when the workload signals entities (E1, E2).
    pub per_entity_operation: Option<f64>,
    /// `by_kind / entity_operations` (empty when the workload signals no entity).
    pub per_entity_operation_by_kind: BTreeMap<&'static str, f64>,
    /// Calls of the separate completion poller (reported, not counted above).
    pub poller_total: Option<u64>,
    #[serde(skip)]
    pub(crate) counts: StorageOpCounts,
}

impl OpsBreakdown {
    pub(crate) fn new(
        counts: StorageOpCounts,
        orchestrations: u64,
        activities: u64,
        events: u64,
        entity_operations: u64,
        poller_total: Option<u64>,
    ) -> Self {
        let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let by_kind: BTreeMap<_, _> =
            counts.non_zero().into_iter().map(|(op, n)| (op.name(), n)).collect();
        let per_entity_operation_by_kind = if entity_operations > 0 {
            by_kind.iter().map(|(k, n)| (*k, per(*n, entity_operations))).collect()
        } else {
            BTreeMap::new()
        };
        Self {
            total: counts.total(),
            per_orchestration: per(counts.total(), orchestrations),
            per_orchestration_by_kind: by_kind
                .iter()
                .map(|(k, n)| (*k, per(*n, orchestrations)))
                .collect(),
            by_kind,
            per_activity: (activities > 0).then(|| per(counts.total(), activities)),
            per_event: (events > 0).then(|| per(counts.total(), events)),
            per_entity_operation: (entity_operations > 0)
                .then(|| per(counts.total(), entity_operations)),
            per_entity_operation_by_kind,
            poller_total,
            counts,
        }
    }
}

/// W5: start-to-completion latency.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Runs measured.
    pub runs: usize,
    /// Median in ms.
    pub p50_ms: f64,
    /// 99th percentile in ms (the maximum below 100 runs).
    pub p99_ms: f64,
    /// Mean in ms.
    pub mean_ms: f64,
    /// Fastest run in ms.
    pub min_ms: f64,
    /// Slowest run in ms.
    pub max_ms: f64,
    /// Resolution: interval between completion polls, in ms.
    pub poll_interval_ms: f64,
    /// Idle time before each run, in ms.
    pub idle_before_run_ms: f64,
}

impl Latency {
    /// Percentiles (nearest rank) of `samples_ms`.
    pub fn from_samples(samples_ms: &[f64], poll_interval_ms: f64, idle_ms: f64) -> Self {
        let mut s = samples_ms.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            if s.is_empty() {
                return 0.0;
            }
            let r = (p * s.len() as f64).ceil().max(1.0) as usize;
            s[r.min(s.len()) - 1]
        };
        Self {
            runs: s.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            mean_ms: if s.is_empty() { 0.0 } else { s.iter().sum::<f64>() / s.len() as f64 },
            min_ms: s.first().copied().unwrap_or(0.0),
            max_ms: s.last().copied().unwrap_or(0.0),
            poll_interval_ms,
            idle_before_run_ms: idle_ms,
        }
    }
}

/// W4: per-activity cost early vs late in a long history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryGrowth {
    /// Activities in each window.
    pub window: usize,
    /// Mean time from one activity's start to the next's, first window, ms.
    pub first_ms_per_activity: f64,
    /// Same, last window.
    pub last_ms_per_activity: f64,
    /// `last / first`.
    pub time_ratio: f64,
    /// Storage calls per activity, first window (counted providers only).
    pub first_ops_per_activity: Option<f64>,
    /// Same, last window.
    pub last_ops_per_activity: Option<f64>,
    /// `last / first` of the storage calls.
    pub ops_ratio: Option<f64>,
    /// Calls per activity by kind, first window.
    pub first_ops_by_kind: BTreeMap<&'static str, f64>,
    /// Calls per activity by kind, last window.
    pub last_ops_by_kind: BTreeMap<&'static str, f64>,
}

/// Operations per second on one entity that Durable Functions publishes as its target (the
/// "64 operations/s" of its performance and scale documentation); E1 is compared with it.
pub const DF_ENTITY_OPS_PER_SEC: f64 = 64.0;

/// E1, E2: counter entities signalled by the client.
#[derive(Debug, Clone, Serialize)]
pub struct EntityRun {
    /// Counter entities signalled.
    pub entities: u64,
    /// Signals sent, each one `add 1` (and, checked, the operations applied).
    pub operations: u64,
    /// Concurrent client sends.
    pub client_concurrency: usize,
    /// From the first send to the last send acknowledged, in seconds.
    pub send_seconds: f64,
    /// Checkpointed batches that applied operations, summed over the entities (each counter
    /// counts the batches it saw: all operations of a batch share the batch's time).
    pub batches: u64,
    /// `operations / batches`.
    pub operations_per_batch: f64,
    /// E1 (one entity): its operations per second divided by [`DF_ENTITY_OPS_PER_SEC`]. `None`
    /// for E2, whose operations are spread over many entities.
    pub df_target_ratio: Option<f64>,
}

/// Figures of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// `W1` ... `W5`.
    pub workload: &'static str,
    /// What it does.
    pub description: &'static str,
    /// The task hub it ran in.
    pub task_hub: String,
    /// Orchestrations started.
    pub orchestrations: u64,
    /// Activities executed (as scheduled by the orchestrations).
    pub activities: u64,
    /// External events raised.
    pub events: u64,
    /// Entity operations (signals) applied (E1, E2).
    pub entity_operations: u64,
    /// Orchestrations that completed with the expected output (E1, E2: entities whose counter
    /// ended at exactly the signals sent to it).
    pub completed: u64,
    /// Orchestrations that failed, were terminated or produced a wrong output (E1, E2: a wrong
    /// counter fails the whole workload, with `error` set).
    pub failed: u64,
    /// From the first start to the last observed completion, in seconds.
    pub wall_seconds: f64,
    /// `orchestrations / wall_seconds`.
    pub orchestrations_per_sec: f64,
    /// `activities / wall_seconds`.
    pub activities_per_sec: Option<f64>,
    /// `events / wall_seconds`.
    pub events_per_sec: Option<f64>,
    /// `entity_operations / wall_seconds`.
    pub entity_operations_per_sec: Option<f64>,
    /// Storage calls (Azure provider only).
    pub storage_ops: Option<OpsBreakdown>,
    /// Peak resident set size while the workload ran, KiB (`VmHWM`).
    pub peak_rss_kib: Option<u64>,
    /// Whether the peak was reset before the workload (otherwise: peak since process start).
    pub peak_rss_reset: bool,
    /// W5 only.
    pub latency: Option<Latency>,
    /// W4 only.
    pub history_growth: Option<HistoryGrowth>,
    /// E1 and E2 only.
    pub entities: Option<EntityRun>,
    /// Why the workload did not finish (its figures are then zero).
    pub error: Option<String>,
}

impl WorkloadResult {
    /// The result of a workload that could not finish.
    pub fn failed(w: crate::Workload, error: String) -> Self {
        Self {
            workload: w.id(),
            description: w.description(),
            task_hub: String::new(),
            orchestrations: 0,
            activities: 0,
            events: 0,
            entity_operations: 0,
            completed: 0,
            failed: 1,
            wall_seconds: 0.0,
            orchestrations_per_sec: 0.0,
            activities_per_sec: None,
            events_per_sec: None,
            entity_operations_per_sec: None,
            storage_ops: None,
            peak_rss_kib: None,
            peak_rss_reset: false,
            latency: None,
            history_growth: None,
            entities: None,
            error: Some(error),
        }
    }
}

/// One kind's share of the W1 storage bound.
#[derive(Debug, Clone, Serialize)]
pub struct BoundTerm {
    /// The counted kind.
    pub op: &'static str,
    /// Calls of this kind per orchestration.
    pub ops_per_orchestration: f64,
    /// The probed kind whose rate is used.
    pub rate_from: &'static str,
    /// That rate, calls/s.
    pub capacity_ops_per_sec: f64,
    /// Storage-milliseconds per orchestration spent on this kind.
    pub ms_per_orchestration: f64,
}

/// The throughput the storage allows for a workload, and how close the provider came.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    /// The workload (W1).
    pub workload: &'static str,
    /// Storage-seconds one orchestration needs at the probed capacity.
    pub storage_ms_per_orchestration: f64,
    /// `1 / storage_seconds_per_orchestration`.
    pub bound_orchestrations_per_sec: f64,
    /// What the provider reached.
    pub achieved_orchestrations_per_sec: f64,
    /// `achieved / bound`.
    pub ratio: f64,
    /// The terms of the sum.
    pub terms: Vec<BoundTerm>,
}

impl Bound {
    /// The bound of `w` under `probe`.
    pub fn compute(w: &WorkloadResult, probe: &ProbeResult) -> Option<Self> {
        let ops = w.storage_ops.as_ref()?;
        let units = w.orchestrations as f64;
        let secs = probe.seconds_per_unit(&ops.counts, units)?;
        let bound = 1.0 / secs;
        let terms = ops
            .counts
            .non_zero()
            .into_iter()
            .filter_map(|(op, n)| {
                let rate = probe.rate_for(op)?;
                let per = n as f64 / units;
                Some(BoundTerm {
                    op: op.name(),
                    ops_per_orchestration: per,
                    rate_from: proxy_for(op).name(),
                    capacity_ops_per_sec: rate,
                    ms_per_orchestration: per / rate * 1000.0,
                })
            })
            .collect();
        Some(Self {
            workload: w.workload,
            storage_ms_per_orchestration: secs * 1000.0,
            bound_orchestrations_per_sec: bound,
            achieved_orchestrations_per_sec: w.orchestrations_per_sec,
            ratio: w.orchestrations_per_sec / bound,
            terms,
        })
    }
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetStatus {
    /// Met.
    Met,
    /// Not met.
    NotMet,
    /// Needs a workload or probe that did not run.
    NotMeasured,
    /// Does not apply to this provider.
    NotApplicable,
}

impl TargetStatus {
    fn label(self) -> &'static str {
        match self {
            TargetStatus::Met => "MET",
            TargetStatus::NotMet => "NOT MET",
            TargetStatus::NotMeasured => "not measured",
            TargetStatus::NotApplicable => "n/a",
        }
    }
    fn of(ok: bool) -> Self {
        if ok { TargetStatus::Met } else { TargetStatus::NotMet }
    }
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: &'static str,
    /// The threshold.
    pub target: &'static str,
    /// The measured figure.
    pub measured: String,
    /// Met or not.
    pub status: TargetStatus,
}

/// A whole run on one provider.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `memory` or `azure`.
    pub provider: &'static str,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// The `--scale` used.
    pub scale: f64,
    /// Per-workload figures.
    pub workloads: Vec<WorkloadResult>,
    /// The raw storage capacity probe (Azure provider).
    pub probe: Option<ProbeResult>,
    /// Why the probe failed, if it did.
    pub probe_error: Option<String>,
    /// W1's storage bound (Azure provider with probe and W1).
    pub bound: Option<Bound>,
    /// The targets.
    pub targets: Vec<Target>,
}

/// W4 time ratio above which per-activity cost counts as growing (wall time on a shared 2-core
/// machine is noisy).
pub const W4_TIME_RATIO_LIMIT: f64 = 1.25;
/// W4 storage-call ratio above which per-activity cost counts as growing.
pub const W4_OPS_RATIO_LIMIT: f64 = 1.10;

impl BenchReport {
    /// The result of workload `id`.
    pub fn workload(&self, id: &str) -> Option<&WorkloadResult> {
        self.workloads.iter().find(|w| w.workload == id)
    }

    /// Fills in [`Self::bound`] and [`Self::targets`].
    pub(crate) fn evaluate(&mut self) {
        self.bound = match (&self.probe, self.workload("W1")) {
            (Some(p), Some(w1)) => Bound::compute(w1, p),
            _ => None,
        };
        let azure = self.provider == "azure";
        let w1 = self.workload("W1");
        let mut targets = Vec::new();

        let (measured, status) = match (azure, w1.and_then(|w| w.storage_ops.as_ref())) {
            (false, _) => ("no storage".to_owned(), TargetStatus::NotApplicable),
            (true, None) => ("-".to_owned(), TargetStatus::NotMeasured),
            (true, Some(ops)) => (
                format!("{:.1}", ops.per_orchestration),
                TargetStatus::of(ops.per_orchestration <= 30.0),
            ),
        };
        targets.push(Target {
            name: "W1 storage operations per orchestration",
            target: "<= 30",
            measured,
            status,
        });

        let (measured, status) = match (azure, &self.bound) {
            (false, _) => ("no storage".to_owned(), TargetStatus::NotApplicable),
            (true, None) => ("-".to_owned(), TargetStatus::NotMeasured),
            (true, Some(b)) => (
                format!(
                    "{:.0}% ({:.1} of {:.1} orch/s)",
                    b.ratio * 100.0,
                    b.achieved_orchestrations_per_sec,
                    b.bound_orchestrations_per_sec
                ),
                TargetStatus::of(b.ratio >= 0.70),
            ),
        };
        targets.push(Target {
            name: "W1 share of the storage-implied bound",
            target: ">= 70%",
            measured,
            status,
        });

        let (measured, status) = match self.workload("W4").and_then(|w| w.history_growth.as_ref()) {
            None => ("-".to_owned(), TargetStatus::NotMeasured),
            Some(g) => {
                let mut ok = g.time_ratio <= W4_TIME_RATIO_LIMIT;
                let mut m = format!(
                    "time {:.2} -> {:.2} ms (x{:.2})",
                    g.first_ms_per_activity, g.last_ms_per_activity, g.time_ratio
                );
                if let (Some(a), Some(b), Some(r)) =
                    (g.first_ops_per_activity, g.last_ops_per_activity, g.ops_ratio)
                {
                    ok &= r <= W4_OPS_RATIO_LIMIT;
                    let _ = write!(m, "; ops {a:.1} -> {b:.1} (x{r:.2})");
                }
                (m, TargetStatus::of(ok))
            }
        };
        targets.push(Target {
            name: "W4 per-activity cost, last vs first window",
            target: "time x<=1.25, ops x<=1.10",
            measured,
            status,
        });

        let (measured, status) = match self.workload("W5").and_then(|w| w.latency.as_ref()) {
            None => ("-".to_owned(), TargetStatus::NotMeasured),
            Some(l) => (
                format!("p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms),
                TargetStatus::of(l.p50_ms <= 100.0),
            ),
        };
        targets.push(Target {
            name: "W5 start-to-completion p50",
            target: "<= 100 ms",
            measured,
            status,
        });

        let (measured, status) = match self.workload("E1").and_then(|w| {
            w.entity_operations_per_sec.zip(w.entities.as_ref().and_then(|e| e.df_target_ratio))
        }) {
            None => ("-".to_owned(), TargetStatus::NotMeasured),
            Some((ops, ratio)) => (
                format!(
                    "{ops:.0} ops/s (x{ratio:.1} of DF's {DF_ENTITY_OPS_PER_SEC:.0} ops/s target)"
                ),
                TargetStatus::of(ops >= DF_ENTITY_OPS_PER_SEC),
            ),
        };
        targets.push(Target {
            name: "E1 operations/s on one entity",
            target: ">= 64 ops/s (DF)",
            measured,
            status,
        });

        let (measured, status) = match (azure, w1) {
            (true, _) => ("azure run".to_owned(), TargetStatus::NotApplicable),
            (false, None) => ("-".to_owned(), TargetStatus::NotMeasured),
            (false, Some(w)) => (
                format!("{:.0} orch/s", w.orchestrations_per_sec),
                TargetStatus::of(w.orchestrations_per_sec >= 5000.0),
            ),
        };
        targets.push(Target {
            name: "in-memory W1 throughput",
            target: ">= 5000 orch/s",
            measured,
            status,
        });
        self.targets = targets;
    }

    /// Writes the report as pretty JSON to `path` (creating parent directories).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Io {
            what: "serializing the report".to_owned(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(path, text)
            .map_err(|source| Error::Io { what: format!("writing {}", path.display()), source })
    }

    /// The human-readable tables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let cpu = self.machine.cpu_model.as_deref().unwrap_or("unknown CPU");
        let _ = writeln!(
            s,
            "durabletask-rs benchmark, provider {}, scale {}, {} ({} CPUs, {cpu})",
            self.provider, self.scale, self.date, self.machine.cpus
        );
        let orchestration_rows: Vec<&WorkloadResult> =
            self.workloads.iter().filter(|w| !is_entity_workload(w)).collect();
        if !orchestration_rows.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<4} {:>6} {:>6} {:>6} {:>9} {:>10} {:>10} {:>9} {:>8}",
                "", "orch", "acts", "events", "wall s", "orch/s", "acts/s", "ops/orch", "RSS MiB"
            );
        }
        for w in orchestration_rows {
            let ops = w
                .storage_ops
                .as_ref()
                .map_or("-".to_owned(), |o| format!("{:.1}", o.per_orchestration));
            let acts = w.activities_per_sec.map_or("-".to_owned(), |a| format!("{a:.1}"));
            let rss =
                w.peak_rss_kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
            let _ = writeln!(
                s,
                "{:<4} {:>6} {:>6} {:>6} {:>9.3} {:>10.1} {:>10} {:>9} {:>8}",
                w.workload,
                w.orchestrations,
                w.activities,
                w.events,
                w.wall_seconds,
                w.orchestrations_per_sec,
                acts,
                ops,
                rss
            );
            if let Some(e) = &w.error {
                let _ = writeln!(s, "     !! did not finish: {e}");
            } else if w.failed > 0 {
                let _ = writeln!(
                    s,
                    "     !! {} of {} orchestrations did not complete correctly",
                    w.failed, w.orchestrations
                );
            }
        }
        self.render_entities(&mut s);
        let counted: Vec<&WorkloadResult> =
            self.workloads.iter().filter(|w| w.storage_ops.is_some()).collect();
        if !counted.is_empty() {
            let _ = writeln!(
                s,
                "\nstorage operations per orchestration (E1, E2: per entity operation), by kind \
                 (completion polling excluded):"
            );
            let kinds: Vec<StorageOp> = StorageOp::ALL
                .iter()
                .copied()
                .filter(|op| {
                    counted.iter().any(|w| {
                        w.storage_ops.as_ref().is_some_and(|o| o.by_kind.contains_key(op.name()))
                    })
                })
                .collect();
            let _ = write!(s, "{:<4}", "");
            for op in &kinds {
                let _ = write!(s, " {:>12}", op.name());
            }
            let _ = writeln!(s, " {:>10}", "poller");
            for w in &counted {
                let Some(o) = &w.storage_ops else { continue };
                let _ = write!(s, "{:<4}", w.workload);
                let per_unit = if is_entity_workload(w) {
                    &o.per_entity_operation_by_kind
                } else {
                    &o.per_orchestration_by_kind
                };
                for op in &kinds {
                    let v = per_unit.get(op.name()).copied().unwrap_or(0.0);
                    let _ = write!(s, " {v:>12.2}");
                }
                let _ = writeln!(
                    s,
                    " {:>10}",
                    o.poller_total.map_or("-".to_owned(), |p| p.to_string())
                );
            }
        }
        for w in &self.workloads {
            if let Some(g) = &w.history_growth {
                let _ = writeln!(
                    s,
                    "\nW4 per activity ({} activities per window): first {:.2} ms, last {:.2} ms (x{:.2})",
                    g.window, g.first_ms_per_activity, g.last_ms_per_activity, g.time_ratio
                );
                if let (Some(a), Some(b), Some(r)) =
                    (g.first_ops_per_activity, g.last_ops_per_activity, g.ops_ratio)
                {
                    let _ = writeln!(
                        s,
                        "   storage calls per activity: first {a:.2}, last {b:.2} (x{r:.2})"
                    );
                }
            }
            if let Some(l) = &w.latency {
                let _ = writeln!(
                    s,
                    "\nW5 latency over {} runs: p50 {:.1} ms, p99 {:.1} ms, mean {:.1}, min {:.1}, max {:.1} (poll every {} ms, {} ms idle before each run)",
                    l.runs,
                    l.p50_ms,
                    l.p99_ms,
                    l.mean_ms,
                    l.min_ms,
                    l.max_ms,
                    l.poll_interval_ms,
                    l.idle_before_run_ms
                );
            }
        }
        if let Some(p) = &self.probe {
            let _ = writeln!(
                s,
                "\nstorage capacity probe ({} concurrent tasks, {:.1} s per phase):",
                p.concurrency, p.phase_seconds
            );
            let _ = writeln!(
                s,
                "{:<14} {:>8} {:>7} {:>8} {:>10} {:>10}",
                "op", "calls", "errors", "secs", "calls/s", "mean ms"
            );
            for ph in &p.phases {
                let _ = writeln!(
                    s,
                    "{:<14} {:>8} {:>7} {:>8.2} {:>10.1} {:>10.2}",
                    ph.op, ph.ops, ph.errors, ph.seconds, ph.ops_per_sec, ph.mean_latency_ms
                );
            }
        }
        if let Some(e) = &self.probe_error {
            let _ = writeln!(s, "\nstorage capacity probe failed: {e}");
        }
        if let Some(b) = &self.bound {
            let _ = writeln!(
                s,
                "\n{} storage-implied bound: {:.2} storage-ms per orchestration -> {:.1} orch/s; achieved {:.1} orch/s = {:.0}% of the bound",
                b.workload,
                b.storage_ms_per_orchestration,
                b.bound_orchestrations_per_sec,
                b.achieved_orchestrations_per_sec,
                b.ratio * 100.0
            );
            for t in &b.terms {
                let _ = writeln!(
                    s,
                    "   {:<12} {:>6.2}/orch at {:>8.1}/s ({}) = {:>6.2} ms",
                    t.op,
                    t.ops_per_orchestration,
                    t.capacity_ops_per_sec,
                    t.rate_from,
                    t.ms_per_orchestration
                );
            }
        }
        let _ = writeln!(s, "\ntargets:");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  [{:<12}] {:<45} {:<26} {}",
                t.status.label(),
                t.name,
                t.target,
                t.measured
            );
        }
        s
    }
}

/// E1, E2 (a failed entity workload has no [`EntityRun`] but keeps its id).
fn is_entity_workload(w: &WorkloadResult) -> bool {
    w.entities.is_some() || w.workload.parse::<crate::Workload>().is_ok_and(|w| w.is_entity())
}

impl BenchReport {
    /// The table of the entity workloads.
    fn render_entities(&self, s: &mut String) {
        let rows: Vec<&WorkloadResult> =
            self.workloads.iter().filter(|w| is_entity_workload(w)).collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\nentity workloads (client signals `add 1` to counter entities):\n{:<4} {:>8} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8}  vs DF",
            "", "entities", "ops", "send s", "wall s", "ops/s", "ops/batch", "st.ops/op", "RSS MiB"
        );
        for w in rows {
            let rss =
                w.peak_rss_kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
            let per_op = w
                .storage_ops
                .as_ref()
                .and_then(|o| o.per_entity_operation)
                .map_or("-".to_owned(), |p| format!("{p:.2}"));
            match &w.entities {
                Some(e) => {
                    let vs_df = e.df_target_ratio.map_or("-".to_owned(), |r| {
                        format!("x{r:.1} of DF's {DF_ENTITY_OPS_PER_SEC:.0} ops/s target")
                    });
                    let _ = writeln!(
                        s,
                        "{:<4} {:>8} {:>7} {:>9.3} {:>9.3} {:>10.1} {:>9.1} {:>9} {:>8}  {}",
                        w.workload,
                        e.entities,
                        e.operations,
                        e.send_seconds,
                        w.wall_seconds,
                        w.entity_operations_per_sec.unwrap_or(0.0),
                        e.operations_per_batch,
                        per_op,
                        rss,
                        vs_df
                    );
                }
                None => {
                    let _ = writeln!(s, "{:<4} {:>8}", w.workload, "-");
                }
            }
            if let Some(e) = &w.error {
                let _ = writeln!(s, "     !! did not finish: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=50).map(f64::from).collect();
        let l = Latency::from_samples(&samples, 1.0, 0.0);
        assert_eq!(l.p50_ms, 25.0);
        assert_eq!(l.p99_ms, 50.0);
        assert_eq!(l.min_ms, 1.0);
        assert_eq!(l.runs, 50);
    }
}
