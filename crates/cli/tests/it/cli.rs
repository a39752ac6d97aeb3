//! The `durabletask` CLI against Azurite.

use std::process::Command;

use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};

/// Runs the `durabletask` binary on `hub` (two partitions) with only `env`'s connection; returns
/// (success, stdout, stderr).
pub(crate) fn cli(env: &AzuriteEnv, hub: &str, args: &[&str]) -> (bool, String, String) {
    let full: Vec<&str> = ["--task-hub", hub, "--partition-count", "2"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    raw(env, &full)
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
    let (ok, _, err) = cli(&env, &hub, &["hub", "info"]);
    assert!(!ok && err.contains("does not exist"), "a deleted hub is an error: {err}");
}

/// Runs the CLI with exactly `args` and only `env`'s connection; returns (success, stdout,
/// stderr).
fn raw(env: &AzuriteEnv, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_durabletask"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DTF_") {
            cmd.env_remove(key);
        }
    }
    let out =
        cmd.env("DTF_CONNECTION_STRING", env.connection_string()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI reads the hub's partition count from storage, refuses a count that does not match,
/// and calls a missing hub an error in every command (no empty list, no raw 404).
#[test]
fn the_hub_decides_the_partition_count_and_a_missing_hub_is_an_error() {
    let Some(env) = AzuriteEnv::from_env_or_skip("cli_partitions") else { return };
    let hub = unique_hub_name("cli_partitions");
    for args in [
        &["instances", "list"][..],
        &["instances", "start", "HelloCities", "--input", "null"],
        &["instances", "raise", "x", "e"],
        &["entities", "list"],
        &["hub", "partitions"],
        &["hub", "poison"],
    ] {
        let full: Vec<&str> =
            ["--task-hub", hub.as_str()].into_iter().chain(args.iter().copied()).collect();
        let (ok, out, err) = raw(&env, &full);
        assert!(!ok, "{args:?} on a missing hub succeeded: {out}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(!err.contains("404") && !err.contains("NotFound"), "{args:?}: {err}");
    }
    let (ok, _, err) = raw(&env, &["--task-hub", &hub, "--partition-count", "3", "hub", "create"]);
    assert!(ok, "{err}");
    // Omitted: the hub's own count.
    let (ok, out, err) = raw(&env, &["--task-hub", &hub, "--json", "hub", "info"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partition_count"], 3, "{v}");
    assert_eq!(v["control_queues"].as_array().map(Vec::len), Some(3), "{v}");
    // A different count is refused, before anything is sent.
    for given in ["2", "4", "8"] {
        let (ok, _, err) = raw(
            &env,
            &["--task-hub", &hub, "--partition-count", given, "instances", "start", "HelloCities"],
        );
        assert!(!ok && err.contains("has 3 control queues"), "{given}: {err}");
    }
    let (ok, out, err) = raw(&env, &["--task-hub", &hub, "--json", "instances", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]", "nothing was started");
    // `list` is newest first, whatever the ids' order.
    for id in ["z1", "a2", "m3"] {
        let (ok, _, err) =
            raw(&env, &["--task-hub", &hub, "instances", "start", "HelloCities", "--id", id]);
        assert!(ok, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, out, err) = raw(&env, &["--task-hub", &hub, "--json", "instances", "list"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["OrchestrationInstance"]["InstanceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m3", "a2", "z1"]);
    let (ok, out, err) =
        raw(&env, &["--task-hub", &hub, "--json", "instances", "list", "--top", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"m3\"") && !out.contains("\"z1\""), "{out}");
    // Orchestration operations on an unknown instance fail clearly.
    for op in [
        &["raise", "nope", "e"][..],
        &["terminate", "nope"],
        &["suspend", "nope"],
        &["resume", "nope"],
    ] {
        let full: Vec<&str> = ["--task-hub", hub.as_str(), "instances"]
            .into_iter()
            .chain(op.iter().copied())
            .collect();
        let (ok, _, err) = raw(&env, &full);
        assert!(!ok && err.contains("not found"), "{op:?}: {err}");
    }
    // Creating again with another count is refused too.
    let (ok, _, err) = raw(&env, &["--task-hub", &hub, "--partition-count", "4", "hub", "create"]);
    assert!(!ok && err.contains("has 3 control queues"), "{err}");
    let (ok, _, err) = raw(&env, &["--task-hub", &hub, "hub", "delete", "--yes"]);
    assert!(ok, "{err}");
}

/// The CLI logs to stderr, never stdout, and without colour codes when stderr is not a
/// terminal (here a pipe).
#[test]
fn logs_go_to_stderr_without_colour_codes() {
    let Some(env) = AzuriteEnv::from_env_or_skip("cli_logs") else { return };
    let hub = unique_hub_name("cli_logs");
    let out = Command::new(env!("CARGO_BIN_EXE_durabletask"))
        .env("DTF_CONNECTION_STRING", env.connection_string())
        .env("RUST_LOG", "debug")
        .args(["--task-hub", &hub, "--partition-count", "2", "--json", "hub", "create"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.trim().is_empty(), "debug logging produced nothing");
    assert!(!stderr.contains('\u{1b}'), "colour codes in a piped stderr: {stderr:.400}");
    assert!(!stdout.contains("DEBUG"), "logs on stdout: {stdout:.400}");
    let _ = cli(&env, &hub, &["hub", "delete", "--yes"]);
}
