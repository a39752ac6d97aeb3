//! Table-variant specifics: the `{Hub}Partitions` columns and the cooperative steal protocol.

use crate::{Hub, eventually};
use durabletask_partition_manager::ManagerKind;
use durabletask_partition_manager::conformance::RecordedKind;
use durabletask_partition_manager::store::PartitionTableStore;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn claims_and_renewals_write_the_dtf_columns() {
    let hub = Hub::new();
    let a = hub.worker(ManagerKind::Table, hub.settings("a", 2), Duration::ZERO).await;
    eventually("a owns both", Duration::from_secs(30), || a.owned_partitions().len() == 2).await;
    let rows = hub.table.list().await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.row_key.as_str()).collect::<Vec<_>>(),
        ["memhub-control-00", "memhub-control-01"]
    );
    let first = rows[0].clone();
    assert_eq!(first.current_owner.as_deref(), Some("a"));
    assert_eq!(first.next_owner, None);
    assert!(!first.is_draining);
    let renewal = first.last_renewal.unwrap();
    assert_eq!(first.expires_at.unwrap() - renewal, time::Duration::seconds(30));
    assert!(first.owned_since.unwrap() <= renewal);

    // The next pass renews: LastRenewal and ExpiresAt move, OwnedSince stays.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let again = hub.table.list().await.unwrap()[0].clone();
    assert!(again.last_renewal.unwrap() > renewal);
    assert_eq!(again.owned_since, first.owned_since);
    assert_ne!(again.etag, first.etag);
    a.stop(Duration::from_secs(60)).await.unwrap();
    let released = hub.table.list().await.unwrap();
    assert!(released.iter().all(|r| r.current_owner.is_none() && !r.is_draining));
}

#[tokio::test(start_paused = true)]
async fn a_thief_sets_next_owner_and_the_owner_drains_before_releasing() {
    let hub = Hub::new();
    let drain = Duration::from_secs(20);
    let a = hub.worker(ManagerKind::Table, hub.settings("a", 2), drain).await;
    eventually("a owns both", Duration::from_secs(30), || a.owned_partitions().len() == 2).await;
    let b = hub.worker(ManagerKind::Table, hub.settings("b", 2), drain).await;

    // Mid-hand-over: the row names b as NextOwner, a is draining, nobody listens.
    let mut stolen = None;
    eventually("a drains for b", Duration::from_secs(60), || {
        stolen = futures_row(&hub).into_iter().find(|r| {
            r.current_owner.as_deref() == Some("a")
                && r.next_owner.as_deref() == Some("b")
                && r.is_draining
        });
        stolen.is_some()
    })
    .await;
    let q = stolen.unwrap().row_key;
    assert!(a.is_owned(&q), "a draining partition is still owned (in-flight work may checkpoint)");
    assert!(!b.is_owned(&q));
    assert!(!hub.recorder.listening().contains_key(&q), "nobody listens during the drain");

    eventually("b listens", Duration::from_secs(60), || b.is_owned(&q)).await;
    let events = hub.recorder.events();
    let pos = |w: &str, k: RecordedKind| {
        events.iter().position(|e| e.worker == w && e.partition == q && e.kind == k).unwrap()
    };
    assert!(pos("a", RecordedKind::DrainStarted) < pos("a", RecordedKind::DrainCompleted));
    assert!(pos("a", RecordedKind::DrainCompleted) < pos("b", RecordedKind::Acquired));
    assert!(
        events[pos("b", RecordedKind::Acquired)].at
            - events[pos("a", RecordedKind::DrainStarted)].at
            >= drain
    );
    let row = futures_row(&hub).into_iter().find(|r| r.row_key == q).unwrap();
    assert_eq!(row.current_owner.as_deref(), Some("b"));
    assert_eq!(row.next_owner, None);
    hub.recorder.assert_no_violations();
    a.stop(Duration::from_secs(120)).await.unwrap();
    b.stop(Duration::from_secs(120)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_row_taken_over_in_storage_is_dropped_at_the_next_read() {
    let hub = Hub::new();
    let a = hub.worker(ManagerKind::Table, hub.settings("a", 1), Duration::ZERO).await;
    eventually("a owns it", Duration::from_secs(30), || a.owned_partitions().len() == 1).await;
    // Somebody else overwrites the row (e.g. after a long pause of ours).
    let mut row = hub.table.list().await.unwrap().remove(0);
    row.current_owner = Some("intruder".into());
    hub.table.replace(&row).await.unwrap();
    eventually("a drops it", Duration::from_secs(15), || !a.is_owned("memhub-control-00")).await;
    let lost =
        hub.recorder.events().iter().any(|e| e.worker == "a" && e.kind == RecordedKind::Lost);
    assert!(lost, "dropping a partition owned by someone else calls on_lost");
    a.abort();
}

fn futures_row(hub: &Hub) -> Vec<durabletask_partition_manager::store::PartitionRow> {
    // The in-memory store answers synchronously; poll its future once.
    let fut = hub.table.list();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(rows) => rows.unwrap(),
        std::task::Poll::Pending => unreachable!("the in-memory store never waits"),
    }
}
