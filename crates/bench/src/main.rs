//! `dtbench`: runs the issue-7 workloads and the entity workloads on one provider, prints the
//! tables and writes JSON.
//!
//! ```text
//! dtbench --provider memory [--scale 0.1] [--workload W1,W3,E1] [--out FILE]
//! DTF_TEST_STORAGE_CONNECTION_STRING=... dtbench --provider azure --scale 0.1
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout/stderr

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use durabletask_bench::report::TargetStatus;
use durabletask_bench::{AzureBackend, Backend, BenchConfig, MemoryBackend, parse_workloads};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Provider {
    /// durabletask-testkit's in-memory provider.
    Memory,
    /// The Azure Storage provider over DTF_TEST_STORAGE_CONNECTION_STRING or DTF_CONNECTION_STRING.
    Azure,
}

/// Benchmarks for durabletask-rs: throughput, latency, storage operations per orchestration and
/// per entity operation.
#[derive(Debug, Parser)]
#[command(name = "dtbench", version)]
struct Args {
    /// Which provider to run on.
    #[arg(long, value_enum, default_value = "memory")]
    provider: Provider,
    /// Multiplies every workload size (0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Comma-separated workloads (W1..W5, E1, E2) or "all".
    #[arg(long = "workload", default_value = "all")]
    workloads: String,
    /// Where the JSON goes (default: TARGET_DIR/bench/results-PROVIDER.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds per phase of the storage capacity probe (azure; 0 disables it).
    #[arg(long, default_value_t = 3.0)]
    probe_seconds: f64,
    /// Concurrent tasks in the capacity probe (default: the provider's storage concurrency).
    #[arg(long)]
    probe_concurrency: Option<usize>,
    /// Idle time before each W5 run, in ms.
    #[arg(long, default_value_t = 500)]
    w5_idle_ms: u64,
    /// Longest time any one workload may take, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Control-queue partitions of each azure task hub (default: the provider's default).
    #[arg(long)]
    partitions: Option<u8>,
    /// Buffered control-queue messages per azure worker before polling pauses (default: the
    /// provider's default); bounds the operations of one entity batch.
    #[arg(long)]
    control_queue_buffer_threshold: Option<usize>,
    /// Exit non-zero when a measured target is NOT MET.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dtbench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_out(provider: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // crates/bench -> workspace root
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.ancestors().nth(2).unwrap_or(manifest).join("target")
    });
    target.join("bench").join(format!("results-{provider}.json"))
}

fn connection_string() -> Result<String> {
    for var in ["DTF_TEST_STORAGE_CONNECTION_STRING", "DTF_CONNECTION_STRING"] {
        if let Ok(cs) = std::env::var(var)
            && !cs.trim().is_empty()
        {
            return Ok(cs);
        }
    }
    bail!(
        "--provider azure needs DTF_TEST_STORAGE_CONNECTION_STRING or DTF_CONNECTION_STRING \
         (`cargo xtask bench` starts Azurite and sets it)"
    )
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = BenchConfig {
        scale: args.scale,
        workloads: parse_workloads(&args.workloads)?,
        w5_idle: Duration::from_millis(args.w5_idle_ms),
        timeout: Duration::from_secs(args.timeout_secs),
        probe_seconds: args.probe_seconds,
        probe_concurrency: args.probe_concurrency,
    };
    cfg.validate()?;
    let backend: Box<dyn Backend> = match args.provider {
        Provider::Memory => Box::new(MemoryBackend::default()),
        Provider::Azure => {
            let mut b = AzureBackend::from_connection_string(&connection_string()?)
                .context("parsing the storage connection string")?;
            b.partition_count = args.partitions;
            b.control_queue_buffer_threshold = args.control_queue_buffer_threshold;
            Box::new(b)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let workloads: Vec<&str> = cfg.workloads.iter().map(|w| w.id()).collect();
    eprintln!(
        "dtbench: provider {}, scale {}, workloads {}",
        backend.name(),
        cfg.scale,
        workloads.join(",")
    );
    let report = runtime.block_on(durabletask_bench::run(backend.as_ref(), &cfg))?;
    let out = args.out.unwrap_or_else(|| default_out(backend.name()));
    report.write_json(&out)?;
    print!("{}", report.render());
    println!("\nJSON: {}", out.display());
    let failed: u64 = report.workloads.iter().map(|w| w.failed).sum();
    if failed > 0 {
        eprintln!("dtbench: {failed} orchestrations or workloads did not complete correctly");
        return Ok(ExitCode::FAILURE);
    }
    if args.strict && report.targets.iter().any(|t| t.status == TargetStatus::NotMet) {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
