//! Sub-orchestrations: a parent starts one child orchestration per city, in parallel (see
//! `samples::sub_orchestrations`).
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example sub_orchestrations
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_worker_host::samples;

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let worker = common::start_worker().await?;
    let client = worker.client();
    let cities = ["Paris", "Lima", "Cairo", "Oslo"];
    let id = client.start_orchestration(samples::SUB_ORCHESTRATIONS, &cities).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await?;
    println!("{id}: {} -> {:?}", state.orchestration_status, state.output_as::<Vec<String>>()?);
    worker.shutdown().await?;
    Ok(())
}
