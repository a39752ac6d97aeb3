//! `chaos_worker`: one worker process of the chaos harness. Reads `DTF_CHAOS_CONNECTION_STRING`,
//! `DTF_CHAOS_HUB` and `DTF_CHAOS_WORKER_ID`, registers the workload and runs until killed
//! (SIGKILL/SIGSTOP are the point; SIGINT/SIGTERM stop it gracefully). Optionally
//! `DTF_CHAOS_FAULT_RATE` runs it over faulty storage, `DTF_CHAOS_CRASH_RATE` makes it SIGKILL
//! itself at checkpoint crash points, and `DTF_CHAOS_SEED` seeds both.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary reports on stderr

use durabletask_azure_storage::storage::fault::FaultyStorage;
use durabletask_azure_storage::{StorageStack, TaskHubName};
use durabletask_chaos::ledger::Ledger;
use durabletask_chaos::procs::SelfKill;
use durabletask_chaos::setup::{
    CONNECTION_STRING_VAR, CRASH_RATE_VAR, ChaosEnv, FAULT_RATE_VAR, HUB_VAR, Node, NodeSpec,
    SEED_VAR, WORKER_ID_VAR, chaos_settings, worker_fault_plan,
};
use std::sync::Arc;
use std::time::Duration;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn optional<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(v) => v.parse().map(Some).map_err(|_| format!("{name}={v:?} does not parse")),
        Err(_) => Ok(None),
    }
}

async fn run() -> Result<(), String> {
    durabletask_chaos::logs::init();
    let env = ChaosEnv::new(&var(CONNECTION_STRING_VAR)?).map_err(|e| e.to_string())?;
    let hub = TaskHubName::new(var(HUB_VAR)?).map_err(|e| e.to_string())?;
    let worker = var(WORKER_ID_VAR)?;
    let ledger = Arc::new(Ledger::new(env.storage(), &hub, &worker));
    let settings = chaos_settings(&hub, &worker);
    let seed: u64 = optional(SEED_VAR)?.unwrap_or(0);
    let fault_rate: f64 = optional(FAULT_RATE_VAR)?.unwrap_or(0.0);
    let crash_rate: f64 = optional(CRASH_RATE_VAR)?.unwrap_or(0.0);
    let mut spec = NodeSpec::new(settings.clone());
    if fault_rate > 0.0 {
        let base = StorageStack::azure(env.account(), &settings);
        let faulty = FaultyStorage::over(&base, worker_fault_plan(fault_rate, seed));
        spec.stack = Some(faulty.stack(&base));
    }
    if crash_rate > 0.0 {
        spec.crash_hook = Some(Arc::new(SelfKill::new(crash_rate, seed ^ 0x5eed)));
    }
    // Under storage faults the start itself (hub resources, partition manager) may fail.
    let mut attempt = 0;
    let node = loop {
        match Node::start(&env, spec.clone(), &ledger).await {
            Ok(node) => break node,
            Err(e) if fault_rate > 0.0 && attempt < 20 => {
                tracing::warn!(error = %e, attempt, "chaos_worker: start failed under faults; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    tracing::warn!(
        worker = %worker,
        pid = std::process::id(),
        fault_rate,
        crash_rate,
        seed,
        "chaos_worker started"
    );
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
