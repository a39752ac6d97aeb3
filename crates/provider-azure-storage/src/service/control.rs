//! Control queues: one poller per owned partition, the worker-wide message buffer, the
//! background prefetch that turns a buffered batch into a ready work item, and the partition
//! listener that starts, drains and drops pollers as ownership moves.
//!
//! Life of an instance's messages: a poller receives and decodes them (large envelopes are
//! downloaded; undecodable ones back off and are quarantined), re-arms timers that are not due
//! yet, and buffers them by instance. An instance with buffered messages and no work in progress
//! becomes *busy*: its batch is taken and a prefetch task loads its history (from the owner's
//! cache when the sentinel ETag is known) and, when needed, its Instances row; applies the start
//! de-duplication, the out-of-order rule and the executability checks; and queues the result as a
//! prepared work item. Messages that arrive while an instance is busy wait in the buffer for the
//! next work item (one work item per instance at a time).

use super::tracking::{self, InstanceRow, LoadedHistory};
use super::{Inner, MAX_VISIBILITY, perr};
use crate::envelope::{EnvelopeError, MessageData};
use crate::keys::partition_index;
use crate::storage::{ReceivedMessage, StorageErrorKind, StorageResult};
use async_trait::async_trait;
use durabletask_core::admission::{
    Admission, AdmissionInput, AdmissionRules, Candidate, Decision, InstanceAction, RowState,
    RowView, Verdict, admit, answers_unknown_events, is_top_level_start,
};
use durabletask_core::{
    EventKind, HistoryEvent, OrchestrationStatus, ProviderError, ProviderErrorKind, TaskMessage,
};
use durabletask_partition_manager::{Partition, PartitionListener};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Dequeue count at which an undecodable message is moved to the poison queue.
pub(crate) const QUARANTINE_DEQUEUE_COUNT: u64 = 5;
/// Dequeue count from which DTF logs `PoisonMessageDetected` (back-off reached its 600 s cap).
pub(crate) const POISON_DEQUEUE_COUNT: u64 = 10;
/// Top-level starts whose Instances row never appears are dropped after this many deliveries.
const ORPHAN_START_DEQUEUE_COUNT: u64 = 10;
/// Responses to an instance with no history are treated as zombies after this many deliveries.
const ZOMBIE_DEQUEUE_COUNT: u64 = 5;
/// Cached histories kept by the partition owner.
const HISTORY_CACHE_LIMIT: usize = 4096;

pub(crate) use durabletask_core::backoff::dtf_abandon as poison_backoff;

/// Queue lengths and ownership of a task hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubInfo {
    /// Whether the hub's queues exist.
    pub exists: bool,
    /// The task hub name.
    pub task_hub: String,
    /// Number of control queues.
    pub partition_count: u8,
    /// Control queues with their approximate lengths.
    pub control_queues: Vec<(String, u64)>,
    /// Approximate length of the work-item queue.
    pub work_item_queue_length: u64,
    /// Approximate length of the poison queue.
    pub poison_queue_length: u64,
    /// Control queues this process owns now.
    pub owned_partitions: Vec<String>,
}

pub(crate) async fn hub_info(inner: &Inner) -> Result<HubInfo, ProviderError> {
    let count = |q: String| async move {
        match inner.queues.approximate_message_count(&q).await {
            Ok(n) => Ok((q, Some(n))),
            Err(e) if e.kind() == StorageErrorKind::NotFound => Ok((q, None)),
            Err(e) => Err(super::provider_error("hub_info", e)),
        }
    };
    let (_, work) = count(inner.names.work_item_queue.clone()).await?;
    let (_, poison) = count(inner.names.poison_queue.clone()).await?;
    let mut control = Vec::new();
    for q in &inner.names.control_queues {
        let (q, n) = count(q.clone()).await?;
        control.push((q, n.unwrap_or(0)));
    }
    Ok(HubInfo {
        exists: work.is_some(),
        task_hub: inner.settings.task_hub_name.as_str().to_owned(),
        partition_count: inner.settings.partition_count,
        control_queues: control,
        work_item_queue_length: work.unwrap_or(0),
        poison_queue_length: poison.unwrap_or(0),
        owned_partitions: inner
            .partitions
            .owned_partitions()
            .into_iter()
            .map(|p| p.control_queue)
            .collect(),
    })
}

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
struct Busy {
    queue: String,
    /// Messages in that work item (the batch while prefetching; the kept ones afterwards).
    messages: usize,
}

#[derive(Default)]
struct Buffers {
    /// Messages waiting for the instance's next work item.
    pending: HashMap<String, Vec<Buffered>>,
    /// Instances with a prefetch, a prepared or a locked work item.
    busy: HashMap<String, Busy>,
    /// Work items ready to lock, FIFO.
    prepared: VecDeque<Prepared>,
    /// Every message held in memory, by id, with the number of copies held (a redelivery of a
    /// message that is in a locked work item is a second copy). The buffer threshold counts these;
    /// it is kept apart from `pending` and `busy` so that [`ControlState::stats`] can check the
    /// two bookkeepings against each other (a difference is a leak).
    held: HashMap<String, u32>,
    /// Total of `held`'s counts.
    held_total: usize,
    /// History cache of the partition owner.
    cache: HashMap<String, CachedInstance>,
    /// Instances whose next prefetch must read storage (a cached assumption failed).
    force_read: HashSet<String>,
}

impl Buffers {
    fn hold(&mut self, id: &str) {
        *self.held.entry(id.to_owned()).or_insert(0) += 1;
        self.held_total += 1;
    }

    fn unhold(&mut self, id: &str) {
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
struct PollerActivity {
    last_receive: Option<Instant>,
    paused_since: Option<Instant>,
    /// When the receive call in progress started (the store has not answered it yet).
    receiving_since: Option<Instant>,
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

struct Poller {
    cancel: Arc<AtomicBool>,
    /// Kept so the task is not detached silently; never aborted (see [`Poller::stop`]).
    _task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Asks the poll loop to stop and wakes it from its back-off. The task is not aborted: a
    /// receive in progress completes and its messages are released at once (an aborted receive
    /// left them invisible for the whole visibility timeout).
    fn stop(self, inner: &Inner, queue: &str) {
        self.cancel.store(true, Ordering::Release);
        let index = inner.names.control_queues.iter().position(|q| q == queue);
        if let Some(w) = index.and_then(|i| inner.control.wakers.get(i)) {
            w.notify_one();
        }
    }
}

/// Control-queue state of one provider.
pub(crate) struct ControlState {
    buffers: Mutex<Buffers>,
    ready: Notify,
    wakers: Vec<Arc<Notify>>,
    pollers: Mutex<HashMap<String, Poller>>,
    activity: Mutex<HashMap<String, PollerActivity>>,
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

    fn lock(&self) -> MutexGuard<'_, Buffers> {
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

    fn record_receive(&self, queue: &str) {
        let mut a = locked(&self.activity);
        let e = a.entry(queue.to_owned()).or_default();
        e.last_receive = Some(Instant::now());
        e.paused_since = None;
        e.receiving_since = None;
    }

    fn record_receive_start(&self, queue: &str) {
        let mut a = locked(&self.activity);
        a.entry(queue.to_owned()).or_default().receiving_since = Some(Instant::now());
    }

    fn record_receive_failed(&self, queue: &str) {
        if let Some(e) = locked(&self.activity).get_mut(queue) {
            e.receiving_since = None;
        }
    }

    fn record_pause(&self, queue: &str) {
        let mut a = locked(&self.activity);
        let e = a.entry(queue.to_owned()).or_default();
        e.paused_since.get_or_insert_with(Instant::now);
    }

    fn forget_poller(&self, queue: &str) {
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

    /// Ends the instance's work item: its messages leave memory and, if more arrived meanwhile,
    /// the next batch is scheduled.
    pub(crate) fn finish(inner: &Arc<Inner>, instance_id: &str, message_ids: &[String]) {
        let next = {
            let mut b = inner.control.lock();
            for id in message_ids {
                b.unhold(id);
            }
            b.busy.remove(instance_id);
            take_batch(&mut b, instance_id)
        };
        if let Some((queue, batch)) = next {
            spawn_prefetch(inner, instance_id.to_owned(), queue, batch);
        }
    }
}

fn take_batch(b: &mut Buffers, instance_id: &str) -> Option<(String, Vec<Buffered>)> {
    if b.busy.contains_key(instance_id) {
        return None;
    }
    let batch = b.pending.remove(instance_id)?;
    let queue = batch.first().map(|m| m.queue.clone())?;
    b.busy.insert(instance_id.to_owned(), Busy { queue: queue.clone(), messages: batch.len() });
    Some((queue, batch))
}

fn spawn_prefetch(inner: &Arc<Inner>, instance_id: String, queue: String, batch: Vec<Buffered>) {
    let inner = inner.clone();
    tokio::spawn(async move {
        prefetch(&inner, instance_id, queue, batch).await;
    });
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

// ---------------------------------------------------------------------------------------------
// Polling

/// Why a received message could not be turned into a task message.
#[derive(Debug, Clone)]
pub(crate) enum DecodeFailure {
    /// The message itself is bad (foreign, malformed, truncated, its blob missing or corrupt):
    /// decoding it again gives the same result, so it is quarantined after repeated deliveries.
    Malformed(String),
    /// Decoding needs something that is unavailable right now (a blob download failed): back
    /// off, never quarantine.
    Unavailable(String),
    /// A well-formed envelope of a newer format version, written by an upgraded worker during a
    /// rolling upgrade: back off so an upgraded worker can take it, and quarantine it once it is
    /// older than `newer_version_quarantine_age` (no upgraded worker came for it).
    NewerVersion(String),
    /// The envelope's blob is gone: a blob is deleted only with the message that was consumed or
    /// discarded (this is a duplicate of it) or by purge of the instance. Nothing can process
    /// it: the message is deleted.
    Gone(String),
}

impl DecodeFailure {
    fn reason(&self) -> &str {
        match self {
            Self::Malformed(r) | Self::Unavailable(r) | Self::NewerVersion(r) | Self::Gone(r) => r,
        }
    }
}

/// Largest poison record put on the poison queue as is (the queue service takes 64 KiB); a
/// larger one keeps the original text in a blob and references it.
const MAX_POISON_RECORD_BYTES: usize = 60 * 1024;

/// Prefix of the blobs holding the text of quarantined messages too large for a poison record.
/// Instance blob segments never start with `.` ([`crate::keys::blob_segment`]), so this prefix
/// cannot collide with an instance's blobs.
pub(crate) const POISON_BLOB_PREFIX: &str = crate::audit::POISON_PREFIX;

/// Decodes a received message, downloading a large envelope.
pub(crate) async fn decode(
    inner: &Inner,
    m: &ReceivedMessage,
) -> Result<MessageData, DecodeFailure> {
    let envelope_failure = |e: EnvelopeError| match e {
        EnvelopeError::UnsupportedVersion(v) if v > crate::envelope::ENVELOPE_VERSION => {
            DecodeFailure::NewerVersion(e.to_string())
        }
        other => DecodeFailure::Malformed(other.to_string()),
    };
    let data = MessageData::decode_text(&m.text).map_err(envelope_failure)?;
    let Some(blob) = data.compressed_blob_name.clone() else {
        return Ok(data);
    };
    if !crate::large::LargePayloads::is_message_blob_name(&blob) {
        // Not a name this provider writes: never download it, quarantine it like any malformed
        // message (a missing blob of the right shape is a consumed duplicate: `Gone`).
        return Err(DecodeFailure::Malformed(format!(
            "large-message blob name {blob:?} is not a message blob of this hub"
        )));
    }
    let bytes = inner.large.download(&blob).await.map_err(|e| match e.kind() {
        StorageErrorKind::NotFound => {
            DecodeFailure::Gone(format!("large-message blob {blob}: {e}"))
        }
        StorageErrorKind::Permanent | StorageErrorKind::InvalidInput => {
            DecodeFailure::Malformed(format!("large-message blob {blob}: {e}"))
        }
        _ => DecodeFailure::Unavailable(format!("large-message blob {blob}: {e}")),
    })?;
    let mut full = MessageData::from_bytes(&bytes).map_err(envelope_failure)?;
    if full.task_message.is_none() {
        return Err(DecodeFailure::Malformed(format!(
            "large-message blob {blob} holds no task message"
        )));
    }
    full.compressed_blob_name = Some(blob);
    Ok(full)
}

/// Handles a message that cannot be decoded. A malformed message backs off and is quarantined in
/// the poison queue once it has been delivered [`QUARANTINE_DEQUEUE_COUNT`] times (decoding is
/// deterministic, so earlier deliveries that failed for other reasons do not matter: it would
/// fail the same way). A message of a newer format version backs off the same way and is
/// quarantined once it is older than `newer_version_quarantine_age`. A message that is only
/// unavailable now is abandoned with a short back-off and never quarantined. The worker keeps
/// running either way.
pub(crate) async fn undecodable(
    inner: &Inner,
    queue: &str,
    m: &ReceivedMessage,
    failure: &DecodeFailure,
) {
    let reason = failure.reason();
    let quarantine_now = match failure {
        DecodeFailure::Gone(_) => {
            tracing::warn!(
                queue, message_id = %m.id, dequeue_count = m.dequeue_count, reason,
                "DuplicateMessageDetected: the message's blob is gone (consumed duplicate or purged instance); deleting"
            );
            let _ = inner.queues.delete_message(queue, &m.id, &m.pop_receipt).await;
            return;
        }
        DecodeFailure::Unavailable(_) => {
            let delay = poison_backoff(m.dequeue_count).min(Duration::from_secs(30));
            tracing::warn!(
                queue, message_id = %m.id, dequeue_count = m.dequeue_count, reason,
                delay_secs = delay.as_secs(), "MessageFailure: cannot decode message now; abandoning"
            );
            let _ = inner.queues.update_message(queue, &m.id, &m.pop_receipt, &m.text, delay).await;
            return;
        }
        DecodeFailure::NewerVersion(_) => {
            let age = inner.clock.now() - m.insertion_time;
            Duration::try_from(age).unwrap_or(Duration::ZERO)
                >= inner.settings.newer_version_quarantine_age
        }
        DecodeFailure::Malformed(_) => m.dequeue_count >= QUARANTINE_DEQUEUE_COUNT,
    };
    if quarantine_now {
        quarantine(inner, queue, m, reason).await;
        return;
    }
    let delay = poison_backoff(m.dequeue_count);
    tracing::warn!(
        queue, message_id = %m.id, dequeue_count = m.dequeue_count, reason,
        delay_secs = delay.as_secs(), "MessageFailure: cannot decode message; abandoning"
    );
    let _ = inner.queues.update_message(queue, &m.id, &m.pop_receipt, &m.text, delay).await;
}

/// Moves a message to the poison queue: a JSON record with the original text, or, when the record
/// would not fit in a queue message, with the text in a blob under [`POISON_BLOB_PREFIX`]
/// (`textBlob`). The source message is deleted only after the record was written.
async fn quarantine(inner: &Inner, queue: &str, m: &ReceivedMessage, reason: &str) {
    let mut record = serde_json::json!({
        "sourceQueue": queue,
        "messageId": m.id,
        "dequeueCount": m.dequeue_count,
        "insertionTime": m.insertion_time.unix_timestamp(),
        "reason": reason,
        "text": m.text,
    });
    if record.to_string().len() > MAX_POISON_RECORD_BYTES {
        let blob =
            format!("{POISON_BLOB_PREFIX}{queue}/{}.txt.gz", crate::keys::blob_segment(&m.id));
        if let Err(e) = inner.large.upload(&blob, m.text.as_bytes()).await {
            tracing::error!(queue, message_id = %m.id, error = %e, "MessageFailure: quarantine failed (text blob)");
            return;
        }
        record["text"] = serde_json::Value::Null;
        record["textLength"] = m.text.len().into();
        record["textBlob"] = blob.into();
    }
    let poison = &inner.names.poison_queue;
    match inner.queues.put_message(poison, &record.to_string(), Duration::ZERO).await {
        Ok(()) => {
            tracing::error!(
                queue, message_id = %m.id, dequeue_count = m.dequeue_count, reason,
                poison_queue = %poison,
                "PoisonMessageDetected: undecodable message quarantined"
            );
            let _ = inner.queues.delete_message(queue, &m.id, &m.pop_receipt).await;
        }
        Err(e) => {
            tracing::error!(queue, message_id = %m.id, error = %e, "MessageFailure: quarantine failed");
        }
    }
}

/// When a message is not due yet (timers, delayed starts), how long it should stay hidden.
fn not_due(message: &TaskMessage, now: OffsetDateTime) -> Option<Duration> {
    let due = match &message.event.kind {
        EventKind::TimerFired { fire_at, .. } => *fire_at,
        EventKind::ExecutionStarted(s) => s.scheduled_start_time?,
        _ => return None,
    };
    let wait = due - now;
    // Strictly: a timer that arrives even a millisecond early is re-armed (the storage layer
    // rounds visibility up to whole seconds), so orchestration time never sees it early.
    (wait > time::Duration::ZERO)
        .then(|| Duration::try_from(wait).unwrap_or(MAX_VISIBILITY).min(MAX_VISIBILITY))
}

/// The poller's randomized exponential back-off (DTF `BackoffPollingHelper`), reset by a hit or
/// a local send.
struct Backoff {
    misses: u32,
    max: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = durabletask_core::backoff::poll(self.misses, self.max, rand::random());
        self.misses = self.misses.saturating_add(1);
        d
    }
}

async fn poll_loop(inner: Weak<Inner>, queue: String, partition: u8, cancel: Arc<AtomicBool>) {
    let Some(waker) =
        inner.upgrade().and_then(|i| i.control.wakers.get(usize::from(partition)).cloned())
    else {
        return;
    };
    let mut backoff = Backoff { misses: 0, max: Duration::from_millis(50) };
    let mut limit_logged = false;
    loop {
        if cancel.load(Ordering::Acquire) {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        backoff.max = inner.settings.max_queue_polling_interval;
        if inner.control.stopped.load(Ordering::Acquire) {
            return;
        }
        let held = inner.control.lock().held_total;
        if held >= inner.settings.control_queue_buffer_threshold {
            inner.control.record_pause(&queue);
            if !limit_logged {
                tracing::info!(queue, held, "PendingOrchestratorMessageLimitReached");
                limit_logged = true;
            }
            drop(inner);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        limit_logged = false;
        if !inner.partitions.is_owned(&queue) {
            // Fenced: receiving now could take messages from whoever owns the partition if the
            // lease is not ours any more. Wait for the renewal (`on_resumed` wakes us) or the loss
            // (`cancel`); what is buffered stays buffered.
            drop(inner);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = waker.notified() => {}
            }
            continue;
        }
        inner.control.record_receive_start(&queue);
        let received = inner
            .queues
            .get_messages(
                &queue,
                inner.settings.control_queue_batch_size,
                inner.settings.control_queue_visibility_timeout,
            )
            .await;
        let received = match received {
            Ok(r) => {
                inner.control.record_receive(&queue);
                r
            }
            Err(e) => {
                inner.control.record_receive_failed(&queue);
                tracing::warn!(queue, error = %e, "MessageFailure: control queue receive failed");
                drop(inner);
                tokio::time::sleep(backoff.next().max(Duration::from_millis(500))).await;
                continue;
            }
        };
        if received.is_empty() {
            if cancel.load(Ordering::Acquire) {
                return;
            }
            let wait = backoff.next();
            drop(inner);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = waker.notified() => { backoff.misses = 0; }
            }
            continue;
        }
        backoff.misses = 0;
        let now = inner.clock.now();
        let mut decoded = Vec::with_capacity(received.len());
        let results = futures::future::join_all(received.iter().map(|m| decode(&inner, m))).await;
        for (m, r) in received.into_iter().zip(results) {
            match r {
                Err(reason) => undecodable(&inner, &queue, &m, &reason).await,
                Ok(data) => {
                    let Some(message) = data.task_message else { continue };
                    if let Some(wait) = not_due(&message, now) {
                        // Timers longer than the queue's 7-day visibility limit are re-armed here.
                        let _ = inner
                            .queues
                            .update_message(&queue, &m.id, &m.pop_receipt, &m.text, wait)
                            .await;
                        continue;
                    }
                    tracing::debug!(
                        queue, message_id = %m.id, dequeue_count = m.dequeue_count,
                        event_type = %message.event.event_type(),
                        instance_id = %message.orchestration_instance.instance_id,
                        "ReceivedMessage"
                    );
                    let blob = data.compressed_blob_name.clone();
                    decoded.push(Buffered {
                        queue: queue.clone(),
                        id: m.id,
                        pop_receipt: m.pop_receipt,
                        dequeue_count: m.dequeue_count,
                        next_visible: m.next_visible,
                        insertion_time: m.insertion_time,
                        sequence_number: data.sequence_number,
                        message,
                        text: m.text,
                        blob,
                    });
                }
            }
        }
        decoded.sort_by(|a, b| {
            a.insertion_time
                .unix_timestamp()
                .cmp(&b.insertion_time.unix_timestamp())
                .then(a.sequence_number.cmp(&b.sequence_number))
        });
        let mut to_start = Vec::new();
        {
            let mut b = inner.control.lock();
            // Checked under the buffer lock: `stop_poller` sets `cancel` before the listener
            // drops the queue's buffered state under the same lock, so a batch is either
            // buffered before that drop (and released by it) or released here.
            // A partition fenced during the receive is still held: its messages are buffered
            // like any others and wait for the renewal.
            if cancel.load(Ordering::Acquire) || !inner.partitions.is_held(&queue) {
                drop(b);
                // Lost the partition while receiving: make the messages visible to the new owner.
                release_messages(&inner, decoded);
                return;
            }
            for m in decoded {
                let instance = m.message.orchestration_instance.instance_id.clone();
                let list = b.pending.entry(instance.clone()).or_default();
                if let Some(existing) = list.iter_mut().find(|x| x.id == m.id) {
                    tracing::warn!(message_id = %m.id, instance_id = %instance, "DuplicateMessageDetected: newer delivery replaces the buffered copy");
                    *existing = m;
                } else {
                    b.hold(&m.id);
                    b.pending.entry(instance.clone()).or_default().push(m);
                }
                if !to_start.contains(&instance) {
                    to_start.push(instance);
                }
            }
            let mut batches = Vec::new();
            for instance in to_start {
                if let Some((q, batch)) = take_batch(&mut b, &instance) {
                    batches.push((instance, q, batch));
                }
            }
            drop(b);
            for (instance, q, batch) in batches {
                spawn_prefetch(&inner, instance, q, batch);
            }
        }
    }
}

/// Makes messages visible again at once (best effort). The caller does the bookkeeping of
/// `held` and `busy` ([`ControlState::finish`] for a work item's messages).
pub(crate) fn release_messages(inner: &Arc<Inner>, messages: Vec<Buffered>) {
    if messages.is_empty() {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let releases = messages.iter().map(|m| release_one(&inner, m));
        futures::future::join_all(releases).await;
    });
}

/// Makes one message visible at once (see [`update_visibility`]).
async fn release_one(inner: &Inner, m: &Buffered) {
    update_visibility(inner, m, Duration::ZERO).await;
}

/// Abandons messages with a visibility delay (out-of-order, deferred starts, failed work items).
pub(crate) async fn defer_messages(inner: &Inner, messages: &[Buffered], delay: Duration) {
    for m in messages {
        tracing::warn!(
            message_id = %m.id, instance_id = %m.message.orchestration_instance.instance_id,
            dequeue_count = m.dequeue_count, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            event_type = %m.message.event.event_type(), "AbandoningMessage"
        );
    }
    futures::future::join_all(messages.iter().map(|m| update_visibility(inner, m, delay))).await;
}

/// Changes a message's visibility without changing its content (the text is re-sent as is: the
/// update API requires it). Transient failures are retried with a growing pause for as long as
/// the change still matters, that is until the message would become visible by itself (a message
/// left invisible costs its instance the rest of the visibility timeout: minutes, during a
/// storage freeze). A message that is gone (deleted, or received again by someone else) needs
/// nothing. Returns the new pop receipt.
pub(crate) async fn update_visibility(
    inner: &Inner,
    m: &Buffered,
    delay: Duration,
) -> Option<String> {
    let mut pause = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match inner
            .queues
            .update_message(&m.queue, &m.id, &m.pop_receipt, &m.text, delay)
            .await
        {
            Ok(receipt) => return Some(receipt),
            Err(e) => e,
        };
        if err.is_message_gone() {
            tracing::warn!(queue = %m.queue, message_id = %m.id, "MessageGone: already deleted or redelivered");
            return None;
        }
        let visible_anyway = inner.clock.now() + pause >= m.next_visible;
        if !err.is_retryable() || visible_anyway {
            tracing::warn!(
                queue = %m.queue, message_id = %m.id, attempts, error = %err,
                "MessageFailure: changing a message's visibility failed; it reappears after its visibility timeout"
            );
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = durabletask_core::backoff::doubling(
            Duration::from_millis(200),
            attempts,
            Duration::from_secs(5),
        );
    }
}

/// Deletes messages, and the envelope blob of each message whose delete succeeded (a message
/// that is gone was redelivered to, or deleted by, someone who still needs the blob).
pub(crate) async fn delete_messages(inner: &Inner, messages: &[MessageRef]) {
    let deletes = messages.iter().map(|MessageRef { queue, id, pop_receipt: receipt, blob }| async move {
        match inner.queues.delete_message(queue, id, receipt).await {
            Ok(()) => {
                if let Some(blob) = blob {
                    inner.large.delete_all([blob.clone()]).await;
                }
            }
            Err(e) if e.is_message_gone() => {
                tracing::warn!(queue, message_id = %id, "MessageGone: already deleted or redelivered");
            }
            Err(e) => tracing::warn!(queue, message_id = %id, error = %e, "MessageFailure: delete failed"),
        }
    });
    futures::future::join_all(deletes).await;
}

// ---------------------------------------------------------------------------------------------
// Prefetch

fn candidates(batch: &[Buffered]) -> Vec<Candidate<'_>> {
    batch.iter().map(|m| Candidate { message: &m.message, deliveries: m.dequeue_count }).collect()
}

/// The admission rules under this provider's settings.
fn admission_rules(settings: &crate::AzureStorageSettings) -> AdmissionRules {
    AdmissionRules {
        dedupe_starts: !settings.disable_execution_started_deduplication,
        allow_replaying_terminal: settings.allow_replaying_terminal_instances,
        orphan_start_deliveries: ORPHAN_START_DEQUEUE_COUNT,
        zombie_deliveries: ZOMBIE_DEQUEUE_COUNT,
        max_defer: MAX_VISIBILITY,
    }
}

async fn prefetch(inner: &Arc<Inner>, instance_id: String, queue: String, batch: Vec<Buffered>) {
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    match build(inner, &instance_id, &queue, batch).await {
        Ok(Some(prepared)) => {
            if inner.partitions.is_held(&queue) && !inner.control.stopped.load(Ordering::Acquire) {
                let mut b = inner.control.lock();
                // The batch's discarded and deferred messages leave memory now; only the kept
                // ones stay held until the work item ends.
                let mut kept: Vec<&str> = prepared.messages.iter().map(|m| m.id.as_str()).collect();
                for id in &ids {
                    match kept.iter().position(|k| k == id) {
                        Some(i) => {
                            kept.swap_remove(i);
                        }
                        None => b.unhold(id),
                    }
                }
                if let Some(busy) = b.busy.get_mut(&instance_id) {
                    busy.messages = prepared.messages.len();
                }
                b.prepared.push_back(prepared);
                drop(b);
                inner.control.ready.notify_one();
            } else {
                release_messages(inner, prepared.messages);
                ControlState::finish(inner, &instance_id, &ids);
            }
        }
        Ok(None) => ControlState::finish(inner, &instance_id, &ids),
        Err((e, batch)) => {
            tracing::warn!(instance_id, error = %e, "OrchestrationProcessingFailure: prefetch failed");
            inner.control.cache_invalidate(&instance_id);
            defer_messages(inner, &batch, Duration::from_secs(5)).await;
            ControlState::finish(inner, &instance_id, &ids);
        }
    }
}

/// What a prefetch knows of an instance while it decides.
struct Loaded {
    history: LoadedHistory,
    instance_etag: Option<String>,
    /// The Instances row once read (`Some(None)`: there is none).
    row: Option<Option<InstanceRow>>,
}

impl Loaded {
    fn row_state(&self) -> RowState {
        match &self.row {
            None => RowState::Unknown,
            Some(None) => RowState::Absent,
            Some(Some(r)) => RowState::Present(RowView::from(&r.state)),
        }
    }

    fn row(&self) -> Option<&InstanceRow> {
        self.row.as_ref().and_then(Option::as_ref)
    }

    /// Reads the row; its ETag is the one the checkpoint writes under.
    async fn read_row(&mut self, inner: &Inner, instance_id: &str) -> StorageResult<()> {
        let r = tracking::read_instance(inner, instance_id, false).await?;
        self.instance_etag = r.as_ref().and_then(|r| r.etag.clone());
        self.row = Some(r);
        Ok(())
    }

    async fn read_history(&mut self, inner: &Inner, instance_id: &str) -> StorageResult<()> {
        let h = tracking::read_history(inner, instance_id).await?;
        tracing::debug!(
            instance_id,
            events = h.events.len(),
            sentinel_etag = h.sentinel_etag.as_deref().unwrap_or(""),
            latest = ?h.events.iter().rev().take(10).map(|e| e.event_type().as_str()).collect::<Vec<_>>(),
            "FetchedInstanceHistory"
        );
        self.history = h;
        Ok(())
    }
}

/// Loads the history (the owner's cache, or storage) and the row where the checkpoint or the
/// admission will need it.
async fn load(
    inner: &Inner,
    instance_id: &str,
    queue: &str,
    batch: &[Buffered],
) -> StorageResult<Loaded> {
    let (cached, force) = {
        let b = inner.control.lock();
        (
            b.cache.get(instance_id).filter(|c| c.queue == queue).cloned(),
            b.force_read.contains(instance_id),
        )
    };
    let has_start = batch.iter().any(|m| is_top_level_start(&m.message));
    let cache_hit = cached.is_some();
    let mut loaded = match cached {
        Some(c) => Loaded {
            history: LoadedHistory {
                events: c.events,
                sentinel_etag: c.sentinel_etag,
                blobs: c.blobs,
                row_blobs: c.row_blobs,
                from_storage: false,
            },
            instance_etag: c.instance_etag,
            row: None,
        },
        None => Loaded { history: LoadedHistory::default(), instance_etag: None, row: None },
    };
    if !cache_hit {
        // A brand-new instance (first delivery of its first start, Generation 0 row) has no
        // history yet: skip the read and insert the sentinel; a 409 means we were wrong and the
        // next attempt reads.
        if has_start && !force && batch.iter().all(|m| m.dequeue_count == 1) {
            loaded.read_row(inner, instance_id).await?;
        }
        let fresh = loaded.row().is_some_and(|r| {
            r.state.orchestration_status == OrchestrationStatus::Pending
                && r.state.generation.unwrap_or(0) == 0
                && batch.iter().any(|m| match &m.message.event.kind {
                    EventKind::ExecutionStarted(s) => {
                        s.orchestration_instance.execution_id
                            == r.state.orchestration_instance.execution_id
                    }
                    _ => false,
                })
        });
        if !fresh {
            loaded.read_history(inner, instance_id).await?;
        }
    }
    let needs_row = has_start
        || loaded.history.events.is_empty()
        || (inner.settings.use_instance_table_etag && loaded.instance_etag.is_none());
    if loaded.row.is_none() && needs_row {
        loaded.read_row(inner, instance_id).await?;
    }
    // A cached history can be stale (the partition moved away and back while another worker
    // ran the instance). A response whose scheduling event is missing from it is then not out of
    // order at all: read storage before deciding, or the response would be deferred forever.
    if cache_hit && answers_unknown_events(&loaded.history.events, &candidates(batch)) {
        loaded.read_history(inner, instance_id).await?;
        loaded.read_row(inner, instance_id).await?;
    }
    Ok(loaded)
}

/// Asks the admission rules, reading the row when they need it, and performs the instance
/// write they decide on.
async fn decide(
    inner: &Inner,
    instance_id: &str,
    batch: &[Buffered],
    loaded: &mut Loaded,
) -> StorageResult<Decision> {
    let rules = admission_rules(&inner.settings);
    let messages = candidates(batch);
    let mut reread = false;
    let mut decision = loop {
        let row = loaded.row_state();
        let input = AdmissionInput {
            messages: &messages,
            history: &loaded.history.events,
            row: &row,
            row_reread: reread,
            now: inner.clock.now(),
            rules: &rules,
        };
        match admit(&input) {
            Admission::Decided(d) => break d,
            // Terminates: after a read the row is known, and the moment's wait is asked once.
            Admission::NeedsRow { after } => {
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                    reread = true;
                }
                loaded.read_row(inner, instance_id).await?;
            }
        }
    };
    match decision.action.clone() {
        Some(InstanceAction::TerminatePending { reason }) => {
            if let Some(r) = loaded.row() {
                terminate_pending(inner, r, reason, inner.clock.now()).await;
            }
        }
        Some(InstanceAction::RepairRow { status }) => {
            let events = &loaded.history.events;
            let repaired = repair_row(inner, instance_id, events, loaded.row(), status).await;
            if !repaired {
                decision.repair_failed();
            }
        }
        None => {}
    }
    decision.log(instance_id, &messages);
    Ok(decision)
}

/// Loads state for a batch and applies the admission rules. `Ok(None)`: nothing to run
/// (everything was discarded or deferred).
async fn build(
    inner: &Arc<Inner>,
    instance_id: &str,
    queue: &str,
    batch: Vec<Buffered>,
) -> Result<Option<Prepared>, (ProviderError, Vec<Buffered>)> {
    let fail = |e: crate::storage::StorageError, batch: Vec<Buffered>| {
        (super::provider_error("prefetch", e), batch)
    };
    let mut loaded = match load(inner, instance_id, queue, &batch).await {
        Ok(l) => l,
        Err(e) => return Err(fail(e, batch)),
    };
    let decision = match decide(inner, instance_id, &batch, &mut loaded).await {
        Ok(d) => d,
        Err(e) => return Err(fail(e, batch)),
    };
    let mut keep = Vec::new();
    let mut discard = Vec::new();
    for (m, verdict) in batch.into_iter().zip(decision.verdicts) {
        match verdict {
            Verdict::Run => keep.push(m),
            Verdict::Discard(_) => discard.push(MessageRef::of(&m)),
            Verdict::Defer { after, .. } => {
                defer_messages(inner, std::slice::from_ref(&m), after).await;
            }
        }
    }
    if !discard.is_empty() {
        delete_messages(inner, &discard).await;
    }
    if keep.is_empty() {
        return Ok(None);
    }
    let row_read = loaded.row.is_some();
    let instance_exists = !row_read || loaded.row().is_some();
    let mut history = loaded.history;
    // A row that was not there is not known to stay absent: a sub-orchestration's parent inserts
    // the child's Pending row (with its large input in a row-owned blob) just after it sends the
    // start, so the child's first checkpoint may overwrite a row it never saw. `None` makes that
    // checkpoint work out the row-owned blobs the replaced row can have held.
    if row_read {
        history.row_blobs = loaded.row.as_ref().and_then(|r| r.as_ref()).map(|r| r.blobs.clone());
    }
    Ok(Some(Prepared {
        instance_id: instance_id.to_owned(),
        queue: queue.to_owned(),
        messages: keep,
        history,
        instance_etag: loaded.instance_etag,
        instance_exists,
    }))
}

/// Terminates an instance that was created but never started (its start is delayed).
async fn terminate_pending(
    inner: &Inner,
    row: &InstanceRow,
    reason: Option<String>,
    now: OffsetDateTime,
) {
    let mut state = row.state.clone();
    state.orchestration_status = OrchestrationStatus::Terminated;
    state.output = reason;
    state.completed_time = Some(now);
    state.last_updated_time = now;
    let write = async {
        let mut entity = tracking::instance_entity(inner, &state, false).await?;
        entity.properties.remove("Input");
        inner
            .tables
            .write(
                &inner.names.instances_table,
                crate::storage::BatchOp {
                    mode: crate::storage::WriteMode::Merge(row.etag.clone()),
                    entity,
                },
            )
            .await
    };
    match write.await {
        Ok(_) => tracing::info!(
            instance_id = state.instance_id(),
            "InstanceStatusUpdate: terminated before start"
        ),
        Err(e) => {
            tracing::warn!(instance_id = state.instance_id(), error = %e, "GeneralWarning: terminating a pending instance failed")
        }
    }
}

/// History is the source of truth: the Instances row disagrees with a terminal history of the
/// same execution (a worker died between the two writes), so rewrite the row from history.
/// Returns whether the row now agrees with history.
async fn repair_row(
    inner: &Inner,
    instance_id: &str,
    events: &[HistoryEvent],
    row: Option<&InstanceRow>,
    status: OrchestrationStatus,
) -> bool {
    let Ok(rt) = durabletask_core::OrchestrationRuntimeState::from_history(events.to_vec()) else {
        return true; // nothing sensible to write; do not hold messages for it
    };
    let custom = row.and_then(|r| r.state.status.clone());
    let Some(state) = rt.to_state(custom, inner.clock.now()) else { return true };
    let result = async {
        let entity = tracking::instance_entity(inner, &state, true).await?;
        let mode = match row.and_then(|r| r.etag.clone()) {
            Some(etag) => crate::storage::WriteMode::Replace(Some(etag)),
            None => crate::storage::WriteMode::Insert,
        };
        inner
            .tables
            .write(&inner.names.instances_table, crate::storage::BatchOp { mode, entity })
            .await
    };
    match result.await {
        Ok(_) => {
            tracing::warn!(
                instance_id,
                status = status.as_str(),
                "InstanceStatusUpdate: Instances row repaired from history"
            );
            true
        }
        Err(e) => {
            tracing::warn!(instance_id, error = %e, "GeneralWarning: Instances row repair failed; will retry");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Partition ownership

/// Reacts to the partition manager: start, drain and drop control-queue pollers.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) inner: Weak<Inner>,
}

impl Listener {
    fn stop_poller(inner: &Inner, queue: &str) {
        let poller = locked(&inner.control.pollers).remove(queue);
        inner.control.forget_poller(queue);
        if let Some(p) = poller {
            p.stop(inner, queue);
        }
    }

    /// Drops everything buffered or prepared for `queue` (messages become visible again) and the
    /// cached histories of its instances.
    fn drop_queue_state(inner: &Arc<Inner>, queue: &str) {
        let mut released = Vec::new();
        {
            let mut b = inner.control.lock();
            let instances: Vec<String> = b
                .pending
                .iter()
                .filter(|(_, v)| v.first().is_some_and(|m| m.queue == queue))
                .map(|(k, _)| k.clone())
                .collect();
            for i in instances {
                if let Some(v) = b.pending.remove(&i) {
                    for m in &v {
                        b.unhold(&m.id);
                    }
                    released.extend(v);
                }
            }
            let mut keep = VecDeque::new();
            let mut finished = Vec::new();
            while let Some(p) = b.prepared.pop_front() {
                if p.queue == queue {
                    finished.push(p.instance_id.clone());
                    for m in &p.messages {
                        b.unhold(&m.id);
                    }
                    released.extend(p.messages);
                } else {
                    keep.push_back(p);
                }
            }
            b.prepared = keep;
            for i in finished {
                b.busy.remove(&i);
            }
            b.cache.retain(|_, c| c.queue != queue);
        }
        release_messages(inner, released);
    }

    fn busy_on(inner: &Inner, queue: &str) -> usize {
        inner.control.lock().busy.values().filter(|b| b.queue == queue).count()
    }
}

#[async_trait]
impl PartitionListener for Listener {
    async fn on_acquired(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        let queue = partition.control_queue.clone();
        tracing::info!(queue = %queue, "PartitionManagerInfo: listening to control queue");
        let cancel = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(poll_loop(
            Arc::downgrade(&inner),
            queue.clone(),
            partition.index,
            cancel.clone(),
        ));
        let old = locked(&inner.control.pollers).insert(queue, Poller { cancel, _task: task });
        if let Some(old) = old {
            old.stop(&inner, &partition.control_queue);
        }
    }

    async fn drain(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        let queue = &partition.control_queue;
        tracing::info!(queue = %queue, "PartitionManagerInfo: draining control queue");
        Self::stop_poller(&inner, queue);
        Self::drop_queue_state(&inner, queue);
        while Self::busy_on(&inner, queue) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Prepared items may have been queued by prefetches that were in flight.
            Self::drop_queue_state(&inner, queue);
        }
    }

    async fn on_fenced(&self, partition: &Partition) {
        tracing::warn!(
            queue = %partition.control_queue,
            "PartitionManagerWarning: control queue fenced (lease renewal overdue); no receives or checkpoints until it is renewed, buffered work kept"
        );
    }

    async fn on_resumed(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        tracing::info!(queue = %partition.control_queue, "PartitionManagerInfo: control queue resumed after a fence");
        inner.control.wake(partition.index);
        inner.control.ready.notify_waiters();
    }

    async fn on_lost(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        let queue = &partition.control_queue;
        tracing::warn!(queue = %queue, "PartitionManagerWarning: control queue lost; abandoning its buffered work");
        Self::stop_poller(&inner, queue);
        Self::drop_queue_state(&inner, queue);
    }
}

/// Stops every poller (provider shutdown).
pub(crate) fn stop_all_pollers(inner: &Inner) {
    let pollers: Vec<(String, Poller)> = locked(&inner.control.pollers).drain().collect();
    locked(&inner.control.activity).clear();
    for (queue, p) in pollers {
        p.stop(inner, &queue);
    }
    inner.control.ready.notify_waiters();
}

/// Error for a work item whose partition is gone.
pub(crate) fn lease_lost(op: &'static str, queue: &str) -> ProviderError {
    perr(
        ProviderErrorKind::LeaseLost,
        op,
        format!("partition {queue} is no longer owned by this worker"),
    )
}
