//! Azurite lifecycle: install the pinned npm package under `target/`, start it on free loopback ports
//! with in-memory persistence and no telemetry, wait until blob, queue and table answer, and stop
//! exactly the process that was started (by recorded pid).

use crate::{project_root, run_cmd};
use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The well-known Azurite development account (public, documented by Microsoft; not a secret).
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite, as recorded in `target/azurite/run/state.json`.
#[derive(Debug, Clone)]
pub(crate) struct AzuriteEnv {
    pub(crate) pid: u32,
    pub(crate) blob_port: u16,
    pub(crate) queue_port: u16,
    pub(crate) table_port: u16,
}

impl AzuriteEnv {
    pub(crate) fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};\
             BlobEndpoint=http://127.0.0.1:{}/{ACCOUNT};QueueEndpoint=http://127.0.0.1:{}/{ACCOUNT};\
             TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.blob_port, self.queue_port, self.table_port
        )
    }

    /// The variables the test suites read (see `durabletask_testkit::azurite`).
    pub(crate) fn test_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DTF_TEST_AZURITE", "1".to_owned()),
            ("DTF_TEST_STORAGE_CONNECTION_STRING", self.connection_string()),
        ]
    }

    fn ports(&self) -> [u16; 3] {
        [self.blob_port, self.queue_port, self.table_port]
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "pid": self.pid,
            "blob_port": self.blob_port,
            "queue_port": self.queue_port,
            "table_port": self.table_port,
        })
        .to_string()
    }

    fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let num = |key: &str| -> Result<u64> {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("state has no {key}"))
        };
        Ok(Self {
            pid: u32::try_from(num("pid")?)?,
            blob_port: u16::try_from(num("blob_port")?)?,
            queue_port: u16::try_from(num("queue_port")?)?,
            table_port: u16::try_from(num("table_port")?)?,
        })
    }
}

fn base_dir() -> PathBuf {
    project_root().join("target").join("azurite")
}
fn run_dir() -> PathBuf {
    base_dir().join("run")
}
fn state_file() -> PathBuf {
    run_dir().join("state.json")
}
pub(crate) fn log_file() -> PathBuf {
    run_dir().join("azurite.log")
}

/// Installs the pinned Azurite (from `xtask/azurite/package-lock.json`) under `target/azurite/install`,
/// unless the same lockfile was installed already. Returns the path of the `azurite` executable.
pub(crate) fn install() -> Result<PathBuf> {
    let source = project_root().join("xtask").join("azurite");
    let install = base_dir().join("install");
    let bin = install.join("node_modules").join(".bin").join("azurite");
    let lock = std::fs::read_to_string(source.join("package-lock.json"))
        .context("xtask/azurite/package-lock.json is missing")?;
    let stamp = install.join("installed-lock.json");
    if bin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        return Ok(bin);
    }
    std::fs::create_dir_all(&install)?;
    std::fs::copy(source.join("package.json"), install.join("package.json"))?;
    std::fs::write(install.join("package-lock.json"), &lock)?;
    run_cmd(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&install),
    )
    .context("installing Azurite with npm (node and npm must be on PATH)")?;
    if !bin.exists() {
        bail!("npm ci finished but {} does not exist", bin.display());
    }
    std::fs::write(&stamp, &lock)?;
    Ok(bin)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// An Azurite started by this process; stopping it is the caller's job ([`Guard`] does it on drop).
pub(crate) struct Started {
    pub(crate) env: AzuriteEnv,
    child: Child,
}

/// Log of the scoped instance this process started, if any (for `log_tail`).
static SCOPED_LOG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Spawns Azurite and waits until all three services accept connections. `detach` puts it in its own
/// process group so it outlives `cargo xtask azurite start`.
fn spawn(detach: bool) -> Result<Started> {
    let bin = install()?;
    // A detached instance is *the* recorded one (`state.json`); a scoped one (test, demo) lives in
    // its own directory and never touches the record, so it cannot orphan a detached instance.
    let dir =
        if detach { run_dir() } else { base_dir().join(format!("scoped-{}", std::process::id())) };
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("azurite.log");
    if !detach {
        let _ = SCOPED_LOG.set(log_path.clone());
    }
    let mut last_err = None;
    for _attempt in 0..3 {
        let (blob, queue, table) = (free_port()?, free_port()?, free_port()?);
        if blob == queue || queue == table || blob == table {
            continue;
        }
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--silent",
            "--disableTelemetry",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
        ])
        .args(["--blobHost", "127.0.0.1", "--blobPort", &blob.to_string()])
        .args(["--queueHost", "127.0.0.1", "--queuePort", &queue.to_string()])
        .args(["--tableHost", "127.0.0.1", "--tablePort", &table.to_string()])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        if std::env::var_os("DTF_AZURITE_DEBUG").is_some() {
            cmd.arg("--debug").arg(dir.join("debug.log"));
        }
        if detach {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
        let env =
            AzuriteEnv { pid: child.id(), blob_port: blob, queue_port: queue, table_port: table };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                last_err = Some(anyhow::anyhow!(
                    "Azurite exited early with {status}; log:\n{}",
                    log_tail(40)
                ));
                break;
            }
            if env.ports().iter().all(|p| answers(*p)) {
                if detach {
                    std::fs::write(state_file(), env.to_json())?;
                }
                return Ok(Started { env, child });
            }
            if Instant::now() > deadline {
                kill_pid(env.pid);
                let _ = child.wait();
                last_err = Some(anyhow::anyhow!(
                    "Azurite did not answer on ports {:?} within 30 s; log:\n{}",
                    env.ports(),
                    log_tail(40)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("could not find three free ports")))
}

/// `cargo xtask azurite start`: idempotent; a running recorded instance is reused.
pub(crate) fn start() -> Result<AzuriteEnv> {
    if let Some(env) = running()? {
        return Ok(env);
    }
    let started = spawn(true)?;
    // The detached child outlives us; it is stopped by `cargo xtask azurite stop` (by pid).
    std::mem::forget(started.child);
    Ok(started.env)
}

/// Starts a private Azurite for the duration of the returned guard (used by `test` and `demo`).
pub(crate) fn start_scoped() -> Result<Guard> {
    Ok(Guard { started: Some(spawn(false)?) })
}

/// Stops its Azurite when dropped, including on error paths and panics.
pub(crate) struct Guard {
    started: Option<Started>,
}

impl Guard {
    pub(crate) fn env(&self) -> Option<&AzuriteEnv> {
        self.started.as_ref().map(|s| &s.env)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut started) = self.started.take() {
            terminate(started.env.pid);
            let _ = started.child.wait();
            eprintln!("xtask: Azurite (pid {}) stopped", started.env.pid);
        }
    }
}

/// The recorded Azurite, if its process is still alive and is Azurite.
pub(crate) fn running() -> Result<Option<AzuriteEnv>> {
    let Ok(text) = std::fs::read_to_string(state_file()) else { return Ok(None) };
    let env = AzuriteEnv::from_json(&text)?;
    if is_our_azurite(env.pid) { Ok(Some(env)) } else { Ok(None) }
}

/// `cargo xtask azurite stop`: stops only the recorded pid; succeeds when nothing is running.
pub(crate) fn stop() -> Result<()> {
    match running()? {
        Some(env) => {
            terminate(env.pid);
            println!("Azurite (pid {}) stopped.", env.pid);
        }
        None => println!("Azurite is not running."),
    }
    let _ = std::fs::remove_file(state_file());
    Ok(())
}

pub(crate) fn status() -> Result<ExitCode> {
    match running()? {
        Some(env) => {
            let up = env.ports().iter().all(|p| answers(*p));
            println!(
                "Azurite pid {} blob:{} queue:{} table:{} {}",
                env.pid,
                env.blob_port,
                env.queue_port,
                env.table_port,
                if up { "answering" } else { "NOT answering" }
            );
            Ok(if up { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        None => {
            println!("Azurite is not running.");
            Ok(ExitCode::from(3))
        }
    }
}

fn is_our_azurite(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("azurite"))
        .unwrap_or(false)
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// SIGTERM, then SIGKILL if the process has not gone after 5 s. Only ever called with a pid we
/// spawned and verified to be Azurite.
fn terminate(pid: u32) {
    if !is_our_azurite(pid) {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !is_our_azurite(pid) || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_pid(pid);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// The last `lines` lines of Azurite's output, for failure reports.
pub(crate) fn log_tail(lines: usize) -> String {
    let path = SCOPED_LOG.get().cloned().unwrap_or_else(log_file);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
