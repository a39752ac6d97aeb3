//! The light chaos profile on Azurite (part of `cargo xtask test`). Each test runs one scenario
//! on its own task hub, prints its summary line and fails on any finding.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod scenarios;
