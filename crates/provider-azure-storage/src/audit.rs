//! Large-message blob audit: which blobs the hub's `{hub}-largemessages` container holds, and
//! which blobs the live tables reference.
//!
//! The invariant the provider keeps (checked by the provider's tests and the chaos auditor): when
//! every instance is terminal and no queue holds messages, the container holds exactly the
//! referenced blobs, where a blob is *referenced* by
//!
//! * a non-empty `{Property}BlobName` column of a **live** History row: a row (other than the
//!   sentinel) whose `ExecutionId` equals the sentinel row's `ExecutionId` (rows of older
//!   generations left behind at higher row keys are not live; with no sentinel, the execution of
//!   the lowest row key counts, as the history reader does), or
//! * an Instances row's `Input`, `Output`, `CustomStatus` or `FailureDetails` value that is a URL
//!   into that container.
//!
//! * a poison record: blobs under `.poison/` hold the text of quarantined messages too large
//!   for a poison-queue record; they are counted as referenced (by the record in
//!   `{hub}-poison`) and listed in [`BlobAudit::quarantined`].
//!
//! While messages are in flight, their envelope blobs (`{id}/message-...`) are in the container
//! but not referenced by any row: they show up as orphans until the message is consumed (or
//! discarded) and its blob deleted with it. A quarantined message whose envelope lives in a blob
//! keeps that blob (its poison record references it); such a blob is reported as an orphan.

use crate::StorageStack;
use crate::keys::blob_segment;
use crate::large::LargePayloads;
use crate::naming::ResourceNames;
use crate::storage::{BlobStore, StorageErrorKind, StorageResult, TableEntity, TableStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Prefix of the blobs holding the text of quarantined messages (`{hub}-poison` records).
pub const POISON_PREFIX: &str = ".poison/";

/// Instances-table columns whose value may be a blob URL.
pub const INSTANCE_URL_COLUMNS: [&str; 4] = ["Input", "Output", "CustomStatus", "FailureDetails"];

/// The result of [`blob_references`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobAudit {
    /// Every blob name in `{hub}-largemessages` (empty if the container does not exist).
    pub in_container: BTreeSet<String>,
    /// Every blob name referenced by a live History row or an Instances row.
    pub referenced: BTreeSet<String>,
    /// For each referenced blob, who references it (`History {pk}/{rk} {column}`,
    /// `Instances {pk} {column}` or `poison record`), for diagnostics.
    pub referenced_by: BTreeMap<String, Vec<String>>,
    /// Blobs holding the text of quarantined messages (`.poison/...`); also in `referenced`.
    pub quarantined: BTreeSet<String>,
}

impl BlobAudit {
    /// Blobs in the container that nothing references (leaks).
    pub fn orphans(&self) -> BTreeSet<String> {
        self.in_container.difference(&self.referenced).cloned().collect()
    }

    /// References to blobs that are not in the container (lost payloads).
    pub fn dangling(&self) -> BTreeSet<String> {
        self.referenced.difference(&self.in_container).cloned().collect()
    }

    /// Whether the container holds exactly the referenced blobs.
    pub fn is_exact(&self) -> bool {
        self.in_container == self.referenced
    }

    /// Blobs in the container under `instance_id`'s exact prefix (`{escaped id}/`).
    pub fn blobs_of(&self, instance_id: &str) -> BTreeSet<String> {
        let prefix = LargePayloads::instance_prefix(instance_id);
        self.in_container.iter().filter(|b| b.starts_with(&prefix)).cloned().collect()
    }

    /// A one-paragraph description of orphans and dangling references (empty when exact).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for o in self.orphans() {
            out.push_str(&format!("orphan blob {o}\n"));
        }
        for d in self.dangling() {
            let by = self.referenced_by.get(&d).map(|v| v.join(", ")).unwrap_or_default();
            out.push_str(&format!("dangling reference to {d} from {by}\n"));
        }
        out
    }

    fn reference(&mut self, blob: String, by: String) {
        self.referenced.insert(blob.clone());
        self.referenced_by.entry(blob).or_default().push(by);
    }
}

/// Audits the large-message blobs of the task hub `names` through `stack` (its tables, blobs and
/// `large_messages_container_url`). Pass a stack without fault injection: every storage failure
/// is returned as is (missing tables or container count as empty).
///
/// # Errors
/// When a table query or the blob listing fails.
pub async fn blob_references(
    stack: &StorageStack,
    names: &ResourceNames,
) -> StorageResult<BlobAudit> {
    blob_references_in(
        stack.tables.as_ref(),
        stack.blobs.clone(),
        names,
        &stack.large_messages_container_url,
    )
    .await
}

/// [`blob_references`] over explicit stores.
///
/// # Errors
/// When a table query or the blob listing fails.
pub async fn blob_references_in(
    tables: &dyn TableStore,
    blobs: Arc<dyn BlobStore>,
    names: &ResourceNames,
    container_url: &str,
) -> StorageResult<BlobAudit> {
    let mut audit = BlobAudit::default();
    let container = names.large_messages_container.clone();
    match blobs.list_blobs(&container, "").await {
        Ok(list) => audit.in_container = list.into_iter().collect(),
        Err(e) if e.kind() == StorageErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let large = LargePayloads::new(blobs, container, container_url.to_owned());
    let poison: Vec<String> =
        audit.in_container.iter().filter(|b| b.starts_with(POISON_PREFIX)).cloned().collect();
    for blob in poison {
        audit.quarantined.insert(blob.clone());
        audit.reference(blob, "poison record".to_owned());
    }

    // (a) live History rows.
    let mut partitions: BTreeMap<String, Vec<TableEntity>> = BTreeMap::new();
    for row in scan(tables, &names.history_table).await? {
        partitions.entry(row.partition_key.clone()).or_default().push(row);
    }
    for (pk, mut rows) in partitions {
        rows.sort_by(|a, b| a.row_key.cmp(&b.row_key));
        let sentinel = rows.iter().find(|r| r.row_key == crate::keys::SENTINEL_ROW_KEY);
        let live = sentinel
            .and_then(|s| s.get_str("ExecutionId"))
            .or_else(|| rows.first().and_then(|r| r.get_str("ExecutionId")))
            .map(str::to_owned);
        let Some(live) = live else { continue };
        for row in rows.iter().filter(|r| r.row_key != crate::keys::SENTINEL_ROW_KEY) {
            if row.get_str("ExecutionId") != Some(live.as_str()) {
                continue;
            }
            for (column, value) in &row.properties {
                if column.ends_with("BlobName")
                    && let Some(blob) = value.as_str().filter(|b| !b.is_empty())
                {
                    audit.reference(
                        blob.to_owned(),
                        format!("History {pk}/{} {column}", row.row_key),
                    );
                }
            }
        }
    }

    // (b) Instances rows.
    for row in scan(tables, &names.instances_table).await? {
        for column in INSTANCE_URL_COLUMNS {
            if let Some(blob) = row.get_str(column).and_then(|v| large.name_from_url(v)) {
                audit.reference(blob, format!("Instances {} {column}", row.partition_key));
            }
        }
    }
    Ok(audit)
}

/// Every row of `table` (none if the table does not exist).
async fn scan(tables: &dyn TableStore, table: &str) -> StorageResult<Vec<TableEntity>> {
    crate::storage::query_all(tables, table, None, None).await
}

/// The blob-name prefix of `instance_id` (`{escaped id}/`), for "nothing left after purge" checks.
pub fn instance_prefix(instance_id: &str) -> String {
    format!("{}/", blob_segment(instance_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_and_dangling_are_set_differences() {
        let mut a = BlobAudit::default();
        a.in_container.extend(["x/1".to_owned(), "x/2".to_owned(), "xy/3".to_owned()]);
        a.reference("x/1".into(), "History x/0000000000000000 InputBlobName".into());
        a.reference("x/4".into(), "Instances x Output".into());
        assert_eq!(a.orphans(), BTreeSet::from(["x/2".to_owned(), "xy/3".to_owned()]));
        assert_eq!(a.dangling(), BTreeSet::from(["x/4".to_owned()]));
        assert!(!a.is_exact());
        assert_eq!(a.blobs_of("x"), BTreeSet::from(["x/1".to_owned(), "x/2".to_owned()]));
        assert!(a.describe().contains("dangling reference to x/4 from Instances x Output"));
        assert_eq!(instance_prefix("a/b"), "a^0b/");
    }
}
