//! `cargo xtask`: the one place that starts processes for durabletask-rs.
//!
//! ```text
//! cargo xtask azurite start|stop|status|env   manage a pinned, in-memory Azurite on free loopback ports
//! cargo xtask test [--external] [-- ARGS]     build, start Azurite, run every test, always stop Azurite
//! cargo xtask ci                              fmt --check, clippy -D warnings, cargo deny, test
//! cargo xtask bench [--criterion] [-- ARGS]  dtbench on the in-memory provider, then on Azurite
//! cargo xtask demo                            run the sample orchestrations against Azurite
//! cargo xtask stress [--light] [--seed=N]     reliability scenarios (heavy profile) on Azurite
//! cargo xtask stress --soak[=MINUTES]         one worker, mixed traffic, flatness verdict
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout/stderr

mod azurite;
mod bench;
mod ci;
mod demo;
mod stress;
mod structure;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <azurite start|stop|status|env | test [--external] [-- ARGS] | ci | demo | tidy | bench [--memory-only|--azure-only] [--criterion] [-- ARGS] | stress [--light] [--seed=N] [--only=NAME[,NAME..]] [--soak[=MINUTES]]>";

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["azurite", "start"] => {
            let env = azurite::start()?;
            println!("Azurite is running (pid {}).", env.pid);
            println!("{}", env.connection_string());
            Ok(ExitCode::SUCCESS)
        }
        ["azurite", "stop"] => {
            azurite::stop()?;
            Ok(ExitCode::SUCCESS)
        }
        ["azurite", "status"] => azurite::status(),
        ["azurite", "env"] => {
            let env = azurite::running()?
                .context("Azurite is not running; `cargo xtask azurite start` first")?;
            for (key, value) in env.test_env() {
                println!("export {key}='{value}'");
            }
            Ok(ExitCode::SUCCESS)
        }
        ["test", rest @ ..] => ci::test(rest),
        ["bench", rest @ ..] => bench::bench(rest),
        ["ci"] => ci::ci(),
        ["tidy"] => ci::tidy(),
        ["demo", rest @ ..] => ci::demo(rest),
        ["stress", rest @ ..] => stress::run(rest),
        _ => bail!("{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `cargo` as invoked by the user, with the variables `cargo run` set for xtask itself removed so
/// nested builds are not confused by them.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_CRATE_")
            || key == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(project_root());
    cmd
}

/// Runs a command, echoing it first; fails with its exit status.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
