//! Durable entities on Azure Storage: crashes between every two checkpoint steps of an entity
//! batch lose and double nothing, and entities are stored in DTF's layout (Instances row with
//! the scheduler state as Input and the entity status as CustomStatus; one execution of three
//! History rows per batch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durabletask_azure_storage::keys::escape_partition_key;
use durabletask_azure_storage::storage::{AzureStorage, TableStore, query_all};
use durabletask_azure_storage::{
    AzureStorageOrchestrationService, CrashHook, CrashPoint, StorageStack,
};
use durabletask_core::{
    Dispatchers, EntityContext, EntityError, EntityId, OrchestrationContext, OrchestrationService,
    OrchestrationServiceClient, OrchestrationStatus, Registry, StartOptions, TaskHubClient,
    WorkerOptions,
};

use crate::support::{account, test_settings};

/// Crashes the checkpoints of one instance: the n-th checkpoint at the given point. Attempts
/// are numbered at their first crash point: `AfterHistory` for an entity (its checkpoint commits
/// before it sends), `AfterSend` for an orchestration.
#[derive(Debug)]
struct CrashPlan {
    instance: String,
    plan: Vec<(usize, CrashPoint)>,
    seen: Mutex<HashMap<&'static str, usize>>,
    crashed: Mutex<Vec<(usize, CrashPoint)>>,
}

impl CrashHook for CrashPlan {
    fn crash_at(&self, point: CrashPoint, instance_id: &str) -> bool {
        if instance_id != self.instance {
            return false;
        }
        let mut seen = self.seen.lock().unwrap();
        let first = if instance_id.starts_with('@') {
            CrashPoint::AfterHistory
        } else {
            CrashPoint::AfterSend
        };
        if point == first {
            *seen.entry("checkpoints").or_default() += 1;
        }
        let n = seen.get("checkpoints").copied().unwrap_or(0);
        let hit = self.plan.contains(&(n, point));
        if hit {
            self.crashed.lock().unwrap().push((n, point));
        }
        hit
    }
}

/// A worker over a fresh hub whose provider crashes where `plan` says for `instance` (3 s
/// control-queue visibility, so crashed work items come back quickly), and a client.
struct CrashHub {
    svc: AzureStorageOrchestrationService,
    worker: Dispatchers,
    client: TaskHubClient,
    hook: Arc<CrashPlan>,
}

impl CrashHub {
    async fn start(
        acct: &durabletask_azure_storage::storage::StorageAccount,
        test: &str,
        instance: &str,
        plan: Vec<(usize, CrashPoint)>,
    ) -> Self {
        let mut settings = test_settings(test, 2);
        settings.control_queue_visibility_timeout = Duration::from_secs(3);
        let hook = Arc::new(CrashPlan {
            instance: instance.into(),
            plan,
            seen: Mutex::default(),
            crashed: Mutex::default(),
        });
        let stack = StorageStack::azure(acct, &settings);
        let svc = AzureStorageOrchestrationService::with_test_hooks(
            settings,
            stack,
            Arc::new(durabletask_core::SystemClock),
            Some(Arc::clone(&hook) as Arc<dyn CrashHook>),
        )
        .expect("provider");
        svc.create_if_not_exists().await.expect("create hub");
        let worker = Dispatchers::start(
            Arc::new(svc.clone()),
            registry(),
            WorkerOptions {
                abandon_backoff_base: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .await
        .expect("worker");
        let client = TaskHubClient::new(Arc::new(svc.clone()))
            .with_max_poll_interval(Duration::from_millis(200));
        Self { svc, worker, client, hook }
    }

    fn crashed(&self) -> Vec<(usize, CrashPoint)> {
        self.hook.crashed.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");
        self.svc.delete().await.expect("delete hub");
    }
}

fn registry() -> Registry {
    Registry::builder()
        .entity("Counter", |ctx: &mut EntityContext<i64>| match ctx.operation() {
            "add" => {
                let n: i64 = ctx.input()?;
                *ctx.state_mut() += n;
                Ok(ctx.state().copied())
            }
            "get" => Ok(ctx.state().copied()),
            "forward" => {
                let v = ctx.state().copied().unwrap_or(0);
                ctx.signal_entity(&EntityId::new("Counter", "mirror"), "add", &v)?;
                Ok(None)
            }
            other => Err(EntityError::new(format!("no operation {other}"))),
        })
        .entity("Text", |ctx: &mut EntityContext<String>| match ctx.operation() {
            "append" => {
                let s: String = ctx.input()?;
                ctx.state_mut().push_str(&s);
                Ok(ctx.state().map(String::len))
            }
            "delete" => {
                ctx.delete_state();
                Ok(None)
            }
            other => Err(EntityError::new(format!("no operation {other}"))),
        })
        .orchestration("CallLockCall", |ctx: OrchestrationContext, (): ()| async move {
            let a = EntityId::new("Counter", "la");
            let b = EntityId::new("Counter", "lb");
            let first: Option<i64> = ctx.call_entity(&a, "add", &1).await?;
            let lock = ctx.lock_entities(&[a.clone(), b.clone()]).await?;
            let second: Option<i64> = ctx.call_entity(&b, "add", &1).await?;
            lock.release();
            Ok((first, second))
        })
        .orchestration("Adder", |ctx: OrchestrationContext, (n, each): (u32, i64)| async move {
            let id = EntityId::new("Counter", "c");
            let mut last = None;
            for i in 0..n {
                if i % 5 == 4 {
                    last = ctx.call_entity::<_, Option<i64>>(&id, "add", &each).await?;
                } else {
                    ctx.signal_entity(&id, "add", &each)?;
                }
            }
            ctx.signal_entity(&id, "forward", &())?;
            Ok(last)
        })
        .build()
}

async fn entity_value(client: &TaskHubClient, key: &str) -> Option<i64> {
    client.get_entity::<i64>(&EntityId::new("Counter", key)).await.unwrap().and_then(|m| m.state)
}

/// The counter's checkpoints crash after the History write, after sending, after the Instances
/// write and before the deletes; the work items come back after the visibility
/// timeout and are redone. Every signal and call applies exactly once, the entity-to-entity
/// signal too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_between_entity_checkpoint_steps_lose_and_double_nothing() {
    let Some(acct) = account("entities_crash_steps") else { return };
    let hub = CrashHub::start(
        &acct,
        "entities_crash_steps",
        "@counter@c",
        vec![
            (2, CrashPoint::AfterHistory),
            (4, CrashPoint::AfterSend),
            (6, CrashPoint::AfterInstances),
            (8, CrashPoint::BeforeDelete),
        ],
    )
    .await;
    let client = hub.client.clone();
    // Three orchestrations, 20 operations of +1 each (every fifth a call), then a forward; and
    // client signals of +100 in between.
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = format!("adder-{i}");
        client
            .schedule_new_orchestration(
                "Adder",
                &(20u32, 1i64),
                StartOptions::with_instance_id(&id),
            )
            .await
            .expect("start");
        client.signal_entity(&EntityId::new("Counter", "c"), "add", &100).await.expect("signal");
        ids.push(id);
    }
    for id in &ids {
        let s = client.wait_for_completion(id, Duration::from_secs(120)).await.expect("done");
        assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    }
    let want = 3 * 20 + 300;
    crate::support::wait_for(Duration::from_secs(60), || async {
        (entity_value(&client, "c").await == Some(want)).then_some(())
    })
    .await;
    // The forwards add the counter's value at three moments; the mirror got each once.
    crate::support::wait_for(Duration::from_secs(60), || async {
        entity_value(&client, "mirror").await.filter(|v| *v > 0).map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // a redelivery after a crash would land now
    assert_eq!(entity_value(&client, "c").await, Some(want), "no operation doubled");
    let crashed = hub.crashed();
    assert_eq!(crashed.len(), 4, "every planned crash happened: {crashed:?}");
    hub.stop().await;
}

/// An entity's Instances row and History rows follow DTF's layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_stored_in_dtf_layout() {
    let Some(acct) = account("entities_layout") else { return };
    let settings = test_settings("entities_layout", 2);
    let svc = AzureStorageOrchestrationService::new(settings, &acct).expect("provider");
    svc.create_if_not_exists().await.expect("create hub");
    let names = svc.resource_names().clone();
    let worker = Dispatchers::start(Arc::new(svc.clone()), registry(), WorkerOptions::default())
        .await
        .expect("worker");
    let client = TaskHubClient::new(Arc::new(svc.clone()));
    let id = EntityId::new("Counter", "layout");
    for _ in 0..3 {
        client.signal_entity(&id, "add", &2).await.expect("signal");
    }
    crate::support::wait_for(Duration::from_secs(60), || async {
        (entity_value(&client, "layout").await == Some(6)).then_some(())
    })
    .await;
    let storage = AzureStorage::new(&acct, Duration::from_secs(20));
    let pk = escape_partition_key(&id.instance_id());
    let row =
        storage.get_entity(&names.instances_table, &pk, "").await.unwrap().expect("instances row");
    assert_eq!(row.get_str("Name"), Some("counter"));
    assert_eq!(row.get_str("RuntimeStatus"), Some("Running"));
    let status: serde_json::Value =
        serde_json::from_str(row.get_str("CustomStatus").expect("custom status")).unwrap();
    assert_eq!(status, serde_json::json!({"entityExists": true, "queueSize": 0}));
    let input: serde_json::Value =
        serde_json::from_str(row.get_str("Input").expect("input")).unwrap();
    assert_eq!(input["exists"], true);
    assert_eq!(input["state"], "6");
    // The current execution: OrchestratorStarted, ExecutionStarted, OrchestratorCompleted and
    // the sentinel.
    let exec = row.get_str("ExecutionId").expect("execution").to_owned();
    let filter = format!("PartitionKey eq '{pk}'");
    let history = query_all(&storage, &names.history_table, Some(&filter), None).await.unwrap();
    let current: Vec<_> = history
        .iter()
        .filter(|e| e.get_str("ExecutionId") == Some(exec.as_str()))
        .filter_map(|e| e.get_str("EventType").map(str::to_owned))
        .collect();
    assert_eq!(
        current,
        ["OrchestratorStarted", "ExecutionStarted", "OrchestratorCompleted"],
        "{history:?}"
    );
    let state = svc.get_state(&id.instance_id(), false).await.unwrap().expect("state");
    assert_eq!(state.orchestration_status, OrchestrationStatus::Running);
    worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");
    svc.delete().await.expect("delete hub");
}

/// A checkpoint that dies between its History and Instances writes leaves the row one batch
/// behind; the redelivered copies alone (no new message) bring it up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_copies_repair_the_row_a_crash_left_behind() {
    let Some(acct) = account("entities_row_repair") else { return };
    let hub = CrashHub::start(
        &acct,
        "entities_row_repair",
        "@counter@r",
        vec![(2, CrashPoint::AfterHistory)],
    )
    .await;
    let client = hub.client.clone();
    let id = EntityId::new("Counter", "r");
    client.signal_entity(&id, "add", &1).await.expect("signal");
    crate::support::wait_for(Duration::from_secs(30), || async {
        (entity_value(&client, "r").await == Some(1)).then_some(())
    })
    .await;
    // Checkpoint 2 commits History (value 11) and dies before the row.
    client.signal_entity(&id, "add", &10).await.expect("signal");
    crate::support::wait_for(Duration::from_secs(30), || async {
        (!hub.crashed().is_empty()).then_some(())
    })
    .await;
    assert_eq!(entity_value(&client, "r").await, Some(1), "the row is one batch behind");
    // The copy comes back after the visibility timeout: a duplicate, applied once, and the
    // checkpoint it makes rewrites the row.
    crate::support::wait_for(Duration::from_secs(30), || async {
        (entity_value(&client, "r").await == Some(11)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(entity_value(&client, "r").await, Some(11));
    hub.stop().await;
}

/// A large entity state lives in blobs; batch after batch the container holds exactly the live
/// generation's blobs (each batch is a new execution whose predecessor's blobs are deleted), and
/// nothing once the state is deleted and the entity is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entity_state_leaves_only_live_blobs() {
    use durabletask_azure_storage::audit::blob_references;
    let Some(acct) = account("entities_large_blobs") else { return };
    let settings = test_settings("entities_large_blobs", 2);
    let stack = StorageStack::azure(&acct, &settings);
    let svc = AzureStorageOrchestrationService::new(settings, &acct).expect("provider");
    svc.create_if_not_exists().await.expect("create hub");
    let names = svc.resource_names().clone();
    let worker = Dispatchers::start(Arc::new(svc.clone()), registry(), WorkerOptions::default())
        .await
        .expect("worker");
    let client = TaskHubClient::new(Arc::new(svc.clone()));
    let id = EntityId::new("Text", "big");
    let chunk = "t".repeat(40_000);
    for round in 1..=4usize {
        client.signal_entity(&id, "append", &chunk).await.expect("signal");
        crate::support::wait_for(Duration::from_secs(60), || async {
            let m = client.get_entity::<String>(&id).await.unwrap()?;
            (m.state.map(|s| s.len()) == Some(round * 40_000)).then_some(())
        })
        .await;
    }
    // The state (160 KB) is over the table-property limit: the row's Input is a blob URL.
    let storage = AzureStorage::new(&acct, Duration::from_secs(20));
    let row = storage
        .get_entity(&names.instances_table, &escape_partition_key(&id.instance_id()), "")
        .await
        .unwrap()
        .expect("row");
    assert!(row.get_str("Input").is_some_and(|v| v.starts_with("http")), "{row:?}");
    let audit = crate::support::wait_for(Duration::from_secs(20), || async {
        let a = blob_references(&stack, &names).await.unwrap();
        a.is_exact().then_some(a)
    })
    .await;
    assert_eq!(audit.blobs_of(&id.instance_id()).len(), 1, "{}", audit.describe());
    client.signal_entity(&id, "delete", &()).await.expect("signal");
    crate::support::wait_for(Duration::from_secs(60), || async {
        client.get_entity::<String>(&id).await.unwrap().is_none().then_some(())
    })
    .await;
    let audit = crate::support::wait_for(Duration::from_secs(20), || async {
        let a = blob_references(&stack, &names).await.unwrap();
        (a.is_exact() && a.blobs_of(&id.instance_id()).is_empty()).then_some(a)
    })
    .await;
    assert!(audit.in_container.is_empty(), "{}", audit.describe());
    worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");
    svc.delete().await.expect("delete hub");
}

/// An orchestration whose checkpoints die after sending (the call, the lock request, the call in
/// the critical section) still completes: the re-run episode sends the same requests under the
/// same ids, the entities keep the first copy and answer the id the orchestration waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_checkpoints_die_after_sending_still_gets_its_answers() {
    let Some(acct) = account("entities_caller_crash") else { return };
    let hub = CrashHub::start(
        &acct,
        "entities_caller_crash",
        "caller",
        vec![(1, CrashPoint::AfterSend), (3, CrashPoint::AfterSend), (5, CrashPoint::AfterSend)],
    )
    .await;
    let client = hub.client.clone();
    client
        .schedule_new_orchestration("CallLockCall", &(), StartOptions::with_instance_id("caller"))
        .await
        .expect("start");
    let s = client.wait_for_completion("caller", Duration::from_secs(90)).await.expect("done");
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output.as_deref(), Some("[1,1]"));
    let crashed = hub.crashed();
    assert_eq!(crashed.len(), 3, "{crashed:?}");
    // Each call applied once, and the locks were released.
    for key in ["la", "lb"] {
        crate::support::wait_for(Duration::from_secs(30), || async {
            let m = client.get_entity::<i64>(&EntityId::new("Counter", key)).await.unwrap()?;
            (m.state == Some(1) && m.locked_by.is_none()).then_some(())
        })
        .await;
    }
    hub.stop().await;
}
