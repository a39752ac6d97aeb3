//! The storage environment handed to integration tests by `cargo xtask test`.
//!
//! `cargo xtask test` starts a private Azurite and exports `DTF_TEST_AZURITE=1` and
//! `DTF_TEST_STORAGE_CONNECTION_STRING`. Run outside xtask, tests that need storage skip with a
//! message, except when `CI` is set: then a missing environment fails the test, so a green CI
//! never means "skipped".

use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable carrying the storage connection string for tests.
pub const CONNECTION_STRING_VAR: &str = "DTF_TEST_STORAGE_CONNECTION_STRING";
/// Environment variable that marks the storage as Azurite (known gaps apply).
pub const AZURITE_VAR: &str = "DTF_TEST_AZURITE";

/// Where integration tests find storage.
#[derive(Clone)]
pub struct AzuriteEnv {
    connection_string: String,
    is_emulator: bool,
}

impl std::fmt::Debug for AzuriteEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzuriteEnv")
            .field("connection_string", &"<redacted>")
            .field("is_emulator", &self.is_emulator)
            .finish()
    }
}

impl AzuriteEnv {
    /// The environment, or `None` (after printing why) when the test should skip.
    ///
    /// # Panics
    /// When `CI` is set and no storage environment is present.
    pub fn from_env_or_skip(test: &str) -> Option<Self> {
        match std::env::var(CONNECTION_STRING_VAR) {
            Ok(cs) if !cs.trim().is_empty() => Some(Self {
                connection_string: cs,
                is_emulator: std::env::var_os(AZURITE_VAR).is_some(),
            }),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test}: {CONNECTION_STRING_VAR} is not set and CI is: storage tests must run \
                     in CI (use `cargo xtask test`)"
                );
                #[allow(clippy::print_stderr)] // the skip must be visible in test output
                {
                    eprintln!(
                        "skipping {test}: {CONNECTION_STRING_VAR} is not set (run `cargo xtask test`)"
                    );
                }
                None
            }
        }
    }

    /// The storage connection string.
    pub fn connection_string(&self) -> &str {
        &self.connection_string
    }

    /// True when the storage is Azurite (which does not enforce the service's size limits and
    /// loses its data when killed).
    pub fn is_emulator(&self) -> bool {
        self.is_emulator
    }
}

/// A task hub name unique to this test and this run: `t` + a hash of `test` + a process-unique
/// suffix, lowercase letters and digits only, 3-45 characters, starting with a letter.
pub fn unique_hub_name(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hash: u32 = 0x811c_9dc5;
    for b in test.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{hash:08x}{}{n}", &unique[..10])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_are_unique_and_valid() {
        let a = unique_hub_name("mod::test_a");
        let b = unique_hub_name("mod::test_a");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.len() >= 3 && name.len() <= 45, "{name}");
            assert!(name.starts_with('t'));
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{name}");
        }
    }
}
