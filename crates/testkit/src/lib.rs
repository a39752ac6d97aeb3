//! Test support for durabletask-rs. Not published; never a normal dependency of a library crate.
//!
//! * [`azurite`]: the Azurite environment handed over by `cargo xtask test`, unique task hub names.

pub mod azurite;
