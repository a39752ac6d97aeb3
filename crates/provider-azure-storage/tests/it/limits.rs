//! `max_storage_operation_concurrency` is enforced on every storage call of the provider, not
//! only on sends: the limiter sits under the retries and over the store, and every call the
//! store counts (queues, tables, blobs, partition leases) has passed through it. Runs on
//! [`InMemoryStorage`], without Azurite.

use crate::support::test_settings;
use durabletask_azure_storage::AzureStorageOrchestrationService;
use durabletask_azure_storage::storage::InMemoryStorage;
use durabletask_core::{
    ActivityContext, Dispatchers, OrchestrationContext, OrchestrationService, OrchestrationStatus,
    Registry, TaskHubClient, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;

fn registry() -> Registry {
    Registry::builder()
        .orchestration("FanOut", |ctx: OrchestrationContext, n: u32| async move {
            let calls: Vec<_> = (0..n).map(|i| ctx.call_activity::<_, u32>("Double", &i)).collect();
            let results = futures::future::try_join_all(calls).await?;
            Ok(results.iter().sum::<u32>())
        })
        .activity("Double", |_ctx: ActivityContext, i: u32| async move { Ok(i * 2) })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_storage_call_goes_through_the_concurrency_limit() {
    let mut settings = test_settings("limits::every_call", 2);
    settings.max_storage_operation_concurrency = 2;
    let names = durabletask_azure_storage::ResourceNames::new(
        &settings.task_hub_name,
        settings.partition_count,
    );
    let storage = InMemoryStorage::new();
    let svc = AzureStorageOrchestrationService::with_storage(settings, storage.hub_stack(&names))
        .expect("valid settings");
    svc.create_if_not_exists().await.expect("create hub");
    let worker = Dispatchers::start(Arc::new(svc.clone()), registry(), WorkerOptions::default())
        .await
        .expect("worker");
    let client =
        TaskHubClient::new(Arc::new(svc.clone())).with_max_poll_interval(Duration::from_millis(50));
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(client.start_orchestration("FanOut", &12u32).await.expect("start"));
    }
    for id in &ids {
        let state = client.wait_for_completion(id, Duration::from_secs(60)).await.expect("wait");
        assert_eq!(state.orchestration_status, OrchestrationStatus::Completed, "{id}");
        assert_eq!(state.output.as_deref(), Some("132"));
    }
    worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");
    svc.delete().await.expect("delete hub");

    let limiter = svc.storage_limiter();
    let counted = storage.counters().snapshot().total();
    assert!(counted > 100, "the run made storage calls: {counted}");
    assert_eq!(
        limiter.calls(),
        counted,
        "every call the store saw went through the limiter: {:?}",
        storage.counters().snapshot().non_zero()
    );
    assert_eq!(limiter.max_concurrent(), 2);
    assert!(limiter.peak_in_flight() <= 2, "peak {}", limiter.peak_in_flight());
    assert_eq!(limiter.in_flight(), 0);
}
