//! Table-driven tests of every admission rule.

use super::*;
use crate::history::{ExecutionStartedEvent, OrchestrationInstance, ParentInstance};

const T0: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

fn secs(n: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(n)
}

fn start(exec: &str, at: OffsetDateTime) -> TaskMessage {
    let inst = OrchestrationInstance::with_execution("i", exec);
    let s = ExecutionStartedEvent::new(inst.clone(), "Orch", None);
    TaskMessage::new(inst, HistoryEvent::new(-1, at, EventKind::ExecutionStarted(s)))
}

fn sub_start(exec: &str) -> TaskMessage {
    let mut m = start(exec, T0);
    if let EventKind::ExecutionStarted(s) = &mut m.event.kind {
        s.parent_instance = Some(ParentInstance {
            name: Some("Parent".into()),
            version: None,
            orchestration_instance: OrchestrationInstance::with_execution("p", "pe"),
            task_schedule_id: 0,
        });
    }
    m
}

/// A sub-orchestration start of execution `exec` from parent `p` execution `pe`, task 7.
fn resent_sub_start(exec: &str) -> TaskMessage {
    let mut m = sub_start(exec);
    if let EventKind::ExecutionStarted(s) = &mut m.event.kind
        && let Some(p) = s.parent_instance.as_mut()
    {
        p.task_schedule_id = 7;
    }
    m
}

/// [`history`] of a child started by parent `p` execution `pe` at its task 7.
fn sub_history(exec: &str, status: Option<OrchestrationStatus>) -> Vec<HistoryEvent> {
    let mut h = history(exec, status);
    if let EventKind::ExecutionStarted(s) = &mut h[1].kind {
        s.parent_instance = Some(ParentInstance {
            name: Some("Parent".into()),
            version: None,
            orchestration_instance: OrchestrationInstance::with_execution("p", "pe"),
            task_schedule_id: 7,
        });
    }
    h
}

fn to(exec: &str, kind: EventKind) -> TaskMessage {
    TaskMessage::new(
        OrchestrationInstance::with_execution("i", exec),
        HistoryEvent::new(-1, T0, kind),
    )
}

fn completed(exec: &str, task: i32) -> TaskMessage {
    to(exec, EventKind::TaskCompleted { task_scheduled_id: task, result: None })
}

fn timer_fired(exec: &str, timer: i32) -> TaskMessage {
    to(exec, EventKind::TimerFired { timer_id: timer, fire_at: T0 })
}

fn event(exec: &str) -> TaskMessage {
    to(exec, EventKind::EventRaised { name: "e".into(), input: None })
}

/// An operation request to entity `@counter@k` (no execution id, as entities receive them).
fn entity_op() -> TaskMessage {
    TaskMessage::new(
        OrchestrationInstance::new("@counter@k"),
        HistoryEvent::new(-1, T0, EventKind::EventRaised { name: "op".into(), input: None }),
    )
}

/// An entity's stored execution; `completed`: removed by a clean-up.
fn entity_history(completed: bool) -> Vec<HistoryEvent> {
    let inst = OrchestrationInstance::with_execution("@counter@k", "x1");
    let mut h = vec![
        HistoryEvent::new(-1, T0, EventKind::OrchestratorStarted),
        HistoryEvent::new(
            -1,
            T0,
            EventKind::ExecutionStarted(ExecutionStartedEvent::new(inst, "counter", None)),
        ),
    ];
    if completed {
        h.push(HistoryEvent::new(
            -1,
            T0,
            EventKind::ExecutionCompleted {
                orchestration_status: Completed,
                result: None,
                failure_details: None,
            },
        ));
    }
    h
}

fn terminate(exec: &str) -> TaskMessage {
    to(exec, EventKind::ExecutionTerminated { input: Some("why".into()) })
}

/// History of execution `exec`: started, activity 0 scheduled, timer 1 created, and (when
/// `status` is given) completed with it.
fn history(exec: &str, status: Option<OrchestrationStatus>) -> Vec<HistoryEvent> {
    let mut h = vec![
        HistoryEvent::new(-1, T0, EventKind::OrchestratorStarted),
        start(exec, T0).event,
        HistoryEvent::new(
            0,
            T0,
            EventKind::TaskScheduled { name: "A".into(), version: None, input: None, tags: None },
        ),
        HistoryEvent::new(1, T0, EventKind::TimerCreated { fire_at: T0 }),
    ];
    if let Some(s) = status {
        h.push(HistoryEvent::new(
            2,
            T0,
            EventKind::ExecutionCompleted {
                orchestration_status: s,
                result: None,
                failure_details: None,
            },
        ));
    }
    h
}

fn row(exec: &str, status: OrchestrationStatus, created: OffsetDateTime) -> RowState {
    RowState::Present(RowView {
        execution_id: Some(exec.into()),
        status,
        created_time: created,
        scheduled_start_time: None,
    })
}

struct Case {
    name: &'static str,
    messages: Vec<(TaskMessage, u64)>,
    history: Vec<HistoryEvent>,
    row: RowState,
    row_reread: bool,
    rules: AdmissionRules,
    expect: Expect,
}

#[derive(Debug)]
enum Expect {
    Needs(Duration),
    Decided(Vec<Verdict>, Option<InstanceAction>),
}

fn case(
    name: &'static str,
    messages: Vec<(TaskMessage, u64)>,
    history: Vec<HistoryEvent>,
    row: RowState,
    expect: Expect,
) -> Case {
    Case {
        name,
        messages,
        history,
        row,
        row_reread: false,
        rules: AdmissionRules::default(),
        expect,
    }
}

use OrchestrationStatus::{Completed, Pending, Running, Terminated};
use Verdict::Run;

fn discard(r: DiscardReason) -> Verdict {
    Verdict::Discard(r)
}

fn defer(ms: u64, reason: DeferReason) -> Verdict {
    Verdict::Defer { after: Duration::from_millis(ms), reason }
}

fn decided(v: Vec<Verdict>) -> Expect {
    Expect::Decided(v, None)
}

fn cases() -> Vec<Case> {
    let mut out = vec![
        // Top-level starts against the row.
        case(
            "start of the row's execution runs",
            vec![(start("e1", T0), 1)],
            vec![],
            row("e1", Pending, T0),
            decided(vec![Run]),
        ),
        case(
            "start without a row: read it once more after a moment",
            vec![(start("e1", T0), 1)],
            vec![],
            RowState::Absent,
            Expect::Needs(Duration::from_millis(30)),
        ),
        case(
            "start with the row not read: read it",
            vec![(start("e1", T0), 3)],
            vec![],
            RowState::Unknown,
            Expect::Needs(Duration::ZERO),
        ),
        case(
            "redelivered start without a row waits for it",
            vec![(start("e1", T0), 3)],
            vec![],
            RowState::Absent,
            decided(vec![defer(1500, DeferReason::StartAwaitingRow)]),
        ),
        case(
            "start whose row never appears is an orphan",
            vec![(start("e1", T0), 10)],
            vec![],
            RowState::Absent,
            decided(vec![discard(DiscardReason::OrphanStart)]),
        ),
        case(
            "start older than the row is stale",
            vec![(start("e0", T0), 1)],
            vec![],
            row("e1", Pending, secs(1)),
            decided(vec![discard(DiscardReason::StaleStart)]),
        ),
        case(
            "start newer than the row waits for the row to catch up",
            vec![(start("e2", secs(2)), 2)],
            vec![],
            row("e1", Running, secs(1)),
            decided(vec![defer(1000, DeferReason::StartNewerThanRow)]),
        ),
        case(
            "start newer than the row, delivered 10 times, is given up",
            vec![(start("e2", secs(2)), 10)],
            vec![],
            row("e1", Running, secs(1)),
            decided(vec![discard(DiscardReason::StaleStart)]),
        ),
        case(
            "start of an execution terminated before it started",
            vec![(start("e1", T0), 1)],
            vec![],
            row("e1", Terminated, T0),
            decided(vec![discard(DiscardReason::TerminatedBeforeStart)]),
        ),
        case(
            "redelivered start of the running execution is the dispatcher's duplicate",
            vec![(start("e1", T0), 2), (event("e1"), 1)],
            history("e1", None),
            row("e1", Running, T0),
            decided(vec![Run, Run]),
        ),
        case(
            "a duplicate start and a stale one in one batch",
            vec![(start("e1", T0), 1), (start("e0", T0 - time::Duration::seconds(1)), 1)],
            vec![],
            row("e1", Pending, T0),
            decided(vec![Run, discard(DiscardReason::StaleStart)]),
        ),
        // Responses.
        case(
            "response to a scheduled task runs",
            vec![(completed("e1", 0), 1)],
            history("e1", None),
            row("e1", Running, T0),
            decided(vec![Run]),
        ),
        case(
            "timer for a created timer runs",
            vec![(timer_fired("e1", 1), 1)],
            history("e1", None),
            RowState::Unknown,
            decided(vec![Run]),
        ),
        case(
            "response before its scheduling event waits",
            vec![(completed("e1", 7), 2)],
            history("e1", None),
            RowState::Unknown,
            decided(vec![defer(4000, DeferReason::OutOfOrder { task_event_id: 7 })]),
        ),
        case(
            "out-of-order wait is capped at 30 s",
            vec![(completed("e1", 7), 9)],
            history("e1", None),
            RowState::Unknown,
            decided(vec![defer(30_000, DeferReason::OutOfOrder { task_event_id: 7 })]),
        ),
        case(
            "a task id is not a timer id",
            vec![(timer_fired("e1", 0), 1)],
            history("e1", None),
            RowState::Unknown,
            decided(vec![defer(2000, DeferReason::OutOfOrder { task_event_id: 0 })]),
        ),
        case(
            "response of another execution is the dispatcher's to drop",
            vec![(completed("e0", 7), 1)],
            history("e1", None),
            RowState::Unknown,
            decided(vec![Run]),
        ),
        case(
            "zombie response to an instance without history, with no row, is deleted",
            vec![(completed("e1", 0), 6)],
            vec![],
            RowState::Absent,
            decided(vec![discard(DiscardReason::NoSuchInstance)]),
        ),
        case(
            "early response to an instance without history waits",
            vec![(completed("e1", 0), 2)],
            vec![],
            RowState::Absent,
            decided(vec![defer(4000, DeferReason::OutOfOrder { task_event_id: 0 })]),
        ),
        // No history, no start.
        case(
            "event to a missing instance is deleted",
            vec![(event(""), 1)],
            vec![],
            RowState::Absent,
            decided(vec![discard(DiscardReason::NoSuchInstance)]),
        ),
        case(
            "event with the row not read: read it",
            vec![(event(""), 1)],
            vec![],
            RowState::Unknown,
            Expect::Needs(Duration::ZERO),
        ),
        case(
            "event to an instance whose row is Running but has no history is deleted",
            vec![(event(""), 1)],
            vec![],
            row("e1", Running, T0),
            decided(vec![discard(DiscardReason::NoSuchInstance)]),
        ),
        case(
            "event to a pending instance waits for its start",
            vec![(event(""), 1)],
            vec![],
            row("e1", Pending, T0),
            decided(vec![defer(1000, DeferReason::StartNotDue)]),
        ),
        case(
            "terminate of a pending instance terminates it directly",
            vec![(event(""), 1), (terminate(""), 1)],
            vec![],
            row("e1", Pending, T0),
            Expect::Decided(
                vec![
                    discard(DiscardReason::TerminatedWhilePending),
                    discard(DiscardReason::TerminatedWhilePending),
                ],
                Some(InstanceAction::TerminatePending { reason: Some("why".into()) }),
            ),
        ),
        // Terminal history.
        case(
            "event to a completed instance is deleted",
            vec![(event("e1"), 1)],
            history("e1", Some(Completed)),
            row("e1", Completed, T0),
            decided(vec![discard(DiscardReason::InstanceTerminal(Completed))]),
        ),
        case(
            "terminal history with the row not read: read it",
            vec![(event("e1"), 1)],
            history("e1", Some(Completed)),
            RowState::Unknown,
            Expect::Needs(Duration::ZERO),
        ),
        case(
            "terminal history, row of the same execution still Running: repair",
            vec![(completed("e1", 0), 1)],
            history("e1", Some(Completed)),
            row("e1", Running, T0),
            Expect::Decided(
                vec![discard(DiscardReason::InstanceTerminal(Completed))],
                Some(InstanceAction::RepairRow { status: Completed }),
            ),
        ),
        case(
            "terminal history without a row: repair",
            vec![(event("e1"), 1)],
            history("e1", Some(Terminated)),
            RowState::Absent,
            Expect::Decided(
                vec![discard(DiscardReason::InstanceTerminal(Terminated))],
                Some(InstanceAction::RepairRow { status: Terminated }),
            ),
        ),
        case(
            "terminal history, row of another execution: no repair",
            vec![(event(""), 1)],
            history("e1", Some(Completed)),
            row("e2", Pending, secs(5)),
            decided(vec![discard(DiscardReason::InstanceTerminal(Completed))]),
        ),
        case(
            "recreation of a terminal instance runs",
            vec![(start("e2", secs(5)), 1)],
            history("e1", Some(Completed)),
            row("e2", Pending, secs(5)),
            decided(vec![Run]),
        ),
        case(
            "recreation with an event: both run",
            vec![(start("e2", secs(5)), 1), (event(""), 1)],
            history("e1", Some(Completed)),
            row("e2", Pending, secs(5)),
            decided(vec![Run, Run]),
        ),
        case(
            "a parent's resent start of a terminal child, with a response: repair, nothing runs",
            vec![(resent_sub_start("c2"), 1), (completed("c1", 0), 2)],
            sub_history("c1", Some(Completed)),
            row("c1", Running, T0),
            Expect::Decided(
                vec![
                    discard(DiscardReason::InstanceTerminal(Completed)),
                    discard(DiscardReason::InstanceTerminal(Completed)),
                ],
                Some(InstanceAction::RepairRow { status: Completed }),
            ),
        ),
        case(
            "a parent's resent start of a running child is the dispatcher's duplicate",
            vec![(resent_sub_start("c2"), 1)],
            sub_history("c1", None),
            row("c1", Running, T0),
            decided(vec![Run]),
        ),
        case(
            "another parent task's start of a terminal child recreates it",
            vec![(sub_start("c2"), 1), (completed("c1", 0), 2)],
            sub_history("c1", Some(Completed)),
            row("c1", Completed, T0),
            decided(vec![Run, Run]),
        ),
        case(
            "sub-orchestration start is not de-duplicated",
            vec![(sub_start("c1"), 1)],
            vec![],
            RowState::Unknown,
            decided(vec![Run]),
        ),
        case(
            "sub-orchestration start with an event to a new child runs",
            vec![(sub_start("c1"), 1), (event(""), 1)],
            vec![],
            RowState::Unknown,
            decided(vec![Run, Run]),
        ),
        // Entities.
        case(
            "the first message to an entity starts it, no row read",
            vec![(entity_op(), 1), (entity_op(), 1)],
            vec![],
            RowState::Unknown,
            decided(vec![Run, Run]),
        ),
        case(
            "a message to an entity a clean-up completed starts it afresh",
            vec![(entity_op(), 1)],
            entity_history(true),
            RowState::Unknown,
            decided(vec![Run]),
        ),
        case(
            "messages to a running entity run",
            vec![(entity_op(), 2)],
            entity_history(false),
            RowState::Unknown,
            decided(vec![Run]),
        ),
    ];
    let mut c = case(
        "with de-duplication off a start runs without a row",
        vec![(start("e1", T0), 1)],
        vec![],
        RowState::Unknown,
        decided(vec![Run]),
    );
    c.rules.dedupe_starts = false;
    out.push(c);
    let mut c = case(
        "replaying terminal instances allowed",
        vec![(event("e1"), 1)],
        history("e1", Some(Completed)),
        RowState::Unknown,
        decided(vec![Run]),
    );
    c.rules.allow_replaying_terminal = true;
    out.push(c);
    let mut c = case(
        "start without a row after the re-read waits",
        vec![(start("e1", T0), 1)],
        vec![],
        RowState::Absent,
        decided(vec![defer(500, DeferReason::StartAwaitingRow)]),
    );
    c.row_reread = true;
    out.push(c);
    let mut delayed = case(
        "a delayed start's messages wait until it is due",
        vec![(event(""), 1)],
        vec![],
        RowState::Absent,
        decided(vec![defer(90_000, DeferReason::StartNotDue)]),
    );
    delayed.row = RowState::Present(RowView {
        execution_id: Some("e1".into()),
        status: Pending,
        created_time: T0,
        scheduled_start_time: Some(secs(90)),
    });
    out.push(delayed);
    let mut capped = case(
        "a far delayed start's wait is capped",
        vec![(event(""), 1)],
        vec![],
        RowState::Absent,
        decided(vec![defer(60_000, DeferReason::StartNotDue)]),
    );
    capped.row = RowState::Present(RowView {
        execution_id: Some("e1".into()),
        status: Pending,
        created_time: T0,
        scheduled_start_time: Some(secs(90_000)),
    });
    capped.rules.max_defer = Duration::from_secs(60);
    out.push(capped);
    out
}

#[test]
fn every_rule() {
    let mut failures = Vec::new();
    for c in cases() {
        let messages: Vec<Candidate<'_>> =
            c.messages.iter().map(|(m, d)| Candidate { message: m, deliveries: *d }).collect();
        let input = AdmissionInput {
            messages: &messages,
            history: &c.history,
            row: &c.row,
            row_reread: c.row_reread,
            now: T0,
            rules: &c.rules,
        };
        let got = admit(&input);
        let ok = match (&got, &c.expect) {
            (Admission::NeedsRow { after }, Expect::Needs(want)) => after == want,
            (Admission::Decided(d), Expect::Decided(v, a)) => &d.verdicts == v && &d.action == a,
            _ => false,
        };
        if !ok {
            failures.push(format!("{}: expected {:?}, got {got:?}", c.name, c.expect));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}

#[test]
fn a_failed_repair_defers_what_it_would_have_deleted() {
    let messages = [completed("e1", 0), event("e1")];
    let candidates = [
        Candidate { message: &messages[0], deliveries: 1 },
        Candidate { message: &messages[1], deliveries: 5 },
    ];
    let h = history("e1", Some(Completed));
    let row = row("e1", Running, T0);
    let rules = AdmissionRules::default();
    let Admission::Decided(mut d) = admit(&AdmissionInput {
        messages: &candidates,
        history: &h,
        row: &row,
        row_reread: false,
        now: T0,
        rules: &rules,
    }) else {
        panic!("decided");
    };
    assert_eq!(d.action, Some(InstanceAction::RepairRow { status: Completed }));
    d.repair_failed();
    assert_eq!(d.action, None);
    assert_eq!(
        d.verdicts,
        vec![
            defer(2000, DeferReason::RowRepairPending),
            defer(10_000, DeferReason::RowRepairPending)
        ]
    );
    assert!(!d.runs());
}

#[test]
fn event_names_are_dtfs() {
    assert_eq!(DiscardReason::StaleStart.event_name(), "DuplicateMessageDetected");
    assert_eq!(DiscardReason::NoSuchInstance.event_name(), "DiscardingWorkItem");
    assert_eq!(
        DeferReason::OutOfOrder { task_event_id: 1 }.event_name(),
        "ReceivedOutOfOrderMessage"
    );
}
