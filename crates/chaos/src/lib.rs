//! Reliability harness for durabletask-rs: fault injection, process kills and stalls, an
//! independent activity ledger, an end-of-run auditor and the scenarios built from them.
//!
//! * [`ledger`]: an activity ledger independent of the framework: every activity execution
//!   appends a row to a table of its own, so duplicate executions are counted from outside; and
//!   the signal ledger of the entity scenario (every entity operation a sender issued, with what
//!   the sender knows of its fate).
//! * [`workload`]: the mixed workload `W(N)` (chains, fan-outs, timers, sub-orchestrations,
//!   some with payloads large enough for blobs) with outputs computable in advance.
//! * [`audit`]: the end-of-run auditor: terminal states and outputs, nothing stuck, History and
//!   Instances agree, ledger vs history, orphaned large-message blobs after purge.
//! * [`procs`]: `chaos_worker` child processes the harness can SIGKILL, SIGSTOP and SIGCONT.
//! * [`scenarios`]: crash points, process kills, lease races, storage faults, reordering, poison
//!   messages, bad input and clock jumps, each returning a [`scenarios::ScenarioReport`].
//! * [`storm`]: the start storm (duplicate, stale and re-sent starts, concurrent
//!   recreations, events and terminates to missing and completed instances, continue-as-new
//!   loops with large payloads), shared by its scenario and the soak mode.
//! * [`entities`]: the entity scenario: counters that record every applied operation by tag,
//!   signalled and called by a faulty client and by orchestrations while their worker processes
//!   are SIGKILLed and kill themselves at crash points, audited against a [`ledger::SignalLedger`].
//! * [`soak`]: the soak mode of `cargo xtask stress --soak`: one worker, rounds of mixed traffic,
//!   stats and blob counts sampled every 10 s, a flatness verdict.
//! * [`logs`]: a tracing layer that counts the provider's well-known log events
//!   (`SplitBrainDetected`, `PoisonMessageDetected`, ...).

pub mod audit;
pub mod entities;
pub mod ledger;
pub mod logs;
pub mod procs;
pub mod scenarios;
pub mod setup;
pub mod soak;
pub mod storm;
pub mod workload;

use durabletask_azure_storage::storage::StorageError;
use durabletask_core::{ClientError, ProviderError};

/// A harness failure (not an audit finding: those are in the reports).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The client failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A direct storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The provider could not be built.
    #[error(transparent)]
    Setup(#[from] durabletask_azure_storage::Error),
    /// A child process could not be started or signalled.
    #[error("process: {0}")]
    Io(#[from] std::io::Error),
    /// The scenario could not run as designed.
    #[error("{0}")]
    Harness(String),
}

/// Result of harness operations.
pub type Result<T, E = ChaosError> = std::result::Result<T, E>;
