//! Lock data of work items: an orchestration work item's session (its messages, the ETags and
//! blobs its checkpoint writes under) and an activity's message lock.

use super::buffer::{self, Buffered};
use super::listener;
use super::tracking;
use super::{CrashPoint, Inner, perr};
use durabletask_core::{LockToken, ProviderError, ProviderErrorKind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Lock data of an orchestration work item.
#[derive(Debug)]
pub(crate) struct SessionToken {
    pub(crate) queue: String,
    pub(crate) messages: Mutex<Vec<Buffered>>,
    pub(crate) sentinel_etag: Option<String>,
    pub(crate) instance_etag: Option<String>,
    pub(crate) instance_exists: bool,
    pub(crate) history_blobs: Vec<String>,
    pub(crate) row_blobs: Option<tracking::RowBlobs>,
    pub(crate) history_from_storage: bool,
    pub(crate) finished: AtomicBool,
    pub(crate) crashed: AtomicBool,
}

impl SessionToken {
    /// `LeaseLost` unless this work item is still held: not yet released, and its partition
    /// still owned by this worker. While the partition is fenced (a renewal is overdue, storage
    /// slow) this waits: the renewal resumes it, or the loss answers `LeaseLost`. A slow store
    /// then delays the checkpoint instead of failing it and re-running the episode.
    pub(crate) async fn check_held(
        &self,
        inner: &Inner,
        op: &'static str,
    ) -> Result<(), ProviderError> {
        loop {
            if self.finished.load(Ordering::Acquire) {
                return Err(perr(
                    ProviderErrorKind::LeaseLost,
                    op,
                    "the work item was already released",
                ));
            }
            if inner.partitions.is_owned(&self.queue) {
                return Ok(());
            }
            if !inner.partitions.is_held(&self.queue)
                || inner.control.stopped.load(Ordering::Acquire)
            {
                return Err(listener::lease_lost(op, &self.queue));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn messages(&self) -> std::sync::MutexGuard<'_, Vec<Buffered>> {
        buffer::locked(&self.messages)
    }
}

/// Lock data of an activity work item.
#[derive(Debug)]
pub(crate) struct ActivityToken {
    pub(crate) id: String,
    pub(crate) pop_receipt: Mutex<String>,
    pub(crate) text: String,
    pub(crate) locked_until: Mutex<OffsetDateTime>,
    pub(crate) _active: ActiveGuard,
}

/// Counts a locked activity work item until its token is dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard(pub(crate) Arc<std::sync::atomic::AtomicUsize>);

impl ActiveGuard {
    pub(crate) fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Work-item queue state: prefetched messages and the poll back-off.
#[derive(Debug, Default)]
pub(crate) struct ActivityState {
    pub(crate) buffer: tokio::sync::Mutex<VecDeque<crate::storage::ReceivedMessage>>,
    pub(crate) wake: Notify,
    pub(crate) misses: std::sync::atomic::AtomicU32,
    pub(crate) stopped: AtomicBool,
    /// Activity work items locked and not yet dropped.
    pub(crate) active: Arc<std::sync::atomic::AtomicUsize>,
}

pub(crate) fn token<'a>(
    t: &'a LockToken,
    op: &'static str,
) -> Result<&'a SessionToken, ProviderError> {
    t.downcast_ref::<SessionToken>().ok_or_else(|| {
        perr(ProviderErrorKind::InvalidInput, op, "work item was not issued by this provider")
    })
}

pub(crate) fn activity_token<'a>(
    t: &'a LockToken,
    op: &'static str,
) -> Result<&'a ActivityToken, ProviderError> {
    t.downcast_ref::<ActivityToken>().ok_or_else(|| {
        perr(ProviderErrorKind::InvalidInput, op, "work item was not issued by this provider")
    })
}

pub(crate) fn crashed(op: &'static str, point: CrashPoint) -> ProviderError {
    perr(ProviderErrorKind::Transient, op, format!("injected crash at {point:?}"))
}

impl Inner {
    pub(crate) fn crash(&self, point: CrashPoint, instance_id: &str) -> bool {
        self.crash_hook.as_ref().is_some_and(|h| h.crash_at(point, instance_id))
    }

    pub(crate) fn next_sequence(&self) -> i64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }
}
