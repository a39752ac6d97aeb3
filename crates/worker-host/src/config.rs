//! Host settings: where storage is and how the provider is tuned, from code or from `DTF_*`
//! environment variables. Unknown `DTF_*` variables are an error, so a typo never silently falls
//! back to a default. Secrets never appear in `Debug` output.

use durabletask_azure_storage::storage::StorageAccount;
use durabletask_azure_storage::{AzureStorageSettings, PartitionManagerKind, TaskHubName};
use std::fmt;
use std::time::Duration;

/// Errors in host configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A `DTF_*` variable this host does not know (probably a typo).
    #[error("unknown environment variable {0}; known: {known}", known = KNOWN_VARS.join(", "))]
    UnknownVariable(String),
    /// A variable or setting with an unusable value.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The variable or setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No storage connection was configured.
    #[error(
        "no storage configured: set DTF_CONNECTION_STRING, DTF_USE_EMULATOR=1 or DTF_STORAGE_ACCOUNT"
    )]
    MissingConnection,
    /// The provider rejected a setting or connection string.
    #[error(transparent)]
    Provider(#[from] durabletask_azure_storage::Error),
    /// The storage layer rejected the connection string or credential.
    #[error(transparent)]
    Storage(#[from] durabletask_azure_storage::storage::StorageError),
}

/// How the worker reaches its storage account.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageConnection {
    /// A full Azure Storage connection string (may contain an account key or SAS).
    ConnectionString(String),
    /// Azurite on its default local ports (`UseDevelopmentStorage=true`).
    Emulator,
    /// A storage account reached with an Azure AD credential (managed identity, workload identity,
    /// Azure CLI, ...), resolved by `azure_identity`'s default credential chain.
    TokenCredential {
        /// The storage account name.
        account: String,
    },
}

impl fmt::Debug for StorageConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConnection::ConnectionString(_) => f.write_str("ConnectionString(<redacted>)"),
            StorageConnection::Emulator => f.write_str("Emulator"),
            StorageConnection::TokenCredential { account } => {
                f.debug_struct("TokenCredential").field("account", account).finish()
            }
        }
    }
}

impl StorageConnection {
    /// Resolves the connection to a storage account (for token credentials, builds the default
    /// credential chain).
    pub fn storage_account(&self) -> Result<StorageAccount, ConfigError> {
        match self {
            StorageConnection::ConnectionString(cs) => {
                Ok(StorageAccount::from_connection_string(cs)?)
            }
            StorageConnection::Emulator => {
                Ok(StorageAccount::from_connection_string("UseDevelopmentStorage=true")?)
            }
            StorageConnection::TokenCredential { account } => {
                let credential = azure_identity::create_default_credential().map_err(|e| {
                    ConfigError::Invalid { name: "DTF_STORAGE_ACCOUNT", reason: e.to_string() }
                })?;
                Ok(StorageAccount::with_token_credential(account.clone(), credential))
            }
        }
    }
}

/// Everything a worker host needs: the connection and the provider settings.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Where storage is.
    pub connection: StorageConnection,
    /// Provider settings (task hub, partitions, concurrency, leases, ...).
    pub provider: AzureStorageSettings,
}

/// Every variable [`HostSettings::from_env`] reads. Variables starting with `DTF_TEST_` belong to
/// the test harness and are ignored.
pub const KNOWN_VARS: &[&str] = &[
    "DTF_CONNECTION_STRING",
    "DTF_USE_EMULATOR",
    "DTF_STORAGE_ACCOUNT",
    "DTF_TASK_HUB",
    "DTF_PARTITION_COUNT",
    "DTF_WORKER_ID",
    "DTF_PARTITION_MANAGER",
    "DTF_MAX_CONCURRENT_ORCHESTRATIONS",
    "DTF_MAX_CONCURRENT_ACTIVITIES",
    "DTF_CONTROL_QUEUE_BATCH_SIZE",
    "DTF_MAX_QUEUE_POLLING_INTERVAL_MS",
    "DTF_LEASE_INTERVAL_SECS",
    "DTF_LEASE_RENEW_INTERVAL_SECS",
    "DTF_LEASE_ACQUIRE_INTERVAL_SECS",
    "DTF_PARTITION_TABLE_OPERATION_TIMEOUT_MS",
    "DTF_NEWER_VERSION_QUARANTINE_AGE_SECS",
];

/// The task hub used when `DTF_TASK_HUB` is not set (DTF's default is "Default").
pub const DEFAULT_TASK_HUB: &str = "Default";

impl HostSettings {
    /// Settings with DTF defaults for `connection` and `task_hub`.
    pub fn new(connection: StorageConnection, task_hub: TaskHubName) -> Self {
        Self { connection, provider: AzureStorageSettings::new(task_hub) }
    }

    /// Reads `DTF_*` variables from the process environment; see [`KNOWN_VARS`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Like [`HostSettings::from_env`], over any set of variables.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut map = std::collections::BTreeMap::new();
        for (key, value) in vars {
            if !key.starts_with("DTF_")
                || key.starts_with("DTF_TEST_")
                || key == "DTF_AZURITE_DEBUG"
            {
                continue;
            }
            if !KNOWN_VARS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownVariable(key));
            }
            map.insert(key, value);
        }
        let get = |k: &str| map.get(k).map(String::as_str).filter(|v| !v.trim().is_empty());

        let connection = match (
            get("DTF_CONNECTION_STRING"),
            get("DTF_USE_EMULATOR").map(parse_bool).transpose()?,
            get("DTF_STORAGE_ACCOUNT"),
        ) {
            (Some(cs), None | Some(false), None) => {
                StorageConnection::ConnectionString(cs.to_owned())
            }
            (None, Some(true), None) => StorageConnection::Emulator,
            (None, None | Some(false), Some(account)) => {
                StorageConnection::TokenCredential { account: account.to_owned() }
            }
            (None, None | Some(false), None) => return Err(ConfigError::MissingConnection),
            _ => {
                return Err(ConfigError::Invalid {
                    name: "DTF_CONNECTION_STRING",
                    reason: "set only one of DTF_CONNECTION_STRING, DTF_USE_EMULATOR=1 and \
                             DTF_STORAGE_ACCOUNT"
                        .into(),
                });
            }
        };
        let hub = TaskHubName::new(get("DTF_TASK_HUB").unwrap_or(DEFAULT_TASK_HUB))?;
        let mut settings = Self::new(connection, hub);
        let p = &mut settings.provider;
        if let Some(v) = get("DTF_PARTITION_COUNT") {
            p.partition_count = parse_num("DTF_PARTITION_COUNT", v)?;
        }
        if let Some(v) = get("DTF_WORKER_ID") {
            v.clone_into(&mut p.worker_id);
        }
        if let Some(v) = get("DTF_PARTITION_MANAGER") {
            p.partition_manager = match v {
                "table" => PartitionManagerKind::Table,
                "safe-blob" => PartitionManagerKind::SafeBlob,
                "legacy-blob" => PartitionManagerKind::LegacyBlob,
                other => {
                    return Err(ConfigError::Invalid {
                        name: "DTF_PARTITION_MANAGER",
                        reason: format!("{other:?}; expected table, safe-blob or legacy-blob"),
                    });
                }
            };
        }
        if let Some(v) = get("DTF_MAX_CONCURRENT_ORCHESTRATIONS") {
            p.max_concurrent_orchestration_work_items =
                parse_num("DTF_MAX_CONCURRENT_ORCHESTRATIONS", v)?;
        }
        if let Some(v) = get("DTF_MAX_CONCURRENT_ACTIVITIES") {
            p.max_concurrent_activity_work_items = parse_num("DTF_MAX_CONCURRENT_ACTIVITIES", v)?;
        }
        if let Some(v) = get("DTF_CONTROL_QUEUE_BATCH_SIZE") {
            p.control_queue_batch_size = parse_num("DTF_CONTROL_QUEUE_BATCH_SIZE", v)?;
        }
        if let Some(v) = get("DTF_MAX_QUEUE_POLLING_INTERVAL_MS") {
            p.max_queue_polling_interval =
                Duration::from_millis(parse_num("DTF_MAX_QUEUE_POLLING_INTERVAL_MS", v)?);
        }
        if let Some(v) = get("DTF_PARTITION_TABLE_OPERATION_TIMEOUT_MS") {
            p.partition_table_operation_timeout =
                Duration::from_millis(parse_num("DTF_PARTITION_TABLE_OPERATION_TIMEOUT_MS", v)?);
        }
        for (name, field) in [
            ("DTF_NEWER_VERSION_QUARANTINE_AGE_SECS", &mut p.newer_version_quarantine_age),
            ("DTF_LEASE_INTERVAL_SECS", &mut p.lease_interval),
            ("DTF_LEASE_RENEW_INTERVAL_SECS", &mut p.lease_renew_interval),
            ("DTF_LEASE_ACQUIRE_INTERVAL_SECS", &mut p.lease_acquire_interval),
        ] {
            if let Some(v) = get(name) {
                *field = Duration::from_secs(parse_num(name, v)?);
            }
        }
        settings.provider.validate()?;
        Ok(settings)
    }
}

fn parse_bool(v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        other => Err(ConfigError::Invalid {
            name: "DTF_USE_EMULATOR",
            reason: format!("{other:?} is not a boolean (use 1/0, true/false)"),
        }),
    }
}

fn parse_num<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    v.trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::Invalid { name, reason: format!("{v:?}: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn emulator_with_overrides() {
        let s = HostSettings::from_vars(vars(&[
            ("DTF_USE_EMULATOR", "1"),
            ("DTF_TASK_HUB", "Samples"),
            ("DTF_PARTITION_COUNT", "8"),
            ("DTF_PARTITION_MANAGER", "safe-blob"),
            ("DTF_TEST_STORAGE_CONNECTION_STRING", "ignored"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(s.connection, StorageConnection::Emulator);
        assert_eq!(s.provider.task_hub_name.as_str(), "Samples");
        assert_eq!(s.provider.partition_count, 8);
        assert_eq!(s.provider.partition_manager, PartitionManagerKind::SafeBlob);
    }

    #[test]
    fn unknown_dtf_variables_are_rejected() {
        let err = HostSettings::from_vars(vars(&[
            ("DTF_USE_EMULATOR", "1"),
            ("DTF_PARTITON_COUNT", "8"),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownVariable(ref v) if v == "DTF_PARTITON_COUNT"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = HostSettings::from_vars(vars(&[
            ("DTF_USE_EMULATOR", "1"),
            ("DTF_PARTITION_COUNT", "x"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("DTF_PARTITION_COUNT"), "{err}");
        let err = HostSettings::from_vars(vars(&[
            ("DTF_USE_EMULATOR", "1"),
            ("DTF_PARTITION_COUNT", "17"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("partition_count"), "{err}");
        let err =
            HostSettings::from_vars(vars(&[("DTF_USE_EMULATOR", "1"), ("DTF_TASK_HUB", "a-b")]))
                .unwrap_err();
        assert!(err.to_string().contains("task hub"), "{err}");
        assert!(matches!(HostSettings::from_vars(vars(&[])), Err(ConfigError::MissingConnection)));
        assert!(matches!(
            HostSettings::from_vars(vars(&[
                ("DTF_USE_EMULATOR", "1"),
                ("DTF_STORAGE_ACCOUNT", "acct")
            ])),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn connection_strings_never_show_in_debug() {
        let s = HostSettings::from_vars(vars(&[(
            "DTF_CONNECTION_STRING",
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0c2VjcmV0;EndpointSuffix=core.windows.net",
        )]))
        .unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("c2VjcmV0c2VjcmV0"), "{text}");
        let account = s.connection.storage_account().unwrap();
        assert!(!format!("{account:?}").contains("c2VjcmV0c2VjcmV0"));
        assert_eq!(account.account(), "a");
    }
}
