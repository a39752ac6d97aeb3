//! Three `sample_worker` processes on one task hub (4 partitions, short leases) against Azurite:
//! every partition gets an owner, all three processes own partitions, 300 orchestrations complete,
//! their instances cover every partition, activities ran in more than one process, and every
//! worker stops gracefully on SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durabletask_azure_storage::TaskHubName;
use durabletask_azure_storage::keys::partition_index;
use durabletask_core::{
    ClientError, OrchestrationQuery, OrchestrationService, OrchestrationStatus, ProviderErrorKind,
    StartOptions, TaskHubClient,
};
use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};
use durabletask_testkit::wait::wait_until;
use durabletask_worker_host::samples::{self, HelloWorkerOutput};
use durabletask_worker_host::{HostSettings, StorageConnection, azure_service};
use futures::StreamExt;

const WORKERS: usize = 3;
const PARTITIONS: u8 = 4;
const INSTANCES: usize = 300;

/// Kills every child still running when dropped (test failure or panic included).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// What the workers printed: who is ready, and which partitions each owned (latest and ever).
#[derive(Debug, Default)]
struct Seen {
    ready: BTreeSet<String>,
    owned_now: BTreeMap<String, BTreeSet<String>>,
    owned_ever: BTreeMap<String, BTreeSet<String>>,
    stopped: BTreeSet<String>,
    /// The latest `STATS` line of each worker (printed when the test times out).
    stats: BTreeMap<String, String>,
}

fn spawn_worker(cs: &str, hub: &str, worker_id: &str, seen: &Arc<Mutex<Seen>>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample_worker"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DTF_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("DTF_CONNECTION_STRING", cs)
        .env("DTF_TASK_HUB", hub)
        .env("DTF_PARTITION_COUNT", PARTITIONS.to_string())
        .env("DTF_WORKER_ID", worker_id)
        .env("DTF_LEASE_INTERVAL_SECS", "6")
        .env("DTF_LEASE_RENEW_INTERVAL_SECS", "2")
        .env("DTF_LEASE_ACQUIRE_INTERVAL_SECS", "1")
        .env("DTF_MAX_QUEUE_POLLING_INTERVAL_MS", "500")
        .env("RUST_LOG", std::env::var("MP_RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn sample_worker");
    let stdout = child.stdout.take().expect("stdout");
    let seen = Arc::clone(seen);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            let mut s = seen.lock().unwrap();
            match (parts.next(), parts.next()) {
                (Some("READY"), Some(w)) => {
                    s.ready.insert(w.to_owned());
                }
                (Some("OWNED"), Some(w)) => {
                    let owned: BTreeSet<String> = parts
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .filter(|q| !q.is_empty())
                        .map(str::to_owned)
                        .collect();
                    s.owned_ever.entry(w.to_owned()).or_default().extend(owned.iter().cloned());
                    s.owned_now.insert(w.to_owned(), owned);
                }
                (Some("STATS"), Some(w)) => {
                    s.stats.insert(w.to_owned(), line.clone());
                }
                (Some("STOPPED"), Some(w)) => {
                    s.stopped.insert(w.to_owned());
                }
                _ => {}
            }
        }
    });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_share_a_task_hub() {
    let Some(env) = AzuriteEnv::from_env_or_skip("multi_process") else { return };
    let hub = unique_hub_name("multi_process");
    let mut settings = HostSettings::new(
        StorageConnection::ConnectionString(env.connection_string().to_owned()),
        TaskHubName::new(hub.as_str()).unwrap(),
    );
    settings.provider.partition_count = PARTITIONS;
    settings.provider.worker_id = "test-client".into();
    let svc = azure_service(&settings).unwrap();
    svc.create_if_not_exists().await.unwrap();
    let client = TaskHubClient::new(Arc::new(svc.clone()))
        .with_max_poll_interval(Duration::from_millis(500));

    let seen = Arc::new(Mutex::new(Seen::default()));
    let ids: Vec<String> = (0..WORKERS).map(|i| format!("worker{i}")).collect();
    let mut workers = Workers(Vec::new());
    for id in &ids {
        workers.0.push(spawn_worker(env.connection_string(), &hub, id, &seen));
    }

    // Every process is up and every one of them owns at least one partition, all partitions owned.
    wait_until(Duration::from_secs(60), "every worker owning a partition", || {
        let seen = Arc::clone(&seen);
        let n = ids.len();
        async move {
            let s = seen.lock().unwrap();
            let owners = s.owned_now.values().filter(|o| !o.is_empty()).count();
            let all: BTreeSet<&String> = s.owned_now.values().flatten().collect();
            (s.ready.len() == n && owners == n && all.len() == usize::from(PARTITIONS))
                .then_some(())
        }
    })
    .await;

    futures::stream::iter(0..INSTANCES)
        .map(|i| {
            let client = client.clone();
            async move {
                // As a real caller would: retry a start whose outcome is unknown (a storage call
                // timed out on a loaded machine); if it did commit, the retry finds it.
                let mut retried = false;
                for _ in 0..5 {
                    let opts = StartOptions::with_instance_id(format!("mp-{i:03}"));
                    match client
                        .schedule_new_orchestration(samples::HELLO_WORKER, &format!("n{i}"), opts)
                        .await
                    {
                        Ok(_) => return,
                        Err(ClientError::AlreadyExists { .. }) if retried => return,
                        Err(ClientError::Provider(e))
                            if e.kind() == ProviderErrorKind::Transient =>
                        {
                            eprintln!("multi_process: start mp-{i:03} is retried: {e}");
                            retried = true;
                        }
                        Err(e) => panic!("start mp-{i:03}: {e}"),
                    }
                }
                panic!("start mp-{i:03}: still transient after 5 attempts");
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;

    let completed = wait_for_all(&client, &seen).await;

    let mut partitions = BTreeSet::new();
    let mut activity_workers = BTreeMap::<String, usize>::new();
    for s in &completed {
        let out: HelloWorkerOutput = s.output_as().unwrap();
        let n = s.instance_id().trim_start_matches("mp-").parse::<usize>().unwrap();
        assert_eq!(out.greeting, format!("Hello n{n}!"));
        *activity_workers.entry(out.worker).or_default() += 1;
        partitions.insert(partition_index(s.instance_id(), PARTITIONS));
    }
    assert_eq!(partitions.len(), usize::from(PARTITIONS), "instances cover every partition");
    assert!(activity_workers.len() > 1, "activities ran in one process only: {activity_workers:?}");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.owned_ever.len(), WORKERS, "every worker owned partitions: {s:?}");
        eprintln!(
            "multi_process: partitions owned {:?}; activities per process {activity_workers:?}",
            s.owned_ever
        );
    }

    // Graceful stop: SIGTERM, the worker drains, releases its partitions and exits 0.
    for child in &workers.0 {
        let status =
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
    for child in &mut workers.0 {
        let status = child.wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
    }
    wait_until(Duration::from_secs(10), "STOPPED lines", || {
        let seen = Arc::clone(&seen);
        async move { (seen.lock().unwrap().stopped.len() == WORKERS).then_some(()) }
    })
    .await;
    svc.delete().await.unwrap();
}

/// Every `mp-` instance, once all of them are Completed. On timeout, panics with what is not
/// completed (status, partition) and each worker's latest provider stats, so a stuck instance
/// can be told from a slow machine.
async fn wait_for_all(
    client: &TaskHubClient,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<durabletask_core::OrchestrationState> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut last_progress = (0usize, tokio::time::Instant::now());
    loop {
        let mut query = OrchestrationQuery {
            instance_id_prefix: Some("mp-".into()),
            ..OrchestrationQuery::default()
        };
        let mut states = Vec::new();
        let mut complete_pages = true;
        loop {
            match client.query(&query).await {
                Ok(page) => {
                    states.extend(page.states);
                    match page.continuation_token {
                        Some(t) => query.continuation_token = Some(t),
                        None => break,
                    }
                }
                Err(_) => {
                    complete_pages = false;
                    break;
                }
            }
        }
        let done = states
            .iter()
            .filter(|s| s.orchestration_status == OrchestrationStatus::Completed)
            .count();
        if complete_pages && done == INSTANCES {
            return states;
        }
        let now = tokio::time::Instant::now();
        if done > last_progress.0 {
            last_progress = (done, now);
        }
        if now >= deadline {
            let pending: Vec<String> = states
                .iter()
                .filter(|s| s.orchestration_status != OrchestrationStatus::Completed)
                .map(|s| {
                    format!(
                        "{} {:?} p{}",
                        s.instance_id(),
                        s.orchestration_status,
                        partition_index(s.instance_id(), PARTITIONS)
                    )
                })
                .collect();
            let s = seen.lock().unwrap();
            panic!(
                "timed out: {done}/{INSTANCES} completed ({} rows seen), no progress for {:?}; \
                 not completed: {pending:?}; owned now {:?}; worker stats {:#?}",
                states.len(),
                now - last_progress.1,
                s.owned_now,
                s.stats
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
