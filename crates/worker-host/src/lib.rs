//! `TaskHubWorker` for durabletask-rs: registration, settings, connection, graceful shutdown and
//! tracing setup.
//!
//! Today this crate holds the host configuration ([`HostSettings`], from code or `DTF_*`
//! environment variables) and [`init_tracing`]; the worker itself arrives with the worker-host
//! issue.
//!
//! ```
//! use durabletask_worker_host::{HostSettings, StorageConnection};
//! let settings = HostSettings::from_vars([("DTF_USE_EMULATOR".to_owned(), "1".to_owned())])?;
//! assert_eq!(settings.connection, StorageConnection::Emulator);
//! # Ok::<(), durabletask_worker_host::ConfigError>(())
//! ```

mod config;
mod tracing_setup;

pub use config::{ConfigError, DEFAULT_TASK_HUB, HostSettings, KNOWN_VARS, StorageConnection};
pub use tracing_setup::init_tracing;
