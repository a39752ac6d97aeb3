//! The partition-manager conformance suite: scenarios run against any [`LeaseStores`] (in-memory
//! here, Azurite from the provider's tests) for every [`ManagerKind`].
//!
//! Test support, not a stable API. Each scenario starts workers with a [`RecordingListener`]; the
//! [`Recorder`] checks on every callback that no partition is active (acquired and not yet drained
//! or lost) on two workers at once — for the table and safe variants, continuously, for the whole
//! scenario. Scenarios panic with a description when an expectation fails.

use crate::clock::Clock;
use crate::core::lock;
use crate::store::{LeaseBlobStore, PartitionRow, PartitionTableStore, StoreError, StoreResult};
use crate::{
    LeaseStores, ManagerKind, Partition, PartitionListener, PartitionManager,
    PartitionManagerSettings,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What a scenario runs against.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// The variant under test.
    pub kind: ManagerKind,
    /// Settings template (intervals, hub, partition count); `worker_id` is set per worker.
    pub settings: PartitionManagerSettings,
    /// The stores of a fresh task hub.
    pub stores: LeaseStores,
    /// The clock every worker uses.
    pub clock: Arc<dyn Clock>,
    /// How long a drain takes (simulated in-flight work).
    pub drain_delay: Duration,
}

impl ConformanceConfig {
    /// Whether the variant promises that no partition has two listeners at once.
    pub fn exclusive(&self) -> bool {
        self.kind != ManagerKind::LegacyBlob
    }

    fn slowest(&self) -> Duration {
        let s = &self.settings;
        s.lease_renew_interval.max(s.lease_acquire_interval)
    }

    /// Time allowed to converge after a membership change.
    pub fn converge_timeout(&self) -> Duration {
        self.slowest() * 12 + self.settings.lease_interval * 2 + self.drain_delay * 8
    }
}

/// What happened, as seen by the listener of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedKind {
    /// `on_acquired`.
    Acquired,
    /// `drain` called.
    DrainStarted,
    /// `drain` resolved.
    DrainCompleted,
    /// `on_lost`.
    Lost,
    /// `on_fenced`: not active (no dequeues or checkpoints) until `Resumed` or `Lost`.
    Fenced,
    /// `on_resumed`: active again; like `Acquired`, a violation while another worker is active.
    Resumed,
    /// The worker was killed (the harness stopped it without callbacks).
    Killed,
}

/// One recorded callback.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// Since the recorder was created.
    pub at: Duration,
    /// The worker.
    pub worker: String,
    /// The control queue (empty for `Killed`).
    pub partition: String,
    /// What happened.
    pub kind: RecordedKind,
}

#[derive(Debug, Default)]
struct RecState {
    events: Vec<RecordedEvent>,
    /// partition -> worker -> draining?
    active: BTreeMap<String, BTreeMap<String, bool>>,
    dead: BTreeSet<String>,
    violations: Vec<String>,
    max_overlap: Duration,
    overlap_since: BTreeMap<String, Instant>,
}

/// Logs every callback of every worker with a timestamp and checks exclusivity on each one.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    exclusive: bool,
    state: Mutex<RecState>,
}

impl Recorder {
    /// A recorder; with `exclusive`, two active workers on one partition are a violation.
    pub fn new(exclusive: bool) -> Arc<Self> {
        Arc::new(Self { origin: Instant::now(), exclusive, state: Mutex::new(RecState::default()) })
    }

    fn record(&self, worker: &str, partition: &str, kind: RecordedKind) {
        let now = Instant::now();
        let at = now - self.origin;
        let mut s = lock(&self.state);
        if s.dead.contains(worker) {
            return;
        }
        s.events.push(RecordedEvent {
            at,
            worker: worker.into(),
            partition: partition.into(),
            kind,
        });
        let entry = s.active.entry(partition.into()).or_default();
        match kind {
            RecordedKind::Acquired | RecordedKind::Resumed => {
                let others: Vec<String> =
                    entry.keys().filter(|w| w.as_str() != worker).cloned().collect();
                if entry.insert(worker.into(), false).is_some() && kind == RecordedKind::Acquired {
                    let v = format!("{at:?}: {worker} acquired {partition} twice");
                    s.violations.push(v);
                }
                if !others.is_empty() {
                    s.overlap_since.entry(partition.into()).or_insert(now);
                    if self.exclusive {
                        let v = format!(
                            "{at:?}: {worker} acquired {partition} while {others:?} still active"
                        );
                        s.violations.push(v);
                    }
                }
            }
            RecordedKind::DrainStarted => {
                if let Some(d) = entry.get_mut(worker) {
                    *d = true;
                }
            }
            RecordedKind::DrainCompleted | RecordedKind::Lost | RecordedKind::Fenced => {
                entry.remove(worker);
                if entry.len() <= 1
                    && let Some(since) = s.overlap_since.remove(partition)
                {
                    s.max_overlap = s.max_overlap.max(now - since);
                }
            }
            RecordedKind::Killed => {}
        }
    }

    /// The worker died: its partitions stop being active now; later callbacks are ignored.
    pub fn killed(&self, worker: &str) {
        let at = Instant::now() - self.origin;
        let mut s = lock(&self.state);
        for workers in s.active.values_mut() {
            workers.remove(worker);
        }
        s.dead.insert(worker.into());
        s.events.push(RecordedEvent {
            at,
            worker: worker.into(),
            partition: String::new(),
            kind: RecordedKind::Killed,
        });
    }

    /// Every recorded event so far.
    pub fn events(&self) -> Vec<RecordedEvent> {
        lock(&self.state).events.clone()
    }

    /// Exclusivity violations so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }

    /// Longest time two workers were active on one partition (legacy variant only).
    pub fn max_overlap(&self) -> Duration {
        lock(&self.state).max_overlap
    }

    /// partition -> workers listening (active and not draining).
    pub fn listening(&self) -> BTreeMap<String, Vec<String>> {
        lock(&self.state)
            .active
            .iter()
            .map(|(p, ws)| {
                (p.clone(), ws.iter().filter(|(_, d)| !**d).map(|(w, _)| w.clone()).collect())
            })
            .filter(|(_, ws): &(String, Vec<String>)| !ws.is_empty())
            .collect()
    }

    /// Panics if exclusivity was ever violated.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "two workers listened to one partition at once:\n{}", v.join("\n"));
    }

    /// A listener for `worker` whose drains take `drain_delay`.
    pub fn listener(
        self: &Arc<Self>,
        worker: &str,
        drain_delay: Duration,
    ) -> Arc<RecordingListener> {
        Arc::new(RecordingListener {
            recorder: Arc::clone(self),
            worker: worker.into(),
            drain_delay,
        })
    }
}

/// A [`PartitionListener`] that reports to a [`Recorder`].
#[derive(Debug)]
pub struct RecordingListener {
    recorder: Arc<Recorder>,
    worker: String,
    drain_delay: Duration,
}

#[async_trait]
impl PartitionListener for RecordingListener {
    async fn on_acquired(&self, p: &Partition) {
        self.recorder.record(&self.worker, &p.control_queue, RecordedKind::Acquired);
    }
    async fn drain(&self, p: &Partition) {
        self.recorder.record(&self.worker, &p.control_queue, RecordedKind::DrainStarted);
        tokio::time::sleep(self.drain_delay).await;
        self.recorder.record(&self.worker, &p.control_queue, RecordedKind::DrainCompleted);
    }
    async fn on_lost(&self, p: &Partition) {
        self.recorder.record(&self.worker, &p.control_queue, RecordedKind::Lost);
    }
    async fn on_fenced(&self, p: &Partition) {
        self.recorder.record(&self.worker, &p.control_queue, RecordedKind::Fenced);
    }
    async fn on_resumed(&self, p: &Partition) {
        self.recorder.record(&self.worker, &p.control_queue, RecordedKind::Resumed);
    }
}

/// Makes one worker's storage calls hang (a stalled process or a network partition), or lets
/// its writes happen and loses their answers (a timeout after the service committed).
#[derive(Debug)]
pub struct FaultSwitch {
    hung: tokio::sync::watch::Sender<bool>,
    answers_lost: std::sync::atomic::AtomicBool,
}

impl FaultSwitch {
    /// A healthy switch.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            hung: tokio::sync::watch::channel(false).0,
            answers_lost: std::sync::atomic::AtomicBool::new(false),
        })
    }
    /// Start or stop hanging every call.
    pub fn set_hung(&self, hung: bool) {
        self.hung.send_replace(hung);
    }
    /// Start or stop losing the answers of writes (they still happen).
    pub fn set_answers_lost(&self, lost: bool) {
        self.answers_lost.store(lost, std::sync::atomic::Ordering::SeqCst);
    }
    async fn pass(&self) {
        let mut rx = self.hung.subscribe();
        let _ = rx.wait_for(|hung| !hung).await;
    }
    /// A write's answer as the caller sees it.
    fn answer<T>(&self, r: StoreResult<T>) -> StoreResult<T> {
        if self.answers_lost.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Unavailable("timed out (the write was committed)".into()))
        } else {
            r
        }
    }
}

/// A table store whose calls hang while its [`FaultSwitch`] is set.
#[derive(Debug)]
pub struct FaultyTable {
    inner: Arc<dyn PartitionTableStore>,
    switch: Arc<FaultSwitch>,
}

#[async_trait]
impl PartitionTableStore for FaultyTable {
    async fn create_if_not_exists(&self) -> StoreResult<()> {
        self.switch.pass().await;
        self.inner.create_if_not_exists().await
    }
    async fn delete_if_exists(&self) -> StoreResult<()> {
        self.switch.pass().await;
        self.inner.delete_if_exists().await
    }
    async fn list(&self) -> StoreResult<Vec<PartitionRow>> {
        self.switch.pass().await;
        self.inner.list().await
    }
    async fn insert_empty(&self, row_key: &str) -> StoreResult<bool> {
        self.switch.pass().await;
        self.inner.insert_empty(row_key).await
    }
    async fn replace(&self, row: &PartitionRow) -> StoreResult<String> {
        self.switch.pass().await;
        self.switch.answer(self.inner.replace(row).await)
    }
}

/// A blob store whose calls hang while its [`FaultSwitch`] is set.
#[derive(Debug)]
pub struct FaultyBlobs {
    inner: Arc<dyn LeaseBlobStore>,
    switch: Arc<FaultSwitch>,
}

#[async_trait]
impl LeaseBlobStore for FaultyBlobs {
    async fn create_container_if_not_exists(&self) -> StoreResult<()> {
        self.switch.pass().await;
        self.inner.create_container_if_not_exists().await
    }
    async fn delete_container_if_exists(&self) -> StoreResult<()> {
        self.switch.pass().await;
        self.inner.delete_container_if_exists().await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.switch.pass().await;
        self.inner.list(prefix).await
    }
    async fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.switch.pass().await;
        self.inner.read(name).await
    }
    async fn write(&self, name: &str, body: Vec<u8>, lease_id: Option<&str>) -> StoreResult<()> {
        self.switch.pass().await;
        self.switch.answer(self.inner.write(name, body, lease_id).await)
    }
    async fn acquire(&self, name: &str, duration: Duration, lease_id: &str) -> StoreResult<()> {
        self.switch.pass().await;
        self.switch.answer(self.inner.acquire(name, duration, lease_id).await)
    }
    async fn renew(&self, name: &str, lease_id: &str) -> StoreResult<()> {
        self.switch.pass().await;
        self.switch.answer(self.inner.renew(name, lease_id).await)
    }
    async fn release(&self, name: &str, lease_id: &str) -> StoreResult<()> {
        self.switch.pass().await;
        self.switch.answer(self.inner.release(name, lease_id).await)
    }
    async fn change(&self, name: &str, current: &str, proposed: &str) -> StoreResult<()> {
        self.switch.pass().await;
        self.switch.answer(self.inner.change(name, current, proposed).await)
    }
}

struct Worker {
    manager: Arc<dyn PartitionManager>,
    switch: Arc<FaultSwitch>,
}

/// A set of workers over one task hub, sharing a [`Recorder`].
pub struct Cluster {
    cfg: ConformanceConfig,
    /// The recorder every worker reports to.
    pub recorder: Arc<Recorder>,
    workers: BTreeMap<String, Worker>,
    next: usize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("workers", &self.workers.keys()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// An empty cluster; creates the lease store.
    pub async fn new(cfg: &ConformanceConfig) -> Self {
        let cluster = Self {
            cfg: cfg.clone(),
            recorder: Recorder::new(cfg.exclusive()),
            workers: BTreeMap::new(),
            next: 0,
        };
        let probe = crate::create(
            cfg.kind,
            cfg.settings.clone(),
            cfg.stores.clone(),
            Arc::clone(&cfg.clock),
        )
        .expect("conformance settings are valid");
        probe.create_lease_store().await.expect("lease store can be created");
        cluster
    }

    /// Starts a new worker; returns its ID.
    pub async fn add_worker(&mut self) -> String {
        let id = format!("worker{}-{}", self.next, &uuid::Uuid::new_v4().simple().to_string()[..6]);
        self.next += 1;
        let switch = FaultSwitch::new();
        let stores = LeaseStores {
            table: Arc::new(FaultyTable {
                inner: Arc::clone(&self.cfg.stores.table),
                switch: Arc::clone(&switch),
            }),
            blobs: Arc::new(FaultyBlobs {
                inner: Arc::clone(&self.cfg.stores.blobs),
                switch: Arc::clone(&switch),
            }),
        };
        let settings =
            PartitionManagerSettings { worker_id: id.clone(), ..self.cfg.settings.clone() };
        let manager = crate::create(self.cfg.kind, settings, stores, Arc::clone(&self.cfg.clock))
            .expect("conformance settings are valid");
        manager
            .start(self.recorder.listener(&id, self.cfg.drain_delay))
            .await
            .expect("a new manager starts");
        self.workers.insert(id.clone(), Worker { manager, switch });
        id
    }

    /// Worker IDs, in start order.
    pub fn worker_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.workers.keys().cloned().collect();
        ids.sort_by_key(|id| {
            id.split('-').next().and_then(|w| w.trim_start_matches("worker").parse::<usize>().ok())
        });
        ids
    }

    /// Graceful stop of one worker; returns how long it took.
    pub async fn stop(&mut self, id: &str) -> Duration {
        let w = self.workers.remove(id).expect("known worker");
        let started = Instant::now();
        w.manager.stop(self.cfg.converge_timeout()).await.expect("graceful stop completes");
        started.elapsed()
    }

    /// Kills one worker: no storage writes, no callbacks; its leases expire.
    pub fn kill(&mut self, id: &str) {
        let w = self.workers.remove(id).expect("known worker");
        w.switch.set_hung(true);
        w.manager.abort();
        self.recorder.killed(id);
    }

    /// Makes a worker's storage calls hang (`true`) or work again (`false`).
    pub fn set_hung(&self, id: &str, hung: bool) {
        self.workers[id].switch.set_hung(hung);
    }

    /// Makes a worker's storage writes lose their answers (`true`: they happen, the worker sees
    /// a timeout) or answer again (`false`).
    pub fn set_answers_lost(&self, id: &str, lost: bool) {
        self.workers[id].switch.set_answers_lost(lost);
    }

    /// The manager of a worker.
    pub fn manager(&self, id: &str) -> &Arc<dyn PartitionManager> {
        &self.workers[id].manager
    }

    /// Why the cluster is not balanced yet, or `None` when it is: every partition has exactly
    /// one listener, that listener's manager reports it owned, and listener counts of the live,
    /// healthy workers differ by at most one.
    pub fn unbalanced(&self) -> Option<String> {
        let listening = self.recorder.listening();
        let mut counts: BTreeMap<&str, usize> =
            self.workers.keys().map(|w| (w.as_str(), 0)).collect();
        for q in self.cfg.settings.control_queues() {
            let ws = listening.get(&q).cloned().unwrap_or_default();
            if ws.len() != 1 {
                return Some(format!("{q} has listeners {ws:?}"));
            }
            let Some(n) = counts.get_mut(ws[0].as_str()) else {
                return Some(format!("{q} is listened to by departed worker {}", ws[0]));
            };
            *n += 1;
            if !self.workers[&ws[0]].manager.is_owned(&q) {
                return Some(format!("{} listens to {q} but is_owned is false", ws[0]));
            }
        }
        let (min, max) = (counts.values().min()?, counts.values().max()?);
        (max - min > 1).then(|| format!("unbalanced counts {counts:?}"))
    }

    /// Polls until `cond` returns `None`, failing with its last answer after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> Option<String>,
    ) -> Duration {
        let started = Instant::now();
        loop {
            self.recorder.assert_no_violations();
            let Some(why) = cond(self) else { return started.elapsed() };
            assert!(
                started.elapsed() < timeout,
                "{what}: not reached after {timeout:?}: {why}\n{}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until [`Cluster::unbalanced`] is `None`.
    pub async fn wait_balanced(&self, what: &str) -> Duration {
        self.wait_for(what, self.cfg.converge_timeout(), Self::unbalanced).await
    }

    /// The event log, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::from("events:\n");
        for e in self.recorder.events().iter().rev().take(60).rev() {
            let _ = writeln!(out, "  {:>10.3?} {} {:?} {}", e.at, e.worker, e.kind, e.partition);
        }
        out
    }

    /// Every worker's `owners()` (the lease store's view) names, for each partition, the worker
    /// listening to it (call when balanced and settled).
    pub async fn assert_owners_match_listeners(&self) {
        let listening = self.recorder.listening();
        for (id, w) in &self.workers {
            let owners = w.manager.owners().await.expect("the lease store answers");
            let queues: Vec<String> = owners.iter().map(|o| o.control_queue.clone()).collect();
            assert_eq!(
                queues,
                self.cfg.settings.control_queues(),
                "{id}: every partition, in order"
            );
            for o in owners {
                let listener = listening.get(&o.control_queue).and_then(|ws| ws.first()).cloned();
                assert_eq!(
                    o.owner,
                    listener,
                    "{id} reads {}'s owner\n{}",
                    o.control_queue,
                    self.describe()
                );
            }
        }
    }

    /// Stops every worker gracefully and checks exclusivity one last time.
    pub async fn shutdown(mut self) {
        for id in self.worker_ids() {
            self.stop(&id).await;
        }
        self.recorder.assert_no_violations();
    }
}

/// `workers` workers over the configured partitions converge to a balanced assignment.
pub async fn converges(cfg: &ConformanceConfig, workers: usize) -> Duration {
    let mut c = Cluster::new(cfg).await;
    for _ in 0..workers {
        c.add_worker().await;
    }
    let took = c.wait_balanced(&format!("{workers} workers balanced")).await;
    c.assert_owners_match_listeners().await;
    c.shutdown().await;
    took
}

/// Scale 1 → 3 → 2 → 1: each change rebalances (the removals are graceful).
pub async fn rebalances_when_workers_join_and_leave(cfg: &ConformanceConfig) {
    let mut c = Cluster::new(cfg).await;
    let a = c.add_worker().await;
    c.wait_balanced("one worker owns everything").await;
    c.add_worker().await;
    let b = c.add_worker().await;
    c.wait_balanced("three workers balanced").await;
    c.stop(&b).await;
    c.wait_balanced("two workers balanced after a graceful leave").await;
    let ids = c.worker_ids();
    let other = ids.iter().find(|w| **w != a).expect("two workers remain").clone();
    c.stop(&other).await;
    c.wait_balanced("the last worker owns everything").await;
    c.shutdown().await;
}

/// A killed worker's partitions are taken over, and only after its leases expired.
pub async fn killed_worker_is_taken_over_after_expiry(cfg: &ConformanceConfig) -> Duration {
    let mut c = Cluster::new(cfg).await;
    c.add_worker().await;
    let victim = c.add_worker().await;
    c.wait_balanced("two workers balanced").await;
    let victims: BTreeSet<String> = c
        .recorder
        .listening()
        .into_iter()
        .filter(|(_, ws)| ws.contains(&victim))
        .map(|(q, _)| q)
        .collect();
    assert!(!victims.is_empty(), "the victim owned nothing");
    c.kill(&victim);
    let took = c.wait_balanced("survivor owns everything after the kill").await;
    let min =
        cfg.settings.lease_interval.saturating_sub(cfg.slowest() + cfg.settings.operation_timeout);
    assert!(
        took >= min,
        "partitions were taken over after {took:?}, before the victim's leases ({:?}) could expire",
        cfg.settings.lease_interval
    );
    c.shutdown().await;
    took
}

/// A worker whose storage hangs past its lease self-fences (stops listening before anybody else
/// may start), the others take over, and once it recovers it does not resume listening to what it
/// lost (storage names another owner: its fenced partitions are lost): it only gets partitions
/// back through the normal hand-over (owner drains first).
pub async fn stalled_worker_does_not_take_partitions_back(cfg: &ConformanceConfig) {
    let mut c = Cluster::new(cfg).await;
    let healthy = c.add_worker().await;
    let stalled = c.add_worker().await;
    c.wait_balanced("two workers balanced").await;
    c.set_hung(&stalled, true);
    let fenced = c
        .wait_for("the stalled worker self-fences", cfg.settings.lease_interval * 2, |c| {
            let l = c.recorder.listening();
            let n = l.values().filter(|ws| ws.contains(&stalled)).count();
            (n > 0).then(|| format!("still listening to {n} partitions"))
        })
        .await;
    assert!(
        fenced <= cfg.settings.lease_interval,
        "self-fencing took {fenced:?}, longer than the lease"
    );
    assert!(c.manager(&stalled).owned_partitions().is_empty());
    assert!(cfg.settings.control_queues().iter().all(|q| !c.manager(&stalled).is_owned(q)));
    c.wait_for("the healthy worker owns everything", cfg.converge_timeout(), |c| {
        let l = c.recorder.listening();
        let all =
            cfg.settings.control_queues().iter().all(|q| l.get(q) == Some(&vec![healthy.clone()]));
        (!all).then(|| format!("listening: {l:?}"))
    })
    .await;
    let healed_at = c.recorder.events().len();
    c.set_hung(&stalled, false);
    c.wait_balanced("rebalanced after recovery").await;
    let events = c.recorder.events();
    let after = &events[healed_at..];
    if cfg.exclusive() {
        for (i, e) in after.iter().enumerate() {
            if e.worker == stalled
                && matches!(e.kind, RecordedKind::Acquired | RecordedKind::Resumed)
            {
                let handed_over = after[..i].iter().any(|h| {
                    h.worker == healthy
                        && h.partition == e.partition
                        && matches!(h.kind, RecordedKind::DrainCompleted | RecordedKind::Lost)
                });
                assert!(
                    handed_over,
                    "{stalled} took {} back without a hand-over\n{}",
                    e.partition,
                    c.describe()
                );
            }
        }
    }
    c.shutdown().await;
}

/// A lone worker whose storage hangs past its lease is fenced on time (not owned, not listening),
/// keeps its partitions while nobody else can have them, and resumes them as soon as storage
/// answers: no `on_lost`, no new `on_acquired`. Hung again for longer than
/// `max_fenced_duration`, it gives them up with `on_lost`.
pub async fn fenced_worker_resumes_when_storage_answers(cfg: &ConformanceConfig) {
    let mut c = Cluster::new(cfg).await;
    let w = c.add_worker().await;
    c.wait_balanced("one worker owns everything").await;
    let queues = cfg.settings.control_queues();
    let mark = c.recorder.events().len();
    c.set_hung(&w, true);
    let fenced = c
        .wait_for("the hung worker is fenced", cfg.settings.lease_interval * 2, |c| {
            let owned = queues.iter().filter(|q| c.manager(&w).is_owned(q)).count();
            let listening = c.recorder.listening();
            (owned > 0 || !listening.is_empty())
                .then(|| format!("{owned} partitions still owned; listening {listening:?}"))
        })
        .await;
    assert!(fenced <= cfg.settings.lease_interval, "fencing took {fenced:?}");
    assert!(c.manager(&w).owned_partitions().is_empty(), "a fenced partition is not owned");
    assert!(queues.iter().all(|q| c.manager(&w).is_held(q)), "a fence keeps the partitions held");
    c.set_hung(&w, false);
    c.wait_balanced("resumed after the store answered").await;
    let after: Vec<RecordedEvent> = c.recorder.events()[mark..].to_vec();
    let count = |kind: RecordedKind| after.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(RecordedKind::Fenced), queues.len(), "{}", c.describe());
    assert_eq!(count(RecordedKind::Resumed), queues.len(), "{}", c.describe());
    assert_eq!(
        count(RecordedKind::Lost),
        0,
        "a fence that ends well loses nothing\n{}",
        c.describe()
    );
    assert_eq!(count(RecordedKind::Acquired), 0, "resumed, not re-acquired\n{}", c.describe());

    // Hung for longer than the fence may last: given up.
    let mark = c.recorder.events().len();
    c.set_hung(&w, true);
    let limit = cfg.settings.lease_interval + cfg.settings.max_fenced_duration;
    c.wait_for("the fence runs out", limit * 2, |c| {
        let held = queues.iter().filter(|q| c.manager(&w).is_held(q)).count();
        (held > 0).then(|| format!("{held} partitions still held"))
    })
    .await;
    let lost = c.recorder.events()[mark..].iter().filter(|e| e.kind == RecordedKind::Lost).count();
    assert_eq!(lost, queues.len(), "{}", c.describe());
    c.set_hung(&w, false);
    c.wait_balanced("re-acquired once the store answers").await;
    c.shutdown().await;
}

/// Writes that time out after the service committed them (an acquisition whose answer was
/// lost) do not hold partitions hostage: once the answers come back the worker owns every
/// partition well within a lease interval, instead of waiting for leases held under IDs it
/// never learned to expire.
pub async fn lost_write_answers_do_not_block_partitions(cfg: &ConformanceConfig) -> Duration {
    let mut c = Cluster::new(cfg).await;
    let w = c.add_worker().await;
    c.set_answers_lost(&w, true);
    // Long enough for several acquisition passes to be committed and reported as timeouts.
    let lossy = cfg.settings.lease_acquire_interval * 3 / 2;
    tokio::time::sleep(lossy).await;
    c.set_answers_lost(&w, false);
    let took = c.wait_balanced("owns everything once answers come back").await;
    // A lease taken under a lost answer in the first pass expires `lease - lossy` after the
    // answers come back: owning everything before then shows that no partition waited for such
    // an expiry (a slow store may make the passes themselves take seconds).
    let bound = cfg.settings.lease_interval.saturating_sub(lossy);
    assert!(
        took < bound,
        "owning every partition took {took:?} after the answers came back: leases taken under \
         lost answers were left to expire (lease {:?})\n{}",
        cfg.settings.lease_interval,
        c.describe()
    );
    c.shutdown().await;
    took
}

/// A graceful stop drains and releases, and the survivor takes over without waiting for expiry.
pub async fn graceful_stop_hands_over_without_expiry_wait(cfg: &ConformanceConfig) -> Duration {
    let mut c = Cluster::new(cfg).await;
    c.add_worker().await;
    let leaving = c.add_worker().await;
    c.wait_balanced("two workers balanced").await;
    let started = Instant::now();
    let before = c.recorder.events().len();
    c.stop(&leaving).await;
    c.wait_balanced("survivor owns everything").await;
    let took = started.elapsed();
    assert!(
        took < cfg.settings.lease_interval,
        "hand-over took {took:?}, as long as a lease expiry ({:?})",
        cfg.settings.lease_interval
    );
    // (Legacy steals during convergence do lose partitions; only the stop itself must not.)
    let lost = c.recorder.events()[before..]
        .iter()
        .filter(|e| e.worker == leaving && e.kind == RecordedKind::Lost)
        .count();
    assert_eq!(lost, 0, "a graceful stop drains, it does not lose partitions\n{}", c.describe());
    c.shutdown().await;
    took
}
