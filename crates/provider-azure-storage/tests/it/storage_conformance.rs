//! The storage conformance suite on [`AzureStorage`] against Azurite (the in-memory store and
//! the decorators run the same suite in the crate's unit tests).

use async_trait::async_trait;
use durabletask_azure_storage::storage::AzureStorage;
use durabletask_azure_storage::storage::StorageAccount;
use durabletask_azure_storage::storage::conformance::{
    StorageFactory, StorageUnderTest, Stores, TestTime,
};
use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};
use std::sync::Arc;
use std::time::Duration;

/// Fresh `AzureStorage` clients per behaviour, on real time, with unique resource names.
struct AzuriteFactory;

#[async_trait]
impl StorageFactory for AzuriteFactory {
    async fn create(&self, test: &str) -> Option<StorageUnderTest> {
        let env = AzuriteEnv::from_env_or_skip(test)?;
        let account = StorageAccount::from_connection_string(env.connection_string())
            .expect("test connection string parses");
        let storage = Arc::new(AzureStorage::new(&account, Duration::from_secs(30)));
        Some(StorageUnderTest {
            counters: storage.counters(),
            stores: Stores { queues: storage.clone(), tables: storage.clone(), blobs: storage },
            time: TestTime::Real,
            prefix: unique_hub_name(test),
        })
    }
}

durabletask_azure_storage::storage_conformance_tests!(AzuriteFactory);

/// The provider conformance suite on the Azure Storage provider over [`InMemoryStorage`]: no
/// Azurite, so it always runs. It shows the in-memory store carries the whole provider (queues,
/// checkpoints, partition leases, large messages) the way Azurite does.
mod provider_on_memory {
    use crate::support::test_settings;
    use durabletask_azure_storage::AzureStorageOrchestrationService;
    use durabletask_azure_storage::storage::{InMemoryStorage, StorageOp};
    use durabletask_testkit::conformance::{
        ConformanceConfig, ProviderFactory, TestHub, WriteProbe,
    };
    use std::sync::Arc;
    use std::time::Duration;

    pub(super) struct MemoryProviderFactory;

    /// Queue puts, table writes and blob uploads, for the suite's "nothing was written" checks.
    #[derive(Debug)]
    struct Writes(InMemoryStorage);

    impl WriteProbe for Writes {
        fn writes(&self) -> u64 {
            let c = self.0.counters().snapshot();
            [StorageOp::QueuePut, StorageOp::TableWrite, StorageOp::TableBatch, StorageOp::BlobPut]
                .iter()
                .map(|op| c.get(*op))
                .sum()
        }
    }

    #[async_trait::async_trait]
    impl ProviderFactory for MemoryProviderFactory {
        async fn create_hub(&self) -> TestHub {
            let settings = test_settings("provider_on_memory", 4);
            let names = durabletask_azure_storage::ResourceNames::new(
                &settings.task_hub_name,
                settings.partition_count,
            );
            let storage = InMemoryStorage::new();
            let svc =
                AzureStorageOrchestrationService::with_storage(settings, storage.hub_stack(&names))
                    .expect("valid settings");
            TestHub {
                service: Arc::new(svc.clone()),
                client: Arc::new(svc),
                writes: Some(Arc::new(Writes(storage))),
            }
        }

        fn config(&self) -> ConformanceConfig {
            ConformanceConfig { timeout: Duration::from_secs(60), ..Default::default() }
        }
    }

    durabletask_testkit::conformance_tests!(MemoryProviderFactory);
}
