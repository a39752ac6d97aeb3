//! Integration tests of the worker host: wiring and samples over the in-memory provider, and the
//! multi-process test against Azurite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on unexpected errors

mod azure;
mod host;
mod multi_process;
