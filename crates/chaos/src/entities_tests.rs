#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use durabletask_core::entity::{BatchRequest, OperationRequest};
use time::macros::datetime;

fn op(entity: &str, tag: &str, fate: SendFate, relay_to: Option<&str>) -> SentOperation {
    SentOperation {
        entity: entity.into(),
        tag: tag.into(),
        operation: if relay_to.is_some() { "relay" } else { "add" },
        sender: format!("test {tag}"),
        fate,
        relay_to: relay_to.map(Into::into),
        orchestration: None,
        at: Duration::ZERO,
    }
}

fn observed(applied: &[(&str, u32)]) -> Observed {
    let mut state = CounterState::default();
    for (tag, n) in applied {
        state.applied.insert((*tag).into(), *n);
        state.ops += u64::from(*n);
    }
    Observed { status: "Running".into(), state, ..Observed::default() }
}

#[test]
fn the_auditor_names_lost_doubled_and_phantom_operations() {
    let ops = vec![
        op("a", "ok", SendFate::Sent, None),
        op("a", "lost", SendFate::Sent, None),
        op("a", "twice", SendFate::Sent, None),
        op("a", "maybe-not", SendFate::Unknown, None),
        op("a", "maybe", SendFate::Unknown, None),
        op("a", "maybe-twice", SendFate::Unknown, None),
        op("a", "r1", SendFate::Sent, Some("b")),
        op("a", "r2", SendFate::Unknown, Some("b")),
    ];
    let mut obs = BTreeMap::new();
    obs.insert(
        "a".to_owned(),
        observed(&[("ok", 1), ("twice", 2), ("maybe", 1), ("maybe-twice", 2), ("r1", 1)]),
    );
    // r1's forwarded signal lost; r2 forwarded though r2 itself was never applied; a stranger.
    obs.insert("b".to_owned(), observed(&[("r2>b", 1), ("stranger", 1)]));
    let a = audit_entities(&ops, &BTreeSet::new(), &obs);
    assert_eq!((a.sent, a.unknown, a.unknown_applied), (4, 4, 1));
    assert_eq!((a.losses, a.doubles, a.phantoms, a.queued), (2, 2, 2, 0));
    let text: Vec<&str> = a.problems.iter().map(|(_, p)| p.as_str()).collect();
    assert!(text.iter().any(|p| p.starts_with("LOST: test lost")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("DOUBLED: test twice")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("DOUBLED: test maybe-twice")), "{text:?}");
    assert!(text.iter().any(|p| p.contains("\"r1>b\"") && p.starts_with("LOST")), "{text:?}");
    assert!(text.iter().any(|p| p.contains("\"r2>b\"") && p.starts_with("PHANTOM")), "{text:?}");
    assert!(
        text.iter().any(|p| p.contains("\"stranger\"") && p.starts_with("PHANTOM")),
        "{text:?}"
    );
}

#[test]
fn queued_operations_and_stale_rows_are_named_as_such() {
    let ops =
        vec![op("a", "behind-lock", SendFate::Sent, None), op("a", "x", SendFate::Sent, None)];
    // An orchestration that did not complete: its operations may or may not have been sent.
    let mut orch = op("a", "o", SendFate::Sent, None);
    orch.orchestration = Some("o1".into());
    let mut all = ops.clone();
    all.push(orch);
    let mut a_obs = observed(&[]);
    a_obs.locked_by = Some("o1".into());
    a_obs.queued.insert("behind-lock".into());
    a_obs.history_state = Some(observed(&[("x", 1)]).state);
    let obs = BTreeMap::from([("a".to_owned(), a_obs)]);
    let incomplete = BTreeSet::from(["o1".to_owned()]);
    let a = audit_entities(&all, &incomplete, &obs);
    assert_eq!((a.losses, a.queued, a.stale_rows, a.unknown), (0, 1, 1, 1));
    let text: Vec<&str> = a.problems.iter().map(|(_, p)| p.as_str()).collect();
    assert!(text.iter().any(|p| p.contains("left locked by o1")), "{text:?}");
    assert!(text.iter().any(|p| p.contains("Instances row behind History")), "{text:?}");
}

#[test]
fn the_counter_records_tags_relays_and_checks() {
    let registry = register(durabletask_core::Registry::builder()).build();
    let f = registry.entity(COUNTER).expect("registered");
    let id = counter("a");
    let ops = [
        ("add", serde_json::json!("t1")),
        ("relay", serde_json::json!({"tag": "t2", "to": "b"})),
        ("add", serde_json::json!({"tag": "t3", "src": 7})),
        ("check", serde_json::json!({"tag": "c", "expect": ["t1", "t2", "missing"]})),
        ("check", serde_json::json!({"tag": "c2", "expect": ["t1"]})),
    ];
    let operations: Vec<OperationRequest> = ops
        .iter()
        .map(|(o, i)| OperationRequest {
            operation: (*o).into(),
            input: Some(i.to_string()),
            call: *o == "check",
        })
        .collect();
    let r = f(BatchRequest {
        id: &id,
        state: None,
        operations: &operations,
        now: datetime!(2026-01-01 0:00 UTC),
        max_message_bytes: None,
    });
    let state: CounterState = serde_json::from_str(r.state.as_deref().unwrap()).unwrap();
    assert_eq!(state.ops, 5);
    assert_eq!(state.sources.get("t3"), Some(&vec![7]));
    assert_eq!(r.signals.len(), 1);
    assert_eq!(r.signals[0].target, counter("b"));
    let relayed: Relayed = serde_json::from_str(r.signals[0].input.as_deref().unwrap()).unwrap();
    assert_eq!((relayed.tag.as_str(), relayed.src), ("t2>b", 2));
    let answer = |i: usize| -> String {
        serde_json::from_str(r.results[i].as_ref().unwrap().as_deref().unwrap()).unwrap()
    };
    assert_eq!(answer(3), "own=1 missing=[\"missing\"] doubled=[]");
    assert_eq!(answer(4), CHECK_OK);
}
