//! Captures tracing events so tests can assert on the DTF event names the provider logs.
//! nextest runs every test in its own process, so the global subscriber sees one test's events.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// One captured event.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) message: String,
    pub(crate) fields: BTreeMap<String, String>,
    /// Names of the spans the event was emitted in, innermost first.
    pub(crate) spans: Vec<String>,
}

static EVENTS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<bool> = OnceLock::new();

struct Layer;

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let message = f.0.remove("message").unwrap_or_default();
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.map(|s| s.name().to_owned()).collect())
            .unwrap_or_default();
        EVENTS.lock().unwrap().push(Captured { message, fields: f.0, spans });
    }
}

/// Installs the capturing subscriber (once per process).
pub(crate) fn install() {
    INSTALLED.get_or_init(|| tracing_subscriber::registry().with(Layer).try_init().is_ok());
}

/// The captured events whose message starts with `name`.
pub(crate) fn named(name: &str) -> Vec<Captured> {
    EVENTS.lock().unwrap().iter().filter(|e| e.message.starts_with(name)).cloned().collect()
}
