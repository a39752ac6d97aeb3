//! Raw capacity of the storage account at the provider's concurrency, measured with the storage
//! layer directly (no provider logic): one phase per operation kind, each with `concurrency` tasks
//! calling back to back for a fixed time.
//!
//! The phases: queue put (on a queue that grows); queue get (1 message, long visibility) and queue
//! delete (of the messages just received), both on a second queue holding at most 8 messages per
//! task, because Azurite's receive and delete slow down with the number of stored messages; table
//! batch (2 history-like rows + a sentinel row, a fresh partition each);
//! table query (one partition written by the batch phase); table write (upsert of an
//! Instances-like row). The rate of a phase is successful calls per second of the phase.
//!
//! [`ProbeResult::rate_for`] maps every counted [`StorageOp`] kind to a measured rate (kinds that
//! are not probed use the closest probed kind, see [`proxy_for`]), and [`ProbeResult::bound`] turns
//! operations per unit of work into the throughput the account allows: with `n_k` operations of
//! kind `k` per orchestration and capacity `r_k` operations/s, one orchestration occupies the
//! storage for `Σ n_k / r_k` seconds, so the bound is `1 / Σ n_k / r_k` orchestrations/s. This
//! models a storage service that serves one kind at a time from one pool of capacity, which is
//! how Azurite (one Node.js event loop) behaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durabletask_azure_storage::storage::{
    AzureStorage, BatchOp, EdmValue, QueueStore, StorageAccount, StorageOp, StorageOpCounts,
    StorageResult, TableEntity, TableStore, WriteMode,
};
use serde::Serialize;

use crate::Result;

/// One phase of the probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbePhase {
    /// The kind measured (`StorageOp::name`).
    pub op: &'static str,
    /// Successful calls.
    pub ops: u64,
    /// Failed calls.
    pub errors: u64,
    /// Length of the phase in seconds (until the last call ended).
    pub seconds: f64,
    /// Successful calls per second.
    pub ops_per_sec: f64,
    /// Mean latency of one call in milliseconds.
    pub mean_latency_ms: f64,
}

/// All phases of one probe run.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Concurrent tasks per phase.
    pub concurrency: usize,
    /// Target length of a phase in seconds.
    pub phase_seconds: f64,
    /// The phases, in order.
    pub phases: Vec<ProbePhase>,
}

/// The probed kind whose rate stands in for `op` when `op` itself is not probed.
pub fn proxy_for(op: StorageOp) -> StorageOp {
    match op {
        StorageOp::QueuePut | StorageOp::QueueAdmin => StorageOp::QueuePut,
        StorageOp::QueueGet => StorageOp::QueueGet,
        // Update and delete both address one message by pop receipt.
        StorageOp::QueueDelete | StorageOp::QueueUpdate => StorageOp::QueueDelete,
        StorageOp::TableBatch => StorageOp::TableBatch,
        StorageOp::TableQuery => StorageOp::TableQuery,
        // Single-entity writes; blob calls are small single-object requests too.
        _ => StorageOp::TableWrite,
    }
}

impl ProbeResult {
    /// The measured rate (calls/s) used for `op` (see [`proxy_for`]).
    pub fn rate_for(&self, op: StorageOp) -> Option<f64> {
        let name = proxy_for(op).name();
        self.phases.iter().find(|p| p.op == name).map(|p| p.ops_per_sec).filter(|r| *r > 0.0)
    }

    /// Storage-seconds one unit of work occupies, given its operation counts divided by `units`.
    /// `None` when a needed rate is missing.
    pub fn seconds_per_unit(&self, counts: &StorageOpCounts, units: f64) -> Option<f64> {
        if units <= 0.0 {
            return None;
        }
        let mut secs = 0.0;
        for (op, n) in counts.non_zero() {
            secs += (n as f64 / units) / self.rate_for(op)?;
        }
        Some(secs)
    }

    /// Units of work per second the account allows (`1 / seconds_per_unit`).
    pub fn bound(&self, counts: &StorageOpCounts, units: f64) -> Option<f64> {
        self.seconds_per_unit(counts, units).filter(|s| *s > 0.0).map(|s| 1.0 / s)
    }
}

/// What one call of a phase reports.
enum Step {
    /// Keep going.
    Done,
    /// Nothing left to do for this task (no receipts left); no call was made.
    Exhausted,
    /// The call was made and counts, but there is nothing left to do (queue empty).
    LastCall,
}

/// Runs the probe over a private queue and table, deleting both afterwards.
///
/// # Errors
/// When the queue or table cannot be created. Failed calls inside a phase are counted, not
/// returned.
pub async fn run(
    account: &StorageAccount,
    concurrency: usize,
    phase: Duration,
) -> Result<ProbeResult> {
    let storage = Arc::new(AzureStorage::new(account, Duration::from_secs(30)));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let queue: Arc<str> = format!("dtbprobe-{}", &id[..12]).into();
    let table: Arc<str> = format!("dtbprobe{}", &id[..12]).into();
    storage.create_queue_if_not_exists(&queue).await?;
    storage.create_table_if_not_exists(&table).await?;
    let result = phases(&storage, &queue, &table, concurrency.max(1), phase).await;
    let q = storage.delete_queue_if_exists(&queue).await;
    let t = storage.delete_table_if_exists(&table).await;
    let result = result?;
    q?;
    t?;
    Ok(result)
}

async fn phases(
    storage: &Arc<AzureStorage>,
    queue: &Arc<str>,
    table: &Arc<str>,
    concurrency: usize,
    length: Duration,
) -> Result<ProbeResult> {
    let mut out = Vec::new();
    // A control-queue message is a few hundred bytes of JSON.
    let payload: Arc<str> = "x".repeat(600).into();

    let (s, q, p) = (storage.clone(), queue.clone(), payload.clone());
    out.push(
        phase(StorageOp::QueuePut, concurrency, length, move |_, _| {
            let (s, q, p) = (s.clone(), q.clone(), p.clone());
            async move {
                s.put_message(&q, &p, Duration::ZERO).await?;
                Ok(Step::Done)
            }
        })
        .await,
    );

    // The put phase leaves thousands of messages behind; Azurite's receive and delete slow down
    // with the number of stored messages, so they are measured on a second queue that never holds
    // more than `ROUND_MESSAGES_PER_TASK × concurrency` messages: fill (not timed), receive all
    // (timed), delete all (timed), repeated until each timed part has run for `length`.
    storage.delete_queue_if_exists(queue).await?;
    let cycle: Arc<str> = format!("{queue}-c").into();
    storage.create_queue_if_not_exists(&cycle).await?;
    let per_round = ROUND_MESSAGES_PER_TASK * concurrency;
    let (mut gets, mut deletes) = (Vec::new(), Vec::new());
    let (mut get_time, mut delete_time) = (Duration::ZERO, Duration::ZERO);
    for _round in 0..MAX_ROUNDS {
        if get_time >= length && delete_time >= length {
            break;
        }
        let filled = Arc::new(AtomicUsize::new(0));
        let (s, q, p, f) = (storage.clone(), cycle.clone(), payload.clone(), filled);
        let fill =
            phase(StorageOp::QueuePut, concurrency, Duration::from_secs(120), move |_, _| {
                let (s, q, p, f) = (s.clone(), q.clone(), p.clone(), f.clone());
                async move {
                    if f.fetch_add(1, Ordering::Relaxed) >= per_round {
                        return Ok(Step::Exhausted);
                    }
                    s.put_message(&q, &p, Duration::ZERO).await?;
                    Ok(Step::Done)
                }
            })
            .await;
        if fill.ops == 0 {
            break;
        }

        let receipts: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (s, q, r) = (storage.clone(), cycle.clone(), receipts.clone());
        let got = phase(StorageOp::QueueGet, concurrency, length, move |_, _| {
            let (s, q, r) = (s.clone(), q.clone(), r.clone());
            async move {
                let msgs = s.get_messages(&q, 1, Duration::from_secs(600)).await?;
                if msgs.is_empty() {
                    // An empty receive is still a receive (idle pollers make them too).
                    return Ok(Step::LastCall);
                }
                let mut r = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                r.extend(msgs.into_iter().map(|m| (m.id, m.pop_receipt)));
                Ok(Step::Done)
            }
        })
        .await;
        get_time += Duration::from_secs_f64(got.seconds);
        gets.push(got);

        let (s, q, r) = (storage.clone(), cycle.clone(), receipts);
        let deleted = phase(StorageOp::QueueDelete, concurrency, length, move |_, _| {
            let (s, q, r) = (s.clone(), q.clone(), r.clone());
            async move {
                let next = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
                let Some((id, pop)) = next else { return Ok(Step::Exhausted) };
                s.delete_message(&q, &id, &pop).await?;
                Ok(Step::Done)
            }
        })
        .await;
        delete_time += Duration::from_secs_f64(deleted.seconds);
        deletes.push(deleted);
    }
    storage.delete_queue_if_exists(&cycle).await?;
    out.push(combine(StorageOp::QueueGet, &gets));
    out.push(combine(StorageOp::QueueDelete, &deletes));

    let written: Arc<Mutex<Vec<String>>> = Arc::default();
    let history_payload: Arc<str> = "h".repeat(300).into();
    let (s, t, w, h) = (storage.clone(), table.clone(), written.clone(), history_payload);
    out.push(
        phase(StorageOp::TableBatch, concurrency, length, move |task, iter| {
            let (s, t, w, h) = (s.clone(), t.clone(), w.clone(), h.clone());
            async move {
                let pk = format!("p{task}-{iter}");
                let row = |rk: &str| TableEntity::new(pk.clone(), rk.to_owned());
                let ops = vec![
                    BatchOp {
                        mode: WriteMode::Insert,
                        entity: row("0000000000000000")
                            .with("EventType", EdmValue::String("TaskScheduled".into()))
                            .with("Payload", EdmValue::String(h.to_string())),
                    },
                    BatchOp {
                        mode: WriteMode::Insert,
                        entity: row("0000000000000001")
                            .with("EventType", EdmValue::String("TaskCompleted".into()))
                            .with("Payload", EdmValue::String(h.to_string())),
                    },
                    BatchOp {
                        mode: WriteMode::Upsert,
                        entity: row("sentinel")
                            .with("ExecutionId", EdmValue::String("e".repeat(32))),
                    },
                ];
                s.batch(&t, ops).await?;
                w.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(pk);
                Ok(Step::Done)
            }
        })
        .await,
    );

    let (s, t, w) = (storage.clone(), table.clone(), written);
    out.push(
        phase(StorageOp::TableQuery, concurrency, length, move |task, iter| {
            let (s, t, w) = (s.clone(), t.clone(), w.clone());
            async move {
                let pk = {
                    let w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if w.is_empty() {
                        return Ok(Step::Exhausted);
                    }
                    let i = (task
                        .wrapping_mul(7919)
                        .wrapping_add(usize::try_from(iter).unwrap_or(usize::MAX)))
                        % w.len();
                    w[i].clone()
                };
                let filter = format!("PartitionKey eq '{pk}'");
                s.query(&t, Some(&filter), None, None, None).await?;
                Ok(Step::Done)
            }
        })
        .await,
    );

    let (s, t) = (storage.clone(), table.clone());
    out.push(
        phase(StorageOp::TableWrite, concurrency, length, move |task, iter| {
            let (s, t) = (s.clone(), t.clone());
            async move {
                let entity = TableEntity::new("instances", format!("i{task}"))
                    .with("RuntimeStatus", EdmValue::String("Running".into()))
                    .with("Iteration", EdmValue::Int64(i64::try_from(iter).unwrap_or(i64::MAX)));
                s.write(&t, BatchOp { mode: WriteMode::UpsertMerge, entity }).await?;
                Ok(Step::Done)
            }
        })
        .await,
    );

    Ok(ProbeResult { concurrency, phase_seconds: length.as_secs_f64(), phases: out })
}

/// Messages per task in one receive/delete round (the cycle queue never holds more).
const ROUND_MESSAGES_PER_TASK: usize = 8;
/// Upper limit of receive/delete rounds.
const MAX_ROUNDS: usize = 50;

/// Sums the rounds of one kind.
fn combine(op: StorageOp, parts: &[ProbePhase]) -> ProbePhase {
    let ops: u64 = parts.iter().map(|p| p.ops).sum();
    let errors: u64 = parts.iter().map(|p| p.errors).sum();
    let seconds: f64 = parts.iter().map(|p| p.seconds).sum();
    let calls = ops + errors;
    let busy_ms: f64 = parts.iter().map(|p| p.mean_latency_ms * (p.ops + p.errors) as f64).sum();
    ProbePhase {
        op: op.name(),
        ops,
        errors,
        seconds,
        ops_per_sec: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
        mean_latency_ms: if calls > 0 { busy_ms / calls as f64 } else { 0.0 },
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    busy: Duration,
    last_end: Option<Instant>,
}

/// Runs `call(task, iteration)` from `concurrency` tasks until `length` has passed or every task
/// is exhausted.
async fn phase<F, Fut>(op: StorageOp, concurrency: usize, length: Duration, call: F) -> ProbePhase
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = StorageResult<Step>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let call = call.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut iter = 0u64;
            let mut consecutive_errors = 0u32;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = call(task, iter).await;
                let t1 = Instant::now();
                tally.busy += t1 - t0;
                tally.last_end = Some(t1);
                iter += 1;
                match r {
                    Ok(Step::Done) => {
                        tally.ok += 1;
                        consecutive_errors = 0;
                    }
                    Ok(Step::Exhausted) => break,
                    Ok(Step::LastCall) => {
                        tally.ok += 1;
                        break;
                    }
                    Err(e) => {
                        tally.errors += 1;
                        consecutive_errors += 1;
                        tracing::debug!(op = op.name(), error = %e, "probe call failed");
                        if consecutive_errors > 100 {
                            break;
                        }
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let Ok(t) = joined else { continue };
        total.ok += t.ok;
        total.errors += t.errors;
        total.busy += t.busy;
        total.last_end = total.last_end.max(t.last_end);
    }
    let seconds = total.last_end.map_or(0.0, |end| (end - start).as_secs_f64());
    let calls = total.ok + total.errors;
    ProbePhase {
        op: op.name(),
        ops: total.ok,
        errors: total.errors,
        seconds,
        ops_per_sec: if seconds > 0.0 { total.ok as f64 / seconds } else { 0.0 },
        mean_latency_ms: if calls > 0 {
            total.busy.as_secs_f64() * 1000.0 / calls as f64
        } else {
            0.0
        },
    }
}
