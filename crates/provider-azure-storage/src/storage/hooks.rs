//! [`HookedStorage`]: the one pass-through decorator over the three storage traits. Every call
//! asks a [`StorageHook`] first (which may hold it, delay it, fail it, or hand back a guard held
//! for the whole call, such as a concurrency permit), then reaches the inner store; the hook may
//! then turn a success into an error the caller sees (a lost answer), and receives tell it what
//! they took. Decorators that only need to act around calls (the
//! [`ConcurrencyLimitedStorage`](super::ConcurrencyLimitedStorage), tests' gates and freezes)
//! are a hook, not another hand-written delegation of every method.

use super::{
    BatchOp, BlobStore, EntityPage, PeekedMessage, QueueStore, ReceivedMessage, StorageError,
    StorageOp, StorageResult, TableContinuation, TableEntity, TableStore,
};
use crate::StorageStack;
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A call as a hook sees it: its kind and the queue, table or container it addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    /// The kind (as the storage counters count it).
    pub op: StorageOp,
    /// The queue, table or container.
    pub resource: &'a str,
}

/// What a hook keeps for the duration of a call (dropped when the call returns).
pub type CallGuard = Option<Box<dyn Send>>;

/// Acts around the calls of a [`HookedStorage`].
#[async_trait]
pub trait StorageHook: Send + Sync + fmt::Debug {
    /// Before `call` reaches the store: awaiting here holds the call; an error fails it
    /// without reaching the store; the guard returned is held until the call returns.
    async fn before(&self, call: Call<'_>) -> StorageResult<CallGuard> {
        let _ = call;
        Ok(None)
    }

    /// After `call` succeeded in the store: `Some(error)` makes the caller see that error
    /// although the store did the work (a timeout after the service committed).
    fn lose_answer(&self, call: Call<'_>) -> Option<StorageError> {
        let _ = call;
        None
    }

    /// After a receive on `queue` took `received` messages, before the caller sees them.
    async fn after_receive(&self, queue: &str, received: usize) {
        let _ = (queue, received);
    }
}

/// The three storage traits over inner stores, every call through `hook`.
#[derive(Debug)]
pub struct HookedStorage<H> {
    queues: Arc<dyn QueueStore>,
    tables: Arc<dyn TableStore>,
    blobs: Arc<dyn BlobStore>,
    hook: H,
}

impl<H: StorageHook + 'static> HookedStorage<H> {
    /// Wraps the given stores.
    pub fn new(
        queues: Arc<dyn QueueStore>,
        tables: Arc<dyn TableStore>,
        blobs: Arc<dyn BlobStore>,
        hook: H,
    ) -> Self {
        Self { queues, tables, blobs, hook }
    }

    /// A decorator over the clients of `stack`.
    pub fn over(stack: &StorageStack, hook: H) -> Arc<Self> {
        Arc::new(Self::new(stack.queues.clone(), stack.tables.clone(), stack.blobs.clone(), hook))
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

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// One call through the hook: `before`, the call (holding the guard), then `lose_answer`.
    async fn run<T>(
        &self,
        op: StorageOp,
        resource: &str,
        call: impl std::future::Future<Output = StorageResult<T>> + Send,
    ) -> StorageResult<T> {
        let guard = self.hook.before(Call { op, resource }).await?;
        let result = call.await;
        drop(guard);
        match (result, self.hook.lose_answer(Call { op, resource })) {
            (Ok(_), Some(lost)) => Err(lost),
            (result, _) => result,
        }
    }
}

#[async_trait]
impl<H: StorageHook + 'static> QueueStore for HookedStorage<H> {
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()> {
        self.run(StorageOp::QueueAdmin, queue, self.queues.create_queue_if_not_exists(queue)).await
    }
    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()> {
        self.run(StorageOp::QueueAdmin, queue, self.queues.delete_queue_if_exists(queue)).await
    }
    async fn put_message(&self, queue: &str, text: &str, vis: Duration) -> StorageResult<()> {
        self.run(StorageOp::QueuePut, queue, self.queues.put_message(queue, text, vis)).await
    }
    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>> {
        let got = self
            .run(StorageOp::QueueGet, queue, self.queues.get_messages(queue, max, visibility))
            .await?;
        self.hook.after_receive(queue, got.len()).await;
        Ok(got)
    }
    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()> {
        self.run(StorageOp::QueueDelete, queue, self.queues.delete_message(queue, id, pop_receipt))
            .await
    }
    async fn update_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        text: &str,
        visibility: Duration,
    ) -> StorageResult<String> {
        self.run(
            StorageOp::QueueUpdate,
            queue,
            self.queues.update_message(queue, id, pop_receipt, text, visibility),
        )
        .await
    }
    async fn peek_messages(&self, queue: &str, max: u8) -> StorageResult<Vec<PeekedMessage>> {
        self.run(StorageOp::QueueGet, queue, self.queues.peek_messages(queue, max)).await
    }
    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64> {
        self.run(StorageOp::QueueAdmin, queue, self.queues.approximate_message_count(queue)).await
    }
}

#[async_trait]
impl<H: StorageHook + 'static> TableStore for HookedStorage<H> {
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()> {
        self.run(StorageOp::TableAdmin, table, self.tables.create_table_if_not_exists(table)).await
    }
    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()> {
        self.run(StorageOp::TableAdmin, table, self.tables.delete_table_if_exists(table)).await
    }
    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>> {
        self.run(
            StorageOp::TableQuery,
            table,
            self.tables.get_entity(table, partition_key, row_key),
        )
        .await
    }
    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage> {
        self.run(
            StorageOp::TableQuery,
            table,
            self.tables.query(table, filter, select, top, continuation),
        )
        .await
    }
    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>> {
        self.run(StorageOp::TableWrite, table, self.tables.write(table, op)).await
    }
    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
        self.run(StorageOp::TableBatch, table, self.tables.batch(table, ops)).await
    }
}

#[async_trait]
impl<H: StorageHook + 'static> BlobStore for HookedStorage<H> {
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()> {
        self.run(
            StorageOp::BlobAdmin,
            container,
            self.blobs.create_container_if_not_exists(container),
        )
        .await
    }
    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()> {
        self.run(StorageOp::BlobAdmin, container, self.blobs.delete_container_if_exists(container))
            .await
    }
    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease_id: Option<&str>,
    ) -> StorageResult<()> {
        self.run(
            StorageOp::BlobPut,
            container,
            self.blobs.put_blob(container, name, data, lease_id),
        )
        .await
    }
    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>> {
        self.run(StorageOp::BlobGet, container, self.blobs.get_blob(container, name)).await
    }
    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()> {
        self.run(
            StorageOp::BlobDelete,
            container,
            self.blobs.delete_blob_if_exists(container, name),
        )
        .await
    }
    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>> {
        self.run(StorageOp::BlobList, container, self.blobs.list_blobs(container, prefix)).await
    }
    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        self.run(
            StorageOp::BlobLease,
            container,
            self.blobs.acquire_lease(container, name, duration, proposed_lease_id),
        )
        .await
    }
    async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> StorageResult<()> {
        self.run(StorageOp::BlobLease, container, self.blobs.renew_lease(container, name, lease_id))
            .await
    }
    async fn release_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
    ) -> StorageResult<()> {
        self.run(
            StorageOp::BlobLease,
            container,
            self.blobs.release_lease(container, name, lease_id),
        )
        .await
    }
    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        self.run(
            StorageOp::BlobLease,
            container,
            self.blobs.change_lease(container, name, lease_id, proposed_lease_id),
        )
        .await
    }
}
