//! The operator tools of durabletask-rs: the `durabletask` CLI (hub create/info/delete/
//! partitions/poison, instances list/show/start/raise/terminate/suspend/resume/purge/history,
//! entities list/show/signal/clean) and the
//! `durabletask-demo` that `cargo xtask demo` runs, over the worker host's settings and the
//! Azure Storage provider. The library part holds what both binaries share.

#![warn(missing_docs, unreachable_pub)]

pub mod table;

/// Installs a log subscriber writing to stderr (stdout carries only a command's output),
/// filtered by `RUST_LOG` or else `default`, with colour codes only when stderr is a terminal.
/// Does nothing if a subscriber is already installed.
pub fn init_stderr_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
