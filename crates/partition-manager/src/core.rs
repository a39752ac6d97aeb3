//! State shared by all three managers: which partitions this worker listens to, their
//! self-fencing deadlines, fences, drains, listener calls and tracing.
//!
//! A partition whose local deadline passes without a successful renewal is *fenced*, not lost:
//! [`Core::is_owned`] turns false at once (no dequeues, no checkpoints, so no split brain) and the
//! listener hears `on_fenced`, but its buffered work is kept. Storage decides what comes next: a
//! renewal that proves the lease is still ours resumes it (`on_resumed`), a row or lease naming
//! another owner loses it (`on_lost`), and so does a fence longer than `max_fenced_duration`. A
//! slow store (Azurite's garbage-collection freezes, a throttled account) then costs time, not
//! the whole visibility timeout of every message the worker held.

use crate::clock::Clock;
use crate::settings::{ManagerKind, PartitionManagerSettings};
use crate::{Partition, PartitionListener};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;
use tokio::time::Instant;

/// `tracing` target of every partition-manager event.
pub const TRACE_TARGET: &str = "durabletask::partitions";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Listening.
    No,
    /// `drain` called, not resolved yet.
    Running,
    /// `drain` resolved (or timed out and `on_lost` was called): ready to release.
    Done,
}

#[derive(Debug)]
struct Owned {
    partition: Partition,
    generation: u64,
    deadline: Instant,
    drain: Drain,
    /// Set while fenced: when the local deadline passed without a renewal.
    fenced_since: Option<Instant>,
}

pub(crate) struct Core {
    pub(crate) settings: PartitionManagerSettings,
    pub(crate) kind: ManagerKind,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) partitions: Vec<Partition>,
    listener: OnceLock<Arc<dyn PartitionListener>>,
    owned: Mutex<BTreeMap<String, Owned>>,
    next_generation: Mutex<u64>,
    /// Serialises listener calls and the state changes they report, so that a partition's
    /// callbacks are never reordered between the manager's tasks.
    callbacks: tokio::sync::Mutex<()>,
    /// Woken when a drain completes, so the loop releases at once.
    pub(crate) wake: Notify,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("kind", &self.kind)
            .field("task_hub", &self.settings.task_hub)
            .field("worker", &self.settings.worker_id)
            .field("owned", &self.owned_queues())
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(
        kind: ManagerKind,
        settings: PartitionManagerSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let partitions = settings
            .control_queues()
            .into_iter()
            .zip(0u8..)
            .map(|(control_queue, index)| Partition { index, control_queue })
            .collect();
        Self {
            settings,
            kind,
            clock,
            partitions,
            listener: OnceLock::new(),
            owned: Mutex::new(BTreeMap::new()),
            next_generation: Mutex::new(0),
            callbacks: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }
    }

    pub(crate) fn me(&self) -> &str {
        &self.settings.worker_id
    }

    pub(crate) fn set_listener(&self, listener: Arc<dyn PartitionListener>) -> bool {
        self.listener.set(listener).is_ok()
    }

    fn listener(&self) -> Option<&Arc<dyn PartitionListener>> {
        self.listener.get()
    }

    pub(crate) fn partition(&self, queue: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.control_queue == queue)
    }

    fn fence_deadline(&self, sent: Instant) -> Instant {
        sent + (self.settings.lease_interval - self.settings.fence_margin)
    }

    pub(crate) fn info(&self, event: &'static str, partition: &str, details: &str) {
        tracing::info!(
            target: TRACE_TARGET,
            event,
            task_hub = %self.settings.task_hub,
            worker = %self.settings.worker_id,
            partition,
            kind = ?self.kind,
            "{event}: {details}"
        );
    }

    pub(crate) fn warn(&self, event: &'static str, partition: &str, details: &str) {
        tracing::warn!(
            target: TRACE_TARGET,
            event,
            task_hub = %self.settings.task_hub,
            worker = %self.settings.worker_id,
            partition,
            kind = ?self.kind,
            "{event}: {details}"
        );
    }

    /// The local state of `queue`, if this worker owns it.
    pub(crate) fn drain_state(&self, queue: &str) -> Option<Drain> {
        lock(&self.owned).get(queue).map(|o| o.drain)
    }

    pub(crate) fn owned_queues(&self) -> Vec<String> {
        lock(&self.owned).keys().cloned().collect()
    }

    /// Partitions held and not fenced (listening or draining), as [`Core::is_owned`] sees them.
    pub(crate) fn owned_partitions(&self) -> Vec<Partition> {
        let now = self.clock.monotonic();
        lock(&self.owned)
            .values()
            .filter(|o| o.deadline > now && o.fenced_since.is_none())
            .map(|o| o.partition.clone())
            .collect()
    }

    /// Held locally, fenced or not: the provider keeps this partition's buffered work.
    pub(crate) fn is_held(&self, queue: &str) -> bool {
        lock(&self.owned).contains_key(queue)
    }

    pub(crate) fn owned_count(&self) -> usize {
        lock(&self.owned).len()
    }

    /// Owned, within the self-fencing deadline (draining partitions included: their in-flight
    /// work may still checkpoint).
    pub(crate) fn is_owned(&self, queue: &str) -> bool {
        let now = self.clock.monotonic();
        lock(&self.owned).get(queue).is_some_and(|o| o.deadline > now && o.fenced_since.is_none())
    }

    /// A successful acquisition whose request was sent at `sent`: start listening (or extend the
    /// deadline if already listening).
    pub(crate) async fn acquired(&self, queue: &str, sent: Instant, how: &'static str) {
        let Some(partition) = self.partition(queue).cloned() else { return };
        let _guard = self.callbacks.lock().await;
        let deadline = self.fence_deadline(sent);
        if self.is_held(queue) {
            self.extend_locked(queue, deadline).await;
            return;
        }
        {
            let mut owned = lock(&self.owned);
            if deadline <= self.clock.monotonic() {
                // The call took longer than the fenced lease: not safe to listen.
                drop(owned);
                self.warn("PartitionManagerWarning", queue, "acquired too late to listen safely");
                return;
            }
            let generation = {
                let mut g = lock(&self.next_generation);
                *g += 1;
                *g
            };
            owned.insert(
                queue.into(),
                Owned {
                    partition: partition.clone(),
                    generation,
                    deadline,
                    drain: Drain::No,
                    fenced_since: None,
                },
            );
        }
        self.info(how, queue, "started listening");
        if let Some(l) = self.listener() {
            l.on_acquired(&partition).await;
        }
    }

    /// A renewal sent at `sent` succeeded; `false` if the partition is no longer held locally.
    /// A fenced partition whose new deadline is still ahead resumes (`on_resumed`).
    pub(crate) async fn renewed(&self, queue: &str, sent: Instant) -> bool {
        let deadline = self.fence_deadline(sent);
        let _guard = self.callbacks.lock().await;
        self.extend_locked(queue, deadline).await
    }

    /// Pushes `queue`'s deadline to `deadline` and ends its fence if that deadline is ahead.
    /// The caller holds `callbacks`.
    async fn extend_locked(&self, queue: &str, deadline: Instant) -> bool {
        let resumed = {
            let mut owned = lock(&self.owned);
            let Some(o) = owned.get_mut(queue) else { return false };
            o.deadline = o.deadline.max(deadline);
            let resumed = o.fenced_since.is_some() && o.deadline > self.clock.monotonic();
            if resumed {
                o.fenced_since = None;
            }
            resumed.then(|| o.partition.clone())
        };
        if let Some(partition) = resumed {
            self.info(
                "PartitionManagerInfo",
                queue,
                "renewed after a fence: the lease is still ours, listening again",
            );
            if let Some(l) = self.listener() {
                l.on_resumed(&partition).await;
            }
        }
        true
    }

    /// Stop listening at once (`on_lost`); no-op if not owned.
    pub(crate) async fn lose(&self, queue: &str, reason: &str) {
        let _guard = self.callbacks.lock().await;
        let Some(o) = lock(&self.owned).remove(queue) else { return };
        self.warn("PartitionLost", queue, reason);
        if let Some(l) = self.listener() {
            l.on_lost(&o.partition).await;
        }
    }

    /// Forget every partition without callbacks (the caller is going away).
    pub(crate) fn forget_all(&self) {
        lock(&self.owned).clear();
    }

    /// Calls `on_lost` for every owned partition.
    pub(crate) async fn lose_all(&self, reason: &str) {
        for q in self.owned_queues() {
            self.lose(&q, reason).await;
        }
    }

    /// Starts draining `queue` (stop fetching, wait for in-flight work), bounded by
    /// `drain_timeout`; on timeout the partition's remaining work is abandoned with `on_lost`.
    pub(crate) fn start_drain(self: &Arc<Self>, queue: &str, reason: &str) {
        let (partition, generation) = {
            let mut owned = lock(&self.owned);
            let Some(o) = owned.get_mut(queue) else { return };
            if o.drain != Drain::No {
                return;
            }
            o.drain = Drain::Running;
            (o.partition.clone(), o.generation)
        };
        self.info("PartitionManagerInfo", queue, &format!("draining: {reason}"));
        let core = Arc::clone(self);
        tokio::spawn(async move {
            let finished = match core.listener() {
                Some(l) => tokio::time::timeout(core.settings.drain_timeout, l.drain(&partition))
                    .await
                    .is_ok(),
                None => true,
            };
            let _guard = core.callbacks.lock().await;
            let current = {
                let mut owned = lock(&core.owned);
                match owned.get_mut(&partition.control_queue) {
                    Some(o) if o.generation == generation && o.drain == Drain::Running => {
                        o.drain = Drain::Done;
                        true
                    }
                    _ => false,
                }
            };
            if current {
                if finished {
                    core.info("PartitionManagerInfo", &partition.control_queue, "drained");
                } else {
                    core.warn(
                        "PartitionManagerWarning",
                        &partition.control_queue,
                        "drain timed out; abandoning in-flight work",
                    );
                    if let Some(l) = core.listener() {
                        l.on_lost(&partition).await;
                    }
                }
                core.wake.notify_one();
            }
        });
    }

    /// The partition was released in storage after its drain completed.
    pub(crate) fn released(&self, queue: &str) {
        if lock(&self.owned).remove(queue).is_some() {
            self.info("LeaseReleased", queue, "released after drain");
        }
    }

    /// Fences every partition whose local deadline has passed (`on_fenced`) and loses every
    /// partition fenced for longer than `max_fenced_duration` (`on_lost`); returns when the next
    /// of those can happen.
    pub(crate) async fn fence(&self) -> Option<Instant> {
        let now = self.clock.monotonic();
        let max = self.settings.max_fenced_duration;
        let due: Vec<String> = lock(&self.owned)
            .iter()
            .filter(|(_, o)| match o.fenced_since {
                None => o.deadline <= now,
                Some(since) => since + max <= now,
            })
            .map(|(q, _)| q.clone())
            .collect();
        for q in due {
            let _guard = self.callbacks.lock().await;
            let action = {
                let mut owned = lock(&self.owned);
                match owned.get_mut(&q) {
                    Some(o) if o.fenced_since.is_none() && o.deadline <= now => {
                        o.fenced_since = Some(now);
                        Some((true, o.partition.clone()))
                    }
                    Some(o) if o.fenced_since.is_some_and(|since| since + max <= now) => {
                        Some((false, o.partition.clone()))
                    }
                    _ => None,
                }
            };
            match action {
                Some((true, partition)) => {
                    self.warn(
                        "PartitionManagerWarning",
                        &q,
                        "not renewed before its local deadline: fenced (no dequeues or \
                         checkpoints) until storage proves the lease is still ours",
                    );
                    if let Some(l) = self.listener() {
                        l.on_fenced(&partition).await;
                    }
                }
                Some((false, _)) => {
                    drop(_guard);
                    self.lose(&q, &format!("fenced for {max:?} without a renewal (self-fenced)"))
                        .await;
                }
                None => {}
            }
        }
        lock(&self.owned)
            .values()
            .map(|o| match o.fenced_since {
                None => o.deadline,
                Some(since) => since + max,
            })
            .min()
    }

    /// Runs [`Core::fence`] whenever a deadline may have passed, until the task is aborted.
    pub(crate) async fn fence_loop(self: Arc<Self>) {
        loop {
            let earliest = self.fence().await;
            let fallback = self.clock.monotonic() + self.settings.lease_renew_interval;
            let until = earliest.map_or(fallback, |e| e.min(fallback));
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Start/stop plumbing shared by the managers: the main loop task, the fence task and the
/// shutdown signal.
#[derive(Debug)]
pub(crate) struct Runner {
    shutdown: tokio::sync::watch::Sender<bool>,
    started: std::sync::atomic::AtomicBool,
    main_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    fence_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Runner {
    pub(crate) fn new() -> Self {
        Self {
            shutdown: tokio::sync::watch::channel(false).0,
            started: std::sync::atomic::AtomicBool::new(false),
            main_task: Mutex::new(None),
            fence_task: Mutex::new(None),
        }
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn start<F>(
        &self,
        core: &Arc<Core>,
        listener: Arc<dyn PartitionListener>,
        main: F,
    ) -> crate::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst)
            || !core.set_listener(listener)
        {
            return Err(crate::Error::AlreadyStarted);
        }
        core.info("PartitionManagerInfo", "", "starting");
        *lock(&self.fence_task) = Some(tokio::spawn(Arc::clone(core).fence_loop()));
        *lock(&self.main_task) = Some(tokio::spawn(main));
        Ok(())
    }

    pub(crate) async fn stop(
        &self,
        core: &Core,
        timeout: std::time::Duration,
    ) -> crate::Result<()> {
        let Some(mut main) = lock(&self.main_task).take() else { return Ok(()) };
        core.info("PartitionManagerInfo", "", "stopping: draining and releasing owned partitions");
        self.shutdown.send_replace(true);
        core.wake.notify_one();
        let finished = tokio::time::timeout(timeout, &mut main).await.is_ok();
        if !finished {
            main.abort();
        }
        if let Some(fence) = lock(&self.fence_task).take() {
            fence.abort();
        }
        let still_owned = core.owned_count();
        if still_owned > 0 {
            core.lose_all("graceful stop timed out").await;
            return Err(crate::Error::StopTimedOut { still_owned });
        }
        core.info("PartitionManagerInfo", "", "stopped");
        Ok(())
    }

    pub(crate) fn abort(&self, core: &Core) {
        self.shutdown.send_replace(true);
        for task in
            [lock(&self.main_task).take(), lock(&self.fence_task).take()].into_iter().flatten()
        {
            task.abort();
        }
        core.forget_all();
        core.warn("PartitionManagerWarning", "", "aborted; owned leases will expire");
    }
}

/// Sleeps `delay`, returning early when woken or when shutdown starts.
pub(crate) async fn pause(
    core: &Core,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    delay: std::time::Duration,
) {
    let stopping = *shutdown.borrow();
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = core.wake.notified() => {}
        _ = shutdown.changed(), if !stopping => {}
    }
}
