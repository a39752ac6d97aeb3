//! Conformance of `InMemoryOrchestrationService`.

durabletask_testkit::conformance_tests!(durabletask_testkit::memory::MemoryFactory::default());

/// `replay_safe` runs once per decision, not once per replay: three activities mean four
/// episodes, each replaying the code from the top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_safe_logging_runs_once_per_decision() {
    use durabletask_core::{ActivityContext, OrchestrationContext, Registry};
    use durabletask_testkit::conformance::Harness;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PLAIN: AtomicUsize = AtomicUsize::new(0);
    static SAFE: AtomicUsize = AtomicUsize::new(0);
    let reg = Registry::builder()
        .activity("Echo", |_c: ActivityContext, s: String| async move { Ok(s) })
        .orchestration("Logs", |ctx: OrchestrationContext, (): ()| async move {
            PLAIN.fetch_add(1, Ordering::SeqCst);
            ctx.replay_safe(|| {
                SAFE.fetch_add(1, Ordering::SeqCst);
            });
            ctx.log_info("starting");
            for i in 0..3 {
                let _: String = ctx.call_activity("Echo", &i.to_string()).await?;
            }
            Ok(())
        });
    let factory = durabletask_testkit::memory::MemoryFactory::default();
    let h = Harness::start(&factory, reg).await;
    let id = h.client.start_orchestration("Logs", &()).await.expect("start");
    h.wait(&id).await;
    assert_eq!(PLAIN.load(Ordering::SeqCst), 4, "the code ran once per episode");
    assert_eq!(SAFE.load(Ordering::SeqCst), 1, "replay-safe code ran once");
    h.stop().await;
}
