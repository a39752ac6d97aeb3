//! `chaos_stress`: runs every chaos scenario with the heavy profile (or `--light`) against the
//! storage in `DTF_CHAOS_CONNECTION_STRING` and prints one summary line per scenario, then
//! `N passed, N failed`. `cargo xtask stress` starts Azurite and runs this.
//!
//! `--soak[=MINUTES]` (default 30) runs the soak mode instead: one worker, mixed traffic with
//! the start storm, a sample every 10 s, a summary table and a flatness verdict.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary reports on stdout

use durabletask_chaos::scenarios::{self, Profile};
use durabletask_chaos::setup::{CONNECTION_STRING_VAR, ChaosEnv};
use std::process::ExitCode;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    durabletask_chaos::logs::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = if args.iter().any(|a| a == "--light") { Profile::LIGHT } else { Profile::HEAVY };
    let seed = args
        .iter()
        .find_map(|a| a.strip_prefix("--seed="))
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let Ok(cs) = std::env::var(CONNECTION_STRING_VAR) else {
        eprintln!("chaos_stress: {CONNECTION_STRING_VAR} is not set (use `cargo xtask stress`)");
        return ExitCode::FAILURE;
    };
    let env = match ChaosEnv::new(&cs) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("chaos_stress: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bin = match durabletask_chaos::procs::sibling_worker_bin() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("chaos_stress: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(minutes) = soak_minutes(&args) {
        return soak(&env, minutes, seed).await;
    }
    println!("chaos_stress: profile={} seed={seed}", profile.name);
    // `--only=NAME[,NAME..]` runs the scenarios whose name starts with one of the NAMEs (e.g.
    // `--only=storage-faults` or `--only=crash,kill-workers`).
    let only = args.iter().find_map(|a| a.strip_prefix("--only="));
    let result = scenarios::run_all(&env, &bin, &profile, seed, only, |r| {
        println!("{r}");
        if !r.passed() {
            eprintln!("{}", r.explain());
        }
    })
    .await;
    match result {
        Ok(reports) => {
            let passed = reports.iter().filter(|r| r.passed()).count();
            println!("{passed} passed, {} failed", reports.len() - passed);
            if passed == reports.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("chaos_stress: harness error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--soak` (30 minutes) or `--soak=MINUTES`.
fn soak_minutes(args: &[String]) -> Option<f64> {
    args.iter().find_map(|a| {
        if a == "--soak" {
            Some(30.0)
        } else {
            a.strip_prefix("--soak=").and_then(|m| m.parse().ok())
        }
    })
}

async fn soak(env: &ChaosEnv, minutes: f64, seed: u64) -> ExitCode {
    let config = durabletask_chaos::soak::SoakConfig {
        duration: Duration::from_secs_f64(minutes * 60.0),
        sample_every: Duration::from_secs(10),
        seed,
    };
    println!("chaos_stress: soak {minutes} min, sample every 10 s, seed={seed}");
    let result = durabletask_chaos::soak::soak(env, config, |s| {
        println!(
            "  t={:>5.0}s held={} buffered={} in_flight={} leaked={} max_recv_age={:.1}s paused={} pollers={} blobs={} queued={} completed={} storage={:.1}s",
            s.at.as_secs_f64(),
            s.held,
            s.buffered,
            s.in_flight,
            s.leaked,
            s.max_receive_age.as_secs_f64(),
            s.paused,
            s.pollers,
            s.blobs,
            s.queued,
            s.completed,
            s.storage_latency.as_secs_f64()
        );
    })
    .await;
    match result {
        Ok(report) => {
            println!("{report}");
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("chaos_stress: harness error: {e}");
            ExitCode::FAILURE
        }
    }
}
