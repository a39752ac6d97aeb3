//! The provider conformance suite.
//!
//! Every function takes a [`ProviderFactory`] that hands out a fresh, isolated task hub per call,
//! starts a [`Dispatchers`] with the orchestrations it needs, drives it through a
//! [`TaskHubClient`], asserts on real outcomes and deletes the hub. A provider crate runs each
//! function as its own `#[tokio::test]`, most simply with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! durabletask_testkit::conformance_tests!(durabletask_testkit::memory_factory());
//! ```
//!
//! Sizes and timeouts come from [`ProviderFactory::config`], so slow backends (Azure Storage on
//! Azurite) can raise timeouts while keeping the issue's default sizes.

mod answers;
mod basics;
mod contract;
mod entities;
mod events;
mod lifecycle;
mod management;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durabletask_core::{
    ActivityContext, ActivityError, Dispatchers, HistoryEvent, OrchestrationContext,
    OrchestrationService, OrchestrationServiceClient, OrchestrationState, OrchestrationStatus,
    RegistryBuilder, TaskHubClient, WorkerOptions,
};

pub use answers::*;
pub use basics::*;
pub use contract::*;
pub use entities::*;
pub use events::*;
pub use lifecycle::*;
pub use management::*;

use crate::wait::wait_until;

/// Sizes and timeouts of the suite.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// Activities in the fan-out/fan-in test (issue default 1000).
    pub fan_out: usize,
    /// Generations in the continue-as-new loop test (issue default 100).
    pub generations: usize,
    /// How long to wait for any one condition (completion, a status, a history event).
    pub timeout: Duration,
    /// Durable timer length used by timer tests.
    pub timer_delay: Duration,
    /// Worker options used by the suite.
    pub worker_options: WorkerOptions,
}

impl Default for ConformanceConfig {
    fn default() -> Self {
        Self {
            fan_out: 1000,
            generations: 100,
            timeout: Duration::from_secs(60),
            timer_delay: Duration::from_millis(1500),
            worker_options: WorkerOptions {
                abandon_backoff_base: Duration::from_millis(100),
                abandon_backoff_max: Duration::from_secs(5),
                fetch_error_delay: Duration::from_millis(500),
                ..WorkerOptions::default()
            },
        }
    }
}

/// A fresh task hub: both sides of one provider.
#[derive(Debug, Clone)]
pub struct TestHub {
    /// Worker side.
    pub service: Arc<dyn OrchestrationService>,
    /// Client side.
    pub client: Arc<dyn OrchestrationServiceClient>,
    /// Counts what the provider wrote, for "nothing was written" checks (`None`: not available;
    /// those checks then fall back to querying rows).
    pub writes: Option<Arc<dyn WriteProbe>>,
}

/// Counts a provider's writes (messages queued, rows and blobs written) since it was created.
/// Only differences matter; used while no worker runs on the hub.
pub trait WriteProbe: Send + Sync + std::fmt::Debug {
    /// Writes so far.
    fn writes(&self) -> u64;
}

/// Creates isolated task hubs for the suite.
#[async_trait]
pub trait ProviderFactory: Send + Sync {
    /// A new, empty, created task hub, isolated from every other.
    async fn create_hub(&self) -> TestHub;

    /// Sizes and timeouts (defaults: the issue's sizes, 60 s timeouts).
    fn config(&self) -> ConformanceConfig {
        ConformanceConfig::default()
    }
}

/// A running worker plus client over one fresh hub.
#[derive(Debug)]
pub struct Harness {
    /// The client.
    pub client: TaskHubClient,
    /// The hub.
    pub hub: TestHub,
    /// The config.
    pub config: ConformanceConfig,
    worker: Option<Dispatchers>,
}

impl Harness {
    /// Creates a hub and starts a worker with `registry`.
    ///
    /// # Panics
    /// When the hub or worker cannot start.
    pub async fn start(factory: &dyn ProviderFactory, registry: RegistryBuilder) -> Self {
        Self::start_with(factory, registry, |_| {}).await
    }

    /// [`Self::start`] with the factory's config adjusted by `tweak`.
    ///
    /// # Panics
    /// When the hub or worker cannot start.
    pub async fn start_with(
        factory: &dyn ProviderFactory,
        registry: RegistryBuilder,
        tweak: impl FnOnce(&mut ConformanceConfig),
    ) -> Self {
        let mut config = factory.config();
        tweak(&mut config);
        let hub = factory.create_hub().await;
        hub.service.create_if_not_exists().await.expect("create hub");
        let worker = Dispatchers::start(
            Arc::clone(&hub.service),
            registry.build(),
            config.worker_options.clone(),
        )
        .await
        .expect("start worker");
        let client = TaskHubClient::new(Arc::clone(&hub.client))
            .with_max_poll_interval(Duration::from_millis(200));
        Self { client, hub, config, worker: Some(worker) }
    }

    /// Waits for `id` to reach a terminal status.
    ///
    /// # Panics
    /// On timeout.
    pub async fn wait(&self, id: &str) -> OrchestrationState {
        match self.client.wait_for_completion(id, self.config.timeout).await {
            Ok(s) => s,
            Err(e) => panic!("waiting for '{id}' to complete: {e:?}"),
        }
    }

    /// Waits until `id` has `status`.
    ///
    /// # Panics
    /// On timeout.
    pub async fn wait_status(&self, id: &str, status: OrchestrationStatus) -> OrchestrationState {
        wait_until(self.config.timeout, &format!("'{id}' to be {status}"), || async {
            self.client
                .get_state(id)
                .await
                .expect("get_state")
                .filter(|s| s.orchestration_status == status)
        })
        .await
    }

    /// Waits until `id`'s history satisfies `pred`.
    ///
    /// # Panics
    /// On timeout.
    pub async fn wait_history(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&[HistoryEvent]) -> bool,
    ) -> Vec<HistoryEvent> {
        wait_until(self.config.timeout, what, || async {
            let h = self.client.get_history(id).await.expect("get_history");
            pred(&h).then_some(h)
        })
        .await
    }

    /// Stops the worker gracefully and deletes the hub.
    ///
    /// # Panics
    /// When shutdown fails.
    pub async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown(Duration::from_secs(30)).await.expect("worker shutdown");
        }
        self.hub.service.delete().await.expect("delete hub");
    }
}

/// Activities and orchestrations shared by the suite.
pub fn common_registry() -> RegistryBuilder {
    durabletask_core::Registry::builder()
        .activity("Echo", |_c: ActivityContext, s: String| async move { Ok(s) })
        .activity("Double", |_c: ActivityContext, n: u64| async move { Ok(n * 2) })
        .activity("Fail", |_c: ActivityContext, msg: String| async move {
            Err::<(), _>(ActivityError::new(msg))
        })
        .orchestration("Quick", |_ctx: OrchestrationContext, s: String| async move { Ok(s) })
        .orchestration("HelloSequence", |ctx: OrchestrationContext, (): ()| async move {
            let mut out = Vec::new();
            for city in ["Tokyo", "Seattle", "London"] {
                let s: String = ctx.call_activity("Echo", &format!("Hello {city}")).await?;
                out.push(s);
            }
            Ok(out)
        })
        .orchestration("WaitForever", |ctx: OrchestrationContext, (): ()| async move {
            let v: String = ctx.wait_for_external_event("Never").await?;
            Ok(v)
        })
}

/// Every conformance function name, in suite order (handy for reports).
pub const ALL: &[&str] = &[
    "hello_sequence",
    "history_shape",
    "fan_out_fan_in",
    "timers",
    "external_event_after_wait",
    "external_event_before_wait",
    "external_event_timeout_with_select",
    "send_event_between_instances",
    "sub_orchestration_success",
    "sub_orchestration_failure_propagation",
    "continue_as_new_loop_with_carried_events",
    "retries_until_success",
    "retries_stop_on_non_retriable",
    "activity_failure_handled",
    "activity_failure_unhandled",
    "terminate_running",
    "terminate_suspended",
    "terminate_pending",
    "suspend_resume",
    "custom_status",
    "recreate_instance",
    "purge_instance",
    "purge_by_filter",
    "query_paging",
    "non_determinism_detection",
    "invalid_instance_id_rejected",
    "exclusive_instance_lock_and_abandon",
    "operations_on_missing_instance_not_found",
    "operations_on_terminal_instance_invalid_status",
    "pending_instance_accepts_raise_and_terminate",
    "instance_id_validation_table",
    "special_character_ids_work",
    "oversized_message_refused",
    "concurrent_recreations",
    "purge_filter_types",
    "wait_for_completion_reads_payloads_once",
    "entity_counter_exactly_once",
    "entity_failing_operation_rolls_back",
    "entity_critical_sections_do_not_deadlock",
    "entity_scheduled_signal_waits",
    "entity_delete_query_and_clean_up",
    "entity_large_state",
    "entity_ids_are_not_orchestrations",
    "entity_operations_keep_sender_order",
];

/// Generates one `#[tokio::test]` per conformance function for the factory expression given.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            hello_sequence, history_shape, fan_out_fan_in, timers,
            external_event_after_wait, external_event_before_wait,
            external_event_timeout_with_select, send_event_between_instances,
            sub_orchestration_success, sub_orchestration_failure_propagation,
            continue_as_new_loop_with_carried_events, retries_until_success,
            retries_stop_on_non_retriable, activity_failure_handled, activity_failure_unhandled,
            terminate_running, terminate_suspended, terminate_pending, suspend_resume,
            custom_status, recreate_instance, purge_instance, purge_by_filter, query_paging,
            non_determinism_detection, invalid_instance_id_rejected,
            exclusive_instance_lock_and_abandon,
            operations_on_missing_instance_not_found,
            operations_on_terminal_instance_invalid_status,
            pending_instance_accepts_raise_and_terminate, instance_id_validation_table,
            special_character_ids_work, oversized_message_refused, concurrent_recreations,
            purge_filter_types, wait_for_completion_reads_payloads_once,
            entity_counter_exactly_once, entity_failing_operation_rolls_back,
            entity_critical_sections_do_not_deadlock, entity_scheduled_signal_waits,
            entity_delete_query_and_clean_up, entity_large_state,
            entity_ids_are_not_orchestrations, entity_operations_keep_sender_order,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::conformance::$name(&factory).await;
            }
        )*
    };
}
