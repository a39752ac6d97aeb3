//! The in-memory provider runs the full provider conformance suite, one test per behaviour.

mod memory;
