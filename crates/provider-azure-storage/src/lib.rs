//! The Azure Storage provider for durabletask-rs.
//!
//! Task hub state lives in one storage account, laid out as Microsoft's DurableTask.AzureStorage
//! does: partitioned control queues, a work-item queue, History/Instances/Partitions tables and
//! blob containers. All storage access goes through [`storage`], a small layer of object-safe
//! traits whose Azure SDK implementation counts every call by kind and classifies every failure.
//!
//! ```no_run
//! use durabletask_azure_storage::storage::{AzureStorage, QueueStore, StorageAccount};
//! # async fn demo() -> Result<(), durabletask_azure_storage::storage::StorageError> {
//! let account = StorageAccount::from_connection_string("UseDevelopmentStorage=true")?;
//! let storage = AzureStorage::new(&account, std::time::Duration::from_secs(30));
//! storage.create_queue_if_not_exists("myhub-workitems").await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod audit;
pub mod envelope;
pub mod error;
pub mod keys;
pub mod large;
pub mod naming;
pub mod partition_store;
mod service;
pub mod settings;
pub mod storage;

pub use error::{Error, Result};
pub use naming::{MAX_PARTITIONS, ResourceNames, TaskHubName};
pub use service::{
    AzureStorageOrchestrationService, ControlQueueStats, CrashHook, CrashPoint, HubInfo,
    ProviderStats, StorageStack,
};
pub use settings::{AzureStorageSettings, PartitionManagerKind};
