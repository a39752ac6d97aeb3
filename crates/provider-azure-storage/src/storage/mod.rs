//! The provider's own small storage layer.
//!
//! Every Azure Storage call the provider makes goes through the three object-safe traits here
//! ([`QueueStore`], [`TableStore`], [`BlobStore`]). The Azure SDK implementation is
//! [`AzureStorage`], the in-memory one with the same semantics [`InMemoryStorage`]; decorators
//! (retries, fault injection, a concurrency limit) wrap the same traits. Every call is counted in
//! [`StorageCounters`] by kind, and every failure is classified into a [`StorageErrorKind`]. The
//! `testing` feature adds `conformance`, the suite every implementation and decorator passes.

mod account;
mod azure;
mod counters;
mod entity;
pub mod fault;
pub mod hooks;
mod limit;
mod memory;
mod retry;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod conformance;

pub use account::StorageAccount;
pub use azure::AzureStorage;
pub use counters::{StorageCounters, StorageOp, StorageOpCounts};
pub use entity::{EdmValue, TableEntity};
pub use hooks::{Call, CallGuard, HookedStorage, StorageHook};
pub use limit::{ConcurrencyLimit, ConcurrencyLimitedStorage};
pub use memory::{InMemoryStorage, MAX_QUEUE_MESSAGE_BYTES};
pub use retry::{RetryPolicy, RetryingStorage};

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;

/// How a storage failure is classified. Callers branch on this, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// 404: the queue, table, container, entity, blob or message does not exist.
    NotFound,
    /// 409: the resource already exists, or a lease is held by someone else.
    Conflict,
    /// 412: an ETag, lease ID or pop receipt condition did not hold.
    PreconditionFailed,
    /// 429 / 503: the service asked us to slow down.
    Throttled,
    /// Network failures, timeouts, 5xx: retrying may succeed.
    Transient,
    /// The request was refused for its content (400, 413, client-side limit checks).
    InvalidInput,
    /// 401 / 403: authentication or authorization failed.
    Unauthorized,
    /// Anything else: retrying will not help.
    Permanent,
}

/// A classified storage failure, carrying the operation that failed and the service's code.
#[derive(Debug, Clone)]
pub struct StorageError {
    kind: StorageErrorKind,
    operation: &'static str,
    status: Option<u16>,
    code: Option<String>,
    message: String,
}

impl StorageError {
    /// A new error of `kind` for `operation`.
    pub fn new(
        kind: StorageErrorKind,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self { kind, operation, status: None, code: None, message: message.into() }
    }

    /// Attaches the HTTP status and service error code.
    pub fn with_status(mut self, status: u16, code: Option<String>) -> Self {
        self.status = Some(status);
        self.code = code;
        self
    }

    /// The classification.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }
    /// The operation that failed, e.g. `"table batch"`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        self.status
    }
    /// The service's error code (e.g. `UpdateConditionNotSatisfied`), when it sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, StorageErrorKind::Throttled | StorageErrorKind::Transient)
    }

    /// Whether a message delete or update failed because the pop receipt is stale: the message
    /// was deleted, or redelivered to someone else (404 on Azure; 412, or 400
    /// `PopReceiptMismatch` on Azurite).
    pub fn is_message_gone(&self) -> bool {
        matches!(
            self.kind,
            StorageErrorKind::NotFound
                | StorageErrorKind::PreconditionFailed
                | StorageErrorKind::InvalidInput
        )
    }

    /// Classifies an HTTP status the way Azure Storage uses it.
    pub fn kind_for_status(status: u16) -> StorageErrorKind {
        match status {
            404 => StorageErrorKind::NotFound,
            409 => StorageErrorKind::Conflict,
            412 => StorageErrorKind::PreconditionFailed,
            429 | 503 => StorageErrorKind::Throttled,
            401 | 403 => StorageErrorKind::Unauthorized,
            408 | 500 | 502 | 504 => StorageErrorKind::Transient,
            400 | 413 | 414 | 416 => StorageErrorKind::InvalidInput,
            _ => StorageErrorKind::Permanent,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({:?}", self.operation, self.kind)?;
        if let Some(status) = self.status {
            write!(f, ", HTTP {status}")?;
        }
        if let Some(code) = &self.code {
            write!(f, ", {code}")?;
        }
        write!(f, "): {}", self.message)
    }
}

impl std::error::Error for StorageError {}

/// Result of a storage call.
pub type StorageResult<T> = Result<T, StorageError>;

/// A message received from a queue, with what is needed to delete or update it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The service's message ID (stable across redeliveries).
    pub id: String,
    /// Proof of this delivery; changes on every receive and update.
    pub pop_receipt: String,
    /// How often the message has been received, this delivery included.
    pub dequeue_count: u64,
    /// When the message was first enqueued.
    pub insertion_time: OffsetDateTime,
    /// When it becomes visible again unless deleted or updated.
    pub next_visible: OffsetDateTime,
    /// The message text as it was put.
    pub text: String,
}

/// A message read without being received (its visibility and dequeue count unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedMessage {
    /// Service-assigned message id.
    pub id: String,
    /// How often it has been received.
    pub dequeue_count: u64,
    /// When the message was first enqueued.
    pub insertion_time: OffsetDateTime,
    /// The message text as it was put.
    pub text: String,
}

/// Queue operations (Azure Queue Storage semantics).
#[async_trait]
pub trait QueueStore: Send + Sync + fmt::Debug {
    /// Creates the queue; succeeds if it already exists.
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()>;
    /// Deletes the queue; succeeds if it does not exist.
    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()>;
    /// Enqueues `text`, invisible for `initial_visibility`, living until deleted.
    async fn put_message(
        &self,
        queue: &str,
        text: &str,
        initial_visibility: Duration,
    ) -> StorageResult<()>;
    /// Receives up to `max` (1-32) messages, hiding them for `visibility`.
    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>>;
    /// Deletes a received message; `PreconditionFailed`/`NotFound` if the pop receipt is stale.
    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()>;
    /// Changes a received message's visibility (and text); returns the new pop receipt.
    async fn update_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        text: &str,
        visibility: Duration,
    ) -> StorageResult<String>;
    /// Approximate number of messages in the queue.
    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64>;
    /// Reads up to `max` (1-32) visible messages from the front of the queue without receiving
    /// them: no pop receipt, visibility and dequeue count unchanged.
    async fn peek_messages(&self, queue: &str, max: u8) -> StorageResult<Vec<PeekedMessage>>;
}

/// How a table write treats an existing entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// Insert; `Conflict` if the entity exists.
    Insert,
    /// Insert or replace unconditionally.
    Upsert,
    /// Insert or merge unconditionally.
    UpsertMerge,
    /// Replace an existing entity if its ETag matches (`None` = any ETag, entity must exist).
    Replace(Option<String>),
    /// Merge into an existing entity if its ETag matches (`None` = any ETag, entity must exist).
    Merge(Option<String>),
    /// Delete an existing entity if its ETag matches (`None` = any ETag).
    Delete(Option<String>),
}

/// One operation of an entity-group transaction.
#[derive(Debug, Clone)]
pub struct BatchOp {
    /// What to do.
    pub mode: WriteMode,
    /// The entity (only keys are used for deletes). Must share the batch's partition key.
    pub entity: TableEntity,
}

/// A page of query results plus the token for the next page.
#[derive(Debug, Clone, Default)]
pub struct EntityPage {
    /// The entities of this page.
    pub entities: Vec<TableEntity>,
    /// `Some` when more results may follow.
    pub continuation: Option<TableContinuation>,
}

/// Opaque position of the next page of a table query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableContinuation {
    /// `x-ms-continuation-NextPartitionKey`.
    pub next_partition_key: String,
    /// `x-ms-continuation-NextRowKey`.
    pub next_row_key: Option<String>,
}

/// Maximum operations in one entity-group transaction (service limit; Azurite does not enforce it).
pub const MAX_BATCH_OPERATIONS: usize = 100;
/// Maximum serialized entity size (service limit; Azurite does not enforce it).
pub const MAX_ENTITY_BYTES: usize = 1024 * 1024;
/// Maximum serialized size of one batch request (service limit; Azurite does not enforce it).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Table operations (Azure Table Storage semantics).
#[async_trait]
pub trait TableStore: Send + Sync + fmt::Debug {
    /// Creates the table; succeeds if it already exists.
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()>;
    /// Deletes the table; succeeds if it does not exist.
    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()>;
    /// Point read; `Ok(None)` when the entity does not exist.
    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>>;
    /// One page of an OData-filtered query.
    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage>;
    /// Single-entity write; returns the new ETag (`None` for deletes).
    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>>;
    /// Atomic entity-group transaction over one partition key. All operations commit or none do;
    /// a failed condition surfaces as the failing operation's error kind (e.g.
    /// `PreconditionFailed`). Returns the new ETags in operation order (`None` for deletes).
    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>>;
}

/// The lease duration that never expires (the service's `-1`).
pub const INFINITE_LEASE: Duration = Duration::MAX;

/// Every entity of a filtered query, following continuation tokens; none when the table does
/// not exist.
///
/// # Errors
/// The first failing page's error (other than `NotFound`).
pub async fn query_all(
    tables: &dyn TableStore,
    table: &str,
    filter: Option<&str>,
    select: Option<&[&str]>,
) -> StorageResult<Vec<TableEntity>> {
    let mut rows = Vec::new();
    let mut continuation: Option<TableContinuation> = None;
    loop {
        let page = match tables.query(table, filter, select, None, continuation).await {
            Ok(p) => p,
            Err(e) if e.kind() == StorageErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        rows.extend(page.entities);
        continuation = page.continuation;
        if continuation.is_none() {
            break;
        }
    }
    Ok(rows)
}

/// Blob operations (Azure Blob Storage semantics), including leases.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Creates the container; succeeds if it already exists.
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()>;
    /// Deletes the container; succeeds if it does not exist.
    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()>;
    /// Uploads a block blob (replacing it); under `lease_id` when the blob is leased.
    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease_id: Option<&str>,
    ) -> StorageResult<()>;
    /// Downloads a blob; `Ok(None)` if it does not exist.
    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>>;
    /// Deletes a blob; succeeds if it does not exist.
    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()>;
    /// Names of the blobs whose names start with `prefix`.
    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>>;
    /// Acquires a lease for `duration` (15-60 s, or [`INFINITE_LEASE`]) with our proposed ID;
    /// `Conflict` if held by another ID.
    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed_lease_id: &str,
    ) -> StorageResult<()>;
    /// Renews a lease we hold; `Conflict` if it is no longer ours.
    async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> StorageResult<()>;
    /// Releases a lease we hold.
    async fn release_lease(&self, container: &str, name: &str, lease_id: &str)
    -> StorageResult<()>;
    /// Replaces the lease ID of a held lease (used to steal or hand over).
    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        proposed_lease_id: &str,
    ) -> StorageResult<()>;
}
