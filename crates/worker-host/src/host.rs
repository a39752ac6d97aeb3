//! The worker host: a builder that wires settings, a provider and registrations into a running
//! [`durabletask_core::Dispatchers`], plus graceful shutdown on SIGINT/SIGTERM and readiness.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "azure")]
use durabletask_azure_storage::AzureStorageOrchestrationService;
use durabletask_core::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, OrchestrationService,
    OrchestrationServiceClient, ProviderError, Registry, RegistryBuilder, TaskHubClient,
    WorkerOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

#[cfg(feature = "azure")]
use crate::config::{ConfigError, HostSettings};
#[cfg(feature = "azure")]
use crate::hub::azure_service;
use durabletask_core::admin::{HubStatus, ProcessingStatus, ProviderAdmin};

/// Errors of the worker host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Settings or connection are unusable.
    #[cfg(feature = "azure")]
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The provider failed (creating the hub, starting, stopping).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Installing the signal handlers failed.
    #[error("cannot listen for shutdown signals: {0}")]
    Signal(#[source] std::io::Error),
}

#[cfg(feature = "azure")]
impl From<durabletask_azure_storage::Error> for HostError {
    fn from(e: durabletask_azure_storage::Error) -> Self {
        HostError::Config(ConfigError::Provider(e))
    }
}

/// The Azure Storage provider when the `azure` feature is on; nothing otherwise.
#[cfg(feature = "azure")]
type AzureService = AzureStorageOrchestrationService;
#[cfg(not(feature = "azure"))]
#[derive(Clone)]
enum AzureService {}

trait AsAdmin {
    fn admin(self) -> Arc<dyn ProviderAdmin>;
}

impl AsAdmin for AzureService {
    fn admin(self) -> Arc<dyn ProviderAdmin> {
        #[cfg(feature = "azure")]
        {
            Arc::new(self)
        }
        #[cfg(not(feature = "azure"))]
        match self {}
    }
}

/// The default time [`TaskHubWorker::shutdown`] waits for in-flight work items.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

enum Backend {
    /// Azure Storage from host settings.
    #[cfg(feature = "azure")]
    Azure(Box<HostSettings>),
    /// Any provider (the in-memory one in tests).
    Custom {
        service: Arc<dyn OrchestrationService>,
        client: Arc<dyn OrchestrationServiceClient>,
        task_hub: String,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // HostSettings' Debug redacts the connection string.
            #[cfg(feature = "azure")]
            Backend::Azure(s) => f.debug_tuple("Azure").field(s).finish(),
            Backend::Custom { service, task_hub, .. } => f
                .debug_struct("Custom")
                .field("service", service)
                .field("task_hub", task_hub)
                .finish_non_exhaustive(),
        }
    }
}

/// Builds a [`TaskHubWorker`]: where storage is, what is registered, how it runs.
///
/// ```no_run
/// use durabletask_worker_host::{HostSettings, TaskHubWorker, samples};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = TaskHubWorker::builder(HostSettings::from_env()?)
///     .registry(samples::register_all)
///     .start()
///     .await?;
/// let id = worker.client().start_orchestration(samples::HELLO_CITIES, &()).await?;
/// worker.run_until_signal().await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct TaskHubWorkerBuilder {
    backend: Backend,
    registry: RegistryBuilder,
    options: WorkerOptions,
    drain_timeout: Duration,
    create_hub: bool,
    admin: Option<Arc<dyn ProviderAdmin>>,
}

impl fmt::Debug for TaskHubWorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHubWorkerBuilder")
            .field("backend", &self.backend)
            .field("registry", &self.registry)
            .field("drain_timeout", &self.drain_timeout)
            .field("create_hub", &self.create_hub)
            .finish_non_exhaustive()
    }
}

impl TaskHubWorkerBuilder {
    fn new(backend: Backend) -> Self {
        Self {
            backend,
            registry: Registry::builder(),
            options: WorkerOptions::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            create_hub: true,
            admin: None,
        }
    }

    /// The provider's administrative view, which [`TaskHubWorker::health`] reports from (hub
    /// status, processing status, readiness). Set for Azure Storage; give it for any other
    /// provider (the in-memory one implements it too).
    pub fn admin(mut self, admin: Arc<dyn ProviderAdmin>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Registers orchestration `name` (see [`RegistryBuilder::orchestration`]).
    pub fn register_orchestration<I, O, F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, OrchestrationError>> + 'static,
    {
        self.registry = self.registry.orchestration(name, f);
        self
    }

    /// Registers activity `name` (see [`RegistryBuilder::activity`]).
    pub fn register_activity<I, O, F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ActivityError>> + Send + 'static,
    {
        self.registry = self.registry.activity(name, f);
        self
    }

    /// Registers entity `name` with state `S` (see [`RegistryBuilder::entity`]).
    pub fn register_entity<S, R, F>(mut self, name: impl AsRef<str>, f: F) -> Self
    where
        S: Serialize + DeserializeOwned + Clone + Send + 'static,
        R: Serialize,
        F: Fn(&mut durabletask_core::EntityContext<S>) -> Result<R, durabletask_core::EntityError>
            + Send
            + Sync
            + 'static,
    {
        self.registry = self.registry.entity(name, f);
        self
    }

    /// Adds registrations with a function over the core [`RegistryBuilder`], e.g.
    /// [`crate::samples::register_all`].
    pub fn registry(mut self, f: impl FnOnce(RegistryBuilder) -> RegistryBuilder) -> Self {
        self.registry = f(self.registry);
        self
    }

    /// Replaces the registrations with `registry`.
    pub fn with_registry(mut self, registry: RegistryBuilder) -> Self {
        self.registry = registry;
        self
    }

    /// Dispatcher options (concurrency, fetch timeout, back-off).
    pub fn worker_options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// How long [`TaskHubWorker::shutdown`] waits for in-flight work items before aborting them
    /// (their messages reappear after the visibility timeout). Default 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Whether `start` creates the task hub's resources if missing (default `true`).
    pub fn create_if_not_exists(mut self, create: bool) -> Self {
        self.create_hub = create;
        self
    }

    /// Connects, creates the task hub if asked, and starts the dispatchers.
    ///
    /// # Errors
    /// [`HostError::Config`] for an unusable connection or setting, [`HostError::Provider`] when
    /// storage fails.
    pub async fn start(self) -> Result<TaskHubWorker, HostError> {
        let admin = self.admin;
        let (service, client, azure, task_hub, worker_id) = match self.backend {
            #[cfg(feature = "azure")]
            Backend::Azure(settings) => {
                tracing::info!(
                    task_hub = settings.provider.task_hub_name.as_str(),
                    worker_id = %settings.provider.worker_id,
                    partition_count = settings.provider.partition_count,
                    connection = ?settings.connection,
                    "WorkerHostStarting"
                );
                let svc = azure_service(&settings)?;
                let service: Arc<dyn OrchestrationService> = Arc::new(svc.clone());
                let client: Arc<dyn OrchestrationServiceClient> = Arc::new(svc.clone());
                (
                    service,
                    client,
                    Some(svc),
                    settings.provider.task_hub_name.as_str().to_owned(),
                    Some(settings.provider.worker_id.clone()),
                )
            }
            Backend::Custom { service, client, task_hub } => {
                tracing::info!(task_hub = %task_hub, "WorkerHostStarting");
                (service, client, None::<AzureService>, task_hub, None)
            }
        };
        if self.create_hub {
            service.create_if_not_exists().await?;
        }
        let worker = durabletask_core::Dispatchers::start(
            Arc::clone(&service),
            self.registry.build(),
            self.options,
        )
        .await?;
        tracing::info!(task_hub = %task_hub, "WorkerHostStarted");
        let admin = admin.or_else(|| azure.clone().map(AsAdmin::admin));
        Ok(TaskHubWorker {
            worker: Some(worker),
            service,
            client: TaskHubClient::new(client),
            azure,
            task_hub,
            admin,
            worker_id,
            started_at: OffsetDateTime::now_utc(),
            drain_timeout: self.drain_timeout,
        })
    }
}

/// A running worker host: the dispatchers of [`durabletask_core::Dispatchers`] over a provider,
/// a client for the same task hub, readiness and graceful shutdown.
///
/// Dropping it without [`shutdown`](Self::shutdown) aborts in-flight work (nothing is lost: the
/// messages reappear after their visibility timeout) and does not release partition leases
/// (they expire after the lease interval).
pub struct TaskHubWorker {
    worker: Option<durabletask_core::Dispatchers>,
    service: Arc<dyn OrchestrationService>,
    client: TaskHubClient,
    #[cfg_attr(not(feature = "azure"), allow(dead_code))]
    azure: Option<AzureService>,
    admin: Option<Arc<dyn ProviderAdmin>>,
    task_hub: String,
    worker_id: Option<String>,
    started_at: OffsetDateTime,
    drain_timeout: Duration,
}

impl fmt::Debug for TaskHubWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHubWorker")
            .field("task_hub", &self.task_hub)
            .field("worker_id", &self.worker_id)
            .field("service", &self.service)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

/// Readiness of a [`TaskHubWorker`], from [`TaskHubWorker::health`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Started, not stopping, and (with a [`ProviderAdmin`]) the task hub exists and answers and
    /// the provider's own bookkeeping finds nothing wrong.
    pub ready: bool,
    /// The task hub.
    pub task_hub: String,
    /// This worker's id in partition leases (Azure Storage only).
    pub worker_id: Option<String>,
    /// When the host started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Control queues (partitions) this process owns right now.
    pub owned_partitions: Vec<String>,
    /// Queue lengths and partitions of the task hub (with a [`ProviderAdmin`]).
    pub hub: Option<HubStatus>,
    /// The provider's in-memory processing state: held messages and pollers (for a provider that
    /// keeps one). The host is not ready when bookkeeping leaked or an owned partition's poller has
    /// not received for longer than the lease interval.
    pub processing: Option<ProcessingStatus>,
    /// Why the host is not ready, if it is not.
    pub error: Option<String>,
}

impl TaskHubWorker {
    /// A builder for an Azure Storage worker described by `settings`.
    #[cfg(feature = "azure")]
    pub fn builder(settings: HostSettings) -> TaskHubWorkerBuilder {
        TaskHubWorkerBuilder::new(Backend::Azure(Box::new(settings)))
    }

    /// A builder over any provider (e.g. the in-memory one); `task_hub` names it in logs and
    /// [`Health`].
    pub fn builder_with_service(
        service: Arc<dyn OrchestrationService>,
        client: Arc<dyn OrchestrationServiceClient>,
        task_hub: impl Into<String>,
    ) -> TaskHubWorkerBuilder {
        TaskHubWorkerBuilder::new(Backend::Custom { service, client, task_hub: task_hub.into() })
    }

    /// A client for this worker's task hub.
    pub fn client(&self) -> TaskHubClient {
        self.client.clone()
    }

    /// The worker-side provider.
    pub fn service(&self) -> &Arc<dyn OrchestrationService> {
        &self.service
    }

    /// The Azure Storage provider, when the host runs on it.
    #[cfg(feature = "azure")]
    pub fn azure(&self) -> Option<&AzureStorageOrchestrationService> {
        self.azure.as_ref()
    }

    /// The task hub name.
    pub fn task_hub(&self) -> &str {
        &self.task_hub
    }

    /// Readiness: started, the hub reachable, the partitions owned by this process.
    pub async fn health(&self) -> Health {
        let mut health = Health {
            ready: self.worker.is_some(),
            task_hub: self.task_hub.clone(),
            worker_id: self.worker_id.clone(),
            started_at: self.started_at,
            owned_partitions: Vec::new(),
            hub: None,
            processing: None,
            error: None,
        };
        let Some(admin) = &self.admin else { return health };
        if let Some(why) = admin.not_ready() {
            health.ready = false;
            health.error = Some(why);
        }
        health.processing = admin.processing_status();
        match admin.hub_status().await {
            Ok(status) => {
                if !status.exists {
                    health.ready = false;
                    health.error = Some("the task hub does not exist".into());
                }
                health.owned_partitions.clone_from(&status.owned_partitions);
                health.hub = Some(status);
            }
            Err(e) => {
                health.ready = false;
                health.error = Some(e.to_string());
            }
        }
        health
    }

    /// Runs until SIGINT (Ctrl-C) or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// [`HostError::Signal`] if the handlers cannot be installed; errors of
    /// [`shutdown`](Self::shutdown).
    pub async fn run_until_signal(self) -> Result<(), HostError> {
        let signal = shutdown_signal().await.map_err(HostError::Signal)?;
        tracing::info!(signal, task_hub = %self.task_hub, "ShutdownRequested");
        self.shutdown().await
    }

    /// Runs until `stop` completes, then shuts down gracefully.
    ///
    /// # Errors
    /// Errors of [`shutdown`](Self::shutdown).
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<(), HostError> {
        stop.await;
        self.shutdown().await
    }

    /// Graceful shutdown: stop fetching, wait up to the drain timeout for in-flight work items,
    /// then stop the provider (which releases owned partitions).
    ///
    /// # Errors
    /// When the provider fails to stop.
    pub async fn shutdown(mut self) -> Result<(), HostError> {
        if let Some(worker) = self.worker.take() {
            tracing::info!(task_hub = %self.task_hub, drain_timeout_ms = u64::try_from(self.drain_timeout.as_millis()).unwrap_or(u64::MAX), "WorkerHostStopping");
            worker.shutdown(self.drain_timeout).await?;
            tracing::info!(task_hub = %self.task_hub, "WorkerHostStopped");
        }
        Ok(())
    }
}

/// Waits for SIGINT or SIGTERM; returns the signal's name.
#[cfg(unix)]
async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn shutdown_signal() -> std::io::Result<&'static str> {
    tokio::signal::ctrl_c().await?;
    Ok("Ctrl-C")
}
