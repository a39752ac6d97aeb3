//! Where a workload runs: a fresh task hub of the in-memory provider or of the Azure Storage
//! provider, with the worker-side service, an in-process client and a separate completion poller.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durabletask_azure_storage::storage::{StorageAccount, StorageCounters};
use durabletask_azure_storage::{
    AzureStorageOrchestrationService, AzureStorageSettings, TaskHubName,
};
use durabletask_core::{OrchestrationService, OrchestrationServiceClient, WorkerOptions};
use durabletask_testkit::memory::{InMemoryOrchestrationService, MemorySettings};

use crate::probe::{self, ProbeResult};
use crate::{BenchConfig, Error, Result};

/// A fresh task hub for one workload.
///
/// `service` and `client` are the same provider instance (the client lives in the worker
/// process, as in the W5). `poller` is a second instance over the same hub that only
/// waits for completions, so its reads are not counted in `counters`.
#[derive(Clone)]
pub struct BenchHub {
    /// The task hub's name.
    pub task_hub: String,
    /// Worker side.
    pub service: Arc<dyn OrchestrationService>,
    /// Client side used to start orchestrations and raise events (same instance as `service`).
    pub client: Arc<dyn OrchestrationServiceClient>,
    /// Client used only to poll for completion (not counted).
    pub poller: Arc<dyn OrchestrationServiceClient>,
    /// Storage-operation counters of `service`/`client` (`None` for the in-memory provider).
    pub counters: Option<Arc<StorageCounters>>,
    /// Storage-operation counters of `poller` (`None` for the in-memory provider).
    pub poller_counters: Option<Arc<StorageCounters>>,
    /// Longest interval between completion polls in throughput workloads.
    pub poll_interval: Duration,
    /// Interval between completion polls in the latency workload (its resolution).
    pub latency_poll_interval: Duration,
    /// Options for the worker.
    pub worker_options: WorkerOptions,
    ready: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl fmt::Debug for BenchHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchHub")
            .field("task_hub", &self.task_hub)
            .field("counted", &self.counters.is_some())
            .finish_non_exhaustive()
    }
}

impl BenchHub {
    /// Waits until the worker can process every partition (Azure: owns every control queue), so
    /// lease acquisition is not measured as workload time.
    ///
    /// # Errors
    /// [`Error::Workload`] when that does not happen within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let Some(ready) = &self.ready else { return Ok(()) };
        let deadline = tokio::time::Instant::now() + timeout;
        while !ready() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Workload {
                    workload: "setup",
                    message: format!(
                        "the worker did not own all partitions of {} within {timeout:?}",
                        self.task_hub
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// A provider the benchmark can run on.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// `"memory"` or `"azure"`.
    fn name(&self) -> &'static str;

    /// A new, created, empty task hub for workload `label`.
    async fn create_hub(&self, label: &str) -> Result<BenchHub>;

    /// Deletes the hub's resources.
    async fn delete_hub(&self, hub: &BenchHub) -> Result<()>;

    /// Raw storage capacity at the provider's concurrency (`None` when there is no storage).
    async fn capacity_probe(&self, _cfg: &BenchConfig) -> Result<Option<ProbeResult>> {
        Ok(None)
    }
}

/// The in-memory provider of `durabletask-testkit` with its default settings.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    /// Provider settings.
    pub settings: MemorySettings,
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create_hub(&self, label: &str) -> Result<BenchHub> {
        let svc = Arc::new(InMemoryOrchestrationService::new(self.settings.clone()));
        svc.create_if_not_exists().await?;
        Ok(BenchHub {
            task_hub: format!("memory-{label}"),
            service: svc.clone(),
            client: svc.clone(),
            poller: svc,
            counters: None,
            poller_counters: None,
            poll_interval: Duration::from_millis(1),
            latency_poll_interval: Duration::from_millis(1),
            worker_options: WorkerOptions::default(),
            ready: None,
        })
    }

    async fn delete_hub(&self, hub: &BenchHub) -> Result<()> {
        hub.service.delete().await?;
        Ok(())
    }
}

/// The Azure Storage provider over one storage account (Azurite or real).
#[derive(Clone)]
pub struct AzureBackend {
    account: StorageAccount,
    /// Control-queue partitions of each hub (`None`: the provider's default).
    pub partition_count: Option<u8>,
    /// Buffered control-queue messages before polling pauses (`None`: the provider's default).
    /// It bounds how many operations one entity batch can hold (E1).
    pub control_queue_buffer_threshold: Option<usize>,
}

impl fmt::Debug for AzureBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The account's own Debug redacts secrets.
        f.debug_struct("AzureBackend")
            .field("account", &self.account)
            .field("partition_count", &self.partition_count)
            .field("control_queue_buffer_threshold", &self.control_queue_buffer_threshold)
            .finish()
    }
}

impl AzureBackend {
    /// A backend over the account of `connection_string`.
    ///
    /// # Errors
    /// When the connection string cannot be parsed.
    pub fn from_connection_string(connection_string: &str) -> Result<Self> {
        Ok(Self {
            account: StorageAccount::from_connection_string(connection_string)?,
            partition_count: None,
            control_queue_buffer_threshold: None,
        })
    }

    /// The storage account.
    pub fn account(&self) -> &StorageAccount {
        &self.account
    }

    fn settings(&self, hub: &str) -> Result<AzureStorageSettings> {
        let mut settings = AzureStorageSettings::new(TaskHubName::new(hub)?);
        if let Some(n) = self.partition_count {
            settings.partition_count = n;
        }
        if let Some(n) = self.control_queue_buffer_threshold {
            settings.control_queue_buffer_threshold = n;
        }
        Ok(settings)
    }
}

/// A task hub name unique to this run: `dtb` + workload + 12 hex digits.
pub fn unique_hub_name(label: &str) -> String {
    let label: String =
        label.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("dtb{}{}", label.to_ascii_lowercase(), &unique[..12])
}

#[async_trait]
impl Backend for AzureBackend {
    fn name(&self) -> &'static str {
        "azure"
    }

    async fn create_hub(&self, label: &str) -> Result<BenchHub> {
        let name = unique_hub_name(label);
        let settings = self.settings(&name)?;
        let partitions = usize::from(settings.partition_count);
        let svc = AzureStorageOrchestrationService::new(settings.clone(), &self.account)?;
        let mut poll_settings = settings;
        poll_settings.worker_id = format!("{}-poller", poll_settings.worker_id);
        let poller = AzureStorageOrchestrationService::new(poll_settings, &self.account)?;
        OrchestrationService::create_if_not_exists(&svc).await?;
        let counters = svc.counters();
        let poller_counters = poller.counters();
        let ready_svc = svc.clone();
        let ready = move || ready_svc.partition_manager().owned_partitions().len() >= partitions;
        Ok(BenchHub {
            task_hub: name,
            service: Arc::new(svc.clone()),
            client: Arc::new(svc),
            poller: Arc::new(poller),
            counters: Some(counters),
            poller_counters: Some(poller_counters),
            poll_interval: Duration::from_millis(50),
            latency_poll_interval: Duration::from_millis(5),
            worker_options: WorkerOptions {
                fetch_error_delay: Duration::from_secs(1),
                ..WorkerOptions::default()
            },
            ready: Some(Arc::new(ready)),
        })
    }

    async fn delete_hub(&self, hub: &BenchHub) -> Result<()> {
        hub.service.delete().await?;
        Ok(())
    }

    async fn capacity_probe(&self, cfg: &BenchConfig) -> Result<Option<ProbeResult>> {
        if cfg.probe_seconds <= 0.0 {
            return Ok(None);
        }
        let concurrency = match cfg.probe_concurrency {
            Some(c) => c,
            None => self.settings("dtbprobe")?.max_storage_operation_concurrency,
        };
        let phase = Duration::from_secs_f64(cfg.probe_seconds);
        Ok(Some(probe::run(&self.account, concurrency, phase).await?))
    }
}
