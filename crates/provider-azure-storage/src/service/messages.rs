//! Received control-queue messages: decoding (with large envelopes downloaded), poison
//! handling and quarantine, and visibility changes and deletes.

use super::Inner;
use super::buffer::{Buffered, MessageRef};
use crate::envelope::{EnvelopeError, MessageData};
use crate::storage::{ReceivedMessage, StorageErrorKind};
use std::sync::Arc;
use std::time::Duration;

/// Dequeue count at which an undecodable message is moved to the poison queue.
pub(crate) const QUARANTINE_DEQUEUE_COUNT: u64 = 5;
/// Dequeue count from which DTF logs `PoisonMessageDetected` (back-off reached its 600 s cap).
pub(crate) const POISON_DEQUEUE_COUNT: u64 = 10;

pub(crate) use durabletask_core::backoff::dtf_abandon as poison_backoff;

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

/// Makes messages visible again at once (best effort). The caller does the bookkeeping of
/// `held` and `busy` ([`super::prefetch::finish`] for a work item's messages).
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
