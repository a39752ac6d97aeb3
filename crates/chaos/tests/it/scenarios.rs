use durabletask_azure_storage::CrashPoint;
use durabletask_chaos::scenarios::{self, Profile, ScenarioReport};
use durabletask_chaos::setup::ChaosEnv;
use std::path::Path;

const SEED: u64 = 8;

fn env(test: &str) -> Option<ChaosEnv> {
    durabletask_chaos::logs::init();
    ChaosEnv::for_test(test)
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chaos_worker"))
}

fn check(report: &ScenarioReport) {
    println!("{report}");
    assert!(report.passed(), "{}", report.explain());
}

async fn crash(point: CrashPoint) {
    let Some(env) = env(&format!("chaos_crash_{point:?}")) else { return };
    check(&scenarios::crash_point(&env, point, Profile::LIGHT.crash_n).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_send_loses_nothing() {
    crash(CrashPoint::AfterSend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_history_loses_nothing() {
    crash(CrashPoint::AfterHistory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_instances_loses_nothing() {
    crash(CrashPoint::AfterInstances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_delete_loses_nothing() {
    crash(CrashPoint::BeforeDelete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_activity_response_loses_nothing() {
    crash(CrashPoint::ActivityAfterSend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_processes_lose_nothing() {
    let Some(env) = env("chaos_sigkill") else { return };
    check(&scenarios::process_kills(&env, worker_bin(), &Profile::LIGHT, SEED).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_worker_losing_its_lease_loses_nothing() {
    let Some(env) = env("chaos_sigstop") else { return };
    check(&scenarios::stalled_worker(&env, worker_bin(), &Profile::LIGHT, SEED).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_and_timeouts_lose_nothing() {
    let Some(env) = env("chaos_storage_faults") else { return };
    // Every kind of storage call is faulted, blob downloads included.
    check(&scenarios::storage_faults(&env, &Profile::LIGHT, SEED, true).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_outage_does_not_quarantine_valid_messages() {
    let Some(env) = env("chaos_blob_outage") else { return };
    check(&scenarios::blob_outage(&env).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_redelivered_messages_lose_nothing() {
    let Some(env) = env("chaos_reorder") else { return };
    check(&scenarios::reorder_and_redeliver(&env, &Profile::LIGHT, SEED).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_quarantined_and_the_worker_keeps_running() {
    let Some(env) = env("chaos_poison") else { return };
    check(&scenarios::poison_messages(&env, &Profile::LIGHT).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_any_storage_call() {
    let Some(env) = env("chaos_bad_input") else { return };
    check(&scenarios::bad_input(&env).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_input_is_refused_before_any_storage_call() {
    let Some(env) = env("chaos_oversized") else { return };
    check(&scenarios::oversized_input(&env, 10).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jump_of_one_worker_loses_nothing() {
    let Some(env) = env("chaos_clock_jump") else { return };
    for jump in Profile::LIGHT.clock_jumps {
        check(&scenarios::clock_jump(&env, Profile::LIGHT.clock_n, *jump).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_storm_keeps_the_worker_running_and_leaks_nothing() {
    let Some(env) = env("chaos_start_storm") else { return };
    check(&durabletask_chaos::storm::start_storm(&env, &Profile::LIGHT, SEED).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_operations_survive_sigkilled_workers_exactly_once() {
    let Some(env) = env("chaos_entity_kill") else { return };
    check(
        &durabletask_chaos::entities::entity_kill(&env, worker_bin(), &Profile::LIGHT, SEED)
            .await
            .unwrap(),
    );
}
