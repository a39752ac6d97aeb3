//! `chaos_worker`: one worker process of the chaos harness. Reads `DTF_CHAOS_CONNECTION_STRING`,
//! `DTF_CHAOS_HUB` and `DTF_CHAOS_WORKER_ID`, registers the workload and runs until killed
//! (SIGKILL/SIGSTOP are the point; SIGINT/SIGTERM stop it gracefully).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary reports on stderr

use durabletask_azure_storage::TaskHubName;
use durabletask_chaos::ledger::Ledger;
use durabletask_chaos::setup::{
    CONNECTION_STRING_VAR, ChaosEnv, HUB_VAR, Node, NodeSpec, WORKER_ID_VAR, chaos_settings,
};
use std::sync::Arc;
use std::time::Duration;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

async fn run() -> Result<(), String> {
    durabletask_chaos::logs::init();
    let env = ChaosEnv::new(&var(CONNECTION_STRING_VAR)?).map_err(|e| e.to_string())?;
    let hub = TaskHubName::new(var(HUB_VAR)?).map_err(|e| e.to_string())?;
    let worker = var(WORKER_ID_VAR)?;
    let ledger = Arc::new(Ledger::new(env.storage(), &hub, &worker));
    let spec = NodeSpec::new(chaos_settings(&hub, &worker));
    let node = Node::start(&env, spec, &ledger).await.map_err(|e| e.to_string())?;
    tracing::warn!(worker = %worker, pid = std::process::id(), "chaos_worker started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    node.stop(Duration::from_secs(20)).await.map_err(|e| e.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos_worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
