//! Provider-specific tests on Azurite: the table schema as other readers see it, checkpoints of
//! more than 99 events, 1 MiB payloads, special-character instance ids, bad input, and two
//! workers racing one work item.

use crate::support::{account, provider, test_settings};
use durabletask_azure_storage::storage::{
    AzureStorage, BlobStore, Call, CallGuard, EdmValue, HookedStorage, QueueStore, StorageAccount,
    StorageHook, StorageOp, TableStore,
};
use durabletask_azure_storage::{AzureStorageOrchestrationService, StorageStack};
use durabletask_core::{
    ActivityContext, Dispatchers, EventKind, OrchestrationContext, OrchestrationService,
    OrchestrationServiceClient, OrchestrationStatus, ProviderErrorKind, Registry, RegistryBuilder,
    StartOptions, TaskHubClient, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;

fn registry() -> RegistryBuilder {
    Registry::builder()
        .activity("Echo", |_c: ActivityContext, s: String| async move { Ok(s) })
        .activity("Len", |_c: ActivityContext, s: String| async move { Ok(s.len()) })
        .orchestration("Hello", |ctx: OrchestrationContext, name: String| async move {
            ctx.set_custom_status(&"greeting");
            let s: String = ctx.call_activity("Echo", &format!("Hello {name}!")).await?;
            Ok(s)
        })
        .orchestration("Hello3", |ctx: OrchestrationContext, (): ()| async move {
            let mut out = Vec::new();
            for city in ["Tokyo", "Seattle", "London"] {
                let s: String = ctx.call_activity("Echo", &format!("Hello {city}")).await?;
                out.push(s);
            }
            Ok(out)
        })
        .activity("Blow", |_c: ActivityContext, n: usize| async move { Ok("z".repeat(n)) })
        .orchestration("TooBig", |ctx: OrchestrationContext, n: usize| async move {
            match ctx.call_activity::<_, String>("Blow", &n).await {
                Ok(s) => Ok(format!("got {}", s.len())),
                Err(e) => Ok(format!("failed: {e}")),
            }
        })
        .orchestration("Big", |ctx: OrchestrationContext, input: String| async move {
            let n: usize = ctx.call_activity("Len", &input).await?;
            Ok(format!("{n}:{}", "y".repeat(n)))
        })
        .orchestration("Wide", |ctx: OrchestrationContext, n: u32| async move {
            let calls: Vec<_> =
                (0..n).map(|i| ctx.call_activity::<_, String>("Echo", &i.to_string())).collect();
            let all = futures::future::join_all(calls).await;
            Ok(all.into_iter().filter(Result::is_ok).count())
        })
}

struct Running {
    svc: AzureStorageOrchestrationService,
    client: TaskHubClient,
    worker: Option<Dispatchers>,
}

impl Running {
    async fn start(svc: AzureStorageOrchestrationService) -> Self {
        svc.create_if_not_exists().await.expect("create hub");
        let worker = Dispatchers::start(
            Arc::new(svc.clone()),
            registry().build(),
            WorkerOptions {
                abandon_backoff_base: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .await
        .expect("worker");
        let client = TaskHubClient::new(Arc::new(svc.clone()))
            .with_max_poll_interval(Duration::from_millis(200));
        Self { svc, client, worker: Some(worker) }
    }

    async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown(Duration::from_secs(30)).await.expect("shutdown");
        }
        self.svc.delete().await.expect("delete hub");
    }
}

fn storage(account: &StorageAccount) -> AzureStorage {
    AzureStorage::new(account, Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_use_the_dotnet_column_layout() {
    let Some(acct) = account("tables_use_the_dotnet_column_layout") else { return };
    crate::capture::install();
    let svc = provider(&acct, test_settings("schema", 4));
    let names = svc.resource_names().clone();
    let r = Running::start(svc).await;
    let id = "schema-1";
    r.client
        .schedule_new_orchestration("Hello", &"Tokyo", StartOptions::with_instance_id(id))
        .await
        .expect("start");
    let state = r.client.wait_for_completion(id, Duration::from_secs(60)).await.expect("done");
    assert_eq!(state.output_as::<String>().unwrap(), "Hello Tokyo!");

    let st = storage(&acct);
    let page = st
        .query(&names.history_table, Some("PartitionKey eq 'schema-1'"), None, None, None)
        .await
        .expect("history rows");
    let rows = page.entities;
    let sentinel = rows.iter().find(|r| r.row_key == "sentinel").expect("sentinel row");
    assert_eq!(sentinel.get("IsCheckpointComplete"), Some(&EdmValue::Bool(true)));
    assert!(matches!(sentinel.get("CheckpointCompletedTimestamp"), Some(EdmValue::DateTime(_))));
    let exec = sentinel.get_str("ExecutionId").expect("execution id").to_owned();
    let events: Vec<_> = rows.iter().filter(|r| r.row_key != "sentinel").collect();
    for (i, row) in events.iter().enumerate() {
        assert_eq!(row.row_key, format!("{i:016X}"), "RowKey is the 16-hex position");
        assert_eq!(row.get_str("ExecutionId"), Some(exec.as_str()));
        assert!(matches!(row.get("_Timestamp"), Some(EdmValue::DateTime(_))), "{row:?}");
        assert!(row.get("Timestamp").is_none(), "Timestamp is reserved; DTF writes _Timestamp");
        assert!(matches!(row.get("EventId"), Some(EdmValue::Int32(_))));
    }
    let types: Vec<&str> = events.iter().map(|r| r.get_str("EventType").unwrap()).collect();
    assert_eq!(types.first(), Some(&"OrchestratorStarted"));
    assert!(types.contains(&"ExecutionStarted") && types.contains(&"TaskScheduled"));
    assert!(types.contains(&"TaskCompleted") && types.contains(&"ExecutionCompleted"));
    let started =
        events.iter().find(|r| r.get_str("EventType") == Some("ExecutionStarted")).unwrap();
    let oi: serde_json::Value =
        serde_json::from_str(started.get_str("OrchestrationInstance").unwrap())
            .expect("JSON column");
    assert_eq!(oi["InstanceId"], "schema-1");
    assert_eq!(started.get_str("Name"), Some("Hello"));
    assert_eq!(started.get_str("Input"), Some("\"Tokyo\""));
    let completed =
        events.iter().find(|r| r.get_str("EventType") == Some("ExecutionCompleted")).unwrap();
    assert_eq!(completed.get_str("OrchestrationStatus"), Some("Completed"));

    let inst =
        st.get_entity(&names.instances_table, "schema-1", "").await.unwrap().expect("instance row");
    assert_eq!(inst.get_str("RuntimeStatus"), Some("Completed"));
    assert_eq!(inst.get_str("Name"), Some("Hello"));
    assert_eq!(inst.get_str("ExecutionId"), Some(exec.as_str()));
    assert_eq!(inst.get_str("Input"), Some("\"Tokyo\""));
    assert_eq!(inst.get_str("Output"), Some("\"Hello Tokyo!\""));
    assert_eq!(inst.get_str("CustomStatus"), Some("\"greeting\""));
    assert!(matches!(inst.get("CreatedTime"), Some(EdmValue::DateTime(_))));
    assert!(matches!(inst.get("CompletedTime"), Some(EdmValue::DateTime(_))));
    assert!(inst.get_str("TaskHubName").is_some());
    // The provider counts what it did, by kind.
    let counts = r.svc.storage_counters();
    assert!(counts.get(StorageOp::TableBatch) >= 2, "{:?}", counts.non_zero());
    assert!(counts.get(StorageOp::QueuePut) >= 3, "{:?}", counts.non_zero());
    // Structured events carry the DTF names, with the instance, inside per-work-item spans.
    for name in ["SendingMessage", "ReceivedMessage", "InstanceStatusUpdate", "CheckpointCompleted"]
    {
        let events = crate::capture::named(name);
        assert!(
            events.iter().any(|e| e.fields.get("instance_id").map(String::as_str) == Some(id)),
            "no {name} event for {id}: {events:?}"
        );
    }
    let checkpoints = crate::capture::named("CheckpointCompleted");
    assert!(
        checkpoints.iter().all(|e| e.spans.iter().any(|s| s == "orchestration_work_item")),
        "{checkpoints:?}"
    );
    assert!(
        crate::capture::named("TaskActivityStarting")
            .iter()
            .any(|e| e.spans.iter().any(|s| s == "activity_work_item"))
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_more_than_99_events_chain_batches() {
    let Some(acct) = account("checkpoints_of_more_than_99_events_chain_batches") else { return };
    let svc = provider(&acct, test_settings("wide", 2));
    let names = svc.resource_names().clone();
    let r = Running::start(svc).await;
    let id = "wide-1";
    r.client
        .schedule_new_orchestration("Wide", &150u32, StartOptions::with_instance_id(id))
        .await
        .expect("start");
    let state = r.client.wait_for_completion(id, Duration::from_secs(90)).await.expect("done");
    assert_eq!(state.orchestration_status, OrchestrationStatus::Completed, "{state:?}");
    assert_eq!(state.output_as::<usize>().unwrap(), 150);
    let history = r.client.get_history(id).await.expect("history");
    let scheduled =
        history.iter().filter(|e| matches!(e.kind, EventKind::TaskScheduled { .. })).count();
    assert_eq!(scheduled, 150);
    // The first episode alone wrote 150+ rows: read them back from the table, contiguous.
    let rows = storage(&acct)
        .query(&names.history_table, Some("PartitionKey eq 'wide-1'"), None, None, None)
        .await
        .expect("rows")
        .entities;
    let n = rows.iter().filter(|r| r.row_key != "sentinel").count();
    assert_eq!(n, history.len());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_payloads_go_through_blobs_and_purge_removes_them() {
    let Some(acct) = account("one_mib_payloads_go_through_blobs_and_purge_removes_them") else {
        return;
    };
    let svc = provider(&acct, test_settings("large", 2));
    let names = svc.resource_names().clone();
    let r = Running::start(svc).await;
    let id = "big 'one' ü";
    let input = "x".repeat(1024 * 1024);
    r.client
        .schedule_new_orchestration("Big", &input, StartOptions::with_instance_id(id))
        .await
        .expect("start");
    let state = r.client.wait_for_completion(id, Duration::from_secs(90)).await.expect("done");
    assert_eq!(state.orchestration_status, OrchestrationStatus::Completed, "{state:?}");
    let out: String = state.output_as().unwrap();
    assert_eq!(out.len(), 1024 * 1024 + 8);
    assert!(out.starts_with("1048576:yyy"));
    assert_eq!(
        state.input.as_deref().map(str::len),
        Some(1024 * 1024 + 2),
        "input fetched from its blob"
    );
    let st = storage(&acct);
    let inst = st
        .get_entity(
            &names.instances_table,
            &durabletask_azure_storage::keys::escape_partition_key(id),
            "",
        )
        .await
        .unwrap()
        .expect("row");
    let stored_output = inst.get_str("Output").unwrap();
    assert!(
        stored_output.starts_with("http") && stored_output.contains("-largemessages/"),
        "{stored_output}"
    );
    let blobs = st.list_blobs(&names.large_messages_container, "").await.unwrap();
    assert!(!blobs.is_empty());
    assert!(
        blobs.iter().all(|b| b.starts_with("big 'one' ü/")),
        "blob names are built from the escaped id: {blobs:?}"
    );
    let purged = r.svc.purge_instance(id).await.expect("purge");
    assert_eq!(purged.deleted_instance_count, 1);
    assert!(st.list_blobs(&names.large_messages_container, "").await.unwrap().is_empty());
    assert!(r.svc.get_state(id, false).await.unwrap().is_none());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_character_ids_work_and_illegal_ones_are_rejected_without_writes() {
    let Some(acct) = account("special_character_ids") else { return };
    let svc = provider(&acct, test_settings("ids", 4));
    let names = svc.resource_names().clone();
    let r = Running::start(svc).await;
    let ids = [
        "it's",
        "a^b^^c",
        "日本語 id",
        "sp ace",
        "mid@dle@key",
        "x:y;z=1&q",
        ".dot",
        "percent%41",
        "a/b",
        "a\\b#c?d",
    ];
    for id in ids {
        r.client
            .schedule_new_orchestration("Hello", &id, StartOptions::with_instance_id(id))
            .await
            .expect("start");
    }
    for id in ids {
        let s = r.client.wait_for_completion(id, Duration::from_secs(60)).await.expect("done");
        assert_eq!(s.output_as::<String>().unwrap(), format!("Hello {id}!"));
        assert_eq!(s.instance_id(), id);
        assert!(!r.client.get_history(id).await.unwrap().is_empty());
    }
    let q = r
        .svc
        .query(&durabletask_core::OrchestrationQuery {
            instance_id_prefix: Some("a^".into()),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(q.states.iter().map(|s| s.instance_id()).collect::<Vec<_>>(), ["a^b^^c"]);

    let before = storage(&acct)
        .query(&names.instances_table, None, None, None, None)
        .await
        .unwrap()
        .entities
        .len();
    for bad in ["a\u{2028}b", "a\u{2029}b", "tab\there", "nul\0", ""] {
        let err = r
            .svc
            .send_message(durabletask_core::TaskMessage::new(
                durabletask_core::OrchestrationInstance::new(bad),
                durabletask_core::HistoryEvent::new(
                    -1,
                    time::OffsetDateTime::now_utc(),
                    EventKind::EventRaised { name: "e".into(), input: None },
                ),
            ))
            .await
            .expect_err("illegal id accepted");
        assert_eq!(err.kind(), ProviderErrorKind::InvalidInput, "{bad:?}: {err}");
        let err = r
            .client
            .schedule_new_orchestration("Hello", &"x", StartOptions::with_instance_id(bad))
            .await
            .expect_err("illegal id accepted by the client");
        assert!(err.to_string().contains("instance id"), "{err}");
    }
    let after = storage(&acct)
        .query(&names.instances_table, None, None, None, None)
        .await
        .unwrap()
        .entities;
    assert_eq!(after.len(), before, "nothing was written for illegal ids");
    r.stop().await;
}

/// History batches wait at a gate while it is armed: worker A "stalls" in the middle of its
/// checkpoint while worker B takes over the partition and commits.
#[derive(Debug)]
struct HistoryGate {
    gate: Arc<tokio::sync::Semaphore>,
    armed: Arc<std::sync::atomic::AtomicBool>,
    arrived: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl StorageHook for HistoryGate {
    async fn before(
        &self,
        call: Call<'_>,
    ) -> durabletask_azure_storage::storage::StorageResult<CallGuard> {
        if call.op == StorageOp::TableBatch
            && call.resource.ends_with("History")
            && self.armed.load(std::sync::atomic::Ordering::Acquire)
        {
            self.arrived.notify_one();
            let permit = self.gate.clone().acquire_owned().await.expect("gate");
            return Ok(Some(Box::new(permit)));
        }
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_one_work_item_exactly_one_commits() {
    use durabletask_core::{RuntimeOptions, WorkItemResult};
    let Some(acct) = account("two_workers_racing_one_work_item") else { return };
    crate::capture::install();
    let mut settings = test_settings("race", 1);
    settings.control_queue_visibility_timeout = Duration::from_secs(2);
    let az = Arc::new(storage(&acct));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let names = durabletask_azure_storage::ResourceNames::new(&settings.task_hub_name, 1);
    let stack_a = StorageStack {
        queues: az.clone(),
        tables: Arc::new(HookedStorage::new(
            az.clone(),
            az.clone(),
            az.clone(),
            HistoryGate { gate: gate.clone(), armed: armed.clone(), arrived: arrived.clone() },
        )),
        blobs: az.clone(),
        counters: az.counters(),
        large_messages_container_url: acct.blob_container_url(&names.large_messages_container),
    };
    let mut settings_a = settings.clone();
    settings_a.worker_id = "worker-a".into();
    let a = AzureStorageOrchestrationService::with_storage(settings_a, stack_a).expect("a");
    let mut settings_b = settings.clone();
    settings_b.worker_id = "worker-b".into();
    let b = provider(&acct, settings_b);
    a.create_if_not_exists().await.expect("create");
    a.start().await.expect("start a");
    let reg = registry().build();
    let client = TaskHubClient::new(Arc::new(a.clone()));
    client
        .schedule_new_orchestration("Hello", &"race", StartOptions::with_instance_id("race-1"))
        .await
        .expect("start");

    // Worker A locks the start and runs it, then stalls inside its history write.
    let wa = a
        .lock_next_orchestration_work_item(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("A's work item");
    let mut ids = durabletask_core::new_execution_id;
    let result_a = durabletask_core::runtime::process_work_item(
        &reg,
        wa.runtime_state.clone(),
        wa.new_messages.clone(),
        time::OffsetDateTime::now_utc(),
        &RuntimeOptions::default(),
        &mut ids,
    )
    .expect("process");
    assert!(matches!(result_a, WorkItemResult::Checkpoint(_)));
    let a2 = a.clone();
    let a_commit = tokio::spawn(async move {
        let r = a2.complete_orchestration_work_item(&wa, result_a).await;
        (r, wa)
    });
    arrived.notified().await;
    // A stops renewing its partition (it is stalled); its lease expires and B takes over.
    a.partition_manager().abort();
    b.start().await.expect("start b");
    let wb = loop {
        if let Some(w) = b.lock_next_orchestration_work_item(Duration::from_secs(5)).await.unwrap()
        {
            break w;
        }
    };
    assert!(wb.dequeue_count >= 2, "B got the redelivered start");
    let result_b = durabletask_core::runtime::process_work_item(
        &reg,
        wb.runtime_state.clone(),
        wb.new_messages.clone(),
        time::OffsetDateTime::now_utc(),
        &RuntimeOptions::default(),
        &mut ids,
    )
    .expect("process");
    b.complete_orchestration_work_item(&wb, result_b).await.expect("B commits");
    b.release_orchestration_work_item(&wb).await.unwrap();
    // A resumes: its checkpoint must be rejected (409 on the sentinel insert), nothing of it kept.
    armed.store(false, std::sync::atomic::Ordering::Release);
    gate.add_permits(100);
    let (ra, wa) = a_commit.await.unwrap();
    let err = ra.expect_err("A must not commit after B");
    assert!(
        matches!(err.kind(), ProviderErrorKind::Conflict | ProviderErrorKind::PreconditionFailed),
        "{err}"
    );
    a.release_orchestration_work_item(&wa).await.unwrap();
    let split = crate::capture::named("SplitBrainDetected");
    assert!(
        split.iter().any(|e| e.fields.get("instance_id").map(String::as_str) == Some("race-1")),
        "the losing worker logs SplitBrainDetected: {split:?}"
    );
    let history = b.get_history("race-1", None).await.unwrap();
    let starts =
        history.iter().filter(|e| matches!(e.kind, EventKind::ExecutionStarted(_))).count();
    assert_eq!(starts, 1, "one committed episode: {history:?}");
    let exec_b = history
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ExecutionStarted(s) => s.orchestration_instance.execution_id.clone(),
            _ => None,
        })
        .unwrap();
    let state = b.get_state("race-1", false).await.unwrap().expect("row");
    assert_eq!(state.orchestration_instance.execution_id.as_deref(), Some(exec_b.as_str()));
    a.stop(false).await.ok();
    b.stop(false).await.ok();
    b.delete().await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_malformed_messages_do_not_stop_the_worker() {
    let Some(acct) = account("foreign_and_malformed_messages") else { return };
    let svc = provider(&acct, test_settings("junk", 1));
    let names = svc.resource_names().clone();
    let r = Running::start(svc).await;
    let st = storage(&acct);
    for text in
        ["{\"$type\":\"DurableTask.AzureStorage.MessageData\"}", "not base64 !!", "AAAA", ""]
    {
        st.put_message(&names.control_queues[0], text, Duration::ZERO).await.unwrap();
        st.put_message(&names.work_item_queue, text, Duration::ZERO).await.unwrap();
    }
    r.client
        .schedule_new_orchestration(
            "Hello",
            &"after junk",
            StartOptions::with_instance_id("junk-1"),
        )
        .await
        .expect("start");
    let s = r.client.wait_for_completion("junk-1", Duration::from_secs(60)).await.expect("done");
    assert_eq!(s.output_as::<String>().unwrap(), "Hello after junk!");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement helper"]
async fn measure_ops_per_orchestration() {
    let Some(acct) = account("measure_ops") else { return };
    let svc = provider(&acct, test_settings("measure", 4));
    let r = Running::start(svc).await;
    let before = r.svc.storage_counters();
    let n = 100;
    for i in 0..n {
        r.client
            .schedule_new_orchestration(
                "Hello3",
                &(),
                StartOptions::with_instance_id(format!("m-{i}")),
            )
            .await
            .expect("start");
    }
    for i in 0..n {
        r.client
            .wait_for_completion(&format!("m-{i}"), Duration::from_secs(120))
            .await
            .expect("done");
    }
    let d = r.svc.storage_counters().since(&before);
    println!("total per orchestration: {:.1}", d.total() as f64 / n as f64);
    for (op, c) in d.non_zero() {
        println!("{:?}: {:.2}", op, c as f64 / n as f64);
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_hands_prefetched_work_to_the_next_owner_at_once() {
    let Some(acct) = account("graceful_stop_hands_prefetched_work") else { return };
    let mut settings = test_settings("handover", 1);
    // Long enough that only an explicit release can make the message visible within the test.
    settings.control_queue_visibility_timeout = Duration::from_secs(300);
    let mut sa = settings.clone();
    sa.worker_id = "worker-a".into();
    let mut sb = settings;
    sb.worker_id = "worker-b".into();
    let a = provider(&acct, sa);
    let b = provider(&acct, sb);
    a.create_if_not_exists().await.expect("create");
    a.start().await.expect("start a");
    let client = TaskHubClient::new(Arc::new(a.clone()));
    client
        .schedule_new_orchestration("Hello", &"x", StartOptions::with_instance_id("handover-1"))
        .await
        .expect("start");
    // A's poller receives and prefetches the start; nobody locks it.
    let info = crate::support::wait_for(Duration::from_secs(30), || async {
        let i = a.hub_info().await.expect("info");
        (i.owned_partitions.len() == 1).then_some(i)
    })
    .await;
    assert_eq!(info.control_queues.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop(true).await.expect("graceful stop");
    b.start().await.expect("start b");
    let wb = crate::support::wait_for(Duration::from_secs(60), || async {
        b.lock_next_orchestration_work_item(Duration::from_secs(2)).await.expect("lock")
    })
    .await;
    assert_eq!(wb.instance_id, "handover-1");
    assert!(wb.dequeue_count >= 2, "the message was received by A before: {}", wb.dequeue_count);
    b.abandon_orchestration_work_item(&wb, Duration::ZERO).await.unwrap();
    b.release_orchestration_work_item(&wb).await.unwrap();
    b.stop(true).await.ok();
    b.delete().await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_a_typed_error_and_nothing_written() {
    let Some(acct) = account("oversized_messages_are_refused") else { return };
    let mut settings = test_settings("oversize", 1);
    settings.max_message_bytes = 64 * 1024;
    let r = Running::start(provider(&acct, settings)).await;
    let names = r.svc.resource_names().clone();
    let err = r
        .client
        .schedule_new_orchestration(
            "Big",
            &"q".repeat(100 * 1024),
            StartOptions::with_instance_id("huge"),
        )
        .await
        .expect_err("oversized input accepted");
    assert!(err.to_string().contains("max_message_bytes"), "{err}");
    assert!(r.svc.get_state("huge", false).await.unwrap().is_none(), "no Instances row");
    let st = storage(&acct);
    assert_eq!(st.approximate_message_count(&names.control_queues[0]).await.unwrap(), 0);
    assert!(st.list_blobs(&names.large_messages_container, "").await.unwrap().is_empty());
    // An activity result over the limit fails the activity instead of retrying forever.
    r.client
        .schedule_new_orchestration(
            "TooBig",
            &(100 * 1024usize),
            StartOptions::with_instance_id("too-big"),
        )
        .await
        .expect("start");
    let s = r.client.wait_for_completion("too-big", Duration::from_secs(60)).await.expect("done");
    let out: String = s.output_as().unwrap();
    assert!(out.starts_with("failed:") && out.contains("max_message_bytes"), "{out}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_duplicate_starts_are_deduplicated() {
    use durabletask_azure_storage::envelope::MessageData;
    use durabletask_core::{
        ExecutionStartedEvent, HistoryEvent, OrchestrationInstance, TaskMessage,
    };
    let Some(acct) = account("stale_and_duplicate_starts") else { return };
    let r = Running::start(provider(&acct, test_settings("dedupe", 1))).await;
    let names = r.svc.resource_names().clone();
    r.client
        .schedule_new_orchestration("Hello", &"once", StartOptions::with_instance_id("dup-1"))
        .await
        .expect("start");
    let done = r.client.wait_for_completion("dup-1", Duration::from_secs(60)).await.expect("done");
    let exec = done.orchestration_instance.execution_id.clone().unwrap();
    let history_before = r.client.get_history("dup-1").await.unwrap();
    let st = storage(&acct);
    let put = |exec: String, age: time::Duration| {
        let inst = OrchestrationInstance::with_execution("dup-1", exec);
        let ev = ExecutionStartedEvent::new(inst.clone(), "Hello", Some("\"again\"".into()));
        let msg = TaskMessage::new(
            inst,
            HistoryEvent::new(
                -1,
                time::OffsetDateTime::now_utc() - age,
                EventKind::ExecutionStarted(ev),
            ),
        );
        MessageData::encode_text(&MessageData::new(msg, 1).to_bytes().unwrap())
    };
    // A redelivered copy of the original start, and a start of an older execution.
    st.put_message(
        &names.control_queues[0],
        &put(exec.clone(), time::Duration::ZERO),
        Duration::ZERO,
    )
    .await
    .unwrap();
    st.put_message(
        &names.control_queues[0],
        &put(durabletask_core::new_execution_id(), time::Duration::hours(1)),
        Duration::ZERO,
    )
    .await
    .unwrap();
    crate::support::wait_for(Duration::from_secs(30), || async {
        let n = st.approximate_message_count(&names.control_queues[0]).await.unwrap();
        (n == 0).then_some(())
    })
    .await;
    let after = r.client.get_state("dup-1").await.unwrap().expect("row");
    assert_eq!(after.orchestration_status, OrchestrationStatus::Completed);
    assert_eq!(after.orchestration_instance.execution_id.as_deref(), Some(exec.as_str()));
    assert_eq!(after.output_as::<String>().unwrap(), "Hello once!");
    assert_eq!(r.client.get_history("dup-1").await.unwrap(), history_before, "nothing re-ran");
    r.stop().await;
}

/// `delete` removes every resource of the hub whichever partition count and partition manager
/// created it: a hub made with 8 control queues and blob leases, deleted by a provider with the
/// defaults (4 partitions, table leases), leaves no queue, table or container behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_every_resource_whatever_created_the_hub() {
    let Some(acct) = account("delete_everything") else { return };
    let mut made = test_settings("delete_everything", 8);
    made.partition_manager = durabletask_azure_storage::PartitionManagerKind::SafeBlob;
    let creator = provider(&acct, made.clone());
    creator.create_if_not_exists().await.expect("create");
    creator.start().await.expect("start (writes the leases)");
    creator.stop(true).await.expect("stop");
    let names = durabletask_azure_storage::ResourceNames::new(&made.task_hub_name, 8);
    let storage = AzureStorage::new(&acct, Duration::from_secs(20));
    assert!(storage.list_blobs(&names.leases_container, "").await.is_ok(), "blob leases exist");
    let mut defaults = test_settings("delete_everything", 4);
    defaults.task_hub_name = made.task_hub_name.clone();
    provider(&acct, defaults).delete().await.expect("delete");
    for q in names.control_queues.iter().chain([&names.work_item_queue, &names.poison_queue]) {
        let r = storage.approximate_message_count(q).await;
        assert!(
            r.is_err_and(
                |e| e.kind() == durabletask_azure_storage::storage::StorageErrorKind::NotFound
            ),
            "queue {q} left"
        );
    }
    for t in [&names.history_table, &names.instances_table, &names.partitions_table] {
        let r = storage.query(t, None, None, Some(1), None).await;
        assert!(
            r.is_err_and(
                |e| e.kind() == durabletask_azure_storage::storage::StorageErrorKind::NotFound
            ),
            "table {t} left"
        );
    }
    for c in [&names.leases_container, &names.large_messages_container] {
        let r = storage.list_blobs(c, "").await;
        assert!(
            r.is_err_and(
                |e| e.kind() == durabletask_azure_storage::storage::StorageErrorKind::NotFound
            ),
            "container {c} left"
        );
    }
}
