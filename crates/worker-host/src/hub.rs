//! Azure Storage wiring shared by the worker host and the `durabletask` CLI: building the provider
//! from [`HostSettings`]. The task hub's views ([`durabletask_core::admin`]) are the
//! provider's, through `ProviderAdmin`.

use durabletask_azure_storage::AzureStorageOrchestrationService;

use crate::config::{ConfigError, HostSettings};

/// The Azure Storage provider for `settings` (connection string, emulator, or account + token
/// credential). Nothing is sent to storage yet.
///
/// # Errors
/// [`ConfigError`] for a bad connection string, credential or setting.
pub fn azure_service(
    settings: &HostSettings,
) -> Result<AzureStorageOrchestrationService, ConfigError> {
    let account = settings.connection.storage_account()?;
    Ok(AzureStorageOrchestrationService::new(settings.provider.clone(), &account)?)
}
