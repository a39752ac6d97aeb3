//! The client side: create (enqueue first, then the Instances row), send, state, history, query
//! with continuation, purge.

use super::outbound::{send, send_with};
use super::tracking::{self, InstanceRow};
use super::{AzureStorageOrchestrationService, Inner, perr, provider_error};
use crate::keys::{SENTINEL_ROW_KEY, escape_partition_key};
use crate::storage::{BatchOp, StorageErrorKind, TableContinuation, TableEntity, WriteMode};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use durabletask_core::{
    EventKind, HistoryEvent, OrchestrationQuery, OrchestrationServiceClient, OrchestrationState,
    OrchestrationStatus, ProviderError, ProviderErrorKind, PurgeFilter, PurgeResult,
    PurgeTimeFilter, QueryResult, TaskMessage, validate_instance_id,
};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn check_id(op: &'static str, id: &str) -> Result<(), ProviderError> {
    validate_instance_id(id).map_err(|e| perr(ProviderErrorKind::InvalidInput, op, e.to_string()))
}

/// How often a create re-reads and rewrites an Instances row that concurrent creates keep
/// changing before it gives up.
const MAX_CREATE_ATTEMPTS: u32 = 5;

/// The start timestamp of a new execution: `t`, moved to at least 1 ms after the created time of
/// the row it replaces, truncated to the table's 100 ns resolution so that the queued message and
/// the row carry the same instant.
pub(crate) fn start_time_after(
    t: OffsetDateTime,
    replaced: Option<OffsetDateTime>,
) -> OffsetDateTime {
    let t = match replaced {
        Some(c) if t < c + Duration::from_millis(1) => c + Duration::from_millis(1),
        _ => t,
    };
    t.replace_nanosecond(t.nanosecond() / 100 * 100).unwrap_or(t)
}

const CREATE: &str = "create_orchestration";

/// Checks a start message and gives it an execution id if it has none; returns the instance
/// and execution ids.
fn prepare_start(
    inner: &Inner,
    start: &mut TaskMessage,
) -> Result<(String, String), ProviderError> {
    let id = start.orchestration_instance.instance_id.clone();
    durabletask_core::validate_orchestration_instance_id(&id)
        .map_err(|e| perr(ProviderErrorKind::InvalidInput, CREATE, e.to_string()))?;
    super::outbound::check_message_size(inner, start, CREATE)?;
    let EventKind::ExecutionStarted(started) = &mut start.event.kind else {
        return Err(perr(
            ProviderErrorKind::InvalidInput,
            CREATE,
            "only ExecutionStarted messages create instances",
        ));
    };
    if started.orchestration_instance.execution_id.is_none() {
        started.orchestration_instance.execution_id = Some(durabletask_core::new_execution_id());
        start.orchestration_instance.execution_id =
            started.orchestration_instance.execution_id.clone();
    }
    let exec = started.orchestration_instance.execution_id.clone().unwrap_or_default();
    Ok((id, exec))
}

/// The Pending row of a new execution replacing `existing`, and how long its start is delayed.
/// The row's CreatedTime only moves forward: the start de-duplication discards a start older
/// than the row, so a recreation must be newer than what it replaces.
fn pending_state(
    inner: &Inner,
    start: &mut TaskMessage,
    existing: Option<&InstanceRow>,
) -> Result<(OrchestrationState, Duration), ProviderError> {
    start.event.timestamp =
        start_time_after(start.event.timestamp, existing.map(|r| r.state.created_time));
    let timestamp = start.event.timestamp;
    let EventKind::ExecutionStarted(started) = &mut start.event.kind else {
        return Err(perr(ProviderErrorKind::InvalidInput, CREATE, "not a start"));
    };
    if started.generation.is_none() {
        started.generation = Some(existing.and_then(|r| r.state.generation).map_or(0, |g| g + 1));
    }
    let now = inner.clock.now();
    let delay = started
        .scheduled_start_time
        .map(|t| Duration::try_from(t - now).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::ZERO);
    let mut state = OrchestrationState::pending(started, timestamp);
    state.last_updated_time = now;
    Ok((state, delay))
}

/// After a create's row write lost a race: what the row re-read now says. `None`: retry (the
/// row is gone, or an older execution wrote it after our read and its start is now stale).
fn raced_create_outcome(
    id: &str,
    exec: &str,
    state: &OrchestrationState,
    now_row: Option<&InstanceRow>,
    dedupe_statuses: &[OrchestrationStatus],
) -> Option<Result<(), ProviderError>> {
    let r = now_row?;
    let queued = |what: String| {
        format!("{what}; the start message for execution {exec} was queued and will be discarded")
    };
    let their_exec = r.state.orchestration_instance.execution_id.as_deref();
    if their_exec == Some(exec) {
        return Some(Ok(()));
    }
    if dedupe_statuses.contains(&r.state.orchestration_status) {
        return Some(Err(perr(
            ProviderErrorKind::Conflict,
            CREATE,
            queued(format!(
                "instance '{id}' was created concurrently (execution {}, status {})",
                their_exec.unwrap_or("?"),
                r.state.orchestration_status
            )),
        )));
    }
    (r.state.created_time >= state.created_time).then(|| {
        Err(perr(
            ProviderErrorKind::Superseded,
            CREATE,
            format!(
                "the start message for execution {exec} of '{id}' was queued and will be discarded because execution {} superseded it",
                their_exec.unwrap_or("?")
            ),
        ))
    })
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn odata_time(t: OffsetDateTime) -> String {
    format!("datetime'{}'", t.format(&Rfc3339).unwrap_or_default())
}

/// The next string after every string starting with `prefix` (DTF: last char + 1).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(u32::from(last) + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The Instances column a purge time range applies to.
fn purge_time_column(f: PurgeTimeFilter) -> &'static str {
    match f {
        PurgeTimeFilter::CompletedTime => "CompletedTime",
        PurgeTimeFilter::LastUpdatedTime => "LastUpdatedTime",
        _ => "CreatedTime",
    }
}

/// The OData filter for a query (DTF `OrchestrationInstanceStatusQueryCondition`): `time_column`
/// in `[from, to]`, one of `statuses`, PartitionKey prefix.
pub(crate) fn query_filter(
    statuses: &[OrchestrationStatus],
    time_column: &str,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    prefix: Option<&str>,
) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(from) = from {
        parts.push(format!("{time_column} ge {}", odata_time(from)));
    }
    if let Some(to) = to {
        parts.push(format!("{time_column} le {}", odata_time(to)));
    }
    if !statuses.is_empty() {
        let ors: Vec<String> =
            statuses.iter().map(|s| format!("RuntimeStatus eq {}", quote(s.as_str()))).collect();
        parts.push(format!("({})", ors.join(" or ")));
    }
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        let escaped = escape_partition_key(prefix);
        match prefix_upper_bound(&escaped) {
            Some(upper) => parts.push(format!(
                "PartitionKey ge {} and PartitionKey lt {}",
                quote(&escaped),
                quote(&upper)
            )),
            None => parts.push(format!("PartitionKey ge {}", quote(&escaped))),
        }
    }
    (!parts.is_empty())
        .then(|| parts.iter().map(|p| format!("({p})")).collect::<Vec<_>>().join(" and "))
}

fn encode_token(c: &TableContinuation) -> String {
    let raw = format!("{}\n{}", c.next_partition_key, c.next_row_key.as_deref().unwrap_or(""));
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_token(token: &str) -> Result<TableContinuation, ProviderError> {
    let bad = || perr(ProviderErrorKind::InvalidInput, "query", "malformed continuation token");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (pk, rk) = raw.split_once('\n').ok_or_else(bad)?;
    Ok(TableContinuation {
        next_partition_key: pk.to_owned(),
        next_row_key: (!rk.is_empty()).then(|| rk.to_owned()),
    })
}

impl AzureStorageOrchestrationService {
    /// Writes the Pending row of a new execution: insert, or replace the row read just before.
    async fn write_new_execution(
        &self,
        state: &OrchestrationState,
        existing: Option<&InstanceRow>,
    ) -> Result<(), crate::storage::StorageError> {
        let inner = &self.inner;
        let row = tracking::instance_entity_with(inner, state, true, Default::default()).await?;
        let mode = match existing {
            Some(r) => WriteMode::Replace(r.etag.clone()),
            None => WriteMode::Insert,
        };
        let entity = row.entity.clone();
        if let Err(e) =
            inner.tables.write(&inner.names.instances_table, BatchOp { mode, entity }).await
        {
            // Refused: the row is someone else's, and the blobs named after this new execution
            // are referenced by nothing (a retry uploads them again).
            if matches!(e.kind(), StorageErrorKind::Conflict | StorageErrorKind::PreconditionFailed)
            {
                inner.large.delete_all(row.owned_blobs.clone()).await;
            }
            return Err(e);
        }
        // The replaced row's own blobs (large custom status, failure text, Pending input) are
        // referenced by nothing now.
        if let Some(old) = existing {
            let replaced = old.blobs.iter().map(|(_, blob)| blob.clone());
            tracking::delete_replaced_blobs(inner, replaced, &row).await;
        }
        Ok(())
    }

    /// Step 2 of a create: the Pending row, after the start was queued. A lost race re-reads the
    /// row and decides ([`raced_create_outcome`]); every answer says what happened to the
    /// queued start.
    async fn write_row_after_send(
        &self,
        id: &str,
        exec: &str,
        mut state: OrchestrationState,
        mut existing: Option<InstanceRow>,
        dedupe_statuses: &[OrchestrationStatus],
        delay: Duration,
    ) -> Result<(), ProviderError> {
        let inner = &self.inner;
        for attempt in 1..=MAX_CREATE_ATTEMPTS {
            let err = match self.write_new_execution(&state, existing.as_ref()).await {
                Ok(()) => {
                    let (partition, queue) = super::buffer::control_queue_of(inner, id);
                    if delay.is_zero() && inner.partitions.is_owned(&queue) {
                        inner.control.wake(partition);
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if !matches!(
                err.kind(),
                StorageErrorKind::Conflict | StorageErrorKind::PreconditionFailed
            ) {
                return Err(perr(
                    provider_error(CREATE, err.clone()).kind(),
                    CREATE,
                    format!(
                        "the start message for execution {exec} of '{id}' was queued, then writing the Instances row failed ({err}); unless that write committed anyway, the start will be discarded"
                    ),
                )
                .with_source(err));
            }
            // Someone wrote the row since we read it: look at what is there now.
            existing = tracking::read_instance(inner, id, false)
                .await
                .map_err(|e| provider_error(CREATE, e))?;
            if let Some(outcome) =
                raced_create_outcome(id, exec, &state, existing.as_ref(), dedupe_statuses)
            {
                return outcome;
            }
            state.generation =
                Some(existing.as_ref().and_then(|r| r.state.generation).map_or(0, |g| g + 1));
            tracing::debug!(instance_id = %id, attempt, "create: Instances row changed; retrying");
        }
        Err(perr(
            ProviderErrorKind::Transient,
            CREATE,
            format!(
                "the Instances row of '{id}' kept changing ({MAX_CREATE_ATTEMPTS} attempts); the start message for execution {exec} was queued and will be discarded"
            ),
        ))
    }

    /// Deletes an instance's history rows, blobs and row. Returns whether the row was deleted.
    async fn purge_one(&self, instance_id: &str, row: &TableEntity) -> Result<bool, ProviderError> {
        const OP: &str = "purge_instance";
        let inner = &self.inner;
        let pk = escape_partition_key(instance_id);
        // History rows (keys only), in delete batches of 100.
        let filter = format!("PartitionKey eq {}", quote(&pk));
        let mut keys: Vec<String> = crate::storage::query_all(
            inner.tables.as_ref(),
            &inner.names.history_table,
            Some(&filter),
            Some(&["PartitionKey", "RowKey"]),
        )
        .await
        .map_err(|e| provider_error(OP, e))?
        .into_iter()
        .map(|e| e.row_key)
        .collect();
        // The sentinel goes last so a half-done purge never leaves rows without their guard.
        keys.sort_by_key(|k| k == SENTINEL_ROW_KEY);
        for chunk in keys.chunks(100) {
            let ops: Vec<BatchOp> = chunk
                .iter()
                .map(|rk| BatchOp {
                    mode: WriteMode::Delete(None),
                    entity: TableEntity::new(pk.clone(), rk.clone()),
                })
                .collect();
            if let Err(e) = inner.tables.batch(&inner.names.history_table, ops).await {
                if e.kind() != StorageErrorKind::NotFound {
                    return Err(provider_error(OP, e));
                }
                for rk in chunk {
                    let op = BatchOp {
                        mode: WriteMode::Delete(None),
                        entity: TableEntity::new(pk.clone(), rk.clone()),
                    };
                    match inner.tables.write(&inner.names.history_table, op).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == StorageErrorKind::NotFound => {}
                        Err(e) => return Err(provider_error(OP, e)),
                    }
                }
            }
        }
        // Large-payload blobs under the instance's exact prefix.
        inner.large.delete_instance(instance_id).await.map_err(|e| provider_error(OP, e))?;
        // The row, only if nobody recreated the instance meanwhile.
        let op =
            BatchOp { mode: WriteMode::Delete(row.etag.clone()), entity: TableEntity::new(pk, "") };
        match inner.tables.write(&inner.names.instances_table, op).await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    StorageErrorKind::NotFound | StorageErrorKind::PreconditionFailed
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(provider_error(OP, e)),
        }
    }
}

fn is_terminal_row(e: &TableEntity) -> bool {
    e.get_str("RuntimeStatus")
        .is_some_and(|s| OrchestrationStatus::TERMINAL.iter().any(|t| t.as_str() == s))
}

#[async_trait]
impl OrchestrationServiceClient for AzureStorageOrchestrationService {
    async fn create_orchestration(
        &self,
        mut start: TaskMessage,
        dedupe_statuses: &[OrchestrationStatus],
    ) -> Result<(), ProviderError> {
        let inner = &self.inner;
        let (id, exec) = prepare_start(inner, &mut start)?;
        // The row is read first: for the dedupe check and so that a recreation's start is newer
        // than the row it replaces.
        let existing = tracking::read_instance(inner, &id, false)
            .await
            .map_err(|e| provider_error(CREATE, e))?;
        if let Some(r) = &existing
            && dedupe_statuses.contains(&r.state.orchestration_status)
        {
            return Err(perr(
                ProviderErrorKind::Conflict,
                CREATE,
                format!(
                    "instance '{id}' already exists with status {}; nothing was written",
                    r.state.orchestration_status
                ),
            ));
        }
        let (state, delay) = pending_state(inner, &mut start, existing.as_ref())?;
        // 1. Enqueue the start message. 2. Then write the row (the start de-duplication relies on
        // this order).
        send_with(inner, start, None, None, delay, false).await?;
        self.write_row_after_send(&id, &exec, state, existing, dedupe_statuses, delay).await
    }

    async fn send_message(&self, message: TaskMessage) -> Result<(), ProviderError> {
        const OP: &str = "send_message";
        check_id(OP, &message.orchestration_instance.instance_id)?;
        if matches!(message.event.kind, EventKind::TaskScheduled { .. }) {
            return Err(perr(
                ProviderErrorKind::InvalidInput,
                OP,
                "clients cannot schedule activities",
            ));
        }
        send(&self.inner, message, None, None, Duration::ZERO).await
    }

    async fn get_state(
        &self,
        instance_id: &str,
        include_payloads: bool,
    ) -> Result<Option<OrchestrationState>, ProviderError> {
        const OP: &str = "get_state";
        check_id(OP, instance_id)?;
        let row = tracking::read_instance(&self.inner, instance_id, include_payloads)
            .await
            .map_err(|e| provider_error(OP, e))?;
        Ok(row.map(|r| r.state))
    }

    async fn get_history(
        &self,
        instance_id: &str,
        execution_id: Option<&str>,
    ) -> Result<Vec<HistoryEvent>, ProviderError> {
        const OP: &str = "get_history";
        check_id(OP, instance_id)?;
        let h = tracking::read_history(&self.inner, instance_id)
            .await
            .map_err(|e| provider_error(OP, e))?;
        if let Some(want) = execution_id {
            let current = durabletask_core::admission::history_execution(&h.events);
            if current != Some(want) {
                return Err(perr(
                    ProviderErrorKind::NotFound,
                    OP,
                    format!("execution '{want}' is not the current execution of '{instance_id}'"),
                ));
            }
        }
        Ok(h.events)
    }

    async fn query(&self, query: &OrchestrationQuery) -> Result<QueryResult, ProviderError> {
        const OP: &str = "query";
        let inner = &self.inner;
        let filter = query_filter(
            &query.runtime_status,
            "CreatedTime",
            query.created_from,
            query.created_to,
            query.instance_id_prefix.as_deref(),
        );
        // DTF's ExcludeEntities: entity partition keys start with '@' ('A' follows it).
        let filter = match (filter, query.exclude_entities) {
            (f, false) => f,
            (None, true) => Some("(PartitionKey lt '@' or PartitionKey ge 'A')".to_owned()),
            (Some(f), true) => {
                Some(format!("{f} and (PartitionKey lt '@' or PartitionKey ge 'A')"))
            }
        };
        let mut continuation = query.continuation_token.as_deref().map(decode_token).transpose()?;
        let page_size = query.page_size.max(1);
        let mut states = Vec::new();
        // The service may return short pages; keep reading until the page is full or done.
        loop {
            let want = u32::try_from(page_size - states.len()).unwrap_or(1000).min(1000);
            let page = match inner
                .tables
                .query(
                    &inner.names.instances_table,
                    filter.as_deref(),
                    None,
                    Some(want),
                    continuation,
                )
                .await
            {
                Ok(p) => p,
                Err(e) if e.kind() == StorageErrorKind::NotFound => {
                    return Ok(QueryResult { states, continuation_token: None });
                }
                Err(e) => return Err(provider_error(OP, e)),
            };
            for e in &page.entities {
                let id = crate::keys::unescape_partition_key(&e.partition_key);
                let state =
                    tracking::entity_instance(inner, &id, e, query.fetch_inputs_and_outputs)
                        .await
                        .map_err(|e| provider_error(OP, e))?;
                states.push(state);
            }
            continuation = page.continuation;
            if continuation.is_none() || states.len() >= page_size {
                break;
            }
        }
        Ok(QueryResult { states, continuation_token: continuation.as_ref().map(encode_token) })
    }

    async fn purge_instance(&self, instance_id: &str) -> Result<PurgeResult, ProviderError> {
        const OP: &str = "purge_instance";
        check_id(OP, instance_id)?;
        let inner = &self.inner;
        let pk = escape_partition_key(instance_id);
        let row = match inner.tables.get_entity(&inner.names.instances_table, &pk, "").await {
            Ok(r) => r,
            Err(e) if e.kind() == StorageErrorKind::NotFound => None,
            Err(e) => return Err(provider_error(OP, e)),
        };
        let Some(row) = row else {
            return Ok(PurgeResult::default());
        };
        if !is_terminal_row(&row) {
            return Err(perr(
                ProviderErrorKind::PreconditionFailed,
                OP,
                format!(
                    "instance '{instance_id}' is {}; only Completed, Failed, Canceled and Terminated instances can be purged",
                    row.get_str("RuntimeStatus").unwrap_or("?")
                ),
            ));
        }
        let deleted = self.purge_one(instance_id, &row).await?;
        tracing::info!(instance_id, deleted, "PurgeInstanceHistory");
        Ok(PurgeResult { deleted_instance_count: usize::from(deleted) })
    }

    async fn purge_by_filter(&self, filter: &PurgeFilter) -> Result<PurgeResult, ProviderError> {
        const OP: &str = "purge_by_filter";
        let inner = &self.inner;
        let statuses: Vec<OrchestrationStatus> = if filter.runtime_status.is_empty() {
            OrchestrationStatus::TERMINAL.to_vec()
        } else {
            filter.runtime_status.iter().copied().filter(|s| s.is_terminal()).collect()
        };
        if statuses.is_empty() {
            return Ok(PurgeResult::default());
        }
        let odata = query_filter(
            &statuses,
            purge_time_column(filter.time_filter),
            Some(filter.from),
            filter.to,
            None,
        );
        let mut continuation = None;
        let mut deleted = 0;
        loop {
            let page = match inner
                .tables
                .query(
                    &inner.names.instances_table,
                    odata.as_deref(),
                    None,
                    Some(100),
                    continuation,
                )
                .await
            {
                Ok(p) => p,
                Err(e) if e.kind() == StorageErrorKind::NotFound => break,
                Err(e) => return Err(provider_error(OP, e)),
            };
            let limit = (inner.settings.max_storage_operation_concurrency / 3).max(1);
            let rows: Vec<&TableEntity> =
                page.entities.iter().filter(|e| is_terminal_row(e)).collect();
            for chunk in rows.chunks(limit) {
                let results = futures::future::join_all(chunk.iter().map(|e| async move {
                    let id = crate::keys::unescape_partition_key(&e.partition_key);
                    self.purge_one(&id, e).await
                }))
                .await;
                for r in results {
                    if r? {
                        deleted += 1;
                    }
                }
            }
            continuation = page.continuation;
            if continuation.is_none() {
                break;
            }
        }
        tracing::info!(deleted, "PurgeInstanceHistory");
        Ok(PurgeResult { deleted_instance_count: deleted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn filters_match_the_dotnet_shapes() {
        assert_eq!(query_filter(&[], "CreatedTime", None, None, None), None);
        assert_eq!(
            query_filter(
                &[OrchestrationStatus::Completed],
                purge_time_column(PurgeTimeFilter::CompletedTime),
                Some(datetime!(2024-01-01 0:00 UTC)),
                Some(datetime!(2024-01-02 0:00 UTC)),
                None
            )
            .unwrap(),
            "(CompletedTime ge datetime'2024-01-01T00:00:00Z') and (CompletedTime le datetime'2024-01-02T00:00:00Z') and ((RuntimeStatus eq 'Completed'))"
        );
        assert_eq!(purge_time_column(PurgeTimeFilter::LastUpdatedTime), "LastUpdatedTime");
        assert_eq!(purge_time_column(PurgeTimeFilter::CreatedTime), "CreatedTime");
        assert_eq!(
            query_filter(
                &[OrchestrationStatus::Running, OrchestrationStatus::Pending],
                "CreatedTime",
                Some(datetime!(2024-01-01 0:00 UTC)),
                None,
                Some("ab'c")
            )
            .unwrap(),
            "(CreatedTime ge datetime'2024-01-01T00:00:00Z') and ((RuntimeStatus eq 'Running' or RuntimeStatus eq 'Pending')) and (PartitionKey ge 'ab''c' and PartitionKey lt 'ab''d')"
        );
        assert_eq!(
            query_filter(&[], "CreatedTime", None, None, Some("a/b")).unwrap(),
            "(PartitionKey ge 'a^0b' and PartitionKey lt 'a^0c')"
        );
    }

    #[test]
    fn continuation_tokens_round_trip_and_reject_garbage() {
        let c = TableContinuation {
            next_partition_key: "p k".into(),
            next_row_key: Some(String::new()),
        };
        let back = decode_token(&encode_token(&c)).unwrap();
        assert_eq!(back.next_partition_key, "p k");
        assert!(decode_token("!!!").is_err());
    }
}
