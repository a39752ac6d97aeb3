//! In-memory lease stores with Azure's conditional semantics, for fast deterministic tests.
//! Blob leases expire on the [`Clock`]'s monotonic time (tokio's clock, so paused-time tests
//! control expiry).

use crate::clock::Clock;
use crate::store::{LeaseBlobStore, PartitionRow, PartitionTableStore, StoreError, StoreResult};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An in-memory `{Hub}Partitions` table.
#[derive(Debug, Default)]
pub struct InMemoryPartitionTable {
    state: Mutex<TableState>,
}

#[derive(Debug, Default)]
struct TableState {
    exists: bool,
    next_etag: u64,
    rows: BTreeMap<String, PartitionRow>,
}

impl TableState {
    fn etag(&mut self) -> String {
        self.next_etag += 1;
        format!("W/\"{}\"", self.next_etag)
    }
}

impl InMemoryPartitionTable {
    /// An empty store (the table does not exist yet).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

#[async_trait]
impl PartitionTableStore for InMemoryPartitionTable {
    async fn create_if_not_exists(&self) -> StoreResult<()> {
        lock(&self.state).exists = true;
        Ok(())
    }

    async fn delete_if_exists(&self) -> StoreResult<()> {
        let mut s = lock(&self.state);
        s.exists = false;
        s.rows.clear();
        Ok(())
    }

    async fn list(&self) -> StoreResult<Vec<PartitionRow>> {
        let s = lock(&self.state);
        if !s.exists {
            return Err(StoreError::NotFound("table".into()));
        }
        Ok(s.rows.values().cloned().collect())
    }

    async fn insert_empty(&self, row_key: &str) -> StoreResult<bool> {
        let mut s = lock(&self.state);
        if !s.exists {
            return Err(StoreError::NotFound("table".into()));
        }
        if s.rows.contains_key(row_key) {
            return Ok(false);
        }
        let etag = s.etag();
        s.rows.insert(
            row_key.into(),
            PartitionRow { row_key: row_key.into(), etag, ..Default::default() },
        );
        Ok(true)
    }

    async fn replace(&self, row: &PartitionRow) -> StoreResult<String> {
        let mut s = lock(&self.state);
        match s.rows.get(&row.row_key) {
            Some(existing) if existing.etag == row.etag => {}
            Some(_) => return Err(StoreError::LostRace(format!("{}: stale ETag", row.row_key))),
            None => return Err(StoreError::LostRace(format!("{}: row is gone", row.row_key))),
        }
        let etag = s.etag();
        s.rows.insert(row.row_key.clone(), PartitionRow { etag: etag.clone(), ..row.clone() });
        Ok(etag)
    }
}

/// An in-memory `{hub}-leases` container with blob leases.
#[derive(Debug)]
pub struct InMemoryLeaseBlobs {
    clock: Arc<dyn Clock>,
    state: Mutex<BlobState>,
}

#[derive(Debug, Default)]
struct BlobState {
    exists: bool,
    blobs: BTreeMap<String, Blob>,
}

#[derive(Debug, Default)]
struct Blob {
    body: Vec<u8>,
    lease: Option<Lease>,
}

#[derive(Debug)]
struct Lease {
    id: String,
    duration: Duration,
    expires: Instant,
}

impl Blob {
    fn active_lease(&self, now: Instant) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires > now)
    }
}

impl InMemoryLeaseBlobs {
    /// An empty store whose leases expire on `clock`'s monotonic time.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self { clock, state: Mutex::new(BlobState::default()) })
    }

    fn with_blob<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Blob, Instant) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let now = self.clock.monotonic();
        let mut s = lock(&self.state);
        if !s.exists {
            return Err(StoreError::NotFound("container".into()));
        }
        let blob = s.blobs.get_mut(name).ok_or_else(|| StoreError::NotFound(name.into()))?;
        f(blob, now)
    }
}

fn lost(name: &str, what: &str) -> StoreError {
    StoreError::LeaseLost(format!("{name}: {what}"))
}

#[async_trait]
impl LeaseBlobStore for InMemoryLeaseBlobs {
    async fn create_container_if_not_exists(&self) -> StoreResult<()> {
        lock(&self.state).exists = true;
        Ok(())
    }

    async fn delete_container_if_exists(&self) -> StoreResult<()> {
        let mut s = lock(&self.state);
        s.exists = false;
        s.blobs.clear();
        Ok(())
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let s = lock(&self.state);
        if !s.exists {
            return Err(StoreError::NotFound("container".into()));
        }
        Ok(s.blobs.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    async fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let s = lock(&self.state);
        if !s.exists {
            return Err(StoreError::NotFound("container".into()));
        }
        Ok(s.blobs.get(name).map(|b| b.body.clone()))
    }

    async fn write(&self, name: &str, body: Vec<u8>, lease_id: Option<&str>) -> StoreResult<()> {
        let now = self.clock.monotonic();
        let mut s = lock(&self.state);
        if !s.exists {
            return Err(StoreError::NotFound("container".into()));
        }
        let blob = s.blobs.entry(name.into()).or_default();
        match (blob.active_lease(now), lease_id) {
            (Some(l), Some(id)) if l.id == id => {}
            (Some(_), _) => return Err(lost(name, "blob is leased by someone else")),
            (None, Some(_)) => return Err(lost(name, "blob is not leased")),
            (None, None) => blob.lease = None, // a modification ends an expired lease for good
        }
        blob.body = body;
        Ok(())
    }

    async fn acquire(&self, name: &str, duration: Duration, lease_id: &str) -> StoreResult<()> {
        self.with_blob(name, |blob, now| {
            if let Some(l) = blob.active_lease(now)
                && l.id != lease_id
            {
                return Err(lost(name, "lease already present"));
            }
            blob.lease = Some(Lease { id: lease_id.into(), duration, expires: now + duration });
            Ok(())
        })
    }

    async fn renew(&self, name: &str, lease_id: &str) -> StoreResult<()> {
        self.with_blob(name, |blob, now| match &mut blob.lease {
            // Azure renews an expired lease too, as long as nobody leased or modified the blob since.
            Some(l) if l.id == lease_id => {
                l.expires = now + l.duration;
                Ok(())
            }
            _ => Err(lost(name, "lease ID mismatch")),
        })
    }

    async fn release(&self, name: &str, lease_id: &str) -> StoreResult<()> {
        self.with_blob(name, |blob, _| match &blob.lease {
            Some(l) if l.id == lease_id => {
                blob.lease = None;
                Ok(())
            }
            _ => Err(lost(name, "lease ID mismatch")),
        })
    }

    async fn change(&self, name: &str, current: &str, proposed: &str) -> StoreResult<()> {
        self.with_blob(name, |blob, now| {
            let active = blob.active_lease(now).map(|l| l.id.clone());
            match (&mut blob.lease, active) {
                (Some(l), Some(id)) if id == current || id == proposed => {
                    l.id = proposed.into();
                    Ok(())
                }
                (_, Some(_)) => Err(lost(name, "lease ID mismatch")),
                (_, None) => Err(lost(name, "lease not present")),
            }
        })
    }
}
