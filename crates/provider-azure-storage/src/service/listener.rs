//! The partition listener: reacts to the partition manager by starting a poller on an acquired
//! partition, and on a drain or a loss stopping it and releasing everything buffered or
//! prepared for it at once (a stopped poller is never aborted: a receive in flight completes and
//! what it took is released).

use super::Inner;
use super::buffer::{Poller, locked};
use super::messages::release_messages;
use super::perr;
use super::poller::poll_loop;
use async_trait::async_trait;
use durabletask_core::{ProviderError, ProviderErrorKind};
use durabletask_partition_manager::{Partition, PartitionListener};
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Reacts to the partition manager: start, drain and drop control-queue pollers.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) inner: Weak<Inner>,
}

impl Listener {
    fn stop_poller(inner: &Inner, queue: &str) {
        let poller = locked(&inner.control.pollers).remove(queue);
        inner.control.forget_poller(queue);
        if let Some(p) = poller {
            p.stop(inner, queue);
        }
    }

    /// Drops everything buffered or prepared for `queue` (messages become visible again) and the
    /// cached histories of its instances.
    fn drop_queue_state(inner: &Arc<Inner>, queue: &str) {
        let mut released = Vec::new();
        {
            let mut b = inner.control.lock();
            let instances: Vec<String> = b
                .pending
                .iter()
                .filter(|(_, v)| v.first().is_some_and(|m| m.queue == queue))
                .map(|(k, _)| k.clone())
                .collect();
            for i in instances {
                if let Some(v) = b.pending.remove(&i) {
                    for m in &v {
                        b.unhold(&m.id);
                    }
                    released.extend(v);
                }
            }
            let mut keep = VecDeque::new();
            let mut finished = Vec::new();
            while let Some(p) = b.prepared.pop_front() {
                if p.queue == queue {
                    finished.push(p.instance_id.clone());
                    for m in &p.messages {
                        b.unhold(&m.id);
                    }
                    released.extend(p.messages);
                } else {
                    keep.push_back(p);
                }
            }
            b.prepared = keep;
            for i in finished {
                b.busy.remove(&i);
            }
            b.cache.retain(|_, c| c.queue != queue);
        }
        release_messages(inner, released);
    }

    fn busy_on(inner: &Inner, queue: &str) -> usize {
        inner.control.lock().busy.values().filter(|b| b.queue == queue).count()
    }
}

#[async_trait]
impl PartitionListener for Listener {
    async fn on_acquired(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        let queue = partition.control_queue.clone();
        tracing::info!(queue = %queue, "PartitionManagerInfo: listening to control queue");
        let cancel = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(poll_loop(
            Arc::downgrade(&inner),
            queue.clone(),
            partition.index,
            cancel.clone(),
        ));
        let old = locked(&inner.control.pollers).insert(queue, Poller { cancel, _task: task });
        if let Some(old) = old {
            old.stop(&inner, &partition.control_queue);
        }
    }

    async fn drain(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        let queue = &partition.control_queue;
        tracing::info!(queue = %queue, "PartitionManagerInfo: draining control queue");
        Self::stop_poller(&inner, queue);
        Self::drop_queue_state(&inner, queue);
        while Self::busy_on(&inner, queue) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Prepared items may have been queued by prefetches that were in flight.
            Self::drop_queue_state(&inner, queue);
        }
    }

    async fn on_fenced(&self, partition: &Partition) {
        tracing::warn!(
            queue = %partition.control_queue,
            "PartitionManagerWarning: control queue fenced (lease renewal overdue); no receives or checkpoints until it is renewed, buffered work kept"
        );
    }

    async fn on_resumed(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        tracing::info!(queue = %partition.control_queue, "PartitionManagerInfo: control queue resumed after a fence");
        inner.control.wake(partition.index);
        inner.control.ready.notify_waiters();
    }

    async fn on_lost(&self, partition: &Partition) {
        let Some(inner) = self.inner.upgrade() else { return };
        let queue = &partition.control_queue;
        tracing::warn!(queue = %queue, "PartitionManagerWarning: control queue lost; abandoning its buffered work");
        Self::stop_poller(&inner, queue);
        Self::drop_queue_state(&inner, queue);
    }
}

/// Stops every poller (provider shutdown).
pub(crate) fn stop_all_pollers(inner: &Inner) {
    let pollers: Vec<(String, Poller)> = locked(&inner.control.pollers).drain().collect();
    locked(&inner.control.activity).clear();
    for (queue, p) in pollers {
        p.stop(inner, &queue);
    }
    inner.control.ready.notify_waiters();
}

/// Error for a work item whose partition is gone.
pub(crate) fn lease_lost(op: &'static str, queue: &str) -> ProviderError {
    perr(
        ProviderErrorKind::LeaseLost,
        op,
        format!("partition {queue} is no longer owned by this worker"),
    )
}
