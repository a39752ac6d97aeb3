//! The storage layer against Azurite: queues, ETag-guarded table batches, blob leases, counters.

use crate::support::TestHub;
use durabletask_azure_storage::storage::{
    BatchOp, BlobStore, EdmValue, QueueStore, StorageErrorKind, StorageOp, TableEntity, TableStore,
    WriteMode,
};
use std::time::Duration;

#[tokio::test]
async fn queue_put_get_delete_and_redelivery() {
    let Some(hub) = TestHub::new("storage_layer::queue_put_get_delete", 1) else { return };
    let s = &hub.storage;
    let q = &hub.names.control_queues[0];
    s.create_queue_if_not_exists(q).await.unwrap();
    s.create_queue_if_not_exists(q).await.unwrap(); // idempotent

    s.put_message(q, "hello", Duration::ZERO).await.unwrap();
    let got = s.get_messages(q, 32, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "hello");
    assert_eq!(got[0].dequeue_count, 1);

    // Invisible while leased; back after the visibility timeout with a higher dequeue count.
    assert!(s.get_messages(q, 32, Duration::from_secs(30)).await.unwrap().is_empty());
    let again = wait_for_message(s, q).await;
    assert_eq!(again.id, got[0].id);
    assert_eq!(again.dequeue_count, 2);

    // The first delivery's pop receipt is stale now.
    let stale = s.delete_message(q, &got[0].id, &got[0].pop_receipt).await.unwrap_err();
    assert!(
        matches!(stale.kind(), StorageErrorKind::PreconditionFailed | StorageErrorKind::NotFound),
        "{stale}"
    );
    // Updating with the current receipt yields a new receipt, which deletes.
    let receipt =
        s.update_message(q, &again.id, &again.pop_receipt, "hello", Duration::ZERO).await.unwrap();
    let third = wait_for_message(s, q).await;
    assert_ne!(receipt, third.pop_receipt);
    s.delete_message(q, &third.id, &third.pop_receipt).await.unwrap();
    assert_eq!(s.approximate_message_count(q).await.unwrap(), 0);

    s.delete_queue_if_exists(q).await.unwrap();
    s.delete_queue_if_exists(q).await.unwrap(); // idempotent
}

async fn wait_for_message(
    s: &impl QueueStore,
    q: &str,
) -> durabletask_azure_storage::storage::ReceivedMessage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut got = s.get_messages(q, 1, Duration::from_secs(30)).await.unwrap();
        if let Some(m) = got.pop() {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "message did not become visible again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn table_batch_guarded_by_sentinel_etag() {
    let Some(hub) = TestHub::new("storage_layer::table_batch_sentinel", 1) else { return };
    let s = &hub.storage;
    let t = &hub.names.history_table;
    s.create_table_if_not_exists(t).await.unwrap();
    s.create_table_if_not_exists(t).await.unwrap();

    // First checkpoint: insert the sentinel and one history row atomically.
    let sentinel = |n: i32| {
        TableEntity::new("inst1", "sentinel")
            .with("CheckpointCompletedTimestamp", EdmValue::Int32(n))
    };
    let row = |rk: &str| {
        TableEntity::new("inst1", rk)
            .with("EventType", EdmValue::String("ExecutionStarted".into()))
            .with("Big", EdmValue::Int64(1 << 40))
    };
    let etags = s
        .batch(
            t,
            vec![
                BatchOp { mode: WriteMode::Insert, entity: sentinel(1) },
                BatchOp { mode: WriteMode::Upsert, entity: row("0000000000000000") },
            ],
        )
        .await
        .unwrap();
    let etag1 = etags[0].clone().expect("insert returns an ETag");

    // A second "first checkpoint" (another worker racing) conflicts and writes nothing.
    let err = s
        .batch(
            t,
            vec![
                BatchOp { mode: WriteMode::Insert, entity: sentinel(9) },
                BatchOp { mode: WriteMode::Upsert, entity: row("00000000000000FF") },
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Conflict, "{err}");
    assert!(s.get_entity(t, "inst1", "00000000000000FF").await.unwrap().is_none());

    // Next checkpoint with the current ETag succeeds and yields a new ETag.
    let etags = s
        .batch(
            t,
            vec![
                BatchOp { mode: WriteMode::Merge(Some(etag1.clone())), entity: sentinel(2) },
                BatchOp { mode: WriteMode::Upsert, entity: row("0000000000000001") },
            ],
        )
        .await
        .unwrap();
    let etag2 = etags[0].clone().unwrap();
    assert_ne!(etag1, etag2);

    // A stale ETag (split brain) is 412 and the sibling row is not written.
    let err = s
        .batch(
            t,
            vec![
                BatchOp { mode: WriteMode::Merge(Some(etag1)), entity: sentinel(3) },
                BatchOp { mode: WriteMode::Upsert, entity: row("0000000000000002") },
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::PreconditionFailed, "{err}");
    assert!(s.get_entity(t, "inst1", "0000000000000002").await.unwrap().is_none());

    let sentinel_now = s.get_entity(t, "inst1", "sentinel").await.unwrap().unwrap();
    assert_eq!(sentinel_now.etag.as_deref(), Some(etag2.as_str()));
    assert_eq!(sentinel_now.get("CheckpointCompletedTimestamp"), Some(&EdmValue::Int32(2)));
    let row0 = s.get_entity(t, "inst1", "0000000000000000").await.unwrap().unwrap();
    assert_eq!(row0.get("Big"), Some(&EdmValue::Int64(1 << 40)));
    assert_eq!(row0.get_str("EventType"), Some("ExecutionStarted"));

    let page = s.query(t, Some("PartitionKey eq 'inst1'"), None, None, None).await.unwrap();
    let keys: Vec<&str> = page.entities.iter().map(|e| e.row_key.as_str()).collect();
    assert_eq!(keys, ["0000000000000000", "0000000000000001", "sentinel"]);

    s.delete_table_if_exists(t).await.unwrap();
    s.delete_table_if_exists(t).await.unwrap();
}

#[tokio::test]
async fn client_side_limits_reject_what_azurite_would_accept() {
    let Some(hub) = TestHub::new("storage_layer::client_side_limits", 1) else { return };
    let s = &hub.storage;
    let t = &hub.names.instances_table;
    let before = s.counters().snapshot();
    let ops: Vec<BatchOp> = (0..101)
        .map(|i| BatchOp {
            mode: WriteMode::Upsert,
            entity: TableEntity::new("p", format!("{i:016X}")),
        })
        .collect();
    let err = s.batch(t, ops).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    let big = TableEntity::new("p", "r").with("X", EdmValue::String("x".repeat(1_100_000)));
    let err = s.write(t, BatchOp { mode: WriteMode::Upsert, entity: big }).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    // Nothing reached the service.
    assert_eq!(s.counters().snapshot().since(&before).total(), 0);
}

#[tokio::test]
async fn blob_lease_excludes_a_second_owner() {
    let Some(hub) = TestHub::new("storage_layer::blob_lease", 1) else { return };
    let s = &hub.storage;
    let c = &hub.names.leases_container;
    s.create_container_if_not_exists(c).await.unwrap();
    s.create_container_if_not_exists(c).await.unwrap();
    s.put_blob(c, "default/control-00", b"{}".to_vec(), None).await.unwrap();

    let a = "11111111-1111-1111-1111-111111111111";
    let b = "22222222-2222-2222-2222-222222222222";
    let secs = Duration::from_secs(15);
    s.acquire_lease(c, "default/control-00", secs, a).await.unwrap();
    let err = s.acquire_lease(c, "default/control-00", secs, b).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Conflict, "{err}");
    // Writing without the lease fails; with it, succeeds.
    let err = s.put_blob(c, "default/control-00", b"x".to_vec(), None).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::PreconditionFailed, "{err}");
    s.put_blob(c, "default/control-00", b"owned by a".to_vec(), Some(a)).await.unwrap();
    s.renew_lease(c, "default/control-00", a).await.unwrap();
    let err = s.renew_lease(c, "default/control-00", b).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Conflict, "{err}");
    // Hand-over via change, then release by the new ID frees it for b.
    let a2 = "33333333-3333-3333-3333-333333333333";
    s.change_lease(c, "default/control-00", a, a2).await.unwrap();
    s.release_lease(c, "default/control-00", a2).await.unwrap();
    s.acquire_lease(c, "default/control-00", secs, b).await.unwrap();
    assert_eq!(s.get_blob(c, "default/control-00").await.unwrap().unwrap(), b"owned by a");
    assert_eq!(s.list_blobs(c, "default/").await.unwrap(), ["default/control-00"]);
    assert!(s.get_blob(c, "missing").await.unwrap().is_none());

    let counts = s.counters().snapshot();
    assert!(counts.get(StorageOp::BlobLease) >= 7, "{counts:?}");
    s.delete_container_if_exists(c).await.unwrap();
}

#[tokio::test]
async fn operations_are_counted_by_kind() {
    let Some(hub) = TestHub::new("storage_layer::counted", 1) else { return };
    let s = &hub.storage;
    let q = &hub.names.work_item_queue;
    s.create_queue_if_not_exists(q).await.unwrap();
    let before = s.counters().snapshot();
    s.put_message(q, "a", Duration::ZERO).await.unwrap();
    s.put_message(q, "b", Duration::ZERO).await.unwrap();
    let msgs = s.get_messages(q, 32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        s.delete_message(q, &m.id, &m.pop_receipt).await.unwrap();
    }
    let d = s.counters().snapshot().since(&before);
    assert_eq!(
        d.non_zero(),
        vec![(StorageOp::QueuePut, 2), (StorageOp::QueueGet, 1), (StorageOp::QueueDelete, 2)]
    );
}
