//! The `durabletask` CLI against Azurite.

use std::process::Command;

use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};

fn cli(env: &AzuriteEnv, hub: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_durabletask"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DTF_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .env("DTF_CONNECTION_STRING", env.connection_string())
        .args(["--task-hub", hub, "--partition-count", "2"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_manages_a_hub_and_its_instances() {
    let Some(env) = AzuriteEnv::from_env_or_skip("cli_hub") else { return };
    let hub = unique_hub_name("cli_hub");
    let (ok, out, err) = cli(&env, &hub, &["hub", "create"]);
    assert!(ok, "{err}");
    assert!(out.contains("ready (2 partitions)"), "{out}");

    let (ok, out, err) = cli(&env, &hub, &["--json", "hub", "partitions"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert!(v[0]["owner"].is_null(), "no worker has run: {v}");
    let (ok, out, err) = cli(&env, &hub, &["hub", "poison"]);
    assert!(ok, "{err}");
    assert_eq!(out, "no quarantined messages\n");

    let (ok, out, err) =
        cli(&env, &hub, &["instances", "start", "HelloCities", "--id", "cli-1", "--input", "null"]);
    assert!(ok, "{err}");
    assert_eq!(out, "started HelloCities as instance cli-1\n");

    let (ok, out, err) = cli(&env, &hub, &["--json", "instances", "list"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["OrchestrationInstance"]["InstanceId"], "cli-1");
    assert_eq!(v[0]["OrchestrationStatus"], "Pending");

    let (ok, out, err) = cli(&env, &hub, &["--json", "hub", "info"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exists"], true);
    let queued: u64 = v["control_queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["approximate_length"].as_u64().unwrap())
        .sum();
    assert_eq!(queued, 1, "the start message waits in a control queue: {v}");

    let (ok, _, err) = cli(&env, &hub, &["instances", "terminate", "cli-1", "--reason", "test"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&env, &hub, &["instances", "purge", "cli-1"]);
    assert!(!ok && err.contains("still active"), "no worker ran: still pending; {err}");

    let (ok, _, err) = cli(&env, &hub, &["hub", "delete"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, _, err) = cli(&env, &hub, &["hub", "delete", "--yes"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&env, &hub, &["hub", "info"]);
    assert!(ok, "{err}");
    assert!(out.contains("does not exist"), "{out}");
}
