//! Outbound messages: the size check, the queue envelope (large ones in a gzip blob) and the
//! send to an instance's control queue or the work-item queue.

use super::buffer::control_queue_of;
use super::{Inner, MAX_VISIBILITY, perr, provider_error};
use crate::envelope::MessageData;
use crate::large::LargePayloads;
use crate::storage::StorageErrorKind;
use durabletask_core::{EventKind, ProviderError, ProviderErrorKind, TaskMessage};
use std::time::Duration;
use time::OffsetDateTime;

/// Encodes an envelope as queue text, moving it to a gzip blob when it is over the threshold.
/// Refuses a message over `max_message_bytes` before any storage call (the same check
/// [`encode_for_queue`] makes; callers that read storage first call this before reading).
pub(crate) fn check_message_size(
    inner: &Inner,
    message: &TaskMessage,
    op: &'static str,
) -> Result<(), ProviderError> {
    let bytes = MessageData::new(message.clone(), 0)
        .to_bytes()
        .map_err(|e| perr(ProviderErrorKind::InvalidInput, op, e.to_string()))?;
    if bytes.len() > inner.settings.max_message_bytes {
        return Err(perr(
            ProviderErrorKind::InvalidInput,
            op,
            format!(
                "message of {} bytes exceeds max_message_bytes ({}); nothing was written",
                bytes.len(),
                inner.settings.max_message_bytes
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn encode_for_queue(
    inner: &Inner,
    data: MessageData,
) -> Result<String, ProviderError> {
    const OP: &str = "send message";
    let bytes =
        data.to_bytes().map_err(|e| perr(ProviderErrorKind::InvalidInput, OP, e.to_string()))?;
    if bytes.len() > inner.settings.max_message_bytes {
        return Err(perr(
            ProviderErrorKind::InvalidInput,
            OP,
            format!(
                "message of {} bytes exceeds max_message_bytes ({})",
                bytes.len(),
                inner.settings.max_message_bytes
            ),
        ));
    }
    // Base64 grows the text by 4/3; the threshold is on the encoded envelope bytes (DTF: 45 KB).
    if bytes.len() <= inner.settings.max_queue_payload_bytes {
        return Ok(MessageData::encode_text(&bytes));
    }
    let (instance, event_type) = data
        .task_message
        .as_ref()
        .map(|m| (m.orchestration_instance.instance_id.clone(), m.event.event_type().as_str()))
        .unwrap_or_default();
    let name = LargePayloads::message_blob_name(&instance, &data.activity_id, event_type);
    inner.large.upload(&name, &bytes).await.map_err(|e| provider_error(OP, e))?;
    let wrapper = MessageData::wrapper(&data, name);
    let bytes =
        wrapper.to_bytes().map_err(|e| perr(ProviderErrorKind::InvalidInput, OP, e.to_string()))?;
    Ok(MessageData::encode_text(&bytes))
}

/// Sends a task message to its instance's control queue (or, for `TaskScheduled`, the work-item
/// queue), visible at `visible_at` when given.
pub(crate) async fn send(
    inner: &Inner,
    message: TaskMessage,
    episode: Option<i32>,
    sender: Option<durabletask_core::OrchestrationInstance>,
    delay: Duration,
) -> Result<(), ProviderError> {
    send_with(inner, message, episode, sender, delay, true).await
}

/// [`send`], optionally without waking the local poller (a client create wakes it only after the
/// Instances row is written, so the first prefetch finds the row).
pub(crate) async fn send_with(
    inner: &Inner,
    message: TaskMessage,
    episode: Option<i32>,
    sender: Option<durabletask_core::OrchestrationInstance>,
    delay: Duration,
    wake: bool,
) -> Result<(), ProviderError> {
    const OP: &str = "send message";
    // Timers, delayed starts and scheduled entity signals wait for their time.
    let delay = match message.deliver_at() {
        Some(at) => delay.max(delay_until(inner.clock.now(), at)),
        None => delay,
    };
    let activity = matches!(message.event.kind, EventKind::TaskScheduled { .. });
    let instance_id = message.orchestration_instance.instance_id.clone();
    let event_type = message.event.event_type();
    let mut data = MessageData::new(message, inner.next_sequence());
    data.episode = episode;
    data.sender = sender;
    let text = encode_for_queue(inner, data).await?;
    let (partition, queue) = if activity {
        (None, inner.names.work_item_queue.clone())
    } else {
        let (p, q) = control_queue_of(inner, &instance_id);
        (Some(p), q)
    };
    if let Err(e) = inner.queues.put_message(&queue, &text, delay.min(MAX_VISIBILITY)).await {
        // A refused put (not an ambiguous one, which may have committed) leaves its envelope
        // blob to nobody.
        if matches!(
            e.kind(),
            StorageErrorKind::InvalidInput
                | StorageErrorKind::NotFound
                | StorageErrorKind::Unauthorized
        ) && let Some(blob) =
            MessageData::decode_text(&text).ok().and_then(|d| d.compressed_blob_name)
        {
            inner.large.delete_all([blob]).await;
        }
        return Err(provider_error(OP, e));
    }
    tracing::debug!(instance_id, %event_type, queue, "SendingMessage");
    match partition {
        _ if !wake => {}
        Some(p) if inner.partitions.is_owned(&queue) => inner.control.wake(p),
        Some(_) => {}
        None => inner.activities.wake.notify_one(),
    }
    Ok(())
}

/// How long until `at` (zero if it has passed).
pub(crate) fn delay_until(now: OffsetDateTime, at: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}
