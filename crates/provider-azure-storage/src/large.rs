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

    /// Whether `name` has the shape of [`Self::message_blob_name`]: an instance segment (never
    /// starting with `.`), one `/`, `message-...json.gz`. A queue message naming anything else
    /// was not written by this provider (foreign, a URL, a path traversal).
    pub fn is_message_blob_name(name: &str) -> bool {
        let Some((segment, file)) = name.split_once('/') else { return false };
        !segment.is_empty()
            && !segment.starts_with('.')
            && !file.contains('/')
            && file.starts_with("message-")
            && file.ends_with(".json.gz")
    }

    /// Blob name of an oversized table property:
    /// `{instance}/history-{RowKey}-{EventType}-{X16}-{Property}.json.gz`, where `X16` is the
    /// FNV-1a 64 hash of the execution id and the value (DTF puts a random number there). Two
    /// racing writers of different content still never overwrite each other's blob (different
    /// names); a checkpoint that is retried after an ambiguous failure reuses its blob instead
    /// of leaving one behind; and a new generation never shares a name with the previous one
    /// (whose blobs it deletes).
    pub fn history_blob_name(
        instance_id: &str,
        execution_id: &str,
        row_key: &str,
        kind: &str,
        property: &str,
        value: &str,
    ) -> String {
        let mut keyed = Vec::with_capacity(execution_id.len() + 1 + value.len());
        keyed.extend_from_slice(execution_id.as_bytes());
        keyed.push(0);
        keyed.extend_from_slice(value.as_bytes());
        let hash = fnv1a64(&keyed);
        format!(
            "{}/history-{row_key}-{kind}-{hash:016X}-{property}.json.gz",
            blob_segment(instance_id)
        )
    }

    /// Blob name of an oversized Instances-row value that no History row holds (the Pending row's
    /// input, custom status, a failure text):
    /// `{instance}/instance-{execution}-{Column}-{FNV-1a 64 of the value, X16}.json.gz`
    /// (custom status: `{instance}/instance-CustomStatus-{hash}.json.gz`, whatever the execution).
    /// The name is a function of the content, so rewriting the same value reuses the same blob and
    /// the writer that replaces a value can name the blob it replaced.
    pub fn instance_blob_name(
        instance_id: &str,
        execution_id: &str,
        column: &str,
        value: &str,
    ) -> String {
        let hash = fnv1a64(value.as_bytes());
        if column == CUSTOM_STATUS_COLUMN {
            format!("{}instance-{column}-{hash:016X}.json.gz", Self::instance_prefix(instance_id))
        } else {
            format!(
                "{}instance-{execution_id}-{column}-{hash:016X}.json.gz",
                Self::instance_prefix(instance_id)
            )
        }
    }

    /// Whether `name` is an Instances-row blob ([`instance_blob_name`](Self::instance_blob_name)),
    /// owned by the row (not by a History row or a queue message).
    pub fn is_instance_blob(name: &str) -> bool {
        name.rsplit_once('/').is_some_and(|(_, file)| file.starts_with("instance-"))
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

    /// Deletes one blob; succeeds if it is already gone.
    pub async fn delete(&self, name: &str) -> StorageResult<()> {
        self.blobs.delete_blob_if_exists(&self.container, name).await
    }

    /// Deletes blobs, best effort: a failure is logged and leaves the blob behind (purge still
    /// removes it with the instance).
    pub async fn delete_all(&self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if let Err(e) = self.delete(&name).await {
                tracing::warn!(blob = %name, error = %e, "GeneralWarning: deleting a large-message blob failed");
            }
        }
    }

    /// Names of the blobs whose names start with `prefix`.
    pub async fn list(&self, prefix: &str) -> StorageResult<Vec<String>> {
        self.blobs.list_blobs(&self.container, prefix).await
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

/// The Instances-table column of the custom status.
pub const CUSTOM_STATUS_COLUMN: &str = "CustomStatus";

/// 64-bit FNV-1a: stable across processes and versions (blob names are derived from it).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
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

    #[test]
    fn message_blob_names_are_recognised_and_foreign_ones_are_not() {
        let ours = LargePayloads::message_blob_name("a/b .c", "00ff", "EventRaised");
        assert!(LargePayloads::is_message_blob_name(&ours), "{ours}");
        for foreign in [
            "http://127.0.0.1:9/x",
            "../../other/x",
            "ghost/no-such-blob.json.gz",
            ".poison/q/m.txt.gz",
            "a/b/message-1-E.json.gz",
            "/message-1-E.json.gz",
            "message-1-E.json.gz",
        ] {
            assert!(!LargePayloads::is_message_blob_name(foreign), "{foreign}");
        }
    }

    fn payloads() -> LargePayloads {
        LargePayloads::new(
            Arc::new(crate::storage::InMemoryStorage::new()),
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
        let h = LargePayloads::history_blob_name(
            "..",
            "e1",
            "000000000000000A",
            "TaskCompleted",
            "Result",
            "v",
        );
        assert!(h.starts_with("^../history-000000000000000A-TaskCompleted-"), "{h}");
        assert!(h.ends_with("-Result.json.gz"));
        let same = |exec: &str, v: &str| {
            LargePayloads::history_blob_name(
                "..",
                exec,
                "000000000000000A",
                "TaskCompleted",
                "Result",
                v,
            )
        };
        assert_eq!(h, same("e1", "v"), "a retried checkpoint reuses its blob");
        assert_ne!(h, same("e2", "v"), "a new generation never shares a name");
        assert_ne!(h, same("e1", "w"), "racing writers of different content never collide");
        assert_eq!(LargePayloads::instance_prefix("abc"), "abc/");
    }

    #[test]
    fn instance_blob_names_are_content_addressed() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = LargePayloads::instance_blob_name("i/1", "e1", "Input", "x");
        assert_eq!(a, format!("i^01/instance-e1-Input-{:016X}.json.gz", fnv1a64(b"x")));
        assert_eq!(a, LargePayloads::instance_blob_name("i/1", "e1", "Input", "x"));
        assert_ne!(a, LargePayloads::instance_blob_name("i/1", "e2", "Input", "x"));
        let c = LargePayloads::instance_blob_name("i", "e1", "CustomStatus", "s");
        assert_eq!(c, LargePayloads::instance_blob_name("i", "e2", "CustomStatus", "s"));
        assert!(c.starts_with("i/instance-CustomStatus-"));
        assert!(LargePayloads::is_instance_blob(&a) && LargePayloads::is_instance_blob(&c));
        assert!(!LargePayloads::is_instance_blob("i/message-1-EventRaised.json.gz"));
        assert!(!LargePayloads::is_instance_blob("instance-x/history-0-A-0-Input.json.gz"));
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
