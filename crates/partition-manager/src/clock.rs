//! Time sources: the framework's one [`Clock`] (from `durabletask-core`). Lease expiry
//! (`ExpiresAt`) uses its wall time; self-fencing deadlines use [`Clock::monotonic`], so a
//! wall-clock jump cannot extend a worker's belief that it owns a partition.

pub use durabletask_core::clock::{Clock, SystemClock, TokioClock};
