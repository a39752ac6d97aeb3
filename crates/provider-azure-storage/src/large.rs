//! Large payloads: queue messages and table properties over the service limits live as gzip
//! blobs in `{hub}-largemessages`, named from escaped instance IDs.
//!
//! Only blobs inside the hub's own container are ever followed: a URL that points anywhere else
//! (another container, another account, a path with `..`) is treated as plain text, never fetched.

use crate::keys::blob_segment;
use crate::storage::{BlobStore, StorageError, StorageErrorKind, StorageResult};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::io::{Read, Write};
use std::sync::Arc;

/// Largest decompressed payload accepted from a blob (guards against decompression bombs).
pub const MAX_DECOMPRESSED_BYTES: u64 = 128 * 1024 * 1024;

/// Gzip blob storage for one task hub's oversized payloads.
#[derive(Debug, Clone)]
pub struct LargePayloads {
    blobs: Arc<dyn BlobStore>,
    container: String,
    container_url: String,
}

impl LargePayloads {
    /// Payloads in `container`, whose public URL is `container_url` (no trailing slash).
    pub fn new(blobs: Arc<dyn BlobStore>, container: String, container_url: String) -> Self {
        Self { blobs, container, container_url: container_url.trim_end_matches('/').to_owned() }
    }

    /// The container name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Blob name of an oversized queue message: `{instance}/message-{activity}-{EventType}.json.gz`.
    pub fn message_blob_name(instance_id: &str, activity_id: &str, event_type: &str) -> String {
        format!("{}/message-{activity_id}-{event_type}.json.gz", blob_segment(instance_id))
    }

    /// Blob name of an oversized table property:
    /// `{instance}/history-{RowKey}-{EventType}-{random X8}-{Property}.json.gz`. The random part
    /// keeps two racing writers from overwriting each other's blob.
    pub fn history_blob_name(
        instance_id: &str,
        row_key: &str,
        kind: &str,
        property: &str,
    ) -> String {
        let salt: u32 = rand::random();
        format!(
            "{}/history-{row_key}-{kind}-{salt:08X}-{property}.json.gz",
            blob_segment(instance_id)
        )
    }

    /// Every blob of one instance lives under this exact prefix (note the trailing `/`: purging
    /// `abc` never touches `abcd`).
    pub fn instance_prefix(instance_id: &str) -> String {
        format!("{}/", blob_segment(instance_id))
    }

    /// Compresses and uploads `data`.
    pub async fn upload(&self, name: &str, data: &[u8]) -> StorageResult<()> {
        self.blobs.put_blob(&self.container, name, gzip(data)?, None).await
    }

    /// Downloads and decompresses a blob; `NotFound` if it is gone.
    pub async fn download(&self, name: &str) -> StorageResult<Vec<u8>> {
        let raw = self.blobs.get_blob(&self.container, name).await?.ok_or_else(|| {
            StorageError::new(
                StorageErrorKind::NotFound,
                "get large payload",
                format!("blob {name} is missing"),
            )
        })?;
        gunzip(&raw)
    }

    /// Deletes every blob of `instance_id`; returns how many were deleted.
    pub async fn delete_instance(&self, instance_id: &str) -> StorageResult<usize> {
        let names =
            self.blobs.list_blobs(&self.container, &Self::instance_prefix(instance_id)).await?;
        for name in &names {
            self.blobs.delete_blob_if_exists(&self.container, name).await?;
        }
        Ok(names.len())
    }

    /// The URL stored in the Instances table for a blob (each segment percent-encoded).
    pub fn url_of(&self, name: &str) -> String {
        let path: Vec<String> = name.split('/').map(percent_encode).collect();
        format!("{}/{}", self.container_url, path.join("/"))
    }

    /// The blob name behind `url` if, and only if, it is a blob of this container.
    pub fn name_from_url(&self, url: &str) -> Option<String> {
        let rest = url.strip_prefix(&self.container_url)?.strip_prefix('/')?;
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let seg = percent_decode(raw)?;
            if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['/', '\\']) {
                return None;
            }
            segments.push(seg);
        }
        Some(segments.join("/"))
    }
}

fn gzip(data: &[u8]) -> StorageResult<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::default());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| StorageError::new(StorageErrorKind::Permanent, "gzip payload", e.to_string()))
}

fn gunzip(data: &[u8]) -> StorageResult<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(data).take(MAX_DECOMPRESSED_BYTES + 1).read_to_end(&mut out).map_err(|e| {
        StorageError::new(StorageErrorKind::Permanent, "gunzip payload", e.to_string())
    })?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(StorageError::new(
            StorageErrorKind::Permanent,
            "gunzip payload",
            format!("decompressed payload exceeds {MAX_DECOMPRESSED_BYTES} bytes"),
        ));
    }
    Ok(out)
}

/// `Uri.EscapeDataString`: everything but unreserved characters is percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoBlobs;
    #[async_trait::async_trait]
    impl BlobStore for NoBlobs {
        async fn create_container_if_not_exists(&self, _: &str) -> StorageResult<()> {
            unreachable!()
        }
        async fn delete_container_if_exists(&self, _: &str) -> StorageResult<()> {
            unreachable!()
        }
        async fn put_blob(
            &self,
            _: &str,
            _: &str,
            _: Vec<u8>,
            _: Option<&str>,
        ) -> StorageResult<()> {
            unreachable!()
        }
        async fn get_blob(&self, _: &str, _: &str) -> StorageResult<Option<Vec<u8>>> {
            unreachable!()
        }
        async fn delete_blob_if_exists(&self, _: &str, _: &str) -> StorageResult<()> {
            unreachable!()
        }
        async fn list_blobs(&self, _: &str, _: &str) -> StorageResult<Vec<String>> {
            unreachable!()
        }
        async fn acquire_lease(
            &self,
            _: &str,
            _: &str,
            _: std::time::Duration,
            _: &str,
        ) -> StorageResult<()> {
            unreachable!()
        }
        async fn renew_lease(&self, _: &str, _: &str, _: &str) -> StorageResult<()> {
            unreachable!()
        }
        async fn release_lease(&self, _: &str, _: &str, _: &str) -> StorageResult<()> {
            unreachable!()
        }
        async fn change_lease(&self, _: &str, _: &str, _: &str, _: &str) -> StorageResult<()> {
            unreachable!()
        }
    }

    fn payloads() -> LargePayloads {
        LargePayloads::new(
            Arc::new(NoBlobs),
            "hub-largemessages".into(),
            "http://127.0.0.1:1/devstoreaccount1/hub-largemessages/".into(),
        )
    }

    #[test]
    fn gzip_round_trip() {
        let data = "x".repeat(100_000).into_bytes();
        let packed = gzip(&data).unwrap();
        assert!(packed.len() < data.len() / 10);
        assert_eq!(gunzip(&packed).unwrap(), data);
        assert_eq!(gunzip(b"not gzip").unwrap_err().kind(), StorageErrorKind::Permanent);
    }

    #[test]
    fn names_are_built_from_escaped_ids() {
        assert_eq!(
            LargePayloads::message_blob_name("a/b?", "0123abcd", "ExecutionStarted"),
            "a^0b^3/message-0123abcd-ExecutionStarted.json.gz"
        );
        let h =
            LargePayloads::history_blob_name("..", "000000000000000A", "TaskCompleted", "Result");
        assert!(h.starts_with("^../history-000000000000000A-TaskCompleted-"), "{h}");
        assert!(h.ends_with("-Result.json.gz"));
        assert_eq!(LargePayloads::instance_prefix("abc"), "abc/");
    }

    #[test]
    fn urls_round_trip_and_foreign_urls_are_refused() {
        let p = payloads();
        let name = "inst é%/message-1-ExecutionStarted.json.gz";
        let url = p.url_of(name);
        assert_eq!(
            url,
            "http://127.0.0.1:1/devstoreaccount1/hub-largemessages/inst%20%C3%A9%25/message-1-ExecutionStarted.json.gz"
        );
        assert_eq!(p.name_from_url(&url).as_deref(), Some(name));
        for foreign in [
            "http://127.0.0.1:1/devstoreaccount1/other/x.json.gz",
            "http://evil.example/devstoreaccount1/hub-largemessages/x",
            "http://127.0.0.1:1/devstoreaccount1/hub-largemessages/../other/x",
            "http://127.0.0.1:1/devstoreaccount1/hub-largemessages/a/%2E%2E/x",
            "http://127.0.0.1:1/devstoreaccount1/hub-largemessagesX/x",
            "plain text input",
        ] {
            assert_eq!(p.name_from_url(foreign), None, "{foreign}");
        }
    }
}
