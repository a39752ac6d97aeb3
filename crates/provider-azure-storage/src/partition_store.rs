//! Adapters that let the partition managers run over this crate's storage layer (placeholder).
