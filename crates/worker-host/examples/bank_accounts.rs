//! Bank accounts with durable entities (see `samples::account` and `samples::BANK_TRANSFER`):
//! each account is an `Account` entity; a transfer locks both accounts (a critical section), so
//! concurrent transfers in opposite directions neither deadlock nor lose money.
//!
//! ```sh
//! DTF_USE_EMULATOR=1 cargo run -p durabletask-worker-host --example bank_accounts
//! ```
#![allow(clippy::print_stdout)]

mod common;

use std::time::Duration;

use durabletask_core::EntityId;
use durabletask_core::client::EntityQuery;
use durabletask_worker_host::samples::{self, TransferOutcome, TransferRequest};

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let worker = common::start_worker().await?;
    let client = worker.client();

    // Two transfers that open their own pair of accounts: one that fits, one that does not.
    let ok = client
        .start_orchestration(samples::BANK_TRANSFER, &TransferRequest { opening: 100, amount: 30 })
        .await?;
    let too_much = client
        .start_orchestration(samples::BANK_TRANSFER, &TransferRequest { opening: 10, amount: 50 })
        .await?;
    for id in [&ok, &too_much] {
        let s = client.wait_for_completion(id, Duration::from_secs(60)).await?;
        let out: TransferOutcome = s.output_as()?;
        println!(
            "{id}: transferred={} checking={} savings={}",
            out.transferred, out.from_balance, out.to_balance
        );
    }

    // The client can signal entities and read them too.
    let checking = EntityId::new(samples::ACCOUNT, format!("{ok}-checking"));
    client.signal_entity(&checking, "deposit", &5).await?;
    loop {
        let balance = client.get_entity::<i64>(&checking).await?.and_then(|m| m.state);
        if balance == Some(75) {
            println!("{checking}: 75 after a client deposit of 5");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = client
        .query_entities::<i64>(&EntityQuery {
            name_prefix: Some(samples::ACCOUNT.into()),
            include_state: true,
            ..EntityQuery::default()
        })
        .await?;
    for m in page.entities {
        println!("  {} balance={:?} locked_by={:?}", m.id, m.state, m.locked_by);
    }
    worker.shutdown().await?;
    Ok(())
}
