//! The worker-wide control-queue bookkeeping: received messages buffered by instance, the
//! instances with work in progress, prepared work items, the owner's history cache, each
//! poller's activity, and the stats built from them ([`ProviderStats`]).
//!
//! Every message a poller received is *held* (counted against
//! `control_queue_buffer_threshold`) until its fate is decided; held is a multiset of message
//! ids kept apart from the buffered and in-flight counts, so a difference is a leak.

use super::Inner;
use super::tracking::{self, LoadedHistory};
use crate::keys::partition_index;
use durabletask_core::HistoryEvent;
use durabletask_core::TaskMessage;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Cached histories kept by the partition owner.
const HISTORY_CACHE_LIMIT: usize = 4096;

/// A received, decoded control-queue message.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) pop_receipt: String,
    pub(crate) dequeue_count: u64,
    pub(crate) next_visible: OffsetDateTime,
    pub(crate) insertion_time: OffsetDateTime,
    pub(crate) sequence_number: i64,
    pub(crate) message: TaskMessage,
    /// The queue text as received (visibility updates must send it back unchanged).
    pub(crate) text: String,
    /// The large-message blob holding the envelope, if it was too large for the queue (deleted
    /// with the message).
    pub(crate) blob: Option<String>,
}

/// What deleting a received message needs: queue, id, pop receipt, and its envelope blob.
#[derive(Debug, Clone)]
pub(crate) struct MessageRef {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) pop_receipt: String,
    pub(crate) blob: Option<String>,
}

impl MessageRef {
    pub(crate) fn of(m: &Buffered) -> Self {
        Self {
            queue: m.queue.clone(),
            id: m.id.clone(),
            pop_receipt: m.pop_receipt.clone(),
            blob: m.blob.clone(),
        }
    }
}

/// What the partition owner remembers about an instance between work items.
#[derive(Debug, Clone)]
pub(crate) struct CachedInstance {
    pub(crate) queue: String,
    pub(crate) events: Vec<HistoryEvent>,
    pub(crate) sentinel_etag: Option<String>,
    pub(crate) instance_etag: Option<String>,
    pub(crate) blobs: Vec<String>,
    /// The blobs the Instances row references as last written (`None`: unknown).
    pub(crate) row_blobs: Option<tracking::RowBlobs>,
}

/// A work item ready to be locked.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) instance_id: String,
    pub(crate) queue: String,
    pub(crate) messages: Vec<Buffered>,
    pub(crate) history: LoadedHistory,
    pub(crate) instance_etag: Option<String>,
    pub(crate) instance_exists: bool,
}

/// An instance with a prefetch, a prepared or a locked work item.
#[derive(Debug)]
pub(crate) struct Busy {
    pub(crate) queue: String,
    /// Messages in that work item (the batch while prefetching; the kept ones afterwards).
    pub(crate) messages: usize,
}

#[derive(Default)]
pub(crate) struct Buffers {
    /// Messages waiting for the instance's next work item.
    pub(crate) pending: HashMap<String, Vec<Buffered>>,
    /// Instances with a prefetch, a prepared or a locked work item.
    pub(crate) busy: HashMap<String, Busy>,
    /// Work items ready to lock, FIFO.
    pub(crate) prepared: VecDeque<Prepared>,
    /// Every message held in memory, by id, with the number of copies held (a redelivery of a
    /// message that is in a locked work item is a second copy). The buffer threshold counts these;
    /// it is kept apart from `pending` and `busy` so that [`ControlState::stats`] can check the
    /// two bookkeepings against each other (a difference is a leak).
    pub(crate) held: HashMap<String, u32>,
    /// Total of `held`'s counts.
    pub(crate) held_total: usize,
    /// History cache of the partition owner.
    pub(crate) cache: HashMap<String, CachedInstance>,
    /// Instances whose next prefetch must read storage (a cached assumption failed).
    pub(crate) force_read: HashSet<String>,
}

impl Buffers {
    pub(crate) fn hold(&mut self, id: &str) {
        *self.held.entry(id.to_owned()).or_insert(0) += 1;
        self.held_total += 1;
    }

    pub(crate) fn unhold(&mut self, id: &str) {
        if let Some(n) = self.held.get_mut(id) {
            *n -= 1;
            self.held_total -= 1;
            if *n == 0 {
                self.held.remove(id);
            }
        }
    }
}

/// What a control-queue poller last did (for [`ProviderStats`]).
#[derive(Debug, Default)]
pub(crate) struct PollerActivity {
    pub(crate) last_receive: Option<Instant>,
    pub(crate) paused_since: Option<Instant>,
    /// When the receive call in progress started (the store has not answered it yet).
    pub(crate) receiving_since: Option<Instant>,
}

/// In-memory state of a provider's control-queue side, for health endpoints and the chaos
/// auditor. Taken under one lock, so the numbers are consistent with each other.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderStats {
    /// Messages held in memory; the poller pauses at `control_queue_buffer_threshold` of these.
    pub held_messages: usize,
    /// Messages waiting in per-instance buffers for their instance's next work item.
    pub buffered_messages: usize,
    /// Messages in a prefetch, a prepared or a locked work item.
    pub in_flight_messages: usize,
    /// Instances with a prefetch, a prepared or a locked work item.
    pub busy_instances: usize,
    /// Prepared work items waiting to be locked.
    pub prepared_work_items: usize,
    /// Histories cached by the partition owner.
    pub cached_histories: usize,
    /// Activity work items locked and not yet completed or abandoned.
    pub active_activities: usize,
    /// One entry per control queue with a running poller.
    pub control_queues: Vec<ControlQueueStats>,
}

impl ProviderStats {
    /// Held messages that are neither buffered nor in flight: always 0 unless bookkeeping leaked
    /// (a leak eventually pauses every poller for good).
    pub fn leaked_messages(&self) -> usize {
        self.held_messages.saturating_sub(self.buffered_messages + self.in_flight_messages)
    }
}

/// What one control-queue poller is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlQueueStats {
    /// The control queue.
    pub control_queue: String,
    /// Time since the poller's last successful receive (empty or not); `None` before the first.
    pub since_last_receive: Option<Duration>,
    /// How long the poller has been paused at the buffer threshold, while it is.
    pub paused_for: Option<Duration>,
    /// The partition is fenced: its lease could not be renewed in time, so the poller neither
    /// receives nor checkpoints until a renewal proves it is still ours (buffered work is kept).
    pub fenced: bool,
    /// How long the receive call in progress has been waiting for the store, if one is: a
    /// poller that keeps asking a slow store is not stuck, one that stopped asking is.
    pub receiving_for: Option<Duration>,
}

pub(crate) struct Poller {
    pub(crate) cancel: Arc<AtomicBool>,
    /// Kept so the task is not detached silently; never aborted (see [`Poller::stop`]).
    pub(crate) _task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Asks the poll loop to stop and wakes it from its back-off. The task is not aborted: a
    /// receive in progress completes and its messages are released at once (an aborted receive
    /// left them invisible for the whole visibility timeout).
    pub(crate) fn stop(self, inner: &Inner, queue: &str) {
        self.cancel.store(true, Ordering::Release);
        let index = inner.names.control_queues.iter().position(|q| q == queue);
        if let Some(w) = index.and_then(|i| inner.control.wakers.get(i)) {
            w.notify_one();
        }
    }
}

/// Control-queue state of one provider.
pub(crate) struct ControlState {
    pub(crate) buffers: Mutex<Buffers>,
    pub(crate) ready: Notify,
    pub(crate) wakers: Vec<Arc<Notify>>,
    pub(crate) pollers: Mutex<HashMap<String, Poller>>,
    pub(crate) activity: Mutex<HashMap<String, PollerActivity>>,
    pub(crate) stopped: AtomicBool,
}

impl ControlState {
    pub(crate) fn new(names: &crate::naming::ResourceNames) -> Self {
        Self {
            buffers: Mutex::new(Buffers::default()),
            ready: Notify::new(),
            wakers: names.control_queues.iter().map(|_| Arc::new(Notify::new())).collect(),
            pollers: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Buffers> {
        locked(&self.buffers)
    }

    /// The control-queue side's bookkeeping, for health and audits.
    pub(crate) fn stats(&self, active_activities: usize) -> ProviderStats {
        let now = Instant::now();
        let pollers: Vec<String> = locked(&self.pollers).keys().cloned().collect();
        let mut control_queues: Vec<ControlQueueStats> = {
            let activity = locked(&self.activity);
            pollers
                .into_iter()
                .map(|q| {
                    let a = activity.get(&q);
                    ControlQueueStats {
                        since_last_receive: a
                            .and_then(|a| a.last_receive)
                            .map(|t| now.saturating_duration_since(t)),
                        paused_for: a
                            .and_then(|a| a.paused_since)
                            .map(|t| now.saturating_duration_since(t)),
                        fenced: false,
                        receiving_for: a
                            .and_then(|a| a.receiving_since)
                            .map(|t| now.saturating_duration_since(t)),
                        control_queue: q,
                    }
                })
                .collect()
        };
        control_queues.sort_by(|a, b| a.control_queue.cmp(&b.control_queue));
        let b = self.lock();
        ProviderStats {
            held_messages: b.held_total,
            buffered_messages: b.pending.values().map(Vec::len).sum(),
            in_flight_messages: b.busy.values().map(|x| x.messages).sum(),
            busy_instances: b.busy.len(),
            prepared_work_items: b.prepared.len(),
            cached_histories: b.cache.len(),
            active_activities,
            control_queues,
        }
    }

    pub(crate) fn record_receive(&self, queue: &str) {
        let mut a = locked(&self.activity);
        let e = a.entry(queue.to_owned()).or_default();
        e.last_receive = Some(Instant::now());
        e.paused_since = None;
        e.receiving_since = None;
    }

    pub(crate) fn record_receive_start(&self, queue: &str) {
        let mut a = locked(&self.activity);
        a.entry(queue.to_owned()).or_default().receiving_since = Some(Instant::now());
    }

    pub(crate) fn record_receive_failed(&self, queue: &str) {
        if let Some(e) = locked(&self.activity).get_mut(queue) {
            e.receiving_since = None;
        }
    }

    pub(crate) fn record_pause(&self, queue: &str) {
        let mut a = locked(&self.activity);
        let e = a.entry(queue.to_owned()).or_default();
        e.paused_since.get_or_insert_with(Instant::now);
    }

    pub(crate) fn forget_poller(&self, queue: &str) {
        locked(&self.activity).remove(queue);
    }

    /// Resets the poll back-off of a control queue after a local send.
    pub(crate) fn wake(&self, partition: u8) {
        if let Some(w) = self.wakers.get(usize::from(partition)) {
            w.notify_one();
        }
    }

    /// Takes the next prepared work item whose partition is owned; also returns the items of
    /// partitions no longer held (to release). Items of fenced partitions stay queued.
    pub(crate) fn pop_prepared(&self, inner: &Inner) -> (Option<Prepared>, Vec<Prepared>) {
        let mut b = self.lock();
        let mut dropped = Vec::new();
        let mut found = None;
        let mut kept = VecDeque::with_capacity(b.prepared.len());
        while let Some(p) = b.prepared.pop_front() {
            if found.is_none() && inner.partitions.is_owned(&p.queue) {
                found = Some(p);
            } else if inner.partitions.is_held(&p.queue) {
                kept.push_back(p);
            } else {
                dropped.push(p);
            }
        }
        b.prepared = kept;
        (found, dropped)
    }

    pub(crate) async fn wait_ready(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.ready.notified()).await.is_ok()
    }

    /// Remembers an instance's history after a successful checkpoint.
    pub(crate) fn cache_put(&self, instance_id: &str, entry: CachedInstance) {
        let mut b = self.lock();
        if b.cache.len() >= HISTORY_CACHE_LIMIT && !b.cache.contains_key(instance_id) {
            // Evict an arbitrary tenth; the next work item of those instances reads storage.
            let victims: Vec<String> =
                b.cache.keys().take(HISTORY_CACHE_LIMIT / 10).cloned().collect();
            for v in victims {
                b.cache.remove(&v);
            }
        }
        b.force_read.remove(instance_id);
        b.cache.insert(instance_id.to_owned(), entry);
    }

    /// Forgets an instance's cached history; its next prefetch reads storage.
    pub(crate) fn cache_invalidate(&self, instance_id: &str) {
        let mut b = self.lock();
        b.cache.remove(instance_id);
        b.force_read.insert(instance_id.to_owned());
    }

    /// Ends the instance's work item: its messages leave memory; returns the next batch if more
    /// arrived meanwhile (the caller starts its prefetch: [`super::prefetch::finish`]).
    pub(crate) fn end_work(
        &self,
        instance_id: &str,
        message_ids: &[String],
    ) -> Option<(String, Vec<Buffered>)> {
        let mut b = self.lock();
        for id in message_ids {
            b.unhold(id);
        }
        b.busy.remove(instance_id);
        take_batch(&mut b, instance_id)
    }
}

pub(crate) fn take_batch(b: &mut Buffers, instance_id: &str) -> Option<(String, Vec<Buffered>)> {
    if b.busy.contains_key(instance_id) {
        return None;
    }
    let batch = b.pending.remove(instance_id)?;
    let queue = batch.first().map(|m| m.queue.clone())?;
    b.busy.insert(instance_id.to_owned(), Busy { queue: queue.clone(), messages: batch.len() });
    Some((queue, batch))
}

/// Locks a std mutex, ignoring poisoning (the data is plain bookkeeping).
pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Queue name of an instance's control queue.
pub(crate) fn control_queue_of(inner: &Inner, instance_id: &str) -> (u8, String) {
    let p = partition_index(instance_id, inner.settings.partition_count);
    (p, inner.names.control_queues[usize::from(p)].clone())
}
