use super::*;
use crate::entity::EntityError;
use crate::entity::messages::{ReleaseMessage, release_message};
use time::macros::datetime;

const W: Duration = Duration::from_secs(1800);
const T0: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

fn registry() -> Registry {
    Registry::builder()
        .entity("Counter", |ctx: &mut crate::entity::EntityContext<i64>| match ctx.operation() {
            "add" => {
                let n: i64 = ctx.input()?;
                *ctx.state_mut() += n;
                Ok(None)
            }
            "get" => Ok(Some(ctx.state().copied().unwrap_or(0))),
            "delete" => {
                ctx.delete_state();
                Ok(None)
            }
            "forward" => {
                let v = ctx.state().copied().unwrap_or(0);
                ctx.signal_entity(&EntityId::new("counter", "other"), "add", &v)?;
                Ok(None)
            }
            other => Err(EntityError::new(format!("no operation {other}"))),
        })
        .build()
}

fn opts() -> RuntimeOptions {
    RuntimeOptions { entity_reorder_window: W, ..RuntimeOptions::default() }
}

fn entity() -> EntityId {
    EntityId::new("counter", "k")
}

fn req(op: &str, input: &str, stream: &str, seq: u64, signal: bool) -> RequestMessage {
    RequestMessage {
        operation: Some(op.into()),
        is_signal: signal,
        input: Some(input.into()),
        id: format!("req-{stream}-{seq}"),
        parent_instance_id: Some(format!("orch-{stream}")),
        parent_execution_id: Some(stream.into()),
        scheduled_time: None,
        lock_set: None,
        position: 0,
        cleanup: false,
        seq: Sequencing {
            stream: Some(stream.into()),
            seq,
            ordered: true,
            timestamp: T0,
            predecessor: (seq > 1).then_some(T0),
        },
    }
}

fn lock_req(holder: &str, locks: &[EntityId], seq: u64) -> RequestMessage {
    RequestMessage {
        operation: None,
        input: None,
        is_signal: false,
        lock_set: Some(locks.to_vec()),
        id: format!("lock-{holder}"),
        ..req("", "", holder, seq, false)
    }
}

fn msg(r: &RequestMessage) -> TaskMessage {
    request_message(&entity(), r, T0)
}

/// Runs one batch; returns the new stored state and the outgoing messages.
fn run(
    state: OrchestrationRuntimeState,
    messages: Vec<TaskMessage>,
) -> (OrchestrationRuntimeState, Vec<TaskMessage>, Option<String>) {
    let mut n = 0;
    let mut ids = || {
        n += 1;
        format!("exec{n}")
    };
    match process_entity_work_item(
        &registry(),
        state.clone(),
        messages,
        T0,
        &opts(),
        true,
        &mut ids,
    )
    .unwrap()
    {
        WorkItemResult::Checkpoint(cp) => {
            let mut stored = OrchestrationRuntimeState::new();
            for e in cp.runtime_state.new_events() {
                stored.add_event(e.clone()).unwrap();
            }
            (stored, cp.orchestrator_messages, cp.state.status)
        }
        WorkItemResult::Discard { reason } => {
            (state, Vec::new(), Some(format!("discard: {reason}")))
        }
    }
}

fn scheduler(s: &OrchestrationRuntimeState) -> SchedulerState {
    SchedulerState::from_input(s.execution_started().and_then(|s| s.input.as_deref())).unwrap()
}

fn response_result(m: &TaskMessage) -> (String, ResponseMessage) {
    let EventKind::EventRaised { name, input } = &m.event.kind else { panic!("not a response") };
    (name.clone(), serde_json::from_str(input.as_deref().unwrap()).unwrap())
}

#[test]
fn a_batch_applies_operations_once_and_answers_calls() {
    let a1 = req("add", "2", "s1", 1, true);
    let a2 = req("add", "3", "s1", 2, true);
    let get = req("get", "null", "s1", 3, false);
    let (state, out, status) =
        run(OrchestrationRuntimeState::new(), vec![msg(&a1), msg(&a2), msg(&a1), msg(&get)]);
    assert_eq!(scheduler(&state).state(), Some("5"));
    assert_eq!(out.len(), 1, "one response, to the call");
    let (name, resp) = response_result(&out[0]);
    assert_eq!((name.as_str(), resp.result.as_deref()), ("req-s1-3", Some("5")));
    assert_eq!(out[0].orchestration_instance.execution_id.as_deref(), Some("s1"));
    assert!(status.unwrap().contains("\"entityExists\":true"));
    // Redelivered copies of the whole batch, later, change nothing but are checkpointed (that
    // rewrites an Instances row a crash between the History and Instances writes left behind).
    let mut n = 0;
    let mut ids = || {
        n += 1;
        format!("x{n}")
    };
    let later = T0 + time::Duration::minutes(5);
    let r = process_entity_work_item(
        &registry(),
        state.clone(),
        vec![msg(&a1), msg(&get)],
        later,
        &opts(),
        true,
        &mut ids,
    )
    .unwrap();
    let WorkItemResult::Checkpoint(cp) = r else { panic!("copies are checkpointed") };
    assert!(cp.orchestrator_messages.is_empty(), "a copy of a call is not answered twice");
    let (again, out, _) = run(state.clone(), vec![msg(&a1), msg(&a2), msg(&get)]);
    assert!(out.is_empty());
    assert_eq!(scheduler(&again).state(), Some("5"));
}

#[test]
fn out_of_order_messages_wait_for_their_predecessor() {
    let a1 = req("add", "1", "s1", 1, true);
    let a2 = req("add", "10", "s1", 2, true);
    let (state, _, _) = run(OrchestrationRuntimeState::new(), vec![msg(&a2)]);
    let s = scheduler(&state);
    assert_eq!((s.state(), s.out_of_order()), (None, 1));
    let (state, _, _) = run(state, vec![msg(&a1)]);
    let s = scheduler(&state);
    assert_eq!((s.state(), s.out_of_order()), (Some("11"), 0));
}

#[test]
fn failing_operations_report_and_keep_the_state() {
    let a = req("add", "4", "s1", 1, true);
    let bad = req("nope", "null", "s1", 2, false);
    let (state, out, _) = run(OrchestrationRuntimeState::new(), vec![msg(&a), msg(&bad)]);
    assert_eq!(scheduler(&state).state(), Some("4"));
    let (_, resp) = response_result(&out[0]);
    assert_eq!(resp.failure_details.unwrap().error_message, "no operation nope");
}

#[test]
fn a_lock_holds_other_callers_until_released() {
    let me = entity();
    let other = EntityId::new("counter", "z");
    let lock = lock_req("h", &[me.clone(), other.clone()], 1);
    let (state, out, _) = run(OrchestrationRuntimeState::new(), vec![msg(&lock)]);
    assert_eq!(scheduler(&state).locked_by(), Some("orch-h"));
    // The lock request moves on to the next entity of the set.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].orchestration_instance.instance_id, other.instance_id());
    // Another caller waits; the holder's own call runs.
    let x = req("add", "100", "x", 1, true);
    let mine = req("add", "1", "h", 2, true);
    let (state, _, _) = run(state, vec![msg(&x), msg(&mine)]);
    let s = scheduler(&state);
    assert_eq!((s.state(), s.backlog()), (Some("1"), 1));
    // The release lets the waiting caller in.
    let release = ReleaseMessage {
        parent_instance_id: "orch-h".into(),
        id: "lock-h".into(),
        seq: req("", "", "h", 3, true).seq,
    };
    let (state, _, _) = run(state, vec![release_message(&me, &release, T0)]);
    let s = scheduler(&state);
    assert_eq!((s.state(), s.backlog(), s.locked_by()), (Some("101"), 0, None));
}

#[test]
fn the_last_entity_of_a_lock_set_answers_the_holder() {
    let lock = lock_req("h", &[entity()], 1);
    let (_, out, _) = run(OrchestrationRuntimeState::new(), vec![msg(&lock)]);
    let (name, resp) = response_result(&out[0]);
    assert_eq!((name.as_str(), resp.result.as_deref()), ("lock-h", Some(LOCK_ACQUIRED)));
    assert_eq!(out[0].orchestration_instance.instance_id, "orch-h");
}

#[test]
fn early_scheduled_signals_are_sent_again_and_signals_are_numbered() {
    let mut early = req("add", "1", "s1", 1, true);
    early.scheduled_time = Some(T0 + time::Duration::hours(1));
    let (state, out, _) = run(OrchestrationRuntimeState::new(), vec![msg(&early)]);
    assert_eq!(scheduler(&state).state(), None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].deliver_at(), early.scheduled_time);

    let a = req("add", "7", "s1", 1, true);
    let f1 = req("forward", "null", "s1", 2, true);
    let f2 = req("forward", "null", "s1", 3, true);
    let (state, out, _) = run(OrchestrationRuntimeState::new(), vec![msg(&a), msg(&f1), msg(&f2)]);
    let seqs: Vec<u64> = out
        .iter()
        .map(|m| {
            let EventKind::EventRaised { input, .. } = &m.event.kind else { panic!() };
            serde_json::from_str::<RequestMessage>(input.as_deref().unwrap()).unwrap().seq.seq
        })
        .collect();
    assert_eq!(seqs, [1, 2]);
    // A re-run of the same batch (its checkpoint failed after sending) numbers the same way.
    let (_, again, _) = run(OrchestrationRuntimeState::new(), vec![msg(&a), msg(&f1), msg(&f2)]);
    let kinds = |v: &[TaskMessage]| v.iter().map(|m| m.event.kind.clone()).collect::<Vec<_>>();
    assert_eq!(kinds(&again), kinds(&out));
    assert_eq!(scheduler(&state).state(), Some("7"));
}

#[test]
fn cleanup_completes_only_an_empty_idle_entity() {
    let a = req("add", "1", "s1", 1, true);
    let d = req("delete", "null", "s1", 2, true);
    let (state, _, _) = run(OrchestrationRuntimeState::new(), vec![msg(&a), msg(&d)]);
    let mut cleanup = req("", "", "c", 0, true);
    cleanup.operation = None;
    cleanup.cleanup = true;
    cleanup.seq = Sequencing::unsequenced(T0);
    // Within the window the entity still remembers its sender: it stays.
    let (kept, _, status) = run(state.clone(), vec![msg(&cleanup)]);
    assert!(!kept.is_completed(), "{status:?}");
    // After the window it completes.
    let mut n = 0;
    let mut ids = || {
        n += 1;
        format!("e{n}")
    };
    let later = T0 + time::Duration::hours(2);
    let r = process_entity_work_item(
        &registry(),
        state,
        vec![msg(&cleanup)],
        later,
        &opts(),
        true,
        &mut ids,
    )
    .unwrap();
    let WorkItemResult::Checkpoint(cp) = r else { panic!("expected a checkpoint") };
    assert_eq!(cp.state.orchestration_status, crate::state::OrchestrationStatus::Completed);
}

#[test]
fn results_and_signals_over_the_message_limit_fail_their_operation() {
    let registry = Registry::builder()
        .entity("Blob", |ctx: &mut crate::entity::EntityContext<String>| match ctx.operation() {
            "grow" => {
                let n: usize = ctx.input()?;
                ctx.state_mut().push_str(&"x".repeat(n));
                Ok(None)
            }
            "read" => {
                ctx.state_mut().push('!');
                Ok(ctx.state().cloned())
            }
            "send" => {
                let body = ctx.state().cloned().unwrap_or_default();
                ctx.state_mut().push('?');
                ctx.signal_entity(&EntityId::new("blob", "other"), "grow", &body)?;
                Ok(None)
            }
            _ => Ok(None),
        })
        .build();
    let target = EntityId::new("blob", "k");
    let call = |op: &str, input: &str, seq: u64| {
        let mut r = req(op, input, "s1", seq, false);
        r.parent_instance_id = Some("orch".into());
        request_message(&target, &r, T0)
    };
    let options = RuntimeOptions { max_message_bytes: Some(16 * 1024), ..opts() };
    let mut n = 0;
    let mut ids = || {
        n += 1;
        format!("e{n}")
    };
    let msgs = vec![call("grow", "20000", 1), call("read", "null", 2), call("send", "null", 3)];
    let r = process_entity_work_item(
        &registry,
        OrchestrationRuntimeState::new(),
        msgs,
        T0,
        &options,
        true,
        &mut ids,
    )
    .unwrap();
    let WorkItemResult::Checkpoint(cp) = r else { panic!("expected a checkpoint") };
    let responses: Vec<ResponseMessage> =
        cp.orchestrator_messages.iter().map(|m| response_result(m).1).collect();
    assert_eq!(responses.len(), 3, "three calls, three answers, no signal sent");
    assert!(responses[0].failure_details.is_none());
    for r in &responses[1..] {
        let fd = r.failure_details.as_ref().expect("failed");
        assert_eq!(fd.error_type, crate::entity::MESSAGE_TOO_LARGE, "{fd:?}");
    }
    // Both failing operations were rolled back: the state is exactly what "grow" made.
    let state = cp.runtime_state.execution_started().and_then(|s| s.input.clone());
    let s = SchedulerState::from_input(state.as_deref()).unwrap();
    let stored: String = serde_json::from_str(s.state().unwrap()).unwrap();
    assert_eq!(stored.len(), 20_000);
    assert!(
        cp.orchestrator_messages
            .iter()
            .all(|m| crate::entity::messages::message_size(m) <= 16 * 1024)
    );
}

#[test]
fn a_batch_that_cannot_know_the_last_send_finished_sends_the_outbox_again() {
    let a = req("add", "5", "s1", 1, true);
    let get = req("get", "null", "s1", 2, false);
    let (state, out, _) = run(OrchestrationRuntimeState::new(), vec![msg(&a), msg(&get)]);
    assert_eq!(out.len(), 1, "the response");
    assert_eq!(scheduler(&state).outbox.len(), 1, "recorded in the committed state");
    let later = req("add", "1", "s1", 3, true);
    let batch = |finished: bool| {
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("y{n}")
        };
        let r = process_entity_work_item(
            &registry(),
            state.clone(),
            vec![msg(&later)],
            T0,
            &opts(),
            finished,
            &mut ids,
        )
        .unwrap();
        let WorkItemResult::Checkpoint(cp) = r else { panic!("checkpoint") };
        assert!(cp.commit_before_send);
        cp
    };
    // From the cache: the last checkpoint sent its response; nothing to send, outbox cleared.
    let warm = batch(true);
    assert!(warm.orchestrator_messages.is_empty());
    // From storage: the response goes out again, identical, and stays recorded.
    let cold = batch(false);
    assert_eq!(cold.orchestrator_messages, out);
    let s = SchedulerState::from_input(
        cold.runtime_state.execution_started().and_then(|s| s.input.as_deref()),
    )
    .unwrap();
    assert_eq!(s.outbox, out);
    assert_eq!(s.state(), Some("6"));
}
