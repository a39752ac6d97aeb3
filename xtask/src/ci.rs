//! `test`, `ci`, `tidy` and `demo`.

use crate::{azurite, cargo, run_cmd};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cargo xtask test [--external] [-- ARGS]`: build everything first, start a private Azurite (or,
/// with `--external`, use `DTF_TEST_STORAGE_CONNECTION_STRING` from the environment), run doctests
/// and all unit and integration tests, always stop Azurite, and fail on any test failure.
pub(crate) fn test(args: &[&str]) -> Result<ExitCode> {
    let (flags, passthrough) = match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut external = false;
    for flag in flags {
        match *flag {
            "--external" => external = true,
            other => bail!("unknown flag for `cargo xtask test`: {other}"),
        }
    }
    let nextest = has_nextest();
    if !nextest {
        eprintln!("xtask: cargo-nextest not found; falling back to `cargo test`");
    }

    // Build before starting Azurite, so compile time does not count against it.
    if nextest {
        run_cmd(cargo().args(["nextest", "run", "--workspace", "--all-targets", "--no-run"]))?;
    } else {
        run_cmd(cargo().args(["test", "--workspace", "--all-targets", "--no-run"]))?;
    }

    let guard;
    let env: Vec<(&str, String)> = if external {
        let cs = std::env::var("DTF_TEST_STORAGE_CONNECTION_STRING")
            .context("--external needs DTF_TEST_STORAGE_CONNECTION_STRING")?;
        // Real storage unless the caller says it is an emulator.
        let mut env = vec![("DTF_TEST_STORAGE_CONNECTION_STRING", cs)];
        if let Ok(v) = std::env::var("DTF_TEST_AZURITE") {
            env.push(("DTF_TEST_AZURITE", v));
        }
        env
    } else {
        guard = azurite::start_scoped()?;
        let env = guard.env().context("Azurite guard without environment")?;
        eprintln!(
            "xtask: Azurite pid {} on blob:{} queue:{} table:{}",
            env.pid, env.blob_port, env.queue_port, env.table_port
        );
        env.test_env()
    };

    let result = (|| -> Result<()> {
        let mut doc = cargo();
        doc.args(["test", "--workspace", "--doc"]).envs(env.iter().map(|(k, v)| (k, v)));
        run_cmd(&mut doc)?;
        let mut cmd = cargo();
        if nextest {
            cmd.args(["nextest", "run", "--workspace", "--all-targets", "--no-fail-fast"]);
            if std::env::var_os("CI").is_some() {
                cmd.args(["--profile", "ci"]);
            }
        } else {
            cmd.args(["test", "--workspace", "--all-targets", "--no-fail-fast"]);
        }
        if !passthrough.is_empty() {
            if !nextest {
                cmd.arg("--");
            }
            cmd.args(passthrough);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        run_cmd(&mut cmd)
    })();
    if let Err(err) = result {
        if !external {
            eprintln!(
                "xtask: tests failed; last lines of Azurite's log:\n{}",
                azurite::log_tail(200)
            );
        }
        return Err(err);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask ci`: what `.ci/run` executes. Cheapest checks first; the test runner's summary is
/// the last output.
pub(crate) fn ci() -> Result<ExitCode> {
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The host library builds without its Azure backend (it runs over any provider).
    run_cmd(cargo().args([
        "clippy",
        "-p",
        "durabletask-worker-host",
        "--lib",
        "--no-default-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Documentation builds without warnings (broken intra-doc links, missing docs).
    run_cmd(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    tidy()?;
    deny()?;
    test(&[])
}

fn deny() -> Result<()> {
    let installed = cargo()
        .args(["deny", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        run_cmd(cargo().args(["install", "cargo-deny", "--locked"]))
            .context("installing cargo-deny from crates.io")?;
    }
    // Advisories need a download of the advisory database, which this network may not allow;
    // licences, bans and sources are checked offline.
    run_cmd(cargo().args(["deny", "--workspace", "check", "bans", "licenses", "sources"]))
}

/// `cargo xtask tidy`: the same checks as the `tidy` unit tests, runnable on their own.
pub(crate) fn tidy() -> Result<ExitCode> {
    let meta = metadata()?;
    check_layering(&meta)?;
    check_core_has_no_azure(&meta)?;
    check_workspace_lints(&crate::project_root())?;
    crate::structure::check_service(&crate::project_root())?;
    println!("tidy: ok");
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask demo`: start Azurite and run the sample orchestrations (see `demo.rs`).
pub(crate) fn demo(args: &[&str]) -> Result<ExitCode> {
    crate::demo::run(args)
}

fn metadata() -> Result<serde_json::Value> {
    let out = cargo()
        .args(["metadata", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The allowed normal-dependency edges between workspace crates (ARCHITECTURE.md, "Crate map").
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("durabletask-core", &[]),
    ("durabletask-partition-manager", &["durabletask-core"]),
    ("durabletask-azure-storage", &["durabletask-core", "durabletask-partition-manager"]),
    ("durabletask-worker-host", &["durabletask-core", "durabletask-azure-storage"]),
    (
        "durabletask-cli",
        &["durabletask-core", "durabletask-azure-storage", "durabletask-worker-host"],
    ),
    ("durabletask-testkit", &["durabletask-core", "durabletask-partition-manager"]),
    (
        "durabletask-chaos",
        &[
            "durabletask-core",
            "durabletask-azure-storage",
            "durabletask-testkit",
            "durabletask-partition-manager",
        ],
    ),
    (
        "durabletask-bench",
        &[
            "durabletask-core",
            "durabletask-azure-storage",
            "durabletask-testkit",
            "durabletask-partition-manager",
        ],
    ),
    ("xtask", &[]),
];

/// Normal (non-dev, non-build) dependencies of each workspace package, by package name.
fn workspace_edges(meta: &serde_json::Value) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut names = BTreeSet::new();
    for pkg in meta["packages"].as_array().context("no packages")? {
        if members.contains(pkg["id"].as_str().unwrap_or_default()) {
            names.insert(pkg["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    let mut edges = BTreeMap::new();
    for pkg in meta["packages"].as_array().context("no packages")? {
        let name = pkg["name"].as_str().unwrap_or_default();
        if !names.contains(name) {
            continue;
        }
        let mut deps = BTreeSet::new();
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            if dep["kind"].is_null() && names.contains(dep_name) {
                deps.insert(dep_name.to_owned());
            }
        }
        edges.insert(name.to_owned(), deps);
    }
    Ok(edges)
}

fn check_layering(meta: &serde_json::Value) -> Result<()> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_EDGES.iter().copied().collect();
    let mut errors = Vec::new();
    for (pkg, deps) in workspace_edges(meta)? {
        let Some(ok) = allowed.get(pkg.as_str()) else {
            errors
                .push(format!("{pkg} is not in xtask's ALLOWED_EDGES table; add it deliberately"));
            continue;
        };
        for dep in deps {
            if !ok.contains(&dep.as_str()) {
                errors.push(format!("{pkg} must not depend on {dep}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("layering violations:\n  {}", errors.join("\n  "))
    }
}

/// Packages (transitively, normal edges only) reachable from `root` in the resolved graph.
fn closure(meta: &serde_json::Value, root: &str) -> Result<BTreeSet<String>> {
    let nodes = meta["resolve"]["nodes"].as_array().context("no resolve graph")?;
    let by_id: BTreeMap<&str, &serde_json::Value> =
        nodes.iter().filter_map(|n| Some((n["id"].as_str()?, n))).collect();
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .context("no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let root_id = name_of
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| *id)
        .with_context(|| format!("{root} not found"))?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = by_id.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal =
                dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let (true, Some(pkg)) = (normal, dep["pkg"].as_str()) {
                stack.push(pkg);
            }
        }
    }
    Ok(seen.iter().filter_map(|id| name_of.get(id)).map(|s| (*s).to_owned()).collect())
}

fn check_core_has_no_azure(meta: &serde_json::Value) -> Result<()> {
    let deps = closure(meta, "durabletask-core")?;
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| {
            d.starts_with("azure_")
                || ["reqwest", "hyper", "rustls", "openssl"].contains(&d.as_str())
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        bail!("durabletask-core must not depend on Azure/HTTP/TLS crates, found {bad:?}")
    }
}

/// Every workspace crate takes the workspace lints.
fn check_workspace_lints(root: &std::path::Path) -> Result<()> {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))? {
        let manifest = entry?.path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)?;
        if !text.contains("[lints]\nworkspace = true") {
            missing.push(manifest.display().to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("without `[lints] workspace = true`: {}", missing.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project_root;

    #[test]
    fn layering_follows_the_allowed_edge_table() {
        check_layering(&metadata().unwrap()).unwrap();
    }

    #[test]
    fn core_pulls_in_no_azure_http_or_tls_crate() {
        check_core_has_no_azure(&metadata().unwrap()).unwrap();
    }

    #[test]
    fn provider_does_pull_in_azure_so_the_closure_check_can_see_it() {
        // Guards the check above against silently passing on an empty closure.
        let deps = closure(&metadata().unwrap(), "durabletask-azure-storage").unwrap();
        assert!(deps.contains("azure_data_tables"), "{deps:?}");
        assert!(deps.contains("durabletask-core"));
    }

    #[test]
    fn every_workspace_crate_uses_workspace_lints() {
        check_workspace_lints(&project_root()).unwrap();
    }
}
