//! The activity ledger: one row per activity *execution*, written by the activity itself into a
//! table the framework never touches (`{hub}Ledger`). Duplicate executions (at-least-once) are
//! counted from here, independently of history.

use crate::Result;
use durabletask_azure_storage::TaskHubName;
use durabletask_azure_storage::storage::{
    BatchOp, EdmValue, StorageErrorKind, TableEntity, TableStore, WriteMode,
};
use durabletask_core::ActivityContext;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Identifies one scheduled activity: instance, execution, `TaskScheduled` event id.
pub type TaskKey = (String, String, i32);

/// One recorded execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Instance id of the scheduling orchestration.
    pub instance_id: String,
    /// Its execution id.
    pub execution_id: String,
    /// The `TaskScheduled` event id.
    pub task_id: i32,
    /// Activity name.
    pub name: String,
    /// Worker that ran it.
    pub worker: String,
}

/// The ledger of one task hub.
#[derive(Debug)]
pub struct Ledger {
    tables: Arc<dyn TableStore>,
    table: String,
    worker: String,
}

impl Ledger {
    /// The ledger of `hub`, written as `worker`.
    pub fn new(tables: Arc<dyn TableStore>, hub: &TaskHubName, worker: &str) -> Self {
        Self { tables, table: format!("{}Ledger", hub.as_str()), worker: worker.to_owned() }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn create(&self) -> Result<()> {
        Ok(self.tables.create_table_if_not_exists(&self.table).await?)
    }

    /// Deletes the table.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn delete(&self) -> Result<()> {
        Ok(self.tables.delete_table_if_exists(&self.table).await?)
    }

    /// Records one execution of the activity behind `ctx` (retried until stored: the ledger must
    /// not lose rows, or duplicates would be under-counted).
    ///
    /// # Errors
    /// When storage keeps failing for about 10 s.
    pub async fn record(&self, ctx: &ActivityContext) -> Result<()> {
        let entity = TableEntity::new("L", uuid::Uuid::new_v4().simple().to_string())
            .with("InstanceId", EdmValue::String(ctx.instance_id().to_owned()))
            .with(
                "ExecutionId",
                EdmValue::String(
                    ctx.orchestration_instance().execution_id.clone().unwrap_or_default(),
                ),
            )
            .with("TaskId", EdmValue::Int32(ctx.task_id()))
            .with("Name", EdmValue::String(ctx.name().to_owned()))
            .with("Worker", EdmValue::String(self.worker.clone()));
        let mut attempt = 0;
        loop {
            let op = BatchOp { mode: WriteMode::Insert, entity: entity.clone() };
            match self.tables.write(&self.table, op).await {
                Ok(_) => return Ok(()),
                // An ambiguous earlier attempt committed.
                Err(e) if e.kind() == StorageErrorKind::Conflict && attempt > 0 => return Ok(()),
                Err(e) if attempt >= 40 => return Err(e.into()),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Every recorded execution.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn entries(&self) -> Result<Vec<LedgerEntry>> {
        let mut out = Vec::new();
        let mut continuation = None;
        loop {
            let page = self.tables.query(&self.table, None, None, None, continuation).await?;
            for e in page.entities {
                out.push(LedgerEntry {
                    instance_id: e.get_str("InstanceId").unwrap_or_default().to_owned(),
                    execution_id: e.get_str("ExecutionId").unwrap_or_default().to_owned(),
                    task_id: e
                        .get("TaskId")
                        .and_then(EdmValue::as_i64)
                        .and_then(|v| i32::try_from(v).ok())
                        .unwrap_or(-1),
                    name: e.get_str("Name").unwrap_or_default().to_owned(),
                    worker: e.get_str("Worker").unwrap_or_default().to_owned(),
                });
            }
            continuation = page.continuation;
            if continuation.is_none() {
                return Ok(out);
            }
        }
    }

    /// Executions per scheduled activity.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn executions(&self) -> Result<BTreeMap<TaskKey, usize>> {
        let mut m = BTreeMap::new();
        for e in self.entries().await? {
            *m.entry((e.instance_id, e.execution_id, e.task_id)).or_insert(0) += 1;
        }
        Ok(m)
    }
}

/// Whether a sender knows its entity operation was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFate {
    /// Sent: the client call returned `Ok`, or the orchestration that sent it completed (its
    /// `EventSent` is in committed history). Must be applied exactly once.
    Sent,
    /// The client call returned an error: the message may or may not have been written. Must be
    /// applied at most once.
    Unknown,
}

/// One entity operation a sender issued, identified by its tag (unique in the run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentOperation {
    /// The entity key it went to.
    pub entity: String,
    /// The operation's tag (what the entity records).
    pub tag: String,
    /// Operation name (`add`, `relay`, `check`).
    pub operation: &'static str,
    /// Who sent it, for the report (`client signal #17`, `ek-s-003 round 1`, ...).
    pub sender: String,
    /// What the sender knows.
    pub fate: SendFate,
    /// A `relay` forwards its tag to this entity as an entity-to-entity signal.
    pub relay_to: Option<String>,
    /// The orchestration that sends it (`None`: a client). Its fate is `Sent` only if that
    /// orchestration completed; otherwise the auditor treats it as unknown (and the workload
    /// audit fails the orchestration).
    pub orchestration: Option<String>,
    /// When it was issued, since the scenario started.
    pub at: Duration,
}

/// The sending side of the entity scenario: every entity operation issued by a client or an
/// orchestration, with what its sender knows about it. The auditor compares it with what each
/// entity recorded in its own state. The senders are the harness (clients) and planned
/// orchestrations whose inputs the harness wrote, so this ledger lives in the harness process.
#[derive(Debug, Default)]
pub struct SignalLedger {
    ops: std::sync::Mutex<Vec<SentOperation>>,
}

impl SignalLedger {
    /// Records one operation.
    pub fn record(&self, op: SentOperation) {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op);
    }

    /// Everything recorded.
    pub fn operations(&self) -> Vec<SentOperation> {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
