use durabletask_azure_storage::storage::{AzureStorage, StorageAccount};
use durabletask_azure_storage::{ResourceNames, TaskHubName};
use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};
use std::time::Duration;

/// Storage clients and the resource names of a fresh task hub, or `None` to skip.
pub(crate) struct TestHub {
    pub(crate) storage: AzureStorage,
    pub(crate) names: ResourceNames,
}

impl TestHub {
    pub(crate) fn new(test: &str, partitions: u8) -> Option<Self> {
        let env = AzuriteEnv::from_env_or_skip(test)?;
        let account = StorageAccount::from_connection_string(env.connection_string())
            .expect("test connection string parses");
        let hub = TaskHubName::new(unique_hub_name(test)).expect("generated hub names are valid");
        Some(Self {
            storage: AzureStorage::new(&account, Duration::from_secs(30)),
            names: ResourceNames::new(&hub, partitions),
        })
    }
}

/// Builds providers over fresh task hubs for the conformance suite.
pub(crate) struct AzureFactory {
    account: StorageAccount,
    test: String,
}

/// Provider settings for tests: short leases so partitions are acquired at once.
pub(crate) fn test_settings(
    test: &str,
    partitions: u8,
) -> durabletask_azure_storage::AzureStorageSettings {
    let hub = TaskHubName::new(unique_hub_name(test)).expect("generated hub names are valid");
    let mut s = durabletask_azure_storage::AzureStorageSettings::new(hub);
    s.partition_count = partitions;
    s.lease_interval = Duration::from_secs(15);
    s.lease_renew_interval = Duration::from_secs(4);
    s.lease_acquire_interval = Duration::from_secs(2);
    s.max_queue_polling_interval = Duration::from_millis(500);
    s.max_concurrent_activity_work_items = 32;
    s.storage_operation_timeout = Duration::from_secs(20);
    s
}

/// The conformance factory, or `None` to skip.
pub(crate) fn azure_factory(test: &str) -> Option<AzureFactory> {
    let env = AzuriteEnv::from_env_or_skip(test)?;
    let account = StorageAccount::from_connection_string(env.connection_string())
        .expect("test connection string parses");
    Some(AzureFactory { account, test: test.to_owned() })
}

/// A provider over a fresh hub (not yet created).
pub(crate) fn provider(
    account: &StorageAccount,
    settings: durabletask_azure_storage::AzureStorageSettings,
) -> durabletask_azure_storage::AzureStorageOrchestrationService {
    durabletask_azure_storage::AzureStorageOrchestrationService::new(settings, account)
        .expect("valid settings")
}

/// An Azurite account, or `None` to skip.
#[allow(dead_code)] // used by provider tests
pub(crate) fn account(test: &str) -> Option<StorageAccount> {
    let env = AzuriteEnv::from_env_or_skip(test)?;
    Some(StorageAccount::from_connection_string(env.connection_string()).expect("parses"))
}

#[async_trait::async_trait]
impl durabletask_testkit::conformance::ProviderFactory for AzureFactory {
    async fn create_hub(&self) -> durabletask_testkit::conformance::TestHub {
        let svc = provider(&self.account, test_settings(&self.test, 4));
        durabletask_testkit::conformance::TestHub {
            service: std::sync::Arc::new(svc.clone()),
            client: std::sync::Arc::new(svc.clone()),
            writes: Some(std::sync::Arc::new(WriteCounter(svc))),
        }
    }

    fn config(&self) -> durabletask_testkit::conformance::ConformanceConfig {
        durabletask_testkit::conformance::ConformanceConfig {
            timeout: Duration::from_secs(120),
            ..Default::default()
        }
    }
}

/// Queue puts, table writes and blob uploads of one provider, for the conformance suite's
/// "nothing was written" checks.
#[derive(Debug)]
struct WriteCounter(durabletask_azure_storage::AzureStorageOrchestrationService);

impl durabletask_testkit::conformance::WriteProbe for WriteCounter {
    fn writes(&self) -> u64 {
        use durabletask_azure_storage::storage::StorageOp;
        let c = self.0.storage_counters();
        [StorageOp::QueuePut, StorageOp::TableWrite, StorageOp::TableBatch, StorageOp::BlobPut]
            .iter()
            .map(|op| c.get(*op))
            .sum()
    }
}

/// Polls `f` until it returns `Some`, panicking after `timeout`.
#[allow(dead_code)] // used by some test modules only
pub(crate) async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
