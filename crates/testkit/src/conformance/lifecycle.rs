//! Terminate, suspend/resume, custom status, recreation.

use durabletask_core::{
    ClientError, EventKind, OrchestrationContext, OrchestrationStatus, StartOptions,
};

use super::{Harness, ProviderFactory, common_registry};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", durabletask_core::new_execution_id())
}

/// Terminating a running instance ends it Terminated with the reason, as given (not JSON), as
/// output; later raise/terminate/suspend/resume calls are refused with `InvalidStatus`.
pub async fn terminate_running(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let id = h.client.start_orchestration("WaitForever", &()).await.expect("start");
    h.wait_status(&id, OrchestrationStatus::Running).await;
    h.client.terminate(&id, "enough").await.expect("terminate");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Terminated, "{s:?}");
    assert_eq!(s.output.as_deref(), Some("enough"), "the reason is stored raw");
    let hist = h.client.get_history(&id).await.expect("history");
    assert!(hist.iter().any(|e| matches!(
        &e.kind,
        EventKind::ExecutionTerminated { input } if input.as_deref() == Some("enough")
    )));
    assert!(hist.iter().any(|e| matches!(
        e.kind,
        EventKind::ExecutionCompleted { orchestration_status: OrchestrationStatus::Terminated, .. }
    )));
    // Later operations are refused: the instance stays terminated.
    match h.client.raise_event(&id, "Never", &"late").await {
        Err(ClientError::InvalidStatus { status: OrchestrationStatus::Terminated, .. }) => {}
        other => panic!("expected InvalidStatus, got {other:?}"),
    }
    let again = h.client.get_state(&id).await.expect("state").expect("exists");
    assert_eq!(again.orchestration_status, OrchestrationStatus::Terminated);
    h.stop().await;
}

/// Terminate overrides suspension.
pub async fn terminate_suspended(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let id = h.client.start_orchestration("WaitForever", &()).await.expect("start");
    h.wait_status(&id, OrchestrationStatus::Running).await;
    h.client.suspend(&id, Some("pause")).await.expect("suspend");
    h.wait_status(&id, OrchestrationStatus::Suspended).await;
    h.client.terminate(&id, "stop").await.expect("terminate");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Terminated, "{s:?}");
    h.stop().await;
}

/// Terminating a created-but-not-started instance (delayed start) terminates it without running.
pub async fn terminate_pending(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let start_at = time::OffsetDateTime::now_utc() + h.config.timeout * 10;
    let opts = StartOptions {
        start_at: Some(start_at),
        ..StartOptions::with_instance_id(unique("pending"))
    };
    let inst =
        h.client.schedule_new_orchestration("Quick", &"never runs", opts).await.expect("start");
    let id = inst.instance_id;
    let pending = h.client.get_state(&id).await.expect("state").expect("exists");
    assert_eq!(pending.orchestration_status, OrchestrationStatus::Pending);
    // Storage keeps timestamps at 100 ns resolution (DTF ticks).
    let stored = pending.scheduled_start_time.expect("scheduled start time");
    assert!((stored - start_at).abs() < time::Duration::microseconds(1), "{stored} vs {start_at}");
    h.client.terminate(&id, "cancelled").await.expect("terminate");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Terminated, "{s:?}");
    assert_eq!(s.output.as_deref(), Some("cancelled"), "the reason is stored raw");
    assert!(
        h.client
            .get_history(&id)
            .await
            .expect("history")
            .iter()
            .all(|e| !matches!(e.kind, EventKind::OrchestratorCompleted)),
        "it never ran"
    );
    h.stop().await;
}

/// Events received while suspended are recorded but processed only after resume.
pub async fn suspend_resume(f: &dyn ProviderFactory) {
    let reg =
        common_registry().orchestration("Gate", |ctx: OrchestrationContext, (): ()| async move {
            let v: String = ctx.wait_for_external_event("Go").await?;
            let r: String = ctx.call_activity("Echo", &format!("went {v}")).await?;
            Ok(r)
        });
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Gate", &()).await.expect("start");
    h.wait_status(&id, OrchestrationStatus::Running).await;
    h.client.suspend(&id, Some("maintenance")).await.expect("suspend");
    h.wait_status(&id, OrchestrationStatus::Suspended).await;
    h.client.raise_event(&id, "Go", &"now").await.expect("raise");
    let hist = h
        .wait_history(&id, "the event to be recorded while suspended", |hist| {
            hist.iter()
                .any(|e| matches!(&e.kind, EventKind::EventRaised { name, .. } if name == "Go"))
        })
        .await;
    assert!(
        !hist.iter().any(|e| matches!(e.kind, EventKind::TaskScheduled { .. })),
        "no work scheduled while suspended"
    );
    let s = h.client.get_state(&id).await.expect("state").expect("exists");
    assert_eq!(s.orchestration_status, OrchestrationStatus::Suspended);
    h.client.resume(&id, Some("done")).await.expect("resume");
    let s = h.wait(&id).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert_eq!(s.output_as::<String>().expect("out"), "went now");
    h.stop().await;
}

/// Custom status is visible while running and after completion.
pub async fn custom_status(f: &dyn ProviderFactory) {
    let reg =
        common_registry().orchestration("Status", |ctx: OrchestrationContext, (): ()| async move {
            ctx.set_custom_status(&serde_json::json!({"step": 1}));
            let _: String = ctx.wait_for_external_event("Next").await?;
            ctx.set_custom_status(&"finished");
            Ok(())
        });
    let h = Harness::start(f, reg).await;
    let id = h.client.start_orchestration("Status", &()).await.expect("start");
    let running = crate::wait::wait_until(h.config.timeout, "custom status step 1", || async {
        h.client.get_state(&id).await.expect("state").filter(|s| s.status.is_some())
    })
    .await;
    assert_eq!(
        running.custom_status_as::<serde_json::Value>().expect("json"),
        serde_json::json!({"step": 1})
    );
    h.client.raise_event(&id, "Next", &"x").await.expect("raise");
    let s = h.wait(&id).await;
    assert_eq!(s.custom_status_as::<String>().expect("json"), "finished");
    h.stop().await;
}

/// Starting an existing instance id again creates a new execution; dedupe statuses refuse it.
pub async fn recreate_instance(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let id = unique("recreate");
    let first = h
        .client
        .schedule_new_orchestration("Quick", &"one", StartOptions::with_instance_id(&id))
        .await
        .expect("start");
    let s1 = h.wait(&id).await;
    assert_eq!(s1.output_as::<String>().expect("out"), "one");
    let dedupe = StartOptions {
        dedupe_statuses: vec![OrchestrationStatus::Completed],
        ..StartOptions::with_instance_id(&id)
    };
    match h.client.schedule_new_orchestration("Quick", &"refused", dedupe).await {
        Err(ClientError::AlreadyExists { instance_id, .. }) => assert_eq!(instance_id, id),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let second = h
        .client
        .schedule_new_orchestration("Quick", &"two", StartOptions::with_instance_id(&id))
        .await
        .expect("restart");
    assert_ne!(first.execution_id, second.execution_id);
    let s2 =
        crate::wait::wait_until(h.config.timeout, "the second execution to complete", || async {
            h.client.get_state(&id).await.expect("state").filter(|s| {
                s.orchestration_instance.execution_id == second.execution_id
                    && s.orchestration_status.is_terminal()
            })
        })
        .await;
    assert_eq!(s2.output_as::<String>().expect("out"), "two");
    let hist = h.client.get_history(&id).await.expect("history");
    let starts: Vec<_> = hist
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecutionStarted(s) => s.orchestration_instance.execution_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        vec![second.execution_id.clone().expect("exec")],
        "history holds only the new execution"
    );
    h.stop().await;
}
