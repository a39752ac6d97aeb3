//! Integration tests of the Azure Storage provider against real storage (Azurite under
//! `cargo xtask test`). Every test uses its own task hub, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod blobs;
mod capture;
mod conformance;
mod entities;
mod fidelity;
mod instance_ids;
mod limits;
mod liveness;
mod partitions;
mod provider;
mod storage_conformance;
mod storage_layer;
mod support;
