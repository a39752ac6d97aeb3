//! Soak mode (`cargo xtask stress --soak[=MINUTES]`): one in-process worker runs
//! mixed traffic (rounds of the normal workload with the [start storm](crate::storm), each
//! audited and purged) for the given time. Every [`SoakConfig::sample_every`] the worker's held,
//! buffered and in-flight message counts, each poller's time since its last receive and the
//! large-message blob count are sampled; the report prints first/middle/last samples, min and
//! max, and a verdict that they stayed flat:
//! * held and blob counts: the mean of the last third of the samples is at most the mean of the
//!   first third plus [`FLAT_SLACK`] (absolute) or 50 % of it, whichever is larger;
//! * receive age: every sample below the lease interval; no pause at the buffer threshold that
//!   long; no persistent leaked message ids (the [`StatsMonitor`](crate::audit::StatsMonitor)
//!   checks every 500 ms);
//! * partitions: the worker polls every partition, except for at most
//!   [`FENCE_LEASES`](crate::audit::FENCE_LEASES) lease intervals after a loss (a storage stall
//!   longer than the lease fences and then loses partitions; they are re-acquired once storage
//!   answers), checked by the stats monitor every 500 ms;
//! * every round audited clean (all instances completed, missing ids still missing, no raw
//!   client error, nothing of the round's ids left in the container after its purge).
//!
//! The verdict is PASS when the figures are flat and no round had a finding.

use crate::audit;
use crate::scenarios::TestHub;
use crate::setup::{ChaosEnv, NodeSpec};
use crate::storm::{self, StormSize};
use crate::{ChaosError, Result};
use durabletask_azure_storage::storage::BlobStore;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Absolute slack of the flatness bound (held messages, blobs).
pub const FLAT_SLACK: f64 = 16.0;

/// The storm round a soak repeats.
pub const SOAK_ROUND: StormSize = StormSize {
    normal: 24,
    dup_ids: 3,
    dup_starts: 6,
    recreate_ids: 2,
    recreate_tasks: 2,
    recreate_rounds: 2,
    loops: 2,
    loop_generations: 3,
    targets: 2,
    missing: 3,
};

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct SoakConfig {
    /// Total traffic time (the last round finishes after it).
    pub duration: Duration,
    /// Sampling period.
    pub sample_every: Duration,
    /// RNG seed.
    pub seed: u64,
}

/// One sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoakSample {
    /// Since the soak started.
    pub at: Duration,
    /// Held message ids.
    pub held: usize,
    /// Buffered messages.
    pub buffered: usize,
    /// Messages in a prefetch, a prepared or a locked work item.
    pub in_flight: usize,
    /// Held ids neither buffered nor in flight.
    pub leaked: usize,
    /// Longest time since a poller's last successful receive (owned partitions, neither fenced
    /// nor waiting for the store to answer a receive:
    /// a fenced poller waits for its lease renewal on purpose).
    pub max_receive_age: Duration,
    /// Pollers whose partition is fenced (a lease renewal overdue while storage stalls).
    pub fenced: usize,
    /// Pollers paused at the buffer threshold.
    pub paused: usize,
    /// Owned partitions with a poller. Fewer than the hub's partitions only after a loss (a
    /// fence outlasting `max_fenced_duration` during a storage stall), until the re-acquire; the
    /// [`StatsMonitor`](crate::audit::StatsMonitor) fails the soak when that lasts longer than
    /// [`FENCE_LEASES`](crate::audit::FENCE_LEASES) lease intervals.
    pub pollers: usize,
    /// How long the sample's storage calls (blob list, queue lengths) took: a long one marks a
    /// storage stall.
    pub storage_latency: Duration,
    /// Blobs in the large-message container.
    pub blobs: usize,
    /// Messages in the control and work-item queues (approximate).
    pub queued: usize,
    /// Instances audited complete so far.
    pub completed: usize,
}

/// The outcome of a soak.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Samples in order.
    pub samples: Vec<SoakSample>,
    /// Rounds run.
    pub rounds: usize,
    /// Instances audited complete.
    pub completed: usize,
    /// Instances audited.
    pub expected: usize,
    /// Lease interval (the receive-age bound).
    pub lease: Duration,
    /// One line per round (instances, audit, queue residue, blobs after purge).
    pub round_lines: Vec<String>,
    /// Findings (rounds, stats monitor, flatness).
    pub failures: Vec<String>,
    /// Wall time.
    pub wall: Duration,
    /// Longest stretch with fewer pollers than partitions (stats monitor, every 500 ms).
    pub max_unpolled: Duration,
    /// The provider's named log events during the soak (partition warnings, discards, ...).
    pub log_events: std::collections::BTreeMap<&'static str, u64>,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

impl SoakReport {
    /// Thirds of the samples: (first, last) means of `f`.
    fn thirds(&self, f: impl Fn(&SoakSample) -> f64) -> (f64, f64) {
        let n = self.samples.len();
        let k = (n / 3).max(1).min(n);
        let first: Vec<f64> = self.samples.iter().take(k).map(&f).collect();
        let last: Vec<f64> = self.samples.iter().skip(n - k).map(&f).collect();
        (mean(&first), mean(&last))
    }

    /// Whether the last-third mean of `f` is within the bound of the first-third mean.
    fn flat(&self, f: impl Fn(&SoakSample) -> f64) -> (bool, f64, f64) {
        let (first, last) = self.thirds(f);
        (last <= first + FLAT_SLACK.max(first * 0.5), first, last)
    }

    /// The verdict's reasons against flatness (empty: flat).
    pub fn not_flat(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.samples.len() < 3 {
            out.push(format!("only {} samples", self.samples.len()));
            return out;
        }
        let (ok, first, last) = self.flat(|s| s.held as f64);
        if !ok {
            out.push(format!("held grew: first-third mean {first:.1}, last-third mean {last:.1}"));
        }
        let (ok, first, last) = self.flat(|s| s.blobs as f64);
        if !ok {
            out.push(format!("blobs grew: first-third mean {first:.1}, last-third mean {last:.1}"));
        }
        if let Some(s) = self.samples.iter().find(|s| s.max_receive_age >= self.lease) {
            out.push(format!(
                "receive age {:.1}s >= lease {}s at {:.0}s",
                s.max_receive_age.as_secs_f64(),
                self.lease.as_secs(),
                s.at.as_secs_f64()
            ));
        }
        out
    }

    /// Flat and every round clean.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.not_flat().is_empty()
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: {} rounds, {}/{} instances completed, {} samples, wall {:.0}s",
            self.rounds,
            self.completed,
            self.expected,
            self.samples.len(),
            self.wall.as_secs_f64()
        )?;
        writeln!(
            f,
            "{:<8} {:>7} {:>6} {:>9} {:>10} {:>7} {:>13} {:>7} {:>8} {:>6} {:>7} {:>10} {:>9}",
            "sample",
            "t(s)",
            "held",
            "buffered",
            "in_flight",
            "leaked",
            "max_recv_age",
            "paused",
            "pollers",
            "blobs",
            "queued",
            "completed",
            "storage"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, s: &SoakSample| {
            writeln!(
                f,
                "{:<8} {:>7.0} {:>6} {:>9} {:>10} {:>7} {:>12.1}s {:>7} {:>8} {:>6} {:>7} {:>10} {:>8.1}s",
                name,
                s.at.as_secs_f64(),
                s.held,
                s.buffered,
                s.in_flight,
                s.leaked,
                s.max_receive_age.as_secs_f64(),
                s.paused,
                s.pollers,
                s.blobs,
                s.queued,
                s.completed,
                s.storage_latency.as_secs_f64()
            )
        };
        if let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) {
            row(f, "first", first)?;
            row(f, "middle", &self.samples[self.samples.len() / 2])?;
            row(f, "last", last)?;
            let fold = |pick: fn(usize, usize) -> usize,
                        dpick: fn(Duration, Duration) -> Duration| {
                self.samples.iter().skip(1).fold(*first, |a, s| SoakSample {
                    at: Duration::ZERO,
                    held: pick(a.held, s.held),
                    buffered: pick(a.buffered, s.buffered),
                    in_flight: pick(a.in_flight, s.in_flight),
                    leaked: pick(a.leaked, s.leaked),
                    max_receive_age: dpick(a.max_receive_age, s.max_receive_age),
                    fenced: pick(a.fenced, s.fenced),
                    paused: pick(a.paused, s.paused),
                    pollers: pick(a.pollers, s.pollers),
                    storage_latency: dpick(a.storage_latency, s.storage_latency),
                    blobs: pick(a.blobs, s.blobs),
                    queued: pick(a.queued, s.queued),
                    completed: pick(a.completed, s.completed),
                })
            };
            row(f, "min", &fold(usize::min, Duration::min))?;
            row(f, "max", &fold(usize::max, Duration::max))?;
        }
        let events: Vec<String> = self.log_events.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            f,
            "partitions: longest stretch with fewer pollers than partitions {:.1}s; log events: {}",
            self.max_unpolled.as_secs_f64(),
            if events.is_empty() { "none".to_owned() } else { events.join(" ") }
        )?;
        for line in &self.round_lines {
            writeln!(f, "  {line}")?;
        }
        for fail in self.failures.iter().take(12) {
            writeln!(f, "  failure: {fail}")?;
        }
        if self.failures.len() > 12 {
            writeln!(f, "  ... and {} more failures", self.failures.len() - 12)?;
        }
        let reasons = self.not_flat();
        let (h0, h1) = self.thirds(|s| s.held as f64);
        let (b0, b1) = self.thirds(|s| s.blobs as f64);
        let age = self.samples.iter().map(|s| s.max_receive_age).max().unwrap_or_default();
        let fenced = self.samples.iter().filter(|s| s.fenced > 0).count();
        writeln!(
            f,
            "flatness: {} (held first/last-third mean {h0:.1}/{h1:.1}, blobs {b0:.1}/{b1:.1}, \
             bound: last <= first + max({FLAT_SLACK}, 50%); max receive age {:.1}s, must stay \
             below the lease {}s; samples with a fenced poller: {fenced}){}",
            if reasons.is_empty() { "FLAT" } else { "NOT FLAT" },
            age.as_secs_f64(),
            self.lease.as_secs(),
            if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join("; ")) }
        )?;
        write!(
            f,
            "verdict: {} ({}, {} round findings)",
            if self.passed() { "PASS" } else { "FAIL" },
            if reasons.is_empty() { "flat" } else { "not flat" },
            self.failures.len()
        )
    }
}

async fn sample(
    hub: &TestHub,
    svc: &durabletask_azure_storage::AzureStorageOrchestrationService,
    started: Instant,
    completed: usize,
    previous: SoakSample,
) -> SoakSample {
    let s = svc.stats();
    let at = started.elapsed();
    let asked = Instant::now();
    let container = &hub.admin.resource_names().large_messages_container;
    // A sample the storage could not answer repeats the previous figure.
    let blobs = audit::retry(|| hub.storage.list_blobs(container, ""))
        .await
        .map_or(previous.blobs, |b| b.len());
    let queued = audit::queue_residue(&hub.admin)
        .await
        .map_or(previous.queued, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let storage_latency = asked.elapsed();
    SoakSample {
        at,
        held: s.held_messages,
        buffered: s.buffered_messages,
        in_flight: s.in_flight_messages,
        leaked: s.leaked_messages(),
        max_receive_age: s
            .control_queues
            .iter()
            .filter(|q| !q.fenced && q.receiving_for.is_none())
            .map(|q| q.since_last_receive.unwrap_or_default())
            .max()
            .unwrap_or_default(),
        fenced: s.control_queues.iter().filter(|q| q.fenced).count(),
        paused: s.control_queues.iter().filter(|q| q.paused_for.is_some()).count(),
        pollers: s.control_queues.len(),
        storage_latency,
        blobs,
        queued,
        completed,
    }
}

/// Runs the soak on a fresh hub with one in-process worker; `progress` gets each sample.
///
/// # Errors
/// When the harness fails (findings are in the report).
pub async fn soak(
    env: &ChaosEnv,
    config: SoakConfig,
    mut progress: impl FnMut(&SoakSample),
) -> Result<SoakReport> {
    let started = Instant::now();
    let hub = TestHub::create(env, "soak").await?;
    let node = hub.node(NodeSpec::new(hub.settings("soak-w"))).await?;
    // Sampling and traffic start once the worker polls all its partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.svc.stats().control_queues.len() < usize::from(hub.settings("x").partition_count)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.monitor.expect_partitions(usize::from(hub.settings("x").partition_count));
    let logs_before = crate::logs::snapshot();
    let mut report =
        SoakReport { lease: hub.settings("x").lease_interval, ..SoakReport::default() };
    let completed = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let completed = completed.clone();
        let stop = stop.clone();
        let svc = node.svc.clone();
        let hub = &hub;
        async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(config.sample_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.notified() => return samples,
                }
                let done = *completed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let previous = samples.last().copied().unwrap_or_default();
                let s = sample(hub, &svc, started, done, previous).await;
                progress(&s);
                samples.push(s);
            }
        }
    };
    let lane = |lane: usize| {
        let completed = completed.clone();
        let hub = &hub;
        async move {
            // The second lane starts later so the lanes' phases (starts, waits, purges) overlap.
            tokio::time::sleep(Duration::from_secs(15 * lane as u64)).await;
            let mut lines = Vec::new();
            let mut failures = Vec::new();
            let mut expected = 0usize;
            let mut r = 0usize;
            while started.elapsed() < config.duration {
                let prefix = format!("k{lane}r{r:03}");
                let seed = config.seed + (lane * 1000 + r) as u64;
                let (line, found, n) = run_soak_round(hub, &prefix, seed, &completed).await?;
                lines.push(line);
                failures.extend(found);
                expected += n;
                r += 1;
            }
            Ok::<_, ChaosError>((lines, failures, expected))
        }
    };
    let traffic = async {
        let r = futures::future::try_join(lane(0), lane(1)).await;
        stop.notify_one();
        r.map(|((l0, f0, e0), (l1, f1, e1))| {
            let rounds = l0.len() + l1.len();
            (
                l0.into_iter().chain(l1).collect::<Vec<_>>(),
                f0.into_iter().chain(f1).collect::<Vec<_>>(),
                rounds,
                e0 + e1,
            )
        })
    };
    let (samples, traffic) = tokio::join!(sampler, traffic);
    let (round_lines, failures, rounds, expected) = match traffic {
        Ok(t) => t,
        Err(e) => {
            node.stop(Duration::from_secs(10)).await?;
            hub.delete().await;
            return Err(e);
        }
    };
    report.samples = samples;
    report.rounds = rounds;
    report.expected = expected;
    report.completed = *completed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    report.failures = failures;
    report.round_lines = round_lines;
    hub.monitor.sample_now();
    let findings = hub.monitor.findings();
    report.max_unpolled = findings.max_unpolled;
    for v in findings.violations.into_values() {
        report.failures.push(format!("stats: {v}"));
    }
    report.log_events = crate::logs::since(&logs_before);
    node.stop(Duration::from_secs(10)).await?;
    hub.delete().await;
    report.wall = started.elapsed();
    Ok(report)
}

/// One storm round: run, audit, check the missing ids, wait for the queues, purge; returns its
/// report line, its findings and the instances audited.
async fn run_soak_round(
    hub: &TestHub,
    prefix: &str,
    seed: u64,
    completed: &Mutex<usize>,
) -> Result<(String, Vec<String>, usize)> {
    let t0 = Instant::now();
    let mut found = Vec::new();
    let round = storm::run_round(hub, &SOAK_ROUND, prefix, seed).await?;
    let a = audit::audit(&hub.admin, &round.planned, &hub.ledger, Duration::from_secs(300)).await?;
    *completed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += a.completed;
    if !a.ok() {
        found.push(format!("round {prefix}: {:?}", a.problems));
    }
    for m in storm::check_missing(hub, &round).await? {
        found.push(format!("round {prefix}: {m}"));
    }
    if round.outcomes.raw_count() > 0 {
        found.push(format!("round {prefix}: raw client errors {:?}", round.outcomes.raw));
    }
    let mut residue = None;
    let mut left = None;
    if a.ok() {
        // Give deferred duplicate and orphan starts a moment (they are dropped after 10
        // deliveries and carry no blobs), then purge; the other lane keeps the worker busy.
        residue = Some(storm::wait_quiet(hub, Duration::from_secs(10)).await?);
        for p in &round.planned {
            audit::retry(|| {
                durabletask_core::OrchestrationServiceClient::purge_instance(
                    &hub.admin,
                    &p.instance_id,
                )
            })
            .await?;
        }
        let container = &hub.admin.resource_names().large_messages_container;
        let blobs = audit::retry(|| hub.storage.list_blobs(container, prefix)).await?;
        if !blobs.is_empty() {
            found
                .push(format!("round {prefix}: {} blobs left after purge: {blobs:?}", blobs.len()));
        }
        left = Some(blobs.len());
    }
    let line = format!(
        "round {prefix}: {}/{} completed, client {}, queued after wait {}, blobs left after purge {}, {:.0}s",
        a.completed,
        a.expected,
        round.outcomes.summary(),
        residue.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        left.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        t0.elapsed().as_secs_f64()
    );
    Ok((line, found, a.expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, held: usize, blobs: usize, age: u64) -> SoakSample {
        SoakSample {
            at: Duration::from_secs(at),
            held,
            blobs,
            max_receive_age: Duration::from_millis(age),
            pollers: 4,
            ..SoakSample::default()
        }
    }

    fn report(samples: Vec<SoakSample>) -> SoakReport {
        SoakReport { samples, lease: Duration::from_secs(15), ..SoakReport::default() }
    }

    #[test]
    fn flat_figures_pass_and_growth_fails() {
        let flat = report((0..30).map(|i| sample(i * 10, 5 + (i as usize % 3), 30, 400)).collect());
        assert!(flat.not_flat().is_empty(), "{:?}", flat.not_flat());
        assert!(flat.passed());
        let growing =
            report((0..30).map(|i| sample(i * 10, 5, 30 + 4 * i as usize, 400)).collect());
        let reasons = growing.not_flat();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("blobs grew"), "{reasons:?}");
        assert!(!growing.passed());
    }

    #[test]
    fn a_receive_age_at_the_lease_fails_and_round_findings_fail() {
        let mut samples: Vec<SoakSample> = (0..9).map(|i| sample(i * 10, 2, 30, 300)).collect();
        samples[4].max_receive_age = Duration::from_secs(15);
        let r = report(samples.clone());
        assert_eq!(r.not_flat(), vec!["receive age 15.0s >= lease 15s at 40s".to_owned()]);
        samples[4].max_receive_age = Duration::from_secs(1);
        let mut r = report(samples);
        assert!(r.passed());
        r.failures.push("round k0r000: stuck".to_owned());
        assert!(!r.passed());
        assert!(r.to_string().contains("verdict: FAIL (flat, 1 round findings)"));
    }

    #[test]
    fn a_sample_taken_between_a_loss_and_the_re_acquire_is_not_a_finding_by_itself() {
        let mut samples: Vec<SoakSample> = (0..9).map(|i| sample(i * 10, 2, 30, 300)).collect();
        samples[4].pollers = 0;
        let r = report(samples);
        assert!(r.passed(), "{}", r);
    }
}
