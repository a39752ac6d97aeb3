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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    calls: AtomicU64,
    peak: AtomicUsize,
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
        Self {
            queues,
            tables,
            blobs,
            permits: Semaphore::new(max_concurrent),
            max_concurrent,
            calls: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        }
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

    /// Calls that went through the limiter so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The most calls seen running at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    async fn permit(&self, operation: &'static str) -> StorageResult<SemaphorePermit<'_>> {
        // The semaphore is never closed; an error here would be a bug, reported, not a panic.
        let permit = self.permits.acquire().await.map_err(|_| {
            StorageError::new(StorageErrorKind::Permanent, operation, "concurrency limiter closed")
        })?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(self.in_flight(), Ordering::Relaxed);
        Ok(permit)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store whose every call takes 20 ms and records how many calls overlap.
    #[derive(Debug, Default)]
    struct Gauge {
        now: AtomicUsize,
        peak: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Gauge {
        async fn call<T: Default>(&self) -> StorageResult<T> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(T::default())
        }
    }

    #[async_trait]
    impl QueueStore for Gauge {
        async fn create_queue_if_not_exists(&self, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn delete_queue_if_exists(&self, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn put_message(&self, _: &str, _: &str, _: Duration) -> StorageResult<()> {
            self.call().await
        }
        async fn get_messages(
            &self,
            _: &str,
            _: u8,
            _: Duration,
        ) -> StorageResult<Vec<ReceivedMessage>> {
            self.call().await
        }
        async fn delete_message(&self, _: &str, _: &str, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn update_message(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &str,
            _: Duration,
        ) -> StorageResult<String> {
            self.call().await
        }
        async fn approximate_message_count(&self, _: &str) -> StorageResult<u64> {
            self.call().await
        }
    }

    #[async_trait]
    impl TableStore for Gauge {
        async fn create_table_if_not_exists(&self, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn delete_table_if_exists(&self, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn get_entity(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> StorageResult<Option<TableEntity>> {
            self.call().await
        }
        async fn query(
            &self,
            _: &str,
            _: Option<&str>,
            _: Option<&[&str]>,
            _: Option<u32>,
            _: Option<TableContinuation>,
        ) -> StorageResult<EntityPage> {
            self.call().await
        }
        async fn write(&self, _: &str, _: BatchOp) -> StorageResult<Option<String>> {
            self.call().await
        }
        async fn batch(&self, _: &str, _: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
            self.call().await
        }
    }

    #[async_trait]
    impl BlobStore for Gauge {
        async fn create_container_if_not_exists(&self, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn delete_container_if_exists(&self, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn put_blob(
            &self,
            _: &str,
            _: &str,
            _: Vec<u8>,
            _: Option<&str>,
        ) -> StorageResult<()> {
            self.call().await
        }
        async fn get_blob(&self, _: &str, _: &str) -> StorageResult<Option<Vec<u8>>> {
            self.call().await
        }
        async fn delete_blob_if_exists(&self, _: &str, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn list_blobs(&self, _: &str, _: &str) -> StorageResult<Vec<String>> {
            self.call().await
        }
        async fn acquire_lease(&self, _: &str, _: &str, _: Duration, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn renew_lease(&self, _: &str, _: &str, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn release_lease(&self, _: &str, _: &str, _: &str) -> StorageResult<()> {
            self.call().await
        }
        async fn change_lease(&self, _: &str, _: &str, _: &str, _: &str) -> StorageResult<()> {
            self.call().await
        }
    }

    /// 30 concurrent calls of every trait (queue put and get, table query and batch, blob get
    /// and lease renew) through `q`, `t` and `b`.
    async fn storm(q: &dyn QueueStore, t: &dyn TableStore, b: &dyn BlobStore) {
        let mut calls: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> =
            Vec::new();
        for _ in 0..5 {
            calls.push(Box::pin(async { q.put_message("q", "m", Duration::ZERO).await.is_ok() }));
            calls.push(Box::pin(async { q.get_messages("q", 32, Duration::ZERO).await.is_ok() }));
            calls.push(Box::pin(async { t.query("t", None, None, None, None).await.is_ok() }));
            calls.push(Box::pin(async { t.batch("t", Vec::new()).await.is_ok() }));
            calls.push(Box::pin(async { b.get_blob("c", "b").await.is_ok() }));
            calls.push(Box::pin(async { b.renew_lease("c", "b", "l").await.is_ok() }));
        }
        assert!(futures::future::join_all(calls).await.into_iter().all(|ok| ok));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_n_calls_of_any_kind_are_in_flight() {
        for max in [1, 3] {
            let gauge = Arc::new(Gauge::default());
            let limited =
                ConcurrencyLimitedStorage::new(gauge.clone(), gauge.clone(), gauge.clone(), max);
            storm(&limited, &limited, &limited).await;
            assert_eq!(gauge.calls.load(Ordering::SeqCst), 30);
            // The limit is reached and never exceeded.
            assert_eq!(gauge.peak.load(Ordering::SeqCst), max, "limit {max}");
            assert_eq!(limited.in_flight(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_limiter_the_same_calls_overlap() {
        // The gauge sees the overlap the limiter removes: the test above can fail.
        let gauge = Gauge::default();
        storm(&gauge, &gauge, &gauge).await;
        assert!(gauge.peak.load(Ordering::SeqCst) > 3, "{gauge:?}");
    }

    #[tokio::test]
    async fn a_waiting_call_that_is_dropped_frees_its_place() {
        let gauge = Arc::new(Gauge::default());
        let limited = ConcurrencyLimitedStorage::new(gauge.clone(), gauge.clone(), gauge, 1);
        let slow = limited.put_message("q", "a", Duration::ZERO);
        let waiting = limited.put_message("q", "b", Duration::ZERO);
        // The second call times out while waiting for the permit; the first completes.
        let (first, second) =
            tokio::join!(slow, tokio::time::timeout(Duration::from_millis(5), waiting));
        first.unwrap();
        assert!(second.is_err());
        assert_eq!(limited.in_flight(), 0);
        assert_eq!(limited.max_concurrent(), 1);
        limited.put_message("q", "c", Duration::ZERO).await.unwrap();
    }
}
