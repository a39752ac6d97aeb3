//! Monitor: an eternal orchestration that checks, sleeps on a durable timer and continues as new,
//! bounded by its input (see `samples::monitor`).
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example monitor
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_worker_host::samples::{self, MonitorState};

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let worker = common::start_worker().await?;
    let client = worker.client();
    let id = client.start_orchestration(samples::MONITOR, &MonitorState::new(5, 500)).await?;
    let mut last = None;
    let state = loop {
        let s = client.get_state(&id).await?;
        if let Some(s) = &s {
            if s.status != last {
                println!("{id}: {} {}", s.orchestration_status, s.status.as_deref().unwrap_or(""));
                last.clone_from(&s.status);
            }
            if s.orchestration_status.is_terminal() {
                break s.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{id}: {} after {} checks", state.orchestration_status, state.output_as::<u32>()?);
    worker.shutdown().await?;
    Ok(())
}
