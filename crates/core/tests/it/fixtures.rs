//! Replay fixtures: every `tests/data/*.json` file holds a history (DTF JSON shape, PascalCase
//! members, `EventType` by name) and the expected action summaries.

use std::path::PathBuf;

use durabletask_core::HistoryEvent;
use durabletask_core::replay::execute;
use serde::Deserialize;

use crate::support::{registry, summarize};

#[derive(Deserialize)]
struct Fixture {
    description: String,
    history: Vec<HistoryEvent>,
    expect: Vec<String>,
}

#[test]
fn replay_fixtures() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    assert!(files.len() >= 3, "fixtures missing in {}", dir.display());
    let registry = registry();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let fx: Fixture =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = summarize(&execute(&registry, &[], &fx.history).unwrap().actions);
        assert_eq!(got, fx.expect, "{}: {}", path.display(), fx.description);
        // The fixture's events survive a serde round trip unchanged.
        let again: Vec<HistoryEvent> =
            serde_json::from_str(&serde_json::to_string(&fx.history).unwrap()).unwrap();
        assert_eq!(again, fx.history);
    }
}
