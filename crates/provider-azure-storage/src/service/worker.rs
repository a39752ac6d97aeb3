//! The worker side: hub lifecycle, orchestration work items with the checkpoint in DTF's exact
//! order, and activity work items from the shared work-item queue.

use super::buffer::{self, Buffered};
use super::listener::{self, Listener};
use super::messages;
use super::outbound::send;
use super::prefetch;
use super::session::{ActiveGuard, ActivityToken, SessionToken, activity_token, crashed, token};
use super::{
    AzureStorageOrchestrationService, CrashPoint, Inner, MAX_VISIBILITY, perr, provider_error,
};
use crate::envelope::MessageData;
use crate::storage::ReceivedMessage;
use async_trait::async_trait;
use durabletask_core::{
    ActivityWorkItem, EventKind, LockToken, OrchestrationRuntimeState, OrchestrationService,
    OrchestrationWorkItem, ProviderError, ProviderErrorKind, ProviderSettings, TaskMessage,
    WorkItemResult,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

impl AzureStorageOrchestrationService {
    async fn create_resources(&self) -> Result<(), ProviderError> {
        const OP: &str = "create_if_not_exists";
        let i = &self.inner;
        let mut queues = i.names.control_queues.clone();
        queues.push(i.names.work_item_queue.clone());
        queues.push(i.names.poison_queue.clone());
        let q = futures::future::try_join_all(
            queues.iter().map(|q| i.queues.create_queue_if_not_exists(q)),
        );
        let t = futures::future::try_join_all(
            [&i.names.history_table, &i.names.instances_table]
                .map(|t| i.tables.create_table_if_not_exists(t)),
        );
        let b = i.blobs.create_container_if_not_exists(&i.names.large_messages_container);
        let (q, t, b) = tokio::join!(q, t, b);
        q.map_err(|e| provider_error(OP, e))?;
        t.map_err(|e| provider_error(OP, e))?;
        b.map_err(|e| provider_error(OP, e))?;
        i.partitions
            .create_lease_store()
            .await
            .map_err(|e| perr(ProviderErrorKind::Transient, OP, e.to_string()))?;
        Ok(())
    }
}

#[async_trait]
impl OrchestrationService for AzureStorageOrchestrationService {
    async fn create_if_not_exists(&self) -> Result<(), ProviderError> {
        self.create_resources().await
    }

    async fn delete(&self) -> Result<(), ProviderError> {
        const OP: &str = "delete";
        let i = &self.inner;
        // Every resource the hub can have, whatever partition count and partition manager
        // created it (a hub made with 8 partitions or blob leases and deleted with the defaults
        // would otherwise keep its other control queues or its leases container).
        let all = crate::ResourceNames::all_possible(&i.settings.task_hub_name);
        let mut queues = all.control_queues.clone();
        queues.push(all.work_item_queue.clone());
        queues.push(all.poison_queue.clone());
        let deleted =
            futures::future::join_all(queues.iter().map(|q| i.queues.delete_queue_if_exists(q)))
                .await;
        for r in deleted {
            r.map_err(|e| provider_error(OP, e))?;
        }
        for t in [&all.history_table, &all.instances_table, &all.partitions_table] {
            i.tables.delete_table_if_exists(t).await.map_err(|e| provider_error(OP, e))?;
        }
        for c in [&all.large_messages_container, &all.leases_container] {
            i.blobs.delete_container_if_exists(c).await.map_err(|e| provider_error(OP, e))?;
        }
        i.partitions
            .delete_lease_store()
            .await
            .map_err(|e| perr(ProviderErrorKind::Transient, OP, e.to_string()))?;
        Ok(())
    }

    async fn start(&self) -> Result<(), ProviderError> {
        const OP: &str = "start";
        self.inner.control.stopped.store(false, Ordering::Release);
        self.inner.activities.stopped.store(false, Ordering::Release);
        let listener = Arc::new(Listener { inner: Arc::downgrade(&self.inner) });
        match self.inner.partitions.start(listener).await {
            Ok(()) | Err(durabletask_partition_manager::Error::AlreadyStarted) => Ok(()),
            Err(e) => Err(perr(ProviderErrorKind::Transient, OP, e.to_string())),
        }
    }

    async fn stop(&self, graceful: bool) -> Result<(), ProviderError> {
        let i = &self.inner;
        i.activities.stopped.store(true, Ordering::Release);
        i.activities.wake.notify_waiters();
        let result = if graceful {
            i.partitions.stop(Duration::from_secs(60)).await
        } else {
            i.partitions.abort();
            Ok(())
        };
        i.control.stopped.store(true, Ordering::Release);
        listener::stop_all_pollers(i);
        // Prefetched activity messages go back to the queue at once.
        let buffered: Vec<_> = i.activities.buffer.lock().await.drain(..).collect();
        for m in buffered {
            let _ = i
                .queues
                .update_message(
                    &i.names.work_item_queue,
                    &m.id,
                    &m.pop_receipt,
                    &m.text,
                    Duration::ZERO,
                )
                .await;
        }
        result.map_err(|e| perr(ProviderErrorKind::Transient, "stop", e.to_string()))
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            max_concurrent_orchestrations: self
                .inner
                .settings
                .max_concurrent_orchestration_work_items,
            max_concurrent_activities: self.inner.settings.max_concurrent_activity_work_items,
            max_message_bytes: Some(self.inner.settings.max_message_bytes),
        }
    }

    async fn lock_next_orchestration_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, ProviderError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if inner.control.stopped.load(Ordering::Acquire) {
                return Ok(None);
            }
            let (next, dropped) = inner.control.pop_prepared(inner);
            for p in dropped {
                let ids: Vec<String> = p.messages.iter().map(|m| m.id.clone()).collect();
                messages::release_messages(inner, p.messages);
                prefetch::finish(inner, &p.instance_id, &ids);
            }
            let Some(p) = next else {
                if !inner.control.wait_ready(deadline).await {
                    return Ok(None);
                }
                continue;
            };
            let runtime_state = match OrchestrationRuntimeState::from_history(p.history.events) {
                Ok(s) => s,
                // Never an empty history, which would run the instance from the start: the
                // messages wait with the poison back-off and the dispatcher sees the error.
                Err(e) => return Err(corrupt_history(inner, &p.instance_id, &p.messages, &e).await),
            };
            let locked_until =
                p.messages.iter().map(|m| m.next_visible).min().unwrap_or_else(|| {
                    inner.clock.now() + inner.settings.control_queue_visibility_timeout
                });
            let dequeue_count = p
                .messages
                .iter()
                .map(|m| u32::try_from(m.dequeue_count).unwrap_or(u32::MAX))
                .max()
                .unwrap_or(1);
            if u64::from(dequeue_count) >= messages::POISON_DEQUEUE_COUNT {
                tracing::warn!(instance_id = %p.instance_id, dequeue_count, "PoisonMessageDetected: work item keeps failing");
            }
            let new_messages = p.messages.iter().map(|m| m.message.clone()).collect();
            return Ok(Some(OrchestrationWorkItem {
                instance_id: p.instance_id,
                runtime_state,
                new_messages,
                locked_until,
                dequeue_count,
                // The owner's cache holds a history only after its checkpoint ran to the end.
                previous_checkpoint_finished: !p.history.from_storage,
                token: LockToken::new(SessionToken {
                    queue: p.queue,
                    messages: Mutex::new(p.messages),
                    sentinel_etag: p.history.sentinel_etag,
                    instance_etag: p.instance_etag,
                    instance_exists: p.instance_exists,
                    history_blobs: p.history.blobs,
                    row_blobs: p.history.row_blobs,
                    history_from_storage: p.history.from_storage,
                    finished: AtomicBool::new(false),
                    crashed: AtomicBool::new(false),
                }),
            }));
        }
    }

    async fn renew_orchestration_work_item_lock(
        &self,
        work_item: &OrchestrationWorkItem,
    ) -> Result<OffsetDateTime, ProviderError> {
        const OP: &str = "renew_orchestration_work_item_lock";
        let inner = &self.inner;
        let t = token(&work_item.token, OP)?;
        t.check_held(inner, OP).await?;
        let vis = inner.settings.control_queue_visibility_timeout;
        let messages = t.messages().clone();
        let mut renewed = Vec::with_capacity(messages.len());
        for m in messages {
            let receipt = inner
                .queues
                .update_message(&m.queue, &m.id, &m.pop_receipt, &m.text, vis)
                .await
                .map_err(|e| {
                    if e.is_message_gone() {
                        perr(
                            ProviderErrorKind::LeaseLost,
                            OP,
                            format!("message {} is gone: {e}", m.id),
                        )
                    } else {
                        provider_error(OP, e)
                    }
                })?;
            tracing::debug!(instance_id = %work_item.instance_id, message_id = %m.id, "RenewingMessage");
            let next_visible = inner.clock.now() + vis;
            renewed.push(Buffered { pop_receipt: receipt, next_visible, ..m });
        }
        *t.messages() = renewed;
        Ok(inner.clock.now() + vis)
    }

    async fn complete_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
        result: WorkItemResult,
    ) -> Result<(), ProviderError> {
        super::checkpoint::complete(&self.inner, work_item, result).await
    }

    async fn abandon_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
        retry_after: Duration,
    ) -> Result<(), ProviderError> {
        const OP: &str = "abandon_orchestration_work_item";
        let inner = &self.inner;
        let t = token(&work_item.token, OP)?;
        inner.control.cache_invalidate(&work_item.instance_id);
        if t.crashed.load(Ordering::Acquire) {
            return Ok(());
        }
        let messages = t.messages().clone();
        let count = messages.iter().map(|m| m.dequeue_count).max().unwrap_or(1);
        let delay = retry_after.min(Duration::from_secs(600));
        if count >= messages::POISON_DEQUEUE_COUNT {
            tracing::warn!(instance_id = %work_item.instance_id, dequeue_count = count, "PoisonMessageDetected");
        }
        messages::defer_messages(inner, &messages, delay).await;
        Ok(())
    }

    async fn release_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
    ) -> Result<(), ProviderError> {
        const OP: &str = "release_orchestration_work_item";
        let t = token(&work_item.token, OP)?;
        if t.finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let ids: Vec<String> = t.messages().iter().map(|m| m.id.clone()).collect();
        prefetch::finish(&self.inner, &work_item.instance_id, &ids);
        Ok(())
    }

    async fn lock_next_activity_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<ActivityWorkItem>, ProviderError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(m) = next_activity_message(inner, deadline).await? {
            if let Some(item) = activity_work_item(inner, m).await {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    async fn renew_activity_work_item_lock(
        &self,
        work_item: &ActivityWorkItem,
    ) -> Result<OffsetDateTime, ProviderError> {
        const OP: &str = "renew_activity_work_item_lock";
        let inner = &self.inner;
        let t = activity_token(&work_item.token, OP)?;
        let receipt = buffer::locked(&t.pop_receipt).clone();
        let vis = inner.settings.work_item_queue_visibility_timeout;
        let new = inner
            .queues
            .update_message(&inner.names.work_item_queue, &t.id, &receipt, &t.text, vis)
            .await
            .map_err(|e| {
                if e.is_message_gone() {
                    perr(ProviderErrorKind::LeaseLost, OP, e.to_string())
                } else {
                    provider_error(OP, e)
                }
            })?;
        *buffer::locked(&t.pop_receipt) = new;
        let until = inner.clock.now() + vis;
        *buffer::locked(&t.locked_until) = until;
        Ok(until)
    }

    async fn complete_activity_work_item(
        &self,
        work_item: &ActivityWorkItem,
        response: TaskMessage,
    ) -> Result<(), ProviderError> {
        const OP: &str = "complete_activity_work_item";
        let inner = &self.inner;
        let t = activity_token(&work_item.token, OP)?;
        let until = *buffer::locked(&t.locked_until);
        if inner.clock.now() >= until {
            return Err(perr(
                ProviderErrorKind::LeaseLost,
                OP,
                "the activity's lock expired; another worker may run it",
            ));
        }
        let instance = response.orchestration_instance.instance_id.clone();
        let target = response.orchestration_instance.clone();
        let task_id = match &response.event.kind {
            EventKind::TaskCompleted { task_scheduled_id, .. }
            | EventKind::TaskFailed { task_scheduled_id, .. } => *task_scheduled_id,
            _ => response.event.event_id,
        };
        match send(inner, response, None, None, Duration::ZERO).await {
            Ok(()) => {}
            Err(e) if e.kind() == ProviderErrorKind::InvalidInput => {
                // A result too large to send would otherwise be retried forever: the activity
                // fails instead, with a clear reason the orchestration can handle.
                tracing::warn!(instance_id = %instance, task_id, error = %e, "GeneralWarning: activity result refused; reporting a failure");
                let details =
                    durabletask_core::FailureDetails::new("PayloadTooLarge", e.to_string());
                let failed = TaskMessage::new(
                    target,
                    durabletask_core::HistoryEvent::new(
                        -1,
                        inner.clock.now(),
                        EventKind::TaskFailed {
                            task_scheduled_id: task_id,
                            reason: Some(e.to_string()),
                            details: None,
                            failure_details: Some(details),
                        },
                    ),
                );
                send(inner, failed, None, None, Duration::ZERO).await?;
            }
            Err(e) => return Err(e),
        }
        if inner.crash(CrashPoint::ActivityAfterSend, &instance) {
            return Err(crashed(OP, CrashPoint::ActivityAfterSend));
        }
        let receipt = buffer::locked(&t.pop_receipt).clone();
        match inner.queues.delete_message(&inner.names.work_item_queue, &t.id, &receipt).await {
            Ok(()) => {
                // The request's envelope blob, if any, is no longer needed.
                if let Some(blob) =
                    MessageData::decode_text(&t.text).ok().and_then(|d| d.compressed_blob_name)
                {
                    inner.large.delete_all([blob]).await;
                }
                Ok(())
            }
            Err(e) if e.is_message_gone() => {
                tracing::warn!(message_id = %t.id, "MessageGone: activity message was redelivered before its delete");
                Ok(())
            }
            Err(e) => Err(provider_error(OP, e)),
        }
    }

    async fn abandon_activity_work_item(
        &self,
        work_item: &ActivityWorkItem,
        retry_after: Duration,
    ) -> Result<(), ProviderError> {
        const OP: &str = "abandon_activity_work_item";
        let inner = &self.inner;
        let t = activity_token(&work_item.token, OP)?;
        let receipt = buffer::locked(&t.pop_receipt).clone();
        tracing::warn!(message_id = %t.id, delay_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX), "AbandoningMessage");
        match inner
            .queues
            .update_message(
                &inner.names.work_item_queue,
                &t.id,
                &receipt,
                &t.text,
                retry_after.min(MAX_VISIBILITY),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_message_gone() => {
                tracing::warn!(message_id = %t.id, "MessageGone");
                Ok(())
            }
            Err(e) => Err(provider_error(OP, e)),
        }
    }
}

/// A prepared work item whose stored history is invalid (e.g. two `ExecutionStarted`): its
/// messages are deferred with the poison back-off, the cached history is forgotten, and the
/// typed error is returned to the dispatcher.
async fn corrupt_history(
    inner: &Arc<Inner>,
    instance_id: &str,
    batch: &[Buffered],
    e: &durabletask_core::state::InvalidHistoryError,
) -> ProviderError {
    tracing::error!(instance_id, error = %e, "OrchestrationProcessingFailure: stored history is corrupt; its messages wait");
    inner.control.cache_invalidate(instance_id);
    let deliveries = batch.iter().map(|m| m.dequeue_count).max().unwrap_or(1);
    messages::defer_messages(inner, batch, messages::poison_backoff(deliveries)).await;
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    prefetch::finish(inner, instance_id, &ids);
    perr(
        ProviderErrorKind::Permanent,
        "lock_next_orchestration_work_item",
        format!("the stored history of '{instance_id}' is corrupt: {e}"),
    )
}

/// The next work-item queue message (from the prefetched batch, or a new receive of up to
/// `max_concurrent_activity_work_items`), waiting with the poll back-off; `None` at the deadline
/// or when stopped.
async fn next_activity_message(
    inner: &Inner,
    deadline: tokio::time::Instant,
) -> Result<Option<ReceivedMessage>, ProviderError> {
    const OP: &str = "lock_next_activity_work_item";
    let a = &inner.activities;
    let queue = &inner.names.work_item_queue;
    loop {
        if a.stopped.load(Ordering::Acquire) {
            return Ok(None);
        }
        let next = {
            let mut buf = a.buffer.lock().await;
            if buf.is_empty() {
                let n =
                    u8::try_from(inner.settings.max_concurrent_activity_work_items.clamp(1, 32))
                        .unwrap_or(32);
                let got = inner
                    .queues
                    .get_messages(queue, n, inner.settings.work_item_queue_visibility_timeout)
                    .await
                    .map_err(|e| provider_error(OP, e))?;
                buf.extend(got);
            }
            buf.pop_front()
        };
        if let Some(m) = next {
            a.misses.store(0, Ordering::Relaxed);
            return Ok(Some(m));
        }
        let misses = a.misses.fetch_add(1, Ordering::Relaxed);
        let wait = durabletask_core::backoff::poll(
            misses,
            inner.settings.max_queue_polling_interval,
            rand::random(),
        );
        let sleep_until = (tokio::time::Instant::now() + wait).min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(sleep_until) => {}
            () = a.wake.notified() => { a.misses.store(0, Ordering::Relaxed); }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// A received work-item queue message as a locked activity work item; `None` (after poison
/// handling) when it is undecodable or not a `TaskScheduled`.
async fn activity_work_item(inner: &Inner, m: ReceivedMessage) -> Option<ActivityWorkItem> {
    let queue = &inner.names.work_item_queue;
    let data = match messages::decode(inner, &m).await {
        Ok(d) => d,
        Err(reason) => {
            messages::undecodable(inner, queue, &m, &reason).await;
            return None;
        }
    };
    let message = data.task_message?;
    if !matches!(message.event.kind, EventKind::TaskScheduled { .. }) {
        let why = messages::DecodeFailure::Malformed(
            "work-item queue message is not a TaskScheduled event".into(),
        );
        messages::undecodable(inner, queue, &m, &why).await;
        return None;
    }
    let dequeue_count = u32::try_from(m.dequeue_count).unwrap_or(u32::MAX);
    if m.dequeue_count >= messages::POISON_DEQUEUE_COUNT {
        tracing::warn!(message_id = %m.id, dequeue_count, "PoisonMessageDetected: activity keeps failing");
    }
    Some(ActivityWorkItem {
        id: m.id.clone(),
        message,
        locked_until: m.next_visible,
        dequeue_count,
        token: LockToken::new(ActivityToken {
            id: m.id,
            pop_receipt: Mutex::new(m.pop_receipt),
            text: m.text,
            locked_until: Mutex::new(m.next_visible),
            _active: ActiveGuard::new(&inner.activities.active),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_backoff_is_dtf_min_2_pow_n_600() {
        assert_eq!(messages::poison_backoff(1), Duration::from_secs(2));
        assert_eq!(messages::poison_backoff(5), Duration::from_secs(32));
        assert_eq!(messages::poison_backoff(9), Duration::from_secs(512));
        assert_eq!(messages::poison_backoff(10), Duration::from_secs(600));
        assert_eq!(messages::poison_backoff(31), Duration::from_secs(600));
    }
}
