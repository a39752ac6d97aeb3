//! `chaos_worker` child processes: started with the hub in their environment, logging to a file
//! the harness scans afterwards, and signalled only by their own pid (never Azurite, never by
//! name).

use crate::setup::{CONNECTION_STRING_VAR, ChaosEnv, HUB_VAR, WORKER_ID_VAR};
use crate::{ChaosError, Result};
use durabletask_azure_storage::{CrashHook, CrashPoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};

/// One running `chaos_worker`.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    /// The worker id it runs as.
    pub worker_id: String,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `bin` for `hub` as `worker_id`, logging to `log_dir/{worker_id}.log` (appended, so
    /// a restarted worker keeps one log).
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn(
        bin: &Path,
        env: &ChaosEnv,
        hub: &str,
        worker_id: &str,
        log_dir: &Path,
    ) -> Result<Self> {
        Self::spawn_with(bin, env, hub, worker_id, log_dir, &[])
    }

    /// [`Self::spawn`] with extra environment variables (e.g. [`FAULT_RATE_VAR`],
    /// [`CRASH_RATE_VAR`], [`SEED_VAR`]; set after the defaults, so they override them).
    ///
    /// [`FAULT_RATE_VAR`]: crate::setup::FAULT_RATE_VAR
    /// [`CRASH_RATE_VAR`]: crate::setup::CRASH_RATE_VAR
    /// [`SEED_VAR`]: crate::setup::SEED_VAR
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn_with(
        bin: &Path,
        env: &ChaosEnv,
        hub: &str,
        worker_id: &str,
        log_dir: &Path,
        vars: &[(&str, String)],
    ) -> Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{worker_id}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = Command::new(bin);
        cmd.env(CONNECTION_STRING_VAR, env.connection_string())
            .env(HUB_VAR, hub)
            .env(WORKER_ID_VAR, worker_id)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(file)).spawn()?;
        Ok(Self { child, worker_id: worker_id.to_owned(), log })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(ChaosError::Harness(format!("kill {sig} {} failed: {status}", self.child.id())))
        }
    }

    /// SIGSTOP (the process freezes: a stop-the-world pause).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Never leave a worker behind (a paused one would not even see SIGTERM).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The crash hook of a `chaos_worker` started with [`CRASH_RATE_VAR`]: at every crash point
/// (after the outbound messages of a checkpoint were sent, after its history, after its
/// Instances row, after an activity's response), with probability `rate`, the process logs the
/// point and the instance and SIGKILLs itself. The work item is left exactly where a kill at that
/// point leaves it, and the harness sees a dead process to restart.
///
/// [`CRASH_RATE_VAR`]: crate::setup::CRASH_RATE_VAR
#[derive(Debug)]
pub struct SelfKill {
    rate: f64,
    rng: Mutex<StdRng>,
}

impl SelfKill {
    /// A hook killing at each crash point with probability `rate` (seeded).
    pub fn new(rate: f64, seed: u64) -> Self {
        Self { rate: rate.clamp(0.0, 1.0), rng: Mutex::new(StdRng::seed_from_u64(seed)) }
    }
}

/// The message a [`SelfKill`] logs just before the kill (the harness searches logs for it).
pub const SELF_KILL_LOG: &str = "chaos_worker: SIGKILL at crash point";

impl CrashHook for SelfKill {
    fn crash_at(&self, point: CrashPoint, instance_id: &str) -> bool {
        if point == CrashPoint::BeforeDelete {
            return false; // the same place as AfterInstances
        }
        let hit = self.rng.lock().unwrap_or_else(PoisonError::into_inner).gen_bool(self.rate);
        if !hit {
            return false;
        }
        let pid = std::process::id();
        tracing::warn!(instance_id, point = ?point, pid, "{SELF_KILL_LOG}");
        // Blocks this thread (the one in the checkpoint) until the signal lands.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::process::abort()
    }
}

/// The `chaos_worker` binary next to the running executable (`target/<profile>/`), for the
/// stress runner; tests use `env!("CARGO_BIN_EXE_chaos_worker")`.
///
/// # Errors
/// When it cannot be found.
pub fn sibling_worker_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| ChaosError::Harness("no exe dir".into()))?;
    for cand in [dir.join("chaos_worker"), dir.join("../chaos_worker")] {
        if cand.exists() {
            return Ok(cand);
        }
    }
    Err(ChaosError::Harness(format!("chaos_worker not found next to {}", exe.display())))
}
