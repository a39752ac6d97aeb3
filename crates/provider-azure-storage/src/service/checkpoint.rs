//! The checkpoint of an orchestration work item, in DTF's exact order, one function per step
//! (an entity's checkpoint, [`durabletask_core::Checkpoint::commit_before_send`], swaps the first
//! two: its messages are part of the state it commits):
//!
//! 1. [`send_outbound`]: every outbound message (sub-orchestration starts and events, timers with
//!    their fire time as visibility, activities), then a `Pending` Instances row for each new
//!    child;
//! 2. [`write_history`]: the new History rows under the sentinel ETag;
//! 3. [`write_row`]: the Instances row under its ETag (at every checkpoint: `LastUpdatedTime`
//!    moves with every episode);
//! 4. [`finish`]: delete the consumed messages, keep the history for the owner's next episode,
//!    and delete the blobs the committed state no longer references.
//!
//! A write that fails aborts the checkpoint ([`abort`]): the cached history is forgotten and the
//! work item is abandoned and replayed; a 409/412 is `SplitBrainDetected` (another worker won).

use super::buffer::{CachedInstance, MessageRef};
use super::messages;
use super::outbound::{delay_until, send};
use super::session::{SessionToken, crashed, token};
use super::tracking::{self, WrittenHistory, starts_execution};
use super::{CrashPoint, Inner, provider_error};
use crate::large::LargePayloads;
use crate::storage::{BatchOp, StorageErrorKind, WriteMode};
use durabletask_core::{
    Checkpoint, EventKind, OrchestrationInstance, OrchestrationWorkItem, ProviderError,
    TaskMessage, WorkItemResult,
};
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;

const OP: &str = "complete_orchestration_work_item";

/// What the Instances write left behind, for the steps after it.
struct RowWritten {
    etag: Option<String>,
    /// Row-owned blobs the write replaced (deleted once it committed).
    replaced: Vec<String>,
    /// The blobs the row references now (`None`: unknown).
    now: Option<tracking::RowBlobs>,
}

/// `complete_orchestration_work_item`: discard, or checkpoint in order.
pub(crate) async fn complete(
    inner: &Inner,
    work_item: &OrchestrationWorkItem,
    result: WorkItemResult,
) -> Result<(), ProviderError> {
    let t = token(&work_item.token, OP)?;
    let id = work_item.instance_id.as_str();
    t.check_held(inner, OP).await?;
    let refs: Vec<MessageRef> = t.messages().iter().map(MessageRef::of).collect();
    let mut cp = match result {
        WorkItemResult::Discard { reason } => {
            tracing::info!(instance_id = id, reason = %reason, "DiscardingWorkItem");
            messages::delete_messages(inner, &refs).await;
            return Ok(());
        }
        WorkItemResult::Checkpoint(cp) => *cp,
    };
    let now = inner.clock.now();
    let written = if cp.commit_before_send {
        // An entity's: its messages are part of the state it commits (the next work item sends
        // them again if this one dies before sending).
        let written = write_history(inner, t, id, &cp, now).await?;
        crash_point(inner, t, id, CrashPoint::AfterHistory, true)?;
        send_outbound(inner, &mut cp, now).await.inspect_err(|_| {
            inner.control.cache_invalidate(id);
        })?;
        crash_point(inner, t, id, CrashPoint::AfterSend, true)?;
        written
    } else {
        send_outbound(inner, &mut cp, now).await?;
        crash_point(inner, t, id, CrashPoint::AfterSend, false)?;
        let written = write_history(inner, t, id, &cp, now).await?;
        crash_point(inner, t, id, CrashPoint::AfterHistory, true)?;
        written
    };
    let row = write_row(inner, t, id, &cp, &written).await?;
    crash_point(inner, t, id, CrashPoint::AfterInstances, true)?;
    crash_point(inner, t, id, CrashPoint::BeforeDelete, true)?;
    finish(inner, t, id, cp, &refs, written, row).await;
    Ok(())
}

/// The test crash hook: stop the checkpoint at `point` as a killed process would.
fn crash_point(
    inner: &Inner,
    t: &SessionToken,
    id: &str,
    point: CrashPoint,
    invalidate: bool,
) -> Result<(), ProviderError> {
    if !inner.crash(point, id) {
        return Ok(());
    }
    t.crashed.store(true, Ordering::Release);
    if invalidate {
        inner.control.cache_invalidate(id);
    }
    Err(crashed(OP, point))
}

/// A checkpoint write failed: forget the cached history (what storage holds is now unknown) and
/// report the error; a 409/412 means another worker wrote first (`SplitBrainDetected`).
pub(crate) fn abort(
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

/// Step 1: every outbound message, then the Pending rows of new children. Takes the messages
/// out of `cp`.
async fn send_outbound(
    inner: &Inner,
    cp: &mut Checkpoint,
    now: OffsetDateTime,
) -> Result<(), ProviderError> {
    let episode = i32::try_from(
        cp.runtime_state
            .events()
            .filter(|e| matches!(e.kind, EventKind::OrchestratorStarted))
            .count(),
    )
    .ok();
    let me: OrchestrationInstance = cp.state.orchestration_instance.clone();
    let mut sends = Vec::new();
    for m in std::mem::take(&mut cp.orchestrator_messages) {
        sends.push((m, Duration::ZERO));
    }
    for m in std::mem::take(&mut cp.timer_messages) {
        let at = match &m.event.kind {
            EventKind::TimerFired { fire_at, .. } => *fire_at,
            _ => now,
        };
        sends.push((m, delay_until(now, at)));
    }
    for m in std::mem::take(&mut cp.activity_messages) {
        sends.push((m, Duration::ZERO));
    }
    let child_starts: Vec<TaskMessage> = sends
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
    for m in child_starts {
        insert_child_row(inner, &m, now).await?;
    }
    Ok(())
}

/// A sub-orchestration start: the child's Instances row exists as Pending from now on.
async fn insert_child_row(
    inner: &Inner,
    start: &TaskMessage,
    now: OffsetDateTime,
) -> Result<(), ProviderError> {
    let EventKind::ExecutionStarted(s) = &start.event.kind else { return Ok(()) };
    let state = durabletask_core::OrchestrationState::pending(s, now);
    let row =
        tracking::instance_entity_with(inner, &state, true, tracking::RowBlobContext::default())
            .await
            .map_err(|e| provider_error(OP, e))?;
    let entity = row.entity.clone();
    match inner
        .tables
        .write(&inner.names.instances_table, BatchOp { mode: WriteMode::Insert, entity })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == StorageErrorKind::Conflict => {
            // The child's row exists already (its own first checkpoint, or an earlier run of
            // this checkpoint): keep only the blobs that row references.
            tracking::drop_unreferenced_uploads(inner, state.instance_id(), &row).await;
            Ok(())
        }
        Err(e) => Err(provider_error(OP, e)),
    }
}

/// Step 2: the new History rows under the sentinel ETag.
async fn write_history(
    inner: &Inner,
    t: &SessionToken,
    id: &str,
    cp: &Checkpoint,
    now: OffsetDateTime,
) -> Result<WrittenHistory, ProviderError> {
    let past = cp.runtime_state.past_events().len();
    let exec = cp.runtime_state.execution_id().unwrap_or_default();
    t.check_held(inner, OP).await?;
    tracking::write_history(
        inner,
        id,
        exec,
        past as u64,
        cp.runtime_state.new_events(),
        t.sentinel_etag.clone(),
        now,
    )
    .await
    .map_err(|e| abort(inner, id, OP, "history was written by another worker", e))
}

/// Whether the row write carries the whole row, `Input` included: when this checkpoint starts
/// an execution, and also when the history came from storage. This process then did not write
/// the row for the execution's last checkpoint, and the row may still be another execution's
/// (the checkpoint that started this one committed History and lost its Instances write; the
/// next one is not "new"). A merge would keep that execution's Input, a History blob no live row
/// references any more, which the sweep deletes (`get_state` then fails), and its CompletedTime
/// or FailureDetails.
fn whole_row_wanted(t: &SessionToken, cp: &Checkpoint) -> bool {
    cp.runtime_state.past_events().is_empty()
        || starts_execution(cp.runtime_state.new_events())
        || t.history_from_storage
}

/// The write mode of the Instances row.
fn row_mode(inner: &Inner, t: &SessionToken, include_input: bool) -> WriteMode {
    if !inner.settings.use_instance_table_etag {
        return if include_input { WriteMode::Upsert } else { WriteMode::UpsertMerge };
    }
    match (&t.instance_etag, t.instance_exists) {
        (Some(etag), _) if include_input => WriteMode::Replace(Some(etag.clone())),
        (Some(etag), _) => WriteMode::Merge(Some(etag.clone())),
        // No row was seen: a new sub-orchestration whose parent may insert the Pending row
        // concurrently (that insert yields to ours), or a repaired instance.
        (None, false) if include_input => WriteMode::Upsert,
        (None, _) => WriteMode::UpsertMerge,
    }
}

/// Step 3: the Instances row, guarded by its ETag so a stalled worker cannot overwrite it.
/// Every checkpoint writes the row, as DTF does: `LastUpdatedTime` is what operators and tools
/// query to find instances that stopped making progress ("running but not updated for an hour").
/// Large Input/Output reference this checkpoint's History blobs (DTF 3.6/3.7); a large custom
/// status the row already references is not uploaded again.
async fn write_row(
    inner: &Inner,
    t: &SessionToken,
    id: &str,
    cp: &Checkpoint,
    written: &WrittenHistory,
) -> Result<RowWritten, ProviderError> {
    let include_input = whole_row_wanted(t, cp);
    let new_execution = cp.runtime_state.past_events().is_empty();
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
        let exec = cp.runtime_state.execution_id().unwrap_or_default();
        history_blobs.extend(tracking::started_input_blob(
            inner,
            id,
            exec,
            cp.runtime_state.past_events(),
            &t.history_blobs,
        ));
    }
    let ctx = tracking::RowBlobContext { history: &history_blobs, stored };
    let row = tracking::instance_entity_with(inner, &cp.state, include_input, ctx)
        .await
        .map_err(|e| provider_error(OP, e))?;
    let mut entity = row.entity.clone();
    if !include_input {
        entity.properties.remove("Input");
    }
    let mode = row_mode(inner, t, include_input);
    let whole_row = matches!(mode, WriteMode::Replace(_) | WriteMode::Upsert);
    let etag =
        inner.tables.write(&inner.names.instances_table, BatchOp { mode, entity }).await.map_err(
            |e| abort(inner, id, OP, "the Instances row changed under this work item", e),
        )?;
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
    let now = tracking::row_blobs_after(&inner.large, stored_row_blobs.as_ref(), &row, whole_row);
    Ok(RowWritten { etag, replaced, now })
}

/// Step 4: delete the messages that triggered the work item; keep the history for the owner's
/// next episode (the sentinel ETag guards it); delete the blobs of a previous generation and the
/// row-owned blobs the Instances write replaced, only now that the new state committed; and,
/// after a history read from storage, sweep what an interrupted attempt left behind.
async fn finish(
    inner: &Inner,
    t: &SessionToken,
    id: &str,
    cp: Checkpoint,
    refs: &[MessageRef],
    written: WrittenHistory,
    row: RowWritten,
) {
    messages::delete_messages(inner, refs).await;
    let new_events = cp.runtime_state.new_events().len();
    tracing::debug!(instance_id = id, new_events, "CheckpointCompleted");
    let new_execution = cp.runtime_state.past_events().is_empty();
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
    // commit and the deletes after it, or the partition moved. The owner then removes what such
    // an attempt left behind (one listing; steady-state work items hit the cache, and an
    // instance without stored history has nothing to leave behind).
    let sweep = (t.history_from_storage
        && t.sentinel_etag.is_some()
        && inner.partitions.is_owned(&t.queue))
    .then(|| (live_blobs.clone(), row.now.clone()));
    let exec = cp.state.orchestration_instance.execution_id.clone().unwrap_or_default();
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
                sentinel_etag: written.sentinel_etag,
                instance_etag: row.etag,
                blobs: live_blobs,
                row_blobs: row.now,
            },
        );
    }
    inner.large.delete_all(old_blobs.into_iter().chain(row.replaced)).await;
    if let Some((live, row_blobs)) = sweep {
        tracking::sweep_instance_blobs(inner, id, &exec, &live, row_blobs.as_ref()).await;
    }
}
