//! Integration tests of the operator CLI against Azurite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on unexpected errors

mod cli;
mod entities;
