//! Benchmarks for durabletask-rs: what a workload costs in wall time, throughput,
//! storage operations (by kind) and memory, on the in-memory provider and on the Azure Storage
//! provider (Azurite or a real account).
//!
//! Workloads (sizes at `scale = 1`):
//!
//! * **W1** 1000 orchestrations of 3 sequential activities ("hello cities").
//! * **W2** one orchestration fanning out 1000 activities and fanning in.
//! * **W3** 100 orchestrations each waiting for 10 external events raised by the client.
//! * **W4** one orchestration of 200 sequential activities; per-activity cost of the first 50 vs
//!   the last 50 shows whether cost grows with history length.
//! * **W5** start-to-completion latency of a 1-activity orchestration on an idle hub, 50 runs.
//! * **E1** 2000 signals from the client to one counter entity (a hot entity): entity
//!   operations/s, compared with the 64 operations/s on one entity that Durable Functions
//!   publishes as its target.
//! * **E2** the same 2000 signals spread round-robin over 100 counter entities.
//!
//! E1 and E2 end when every counter shows exactly the signals sent to it (a counter that goes
//! past that, or does not get there, fails the workload). They report storage operations per
//! entity operation and operations per checkpointed batch.
//!
//! Every workload gets a fresh task hub and runs worker and client in this process. With the
//! Azure provider a raw capacity probe of the storage account ([`probe`]) turns the measured
//! operations per orchestration into a throughput bound ([`report::Bound`]).
//!
//! The `dtbench` binary is the command line; `cargo xtask bench` runs it on both providers.

pub mod backend;
pub mod probe;
pub mod report;
pub mod sys;
pub mod workloads;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use backend::{AzureBackend, Backend, BenchHub, MemoryBackend};
pub use report::{BenchReport, WorkloadResult};
pub use workloads::run;

/// Failures of a benchmark run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] durabletask_core::ProviderError),
    /// The client failed.
    #[error(transparent)]
    Client(#[from] durabletask_core::ClientError),
    /// A direct storage call (capacity probe) failed.
    #[error(transparent)]
    Storage(#[from] durabletask_azure_storage::storage::StorageError),
    /// The Azure provider could not be configured.
    #[error(transparent)]
    Azure(#[from] durabletask_azure_storage::Error),
    /// Writing the JSON report failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An orchestration ended in an unexpected state or produced a wrong result, or an entity
    /// counter did not end at the signals sent to it.
    #[error("workload {workload}: {message}")]
    Workload {
        /// The workload.
        workload: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A bad flag or setting.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One of the workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// 1000 orchestrations × 3 sequential activities.
    W1,
    /// One orchestration, 1000 activities fanned out and in.
    W2,
    /// 100 orchestrations × 10 external events.
    W3,
    /// One orchestration of 200 sequential activities.
    W4,
    /// Start-to-completion latency on an idle hub.
    W5,
    /// Client signals to one hot counter entity.
    E1,
    /// Client signals spread over 100 counter entities.
    E2,
}

impl Workload {
    /// All workloads in order.
    pub const ALL: [Workload; 7] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::E1,
        Workload::E2,
    ];

    /// `"W1"` ...
    pub fn id(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::W5 => "W5",
            Workload::E1 => "E1",
            Workload::E2 => "E2",
        }
    }

    /// Whether this is a durable-entity workload (E1, E2).
    pub fn is_entity(self) -> bool {
        matches!(self, Workload::E1 | Workload::E2)
    }

    /// One-line description.
    pub fn description(self) -> &'static str {
        match self {
            Workload::W1 => "orchestrations x 3 sequential activities (hello cities)",
            Workload::W2 => "one orchestration, activities fanned out and in",
            Workload::W3 => "orchestrations x 10 external events raised by the client",
            Workload::W4 => "one orchestration of sequential activities (history growth)",
            Workload::W5 => "start-to-completion latency, 1 activity, idle hub",
            Workload::E1 => "client signals to one counter entity (hot entity)",
            Workload::E2 => "client signals round-robin over 100 counter entities",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for Workload {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "W1" => Ok(Workload::W1),
            "W2" => Ok(Workload::W2),
            "W3" => Ok(Workload::W3),
            "W4" => Ok(Workload::W4),
            "W5" => Ok(Workload::W5),
            "E1" => Ok(Workload::E1),
            "E2" => Ok(Workload::E2),
            other => Err(Error::Config(format!("unknown workload '{other}' (W1..W5, E1, E2)"))),
        }
    }
}

/// Parses `"W1,W3,E1"` (or `"all"`).
///
/// # Errors
/// [`Error::Config`] on an unknown name or an empty list.
pub fn parse_workloads(list: &str) -> Result<Vec<Workload>> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok(Workload::ALL.to_vec());
    }
    let mut out: Vec<Workload> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Workload::from_str)
        .collect::<Result<_>>()?;
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(Error::Config("no workload selected".to_owned()));
    }
    Ok(out)
}

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Multiplies every workload size (1.0 = the sizes; 0.1 = a quick smoke run).
    pub scale: f64,
    /// The workloads to run, in order.
    pub workloads: Vec<Workload>,
    /// Idle gap before each W5 run, so the hub is idle when the orchestration starts.
    pub w5_idle: Duration,
    /// Longest wait for any one workload to finish.
    pub timeout: Duration,
    /// Seconds per phase of the capacity probe (Azure only; 0 disables the probe).
    pub probe_seconds: f64,
    /// Concurrent tasks of the capacity probe (`None`: the provider's storage concurrency).
    pub probe_concurrency: Option<usize>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            scale: 1.0,
            workloads: Workload::ALL.to_vec(),
            w5_idle: Duration::from_millis(500),
            timeout: Duration::from_secs(600),
            probe_seconds: 3.0,
            probe_concurrency: None,
        }
    }
}

impl BenchConfig {
    /// `base × scale`, at least `min`.
    pub fn scaled(&self, base: usize, min: usize) -> usize {
        let n = (base as f64 * self.scale).round();
        if n.is_finite() && n >= min as f64 { n as usize } else { min }
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0 && self.scale <= 100.0) {
            return Err(Error::Config(format!("scale must be in (0, 100], got {}", self.scale)));
        }
        if !(self.probe_seconds.is_finite() && (0.0..=600.0).contains(&self.probe_seconds)) {
            return Err(Error::Config(format!(
                "probe seconds must be in [0, 600], got {}",
                self.probe_seconds
            )));
        }
        if self.probe_concurrency == Some(0) {
            return Err(Error::Config("probe concurrency must be at least 1".to_owned()));
        }
        if self.workloads.is_empty() {
            return Err(Error::Config("no workload selected".to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_lists() {
        assert_eq!(parse_workloads("W3,w1").unwrap(), vec![Workload::W1, Workload::W3]);
        assert_eq!(
            parse_workloads("e2,W5,E1").unwrap(),
            vec![Workload::W5, Workload::E1, Workload::E2]
        );
        assert_eq!(parse_workloads("all").unwrap(), Workload::ALL.to_vec());
        assert!(Workload::E1.is_entity() && !Workload::W1.is_entity());
        assert!(parse_workloads("W9").is_err());
        assert!(parse_workloads(",").is_err());
    }

    #[test]
    fn scales_sizes_with_a_floor() {
        let cfg = BenchConfig { scale: 0.01, ..BenchConfig::default() };
        assert_eq!(cfg.scaled(1000, 1), 10);
        assert_eq!(cfg.scaled(100, 1), 1);
        assert_eq!(cfg.scaled(50, 3), 3);
        assert!(BenchConfig { scale: 0.0, ..BenchConfig::default() }.validate().is_err());
    }
}
