use super::*;
use time::macros::datetime;

fn sample_kinds() -> Vec<EventKind> {
    let fd = FailureDetails {
        inner_failure: Some(Box::new(FailureDetails::new("Inner", "cause"))),
        is_non_retriable: true,
        properties: Some(BTreeMap::from([("k".to_owned(), serde_json::json!(1))])),
        ..FailureDetails::new("Boom", "it broke")
    };
    let mut started = ExecutionStartedEvent::new(
        OrchestrationInstance::with_execution("i1", "e1"),
        "Orch",
        Some("42".into()),
    );
    started.parent_instance = Some(ParentInstance {
        name: Some("P".into()),
        version: None,
        orchestration_instance: OrchestrationInstance::with_execution("p", "pe"),
        task_schedule_id: 3,
    });
    started.tags = Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]));
    started.scheduled_start_time = Some(datetime!(2024-01-02 03:04:05.123456789 UTC));
    started.generation = Some(2);
    let at = datetime!(2024-05-06 07:08:09.5 UTC);
    vec![
        EventKind::ExecutionStarted(started),
        EventKind::ExecutionCompleted {
            orchestration_status: OrchestrationStatus::Failed,
            result: Some("r".into()),
            failure_details: Some(fd.clone()),
        },
        EventKind::ExecutionFailed,
        EventKind::ExecutionTerminated { input: Some("why".into()) },
        EventKind::TaskScheduled {
            name: "A".into(),
            version: Some("1".into()),
            input: Some("\"x\"".into()),
            tags: None,
        },
        EventKind::TaskCompleted { task_scheduled_id: 0, result: Some("1".into()) },
        EventKind::TaskFailed {
            task_scheduled_id: 1,
            reason: Some("r".into()),
            details: None,
            failure_details: Some(fd.clone()),
        },
        EventKind::SubOrchestrationInstanceCreated {
            name: "S".into(),
            version: None,
            instance_id: "c".into(),
            input: None,
            tags: None,
        },
        EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id: 2, result: None },
        EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id: 2,
            reason: None,
            details: Some("d".into()),
            failure_details: None,
        },
        EventKind::TimerCreated { fire_at: at },
        EventKind::TimerFired { timer_id: 4, fire_at: at },
        EventKind::OrchestratorStarted,
        EventKind::OrchestratorCompleted,
        EventKind::EventSent { instance_id: "o".into(), name: "E".into(), input: Some("1".into()) },
        EventKind::EventRaised { name: "E".into(), input: None },
        EventKind::ContinueAsNew { result: Some("5".into()) },
        EventKind::GenericEvent { data: Some("g".into()) },
        EventKind::HistoryState { state: Some(serde_json::json!({"x": 1})) },
        EventKind::ExecutionSuspended { reason: Some("s".into()) },
        EventKind::ExecutionResumed { reason: None },
        EventKind::ExecutionRewound {
            reason: Some("rw".into()),
            parent_execution_id: None,
            instance_id: Some("i".into()),
        },
    ]
}

#[test]
fn every_event_kind_round_trips_through_json() {
    let kinds = sample_kinds();
    let types: Vec<EventType> = kinds.iter().map(EventKind::event_type).collect();
    assert_eq!(types, EventType::ALL.to_vec(), "one sample per event type, in ordinal order");
    for (i, kind) in kinds.into_iter().enumerate() {
        let ev = HistoryEvent {
            event_id: i32::try_from(i).unwrap() - 1,
            is_played: i % 2 == 0,
            timestamp: datetime!(2023-03-24 20:53:05.9093518 UTC),
            kind,
        };
        let json = serde_json::to_string(&ev).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["EventType"], ev.event_type().as_str(), "{json}");
        assert_eq!(value["EventId"], ev.event_id);
        let back: HistoryEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev, "{json}");
    }
}

#[test]
fn event_type_ordinals_and_names_match_dtf() {
    assert_eq!(EventType::ExecutionStarted.as_i32(), 0);
    assert_eq!(EventType::TaskScheduled.as_i32(), 4);
    assert_eq!(EventType::TimerFired.as_i32(), 11);
    assert_eq!(EventType::EventRaised.as_i32(), 15);
    assert_eq!(EventType::ExecutionRewound.as_i32(), 21);
    for (i, t) in EventType::ALL.iter().enumerate() {
        assert_eq!(usize::try_from(t.as_i32()).unwrap(), i);
        assert_eq!(EventType::from_i32(t.as_i32()), Some(*t));
        assert_eq!(t.as_str().parse::<EventType>().unwrap(), *t);
        assert_eq!(t.to_string(), t.as_str());
    }
    assert_eq!(EventType::from_i32(22), None);
    assert_eq!(EventType::from_i32(-1), None);
    assert!("taskscheduled".parse::<EventType>().is_err());
}

#[test]
fn task_event_id_uses_response_correlation() {
    let at = datetime!(2024-01-01 0:00 UTC);
    let e =
        HistoryEvent::new(-1, at, EventKind::TaskCompleted { task_scheduled_id: 7, result: None });
    assert_eq!(e.task_event_id(), 7);
    let e = HistoryEvent::new(-1, at, EventKind::TimerFired { timer_id: 3, fire_at: at });
    assert_eq!(e.task_event_id(), 3);
    let e = HistoryEvent::new(5, at, EventKind::TimerCreated { fire_at: at });
    assert_eq!(e.task_event_id(), 5);
}

#[test]
fn task_message_and_failure_details_round_trip() {
    let at = datetime!(2024-01-01 0:00 UTC);
    let mut msg = TaskMessage::new(
        OrchestrationInstance::new("x"),
        HistoryEvent::new(-1, at, EventKind::EventRaised { name: "n".into(), input: None }),
    );
    msg.orchestration_execution_context = Some(OrchestrationExecutionContext {
        orchestration_tags: BTreeMap::from([("t".to_owned(), "v".to_owned())]),
    });
    let back: TaskMessage = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
    assert_eq!(back, msg);
    let fd = FailureDetails::new("T", "m");
    assert_eq!(fd.to_string(), "T: m");
    assert!(!fd.is_caused_by("X"));
    let outer =
        FailureDetails { inner_failure: Some(Box::new(fd)), ..FailureDetails::new("O", "o") };
    assert!(outer.is_caused_by("T"));
}
