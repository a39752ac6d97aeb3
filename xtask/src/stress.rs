//! `cargo xtask stress [--light] [--seed=N] [--only=NAME[,NAME..]] [--soak[=MINUTES]]`: build the chaos
//! harness, start a private Azurite (or reuse the one `cargo xtask azurite start` left running),
//! run every reliability scenario with the heavy profile (`chaos_stress`, crates/chaos) and print
//! one summary line per scenario. `--soak[=MINUTES]` (default 30) runs the soak mode instead: one
//! worker, mixed traffic with the start storm, held/buffered/in-flight counts, poller receive ages
//! and the blob count sampled every 10 s, then a summary table and a flatness verdict.
//! The Azurite this command started is always stopped.

use crate::{azurite, cargo, run_cmd};
use anyhow::{Context, Result};
use std::process::ExitCode;

const PACKAGE: &str = "durabletask-chaos";

pub(crate) fn run(args: &[&str]) -> Result<ExitCode> {
    // Both binaries: chaos_stress spawns chaos_worker from the same target directory.
    run_cmd(cargo().args(["build", "-p", PACKAGE, "--bins"]))?;
    let guard;
    let env = match azurite::running()? {
        Some(env) => {
            eprintln!("xtask: using the running Azurite (pid {})", env.pid);
            env
        }
        None => {
            guard = azurite::start_scoped()?;
            let env = guard.env().context("Azurite guard without environment")?.clone();
            eprintln!(
                "xtask: Azurite pid {} on blob:{} queue:{} table:{}",
                env.pid, env.blob_port, env.queue_port, env.table_port
            );
            env
        }
    };
    let mut cmd = cargo();
    cmd.args(["run", "-q", "-p", PACKAGE, "--bin", "chaos_stress", "--"])
        .args(args)
        .env("DTF_CHAOS_CONNECTION_STRING", env.connection_string());
    if let Err(err) = run_cmd(&mut cmd) {
        eprintln!("xtask: stress failed; last lines of Azurite's log:\n{}", azurite::log_tail(40));
        return Err(err);
    }
    Ok(ExitCode::SUCCESS)
}
