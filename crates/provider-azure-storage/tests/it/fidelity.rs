//! Fidelity to DurableTask.AzureStorage where tools and habits depend on it: `LastUpdatedTime`
//! moves with every checkpoint, `IsPlayed` is false on `OrchestratorStarted` rows, and poison
//! handling quarantines what can never be processed.

use crate::support::{account, provider, test_settings};
use durabletask_azure_storage::AzureStorageOrchestrationService;
use durabletask_azure_storage::storage::{AzureStorage, EdmValue, QueueStore, TableStore};
use durabletask_core::{
    Dispatchers, OrchestrationContext, OrchestrationService, OrchestrationStatus, Registry,
    StartOptions, TaskHubClient, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;

fn registry() -> Registry {
    Registry::builder()
        .orchestration("Collect", |ctx: OrchestrationContext, n: u32| async move {
            ctx.set_custom_status(&"collecting");
            let mut sum = 0u32;
            for _ in 0..n {
                let v: u32 = ctx.wait_for_external_event("add").await?;
                sum += v;
            }
            Ok(sum)
        })
        .build()
}

struct Running {
    svc: AzureStorageOrchestrationService,
    client: TaskHubClient,
    worker: Dispatchers,
}

async fn running(test: &str) -> Option<(Running, AzureStorage)> {
    let acct = account(test)?;
    let svc = provider(&acct, test_settings(test, 1));
    svc.create_if_not_exists().await.expect("create hub");
    let worker = Dispatchers::start(Arc::new(svc.clone()), registry(), WorkerOptions::default())
        .await
        .expect("worker");
    let client = TaskHubClient::new(Arc::new(svc.clone()))
        .with_max_poll_interval(Duration::from_millis(100));
    Some((Running { svc, client, worker }, AzureStorage::new(&acct, Duration::from_secs(20))))
}

impl Running {
    async fn stop(self) {
        self.worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");
        self.svc.delete().await.expect("delete hub");
    }
}

async fn history_len(client: &TaskHubClient, id: &str) -> usize {
    client.get_history(id).await.map(|h| h.len()).unwrap_or(0)
}

/// An episode that changes neither the status nor the custom status still moves the Instances
/// row's `LastUpdatedTime` (DTF writes the row at every checkpoint; "running but not updated for
/// an hour" is how operators find stuck instances).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_updated_time_moves_with_every_checkpoint() {
    let Some((r, _st)) = running("last_updated").await else { return };
    r.client
        .schedule_new_orchestration("Collect", &3u32, StartOptions::with_instance_id("lu-1"))
        .await
        .expect("start");
    let first = crate::support::wait_for(Duration::from_secs(60), || async {
        let s = r.client.get_state_with("lu-1", false).await.ok()??;
        (s.orchestration_status == OrchestrationStatus::Running).then_some(s)
    })
    .await;
    let mut previous = first.last_updated_time;
    for i in 0..2u32 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = history_len(&r.client, "lu-1").await;
        r.client.raise_event("lu-1", "add", &i).await.expect("raise");
        crate::support::wait_for(Duration::from_secs(60), || async {
            (history_len(&r.client, "lu-1").await > before).then_some(())
        })
        .await;
        let s = r.client.get_state_with("lu-1", false).await.expect("state").expect("row");
        assert_eq!(s.orchestration_status, OrchestrationStatus::Running);
        assert!(
            s.last_updated_time >= previous + time::Duration::seconds(1),
            "episode {i}: LastUpdatedTime {} did not move from {previous}",
            s.last_updated_time
        );
        previous = s.last_updated_time;
    }
    r.stop().await;
}

/// `IsPlayed` is false on `OrchestratorStarted` rows (DTF's executor skips that event) and true
/// on the events the episode processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_played_matches_dtf_in_history_rows() {
    let Some((r, st)) = running("is_played").await else { return };
    r.client
        .schedule_new_orchestration("Collect", &1u32, StartOptions::with_instance_id("ip-1"))
        .await
        .expect("start");
    r.client.raise_event("ip-1", "add", &1u32).await.expect("raise");
    r.client.wait_for_completion("ip-1", Duration::from_secs(60)).await.expect("done");
    let rows = st
        .query(
            &r.svc.resource_names().history_table,
            Some("PartitionKey eq 'ip-1'"),
            None,
            None,
            None,
        )
        .await
        .expect("query")
        .entities;
    let mut seen = 0;
    for row in &rows {
        let Some(EdmValue::String(kind)) = row.properties.get("EventType") else { continue };
        let played = matches!(row.properties.get("IsPlayed"), Some(EdmValue::Bool(true)));
        match kind.as_str() {
            "OrchestratorStarted" => {
                assert!(!played, "OrchestratorStarted row {} has IsPlayed", row.row_key);
                seen += 1;
            }
            "ExecutionStarted" | "EventRaised" => {
                assert!(played, "{kind} row {} is not played", row.row_key);
            }
            _ => {}
        }
    }
    assert!(seen >= 1, "history has OrchestratorStarted rows: {rows:?}");
    r.stop().await;
}

/// A provider over a fresh hub with `age` as `newer_version_quarantine_age`, started without a
/// dispatcher (the poller alone handles undecodable messages).
async fn poller_only(
    test: &str,
    age: Duration,
) -> Option<(AzureStorageOrchestrationService, AzureStorage)> {
    let acct = account(test)?;
    let mut settings = test_settings(test, 1);
    settings.newer_version_quarantine_age = age;
    let svc = provider(&acct, settings);
    svc.create_if_not_exists().await.expect("create hub");
    svc.start().await.expect("start");
    Some((svc, AzureStorage::new(&acct, Duration::from_secs(20))))
}

fn newer_version_envelope() -> String {
    use durabletask_azure_storage::envelope::{ENVELOPE_VERSION, MessageData};
    use durabletask_core::{EventKind, HistoryEvent, OrchestrationInstance, TaskMessage};
    let msg = TaskMessage::new(
        OrchestrationInstance::new("future-1"),
        HistoryEvent::new(
            -1,
            time::OffsetDateTime::now_utc(),
            EventKind::EventRaised { name: "e".into(), input: None },
        ),
    );
    let mut data = MessageData::new(msg, 1);
    data.v = ENVELOPE_VERSION + 1;
    MessageData::encode_text(&data.to_bytes().expect("encodes"))
}

async fn poison_len(svc: &AzureStorageOrchestrationService) -> u64 {
    svc.hub_info().await.expect("hub info").poison_queue_length
}

/// A well-formed envelope of a newer format version waits for an upgraded worker (it is backed
/// off, not quarantined) while it is younger than `newer_version_quarantine_age`, and is moved to
/// the poison queue once it is older (it used to be retried forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_version_messages_wait_then_are_quarantined() {
    let Some((waiting, st)) = poller_only("newer_wait", Duration::from_secs(3600)).await else {
        return;
    };
    let q = waiting.resource_names().control_queues[0].clone();
    st.put_message(&q, &newer_version_envelope(), Duration::ZERO).await.expect("put");
    // Deliveries 1 and 2 (back-off 2 s) happen within 8 s; the message stays in its queue.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(poison_len(&waiting).await, 0, "not quarantined while young");
    assert_eq!(st.approximate_message_count(&q).await.expect("count"), 1, "still queued");
    waiting.stop(false).await.expect("stop");
    waiting.delete().await.expect("delete hub");

    let Some((old, st)) = poller_only("newer_quarantine", Duration::ZERO).await else { return };
    let q = old.resource_names().control_queues[0].clone();
    st.put_message(&q, &newer_version_envelope(), Duration::ZERO).await.expect("put");
    crate::support::wait_for(Duration::from_secs(30), || async {
        (poison_len(&old).await == 1).then_some(())
    })
    .await;
    crate::support::wait_for(Duration::from_secs(30), || async {
        (st.approximate_message_count(&q).await.ok()? == 0).then_some(())
    })
    .await;
    // Operators read it through the provider's admin view, without removing it.
    for _ in 0..2 {
        let poisoned =
            durabletask_core::admin::ProviderAdmin::poison_messages(&old, 32).await.expect("peek");
        assert_eq!(poisoned.len(), 1, "{poisoned:?}");
        assert_eq!(poisoned[0].record["sourceQueue"], q.as_str(), "{poisoned:?}");
        assert!(poisoned[0].record["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    old.stop(false).await.expect("stop");
    old.delete().await.expect("delete hub");
}

/// An undecodable message so large that its poison record cannot fit in a queue message (it
/// used to fail with 413 at every quarantine attempt, forever) is quarantined with its text in a
/// blob that the record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_undecodable_messages_are_quarantined_with_a_text_blob() {
    use durabletask_azure_storage::storage::BlobStore;
    let Some((svc, st)) = poller_only("poison_big", Duration::from_secs(3600)).await else {
        return;
    };
    let names = svc.resource_names().clone();
    let junk = "[".repeat(65_500);
    st.put_message(&names.control_queues[0], &junk, Duration::ZERO).await.expect("put");
    // Five deliveries with back-off 2 + 4 + 8 + 16 s.
    crate::support::wait_for(Duration::from_secs(90), || async {
        (poison_len(&svc).await == 1).then_some(())
    })
    .await;
    let record = st
        .get_messages(&names.poison_queue, 1, Duration::from_secs(30))
        .await
        .expect("receive")
        .pop()
        .expect("poison record");
    let record: serde_json::Value = serde_json::from_str(&record.text).expect("JSON record");
    assert_eq!(record["textLength"], 65_500, "{record}");
    assert!(record["text"].is_null(), "{record}");
    let blob = record["textBlob"].as_str().expect("textBlob").to_owned();
    assert!(blob.starts_with(".poison/"), "{blob}");
    let stored = st.list_blobs(&names.large_messages_container, ".poison/").await.expect("list");
    assert_eq!(stored, vec![blob], "the text blob exists");
    assert_eq!(st.approximate_message_count(&names.control_queues[0]).await.expect("count"), 0);
    svc.stop(false).await.expect("stop");
    svc.delete().await.expect("delete hub");
}
