//! [`InMemoryStorage`]: the three storage traits in process memory, with Azure Storage's
//! semantics as the provider relies on them and as the storage conformance suite asserts them on
//! Azurite.
//!
//! * Queues: visibility in whole seconds rounded up (at most 7 days; a receive hides for at
//!   least 1 s), pop receipts that change on every receive and update (a stale one is
//!   `PreconditionFailed`, a deleted message `NotFound`), dequeue counts, times reported in whole
//!   seconds, visible messages in the order they became visible (Azurite is strictly FIFO), the
//!   64 KiB message limit, counts including invisible messages.
//! * Tables: ETags per entity, every [`WriteMode`]'s 404/409/412, atomic batches over one
//!   partition key with AzureStorage's client-side limits (100 operations, 1 MiB per entity,
//!   4 MiB) and the service's own (forbidden key characters, 512-unit keys, 64 KiB properties,
//!   252 custom properties, a row at most once), the OData filter subset the crates send,
//!   `$select`, `top` (1000 at most) and continuation tokens in key order.
//! * Blobs: containers, prefix listings in name order, leases of 15-60 s or infinite with the
//!   service's 409/412 outcomes, expiring on the injected [`Clock`].
//! * Resource names are validated on create, as the service does.
//!
//! Where Azurite deviates from Azure, this store follows Azure (a lease ID on a write to a missing
//! blob, a tab in a key, more than 252 properties, renewing an expired lease after someone else
//! wrote the blob; see the unit tests). Every call is counted in [`StorageCounters`] exactly where
//! [`AzureStorage`](super::AzureStorage) counts it: calls refused by a client-side check are not.

mod filter;

use super::azure::{check_entity_size, lease_duration_secs, whole_seconds_up};
use super::entity::{EdmValue, TableEntity};
use super::{
    BatchOp, BlobStore, EntityPage, MAX_BATCH_BYTES, MAX_BATCH_OPERATIONS, PeekedMessage,
    QueueStore, ReceivedMessage, StorageCounters, StorageError, StorageErrorKind, StorageOp,
    StorageResult, TableContinuation, TableStore, WriteMode,
};
use crate::StorageStack;
use async_trait::async_trait;
use durabletask_core::{Clock, SystemClock};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use time::OffsetDateTime;

/// Largest queue message text the service accepts (64 KiB).
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 64 * 1024;
/// Most entities one query page returns (service limit).
const MAX_QUERY_PAGE: usize = 1000;
/// Most blob names one listing page returns (service default).
const LIST_PAGE: usize = 5000;

/// Azure Storage in memory. Clones share the same state, clock and counters.
#[derive(Clone)]
pub struct InMemoryStorage {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    counters: Arc<StorageCounters>,
}

impl fmt::Debug for InMemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("InMemoryStorage")
            .field("queues", &s.queues.len())
            .field("tables", &s.tables.len())
            .field("containers", &s.containers.len())
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Vec<Message>>,
    /// Keyed by lower-cased name: table names are case-insensitive.
    tables: HashMap<String, BTreeMap<(String, String), TableEntity>>,
    containers: HashMap<String, BTreeMap<String, Blob>>,
    /// Source of ETags, so two writes at the same clock reading still differ.
    sequence: u64,
}

struct Message {
    id: String,
    pop_receipt: String,
    dequeue_count: u64,
    insertion_time: OffsetDateTime,
    next_visible: OffsetDateTime,
    text: String,
}

struct Blob {
    data: Vec<u8>,
    lease: Option<Lease>,
}

struct Lease {
    id: String,
    /// `None`: infinite.
    duration: Option<Duration>,
    /// `None`: never expires.
    expires: Option<OffsetDateTime>,
    released: bool,
}

/// A blob's lease state as the service reports it.
enum LeaseState<'a> {
    Available,
    Leased(&'a str),
    Expired(&'a str),
    Released,
}

impl Blob {
    fn lease_state(&self, now: OffsetDateTime) -> LeaseState<'_> {
        match &self.lease {
            None => LeaseState::Available,
            Some(l) if l.released => LeaseState::Released,
            Some(l) if l.expires.is_some_and(|t| now >= t) => LeaseState::Expired(&l.id),
            Some(l) => LeaseState::Leased(&l.id),
        }
    }
}

fn fail(
    kind: StorageErrorKind,
    operation: &'static str,
    status: u16,
    code: &str,
    message: impl Into<String>,
) -> StorageError {
    StorageError::new(kind, operation, message).with_status(status, Some(code.to_owned()))
}

fn not_found(operation: &'static str, code: &str, what: &str) -> StorageError {
    fail(StorageErrorKind::NotFound, operation, 404, code, format!("{what} does not exist"))
}

fn invalid(operation: &'static str, message: impl Into<String>) -> StorageError {
    StorageError::new(StorageErrorKind::InvalidInput, operation, message)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The service keeps timestamps to 100 ns.
fn truncate_100ns(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 100).unwrap_or(t)
}

fn whole_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

impl InMemoryStorage {
    /// Empty storage on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// Empty storage on `clock` (visibility timeouts, lease expiry, timestamps).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            clock,
            counters: Arc::new(StorageCounters::default()),
        }
    }

    /// The shared operation counters.
    pub fn counters(&self) -> Arc<StorageCounters> {
        Arc::clone(&self.counters)
    }

    /// A provider storage stack over this storage (one shared instance for all three traits).
    pub fn stack(&self, large_messages_container_url: impl Into<String>) -> StorageStack {
        let me = Arc::new(self.clone());
        StorageStack {
            queues: me.clone(),
            tables: me.clone(),
            blobs: me,
            counters: self.counters(),
            large_messages_container_url: large_messages_container_url.into(),
        }
    }

    /// A provider storage stack for the task hub named by `names` (its large-message container
    /// URL in a reserved, never-resolved domain).
    pub fn hub_stack(&self, names: &crate::ResourceNames) -> StorageStack {
        self.stack(format!("http://memory.invalid/account/{}", names.large_messages_container))
    }

    /// Every message of `queue`, visible or not, in the order they were put, without receiving
    /// them and without a storage call (for test assertions). Empty if the queue does not exist.
    pub fn peek_all(&self, queue: &str) -> Vec<ReceivedMessage> {
        self.lock().queues.get(queue).map_or_else(Vec::new, |messages| {
            messages
                .iter()
                .map(|m| ReceivedMessage {
                    id: m.id.clone(),
                    pop_receipt: m.pop_receipt.clone(),
                    dequeue_count: m.dequeue_count,
                    insertion_time: whole_second(m.insertion_time),
                    next_visible: whole_second(m.next_visible),
                    text: m.text.clone(),
                })
                .collect()
        })
    }

    /// Every entity of `table` in key order, without a storage call (for test assertions).
    /// Empty if the table does not exist.
    pub fn entities(&self, table: &str) -> Vec<TableEntity> {
        let s = self.lock();
        s.tables
            .get(&table.to_ascii_lowercase())
            .map_or_else(Vec::new, |rows| rows.values().cloned().collect())
    }

    /// The names of `container`'s blobs in name order, without a storage call (for test
    /// assertions). Empty if the container does not exist.
    pub fn blob_names(&self, container: &str) -> Vec<String> {
        let s = self.lock();
        s.containers.get(container).map_or_else(Vec::new, |blobs| blobs.keys().cloned().collect())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }
}

fn queue_mut<'a>(
    s: &'a mut State,
    queue: &str,
    operation: &'static str,
) -> StorageResult<&'a mut Vec<Message>> {
    s.queues.get_mut(queue).ok_or_else(|| not_found(operation, "QueueNotFound", "the queue"))
}

/// The message `id` if `pop_receipt` is its current receipt: 404 `MessageNotFound` when it is
/// gone, and for a stale receipt what [`AzureStorage`](super::AzureStorage) reports for Azurite's
/// 400 `PopReceiptMismatch`.
fn received_mut<'a>(
    messages: &'a mut [Message],
    id: &str,
    pop_receipt: &str,
    operation: &'static str,
) -> StorageResult<(usize, &'a mut Message)> {
    let (i, m) = messages
        .iter_mut()
        .enumerate()
        .find(|(_, m)| m.id == id)
        .ok_or_else(|| not_found(operation, "MessageNotFound", "the message"))?;
    if m.pop_receipt != pop_receipt {
        return Err(fail(
            StorageErrorKind::PreconditionFailed,
            operation,
            400,
            "PopReceiptMismatch",
            "pop receipt no longer valid",
        ));
    }
    Ok((i, m))
}

/// The longest visibility the service accepts (7 days).
const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);

fn check_visibility(operation: &'static str, d: Duration) -> StorageResult<()> {
    if whole_seconds_up(d) > MAX_VISIBILITY {
        return Err(fail(
            StorageErrorKind::InvalidInput,
            operation,
            400,
            "OutOfRangeQueryParameterValue",
            format!("visibility of {} s is over 7 days", d.as_secs()),
        ));
    }
    Ok(())
}

/// A receive hides messages for at least 1 s (the service refuses 0 on Get Messages).
fn check_receive_visibility(operation: &'static str, d: Duration) -> StorageResult<()> {
    if d.is_zero() {
        return Err(fail(
            StorageErrorKind::InvalidInput,
            operation,
            400,
            "OutOfRangeQueryParameterValue",
            "a receive's visibility timeout must be at least 1 s",
        ));
    }
    check_visibility(operation, d)
}

/// Queue and container names: 3-63 lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit.
fn check_dns_name(operation: &'static str, name: &str) -> StorageResult<()> {
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok { Ok(()) } else { Err(bad_name(operation, name)) }
}

/// Table names: 3-63 ASCII letters and digits, starting with a letter; `tables` is reserved.
fn check_table_name(operation: &'static str, name: &str) -> StorageResult<()> {
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.eq_ignore_ascii_case("tables");
    if ok { Ok(()) } else { Err(bad_name(operation, name)) }
}

fn bad_name(operation: &'static str, name: &str) -> StorageError {
    fail(
        StorageErrorKind::InvalidInput,
        operation,
        400,
        "InvalidResourceName",
        format!("{name:?} is not a valid resource name"),
    )
}

fn check_message_size(operation: &'static str, text: &str) -> StorageResult<()> {
    if text.len() > MAX_QUEUE_MESSAGE_BYTES {
        return Err(fail(
            StorageErrorKind::InvalidInput,
            operation,
            413,
            "RequestBodyTooLarge",
            format!(
                "message is {} bytes, over the {MAX_QUEUE_MESSAGE_BYTES}-byte limit",
                text.len()
            ),
        ));
    }
    Ok(())
}

#[async_trait]
impl QueueStore for InMemoryStorage {
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()> {
        self.counters.record(StorageOp::QueueAdmin);
        check_dns_name("create queue", queue)?;
        self.lock().queues.entry(queue.to_owned()).or_default();
        Ok(())
    }

    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()> {
        self.counters.record(StorageOp::QueueAdmin);
        self.lock().queues.remove(queue);
        Ok(())
    }

    async fn put_message(
        &self,
        queue: &str,
        text: &str,
        initial_visibility: Duration,
    ) -> StorageResult<()> {
        const OP: &str = "put message";
        self.counters.record(StorageOp::QueuePut);
        let now = self.now();
        let mut s = self.lock();
        let messages = queue_mut(&mut s, queue, OP)?;
        check_message_size(OP, text)?;
        check_visibility(OP, initial_visibility)?;
        messages.push(Message {
            id: new_id(),
            pop_receipt: new_id(),
            dequeue_count: 0,
            insertion_time: now,
            next_visible: now + whole_seconds_up(initial_visibility),
            text: text.to_owned(),
        });
        Ok(())
    }

    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>> {
        const OP: &str = "get messages";
        if !(1..=32).contains(&max) {
            return Err(invalid(OP, format!("a receive takes 1-32 messages, asked for {max}")));
        }
        self.counters.record(StorageOp::QueueGet);
        let now = self.now();
        let next_visible = now + whole_seconds_up(visibility);
        let mut s = self.lock();
        let messages = queue_mut(&mut s, queue, OP)?;
        check_receive_visibility(OP, visibility)?;
        // Visible messages in the order they became visible, ties in the order they were put
        // (what Azurite does: strictly FIFO; Azure promises no order, which `FaultyStorage`
        // simulates).
        let mut visible: Vec<&mut Message> =
            messages.iter_mut().filter(|m| m.next_visible <= now).collect();
        visible.sort_by_key(|m| m.next_visible);
        Ok(visible
            .into_iter()
            .take(usize::from(max))
            .map(|m| {
                m.dequeue_count += 1;
                m.pop_receipt = new_id();
                m.next_visible = next_visible;
                ReceivedMessage {
                    id: m.id.clone(),
                    pop_receipt: m.pop_receipt.clone(),
                    dequeue_count: m.dequeue_count,
                    // The service reports both times in whole seconds (RFC 1123).
                    insertion_time: whole_second(m.insertion_time),
                    next_visible: whole_second(m.next_visible),
                    text: m.text.clone(),
                }
            })
            .collect())
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()> {
        const OP: &str = "delete message";
        self.counters.record(StorageOp::QueueDelete);
        let mut s = self.lock();
        let messages = queue_mut(&mut s, queue, OP)?;
        let (i, _) = received_mut(messages, id, pop_receipt, OP)?;
        messages.remove(i);
        Ok(())
    }

    async fn update_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        text: &str,
        visibility: Duration,
    ) -> StorageResult<String> {
        const OP: &str = "update message";
        self.counters.record(StorageOp::QueueUpdate);
        let now = self.now();
        let mut s = self.lock();
        let messages = queue_mut(&mut s, queue, OP)?;
        let (_, m) = received_mut(messages, id, pop_receipt, OP)?;
        check_message_size(OP, text)?;
        check_visibility(OP, visibility)?;
        m.text = text.to_owned();
        m.pop_receipt = new_id();
        m.next_visible = now + whole_seconds_up(visibility);
        Ok(m.pop_receipt.clone())
    }

    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64> {
        self.counters.record(StorageOp::QueueAdmin);
        let mut s = self.lock();
        let messages = queue_mut(&mut s, queue, "get queue metadata")?;
        Ok(u64::try_from(messages.len()).unwrap_or(u64::MAX))
    }

    async fn peek_messages(&self, queue: &str, max: u8) -> StorageResult<Vec<PeekedMessage>> {
        const OP: &str = "peek messages";
        if !(1..=32).contains(&max) {
            return Err(invalid(OP, format!("a peek takes 1-32 messages, asked for {max}")));
        }
        self.counters.record(StorageOp::QueueGet);
        let now = self.now();
        let mut s = self.lock();
        let messages = queue_mut(&mut s, queue, OP)?;
        let mut visible: Vec<&Message> =
            messages.iter().filter(|m| m.next_visible <= now).collect();
        visible.sort_by_key(|m| m.next_visible);
        Ok(visible
            .into_iter()
            .take(usize::from(max))
            .map(|m| PeekedMessage {
                id: m.id.clone(),
                dequeue_count: m.dequeue_count,
                insertion_time: whole_second(m.insertion_time),
                text: m.text.clone(),
            })
            .collect())
    }
}

/// Longest key (UTF-16 code units) the service accepts.
const MAX_KEY_UNITS: usize = 512;
/// Longest string or binary property value (64 KiB; strings count UTF-16 bytes).
const MAX_PROPERTY_BYTES: usize = 64 * 1024;
/// Most custom properties per entity (255 with PartitionKey, RowKey and Timestamp).
const MAX_CUSTOM_PROPERTIES: usize = 252;

/// What the service refuses in an entity: forbidden key characters (`/ \ # ?` and control
/// characters), keys over 512 UTF-16 units, string or binary values over 64 KiB, more than 252
/// custom properties. (Azurite enforces all but the property count.)
fn check_entity(operation: &'static str, e: &TableEntity) -> StorageResult<()> {
    let bad = |code: &str, m: String| fail(StorageErrorKind::InvalidInput, operation, 400, code, m);
    for (name, key) in [("PartitionKey", &e.partition_key), ("RowKey", &e.row_key)] {
        let forbidden = |c: char| {
            matches!(c, '/' | '\\' | '#' | '?')
                || ('\u{0}'..='\u{1f}').contains(&c)
                || ('\u{7f}'..='\u{9f}').contains(&c)
        };
        if key.chars().any(forbidden) {
            return Err(bad("OutOfRangeInput", format!("{name} contains a forbidden character")));
        }
        if key.encode_utf16().count() > MAX_KEY_UNITS {
            return Err(bad(
                "OutOfRangeInput",
                format!("{name} is over {MAX_KEY_UNITS} characters"),
            ));
        }
    }
    if e.properties.len() > MAX_CUSTOM_PROPERTIES {
        return Err(bad(
            "TooManyProperties",
            format!("{} properties; the limit is {MAX_CUSTOM_PROPERTIES}", e.properties.len()),
        ));
    }
    for (name, value) in &e.properties {
        let bytes = match value {
            EdmValue::String(v) => v.encode_utf16().count() * 2,
            EdmValue::Binary(v) => v.len(),
            _ => 0,
        };
        if bytes > MAX_PROPERTY_BYTES {
            return Err(bad(
                "PropertyValueTooLarge",
                format!("property {name} is {bytes} bytes; the limit is {MAX_PROPERTY_BYTES}"),
            ));
        }
    }
    Ok(())
}

type Rows = BTreeMap<(String, String), TableEntity>;

fn table_mut<'a>(
    s: &'a mut State,
    table: &str,
    operation: &'static str,
) -> StorageResult<&'a mut Rows> {
    s.tables
        .get_mut(&table.to_ascii_lowercase())
        .ok_or_else(|| not_found(operation, "TableNotFound", "the table"))
}

/// What one batch operation does to its row, decided against the row's current state.
fn decide(
    current: Option<&TableEntity>,
    op: &BatchOp,
    operation: &'static str,
) -> StorageResult<Option<TableEntity>> {
    let etag_ok = |want: &Option<String>| match (want, current) {
        (_, None) => Err(not_found(operation, "ResourceNotFound", "the entity")),
        (Some(want), Some(cur)) if cur.etag.as_deref() != Some(want.as_str()) => Err(fail(
            StorageErrorKind::PreconditionFailed,
            operation,
            412,
            "UpdateConditionNotSatisfied",
            "the ETag condition did not hold",
        )),
        (_, Some(cur)) => Ok(cur),
    };
    let merged = |cur: &TableEntity| {
        let mut e = cur.clone();
        e.properties.extend(op.entity.properties.clone());
        e
    };
    Ok(match &op.mode {
        WriteMode::Insert => {
            if current.is_some() {
                return Err(fail(
                    StorageErrorKind::Conflict,
                    operation,
                    409,
                    "EntityAlreadyExists",
                    "the entity already exists",
                ));
            }
            Some(op.entity.clone())
        }
        WriteMode::Upsert => Some(op.entity.clone()),
        WriteMode::UpsertMerge => Some(current.map_or_else(|| op.entity.clone(), merged)),
        WriteMode::Replace(etag) => {
            etag_ok(etag)?;
            Some(op.entity.clone())
        }
        WriteMode::Merge(etag) => Some(merged(etag_ok(etag)?)),
        WriteMode::Delete(etag) => {
            etag_ok(etag)?;
            None
        }
    })
}

impl InMemoryStorage {
    fn batch_inner(
        &self,
        table: &str,
        ops: Vec<BatchOp>,
        counter: StorageOp,
        operation: &'static str,
    ) -> StorageResult<Vec<Option<String>>> {
        // The client-side checks AzureStorage makes before sending, in the same order.
        let Some(first) = ops.first() else { return Ok(Vec::new()) };
        if ops.len() > MAX_BATCH_OPERATIONS {
            return Err(invalid(
                operation,
                format!(
                    "{} operations in one transaction; the limit is {MAX_BATCH_OPERATIONS}",
                    ops.len()
                ),
            ));
        }
        let partition_key = first.entity.partition_key.clone();
        let mut total = 0usize;
        let mut normalized = Vec::with_capacity(ops.len());
        for op in &ops {
            if op.entity.partition_key != partition_key {
                return Err(invalid(operation, "a transaction must stay within one partition key"));
            }
            let json = op.entity.to_json();
            check_entity_size(operation, &json)?;
            total += json.to_string().len();
            // What the service stores is what the wire form carries (e.g. 100 ns datetimes).
            let entity =
                TableEntity::from_json(json).map_err(|e| invalid(operation, e.to_string()))?;
            normalized.push(BatchOp { mode: op.mode.clone(), entity });
        }
        if total > MAX_BATCH_BYTES {
            return Err(invalid(
                operation,
                format!("transaction body is about {total} bytes; the limit is {MAX_BATCH_BYTES}"),
            ));
        }
        self.counters.record(counter);
        let now = truncate_100ns(self.now());
        let mut guard = self.lock();
        let State { tables, sequence, .. } = &mut *guard;
        let rows = tables
            .get_mut(&table.to_ascii_lowercase())
            .ok_or_else(|| not_found(operation, "TableNotFound", "the table"))?;
        let mut seen = std::collections::HashSet::new();
        let mut decided = Vec::with_capacity(normalized.len());
        for op in &normalized {
            if !seen.insert(op.entity.row_key.as_str()) {
                return Err(fail(
                    StorageErrorKind::InvalidInput,
                    operation,
                    400,
                    "InvalidDuplicateRow",
                    "a transaction touches one row at most once; nothing was written",
                ));
            }
            check_entity(operation, &op.entity)?;
            let key = (partition_key.clone(), op.entity.row_key.clone());
            decided.push((key.clone(), decide(rows.get(&key), op, operation)?));
        }
        // Every condition held: commit all of them.
        let mut etags = Vec::with_capacity(decided.len());
        for (key, row) in decided {
            match row {
                Some(mut e) => {
                    *sequence += 1;
                    let etag = format!(
                        "W/\"datetime'{}'-{}\"",
                        super::entity::format_datetime(now),
                        sequence
                    );
                    e.etag = Some(etag.clone());
                    e.timestamp = Some(now);
                    rows.insert(key, e);
                    etags.push(Some(etag));
                }
                None => {
                    rows.remove(&key);
                    etags.push(None);
                }
            }
        }
        Ok(etags)
    }
}

#[async_trait]
impl TableStore for InMemoryStorage {
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()> {
        self.counters.record(StorageOp::TableAdmin);
        check_table_name("create table", table)?;
        self.lock().tables.entry(table.to_ascii_lowercase()).or_default();
        Ok(())
    }

    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()> {
        self.counters.record(StorageOp::TableAdmin);
        self.lock().tables.remove(&table.to_ascii_lowercase());
        Ok(())
    }

    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>> {
        self.counters.record(StorageOp::TableQuery);
        let mut s = self.lock();
        let rows = table_mut(&mut s, table, "table query")?;
        Ok(rows.get(&(partition_key.to_owned(), row_key.to_owned())).cloned())
    }

    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage> {
        const OP: &str = "table query";
        self.counters.record(StorageOp::TableQuery);
        let filter = filter
            .map(filter::parse)
            .transpose()
            .map_err(|e| fail(StorageErrorKind::InvalidInput, OP, 400, "InvalidInput", e))?;
        let page_size = top
            .map_or(MAX_QUERY_PAGE, |t| usize::try_from(t).unwrap_or(MAX_QUERY_PAGE))
            .clamp(1, MAX_QUERY_PAGE);
        let mut s = self.lock();
        let rows = table_mut(&mut s, table, OP)?;
        let start = continuation
            .map(|c| (c.next_partition_key, c.next_row_key.unwrap_or_default()))
            .unwrap_or_default();
        let mut matching = rows
            .range(start..)
            .map(|(_, e)| e)
            .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)));
        let mut entities: Vec<TableEntity> = matching.by_ref().take(page_size).cloned().collect();
        let continuation = matching.next().map(|e| TableContinuation {
            next_partition_key: e.partition_key.clone(),
            next_row_key: Some(e.row_key.clone()),
        });
        if let Some(cols) = select {
            for e in &mut entities {
                e.properties.retain(|name, _| cols.contains(&name.as_str()));
            }
        }
        Ok(EntityPage { entities, continuation })
    }

    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>> {
        let mut etags = self.batch_inner(table, vec![op], StorageOp::TableWrite, "table write")?;
        Ok(etags.pop().flatten())
    }

    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
        self.batch_inner(table, ops, StorageOp::TableBatch, "table batch")
    }
}

fn check_lease_id(operation: &'static str, id: &str) -> StorageResult<()> {
    uuid::Uuid::parse_str(id).map(drop).map_err(|_| invalid(operation, "lease IDs must be GUIDs"))
}

fn container_mut<'a>(
    s: &'a mut State,
    container: &str,
    operation: &'static str,
) -> StorageResult<&'a mut BTreeMap<String, Blob>> {
    s.containers
        .get_mut(container)
        .ok_or_else(|| not_found(operation, "ContainerNotFound", "the container"))
}

fn blob_mut<'a>(
    s: &'a mut State,
    container: &str,
    name: &str,
    operation: &'static str,
) -> StorageResult<&'a mut Blob> {
    container_mut(s, container, operation)?
        .get_mut(name)
        .ok_or_else(|| not_found(operation, "BlobNotFound", "the blob"))
}

fn lease_conflict(operation: &'static str, code: &str, message: &str) -> StorageError {
    fail(StorageErrorKind::Conflict, operation, 409, code, message)
}

fn no_lease(operation: &'static str) -> StorageError {
    lease_conflict(operation, "LeaseNotPresentWithLeaseOperation", "there is no lease on the blob")
}

fn other_lease(operation: &'static str) -> StorageError {
    lease_conflict(
        operation,
        "LeaseIdMismatchWithLeaseOperation",
        "the lease ID does not match the blob's lease",
    )
}

fn blob_precondition(operation: &'static str, code: &str, message: &str) -> StorageError {
    fail(StorageErrorKind::PreconditionFailed, operation, 412, code, message)
}

#[async_trait]
impl BlobStore for InMemoryStorage {
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()> {
        self.counters.record(StorageOp::BlobAdmin);
        check_dns_name("create container", container)?;
        self.lock().containers.entry(container.to_owned()).or_default();
        Ok(())
    }

    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()> {
        self.counters.record(StorageOp::BlobAdmin);
        self.lock().containers.remove(container);
        Ok(())
    }

    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease_id: Option<&str>,
    ) -> StorageResult<()> {
        const OP: &str = "put blob";
        if let Some(l) = lease_id {
            check_lease_id(OP, l)?;
        }
        self.counters.record(StorageOp::BlobPut);
        let now = self.now();
        let mut s = self.lock();
        let blobs = container_mut(&mut s, container, OP)?;
        let Some(blob) = blobs.get_mut(name) else {
            if lease_id.is_some() {
                return Err(blob_precondition(
                    OP,
                    "LeaseNotPresentWithBlobOperation",
                    "there is no lease on the blob",
                ));
            }
            blobs.insert(name.to_owned(), Blob { data, lease: None });
            return Ok(());
        };
        match (blob.lease_state(now), lease_id) {
            (LeaseState::Leased(_), None) => {
                return Err(blob_precondition(
                    OP,
                    "LeaseIdMissing",
                    "the blob is leased and no lease ID was given",
                ));
            }
            (LeaseState::Leased(held), Some(given)) if !held.eq_ignore_ascii_case(given) => {
                return Err(blob_precondition(
                    OP,
                    "LeaseIdMismatchWithBlobOperation",
                    "the lease ID does not match the blob's lease",
                ));
            }
            (LeaseState::Leased(_), Some(_)) => {}
            (_, Some(_)) => {
                return Err(blob_precondition(
                    OP,
                    "LeaseNotPresentWithBlobOperation",
                    "there is no lease on the blob",
                ));
            }
            // A write after a lease expired or was released ends that lease for good (it can no
            // longer be renewed).
            (_, None) => blob.lease = None,
        }
        blob.data = data;
        Ok(())
    }

    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>> {
        self.counters.record(StorageOp::BlobGet);
        let s = self.lock();
        Ok(s.containers.get(container).and_then(|c| c.get(name)).map(|b| b.data.clone()))
    }

    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()> {
        const OP: &str = "delete blob";
        self.counters.record(StorageOp::BlobDelete);
        let now = self.now();
        let mut s = self.lock();
        let Some(blobs) = s.containers.get_mut(container) else { return Ok(()) };
        if let Some(blob) = blobs.get(name) {
            if let LeaseState::Leased(_) = blob.lease_state(now) {
                return Err(blob_precondition(
                    OP,
                    "LeaseIdMissing",
                    "the blob is leased and no lease ID was given",
                ));
            }
            blobs.remove(name);
        }
        Ok(())
    }

    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>> {
        // AzureStorage counts one call per page plus the poll that finds no further page.
        self.counters.record(StorageOp::BlobList);
        let mut s = self.lock();
        let blobs = container_mut(&mut s, container, "list blobs")?;
        let names: Vec<String> = blobs.keys().filter(|n| n.starts_with(prefix)).cloned().collect();
        for _ in 0..names.len().div_ceil(LIST_PAGE).max(1) {
            self.counters.record(StorageOp::BlobList);
        }
        Ok(names)
    }

    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        const OP: &str = "acquire lease";
        let secs = lease_duration_secs(OP, duration)?;
        check_lease_id(OP, proposed_lease_id)?;
        self.counters.record(StorageOp::BlobLease);
        let now = self.now();
        let mut s = self.lock();
        let blob = blob_mut(&mut s, container, name, OP)?;
        if let LeaseState::Leased(held) = blob.lease_state(now)
            && !held.eq_ignore_ascii_case(proposed_lease_id)
        {
            return Err(lease_conflict(
                OP,
                "LeaseAlreadyPresent",
                "there is already a lease present",
            ));
        }
        let duration = secs.map(|s| Duration::from_secs(u64::from(s)));
        blob.lease = Some(Lease {
            id: proposed_lease_id.to_owned(),
            duration,
            expires: duration.map(|d| now + d),
            released: false,
        });
        Ok(())
    }

    async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> StorageResult<()> {
        const OP: &str = "renew lease";
        check_lease_id(OP, lease_id)?;
        self.counters.record(StorageOp::BlobLease);
        let now = self.now();
        let mut s = self.lock();
        let blob = blob_mut(&mut s, container, name, OP)?;
        match blob.lease_state(now) {
            LeaseState::Available => return Err(no_lease(OP)),
            // A released lease is over (Azurite answers this 409; an expired one is renewable).
            LeaseState::Released => return Err(other_lease(OP)),
            LeaseState::Leased(held) | LeaseState::Expired(held)
                if !held.eq_ignore_ascii_case(lease_id) =>
            {
                return Err(other_lease(OP));
            }
            _ => {}
        }
        if let Some(l) = blob.lease.as_mut() {
            l.expires = l.duration.map(|d| now + d);
            l.released = false;
        }
        Ok(())
    }

    async fn release_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
    ) -> StorageResult<()> {
        const OP: &str = "release lease";
        check_lease_id(OP, lease_id)?;
        self.counters.record(StorageOp::BlobLease);
        let now = self.now();
        let mut s = self.lock();
        let blob = blob_mut(&mut s, container, name, OP)?;
        match blob.lease_state(now) {
            LeaseState::Available => return Err(no_lease(OP)),
            // Released once is over (Azurite answers a second release with this 409).
            LeaseState::Released => return Err(other_lease(OP)),
            LeaseState::Leased(held) | LeaseState::Expired(held)
                if !held.eq_ignore_ascii_case(lease_id) =>
            {
                return Err(other_lease(OP));
            }
            _ => {}
        }
        if let Some(l) = blob.lease.as_mut() {
            l.released = true;
        }
        Ok(())
    }

    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        const OP: &str = "change lease";
        check_lease_id(OP, lease_id)?;
        check_lease_id(OP, proposed_lease_id)?;
        self.counters.record(StorageOp::BlobLease);
        let now = self.now();
        let mut s = self.lock();
        let blob = blob_mut(&mut s, container, name, OP)?;
        match blob.lease_state(now) {
            LeaseState::Leased(held) => {
                // Repeating a change that already happened succeeds.
                if !held.eq_ignore_ascii_case(lease_id)
                    && !held.eq_ignore_ascii_case(proposed_lease_id)
                {
                    return Err(other_lease(OP));
                }
            }
            _ => return Err(no_lease(OP)),
        }
        if let Some(l) = blob.lease.as_mut() {
            l.id = proposed_lease_id.to_owned();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! What Azure does and Azurite does not (so the Azurite-backed suite cannot assert it), and
    //! the in-memory store's own API. The shared behaviours are in the storage conformance suite.
    use super::*;
    use crate::storage::EdmValue;
    use durabletask_core::ManualClock;

    const A: &str = "11111111-1111-1111-1111-111111111111";
    const B: &str = "22222222-2222-2222-2222-222222222222";

    fn on_manual_clock() -> (InMemoryStorage, ManualClock) {
        let clock = ManualClock::new(OffsetDateTime::now_utc());
        (InMemoryStorage::with_clock(Arc::new(clock.clone())), clock)
    }

    #[tokio::test]
    async fn a_write_under_a_lease_to_a_missing_blob_is_refused() {
        // Azure: 412 LeaseNotPresentWithBlobOperation; Azurite creates the blob.
        let s = InMemoryStorage::new();
        s.create_container_if_not_exists("box").await.unwrap();
        let e = s.put_blob("box", "missing", b"x".to_vec(), Some(A)).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::PreconditionFailed, "{e}");
        assert_eq!(e.code(), Some("LeaseNotPresentWithBlobOperation"));
        assert!(s.get_blob("box", "missing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_expired_lease_is_not_renewable_after_someone_else_wrote_the_blob() {
        // Azure refuses; Azurite accepts.
        let (s, clock) = on_manual_clock();
        s.create_container_if_not_exists("box").await.unwrap();
        s.put_blob("box", "b", b"x".to_vec(), None).await.unwrap();
        s.acquire_lease("box", "b", Duration::from_secs(15), A).await.unwrap();
        clock.advance(Duration::from_secs(16));
        s.put_blob("box", "b", b"someone else".to_vec(), None).await.unwrap();
        let e = s.renew_lease("box", "b", A).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::Conflict, "{e}");
        s.acquire_lease("box", "b", Duration::from_secs(15), B).await.unwrap();
    }

    #[tokio::test]
    async fn keys_with_a_tab_and_entities_with_too_many_properties_are_refused() {
        // Azure refuses both; Azurite accepts them in a batch.
        let s = InMemoryStorage::new();
        s.create_table_if_not_exists("table").await.unwrap();
        let tab = TableEntity::new("a\tb", "r");
        let e =
            s.write("table", BatchOp { mode: WriteMode::Upsert, entity: tab }).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
        let wide = |n: usize| {
            (0..n).fold(TableEntity::new("p", "r"), |e, i| {
                e.with(format!("P{i}"), EdmValue::Int32(1))
            })
        };
        s.write("table", BatchOp { mode: WriteMode::Upsert, entity: wide(252) }).await.unwrap();
        let e = s
            .write("table", BatchOp { mode: WriteMode::Upsert, entity: wide(253) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("TooManyProperties"), "{e}");
        assert_eq!(s.get_entity("table", "p", "r").await.unwrap().unwrap().properties.len(), 252);
    }

    #[tokio::test]
    async fn clones_share_state_clock_and_counters_and_stack_uses_them() {
        let (s, clock) = on_manual_clock();
        let other = s.clone();
        s.create_queue_if_not_exists("queue").await.unwrap();
        other.put_message("queue", "m", Duration::from_secs(5)).await.unwrap();
        assert!(s.get_messages("queue", 1, Duration::from_secs(1)).await.unwrap().is_empty());
        clock.advance(Duration::from_secs(5));
        let stack = s.stack("memory://account/hub-largemessages");
        assert_eq!(
            stack.queues.get_messages("queue", 1, Duration::from_secs(1)).await.unwrap().len(),
            1
        );
        assert_eq!(stack.large_messages_container_url, "memory://account/hub-largemessages");
        assert_eq!(stack.counters.snapshot().get(StorageOp::QueueGet), 2);
        assert!(format!("{s:?}").contains("queues: 1"));
        // Inspection makes no storage call and changes nothing.
        let before = s.counters().snapshot();
        let peeked = s.peek_all("queue");
        assert_eq!((peeked.len(), peeked[0].text.as_str(), peeked[0].dequeue_count), (1, "m", 1));
        s.create_table_if_not_exists("table").await.unwrap();
        s.write("table", BatchOp { mode: WriteMode::Upsert, entity: TableEntity::new("p", "r") })
            .await
            .unwrap();
        s.create_container_if_not_exists("box").await.unwrap();
        s.put_blob("box", "b/1", Vec::new(), None).await.unwrap();
        let after_writes = s.counters().snapshot();
        assert_eq!(s.entities("TABLE").len(), 1);
        assert_eq!(s.blob_names("box"), ["b/1"]);
        assert!(s.peek_all("missing").is_empty() && s.entities("missing").is_empty());
        assert_eq!(s.counters().snapshot(), after_writes);
        assert_eq!(after_writes.since(&before).total(), 4);
    }

    #[tokio::test]
    async fn timestamps_and_etags_come_from_the_clock_and_differ_per_write() {
        let (s, clock) = on_manual_clock();
        s.create_table_if_not_exists("table").await.unwrap();
        let put = || {
            s.write(
                "table",
                BatchOp { mode: WriteMode::Upsert, entity: TableEntity::new("p", "r") },
            )
        };
        let first = put().await.unwrap();
        let second = put().await.unwrap();
        assert_ne!(first, second, "two writes at the same instant still get different ETags");
        clock.advance(Duration::from_secs(60));
        put().await.unwrap();
        let read = s.get_entity("table", "p", "r").await.unwrap().unwrap();
        assert_eq!(read.timestamp, Some(truncate_100ns(clock.now())));
    }
}
