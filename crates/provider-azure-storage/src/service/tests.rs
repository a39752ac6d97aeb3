//! Unit tests of the poller's decoding and buffering, the prefetch and the checkpoint on
//! [`InMemoryStorage`]: no Azurite, the crate's own functions driven directly.

use super::buffer::Buffered;
use super::{AzureStorageOrchestrationService, outbound, poller, prefetch};
use crate::storage::{InMemoryStorage, QueueStore, StorageOp, StorageOpCounts};
use crate::{AzureStorageSettings, ResourceNames, TaskHubName};
use durabletask_core::runtime::{RuntimeOptions, process_work_item};
use durabletask_core::{
    ActivityContext, EventKind, ExecutionStartedEvent, HistoryEvent, OrchestrationContext,
    OrchestrationInstance, OrchestrationService, OrchestrationServiceClient, OrchestrationStatus,
    Registry, TaskMessage, WorkItemResult,
};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

fn provider(hub: &str) -> (AzureStorageOrchestrationService, InMemoryStorage, String) {
    let mut settings = AzureStorageSettings::new(TaskHubName::new(hub).expect("valid hub"));
    settings.partition_count = 1;
    settings.lease_acquire_interval = Duration::from_millis(200);
    settings.lease_renew_interval = Duration::from_millis(200);
    let names = ResourceNames::new(&settings.task_hub_name, 1);
    let queue = names.control_queues[0].clone();
    let storage = InMemoryStorage::new();
    let svc = AzureStorageOrchestrationService::with_storage(settings, storage.hub_stack(&names))
        .expect("valid settings");
    (svc, storage, queue)
}

fn start(id: &str, exec: &str, at: time::OffsetDateTime) -> TaskMessage {
    let inst = OrchestrationInstance::with_execution(id, exec);
    let s = ExecutionStartedEvent::new(inst.clone(), "OneActivity", Some("7".into()));
    TaskMessage::new(inst, HistoryEvent::new(-1, at, EventKind::ExecutionStarted(s)))
}

fn event_to(id: &str) -> TaskMessage {
    TaskMessage::new(
        OrchestrationInstance::new(id),
        HistoryEvent::new(
            -1,
            time::OffsetDateTime::now_utc(),
            EventKind::EventRaised { name: "e".into(), input: None },
        ),
    )
}

/// Receives everything visible on `queue` and decodes it as the poller does.
async fn receive(svc: &AzureStorageOrchestrationService, queue: &str) -> Vec<Buffered> {
    let inner = &svc.inner;
    let got = inner.queues.get_messages(queue, 32, Duration::from_secs(60)).await.expect("receive");
    poller::decode_batch(inner, queue, got).await
}

#[tokio::test]
async fn the_prefetch_keeps_the_live_start_and_deletes_a_stale_start_and_an_orphan_event() {
    let (svc, storage, queue) = provider("unitprefetch");
    svc.create_if_not_exists().await.expect("create hub");
    let now = time::OffsetDateTime::now_utc();
    svc.create_orchestration(start("a", "e1", now), &[]).await.expect("create");
    let inner = &svc.inner;
    // A start of an older execution (its row was replaced) and an event to no instance.
    let stale = start("a", "e0", now - time::Duration::seconds(5));
    outbound::send(inner, stale, None, None, Duration::ZERO).await.expect("send stale");
    outbound::send(inner, event_to("ghost"), None, None, Duration::ZERO).await.expect("send");
    let decoded = receive(&svc, &queue).await;
    assert_eq!(decoded.len(), 3, "decoded in enqueue order");
    let (a, ghost): (Vec<Buffered>, Vec<Buffered>) =
        decoded.into_iter().partition(|m| m.message.orchestration_instance.instance_id == "a");

    let prepared = prefetch::build(inner, "a", &queue, a).await.expect("prefetch a");
    let prepared = prepared.expect("a runs");
    assert_eq!(prepared.messages.len(), 1, "only the live start runs");
    let EventKind::ExecutionStarted(s) = &prepared.messages[0].message.event.kind else {
        panic!("a start");
    };
    assert_eq!(s.orchestration_instance.execution_id.as_deref(), Some("e1"));

    // The event to a missing instance: on its first delivery the row is read again after a
    // moment, then it is deleted.
    let none = prefetch::build(inner, "ghost", &queue, ghost).await.expect("prefetch ghost");
    assert!(none.is_none(), "nothing to run for a missing instance");
    // The stale start and the orphan event are gone; the kept start is still invisible.
    assert_eq!(storage.approximate_message_count(&queue).await.expect("count"), 1);
    assert!(receive(&svc, &queue).await.is_empty());
}

#[tokio::test]
async fn buffering_a_batch_for_a_partition_this_worker_does_not_hold_releases_it() {
    let (svc, _storage, queue) = provider("unitbuffer");
    svc.create_if_not_exists().await.expect("create hub");
    let inner = &svc.inner;
    outbound::send(inner, event_to("x"), None, None, Duration::ZERO).await.expect("send");
    let decoded = receive(&svc, &queue).await;
    assert_eq!(decoded.len(), 1);
    // The partition manager was never started: the partition is not held.
    let kept = poller::buffer_batch(inner, &queue, decoded, &AtomicBool::new(false));
    assert!(!kept, "the poller stops");
    assert_eq!(svc.stats().held_messages, 0, "nothing stays held");
    // Released at once: visible again without waiting for the 60 s visibility timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let back = loop {
        let got = receive(&svc, &queue).await;
        if !got.is_empty() || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(back.len(), 1, "released");
}

fn registry() -> Registry {
    Registry::builder()
        .orchestration("OneActivity", |ctx: OrchestrationContext, n: u32| async move {
            let doubled: u32 = ctx.call_activity("Double", &n).await?;
            Ok(doubled)
        })
        .activity("Double", |_c: ActivityContext, n: u32| async move { Ok(n * 2) })
        .build()
}

fn delta(after: &StorageOpCounts, before: &StorageOpCounts) -> Vec<(StorageOp, u64)> {
    after.since(before).non_zero()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_checkpoint_costs_one_send_one_history_batch_one_row_write_and_one_delete() {
    let (svc, storage, _queue) = provider("unitcheckpoint");
    svc.create_if_not_exists().await.expect("create hub");
    svc.create_orchestration(start("c", "e1", time::OffsetDateTime::now_utc()), &[])
        .await
        .expect("create");
    svc.start().await.expect("start");
    let wi = svc
        .lock_next_orchestration_work_item(Duration::from_secs(30))
        .await
        .expect("lock")
        .expect("a work item");
    let result = process_work_item(
        &registry(),
        wi.runtime_state.clone(),
        wi.new_messages.clone(),
        time::OffsetDateTime::now_utc(),
        &RuntimeOptions::default(),
        &mut durabletask_core::new_execution_id,
    )
    .expect("replay");
    let WorkItemResult::Checkpoint(cp) = &result else { panic!("a checkpoint") };
    assert_eq!(cp.activity_messages.len(), 1);
    let before = storage.counters().snapshot();
    svc.complete_orchestration_work_item(&wi, result).await.expect("checkpoint");
    let cost = delta(&storage.counters().snapshot(), &before);
    // Pollers and lease renewals run meanwhile: count only what the checkpoint writes.
    let writes: Vec<(StorageOp, u64)> = cost
        .into_iter()
        .filter(|(op, _)| {
            matches!(
                op,
                StorageOp::QueuePut
                    | StorageOp::TableBatch
                    | StorageOp::TableWrite
                    | StorageOp::QueueDelete
                    | StorageOp::BlobPut
            )
        })
        .collect();
    assert_eq!(
        writes,
        vec![
            (StorageOp::QueuePut, 1),
            (StorageOp::QueueDelete, 1),
            (StorageOp::TableBatch, 1),
            (StorageOp::TableWrite, 1)
        ],
        "send the activity, delete the start, one History batch, one Instances write"
    );
    let state = svc.get_state("c", false).await.expect("state").expect("row");
    assert_eq!(state.orchestration_status, OrchestrationStatus::Running);
    let history = svc.get_history("c", None).await.expect("history");
    assert!(history.iter().any(|e| matches!(e.kind, EventKind::TaskScheduled { .. })));
    svc.release_orchestration_work_item(&wi).await.expect("release");
    svc.stop(false).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_history_is_a_typed_error_and_its_messages_wait() {
    let (svc, storage, queue) = provider("unitcorrupt");
    svc.create_if_not_exists().await.expect("create hub");
    let now = time::OffsetDateTime::now_utc();
    svc.create_orchestration(start("bad", "e1", now), &[]).await.expect("create");
    // A history with two ExecutionStarted events (what corrupted storage could hold).
    let inner = &svc.inner;
    let events = vec![start("bad", "e1", now).event, start("bad", "e1", now).event];
    super::tracking::write_history(inner, "bad", "e1", 0, &events, None, now)
        .await
        .expect("write history");
    // The start was consumed long ago; an event arrives for the instance.
    for m in storage.get_messages(&queue, 32, Duration::from_secs(30)).await.expect("receive") {
        storage.delete_message(&queue, &m.id, &m.pop_receipt).await.expect("delete");
    }
    outbound::send(inner, event_to("bad"), None, None, Duration::ZERO).await.expect("send");
    svc.start().await.expect("start");
    let err = svc
        .lock_next_orchestration_work_item(Duration::from_secs(30))
        .await
        .expect_err("a corrupt history is not presented as an empty one");
    assert_eq!(err.kind(), durabletask_core::ProviderErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("stored history of 'bad' is corrupt"), "{err}");
    // Nothing was lost: the event waits (deferred with the back-off), nothing was locked.
    assert_eq!(storage.approximate_message_count(&queue).await.expect("count"), 1);
    assert_eq!(svc.stats().held_messages, 0);
    assert!(
        svc.lock_next_orchestration_work_item(Duration::from_millis(300))
            .await
            .expect("no error while it waits")
            .is_none()
    );
    svc.stop(false).await.expect("stop");
}

#[tokio::test]
async fn a_terminal_history_whose_row_write_was_lost_gets_its_row_repaired_by_the_next_message() {
    let (svc, _storage, queue) = provider("unitrepair");
    svc.create_if_not_exists().await.expect("create hub");
    let now = time::OffsetDateTime::now_utc();
    svc.create_orchestration(start("r", "e1", now), &[]).await.expect("create");
    let inner = &svc.inner;
    // History ran to completion; the Instances row still says Pending (its write was lost).
    let events = vec![
        HistoryEvent::new(-1, now, EventKind::OrchestratorStarted),
        start("r", "e1", now).event,
        HistoryEvent::new(
            0,
            now,
            EventKind::ExecutionCompleted {
                orchestration_status: OrchestrationStatus::Completed,
                result: Some("14".into()),
                failure_details: None,
            },
        ),
        HistoryEvent::new(-1, now, EventKind::OrchestratorCompleted),
    ];
    super::tracking::write_history(inner, "r", "e1", 0, &events, None, now).await.expect("history");
    let _ = receive(&svc, &queue).await; // the start, consumed
    outbound::send(inner, event_to("r"), None, None, Duration::ZERO).await.expect("send");
    let batch = receive(&svc, &queue).await;
    let batch: Vec<Buffered> =
        batch.into_iter().filter(|m| m.message.orchestration_instance.instance_id == "r").collect();
    assert_eq!(batch.len(), 1, "the event");
    let prepared = prefetch::build(inner, "r", &queue, batch).await.expect("prefetch");
    assert!(prepared.is_none(), "a terminal instance runs nothing");
    let state = svc.get_state("r", true).await.expect("state").expect("row");
    assert_eq!(state.orchestration_status, OrchestrationStatus::Completed, "repaired from history");
    assert_eq!(state.output.as_deref(), Some("14"));
}
