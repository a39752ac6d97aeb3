//! Where the storage account is and how to authenticate: connection strings (including
//! `UseDevelopmentStorage=true` and Azurite's explicit endpoints) or account name + token credential.

use super::{StorageError, StorageErrorKind};
use azure_storage::{CloudLocation, ConnectionString, EndpointProtocol, StorageCredentials};
use std::fmt;

/// The three service endpoints of one storage account plus its credentials.
///
/// `Debug` never prints keys, SAS tokens or bearer tokens.
#[derive(Clone)]
pub struct StorageAccount {
    account: String,
    credentials: StorageCredentials,
    blob: CloudLocation,
    queue: CloudLocation,
    table: CloudLocation,
    is_emulator: bool,
}

impl fmt::Debug for StorageAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageAccount")
            .field("account", &self.account)
            .field("blob", &location_url(&self.blob))
            .field("queue", &location_url(&self.queue))
            .field("table", &location_url(&self.table))
            .field("is_emulator", &self.is_emulator)
            .field("credentials", &"<redacted>")
            .finish()
    }
}

fn location_url(location: &CloudLocation) -> String {
    match location {
        CloudLocation::Public { account } => format!("https://{account}.*.core.windows.net"),
        CloudLocation::China { account } => format!("https://{account}.*.core.chinacloudapi.cn"),
        CloudLocation::Emulator { address, port } => format!("http://{address}:{port}"),
        CloudLocation::Custom { uri, .. } => uri.clone(),
    }
}

fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::new(StorageErrorKind::InvalidInput, "parse connection string", message)
}

impl StorageAccount {
    /// Parses an Azure Storage connection string.
    ///
    /// Supported forms: `UseDevelopmentStorage=true` (Azurite on its default ports 10000-10002),
    /// `AccountName=..;AccountKey=..` with optional `DefaultEndpointsProtocol` / `EndpointSuffix`,
    /// `SharedAccessSignature=..`, and explicit `BlobEndpoint` / `QueueEndpoint` / `TableEndpoint`
    /// (which is how a non-default Azurite is addressed).
    pub fn from_connection_string(connection_string: &str) -> Result<Self, StorageError> {
        let cs = ConnectionString::new(connection_string)
            .map_err(|e| invalid(format!("malformed connection string: {}", redact_error(&e))))?;
        if cs.use_development_storage == Some(true) {
            return Ok(Self::emulator("127.0.0.1", 10000, 10001, 10002));
        }
        let account = cs
            .account_name
            .ok_or_else(|| invalid("connection string has no AccountName"))?
            .to_owned();
        let credentials = cs.storage_credentials().map_err(|_| {
            invalid("connection string has neither AccountKey nor SharedAccessSignature")
        })?;
        let protocol = match cs.default_endpoints_protocol {
            Some(EndpointProtocol::Http) => "http",
            _ => "https",
        };
        let suffix = cs.endpoint_suffix.unwrap_or("core.windows.net");
        let location = |explicit: Option<&str>, service: &str| CloudLocation::Custom {
            account: account.clone(),
            uri: explicit
                .map(|e| e.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| format!("{protocol}://{account}.{service}.{suffix}")),
        };
        let blob = location(cs.blob_endpoint, "blob");
        let queue = location(cs.queue_endpoint, "queue");
        let table = location(cs.table_endpoint, "table");
        let is_emulator = account == azure_storage::EMULATOR_ACCOUNT;
        Ok(Self { account, credentials, blob, queue, table, is_emulator })
    }

    /// Azurite (or the legacy emulator) with the well-known development account on the given ports.
    pub fn emulator(host: &str, blob_port: u16, queue_port: u16, table_port: u16) -> Self {
        let account = azure_storage::EMULATOR_ACCOUNT.to_owned();
        let at = |port: u16| CloudLocation::Custom {
            account: account.clone(),
            uri: format!("http://{host}:{port}/{account}"),
        };
        Self {
            credentials: StorageCredentials::access_key(
                account.clone(),
                azure_storage::EMULATOR_ACCOUNT_KEY.to_owned(),
            ),
            blob: at(blob_port),
            queue: at(queue_port),
            table: at(table_port),
            account,
            is_emulator: true,
        }
    }

    /// A public-cloud account authenticated by an Azure AD token credential (for example managed
    /// identity from `azure_identity`).
    pub fn with_token_credential(
        account: impl Into<String>,
        credential: std::sync::Arc<dyn azure_core::auth::TokenCredential>,
    ) -> Self {
        let account = account.into();
        let at = |service: &str| CloudLocation::Custom {
            account: account.clone(),
            uri: format!("https://{account}.{service}.core.windows.net"),
        };
        Self {
            credentials: StorageCredentials::token_credential(credential),
            blob: at("blob"),
            queue: at("queue"),
            table: at("table"),
            account,
            is_emulator: false,
        }
    }

    /// The storage account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// True for the well-known development account (Azurite), whose known gaps tests allow for.
    pub fn is_emulator(&self) -> bool {
        self.is_emulator
    }

    /// The URL of a blob container of this account (how large-payload URLs are formed).
    pub fn blob_container_url(&self, container: &str) -> String {
        let base = match &self.blob {
            CloudLocation::Custom { uri, .. } => uri.clone(),
            CloudLocation::Emulator { address, port } => {
                format!("http://{address}:{port}/{}", azure_storage::EMULATOR_ACCOUNT)
            }
            CloudLocation::Public { account } => format!("https://{account}.blob.core.windows.net"),
            CloudLocation::China { account } => {
                format!("https://{account}.blob.core.chinacloudapi.cn")
            }
        };
        format!("{}/{container}", base.trim_end_matches('/'))
    }

    pub(crate) fn credentials(&self) -> &StorageCredentials {
        &self.credentials
    }
    pub(crate) fn blob_location(&self) -> &CloudLocation {
        &self.blob
    }
    pub(crate) fn queue_location(&self) -> &CloudLocation {
        &self.queue
    }
    pub(crate) fn table_location(&self) -> &CloudLocation {
        &self.table
    }
}

/// azure_storage's parse errors may quote the offending fragment; never echo key material.
fn redact_error(err: &azure_core::Error) -> String {
    let text = err.to_string();
    if text.contains("AccountKey")
        || text.contains("SharedAccessSignature")
        || text.contains("sig=")
    {
        "unparseable key/value pair".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURITE: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
        AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
        BlobEndpoint=http://127.0.0.1:1111/devstoreaccount1;QueueEndpoint=http://127.0.0.1:2222/devstoreaccount1/;\
        TableEndpoint=http://127.0.0.1:3333/devstoreaccount1;";

    #[test]
    fn explicit_endpoints_are_used_per_service() {
        let a = StorageAccount::from_connection_string(AZURITE).unwrap();
        assert!(a.is_emulator());
        assert_eq!(location_url(a.queue_location()), "http://127.0.0.1:2222/devstoreaccount1");
        assert_eq!(location_url(a.table_location()), "http://127.0.0.1:3333/devstoreaccount1");
        assert_eq!(a.blob_container_url("c"), "http://127.0.0.1:1111/devstoreaccount1/c");
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let a = StorageAccount::from_connection_string(AZURITE).unwrap();
        let text = format!("{a:?}");
        assert!(!text.contains("Eby8vdM02"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn development_storage_shortcut() {
        let a = StorageAccount::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(location_url(a.blob_location()), "http://127.0.0.1:10000/devstoreaccount1");
    }

    #[test]
    fn public_account_gets_https_endpoints() {
        let a = StorageAccount::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=myacct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert!(!a.is_emulator());
        assert_eq!(location_url(a.table_location()), "https://myacct.table.core.windows.net");
    }

    #[test]
    fn missing_account_name_is_a_typed_error() {
        let err = StorageAccount::from_connection_string("AccountKey=a2V5").unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::InvalidInput);
        assert!(err.to_string().contains("AccountName"), "{err}");
    }
}
