//! Smoke tests of the benchmark: the workloads run end to end at a tiny scale and the JSON report
//! has the fields `cargo xtask bench` and docs/performance.md rely on. Nothing here is timed.

use std::time::Duration;

use durabletask_bench::{AzureBackend, Backend, BenchConfig, MemoryBackend, Workload};
use durabletask_testkit::azurite::AzuriteEnv;

fn tiny(workloads: Vec<Workload>) -> BenchConfig {
    BenchConfig {
        scale: 0.01,
        workloads,
        w5_idle: Duration::from_millis(10),
        timeout: Duration::from_secs(120),
        probe_seconds: 0.3,
        probe_concurrency: Some(4),
    }
}

/// Runs `cfg` on `backend`, checks every orchestration completed (every entity counter ended
/// right), and returns the parsed JSON.
async fn run_and_check(backend: &dyn Backend, cfg: &BenchConfig) -> serde_json::Value {
    let report = durabletask_bench::run(backend, cfg).await.expect("benchmark run");
    assert_eq!(report.workloads.len(), cfg.workloads.len());
    for w in &report.workloads {
        assert!(w.error.is_none(), "{}: {w:?}", w.workload);
        if let Some(e) = &w.entities {
            assert!(w.entity_operations > 0, "{}: nothing ran", w.workload);
            assert_eq!(e.operations, w.entity_operations);
            assert_eq!(w.completed, e.entities, "{}: {w:?}", w.workload);
            assert!(e.batches >= 1 && e.batches <= e.operations, "{}: {e:?}", w.workload);
        } else {
            assert!(w.orchestrations > 0, "{}: nothing ran", w.workload);
            assert_eq!(w.completed, w.orchestrations, "{}: {w:?}", w.workload);
        }
        assert_eq!(w.failed, 0, "{}", w.workload);
        assert!(w.wall_seconds > 0.0);
    }
    let dir = std::env::temp_dir().join(format!("dtbench-it-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("results.json");
    report.write_json(&path).expect("write json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read json")).expect("json");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    let rendered = report.render();
    assert!(rendered.contains("targets:"), "{rendered}");
    json
}

fn assert_common_fields(json: &serde_json::Value, provider: &str) {
    assert_eq!(json["provider"], provider);
    assert!(json["date"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(json["machine"]["cpus"].as_u64().is_some_and(|c| c >= 1));
    let targets = json["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 6);
    for t in targets {
        assert!(t["name"].is_string() && t["target"].is_string() && t["status"].is_string(), "{t}");
    }
    for w in json["workloads"].as_array().expect("workloads") {
        for key in [
            "workload",
            "orchestrations",
            "activities",
            "events",
            "completed",
            "wall_seconds",
            "orchestrations_per_sec",
            "peak_rss_kib",
        ] {
            assert!(w.get(key).is_some(), "workload lacks {key}: {w}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_w1_w3_w4_w5_complete_and_report() {
    let cfg = tiny(vec![Workload::W1, Workload::W3, Workload::W4, Workload::W5]);
    let json = run_and_check(&MemoryBackend::default(), &cfg).await;
    assert_common_fields(&json, "memory");
    let w = &json["workloads"];
    assert_eq!(w[0]["workload"], "W1");
    assert_eq!(w[0]["orchestrations"], 10);
    assert_eq!(w[0]["activities"], 30);
    assert_eq!(w[1]["workload"], "W3");
    assert_eq!(w[1]["events"], 10);
    assert!(w[2]["history_growth"]["window"].as_u64().is_some_and(|n| n >= 1));
    assert!(w[3]["latency"]["p50_ms"].as_f64().is_some());
    assert!(json["probe"].is_null(), "no probe without storage");
    assert!(w[0]["storage_ops"].is_null(), "the in-memory provider is not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_e1_e2_count_every_signal_once() {
    let cfg = tiny(vec![Workload::E1, Workload::E2]);
    let json = run_and_check(&MemoryBackend::default(), &cfg).await;
    assert_common_fields(&json, "memory");
    let w = &json["workloads"];
    assert_eq!(w[0]["workload"], "E1");
    assert_eq!(w[0]["entity_operations"], 20);
    assert_eq!(w[0]["entities"]["entities"], 1);
    assert!(w[0]["entities"]["df_target_ratio"].as_f64().is_some_and(|r| r > 0.0));
    assert_eq!(w[1]["workload"], "E2");
    assert_eq!(w[1]["entity_operations"], 100, "at least one signal per entity");
    assert_eq!(w[1]["entities"]["entities"], 100);
    assert!(w[1]["entities"]["df_target_ratio"].is_null());
    let e1 = json["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "E1 operations/s on one entity");
    assert!(e1.is_some_and(|t| t["status"] != "NOT_MEASURED"), "{}", json["targets"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_e1_e2_count_storage_operations_per_entity_operation() {
    let Some(env) = AzuriteEnv::from_env_or_skip("azure_e1_e2_count_storage_operations") else {
        return;
    };
    let backend = AzureBackend::from_connection_string(env.connection_string()).expect("account");
    let cfg = BenchConfig { probe_seconds: 0.0, ..tiny(vec![Workload::E1, Workload::E2]) };
    let json = run_and_check(&backend, &cfg).await;
    assert_common_fields(&json, "azure");
    for w in json["workloads"].as_array().expect("workloads") {
        let ops = &w["storage_ops"];
        assert!(ops["per_entity_operation"].as_f64().is_some_and(|n| n > 0.0), "{ops}");
        assert!(ops["per_entity_operation_by_kind"]["queue.put"].as_f64().is_some(), "{ops}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_w1_counts_storage_operations_and_computes_the_bound() {
    let Some(env) = AzuriteEnv::from_env_or_skip("azure_w1_counts_storage_operations") else {
        return;
    };
    let backend = AzureBackend::from_connection_string(env.connection_string()).expect("account");
    let cfg = tiny(vec![Workload::W1]);
    let json = run_and_check(&backend, &cfg).await;
    assert_common_fields(&json, "azure");
    let w1 = &json["workloads"][0];
    let ops = &w1["storage_ops"];
    assert!(ops["total"].as_u64().is_some_and(|n| n > 0), "{ops}");
    assert!(ops["by_kind"]["queue.put"].as_u64().is_some_and(|n| n > 0), "{ops}");
    assert!(ops["per_orchestration"].as_f64().is_some_and(|n| n > 0.0), "{ops}");
    let phases = json["probe"]["phases"].as_array().expect("probe phases");
    assert_eq!(phases.len(), 6);
    assert!(json["bound"]["bound_orchestrations_per_sec"].as_f64().is_some_and(|b| b > 0.0));
}
