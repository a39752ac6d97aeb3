//! The background prefetch: for an instance's batch, load its history (the owner's cache, or
//! storage) and, when needed, its Instances row; ask the admission rules
//! ([`durabletask_core::admission`]); perform the instance write they decide on; delete,
//! defer or keep each message; and queue the result as a prepared work item.

use super::buffer::{Buffered, MessageRef, Prepared};
use super::messages::{defer_messages, delete_messages, release_messages};
use super::tracking::{self, InstanceRow, LoadedHistory};
use super::{Inner, MAX_VISIBILITY};
use crate::storage::StorageResult;
use durabletask_core::admission::{
    Admission, AdmissionInput, AdmissionRules, Candidate, Decision, InstanceAction, RowState,
    RowView, Verdict, admit, answers_unknown_events, is_top_level_start,
};
use durabletask_core::{EventKind, HistoryEvent, OrchestrationStatus, ProviderError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;

/// Top-level starts whose Instances row never appears are dropped after this many deliveries.
const ORPHAN_START_DEQUEUE_COUNT: u64 = 10;
/// Responses to an instance with no history are treated as zombies after this many deliveries.
const ZOMBIE_DEQUEUE_COUNT: u64 = 5;

/// Starts the prefetch of an instance's batch in the background.
pub(crate) fn spawn(inner: &Arc<Inner>, instance_id: String, queue: String, batch: Vec<Buffered>) {
    let inner = inner.clone();
    tokio::spawn(async move {
        prefetch(&inner, instance_id, queue, batch).await;
    });
}

/// Ends the instance's work item (its messages leave memory) and starts the prefetch of what
/// arrived meanwhile.
pub(crate) fn finish(inner: &Arc<Inner>, instance_id: &str, message_ids: &[String]) {
    if let Some((queue, batch)) = inner.control.end_work(instance_id, message_ids) {
        spawn(inner, instance_id.to_owned(), queue, batch);
    }
}

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
                finish(inner, &instance_id, &ids);
            }
        }
        Ok(None) => finish(inner, &instance_id, &ids),
        Err((e, batch)) => {
            tracing::warn!(instance_id, error = %e, "OrchestrationProcessingFailure: prefetch failed");
            inner.control.cache_invalidate(&instance_id);
            defer_messages(inner, &batch, Duration::from_secs(5)).await;
            finish(inner, &instance_id, &ids);
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
pub(super) async fn build(
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
