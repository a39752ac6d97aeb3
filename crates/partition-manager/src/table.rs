//! The table partition manager (DTF V3 `TablePartitionManager`), without .NET's re-attach bug:
//! a worker listens only to rows where it is `CurrentOwner` and not draining.

use crate::core::{Core, Drain, Runner, pause};
use crate::store::{PartitionRow, PartitionTableStore, StoreError, StoreResult};
use crate::{
    ManagerKind, Partition, PartitionListener, PartitionManager, PartitionOwner, Result, timed,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TablePartitionManager {
    inner: Arc<Inner>,
    runner: Runner,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    store: Arc<dyn PartitionTableStore>,
}

/// What a pass found.
struct PassOutcome {
    /// Draining, or waiting for another worker's release: come back soon.
    busy: bool,
}

impl TablePartitionManager {
    pub(crate) fn new(core: Arc<Core>, store: Arc<dyn PartitionTableStore>) -> Self {
        Self { inner: Arc::new(Inner { core, store }), runner: Runner::new() }
    }
}

#[async_trait]
impl PartitionManager for TablePartitionManager {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Table
    }

    fn worker_id(&self) -> &str {
        self.inner.core.me()
    }

    async fn create_lease_store(&self) -> Result<()> {
        let op = self.inner.core.settings.operation_timeout;
        timed(op, self.inner.store.create_if_not_exists()).await?;
        for p in &self.inner.core.partitions {
            timed(op, self.inner.store.insert_empty(&p.control_queue)).await?;
        }
        Ok(())
    }

    async fn delete_lease_store(&self) -> Result<()> {
        let op = self.inner.core.settings.operation_timeout;
        Ok(timed(op, self.inner.store.delete_if_exists()).await?)
    }

    async fn start(&self, listener: Arc<dyn PartitionListener>) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let shutdown = self.runner.subscribe();
        self.runner.start(&self.inner.core, listener, inner.run(shutdown))
    }

    async fn stop(&self, timeout: Duration) -> Result<()> {
        self.runner.stop(&self.inner.core, timeout).await
    }

    fn abort(&self) {
        self.runner.abort(&self.inner.core);
    }

    fn is_owned(&self, control_queue: &str) -> bool {
        self.inner.core.is_owned(control_queue)
    }

    fn is_held(&self, control_queue: &str) -> bool {
        self.inner.core.is_held(control_queue)
    }

    fn owned_partitions(&self) -> Vec<Partition> {
        self.inner.core.owned_partitions()
    }

    async fn owners(&self) -> Result<Vec<PartitionOwner>> {
        let op = self.inner.core.settings.operation_timeout;
        let rows = timed(op, self.inner.store.list()).await?;
        Ok(self
            .inner
            .core
            .partitions
            .iter()
            .map(|p| {
                let row = rows.iter().find(|r| r.row_key == p.control_queue);
                PartitionOwner {
                    control_queue: p.control_queue.clone(),
                    owner: row.and_then(|r| r.current_owner.clone()),
                    next_owner: row.and_then(|r| r.next_owner.clone()),
                    expires_at: row.and_then(|r| r.expires_at),
                }
            })
            .collect())
    }
}

impl Inner {
    fn interval(&self) -> Duration {
        let s = &self.core.settings;
        s.lease_renew_interval.min(s.lease_acquire_interval)
    }

    async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let stopping = *shutdown.borrow();
            let delay = match self.pass(stopping).await {
                Ok(_) if stopping && self.core.owned_count() == 0 => break,
                Ok(outcome) => {
                    failures = 0;
                    if outcome.busy || stopping {
                        self.interval().min(Duration::from_secs(1))
                    } else {
                        self.interval()
                    }
                }
                Err(e) => {
                    failures += 1;
                    let retry_soon = matches!(e, StoreError::LostRace(_)) || failures < 10;
                    if matches!(e, StoreError::LostRace(_)) {
                        self.core.info("PartitionManagerInfo", "", &format!("re-reading: {e}"));
                    } else {
                        self.core.warn("PartitionManagerWarning", "", &format!("pass failed: {e}"));
                    }
                    if retry_soon { self.interval() / 10 } else { self.interval() }
                }
            };
            pause(&self.core, &mut shutdown, delay).await;
        }
    }

    async fn write(&self, row: &PartitionRow) -> StoreResult<Instant> {
        let sent = self.core.clock.monotonic();
        timed(self.core.settings.operation_timeout, self.store.replace(row)).await?;
        Ok(sent)
    }

    fn renewed_row(&self, row: &PartitionRow, draining: bool) -> PartitionRow {
        let now = self.core.clock.now();
        PartitionRow {
            last_renewal: Some(now),
            expires_at: Some(now + self.core.settings.lease_interval),
            is_draining: draining,
            ..row.clone()
        }
    }

    /// One read of all rows and at most one conditional write per row. Any failed write aborts
    /// the pass (the caller re-reads soon).
    async fn pass(&self, stopping: bool) -> StoreResult<PassOutcome> {
        let op = self.core.settings.operation_timeout;
        let mut rows = timed(op, self.store.list()).await?;
        rows.retain(|r| self.core.partition(&r.row_key).is_some());
        rows.sort_by(|a, b| a.row_key.cmp(&b.row_key));
        let me = self.core.me().to_owned();
        let now = self.core.clock.now();
        let mut busy = false;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut my_count = 0usize;
        let mut stealable: Vec<&PartitionRow> = Vec::new();

        // DropLostControlQueue: anything we hold locally that storage gives to someone else.
        for row in &rows {
            if row.current_owner.as_deref() != Some(me.as_str())
                && self.core.drain_state(&row.row_key).is_some()
            {
                let owner = row.current_owner.as_deref().unwrap_or("nobody");
                self.core.lose(&row.row_key, &format!("CurrentOwner is now {owner}")).await;
            }
        }

        for row in &rows {
            let q = row.row_key.as_str();
            let mine = row.current_owner.as_deref() == Some(me.as_str());
            let expired = row.expires_at.is_none_or(|e| now >= e);
            if mine {
                let counted = self.my_row(row, stopping, &mut busy).await?;
                if counted {
                    my_count += 1;
                }
                continue;
            }
            if stopping {
                continue;
            }
            let next_is_me = row.next_owner.as_deref() == Some(me.as_str());
            let claimable = match &row.current_owner {
                None => row.next_owner.is_none() || next_is_me || expired,
                Some(_) => expired,
            };
            if claimable {
                let claimed = PartitionRow {
                    current_owner: Some(me.clone()),
                    next_owner: None,
                    owned_since: Some(now),
                    is_draining: false,
                    ..self.renewed_row(row, false)
                };
                let sent = self.write(&claimed).await?;
                let how =
                    if next_is_me { "LeaseStealingSucceeded" } else { "LeaseAcquisitionSucceeded" };
                self.core.acquired(q, sent, how).await;
                my_count += 1;
                continue;
            }
            match (&row.current_owner, &row.next_owner) {
                (Some(owner), None) if row.is_draining => {
                    // The owner is shutting down: ask for the partition.
                    let steal = PartitionRow { next_owner: Some(me.clone()), ..row.clone() };
                    self.write(&steal).await?;
                    self.core.info(
                        "AttemptingToStealLease",
                        q,
                        &format!("{owner} is shutting down; waiting for its release"),
                    );
                    my_count += 1;
                    busy = true;
                }
                (Some(owner), None) => {
                    *counts.entry(owner.clone()).or_default() += 1;
                    stealable.push(row);
                }
                (_, Some(_)) if next_is_me => {
                    my_count += 1;
                    busy = true;
                }
                (_, Some(next)) => *counts.entry(next.clone()).or_default() += 1,
                (None, None) => {}
            }
        }

        if !stopping {
            self.balance(&counts, my_count, &stealable).await?;
        }
        Ok(PassOutcome { busy })
    }

    /// Handles a row whose `CurrentOwner` is this worker; returns whether it counts toward our
    /// share.
    async fn my_row(
        &self,
        row: &PartitionRow,
        stopping: bool,
        busy: &mut bool,
    ) -> StoreResult<bool> {
        let q = row.row_key.as_str();
        let local = self.core.drain_state(q);
        let release = |row: &PartitionRow| PartitionRow {
            current_owner: None,
            is_draining: false,
            ..row.clone()
        };
        let hand_over = stopping || row.next_owner.is_some();
        match local {
            None if hand_over => {
                // Ours in storage but not listened to (e.g. self-fenced): nothing to drain.
                self.write(&release(row)).await?;
                self.core.info("LeaseReleased", q, "released a partition we were not listening to");
                Ok(false)
            }
            None => {
                // Ours in storage and still valid (restart or renewal after a self-fence):
                // the conditional write proves nobody else took it in between.
                let sent = self.write(&self.renewed_row(row, false)).await?;
                self.core.acquired(q, sent, "LeaseAcquisitionSucceeded").await;
                Ok(true)
            }
            Some(Drain::No) if hand_over => {
                let sent = self.write(&self.renewed_row(row, true)).await?;
                self.core.renewed(q, sent).await;
                let reason = match &row.next_owner {
                    Some(next) if !stopping => format!("{next} is stealing it"),
                    _ => "shutting down".to_owned(),
                };
                self.core.start_drain(q, &reason);
                *busy = true;
                Ok(false)
            }
            Some(Drain::No) => {
                let sent = self.write(&self.renewed_row(row, false)).await?;
                self.core.renewed(q, sent).await;
                Ok(true)
            }
            Some(Drain::Running) => {
                let sent = self.write(&self.renewed_row(row, true)).await?;
                self.core.renewed(q, sent).await;
                *busy = true;
                Ok(false)
            }
            Some(Drain::Done) => {
                self.write(&release(row)).await?;
                self.core.released(q);
                Ok(false)
            }
        }
    }

    /// DTF `BalanceLeasesAsync`: steal from owners above the average.
    async fn balance(
        &self,
        counts: &BTreeMap<String, usize>,
        my_count: usize,
        stealable: &[&PartitionRow],
    ) -> StoreResult<()> {
        let total = self.core.partitions.len();
        let avg = total / (counts.len() + 1);
        if my_count > avg {
            return Ok(());
        }
        let mut wanted = avg - my_count;
        let me = self.core.me().to_owned();
        for (owner, &count) in counts {
            if count <= avg {
                continue;
            }
            let excess = count - avg;
            let n = if wanted == 0 { usize::from(excess > 1) } else { wanted.min(excess) };
            let rows = stealable.iter().filter(|r| r.current_owner.as_ref() == Some(owner));
            for row in rows.take(n) {
                let steal = PartitionRow { next_owner: Some(me.clone()), ..(*row).clone() };
                self.write(&steal).await?;
                self.core.info(
                    "LeaseStealingSucceeded",
                    &row.row_key,
                    &format!("asked {owner} to hand the partition over (NextOwner set)"),
                );
                wanted = wanted.saturating_sub(1);
            }
        }
        Ok(())
    }
}
