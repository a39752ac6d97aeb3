//! The storage layer over the Azure SDK for Rust (0.21 line). The only module that names SDK types.

use super::entity::TableEntity;
use super::{
    BatchOp, BlobStore, EntityPage, INFINITE_LEASE, MAX_BATCH_BYTES, MAX_BATCH_OPERATIONS,
    MAX_ENTITY_BYTES, PeekedMessage, QueueStore, ReceivedMessage, StorageAccount, StorageCounters,
    StorageError, StorageErrorKind, StorageOp, StorageResult, TableContinuation, TableStore,
    WriteMode,
};
use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::prelude::*;
use azure_core::{Etag, RetryOptions};
use azure_data_tables::IfMatchCondition;
use azure_data_tables::clients::{TableServiceClient, TableServiceClientBuilder};
use azure_data_tables::{Filter, Select, Top};
use azure_storage_blobs::prelude::{BlobServiceClient, ClientBuilder as BlobClientBuilder};
use azure_storage_queues::{
    MessageTTL, NumberOfMessages, PopReceipt, QueueServiceClient, QueueServiceClientBuilder,
    VisibilityTimeout,
};
use futures::StreamExt;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Longest queue-message TTL we ask for. The service accepts any positive TTL or -1 ("never
/// expires"); the SDK's type cannot express -1, so we use the largest positive 32-bit number of
/// seconds (68 years), which is equivalent for a task hub.
const MESSAGE_TTL: Duration = Duration::from_secs(i32::MAX as u64);

/// The queue service counts visibility in whole seconds; round up so a message never becomes
/// visible before the caller asked (a durable timer must not fire early).
pub(super) fn whole_seconds_up(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs)
}

/// Azure Storage through the official SDK clients, with per-call timeouts, error classification
/// and operation counting. SDK retries are off: the provider decides what is safe to retry (a
/// conditional write that timed out may have committed).
#[derive(Clone)]
pub struct AzureStorage {
    queues: QueueServiceClient,
    tables: TableServiceClient,
    blobs: BlobServiceClient,
    counters: Arc<StorageCounters>,
    timeout: Duration,
    account: StorageAccount,
}

impl fmt::Debug for AzureStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStorage")
            .field("account", &self.account)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AzureStorage {
    /// Clients for `account` with the given per-call timeout.
    pub fn new(account: &StorageAccount, timeout: Duration) -> Self {
        let creds = account.credentials().clone();
        let queues = QueueServiceClientBuilder::with_location(
            account.queue_location().clone(),
            creds.clone(),
        )
        .retry(RetryOptions::none())
        .build();
        let tables = TableServiceClientBuilder::with_location(
            account.table_location().clone(),
            creds.clone(),
        )
        .retry(RetryOptions::none())
        .build();
        let blobs = BlobClientBuilder::with_location(account.blob_location().clone(), creds)
            .retry(RetryOptions::none())
            .blob_service_client();
        Self {
            queues,
            tables,
            blobs,
            counters: Arc::new(StorageCounters::default()),
            timeout,
            account: account.clone(),
        }
    }

    /// The shared operation counters of these clients.
    pub fn counters(&self) -> Arc<StorageCounters> {
        Arc::clone(&self.counters)
    }

    /// The account these clients talk to.
    pub fn account(&self) -> &StorageAccount {
        &self.account
    }

    /// Counts `op`, runs `fut` under the call timeout and classifies its error.
    async fn call<T>(
        &self,
        op: StorageOp,
        operation: &'static str,
        fut: impl std::future::Future<Output = azure_core::Result<T>>,
    ) -> StorageResult<T> {
        self.call_within(self.timeout, op, operation, fut).await
    }

    /// [`Self::call`] under `timeout` instead of the call timeout.
    async fn call_within<T>(
        &self,
        timeout: Duration,
        op: StorageOp,
        operation: &'static str,
        fut: impl std::future::Future<Output = azure_core::Result<T>>,
    ) -> StorageResult<T> {
        self.counters.record(op);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(operation, &e)),
            Err(_) => Err(StorageError::new(
                StorageErrorKind::Transient,
                operation,
                format!("no answer within {timeout:?} (the call may still have taken effect)"),
            )),
        }
    }
}

/// Maps an SDK error to our classification.
fn classify(operation: &'static str, err: &azure_core::Error) -> StorageError {
    match err.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            let status = u16::from(*status);
            StorageError::new(StorageError::kind_for_status(status), operation, err.to_string())
                .with_status(status, error_code.clone())
        }
        ErrorKind::Io => StorageError::new(StorageErrorKind::Transient, operation, err.to_string()),
        ErrorKind::Credential => {
            StorageError::new(StorageErrorKind::Unauthorized, operation, err.to_string())
        }
        _ => {
            // reqwest connection errors surface as `Other`/`Io` depending on the transport.
            let text = err.to_string();
            let kind = if text.contains("error sending request") || text.contains("connection") {
                StorageErrorKind::Transient
            } else {
                StorageErrorKind::Permanent
            };
            StorageError::new(kind, operation, text)
        }
    }
}

fn ignore_kind<T: Default>(r: StorageResult<T>, kind: StorageErrorKind) -> StorageResult<T> {
    match r {
        Err(e) if e.kind() == kind => Ok(T::default()),
        other => other,
    }
}

fn lease_id(operation: &'static str, id: &str) -> StorageResult<LeaseId> {
    id.parse().map_err(|_| {
        StorageError::new(StorageErrorKind::InvalidInput, operation, "lease IDs must be GUIDs")
    })
}

fn if_match(etag: &Option<String>) -> IfMatchCondition {
    match etag {
        Some(e) => IfMatchCondition::Etag(Etag::from(e.clone())),
        None => IfMatchCondition::Any,
    }
}

/// A lease duration in whole seconds (15-60), or `None` for [`INFINITE_LEASE`].
pub(super) fn lease_duration_secs(
    operation: &'static str,
    d: Duration,
) -> StorageResult<Option<u8>> {
    if d == INFINITE_LEASE {
        return Ok(None);
    }
    let secs = d.as_secs();
    if !(15..=60).contains(&secs) {
        return Err(StorageError::new(
            StorageErrorKind::InvalidInput,
            operation,
            format!("blob lease duration must be 15-60 s or infinite, got {secs} s"),
        ));
    }
    Ok(Some(u8::try_from(secs).unwrap_or(60)))
}

fn lease_duration(operation: &'static str, d: Duration) -> StorageResult<LeaseDuration> {
    Ok(match lease_duration_secs(operation, d)? {
        Some(secs) => LeaseDuration::Seconds(secs),
        None => LeaseDuration::Infinite,
    })
}

/// Client-side limit check: Azurite accepts oversized entities and batches that Azure rejects.
pub(super) fn check_entity_size(operation: &'static str, json: &Value) -> StorageResult<()> {
    let size = json.to_string().len();
    if size > MAX_ENTITY_BYTES {
        return Err(StorageError::new(
            StorageErrorKind::InvalidInput,
            operation,
            format!("entity is {size} bytes, over the {MAX_ENTITY_BYTES}-byte limit"),
        ));
    }
    Ok(())
}

#[async_trait]
impl QueueStore for AzureStorage {
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()> {
        let client = self.queues.queue_client(queue);
        let r =
            self.call(StorageOp::QueueAdmin, "create queue", client.create().into_future()).await;
        ignore_kind(r.map(drop), StorageErrorKind::Conflict)
    }

    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()> {
        let client = self.queues.queue_client(queue);
        let r =
            self.call(StorageOp::QueueAdmin, "delete queue", client.delete().into_future()).await;
        ignore_kind(r.map(drop), StorageErrorKind::NotFound)
    }

    async fn put_message(
        &self,
        queue: &str,
        text: &str,
        initial_visibility: Duration,
    ) -> StorageResult<()> {
        let client = self.queues.queue_client(queue);
        let fut = client
            .put_message(text)
            .visibility_timeout(VisibilityTimeout::new(whole_seconds_up(initial_visibility)))
            .ttl(MessageTTL::new(MESSAGE_TTL))
            .into_future();
        self.call(StorageOp::QueuePut, "put message", fut).await.map(drop)
    }

    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>> {
        if !(1..=32).contains(&max) {
            return Err(StorageError::new(
                StorageErrorKind::InvalidInput,
                "get messages",
                format!("a receive takes 1-32 messages, asked for {max}"),
            ));
        }
        let client = self.queues.queue_client(queue);
        let fut = client
            .get_messages()
            .number_of_messages(NumberOfMessages::new(max))
            .visibility_timeout(VisibilityTimeout::new(whole_seconds_up(visibility)))
            .into_future();
        // A receive that is given up on may still take its messages once the service answers
        // (an emulator freeze, a congested link): they would stay invisible, and unknown to
        // everyone, for the whole visibility timeout. So a receive waits as long as what it takes
        // stays hidden; giving up later loses nothing that would not reappear at once.
        let timeout = self.timeout.max(visibility);
        let resp = self.call_within(timeout, StorageOp::QueueGet, "get messages", fut).await?;
        Ok(resp
            .messages
            .into_iter()
            .map(|m| ReceivedMessage {
                id: m.message_id,
                pop_receipt: m.pop_receipt,
                dequeue_count: m.dequeue_count,
                insertion_time: m.insertion_time,
                next_visible: m.time_next_visible,
                text: m.message_text,
            })
            .collect())
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()> {
        let client =
            self.queues.queue_client(queue).pop_receipt_client(PopReceipt::new(id, pop_receipt));
        let r = self
            .call(StorageOp::QueueDelete, "delete message", client.delete().into_future())
            .await;
        // A stale pop receipt is 400 PopReceiptMismatch on Azurite and 404 on Azure: both mean
        // "this delivery is no longer yours".
        match r {
            Err(e) if e.code() == Some("PopReceiptMismatch") => Err(StorageError::new(
                StorageErrorKind::PreconditionFailed,
                "delete message",
                "pop receipt no longer valid",
            )
            .with_status(e.status().unwrap_or(400), Some("PopReceiptMismatch".into()))),
            other => other.map(drop),
        }
    }

    async fn update_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        text: &str,
        visibility: Duration,
    ) -> StorageResult<String> {
        let client =
            self.queues.queue_client(queue).pop_receipt_client(PopReceipt::new(id, pop_receipt));
        let fut =
            client.update(text, VisibilityTimeout::new(whole_seconds_up(visibility))).into_future();
        match self.call(StorageOp::QueueUpdate, "update message", fut).await {
            Ok(resp) => Ok(resp.pop_receipt),
            Err(e) if e.code() == Some("PopReceiptMismatch") => Err(StorageError::new(
                StorageErrorKind::PreconditionFailed,
                "update message",
                "pop receipt no longer valid",
            )
            .with_status(e.status().unwrap_or(400), Some("PopReceiptMismatch".into()))),
            Err(e) => Err(e),
        }
    }

    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64> {
        let client = self.queues.queue_client(queue);
        let resp = self
            .call(StorageOp::QueueAdmin, "get queue metadata", client.get_metadata().into_future())
            .await?;
        Ok(u64::try_from(resp.approximate_messages_count).unwrap_or(u64::MAX))
    }

    async fn peek_messages(&self, queue: &str, max: u8) -> StorageResult<Vec<PeekedMessage>> {
        if !(1..=32).contains(&max) {
            return Err(StorageError::new(
                StorageErrorKind::InvalidInput,
                "peek messages",
                format!("a peek takes 1-32 messages, asked for {max}"),
            ));
        }
        let client = self.queues.queue_client(queue);
        let fut =
            client.peek_messages().number_of_messages(NumberOfMessages::new(max)).into_future();
        let resp = self.call(StorageOp::QueueGet, "peek messages", fut).await?;
        Ok(resp
            .messages
            .into_iter()
            .map(|m| PeekedMessage {
                id: m.message_id,
                dequeue_count: m.dequeue_count,
                insertion_time: m.insertion_time,
                text: m.message_text,
            })
            .collect())
    }
}

#[async_trait]
impl TableStore for AzureStorage {
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()> {
        let client = self.tables.table_client(table);
        let r =
            self.call(StorageOp::TableAdmin, "create table", client.create().into_future()).await;
        ignore_kind(r.map(drop), StorageErrorKind::Conflict)
    }

    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()> {
        let client = self.tables.table_client(table);
        let r =
            self.call(StorageOp::TableAdmin, "delete table", client.delete().into_future()).await;
        ignore_kind(r.map(drop), StorageErrorKind::NotFound)
    }

    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>> {
        // A point query by filter returns full metadata (ETag) and an empty page when missing.
        let filter = format!(
            "PartitionKey eq '{}' and RowKey eq '{}'",
            odata_quote(partition_key),
            odata_quote(row_key)
        );
        let page = self.query(table, Some(&filter), None, Some(1), None).await?;
        Ok(page.entities.into_iter().next())
    }

    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage> {
        let client = self.tables.table_client(table);
        let mut builder = client.query();
        if let Some(f) = filter {
            builder = builder.filter(Filter::new(f.to_owned()));
        }
        if let Some(cols) = select {
            let mut cols: Vec<String> = cols.iter().map(|c| (*c).to_owned()).collect();
            cols.extend(["PartitionKey".to_owned(), "RowKey".to_owned(), "Timestamp".to_owned()]);
            builder = builder.select(Select::new(cols.join(",")));
        }
        if let Some(top) = top {
            builder = builder.top(Top::new(top));
        }
        if let Some(c) = continuation {
            builder = builder.initial_partition_key(c.next_partition_key);
            if let Some(rk) = c.next_row_key {
                builder = builder.initial_row_key(rk);
            }
        }
        let mut stream = builder.into_stream::<Value>();
        self.counters.record(StorageOp::TableQuery);
        let next = tokio::time::timeout(self.timeout, stream.next()).await.map_err(|_| {
            StorageError::new(StorageErrorKind::Transient, "table query", "no answer in time")
        })?;
        let Some(page) = next else { return Ok(EntityPage::default()) };
        let page = page.map_err(|e| classify("table query", &e))?;
        let continuation = azure_core::Continuable::continuation(&page)
            .map(|(pk, rk)| TableContinuation { next_partition_key: pk, next_row_key: rk });
        let entities =
            page.entities.into_iter().map(TableEntity::from_json).collect::<StorageResult<_>>()?;
        Ok(EntityPage { entities, continuation })
    }

    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>> {
        // Single writes go through a one-operation transaction: the same code path, the same
        // condition semantics, one request.
        let mut etags =
            self.batch_inner(table, vec![op], StorageOp::TableWrite, "table write").await?;
        Ok(etags.pop().flatten())
    }

    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
        self.batch_inner(table, ops, StorageOp::TableBatch, "table batch").await
    }
}

impl AzureStorage {
    async fn batch_inner(
        &self,
        table: &str,
        ops: Vec<BatchOp>,
        counter: StorageOp,
        operation: &'static str,
    ) -> StorageResult<Vec<Option<String>>> {
        let invalid = |m: String| StorageError::new(StorageErrorKind::InvalidInput, operation, m);
        let Some(first) = ops.first() else { return Ok(Vec::new()) };
        if ops.len() > MAX_BATCH_OPERATIONS {
            return Err(invalid(format!(
                "{} operations in one transaction; the limit is {MAX_BATCH_OPERATIONS}",
                ops.len()
            )));
        }
        let partition_key = first.entity.partition_key.clone();
        let client = self.tables.table_client(table).partition_key_client(partition_key.clone());
        let mut tx = client.transaction();
        let mut total = 0usize;
        for op in &ops {
            if op.entity.partition_key != partition_key {
                return Err(invalid("a transaction must stay within one partition key".into()));
            }
            let json = op.entity.to_json();
            check_entity_size(operation, &json)?;
            total += json.to_string().len();
            let rk = op.entity.row_key.clone();
            let sdk = |e: azure_core::Error| classify(operation, &e);
            tx = match &op.mode {
                WriteMode::Insert => tx.insert(json).map_err(sdk)?,
                WriteMode::Upsert => tx.insert_or_replace(rk, json).map_err(sdk)?,
                WriteMode::UpsertMerge => tx.insert_or_merge(rk, json).map_err(sdk)?,
                WriteMode::Replace(etag) => {
                    tx.update(rk, json, Some(if_match(etag))).map_err(sdk)?
                }
                WriteMode::Merge(etag) => tx.merge(rk, json, Some(if_match(etag))).map_err(sdk)?,
                WriteMode::Delete(etag) => tx.delete(rk, Some(if_match(etag))).map_err(sdk)?,
            };
        }
        if total > MAX_BATCH_BYTES {
            return Err(invalid(format!(
                "transaction body is about {total} bytes; the limit is {MAX_BATCH_BYTES}"
            )));
        }
        let resp = self.call(counter, operation, tx.into_future()).await?;
        // A failed change set answers 202 with one inner response carrying the failure.
        if let Some(failed) =
            resp.operation_responses.iter().find(|r| u16::from(r.status_code) >= 300)
        {
            let status = u16::from(failed.status_code);
            return Err(StorageError::new(
                StorageError::kind_for_status(status),
                operation,
                format!("transaction rejected with HTTP {status}; nothing was written"),
            )
            .with_status(status, None));
        }
        if resp.operation_responses.len() != ops.len() {
            return Err(StorageError::new(
                StorageErrorKind::Permanent,
                operation,
                format!(
                    "transaction answered {} responses for {} operations",
                    resp.operation_responses.len(),
                    ops.len()
                ),
            ));
        }
        Ok(resp.operation_responses.into_iter().map(|r| r.etag.map(|e| e.to_string())).collect())
    }
}

/// Escapes a string literal for an OData filter (single quotes are doubled).
pub(crate) fn odata_quote(s: &str) -> String {
    s.replace('\'', "''")
}

#[async_trait]
impl BlobStore for AzureStorage {
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()> {
        let client = self.blobs.container_client(container);
        let r = self
            .call(StorageOp::BlobAdmin, "create container", client.create().into_future())
            .await;
        ignore_kind(r.map(drop), StorageErrorKind::Conflict)
    }

    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()> {
        let client = self.blobs.container_client(container);
        let r = self
            .call(StorageOp::BlobAdmin, "delete container", client.delete().into_future())
            .await;
        ignore_kind(r.map(drop), StorageErrorKind::NotFound)
    }

    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease: Option<&str>,
    ) -> StorageResult<()> {
        let client = self.blobs.container_client(container).blob_client(name);
        let mut builder = client.put_block_blob(data);
        if let Some(l) = lease {
            builder = builder.lease_id(lease_id("put blob", l)?);
        }
        self.call(StorageOp::BlobPut, "put blob", builder.into_future()).await.map(drop)
    }

    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>> {
        let client = self.blobs.container_client(container).blob_client(name);
        match self.call(StorageOp::BlobGet, "get blob", client.get_content()).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == StorageErrorKind::NotFound => Ok(None),
            // The SDK downloads in ranges, and the service refuses any range of a 0-byte blob
            // with 416 `InvalidRange` (Azure and Azurite alike; the 0.21 SDK does not handle it).
            Err(e) if e.status() == Some(416) && e.code() == Some("InvalidRange") => {
                Ok(Some(Vec::new()))
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()> {
        let client = self.blobs.container_client(container).blob_client(name);
        let r =
            self.call(StorageOp::BlobDelete, "delete blob", client.delete().into_future()).await;
        ignore_kind(r.map(drop), StorageErrorKind::NotFound)
    }

    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>> {
        let client = self.blobs.container_client(container);
        let mut stream = client.list_blobs().prefix(prefix.to_owned()).into_stream();
        let mut names = Vec::new();
        loop {
            self.counters.record(StorageOp::BlobList);
            let next = tokio::time::timeout(self.timeout, stream.next()).await.map_err(|_| {
                StorageError::new(StorageErrorKind::Transient, "list blobs", "no answer in time")
            })?;
            let Some(page) = next else { break };
            let page = page.map_err(|e| classify("list blobs", &e))?;
            names.extend(page.blobs.blobs().map(|b| b.name.clone()));
        }
        Ok(names)
    }

    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed: &str,
    ) -> StorageResult<()> {
        let client = self.blobs.container_client(container).blob_client(name);
        let fut = client
            .acquire_lease(lease_duration("acquire lease", duration)?)
            .proposed_lease_id(ProposedLeaseId::from(lease_id("acquire lease", proposed)?))
            .into_future();
        self.call(StorageOp::BlobLease, "acquire lease", fut).await.map(drop)
    }

    async fn renew_lease(&self, container: &str, name: &str, lease: &str) -> StorageResult<()> {
        let client = self.blobs.container_client(container).blob_client(name);
        let fut = client.blob_lease_client(lease_id("renew lease", lease)?).renew().into_future();
        self.call(StorageOp::BlobLease, "renew lease", fut).await.map(drop)
    }

    async fn release_lease(&self, container: &str, name: &str, lease: &str) -> StorageResult<()> {
        let client = self.blobs.container_client(container).blob_client(name);
        let fut =
            client.blob_lease_client(lease_id("release lease", lease)?).release().into_future();
        self.call(StorageOp::BlobLease, "release lease", fut).await.map(drop)
    }

    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease: &str,
        proposed: &str,
    ) -> StorageResult<()> {
        let client = self.blobs.container_client(container).blob_client(name);
        let fut = client
            .blob_lease_client(lease_id("change lease", lease)?)
            .change(ProposedLeaseId::from(lease_id("change lease", proposed)?))
            .into_future();
        self.call(StorageOp::BlobLease, "change lease", fut).await.map(drop)
    }
}
