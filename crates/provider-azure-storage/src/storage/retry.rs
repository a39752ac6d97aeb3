//! [`RetryingStorage`]: retries the storage calls that are safe to repeat.
//!
//! SDK-level retries are off (a conditional write that timed out may have committed, and only
//! the caller can tell what a repeat means). This decorator retries exactly the calls whose
//! repetition is harmless, on `Transient` and `Throttled` failures, with jittered exponential
//! back-off:
//!
//! * reads: get messages, point reads, query pages, blob downloads and listings, counts;
//! * idempotent writes: create/delete of queues, tables and containers, unconditional upserts and
//!   deletes, blob uploads without a lease, blob deletes;
//! * queue puts (a repeat is a duplicate message, which every consumer tolerates) and message
//!   deletes (a repeat after a delete that committed finds the message gone: reported as done).
//!
//! Never retried: ETag-conditional writes and batches containing one (a repeat after an
//! ambiguous commit would report a false conflict; the checkpoint aborts and replays instead),
//! message visibility updates (the first attempt may have changed the pop receipt) and lease
//! operations (the partition manager owns their semantics).

use super::{
    BatchOp, BlobStore, EntityPage, PeekedMessage, QueueStore, ReceivedMessage, StorageResult,
    TableContinuation, TableEntity, TableStore, WriteMode,
};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often and how patiently safe calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles per retry, with ±50 % jitter.
    pub base_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let exp = durabletask_core::backoff::doubling(self.base_delay, retry, self.max_delay);
        exp.mul_f64(rand::random::<f64>() + 0.5).min(self.max_delay)
    }
}

/// Retrying decorator over the three storage traits.
#[derive(Debug, Clone)]
pub struct RetryingStorage {
    queues: Arc<dyn QueueStore>,
    tables: Arc<dyn TableStore>,
    blobs: Arc<dyn BlobStore>,
    policy: RetryPolicy,
}

impl RetryingStorage {
    /// Wraps the given stores.
    pub fn new(
        queues: Arc<dyn QueueStore>,
        tables: Arc<dyn TableStore>,
        blobs: Arc<dyn BlobStore>,
        policy: RetryPolicy,
    ) -> Self {
        Self { queues, tables, blobs, policy }
    }

    async fn retry<T, F, Fut>(&self, what: &'static str, mut call: F) -> StorageResult<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        let mut attempt = 0;
        loop {
            match call(attempt).await {
                Err(e) if e.is_retryable() && attempt + 1 < self.policy.attempts => {
                    let delay = self.policy.delay(attempt);
                    tracing::debug!(operation = what, attempt, error = %e, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "retrying storage call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn unconditional(mode: &WriteMode) -> bool {
    matches!(mode, WriteMode::Upsert | WriteMode::UpsertMerge | WriteMode::Delete(None))
}

#[async_trait]
impl QueueStore for RetryingStorage {
    async fn create_queue_if_not_exists(&self, queue: &str) -> StorageResult<()> {
        self.retry("create queue", |_| self.queues.create_queue_if_not_exists(queue)).await
    }
    async fn delete_queue_if_exists(&self, queue: &str) -> StorageResult<()> {
        self.retry("delete queue", |_| self.queues.delete_queue_if_exists(queue)).await
    }
    async fn put_message(&self, queue: &str, text: &str, vis: Duration) -> StorageResult<()> {
        self.retry("put message", |_| self.queues.put_message(queue, text, vis)).await
    }
    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedMessage>> {
        self.retry("get messages", |_| self.queues.get_messages(queue, max, visibility)).await
    }
    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StorageResult<()> {
        self.retry("delete message", |attempt| async move {
            match self.queues.delete_message(queue, id, pop_receipt).await {
                // A repeat that finds the message gone: the earlier attempt deleted it.
                Err(e) if attempt > 0 && e.is_message_gone() => Ok(()),
                other => other,
            }
        })
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
        self.queues.update_message(queue, id, pop_receipt, text, visibility).await
    }
    async fn approximate_message_count(&self, queue: &str) -> StorageResult<u64> {
        self.retry("count messages", |_| self.queues.approximate_message_count(queue)).await
    }
    async fn peek_messages(&self, queue: &str, max: u8) -> StorageResult<Vec<PeekedMessage>> {
        self.retry("peek messages", |_| self.queues.peek_messages(queue, max)).await
    }
}

#[async_trait]
impl TableStore for RetryingStorage {
    async fn create_table_if_not_exists(&self, table: &str) -> StorageResult<()> {
        self.retry("create table", |_| self.tables.create_table_if_not_exists(table)).await
    }
    async fn delete_table_if_exists(&self, table: &str) -> StorageResult<()> {
        self.retry("delete table", |_| self.tables.delete_table_if_exists(table)).await
    }
    async fn get_entity(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<TableEntity>> {
        self.retry("get entity", |_| self.tables.get_entity(table, partition_key, row_key)).await
    }
    async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
        select: Option<&[&str]>,
        top: Option<u32>,
        continuation: Option<TableContinuation>,
    ) -> StorageResult<EntityPage> {
        self.retry("query", |_| self.tables.query(table, filter, select, top, continuation.clone()))
            .await
    }
    async fn write(&self, table: &str, op: BatchOp) -> StorageResult<Option<String>> {
        if unconditional(&op.mode) {
            self.retry("write entity", |_| self.tables.write(table, op.clone())).await
        } else {
            self.tables.write(table, op).await
        }
    }
    async fn batch(&self, table: &str, ops: Vec<BatchOp>) -> StorageResult<Vec<Option<String>>> {
        if ops.iter().all(|o| unconditional(&o.mode)) {
            self.retry("batch", |_| self.tables.batch(table, ops.clone())).await
        } else {
            self.tables.batch(table, ops).await
        }
    }
}

#[async_trait]
impl BlobStore for RetryingStorage {
    async fn create_container_if_not_exists(&self, container: &str) -> StorageResult<()> {
        self.retry("create container", |_| self.blobs.create_container_if_not_exists(container))
            .await
    }
    async fn delete_container_if_exists(&self, container: &str) -> StorageResult<()> {
        self.retry("delete container", |_| self.blobs.delete_container_if_exists(container)).await
    }
    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        data: Vec<u8>,
        lease_id: Option<&str>,
    ) -> StorageResult<()> {
        if lease_id.is_some() {
            return self.blobs.put_blob(container, name, data, lease_id).await;
        }
        self.retry("put blob", |_| self.blobs.put_blob(container, name, data.clone(), None)).await
    }
    async fn get_blob(&self, container: &str, name: &str) -> StorageResult<Option<Vec<u8>>> {
        self.retry("get blob", |_| self.blobs.get_blob(container, name)).await
    }
    async fn delete_blob_if_exists(&self, container: &str, name: &str) -> StorageResult<()> {
        self.retry("delete blob", |_| self.blobs.delete_blob_if_exists(container, name)).await
    }
    async fn list_blobs(&self, container: &str, prefix: &str) -> StorageResult<Vec<String>> {
        self.retry("list blobs", |_| self.blobs.list_blobs(container, prefix)).await
    }
    async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        duration: Duration,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        self.blobs.acquire_lease(container, name, duration, proposed_lease_id).await
    }
    async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> StorageResult<()> {
        self.blobs.renew_lease(container, name, lease_id).await
    }
    async fn release_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
    ) -> StorageResult<()> {
        self.blobs.release_lease(container, name, lease_id).await
    }
    async fn change_lease(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        proposed_lease_id: &str,
    ) -> StorageResult<()> {
        self.blobs.change_lease(container, name, lease_id, proposed_lease_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::hooks::{Call, CallGuard, HookedStorage, StorageHook};
    use super::super::{InMemoryStorage, StorageError, StorageErrorKind, StorageOp};
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Over the in-memory store: the first `fail_first` calls fail with `kind` before reaching
    /// it; with `lose_first_delete`, the first delete happens and its answer is lost.
    #[derive(Debug)]
    struct Flaky {
        calls: AtomicU32,
        fail_first: u32,
        kind: StorageErrorKind,
        lose_first_delete: bool,
        log: Mutex<Vec<StorageOp>>,
    }

    #[async_trait]
    impl StorageHook for Arc<Flaky> {
        async fn before(&self, call: Call<'_>) -> StorageResult<CallGuard> {
            self.log.lock().unwrap().push(call.op);
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(StorageError::new(self.kind, call.op.name(), "injected"));
            }
            Ok(None)
        }
        fn lose_answer(&self, call: Call<'_>) -> Option<StorageError> {
            let deletes =
                self.log.lock().unwrap().iter().filter(|o| **o == StorageOp::QueueDelete).count();
            (self.lose_first_delete && call.op == StorageOp::QueueDelete && deletes == 1)
                .then(|| StorageError::new(StorageErrorKind::Transient, "delete", "timeout"))
        }
    }

    const QUEUE: &str = "queue1";

    /// The retrying decorator over `flaky` over an in-memory store with `QUEUE` created.
    async fn wrap(flaky: &Arc<Flaky>) -> RetryingStorage {
        let mem = InMemoryStorage::new();
        mem.create_queue_if_not_exists(QUEUE).await.unwrap();
        let hooked = HookedStorage::over(&mem.stack("http://memory.invalid/a/c"), flaky.clone());
        RetryingStorage::new(
            hooked.clone(),
            hooked.clone(),
            hooked,
            RetryPolicy {
                attempts: 4,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            },
        )
    }

    fn flaky(fail_first: u32, kind: StorageErrorKind) -> Arc<Flaky> {
        Arc::new(Flaky {
            calls: AtomicU32::new(0),
            fail_first,
            kind,
            lose_first_delete: false,
            log: Mutex::new(Vec::new()),
        })
    }

    #[tokio::test]
    async fn transient_failures_of_safe_calls_are_retried() {
        let f = flaky(3, StorageErrorKind::Transient);
        wrap(&f).await.put_message(QUEUE, "m", Duration::ZERO).await.expect("fourth attempt");
        assert_eq!(f.calls.load(Ordering::SeqCst), 4);
        let f = flaky(4, StorageErrorKind::Throttled);
        let r = wrap(&f).await;
        let err = r.get_messages(QUEUE, 1, Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Throttled, "gives up after the last attempt");
        assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn non_retryable_failures_and_unsafe_calls_are_not_retried() {
        let f = flaky(1, StorageErrorKind::Conflict);
        assert!(wrap(&f).await.put_message(QUEUE, "m", Duration::ZERO).await.is_err());
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        let f = flaky(1, StorageErrorKind::Transient);
        let r = wrap(&f).await;
        assert!(r.update_message(QUEUE, "i", "p", "t", Duration::ZERO).await.is_err());
        assert_eq!(f.calls.load(Ordering::SeqCst), 1, "visibility updates are never repeated");
    }

    #[tokio::test]
    async fn a_repeated_delete_that_finds_the_message_gone_succeeds() {
        let f = Arc::new(Flaky {
            lose_first_delete: true,
            ..Arc::into_inner(flaky(0, StorageErrorKind::Transient)).unwrap()
        });
        let r = wrap(&f).await;
        r.put_message(QUEUE, "m", Duration::ZERO).await.unwrap();
        let m = r.get_messages(QUEUE, 1, Duration::from_secs(30)).await.unwrap().remove(0);
        r.delete_message(QUEUE, &m.id, &m.pop_receipt).await.expect("deleted by the first attempt");
        let deletes: Vec<StorageOp> = f
            .log
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|o| *o == StorageOp::QueueDelete)
            .collect();
        assert_eq!(deletes, [StorageOp::QueueDelete, StorageOp::QueueDelete], "retried once");
        assert_eq!(r.approximate_message_count(QUEUE).await.unwrap(), 0);
    }
}
