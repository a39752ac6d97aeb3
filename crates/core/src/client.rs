//! The typed client (DTF `TaskHubClient`): start, raise events, terminate, suspend, resume,
//! query, wait, purge and read history, over any [`OrchestrationServiceClient`].
//!
//! Instance ids are validated ([`crate::validate_instance_id`]) before anything is written.
//!
//! Raise, terminate, suspend and resume first read the instance row (without payloads): a missing
//! instance is [`ClientError::NotFound`], a terminal one [`ClientError::InvalidStatus`], and in
//! both cases nothing is sent. The check is not atomic with the delivery: an instance that
//! completes (or is purged) between the check and the moment a worker processes the message still
//! drops the message, as in DTF.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock};
use crate::history::{
    EventKind, ExecutionStartedEvent, HistoryEvent, NO_EVENT_ID, OrchestrationInstance, TaskMessage,
};
use crate::ids::{
    InstanceIdError, new_execution_id, validate_instance_id, validate_orchestration_instance_id,
};
use crate::provider::{
    OrchestrationQuery, OrchestrationServiceClient, ProviderError, ProviderErrorKind, PurgeFilter,
    PurgeResult, QueryResult,
};
use crate::registry::to_payload;
use crate::state::{OrchestrationState, OrchestrationStatus};

#[path = "client_entities.rs"]
mod entities;

pub use entities::{CleanEntityStorageResult, EntityQuery, EntityQueryResult};

/// Errors returned by [`TaskHubClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The instance id is invalid; nothing was written.
    #[error("invalid instance id: {0}")]
    InvalidInstanceId(#[from] InstanceIdError),
    /// An input could not be serialized; nothing was written.
    #[error("failed to serialize payload: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The instance exists in one of the dedupe statuses. `detail` is the provider's message; when
    /// a concurrent create wrote the row after this one queued its start message, it says that
    /// this start message will be discarded.
    #[error("orchestration instance '{instance_id}' already exists: {detail}")]
    AlreadyExists {
        /// The instance.
        instance_id: String,
        /// What the provider saw.
        detail: String,
    },
    /// A concurrent create of the same instance id won: this create's start message (execution
    /// `execution_id`) was queued, but the instance row now holds a newer execution, so the
    /// message will be discarded as stale and this execution never runs.
    #[error("orchestration instance '{instance_id}': {detail}")]
    Superseded {
        /// The instance.
        instance_id: String,
        /// The execution id this create generated (and that will never run).
        execution_id: String,
        /// The provider's message (names the execution that superseded it).
        detail: String,
    },
    /// The instance does not exist; nothing was sent.
    #[error("orchestration instance '{0}' not found")]
    NotFound(String),
    /// The instance's status does not allow `operation` (e.g. raising an event on, terminating,
    /// suspending or resuming a Completed, Failed, Canceled or Terminated instance); nothing was
    /// sent.
    #[error("cannot {operation} orchestration instance '{instance_id}': it is {status}")]
    InvalidStatus {
        /// The instance.
        instance_id: String,
        /// Its status when checked.
        status: OrchestrationStatus,
        /// The refused operation (`"raise an event on"`, `"terminate"`, `"suspend"`, `"resume"`).
        operation: &'static str,
    },
    /// The operation needs a terminal instance.
    #[error("orchestration instance '{0}' is not in a terminal state")]
    NotTerminal(String),
    /// `wait_for_completion` timed out; carries the last state seen.
    #[error("timed out waiting for orchestration instance '{instance_id}'")]
    Timeout {
        /// The instance.
        instance_id: String,
        /// The last state read, if any.
        last_state: Option<Box<OrchestrationState>>,
    },
    /// The entity id is invalid; nothing was written.
    #[error("invalid entity id: {0}")]
    InvalidEntityId(#[from] crate::entity::EntityIdError),
    /// An entity's stored scheduler state does not parse.
    #[error("{0}")]
    CorruptEntity(String),
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Options for [`TaskHubClient::schedule_new_orchestration`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Instance id (default: 32 random hex characters).
    pub instance_id: Option<String>,
    /// Orchestration version.
    pub version: Option<String>,
    /// Delayed start (UTC). The instance is Pending until then.
    pub start_at: Option<OffsetDateTime>,
    /// Tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// Fail with [`ClientError::AlreadyExists`] if the instance exists in one of these statuses.
    pub dedupe_statuses: Vec<OrchestrationStatus>,
}

impl StartOptions {
    /// Options with an explicit instance id.
    pub fn with_instance_id(id: impl Into<String>) -> Self {
        Self { instance_id: Some(id.into()), ..Self::default() }
    }
}

/// Typed client over a provider.
#[derive(Debug, Clone)]
pub struct TaskHubClient {
    service: Arc<dyn OrchestrationServiceClient>,
    clock: Arc<dyn Clock>,
    max_poll_interval: Duration,
    entity_streams: Arc<std::sync::Mutex<entities::ClientStreams>>,
}

impl TaskHubClient {
    /// A client using the system clock.
    pub fn new(service: Arc<dyn OrchestrationServiceClient>) -> Self {
        Self {
            service,
            clock: Arc::new(SystemClock),
            max_poll_interval: Duration::from_secs(1),
            entity_streams: Arc::new(entities::ClientStreams::new()),
        }
    }

    /// Uses `clock` for event timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the longest interval between polls in [`Self::wait_for_completion`] (polling starts at
    /// 10 ms and doubles up to this; default 1 s, DTF Azure Storage uses 2 s).
    pub fn with_max_poll_interval(mut self, d: Duration) -> Self {
        self.max_poll_interval = d.max(Duration::from_millis(1));
        self
    }

    /// The underlying provider client.
    pub fn service(&self) -> &Arc<dyn OrchestrationServiceClient> {
        &self.service
    }

    /// Starts orchestration `name` with `input` and a generated instance id; returns the id.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn start_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
    ) -> Result<String, ClientError> {
        Ok(self.schedule_new_orchestration(name, input, StartOptions::default()).await?.instance_id)
    }

    /// Starts orchestration `name` with `input` and `options`; returns the instance (with the new
    /// execution id).
    ///
    /// # Errors
    /// See [`ClientError`]; `AlreadyExists` when deduplicated; `Superseded` when a concurrent
    /// create of the same id wrote a newer execution first (this execution never runs).
    pub async fn schedule_new_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<OrchestrationInstance, ClientError> {
        let instance_id = match options.instance_id {
            Some(id) => {
                validate_orchestration_instance_id(&id)?;
                id
            }
            None => new_execution_id(),
        };
        let input = to_payload(input)?;
        let instance =
            OrchestrationInstance::with_execution(instance_id.clone(), new_execution_id());
        let mut started = ExecutionStartedEvent::new(instance.clone(), name, input);
        started.version = options.version;
        started.tags = options.tags;
        started.scheduled_start_time = options.start_at;
        tracing::info!(instance_id = %instance_id, execution_id = instance.execution_id.as_deref().unwrap_or(""), name, "SchedulingOrchestration");
        let msg = TaskMessage::new(
            instance.clone(),
            HistoryEvent::new(NO_EVENT_ID, self.clock.now(), EventKind::ExecutionStarted(started)),
        );
        match self.service.create_orchestration(msg, &options.dedupe_statuses).await {
            Ok(()) => Ok(instance),
            Err(e) if e.kind() == ProviderErrorKind::Conflict => {
                Err(ClientError::AlreadyExists { instance_id, detail: e.message })
            }
            Err(e) if e.kind() == ProviderErrorKind::Superseded => Err(ClientError::Superseded {
                instance_id,
                execution_id: instance.execution_id.unwrap_or_default(),
                detail: e.message,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Validates the id, reads the row without payloads and refuses missing and terminal
    /// instances; then sends `kind`.
    async fn send_checked(
        &self,
        instance_id: &str,
        operation: &'static str,
        kind: EventKind,
    ) -> Result<(), ClientError> {
        validate_orchestration_instance_id(instance_id)?;
        let Some(state) = self.service.get_state(instance_id, false).await? else {
            return Err(ClientError::NotFound(instance_id.to_owned()));
        };
        let status = state.orchestration_status;
        if status.is_terminal() {
            return Err(ClientError::InvalidStatus {
                instance_id: instance_id.to_owned(),
                status,
                operation,
            });
        }
        let msg = TaskMessage::new(
            OrchestrationInstance::new(instance_id),
            HistoryEvent::new(NO_EVENT_ID, self.clock.now(), kind),
        );
        self.service.send_message(msg).await?;
        Ok(())
    }

    /// Raises external event `name` with `data` on the instance's current execution (Pending,
    /// Running or Suspended; a Pending instance receives it once it starts).
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for a missing instance, [`ClientError::InvalidStatus`] for a
    /// terminal one (nothing sent); others from [`ClientError`]. An instance that completes after
    /// the check drops the event.
    pub async fn raise_event<T: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let input = to_payload(data)?;
        tracing::info!(instance_id, name, "RaisingEvent");
        self.send_checked(
            instance_id,
            "raise an event on",
            EventKind::EventRaised { name: name.to_owned(), input },
        )
        .await
    }

    /// Terminates the instance (Running, Suspended or Pending) with `reason`.
    ///
    /// The reason is stored as given, not JSON-encoded (as DTF stores it, and like the suspend
    /// and resume reasons): it is the `ExecutionTerminated` event's input and the Terminated
    /// instance's output, so `OrchestrationState::output` is `Some(reason)`.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for a missing instance, [`ClientError::InvalidStatus`] for a
    /// terminal one (e.g. terminating twice); nothing sent. An instance that completes after the
    /// check keeps its outcome.
    pub async fn terminate(&self, instance_id: &str, reason: &str) -> Result<(), ClientError> {
        tracing::info!(instance_id, "TerminatingInstance");
        self.send_checked(
            instance_id,
            "terminate",
            EventKind::ExecutionTerminated { input: Some(reason.to_owned()) },
        )
        .await
    }

    /// Suspends the instance (Running or Pending; the reason is stored as given).
    ///
    /// Suspending an already suspended instance is accepted: the message is still sent (a no-op
    /// for the orchestration), so that it keeps its order with a resume sent just before it.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for a missing instance, [`ClientError::InvalidStatus`] for a
    /// terminal one; nothing sent. An instance that completes after the check drops it.
    pub async fn suspend(
        &self,
        instance_id: &str,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        tracing::info!(instance_id, "SuspendingInstance");
        self.send_checked(
            instance_id,
            "suspend",
            EventKind::ExecutionSuspended { reason: reason.map(str::to_owned) },
        )
        .await
    }

    /// Resumes a suspended instance (the reason is stored as given).
    ///
    /// Resuming a Running or Pending instance is accepted: the message is still sent (a no-op for
    /// the orchestration), so that a resume sent right after a suspend that has not been processed
    /// yet is never lost.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for a missing instance, [`ClientError::InvalidStatus`] for a
    /// terminal one (e.g. resume after terminate); nothing sent. An instance that completes after
    /// the check drops it.
    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        tracing::info!(instance_id, "ResumingInstance");
        self.send_checked(
            instance_id,
            "resume",
            EventKind::ExecutionResumed { reason: reason.map(str::to_owned) },
        )
        .await
    }

    /// The instance's state with input and output, or `None`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get_state(
        &self,
        instance_id: &str,
    ) -> Result<Option<OrchestrationState>, ClientError> {
        self.get_state_with(instance_id, true).await
    }

    /// The instance's state, with or without input and output.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get_state_with(
        &self,
        instance_id: &str,
        include_payloads: bool,
    ) -> Result<Option<OrchestrationState>, ClientError> {
        validate_instance_id(instance_id)?;
        tracing::debug!(instance_id, "FetchingInstanceState");
        Ok(self.service.get_state(instance_id, include_payloads).await?)
    }

    /// Polls until the instance is terminal (Completed, Failed, Canceled, Terminated) or
    /// `timeout` passes. A zero timeout checks once. Polls read the row without payloads; input
    /// and output are read once, when the instance is terminal (the returned state carries them;
    /// `Timeout::last_state` does not).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] (with the last state), or others from [`ClientError`].
    pub async fn wait_for_completion(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<OrchestrationState, ClientError> {
        validate_instance_id(instance_id)?;
        tracing::debug!(instance_id, "WaitingForInstance");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut polls = 0u32;
        loop {
            let state = self.service.get_state(instance_id, false).await?;
            if let Some(s) = state.as_ref().filter(|s| s.orchestration_status.is_terminal()) {
                // Once terminal, read the payloads once. A recreation or purge in between still
                // returns the terminal state seen (without payloads) rather than a newer one.
                return Ok(match self.service.get_state(instance_id, true).await? {
                    Some(full)
                        if full.orchestration_instance.execution_id
                            == s.orchestration_instance.execution_id =>
                    {
                        full
                    }
                    _ => s.clone(),
                });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    instance_id: instance_id.to_owned(),
                    last_state: state.map(Box::new),
                });
            }
            let interval =
                crate::backoff::doubling(Duration::from_millis(10), polls, self.max_poll_interval);
            tokio::time::sleep(interval.min(deadline - now)).await;
            polls = polls.saturating_add(1);
        }
    }

    /// The stored history of the instance's current execution.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, ClientError> {
        validate_instance_id(instance_id)?;
        tracing::debug!(instance_id, "FetchingInstanceHistory");
        Ok(self.service.get_history(instance_id, None).await?)
    }

    /// One page of instances matching `query`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn query(&self, query: &OrchestrationQuery) -> Result<QueryResult, ClientError> {
        Ok(self.service.query(query).await?)
    }

    /// Purges one terminal instance (row and history).
    ///
    /// # Errors
    /// [`ClientError::NotTerminal`] when the instance is still active.
    pub async fn purge_instance(&self, instance_id: &str) -> Result<PurgeResult, ClientError> {
        validate_instance_id(instance_id)?;
        match self.service.purge_instance(instance_id).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == ProviderErrorKind::PreconditionFailed => {
                Err(ClientError::NotTerminal(instance_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Purges terminal instances whose created, completed or last-updated time (as
    /// `filter.time_filter` says) is in `[from, to]`, with one of `filter.runtime_status` (empty =
    /// all terminal statuses).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn purge_by_filter(&self, filter: &PurgeFilter) -> Result<PurgeResult, ClientError> {
        Ok(self.service.purge_by_filter(filter).await?)
    }
}
