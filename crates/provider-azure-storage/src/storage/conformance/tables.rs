//! Table behaviours.

use super::{StorageFactory, StorageUnderTest, sut};
use crate::storage::{
    BatchOp, EdmValue, StorageErrorKind, TableContinuation, TableEntity, TableStore, WriteMode,
};
use time::macros::datetime;

async fn table(s: &StorageUnderTest, name: &str) -> String {
    let t = s.table(name);
    s.stores.tables.create_table_if_not_exists(&t).await.unwrap();
    t
}

fn op(mode: WriteMode, entity: TableEntity) -> BatchOp {
    BatchOp { mode, entity }
}

fn s(v: &str) -> EdmValue {
    EdmValue::String(v.to_owned())
}

/// Create and delete are idempotent; reads and writes of a missing table are `NotFound`.
pub async fn table_admin_is_idempotent_and_missing_tables_are_not_found(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_admin");
    let t = &*st.stores.tables;
    let name = st.table("a");
    t.create_table_if_not_exists(&name).await.unwrap();
    t.create_table_if_not_exists(&name).await.unwrap();
    t.delete_table_if_exists(&name).await.unwrap();
    t.delete_table_if_exists(&name).await.unwrap();
    let missing = st.table("missing");
    let kinds = [
        t.get_entity(&missing, "p", "r").await.unwrap_err().kind(),
        t.query(&missing, None, None, None, None).await.unwrap_err().kind(),
        t.write(&missing, op(WriteMode::Upsert, TableEntity::new("p", "r")))
            .await
            .unwrap_err()
            .kind(),
    ];
    assert_eq!(kinds, [StorageErrorKind::NotFound; 3]);
}

/// Every [`WriteMode`] with its 404/409/412 outcomes, replace versus merge, and fresh ETags.
pub async fn table_write_modes(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_write_modes");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    let e = |props: &[(&str, &str)]| {
        props.iter().fold(TableEntity::new("p", "r"), |e, (k, v)| e.with(*k, s(v)))
    };
    let write = |mode: WriteMode, entity: TableEntity| t.write(&name, op(mode, entity));
    let kind = |r: crate::storage::StorageResult<Option<String>>| r.unwrap_err().kind();
    use StorageErrorKind::{Conflict, NotFound, PreconditionFailed};

    // The entity must exist for conditional modes, also with "any ETag".
    assert_eq!(kind(write(WriteMode::Replace(None), e(&[])).await), NotFound);
    assert_eq!(kind(write(WriteMode::Merge(None), e(&[])).await), NotFound);
    assert_eq!(kind(write(WriteMode::Delete(None), e(&[])).await), NotFound);

    let etag1 = write(WriteMode::Insert, e(&[("A", "1"), ("B", "1")])).await.unwrap().unwrap();
    assert_eq!(kind(write(WriteMode::Insert, e(&[])).await), Conflict);
    let read = t.get_entity(&name, "p", "r").await.unwrap().unwrap();
    assert_eq!(read.etag.as_deref(), Some(etag1.as_str()));
    assert!(read.timestamp.is_some());

    // Merge keeps other properties; replace drops them.
    let etag2 =
        write(WriteMode::Merge(Some(etag1.clone())), e(&[("A", "2")])).await.unwrap().unwrap();
    assert_ne!(etag1, etag2);
    let read = t.get_entity(&name, "p", "r").await.unwrap().unwrap();
    assert_eq!((read.get_str("A"), read.get_str("B")), (Some("2"), Some("1")));
    assert_eq!(
        kind(write(WriteMode::Replace(Some(etag1.clone())), e(&[])).await),
        PreconditionFailed
    );
    assert_eq!(
        kind(write(WriteMode::Merge(Some(etag1.clone())), e(&[])).await),
        PreconditionFailed
    );
    assert_eq!(
        kind(write(WriteMode::Delete(Some(etag1.clone())), e(&[])).await),
        PreconditionFailed
    );
    let etag3 = write(WriteMode::Replace(Some(etag2)), e(&[("C", "3")])).await.unwrap().unwrap();
    let read = t.get_entity(&name, "p", "r").await.unwrap().unwrap();
    assert_eq!((read.get_str("A"), read.get_str("C")), (None, Some("3")));
    assert_eq!(read.etag.as_deref(), Some(etag3.as_str()));

    // Unconditional modes.
    write(WriteMode::UpsertMerge, e(&[("D", "4")])).await.unwrap();
    let read = t.get_entity(&name, "p", "r").await.unwrap().unwrap();
    assert_eq!((read.get_str("C"), read.get_str("D")), (Some("3"), Some("4")));
    let etag5 = write(WriteMode::Upsert, e(&[("E", "5")])).await.unwrap().unwrap();
    let read = t.get_entity(&name, "p", "r").await.unwrap().unwrap();
    assert_eq!(read.properties.keys().collect::<Vec<_>>(), ["E"]);
    assert_eq!(read.etag.as_deref(), Some(etag5.as_str()));
    write(WriteMode::Merge(None), e(&[("F", "6")])).await.unwrap();
    assert_eq!(
        write(WriteMode::Delete(Some(etag5)), e(&[])).await.map(|_| ()).unwrap_err().kind(),
        PreconditionFailed
    );
    assert_eq!(write(WriteMode::Delete(None), e(&[])).await.unwrap(), None);
    assert!(t.get_entity(&name, "p", "r").await.unwrap().is_none());
    // Insert-or-merge and insert-or-replace create missing entities.
    let mut other = e(&[("G", "7")]);
    other.row_key = "r2".into();
    write(WriteMode::UpsertMerge, other.clone()).await.unwrap();
    other.row_key = "r3".into();
    write(WriteMode::Upsert, other).await.unwrap();
    let page = t.query(&name, None, None, None, None).await.unwrap();
    assert_eq!(page.entities.iter().map(|e| e.row_key.as_str()).collect::<Vec<_>>(), ["r2", "r3"]);
    t.delete_table_if_exists(&name).await.unwrap();
}

/// The checkpoint's pattern: a sentinel row guards each batch by ETag; a racing first insert is
/// 409 and a stale ETag is 412, and neither writes the sibling rows.
pub async fn table_batch_guarded_by_sentinel_etag(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_batch_sentinel");
    let t = &*st.stores.tables;
    let name = table(&st, "history").await;
    let sentinel = |n: i32| {
        TableEntity::new("inst1", "sentinel")
            .with("CheckpointCompletedTimestamp", EdmValue::Int32(n))
    };
    let row = |rk: &str| {
        TableEntity::new("inst1", rk)
            .with("EventType", s("ExecutionStarted"))
            .with("Big", EdmValue::Int64(1 << 40))
    };
    let etags = t
        .batch(
            &name,
            vec![
                op(WriteMode::Insert, sentinel(1)),
                op(WriteMode::Upsert, row("0000000000000000")),
            ],
        )
        .await
        .unwrap();
    let etag1 = etags[0].clone().expect("insert returns an ETag");

    let err = t
        .batch(
            &name,
            vec![
                op(WriteMode::Insert, sentinel(9)),
                op(WriteMode::Upsert, row("00000000000000FF")),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Conflict, "{err}");
    assert!(t.get_entity(&name, "inst1", "00000000000000FF").await.unwrap().is_none());

    let etags = t
        .batch(
            &name,
            vec![
                op(WriteMode::Merge(Some(etag1.clone())), sentinel(2)),
                op(WriteMode::Upsert, row("0000000000000001")),
            ],
        )
        .await
        .unwrap();
    let etag2 = etags[0].clone().unwrap();
    assert_ne!(etag1, etag2);

    let err = t
        .batch(
            &name,
            vec![
                op(WriteMode::Merge(Some(etag1)), sentinel(3)),
                op(WriteMode::Upsert, row("0000000000000002")),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::PreconditionFailed, "{err}");
    assert!(t.get_entity(&name, "inst1", "0000000000000002").await.unwrap().is_none());

    let now = t.get_entity(&name, "inst1", "sentinel").await.unwrap().unwrap();
    assert_eq!(now.etag.as_deref(), Some(etag2.as_str()));
    assert_eq!(now.get("CheckpointCompletedTimestamp"), Some(&EdmValue::Int32(2)));
    let row0 = t.get_entity(&name, "inst1", "0000000000000000").await.unwrap().unwrap();
    assert_eq!(row0.get("Big"), Some(&EdmValue::Int64(1 << 40)));
    assert_eq!(row0.get_str("EventType"), Some("ExecutionStarted"));

    let page = t.query(&name, Some("PartitionKey eq 'inst1'"), None, None, None).await.unwrap();
    let keys: Vec<&str> = page.entities.iter().map(|e| e.row_key.as_str()).collect();
    assert_eq!(keys, ["0000000000000000", "0000000000000001", "sentinel"]);
    t.delete_table_if_exists(&name).await.unwrap();
}

/// A batch returns one ETag per operation (`None` for deletes); a failing operation anywhere
/// in it writes nothing.
pub async fn table_batch_is_atomic_and_returns_etags_in_order(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_batch_atomic");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    t.write(&name, op(WriteMode::Insert, TableEntity::new("p", "old"))).await.unwrap();
    let etags = t
        .batch(
            &name,
            vec![
                op(WriteMode::Upsert, TableEntity::new("p", "a")),
                op(WriteMode::Delete(None), TableEntity::new("p", "old")),
                op(WriteMode::Insert, TableEntity::new("p", "b")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(etags.len(), 3);
    assert!(etags[0].is_some() && etags[1].is_none() && etags[2].is_some(), "{etags:?}");
    let a = t.get_entity(&name, "p", "a").await.unwrap().unwrap();
    assert_eq!(a.etag, etags[0]);

    // The last operation fails (the entity is missing): the first is not written either.
    let err = t
        .batch(
            &name,
            vec![
                op(WriteMode::Upsert, TableEntity::new("p", "c").with("X", s("x"))),
                op(WriteMode::Replace(None), TableEntity::new("p", "missing")),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::NotFound, "{err}");
    assert!(t.get_entity(&name, "p", "c").await.unwrap().is_none());
    let keys: Vec<String> = t
        .query(&name, None, None, None, None)
        .await
        .unwrap()
        .entities
        .into_iter()
        .map(|e| e.row_key)
        .collect();
    assert_eq!(keys, ["a", "b"]);
    t.delete_table_if_exists(&name).await.unwrap();
}

/// The service's limits that the client checks before sending (Azurite does not enforce them):
/// 100 operations, one partition key, 1 MiB per entity, 4 MiB per batch. Refused calls are not
/// counted.
pub async fn table_client_side_limits(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_client_side_limits");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    let before = st.counters.snapshot();
    let ops: Vec<BatchOp> = (0..101)
        .map(|i| op(WriteMode::Upsert, TableEntity::new("p", format!("{i:016X}"))))
        .collect();
    let err = t.batch(&name, ops).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    let err = t
        .batch(
            &name,
            vec![
                op(WriteMode::Upsert, TableEntity::new("p1", "r")),
                op(WriteMode::Upsert, TableEntity::new("p2", "r")),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    // Five entities under 1 MiB each, over 4 MiB together.
    let ops: Vec<BatchOp> = (0..5)
        .map(|i| {
            let e = TableEntity::new("p", format!("{i}")).with("X", s(&"x".repeat(900_000)));
            op(WriteMode::Upsert, e)
        })
        .collect();
    let err = t.batch(&name, ops).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    let big = TableEntity::new("p", "r").with("X", s(&"x".repeat(1_100_000)));
    let err = t.write(&name, op(WriteMode::Upsert, big)).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    assert_eq!(st.counters.snapshot().since(&before).total(), 0);
    assert!(t.query(&name, None, None, None, None).await.unwrap().entities.is_empty());
    t.delete_table_if_exists(&name).await.unwrap();
}

async fn keys(t: &dyn TableStore, table: &str, filter: &str) -> Vec<String> {
    let page = t
        .query(table, Some(filter), None, None, None)
        .await
        .unwrap_or_else(|e| panic!("{filter}: {e}"));
    page.entities.into_iter().map(|e| format!("{}/{}", e.partition_key, e.row_key)).collect()
}

/// The filter shapes the provider sends: key and property comparisons on strings (with `''`
/// escapes), datetimes, numbers and booleans, `and`/`or`/`not` and parentheses.
pub async fn table_query_filters(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_query_filters");
    let t = &*st.stores.tables;
    let name = table(&st, "instances").await;
    let rows = [
        ("ab'c", "", "Running", datetime!(2024-01-01 00:00 UTC), 1, true),
        ("ab'd", "", "Completed", datetime!(2024-02-01 00:00 UTC), 2, false),
        ("abc", "", "Pending", datetime!(2024-03-01 00:00 UTC), 3, true),
        ("b", "", "Failed", datetime!(2024-04-01 12:30 UTC), 40, false),
    ];
    for (pk, rk, status, created, n, flag) in rows {
        let e = TableEntity::new(pk, rk)
            .with("RuntimeStatus", s(status))
            .with("CreatedTime", EdmValue::DateTime(created))
            .with("N", EdmValue::Int32(n))
            .with("L", EdmValue::Int64(i64::from(n) << 33))
            .with("Flag", EdmValue::Bool(flag));
        t.write(&name, op(WriteMode::Upsert, e)).await.unwrap();
    }
    let cases: &[(&str, &[&str])] = &[
        ("PartitionKey eq 'ab''c'", &["ab'c/"]),
        ("PartitionKey eq 'ab''c' and RowKey eq ''", &["ab'c/"]),
        ("PartitionKey ge 'ab''c' and PartitionKey lt 'ab''d'", &["ab'c/"]),
        ("PartitionKey ne 'b'", &["ab'c/", "ab'd/", "abc/"]),
        ("PartitionKey gt 'ab''d' and PartitionKey le 'b'", &["abc/", "b/"]),
        (
            "(CreatedTime ge datetime'2024-01-15T00:00:00Z') and ((RuntimeStatus eq 'Completed' or RuntimeStatus eq 'Pending'))",
            &["ab'd/", "abc/"],
        ),
        ("CreatedTime le datetime'2024-02-01T00:00:00Z'", &["ab'c/", "ab'd/"]),
        ("CreatedTime gt datetime'2024-04-01T12:29:59.9990000Z'", &["b/"]),
        ("N gt 2", &["abc/", "b/"]),
        ("N lt 2 or N ge 40", &["ab'c/", "b/"]),
        ("L eq 17179869184L", &["ab'd/"]),
        ("Flag eq true", &["ab'c/", "abc/"]),
        ("not (Flag eq true)", &["ab'd/", "b/"]),
        ("Missing eq 'x'", &[]),
        ("RuntimeStatus eq 'Terminated'", &[]),
    ];
    for (filter, expected) in cases {
        assert_eq!(keys(t, &name, filter).await, *expected, "{filter}");
    }
    t.delete_table_if_exists(&name).await.unwrap();
}

/// `$select` returns only the named properties (plus keys, timestamp and ETag); `top` bounds a
/// page (1000 without it); continuation tokens walk every match in PartitionKey/RowKey order.
pub async fn table_query_select_top_and_continuation(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_query_paging");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    let mut expected = Vec::new();
    for pk in ["p1", "p2", "p3"] {
        let ops: Vec<BatchOp> = (0..9)
            .map(|i| {
                let e = TableEntity::new(pk, format!("{i:02}"))
                    .with("A", EdmValue::Int32(i))
                    .with("B", s("b"))
                    .with("Odd", EdmValue::Bool(i % 2 == 1));
                op(WriteMode::Upsert, e)
            })
            .collect();
        expected.extend((0..9).map(|i| format!("{pk}/{i:02}")));
        t.batch(&name, ops).await.unwrap();
    }
    let walk = |filter: Option<&'static str>, top: u32| {
        let name = name.clone();
        async move {
            let mut seen = Vec::new();
            let mut continuation: Option<TableContinuation> = None;
            for _ in 0..100 {
                let page =
                    t.query(&name, filter, Some(&["A"]), Some(top), continuation).await.unwrap();
                assert!(page.entities.len() <= top as usize, "page of {}", page.entities.len());
                for e in &page.entities {
                    assert!(e.etag.is_some() && e.timestamp.is_some(), "{e:?}");
                    assert!(e.get("A").is_some() && e.get("B").is_none(), "{e:?}");
                    seen.push(format!("{}/{}", e.partition_key, e.row_key));
                }
                continuation = page.continuation;
                if continuation.is_none() {
                    return seen;
                }
            }
            panic!("continuation never ended");
        }
    };
    assert_eq!(walk(None, 4).await, expected);
    let odd: Vec<String> =
        expected.iter().filter(|k| k.ends_with(['1', '3', '5', '7'])).cloned().collect();
    assert_eq!(walk(Some("Odd eq true"), 3).await, odd);
    // Without `top` a page holds at most 1000 entities.
    let big = st.table("big");
    t.create_table_if_not_exists(&big).await.unwrap();
    for chunk in 0..11 {
        let ops: Vec<BatchOp> = (0..100)
            .map(|i| {
                op(WriteMode::Upsert, TableEntity::new("p", format!("{:05}", chunk * 100 + i)))
            })
            .collect();
        t.batch(&big, ops).await.unwrap();
    }
    let page = t.query(&big, None, None, None, None).await.unwrap();
    assert_eq!(page.entities.len(), 1000);
    let rest = t.query(&big, None, None, None, page.continuation).await.unwrap();
    assert_eq!(rest.entities.len(), 100);
    assert_eq!(rest.entities[0].row_key, "01000");
    assert!(rest.continuation.is_none());
    t.delete_table_if_exists(&big).await.unwrap();

    let first = t.query(&name, None, None, Some(5), None).await.unwrap();
    assert_eq!(first.entities.len(), 5);
    assert!(first.continuation.is_some());
    assert_eq!(first.entities[0].get_str("B"), Some("b"));
    t.delete_table_if_exists(&name).await.unwrap();
}

/// Every EDM type the provider writes reads back with its type and value (datetimes to 100 ns).
pub async fn table_property_types_round_trip(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_property_types");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    let e = TableEntity::new("p", "r")
        .with("S", s("häßlich ✓ 'quoted'"))
        .with("Empty", s(""))
        .with("I", EdmValue::Int32(-5))
        .with("L", EdmValue::Int64(-(1 << 40)))
        .with("D", EdmValue::Double(2.5))
        .with("B", EdmValue::Bool(false))
        .with("T", EdmValue::DateTime(datetime!(2024-01-02 03:04:05.1234567 UTC)))
        .with("G", EdmValue::Guid("c0ffee00-0000-4000-8000-000000000001".into()))
        .with("Bin", EdmValue::Binary(vec![0, 1, 2, 250, 255]));
    t.write(&name, op(WriteMode::Insert, e.clone())).await.unwrap();
    let back = t.get_entity(&name, "p", "r").await.unwrap().unwrap();
    assert_eq!(back.properties, e.properties);
    t.delete_table_if_exists(&name).await.unwrap();
}

/// A batch that touches one row twice is refused and writes nothing.
pub async fn table_batch_refuses_duplicate_rows(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_batch_duplicate_rows");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    let err = t
        .batch(
            &name,
            vec![
                op(WriteMode::Upsert, TableEntity::new("p", "a")),
                op(WriteMode::Upsert, TableEntity::new("p", "b")),
                op(WriteMode::UpsertMerge, TableEntity::new("p", "a")),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidInput, "{err}");
    assert!(t.query(&name, None, None, None, None).await.unwrap().entities.is_empty());
    // Table names are case-insensitive.
    t.write(&name.to_uppercase(), op(WriteMode::Upsert, TableEntity::new("p", "c"))).await.unwrap();
    assert!(t.get_entity(&name, "p", "c").await.unwrap().is_some());
    t.delete_table_if_exists(&name).await.unwrap();
}

/// What the service itself refuses (Azurite too): forbidden key characters, keys over 512
/// UTF-16 units, string properties over 64 KiB (UTF-16). Such writes are sent (counted) and
/// write nothing.
pub async fn table_service_side_limits(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::table_service_side_limits");
    let t = &*st.stores.tables;
    let name = table(&st, "t").await;
    let upsert = |e: TableEntity| t.write(&name, op(WriteMode::Upsert, e));
    // (Azure also refuses a tab; Azurite accepts it in a batch, so only the in-memory tests
    // check that.)
    for pk in ["a/b", "a\\b", "a#b", "a?b", "a\u{1}b", "a\u{7f}b"] {
        let e = upsert(TableEntity::new(pk, "r")).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{pk:?}: {e}");
        let e = upsert(TableEntity::new("p", pk)).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{pk:?}: {e}");
    }
    for pk in ["it's", "%2F", "é😀", ""] {
        upsert(TableEntity::new(pk, "r")).await.unwrap();
        assert!(t.get_entity(&name, pk, "r").await.unwrap().is_some(), "{pk:?}");
    }
    upsert(TableEntity::new("x".repeat(512), "r")).await.unwrap();
    let e = upsert(TableEntity::new("x".repeat(513), "r")).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");

    let before = st.counters.snapshot();
    upsert(TableEntity::new("p", "max").with("S", s(&"a".repeat(32 * 1024)))).await.unwrap();
    let e =
        upsert(TableEntity::new("p", "over").with("S", s(&"a".repeat(40_000)))).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
    assert!(t.get_entity(&name, "p", "over").await.unwrap().is_none());
    assert_eq!(st.counters.snapshot().since(&before).get(crate::storage::StorageOp::TableWrite), 2);
    t.delete_table_if_exists(&name).await.unwrap();
}
