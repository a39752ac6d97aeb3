//! Fan-out/fan-in: `n` activities in parallel, their results summed (see
//! `samples::fan_out_fan_in`).
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example fan_out_fan_in -- 20
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_worker_host::samples;

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let n: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(10);
    let worker = common::start_worker().await?;
    let client = worker.client();
    let id = client.start_orchestration(samples::FAN_OUT_FAN_IN, &n).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(120)).await?;
    let sum: u64 = state.output_as()?;
    println!("{id}: sum of squares 1..={n} = {sum} ({})", state.orchestration_status);
    worker.shutdown().await?;
    Ok(())
}
