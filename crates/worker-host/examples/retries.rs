//! Retries: an activity that fails its first attempts, retried by a `RetryPolicy` with durable
//! timers in between (see `samples::retries`).
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example retries -- 3
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_core::EventType;
use durabletask_worker_host::samples;

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let fail_times: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(2);
    let worker = common::start_worker().await?;
    let client = worker.client();
    let id = client.start_orchestration(samples::RETRIES, &fail_times).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await?;
    let history = client.get_history(&id).await?;
    let failures = history.iter().filter(|e| e.event_type() == EventType::TaskFailed).count();
    println!(
        "{id}: {} on attempt {} after {failures} failed attempts",
        state.orchestration_status,
        state.output_as::<u32>()?
    );
    worker.shutdown().await?;
    Ok(())
}
