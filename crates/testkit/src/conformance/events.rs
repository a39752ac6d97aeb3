//! External events: before and after the wait, timeouts via select, events between instances.

use std::time::Duration;

use durabletask_core::{EventKind, OrchestrationContext, OrchestrationStatus};
use futures::future::Either;

use super::{Harness, ProviderFactory, common_registry};

fn raised(hist: &[durabletask_core::HistoryEvent], name: &str) -> bool {
    hist.iter().any(|e| matches!(&e.kind, EventKind::EventRaised { name: n, .. } if n == name))
}

/// An event raised while the orchestration is already waiting completes the wait.
pub async fn external_event_after_wait(f: &dyn ProviderFactory) {
    let reg =
        common_registry().orchestration("Waiter", |ctx: OrchestrationContext, (): ()| async move {
            let v: String = ctx.wait_for_external_event("Go").await?;
            Ok(v)
        });
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Waiter", &()).await.expect("start");
    h.wait_history(&id, "the orchestration to start waiting", |hist| {
        hist.iter().any(|e| matches!(e.kind, EventKind::OrchestratorCompleted))
    })
    .await;
    h.client.raise_event(&id, "Go", &"after").await.expect("raise");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<String>().expect("out"), "after");
    h.stop().await;
}

/// An event that arrives before the code waits for it is buffered by name (FIFO) and consumed by
/// the later wait.
pub async fn external_event_before_wait(f: &dyn ProviderFactory) {
    let reg = common_registry().orchestration(
        "Ordered",
        |ctx: OrchestrationContext, (): ()| async move {
            let a: String = ctx.wait_for_external_event("A").await?;
            let b1: String = ctx.wait_for_external_event("B").await?;
            let b2: String = ctx.wait_for_external_event("B").await?;
            Ok(vec![a, b1, b2])
        },
    );
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Ordered", &()).await.expect("start");
    h.client.raise_event(&id, "B", &"b1").await.expect("raise");
    h.client.raise_event(&id, "B", &"b2").await.expect("raise");
    h.wait_history(&id, "both B events to be recorded", |hist| {
        hist.iter()
            .filter(|e| matches!(&e.kind, EventKind::EventRaised { name, .. } if name == "B"))
            .count()
            == 2
    })
    .await;
    let state = h.client.get_state(&id).await.expect("state").expect("exists");
    assert_eq!(state.orchestration_status, OrchestrationStatus::Running, "still waiting for A");
    h.client.raise_event(&id, "A", &"a").await.expect("raise");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<Vec<String>>().expect("out"), vec!["a", "b1", "b2"]);
    h.stop().await;
}

/// `select2(event, timer)`: the timer wins when no event comes; the event wins when it does.
pub async fn external_event_timeout_with_select(f: &dyn ProviderFactory) {
    let reg = common_registry().orchestration(
        "Approval",
        |ctx: OrchestrationContext, ms: u64| async move {
            let approval = ctx.wait_for_external_event::<String>("Approve");
            let timeout = ctx.create_timer_after(Duration::from_millis(ms));
            match OrchestrationContext::select2(approval, timeout).await {
                Either::Left((v, _timer)) => Ok(format!("approved:{}", v?)),
                Either::Right(((), _event)) => Ok("timeout".to_owned()),
            }
        },
    );
    let h = Harness::start(f, reg).await;
    let short = u64::try_from(h.config.timer_delay.as_millis()).expect("ms");
    let timed_out = h.client.start_orchestration("Approval", &short).await.expect("start");
    let long = u64::try_from(h.config.timeout.as_millis()).expect("ms") * 10;
    let approved = h.client.start_orchestration("Approval", &long).await.expect("start");
    h.wait_history(&approved, "the approval wait to start", |hist| {
        hist.iter().any(|e| matches!(e.kind, EventKind::TimerCreated { .. }))
    })
    .await;
    h.client.raise_event(&approved, "Approve", &"alice").await.expect("raise");
    let s = h.wait(&approved).await;
    assert_eq!(s.output_as::<String>().expect("out"), "approved:alice", "{s:?}");
    let s = h.wait(&timed_out).await;
    assert_eq!(s.output_as::<String>().expect("out"), "timeout", "{s:?}");
    h.stop().await;
}

/// One orchestration sends an event to another (`send_event`), recorded as `EventSent`.
pub async fn send_event_between_instances(f: &dyn ProviderFactory) {
    let reg = common_registry()
        .orchestration("Receiver", |ctx: OrchestrationContext, (): ()| async move {
            let v: String = ctx.wait_for_external_event("Ping").await?;
            Ok(v)
        })
        .orchestration("Sender", |ctx: OrchestrationContext, target: String| async move {
            ctx.send_event(&target, "Ping", &"pong");
            Ok(())
        });
    let h = Harness::start(f, reg).await;
    let rx = h.client.start_orchestration("Receiver", &()).await.expect("start");
    let tx = h.client.start_orchestration("Sender", &rx).await.expect("start");
    let s = h.wait(&tx).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed);
    let hist = h.client.get_history(&tx).await.expect("history");
    assert!(hist.iter().any(|e| matches!(&e.kind, EventKind::EventSent { instance_id, name, .. } if *instance_id == rx && name == "Ping")));
    let s = h.wait(&rx).await;
    assert_eq!(s.output_as::<String>().expect("out"), "pong");
    assert!(raised(&h.client.get_history(&rx).await.expect("history"), "Ping"));
    h.stop().await;
}
