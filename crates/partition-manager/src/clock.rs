//! Time sources. Lease expiry (`ExpiresAt`) uses the wall clock; self-fencing deadlines use the
//! monotonic clock, so a wall-clock jump cannot extend a worker's belief that it owns a partition.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;
use tokio::time::Instant;

/// Where the partition manager gets the time from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Current UTC wall-clock time (written to and compared with `ExpiresAt`).
    fn now_utc(&self) -> OffsetDateTime;
    /// Monotonic time for local deadlines (tokio's clock, so paused-time tests control it).
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A wall clock that follows tokio's (pausable) clock from a fixed origin, with an adjustable skew.
/// Use it with `#[tokio::test(start_paused = true)]` for deterministic tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin_wall: OffsetDateTime,
    origin: Instant,
    skew_ms: Arc<AtomicI64>,
}

impl TokioClock {
    /// A clock reading the real current time now and advancing with tokio's clock.
    pub fn new() -> Self {
        Self {
            origin_wall: OffsetDateTime::now_utc(),
            origin: Instant::now(),
            skew_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// A clock sharing this one's origin but with its own skew (for one worker).
    pub fn independent(&self) -> Self {
        Self { skew_ms: Arc::new(AtomicI64::new(0)), ..self.clone() }
    }

    /// Shifts this clock's wall time by `ms` (may be negative); monotonic time is unaffected.
    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::SeqCst);
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_utc(&self) -> OffsetDateTime {
        let elapsed = Instant::now() - self.origin;
        self.origin_wall
            + elapsed
            + time::Duration::milliseconds(self.skew_ms.load(Ordering::SeqCst))
    }
}
