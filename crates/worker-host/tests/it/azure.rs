//! The host against Azurite.

use std::time::Duration;

use durabletask_azure_storage::TaskHubName;
use durabletask_core::OrchestrationStatus;
use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};
use durabletask_testkit::wait::wait_until;
use durabletask_worker_host::{HostSettings, StorageConnection, TaskHubWorker, samples};

fn settings(env: &AzuriteEnv, hub: &str) -> HostSettings {
    let mut s = HostSettings::new(
        StorageConnection::ConnectionString(env.connection_string().to_owned()),
        TaskHubName::new(hub).unwrap(),
    );
    s.provider.partition_count = 2;
    s.provider.max_queue_polling_interval = Duration::from_millis(500);
    s.provider.lease_acquire_interval = Duration::from_secs(1);
    s
}

#[tokio::test]
async fn host_runs_samples_reports_health_and_releases_partitions() {
    let Some(env) = AzuriteEnv::from_env_or_skip("host_health") else { return };
    let hub = unique_hub_name("host_health");
    let worker = TaskHubWorker::builder(settings(&env, &hub))
        .registry(samples::register_all)
        .drain_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let client = worker.client();
    let id = client.start_orchestration(samples::HELLO_CITIES, &()).await.unwrap();
    let s = client.wait_for_completion(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(
        s.output_as::<Vec<String>>().unwrap(),
        vec!["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    );

    let health = wait_until(Duration::from_secs(30), "both partitions owned", || async {
        let h = worker.health().await;
        (h.owned_partitions.len() == 2).then_some(h)
    })
    .await;
    assert!(health.ready, "{health:?}");
    let hub_status = health.hub.clone().unwrap();
    assert!(hub_status.exists);
    assert_eq!(hub_status.partition_count, 2);
    assert_eq!(hub_status.control_queues.len(), 2);
    let processing = health.processing.clone().expect("processing status on Azure");
    assert_eq!(processing.pollers.len(), 2, "one poller per owned partition: {processing:?}");
    assert_eq!(processing.leaked_messages, 0);
    assert!(processing.pollers.iter().all(|p| p.ms_paused.is_none()), "{processing:?}");
    let text = format!("{health:?} {}", serde_json::to_string(&health).unwrap());
    assert!(!text.contains("AccountKey"), "{text}");

    // Partitions and their owners from the lease store, through the admin view.
    let parts =
        durabletask_worker_host::ProviderAdmin::partitions(worker.azure().unwrap()).await.unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(
        parts.iter().all(|p| p.owner.is_some() && p.owner == health.worker_id),
        "this worker owns both: {parts:?} vs {:?}",
        health.worker_id
    );
    assert!(parts.iter().all(|p| p.expires_at.is_some()), "the table records expiry: {parts:?}");

    let svc = worker.azure().unwrap().clone();
    worker.shutdown().await.unwrap();
    assert!(svc.partition_manager().owned_partitions().is_empty(), "shutdown releases partitions");
    durabletask_core::OrchestrationService::delete(&svc).await.unwrap();
}
