//! Conformance of `InMemoryOrchestrationService`.

durabletask_testkit::conformance_tests!(durabletask_testkit::memory::MemoryFactory::default());
