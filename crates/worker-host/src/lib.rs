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
//! ```
//! use durabletask_worker_host::{HostSettings, StorageConnection};
//! let settings = HostSettings::from_vars([("DTF_USE_EMULATOR".to_owned(), "1".to_owned())])?;
//! assert_eq!(settings.connection, StorageConnection::Emulator);
//! # Ok::<(), durabletask_worker_host::ConfigError>(())
//! ```

mod config;
mod host;
mod hub;
pub mod samples;
mod tracing_setup;

pub use config::{ConfigError, DEFAULT_TASK_HUB, HostSettings, KNOWN_VARS, StorageConnection};
pub use host::{DEFAULT_DRAIN_TIMEOUT, Health, HostError, TaskHubWorker, TaskHubWorkerBuilder};
pub use hub::{HubStatus, PollerStatus, ProcessingStatus, QueueLength, azure_service};
pub use tracing_setup::init_tracing;
