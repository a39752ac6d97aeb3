//! Work-item processing: reconciliation, decisions → events and messages, continue-as-new.

use durabletask_core::runtime::{RuntimeOptions, WorkItemResult, process_work_item};
use durabletask_core::{
    EventKind, EventType, ExecutionStartedEvent, HistoryEvent, OrchestrationInstance,
    OrchestrationRuntimeState, OrchestrationStatus, ParentInstance, TaskMessage,
};

use crate::support::{H, T0, registry};

fn start_msg(name: &str, input: &str, exec: &str) -> TaskMessage {
    let inst = OrchestrationInstance::with_execution("inst", exec);
    TaskMessage::new(
        inst.clone(),
        HistoryEvent::new(
            -1,
            T0,
            EventKind::ExecutionStarted(ExecutionStartedEvent::new(inst, name, Some(input.into()))),
        ),
    )
}

fn msg(exec: Option<&str>, kind: EventKind) -> TaskMessage {
    TaskMessage::new(
        OrchestrationInstance { instance_id: "inst".into(), execution_id: exec.map(str::to_owned) },
        HistoryEvent::new(-1, T0, kind),
    )
}

fn run(
    state: OrchestrationRuntimeState,
    msgs: Vec<TaskMessage>,
    opts: &RuntimeOptions,
) -> WorkItemResult {
    let mut n = 0;
    let mut ids = move || {
        n += 1;
        format!("gen{n}")
    };
    process_work_item(&registry(), state, msgs, T0, opts, &mut ids).unwrap()
}

fn types(events: &[HistoryEvent]) -> Vec<EventType> {
    events.iter().map(HistoryEvent::event_type).collect()
}

#[test]
fn first_episode_schedules_and_checkpoints() {
    let r = run(
        OrchestrationRuntimeState::new(),
        vec![start_msg("Hello", "\"W\"", "exec")],
        &RuntimeOptions::default(),
    );
    let WorkItemResult::Checkpoint(cp) = r else { panic!("expected checkpoint") };
    assert!(cp.runtime_state.past_events().is_empty());
    assert_eq!(
        types(cp.runtime_state.new_events()),
        vec![
            EventType::OrchestratorStarted,
            EventType::ExecutionStarted,
            EventType::TaskScheduled,
            EventType::OrchestratorCompleted
        ]
    );
    let EventKind::TaskScheduled { input, .. } = &cp.runtime_state.new_events()[2].kind else {
        panic!()
    };
    assert_eq!(input, &None, "input dropped from history unless include_parameters");
    assert_eq!(cp.activity_messages.len(), 1);
    let EventKind::TaskScheduled { input, name, .. } = &cp.activity_messages[0].event.kind else {
        panic!()
    };
    assert_eq!((name.as_str(), input.as_deref()), ("SayHello", Some("\"W\"")));
    assert_eq!(
        cp.activity_messages[0].orchestration_instance.execution_id.as_deref(),
        Some("exec")
    );
    assert_eq!(cp.state.orchestration_status, OrchestrationStatus::Running);
    assert!(cp.runtime_state.new_events()[1].is_played, "ExecutionStarted was played");
    // As in DTF: OrchestratorStarted only sets the clock and is never marked played; events
    // appended from the episode's decisions are not played yet.
    assert!(!cp.runtime_state.new_events()[0].is_played, "OrchestratorStarted");
    assert!(!cp.runtime_state.new_events()[2].is_played, "TaskScheduled");

    let with_params = run(
        OrchestrationRuntimeState::new(),
        vec![start_msg("Hello", "\"W\"", "exec")],
        &RuntimeOptions { include_parameters: true, ..RuntimeOptions::default() },
    );
    let WorkItemResult::Checkpoint(cp) = with_params else { panic!() };
    let EventKind::TaskScheduled { input, .. } = &cp.runtime_state.new_events()[2].kind else {
        panic!()
    };
    assert_eq!(input.as_deref(), Some("\"W\""));
}

#[test]
fn discards_unknown_terminal_and_stale() {
    let opts = RuntimeOptions::default();
    let r = run(
        OrchestrationRuntimeState::new(),
        vec![msg(None, EventKind::EventRaised { name: "x".into(), input: None })],
        &opts,
    );
    assert!(matches!(r, WorkItemResult::Discard { .. }), "{r:?}");

    let running = OrchestrationRuntimeState::from_history(
        H::new().os().start("Hello", "\"W\"").scheduled(0, "SayHello").oc().build(),
    )
    .unwrap();
    let stale = run(
        running.clone(),
        vec![msg(Some("old"), EventKind::TaskCompleted { task_scheduled_id: 0, result: None })],
        &opts,
    );
    assert!(matches!(stale, WorkItemResult::Discard { .. }), "{stale:?}");

    let dup_start = run(running.clone(), vec![start_msg("Hello", "\"W\"", "exec")], &opts);
    assert!(matches!(dup_start, WorkItemResult::Discard { .. }), "{dup_start:?}");

    let done = run(
        running,
        vec![msg(
            Some("exec"),
            EventKind::TaskCompleted { task_scheduled_id: 0, result: Some("\"hi\"".into()) },
        )],
        &opts,
    );
    let WorkItemResult::Checkpoint(cp) = done else { panic!() };
    assert_eq!(cp.state.orchestration_status, OrchestrationStatus::Completed);
    assert_eq!(cp.state.output.as_deref(), Some("\"hi\""));
    assert_eq!(cp.runtime_state.past_events().len(), 4);
    let terminal = cp.runtime_state.clone();
    let after = run(
        OrchestrationRuntimeState::from_history(terminal.into_events()).unwrap(),
        vec![msg(None, EventKind::EventRaised { name: "x".into(), input: None })],
        &opts,
    );
    assert!(
        matches!(after, WorkItemResult::Discard { ref reason } if reason.contains("Completed")),
        "{after:?}"
    );
}

#[test]
fn continue_as_new_runs_generations_in_one_work_item_with_carryover() {
    let mut msgs = vec![start_msg("Counter", "0", "exec")];
    for _ in 0..3 {
        msgs.push(msg(
            None,
            EventKind::EventRaised { name: "inc".into(), input: Some("1".into()) },
        ));
    }
    let WorkItemResult::Checkpoint(cp) =
        run(OrchestrationRuntimeState::new(), msgs, &RuntimeOptions::default())
    else {
        panic!()
    };
    assert_eq!(cp.generations_continued, 3);
    assert_eq!(cp.state.orchestration_status, OrchestrationStatus::Completed);
    assert_eq!(cp.state.output.as_deref(), Some("3"));
    assert_eq!(cp.state.orchestration_instance.execution_id.as_deref(), Some("gen3"));
    assert_eq!(cp.state.generation, Some(3));
    assert!(cp.runtime_state.past_events().is_empty(), "new execution replaces history");
    let t = types(cp.runtime_state.new_events());
    assert_eq!(t.iter().filter(|x| **x == EventType::ExecutionStarted).count(), 1);
    assert!(!t.contains(&EventType::ContinueAsNew));
    assert!(!t.contains(&EventType::EventRaised), "all carried events consumed");
}

#[test]
fn sub_orchestration_messages_and_parent_notice() {
    let WorkItemResult::Checkpoint(cp) = run(
        OrchestrationRuntimeState::new(),
        vec![start_msg("Parent", "null", "exec")],
        &RuntimeOptions::default(),
    ) else {
        panic!()
    };
    assert_eq!(cp.orchestrator_messages.len(), 1);
    let m = &cp.orchestrator_messages[0];
    assert_eq!(m.orchestration_instance.instance_id, "exec:0");
    assert_eq!(m.orchestration_instance.execution_id.as_deref(), Some("gen1"));
    let EventKind::ExecutionStarted(s) = &m.event.kind else { panic!() };
    let p = s.parent_instance.as_ref().unwrap();
    assert_eq!(
        (p.task_schedule_id, p.orchestration_instance.execution_id.as_deref()),
        (0, Some("exec"))
    );

    // The child completing notifies the parent's execution.
    let mut child_start = ExecutionStartedEvent::new(
        OrchestrationInstance::with_execution("child", "c1"),
        "Hello",
        Some("\"kid\"".into()),
    );
    child_start.parent_instance = Some(ParentInstance {
        name: Some("Parent".into()),
        version: None,
        orchestration_instance: OrchestrationInstance::with_execution("inst", "exec"),
        task_schedule_id: 0,
    });
    let hist = vec![
        HistoryEvent::new(-1, T0, EventKind::OrchestratorStarted),
        HistoryEvent::new(-1, T0, EventKind::ExecutionStarted(child_start)),
        HistoryEvent::new(
            0,
            T0,
            EventKind::TaskScheduled {
                name: "SayHello".into(),
                version: None,
                input: None,
                tags: None,
            },
        ),
        HistoryEvent::new(-1, T0, EventKind::OrchestratorCompleted),
    ];
    let done = msg(
        None,
        EventKind::TaskCompleted { task_scheduled_id: 0, result: Some("\"Hello kid\"".into()) },
    );
    let WorkItemResult::Checkpoint(cp) = run(
        OrchestrationRuntimeState::from_history(hist).unwrap(),
        vec![done],
        &RuntimeOptions::default(),
    ) else {
        panic!()
    };
    assert_eq!(cp.orchestrator_messages.len(), 1);
    let n = &cp.orchestrator_messages[0];
    assert_eq!(n.orchestration_instance, OrchestrationInstance::with_execution("inst", "exec"));
    assert_eq!(
        n.event.kind,
        EventKind::SubOrchestrationInstanceCompleted {
            task_scheduled_id: 0,
            result: Some("\"Hello kid\"".into())
        }
    );
}

#[test]
fn timers_become_delayed_self_messages() {
    let WorkItemResult::Checkpoint(cp) = run(
        OrchestrationRuntimeState::new(),
        vec![start_msg("Race", "null", "exec")],
        &RuntimeOptions::default(),
    ) else {
        panic!()
    };
    assert_eq!(cp.timer_messages.len(), 1);
    let EventKind::TimerFired { timer_id, fire_at } = cp.timer_messages[0].event.kind else {
        panic!()
    };
    assert_eq!(timer_id, 0);
    assert_eq!(fire_at, T0 + std::time::Duration::from_secs(60));
    assert_eq!(cp.timer_messages[0].orchestration_instance.execution_id.as_deref(), Some("exec"));
}

#[test]
fn recreation_replaces_a_terminal_execution() {
    let done = H::new()
        .os()
        .start("Hello", "\"W\"")
        .push(
            1,
            EventKind::ExecutionCompleted {
                orchestration_status: OrchestrationStatus::Failed,
                result: None,
                failure_details: None,
            },
        )
        .oc()
        .build();
    let WorkItemResult::Checkpoint(cp) = run(
        OrchestrationRuntimeState::from_history(done).unwrap(),
        vec![start_msg("Hello", "\"Z\"", "exec2")],
        &RuntimeOptions::default(),
    ) else {
        panic!()
    };
    assert!(cp.runtime_state.past_events().is_empty());
    assert_eq!(cp.runtime_state.execution_id(), Some("exec2"));
    assert_eq!(cp.state.orchestration_status, OrchestrationStatus::Running);
}

fn child_start(exec: &str, parent_exec: &str, task: i32) -> TaskMessage {
    let mut m = start_msg("Hello", "\"W\"", exec);
    if let EventKind::ExecutionStarted(s) = &mut m.event.kind {
        s.parent_instance = Some(ParentInstance {
            name: Some("Parent".into()),
            version: None,
            orchestration_instance: OrchestrationInstance::with_execution("parent", parent_exec),
            task_schedule_id: task,
        });
    }
    m
}

#[test]
fn a_sub_orchestration_start_resent_by_the_same_parent_task_does_not_rerun_the_child() {
    // The child ran exec1 to completion for parent execution p1, task 0. The parent's checkpoint
    // had failed after sending, it re-ran the episode and sent the start again (new execution id).
    let first = child_start("exec1", "p1", 0);
    let EventKind::ExecutionStarted(started) = first.event.kind.clone() else { unreachable!() };
    let done = H::new()
        .os()
        .push(-1, EventKind::ExecutionStarted(started))
        .push(
            1,
            EventKind::ExecutionCompleted {
                orchestration_status: OrchestrationStatus::Completed,
                result: Some("\"Hello W!\"".into()),
                failure_details: None,
            },
        )
        .oc()
        .build();
    let state = || OrchestrationRuntimeState::from_history(done.clone()).unwrap();
    let resent = run(state(), vec![child_start("exec2", "p1", 0)], &RuntimeOptions::default());
    assert!(
        matches!(resent, WorkItemResult::Discard { .. }),
        "a resent start of the same parent task is a duplicate, not a recreation: {resent:?}"
    );
    // Another parent execution (a continue-as-new generation) or another task of the same parent
    // calling the same child id is a new request: the completed child is recreated.
    for other in [child_start("exec3", "p2", 0), child_start("exec4", "p1", 3)] {
        let WorkItemResult::Checkpoint(cp) = run(state(), vec![other], &RuntimeOptions::default())
        else {
            panic!("a new request recreates the child")
        };
        assert!(cp.runtime_state.past_events().is_empty());
    }
}

#[test]
fn events_to_invalid_instance_ids_are_recorded_but_not_sent() {
    let r = run(
        OrchestrationRuntimeState::new(),
        vec![start_msg("NotifyMany", "null", "exec")],
        &RuntimeOptions::default(),
    );
    let WorkItemResult::Checkpoint(cp) = r else { panic!("expected checkpoint") };
    let sent: Vec<&str> = cp
        .runtime_state
        .new_events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::EventSent { instance_id, .. } => Some(instance_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, ["", "bad\u{2028}id", "tab\tid", "ok/other"], "history records every send");
    let targets: Vec<&str> = cp
        .orchestrator_messages
        .iter()
        .map(|m| m.orchestration_instance.instance_id.as_str())
        .collect();
    assert_eq!(targets, ["ok/other"], "only the valid id gets a message");
    assert_eq!(cp.state.orchestration_status, OrchestrationStatus::Completed);
}

/// Events are stamped at 100 ns precision (what Azure Storage keeps): a history replayed from
/// storage is exactly the cached one, so the episode time (and `new_guid`) replay identically.
#[test]
fn episode_times_are_stamped_at_storage_precision() {
    let now = T0 + time::Duration::nanoseconds(123_456_789);
    let mut n = 0;
    let mut ids = move || {
        n += 1;
        format!("gen{n}")
    };
    let r = process_work_item(
        &registry(),
        OrchestrationRuntimeState::new(),
        vec![start_msg("Hello", "\"x\"", "e1")],
        now,
        &RuntimeOptions::default(),
        &mut ids,
    )
    .unwrap();
    let WorkItemResult::Checkpoint(cp) = r else { panic!("checkpoint") };
    let stamps: Vec<_> = cp
        .runtime_state
        .new_events()
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::ExecutionStarted(_)))
        .map(|e| e.timestamp)
        .collect();
    assert!(!stamps.is_empty());
    for t in stamps {
        assert_eq!(t.nanosecond() % 100, 0, "{t}");
        assert_eq!(t, T0 + time::Duration::nanoseconds(123_456_700));
    }
}
