//! `durabletask entities` against Azurite, with a worker running the entity in this process.

use std::time::Duration;

use durabletask_azure_storage::TaskHubName;
use durabletask_core::{
    EntityContext, EntityError, OrchestrationContext, RuntimeOptions, WorkerOptions,
};
use durabletask_testkit::azurite::{AzuriteEnv, unique_hub_name};
use durabletask_testkit::wait::wait_until;
use durabletask_worker_host::{HostSettings, StorageConnection, TaskHubWorker};

use crate::cli::cli;

const TIMEOUT: Duration = Duration::from_secs(90);

fn counter(ctx: &mut EntityContext<i64>) -> Result<(), EntityError> {
    match ctx.operation() {
        "add" => {
            let n: i64 = ctx.input()?;
            *ctx.state_mut() += n;
            Ok(())
        }
        "delete" => {
            ctx.delete_state();
            Ok(())
        }
        other => Err(EntityError::new(format!("Counter has no operation '{other}'"))),
    }
}

/// A worker for `hub` with the Counter entity and an `Echo` orchestration, on the CLI's two
/// partitions, with a one-second entity reorder window so that the clean-up may remove an
/// entity deleted a moment ago.
async fn start_worker(env: &AzuriteEnv, hub: &str) -> TaskHubWorker {
    let mut settings = HostSettings::new(
        StorageConnection::ConnectionString(env.connection_string().to_owned()),
        TaskHubName::new(hub).unwrap(),
    );
    settings.provider.partition_count = 2;
    settings.provider.max_queue_polling_interval = Duration::from_millis(500);
    settings.provider.lease_acquire_interval = Duration::from_secs(1);
    let options = WorkerOptions {
        runtime: RuntimeOptions {
            entity_reorder_window: Duration::from_secs(1),
            ..RuntimeOptions::default()
        },
        ..WorkerOptions::default()
    };
    TaskHubWorker::builder(settings)
        .registry(|r| {
            r.entity("Counter", counter).orchestration(
                "Echo",
                |_ctx: OrchestrationContext, v: serde_json::Value| async move { Ok(v) },
            )
        })
        .worker_options(options)
        .drain_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn instance_ids(out: &str) -> Vec<String> {
    let mut ids: Vec<String> = json(out)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["OrchestrationInstance"]["InstanceId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn cli_signals_lists_shows_and_cleans_entities() {
    let Some(env) = AzuriteEnv::from_env_or_skip("cli_entities") else { return };
    let hub = unique_hub_name("cli_entities");
    // The CLI runs as a child process on this thread; the worker's dispatchers run on the
    // runtime's own threads meanwhile.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let worker = rt.block_on(start_worker(&env, &hub));

    // Invalid ids are refused before anything is sent.
    for (args, why) in [
        (&["entities", "signal", "@@k", "add"][..], "entity name must not be empty"),
        (&["entities", "signal", "--name", "", "--key", "k", "add"], "must not be empty"),
        (&["entities", "signal", "@counter@k\u{7}", "add"], "forbidden character"),
        (&["entities", "signal", "--name", "a@b", "--key", "k", "add"], "must not contain '@'"),
        (&["entities", "signal", "counter@k", "add"], "write @name@key"),
        (&["entities", "show", "@counter"], "expected \"@name@key\""),
    ] {
        let (ok, out, err) = cli(&env, &hub, args);
        assert!(!ok && out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let (ok, out, err) = cli(&env, &hub, &["--json", "instances", "list", "--include-entities"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out), serde_json::json!([]), "nothing was written");

    // Signals, both ways of naming the entity; a second counter is created, then deleted.
    let (ok, out, err) =
        cli(&env, &hub, &["entities", "signal", "@Counter@a", "add", "--input", "5"]);
    assert!(ok, "{err}");
    assert_eq!(out, "signal add sent to @counter@a\n");
    let (ok, out, err) = cli(
        &env,
        &hub,
        &["--json", "entities", "signal", "add", "--name", "counter", "--key", "a", "--input", "2"],
    );
    assert!(ok, "{err}");
    assert_eq!(json(&out)["entity"], "@counter@a");
    for op in [&["add", "--input", "1"][..], &["delete"]] {
        let args: Vec<&str> =
            ["entities", "signal", "@counter@b"].iter().chain(op).copied().collect();
        let (ok, _, err) = cli(&env, &hub, &args);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = cli(&env, &hub, &["instances", "start", "Echo", "--id", "echo-1"]);
    assert!(ok, "{err}");

    let shown = rt.block_on(wait_until(TIMEOUT, "@counter@a to reach 7", || async {
        let (ok, out, _) = cli(&env, &hub, &["--json", "entities", "show", "@counter@a"]);
        let v = ok.then(|| json(&out))?;
        (v["state"] == 7).then_some(v)
    }));
    assert_eq!(shown["name"], "counter");
    assert_eq!(shown["key"], "a");
    assert_eq!(shown["exists"], true);
    assert_eq!(shown["backlog"], 0);
    assert!(shown["locked_by"].is_null(), "{shown}");
    let (ok, out, err) = cli(&env, &hub, &["entities", "show", "--name", "Counter", "--key", "a"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("FIELD"), "{out}");
    assert!(out.contains("entity         @counter@a\n"), "{out}");
    assert!(out.ends_with("state:\n7\n"), "{out}");

    // The deleted one: an error, but its scheduler is printed.
    let (out, err) = rt.block_on(wait_until(TIMEOUT, "@counter@b to be deleted", || async {
        let (ok, out, err) = cli(&env, &hub, &["entities", "show", "@counter@b"]);
        (!ok && err.contains("has no state")).then_some((out, err))
    }));
    assert!(err.contains("entity '@counter@b' has no state"), "{err}");
    assert!(out.starts_with("entity @counter@b has no state; its scheduler:"), "{out}");
    assert!(out.contains("exists           no"), "{out}");
    let (ok, _, err) = cli(&env, &hub, &["entities", "show", "@counter@nobody"]);
    assert!(!ok && err.contains("entity '@counter@nobody' not found"), "{err}");

    // Lists: with state, with the deleted one, by name prefix.
    let (ok, out, err) = cli(&env, &hub, &["entities", "list", "--with-state"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ENTITY      NAME     KEY  EXISTS  LOCKED BY  BACKLOG"), "{out}");
    assert!(
        lines[2].starts_with("@counter@a  counter  a    yes") && lines[2].ends_with("  7"),
        "{out}"
    );
    let (ok, out, err) =
        cli(&env, &hub, &["--json", "entities", "list", "--include-deleted", "--with-state"]);
    assert!(ok, "{err}");
    let v = json(&out);
    let listed: Vec<(&str, bool, &serde_json::Value)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["entity"].as_str().unwrap(), e["exists"].as_bool().unwrap(), &e["state"]))
        .collect();
    assert_eq!(
        listed,
        [
            ("@counter@a", true, &serde_json::json!(7)),
            ("@counter@b", false, &serde_json::Value::Null)
        ]
    );
    let (ok, out, err) = cli(&env, &hub, &["--json", "entities", "list", "--name", "acc"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out), serde_json::json!([]));

    // `instances list` leaves entities out unless asked.
    let (ok, out, err) = cli(&env, &hub, &["--json", "instances", "list"]);
    assert!(ok, "{err}");
    assert_eq!(instance_ids(&out), ["echo-1"]);
    let (ok, out, err) = cli(&env, &hub, &["--json", "instances", "list", "--include-entities"]);
    assert!(ok, "{err}");
    assert_eq!(instance_ids(&out), ["@counter@a", "@counter@b", "echo-1"]);

    // The clean-up removes the deleted entity once the reorder window (1 s) has passed: summed
    // over the calls, since a call may ask the entity to complete and a later one purge it.
    let (ok, _, err) = cli(&env, &hub, &["entities", "clean"]);
    assert!(!ok && err.contains("nothing to clean"), "{err}");
    let removed = std::cell::Cell::new(0);
    rt.block_on(wait_until(TIMEOUT, "the clean-up to remove @counter@b", || async {
        let args = ["--json", "entities", "clean", "--remove-empty", "--wait", "10"];
        let (ok, out, err) = cli(&env, &hub, &args);
        assert!(ok, "{err}");
        let v = json(&out);
        assert_eq!(v["orphaned_locks_released"], 0, "{v}");
        removed.set(removed.get() + v["empty_entities_removed"].as_u64().unwrap());
        (removed.get() > 0).then_some(())
    }));
    assert_eq!(removed.get(), 1);
    let (ok, out, err) = cli(
        &env,
        &hub,
        &["entities", "clean", "--remove-empty", "--release-orphaned-locks", "--wait", "0"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "removed 0 empty entities, released 0 orphaned lock(s)\n");
    let (ok, _, err) = cli(&env, &hub, &["entities", "show", "@counter@b"]);
    assert!(!ok && err.contains("entity '@counter@b' not found"), "purged: {err}");
    let (ok, out, err) = cli(&env, &hub, &["--json", "entities", "list", "--include-deleted"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out).as_array().map(Vec::len), Some(1), "{out}");
    let (ok, out, err) = cli(&env, &hub, &["entities", "show", "@counter@a"]);
    assert!(ok && out.ends_with("state:\n7\n"), "{err}{out}");

    rt.block_on(worker.shutdown()).unwrap();
    let (ok, _, err) = cli(&env, &hub, &["hub", "delete", "--yes"]);
    assert!(ok, "{err}");
}
