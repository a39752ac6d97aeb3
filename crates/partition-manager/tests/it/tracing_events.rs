//! The managers report ownership changes as structured `tracing` events with DTF's names.

use crate::{Hub, eventually};
use durabletask_partition_manager::store::PartitionTableStore;
use durabletask_partition_manager::{ManagerKind, TRACE_TARGET};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

type Captured = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

struct Capture(Captured);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").trim_matches('"').into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == TRACE_TARGET {
            let mut f = Fields(BTreeMap::new());
            event.record(&mut f);
            f.0.insert("level".into(), event.metadata().level().to_string());
            self.0.lock().unwrap().push(f.0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn acquisitions_steals_releases_and_losses_are_traced() {
    let captured: Captured = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Capture(captured.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let hub = Hub::new();
    let a = hub.worker(ManagerKind::Table, hub.settings("a", 2), Duration::ZERO).await;
    eventually("a owns both", Duration::from_secs(30), || a.owned_partitions().len() == 2).await;
    let b = hub.worker(ManagerKind::Table, hub.settings("b", 2), Duration::ZERO).await;
    eventually("b owns one", Duration::from_secs(60), || b.owned_partitions().len() == 1).await;
    a.stop(Duration::from_secs(60)).await.unwrap();
    eventually("b owns both", Duration::from_secs(60), || b.owned_partitions().len() == 2).await;
    let mut row = hub.table.list().await.unwrap().remove(0);
    row.current_owner = Some("intruder".into());
    hub.table.replace(&row).await.unwrap();
    eventually("b loses one", Duration::from_secs(30), || b.owned_partitions().len() == 1).await;
    b.abort();

    let events = captured.lock().unwrap().clone();
    let find = |worker: &str, name: &str| {
        events.iter().find(|e| e["worker"] == worker && e["event"] == name).cloned()
    };
    for (worker, name) in [
        ("a", "LeaseAcquisitionSucceeded"),
        ("b", "LeaseStealingSucceeded"),
        ("a", "LeaseReleased"),
        ("a", "PartitionManagerInfo"),
        ("b", "PartitionLost"),
    ] {
        let e =
            find(worker, name).unwrap_or_else(|| panic!("no {name} from {worker}: {events:#?}"));
        assert_eq!(e["task_hub"], "MemHub");
        if name != "PartitionManagerInfo" {
            assert!(e["partition"].starts_with("memhub-control-"), "{e:?}");
        }
    }
    assert_eq!(find("b", "PartitionLost").unwrap()["level"], "WARN");
}
