//! [`FaultyStorage`]: a fault-injecting decorator over the three storage traits, for reliability
//! tests.
//!
//! It wraps the real clients and, per call, may
//!
//! * fail before calling (a `Throttled` 503 `ServerBusy` or a `Transient` 500
//!   `OperationTimedOut`),
//! * time out before calling (waits, then a `Transient` timeout; nothing happened),
//! * **commit and then report a timeout** (the call ran; the caller sees a `Transient` error:
//!   the ambiguous success every conditional write must survive),
//! * add latency,
//! * put a queue message twice (at-least-once sending),
//! * and, for `get_messages`, reverse or shuffle the received batch and hold some messages back
//!   (they reappear after a short random delay, after later messages: Azurite's queues are FIFO,
//!   real ones are not).
//!
//! Faults apply only to the operation kinds in [`FaultPlan::ops`] and resources whose name
//! contains [`FaultPlan::resource_contains`]; creating and deleting queues, tables and
//! containers is never faulted unless listed. Decisions come from one seeded RNG, so a plan is
//! reproducible up to the interleaving of concurrent calls. Faults can be switched off and on
//! while running ([`FaultyStorage::set_enabled`]) and every injection is counted
//! ([`FaultyStorage::stats`]).

use super::{
    BatchOp, BlobStore, EntityPage, PeekedMessage, QueueStore, ReceivedMessage, StorageError,
    StorageErrorKind, StorageOp, StorageResult, TableContinuation, TableEntity, TableStore,
};
use crate::service::StorageStack;
use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a received batch is reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reorder {
    /// Keep the service's order.
    #[default]
    None,
    /// Reverse every batch.
    Reverse,
    /// Shuffle every batch (seeded).
    Shuffle,
}

/// What to inject. `Default` injects nothing.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Seed of the decision RNG.
    pub seed: u64,
    /// Share of calls failed before they are sent (half `Throttled` 503, half `Transient` 500).
    pub error_rate: f64,
    /// Share of calls that wait [`Self::timeout_delay`] and then fail with a `Transient` timeout
    /// without being sent.
    pub timeout_rate: f64,
    /// How long an injected timeout waits before failing.
    pub timeout_delay: Duration,
    /// Share of calls that are performed, and then reported as a `Transient` timeout.
    pub committed_timeout_rate: f64,
    /// Extra latency per call, uniform in `[min, max]`.
    pub latency: Option<(Duration, Duration)>,
    /// Share of `put_message` calls that put the message twice.
    pub duplicate_put_rate: f64,
    /// Reordering of `get_messages` batches.
    pub reorder: Reorder,
    /// Share of received messages held back (hidden again for up to [`Self::hold_back_max`]).
    pub hold_back_rate: f64,
    /// Longest hold-back (whole seconds are what queues support; at least 1 s is used).
    pub hold_back_max: Duration,
    /// Operation kinds faults apply to (`None`: every kind except the admin kinds).
    pub ops: Option<Vec<StorageOp>>,
    /// Only resources (queue, table, container) whose name contains this (case-insensitive).
    pub resource_contains: Option<String>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            seed: 0,
            error_rate: 0.0,
            timeout_rate: 0.0,
            timeout_delay: Duration::from_millis(500),
            committed_timeout_rate: 0.0,
            latency: None,
            duplicate_put_rate: 0.0,
            reorder: Reorder::None,
            hold_back_rate: 0.0,
            hold_back_max: Duration::from_secs(3),
            ops: None,
            resource_contains: None,
        }
    }
}

impl FaultPlan {
    /// No faults, with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self { seed, ..Self::default() }
    }

    /// Every call of every kind (admin included) fails: to prove that an operation makes no
    /// storage call at all.
    pub fn fail_everything() -> Self {
        Self { error_rate: 1.0, ops: Some(StorageOp::ALL.to_vec()), ..Self::default() }
    }

    fn applies(&self, op: StorageOp, resource: &str) -> bool {
        let kind_ok = match &self.ops {
            Some(ops) => ops.contains(&op),
            None => {
                !matches!(op, StorageOp::QueueAdmin | StorageOp::TableAdmin | StorageOp::BlobAdmin)
            }
        };
        kind_ok
            && self
                .resource_contains
                .as_ref()
                .is_none_or(|s| resource.to_ascii_lowercase().contains(&s.to_ascii_lowercase()))
    }
}

/// Counts of what a [`FaultyStorage`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Calls that reached the decorator (faulted or not).
    pub calls: u64,
    /// Calls failed before being sent.
    pub errors: u64,
    /// Calls that timed out before being sent.
    pub timeouts: u64,
    /// Calls performed and then reported as timed out.
    pub committed_timeouts: u64,
    /// Messages put twice.
    pub duplicated_puts: u64,
    /// Received batches reordered (of two or more messages).
    pub reordered_batches: u64,
    /// Received messages held back.
    pub held_back: u64,
    /// Calls delayed by injected latency.
    pub delayed: u64,
}

impl FaultStats {
    /// Errors, timeouts and ambiguous successes together.
    pub fn injected_failures(&self) -> u64 {
        self.errors + self.timeouts + self.committed_timeouts
    }
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "calls={} errors={} timeouts={} committed_timeouts={} dup_puts={} reordered={} held_back={} delayed={}",
            self.calls,
            self.errors,
            self.timeouts,
            self.committed_timeouts,
            self.duplicated_puts,
            self.reordered_batches,
            self.held_back,
            self.delayed
        )
    }
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    committed_timeouts: AtomicU64,
    duplicated_puts: AtomicU64,
    reordered_batches: AtomicU64,
    held_back: AtomicU64,
    delayed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What to do with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Pass,
    Error(bool),
    Timeout,
    CommittedTimeout,
}

/// The fault-injecting decorator. Build it over the real clients, then hand
/// [`FaultyStorage::stack`] to the provider.
pub struct FaultyStorage {
    queues: Arc<dyn QueueStore>,
    tables: Arc<dyn TableStore>,
    blobs: Arc<dyn BlobStore>,
    plan: FaultPlan,
    rng: Mutex<StdRng>,
    enabled: AtomicBool,
    counters: Counters,
}

impl fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStorage")
            .field("plan", &self.plan)
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl FaultyStorage {
    /// A decorator over the given clients, enabled.
    pub fn new(
        queues: Arc<dyn QueueStore>,
        tables: Arc<dyn TableStore>,
        blobs: Arc<dyn BlobStore>,
        plan: FaultPlan,
    ) -> Self {
        Self {
            queues,
            tables,
            blobs,
            rng: Mutex::new(StdRng::seed_from_u64(plan.seed)),
            plan,
            enabled: AtomicBool::new(true),
            counters: Counters::default(),
        }
    }

    /// A decorator over the clients of `stack`.
    pub fn over(stack: &StorageStack, plan: FaultPlan) -> Arc<Self> {
        Arc::new(Self::new(stack.queues.clone(), stack.tables.clone(), stack.blobs.clone(), plan))
    }

    /// `base` with its three clients replaced by this decorator (same counters and URLs).
    pub fn stack(self: &Arc<Self>, base: &StorageStack) -> StorageStack {
        StorageStack {
            queues: self.clone(),
            tables: self.clone(),
            blobs: self.clone(),
            counters: base.counters.clone(),
            large_messages_container_url: base.large_messages_container_url.clone(),
        }
    }

    /// Switches injection on or off (calls pass through untouched while off).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    /// Whether injection is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultStats {
            calls: g(&c.calls),
            errors: g(&c.errors),
            timeouts: g(&c.timeouts),
            committed_timeouts: g(&c.committed_timeouts),
            duplicated_puts: g(&c.duplicated_puts),
            reordered_batches: g(&c.reordered_batches),
            held_back: g(&c.held_back),
            delayed: g(&c.delayed),
        }
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut rng)
    }

    fn active(&self, op: StorageOp, resource: &str) -> bool {
        self.is_enabled() && self.plan.applies(op, resource)
    }

    fn decide(&self, op: StorageOp, resource: &str) -> (Decision, Option<Duration>) {
        bump(&self.counters.calls);
        if !self.active(op, resource) {
            return (Decision::Pass, None);
        }
        let p = &self.plan;
        self.with_rng(|rng| {
            let latency =
                p.latency.map(|(min, max)| if max > min { rng.gen_range(min..=max) } else { min });
            let x: f64 = rng.r#gen();
            let decision = if x < p.error_rate {
                Decision::Error(rng.gen_bool(0.5))
            } else if x < p.error_rate + p.timeout_rate {
                Decision::Timeout
            } else if x < p.error_rate + p.timeout_rate + p.committed_timeout_rate {
                Decision::CommittedTimeout
            } else {
                Decision::Pass
            };
            (decision, latency)
        })
    }

    fn chance(&self, op: StorageOp, resource: &str, rate: f64) -> bool {
        rate > 0.0 && self.active(op, resource) && self.with_rng(|rng| rng.r#gen::<f64>() < rate)
    }

    /// Runs `call` under the decision for (`op`, `resource`).
    async fn run<T, F>(
        &self,
        op: StorageOp,
        operation: &'static str,
        resource: &str,
        call: F,
    ) -> StorageResult<T>
    where
        F: Future<Output = StorageResult<T>>,
    {
        let (decision, latency) = self.decide(op, resource);
        if let Some(d) = latency.filter(|d| !d.is_zero()) {
            bump(&self.counters.delayed);
            tokio::time::sleep(d).await;
        }
        match decision {
            Decision::Pass => call.await,
            Decision::Error(throttle) => {
                bump(&self.counters.errors);
                Err(if throttle {
                    StorageError::new(
                        StorageErrorKind::Throttled,
                        operation,
                        "injected fault: server busy",
                    )
                    .with_status(503, Some("ServerBusy".into()))
                } else {
                    StorageError::new(
                        StorageErrorKind::Transient,
                        operation,
                        "injected fault: operation timed out on the server",
                    )
                    .with_status(500, Some("OperationTimedOut".into()))
                })
            }
            Decision::Timeout => {
                bump(&self.counters.timeouts);
                tokio::time::sleep(self.plan.timeout_delay).await;
                Err(StorageError::new(
                    StorageErrorKind::Transient,
                    operation,
                    "injected fault: timed out (request not sent)",
                ))
            }
            Decision::CommittedTimeout => {
                let outcome = call.await;
                bump(&self.counters.committed_timeouts);
                match outcome {
                    Ok(_) => Err(StorageError::new(
                        StorageErrorKind::Transient,
                        operation,
                        "injected fault: timed out after the request was executed",
                    )),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[async_trait]
impl QueueStore for FaultyStorage {
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()> {
        self.run(StorageOp::QueueAdmin, "create queue", queue, async {
            self.queues.create_queue_if_not_exists(queue).await
        })
        .await
    }

    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()> {
        self.run(StorageOp::QueueAdmin, "delete queue", queue, async {
            self.queues.delete_queue_if_exists(queue).await
        })
        .await
    }

    async fn put_message(
        &self,
        queue: &str,
        text: &str,
        initial_visibility: Duration,
    ) -> StorageResult<()> {
        let dup = self.chance(StorageOp::QueuePut, queue, self.plan.duplicate_put_rate);
        self.run(StorageOp::QueuePut, "put message", queue, async {
            self.queues.put_message(queue, text, initial_visibility).await?;
            if dup {
                bump(&self.counters.duplicated_puts);
                self.queues.put_message(queue, text, initial_visibility).await?;
            }
            Ok(())
        })
        .await
    }

    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>> {
        let mut got = self
            .run(StorageOp::QueueGet, "get messages", queue, async {
                self.queues.get_messages(queue, max, visibility).await
            })
            .await?;
        if !self.active(StorageOp::QueueGet, queue) {
            return Ok(got);
        }
        if self.plan.hold_back_rate > 0.0 {
            let max_secs = self.plan.hold_back_max.as_secs().max(1);
            let mut kept = Vec::with_capacity(got.len());
            let mut held = Vec::new();
            self.with_rng(|rng| {
                for m in got.drain(..) {
                    if rng.r#gen::<f64>() < self.plan.hold_back_rate {
                        held.push((m, Duration::from_secs(rng.gen_range(1..=max_secs))));
                    } else {
                        kept.push(m);
                    }
                }
            });
            for (m, delay) in held {
                // Hidden again for a short while: the caller never saw it, so it comes back
                // later, after messages enqueued behind it.
                if self
                    .queues
                    .update_message(queue, &m.id, &m.pop_receipt, &m.text, delay)
                    .await
                    .is_ok()
                {
                    bump(&self.counters.held_back);
                }
            }
            got = kept;
        }
        if got.len() > 1 {
            match self.plan.reorder {
                Reorder::None => {}
                Reorder::Reverse => {
                    got.reverse();
                    bump(&self.counters.reordered_batches);
                }
                Reorder::Shuffle => {
                    self.with_rng(|rng| got.shuffle(rng));
                    bump(&self.counters.reordered_batches);
                }
            }
        }
        Ok(got)
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()> {
        self.run(StorageOp::QueueDelete, "delete message", queue, async {
            self.queues.delete_message(queue, id, pop_receipt).await
        })
        .await
    }

    async fn update_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        text: &str,
        visibility: Duration,
    ) -> StorageResult<String> {
        self.run(StorageOp::QueueUpdate, "update message", queue, async {
            self.queues.update_message(queue, id, pop_receipt, text, visibility).await
        })
        .await
    }

    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64> {
        self.run(StorageOp::QueueAdmin, "queue metadata", queue, async {
            self.queues.approximate_message_count(queue).await
        })
        .await
    }

    async fn peek_messages(&self, queue: &str, max: u8) -> StorageResult<Vec<PeekedMessage>> {
        self.run(StorageOp::QueueGet, "peek messages", queue, async {
            self.queues.peek_messages(queue, max).await
        })
        .await
    }
}

#[async_trait]
impl TableStore for FaultyStorage {
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()> {
        self.run(StorageOp::TableAdmin, "create table", table, async {
            self.tables.create_table_if_not_exists(table).await
        })
        .await
    }

    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()> {
        self.run(StorageOp::TableAdmin, "delete table", table, async {
            self.tables.delete_table_if_exists(table).await
        })
        .await
    }

    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>> {
        self.run(StorageOp::TableQuery, "get entity", table, async {
            self.tables.get_entity(table, partition_key, row_key).await
        })
        .await
    }

    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage> {
        self.run(StorageOp::TableQuery, "query entities", table, async {
            self.tables.query(table, filter, select, top, continuation).await
        })
        .await
    }

    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>> {
        self.run(StorageOp::TableWrite, "write entity", table, async {
            self.tables.write(table, op).await
        })
        .await
    }

    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
        self.run(StorageOp::TableBatch, "table batch", table, async {
            self.tables.batch(table, ops).await
        })
        .await
    }
}

#[async_trait]
impl BlobStore for FaultyStorage {
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()> {
        self.run(StorageOp::BlobAdmin, "create container", container, async {
            self.blobs.create_container_if_not_exists(container).await
        })
        .await
    }

    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()> {
        self.run(StorageOp::BlobAdmin, "delete container", container, async {
            self.blobs.delete_container_if_exists(container).await
        })
        .await
    }

    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease_id: Option<&str>,
    ) -> StorageResult<()> {
        self.run(StorageOp::BlobPut, "put blob", container, async {
            self.blobs.put_blob(container, name, data, lease_id).await
        })
        .await
    }

    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>> {
        self.run(StorageOp::BlobGet, "get blob", container, async {
            self.blobs.get_blob(container, name).await
        })
        .await
    }

    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()> {
        self.run(StorageOp::BlobDelete, "delete blob", container, async {
            self.blobs.delete_blob_if_exists(container, name).await
        })
        .await
    }

    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>> {
        self.run(StorageOp::BlobList, "list blobs", container, async {
            self.blobs.list_blobs(container, prefix).await
        })
        .await
    }

    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        self.run(StorageOp::BlobLease, "acquire lease", container, async {
            self.blobs.acquire_lease(container, name, duration, proposed_lease_id).await
        })
        .await
    }

    async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> StorageResult<()> {
        self.run(StorageOp::BlobLease, "renew lease", container, async {
            self.blobs.renew_lease(container, name, lease_id).await
        })
        .await
    }

    async fn release_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
    ) -> StorageResult<()> {
        self.run(StorageOp::BlobLease, "release lease", container, async {
            self.blobs.release_lease(container, name, lease_id).await
        })
        .await
    }

    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        self.run(StorageOp::BlobLease, "change lease", container, async {
            self.blobs.change_lease(container, name, lease_id, proposed_lease_id).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_filters_by_kind_and_resource() {
        let p = FaultPlan::default();
        assert!(p.applies(StorageOp::TableBatch, "HubHistory"));
        assert!(!p.applies(StorageOp::TableAdmin, "HubHistory"));
        let p = FaultPlan {
            ops: Some(vec![StorageOp::TableBatch]),
            resource_contains: Some("history".into()),
            ..FaultPlan::default()
        };
        assert!(p.applies(StorageOp::TableBatch, "HubHistory"));
        assert!(!p.applies(StorageOp::TableBatch, "HubInstances"));
        assert!(!p.applies(StorageOp::TableWrite, "HubHistory"));
        assert!(FaultPlan::fail_everything().applies(StorageOp::QueueAdmin, "x"));
    }

    #[test]
    fn decisions_follow_the_seed_and_rates() {
        let mk = |seed| {
            let plan = FaultPlan {
                seed,
                error_rate: 0.2,
                committed_timeout_rate: 0.1,
                ..FaultPlan::default()
            };
            let s = FaultyStorage {
                queues: Arc::new(crate::storage::InMemoryStorage::new()),
                tables: Arc::new(crate::storage::InMemoryStorage::new()),
                blobs: Arc::new(crate::storage::InMemoryStorage::new()),
                rng: Mutex::new(StdRng::seed_from_u64(plan.seed)),
                plan,
                enabled: AtomicBool::new(true),
                counters: Counters::default(),
            };
            (0..2000).map(|_| s.decide(StorageOp::QueuePut, "q").0).collect::<Vec<_>>()
        };
        let a = mk(7);
        assert_eq!(a, mk(7), "same seed, same decisions");
        assert_ne!(a, mk(8));
        let errors = a.iter().filter(|d| matches!(d, Decision::Error(_))).count();
        let ambiguous = a.iter().filter(|d| **d == Decision::CommittedTimeout).count();
        assert!((300..500).contains(&errors), "{errors}");
        assert!((120..280).contains(&ambiguous), "{ambiguous}");
    }
}
