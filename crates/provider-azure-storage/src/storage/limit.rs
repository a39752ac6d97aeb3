//! [`ConcurrencyLimitedStorage`]: at most N storage calls in flight, over all three traits.
//!
//! A [`HookedStorage`] whose hook holds one permit of a shared semaphore for the whole inner
//! call, so the limit covers every kind of call (queues, tables, blobs), not only sends. A call
//! waits for a permit before it starts; a caller that gives up (drops the future) frees its
//! place at once.

use super::hooks::{Call, CallGuard, HookedStorage, StorageHook};
use super::{BlobStore, QueueStore, StorageError, StorageErrorKind, StorageResult, TableStore};
use crate::StorageStack;
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// The hook: a semaphore of `max_concurrent` permits, a call count and the peak in flight.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    calls: AtomicU64,
    peak: AtomicUsize,
}

impl ConcurrencyLimit {
    /// `max_concurrent` permits (raised to 1 if 0).
    pub fn new(max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            calls: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    fn in_flight(&self) -> usize {
        self.max_concurrent.saturating_sub(self.permits.available_permits())
    }
}

#[async_trait]
impl StorageHook for ConcurrencyLimit {
    async fn before(&self, call: Call<'_>) -> StorageResult<CallGuard> {
        // The semaphore is never closed; an error here would be a bug, reported, not a panic.
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            StorageError::new(StorageErrorKind::Permanent, call.op.name(), "limiter closed")
        })?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(self.in_flight(), Ordering::Relaxed);
        Ok(Some(Box::new(permit)))
    }
}

/// A decorator that lets at most `max_concurrent` calls run at once.
pub type ConcurrencyLimitedStorage = HookedStorage<ConcurrencyLimit>;

impl HookedStorage<ConcurrencyLimit> {
    /// Wraps the given stores; `max_concurrent` is raised to 1 if 0.
    pub fn limited(
        queues: Arc<dyn QueueStore>,
        tables: Arc<dyn TableStore>,
        blobs: Arc<dyn BlobStore>,
        max_concurrent: usize,
    ) -> Self {
        Self::new(queues, tables, blobs, ConcurrencyLimit::new(max_concurrent))
    }

    /// A limiter over the clients of `stack`.
    pub fn limit(stack: &StorageStack, max_concurrent: usize) -> Arc<Self> {
        Self::over(stack, ConcurrencyLimit::new(max_concurrent))
    }

    /// The limit.
    pub fn max_concurrent(&self) -> usize {
        self.hook().max_concurrent
    }

    /// Calls running right now.
    pub fn in_flight(&self) -> usize {
        self.hook().in_flight()
    }

    /// Calls that went through the limiter so far.
    pub fn calls(&self) -> u64 {
        self.hook().calls.load(Ordering::Relaxed)
    }

    /// The most calls seen running at once.
    pub fn peak_in_flight(&self) -> usize {
        self.hook().peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::InMemoryStorage;
    use std::time::Duration;

    /// Makes every call of the in-memory store take 20 ms and records how many overlap.
    #[derive(Debug, Default)]
    struct Gauge {
        now: Arc<AtomicUsize>,
        peak: AtomicUsize,
        calls: AtomicUsize,
    }

    struct Leaving(Arc<AtomicUsize>);

    impl Drop for Leaving {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl StorageHook for Arc<Gauge> {
        async fn before(&self, _: Call<'_>) -> StorageResult<CallGuard> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            let leaving = Leaving(self.now.clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Some(Box::new(leaving)))
        }
    }

    /// An in-memory store (`queue1`, `table1` and `container1` created) seen through `gauge`.
    async fn gauged(gauge: &Arc<Gauge>) -> Arc<HookedStorage<Arc<Gauge>>> {
        let mem = InMemoryStorage::new();
        mem.create_queue_if_not_exists("queue1").await.unwrap();
        mem.create_table_if_not_exists("table1").await.unwrap();
        mem.create_container_if_not_exists("container1").await.unwrap();
        HookedStorage::over(&mem.stack("http://memory.invalid/a/container1"), gauge.clone())
    }

    /// 30 concurrent calls of every trait (queue put and get, table query and batch, blob get
    /// and list) through `q`, `t` and `b`.
    async fn storm(q: &dyn QueueStore, t: &dyn TableStore, b: &dyn BlobStore) {
        let mut calls: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> =
            Vec::new();
        for _ in 0..5 {
            calls.push(Box::pin(async {
                q.put_message("queue1", "m", Duration::ZERO).await.is_ok()
            }));
            calls.push(Box::pin(async {
                q.get_messages("queue1", 32, Duration::from_secs(30)).await.is_ok()
            }));
            calls.push(Box::pin(async { t.query("table1", None, None, None, None).await.is_ok() }));
            calls.push(Box::pin(async { t.get_entity("table1", "p", "r").await.is_ok() }));
            calls.push(Box::pin(async { b.get_blob("container1", "b").await.is_ok() }));
            calls.push(Box::pin(async { b.list_blobs("container1", "").await.is_ok() }));
        }
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|ok| *ok), "{results:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_n_calls_of_any_kind_are_in_flight() {
        for max in [1, 3] {
            let gauge = Arc::new(Gauge::default());
            let inner = gauged(&gauge).await;
            let start = gauge.calls.load(Ordering::SeqCst);
            let limited = ConcurrencyLimitedStorage::limited(
                inner.clone(),
                inner.clone(),
                inner.clone(),
                max,
            );
            storm(&limited, &limited, &limited).await;
            assert_eq!(gauge.calls.load(Ordering::SeqCst) - start, 30);
            assert_eq!(limited.calls(), 30);
            // The limit is reached and never exceeded.
            assert_eq!(gauge.peak.load(Ordering::SeqCst), max, "limit {max}");
            assert_eq!(limited.peak_in_flight(), max);
            assert_eq!(limited.in_flight(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_limiter_the_same_calls_overlap() {
        // The gauge sees the overlap the limiter removes: the test above can fail.
        let gauge = Arc::new(Gauge::default());
        let inner = gauged(&gauge).await;
        storm(inner.as_ref(), inner.as_ref(), inner.as_ref()).await;
        assert!(gauge.peak.load(Ordering::SeqCst) > 3, "{gauge:?}");
    }

    #[tokio::test]
    async fn a_waiting_call_that_is_dropped_frees_its_place() {
        let gauge = Arc::new(Gauge::default());
        let inner = gauged(&gauge).await;
        let limited =
            ConcurrencyLimitedStorage::limited(inner.clone(), inner.clone(), inner.clone(), 1);
        let slow = limited.put_message("queue1", "a", Duration::ZERO);
        let waiting = limited.put_message("queue1", "b", Duration::ZERO);
        // The second call times out while waiting for the permit; the first completes.
        let (first, second) =
            tokio::join!(slow, tokio::time::timeout(Duration::from_millis(5), waiting));
        first.unwrap();
        assert!(second.is_err());
        assert_eq!(limited.in_flight(), 0);
        assert_eq!(limited.max_concurrent(), 1);
        limited.put_message("queue1", "c", Duration::ZERO).await.unwrap();
    }
}
