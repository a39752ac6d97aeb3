//! What every example shares: tracing, settings from `DTF_*` variables (with quick polling for a
//! demo), and a started worker with the samples registered.

use std::time::Duration;

use durabletask_worker_host::{HostSettings, TaskHubWorker, init_tracing, samples};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Starts a worker with every sample registered. Set `DTF_CONNECTION_STRING` or
/// `DTF_USE_EMULATOR=1` (and optionally `DTF_TASK_HUB`).
pub async fn start_worker() -> Result<TaskHubWorker, BoxError> {
    init_tracing()?;
    let mut settings = HostSettings::from_env()?;
    if std::env::var_os("DTF_MAX_QUEUE_POLLING_INTERVAL_MS").is_none() {
        // Examples should feel instant; production keeps DTF's 30 s idle back-off cap.
        settings.provider.max_queue_polling_interval = Duration::from_millis(500);
    }
    if std::env::var_os("DTF_LEASE_ACQUIRE_INTERVAL_SECS").is_none() {
        settings.provider.lease_acquire_interval = Duration::from_secs(1);
    }
    Ok(TaskHubWorker::builder(settings)
        .registry(samples::register_all)
        .drain_timeout(Duration::from_secs(5))
        .start()
        .await?)
}
