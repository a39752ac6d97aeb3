//! The host over the in-memory provider: registrations, client, health, graceful shutdown, and
//! every sample producing its documented output.

use std::sync::Arc;
use std::time::Duration;

use durabletask_core::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationStatus};
use durabletask_testkit::memory::InMemoryOrchestrationService;
use durabletask_worker_host::{HostSettings, StorageConnection, TaskHubWorker, samples};

fn memory_builder(
    svc: &Arc<InMemoryOrchestrationService>,
) -> durabletask_worker_host::TaskHubWorkerBuilder {
    TaskHubWorker::builder_with_service(svc.clone(), svc.clone(), "MemoryHub")
}

#[tokio::test]
async fn registered_functions_run_and_the_client_sees_them() {
    let svc = Arc::new(InMemoryOrchestrationService::default());
    let worker = memory_builder(&svc)
        .register_orchestration("Greet", |ctx: OrchestrationContext, name: String| async move {
            Ok(ctx.call_activity::<_, String>("Shout", &name).await?)
        })
        .register_activity("Shout", |_ctx: ActivityContext, s: String| async move {
            Ok::<_, ActivityError>(s.to_uppercase())
        })
        .start()
        .await
        .unwrap();
    let client = worker.client();
    let id = client.start_orchestration("Greet", "hi").await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(state.orchestration_status, OrchestrationStatus::Completed, "{state:?}");
    assert_eq!(state.output_as::<String>().unwrap(), "HI");

    let health = worker.health().await;
    assert!(health.ready, "{health:?}");
    assert_eq!(health.task_hub, "MemoryHub");
    assert!(health.hub.is_none(), "no Azure hub info for the in-memory provider");
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["ready"], true);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_sample_produces_its_documented_output() {
    let svc = Arc::new(InMemoryOrchestrationService::default());
    let worker = memory_builder(&svc).registry(samples::register_all).start().await.unwrap();
    let client = worker.client();
    let plan = samples::demo_plan("mem-");
    for run in &plan {
        let opts = durabletask_core::StartOptions::with_instance_id(run.instance_id.clone());
        client.schedule_new_orchestration(run.orchestration, &run.input, opts).await.unwrap();
    }
    for run in &plan {
        if let Some((name, payload)) = &run.event {
            // Raised once the instance runs, as the demo does (an earlier event is buffered anyway).
            durabletask_testkit::wait::wait_until(
                Duration::from_secs(30),
                "instance running",
                || {
                    let client = client.clone();
                    let id = run.instance_id.clone();
                    async move {
                        let s = client.get_state(&id).await.ok().flatten()?;
                        (s.orchestration_status == OrchestrationStatus::Running).then_some(())
                    }
                },
            )
            .await;
            client.raise_event(&run.instance_id, name, payload).await.unwrap();
        }
    }
    for run in &plan {
        let s =
            client.wait_for_completion(&run.instance_id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            s.orchestration_status,
            OrchestrationStatus::Completed,
            "{}: {s:?}",
            run.instance_id
        );
        let out: serde_json::Value = s.output_as().unwrap();
        assert_eq!(out, run.expected_output, "{}", run.instance_id);
    }
    // The monitor continued as new once per check after the first.
    let monitor = client.get_state("mem-monitor").await.unwrap().unwrap();
    assert_eq!(monitor.status.as_deref(), Some("\"check 3 of 3\""));
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn hello_worker_names_this_process() {
    let svc = Arc::new(InMemoryOrchestrationService::default());
    let worker = memory_builder(&svc).registry(samples::register_all).start().await.unwrap();
    let client = worker.client();
    let id = client.start_orchestration(samples::HELLO_WORKER, "Ada").await.unwrap();
    let s = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    let out: samples::HelloWorkerOutput = s.output_as().unwrap();
    assert_eq!(out.greeting, "Hello Ada!");
    assert_eq!(out.worker, samples::process_identity());
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_activities() {
    let svc = Arc::new(InMemoryOrchestrationService::default());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let worker = memory_builder(&svc)
        .register_orchestration("Slow", |ctx: OrchestrationContext, (): ()| async move {
            Ok(ctx.call_activity::<_, u32>("SlowActivity", &()).await?)
        })
        .register_activity("SlowActivity", move |_ctx: ActivityContext, (): ()| {
            let tx = started_tx.clone();
            async move {
                let _ = tx.send(());
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, ActivityError>(7_u32)
            }
        })
        .drain_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let client = worker.client();
    let id = client.start_orchestration("Slow", &()).await.unwrap();
    started_rx.recv().await.unwrap();
    // Shut down while the activity runs: it finishes and its result is committed, not lost.
    worker.shutdown().await.unwrap();
    let worker = memory_builder(&svc)
        .register_orchestration("Slow", |ctx: OrchestrationContext, (): ()| async move {
            Ok(ctx.call_activity::<_, u32>("SlowActivity", &()).await?)
        })
        .register_activity("SlowActivity", |_ctx: ActivityContext, (): ()| async move {
            Ok::<_, ActivityError>(99_u32)
        })
        .start()
        .await
        .unwrap();
    let s = worker.client().wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(s.output_as::<u32>().unwrap(), 7, "the drained activity's result was kept");
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_until_stops_gracefully() {
    let svc = Arc::new(InMemoryOrchestrationService::default());
    let worker = memory_builder(&svc).registry(samples::register_all).start().await.unwrap();
    let client = worker.client();
    let run = tokio::spawn(worker.run_until(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }));
    run.await.unwrap().unwrap();
    // The provider is stopped: nothing runs any more, but the client still answers.
    let id = client.start_orchestration(samples::HELLO_CITIES, &()).await.unwrap();
    let s = client.get_state(&id).await.unwrap().unwrap();
    assert_eq!(s.orchestration_status, OrchestrationStatus::Pending);
}

#[test]
fn builder_debug_never_shows_the_connection_string() {
    let settings = HostSettings::new(
        StorageConnection::ConnectionString(
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0c2VjcmV0;EndpointSuffix=core.windows.net"
                .into(),
        ),
        durabletask_azure_storage::TaskHubName::new("Hub").unwrap(),
    );
    let builder = TaskHubWorker::builder(settings).registry(samples::register_all);
    let text = format!("{builder:?}");
    assert!(!text.contains("c2VjcmV0c2VjcmV0"), "{text}");
    assert!(text.contains("redacted"), "{text}");
}

/// Health over any provider: the host reports through `ProviderAdmin`, not through Azure types.
#[tokio::test]
async fn health_reports_the_hub_through_the_providers_admin_view() {
    let svc = Arc::new(InMemoryOrchestrationService::default());
    let worker = memory_builder(&svc)
        .admin(svc.clone())
        .register_orchestration("Wait", |ctx: OrchestrationContext, (): ()| async move {
            ctx.wait_for_external_event::<String>("go").await
        })
        .start()
        .await
        .unwrap();
    let client = worker.client();
    let id = client.start_orchestration("Wait", &()).await.unwrap();
    // Running, waiting for its event: nothing queued any more.
    durabletask_testkit::wait::wait_until(Duration::from_secs(30), "running", || async {
        let s = client.get_state(&id).await.ok().flatten()?;
        (s.orchestration_status == OrchestrationStatus::Running).then_some(())
    })
    .await;
    client.raise_event(&id, "go", &"now").await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(state.output_as::<String>().unwrap(), "now");

    let health = worker.health().await;
    assert!(health.ready, "{health:?}");
    let hub = health.hub.clone().expect("the admin view reports the hub");
    assert!(hub.exists);
    assert_eq!(hub.task_hub, "in-memory");
    assert_eq!(hub.control_queues.len(), 1);
    assert_eq!(hub.control_queues[0].approximate_length, 0, "{hub:?}");
    assert_eq!(health.owned_partitions, vec!["orchestrations".to_owned()]);
    assert!(health.processing.is_none(), "the in-memory provider keeps no poller state");
    worker.shutdown().await.unwrap();
}
