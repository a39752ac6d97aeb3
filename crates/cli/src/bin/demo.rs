//! `durabletask-demo`, what `cargo xtask demo` runs: creates a task hub, starts a worker with the
//! samples, starts one instance of each sample, raises the approval event, shows progress, prints
//! a table of the results and exits non-zero if any sample did not produce its expected output.
//!
//! Storage comes from `DTF_*` variables (`cargo xtask demo` points them at a private Azurite and
//! passes `--ephemeral`: the storage goes away when the demo ends, so no inspection hint).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout/stderr

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use durabletask_cli::table::{Table, human_duration};
use durabletask_core::{OrchestrationState, OrchestrationStatus, StartOptions};
use durabletask_worker_host::{HostSettings, TaskHubWorker, samples};
use indicatif::{ProgressBar, ProgressStyle};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound for the whole run; the samples need a few seconds.
const DEADLINE: Duration = Duration::from_secs(50);

#[tokio::main]
async fn main() -> ExitCode {
    durabletask_cli::init_stderr_logging("warn");
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Quick polling and partition pick-up unless the environment says otherwise.
fn demo_settings() -> Result<HostSettings, BoxError> {
    let mut settings = HostSettings::from_env()?;
    let set = |k: &str| std::env::var_os(k).is_some();
    let p = &mut settings.provider;
    if !set("DTF_MAX_QUEUE_POLLING_INTERVAL_MS") {
        p.max_queue_polling_interval = Duration::from_millis(500);
    }
    if !set("DTF_LEASE_ACQUIRE_INTERVAL_SECS") {
        p.lease_acquire_interval = Duration::from_secs(1);
    }
    p.validate()?;
    Ok(settings)
}

/// The durable entities this run created (the bank transfer's two accounts).
async fn print_entities(
    client: &durabletask_core::TaskHubClient,
    run_id: &str,
) -> Result<(), BoxError> {
    let query = durabletask_core::client::EntityQuery {
        name_prefix: Some(samples::ACCOUNT.into()),
        include_state: true,
        ..Default::default()
    };
    let page = client.query_entities::<serde_json::Value>(&query).await?;
    let mut table = Table::new(["ENTITY", "STATE", "LOCKED BY"]);
    for m in page.entities.iter().filter(|m| m.id.key().contains(run_id)) {
        let state = m.state.as_ref().map(ToString::to_string).unwrap_or_default();
        table.row([m.id.to_string(), state, m.locked_by.clone().unwrap_or_default()]);
    }
    println!("Entities:\n{}", table.render());
    Ok(())
}

async fn run() -> Result<bool, BoxError> {
    let settings = demo_settings()?;
    let hub = settings.provider.task_hub_name.as_str().to_owned();
    let begun = Instant::now();
    println!(
        "Starting a worker on task hub {hub} ({} partitions)...",
        settings.provider.partition_count
    );
    let worker = TaskHubWorker::builder(settings)
        .registry(samples::register_all)
        .drain_timeout(Duration::from_secs(5))
        .start()
        .await?;
    let client = worker.client();

    let run_id = &durabletask_core::new_execution_id()[..8];
    let plan = samples::demo_plan(&format!("demo-{run_id}-"));
    let mut started_at = BTreeMap::new();
    for run in &plan {
        let opts = StartOptions::with_instance_id(run.instance_id.clone());
        client.schedule_new_orchestration(run.orchestration, &run.input, opts).await?;
        started_at.insert(run.instance_id.clone(), Instant::now());
    }

    let bar = ProgressBar::new(u64::try_from(plan.len()).unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));

    let mut finished: BTreeMap<String, (OrchestrationState, Duration)> = BTreeMap::new();
    let mut raised = BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    while finished.len() < plan.len() && Instant::now() < deadline {
        for run in &plan {
            if finished.contains_key(&run.instance_id) {
                continue;
            }
            let Some(state) = client.get_state(&run.instance_id).await? else { continue };
            if let Some((event, payload)) = &run.event
                && state.orchestration_status == OrchestrationStatus::Running
                && raised.insert(run.instance_id.clone())
            {
                client.raise_event(&run.instance_id, event, payload).await?;
                bar.suspend(|| println!("  raised {event} on {}", run.instance_id));
            }
            if state.orchestration_status.is_terminal() {
                let took =
                    started_at.get(&run.instance_id).map(Instant::elapsed).unwrap_or_default();
                bar.suspend(|| {
                    println!(
                        "  {} {} {} in {}",
                        run.orchestration,
                        run.instance_id,
                        state.orchestration_status,
                        human_duration(took)
                    );
                });
                bar.inc(1);
                bar.set_message(format!("{} done", run.orchestration));
                finished.insert(run.instance_id.clone(), (state, took));
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    bar.finish_and_clear();

    let mut table =
        Table::new(["INSTANCE", "ORCHESTRATION", "STATUS", "DURATION", "OUTPUT", "CHECK"]);
    let mut as_expected = 0;
    for run in &plan {
        let (status, took, output, ok) = match finished.get(&run.instance_id) {
            Some((s, took)) => {
                let out: Option<serde_json::Value> = s.output_as().ok();
                let ok = s.orchestration_status == OrchestrationStatus::Completed
                    && out.as_ref() == Some(&run.expected_output);
                (
                    s.orchestration_status.to_string(),
                    human_duration(*took),
                    s.output.clone().unwrap_or_default(),
                    ok,
                )
            }
            None => ("(not finished)".to_owned(), String::new(), String::new(), false),
        };
        as_expected += usize::from(ok);
        table.row([
            run.instance_id.clone(),
            run.orchestration.to_owned(),
            status,
            took,
            output,
            if ok { "ok".to_owned() } else { format!("FAILED (expected {})", run.expected_output) },
        ]);
    }
    println!("\n{}", table.render());
    print_entities(&client, run_id).await?;
    // Bounded, so a slow partition release never holds the demo up (leases then just expire).
    match tokio::time::timeout(Duration::from_secs(15), worker.shutdown()).await {
        Ok(result) => result?,
        Err(_) => eprintln!("demo: worker shutdown took over 15 s; leaving its leases to expire"),
    }
    println!(
        "{as_expected} of {} samples as expected in {}.",
        plan.len(),
        human_duration(begun.elapsed())
    );
    if !std::env::args().any(|a| a == "--ephemeral") {
        println!(
            "Inspect them with:\n  cargo run -p durabletask-cli --bin durabletask -- \
             --task-hub {hub} instances list"
        );
    }
    Ok(as_expected == plan.len())
}
