//! Start/stop, settings validation, self-fencing and the recorder itself.

use crate::{Hub, eventually};
use durabletask_partition_manager::conformance::{
    Cluster, ConformanceConfig, RecordedKind, Recorder,
};
use durabletask_partition_manager::{
    Error, LeaseStores, ManagerKind, Partition, PartitionListener,
};
use std::time::Duration;

#[tokio::test]
async fn invalid_settings_are_refused_by_create() {
    let hub = Hub::new();
    let mut s = hub.settings("a", 17);
    let stores = LeaseStores { table: hub.table.clone(), blobs: hub.blobs.clone() };
    let err = durabletask_partition_manager::create(
        ManagerKind::Table,
        s.clone(),
        stores.clone(),
        hub.clock.clone(),
    )
    .unwrap_err();
    assert!(matches!(&err, Error::Settings(e) if e.setting == "partition_count"), "{err}");
    s.partition_count = 4;
    s.lease_interval = Duration::from_secs(5);
    s.lease_renew_interval = Duration::from_secs(1);
    s.fence_margin = Duration::from_secs(1);
    durabletask_partition_manager::create(
        ManagerKind::Table,
        s.clone(),
        stores.clone(),
        hub.clock.clone(),
    )
    .unwrap();
    let err =
        durabletask_partition_manager::create(ManagerKind::SafeBlob, s, stores, hub.clock.clone())
            .unwrap_err();
    assert!(err.to_string().contains("blob leases last 15-60 s"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn starting_twice_is_an_error() {
    let hub = Hub::new();
    let a = hub.worker(ManagerKind::Table, hub.settings("a", 1), Duration::ZERO).await;
    let err = a.start(hub.recorder.listener("a", Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted));
    a.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_times_out_abandons_with_on_lost() {
    for kind in [ManagerKind::Table, ManagerKind::SafeBlob, ManagerKind::LegacyBlob] {
        let hub = Hub::new();
        let a = hub.worker(kind, hub.settings("a", 2), Duration::from_secs(300)).await;
        eventually("a owns both", Duration::from_secs(60), || a.owned_partitions().len() == 2)
            .await;
        let err = a.stop(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, Error::StopTimedOut { still_owned: 2 }), "{kind:?}: {err}");
        assert!(a.owned_partitions().is_empty());
        assert!(!a.is_owned("memhub-control-00"));
        let lost = hub.recorder.events().iter().filter(|e| e.kind == RecordedKind::Lost).count();
        assert_eq!(lost, 2, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn self_fencing_fires_on_time_while_storage_hangs() {
    // One worker; its storage hangs; nobody else exists, so only the local deadline can stop it.
    for kind in [ManagerKind::Table, ManagerKind::SafeBlob, ManagerKind::LegacyBlob] {
        let hub = Hub::new();
        let cfg = ConformanceConfig {
            kind,
            settings: hub.settings("unused", 2),
            stores: LeaseStores { table: hub.table.clone(), blobs: hub.blobs.clone() },
            clock: hub.clock.clone(),
            drain_delay: Duration::ZERO,
        };
        let mut c = Cluster::new(&cfg).await;
        let w = c.add_worker().await;
        c.wait_balanced("owns both").await;
        // Right after a renewal pass, hang.
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.set_hung(&w, true);
        let hung_at = tokio::time::Instant::now();
        let s = &cfg.settings;
        eventually("fenced", s.lease_interval, || c.manager(&w).owned_partitions().is_empty())
            .await;
        let fenced = hung_at.elapsed();
        assert!(fenced <= s.lease_interval - s.fence_margin, "{kind:?}: fenced after {fenced:?}");
        assert!(
            fenced + s.lease_renew_interval + s.operation_timeout
                >= s.lease_interval - s.fence_margin,
            "{kind:?}: fenced too early ({fenced:?})"
        );
        assert!(!c.manager(&w).is_owned("memhub-control-00"));
        c.kill(&w);
    }
}

#[tokio::test]
async fn the_recorder_flags_two_listeners_and_accepts_hand_overs() {
    let p = Partition { index: 0, control_queue: "hub-control-00".into() };
    let rec = Recorder::new(true);
    let (a, b) = (rec.listener("a", Duration::ZERO), rec.listener("b", Duration::ZERO));
    a.on_acquired(&p).await;
    a.drain(&p).await;
    b.on_acquired(&p).await;
    b.on_lost(&p).await;
    a.on_acquired(&p).await;
    assert!(rec.violations().is_empty(), "{:?}", rec.violations());
    b.on_acquired(&p).await;
    assert_eq!(rec.violations().len(), 1, "a second listener is a violation");
}

#[tokio::test(start_paused = true)]
async fn legacy_stealing_overlaps_for_at_most_a_renew_interval() {
    // The legacy variant has no drain on steal: the victim stops only at its next renewal.
    let hub = Hub::new();
    let cfg = ConformanceConfig {
        kind: ManagerKind::LegacyBlob,
        settings: hub.settings("unused", 4),
        stores: LeaseStores { table: hub.table.clone(), blobs: hub.blobs.clone() },
        clock: hub.clock.clone(),
        drain_delay: Duration::ZERO,
    };
    let mut c = Cluster::new(&cfg).await;
    c.add_worker().await;
    c.wait_balanced("one worker").await;
    c.add_worker().await;
    c.wait_balanced("two workers").await;
    let overlap = c.recorder.max_overlap();
    assert!(overlap > Duration::ZERO, "legacy steals do overlap (the recorder must see it)");
    assert!(
        overlap <= cfg.settings.lease_renew_interval + cfg.settings.operation_timeout,
        "{overlap:?}"
    );
    c.shutdown().await;
}
