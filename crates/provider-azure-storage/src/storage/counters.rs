//! Counts of storage operations by kind, so tests and benchmarks can see what a workload costs.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of storage operation the provider counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StorageOp {
    /// Queue create/delete/metadata.
    QueueAdmin,
    /// Put Message.
    QueuePut,
    /// Get Messages (one call, any number of messages).
    QueueGet,
    /// Delete Message.
    QueueDelete,
    /// Update Message (visibility / renew / abandon).
    QueueUpdate,
    /// Table create/delete.
    TableAdmin,
    /// Point read or one page of a query.
    TableQuery,
    /// Entity-group transaction.
    TableBatch,
    /// Single-entity insert/update/merge/delete.
    TableWrite,
    /// Container create/delete.
    BlobAdmin,
    /// Blob upload.
    BlobPut,
    /// Blob download.
    BlobGet,
    /// Blob delete.
    BlobDelete,
    /// Blob listing page.
    BlobList,
    /// Lease acquire/renew/release/change.
    BlobLease,
}

impl StorageOp {
    /// Every kind, in display order.
    pub const ALL: [StorageOp; 15] = [
        StorageOp::QueueAdmin,
        StorageOp::QueuePut,
        StorageOp::QueueGet,
        StorageOp::QueueDelete,
        StorageOp::QueueUpdate,
        StorageOp::TableAdmin,
        StorageOp::TableQuery,
        StorageOp::TableBatch,
        StorageOp::TableWrite,
        StorageOp::BlobAdmin,
        StorageOp::BlobPut,
        StorageOp::BlobGet,
        StorageOp::BlobDelete,
        StorageOp::BlobList,
        StorageOp::BlobLease,
    ];

    /// A short stable name, e.g. `queue.put`.
    pub fn name(self) -> &'static str {
        match self {
            StorageOp::QueueAdmin => "queue.admin",
            StorageOp::QueuePut => "queue.put",
            StorageOp::QueueGet => "queue.get",
            StorageOp::QueueDelete => "queue.delete",
            StorageOp::QueueUpdate => "queue.update",
            StorageOp::TableAdmin => "table.admin",
            StorageOp::TableQuery => "table.query",
            StorageOp::TableBatch => "table.batch",
            StorageOp::TableWrite => "table.write",
            StorageOp::BlobAdmin => "blob.admin",
            StorageOp::BlobPut => "blob.put",
            StorageOp::BlobGet => "blob.get",
            StorageOp::BlobDelete => "blob.delete",
            StorageOp::BlobList => "blob.list",
            StorageOp::BlobLease => "blob.lease",
        }
    }
}

/// Thread-safe operation counters (one per [`StorageOp`]), counting calls made, successful or not.
#[derive(Debug, Default)]
pub struct StorageCounters {
    counts: [AtomicU64; StorageOp::ALL.len()],
}

impl StorageCounters {
    /// Records one call of `op`.
    pub fn record(&self, op: StorageOp) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A point-in-time copy of all counters.
    pub fn snapshot(&self) -> StorageOpCounts {
        StorageOpCounts { counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)) }
    }
}

/// A snapshot of [`StorageCounters`]; subtract two snapshots to cost a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageOpCounts {
    counts: [u64; StorageOp::ALL.len()],
}

impl StorageOpCounts {
    /// Calls of `op`.
    pub fn get(&self, op: StorageOp) -> u64 {
        self.counts[op as usize]
    }
    /// All calls.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// `(op, count)` for every kind with a non-zero count.
    pub fn non_zero(&self) -> Vec<(StorageOp, u64)> {
        StorageOp::ALL.iter().map(|op| (*op, self.get(*op))).filter(|(_, n)| *n > 0).collect()
    }
    /// Counts accumulated since `earlier`.
    pub fn since(&self, earlier: &StorageOpCounts) -> StorageOpCounts {
        StorageOpCounts {
            counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_differences() {
        let c = StorageCounters::default();
        c.record(StorageOp::QueuePut);
        let before = c.snapshot();
        c.record(StorageOp::QueuePut);
        c.record(StorageOp::TableBatch);
        let delta = c.snapshot().since(&before);
        assert_eq!(delta.get(StorageOp::QueuePut), 1);
        assert_eq!(delta.get(StorageOp::TableBatch), 1);
        assert_eq!(delta.total(), 2);
        assert_eq!(c.snapshot().get(StorageOp::QueuePut), 2);
        assert_eq!(delta.non_zero(), vec![(StorageOp::QueuePut, 1), (StorageOp::TableBatch, 1)]);
    }

    #[test]
    fn all_lists_every_kind_at_its_index() {
        for (i, op) in StorageOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{}", op.name());
        }
    }
}
