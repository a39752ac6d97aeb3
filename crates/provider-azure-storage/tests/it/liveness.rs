//! Liveness of the control-queue side: a batch whose messages are partly discarded or deferred
//! must not leave their ids held in memory (held ids count toward
//! `control_queue_buffer_threshold`; once enough leaked, every poller paused for good), and the
//! provider's stats tell held, buffered and in-flight messages apart.

use crate::support::{account, provider, test_settings};
use durabletask_azure_storage::envelope::MessageData;
use durabletask_azure_storage::storage::{
    AzureStorage, Call, CallGuard, HookedStorage, QueueStore, StorageHook,
};
use durabletask_azure_storage::{AzureStorageOrchestrationService, AzureStorageSettings};
use durabletask_core::{
    Dispatchers, EventKind, ExecutionStartedEvent, HistoryEvent, OrchestrationContext,
    OrchestrationInstance, OrchestrationService, OrchestrationStatus, Registry, StartOptions,
    TaskHubClient, TaskMessage, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;

fn registry() -> Registry {
    Registry::builder()
        .orchestration("Collect", |ctx: OrchestrationContext, n: u32| async move {
            let mut sum = 0u32;
            for _ in 0..n {
                let v: u32 = ctx.wait_for_external_event("add").await?;
                sum += v;
            }
            Ok(sum)
        })
        .build()
}

async fn start_worker(svc: &AzureStorageOrchestrationService) -> Dispatchers {
    Dispatchers::start(
        Arc::new(svc.clone()),
        registry(),
        WorkerOptions { abandon_backoff_base: Duration::from_millis(200), ..Default::default() },
    )
    .await
    .expect("worker")
}

fn envelope(instance: OrchestrationInstance, age: time::Duration, kind: EventKind) -> String {
    let msg = TaskMessage::new(
        instance,
        HistoryEvent::new(-1, time::OffsetDateTime::now_utc() - age, kind),
    );
    MessageData::encode_text(&MessageData::new(msg, 1).to_bytes().expect("encodes"))
}

fn settings(hub_settings: &AzureStorageSettings) -> AzureStorageSettings {
    let mut s = hub_settings.clone();
    s.control_queue_buffer_threshold = 8;
    s
}

/// Reproduces a worker that stopped for good: one receive batch holds, for one instance, stale
/// `ExecutionStarted` messages (discarded) next to an event (kept). Before the fix the
/// discarded ids stayed held, the poller paused at the threshold and never received again, so
/// the next event was never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_messages_of_a_kept_batch_do_not_stay_held() {
    let Some(acct) = account("held_leak") else { return };
    let settings = settings(&test_settings("held", 1));
    let first = provider(&acct, settings.clone());
    first.create_if_not_exists().await.expect("create hub");
    let worker = start_worker(&first).await;
    let client = TaskHubClient::new(Arc::new(first.clone()))
        .with_max_poll_interval(Duration::from_millis(200));
    client
        .schedule_new_orchestration("Collect", &3u32, StartOptions::with_instance_id("leak-1"))
        .await
        .expect("start");
    crate::support::wait_for(Duration::from_secs(60), || async {
        let s = client.get_state("leak-1").await.ok()??;
        (s.orchestration_status == OrchestrationStatus::Running).then_some(())
    })
    .await;
    worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");

    // While no worker listens: 20 stale starts (an older execution, an hour old) and one event,
    // all for the same instance, so the next owner receives them in one batch.
    let names = first.resource_names().clone();
    let st = AzureStorage::new(&acct, Duration::from_secs(20));
    for _ in 0..20 {
        let old =
            OrchestrationInstance::with_execution("leak-1", durabletask_core::new_execution_id());
        let ev = ExecutionStartedEvent::new(old.clone(), "Collect", Some("1".into()));
        let text = envelope(old, time::Duration::hours(1), EventKind::ExecutionStarted(ev));
        st.put_message(&names.control_queues[0], &text, Duration::ZERO).await.expect("put");
    }
    let event = envelope(
        OrchestrationInstance::new("leak-1"),
        time::Duration::ZERO,
        EventKind::EventRaised { name: "add".into(), input: Some("1".into()) },
    );
    st.put_message(&names.control_queues[0], &event, Duration::ZERO).await.expect("put");

    let second = provider(&acct, settings);
    let worker = start_worker(&second).await;
    let client = TaskHubClient::new(Arc::new(second.clone()))
        .with_max_poll_interval(Duration::from_millis(200));
    // The batch is processed: the event is in history and the 20 stale starts are gone.
    crate::support::wait_for(Duration::from_secs(60), || async {
        let h = client.get_history("leak-1").await.ok()?;
        h.iter().any(|e| matches!(e.kind, EventKind::EventRaised { .. })).then_some(())
    })
    .await;
    // Events raised afterwards still arrive: the poller is not paused.
    client.raise_event("leak-1", "add", &2u32).await.expect("raise");
    client.raise_event("leak-1", "add", &3u32).await.expect("raise");
    let done = client.wait_for_completion("leak-1", Duration::from_secs(60)).await.expect("done");
    assert_eq!(done.orchestration_status, OrchestrationStatus::Completed);
    assert_eq!(done.output_as::<u32>().expect("output"), 6);

    // Nothing stays held once the queue is drained, and the bookkeepings agree.
    let stats = crate::support::wait_for(Duration::from_secs(30), || async {
        let s = second.stats();
        (s.held_messages == 0 && s.busy_instances == 0).then_some(s)
    })
    .await;
    assert_eq!(stats.leaked_messages(), 0, "{stats:?}");
    assert_eq!(stats.buffered_messages, 0, "{stats:?}");
    assert_eq!(stats.control_queues.len(), 1, "{stats:?}");
    let q = &stats.control_queues[0];
    assert!(q.paused_for.is_none(), "{stats:?}");
    assert!(
        q.since_last_receive.is_some_and(|d| d < Duration::from_secs(10)),
        "the poller keeps receiving: {stats:?}"
    );
    worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");
    second.delete().await.expect("delete hub");
}

/// Messages to instances nobody created are discarded after their prefetch: the held count
/// returns to zero without any worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_missing_instances_leave_nothing_held() {
    let Some(acct) = account("held_ghosts") else { return };
    let svc = provider(&acct, settings(&test_settings("held", 1)));
    svc.create_if_not_exists().await.expect("create hub");
    svc.start().await.expect("start");
    let names = svc.resource_names().clone();
    let st = AzureStorage::new(&acct, Duration::from_secs(20));
    for i in 0..12 {
        let text = envelope(
            OrchestrationInstance::new(format!("ghost-{i}")),
            time::Duration::ZERO,
            EventKind::EventRaised { name: "x".into(), input: None },
        );
        st.put_message(&names.control_queues[0], &text, Duration::ZERO).await.expect("put");
    }
    crate::support::wait_for(Duration::from_secs(60), || async {
        let n = st.approximate_message_count(&names.control_queues[0]).await.ok()?;
        let s = svc.stats();
        (n == 0 && s.held_messages == 0 && s.busy_instances == 0).then_some(())
    })
    .await;
    let s = svc.stats();
    assert_eq!(s.leaked_messages(), 0, "{s:?}");
    assert_eq!(s.control_queues.len(), 1, "{s:?}");
    svc.stop(false).await.expect("stop");
    assert!(svc.stats().control_queues.is_empty(), "no poller after stop");
    svc.delete().await.expect("delete hub");
}

/// With the threshold at 8 and ten prepared work items nobody locks, the poller pauses and the
/// stats say so; the held messages are exactly the in-flight ones. Locking, abandoning and
/// releasing them lets the poller receive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_a_paused_poller_and_its_resumption() {
    let Some(acct) = account("held_pause") else { return };
    let svc = provider(&acct, settings(&test_settings("held", 1)));
    svc.create_if_not_exists().await.expect("create hub");
    svc.start().await.expect("start");
    let client = TaskHubClient::new(Arc::new(svc.clone()));
    for i in 0..10 {
        client
            .schedule_new_orchestration(
                "Collect",
                &1u32,
                StartOptions::with_instance_id(format!("p-{i}")),
            )
            .await
            .expect("start");
    }
    let s = crate::support::wait_for(Duration::from_secs(60), || async {
        let s = svc.stats();
        (s.held_messages >= 8 && s.control_queues.first()?.paused_for.is_some()).then_some(s)
    })
    .await;
    assert_eq!(s.held_messages, s.buffered_messages + s.in_flight_messages, "{s:?}");
    assert_eq!(s.leaked_messages(), 0, "{s:?}");
    let mut locked = Vec::new();
    while let Some(w) =
        svc.lock_next_orchestration_work_item(Duration::from_millis(500)).await.expect("lock")
    {
        locked.push(w);
    }
    assert!(locked.len() >= 8, "{} work items", locked.len());
    for w in &locked {
        svc.abandon_orchestration_work_item(w, Duration::ZERO).await.expect("abandon");
        svc.release_orchestration_work_item(w).await.expect("release");
    }
    // The abandoned starts come back and are prepared again: the poller received after the pause.
    crate::support::wait_for(Duration::from_secs(60), || async {
        let s = svc.stats();
        let q = s.control_queues.first()?;
        (s.held_messages >= 8 && q.since_last_receive? < Duration::from_secs(5)).then_some(())
    })
    .await;
    assert_eq!(svc.stats().leaked_messages(), 0);
    svc.stop(false).await.expect("stop");
    svc.delete().await.expect("delete hub");
}

/// Receives, while `slow` is set, take their messages and then answer only after `delay` (an
/// emulator freeze or a slow network as the caller sees it).
#[derive(Debug)]
struct SlowReceives {
    slow: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<tokio::sync::Notify>,
    delay: Duration,
}

#[async_trait::async_trait]
impl StorageHook for SlowReceives {
    async fn after_receive(&self, _queue: &str, received: usize) {
        if received > 0 && self.slow.load(std::sync::atomic::Ordering::Acquire) {
            self.received.notify_one();
            tokio::time::sleep(self.delay).await;
        }
    }
}

/// Stopping a poller in the middle of a receive (shutdown, or a partition lost while the store
/// is slow) must not strand the messages that receive took: they are released at once instead
/// of staying invisible for the whole visibility timeout (the poll task used to be aborted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_stopped_during_a_receive_releases_what_it_received() {
    let Some(acct) = account("stop_mid_receive") else { return };
    let mut settings = test_settings("midrecv", 1);
    settings.control_queue_visibility_timeout = Duration::from_secs(120);
    let az = Arc::new(AzureStorage::new(&acct, Duration::from_secs(20)));
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let received = Arc::new(tokio::sync::Notify::new());
    let names = durabletask_azure_storage::ResourceNames::new(&settings.task_hub_name, 1);
    let stack = durabletask_azure_storage::StorageStack {
        queues: Arc::new(HookedStorage::new(
            az.clone(),
            az.clone(),
            az.clone(),
            SlowReceives {
                slow: slow.clone(),
                received: received.clone(),
                delay: Duration::from_secs(3),
            },
        )),
        tables: az.clone(),
        blobs: az.clone(),
        counters: az.counters(),
        large_messages_container_url: acct.blob_container_url(&names.large_messages_container),
    };
    let svc = AzureStorageOrchestrationService::with_storage(settings, stack).expect("provider");
    svc.create_if_not_exists().await.expect("create hub");
    let text = envelope(
        OrchestrationInstance::new("mid-1"),
        time::Duration::ZERO,
        EventKind::EventRaised { name: "x".into(), input: None },
    );
    az.put_message(&names.control_queues[0], &text, Duration::ZERO).await.expect("put");
    svc.start().await.expect("start");
    tokio::time::timeout(Duration::from_secs(60), received.notified())
        .await
        .expect("the poller received the message");
    // The message is now invisible (taken by the slow receive); stop while it is in flight.
    svc.stop(false).await.expect("stop");
    slow.store(false, std::sync::atomic::Ordering::Release);
    // Within a few seconds (the slow receive ends after 3 s) it is visible again.
    let back = crate::support::wait_for(Duration::from_secs(20), || async {
        let got =
            az.get_messages(&names.control_queues[0], 1, Duration::from_secs(30)).await.ok()?;
        got.into_iter().next()
    })
    .await;
    assert_eq!(back.text, text);
    assert!(back.dequeue_count >= 2, "received once by the stopped poller, once here");
    svc.delete().await.expect("delete hub");
}

/// `…Partitions` table calls hang while `frozen` is set: the partition manager cannot renew (an
/// emulator freeze or a throttled account as the lease loop sees it), while the rest of storage
/// answers.
#[derive(Debug)]
struct FrozenLeases {
    frozen: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl StorageHook for FrozenLeases {
    async fn before(
        &self,
        call: Call<'_>,
    ) -> durabletask_azure_storage::storage::StorageResult<CallGuard> {
        if call.resource.ends_with("Partitions") {
            let mut rx = self.frozen.subscribe();
            let _ = rx.wait_for(|frozen| !frozen).await;
        }
        Ok(None)
    }
}

/// When lease renewals time out (the multi-process flake), the partition is fenced
/// (no receives, no checkpoints) but not given up while storage still names us as owner. Its
/// prepared work item stays in memory with its message invisible, and once the lease table
/// answers again the same delivery is processed (dequeue count 1). Before, self-fencing called
/// `on_lost`, which released every buffered message (or, with storage still slow, failed to and
/// left them invisible for the 5-minute visibility timeout) and re-acquired from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_partition_keeps_its_work_and_resumes_when_the_lease_table_answers() {
    let Some(acct) = account("fenced_resume") else { return };
    let mut settings = test_settings("fenced", 1);
    settings.lease_interval = Duration::from_secs(6);
    settings.lease_renew_interval = Duration::from_secs(2);
    settings.lease_acquire_interval = Duration::from_secs(1);
    settings.partition_table_operation_timeout = Duration::from_secs(1);
    let az = Arc::new(AzureStorage::new(&acct, Duration::from_secs(20)));
    let names = durabletask_azure_storage::ResourceNames::new(&settings.task_hub_name, 1);
    let tables = Arc::new(HookedStorage::new(
        az.clone(),
        az.clone(),
        az.clone(),
        FrozenLeases { frozen: tokio::sync::watch::channel(false).0 },
    ));
    let stack = durabletask_azure_storage::StorageStack {
        queues: az.clone(),
        tables: tables.clone(),
        blobs: az.clone(),
        counters: az.counters(),
        large_messages_container_url: acct.blob_container_url(&names.large_messages_container),
    };
    let svc = AzureStorageOrchestrationService::with_storage(settings, stack).expect("provider");
    svc.create_if_not_exists().await.expect("create hub");
    let client = TaskHubClient::new(Arc::new(svc.clone()));
    client
        .schedule_new_orchestration("Collect", &1u32, StartOptions::with_instance_id("fenced-1"))
        .await
        .expect("start");
    svc.start().await.expect("start provider");
    crate::support::wait_for(Duration::from_secs(30), || async {
        (svc.stats().prepared_work_items == 1).then_some(())
    })
    .await;

    tables.hook().frozen.send_replace(true);
    crate::support::wait_for(Duration::from_secs(30), || async {
        svc.stats().control_queues.first().is_some_and(|q| q.fenced).then_some(())
    })
    .await;
    assert!(svc.partition_manager().owned_partitions().is_empty(), "fenced is not owned");
    assert!(
        svc.lock_next_orchestration_work_item(Duration::from_secs(1))
            .await
            .expect("lock")
            .is_none(),
        "no work item is handed out while fenced"
    );
    let s = svc.stats();
    assert_eq!((s.held_messages, s.prepared_work_items), (1, 1), "the fence keeps the work: {s:?}");

    tables.hook().frozen.send_replace(false);
    let wi = svc
        .lock_next_orchestration_work_item(Duration::from_secs(30))
        .await
        .expect("lock")
        .expect("the work item is handed out once the lease is renewed");
    assert_eq!(wi.instance_id, "fenced-1");
    assert_eq!(wi.dequeue_count, 1, "the same delivery: nothing was released and received again");
    assert!(!svc.stats().control_queues.iter().any(|q| q.fenced));
    assert_eq!(svc.partition_manager().owned_partitions().len(), 1);
    svc.abandon_orchestration_work_item(&wi, Duration::ZERO).await.expect("abandon");
    svc.release_orchestration_work_item(&wi).await.expect("release");
    svc.stop(false).await.expect("stop");
    svc.delete().await.expect("delete hub");
}
