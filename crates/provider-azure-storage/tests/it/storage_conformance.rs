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
