//! `sample_worker`: a worker process with every sample orchestration registered, configured from
//! `DTF_*` environment variables, running until SIGINT/SIGTERM. Several of them on one task hub
//! share its partitions (the multi-process test starts three).
//!
//! ```sh
//! DTF_USE_EMULATOR=1 DTF_TASK_HUB=Samples cargo run -p durabletask-worker-host --bin sample_worker
//! ```
//!
//! Prints `READY <worker id> <process identity>` on stdout once the dispatchers run, and
//! `OWNED <worker id> <control queues>` whenever the set of partitions it owns changes; logs go
//! to stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout/stderr

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use durabletask_worker_host::{HostSettings, TaskHubWorker, init_tracing, samples};

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = init_tracing() {
        eprintln!("sample_worker: cannot set up tracing: {e}");
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sample_worker: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let settings = HostSettings::from_env()?;
    let worker_id = settings.provider.worker_id.clone();
    let worker = TaskHubWorker::builder(settings).registry(samples::register_all).start().await?;
    println!("READY {worker_id} {}", samples::process_identity());
    std::io::stdout().flush()?;
    let reporter = worker.azure().cloned().map(|svc| {
        let worker_id = worker_id.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut ticks: u64 = 0;
            loop {
                let mut owned: Vec<String> = svc
                    .partition_manager()
                    .owned_partitions()
                    .into_iter()
                    .map(|p| p.control_queue)
                    .collect();
                owned.sort();
                ticks += 1;
                if ticks.is_multiple_of(20) {
                    // Every ~5 s: a one-line view of the provider, for a test that times out.
                    let st = svc.stats();
                    let pollers: Vec<String> = st
                        .control_queues
                        .iter()
                        .map(|q| {
                            format!(
                                "{}:{:?}/{:?}{}",
                                q.control_queue,
                                q.since_last_receive.map(|d| d.as_millis()),
                                q.paused_for.map(|d| d.as_millis()),
                                if q.fenced { "/fenced" } else { "" }
                            )
                        })
                        .collect();
                    println!(
                        "STATS {worker_id} held={} buffered={} in_flight={} busy={} prepared={} \
                         activities={} pollers=[{}]",
                        st.held_messages,
                        st.buffered_messages,
                        st.in_flight_messages,
                        st.busy_instances,
                        st.prepared_work_items,
                        st.active_activities,
                        pollers.join(" ")
                    );
                    let _ = std::io::stdout().flush();
                }
                if last.as_ref() != Some(&owned) {
                    println!("OWNED {worker_id} {}", owned.join(","));
                    let _ = std::io::stdout().flush();
                    last = Some(owned);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    worker.run_until_signal().await?;
    if let Some(r) = reporter {
        r.abort();
    }
    println!("STOPPED {worker_id}");
    Ok(())
}
