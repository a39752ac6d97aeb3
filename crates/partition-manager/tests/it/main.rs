//! Integration tests of the partition managers over the in-memory stores, in paused tokio time
//! (deterministic and fast even with the DTF default intervals).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod blob;
mod conformance;
mod lifecycle;
mod table;
mod tracing_events;

use durabletask_partition_manager::clock::{Clock, TokioClock};
use durabletask_partition_manager::conformance::{Recorder, RecordingListener};
use durabletask_partition_manager::memory::{InMemoryLeaseBlobs, InMemoryPartitionTable};
use durabletask_partition_manager::{
    LeaseStores, ManagerKind, PartitionManager, PartitionManagerSettings,
};
use std::sync::Arc;
use std::time::Duration;

/// In-memory stores of one hub, kept concrete so tests can inspect them.
pub(crate) struct Hub {
    pub(crate) table: Arc<InMemoryPartitionTable>,
    pub(crate) blobs: Arc<InMemoryLeaseBlobs>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) recorder: Arc<Recorder>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        Self {
            table: InMemoryPartitionTable::new(),
            blobs: InMemoryLeaseBlobs::new(Arc::clone(&clock)),
            clock,
            recorder: Recorder::new(true),
        }
    }

    pub(crate) fn settings(&self, worker: &str, partitions: u8) -> PartitionManagerSettings {
        let mut s = PartitionManagerSettings::new("MemHub");
        s.worker_id = worker.into();
        s.partition_count = partitions;
        s
    }

    /// A started manager reporting to the hub's recorder with drains taking `drain`.
    pub(crate) async fn worker(
        &self,
        kind: ManagerKind,
        settings: PartitionManagerSettings,
        drain: Duration,
    ) -> Arc<dyn PartitionManager> {
        let stores = LeaseStores { table: self.table.clone(), blobs: self.blobs.clone() };
        let id = settings.worker_id.clone();
        let m = durabletask_partition_manager::create(kind, settings, stores, self.clock.clone())
            .unwrap();
        m.create_lease_store().await.unwrap();
        let listener: Arc<RecordingListener> = self.recorder.listener(&id, drain);
        m.start(listener).await.unwrap();
        m
    }
}

/// Polls `cond` every 100 ms (virtual time) until true; panics after `timeout`.
pub(crate) async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not reached within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
