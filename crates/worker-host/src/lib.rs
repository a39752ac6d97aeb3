//! `TaskHubWorker` for durabletask-rs: registration, settings, connection, graceful shutdown,
//! readiness, tracing setup and the sample orchestrations (the operator CLI is
//! `durabletask-cli`).
//!
//! * [`HostSettings`]: where storage is and how the provider is tuned, from code or `DTF_*`
//!   environment variables ([`KNOWN_VARS`]).
//! * [`TaskHubWorker`]: `TaskHubWorker::builder(settings).registry(..).start().await?`, then
//!   [`TaskHubWorker::client`], [`TaskHubWorker::health`] and
//!   [`TaskHubWorker::run_until_signal`] (SIGINT/SIGTERM: drain in-flight work, release
//!   partitions).
//! * [`samples`]: the orchestrations behind the examples and `cargo xtask demo`.
//! * [`init_tracing`]: one-call `tracing` subscriber honouring `RUST_LOG`.
//!
//! The Azure Storage backend (`HostSettings`, [`TaskHubWorker::builder`], `azure_service`) is the
//! default-on `azure` feature; without it the host runs over any provider through
//! [`TaskHubWorker::builder_with_service`] and reports health through the provider's
//! `ProviderAdmin`.
//!
//! ```
//! use durabletask_worker_host::{HostSettings, StorageConnection};
//! let settings = HostSettings::from_vars([("DTF_USE_EMULATOR".to_owned(), "1".to_owned())])?;
//! assert_eq!(settings.connection, StorageConnection::Emulator);
//! # Ok::<(), durabletask_worker_host::ConfigError>(())
//! ```

#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "azure")]
mod config;
mod host;
#[cfg(feature = "azure")]
mod hub;
pub mod samples;
mod tracing_setup;

#[cfg(feature = "azure")]
pub use config::{ConfigError, DEFAULT_TASK_HUB, HostSettings, KNOWN_VARS, StorageConnection};
pub use durabletask_core::admin::{
    HubStatus, PartitionStatus, PoisonMessage, PollerStatus, ProcessingStatus, ProviderAdmin,
    QueueLength,
};
pub use host::{DEFAULT_DRAIN_TIMEOUT, Health, HostError, TaskHubWorker, TaskHubWorkerBuilder};
#[cfg(feature = "azure")]
pub use hub::azure_service;
pub use tracing_setup::init_tracing;
