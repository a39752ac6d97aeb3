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
