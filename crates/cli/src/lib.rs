//! The operator tools of durabletask-rs: the `durabletask` CLI (hub create/info/delete,
//! instances list/show/start/raise/terminate/suspend/resume/purge, history) and the
//! `durabletask-demo` that `cargo xtask demo` runs, over the worker host's settings and the
//! Azure Storage provider. The library part holds what both binaries share.

#![warn(missing_docs, unreachable_pub)]

pub mod table;
