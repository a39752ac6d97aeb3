//! Control-queue partition ownership for durabletask-rs (table, safe-blob and legacy-blob
//! variants). Placeholder until the partition-manager issue lands.
