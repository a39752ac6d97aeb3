//! `cargo xtask bench [--memory-only | --azure-only] [--criterion] [-- DTBENCH-ARGS]`: builds
//! `dtbench` (crates/bench) in release mode, runs it on the in-memory provider, then starts a
//! private Azurite (always stopped again) and runs it on the Azure Storage provider. Each run
//! prints its tables and writes `target/bench/results-<provider>.json`. `--criterion` also runs the
//! criterion micro-benchmarks (`cargo bench` of durabletask-core `replay` and durabletask-testkit
//! `throughput`).

use crate::{azurite, cargo, describe, project_root, run_cmd};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

pub(crate) fn bench(args: &[&str]) -> Result<ExitCode> {
    let (flags, passthrough) = match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let (mut memory, mut azure, mut criterion) = (true, true, false);
    for flag in flags {
        match *flag {
            "--memory-only" => azure = false,
            "--azure-only" => memory = false,
            "--criterion" => criterion = true,
            other => bail!(
                "unknown flag for `cargo xtask bench`: {other} \
                 (usage: cargo xtask bench [--memory-only|--azure-only] [--criterion] [-- DTBENCH-ARGS])"
            ),
        }
    }
    if passthrough.iter().any(|a| *a == "--provider" || a.starts_with("--provider=")) {
        bail!("`cargo xtask bench` chooses --provider itself; use --memory-only or --azure-only");
    }

    run_cmd(cargo().args(["build", "--release", "-p", "durabletask-bench", "--bin", "dtbench"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    let dtbench = target.join("release").join("dtbench");
    if !dtbench.exists() {
        bail!("{} was not built", dtbench.display());
    }

    let mut failures = Vec::new();
    let mut outputs = Vec::new();
    if memory {
        let mut cmd = Command::new(&dtbench);
        cmd.args(["--provider", "memory"]).args(passthrough).current_dir(project_root());
        match run_cmd(&mut cmd) {
            Ok(()) => outputs.push(target.join("bench").join("results-memory.json")),
            Err(e) => failures.push(format!("memory: {e:#}")),
        }
    }
    if azure {
        // The guard stops Azurite on every path out of this block, errors and panics included.
        let guard = azurite::start_scoped()?;
        let env = guard.env().context("Azurite guard without environment")?;
        eprintln!(
            "xtask: Azurite pid {} on blob:{} queue:{} table:{}",
            env.pid, env.blob_port, env.queue_port, env.table_port
        );
        let mut cmd = Command::new(&dtbench);
        cmd.args(["--provider", "azure"])
            .args(passthrough)
            .envs(env.test_env())
            .current_dir(project_root());
        match run_cmd(&mut cmd) {
            Ok(()) => outputs.push(target.join("bench").join("results-azure.json")),
            Err(e) => {
                eprintln!("xtask: last lines of Azurite's log:\n{}", azurite::log_tail(40));
                failures.push(format!("azure: {e:#}"));
            }
        }
        drop(guard);
    }
    if criterion {
        for (pkg, bench) in [("durabletask-core", "replay"), ("durabletask-testkit", "throughput")]
        {
            let mut cmd = cargo();
            cmd.args(["bench", "-p", pkg, "--bench", bench]);
            if let Err(e) = run_cmd(&mut cmd) {
                failures.push(format!("{}: {e:#}", describe(&cmd)));
            }
        }
    }

    for out in &outputs {
        println!("xtask: results written to {}", out.display());
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("benchmark runs failed:\n  {}", failures.join("\n  "))
    }
}
