//! Large-message blobs on Azurite: after every scenario the hub's `{hub}-largemessages`
//! container holds exactly the blobs that live History rows and Instances rows reference
//! (`audit::blob_references`), one copy of each payload, and nothing after purge.

use crate::support::{account, provider, test_settings};
use durabletask_azure_storage::audit::{BlobAudit, blob_references};
use durabletask_azure_storage::envelope::MessageData;
use durabletask_azure_storage::keys::{escape_partition_key, partition_index};
use durabletask_azure_storage::large::LargePayloads;
use durabletask_azure_storage::storage::{
    AzureStorage, BlobStore, QueueStore, StorageAccount, TableStore,
};
use durabletask_azure_storage::{AzureStorageOrchestrationService, ResourceNames, StorageStack};
use durabletask_core::{
    ActivityContext, Dispatchers, EventKind, HistoryEvent, OrchestrationContext,
    OrchestrationInstance, OrchestrationService, OrchestrationStatus, Registry, StartOptions,
    TaskHubClient, TaskMessage, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;

/// 70 KB: over the 45 KiB queue threshold and the 60 KiB (UTF-16) table-property limit.
fn pad(tag: &str) -> String {
    format!("{tag}:{}", "p".repeat(70_000))
}

fn registry() -> Registry {
    Registry::builder()
        .activity("Len", |_c: ActivityContext, s: String| async move { Ok(s.len()) })
        .orchestration(
            "Loop",
            |ctx: OrchestrationContext, (generation, pad): (u32, String)| async move {
                // A large activity input in every generation, then the next generation.
                let n: usize = ctx.call_activity("Len", &pad).await?;
                if generation < 4 {
                    ctx.continue_as_new(&(generation + 1, pad));
                }
                Ok(format!("{generation}:{n}"))
            },
        )
        .orchestration("Status", |ctx: OrchestrationContext, pad: String| async move {
            for i in 0..4 {
                ctx.set_custom_status(&format!("{i}:{pad}"));
                let _: usize = ctx.call_activity("Len", &i.to_string()).await?;
            }
            let go: String = ctx.wait_for_external_event("go").await?;
            Ok(format!("{go}:{}", pad.len()))
        })
        .orchestration(
            "BigOut",
            |_ctx: OrchestrationContext, n: usize| async move { Ok("y".repeat(n)) },
        )
        .orchestration(
            "Sender",
            |ctx: OrchestrationContext, (target, pad): (String, String)| async move {
                ctx.send_event(&target, "E", &pad);
                Ok(())
            },
        )
        .orchestration("Parent", |ctx: OrchestrationContext, pad: String| async move {
            let n: usize = ctx.call_sub_orchestration("Child", &pad).await?;
            Ok(n)
        })
        .orchestration(
            "Child",
            |_ctx: OrchestrationContext, pad: String| async move { Ok(pad.len()) },
        )
        .orchestration("Quick", |_ctx: OrchestrationContext, (): ()| async move { Ok(1) })
        .orchestration(
            "Gen",
            |ctx: OrchestrationContext, (generation, pad): (u32, String)| async move {
                // Generation 0: one activity, then generation 1, which runs two episodes more.
                let _: usize = ctx.call_activity("Len", &generation.to_string()).await?;
                if generation == 0 {
                    ctx.continue_as_new(&(1u32, pad));
                    return Ok(String::new());
                }
                let _: usize = ctx.call_activity("Len", &"x").await?;
                Ok(format!("{generation}:{}", pad.len()))
            },
        )
        .build()
}

struct Hub {
    svc: AzureStorageOrchestrationService,
    client: TaskHubClient,
    worker: Option<Dispatchers>,
    stack: StorageStack,
    names: ResourceNames,
    storage: AzureStorage,
    account: StorageAccount,
    settings: durabletask_azure_storage::AzureStorageSettings,
}

impl Hub {
    async fn new(acct: &StorageAccount, test: &str) -> Self {
        let settings = test_settings(test, 2);
        let stack = StorageStack::azure(acct, &settings);
        let svc = provider(acct, settings.clone());
        let names = svc.resource_names().clone();
        svc.create_if_not_exists().await.expect("create hub");
        let client = TaskHubClient::new(Arc::new(svc.clone()))
            .with_max_poll_interval(Duration::from_millis(200));
        let storage = AzureStorage::new(acct, Duration::from_secs(20));
        let mut hub = Self {
            svc,
            client,
            worker: None,
            stack,
            names,
            storage,
            account: acct.clone(),
            settings,
        };
        hub.start_worker().await;
        hub
    }

    /// A hub whose provider crashes where `hook` says (short control-queue visibility, so the
    /// messages of a crashed work item come back within seconds). The worker is not started.
    async fn with_crash_hook(acct: &StorageAccount, test: &str, hook: CrashOnce) -> Self {
        let mut settings = test_settings(test, 2);
        settings.control_queue_visibility_timeout = Duration::from_secs(3);
        let stack = StorageStack::azure(acct, &settings);
        let svc = AzureStorageOrchestrationService::with_test_hooks(
            settings.clone(),
            stack.clone(),
            Arc::new(durabletask_core::SystemClock),
            Some(Arc::new(hook)),
        )
        .expect("provider");
        let names = svc.resource_names().clone();
        svc.create_if_not_exists().await.expect("create hub");
        Self {
            client: TaskHubClient::new(Arc::new(svc.clone()))
                .with_max_poll_interval(Duration::from_millis(200)),
            svc,
            worker: None,
            stack,
            names,
            storage: AzureStorage::new(acct, Duration::from_secs(20)),
            account: acct.clone(),
            settings,
        }
    }

    async fn start_worker(&mut self) {
        let worker = Dispatchers::start(
            Arc::new(self.svc.clone()),
            registry(),
            WorkerOptions {
                abandon_backoff_base: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .await
        .expect("worker");
        self.worker = Some(worker);
    }

    async fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown(Duration::from_secs(30)).await.expect("shutdown");
        }
    }

    /// A new worker process (a fresh provider over the same hub).
    async fn restart_worker(&mut self) {
        self.stop_worker().await;
        let mut settings = self.settings.clone();
        settings.worker_id = format!("{}-2", settings.worker_id);
        self.svc = provider(&self.account, settings);
        self.client = TaskHubClient::new(Arc::new(self.svc.clone()))
            .with_max_poll_interval(Duration::from_millis(200));
        self.start_worker().await;
    }

    async fn run(&self, name: &str, id: &str, input: &impl serde::Serialize) -> String {
        self.client
            .schedule_new_orchestration(name, input, StartOptions::with_instance_id(id))
            .await
            .expect("start");
        let state =
            self.client.wait_for_completion(id, Duration::from_secs(120)).await.expect("done");
        assert_eq!(state.orchestration_status, OrchestrationStatus::Completed, "{state:?}");
        state.output.unwrap_or_default()
    }

    /// Messages in the hub's control and work-item queues (including invisible ones).
    async fn queued(&self) -> u64 {
        let mut n =
            self.storage.approximate_message_count(&self.names.work_item_queue).await.unwrap();
        for q in &self.names.control_queues {
            n += self.storage.approximate_message_count(q).await.unwrap();
        }
        n
    }

    /// Waits until no queue holds messages and the container holds exactly the referenced
    /// blobs (the deletes after a checkpoint run just after the client sees the new state), then
    /// asserts it: no orphan, no dangling reference.
    async fn exact(&self, context: &str) -> BlobAudit {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let queued = self.queued().await;
            let audit = blob_references(&self.stack, &self.names).await.expect("audit");
            if queued == 0 && audit.is_exact() {
                return audit;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{context}: {queued} messages queued; orphans {:?}, dangling {:?}\n{}",
                    audit.orphans(),
                    audit.dangling(),
                    audit.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn stop(mut self) {
        self.stop_worker().await;
        self.svc.delete().await.expect("delete hub");
    }

    /// Blobs of `id` holding the payload of a History column or an Instances column.
    async fn instance_row(&self, id: &str) -> durabletask_azure_storage::storage::TableEntity {
        self.storage
            .get_entity(&self.names.instances_table, &escape_partition_key(id), "")
            .await
            .unwrap()
            .expect("instances row")
    }

    fn large(&self) -> LargePayloads {
        LargePayloads::new(
            self.stack.blobs.clone(),
            self.names.large_messages_container.clone(),
            self.stack.large_messages_container_url.clone(),
        )
    }

    /// The blob an Instances column points at.
    async fn row_blob(&self, id: &str, column: &str) -> Option<String> {
        let row = self.instance_row(id).await;
        row.get_str(column).and_then(|v| self.large().name_from_url(v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_generations_leave_only_the_live_generation_blobs() {
    let Some(acct) = account("blobs_continue_as_new") else { return };
    let hub = Hub::new(&acct, "blobcan").await;
    let id = "can-loop";
    let out = hub.run("Loop", id, &(0u32, pad("g"))).await;
    assert_eq!(out, "\"4:70002\"");
    let audit = hub.exact("after 5 generations").await;
    // The live generation's ExecutionStarted input, once (activity inputs are not kept in
    // history; their message blobs went with the messages); the Instances row points at it.
    let mine = audit.blobs_of(id);
    assert_eq!(mine.len(), 1, "{mine:?}");
    let input_blob = hub.row_blob(id, "Input").await.expect("large input is a URL");
    assert!(input_blob.contains("-ExecutionStarted-"), "{input_blob}");
    assert!(mine.contains(&input_blob));
    // The input still reads back whole.
    let state = hub.client.get_state(id).await.unwrap().unwrap();
    let input: (u32, String) = serde_json::from_str(state.input.as_deref().unwrap()).unwrap();
    assert_eq!((input.0, input.1.len()), (4, 70_002));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_input_and_custom_status_are_stored_once_however_often_written() {
    let Some(acct) = account("blobs_input_and_custom_status") else { return };
    let hub = Hub::new(&acct, "blobstatus").await;
    let id = "status-1";
    hub.client
        .schedule_new_orchestration("Status", &pad("in"), StartOptions::with_instance_id(id))
        .await
        .expect("start");
    // Custom status written four times, the instance now waiting for "go".
    crate::support::wait_for(Duration::from_secs(60), || async {
        let s = hub.client.get_state_with(id, false).await.unwrap()?;
        s.status.as_deref().is_some_and(|c| c.starts_with("\"3:")).then_some(())
    })
    .await;
    let audit = hub.exact("waiting, after four custom-status updates").await;
    let mine = audit.blobs_of(id);
    let custom: Vec<_> = mine.iter().filter(|b| b.contains("/instance-CustomStatus-")).collect();
    assert_eq!(custom.len(), 1, "one custom-status blob: {mine:?}");
    assert_eq!(hub.row_blob(id, "CustomStatus").await.as_ref(), custom.first().copied());
    // The input: one History blob, which the Instances row references (no message blob, no
    // Pending-row copy, no second Instances copy).
    let inputs: Vec<_> = mine.iter().filter(|b| !b.contains("CustomStatus")).collect();
    assert_eq!(inputs.len(), 1, "{mine:?}");
    assert!(inputs[0].contains("/history-") && inputs[0].contains("-ExecutionStarted-"));
    assert_eq!(hub.row_blob(id, "Input").await.as_ref(), Some(inputs[0]));

    hub.client.raise_event(id, "go", &"ok").await.expect("raise");
    let state = hub.client.wait_for_completion(id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(state.orchestration_status, OrchestrationStatus::Completed);
    assert!(state.status.as_deref().unwrap().starts_with("\"3:in:ppp"));
    assert_eq!(state.input.as_deref().map(str::len), Some(70_005));
    let audit = hub.exact("completed").await;
    assert_eq!(audit.blobs_of(id).len(), 2, "{:?}", audit.blobs_of(id));

    // Recreating the instance replaces its row: the old custom status goes with it.
    let out = hub.run("Quick", id, &()).await;
    assert_eq!(out, "1");
    let audit = hub.exact("recreated").await;
    assert!(audit.blobs_of(id).is_empty(), "{:?}", audit.blobs_of(id));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_stored_once() {
    let Some(acct) = account("blobs_large_output") else { return };
    let hub = Hub::new(&acct, "blobout").await;
    let id = "out-1";
    let out = hub.run("BigOut", id, &70_000usize).await;
    assert_eq!(out.len(), 70_002);
    let audit = hub.exact("completed").await;
    let mine = audit.blobs_of(id);
    assert_eq!(mine.len(), 1, "the output once: {mine:?}");
    let output_blob = hub.row_blob(id, "Output").await.expect("large output is a URL");
    assert!(
        output_blob.contains("-ExecutionCompleted-") && output_blob.ends_with("-Result.json.gz"),
        "the Instances row points at the History blob: {output_blob}"
    );
    assert!(mine.contains(&output_blob));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_to_missing_or_purged_instances_leave_no_blob() {
    let Some(acct) = account("blobs_events_to_missing") else { return };
    let hub = Hub::new(&acct, "blobevents").await;
    // 1. An orchestration sends a large event to an instance that never existed.
    hub.run("Sender", "sender-1", &("ghost-1".to_owned(), pad("e"))).await;
    let audit = hub.exact("event to a missing instance").await;
    assert!(audit.blobs_of("ghost-1").is_empty());
    assert!(audit.blobs_of("sender-1").iter().all(|b| b.contains("/history-")));

    // 2. ... to an instance that completed and was purged before the event arrived.
    hub.run("Quick", "target-1", &()).await;
    hub.client.purge_instance("target-1").await.expect("purge");
    hub.run("Sender", "sender-2", &("target-1".to_owned(), pad("e"))).await;
    let audit = hub.exact("event to a purged instance").await;
    assert!(audit.blobs_of("target-1").is_empty());

    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_blob_was_purged_is_deleted_at_its_first_delivery() {
    let Some(acct) = account("blobs_message_blob_purged") else { return };
    let mut hub = Hub::new(&acct, "blobgone").await;
    // The event was queued, then a purge deleted its blob before delivery: the message can
    // never be processed and is deleted at its first delivery (not retried and quarantined).
    // (target-2 does not exist at all, as after a purge.) The worker is down meanwhile.
    hub.run("Quick", "warm-up", &()).await;
    hub.stop_worker().await;
    let blob = LargePayloads::message_blob_name("target-2", "0123456789abcdef", "EventRaised");
    let message = TaskMessage::new(
        OrchestrationInstance::new("target-2"),
        HistoryEvent::new(
            -1,
            time::OffsetDateTime::now_utc(),
            EventKind::EventRaised { name: "E".into(), input: Some("\"x\"".into()) },
        ),
    );
    let wrapper = MessageData::wrapper(&MessageData::new(message, 1), blob);
    let text = MessageData::encode_text(&wrapper.to_bytes().unwrap());
    let queue = &hub.names.control_queues[usize::from(partition_index("target-2", 2))];
    hub.storage.put_message(queue, &text, Duration::ZERO).await.unwrap();
    hub.restart_worker().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while hub.queued().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a message whose blob is gone must be deleted at once, not retried"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        hub.storage.approximate_message_count(&hub.names.poison_queue).await.unwrap(),
        0,
        "not quarantined"
    );
    hub.exact("after the message whose blob was purged").await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_every_blob_and_sub_orchestration_inputs_are_stored_once() {
    let Some(acct) = account("blobs_purge") else { return };
    let hub = Hub::new(&acct, "blobpurge").await;
    hub.run("Parent", "parent-1", &pad("sub")).await;
    hub.run("Loop", "loop-1", &(2u32, pad("l"))).await;
    hub.run("BigOut", "out-1", &70_000usize).await;
    let audit = hub.exact("before purge").await;
    let child: Vec<String> = audit
        .in_container
        .iter()
        .filter(|b| !["parent-1/", "loop-1/", "out-1/"].iter().any(|p| b.starts_with(p)))
        .cloned()
        .collect();
    // The child's input: its ExecutionStarted History blob only (the Pending row the parent
    // wrote had its own copy, deleted when the child's first checkpoint replaced the row).
    assert_eq!(child.len(), 1, "{child:?}");
    assert!(child[0].contains("-ExecutionStarted-"), "{child:?}");
    let child_id = durabletask_azure_storage::keys::unescape_partition_key(
        child[0].split('/').next().unwrap(),
    );
    for id in ["parent-1", "loop-1", "out-1", child_id.as_str()] {
        hub.client.purge_instance(id).await.expect("purge");
    }
    let audit = hub.exact("after purge").await;
    assert!(audit.in_container.is_empty(), "{:?}", audit.in_container);
    assert!(audit.referenced.is_empty(), "{:?}", audit.referenced);
    let rows = hub
        .storage
        .query(&hub.names.history_table, None, None, None, None)
        .await
        .map(|p| p.entities.len())
        .unwrap_or(0);
    assert_eq!(rows, 0);
    let blobs = hub.storage.list_blobs(&hub.names.large_messages_container, "").await.unwrap();
    assert!(blobs.is_empty(), "{blobs:?}");
    hub.stop().await;
}

/// Crashes once at `point` in the `n`-th checkpoint of each listed instance that reaches it.
#[derive(Debug)]
struct CrashOnce {
    point: durabletask_azure_storage::CrashPoint,
    at: Vec<(String, usize)>,
    seen: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl durabletask_azure_storage::CrashHook for CrashOnce {
    fn crash_at(&self, point: durabletask_azure_storage::CrashPoint, instance_id: &str) -> bool {
        if point != self.point {
            return false;
        }
        let Some((_, n)) = self.at.iter().find(|(id, _)| id == instance_id) else { return false };
        let mut seen = self.seen.lock().unwrap();
        let count = seen.entry(instance_id.to_owned()).or_default();
        *count += 1;
        *count == *n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_blob_deletes_leaves_nothing_behind() {
    let Some(acct) = account("blobs_crash_after_instances") else { return };
    // Checkpoint 2 of "Loop" is its first continue-as-new (the old generation's blobs are to be
    // deleted after it); checkpoint 3 of "Status" replaces custom status 1 with 2.
    let hook = CrashOnce {
        point: durabletask_azure_storage::CrashPoint::AfterInstances,
        at: vec![("crash-can".into(), 2), ("crash-status".into(), 3)],
        seen: Default::default(),
    };
    let mut hub = Hub::with_crash_hook(&acct, "blobcrash", hook).await;
    hub.start_worker().await;
    let out = hub.run("Loop", "crash-can", &(2u32, pad("c"))).await;
    assert_eq!(out, "\"4:70002\"");
    hub.client
        .schedule_new_orchestration(
            "Status",
            &pad("s"),
            StartOptions::with_instance_id("crash-status"),
        )
        .await
        .expect("start");
    crate::support::wait_for(Duration::from_secs(60), || async {
        let s = hub.client.get_state_with("crash-status", false).await.unwrap()?;
        s.status.as_deref().is_some_and(|c| c.starts_with("\"3:")).then_some(())
    })
    .await;
    hub.client.raise_event("crash-status", "go", &"ok").await.expect("raise");
    let state =
        hub.client.wait_for_completion("crash-status", Duration::from_secs(60)).await.unwrap();
    assert_eq!(state.orchestration_status, OrchestrationStatus::Completed);
    let audit = hub.exact("after crashes between commit and deletes").await;
    assert_eq!(audit.blobs_of("crash-can").len(), 1, "{:?}", audit.blobs_of("crash-can"));
    assert_eq!(audit.blobs_of("crash-status").len(), 2, "{:?}", audit.blobs_of("crash-status"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_payloads_cost_no_blob_operations() {
    let Some(acct) = account("blobs_small_payloads_cost") else { return };
    let hub = Hub::new(&acct, "blobcost").await;
    let before = hub.svc.storage_counters();
    hub.run("Parent", "small-parent", &"small".to_owned()).await;
    hub.run("Loop", "small-loop", &(3u32, "small".to_owned())).await;
    hub.run("Quick", "small-quick", &()).await;
    let d = hub.svc.storage_counters().since(&before);
    use durabletask_azure_storage::storage::StorageOp;
    assert!(d.get(StorageOp::TableBatch) >= 6, "the orchestrations ran: {:?}", d.non_zero());
    for op in [StorageOp::BlobPut, StorageOp::BlobGet, StorageOp::BlobDelete, StorageOp::BlobList] {
        assert_eq!(d.get(op), 0, "{op:?}: {:?}", d.non_zero());
    }
    hub.exact("small payloads").await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_execution_whose_row_write_was_lost_gets_its_row_rewritten_whole() {
    let Some(acct) = account("blobs_lost_row_write") else { return };
    // Checkpoint 2 of "Gen" starts generation 1 (continue-as-new): it writes History, then dies
    // before the Instances row. The row still holds generation 0, whose large Input is a History
    // blob that generation 1's rows no longer reference. The next checkpoint, from storage, must
    // rewrite the whole row (generation 1's Input, no column of generation 0 left), and only then
    // may the sweep delete generation 0's blobs: a merge that leaves Input alone leaves the row
    // pointing at a deleted blob (`get_state` failed with NotFound).
    let hook = CrashOnce {
        point: durabletask_azure_storage::CrashPoint::AfterHistory,
        at: vec![("lost-row".into(), 2)],
        seen: Default::default(),
    };
    let mut hub = Hub::with_crash_hook(&acct, "blobrow", hook).await;
    hub.start_worker().await;
    let id = "lost-row";
    hub.client
        .schedule_new_orchestration("Gen", &(0u32, pad("r")), StartOptions::with_instance_id(id))
        .await
        .expect("start");
    let done = hub.client.wait_for_completion(id, Duration::from_secs(120)).await;
    let done = done.expect("wait_for_completion reads the row");
    assert_eq!(done.orchestration_status, OrchestrationStatus::Completed, "{done:?}");
    assert_eq!(done.output.as_deref(), Some("\"1:70002\""));

    let state = hub.client.get_state(id).await.expect("the row's blobs exist").expect("row");
    let input: (u32, String) = serde_json::from_str(state.input.as_deref().unwrap()).unwrap();
    assert_eq!((input.0, input.1.len()), (1, 70_002), "generation 1's input");
    // The row's Input is generation 1's ExecutionStarted History blob.
    let row = hub.instance_row(id).await;
    let exec = row.get_str("ExecutionId").unwrap().to_owned();
    let input_blob = hub.row_blob(id, "Input").await.expect("large input is a URL");
    let expected = LargePayloads::history_blob_name(
        id,
        &exec,
        &durabletask_azure_storage::keys::history_row_key(1),
        "ExecutionStarted",
        "Input",
        state.input.as_deref().unwrap(),
    );
    assert_eq!(input_blob, expected);
    let audit = hub.exact("after the lost row write").await;
    assert_eq!(audit.blobs_of(id), [input_blob].into(), "only generation 1's input");
    hub.stop().await;
}
