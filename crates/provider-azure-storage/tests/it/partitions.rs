//! Partition-manager conformance on Azurite (placeholder).
