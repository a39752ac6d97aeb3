//! Blob-variant specifics: lease blob layout and bodies.

use crate::{Hub, eventually};
use durabletask_partition_manager::ManagerKind;
use durabletask_partition_manager::store::{LeaseBlobStore, LeaseBody};
use std::time::Duration;

async fn body(hub: &Hub, name: &str) -> LeaseBody {
    serde_json::from_slice(&hub.blobs.read(name).await.unwrap().unwrap()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn safe_blob_publishes_intent_and_ownership_bodies() {
    let hub = Hub::new();
    let a = hub.worker(ManagerKind::SafeBlob, hub.settings("a", 2), Duration::ZERO).await;
    eventually("a owns both", Duration::from_secs(60), || a.owned_partitions().len() == 2).await;
    let mut names = hub.blobs.list("").await.unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "intent/memhub-control-00",
            "intent/memhub-control-01",
            "ownership/memhub-control-00",
            "ownership/memhub-control-01",
            "taskhub.json"
        ]
    );
    for prefix in ["intent/", "ownership/"] {
        let b = body(&hub, &format!("{prefix}memhub-control-01")).await;
        assert_eq!(b.partition_id, "memhub-control-01");
        assert_eq!(b.owner.as_deref(), Some("a"));
        assert!(uuid::Uuid::parse_str(b.token.as_deref().unwrap()).is_ok());
        assert_eq!(b.epoch, 1);
    }
    let raw =
        String::from_utf8(hub.blobs.read("ownership/memhub-control-00").await.unwrap().unwrap())
            .unwrap();
    for field in ["\"PartitionId\"", "\"Owner\"", "\"Token\"", "\"Epoch\""] {
        assert!(raw.contains(field), "{raw}");
    }
    let info: serde_json::Value =
        serde_json::from_slice(&hub.blobs.read("taskhub.json").await.unwrap().unwrap()).unwrap();
    assert_eq!(info["TaskHubName"], "MemHub");
    assert_eq!(info["PartitionCount"], 2);

    a.stop(Duration::from_secs(60)).await.unwrap();
    let released = body(&hub, "ownership/memhub-control-00").await;
    assert_eq!((released.owner, released.token), (None, None));
    // Released means the lease is free again: anybody may acquire it at once.
    hub.blobs
        .acquire(
            "ownership/memhub-control-00",
            Duration::from_secs(15),
            &uuid::Uuid::new_v4().to_string(),
        )
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn legacy_blob_uses_default_leases() {
    let hub = Hub::new();
    let a = hub.worker(ManagerKind::LegacyBlob, hub.settings("a", 2), Duration::ZERO).await;
    eventually("a owns both", Duration::from_secs(60), || a.owned_partitions().len() == 2).await;
    let b = body(&hub, "default/memhub-control-00").await;
    assert_eq!(b.owner.as_deref(), Some("a"));
    assert!(hub.blobs.list("intent/").await.unwrap().is_empty());
    a.stop(Duration::from_secs(60)).await.unwrap();
}
