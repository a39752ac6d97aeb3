//! Storage environment, test settings and in-process workers.

use crate::audit::StatsMonitor;
use crate::ledger::Ledger;
use crate::{ChaosError, Result};
use durabletask_azure_storage::storage::fault::{FaultPlan, Reorder};
use durabletask_azure_storage::storage::{AzureStorage, StorageAccount, StorageOp};
use durabletask_azure_storage::{
    AzureStorageOrchestrationService, AzureStorageSettings, CrashHook, StorageStack, TaskHubName,
};
use durabletask_core::{Clock, Dispatchers, OrchestrationService, TaskHubClient, WorkerOptions};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Variable with the storage connection string for `chaos_worker` and `chaos_stress`.
pub const CONNECTION_STRING_VAR: &str = "DTF_CHAOS_CONNECTION_STRING";
/// Variable with the task hub name for `chaos_worker`.
pub const HUB_VAR: &str = "DTF_CHAOS_HUB";
/// Variable with the worker id for `chaos_worker`.
pub const WORKER_ID_VAR: &str = "DTF_CHAOS_WORKER_ID";
/// Optional variable: a `chaos_worker` runs over [`worker_fault_plan`] with this rate.
pub const FAULT_RATE_VAR: &str = "DTF_CHAOS_FAULT_RATE";
/// Optional variable: a `chaos_worker` SIGKILLs itself at each crash point with this
/// probability ([`crate::procs::SelfKill`]).
pub const CRASH_RATE_VAR: &str = "DTF_CHAOS_CRASH_RATE";
/// Optional variable: the seed of a `chaos_worker`'s faults and crashes (default 0).
pub const SEED_VAR: &str = "DTF_CHAOS_SEED";

/// The storage faults of a `chaos_worker` started with [`FAULT_RATE_VAR`]: `rate` of the calls
/// fail (half before they are sent, a fifth time out, the rest commit and then report a timeout),
/// `rate` of the puts are sent twice, received batches are shuffled and `rate` of the received
/// messages are held back for up to 3 s. Blob downloads are left out: a failed download
/// quarantines a valid message (see [`crate::scenarios::blob_outage`]).
pub fn worker_fault_plan(rate: f64, seed: u64) -> FaultPlan {
    let ops = StorageOp::ALL
        .into_iter()
        .filter(|op| {
            !matches!(
                op,
                StorageOp::BlobGet
                    | StorageOp::QueueAdmin
                    | StorageOp::TableAdmin
                    | StorageOp::BlobAdmin
            )
        })
        .collect();
    FaultPlan {
        seed,
        error_rate: rate * 0.5,
        timeout_rate: rate * 0.2,
        committed_timeout_rate: rate * 0.3,
        timeout_delay: Duration::from_millis(300),
        duplicate_put_rate: rate,
        reorder: Reorder::Shuffle,
        hold_back_rate: rate,
        hold_back_max: Duration::from_secs(3),
        ops: Some(ops),
        ..FaultPlan::default()
    }
}

/// Where the harness finds storage.
#[derive(Clone)]
pub struct ChaosEnv {
    connection_string: String,
    account: StorageAccount,
}

impl fmt::Debug for ChaosEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosEnv").field("account", &self.account).finish_non_exhaustive()
    }
}

impl ChaosEnv {
    /// The environment for a connection string.
    ///
    /// # Errors
    /// When the connection string does not parse.
    pub fn new(connection_string: &str) -> Result<Self> {
        let account = StorageAccount::from_connection_string(connection_string)?;
        Ok(Self { connection_string: connection_string.to_owned(), account })
    }

    /// The integration-test environment, or `None` to skip (see `AzuriteEnv::from_env_or_skip`).
    ///
    /// # Panics
    /// When the test connection string does not parse.
    pub fn for_test(test: &str) -> Option<Self> {
        let env = durabletask_testkit::azurite::AzuriteEnv::from_env_or_skip(test)?;
        Some(Self::new(env.connection_string()).expect("test connection string parses"))
    }

    /// The connection string (handed to child processes through the environment only).
    pub fn connection_string(&self) -> &str {
        &self.connection_string
    }

    /// The account.
    pub fn account(&self) -> &StorageAccount {
        &self.account
    }

    /// Direct, un-faulted storage clients (ledger, auditor, message injection).
    pub fn storage(&self) -> Arc<AzureStorage> {
        Arc::new(AzureStorage::new(&self.account, Duration::from_secs(20)))
    }
}

/// A fresh task hub name for `test`.
///
/// # Panics
/// Never: generated names are valid.
pub fn fresh_hub(test: &str) -> TaskHubName {
    TaskHubName::new(durabletask_testkit::azurite::unique_hub_name(test))
        .expect("generated hub names are valid")
}

/// Provider settings for chaos runs: 4 partitions, 15 s leases renewed every 4 s, acquired
/// every 2 s, 5 s visibility timeouts (a crashed work item reappears quickly).
pub fn chaos_settings(hub: &TaskHubName, worker_id: &str) -> AzureStorageSettings {
    let mut s = AzureStorageSettings::new(hub.clone());
    s.worker_id = worker_id.to_owned();
    s.partition_count = 4;
    s.lease_interval = Duration::from_secs(15);
    s.lease_renew_interval = Duration::from_secs(4);
    s.lease_acquire_interval = Duration::from_secs(2);
    s.control_queue_visibility_timeout = Duration::from_secs(5);
    s.work_item_queue_visibility_timeout = Duration::from_secs(5);
    s.max_queue_polling_interval = Duration::from_millis(500);
    s.max_concurrent_activity_work_items = 16;
    s.storage_operation_timeout = Duration::from_secs(10);
    s
}

/// Dispatcher options for chaos runs: short back-offs so retries happen within the test.
pub fn chaos_worker_options(clock: Arc<dyn Clock>) -> WorkerOptions {
    WorkerOptions {
        fetch_timeout: Duration::from_secs(2),
        fetch_error_delay: Duration::from_millis(500),
        lock_renewal_margin: Duration::from_secs(2),
        abandon_backoff_base: Duration::from_millis(200),
        abandon_backoff_max: Duration::from_secs(5),
        clock,
        ..WorkerOptions::default()
    }
}

/// How an in-process worker is built.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Provider settings.
    pub settings: AzureStorageSettings,
    /// Storage stack (`None`: the plain Azure stack).
    pub stack: Option<StorageStack>,
    /// Clock of the provider and the dispatchers.
    pub clock: Arc<dyn Clock>,
    /// Crash hook.
    pub crash_hook: Option<Arc<dyn CrashHook>>,
}

impl NodeSpec {
    /// A plain worker with `settings`.
    pub fn new(settings: AzureStorageSettings) -> Self {
        Self {
            settings,
            stack: None,
            clock: durabletask_core::clock::system_clock(),
            crash_hook: None,
        }
    }
}

/// An in-process worker: the provider and its dispatchers.
#[derive(Debug)]
pub struct Node {
    /// The provider (also the client side).
    pub svc: AzureStorageOrchestrationService,
    worker: Option<Dispatchers>,
    watch: Option<Watch>,
}

/// A worker's registration with a [`StatsMonitor`]; unregisters when dropped.
#[derive(Debug)]
struct Watch {
    monitor: Arc<StatsMonitor>,
    name: String,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.monitor.unwatch(&self.name);
    }
}

impl Node {
    /// Builds the provider, creates the hub's resources and starts the dispatchers with the
    /// workload registry.
    ///
    /// # Errors
    /// When the provider cannot be built or started.
    pub async fn start(env: &ChaosEnv, spec: NodeSpec, ledger: &Arc<Ledger>) -> Result<Self> {
        let stack =
            spec.stack.unwrap_or_else(|| StorageStack::azure(env.account(), &spec.settings));
        let svc = AzureStorageOrchestrationService::with_test_hooks(
            spec.settings,
            stack,
            spec.clock.clone(),
            spec.crash_hook,
        )?;
        svc.create_if_not_exists().await?;
        let worker = Dispatchers::start(
            Arc::new(svc.clone()),
            crate::workload::registry(ledger.clone()).build(),
            chaos_worker_options(spec.clock),
        )
        .await?;
        Ok(Self { svc, worker: Some(worker), watch: None })
    }

    /// Has `monitor` sample this worker's stats until it stops or is killed.
    pub fn watched_by(mut self, monitor: &Arc<StatsMonitor>) -> Self {
        let name = self.svc.azure_settings().worker_id.clone();
        monitor.watch(&name, self.svc.clone());
        self.watch = Some(Watch { monitor: monitor.clone(), name });
        self
    }

    /// A typed client over this node's provider.
    pub fn client(&self) -> TaskHubClient {
        TaskHubClient::new(Arc::new(self.svc.clone()))
            .with_max_poll_interval(Duration::from_millis(250))
    }

    /// Graceful shutdown (drains in-flight work items for up to `drain`).
    ///
    /// # Errors
    /// When the provider fails to stop.
    pub async fn stop(mut self, drain: Duration) -> Result<()> {
        self.watch = None;
        if let Some(w) = self.worker.take() {
            w.shutdown(drain).await?;
        }
        Ok(())
    }

    /// Abrupt stop, as close to a crash as one process allows: dispatchers dropped, partition
    /// leases abandoned without release, buffered messages left to their visibility timeout.
    pub async fn kill(mut self) {
        self.watch = None;
        if let Some(w) = self.worker.take() {
            drop(w);
        }
        let _ = self.svc.stop(false).await;
    }
}

/// A client-only provider for `hub` (no dispatchers, no partitions).
///
/// # Errors
/// When the provider cannot be built.
pub fn client_provider(
    env: &ChaosEnv,
    hub: &TaskHubName,
) -> Result<AzureStorageOrchestrationService> {
    let settings = chaos_settings(hub, "chaos-client");
    AzureStorageOrchestrationService::new(settings, env.account()).map_err(ChaosError::from)
}
