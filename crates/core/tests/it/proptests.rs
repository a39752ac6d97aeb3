//! Property: replaying any recorded history reproduces the actions that were recorded for it, no
//! matter how it is split into past and new events, and replaying a finished history produces no
//! new work.

use std::time::Duration;

use durabletask_core::replay::execute;
use durabletask_core::runtime::{RuntimeOptions, WorkItemResult, process_work_item};
use durabletask_core::{
    ActivityContext, ActivityError, EventKind, ExecutionStartedEvent, HistoryEvent,
    OrchestrationContext, OrchestrationInstance, OrchestrationRuntimeState, OrchestratorAction,
    Registry, TaskMessage,
};
use futures::future::Either;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::support::T0;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Step {
    Act(u8),
    FanOut(u8),
    Timer(u8),
    Event(u8),
    Race(u8),
    Guid,
    Status(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Act),
        (1u8..6).prop_map(Step::FanOut),
        (1u8..30).prop_map(Step::Timer),
        (0u8..3).prop_map(Step::Event),
        (0u8..3).prop_map(Step::Race),
        Just(Step::Guid),
        any::<u8>().prop_map(Step::Status),
    ]
}

fn script_registry() -> Registry {
    Registry::builder()
        .orchestration("Script", |ctx: OrchestrationContext, steps: Vec<Step>| async move {
            let mut out: Vec<String> = Vec::new();
            for s in steps {
                match s {
                    Step::Act(n) => match ctx.call_activity::<_, u32>("Work", &n).await {
                        Ok(v) => out.push(format!("ok{v}")),
                        Err(e) => out.push(format!("err{}", e.task_id)),
                    },
                    Step::FanOut(k) => {
                        let fs: Vec<_> =
                            (0..k).map(|i| ctx.call_activity::<_, u32>("Work", &i)).collect();
                        let rs = OrchestrationContext::join_all(fs).await;
                        out.push(format!("fan{}", rs.iter().filter(|r| r.is_ok()).count()));
                    }
                    Step::Timer(secs) => {
                        ctx.create_timer_after(Duration::from_secs(secs.into())).await
                    }
                    Step::Event(n) => {
                        let v: u32 = ctx.wait_for_external_event(&format!("E{n}")).await?;
                        out.push(format!("ev{v}"));
                    }
                    Step::Race(n) => {
                        let e = ctx.wait_for_external_event::<u32>(&format!("E{n}"));
                        let t = ctx.create_timer_after(Duration::from_secs(5));
                        match OrchestrationContext::select2(e, t).await {
                            Either::Left((v, _)) => out.push(format!("won{}", v?)),
                            Either::Right(_) => out.push("timeout".into()),
                        }
                    }
                    Step::Guid => out.push(ctx.new_guid().to_string()),
                    Step::Status(n) => ctx.set_custom_status(&n),
                }
            }
            Ok(out)
        })
        .activity("Work", |_c: ActivityContext, n: u8| async move {
            if n % 7 == 3 { Err(ActivityError::new("bad")) } else { Ok(u32::from(n) * 2) }
        })
        .build()
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next()).unwrap() % n.max(1)
    }
}

struct Episode {
    past: Vec<HistoryEvent>,
    new: Vec<HistoryEvent>,
    actions: Vec<OrchestratorAction>,
}

/// Runs the script to completion (or 80 episodes), delivering responses in a seeded random order.
fn simulate(steps: &[Step], seed: u64) -> (Vec<Episode>, Vec<HistoryEvent>) {
    let registry = script_registry();
    let mut rng = Lcg(seed);
    let inst = OrchestrationInstance::with_execution("p", "e");
    let start = ExecutionStartedEvent::new(
        inst.clone(),
        "Script",
        Some(serde_json::to_string(steps).unwrap()),
    );
    let mut pending: Vec<HistoryEvent> =
        vec![HistoryEvent::new(-1, T0, EventKind::ExecutionStarted(start))];
    let mut history: Vec<HistoryEvent> = Vec::new();
    let mut episodes = Vec::new();
    let mut now = T0;
    for _ in 0..80 {
        now += Duration::from_secs(7);
        if rng.below(3) == 0 || pending.is_empty() {
            let name = format!("E{}", rng.below(3));
            let v = rng.below(100).to_string();
            pending.push(HistoryEvent::new(
                -1,
                now,
                EventKind::EventRaised { name, input: Some(v) },
            ));
        }
        // Deliver a random non-empty subset in random order (the start always first).
        let take = 1 + rng.below(pending.len());
        let mut batch = Vec::new();
        for _ in 0..take {
            let i = if matches!(pending[0].kind, EventKind::ExecutionStarted(_)) {
                0
            } else {
                rng.below(pending.len())
            };
            batch.push(pending.remove(i));
        }
        let msgs: Vec<TaskMessage> =
            batch.iter().cloned().map(|e| TaskMessage::new(inst.clone(), e)).collect();
        let mut new = vec![HistoryEvent::new(-1, now, EventKind::OrchestratorStarted)];
        new.extend(batch);
        let actions = execute(&registry, &history, &new).unwrap().actions;
        let state = OrchestrationRuntimeState::from_history(history.clone()).unwrap();
        let mut ids = || "never".to_owned();
        let r =
            process_work_item(&registry, state, msgs, now, &RuntimeOptions::default(), &mut ids)
                .unwrap();
        let WorkItemResult::Checkpoint(cp) = r else { panic!("unexpected discard") };
        episodes.push(Episode { past: history.clone(), new, actions });
        for m in &cp.activity_messages {
            let EventKind::TaskScheduled { input, .. } = &m.event.kind else { unreachable!() };
            let n: u8 = serde_json::from_str(input.as_deref().unwrap()).unwrap();
            let kind = if n % 7 == 3 {
                EventKind::TaskFailed {
                    task_scheduled_id: m.event.event_id,
                    reason: Some("bad".into()),
                    details: None,
                    failure_details: None,
                }
            } else {
                EventKind::TaskCompleted {
                    task_scheduled_id: m.event.event_id,
                    result: Some((u32::from(n) * 2).to_string()),
                }
            };
            pending.push(HistoryEvent::new(-1, now, kind));
        }
        for m in &cp.timer_messages {
            pending.push(m.event.clone());
        }
        history = cp.runtime_state.into_events();
        if cp.state.orchestration_status.is_terminal() {
            break;
        }
    }
    (episodes, history)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn replaying_recorded_histories_reproduces_actions(
        steps in proptest::collection::vec(step(), 1..8),
        seed in any::<u64>(),
        split in any::<u64>(),
    ) {
        let registry = script_registry();
        let (episodes, final_history) = simulate(&steps, seed);
        prop_assert!(!episodes.is_empty());
        for (k, ep) in episodes.iter().enumerate() {
            let mut all = ep.past.clone();
            all.extend(ep.new.iter().cloned());
            let cut = usize::try_from(split % (all.len() as u64 + 1)).unwrap();
            let (p, n) = all.split_at(cut);
            let again = execute(&registry, p, n).unwrap().actions;
            prop_assert_eq!(&again, &ep.actions, "episode {} differs when split at {}", k, cut);
        }
        // A stored history replays without new work and without non-determinism.
        let replayed = execute(&registry, &final_history, &[]).unwrap();
        for a in &replayed.actions {
            match a {
                OrchestratorAction::Complete(c) => {
                    prop_assert!(c.failure_details.as_ref().is_none_or(|f| !f.error_message.starts_with("Non-Deterministic")), "{:?}", c);
                    let last = episodes.last().unwrap().actions.iter().find(|x| matches!(x, OrchestratorAction::Complete(_)));
                    prop_assert_eq!(Some(a), last);
                }
                other => prop_assert!(false, "replay produced new work: {:?}", other),
            }
        }
    }
}
