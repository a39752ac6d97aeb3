//! `TaskHubWorker` for durabletask-rs: registration, settings, connection, graceful shutdown and
//! tracing setup. Placeholder until the worker-host issue lands.
