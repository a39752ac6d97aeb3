//! One-call tracing setup for binaries and examples. Libraries never install a subscriber.

use tracing_subscriber::EnvFilter;

/// Installs a `fmt` subscriber filtered by `RUST_LOG` (default `info`; `warn` for the Azure SDK
/// and HTTP stack, which are chatty at `info`), writing to stderr (stdout stays free for a
/// program's output), with colours only when stderr is a terminal. Returns an error if a global
/// subscriber is already installed.
pub fn init_tracing() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,azure_core=warn,reqwest=warn,hyper=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
}
