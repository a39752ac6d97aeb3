//! Adapters that let the partition managers (`durabletask-partition-manager`) run over this
//! crate's storage layer: [`AzurePartitionTable`] for `{Hub}Partitions` and [`AzureLeaseBlobs`]
//! for `{hub}-leases`.
//!
//! Status codes map to the managers' classification: a failed ETag condition, an existing row or
//! a vanished row (412/409/404 on a conditional write) is `LostRace`; a lease held by someone else
//! or a stale lease ID (409/412) is `LeaseLost`; everything else is `Unavailable`.

use crate::naming::ResourceNames;
use crate::storage::{
    BatchOp, BlobStore, EdmValue, StorageError, StorageErrorKind, TableEntity, TableStore,
    WriteMode,
};
use async_trait::async_trait;
use durabletask_partition_manager::LeaseStores;
use durabletask_partition_manager::store::{
    LeaseBlobStore, PartitionRow, PartitionTableStore, StoreError, StoreResult,
};
use std::sync::Arc;
use std::time::Duration;

/// Both lease stores of a task hub over `tables` and `blobs` (usually the same `AzureStorage`).
pub fn lease_stores(
    tables: Arc<dyn TableStore>,
    blobs: Arc<dyn BlobStore>,
    names: &ResourceNames,
) -> LeaseStores {
    LeaseStores {
        table: Arc::new(AzurePartitionTable::new(tables, &names.partitions_table)),
        blobs: Arc::new(AzureLeaseBlobs::new(blobs, &names.leases_container)),
    }
}

fn unavailable(e: StorageError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `{Hub}Partitions` over a [`TableStore`]: PartitionKey `""`, RowKey = control queue name,
/// columns `CurrentOwner`, `NextOwner`, `OwnedSince`, `LastRenewal`, `ExpiresAt`, `IsDraining`.
#[derive(Debug, Clone)]
pub struct AzurePartitionTable {
    store: Arc<dyn TableStore>,
    table: String,
}

impl AzurePartitionTable {
    /// The partition table `table` (e.g. `ResourceNames::partitions_table`).
    pub fn new(store: Arc<dyn TableStore>, table: impl Into<String>) -> Self {
        Self { store, table: table.into() }
    }

    fn to_entity(row: &PartitionRow) -> TableEntity {
        let mut e = TableEntity::new("", row.row_key.clone());
        let strings = [("CurrentOwner", &row.current_owner), ("NextOwner", &row.next_owner)];
        for (name, value) in strings {
            if let Some(v) = value {
                e = e.with(name, EdmValue::String(v.clone()));
            }
        }
        let times = [
            ("OwnedSince", row.owned_since),
            ("LastRenewal", row.last_renewal),
            ("ExpiresAt", row.expires_at),
        ];
        for (name, value) in times {
            if let Some(v) = value {
                e = e.with(name, EdmValue::DateTime(v));
            }
        }
        e.with("IsDraining", EdmValue::Bool(row.is_draining))
    }

    fn from_entity(e: &TableEntity) -> PartitionRow {
        let string = |name: &str| e.get_str(name).filter(|s| !s.is_empty()).map(str::to_owned);
        let datetime = |name: &str| e.get(name).and_then(EdmValue::as_datetime);
        PartitionRow {
            row_key: e.row_key.clone(),
            etag: e.etag.clone().unwrap_or_default(),
            current_owner: string("CurrentOwner"),
            next_owner: string("NextOwner"),
            owned_since: datetime("OwnedSince"),
            last_renewal: datetime("LastRenewal"),
            expires_at: datetime("ExpiresAt"),
            is_draining: e.get("IsDraining").and_then(EdmValue::as_bool).unwrap_or(false),
        }
    }
}

#[async_trait]
impl PartitionTableStore for AzurePartitionTable {
    async fn create_if_not_exists(&self) -> StoreResult<()> {
        self.store.create_table_if_not_exists(&self.table).await.map_err(unavailable)
    }

    async fn delete_if_exists(&self) -> StoreResult<()> {
        self.store.delete_table_if_exists(&self.table).await.map_err(unavailable)
    }

    async fn list(&self) -> StoreResult<Vec<PartitionRow>> {
        let mut rows = Vec::new();
        let mut continuation = None;
        loop {
            let page =
                self.store.query(&self.table, None, None, None, continuation).await.map_err(
                    |e| match e.kind() {
                        StorageErrorKind::NotFound => StoreError::NotFound(e.to_string()),
                        _ => unavailable(e),
                    },
                )?;
            rows.extend(
                page.entities.iter().filter(|e| e.partition_key.is_empty()).map(Self::from_entity),
            );
            match page.continuation {
                Some(next) => continuation = Some(next),
                None => return Ok(rows),
            }
        }
    }

    async fn insert_empty(&self, row_key: &str) -> StoreResult<bool> {
        let entity = TableEntity::new("", row_key).with("IsDraining", EdmValue::Bool(false));
        let op = BatchOp { mode: WriteMode::Insert, entity };
        match self.store.write(&self.table, op).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == StorageErrorKind::Conflict => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn replace(&self, row: &PartitionRow) -> StoreResult<String> {
        let op = BatchOp {
            mode: WriteMode::Replace(Some(row.etag.clone())),
            entity: Self::to_entity(row),
        };
        match self.store.write(&self.table, op).await {
            Ok(etag) => Ok(etag.unwrap_or_default()),
            Err(e) => Err(match e.kind() {
                StorageErrorKind::PreconditionFailed
                | StorageErrorKind::Conflict
                | StorageErrorKind::NotFound => StoreError::LostRace(e.to_string()),
                _ => unavailable(e),
            }),
        }
    }
}

/// `{hub}-leases` over a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct AzureLeaseBlobs {
    store: Arc<dyn BlobStore>,
    container: String,
}

impl AzureLeaseBlobs {
    /// The lease container `container` (e.g. `ResourceNames::leases_container`).
    pub fn new(store: Arc<dyn BlobStore>, container: impl Into<String>) -> Self {
        Self { store, container: container.into() }
    }
}

fn lease_error(e: StorageError) -> StoreError {
    match e.kind() {
        StorageErrorKind::Conflict | StorageErrorKind::PreconditionFailed => {
            StoreError::LeaseLost(e.to_string())
        }
        StorageErrorKind::NotFound => StoreError::NotFound(e.to_string()),
        _ => unavailable(e),
    }
}

#[async_trait]
impl LeaseBlobStore for AzureLeaseBlobs {
    async fn create_container_if_not_exists(&self) -> StoreResult<()> {
        self.store.create_container_if_not_exists(&self.container).await.map_err(unavailable)
    }

    async fn delete_container_if_exists(&self) -> StoreResult<()> {
        self.store.delete_container_if_exists(&self.container).await.map_err(unavailable)
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.store.list_blobs(&self.container, prefix).await.map_err(lease_error)
    }

    async fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.store.get_blob(&self.container, name).await.map_err(lease_error)
    }

    async fn write(&self, name: &str, body: Vec<u8>, lease_id: Option<&str>) -> StoreResult<()> {
        self.store.put_blob(&self.container, name, body, lease_id).await.map_err(lease_error)
    }

    async fn acquire(&self, name: &str, duration: Duration, lease_id: &str) -> StoreResult<()> {
        self.store
            .acquire_lease(&self.container, name, duration, lease_id)
            .await
            .map_err(lease_error)
    }

    async fn renew(&self, name: &str, lease_id: &str) -> StoreResult<()> {
        self.store.renew_lease(&self.container, name, lease_id).await.map_err(lease_error)
    }

    async fn release(&self, name: &str, lease_id: &str) -> StoreResult<()> {
        self.store.release_lease(&self.container, name, lease_id).await.map_err(lease_error)
    }

    async fn change(&self, name: &str, current: &str, proposed: &str) -> StoreResult<()> {
        self.store.change_lease(&self.container, name, current, proposed).await.map_err(lease_error)
    }
}
