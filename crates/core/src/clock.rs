//! Injected time source. Everything in the framework that needs "now" (episode timestamps, lock
//! expiry, timer visibility) asks a [`Clock`], so tests can substitute their own.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;

use time::OffsetDateTime;

/// Where the dispatchers, the client and providers get the current UTC time from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to (for pure unit tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// A manual clock reading `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut g = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *g += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The default clock as a shareable trait object.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
