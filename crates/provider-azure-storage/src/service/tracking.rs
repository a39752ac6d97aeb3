//! The tracking store: History and Instances tables in DurableTask.AzureStorage's column layout.
//!
//! History rows: PartitionKey = escaped instance id, RowKey = 16-hex position in the execution's
//! history, one column per event member (`Timestamp` renamed `_Timestamp`, enums by name, complex
//! members as JSON strings, dates native), plus `ExecutionId`; the `sentinel` row's ETag guards
//! every checkpoint. Oversized properties go to gzip blobs (`{Prop}BlobName` + empty value).
//!
//! Instances rows: PartitionKey = escaped instance id, RowKey = "", columns `ExecutionId`, `Name`,
//! `Version`, `Input`, `Output`, `CustomStatus`, `CreatedTime`, `LastUpdatedTime`,
//! `CompletedTime`, `RuntimeStatus`, `ScheduledStartTime`, `Generation`, `Tags`, `TaskHubName`
//! (plus `ParentInstance` and `FailureDetails` as JSON, which .NET readers ignore). Oversized
//! values are stored as the URL of a blob in the hub's own container.

use super::Inner;
use crate::keys::{SENTINEL_ROW_KEY, escape_partition_key, history_row_key};
use crate::large::{CUSTOM_STATUS_COLUMN, LargePayloads, fnv1a64};
use crate::storage::{
    BatchOp, EdmValue, StorageError, StorageErrorKind, StorageResult, TableEntity, WriteMode,
};
use durabletask_core::{
    EventKind, EventType, HistoryEvent, OrchestrationInstance, OrchestrationState,
    OrchestrationStatus,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Event members stored as native DateTime columns.
const DATE_COLUMNS: [&str; 3] = ["Timestamp", "FireAt", "ScheduledStartTime"];
/// Event members stored as JSON strings.
const JSON_COLUMNS: [&str; 6] = [
    "OrchestrationInstance",
    "ParentInstance",
    "Tags",
    "FailureDetails",
    "ParentTraceContext",
    "State",
];
/// Properties that may exceed the table limit and then move to a blob (DTF 3.7).
const LARGE_COLUMNS: [&str; 9] = [
    "Name",
    "Input",
    "Result",
    "Output",
    "Reason",
    "Details",
    "Correlation",
    "FailureDetails",
    "Tags",
];

/// Rows per history batch (plus the sentinel = 100, the service limit).
pub(crate) const HISTORY_BATCH_ROWS: usize = 99;
/// Flush a history batch when its estimated size passes this (DTF: 3 MB).
const HISTORY_BATCH_BYTES: usize = 3 * 1024 * 1024;

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count() * 2
}

fn bad_data(op: &'static str, msg: impl Into<String>) -> StorageError {
    StorageError::new(StorageErrorKind::Permanent, op, msg)
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A blob uploaded for a History row by a checkpoint: its name and the FNV-1a 64 hash and length
/// of the text it holds (so the Instances row can reference the same blob for the same value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryBlob {
    pub(crate) name: String,
    pub(crate) hash: u64,
    pub(crate) len: usize,
}

impl HistoryBlob {
    fn holds(&self, value: &str) -> bool {
        self.len == value.len() && self.hash == fnv1a64(value.as_bytes())
    }
}

/// The History blob that holds the current execution's large `ExecutionStarted` input (the name
/// [`event_entity`] gave it at `past`'s position of that event), when a live History row still
/// references it (`live`). A checkpoint that rewrites the Instances row's Input after the one that
/// started the execution references that blob, as the starting checkpoint did, instead of
/// uploading a row-owned copy.
pub(crate) fn started_input_blob(
    inner: &Inner,
    instance_id: &str,
    execution_id: &str,
    past: &[HistoryEvent],
    live: &[String],
) -> Option<HistoryBlob> {
    let (position, input) = past.iter().enumerate().find_map(|(i, e)| match &e.kind {
        EventKind::ExecutionStarted(s) => Some((i, s.input.as_deref()?)),
        _ => None,
    })?;
    if !is_large(inner, input) {
        return None;
    }
    let name = LargePayloads::history_blob_name(
        instance_id,
        execution_id,
        &history_row_key(u64::try_from(position).ok()?),
        EventType::ExecutionStarted.as_str(),
        "Input",
        input,
    );
    live.contains(&name).then(|| HistoryBlob {
        name,
        hash: fnv1a64(input.as_bytes()),
        len: input.len(),
    })
}

/// Converts one history event into its row (uploading oversized properties, recorded in
/// `uploaded`).
pub(crate) async fn event_entity(
    large: &LargePayloads,
    max_property_bytes: usize,
    instance_id: &str,
    position: u64,
    execution_id: &str,
    event: &HistoryEvent,
    uploaded: &mut Vec<HistoryBlob>,
) -> StorageResult<TableEntity> {
    const OP: &str = "encode history row";
    let row_key = history_row_key(position);
    let mut entity = TableEntity::new(escape_partition_key(instance_id), row_key.clone());
    entity.properties.insert("ExecutionId".into(), EdmValue::String(execution_id.to_owned()));
    let Value::Object(map) =
        serde_json::to_value(event).map_err(|e| bad_data(OP, e.to_string()))?
    else {
        return Err(bad_data(OP, "event did not serialize to an object"));
    };
    let event_type = event.event_type().as_str();
    for (key, value) in map {
        let column = if key == "Timestamp" { "_Timestamp".to_owned() } else { key.clone() };
        let edm = match value {
            Value::Null => continue,
            Value::Bool(b) => EdmValue::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => i32::try_from(i).map_or(EdmValue::Int64(i), EdmValue::Int32),
                None => EdmValue::Double(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) if DATE_COLUMNS.contains(&key.as_str()) => {
                match OffsetDateTime::parse(&s, &Rfc3339) {
                    Ok(t) => EdmValue::DateTime(t),
                    Err(_) => EdmValue::String(s),
                }
            }
            Value::String(s) => EdmValue::String(s),
            other => EdmValue::String(other.to_string()),
        };
        if let EdmValue::String(s) = &edm
            && LARGE_COLUMNS.contains(&key.as_str())
            && utf16_len(s) > max_property_bytes
        {
            let name = LargePayloads::history_blob_name(
                instance_id,
                execution_id,
                &row_key,
                event_type,
                &key,
                s,
            );
            large.upload(&name, s.as_bytes()).await?;
            uploaded.push(HistoryBlob {
                name: name.clone(),
                hash: fnv1a64(s.as_bytes()),
                len: s.len(),
            });
            entity.properties.insert(format!("{key}BlobName"), EdmValue::String(name));
            entity.properties.insert(column, EdmValue::String(String::new()));
            continue;
        }
        entity.properties.insert(column, edm);
    }
    Ok(entity)
}

/// Rebuilds a history event from its row (downloading blob-stored properties). Returns the event
/// and the blob names it referenced.
pub(crate) async fn entity_event(
    large: &LargePayloads,
    entity: &TableEntity,
) -> StorageResult<(HistoryEvent, Vec<String>)> {
    const OP: &str = "decode history row";
    let mut map = Map::new();
    let mut blobs = Vec::new();
    let mut from_blobs: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &entity.properties {
        if let Some(prop) = name.strip_suffix("BlobName")
            && let Some(blob) = value.as_str()
            && !blob.is_empty()
        {
            let bytes = large.download(blob).await?;
            let text = String::from_utf8(bytes).map_err(|e| bad_data(OP, e.to_string()))?;
            from_blobs.insert(prop.to_owned(), text);
            blobs.push(blob.to_owned());
        }
    }
    for (name, value) in &entity.properties {
        if name == "ExecutionId" || name.ends_with("BlobName") {
            continue;
        }
        let key = if name == "_Timestamp" { "Timestamp" } else { name.as_str() };
        let json = match (from_blobs.remove(key), value) {
            (Some(text), _) => {
                if JSON_COLUMNS.contains(&key) {
                    serde_json::from_str(&text).map_err(|e| bad_data(OP, e.to_string()))?
                } else {
                    Value::String(text)
                }
            }
            (None, EdmValue::String(s)) if JSON_COLUMNS.contains(&key) => {
                serde_json::from_str(s).map_err(|e| bad_data(OP, format!("{key}: {e}")))?
            }
            (None, EdmValue::String(s) | EdmValue::Guid(s)) => Value::String(s.clone()),
            (None, EdmValue::Int32(v)) => Value::from(*v),
            (None, EdmValue::Int64(v)) => Value::from(*v),
            (None, EdmValue::Double(v)) => Value::from(*v),
            (None, EdmValue::Bool(v)) => Value::Bool(*v),
            (None, EdmValue::DateTime(t)) => Value::String(fmt_time(*t)),
            (None, EdmValue::Binary(_)) => continue,
        };
        map.insert(key.to_owned(), json);
    }
    let event: HistoryEvent = serde_json::from_value(Value::Object(map)).map_err(|e| {
        bad_data(OP, format!("row {}/{}: {e}", entity.partition_key, entity.row_key))
    })?;
    Ok((event, blobs))
}

/// The stored history of an instance's current execution.
#[derive(Debug, Default, Clone)]
pub(crate) struct LoadedHistory {
    /// Events of the current execution, in order.
    pub(crate) events: Vec<HistoryEvent>,
    /// The sentinel row's ETag (`None`: no history was ever written).
    pub(crate) sentinel_etag: Option<String>,
    /// Blob names the events referenced.
    pub(crate) blobs: Vec<String>,
    /// The blobs the Instances row references, by column, when known (read with the row, or
    /// cached after the last write).
    pub(crate) row_blobs: Option<RowBlobs>,
    /// Read from storage (so `blobs` lists every blob the live rows reference), not cached.
    pub(crate) from_storage: bool,
}

/// Reads an instance's history (DTF `GetHistoryEventsAsync`): all rows of the partition, the
/// execution id from the sentinel, stopping at the first row of another execution.
pub(crate) async fn read_history(inner: &Inner, instance_id: &str) -> StorageResult<LoadedHistory> {
    let pk = escape_partition_key(instance_id);
    let filter = format!("PartitionKey eq '{}'", pk.replace('\'', "''"));
    let mut rows = crate::storage::query_all(
        inner.tables.as_ref(),
        &inner.names.history_table,
        Some(&filter),
        None,
    )
    .await?;
    rows.sort_by(|a, b| a.row_key.cmp(&b.row_key));
    let sentinel = rows.iter().find(|r| r.row_key == SENTINEL_ROW_KEY);
    let sentinel_etag = sentinel.and_then(|s| s.etag.clone());
    let execution_id = sentinel
        .and_then(|s| s.get_str("ExecutionId"))
        .or_else(|| rows.first().and_then(|r| r.get_str("ExecutionId")))
        .map(str::to_owned);
    let mut out = LoadedHistory { sentinel_etag, from_storage: true, ..LoadedHistory::default() };
    let Some(execution_id) = execution_id else {
        return Ok(out);
    };
    for row in rows.iter().filter(|r| r.row_key != SENTINEL_ROW_KEY) {
        if row.get_str("ExecutionId") != Some(execution_id.as_str()) {
            break;
        }
        let (event, blobs) = entity_event(&inner.large, row).await?;
        out.events.push(event);
        out.blobs.extend(blobs);
    }
    Ok(out)
}

/// What a committed history write produced.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrittenHistory {
    /// The new sentinel ETag.
    pub(crate) sentinel_etag: Option<String>,
    /// Blobs the new rows reference (uploaded by this write).
    pub(crate) blobs: Vec<HistoryBlob>,
}

/// Writes `events` at positions `start..` under the sentinel ETag, in chained batches of at most
/// 99 rows (DTF `UpdateStateAsync`). Returns the new sentinel ETag and the blobs the new rows
/// reference. `Conflict` (sentinel insert lost) and `PreconditionFailed` (stale ETag) mean
/// another worker wrote this history. Blobs uploaded for a write that failed stay: their names
/// are derived from the content, so the retried checkpoint references them again, and a racing
/// writer of the same content may already reference them.
pub(crate) async fn write_history(
    inner: &Inner,
    instance_id: &str,
    execution_id: &str,
    start: u64,
    events: &[HistoryEvent],
    mut etag: Option<String>,
    now: OffsetDateTime,
) -> StorageResult<WrittenHistory> {
    let pk = escape_partition_key(instance_id);
    let mut rows = Vec::with_capacity(events.len());
    let mut uploaded = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let row = event_entity(
            &inner.large,
            inner.settings.max_table_property_bytes,
            instance_id,
            start + i as u64,
            execution_id,
            event,
            &mut uploaded,
        )
        .await;
        rows.push(row?);
    }
    let mut chunks: Vec<Vec<TableEntity>> = Vec::new();
    let mut current: Vec<TableEntity> = Vec::new();
    let mut size = 0usize;
    for row in rows {
        let row_size = 1024 + row.properties.values().map(edm_size).sum::<usize>();
        if !current.is_empty()
            && (current.len() >= HISTORY_BATCH_ROWS || size + row_size > HISTORY_BATCH_BYTES)
        {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += row_size;
        current.push(row);
    }
    chunks.push(current);
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let complete = i == last;
        let mut sentinel = TableEntity::new(pk.clone(), SENTINEL_ROW_KEY)
            .with("ExecutionId", EdmValue::String(execution_id.to_owned()))
            .with("IsCheckpointComplete", EdmValue::Bool(complete));
        if complete {
            sentinel = sentinel.with("CheckpointCompletedTimestamp", EdmValue::DateTime(now));
        }
        let n = chunk.len();
        let mut ops: Vec<BatchOp> =
            chunk.into_iter().map(|e| BatchOp { mode: WriteMode::Upsert, entity: e }).collect();
        ops.push(BatchOp {
            mode: match etag.take() {
                Some(tag) => WriteMode::Merge(Some(tag)),
                None => WriteMode::Insert,
            },
            entity: sentinel,
        });
        let etags = inner.tables.batch(&inner.names.history_table, ops).await?;
        etag = etags.get(n).cloned().flatten();
        tracing::debug!(instance_id, new_events = n, complete, "AppendedInstanceHistory");
    }
    Ok(WrittenHistory { sentinel_etag: etag, blobs: uploaded })
}

fn edm_size(v: &EdmValue) -> usize {
    match v {
        EdmValue::String(s) | EdmValue::Guid(s) => utf16_len(s),
        EdmValue::Binary(b) => b.len(),
        _ => 8,
    }
}

// ---------------------------------------------------------------------------------------------
// Instances table

/// An Instances row as read, with its ETag.
#[derive(Debug, Clone)]
pub(crate) struct InstanceRow {
    pub(crate) state: OrchestrationState,
    pub(crate) etag: Option<String>,
    /// Blobs of the hub's container the row's `Input`, `Output`, `CustomStatus` and
    /// `FailureDetails` values point at.
    pub(crate) blobs: RowBlobs,
}

/// Blobs an Instances row references: (column, blob name).
pub(crate) type RowBlobs = Vec<(String, String)>;

fn status_from_name(name: &str) -> Option<OrchestrationStatus> {
    OrchestrationStatus::ALL.into_iter().find(|s| s.as_str() == name)
}

/// Instances-table columns whose value may be a blob URL.
pub(crate) const URL_COLUMNS: [&str; 4] = crate::audit::INSTANCE_URL_COLUMNS;

/// What an Instances-row writer knows about blobs it can reuse instead of uploading again.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowBlobContext<'a> {
    /// Blobs the same checkpoint's History rows reference (DTF 3.6/3.7: the Instances row stores
    /// the URL of the History row's blob for the same value).
    pub(crate) history: &'a [HistoryBlob],
    /// Blobs the row already references: a row-owned blob of the same name (same content) is
    /// not uploaded again.
    pub(crate) stored: &'a [(String, String)],
}

/// An Instances row to write, with the row-owned blobs
/// ([`LargePayloads::instance_blob_name`]) it references.
#[derive(Debug, Clone)]
pub(crate) struct InstanceEntity {
    pub(crate) entity: TableEntity,
    pub(crate) owned_blobs: Vec<String>,
}

/// Stores `value` in a string column, as a blob URL when it is over the table limit: the URL of
/// the History blob holding the same text when there is one, else a row-owned blob named after
/// the content.
async fn put_large_string(
    inner: &Inner,
    row: &mut InstanceEntity,
    instance_id: &str,
    execution_id: &str,
    column: &str,
    value: &str,
    ctx: RowBlobContext<'_>,
) -> StorageResult<()> {
    let stored = if utf16_len(value) > inner.settings.max_table_property_bytes {
        if let Some(h) = ctx.history.iter().find(|h| h.holds(value)) {
            inner.large.url_of(&h.name)
        } else {
            let name = LargePayloads::instance_blob_name(instance_id, execution_id, column, value);
            if !ctx.stored.iter().any(|(_, b)| *b == name) {
                inner.large.upload(&name, value.as_bytes()).await?;
            }
            let url = inner.large.url_of(&name);
            row.owned_blobs.push(name);
            url
        }
    } else {
        value.to_owned()
    };
    row.entity.properties.insert(column.to_owned(), EdmValue::String(stored));
    Ok(())
}

/// The full Instances row for `state` (no blob reuse; see [`instance_entity_with`]).
pub(crate) async fn instance_entity(
    inner: &Inner,
    state: &OrchestrationState,
    include_input: bool,
) -> StorageResult<TableEntity> {
    Ok(instance_entity_with(inner, state, include_input, RowBlobContext::default()).await?.entity)
}

/// The full Instances row for `state`, reusing the blobs `ctx` names.
pub(crate) async fn instance_entity_with(
    inner: &Inner,
    state: &OrchestrationState,
    include_input: bool,
    ctx: RowBlobContext<'_>,
) -> StorageResult<InstanceEntity> {
    let id = state.instance_id();
    let exec = state.orchestration_instance.execution_id.clone().unwrap_or_default();
    let e = TableEntity::new(escape_partition_key(id), "")
        .with("ExecutionId", EdmValue::String(exec.clone()))
        .with("Name", EdmValue::String(state.name.clone()))
        .with("Version", EdmValue::String(state.version.clone().unwrap_or_default()))
        .with("RuntimeStatus", EdmValue::String(state.orchestration_status.as_str().to_owned()))
        .with("CreatedTime", EdmValue::DateTime(state.created_time))
        .with("LastUpdatedTime", EdmValue::DateTime(state.last_updated_time))
        .with("TaskHubName", EdmValue::String(inner.settings.task_hub_name.as_str().to_owned()));
    let mut row = InstanceEntity { entity: e, owned_blobs: Vec::new() };
    if include_input {
        let input = state.input.as_deref().unwrap_or("");
        put_large_string(inner, &mut row, id, &exec, "Input", input, ctx).await?;
    }
    let output = state.output.as_deref().unwrap_or("");
    put_large_string(inner, &mut row, id, &exec, "Output", output, ctx).await?;
    let custom = state.status.as_deref().unwrap_or("null");
    put_large_string(inner, &mut row, id, &exec, CUSTOM_STATUS_COLUMN, custom, ctx).await?;
    if let Some(t) = state.completed_time {
        row.entity.properties.insert("CompletedTime".into(), EdmValue::DateTime(t));
    }
    if let Some(t) = state.scheduled_start_time {
        row.entity.properties.insert("ScheduledStartTime".into(), EdmValue::DateTime(t));
    }
    if let Some(g) = state.generation {
        row.entity.properties.insert("Generation".into(), EdmValue::Int32(g));
    }
    if let Some(tags) = &state.tags {
        let json = serde_json::to_string(tags).unwrap_or_default();
        row.entity.properties.insert("Tags".into(), EdmValue::String(json));
    }
    if let Some(p) = &state.parent_instance {
        let json = serde_json::to_string(p).unwrap_or_default();
        row.entity.properties.insert("ParentInstance".into(), EdmValue::String(json));
    }
    if let Some(f) = &state.failure_details {
        let json = serde_json::to_string(f).unwrap_or_default();
        put_large_string(inner, &mut row, id, &exec, "FailureDetails", &json, ctx).await?;
    }
    Ok(row)
}

/// Whether `value` is stored as a blob in an Instances or History row.
pub(crate) fn is_large(inner: &Inner, value: &str) -> bool {
    utf16_len(value) > inner.settings.max_table_property_bytes
}

/// The row-owned blobs a checkpoint's Instances write may have replaced when the row it replaced
/// is unknown: the Pending row's input of this execution (when the write sets `Input`) and every
/// custom-status blob of the instance (a listing).
pub(crate) async fn checkpoint_replaced_blobs(
    inner: &Inner,
    state: &OrchestrationState,
    include_input: bool,
) -> Vec<String> {
    let id = state.instance_id();
    let exec = state.orchestration_instance.execution_id.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    if include_input
        && let Some(input) = state.input.as_deref()
        && is_large(inner, input)
    {
        out.push(LargePayloads::instance_blob_name(id, exec, "Input", input));
    }
    let prefix = format!("{}instance-{CUSTOM_STATUS_COLUMN}-", LargePayloads::instance_prefix(id));
    match inner.large.list(&prefix).await {
        Ok(names) => out.extend(names),
        Err(e) => {
            tracing::warn!(instance_id = id, error = %e, "GeneralWarning: listing custom-status blobs failed");
        }
    }
    out
}

/// Deletes the blobs an interrupted earlier attempt of this instance's checkpoints left behind
/// (it died or aborted between a commit and the deletes that follow it): `history-*` blobs no
/// live History row references (`live_history` must list all of them: read from storage plus
/// this checkpoint's uploads), and row-owned blobs of this execution or of the custom status that
/// the Instances row (`row`, as just written) does not reference. Message blobs belong to queue
/// messages and are never touched; row-owned blobs of other executions may belong to a Pending
/// row being written by a client. Call only as the partition owner, after the checkpoint
/// committed.
pub(crate) async fn sweep_instance_blobs(
    inner: &Inner,
    instance_id: &str,
    execution_id: &str,
    live_history: &[String],
    row: Option<&RowBlobs>,
) {
    let prefix = LargePayloads::instance_prefix(instance_id);
    let names = match inner.large.list(&prefix).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(instance_id, error = %e, "GeneralWarning: listing the instance's blobs failed");
            return;
        }
    };
    let own_exec = format!("{prefix}instance-{execution_id}-");
    let custom = format!("{prefix}instance-{CUSTOM_STATUS_COLUMN}-");
    let stale: Vec<String> = names
        .into_iter()
        .filter(|n| {
            if n[prefix.len()..].starts_with("history-") {
                !live_history.contains(n)
            } else if n.starts_with(&own_exec) || n.starts_with(&custom) {
                row.is_some_and(|r| !r.iter().any(|(_, b)| b == n))
            } else {
                false
            }
        })
        .collect();
    if !stale.is_empty() {
        tracing::warn!(
            instance_id,
            count = stale.len(),
            "GeneralWarning: deleting blobs an interrupted checkpoint left behind"
        );
        inner.large.delete_all(stale).await;
    }
}

/// After an insert of `row` failed because the row exists: deletes the row-owned blobs this
/// attempt uploaded that the existing row does not reference (best effort; on a read failure they
/// stay until purge).
pub(crate) async fn drop_unreferenced_uploads(
    inner: &Inner,
    instance_id: &str,
    row: &InstanceEntity,
) {
    if row.owned_blobs.is_empty() {
        return;
    }
    let pk = escape_partition_key(instance_id);
    let existing = match inner.tables.get_entity(&inner.names.instances_table, &pk, "").await {
        Ok(e) => e,
        Err(e) if e.kind() == StorageErrorKind::NotFound => None,
        Err(_) => return,
    };
    let referenced = existing.map(|e| instance_row_blobs(&inner.large, &e)).unwrap_or_default();
    let unused: Vec<String> = row
        .owned_blobs
        .iter()
        .filter(|b| !referenced.iter().any(|(_, r)| r == *b))
        .cloned()
        .collect();
    inner.large.delete_all(unused).await;
}

/// The blobs of the hub's container an Instances row's URL columns point at.
pub(crate) fn instance_row_blobs(large: &LargePayloads, e: &TableEntity) -> RowBlobs {
    URL_COLUMNS
        .iter()
        .filter_map(|c| {
            e.get_str(c).and_then(|v| large.name_from_url(v)).map(|b| ((*c).to_owned(), b))
        })
        .collect()
}

/// The row-owned blobs of `stored` (the row as it was) that a committed write of `written`
/// replaced: those of the columns it wrote (all of them when it replaced the whole row), unless
/// it references them again.
pub(crate) fn replaced_row_blobs(
    stored: &RowBlobs,
    written: &InstanceEntity,
    whole_row: bool,
) -> Vec<String> {
    stored
        .iter()
        .filter(|(column, blob)| {
            (whole_row || written.entity.properties.contains_key(column))
                && LargePayloads::is_instance_blob(blob)
                && !written.owned_blobs.contains(blob)
        })
        .map(|(_, blob)| blob.clone())
        .collect()
}

/// The row's blobs after a committed write of `written` over `stored` (a merge keeps the
/// columns it did not write); `None` when the row before was unknown and the write was a merge.
pub(crate) fn row_blobs_after(
    large: &LargePayloads,
    stored: Option<&RowBlobs>,
    written: &InstanceEntity,
    replaced_whole_row: bool,
) -> Option<RowBlobs> {
    let mut out: RowBlobs = match (stored, replaced_whole_row) {
        (_, true) => Vec::new(),
        (Some(s), false) => {
            s.iter().filter(|(c, _)| !written.entity.properties.contains_key(c)).cloned().collect()
        }
        (None, false) => return None,
    };
    out.extend(instance_row_blobs(large, &written.entity));
    Some(out)
}

/// After a write that replaced an Instances row (or some of its columns) committed: deletes the
/// row-owned blobs of `replaced` that the new row does not reference. History blobs and message
/// blobs are never touched here (they belong to History rows and queue messages).
pub(crate) async fn delete_replaced_blobs(
    inner: &Inner,
    replaced: impl IntoIterator<Item = String>,
    new_row: &InstanceEntity,
) {
    let stale: Vec<String> = replaced
        .into_iter()
        .filter(|b| LargePayloads::is_instance_blob(b) && !new_row.owned_blobs.contains(b))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    inner.large.delete_all(stale).await;
}

/// Resolves a stored value: a URL of a blob in our own container is downloaded; anything else
/// is returned as is.
async fn resolve(inner: &Inner, value: Option<&str>, fetch: bool) -> StorageResult<Option<String>> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if fetch && let Some(name) = inner.large.name_from_url(v) {
        let bytes = inner.large.download(&name).await?;
        return String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| bad_data("decode instance row", e.to_string()));
    }
    Ok(Some(v.to_owned()))
}

/// Parses an Instances row.
pub(crate) async fn entity_instance(
    inner: &Inner,
    instance_id: &str,
    e: &TableEntity,
    include_payloads: bool,
) -> StorageResult<OrchestrationState> {
    const OP: &str = "decode instance row";
    let status_name = e.get_str("RuntimeStatus").unwrap_or("");
    let status = status_from_name(status_name)
        .ok_or_else(|| bad_data(OP, format!("unknown RuntimeStatus {status_name:?}")))?;
    let time = |k: &str| e.get(k).and_then(EdmValue::as_datetime);
    let created = time("CreatedTime").unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let exec = e.get_str("ExecutionId").filter(|s| !s.is_empty()).map(str::to_owned);
    let custom = resolve(inner, e.get_str("CustomStatus"), true).await?.filter(|s| s != "null");
    let failure_details = match resolve(inner, e.get_str("FailureDetails"), true).await? {
        Some(json) => serde_json::from_str(&json).ok(),
        None => None,
    };
    Ok(OrchestrationState {
        orchestration_instance: OrchestrationInstance {
            instance_id: instance_id.to_owned(),
            execution_id: exec,
        },
        name: e.get_str("Name").unwrap_or_default().to_owned(),
        version: e.get_str("Version").filter(|s| !s.is_empty()).map(str::to_owned),
        orchestration_status: status,
        input: if include_payloads {
            resolve(inner, e.get_str("Input"), true).await?
        } else {
            None
        },
        output: if include_payloads {
            resolve(inner, e.get_str("Output"), true).await?
        } else {
            None
        },
        status: custom,
        created_time: created,
        last_updated_time: time("LastUpdatedTime").unwrap_or(created),
        completed_time: time("CompletedTime"),
        parent_instance: e.get_str("ParentInstance").and_then(|j| serde_json::from_str(j).ok()),
        tags: e.get_str("Tags").and_then(|j| serde_json::from_str(j).ok()),
        generation: e
            .get("Generation")
            .and_then(EdmValue::as_i64)
            .and_then(|g| i32::try_from(g).ok()),
        scheduled_start_time: time("ScheduledStartTime"),
        failure_details,
    })
}

/// Point-reads an instance row.
pub(crate) async fn read_instance(
    inner: &Inner,
    instance_id: &str,
    include_payloads: bool,
) -> StorageResult<Option<InstanceRow>> {
    let pk = escape_partition_key(instance_id);
    let row = match inner.tables.get_entity(&inner.names.instances_table, &pk, "").await {
        Ok(r) => r,
        Err(e) if e.kind() == StorageErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let state = entity_instance(inner, instance_id, &row, include_payloads).await?;
    let blobs = instance_row_blobs(&inner.large, &row);
    Ok(Some(InstanceRow { state, etag: row.etag.clone(), blobs }))
}

/// Whether `events` start a new execution (contain an `ExecutionStarted`).
pub(crate) fn starts_execution(events: &[HistoryEvent]) -> bool {
    events.iter().any(|e| matches!(e.kind, EventKind::ExecutionStarted(_)))
}
