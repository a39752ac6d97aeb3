//! Test support for durabletask-rs. Not published; never a normal dependency of a library crate.
//!
//! * [`azurite`]: the Azurite environment handed over by `cargo xtask test`, unique task hub names.
//! * [`memory`]: [`InMemoryOrchestrationService`](memory::InMemoryOrchestrationService), the
//!   in-memory provider (worker and client side).
//! * [`conformance`]: the provider conformance suite; every provider runs each function as its own
//!   test, e.g. with [`conformance_tests!`].
//! * [`wait`]: deadline-based polling helpers.

pub mod azurite;
pub mod conformance;
pub mod memory;
pub mod wait;
