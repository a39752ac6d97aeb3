//! Table-driven replay tests: history in, decisions out.

use durabletask_core::replay::{ReplayError, execute};
use durabletask_core::{EventKind, HistoryEvent};

use crate::support::{H, registry, summarize};

struct Case {
    name: &'static str,
    history: Vec<HistoryEvent>,
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "fresh start schedules the first activity",
            history: H::new().os().start("Hello", "\"W\"").build(),
            expect: &["ScheduleTask#0 SayHello \"W\""],
        },
        Case {
            name: "echo matches; waiting produces nothing",
            history: H::new().os().start("Hello", "\"W\"").scheduled(0, "SayHello").oc().build(),
            expect: &[],
        },
        Case {
            name: "echo name compare is case-insensitive",
            history: H::new().os().start("Hello", "\"W\"").scheduled(0, "SAYHELLO").oc().build(),
            expect: &[],
        },
        Case {
            name: "completion resumes and completes with the result (id counter includes completion)",
            history: H::new()
                .os()
                .start("Hello", "\"W\"")
                .scheduled(0, "SayHello")
                .oc()
                .os()
                .completed(0, "\"Hello W\"")
                .build(),
            expect: &["Complete#1 Completed \"Hello W\""],
        },
        Case {
            name: "unhandled activity failure fails the orchestration",
            history: H::new()
                .os()
                .start("Hello", "\"W\"")
                .scheduled(0, "SayHello")
                .oc()
                .os()
                .failed(0, "boom")
                .build(),
            expect: &[
                "Complete#1 Failed TaskFailedException: Task 'SayHello' (#0) failed with an unhandled exception: boom",
            ],
        },
        Case {
            name: "handled activity failure",
            history: H::new()
                .os()
                .start("Handled", "null")
                .scheduled(0, "Fail")
                .oc()
                .os()
                .failed(0, "nope")
                .build(),
            expect: &["Complete#1 Completed \"caught: nope\""],
        },
        Case {
            name: "non-determinism: different activity name",
            history: H::new().os().start("Hello", "\"W\"").scheduled(0, "Other").oc().build(),
            expect: &[
                "Complete#1 Failed NonDeterministicOrchestrationException: Non-Deterministic workflow detected: A previous execution of this orchestration scheduled an activity named 'Other' with sequence ID 0, but the current replay execution scheduled one named 'SayHello' with this sequence ID.",
            ],
        },
        Case {
            name: "non-determinism: different action type",
            history: H::new().os().start("Hello", "\"W\"").timer(0, 5).oc().build(),
            expect: &[
                "Complete#1 Failed NonDeterministicOrchestrationException: Non-Deterministic workflow detected: A previous execution of this orchestration scheduled a timer with sequence ID 0, but the current replay execution instead produced a ScheduleOrchestrator action with this sequence ID.",
            ],
        },
        Case {
            name: "non-determinism: unknown id",
            history: H::new()
                .os()
                .start("Hello", "\"W\"")
                .scheduled(0, "SayHello")
                .scheduled(1, "SayHello")
                .oc()
                .build(),
            expect: &[
                "Complete#1 Failed NonDeterministicOrchestrationException: Non-Deterministic workflow detected: A previous execution of this orchestration scheduled an activity named 'SayHello' with sequence ID 1, but the current replay execution hasn't (yet?) scheduled it. Was a change made to the orchestration code after this instance had already started running?",
            ],
        },
        Case {
            name: "sequence resumes step by step",
            history: H::new()
                .os()
                .start("Sequence", "3")
                .scheduled(0, "Double")
                .oc()
                .os()
                .completed(0, "0")
                .scheduled(1, "Double")
                .oc()
                .os()
                .completed(1, "2")
                .build(),
            expect: &["ScheduleTask#2 Double 2"],
        },
        Case {
            name: "fan-out schedules all at once",
            history: H::new().os().start("FanOut", "3").build(),
            expect: &[
                "ScheduleTask#0 Double 0",
                "ScheduleTask#1 Double 1",
                "ScheduleTask#2 Double 2",
            ],
        },
        Case {
            name: "fan-in completes after all results, in any order",
            history: H::new()
                .os()
                .start("FanOut", "3")
                .scheduled(0, "Double")
                .scheduled(1, "Double")
                .scheduled(2, "Double")
                .oc()
                .os()
                .completed(2, "4")
                .completed(0, "0")
                .oc()
                .os()
                .completed(1, "2")
                .build(),
            expect: &["Complete#3 Completed 6"],
        },
        Case {
            name: "duplicate completion is ignored",
            history: H::new()
                .os()
                .start("Sequence", "2")
                .scheduled(0, "Double")
                .oc()
                .os()
                .completed(0, "0")
                .completed(0, "0")
                .build(),
            expect: &["ScheduleTask#1 Double 1"],
        },
        Case {
            name: "race: event before timer wins",
            history: H::new()
                .os()
                .start("Race", "null")
                .timer(0, 60)
                .oc()
                .os()
                .raised("approve", "\"bob\"")
                .build(),
            expect: &["Complete#1 Completed \"approved by bob\""],
        },
        Case {
            name: "race: timer before event wins",
            history: H::new()
                .os()
                .start("Race", "null")
                .timer(0, 60)
                .oc()
                .os()
                .fired(0, 60)
                .raised("Approve", "\"bob\"")
                .build(),
            expect: &["Complete#1 Completed \"timeout\""],
        },
        Case {
            name: "race: event buffered before the wait resolves it immediately",
            history: H::new().os().raised("Approve", "\"early\"").start("Race", "null").build(),
            expect: &["CreateTimer#0 +60s", "Complete#1 Completed \"approved by early\""],
        },
        Case {
            name: "events are buffered by name, FIFO",
            history: H::new()
                .os()
                .start("TwoEvents", "null")
                .raised("A", "\"a1\"")
                .raised("A", "\"a2\"")
                .oc()
                .os()
                .raised("B", "\"b1\"")
                .build(),
            expect: &["Complete#0 Completed [\"a1\",\"b1\",\"a2\"]"],
        },
        Case {
            name: "continue-as-new carries unconsumed events",
            history: H::new()
                .os()
                .start("Counter", "0")
                .raised("inc", "1")
                .raised("inc", "2")
                .raised("other", "3")
                .build(),
            expect: &["Complete#0 ContinuedAsNew 1 carry=2"],
        },
        Case {
            name: "continue-as-new limit reached completes",
            history: H::new().os().start("Counter", "3").build(),
            expect: &["Complete#0 Completed 3"],
        },
        Case {
            name: "suspended: events are held and no decisions are made",
            history: H::new()
                .os()
                .start("Sequence", "2")
                .scheduled(0, "Double")
                .oc()
                .os()
                .push(-1, EventKind::ExecutionSuspended { reason: None })
                .completed(0, "0")
                .build(),
            expect: &[],
        },
        Case {
            name: "resumed: held events are processed",
            history: H::new()
                .os()
                .start("Sequence", "2")
                .scheduled(0, "Double")
                .oc()
                .os()
                .push(-1, EventKind::ExecutionSuspended { reason: None })
                .completed(0, "0")
                .oc()
                .os()
                .push(-1, EventKind::ExecutionResumed { reason: None })
                .build(),
            expect: &["ScheduleTask#1 Double 1"],
        },
        Case {
            name: "terminate completes as Terminated with the reason, even when suspended",
            history: H::new()
                .os()
                .start("Sequence", "2")
                .scheduled(0, "Double")
                .oc()
                .os()
                .push(-1, EventKind::ExecutionSuspended { reason: None })
                .push(-1, EventKind::ExecutionTerminated { input: Some("\"bye\"".into()) })
                .build(),
            expect: &["Complete#1 Terminated \"bye\""],
        },
        Case {
            name: "retry: failure schedules a durable timer with back-off",
            history: H::new()
                .os()
                .start("Retry", "null")
                .scheduled(0, "Flaky")
                .oc()
                .os()
                .failed(0, "x")
                .build(),
            expect: &["CreateTimer#1 +14s"],
        },
        Case {
            name: "retry: second failure doubles the delay",
            history: H::new()
                .os()
                .start("Retry", "null")
                .scheduled(0, "Flaky")
                .oc()
                .os()
                .failed(0, "x")
                .push(
                    1,
                    EventKind::TimerCreated {
                        fire_at: crate::support::T0 + std::time::Duration::from_secs(14),
                    },
                )
                .oc()
                .os()
                .fired(1, 14)
                .scheduled(2, "Flaky")
                .oc()
                .os()
                .failed(2, "y")
                .build(),
            expect: &["CreateTimer#3 +32s"],
        },
        Case {
            name: "sub-orchestration, send event and custom status",
            history: H::new()
                .os()
                .start("Parent", "null")
                .push(
                    0,
                    EventKind::SubOrchestrationInstanceCreated {
                        name: "Hello".into(),
                        version: None,
                        instance_id: "exec:0".into(),
                        input: None,
                        tags: None,
                    },
                )
                .oc()
                .os()
                .push(
                    -1,
                    EventKind::SubOrchestrationInstanceCompleted {
                        task_scheduled_id: 0,
                        result: Some("\"Hello kid\"".into()),
                    },
                )
                .build(),
            expect: &["SendEvent#1 other Note \"Hello kid\"", "Complete#2 Completed \"Hello kid\""],
        },
        Case {
            name: "panic in orchestration code fails the instance",
            history: H::new().os().start("Panics", "null").build(),
            expect: &["Complete#0 Failed Panic: kaboom"],
        },
        Case {
            name: "no ExecutionStarted: nothing to do",
            history: H::new().os().raised("A", "1").build(),
            expect: &[],
        },
    ]
}

#[test]
fn replay_table() {
    let registry = registry();
    let mut failures = Vec::new();
    for case in cases() {
        let result = execute(&registry, &[], &case.history).unwrap();
        let got = summarize(&result.actions);
        if got != case.expect {
            failures.push(format!(
                "{}:\n  expected {:?}\n  got      {:?}",
                case.name, case.expect, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn result_does_not_depend_on_past_new_split() {
    let registry = registry();
    for case in cases() {
        let all = execute(&registry, &[], &case.history).unwrap();
        for k in 0..=case.history.len() {
            let (past, new) = case.history.split_at(k);
            let r = execute(&registry, past, new).unwrap();
            assert_eq!(r, all, "{} split at {k}", case.name);
        }
    }
}

#[test]
fn sub_orchestration_default_instance_id_and_custom_status() {
    let r = execute(&registry(), &[], &H::new().os().start("Parent", "null").build()).unwrap();
    assert_eq!(summarize(&r.actions), vec!["CreateSubOrchestration#0 Hello exec:0 \"kid\""]);
    assert_eq!(r.custom_status, None);
    let done = H::new()
        .os()
        .start("Parent", "null")
        .push(
            0,
            EventKind::SubOrchestrationInstanceCreated {
                name: "Hello".into(),
                version: None,
                instance_id: "exec:0".into(),
                input: None,
                tags: None,
            },
        )
        .push(
            -1,
            EventKind::SubOrchestrationInstanceCompleted {
                task_scheduled_id: 0,
                result: Some("\"x\"".into()),
            },
        )
        .build();
    assert_eq!(
        execute(&registry(), &[], &done).unwrap().custom_status.as_deref(),
        Some("\"done\"")
    );
}

#[test]
fn new_guid_is_deterministic_and_unique() {
    let h = H::new().os().start("Guid", "null").timer(0, 2).oc().os().fired(0, 2).build();
    let a = execute(&registry(), &[], &h).unwrap();
    let b = execute(&registry(), &h[..4], &h[4..]).unwrap();
    assert_eq!(a, b);
    let out = summarize(&a.actions);
    assert_eq!(out.len(), 1);
    let ids: Vec<String> =
        serde_json::from_str(out[0].trim_start_matches("Complete#1 Completed ")).unwrap();
    assert_eq!(ids.len(), 3);
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
}

#[test]
fn unregistered_orchestration_is_an_error() {
    let h = H::new().os().start("Nope", "null").build();
    assert_eq!(execute(&registry(), &[], &h), Err(ReplayError::NotRegistered("Nope".into())));
}
