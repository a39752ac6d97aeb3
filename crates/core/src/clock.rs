//! Injected time source: the framework's one `Clock`. Everything that needs "now" (episode
//! timestamps, lock expiry, timer visibility, partition lease expiry) asks a [`Clock`], so tests
//! can substitute their own. Local deadlines (self-fencing) use [`Clock::monotonic`], so a
//! wall-clock jump cannot extend a worker's belief that it owns a partition.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;

use time::OffsetDateTime;

/// Where the dispatchers, the client and providers get the current UTC time from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;
    /// Monotonic time for local deadlines (tokio's clock, so paused-time tests control it).
    fn monotonic(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
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

/// A wall clock that follows tokio's (pausable) clock from a fixed origin, with an adjustable
/// skew. Use it with `#[tokio::test(start_paused = true)]` for deterministic tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin_wall: OffsetDateTime,
    origin: tokio::time::Instant,
    skew_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl TokioClock {
    /// A clock reading the real current time now and advancing with tokio's clock.
    pub fn new() -> Self {
        Self {
            origin_wall: OffsetDateTime::now_utc(),
            origin: tokio::time::Instant::now(),
            skew_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }

    /// A clock sharing this one's origin but with its own skew (for one worker).
    pub fn independent(&self) -> Self {
        Self { skew_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)), ..self.clone() }
    }

    /// Shifts this clock's wall time by `ms` (may be negative); monotonic time is unaffected.
    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = tokio::time::Instant::now() - self.origin;
        self.origin_wall
            + elapsed
            + time::Duration::milliseconds(self.skew_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The default clock as a shareable trait object.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// `t` truncated to 100 ns, the precision of DTF timestamps (.NET ticks) and of what Azure
/// Storage keeps. Work items stamp their events with it, so that a history replayed from storage
/// is exactly the history that was cached (the episode time feeds `new_guid`).
pub fn storage_precision(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 100 * 100).unwrap_or(t)
}
