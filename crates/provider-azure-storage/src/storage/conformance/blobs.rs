//! Blob and lease behaviours.

use super::{StorageFactory, StorageUnderTest, sut};
use crate::storage::{INFINITE_LEASE, StorageErrorKind, StorageResult};
use std::time::Duration;

const A: &str = "11111111-1111-1111-1111-111111111111";
const B: &str = "22222222-2222-2222-2222-222222222222";
const A2: &str = "33333333-3333-3333-3333-333333333333";
const SECS_15: Duration = Duration::from_secs(15);

async fn container(s: &StorageUnderTest, name: &str) -> String {
    let c = s.container(name);
    s.stores.blobs.create_container_if_not_exists(&c).await.unwrap();
    c
}

fn kind<T: std::fmt::Debug>(r: StorageResult<T>) -> StorageErrorKind {
    r.unwrap_err().kind()
}

/// Uploads replace, downloads of missing blobs are `None`, deletes are idempotent, listings
/// filter by prefix in name order; a missing container is `NotFound` for puts and listings.
pub async fn blob_put_get_delete_list(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::blob_put_get_delete_list");
    let b = &*st.stores.blobs;
    let c = container(&st, "c").await;
    b.create_container_if_not_exists(&c).await.unwrap();
    for name in ["a/2", "b/1", "a/1", "a"] {
        b.put_blob(&c, name, name.as_bytes().to_vec(), None).await.unwrap();
    }
    b.put_blob(&c, "a/1", b"replaced".to_vec(), None).await.unwrap();
    assert_eq!(b.get_blob(&c, "a/1").await.unwrap().unwrap(), b"replaced");
    assert_eq!(b.list_blobs(&c, "a/").await.unwrap(), ["a/1", "a/2"]);
    assert_eq!(b.list_blobs(&c, "").await.unwrap(), ["a", "a/1", "a/2", "b/1"]);
    assert!(b.list_blobs(&c, "z").await.unwrap().is_empty());
    b.delete_blob_if_exists(&c, "a/2").await.unwrap();
    b.delete_blob_if_exists(&c, "a/2").await.unwrap();
    assert!(b.get_blob(&c, "a/2").await.unwrap().is_none());
    b.put_blob(&c, "empty", Vec::new(), None).await.unwrap();
    assert_eq!(b.get_blob(&c, "empty").await.unwrap(), Some(Vec::new()));

    let missing = st.container("missing");
    assert!(b.get_blob(&missing, "x").await.unwrap().is_none());
    b.delete_blob_if_exists(&missing, "x").await.unwrap();
    assert_eq!(
        kind(b.put_blob(&missing, "x", b"x".to_vec(), None).await),
        StorageErrorKind::NotFound
    );
    assert_eq!(kind(b.list_blobs(&missing, "").await), StorageErrorKind::NotFound);
    b.delete_container_if_exists(&c).await.unwrap();
    b.delete_container_if_exists(&c).await.unwrap();
}

/// A held lease excludes other owners from leasing and writing; change hands it over and
/// release frees it.
pub async fn blob_lease_excludes_a_second_owner(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::blob_lease_exclusion");
    let s = &*st.stores.blobs;
    let c = container(&st, "leases").await;
    let blob = "default/control-00";
    s.put_blob(&c, blob, b"{}".to_vec(), None).await.unwrap();
    s.acquire_lease(&c, blob, SECS_15, A).await.unwrap();
    let err = s.acquire_lease(&c, blob, SECS_15, B).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Conflict, "{err}");
    let err = s.put_blob(&c, blob, b"x".to_vec(), None).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::PreconditionFailed, "{err}");
    s.put_blob(&c, blob, b"owned by a".to_vec(), Some(A)).await.unwrap();
    s.renew_lease(&c, blob, A).await.unwrap();
    let err = s.renew_lease(&c, blob, B).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Conflict, "{err}");
    s.change_lease(&c, blob, A, A2).await.unwrap();
    s.release_lease(&c, blob, A2).await.unwrap();
    s.acquire_lease(&c, blob, SECS_15, B).await.unwrap();
    assert_eq!(s.get_blob(&c, blob).await.unwrap().unwrap(), b"owned by a");
    assert_eq!(s.list_blobs(&c, "default/").await.unwrap(), [blob]);
    s.release_lease(&c, blob, B).await.unwrap();
    s.delete_container_if_exists(&c).await.unwrap();
}

/// The lease calls' 404/409/412 outcomes, infinite leases, and the client-side checks
/// (durations of 15-60 s, GUID lease IDs).
pub async fn blob_lease_outcomes(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::blob_lease_outcomes");
    let s = &*st.stores.blobs;
    let c = container(&st, "leases").await;
    use StorageErrorKind::{Conflict, InvalidInput, NotFound, PreconditionFailed};
    assert_eq!(kind(s.acquire_lease(&c, "missing", SECS_15, A).await), NotFound);
    s.put_blob(&c, "x", b"x".to_vec(), None).await.unwrap();
    // No lease yet.
    assert_eq!(kind(s.renew_lease(&c, "x", A).await), Conflict);
    assert_eq!(kind(s.release_lease(&c, "x", A).await), Conflict);
    assert_eq!(kind(s.change_lease(&c, "x", A, B).await), Conflict);
    assert_eq!(kind(s.put_blob(&c, "x", b"y".to_vec(), Some(A)).await), PreconditionFailed);
    // Client-side checks.
    assert_eq!(kind(s.acquire_lease(&c, "x", Duration::from_secs(10), A).await), InvalidInput);
    assert_eq!(kind(s.acquire_lease(&c, "x", Duration::from_secs(61), A).await), InvalidInput);
    assert_eq!(kind(s.acquire_lease(&c, "x", SECS_15, "not-a-guid").await), InvalidInput);

    s.acquire_lease(&c, "x", Duration::from_secs(60), A).await.unwrap();
    // Acquiring again with the holder's ID succeeds; others are refused.
    s.acquire_lease(&c, "x", SECS_15, A).await.unwrap();
    assert_eq!(kind(s.release_lease(&c, "x", B).await), Conflict);
    assert_eq!(kind(s.change_lease(&c, "x", B, A2).await), Conflict);
    assert_eq!(kind(s.put_blob(&c, "x", b"y".to_vec(), Some(B)).await), PreconditionFailed);
    assert_eq!(kind(s.delete_blob_if_exists(&c, "x").await), PreconditionFailed);
    s.change_lease(&c, "x", A, A2).await.unwrap();
    assert_eq!(kind(s.renew_lease(&c, "x", A).await), Conflict);
    s.release_lease(&c, "x", A2).await.unwrap();
    // Released: writable and deletable without a lease.
    s.put_blob(&c, "x", b"free".to_vec(), None).await.unwrap();

    // Infinite lease.
    s.acquire_lease(&c, "x", INFINITE_LEASE, B).await.unwrap();
    assert_eq!(kind(s.acquire_lease(&c, "x", SECS_15, A).await), Conflict);
    s.renew_lease(&c, "x", B).await.unwrap();
    s.release_lease(&c, "x", B).await.unwrap();
    s.delete_blob_if_exists(&c, "x").await.unwrap();
    s.delete_container_if_exists(&c).await.unwrap();
}

/// A lease expires after its duration (on the store's clock): another owner acquires it and
/// the old one can no longer renew; an unclaimed expired lease can still be renewed by its
/// holder; an infinite lease never expires.
pub async fn blob_lease_expiry(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::blob_lease_expiry");
    let s = &*st.stores.blobs;
    let c = container(&st, "leases").await;
    for name in ["taken", "kept", "lapsed", "forever"] {
        s.put_blob(&c, name, b"x".to_vec(), None).await.unwrap();
    }
    s.acquire_lease(&c, "taken", SECS_15, A).await.unwrap();
    s.acquire_lease(&c, "lapsed", SECS_15, A).await.unwrap();
    s.acquire_lease(&c, "kept", SECS_15, A).await.unwrap();
    s.acquire_lease(&c, "forever", INFINITE_LEASE, A).await.unwrap();
    st.time.pass(Duration::from_secs(10)).await;
    assert_eq!(kind(s.acquire_lease(&c, "taken", SECS_15, B).await), StorageErrorKind::Conflict);
    st.time.pass(Duration::from_secs(7)).await;

    s.acquire_lease(&c, "taken", SECS_15, B).await.unwrap();
    assert_eq!(kind(s.renew_lease(&c, "taken", A).await), StorageErrorKind::Conflict);
    s.renew_lease(&c, "kept", A).await.unwrap();
    assert_eq!(kind(s.acquire_lease(&c, "kept", SECS_15, B).await), StorageErrorKind::Conflict);
    assert_eq!(kind(s.acquire_lease(&c, "forever", SECS_15, B).await), StorageErrorKind::Conflict);
    for (name, id) in [("taken", B), ("kept", A), ("forever", A)] {
        s.release_lease(&c, name, id).await.unwrap();
    }
    // Expired and unclaimed: the holder can still release it, but not change it or write
    // under it; a second release is refused; without a lease it is writable and deletable.
    assert_eq!(kind(s.change_lease(&c, "lapsed", A, B).await), StorageErrorKind::Conflict);
    let e = s.put_blob(&c, "lapsed", b"y".to_vec(), Some(A)).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::PreconditionFailed, "{e}");
    s.release_lease(&c, "lapsed", A).await.unwrap();
    assert_eq!(kind(s.release_lease(&c, "lapsed", A).await), StorageErrorKind::Conflict);
    s.put_blob(&c, "lapsed", b"y".to_vec(), None).await.unwrap();
    s.delete_blob_if_exists(&c, "lapsed").await.unwrap();
    s.delete_container_if_exists(&c).await.unwrap();
}

/// Repeated changes succeed; a released lease cannot be renewed; a released blob can be leased
/// by another owner.
pub async fn blob_lease_edge_cases(f: &dyn StorageFactory) {
    let st = sut!(f, "storage::blob_lease_edge_cases");
    let s = &*st.stores.blobs;
    let c = container(&st, "leases").await;
    s.put_blob(&c, "x", b"x".to_vec(), None).await.unwrap();
    s.acquire_lease(&c, "x", SECS_15, A).await.unwrap();
    s.change_lease(&c, "x", A, A2).await.unwrap();
    // The same change again (a retry after a lost answer) succeeds.
    s.change_lease(&c, "x", A, A2).await.unwrap();
    s.renew_lease(&c, "x", A2).await.unwrap();
    s.release_lease(&c, "x", A2).await.unwrap();
    // A released lease is gone: its holder cannot renew or release it again.
    assert_eq!(kind(s.renew_lease(&c, "x", A2).await), StorageErrorKind::Conflict);
    s.acquire_lease(&c, "x", SECS_15, B).await.unwrap();
    s.release_lease(&c, "x", B).await.unwrap();
    s.delete_container_if_exists(&c).await.unwrap();
}
