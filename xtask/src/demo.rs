//! `cargo xtask demo`: build the demo binary, start a private Azurite (or reuse the one
//! `cargo xtask azurite start` left running), run `durabletask-demo` against it, and always stop
//! the Azurite this command started.

use crate::{azurite, cargo, run_cmd};
use anyhow::{Context, Result};
use std::process::ExitCode;

/// The demo binary (crates/worker-host/src/bin/demo.rs).
const PACKAGE: &str = "durabletask-cli";
const BIN: &str = "durabletask-demo";

/// `DTF_*` variables that would conflict with the Azurite connection the demo is given.
const CONFLICTING: &[&str] = &["DTF_USE_EMULATOR", "DTF_STORAGE_ACCOUNT", "DTF_CONNECTION_STRING"];

pub(crate) fn run(args: &[&str]) -> Result<ExitCode> {
    // Build before starting Azurite, so compile time does not count against it.
    run_cmd(cargo().args(["build", "-p", PACKAGE, "--bin", BIN]))?;

    // A running `cargo xtask azurite start` instance is reused (and left running); otherwise a
    // private one lives exactly as long as the guard.
    let guard;
    let mut ephemeral = false;
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
            ephemeral = true;
            env
        }
    };

    let hub = format!("Demo{}", std::process::id());
    let mut cmd = cargo();
    cmd.args(["run", "-q", "-p", PACKAGE, "--bin", BIN, "--"]).args(args);
    if ephemeral {
        cmd.arg("--ephemeral");
    }
    for key in CONFLICTING {
        cmd.env_remove(key);
    }
    cmd.env("DTF_CONNECTION_STRING", env.connection_string()).env("DTF_TASK_HUB", &hub);
    let result = run_cmd(&mut cmd);
    if let Err(err) = result {
        eprintln!(
            "xtask: the demo failed; last lines of Azurite's log:\n{}",
            azurite::log_tail(40)
        );
        return Err(err);
    }
    Ok(ExitCode::SUCCESS)
}
