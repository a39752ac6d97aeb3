//! Hello cities: three activities in sequence (see `samples::hello_cities`).
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example hello_cities
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_worker_host::samples;

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let worker = common::start_worker().await?;
    let client = worker.client();
    let id = client.start_orchestration(samples::HELLO_CITIES, &()).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await?;
    let greetings: Vec<String> = state.output_as()?;
    println!("{id}: {} -> {greetings:?}", state.orchestration_status);
    worker.shutdown().await?;
    Ok(())
}
