//! The typed client (DTF `TaskHubClient`): start, raise events, terminate, suspend, resume,
//! query, wait, purge and read history, over any [`OrchestrationServiceClient`].
//!
//! Instance ids are validated ([`crate::validate_instance_id`]) before anything is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock};
use crate::history::{
    EventKind, ExecutionStartedEvent, HistoryEvent, NO_EVENT_ID, OrchestrationInstance, TaskMessage,
};
use crate::ids::{InstanceIdError, new_execution_id, validate_instance_id};
use crate::provider::{
    OrchestrationQuery, OrchestrationServiceClient, ProviderError, ProviderErrorKind, PurgeFilter,
    PurgeResult, QueryResult,
};
use crate::registry::to_payload;
use crate::state::{OrchestrationState, OrchestrationStatus};

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
    /// The instance exists in one of the dedupe statuses.
    #[error("orchestration instance '{0}' already exists")]
    AlreadyExists(String),
    /// The instance does not exist.
    #[error("orchestration instance '{0}' not found")]
    NotFound(String),
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
}

impl TaskHubClient {
    /// A client using the system clock.
    pub fn new(service: Arc<dyn OrchestrationServiceClient>) -> Self {
        Self { service, clock: Arc::new(SystemClock), max_poll_interval: Duration::from_secs(1) }
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
    /// See [`ClientError`]; `AlreadyExists` when deduplicated.
    pub async fn schedule_new_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<OrchestrationInstance, ClientError> {
        let instance_id = match options.instance_id {
            Some(id) => {
                validate_instance_id(&id)?;
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
                Err(ClientError::AlreadyExists(instance_id))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn send(&self, instance_id: &str, kind: EventKind) -> Result<(), ClientError> {
        validate_instance_id(instance_id)?;
        let msg = TaskMessage::new(
            OrchestrationInstance::new(instance_id),
            HistoryEvent::new(NO_EVENT_ID, self.clock.now(), kind),
        );
        self.service.send_message(msg).await?;
        Ok(())
    }

    /// Raises external event `name` with `data` on the instance's current execution.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn raise_event<T: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let input = to_payload(data)?;
        tracing::info!(instance_id, name, "RaisingEvent");
        self.send(instance_id, EventKind::EventRaised { name: name.to_owned(), input }).await
    }

    /// Terminates the instance (running, suspended or pending) with `reason`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn terminate<T: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        reason: &T,
    ) -> Result<(), ClientError> {
        let input = to_payload(reason)?;
        tracing::info!(instance_id, "TerminatingInstance");
        self.send(instance_id, EventKind::ExecutionTerminated { input }).await
    }

    /// Suspends the instance.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn suspend(
        &self,
        instance_id: &str,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        tracing::info!(instance_id, "SuspendingInstance");
        self.send(instance_id, EventKind::ExecutionSuspended { reason: reason.map(str::to_owned) })
            .await
    }

    /// Resumes a suspended instance.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        tracing::info!(instance_id, "ResumingInstance");
        self.send(instance_id, EventKind::ExecutionResumed { reason: reason.map(str::to_owned) })
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
    /// `timeout` passes. A zero timeout checks once.
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
        let mut interval = Duration::from_millis(10);
        loop {
            let state = self.service.get_state(instance_id, true).await?;
            if let Some(s) = &state
                && s.orchestration_status.is_terminal()
            {
                return Ok(s.clone());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    instance_id: instance_id.to_owned(),
                    last_state: state.map(Box::new),
                });
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(self.max_poll_interval);
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

    /// Purges terminal instances created in `[from, to]` with one of `statuses` (empty = all
    /// terminal statuses).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn purge_by_filter(&self, filter: &PurgeFilter) -> Result<PurgeResult, ClientError> {
        Ok(self.service.purge_by_filter(filter).await?)
    }
}
