//! The blob-lease partition managers: safe (DTF V2, `intent/` + `ownership/`) and legacy
//! (DTF V1, `default/`), over one lease balancer modelled on DTF's `LeaseCollectionBalancer`.
//!
//! Whether a lease held by another worker has expired is found out by trying to acquire it (the
//! store has no lease-state query): a success means its owner stopped renewing. Such a lease is
//! kept when this worker needs it and otherwise released at once (body `Owner: null`), so that
//! dead owners stop counting toward the balance.

use crate::core::{Core, Drain, Runner, lock, pause};
use crate::store::{LeaseBlobStore, LeaseBody, StoreError, StoreResult};
use crate::{
    ManagerKind, Partition, PartitionListener, PartitionManager, PartitionOwner, Result, timed,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const INTENT: &str = "intent/";
const OWNERSHIP: &str = "ownership/";
const DEFAULT: &str = "default/";

#[derive(Debug)]
pub(crate) struct BlobPartitionManager {
    inner: Arc<Inner>,
    runner: Runner,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    store: Arc<dyn LeaseBlobStore>,
    /// Intent leases (safe variant only).
    intent: LeaseSet,
    /// Ownership leases (safe) or default leases (legacy): holding one means listening.
    owner: LeaseSet,
}

#[derive(Debug, Clone)]
struct Held {
    lease_id: String,
    epoch: i64,
}

#[derive(Debug)]
struct LeaseSet {
    prefix: &'static str,
    held: Mutex<BTreeMap<String, Held>>,
}

impl LeaseSet {
    fn new(prefix: &'static str) -> Self {
        Self { prefix, held: Mutex::new(BTreeMap::new()) }
    }
    fn get(&self, q: &str) -> Option<Held> {
        lock(&self.held).get(q).cloned()
    }
    fn holds(&self, q: &str) -> bool {
        lock(&self.held).contains_key(q)
    }
    fn queues(&self) -> Vec<String> {
        lock(&self.held).keys().cloned().collect()
    }
    fn insert(&self, q: &str, held: Held) {
        lock(&self.held).insert(q.into(), held);
    }
    fn remove(&self, q: &str) -> Option<Held> {
        lock(&self.held).remove(q)
    }
}

impl BlobPartitionManager {
    pub(crate) fn new(core: Arc<Core>, store: Arc<dyn LeaseBlobStore>) -> Self {
        let owner_prefix = if core.kind == ManagerKind::SafeBlob { OWNERSHIP } else { DEFAULT };
        Self {
            inner: Arc::new(Inner {
                core,
                store,
                intent: LeaseSet::new(INTENT),
                owner: LeaseSet::new(owner_prefix),
            }),
            runner: Runner::new(),
        }
    }
}

#[async_trait]
impl PartitionManager for BlobPartitionManager {
    fn kind(&self) -> ManagerKind {
        self.inner.core.kind
    }

    fn worker_id(&self) -> &str {
        self.inner.core.me()
    }

    async fn create_lease_store(&self) -> Result<()> {
        let inner = &self.inner;
        let op = inner.core.settings.operation_timeout;
        timed(op, inner.store.create_container_if_not_exists()).await?;
        let hub = serde_json::json!({
            "TaskHubName": inner.core.settings.task_hub,
            "CreatedAt": inner.core.clock.now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "PartitionCount": inner.core.settings.partition_count,
        });
        if timed(op, inner.store.read("taskhub.json")).await?.is_none() {
            timed(op, inner.store.write("taskhub.json", hub.to_string().into_bytes(), None))
                .await?;
        }
        let prefixes: &[&str] = if inner.core.kind == ManagerKind::SafeBlob {
            &[INTENT, OWNERSHIP]
        } else {
            &[DEFAULT]
        };
        for prefix in prefixes {
            for p in &inner.core.partitions {
                let name = format!("{prefix}{}", p.control_queue);
                if timed(op, inner.store.read(&name)).await?.is_some() {
                    continue;
                }
                let body =
                    LeaseBody { partition_id: p.control_queue.clone(), ..LeaseBody::default() };
                match timed(op, inner.store.write(&name, encode(&body), None)).await {
                    // Created and leased by a racing worker meanwhile.
                    Ok(()) | Err(StoreError::LeaseLost(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn delete_lease_store(&self) -> Result<()> {
        let op = self.inner.core.settings.operation_timeout;
        Ok(timed(op, self.inner.store.delete_container_if_exists()).await?)
    }

    async fn start(&self, listener: Arc<dyn PartitionListener>) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let shutdown = self.runner.subscribe();
        self.runner.start(&self.inner.core, listener, inner.run(shutdown))
    }

    async fn stop(&self, timeout: Duration) -> Result<()> {
        // Leases that could not be released (timeout) simply expire.
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
        let inner = &self.inner;
        let mut out = Vec::with_capacity(inner.core.partitions.len());
        for p in &inner.core.partitions {
            let q = &p.control_queue;
            let owner = inner.read_body(&Inner::name(&inner.owner, q), q).await?.owner;
            let next_owner = if inner.safe() {
                let intent = inner.read_body(&Inner::name(&inner.intent, q), q).await?.owner;
                intent.filter(|i| owner.as_ref() != Some(i))
            } else {
                None
            };
            out.push(PartitionOwner {
                control_queue: q.clone(),
                owner: owner.filter(|o| !o.is_empty()),
                next_owner: next_owner.filter(|o| !o.is_empty()),
                expires_at: None,
            });
        }
        Ok(out)
    }
}

fn encode(body: &LeaseBody) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

fn new_lease_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Inner {
    fn safe(&self) -> bool {
        self.core.kind == ManagerKind::SafeBlob
    }

    fn tick(&self) -> Duration {
        let s = &self.core.settings;
        s.lease_renew_interval.min(s.lease_acquire_interval)
    }

    fn name(set: &LeaseSet, q: &str) -> String {
        format!("{}{q}", set.prefix)
    }

    async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let s = &self.core.settings;
        let mut next_renew = self.core.clock.monotonic();
        let mut next_acquire = next_renew;
        let mut intents_released = false;
        loop {
            let stopping = *shutdown.borrow();
            let now = self.core.clock.monotonic();
            if now >= next_renew || stopping {
                next_renew = now + s.lease_renew_interval;
                self.renew_all().await;
            }
            self.release_drained().await;
            if stopping {
                if !intents_released {
                    for q in self.intent.queues() {
                        self.release(&self.intent, &q).await;
                    }
                    intents_released = true;
                }
                for q in self.owner.queues() {
                    self.core.start_drain(&q, "shutting down");
                }
                if self.owner.queues().is_empty() {
                    break;
                }
            } else {
                if now >= next_acquire {
                    next_acquire = now + s.lease_acquire_interval;
                    let all: Vec<String> =
                        self.core.partitions.iter().map(|p| p.control_queue.clone()).collect();
                    let set = if self.safe() { &self.intent } else { &self.owner };
                    if let Err(e) = self.take(set, true, &all).await {
                        self.core.warn(
                            "PartitionManagerWarning",
                            "",
                            &format!("taking leases failed: {e}"),
                        );
                    }
                }
                if self.safe() {
                    // Ownership follows intent, and is only taken when free or expired.
                    let wanted: Vec<String> =
                        self.intent.queues().into_iter().filter(|q| !self.owner.holds(q)).collect();
                    if !wanted.is_empty()
                        && let Err(e) = self.take(&self.owner, false, &wanted).await
                    {
                        self.core.warn(
                            "PartitionManagerWarning",
                            "",
                            &format!("taking ownership failed: {e}"),
                        );
                    }
                }
            }
            let waiting = self.safe() && self.intent.queues().iter().any(|q| !self.owner.holds(q));
            let delay = if stopping || waiting {
                self.tick().min(Duration::from_secs(1))
            } else {
                self.tick()
            };
            pause(&self.core, &mut shutdown, delay).await;
        }
    }

    /// Renews every held lease; handles losses.
    async fn renew_all(&self) {
        let op = self.core.settings.operation_timeout;
        for q in self.intent.queues() {
            let Some(held) = self.intent.get(&q) else { continue };
            match timed(op, self.store.renew(&Self::name(&self.intent, &q), &held.lease_id)).await {
                Ok(()) => {}
                Err(StoreError::LeaseLost(e)) => {
                    self.intent.remove(&q);
                    self.core.info("LeaseRenewalFailed", &q, &format!("intent lease lost: {e}"));
                    self.core.start_drain(&q, "intent lease lost to another worker");
                }
                Err(e) => self.core.warn("LeaseRenewalFailed", &q, &format!("intent: {e}")),
            }
        }
        for q in self.owner.queues() {
            let Some(held) = self.owner.get(&q) else { continue };
            if self.core.drain_state(&q).is_none() {
                // Self-fenced (or abandoned): stop renewing; the lease expires.
                self.owner.remove(&q);
                continue;
            }
            let sent = self.core.clock.monotonic();
            match timed(op, self.store.renew(&Self::name(&self.owner, &q), &held.lease_id)).await {
                Ok(()) => {
                    self.core.renewed(&q, sent).await;
                }
                Err(StoreError::LeaseLost(e)) => {
                    self.owner.remove(&q);
                    self.core.info("LeaseRenewalFailed", &q, &e);
                    self.core.lose(&q, "lease lost").await;
                }
                Err(e) => self.core.warn("LeaseRenewalFailed", &q, &e.to_string()),
            }
        }
    }

    /// Releases listening leases whose drain finished.
    async fn release_drained(&self) {
        for q in self.owner.queues() {
            if self.core.drain_state(&q) == Some(Drain::Done) {
                self.release(&self.owner, &q).await;
                self.core.released(&q);
            }
        }
    }

    /// Writes `Owner: null` and releases the lease; failures just let it expire.
    async fn release(&self, set: &LeaseSet, q: &str) {
        let Some(held) = set.remove(q) else { return };
        let op = self.core.settings.operation_timeout;
        let name = Self::name(set, q);
        let body =
            LeaseBody { partition_id: q.into(), owner: None, token: None, epoch: held.epoch };
        // The release is tried even when clearing the body failed: a body that still names us
        // is harmless (the next taker probes the lease), a lease left held blocks the partition
        // until it expires.
        let cleared = timed(op, self.store.write(&name, encode(&body), Some(&held.lease_id))).await;
        let released = timed(op, self.store.release(&name, &held.lease_id)).await;
        match cleared.and(released) {
            Ok(()) => self.core.info("LeaseReleased", q, &format!("{} lease released", set.prefix)),
            Err(e) => self.core.warn("LeaseRemovalFailed", q, &format!("{}: {e}", set.prefix)),
        }
    }

    /// Releases a lease acquired (or changed) under `lease_id` whose outcome is unknown or
    /// that we will not keep: an acquisition that timed out may have been committed, and a lease
    /// held under an ID nobody knows blocks the partition for a whole lease interval. Best
    /// effort: a release of a lease we do not hold is refused and changes nothing.
    async fn forget(&self, name: &str, q: &str, lease_id: &str, why: &str) {
        let op = self.core.settings.operation_timeout;
        match timed(op, self.store.release(name, lease_id)).await {
            Ok(()) => self.core.info("LeaseReleased", q, &format!("{name}: {why}")),
            Err(StoreError::LeaseLost(_)) => {}
            Err(e) => self.core.warn("LeaseRemovalFailed", q, &format!("{name}: {why}: {e}")),
        }
    }

    async fn read_body(&self, name: &str, q: &str) -> StoreResult<LeaseBody> {
        let op = self.core.settings.operation_timeout;
        let raw = timed(op, self.store.read(name)).await?;
        Ok(raw
            .and_then(|b| serde_json::from_slice::<LeaseBody>(&b).ok())
            .unwrap_or_else(|| LeaseBody { partition_id: q.into(), ..LeaseBody::default() }))
    }

    /// After acquiring or changing a lease to `lease_id`: publish it in the body.
    async fn publish(
        &self,
        set: &LeaseSet,
        q: &str,
        body: &LeaseBody,
        lease_id: String,
        sent: Instant,
        how: &'static str,
    ) -> StoreResult<()> {
        let op = self.core.settings.operation_timeout;
        let epoch = body.epoch + 1;
        let new = LeaseBody {
            partition_id: q.into(),
            owner: Some(self.core.me().into()),
            token: Some(lease_id.clone()),
            epoch,
        };
        let name = Self::name(set, q);
        timed(op, self.store.write(&name, encode(&new), Some(&lease_id))).await?;
        set.insert(q, Held { lease_id, epoch });
        if std::ptr::eq(set, &self.owner) {
            self.core.acquired(q, sent, how).await;
        } else {
            self.core.info(how, q, "intent lease acquired");
        }
        Ok(())
    }

    /// DTF `TakeLeasesAsync` over `candidates` of `set`.
    async fn take(&self, set: &LeaseSet, steal: bool, candidates: &[String]) -> StoreResult<()> {
        let op = self.core.settings.operation_timeout;
        let lease = self.core.settings.lease_interval;
        let me = self.core.me().to_owned();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        counts.insert(me.clone(), 0);
        let mut free = Vec::new();
        let mut expired = Vec::new();
        let mut alive: Vec<(String, LeaseBody)> = Vec::new();
        for q in candidates {
            if set.holds(q) {
                *counts.entry(me.clone()).or_default() += 1;
                continue;
            }
            let name = Self::name(set, q);
            let body = self.read_body(&name, q).await?;
            match body.owner.as_deref() {
                None | Some("") => free.push((q.clone(), body)),
                Some(owner) => {
                    // Probe: an acquisition only succeeds if the owner stopped renewing.
                    let id = new_lease_id();
                    let sent = self.core.clock.monotonic();
                    match timed(op, self.store.acquire(&name, lease, &id)).await {
                        Ok(()) => expired.push((q.clone(), body, id, sent)),
                        Err(e) => {
                            if matches!(e, StoreError::Unavailable(_)) {
                                self.forget(&name, q, &id, "probe answer lost").await;
                            }
                            *counts.entry(owner.to_owned()).or_default() += 1;
                            alive.push((q.clone(), body));
                        }
                    }
                }
            }
        }
        let shards = if steal { self.core.partitions.len() } else { candidates.len() };
        let workers = counts.len();
        let target = if shards <= workers { 1 } else { shards.div_ceil(workers) };
        let mine = counts.get(&me).copied().unwrap_or(0);
        let mut needed = if steal { target.saturating_sub(mine) } else { usize::MAX };
        for (q, body, id, sent) in expired {
            let name = Self::name(set, &q);
            if needed > 0 {
                match self
                    .publish(set, &q, &body, id.clone(), sent, "LeaseAcquisitionSucceeded")
                    .await
                {
                    Ok(()) => needed -= 1,
                    Err(e) => {
                        self.core.info("LeaseAcquisitionFailed", &q, &e.to_string());
                        self.forget(&name, &q, &id, "not published").await;
                    }
                }
            } else {
                // Not needed: free it so that its dead owner stops counting.
                let cleared = LeaseBody { owner: None, token: None, ..body };
                let _ = timed(op, self.store.write(&name, encode(&cleared), Some(&id))).await;
                let _ = timed(op, self.store.release(&name, &id)).await;
            }
        }
        for (q, body) in free {
            if needed == 0 {
                break;
            }
            let id = new_lease_id();
            let sent = self.core.clock.monotonic();
            let name = Self::name(set, &q);
            match timed(op, self.store.acquire(&name, lease, &id)).await {
                Ok(()) => {
                    match self
                        .publish(set, &q, &body, id.clone(), sent, "LeaseAcquisitionSucceeded")
                        .await
                    {
                        Ok(()) => needed -= 1,
                        Err(e) => {
                            self.core.info("LeaseAcquisitionFailed", &q, &e.to_string());
                            self.forget(&name, &q, &id, "not published").await;
                        }
                    }
                }
                Err(e) => {
                    self.core.info("LeaseAcquisitionFailed", &q, &e.to_string());
                    if matches!(e, StoreError::Unavailable(_)) {
                        self.forget(&name, &q, &id, "acquisition answer lost").await;
                    }
                }
            }
        }
        if steal && needed > 0 {
            let victim = counts
                .iter()
                .filter(|(w, _)| **w != me)
                .max_by_key(|(w, c)| (**c, std::cmp::Reverse((*w).clone())));
            if let Some((victim, &count)) = victim
                && count > target - usize::from(needed > 1)
            {
                let pick = alive.iter().find(|(_, b)| b.owner.as_deref() == Some(victim));
                if let Some((q, body)) = pick
                    && let Some(token) = body.token.as_deref()
                {
                    let id = new_lease_id();
                    let sent = self.core.clock.monotonic();
                    self.core.info("AttemptingToStealLease", q, &format!("from {victim}"));
                    let name = Self::name(set, q);
                    match timed(op, self.store.change(&name, token, &id)).await {
                        Ok(()) => {
                            let published = self
                                .publish(set, q, body, id.clone(), sent, "LeaseStealingSucceeded")
                                .await;
                            if let Err(e) = published {
                                self.forget(&name, q, &id, "stolen but not published").await;
                                return Err(e);
                            }
                        }
                        Err(e) => {
                            self.core.info("LeaseStealingFailed", q, &e.to_string());
                            if matches!(e, StoreError::Unavailable(_)) {
                                self.forget(&name, q, &id, "steal answer lost").await;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
