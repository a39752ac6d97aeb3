//! One poller per owned control queue: receives batches of up to 32 (randomized exponential
//! back-off when empty, woken by local sends), pauses at `control_queue_buffer_threshold` held
//! messages and while the partition is fenced, decodes, re-arms timers that are not due, and
//! buffers by instance, starting a prefetch for an instance with nothing in progress.

use super::buffer::{Buffered, take_batch};
use super::messages::{decode, release_messages, undecodable};
use super::{Inner, MAX_VISIBILITY};
use crate::storage::ReceivedMessage;
use durabletask_core::{EventKind, TaskMessage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use time::OffsetDateTime;

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

/// Why a poller does not receive now.
enum Hold {
    /// At `control_queue_buffer_threshold` held messages.
    Paused,
    /// The partition is fenced: receiving now could take messages from whoever owns it if the
    /// lease is not ours any more. Wait for the renewal (`on_resumed` wakes the poller) or the
    /// loss (`cancel`); what is buffered stays buffered.
    Fenced,
}

fn hold(inner: &Inner, queue: &str, limit_logged: &mut bool) -> Option<Hold> {
    let held = inner.control.lock().held_total;
    if held >= inner.settings.control_queue_buffer_threshold {
        inner.control.record_pause(queue);
        if !*limit_logged {
            tracing::info!(queue, held, "PendingOrchestratorMessageLimitReached");
            *limit_logged = true;
        }
        return Some(Hold::Paused);
    }
    *limit_logged = false;
    (!inner.partitions.is_owned(queue)).then_some(Hold::Fenced)
}

pub(crate) async fn poll_loop(
    inner: Weak<Inner>,
    queue: String,
    partition: u8,
    cancel: Arc<AtomicBool>,
) {
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
        match hold(&inner, &queue, &mut limit_logged) {
            Some(Hold::Paused) => {
                drop(inner);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Some(Hold::Fenced) => {
                drop(inner);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = waker.notified() => {}
                }
                continue;
            }
            None => {}
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
        let decoded = decode_batch(&inner, &queue, received).await;
        if !buffer_batch(&inner, &queue, decoded, &cancel) {
            return;
        }
    }
}

/// Decodes a received batch: undecodable messages go to poison handling, messages not due yet
/// (timers, delayed starts) are re-armed; the rest come back in enqueue order.
pub(crate) async fn decode_batch(
    inner: &Inner,
    queue: &str,
    received: Vec<ReceivedMessage>,
) -> Vec<Buffered> {
    let now = inner.clock.now();
    let mut decoded = Vec::with_capacity(received.len());
    let results = futures::future::join_all(received.iter().map(|m| decode(inner, m))).await;
    for (m, r) in received.into_iter().zip(results) {
        let data = match r {
            Err(reason) => {
                undecodable(inner, queue, &m, &reason).await;
                continue;
            }
            Ok(data) => data,
        };
        let Some(message) = data.task_message else { continue };
        if let Some(wait) = not_due(&message, now) {
            // Timers longer than the queue's 7-day visibility limit are re-armed here.
            let _ = inner.queues.update_message(queue, &m.id, &m.pop_receipt, &m.text, wait).await;
            continue;
        }
        tracing::debug!(
            queue, message_id = %m.id, dequeue_count = m.dequeue_count,
            event_type = %message.event.event_type(),
            instance_id = %message.orchestration_instance.instance_id,
            "ReceivedMessage"
        );
        decoded.push(Buffered {
            queue: queue.to_owned(),
            id: m.id,
            pop_receipt: m.pop_receipt,
            dequeue_count: m.dequeue_count,
            next_visible: m.next_visible,
            insertion_time: m.insertion_time,
            sequence_number: data.sequence_number,
            message,
            text: m.text,
            blob: data.compressed_blob_name,
        });
    }
    decoded.sort_by(|a, b| {
        a.insertion_time
            .unix_timestamp()
            .cmp(&b.insertion_time.unix_timestamp())
            .then(a.sequence_number.cmp(&b.sequence_number))
    });
    decoded
}

/// Buffers decoded messages by instance (a redelivery replaces its buffered copy) and starts a
/// prefetch for each instance with nothing in progress. Returns false when the partition was
/// lost meanwhile: the messages are released for the new owner and the poller stops.
pub(crate) fn buffer_batch(
    inner: &Arc<Inner>,
    queue: &str,
    decoded: Vec<Buffered>,
    cancel: &AtomicBool,
) -> bool {
    let mut to_start = Vec::new();
    let mut b = inner.control.lock();
    // Checked under the buffer lock: `stop_poller` sets `cancel` before the listener drops the
    // queue's buffered state under the same lock, so a batch is either buffered before that
    // drop (and released by it) or released here. A partition fenced during the receive is
    // still held: its messages are buffered like any others and wait for the renewal.
    if cancel.load(Ordering::Acquire) || !inner.partitions.is_held(queue) {
        drop(b);
        release_messages(inner, decoded);
        return false;
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
        super::prefetch::spawn(inner, instance, q, batch);
    }
    true
}
