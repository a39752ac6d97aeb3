//! The core provider conformance suite on Azure Storage (Azurite), one task hub per test.

use crate::support::azure_factory;

durabletask_testkit::conformance_tests!(match azure_factory("conformance") {
    Some(f) => f,
    None => return,
});
