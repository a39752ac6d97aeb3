//! The sample orchestrations and activities behind the examples, `cargo xtask demo`, the
//! multi-process test and the benchmark helpers. Register them all with [`register_all`].
//!
//! | orchestration | input | output | shows |
//! |---|---|---|---|
//! | [`HELLO_CITIES`] | `()` | `["Hello Tokyo!", "Hello Seattle!", "Hello London!"]` | a sequence of activities |
//! | [`FAN_OUT_FAN_IN`] | `n: u64` | `1² + 2² + … + n²` | `n` activities in parallel, joined |
//! | [`HUMAN_INTERACTION`] | [`ApprovalRequest`] | `"approved by …"` / `"rejected by …"` / `"timed out"` | an external event raced with a durable timer |
//! | [`MONITOR`] | [`MonitorState`] | number of checks made | an eternal orchestration bounded by its input, continue-as-new |
//! | [`SUB_ORCHESTRATIONS`] | `["Paris", …]` | `["Hello Paris!", …]` | one sub-orchestration per city, in parallel |
//! | [`RETRIES`] | `fail_times: u32` | the attempt that succeeded (`fail_times + 1`) | an activity retried with a [`RetryPolicy`] |
//! | [`HELLO_WORKER`] | `name: String` | [`HelloWorkerOutput`] | which worker process ran the activity |
//! | [`BANK_TRANSFER`] | [`TransferRequest`] | [`TransferOutcome`] | durable entities: two [`ACCOUNT`] entities, a transfer inside a critical section |
//!
//! | entity | state | operations |
//! |---|---|---|
//! | [`ACCOUNT`] | balance `i64` | `deposit(n)`, `withdraw(n)` (fails on insufficient funds, leaving the balance), `balance()` |

use std::time::Duration;

use durabletask_core::{
    ActivityContext, ActivityError, EntityContext, EntityError, EntityId, OrchestrationContext,
    OrchestrationError, RegistryBuilder, RetryPolicy,
};
use futures::future::Either;
use serde::{Deserialize, Serialize};

/// Three greetings in sequence.
pub const HELLO_CITIES: &str = "HelloCities";
/// Sum of squares computed by parallel activities.
pub const FAN_OUT_FAN_IN: &str = "FanOutFanIn";
/// An approval (external event [`APPROVAL_EVENT`]) raced with a timeout.
pub const HUMAN_INTERACTION: &str = "HumanInteraction";
/// A periodic check that continues as new until its budget is spent.
pub const MONITOR: &str = "Monitor";
/// A parent starting one child orchestration per city.
pub const SUB_ORCHESTRATIONS: &str = "SubOrchestrations";
/// The child of [`SUB_ORCHESTRATIONS`]: greets one city.
pub const GREET_CITY: &str = "GreetCity";
/// An activity that fails its first attempts, retried with a [`RetryPolicy`].
pub const RETRIES: &str = "Retries";
/// One greeting plus the identity of the worker process that ran the activity.
pub const HELLO_WORKER: &str = "HelloWorker";

/// Moves money between two [`ACCOUNT`] entities inside a critical section.
pub const BANK_TRANSFER: &str = "BankTransfer";
/// Entity: a bank account (balance).
pub const ACCOUNT: &str = "Account";

/// Activity: `name -> "Hello {name}!"`.
pub const SAY_HELLO: &str = "SayHello";
/// Activity: `x -> x * x`.
pub const SQUARE: &str = "Square";
/// Activity: one monitor check; returns the check number it was given.
pub const CHECK_STATUS: &str = "CheckStatus";
/// Activity: fails while the attempt number is at most the input (see [`RETRIES`]).
pub const FLAKY: &str = "Flaky";
/// Activity: the worker process identity (`"{host}-{pid}"`).
pub const WHO_AM_I: &str = "WhoAmI";

/// The external event [`HUMAN_INTERACTION`] waits for.
pub const APPROVAL_EVENT: &str = "Approval";

/// The cities of [`HELLO_CITIES`], in order.
pub const CITIES: [&str; 3] = ["Tokyo", "Seattle", "London"];

/// Input of [`HUMAN_INTERACTION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Who is asked.
    pub approver: String,
    /// How long to wait for the [`APPROVAL_EVENT`] before giving up.
    pub timeout_ms: u64,
}

/// Payload of the [`APPROVAL_EVENT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
}

/// Input of each [`MONITOR`] generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Checks made by earlier generations.
    pub checks_done: u32,
    /// Total checks to make before completing.
    pub max_checks: u32,
    /// Durable-timer delay between checks.
    pub interval_ms: u64,
}

impl MonitorState {
    /// A monitor that makes `max_checks` checks `interval_ms` apart.
    pub fn new(max_checks: u32, interval_ms: u64) -> Self {
        Self { checks_done: 0, max_checks, interval_ms }
    }
}

/// Output of [`HELLO_WORKER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloWorkerOutput {
    /// `"Hello {name}!"`.
    pub greeting: String,
    /// [`WHO_AM_I`] of the process that ran the greeting's companion activity.
    pub worker: String,
}

/// The identity [`WHO_AM_I`] returns for this process.
pub fn process_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{}-{}", host.trim(), std::process::id())
}

/// Registers every sample orchestration, activity and entity.
pub fn register_all(builder: RegistryBuilder) -> RegistryBuilder {
    register_entities(register_activities(register_orchestrations(builder)))
}

/// Registers the sample entities only.
pub fn register_entities(builder: RegistryBuilder) -> RegistryBuilder {
    builder.entity(ACCOUNT, account)
}

/// The [`ACCOUNT`] entity: the state is the balance.
pub fn account(ctx: &mut EntityContext<i64>) -> Result<i64, EntityError> {
    match ctx.operation() {
        "deposit" => {
            let amount: i64 = ctx.input()?;
            if amount <= 0 {
                return Err(EntityError::with_type(
                    "InvalidAmount",
                    format!("cannot deposit {amount}"),
                ));
            }
            let balance = ctx.state_mut();
            *balance += amount;
            Ok(*balance)
        }
        "withdraw" => {
            let amount: i64 = ctx.input()?;
            let balance = ctx.state().copied().unwrap_or(0);
            if amount <= 0 || amount > balance {
                return Err(EntityError::with_type(
                    "InsufficientFunds",
                    format!("cannot withdraw {amount} from a balance of {balance}"),
                ));
            }
            ctx.set_state(balance - amount);
            Ok(balance - amount)
        }
        "balance" => Ok(ctx.state().copied().unwrap_or(0)),
        other => Err(EntityError::new(format!("an account has no operation '{other}'"))),
    }
}

/// Input of [`BANK_TRANSFER`]: open two accounts (keys derived from the instance id) with
/// `opening` in the first, then move `amount` from the first to the second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The first account's opening deposit.
    pub opening: i64,
    /// How much to move.
    pub amount: i64,
}

/// Output of [`BANK_TRANSFER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOutcome {
    /// Whether the transfer happened (false: insufficient funds, nothing moved).
    pub transferred: bool,
    /// The first account's balance afterwards.
    pub from_balance: i64,
    /// The second account's balance afterwards.
    pub to_balance: i64,
}

/// [`BANK_TRANSFER`]: withdraw and deposit while both accounts are locked, so no other
/// orchestration sees (or changes) the money in flight.
async fn bank_transfer(
    ctx: OrchestrationContext,
    req: TransferRequest,
) -> Result<TransferOutcome, OrchestrationError> {
    let me = ctx.instance_id();
    let from = EntityId::new(ACCOUNT, format!("{me}-checking"));
    let to = EntityId::new(ACCOUNT, format!("{me}-savings"));
    let _: i64 = ctx.call_entity(&from, "deposit", &req.opening).await?;
    let lock = ctx.lock_entities(&[from.clone(), to.clone()]).await?;
    let transferred = match ctx.call_entity::<_, i64>(&from, "withdraw", &req.amount).await {
        Ok(_) => {
            let _: i64 = ctx.call_entity(&to, "deposit", &req.amount).await?;
            true
        }
        Err(e) if e.is_caused_by("InsufficientFunds") => false,
        Err(e) => return Err(e.into()),
    };
    lock.release();
    let from_balance: i64 = ctx.call_entity(&from, "balance", &()).await?;
    let to_balance: i64 = ctx.call_entity(&to, "balance", &()).await?;
    Ok(TransferOutcome { transferred, from_balance, to_balance })
}

/// Registers the sample orchestrations only.
pub fn register_orchestrations(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .orchestration(HELLO_CITIES, hello_cities)
        .orchestration(FAN_OUT_FAN_IN, fan_out_fan_in)
        .orchestration(HUMAN_INTERACTION, human_interaction)
        .orchestration(MONITOR, monitor)
        .orchestration(SUB_ORCHESTRATIONS, sub_orchestrations)
        .orchestration(GREET_CITY, greet_city)
        .orchestration(RETRIES, retries)
        .orchestration(HELLO_WORKER, hello_worker)
        .orchestration(BANK_TRANSFER, bank_transfer)
}

/// Registers the sample activities only.
pub fn register_activities(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .activity(SAY_HELLO, |_ctx: ActivityContext, name: String| async move {
            Ok::<_, ActivityError>(format!("Hello {name}!"))
        })
        .activity(SQUARE, |_ctx: ActivityContext, x: u64| async move {
            x.checked_mul(x).ok_or_else(|| ActivityError::non_retriable(format!("{x}² overflows")))
        })
        .activity(CHECK_STATUS, |_ctx: ActivityContext, check: u32| async move {
            Ok::<_, ActivityError>(check)
        })
        .activity(FLAKY, flaky)
        .activity(WHO_AM_I, |_ctx: ActivityContext, (): ()| async move {
            Ok::<_, ActivityError>(process_identity())
        })
}

/// [`HELLO_CITIES`]: `SayHello` for Tokyo, Seattle and London, one after the other.
pub async fn hello_cities(
    ctx: OrchestrationContext,
    (): (),
) -> Result<Vec<String>, OrchestrationError> {
    let mut out = Vec::with_capacity(CITIES.len());
    for city in CITIES {
        out.push(ctx.call_activity::<_, String>(SAY_HELLO, city).await?);
    }
    Ok(out)
}

/// [`FAN_OUT_FAN_IN`]: `Square(1..=n)` in parallel, summed.
pub async fn fan_out_fan_in(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let tasks: Vec<_> = (1..=n).map(|i| ctx.call_activity::<_, u64>(SQUARE, &i)).collect();
    let mut sum: u64 = 0;
    for r in OrchestrationContext::join_all(tasks).await {
        sum = sum.saturating_add(r?);
    }
    Ok(sum)
}

/// [`HUMAN_INTERACTION`]: waits for [`APPROVAL_EVENT`] or the timeout, whichever comes first in
/// history.
pub async fn human_interaction(
    ctx: OrchestrationContext,
    req: ApprovalRequest,
) -> Result<String, OrchestrationError> {
    if !ctx.is_replaying() {
        tracing::info!(instance_id = %ctx.instance_id(), approver = %req.approver, "Waiting for approval");
    }
    ctx.set_custom_status(&format!("waiting for {}", req.approver));
    let event = ctx.wait_for_external_event::<Approval>(APPROVAL_EVENT);
    let timeout = ctx.create_timer_after(Duration::from_millis(req.timeout_ms));
    let result = match OrchestrationContext::select2(event, timeout).await {
        Either::Left((approval, _timer)) => {
            let a = approval?;
            if a.approved {
                format!("approved by {}", a.by)
            } else {
                format!("rejected by {}", a.by)
            }
        }
        Either::Right(((), _event)) => "timed out".to_owned(),
    };
    ctx.set_custom_status(&result);
    Ok(result)
}

/// [`MONITOR`]: one check per generation, a durable timer, then continue-as-new, until
/// `max_checks` checks were made.
pub async fn monitor(
    ctx: OrchestrationContext,
    state: MonitorState,
) -> Result<u32, OrchestrationError> {
    if state.checks_done >= state.max_checks {
        return Ok(state.checks_done);
    }
    let check = state.checks_done + 1;
    let seen: u32 = ctx.call_activity(CHECK_STATUS, &check).await?;
    ctx.set_custom_status(&format!("check {seen} of {}", state.max_checks));
    if seen >= state.max_checks {
        return Ok(seen);
    }
    ctx.create_timer_after(Duration::from_millis(state.interval_ms)).await;
    ctx.continue_as_new(&MonitorState { checks_done: seen, ..state });
    Ok(seen)
}

/// [`SUB_ORCHESTRATIONS`]: one [`GREET_CITY`] child per city, in parallel.
pub async fn sub_orchestrations(
    ctx: OrchestrationContext,
    cities: Vec<String>,
) -> Result<Vec<String>, OrchestrationError> {
    let children: Vec<_> =
        cities.iter().map(|c| ctx.call_sub_orchestration::<_, String>(GREET_CITY, c)).collect();
    let mut out = Vec::with_capacity(children.len());
    for r in OrchestrationContext::join_all(children).await {
        out.push(r?);
    }
    Ok(out)
}

/// [`GREET_CITY`]: `SayHello(city)`.
pub async fn greet_city(
    ctx: OrchestrationContext,
    city: String,
) -> Result<String, OrchestrationError> {
    Ok(ctx.call_activity::<_, String>(SAY_HELLO, &city).await?)
}

/// [`RETRIES`]: [`FLAKY`] with up to `fail_times + 2` attempts, 100 ms apart.
pub async fn retries(
    ctx: OrchestrationContext,
    fail_times: u32,
) -> Result<u32, OrchestrationError> {
    let policy = RetryPolicy::new(fail_times.saturating_add(2), Duration::from_millis(100));
    Ok(ctx.call_activity_with_retry::<_, u32>(FLAKY, &fail_times, policy).await?)
}

/// [`FLAKY`]: fails while its attempt number is at most `fail_times`; returns the attempt number.
///
/// Stateless, so it behaves the same on every worker process: in [`retries`] the activity is the
/// first thing scheduled and each retry timer takes one action id, so attempt *n* (1-based) runs
/// as task id `2 * (n - 1)`.
async fn flaky(ctx: ActivityContext, fail_times: u32) -> Result<u32, ActivityError> {
    let attempt = u32::try_from(ctx.task_id() / 2).unwrap_or(0) + 1;
    if attempt <= fail_times {
        Err(ActivityError::new(format!("attempt {attempt} fails on purpose")))
    } else {
        Ok(attempt)
    }
}

/// [`HELLO_WORKER`]: `SayHello(name)` and `WhoAmI`, in parallel.
pub async fn hello_worker(
    ctx: OrchestrationContext,
    name: String,
) -> Result<HelloWorkerOutput, OrchestrationError> {
    let greeting = ctx.call_activity::<_, String>(SAY_HELLO, &name);
    let worker = ctx.call_activity::<_, String>(WHO_AM_I, &());
    let (greeting, worker) = futures::join!(greeting, worker);
    Ok(HelloWorkerOutput { greeting: greeting?, worker: worker? })
}

/// One sample run of the demo: what to start, what to send, what to expect.
#[derive(Debug, Clone)]
pub struct SampleRun {
    /// Instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub orchestration: &'static str,
    /// Input.
    pub input: serde_json::Value,
    /// An external event `(name, payload)` to raise once the instance runs.
    pub event: Option<(&'static str, serde_json::Value)>,
    /// The expected output.
    pub expected_output: serde_json::Value,
}

/// The demo's mix of sample runs (ids prefixed with `prefix`); each finishes in a few seconds.
pub fn demo_plan(prefix: &str) -> Vec<SampleRun> {
    let id = |s: &str| format!("{prefix}{s}");
    let json = |v: serde_json::Result<serde_json::Value>| v.unwrap_or(serde_json::Value::Null);
    let approve = Approval { approved: true, by: "alice".into() };
    vec![
        SampleRun {
            instance_id: id("hello-cities"),
            orchestration: HELLO_CITIES,
            input: serde_json::Value::Null,
            event: None,
            expected_output: serde_json::json!(["Hello Tokyo!", "Hello Seattle!", "Hello London!"]),
        },
        SampleRun {
            instance_id: id("fan-out-fan-in"),
            orchestration: FAN_OUT_FAN_IN,
            input: serde_json::json!(10),
            event: None,
            expected_output: serde_json::json!(385),
        },
        SampleRun {
            instance_id: id("human-approved"),
            orchestration: HUMAN_INTERACTION,
            input: json(serde_json::to_value(ApprovalRequest {
                approver: "alice".into(),
                timeout_ms: 60_000,
            })),
            event: Some((APPROVAL_EVENT, json(serde_json::to_value(approve)))),
            expected_output: serde_json::json!("approved by alice"),
        },
        SampleRun {
            instance_id: id("human-timeout"),
            orchestration: HUMAN_INTERACTION,
            input: json(serde_json::to_value(ApprovalRequest {
                approver: "bob".into(),
                timeout_ms: 1_000,
            })),
            event: None,
            expected_output: serde_json::json!("timed out"),
        },
        SampleRun {
            instance_id: id("monitor"),
            orchestration: MONITOR,
            input: json(serde_json::to_value(MonitorState::new(3, 300))),
            event: None,
            expected_output: serde_json::json!(3),
        },
        SampleRun {
            instance_id: id("sub-orchestrations"),
            orchestration: SUB_ORCHESTRATIONS,
            input: serde_json::json!(["Paris", "Lima", "Cairo"]),
            event: None,
            expected_output: serde_json::json!(["Hello Paris!", "Hello Lima!", "Hello Cairo!"]),
        },
        SampleRun {
            instance_id: id("retries"),
            orchestration: RETRIES,
            input: serde_json::json!(2),
            event: None,
            expected_output: serde_json::json!(3),
        },
        SampleRun {
            instance_id: id("bank-transfer"),
            orchestration: BANK_TRANSFER,
            input: serde_json::json!({"opening": 100, "amount": 30}),
            event: None,
            expected_output: serde_json::json!({"transferred": true, "from_balance": 70, "to_balance": 30}),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_plan_is_well_formed() {
        let plan = demo_plan("x-");
        assert_eq!(plan.len(), 8);
        let registry = register_all(durabletask_core::Registry::builder()).build();
        for run in &plan {
            assert!(run.instance_id.starts_with("x-"));
            durabletask_core::validate_instance_id(&run.instance_id).unwrap();
            assert!(registry.orchestration(run.orchestration).is_some(), "{}", run.orchestration);
        }
        for a in [SAY_HELLO, SQUARE, CHECK_STATUS, FLAKY, WHO_AM_I] {
            assert!(registry.activity(a).is_some(), "{a}");
        }
    }

    #[test]
    fn process_identity_names_this_process() {
        assert!(process_identity().ends_with(&format!("-{}", std::process::id())));
    }
}
