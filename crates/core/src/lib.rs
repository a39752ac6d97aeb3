//! Core of durabletask-rs, a Rust port of Microsoft's Durable Task Framework (DTF).
//!
//! Layers, bottom up:
//!
//! * [`history`] and [`state`]: the DTF history model ([`HistoryEvent`], [`EventKind`],
//!   [`EventType`]), [`OrchestrationStatus`], [`OrchestrationState`] and
//!   [`OrchestrationRuntimeState`].
//! * [`orchestration`] and [`registry`]: the authoring API. Orchestrations are
//!   `async fn(OrchestrationContext, In) -> Result<Out, OrchestrationError>` and activities
//!   `async fn(ActivityContext, In) -> Result<Out, ActivityError>`, registered by name.
//! * [`replay`]: the deterministic replay engine, a pure function of (history, new events).
//! * [`runtime`]: pure work-item processing (message reconciliation, decisions → events and
//!   messages, continue-as-new in the same work item).
//! * [`provider`]: the storage contract ([`OrchestrationService`], [`OrchestrationServiceClient`]).
//! * [`worker`] (dispatchers) and [`client`] (typed client), the only async, I/O-driving parts.
//!
//! ```ignore
//! let registry = Registry::builder()
//!     .orchestration("Hello", |ctx: OrchestrationContext, name: String| async move {
//!         let greeting: String = ctx.call_activity("SayHello", &name).await?;
//!         Ok(greeting)
//!     })
//!     .activity("SayHello", |_ctx: ActivityContext, name: String| async move {
//!         Ok(format!("Hello, {name}!"))
//!     })
//!     .build();
//! let worker = Dispatchers::start(service, registry, WorkerOptions::default()).await?;
//! let client = TaskHubClient::new(service_client);
//! let id = client.start_orchestration("Hello", &"world").await?;
//! let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
//! ```
//!
//! This crate does no I/O of its own: storage is behind the provider traits, time behind
//! [`Clock`], and the dispatchers only spawn tokio tasks.

#![warn(missing_docs, unreachable_pub)]

pub mod actions;
pub mod admin;
pub mod admission;
pub mod backoff;
pub mod client;
pub mod clock;
pub mod entity;
pub mod error;
pub mod history;
pub mod ids;
pub mod orchestration;
pub mod provider;
pub mod registry;
pub mod replay;
pub mod runtime;
pub mod state;
pub mod worker;

pub use actions::{CompletionAction, OrchestratorAction};

pub use client::{ClientError, StartOptions, TaskHubClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use entity::{EntityContext, EntityError, EntityId, EntityMetadata};
pub use error::{ActivityError, OrchestrationError, TaskFailedError, TaskKind};
pub use history::{
    EventKind, EventType, ExecutionStartedEvent, FailureDetails, HistoryEvent,
    OrchestrationInstance, ParentInstance, TaskMessage,
};
pub use ids::{
    InstanceIdError, new_execution_id, validate_instance_id, validate_orchestration_instance_id,
};
pub use orchestration::{ContinueAsNewOptions, DurableFuture, OrchestrationContext, RetryPolicy};
pub use provider::{
    ActivityWorkItem, LockToken, OrchestrationQuery, OrchestrationService,
    OrchestrationServiceClient, OrchestrationWorkItem, ProviderError, ProviderErrorKind,
    ProviderSettings, PurgeFilter, PurgeResult, PurgeTimeFilter, QueryResult,
};
pub use registry::{ActivityContext, Registry, RegistryBuilder};
pub use runtime::{Checkpoint, RuntimeOptions, WorkItemResult};
pub use state::{OrchestrationRuntimeState, OrchestrationState, OrchestrationStatus};
pub use worker::{Dispatchers, WorkerOptions};
