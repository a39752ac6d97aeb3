//! The worker side: hub lifecycle, orchestration work items with the checkpoint in DTF's exact
//! order, and activity work items from the shared work-item queue.

use super::control::{self, Buffered, CachedInstance, ControlState, Listener, control_queue_of};
use super::tracking::{self, starts_execution};
use super::{
    AzureStorageOrchestrationService, CrashPoint, Inner, MAX_VISIBILITY, perr, provider_error,
};
use crate::envelope::MessageData;
use crate::large::LargePayloads;
use crate::storage::{BatchOp, StorageErrorKind, WriteMode};
use async_trait::async_trait;
use durabletask_core::{
    ActivityWorkItem, EventKind, LockToken, OrchestrationRuntimeState, OrchestrationService,
    OrchestrationWorkItem, ProviderError, ProviderErrorKind, ProviderSettings, TaskMessage,
    WorkItemResult,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Lock data of an orchestration work item.
#[derive(Debug)]
pub(crate) struct SessionToken {
    queue: String,
    messages: Mutex<Vec<Buffered>>,
    sentinel_etag: Option<String>,
    instance_etag: Option<String>,
    instance_exists: bool,
    history_blobs: Vec<String>,
    row_blobs: Option<tracking::RowBlobs>,
    history_from_storage: bool,
    finished: AtomicBool,
    crashed: AtomicBool,
}

impl SessionToken {
    /// `LeaseLost` unless this work item is still held: not yet released, and its partition
    /// still owned by this worker. While the partition is fenced (a renewal is overdue, storage
    /// slow) this waits: the renewal resumes it, or the loss answers `LeaseLost`. A slow store
    /// then delays the checkpoint instead of failing it and re-running the episode.
    async fn check_held(&self, inner: &Inner, op: &'static str) -> Result<(), ProviderError> {
        loop {
            if self.finished.load(Ordering::Acquire) {
                return Err(perr(
                    ProviderErrorKind::LeaseLost,
                    op,
                    "the work item was already released",
                ));
            }
            if inner.partitions.is_owned(&self.queue) {
                return Ok(());
            }
            if !inner.partitions.is_held(&self.queue)
                || inner.control.stopped.load(Ordering::Acquire)
            {
                return Err(control::lease_lost(op, &self.queue));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn messages(&self) -> std::sync::MutexGuard<'_, Vec<Buffered>> {
        control::locked(&self.messages)
    }
}

/// Lock data of an activity work item.
#[derive(Debug)]
pub(crate) struct ActivityToken {
    id: String,
    pop_receipt: Mutex<String>,
    text: String,
    locked_until: Mutex<OffsetDateTime>,
    _active: ActiveGuard,
}

/// Counts a locked activity work item until its token is dropped.
#[derive(Debug)]
struct ActiveGuard(Arc<std::sync::atomic::AtomicUsize>);

impl ActiveGuard {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Work-item queue state: prefetched messages and the poll back-off.
#[derive(Debug, Default)]
pub(crate) struct ActivityState {
    buffer: tokio::sync::Mutex<VecDeque<crate::storage::ReceivedMessage>>,
    wake: Notify,
    misses: std::sync::atomic::AtomicU32,
    stopped: AtomicBool,
    /// Activity work items locked and not yet dropped.
    pub(crate) active: Arc<std::sync::atomic::AtomicUsize>,
}

fn token<'a>(t: &'a LockToken, op: &'static str) -> Result<&'a SessionToken, ProviderError> {
    t.downcast_ref::<SessionToken>().ok_or_else(|| {
        perr(ProviderErrorKind::InvalidInput, op, "work item was not issued by this provider")
    })
}

fn activity_token<'a>(
    t: &'a LockToken,
    op: &'static str,
) -> Result<&'a ActivityToken, ProviderError> {
    t.downcast_ref::<ActivityToken>().ok_or_else(|| {
        perr(ProviderErrorKind::InvalidInput, op, "work item was not issued by this provider")
    })
}

fn crashed(op: &'static str, point: CrashPoint) -> ProviderError {
    perr(ProviderErrorKind::Transient, op, format!("injected crash at {point:?}"))
}

impl Inner {
    fn crash(&self, point: CrashPoint, instance_id: &str) -> bool {
        self.crash_hook.as_ref().is_some_and(|h| h.crash_at(point, instance_id))
    }

    fn next_sequence(&self) -> i64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }
}

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
    let _permit = inner
        .io
        .acquire()
        .await
        .map_err(|_| perr(ProviderErrorKind::Transient, OP, "shutting down"))?;
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

/// A checkpoint write failed: forget the cached history (what storage holds is now unknown) and
/// report the error; a 409/412 means another worker wrote first (`SplitBrainDetected`).
fn abort_checkpoint(
    inner: &Inner,
    instance_id: &str,
    op: &'static str,
    conflict: &str,
    e: crate::storage::StorageError,
) -> ProviderError {
    if matches!(e.kind(), StorageErrorKind::Conflict | StorageErrorKind::PreconditionFailed) {
        tracing::warn!(instance_id, error = %e, "SplitBrainDetected: {conflict}; aborting this work item");
    }
    inner.control.cache_invalidate(instance_id);
    provider_error(op, e)
}

fn delay_until(now: OffsetDateTime, at: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

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
        let mut queues = i.names.control_queues.clone();
        queues.push(i.names.work_item_queue.clone());
        queues.push(i.names.poison_queue.clone());
        for q in &queues {
            i.queues.delete_queue_if_exists(q).await.map_err(|e| provider_error(OP, e))?;
        }
        for t in [&i.names.history_table, &i.names.instances_table] {
            i.tables.delete_table_if_exists(t).await.map_err(|e| provider_error(OP, e))?;
        }
        i.blobs
            .delete_container_if_exists(&i.names.large_messages_container)
            .await
            .map_err(|e| provider_error(OP, e))?;
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
        control::stop_all_pollers(i);
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
                control::release_messages(inner, p.messages);
                ControlState::finish(inner, &p.instance_id, &ids);
            }
            let Some(p) = next else {
                if !inner.control.wait_ready(deadline).await {
                    return Ok(None);
                }
                continue;
            };
            let runtime_state = match OrchestrationRuntimeState::from_history(p.history.events) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(instance_id = %p.instance_id, error = %e, "GeneralWarning: stored history is invalid; presenting an empty history");
                    OrchestrationRuntimeState::new()
                }
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
            if u64::from(dequeue_count) >= control::POISON_DEQUEUE_COUNT {
                tracing::warn!(instance_id = %p.instance_id, dequeue_count, "PoisonMessageDetected: work item keeps failing");
            }
            let new_messages = p.messages.iter().map(|m| m.message.clone()).collect();
            return Ok(Some(OrchestrationWorkItem {
                instance_id: p.instance_id,
                runtime_state,
                new_messages,
                locked_until,
                dequeue_count,
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
        const OP: &str = "complete_orchestration_work_item";
        let inner = &self.inner;
        let t = token(&work_item.token, OP)?;
        let id = work_item.instance_id.as_str();
        t.check_held(inner, OP).await?;
        let refs: Vec<control::MessageRef> =
            t.messages().iter().map(control::MessageRef::of).collect();
        let cp = match result {
            WorkItemResult::Discard { reason } => {
                tracing::info!(instance_id = id, reason = %reason, "DiscardingWorkItem");
                control::delete_messages(inner, &refs).await;
                return Ok(());
            }
            WorkItemResult::Checkpoint(cp) => *cp,
        };
        let now = inner.clock.now();
        let episode = i32::try_from(
            cp.runtime_state
                .events()
                .filter(|e| matches!(e.kind, EventKind::OrchestratorStarted))
                .count(),
        )
        .ok();
        let me = cp.state.orchestration_instance.clone();

        // 1. Send every outbound message first.
        let mut sends = Vec::new();
        for m in cp.orchestrator_messages {
            sends.push((m, Duration::ZERO));
        }
        for m in cp.timer_messages {
            let at = match &m.event.kind {
                EventKind::TimerFired { fire_at, .. } => *fire_at,
                _ => now,
            };
            sends.push((m, delay_until(now, at)));
        }
        for m in cp.activity_messages {
            sends.push((m, Duration::ZERO));
        }
        let child_rows: Vec<TaskMessage> = sends
            .iter()
            .filter(|(m, _)| matches!(m.event.kind, EventKind::ExecutionStarted(_)))
            .map(|(m, _)| m.clone())
            .collect();
        let results = futures::future::join_all(
            sends.into_iter().map(|(m, d)| send(inner, m, episode, Some(me.clone()), d)),
        )
        .await;
        for r in results {
            r?;
        }
        for m in child_rows {
            // Sub-orchestration starts: the child's Instances row exists as Pending from now on.
            if let EventKind::ExecutionStarted(s) = &m.event.kind {
                let state = durabletask_core::OrchestrationState::pending(s, now);
                let row = tracking::instance_entity_with(
                    inner,
                    &state,
                    true,
                    tracking::RowBlobContext::default(),
                )
                .await
                .map_err(|e| provider_error(OP, e))?;
                let entity = row.entity.clone();
                match inner
                    .tables
                    .write(
                        &inner.names.instances_table,
                        BatchOp { mode: WriteMode::Insert, entity },
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == StorageErrorKind::Conflict => {
                        // The child's row exists already (its own first checkpoint, or an earlier
                        // run of this checkpoint): keep only the blobs that row references.
                        tracking::drop_unreferenced_uploads(inner, state.instance_id(), &row).await;
                    }
                    Err(e) => return Err(provider_error(OP, e)),
                }
            }
        }
        if inner.crash(CrashPoint::AfterSend, id) {
            t.crashed.store(true, Ordering::Release);
            return Err(crashed(OP, CrashPoint::AfterSend));
        }

        // 2. History under the sentinel ETag.
        let past = cp.runtime_state.past_events().len();
        let exec = cp.runtime_state.execution_id().unwrap_or_default().to_owned();
        let new_events = cp.runtime_state.new_events();
        let new_execution = past == 0;
        let sentinel = if let Err(e) = t.check_held(inner, OP).await {
            return Err(e);
        } else {
            tracking::write_history(
                inner,
                id,
                &exec,
                past as u64,
                new_events,
                t.sentinel_etag.clone(),
                now,
            )
            .await
        };
        let written = sentinel.map_err(|e| {
            abort_checkpoint(inner, id, OP, "history was written by another worker", e)
        })?;
        let sentinel = written.sentinel_etag;
        if inner.crash(CrashPoint::AfterHistory, id) {
            t.crashed.store(true, Ordering::Release);
            inner.control.cache_invalidate(id);
            return Err(crashed(OP, CrashPoint::AfterHistory));
        }

        // 3. The Instances row, guarded by its ETag so a stalled worker cannot overwrite it.
        // The whole row (Input included) when this checkpoint starts an execution, and also when
        // the history came from storage: this process then did not write the row for the
        // execution's last checkpoint, and the row may still be another execution's (the
        // checkpoint that started this one committed History and lost its Instances write; the
        // next one is not "new"). A merge would keep that execution's Input, a History blob no
        // live row references any more, which the sweep below deletes (`get_state` then fails),
        // and its CompletedTime or FailureDetails.
        let include_input = new_execution || starts_execution(new_events) || t.history_from_storage;
        // Every checkpoint writes the row, as DTF does: `LastUpdatedTime` is what operators and
        // tools query to find instances that stopped making progress ("running but not updated
        // for an hour"), so it must move with every episode even when nothing else changed.
        // Large Input/Output reference this checkpoint's History blobs (DTF 3.6/3.7); a large
        // custom status the row already references is not uploaded again.
        let stored_row_blobs = t.row_blobs.clone();
        // (Only under the row's ETag: then the row still references what it referenced.)
        let stored: &[(String, String)] = if inner.settings.use_instance_table_etag {
            stored_row_blobs.as_deref().unwrap_or_default()
        } else {
            &[]
        };
        // A later checkpoint's Input references the execution's ExecutionStarted History blob.
        let mut history_blobs = written.blobs.clone();
        if include_input && !new_execution {
            history_blobs.extend(tracking::started_input_blob(
                inner,
                id,
                &exec,
                cp.runtime_state.past_events(),
                &t.history_blobs,
            ));
        }
        let ctx = tracking::RowBlobContext { history: &history_blobs, stored };
        // Also: the row-owned blobs the write replaced (deleted once it committed) and the blobs
        // the row references now.
        let (instance_etag, replaced_blobs, row_blobs_now) = {
            let row = tracking::instance_entity_with(inner, &cp.state, include_input, ctx)
                .await
                .map_err(|e| provider_error(OP, e))?;
            let mut entity = row.entity.clone();
            if !include_input {
                entity.properties.remove("Input");
            }
            let mode = if inner.settings.use_instance_table_etag {
                match (&t.instance_etag, t.instance_exists) {
                    (Some(etag), _) if include_input => WriteMode::Replace(Some(etag.clone())),
                    (Some(etag), _) => WriteMode::Merge(Some(etag.clone())),
                    // No row was seen: a new sub-orchestration whose parent may insert the Pending
                    // row concurrently (that insert yields to ours), or a repaired instance.
                    (None, false) if include_input => WriteMode::Upsert,
                    (None, false) => WriteMode::UpsertMerge,
                    (None, true) => WriteMode::UpsertMerge,
                }
            } else if include_input {
                WriteMode::Upsert
            } else {
                WriteMode::UpsertMerge
            };
            let whole_row = matches!(mode, WriteMode::Replace(_) | WriteMode::Upsert);
            let instance_etag = inner
                .tables
                .write(&inner.names.instances_table, BatchOp { mode, entity })
                .await
                .map_err(|e| {
                    abort_checkpoint(
                        inner,
                        id,
                        OP,
                        "the Instances row changed under this work item",
                        e,
                    )
                })?;
            tracing::debug!(
                instance_id = id,
                status = cp.state.orchestration_status.as_str(),
                "InstanceStatusUpdate"
            );
            let replaced: Vec<String> = match &stored_row_blobs {
                Some(stored) => tracking::replaced_row_blobs(stored, &row, whole_row),
                None => tracking::checkpoint_replaced_blobs(inner, &cp.state, include_input)
                    .await
                    .into_iter()
                    .filter(|b| LargePayloads::is_instance_blob(b) && !row.owned_blobs.contains(b))
                    .collect(),
            };
            let now_blobs =
                tracking::row_blobs_after(&inner.large, stored_row_blobs.as_ref(), &row, whole_row);
            (instance_etag, replaced, now_blobs)
        };
        if inner.crash(CrashPoint::AfterInstances, id) || inner.crash(CrashPoint::BeforeDelete, id)
        {
            t.crashed.store(true, Ordering::Release);
            inner.control.cache_invalidate(id);
            return Err(crashed(OP, CrashPoint::AfterInstances));
        }

        // 4. Delete the messages that triggered the work item.
        control::delete_messages(inner, &refs).await;
        tracing::debug!(instance_id = id, new_events = new_events.len(), "CheckpointCompleted");

        // The owner keeps the history for the next episode; the sentinel ETag guards it.
        let terminal = cp.state.orchestration_status.is_terminal();
        let new_blobs = written.blobs.iter().map(|b| b.name.clone());
        // The live execution's blobs: a new execution starts from this checkpoint's uploads; the
        // previous generation's blobs are deleted below.
        let (old_blobs, live_blobs): (Vec<String>, Vec<String>) = if new_execution {
            (t.history_blobs.clone(), new_blobs.collect())
        } else {
            (Vec::new(), t.history_blobs.iter().cloned().chain(new_blobs).collect())
        };
        // A history read from storage (not the owner's cache) means this process did not follow
        // the instance's last checkpoints: an earlier attempt aborted or died, possibly between a
        // commit and the deletes after it, or the partition moved. The owner then removes what
        // such an attempt left behind (one listing; steady-state work items hit the cache, and an
        // instance without stored history has nothing to leave behind).
        let sweep = (t.history_from_storage
            && t.sentinel_etag.is_some()
            && inner.partitions.is_owned(&t.queue))
        .then(|| (live_blobs.clone(), row_blobs_now.clone()));
        // Only the owner caches: a partition lost during this checkpoint must not leave an entry
        // behind that would be stale when the partition comes back.
        if terminal || !inner.partitions.is_owned(&t.queue) {
            inner.control.cache_invalidate(id);
        } else {
            inner.control.cache_put(
                id,
                CachedInstance {
                    queue: t.queue.clone(),
                    events: cp.runtime_state.into_events(),
                    sentinel_etag: sentinel,
                    instance_etag,
                    blobs: live_blobs,
                    row_blobs: row_blobs_now,
                },
            );
        }
        // Blobs of the previous generation and the row-owned blobs the Instances write replaced
        // go only after the new state committed.
        inner.large.delete_all(old_blobs.into_iter().chain(replaced_blobs)).await;
        if let Some((live, row)) = sweep {
            let exec = cp.state.orchestration_instance.execution_id.as_deref().unwrap_or_default();
            tracking::sweep_instance_blobs(inner, id, exec, &live, row.as_ref()).await;
        }
        Ok(())
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
        if count >= control::POISON_DEQUEUE_COUNT {
            tracing::warn!(instance_id = %work_item.instance_id, dequeue_count = count, "PoisonMessageDetected");
        }
        control::defer_messages(inner, &messages, delay).await;
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
        ControlState::finish(&self.inner, &work_item.instance_id, &ids);
        Ok(())
    }

    async fn lock_next_activity_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<ActivityWorkItem>, ProviderError> {
        const OP: &str = "lock_next_activity_work_item";
        let inner = &self.inner;
        let a = &inner.activities;
        let deadline = tokio::time::Instant::now() + timeout;
        let queue = &inner.names.work_item_queue;
        loop {
            if a.stopped.load(Ordering::Acquire) {
                return Ok(None);
            }
            let next = {
                let mut buf = a.buffer.lock().await;
                if buf.is_empty() {
                    let n = u8::try_from(
                        inner.settings.max_concurrent_activity_work_items.clamp(1, 32),
                    )
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
            let Some(m) = next else {
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
                continue;
            };
            a.misses.store(0, Ordering::Relaxed);
            let data = match control::decode(inner, &m).await {
                Ok(d) => d,
                Err(reason) => {
                    control::undecodable(inner, queue, &m, &reason).await;
                    continue;
                }
            };
            let Some(message) = data.task_message else { continue };
            if !matches!(message.event.kind, EventKind::TaskScheduled { .. }) {
                control::undecodable(
                    inner,
                    queue,
                    &m,
                    &control::DecodeFailure::Malformed(
                        "work-item queue message is not a TaskScheduled event".into(),
                    ),
                )
                .await;
                continue;
            }
            let dequeue_count = u32::try_from(m.dequeue_count).unwrap_or(u32::MAX);
            if m.dequeue_count >= control::POISON_DEQUEUE_COUNT {
                tracing::warn!(message_id = %m.id, dequeue_count, "PoisonMessageDetected: activity keeps failing");
            }
            return Ok(Some(ActivityWorkItem {
                id: m.id.clone(),
                message,
                locked_until: m.next_visible,
                dequeue_count,
                token: LockToken::new(ActivityToken {
                    id: m.id,
                    pop_receipt: Mutex::new(m.pop_receipt),
                    text: m.text,
                    locked_until: Mutex::new(m.next_visible),
                    _active: ActiveGuard::new(&a.active),
                }),
            }));
        }
    }

    async fn renew_activity_work_item_lock(
        &self,
        work_item: &ActivityWorkItem,
    ) -> Result<OffsetDateTime, ProviderError> {
        const OP: &str = "renew_activity_work_item_lock";
        let inner = &self.inner;
        let t = activity_token(&work_item.token, OP)?;
        let receipt = control::locked(&t.pop_receipt).clone();
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
        *control::locked(&t.pop_receipt) = new;
        let until = inner.clock.now() + vis;
        *control::locked(&t.locked_until) = until;
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
        let until = *control::locked(&t.locked_until);
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
        let receipt = control::locked(&t.pop_receipt).clone();
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
        let receipt = control::locked(&t.pop_receipt).clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_backoff_is_dtf_min_2_pow_n_600() {
        assert_eq!(control::poison_backoff(1), Duration::from_secs(2));
        assert_eq!(control::poison_backoff(5), Duration::from_secs(32));
        assert_eq!(control::poison_backoff(9), Duration::from_secs(512));
        assert_eq!(control::poison_backoff(10), Duration::from_secs(600));
        assert_eq!(control::poison_backoff(31), Duration::from_secs(600));
    }
}
