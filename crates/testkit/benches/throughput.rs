//! In-memory end-to-end throughput: N orchestrations of three sequential activities each, through
//! the real dispatchers, client and in-memory provider.

#![allow(clippy::unwrap_used, missing_docs)] // benchmark harness

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use durabletask_core::{Dispatchers, OrchestrationStatus, TaskHubClient, WorkerOptions};
use durabletask_testkit::conformance::common_registry;
use durabletask_testkit::memory::InMemoryOrchestrationService;

fn bench_throughput(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("in_memory");
    group.sample_size(10);
    const N: usize = 100;
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("hello_sequence_x100", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = Arc::new(InMemoryOrchestrationService::default());
                let worker = Dispatchers::start(
                    svc.clone(),
                    common_registry().build(),
                    WorkerOptions::default(),
                )
                .await
                .unwrap();
                let client =
                    TaskHubClient::new(svc).with_max_poll_interval(Duration::from_millis(5));
                let mut ids = Vec::with_capacity(N);
                for _ in 0..N {
                    ids.push(client.start_orchestration("HelloSequence", &()).await.unwrap());
                }
                for id in &ids {
                    let s = client.wait_for_completion(id, Duration::from_secs(60)).await.unwrap();
                    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed);
                }
                worker.shutdown(Duration::from_secs(5)).await.unwrap();
            });
        });
    });
    group.finish();
}

criterion_group!(benches, bench_throughput);
criterion_main!(benches);
