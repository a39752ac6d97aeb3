//! Integration tests for durabletask-core: replay fixtures, work-item processing, property tests.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod fixtures;
mod proptests;
mod replay;
mod runtime;
mod support;
