//! Replay cost per history event: histories of ~10, ~100 and ~1000 events from a sequential
//! orchestration, replayed from scratch (what every work item does).

#![allow(clippy::unwrap_used, missing_docs)] // benchmark harness

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use durabletask_core::replay::execute;
use durabletask_core::runtime::{RuntimeOptions, WorkItemResult, process_work_item};
use durabletask_core::{
    ActivityContext, EventKind, ExecutionStartedEvent, HistoryEvent, OrchestrationContext,
    OrchestrationInstance, OrchestrationRuntimeState, Registry, TaskMessage,
};
use time::macros::datetime;

fn registry() -> Registry {
    Registry::builder()
        .orchestration("Seq", |ctx: OrchestrationContext, n: u32| async move {
            let mut sum = 0u64;
            for i in 0..n {
                sum += ctx.call_activity::<_, u64>("Work", &i).await?;
            }
            Ok(sum)
        })
        .activity("Work", |_c: ActivityContext, i: u32| async move { Ok(u64::from(i)) })
        .build()
}

/// Drives `Seq(n)` to completion, one activity per episode; returns the final history.
fn history(n: u32) -> Vec<HistoryEvent> {
    let reg = registry();
    let inst = OrchestrationInstance::with_execution("bench", "exec");
    let t = datetime!(2024-01-01 0:00 UTC);
    let start = ExecutionStartedEvent::new(inst.clone(), "Seq", Some(n.to_string()));
    let mut msgs = vec![TaskMessage::new(
        inst.clone(),
        HistoryEvent::new(-1, t, EventKind::ExecutionStarted(start)),
    )];
    let mut hist = Vec::new();
    loop {
        let state = OrchestrationRuntimeState::from_history(hist.clone()).unwrap();
        let mut ids = || "x".to_owned();
        let WorkItemResult::Checkpoint(cp) =
            process_work_item(&reg, state, msgs, t, &RuntimeOptions::default(), &mut ids).unwrap()
        else {
            unreachable!()
        };
        msgs = cp
            .activity_messages
            .iter()
            .map(|m| {
                let kind = EventKind::TaskCompleted {
                    task_scheduled_id: m.event.event_id,
                    result: Some("1".into()),
                };
                TaskMessage::new(inst.clone(), HistoryEvent::new(-1, t, kind))
            })
            .collect();
        hist = cp.runtime_state.into_events();
        if msgs.is_empty() {
            return hist;
        }
    }
}

fn bench_replay(c: &mut Criterion) {
    let reg = registry();
    let mut group = c.benchmark_group("replay");
    for n in [2u32, 25, 250] {
        let h = history(n);
        group.throughput(Throughput::Elements(h.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(h.len()), &h, |b, h| {
            b.iter(|| execute(&reg, h, &[]).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
