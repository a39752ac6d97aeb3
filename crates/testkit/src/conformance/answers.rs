//! Every answer is true: missing and terminal instances are refused with typed errors, the same
//! instance ids are accepted and refused with the same errors everywhere (and nothing is written
//! for a refused one), concurrent recreations end with a typed answer for every caller and a
//! running instance, purge filters on each of its three timestamps, and waiting reads payloads
//! only once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use durabletask_core::history::NO_EVENT_ID;
use durabletask_core::{
    ClientError, EventKind, ExecutionStartedEvent, HistoryEvent, OrchestrationContext,
    OrchestrationInstance, OrchestrationQuery, OrchestrationServiceClient, OrchestrationState,
    OrchestrationStatus, ProviderError, ProviderErrorKind, PurgeFilter, PurgeResult,
    PurgeTimeFilter, QueryResult, StartOptions, TaskHubClient, TaskMessage,
};

use super::{Harness, ProviderFactory, TestHub, common_registry};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", durabletask_core::new_execution_id())
}

fn registry() -> durabletask_core::RegistryBuilder {
    common_registry().orchestration("Gate", |ctx: OrchestrationContext, (): ()| async move {
        let v: String = ctx.wait_for_external_event("Go").await?;
        Ok(v)
    })
}

/// Calls raise, terminate, suspend and resume on `id`; returns the four results.
async fn four_operations(c: &TaskHubClient, id: &str) -> Vec<(&'static str, ClientError)> {
    let mut out = Vec::new();
    let r = [
        ("raise", c.raise_event(id, "Go", &"x").await),
        ("terminate", c.terminate(id, "why").await),
        ("suspend", c.suspend(id, Some("why")).await),
        ("resume", c.resume(id, Some("why")).await),
    ];
    for (op, res) in r {
        match res {
            Ok(()) => panic!("{op} on '{id}' returned Ok"),
            Err(e) => out.push((op, e)),
        }
    }
    out
}

/// Raise, terminate, suspend and resume of an instance that does not exist are `NotFound`, and
/// nothing is written for them.
pub async fn operations_on_missing_instance_not_found(f: &dyn ProviderFactory) {
    let hub = f.create_hub().await;
    hub.service.create_if_not_exists().await.expect("create hub");
    let client = TaskHubClient::new(Arc::clone(&hub.client));
    let before = hub.writes.as_ref().map(|w| w.writes());
    let id = unique("missing");
    for (op, e) in four_operations(&client, &id).await {
        assert!(matches!(&e, ClientError::NotFound(x) if *x == id), "{op}: {e:?}");
    }
    if let (Some(w), Some(b)) = (&hub.writes, before) {
        assert_eq!(w.writes(), b, "nothing was written");
    }
    assert!(client.get_state(&id).await.expect("state").is_none());
    hub.service.delete().await.expect("delete hub");
}

/// Raise, terminate, suspend and resume of a Completed or a Terminated instance are
/// `InvalidStatus` with that status (resume or terminate after terminate included).
pub async fn operations_on_terminal_instance_invalid_status(f: &dyn ProviderFactory) {
    let h = Harness::start(f, registry()).await;
    let done = h.client.start_orchestration("Quick", &"x").await.expect("start");
    h.wait(&done).await;
    let killed = h.client.start_orchestration("Gate", &()).await.expect("start");
    h.wait_status(&killed, OrchestrationStatus::Running).await;
    h.client.terminate(&killed, "stop").await.expect("terminate");
    h.wait(&killed).await;
    for (id, want) in
        [(&done, OrchestrationStatus::Completed), (&killed, OrchestrationStatus::Terminated)]
    {
        for (op, e) in four_operations(&h.client, id).await {
            match &e {
                ClientError::InvalidStatus { instance_id, status, .. } => {
                    assert_eq!((instance_id, *status), (id, want), "{op}");
                }
                other => panic!("{op} on a {want} instance: expected InvalidStatus, got {other:?}"),
            }
        }
        let s = h.client.get_state(id).await.expect("state").expect("exists");
        assert_eq!(s.orchestration_status, want, "nothing changed it");
    }
    h.stop().await;
}

/// A Pending instance (delayed start) accepts raise and terminate; the terminate ends it with the
/// raw reason. Suspend and resume reasons are stored raw too.
pub async fn pending_instance_accepts_raise_and_terminate(f: &dyn ProviderFactory) {
    let h = Harness::start(f, registry()).await;
    let id = unique("pending");
    let opts = StartOptions {
        start_at: Some(time::OffsetDateTime::now_utc() + h.config.timeout * 10),
        ..StartOptions::with_instance_id(&id)
    };
    h.client.schedule_new_orchestration("Gate", &(), opts).await.expect("start");
    h.client.raise_event(&id, "Go", &"early").await.expect("raise on Pending");
    h.client.terminate(&id, "not needed").await.expect("terminate on Pending");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Terminated);
    assert_eq!(s.output.as_deref(), Some("not needed"));
    // Suspend/resume reasons, like terminate reasons, are stored as given.
    let run = h.client.start_orchestration("Gate", &()).await.expect("start");
    h.wait_status(&run, OrchestrationStatus::Running).await;
    h.client.suspend(&run, Some("pause \"1\"")).await.expect("suspend");
    h.wait_status(&run, OrchestrationStatus::Suspended).await;
    h.client.suspend(&run, None).await.expect("suspend of a suspended instance is accepted");
    h.client.resume(&run, Some("go")).await.expect("resume");
    h.wait_status(&run, OrchestrationStatus::Running).await;
    h.client.resume(&run, None).await.expect("resume of a running instance is accepted");
    h.client.terminate(&run, "end \"quoted\"").await.expect("terminate");
    let s = h.wait(&run).await;
    assert_eq!(s.output.as_deref(), Some("end \"quoted\""));
    let hist = h.client.get_history(&run).await.expect("history");
    assert!(hist.iter().any(|e| matches!(
        &e.kind,
        EventKind::ExecutionSuspended { reason } if reason.as_deref() == Some("pause \"1\"")
    )));
    assert!(hist.iter().any(|e| matches!(
        &e.kind,
        EventKind::ExecutionTerminated { input } if input.as_deref() == Some("end \"quoted\"")
    )));
    h.stop().await;
}

fn start_message(id: &str, input: Option<String>) -> TaskMessage {
    let instance = OrchestrationInstance::with_execution(id, durabletask_core::new_execution_id());
    TaskMessage::new(
        instance.clone(),
        HistoryEvent::new(
            NO_EVENT_ID,
            time::OffsetDateTime::now_utc(),
            EventKind::ExecutionStarted(ExecutionStartedEvent::new(instance, "Quick", input)),
        ),
    )
}

fn event_message(id: &str, data: Option<String>) -> TaskMessage {
    TaskMessage::new(
        OrchestrationInstance::new(id),
        HistoryEvent::new(
            NO_EVENT_ID,
            time::OffsetDateTime::now_utc(),
            EventKind::EventRaised { name: "Go".into(), input: data },
        ),
    )
}

fn assert_invalid_input<T: std::fmt::Debug>(what: &str, r: Result<T, ProviderError>) {
    match r {
        Err(e) if e.kind() == ProviderErrorKind::InvalidInput => {}
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

/// Asserts that the provider wrote nothing since `before` and holds no instance row.
async fn assert_nothing_written(hub: &TestHub, before: Option<u64>) {
    if let (Some(w), Some(b)) = (&hub.writes, before) {
        assert_eq!(w.writes(), b, "a refused call wrote something");
    }
    let all = hub.client.query(&OrchestrationQuery::default()).await.expect("query");
    assert!(all.states.is_empty(), "no row was written: {:?}", all.states);
}

/// The instance-id rules are the same on every provider, through the typed client and through
/// the provider contract directly: empty, control characters, U+2028, U+2029 and over-long ids
/// are refused (client: `InvalidInstanceId`; provider: `InvalidInput`) and nothing is written;
/// `a/b` and `a#b?c\d` are accepted.
pub async fn instance_id_validation_table(f: &dyn ProviderFactory) {
    let hub = f.create_hub().await;
    hub.service.create_if_not_exists().await.expect("create hub");
    let client = TaskHubClient::new(Arc::clone(&hub.client));
    let before = hub.writes.as_ref().map(|w| w.writes());
    let long = "x".repeat(durabletask_core::ids::MAX_INSTANCE_ID_LEN + 1);
    let bad = ["", "a\nb", "a\u{1}b", "tab\there", "nel\u{85}", "a\u{2028}b", "a\u{2029}b", &long];
    for id in bad {
        let r = client
            .schedule_new_orchestration("Quick", &"x", StartOptions::with_instance_id(id))
            .await;
        assert!(matches!(r, Err(ClientError::InvalidInstanceId(_))), "start {id:?}: {r:?}");
        for r in [
            client.raise_event(id, "Go", &1).await,
            client.terminate(id, "x").await,
            client.suspend(id, None).await,
            client.resume(id, None).await,
        ] {
            assert!(matches!(r, Err(ClientError::InvalidInstanceId(_))), "{id:?}: {r:?}");
        }
        assert_invalid_input(
            &format!("create_orchestration {id:?}"),
            hub.client.create_orchestration(start_message(id, None), &[]).await,
        );
        assert_invalid_input(
            &format!("send_message {id:?}"),
            hub.client.send_message(event_message(id, None)).await,
        );
        assert_invalid_input(&format!("get_state {id:?}"), hub.client.get_state(id, false).await);
        assert_invalid_input(
            &format!("get_history {id:?}"),
            hub.client.get_history(id, None).await,
        );
        assert_invalid_input(
            &format!("purge_instance {id:?}"),
            hub.client.purge_instance(id).await,
        );
    }
    // Clients cannot schedule activities.
    let mut sched = event_message("ok", None);
    sched.event.kind =
        EventKind::TaskScheduled { name: "Echo".into(), version: None, input: None, tags: None };
    assert_invalid_input("send_message TaskScheduled", hub.client.send_message(sched).await);
    assert_nothing_written(&hub, before).await;
    for id in ["a/b", "a#b?c\\d"] {
        client
            .schedule_new_orchestration("Quick", &"x", StartOptions::with_instance_id(id))
            .await
            .unwrap_or_else(|e| panic!("{id:?} refused: {e:?}"));
        let s = client.get_state(id).await.expect("state").expect("row written");
        assert_eq!(s.instance_id(), id);
    }
    hub.service.delete().await.expect("delete hub");
}

/// Ids with `/ \ # ?` (escaped in Azure table keys and blob names) work end to end: start, raise,
/// query by an id prefix containing them, history and purge.
pub async fn special_character_ids_work(f: &dyn ProviderFactory) {
    let h = Harness::start(f, registry()).await;
    let base = unique("sp");
    let ids = [format!("{base}/a\\b#c?d"), format!("{base}/a\\x"), format!("{base}?^0")];
    for id in &ids {
        h.client
            .schedule_new_orchestration("Gate", &(), StartOptions::with_instance_id(id))
            .await
            .unwrap_or_else(|e| panic!("start {id:?}: {e:?}"));
    }
    for id in &ids {
        h.wait_status(id, OrchestrationStatus::Running).await;
        h.client.raise_event(id, "Go", &format!("for {id}")).await.expect("raise");
    }
    for id in &ids {
        let s = h.wait(id).await;
        assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{id:?}: {s:?}");
        assert_eq!(s.instance_id(), id.as_str());
        assert_eq!(s.output_as::<String>().expect("output"), format!("for {id}"));
        let hist = h.client.get_history(id).await.expect("history");
        assert!(hist.iter().any(|e| matches!(e.kind, EventKind::ExecutionCompleted { .. })));
    }
    let by_prefix = |p: String| OrchestrationQuery {
        instance_id_prefix: Some(p),
        ..OrchestrationQuery::default()
    };
    let found = |r: QueryResult| {
        let mut v: Vec<String> = r.states.iter().map(|s| s.instance_id().to_owned()).collect();
        v.sort();
        v
    };
    let mut all = ids.to_vec();
    all.sort();
    assert_eq!(found(h.client.query(&by_prefix(base.clone())).await.expect("query")), all);
    let mut slash = vec![ids[0].clone(), ids[1].clone()];
    slash.sort();
    assert_eq!(found(h.client.query(&by_prefix(format!("{base}/a\\"))).await.expect("q")), slash);
    assert_eq!(
        found(h.client.query(&by_prefix(format!("{base}?"))).await.expect("q")),
        [ids[2].clone()]
    );
    for id in &ids {
        assert_eq!(h.client.purge_instance(id).await.expect("purge").deleted_instance_count, 1);
        assert!(h.client.get_state(id).await.expect("state").is_none());
        assert!(h.client.get_history(id).await.expect("history").is_empty());
    }
    h.stop().await;
}

/// A message over the provider's size limit (both default to 32 MiB) is refused with
/// `InvalidInput` before anything is written.
pub async fn oversized_message_refused(f: &dyn ProviderFactory) {
    let hub = f.create_hub().await;
    hub.service.create_if_not_exists().await.expect("create hub");
    let big = format!("\"{}\"", "x".repeat(33 * 1024 * 1024));
    let before = hub.writes.as_ref().map(|w| w.writes());
    let id = unique("big");
    assert_invalid_input(
        "create with a 33 MiB input",
        hub.client.create_orchestration(start_message(&id, Some(big.clone())), &[]).await,
    );
    assert_invalid_input(
        "send a 33 MiB event",
        hub.client.send_message(event_message(&id, Some(big))).await,
    );
    assert_nothing_written(&hub, before).await;
    hub.service.delete().await.expect("delete hub");
}

/// Eight callers recreate one instance id at once, several rounds: every caller gets `Ok`,
/// `Superseded` or `AlreadyExists` (never a raw storage error), and the instance runs to
/// completion on the execution its row names (it is never stuck Pending).
pub async fn concurrent_recreations(f: &dyn ProviderFactory) {
    let h = Harness::start(f, registry()).await;
    let id = unique("race");
    for round in 0..4 {
        let calls = (0..8).map(|i| {
            let client = h.client.clone();
            let id = id.clone();
            tokio::spawn(async move {
                // Half of the callers refuse to replace an active instance.
                let dedupe = if i % 2 == 0 {
                    vec![]
                } else {
                    vec![OrchestrationStatus::Pending, OrchestrationStatus::Running]
                };
                let opts =
                    StartOptions { dedupe_statuses: dedupe, ..StartOptions::with_instance_id(&id) };
                client.schedule_new_orchestration("Quick", &format!("{round}-{i}"), opts).await
            })
        });
        let results = futures::future::join_all(calls).await;
        let mut ok = Vec::new();
        let mut superseded = Vec::new();
        for r in results {
            match r.expect("task") {
                Ok(inst) => ok.push(inst.execution_id.expect("exec")),
                Err(ClientError::Superseded { execution_id, detail, .. }) => {
                    assert!(
                        detail.contains(&execution_id) && detail.contains("discarded"),
                        "{detail}"
                    );
                    superseded.push(execution_id);
                }
                Err(ClientError::AlreadyExists { .. }) => {}
                Err(other) => panic!("round {round}: untyped answer {other:?}"),
            }
        }
        assert!(!ok.is_empty(), "round {round}: at least one create succeeds");
        let s = h.wait(&id).await;
        let exec = s.orchestration_instance.execution_id.clone().expect("exec");
        assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "round {round}: {s:?}");
        assert!(ok.contains(&exec), "round {round}: the row's execution {exec} was created Ok");
        assert!(!superseded.contains(&exec), "round {round}: a superseded execution never runs");
        let hist = h.client.get_history(&id).await.expect("history");
        let started: Vec<_> = hist
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ExecutionStarted(s) => s.orchestration_instance.execution_id.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(started, vec![exec], "round {round}: history and row agree");
    }
    h.stop().await;
}

/// Purge by filter honours created, completed and last-updated time.
pub async fn purge_filter_types(f: &dyn ProviderFactory) {
    let h = Harness::start(f, registry()).await;
    let t0 = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    // `early` is created and completes before `mark`; `late` is created before and completes
    // after it.
    let early = h.client.start_orchestration("Quick", &"x").await.expect("start");
    let late = h.client.start_orchestration("Gate", &()).await.expect("start");
    h.wait(&early).await;
    h.wait_status(&late, OrchestrationStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.client.raise_event(&late, "Go", &"now").await.expect("raise");
    h.wait(&late).await;
    let c = &h.client;
    let purge = |filter: PurgeFilter| async move {
        let r: PurgeResult = c.purge_by_filter(&filter).await.expect("purge");
        r.deleted_instance_count
    };
    let exists = |id: String| async move { c.get_state(&id).await.expect("state").is_some() };
    // Nobody was created after the mark.
    assert_eq!(purge(PurgeFilter::new(PurgeTimeFilter::CreatedTime, mark, None)).await, 0);
    // Only `late` completed after it.
    assert_eq!(purge(PurgeFilter::new(PurgeTimeFilter::CompletedTime, mark, None)).await, 1);
    assert!(!exists(late.clone()).await && exists(early.clone()).await);
    // `early` was last updated before the mark; a range after it matches nothing.
    assert_eq!(purge(PurgeFilter::new(PurgeTimeFilter::LastUpdatedTime, mark, None)).await, 0);
    let before_mark = PurgeFilter::new(PurgeTimeFilter::LastUpdatedTime, t0, Some(mark));
    assert_eq!(
        purge(before_mark.clone().with_statuses([OrchestrationStatus::Failed])).await,
        0,
        "status filter still applies"
    );
    assert_eq!(purge(before_mark).await, 1);
    assert!(!exists(early).await);
    h.stop().await;
}

/// A provider client that counts `get_state` calls with payloads.
#[derive(Debug)]
struct CountingClient {
    inner: Arc<dyn OrchestrationServiceClient>,
    with_payloads: AtomicUsize,
    without: AtomicUsize,
}

#[async_trait]
impl OrchestrationServiceClient for CountingClient {
    async fn create_orchestration(
        &self,
        start: TaskMessage,
        dedupe: &[OrchestrationStatus],
    ) -> Result<(), ProviderError> {
        self.inner.create_orchestration(start, dedupe).await
    }
    async fn send_message(&self, message: TaskMessage) -> Result<(), ProviderError> {
        self.inner.send_message(message).await
    }
    async fn get_state(
        &self,
        instance_id: &str,
        include_payloads: bool,
    ) -> Result<Option<OrchestrationState>, ProviderError> {
        let counter = if include_payloads { &self.with_payloads } else { &self.without };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.get_state(instance_id, include_payloads).await
    }
    async fn get_history(
        &self,
        instance_id: &str,
        execution_id: Option<&str>,
    ) -> Result<Vec<HistoryEvent>, ProviderError> {
        self.inner.get_history(instance_id, execution_id).await
    }
    async fn query(&self, query: &OrchestrationQuery) -> Result<QueryResult, ProviderError> {
        self.inner.query(query).await
    }
    async fn purge_instance(&self, instance_id: &str) -> Result<PurgeResult, ProviderError> {
        self.inner.purge_instance(instance_id).await
    }
    async fn purge_by_filter(&self, filter: &PurgeFilter) -> Result<PurgeResult, ProviderError> {
        self.inner.purge_by_filter(filter).await
    }
}

/// `wait_for_completion` polls without payloads and reads input and output once, at the end.
pub async fn wait_for_completion_reads_payloads_once(f: &dyn ProviderFactory) {
    let h = Harness::start(f, registry()).await;
    let counting = Arc::new(CountingClient {
        inner: Arc::clone(&h.hub.client),
        with_payloads: AtomicUsize::new(0),
        without: AtomicUsize::new(0),
    });
    let client =
        TaskHubClient::new(counting.clone()).with_max_poll_interval(Duration::from_millis(20));
    let id = client.start_orchestration("Gate", &()).await.expect("start");
    match client.wait_for_completion(&id, Duration::from_millis(500)).await {
        Err(ClientError::Timeout { last_state: Some(s), .. }) => {
            assert!(s.input.is_none() && s.output.is_none(), "polls carry no payloads");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(counting.without.load(Ordering::Relaxed) >= 3, "it polled");
    assert_eq!(counting.with_payloads.load(Ordering::Relaxed), 0, "no payloads while polling");
    h.client.raise_event(&id, "Go", &"done").await.expect("raise");
    let s = client.wait_for_completion(&id, h.config.timeout).await.expect("completes");
    assert_eq!(s.output_as::<String>().expect("output"), "done");
    assert_eq!(counting.with_payloads.load(Ordering::Relaxed), 1, "payloads read once");
    h.stop().await;
}
