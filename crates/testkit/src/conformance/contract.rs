//! Raw provider-contract checks (no worker): locking, abandon, stale locks.

use std::time::Duration;

use durabletask_core::{
    EventKind, ExecutionStartedEvent, HistoryEvent, OrchestrationInstance, ProviderErrorKind,
    TaskMessage, WorkItemResult, new_execution_id,
};

use super::{ProviderFactory, TestHub};

fn start_message(id: &str) -> TaskMessage {
    let inst = OrchestrationInstance::with_execution(id, new_execution_id());
    let ev = ExecutionStartedEvent::new(inst.clone(), "Quick", Some("\"x\"".into()));
    TaskMessage::new(
        inst,
        HistoryEvent::new(-1, time::OffsetDateTime::now_utc(), EventKind::ExecutionStarted(ev)),
    )
}

fn event_message(id: &str, name: &str) -> TaskMessage {
    TaskMessage::new(
        OrchestrationInstance::new(id),
        HistoryEvent::new(
            -1,
            time::OffsetDateTime::now_utc(),
            EventKind::EventRaised { name: name.into(), input: None },
        ),
    )
}

async fn hub(f: &dyn ProviderFactory) -> TestHub {
    let hub = f.create_hub().await;
    hub.service.create_if_not_exists().await.expect("create");
    hub.service.start().await.expect("start");
    hub
}

/// One work item per instance; abandon makes the batch visible again with a higher dequeue
/// count; messages that arrived meanwhile wait for the next work item.
pub async fn exclusive_instance_lock_and_abandon(f: &dyn ProviderFactory) {
    let cfg = f.config();
    let hub = hub(f).await;
    let id = format!("lock-{}", new_execution_id());
    hub.client.create_orchestration(start_message(&id), &[]).await.expect("create");
    let wi = hub
        .service
        .lock_next_orchestration_work_item(cfg.timeout)
        .await
        .expect("lock")
        .expect("work item");
    assert_eq!(wi.instance_id, id);
    assert!(matches!(wi.new_messages[0].event.kind, EventKind::ExecutionStarted(_)));
    hub.client.send_message(event_message(&id, "late")).await.expect("send");
    let none = hub
        .service
        .lock_next_orchestration_work_item(Duration::from_millis(300))
        .await
        .expect("lock");
    assert!(none.is_none(), "a second work item for a locked instance was handed out");
    hub.service.abandon_orchestration_work_item(&wi, Duration::ZERO).await.expect("abandon");
    hub.service.release_orchestration_work_item(&wi).await.expect("release");
    let again = hub
        .service
        .lock_next_orchestration_work_item(cfg.timeout)
        .await
        .expect("lock")
        .expect("redelivered");
    assert_eq!(again.instance_id, id);
    assert!(again.dequeue_count >= 2, "dequeue count after abandon: {}", again.dequeue_count);
    assert!(matches!(again.new_messages[0].event.kind, EventKind::ExecutionStarted(_)));
    // A lock that was given up cannot complete.
    match hub
        .service
        .complete_orchestration_work_item(&wi, WorkItemResult::Discard { reason: "stale".into() })
        .await
    {
        Err(e) => assert_eq!(e.kind(), ProviderErrorKind::LeaseLost, "{e}"),
        Ok(()) => panic!("a stale work item completed"),
    }
    hub.service
        .complete_orchestration_work_item(&again, WorkItemResult::Discard { reason: "test".into() })
        .await
        .expect("complete");
    hub.service.release_orchestration_work_item(&again).await.expect("release");
    let rest: Vec<TaskMessage> = match hub
        .service
        .lock_next_orchestration_work_item(Duration::from_millis(300))
        .await
        .expect("lock")
    {
        Some(w) => {
            let m = w.new_messages.clone();
            hub.service
                .complete_orchestration_work_item(
                    &w,
                    WorkItemResult::Discard { reason: "test".into() },
                )
                .await
                .expect("complete");
            m
        }
        None => Vec::new(),
    };
    assert!(
        rest.iter().all(|m| !matches!(m.event.kind, EventKind::ExecutionStarted(_))),
        "discarded start came back"
    );
    hub.service.stop(true).await.expect("stop");
    hub.service.delete().await.expect("delete");
}
