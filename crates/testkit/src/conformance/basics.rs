//! Sequences, fan-out, timers, sub-orchestrations, retries and failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use durabletask_core::error::{NON_DETERMINISTIC_PREFIX, SUB_ORCHESTRATION_FAILED, TASK_FAILED};
use durabletask_core::{
    ActivityContext, ActivityError, EventKind, EventType, OrchestrationContext,
    OrchestrationStatus, RetryPolicy, StartOptions,
};

use super::{Harness, ProviderFactory, common_registry};

fn count(h: &[durabletask_core::HistoryEvent], t: EventType) -> usize {
    h.iter().filter(|e| e.event_type() == t).count()
}

/// Three activities in sequence; output and status.
pub async fn hello_sequence(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let id = h.client.start_orchestration("HelloSequence", &()).await.expect("start");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    let out: Vec<String> = s.output_as().expect("output");
    assert_eq!(out, vec!["Hello Tokyo", "Hello Seattle", "Hello London"]);
    assert_eq!(s.name, "HelloSequence");
    assert!(s.completed_time.is_some());
    h.stop().await;
}

/// The stored history has DTF's shape: markers, echoes with action ids, responses, completion.
pub async fn history_shape(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let id = h.client.start_orchestration("HelloSequence", &()).await.expect("start");
    let s = h.wait(&id).await;
    let hist = h.client.get_history(&id).await.expect("history");
    assert_eq!(hist.first().map(|e| e.event_type()), Some(EventType::OrchestratorStarted));
    assert_eq!(hist.get(1).map(|e| e.event_type()), Some(EventType::ExecutionStarted));
    assert_eq!(hist.last().map(|e| e.event_type()), Some(EventType::OrchestratorCompleted));
    assert_eq!(count(&hist, EventType::TaskScheduled), 3);
    assert_eq!(count(&hist, EventType::TaskCompleted), 3);
    assert_eq!(count(&hist, EventType::ExecutionCompleted), 1);
    let ids: Vec<i32> = hist
        .iter()
        .filter(|e| e.event_type() == EventType::TaskScheduled)
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, vec![0, 1, 2]);
    let done = hist.iter().find(|e| e.event_type() == EventType::ExecutionCompleted).expect("done");
    assert_eq!(done.event_id, 3, "the completion action consumes the next id");
    let exec = s.orchestration_instance.execution_id.clone().expect("execution id");
    assert_eq!(exec.len(), 32);
    let again = h.client.service().get_history(&id, Some(&exec)).await.expect("by execution");
    assert_eq!(again, hist);
    h.stop().await;
}

/// `config.fan_out` activities in parallel, joined.
pub async fn fan_out_fan_in(f: &dyn ProviderFactory) {
    let reg =
        common_registry().orchestration("FanOut", |ctx: OrchestrationContext, n: u64| async move {
            let futs: Vec<_> = (0..n).map(|i| ctx.call_activity::<_, u64>("Double", &i)).collect();
            let mut sum = 0;
            for r in OrchestrationContext::join_all(futs).await {
                sum += r?;
            }
            Ok(sum)
        });
    let h = Harness::start(f, reg).await;
    let n = u64::try_from(h.config.fan_out).expect("size");
    let id = h.client.start_orchestration("FanOut", &n).await.expect("start");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<u64>().expect("sum"), n * (n.saturating_sub(1)));
    let hist = h.client.get_history(&id).await.expect("history");
    assert_eq!(count(&hist, EventType::TaskScheduled), h.config.fan_out);
    assert_eq!(count(&hist, EventType::TaskCompleted), h.config.fan_out);
    h.stop().await;
}

/// A durable timer does not fire early, in orchestration time and in wall time.
pub async fn timers(f: &dyn ProviderFactory) {
    let reg =
        common_registry().orchestration("Timer", |ctx: OrchestrationContext, ms: u64| async move {
            let t0 = ctx.current_utc_datetime();
            ctx.create_timer_after(Duration::from_millis(ms)).await;
            let elapsed = ctx.current_utc_datetime() - t0;
            Ok(u64::try_from(elapsed.whole_milliseconds()).unwrap_or(0))
        });
    let h = Harness::start(f, reg).await;
    let delay = h.config.timer_delay;
    let started = Instant::now();
    let ms = u64::try_from(delay.as_millis()).expect("ms");
    let id = h.client.start_orchestration("Timer", &ms).await.expect("start");
    let s = h.wait(&id).await;
    assert!(started.elapsed() >= delay, "timer fired early: {:?}", started.elapsed());
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed);
    assert!(s.output_as::<u64>().expect("elapsed") >= ms, "{:?}", s.output);
    let hist = h.client.get_history(&id).await.expect("history");
    assert_eq!(count(&hist, EventType::TimerCreated), 1);
    assert_eq!(count(&hist, EventType::TimerFired), 1);
    h.stop().await;
}

/// A sub-orchestration's output reaches the parent; the child is a separate instance.
pub async fn sub_orchestration_success(f: &dyn ProviderFactory) {
    let reg =
        common_registry().orchestration("Parent", |ctx: OrchestrationContext, (): ()| async move {
            let a: Vec<String> = ctx.call_sub_orchestration("HelloSequence", &()).await?;
            let child_id = format!("{}-child", ctx.instance_id());
            let b: String =
                ctx.call_sub_orchestration_with_id("Quick", &child_id, &"named").await?;
            Ok((a.len(), b))
        });
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Parent", &()).await.expect("start");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<(usize, String)>().expect("out"), (3, "named".to_owned()));
    let child =
        h.client.get_state(&format!("{id}-child")).await.expect("state").expect("child exists");
    assert_eq!(child.orchestration_status, OrchestrationStatus::Completed);
    let parent = child.parent_instance.expect("parent link");
    assert_eq!(parent.orchestration_instance.instance_id, id);
    let exec = s.orchestration_instance.execution_id.expect("exec");
    let auto =
        h.client.get_state(&format!("{exec}:0")).await.expect("state").expect("auto-named child");
    assert_eq!(auto.orchestration_status, OrchestrationStatus::Completed);
    h.stop().await;
}

/// A failing child fails the parent's await: handled in one parent, unhandled in another.
pub async fn sub_orchestration_failure_propagation(f: &dyn ProviderFactory) {
    let reg = common_registry()
        .orchestration("FailingChild", |ctx: OrchestrationContext, (): ()| async move {
            ctx.call_activity::<_, ()>("Fail", &"child boom").await?;
            Ok(())
        })
        .orchestration("CatchingParent", |ctx: OrchestrationContext, (): ()| async move {
            match ctx.call_sub_orchestration::<_, ()>("FailingChild", &()).await {
                Ok(()) => Ok("no error".to_owned()),
                Err(e) => Ok(format!("caught: {}", e.failure.error_message)),
            }
        })
        .orchestration("CarelessParent", |ctx: OrchestrationContext, (): ()| async move {
            ctx.call_sub_orchestration::<_, ()>("FailingChild", &()).await?;
            Ok(())
        });
    let h = Harness::start(f, reg).await;
    let a = h.client.start_orchestration("CatchingParent", &()).await.expect("start");
    let b = h.client.start_orchestration("CarelessParent", &()).await.expect("start");
    let sa = h.wait(&a).await;
    assert_eq!(sa.orchestration_status, OrchestrationStatus::Completed, "{sa:?}");
    let msg: String = sa.output_as().expect("out");
    assert!(msg.starts_with("caught: ") && msg.contains("child boom"), "{msg}");
    let sb = h.wait(&b).await;
    assert_eq!(sb.orchestration_status, OrchestrationStatus::Failed, "{sb:?}");
    let fd = sb.failure_details.expect("failure details");
    assert_eq!(fd.error_type, SUB_ORCHESTRATION_FAILED);
    assert!(fd.is_caused_by(TASK_FAILED), "{fd:?}");
    let exec = sa.orchestration_instance.execution_id.expect("exec");
    let child = h.client.get_state(&format!("{exec}:0")).await.expect("state").expect("child");
    assert_eq!(child.orchestration_status, OrchestrationStatus::Failed);
    h.stop().await;
}

/// A flaky activity succeeds on the third attempt under a retry policy with durable back-off.
pub async fn retries_until_success(f: &dyn ProviderFactory) {
    let attempts = Arc::new(AtomicU32::new(0));
    let a2 = Arc::clone(&attempts);
    let reg = common_registry()
        .activity("Flaky", move |_c: ActivityContext, (): ()| {
            let n = a2.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 { Err(ActivityError::new(format!("attempt {n} failed"))) } else { Ok(n) }
            }
        })
        .orchestration("Retrying", |ctx: OrchestrationContext, (): ()| async move {
            let p = RetryPolicy::new(5, Duration::from_millis(100)).with_backoff_coefficient(2.0);
            let n: u32 = ctx.call_activity_with_retry("Flaky", &(), p).await?;
            Ok(n)
        });
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Retrying", &()).await.expect("start");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<u32>().expect("out"), 3);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let hist = h.client.get_history(&id).await.expect("history");
    assert_eq!(count(&hist, EventType::TaskFailed), 2);
    assert_eq!(count(&hist, EventType::TimerFired), 2, "one durable timer per retry");
    h.stop().await;
}

/// A non-retriable failure is not retried; exhausting attempts fails with the last error.
pub async fn retries_stop_on_non_retriable(f: &dyn ProviderFactory) {
    let attempts = Arc::new(AtomicU32::new(0));
    let a2 = Arc::clone(&attempts);
    let reg = common_registry()
        .activity("Fatal", move |_c: ActivityContext, (): ()| {
            a2.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(ActivityError::non_retriable("fatal")) }
        })
        .orchestration("RetryFatal", |ctx: OrchestrationContext, (): ()| async move {
            let p = RetryPolicy::new(5, Duration::from_millis(50));
            ctx.call_activity_with_retry::<_, ()>("Fatal", &(), p).await?;
            Ok(())
        })
        .orchestration("RetryExhaust", |ctx: OrchestrationContext, (): ()| async move {
            let p = RetryPolicy::new(2, Duration::from_millis(50));
            ctx.call_activity_with_retry::<_, ()>("Fail", &"always", p).await?;
            Ok(())
        });
    let h = Harness::start(f, reg).await;
    let a = h.client.start_orchestration("RetryFatal", &()).await.expect("start");
    let s = h.wait(&a).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Failed);
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "non-retriable failure retried");
    let b = h.client.start_orchestration("RetryExhaust", &()).await.expect("start");
    let s = h.wait(&b).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Failed);
    let hist = h.client.get_history(&b).await.expect("history");
    assert_eq!(count(&hist, EventType::TaskFailed), 2, "max_attempts = 2");
    h.stop().await;
}

/// An activity failure caught by the orchestration.
pub async fn activity_failure_handled(f: &dyn ProviderFactory) {
    let reg = common_registry().orchestration(
        "Handles",
        |ctx: OrchestrationContext, (): ()| async move {
            match ctx.call_activity::<_, ()>("Fail", &"expected").await {
                Ok(()) => Ok("no error".to_owned()),
                Err(e) => Ok(format!("{}|{}", e.name, e.failure.error_message)),
            }
        },
    );
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Handles", &()).await.expect("start");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<String>().expect("out"), "Fail|expected");
    h.stop().await;
}

/// An unhandled activity failure fails the instance with DTF's message and inner details.
pub async fn activity_failure_unhandled(f: &dyn ProviderFactory) {
    let reg = common_registry().orchestration(
        "Careless",
        |ctx: OrchestrationContext, (): ()| async move {
            ctx.call_activity::<_, ()>("Fail", &"unexpected").await?;
            Ok(())
        },
    );
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Careless", &()).await.expect("start");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Failed, "{s:?}");
    let fd = s.failure_details.clone().expect("failure details");
    assert_eq!(fd.error_type, TASK_FAILED);
    assert_eq!(fd.error_message, "Task 'Fail' (#0) failed with an unhandled exception: unexpected");
    assert_eq!(fd.inner_failure.as_ref().map(|i| i.error_message.as_str()), Some("unexpected"));
    assert_eq!(s.output.as_deref(), Some(fd.to_string().as_str()));
    h.stop().await;
}

/// Changing the code under a running instance fails it with a non-determinism error.
pub async fn non_determinism_detection(f: &dyn ProviderFactory) {
    let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c2 = Arc::clone(&changed);
    let reg =
        common_registry().orchestration("Evolving", move |ctx: OrchestrationContext, (): ()| {
            let name = if c2.load(Ordering::SeqCst) { "Double" } else { "Echo" };
            async move {
                if name == "Echo" {
                    let _: String = ctx.call_activity("Echo", &"v1").await?;
                } else {
                    let _: u64 = ctx.call_activity("Double", &1u64).await?;
                }
                let _: String = ctx.wait_for_external_event("Go").await?;
                Ok(())
            }
        });
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Evolving", &()).await.expect("start");
    h.wait_history(&id, "the first activity to complete", |hist| {
        hist.iter().any(|e| matches!(e.kind, EventKind::TaskCompleted { .. }))
    })
    .await;
    changed.store(true, Ordering::SeqCst);
    h.client.raise_event(&id, "Go", &"now").await.expect("raise");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Failed, "{s:?}");
    let fd = s.failure_details.expect("failure details");
    assert!(fd.error_message.starts_with(NON_DETERMINISTIC_PREFIX), "{}", fd.error_message);
    assert!(
        fd.error_message.contains("'Echo'") && fd.error_message.contains("'Double'"),
        "{}",
        fd.error_message
    );
    h.stop().await;
}

/// A continue-as-new loop of `config.generations` generations fed by events raised up front,
/// which are carried over from generation to generation.
pub async fn continue_as_new_loop_with_carried_events(f: &dyn ProviderFactory) {
    let reg = common_registry().orchestration(
        "Counter",
        |ctx: OrchestrationContext, (count, target): (u64, u64)| async move {
            if count >= target {
                return Ok(count);
            }
            let step: u64 = ctx.wait_for_external_event("Inc").await?;
            ctx.continue_as_new(&(count + step, target));
            Ok(count)
        },
    );
    let h = Harness::start(f, reg).await;
    let n = u64::try_from(h.config.generations).expect("size");
    let opts =
        StartOptions::with_instance_id(format!("counter-{}", durabletask_core::new_execution_id()));
    let inst =
        h.client.schedule_new_orchestration("Counter", &(0u64, n), opts).await.expect("start");
    let id = inst.instance_id.clone();
    for _ in 0..n {
        h.client.raise_event(&id, "Inc", &1u64).await.expect("raise");
    }
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<u64>().expect("count"), n);
    assert_ne!(
        s.orchestration_instance.execution_id, inst.execution_id,
        "new execution per generation"
    );
    if n > 0 {
        assert!(s.generation.unwrap_or(0) >= 1, "generation counter advanced: {:?}", s.generation);
    }
    let hist = h.client.get_history(&id).await.expect("history");
    assert_eq!(count(&hist, EventType::ExecutionStarted), 1, "only the last generation is stored");
    assert_eq!(count(&hist, EventType::ContinueAsNew), 0);
    h.stop().await;
}
