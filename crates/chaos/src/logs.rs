//! Counts the provider's named log events (the message's first word, e.g.
//! `SplitBrainDetected`), for the scenario reports. Install once per process with [`init`];
//! a `chaos_worker` child logs to its stderr, which the harness scans with [`count_in_text`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Event names worth counting.
pub const WATCHED: &[&str] = &[
    "SplitBrainDetected",
    "PoisonMessageDetected",
    "ReceivedOutOfOrderMessage",
    "DuplicateMessageDetected",
    "DiscardingWorkItem",
    "MessageFailure",
    "PartitionManagerWarning",
    "OrchestrationProcessingFailure",
    "PendingOrchestratorMessageLimitReached",
];

fn counts() -> &'static Mutex<BTreeMap<&'static str, u64>> {
    static COUNTS: OnceLock<Mutex<BTreeMap<&'static str, u64>>> = OnceLock::new();
    COUNTS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

struct MessageVisitor(Option<String>);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }
}

struct CountingLayer;

impl<S: tracing::Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut v = MessageVisitor(None);
        event.record(&mut v);
        let Some(msg) = v.0 else { return };
        if let Some(name) = WATCHED.iter().find(|w| msg.starts_with(**w)) {
            let mut c = counts().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *c.entry(name).or_insert(0) += 1;
        }
    }
}

/// Installs the counting layer plus a compact stderr log filtered by `RUST_LOG` (default
/// `error`). Later calls do nothing.
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .compact()
            .with_filter(filter);
        // Counting sees every event at info and above, whatever the printed level is.
        let counting = CountingLayer.with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let _ = tracing_subscriber::registry().with(fmt).with(counting).try_init();
    });
}

/// Events counted in this process so far.
pub fn snapshot() -> BTreeMap<&'static str, u64> {
    counts().lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// `after - before`, per event.
pub fn since(before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
    snapshot()
        .into_iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Occurrences of `name` in a captured log.
pub fn count_in_text(text: &str, name: &str) -> u64 {
    u64::try_from(text.matches(name).count()).unwrap_or(u64::MAX)
}
