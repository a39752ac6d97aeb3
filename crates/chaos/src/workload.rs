//! The mixed workload `W(N)`. Instance `i` runs, by `i mod 4`:
//! a chain of 3 activities, a fan-out of 5 activities with fan-in, a 2 s durable timer then an
//! activity, or a sub-orchestration running the chain. Every tenth instance carries a ~50 KB
//! input, so its messages, rows and outputs go through large-message blobs. Activities are pure
//! (`step(x) = "s(" + x + ")"`), so every expected output is known in advance.

use crate::ledger::Ledger;
use durabletask_core::{
    ActivityContext, ActivityError, OrchestrationContext, RegistryBuilder, StartOptions,
    TaskHubClient,
};
use std::sync::Arc;
use std::time::Duration;

/// Activity name.
pub const STEP: &str = "ChaosStep";
/// Orchestration names.
pub const CHAIN: &str = "ChaosChain";
/// Fan-out / fan-in.
pub const FAN_OUT: &str = "ChaosFanOut";
/// Timer, then an activity.
pub const TIMER: &str = "ChaosTimer";
/// Sub-orchestration of a chain.
pub const PARENT: &str = "ChaosParent";
/// Continue-as-new loop: input `"{n}|{pad}"` continues as `"{n-1}|{pad}"` until `n` is 0, then
/// returns [`loop_output`]. A pad over 45 KiB puts every generation's start message, input and
/// output into large-message blobs.
pub const LOOP: &str = "ChaosLoop";

/// The input of a [`LOOP`] instance running `generations` generations.
pub fn loop_input(generations: u32, pad: &str) -> String {
    format!("{generations}|{pad}")
}

/// The output of a [`LOOP`] instance whose input carried `pad`.
pub fn loop_output(pad: &str) -> String {
    format!("done|{pad}")
}

/// The activity's function.
pub fn step(x: &str) -> String {
    format!("s({x})")
}

/// The workload's orchestrations and its activity, which records each execution in `ledger`,
/// plus the entity scenario's counter and orchestrations ([`crate::entities::register`]).
pub fn registry(ledger: Arc<Ledger>) -> RegistryBuilder {
    crate::entities::register(durabletask_core::Registry::builder())
        .activity(STEP, move |ctx: ActivityContext, x: String| {
            let ledger = ledger.clone();
            async move {
                ledger.record(&ctx).await.map_err(|e| ActivityError::new(e.to_string()))?;
                Ok(step(&x))
            }
        })
        .orchestration(CHAIN, |ctx: OrchestrationContext, seed: String| async move {
            let mut x = seed;
            for _ in 0..3 {
                x = ctx.call_activity(STEP, &x).await?;
            }
            Ok(x)
        })
        .orchestration(FAN_OUT, |ctx: OrchestrationContext, seed: String| async move {
            let calls: Vec<_> = (0..5)
                .map(|k| ctx.call_activity::<_, String>(STEP, &format!("{seed}/{k}")))
                .collect();
            let mut out = Vec::new();
            for r in OrchestrationContext::join_all(calls).await {
                out.push(r?);
            }
            Ok(out.join("|"))
        })
        .orchestration(TIMER, |ctx: OrchestrationContext, seed: String| async move {
            ctx.create_timer_after(Duration::from_secs(2)).await;
            let x: String = ctx.call_activity(STEP, &seed).await?;
            Ok(x)
        })
        .orchestration(LOOP, |ctx: OrchestrationContext, input: String| async move {
            let (n, pad) = input.split_once('|').unwrap_or(("0", input.as_str()));
            match n.parse::<u32>() {
                Ok(n) if n > 0 => {
                    ctx.continue_as_new(&loop_input(n - 1, pad));
                    Ok(String::new())
                }
                _ => Ok(loop_output(pad)),
            }
        })
        .orchestration(PARENT, |ctx: OrchestrationContext, seed: String| async move {
            let child = format!("{}-child", ctx.instance_id());
            let x: String = ctx.call_sub_orchestration_with_id(CHAIN, &child, &seed).await?;
            Ok(x)
        })
}

/// One planned instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: &'static str,
    /// Input (the seed).
    pub input: String,
    /// Expected output (the JSON-decoded string).
    pub output: String,
    /// Whether the harness starts it (sub-orchestrations are started by their parent).
    pub top_level: bool,
}

fn chain(seed: &str) -> String {
    step(&step(&step(seed)))
}

/// The planned instances of `W(n)` with ids `{prefix}-{i}`, sub-orchestration children included.
pub fn plan(prefix: &str, n: usize) -> Vec<Planned> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:04}");
        let mut seed = format!("{id}:seed");
        if i % 10 == 9 {
            // ~50 KB: over the 45 KB queue threshold and the 60 KB (UTF-16) table threshold.
            seed.push_str(&"L".repeat(50 * 1024));
        }
        let (name, output) = match i % 4 {
            0 => (CHAIN, chain(&seed)),
            1 => (
                FAN_OUT,
                (0..5).map(|k| step(&format!("{seed}/{k}"))).collect::<Vec<_>>().join("|"),
            ),
            2 => (TIMER, step(&seed)),
            _ => (PARENT, chain(&seed)),
        };
        if name == PARENT {
            out.push(Planned {
                instance_id: format!("{id}-child"),
                name: CHAIN,
                input: seed.clone(),
                output: output.clone(),
                top_level: false,
            });
        }
        out.push(Planned { instance_id: id, name, input: seed, output, top_level: true });
    }
    out
}

/// Starts every top-level planned instance (retrying transient client failures a few times:
/// a retried start with the same id is safe: it is de-duplicated).
///
/// # Errors
/// When a start keeps failing.
pub async fn start_all(client: &TaskHubClient, planned: &[Planned]) -> crate::Result<()> {
    for p in planned.iter().filter(|p| p.top_level) {
        let mut attempt = 0;
        loop {
            match client
                .schedule_new_orchestration(
                    p.name,
                    &p.input,
                    StartOptions::with_instance_id(p.instance_id.clone()),
                )
                .await
            {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    tracing::warn!(instance_id = %p.instance_id, error = %e, "chaos: start failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
