//! The provider's error type.

use crate::storage::StorageError;

/// Errors of the Azure Storage provider.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task hub name breaks the naming rules.
    #[error("invalid task hub name {name:?}: {reason}")]
    InvalidTaskHubName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Result with the provider's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
