//! The conformance suite over in-memory stores, for every variant.

use durabletask_partition_manager::clock::{Clock, TokioClock};
use durabletask_partition_manager::conformance::{self as suite, ConformanceConfig};
use durabletask_partition_manager::memory::{InMemoryLeaseBlobs, InMemoryPartitionTable};
use durabletask_partition_manager::{LeaseStores, ManagerKind, PartitionManagerSettings};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn config(kind: ManagerKind, partitions: u8) -> ConformanceConfig {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut settings = PartitionManagerSettings::new("MemHub");
    settings.partition_count = partitions;
    ConformanceConfig {
        kind,
        settings,
        stores: LeaseStores {
            table: InMemoryPartitionTable::new(),
            blobs: InMemoryLeaseBlobs::new(Arc::clone(&clock)),
        },
        clock,
        drain_delay: Duration::from_secs(2),
    }
}

macro_rules! variant {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(start_paused = true)]
            async fn one_two_four_workers_converge_over_4_and_16_partitions() {
                for partitions in [4, 16] {
                    for workers in [1, 2, 4] {
                        suite::converges(&config($kind, partitions), workers).await;
                    }
                }
            }

            #[tokio::test(start_paused = true)]
            async fn joining_and_leaving_workers_rebalance() {
                suite::rebalances_when_workers_join_and_leave(&config($kind, 4)).await;
            }

            #[tokio::test(start_paused = true)]
            async fn killed_worker_is_taken_over_after_expiry() {
                suite::killed_worker_is_taken_over_after_expiry(&config($kind, 4)).await;
            }

            #[tokio::test(start_paused = true)]
            async fn stalled_worker_does_not_take_partitions_back() {
                suite::stalled_worker_does_not_take_partitions_back(&config($kind, 4)).await;
            }

            #[tokio::test(start_paused = true)]
            async fn fenced_worker_resumes_when_storage_answers() {
                suite::fenced_worker_resumes_when_storage_answers(&config($kind, 4)).await;
            }

            #[tokio::test(start_paused = true)]
            async fn lost_write_answers_do_not_block_partitions() {
                suite::lost_write_answers_do_not_block_partitions(&config($kind, 4)).await;
            }

            #[tokio::test(start_paused = true)]
            async fn graceful_stop_hands_over_without_expiry_wait() {
                suite::graceful_stop_hands_over_without_expiry_wait(&config($kind, 4)).await;
            }
        }
    };
}

variant!(table, ManagerKind::Table);
variant!(safe_blob, ManagerKind::SafeBlob);
variant!(legacy_blob, ManagerKind::LegacyBlob);
