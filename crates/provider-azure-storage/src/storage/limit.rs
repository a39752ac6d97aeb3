//! [`ConcurrencyLimitedStorage`]: at most N storage calls in flight, over all three traits.
//!
//! Every method holds one permit of a shared semaphore for the whole inner call, so the limit
//! covers every kind of call (queues, tables, blobs), not only sends. A call waits for a permit
//! before it starts; a caller that gives up (drops the future) frees its place at once.

use super::{
    BatchOp, BlobStore, EntityPage, QueueStore, ReceivedMessage, StorageError, StorageErrorKind,
    StorageResult, TableContinuation, TableEntity, TableStore,
};
use crate::StorageStack;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// A decorator that lets at most `max_concurrent` calls run at once.
#[derive(Debug)]
pub struct ConcurrencyLimitedStorage {
    queues: Arc<dyn QueueStore>,
    tables: Arc<dyn TableStore>,
    blobs: Arc<dyn BlobStore>,
    permits: Semaphore,
    max_concurrent: usize,
}

impl ConcurrencyLimitedStorage {
    /// Wraps the given stores; `max_concurrent` is raised to 1 if 0.
    pub fn new(
        queues: Arc<dyn QueueStore>,
        tables: Arc<dyn TableStore>,
        blobs: Arc<dyn BlobStore>,
        max_concurrent: usize,
    ) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self { queues, tables, blobs, permits: Semaphore::new(max_concurrent), max_concurrent }
    }

    /// A decorator over the clients of `stack`.
    pub fn over(stack: &StorageStack, max_concurrent: usize) -> Arc<Self> {
        Arc::new(Self::new(
            stack.queues.clone(),
            stack.tables.clone(),
            stack.blobs.clone(),
            max_concurrent,
        ))
    }

    /// `base` with its three clients replaced by this decorator (same counters and URLs).
    pub fn stack(self: &Arc<Self>, base: &StorageStack) -> StorageStack {
        StorageStack {
            queues: self.clone(),
            tables: self.clone(),
            blobs: self.clone(),
            counters: base.counters.clone(),
            large_messages_container_url: base.large_messages_container_url.clone(),
        }
    }

    /// The limit.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Calls running right now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent.saturating_sub(self.permits.available_permits())
    }

    async fn permit(&self, operation: &'static str) -> StorageResult<SemaphorePermit<'_>> {
        // The semaphore is never closed; an error here would be a bug, reported, not a panic.
        self.permits.acquire().await.map_err(|_| {
            StorageError::new(StorageErrorKind::Permanent, operation, "concurrency limiter closed")
        })
    }
}

#[async_trait]
impl QueueStore for ConcurrencyLimitedStorage {
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()> {
        let _p = self.permit("create queue").await?;
        self.queues.create_queue_if_not_exists(queue).await
    }
    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()> {
        let _p = self.permit("delete queue").await?;
        self.queues.delete_queue_if_exists(queue).await
    }
    async fn put_message(&self, queue: &str, text: &str, vis: Duration) -> StorageResult<()> {
        let _p = self.permit("put message").await?;
        self.queues.put_message(queue, text, vis).await
    }
    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>> {
        let _p = self.permit("get messages").await?;
        self.queues.get_messages(queue, max, visibility).await
    }
    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()> {
        let _p = self.permit("delete message").await?;
        self.queues.delete_message(queue, id, pop_receipt).await
    }
    async fn update_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        text: &str,
        visibility: Duration,
    ) -> StorageResult<String> {
        let _p = self.permit("update message").await?;
        self.queues.update_message(queue, id, pop_receipt, text, visibility).await
    }
    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64> {
        let _p = self.permit("get queue metadata").await?;
        self.queues.approximate_message_count(queue).await
    }
}

#[async_trait]
impl TableStore for ConcurrencyLimitedStorage {
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()> {
        let _p = self.permit("create table").await?;
        self.tables.create_table_if_not_exists(table).await
    }
    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()> {
        let _p = self.permit("delete table").await?;
        self.tables.delete_table_if_exists(table).await
    }
    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>> {
        let _p = self.permit("table query").await?;
        self.tables.get_entity(table, partition_key, row_key).await
    }
    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage> {
        let _p = self.permit("table query").await?;
        self.tables.query(table, filter, select, top, continuation).await
    }
    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>> {
        let _p = self.permit("table write").await?;
        self.tables.write(table, op).await
    }
    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
        let _p = self.permit("table batch").await?;
        self.tables.batch(table, ops).await
    }
}

#[async_trait]
impl BlobStore for ConcurrencyLimitedStorage {
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()> {
        let _p = self.permit("create container").await?;
        self.blobs.create_container_if_not_exists(container).await
    }
    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()> {
        let _p = self.permit("delete container").await?;
        self.blobs.delete_container_if_exists(container).await
    }
    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease_id: Option<&str>,
    ) -> StorageResult<()> {
        let _p = self.permit("put blob").await?;
        self.blobs.put_blob(container, name, data, lease_id).await
    }
    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>> {
        let _p = self.permit("get blob").await?;
        self.blobs.get_blob(container, name).await
    }
    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()> {
        let _p = self.permit("delete blob").await?;
        self.blobs.delete_blob_if_exists(container, name).await
    }
    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>> {
        let _p = self.permit("list blobs").await?;
        self.blobs.list_blobs(container, prefix).await
    }
    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        let _p = self.permit("acquire lease").await?;
        self.blobs.acquire_lease(container, name, duration, proposed_lease_id).await
    }
    async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> StorageResult<()> {
        let _p = self.permit("renew lease").await?;
        self.blobs.renew_lease(container, name, lease_id).await
    }
    async fn release_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
    ) -> StorageResult<()> {
        let _p = self.permit("release lease").await?;
        self.blobs.release_lease(container, name, lease_id).await
    }
    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        let _p = self.permit("change lease").await?;
        self.blobs.change_lease(container, name, lease_id, proposed_lease_id).await
    }
}
