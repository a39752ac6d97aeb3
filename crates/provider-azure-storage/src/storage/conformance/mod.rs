//! The storage conformance suite: the behaviours of [`QueueStore`], [`TableStore`] and
//! [`BlobStore`] the provider relies on, asserted the same way on every implementation and
//! decorator.
//!
//! Every behaviour is an async function taking a [`StorageFactory`], which hands out fresh
//! stores, their [`StorageCounters`], a [`TestTime`] (real sleeps on Azurite, a
//! [`ManualClock`] in memory) and a unique resource-name prefix. A crate runs each behaviour as
//! its own `#[tokio::test]` with [`storage_conformance_tests!`](crate::storage_conformance_tests):
//!
//! ```ignore
//! durabletask_azure_storage::storage_conformance_tests!(
//!     durabletask_azure_storage::storage::conformance::MemoryFactory::plain()
//! );
//! ```
//!
//! Built with the `testing` cargo feature (and in this crate's unit tests); the crate's own
//! integration tests enable it through a dev-dependency on the crate itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: fail loudly

mod blobs;
mod queues;
mod tables;

pub use blobs::*;
pub use queues::*;
pub use tables::*;

use super::{
    BlobStore, ConcurrencyLimitedStorage, InMemoryStorage, QueueStore, RetryPolicy,
    RetryingStorage, StorageCounters, TableStore,
    fault::{FaultPlan, FaultyStorage},
};
use async_trait::async_trait;
use durabletask_core::ManualClock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a test lets time pass.
#[derive(Debug, Clone)]
pub enum TestTime {
    /// Real time: sleep (Azurite).
    Real,
    /// The store's manual clock: advance it.
    Manual(ManualClock),
}

impl TestTime {
    /// Lets `d` pass as the store sees it.
    pub async fn pass(&self, d: Duration) {
        match self {
            TestTime::Real => tokio::time::sleep(d).await,
            TestTime::Manual(clock) => clock.advance(d),
        }
    }
}

/// The three stores, as one value.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Queue operations.
    pub queues: Arc<dyn QueueStore>,
    /// Table operations.
    pub tables: Arc<dyn TableStore>,
    /// Blob operations.
    pub blobs: Arc<dyn BlobStore>,
}

/// Fresh storage for one behaviour.
#[derive(Debug, Clone)]
pub struct StorageUnderTest {
    /// The stores under test (possibly decorated).
    pub stores: Stores,
    /// The counters of the innermost store.
    pub counters: Arc<StorageCounters>,
    /// How to let time pass.
    pub time: TestTime,
    /// Unique lowercase alphanumeric prefix (starts with a letter, at most 40 characters).
    pub prefix: String,
}

impl StorageUnderTest {
    /// A queue name unique to this test.
    pub fn queue(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    /// A table name unique to this test.
    pub fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
    /// A container name unique to this test.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

/// Creates isolated storage for the suite.
#[async_trait]
pub trait StorageFactory: Send + Sync {
    /// Fresh storage for the behaviour `test`, or `None` to skip it (no emulator configured).
    async fn create(&self, test: &str) -> Option<StorageUnderTest>;
}

type Wrap = dyn Fn(Stores) -> Stores + Send + Sync;

/// [`InMemoryStorage`] on a manual clock, optionally under a decorator.
pub struct MemoryFactory {
    wrap: Box<Wrap>,
}

impl std::fmt::Debug for MemoryFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryFactory").finish_non_exhaustive()
    }
}

impl MemoryFactory {
    /// The stores as they are.
    pub fn plain() -> Self {
        Self::wrapped(|s| s)
    }

    /// The stores under the decorator `wrap` builds.
    pub fn wrapped(wrap: impl Fn(Stores) -> Stores + Send + Sync + 'static) -> Self {
        Self { wrap: Box::new(wrap) }
    }

    /// Under [`RetryingStorage`] with the default policy.
    pub fn retrying() -> Self {
        Self::wrapped(|s| {
            let r =
                Arc::new(RetryingStorage::new(s.queues, s.tables, s.blobs, RetryPolicy::default()));
            Stores { queues: r.clone(), tables: r.clone(), blobs: r }
        })
    }

    /// Under [`FaultyStorage`] with a plan that injects nothing.
    pub fn faulty_without_faults() -> Self {
        Self::wrapped(|s| {
            let f = Arc::new(FaultyStorage::new(s.queues, s.tables, s.blobs, FaultPlan::seeded(7)));
            Stores { queues: f.clone(), tables: f.clone(), blobs: f }
        })
    }

    /// Under [`ConcurrencyLimitedStorage`] with `max` permits.
    pub fn limited(max: usize) -> Self {
        Self::wrapped(move |s| {
            let l = Arc::new(ConcurrencyLimitedStorage::limited(s.queues, s.tables, s.blobs, max));
            Stores { queues: l.clone(), tables: l.clone(), blobs: l }
        })
    }
}

#[async_trait]
impl StorageFactory for MemoryFactory {
    async fn create(&self, _test: &str) -> Option<StorageUnderTest> {
        static N: AtomicU64 = AtomicU64::new(0);
        let clock = ManualClock::new(time::OffsetDateTime::now_utc());
        let mem = Arc::new(InMemoryStorage::with_clock(Arc::new(clock.clone())));
        let counters = mem.counters();
        let stores = (self.wrap)(Stores { queues: mem.clone(), tables: mem.clone(), blobs: mem });
        Some(StorageUnderTest {
            stores,
            counters,
            time: TestTime::Manual(clock),
            prefix: format!("mem{}", N.fetch_add(1, Ordering::Relaxed)),
        })
    }
}

/// Generates one `#[tokio::test]` per storage behaviour for the given [`StorageFactory`]
/// expression (evaluated once per test).
#[macro_export]
macro_rules! storage_conformance_tests {
    ($factory:expr) => {
        $crate::storage_conformance_tests!(@each $factory;
            queue_admin_is_idempotent_and_missing_queues_are_not_found,
            queue_receive_hides_and_redelivers,
            queue_visibility_rounds_up_to_whole_seconds,
            queue_stale_pop_receipts_are_refused,
            queue_update_changes_text_and_visibility,
            queue_visible_messages_come_in_order,
            queue_count_includes_invisible_messages,
            queue_message_size_limit,
            queue_receive_batch_limits,
            queue_redelivery_order,
            queue_visibility_limit,
            queue_peek_reads_without_receiving,
            table_admin_is_idempotent_and_missing_tables_are_not_found,
            table_write_modes,
            table_batch_guarded_by_sentinel_etag,
            table_batch_is_atomic_and_returns_etags_in_order,
            table_client_side_limits,
            table_query_filters,
            table_query_select_top_and_continuation,
            table_property_types_round_trip,
            table_batch_refuses_duplicate_rows,
            table_service_side_limits,
            blob_put_get_delete_list,
            blob_lease_excludes_a_second_owner,
            blob_lease_outcomes,
            blob_lease_expiry,
            blob_lease_edge_cases,
            calls_are_counted_by_kind,
            invalid_resource_names_are_refused,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let factory = $factory;
                $crate::storage::conformance::$name(&factory).await;
            }
        )*
    };
}

/// The storage for `test`, or return (skip).
macro_rules! sut {
    ($factory:expr, $test:literal) => {
        match $factory.create($test).await {
            Some(s) => s,
            None => return,
        }
    };
}
pub(crate) use sut;

/// Counts by kind across all three stores: shows every call of one behaviour.
pub async fn calls_are_counted_by_kind(f: &dyn StorageFactory) {
    use super::{BatchOp, StorageOp, TableEntity, WriteMode};
    let s = sut!(f, "storage::calls_are_counted_by_kind");
    let (q, t, c) = (s.queue("q"), s.table("t"), s.container("c"));
    let st = &s.stores;
    let before = s.counters.snapshot();
    st.queues.create_queue_if_not_exists(&q).await.unwrap();
    st.queues.put_message(&q, "a", Duration::ZERO).await.unwrap();
    st.queues.put_message(&q, "b", Duration::ZERO).await.unwrap();
    let msgs = st.queues.get_messages(&q, 32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        st.queues.delete_message(&q, &m.id, &m.pop_receipt).await.unwrap();
    }
    st.queues.approximate_message_count(&q).await.unwrap();
    // Refused client-side: not counted.
    st.queues.get_messages(&q, 0, Duration::from_secs(1)).await.unwrap_err();

    st.tables.create_table_if_not_exists(&t).await.unwrap();
    let e = TableEntity::new("p", "r");
    st.tables.write(&t, BatchOp { mode: WriteMode::Upsert, entity: e.clone() }).await.unwrap();
    st.tables
        .batch(&t, vec![BatchOp { mode: WriteMode::Upsert, entity: e.clone() }])
        .await
        .unwrap();
    assert!(st.tables.batch(&t, Vec::new()).await.unwrap().is_empty()); // nothing sent
    st.tables.get_entity(&t, "p", "r").await.unwrap();
    st.tables.query(&t, None, None, None, None).await.unwrap();

    st.blobs.create_container_if_not_exists(&c).await.unwrap();
    st.blobs.put_blob(&c, "x", b"1".to_vec(), None).await.unwrap();
    st.blobs.get_blob(&c, "x").await.unwrap();
    let lease = "44444444-4444-4444-4444-444444444444";
    st.blobs.acquire_lease(&c, "x", Duration::from_secs(15), lease).await.unwrap();
    st.blobs.release_lease(&c, "x", lease).await.unwrap();
    st.blobs.renew_lease(&c, "x", "not-a-guid").await.unwrap_err(); // client-side
    st.blobs.list_blobs(&c, "").await.unwrap();
    st.blobs.delete_blob_if_exists(&c, "x").await.unwrap();

    let d = s.counters.snapshot().since(&before);
    assert_eq!(
        d.non_zero(),
        vec![
            (StorageOp::QueueAdmin, 2),
            (StorageOp::QueuePut, 2),
            (StorageOp::QueueGet, 1),
            (StorageOp::QueueDelete, 2),
            (StorageOp::TableAdmin, 1),
            (StorageOp::TableQuery, 2),
            (StorageOp::TableBatch, 1),
            (StorageOp::TableWrite, 1),
            (StorageOp::BlobAdmin, 1),
            (StorageOp::BlobPut, 1),
            (StorageOp::BlobGet, 1),
            (StorageOp::BlobDelete, 1),
            // One page and the poll that finds no further page.
            (StorageOp::BlobList, 2),
            (StorageOp::BlobLease, 2),
        ]
    );
    st.queues.delete_queue_if_exists(&q).await.unwrap();
    st.tables.delete_table_if_exists(&t).await.unwrap();
    st.blobs.delete_container_if_exists(&c).await.unwrap();
}

/// Creating a queue, table or container with a name the service does not allow is refused.
pub async fn invalid_resource_names_are_refused(f: &dyn StorageFactory) {
    use super::StorageErrorKind::InvalidInput;
    let s = sut!(f, "storage::invalid_resource_names");
    let st = &s.stores;
    let long = "a".repeat(64);
    for name in ["Bad-Name", "a--b", "ab", "-ab", "ab-", "a_b", long.as_str()] {
        let q = st.queues.create_queue_if_not_exists(name).await.unwrap_err();
        let c = st.blobs.create_container_if_not_exists(name).await.unwrap_err();
        assert_eq!((q.kind(), c.kind()), (InvalidInput, InvalidInput), "{name:?}: {q} / {c}");
    }
    for name in ["1abc", "ab", "a-b", "a_b", long.as_str(), "tables"] {
        let e = st.tables.create_table_if_not_exists(name).await.unwrap_err();
        assert_eq!(e.kind(), InvalidInput, "{name:?}: {e}");
    }
    // Mixed case is fine for tables (names are case-insensitive).
    let mixed = format!("Mixed{}", s.table("Case"));
    st.tables.create_table_if_not_exists(&mixed).await.unwrap();
    st.tables.delete_table_if_exists(&mixed).await.unwrap();
}

#[cfg(test)]
mod tests {
    mod memory {
        crate::storage_conformance_tests!(crate::storage::conformance::MemoryFactory::plain());
    }
    mod retrying {
        crate::storage_conformance_tests!(crate::storage::conformance::MemoryFactory::retrying());
    }
    mod faulty_without_faults {
        crate::storage_conformance_tests!(
            crate::storage::conformance::MemoryFactory::faulty_without_faults()
        );
    }
    mod limited {
        crate::storage_conformance_tests!(crate::storage::conformance::MemoryFactory::limited(2));
    }
}
