//! Human interaction: an external event raced with a durable timer (see
//! `samples::human_interaction`). One instance is approved, the other times out.
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example human_interaction
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_core::OrchestrationStatus;
use durabletask_worker_host::samples::{self, Approval, ApprovalRequest};

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let worker = common::start_worker().await?;
    let client = worker.client();
    let approved = client
        .start_orchestration(
            samples::HUMAN_INTERACTION,
            &ApprovalRequest { approver: "alice".into(), timeout_ms: 60_000 },
        )
        .await?;
    let ignored = client
        .start_orchestration(
            samples::HUMAN_INTERACTION,
            &ApprovalRequest { approver: "bob".into(), timeout_ms: 2_000 },
        )
        .await?;
    // Wait until alice's instance runs, then approve (an earlier event would be buffered too).
    loop {
        let s = client.get_state(&approved).await?;
        if s.is_some_and(|s| s.orchestration_status == OrchestrationStatus::Running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .raise_event(
            &approved,
            samples::APPROVAL_EVENT,
            &Approval { approved: true, by: "alice".into() },
        )
        .await?;
    for id in [approved, ignored] {
        let s = client.wait_for_completion(&id, Duration::from_secs(60)).await?;
        println!("{id}: {}", s.output_as::<String>()?);
    }
    worker.shutdown().await?;
    Ok(())
}
