//! Shared orchestrations, a history builder and action summaries.

use std::time::Duration;

use durabletask_core::{
    ActivityContext, EventKind, ExecutionStartedEvent, FailureDetails, HistoryEvent,
    OrchestrationContext, OrchestrationError, OrchestrationInstance, OrchestratorAction, Registry,
    RetryPolicy,
};
use futures::future::Either;
use time::OffsetDateTime;
use time::macros::datetime;

pub const T0: OffsetDateTime = datetime!(2024-01-01 0:00 UTC);

/// Builds histories tersely; every event is one second after the previous one.
#[derive(Default)]
pub struct H {
    pub events: Vec<HistoryEvent>,
}

impl H {
    pub fn new() -> Self {
        Self::default()
    }
    fn at(&self) -> OffsetDateTime {
        T0 + Duration::from_secs(u64::try_from(self.events.len()).unwrap())
    }
    pub fn push(mut self, id: i32, kind: EventKind) -> Self {
        let at = self.at();
        self.events.push(HistoryEvent::new(id, at, kind));
        self
    }
    pub fn os(self) -> Self {
        self.push(-1, EventKind::OrchestratorStarted)
    }
    pub fn oc(self) -> Self {
        self.push(-1, EventKind::OrchestratorCompleted)
    }
    pub fn start(self, name: &str, input: &str) -> Self {
        self.push(
            -1,
            EventKind::ExecutionStarted(ExecutionStartedEvent::new(
                OrchestrationInstance::with_execution("inst", "exec"),
                name,
                Some(input.to_owned()),
            )),
        )
    }
    pub fn scheduled(self, id: i32, name: &str) -> Self {
        self.push(
            id,
            EventKind::TaskScheduled { name: name.into(), version: None, input: None, tags: None },
        )
    }
    pub fn completed(self, id: i32, result: &str) -> Self {
        self.push(
            -1,
            EventKind::TaskCompleted { task_scheduled_id: id, result: Some(result.into()) },
        )
    }
    pub fn failed(self, id: i32, msg: &str) -> Self {
        self.push(
            -1,
            EventKind::TaskFailed {
                task_scheduled_id: id,
                reason: Some(msg.into()),
                details: None,
                failure_details: Some(FailureDetails::new("ActivityFailure", msg)),
            },
        )
    }
    pub fn timer(self, id: i32, secs: u64) -> Self {
        self.push(id, EventKind::TimerCreated { fire_at: T0 + Duration::from_secs(secs) })
    }
    pub fn fired(self, id: i32, secs: u64) -> Self {
        self.push(
            -1,
            EventKind::TimerFired { timer_id: id, fire_at: T0 + Duration::from_secs(secs) },
        )
    }
    pub fn raised(self, name: &str, input: &str) -> Self {
        self.push(-1, EventKind::EventRaised { name: name.into(), input: Some(input.into()) })
    }
    pub fn build(self) -> Vec<HistoryEvent> {
        self.events
    }
}

/// One line per action, e.g. `ScheduleTask#0 SayHello "W"` or `Complete#1 Completed "x"`.
pub fn summarize(actions: &[OrchestratorAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            OrchestratorAction::ScheduleTask { id, name, input, .. } => {
                format!("ScheduleTask#{id} {name} {}", input.as_deref().unwrap_or("null"))
            }
            OrchestratorAction::CreateTimer { id, fire_at } => {
                format!("CreateTimer#{id} +{}s", (*fire_at - T0).whole_seconds())
            }
            OrchestratorAction::CreateSubOrchestration { id, name, instance_id, input, .. } => {
                format!(
                    "CreateSubOrchestration#{id} {name} {instance_id} {}",
                    input.as_deref().unwrap_or("null")
                )
            }
            OrchestratorAction::SendEvent { id, instance, name, data } => format!(
                "SendEvent#{id} {} {name} {}",
                instance.instance_id,
                data.as_deref().unwrap_or("null")
            ),
            OrchestratorAction::Complete(c) => {
                let out = match &c.failure_details {
                    Some(fd) => format!("{}: {}", fd.error_type, fd.error_message),
                    None => c.result.clone().unwrap_or_else(|| "null".into()),
                };
                let carry = if c.carryover_events.is_empty() {
                    String::new()
                } else {
                    format!(" carry={}", c.carryover_events.len())
                };
                format!("Complete#{} {} {out}{carry}", c.id, c.status)
            }
        })
        .collect()
}

pub fn registry() -> Registry {
    Registry::builder()
        .orchestration("Hello", |ctx: OrchestrationContext, name: String| async move {
            let greeting: String = ctx.call_activity("SayHello", &name).await?;
            Ok(greeting)
        })
        .orchestration("Sequence", |ctx: OrchestrationContext, n: u32| async move {
            let mut acc = Vec::new();
            for i in 0..n {
                let r: u32 = ctx.call_activity("Double", &i).await?;
                acc.push(r);
            }
            Ok(acc)
        })
        .orchestration("FanOut", |ctx: OrchestrationContext, n: u32| async move {
            let futs: Vec<_> = (0..n).map(|i| ctx.call_activity::<_, u32>("Double", &i)).collect();
            let mut sum = 0;
            for r in OrchestrationContext::join_all(futs).await {
                sum += r?;
            }
            Ok(sum)
        })
        .orchestration("Handled", |ctx: OrchestrationContext, (): ()| async move {
            match ctx.call_activity::<_, String>("Fail", &()).await {
                Ok(_) => Ok("no error".to_owned()),
                Err(e) => Ok(format!("caught: {}", e.failure.error_message)),
            }
        })
        .orchestration("Race", |ctx: OrchestrationContext, (): ()| async move {
            let approval = ctx.wait_for_external_event::<String>("Approve");
            let timeout = ctx.create_timer_after(Duration::from_secs(60));
            match OrchestrationContext::select2(approval, timeout).await {
                Either::Left((v, _)) => Ok(format!("approved by {}", v?)),
                Either::Right(((), _)) => Ok("timeout".to_owned()),
            }
        })
        .orchestration("TwoEvents", |ctx: OrchestrationContext, (): ()| async move {
            let a: String = ctx.wait_for_external_event("A").await?;
            let b: String = ctx.wait_for_external_event("B").await?;
            let a2: String = ctx.wait_for_external_event("A").await?;
            Ok(vec![a, b, a2])
        })
        .orchestration("Counter", |ctx: OrchestrationContext, n: u32| async move {
            if n >= 3 {
                return Ok(n);
            }
            let _: u32 = ctx.wait_for_external_event("inc").await?;
            ctx.continue_as_new(&(n + 1));
            Ok(n)
        })
        .orchestration("Retry", |ctx: OrchestrationContext, (): ()| async move {
            let p = RetryPolicy::new(3, Duration::from_secs(10)).with_backoff_coefficient(2.0);
            let r: String = ctx.call_activity_with_retry("Flaky", &(), p).await?;
            Ok(r)
        })
        .orchestration("Parent", |ctx: OrchestrationContext, (): ()| async move {
            let r: String = ctx.call_sub_orchestration("Hello", &"kid").await?;
            ctx.send_event("other", "Note", &r);
            ctx.set_custom_status(&"done");
            Ok(r)
        })
        .orchestration("NotifyMany", |ctx: OrchestrationContext, (): ()| async move {
            for target in ["", "bad\u{2028}id", "tab\tid", "ok/other"] {
                ctx.send_event(target, "Note", &1);
            }
            Ok(())
        })
        .orchestration("Guid", |ctx: OrchestrationContext, (): ()| async move {
            let a = ctx.new_guid();
            let b = ctx.new_guid();
            ctx.create_timer_after(Duration::from_secs(1)).await;
            Ok(vec![a.to_string(), b.to_string(), ctx.new_guid().to_string()])
        })
        .orchestration("Panics", |_ctx: OrchestrationContext, (): ()| async move {
            if true {
                panic!("kaboom");
            }
            Ok::<(), OrchestrationError>(())
        })
        .activity("SayHello", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello {name}"))
        })
        .activity("Double", |_ctx: ActivityContext, i: u32| async move { Ok(i * 2) })
        .build()
}
