//! Table keys, blob-name segments and the instance → partition mapping, bit-compatible with
//! DurableTask.AzureStorage (`KeySanitation`, `Fnv1aHashHelper`).

/// FNV-1a 32-bit hash of `data` (offset basis 0x811C9DC5, prime 16777619).
pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut hash: u32 = 0x811C_9DC5;
    for b in data {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(16_777_619);
    }
    hash
}

/// The control-queue partition of an instance: FNV-1a of the UTF-8 raw (unescaped) instance ID,
/// modulo the partition count. Must never change for a live task hub.
pub fn partition_index(instance_id: &str, partition_count: u8) -> u8 {
    let count = u32::from(partition_count.max(1));
    // The remainder is < partition_count <= 255, so it always fits.
    u8::try_from(fnv1a32(instance_id.as_bytes()) % count).unwrap_or(0)
}

fn needs_escape(c: char) -> Option<char> {
    match c {
        '^' => Some('^'),
        '/' => Some('0'),
        '\\' => Some('1'),
        '#' => Some('2'),
        '?' => Some('3'),
        c if u32::from(c) <= 0x1F || (0x7F..=0x9F).contains(&u32::from(c)) => {
            char::from_u32(0xC0 + u32::from(c))
        }
        _ => None,
    }
}

/// Escapes an instance ID for use as a table PartitionKey: `^`→`^^`, `/`→`^0`, `\`→`^1`, `#`→`^2`,
/// `?`→`^3`, and control characters U+0000-001F / U+007F-009F → `^` + (U+00C0 + code).
pub fn escape_partition_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match needs_escape(c) {
            Some(e) => {
                out.push('^');
                out.push(e);
            }
            None => out.push(c),
        }
    }
    out
}

/// Reverses [`escape_partition_key`]: after `^`, a character below U+00C0 stands for itself
/// (`0`-`3` map back to `/ \ # ?`), otherwise U+00C0 is subtracted.
pub fn unescape_partition_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        if c != '^' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('/'),
            Some('1') => out.push('\\'),
            Some('2') => out.push('#'),
            Some('3') => out.push('?'),
            Some(n) if u32::from(n) >= 0xC0 => {
                out.push(char::from_u32(u32::from(n) - 0xC0).unwrap_or(n));
            }
            Some(n) => out.push(n),
            None => out.push('^'),
        }
    }
    out
}

/// A blob-name segment for an instance: the escaped ID (no `/` or `\` can remain), with a leading
/// `.` escaped as `^.` so that `.` and `..` can never become path segments. Unescapes with
/// [`unescape_partition_key`].
pub fn blob_segment(instance_id: &str) -> String {
    let escaped = escape_partition_key(instance_id);
    match escaped.strip_prefix('.') {
        Some(rest) => format!("^.{rest}"),
        None => escaped,
    }
}

/// History RowKey of the event at `position` in the whole runtime state: 16 uppercase hex digits.
pub fn history_row_key(position: u64) -> String {
    format!("{position:016X}")
}

/// RowKey of the sentinel row; sorts after every hex RowKey.
pub const SENTINEL_ROW_KEY: &str = "sentinel";

/// Longest escaped PartitionKey accepted (in UTF-16 units): Azurite rejects more than 512,
/// Azure allows 1 KiB; the smaller bound works on both.
pub const MAX_ESCAPED_KEY_UTF16: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_dotnet_vectors() {
        assert_eq!(fnv1a32(b""), 0x811C_9DC5);
        assert_eq!(fnv1a32(b"a"), 0xE40C_292C);
        assert_eq!(fnv1a32(b"abc"), 0x1A47_E90B);
        assert_eq!(fnv1a32(b"instance_id"), 0x6D5A_3B3A);
        assert_eq!(fnv1a32(b"@counter@xyz"), 0x9456_6736);
        assert_eq!(partition_index("abc", 4), 3);
        assert_eq!(partition_index("instance_id", 4), 2);
        assert_eq!(partition_index("@counter@xyz", 4), 2);
        assert_eq!(partition_index("anything", 1), 0);
    }

    #[test]
    fn escaping_round_trips_and_removes_illegal_characters() {
        let cases = [
            ("plain", "plain"),
            ("a/b", "a^0b"),
            ("a\\b", "a^1b"),
            ("a#b?c", "a^2b^3c"),
            ("x^y", "x^^y"),
            ("tab\there", "tab^\u{C9}here"),
            ("nul\u{0}", "nul^\u{C0}"),
            ("del\u{7F}", "del^\u{13F}"),
            ("é😀'", "é😀'"),
        ];
        for (raw, escaped) in cases {
            assert_eq!(escape_partition_key(raw), escaped, "{raw:?}");
            assert_eq!(unescape_partition_key(escaped), raw, "{escaped:?}");
            assert!(!escaped.contains(['/', '\\', '#', '?', '\t', '\u{0}', '\u{7F}']));
        }
    }

    #[test]
    fn blob_segments_cannot_traverse() {
        assert_eq!(blob_segment(".."), "^..");
        assert_eq!(blob_segment("../etc"), "^..^0etc");
        assert_eq!(blob_segment("a.b"), "a.b");
        assert_eq!(unescape_partition_key(&blob_segment("../etc")), "../etc");
        assert!(!blob_segment("x/y\\z").contains(['/', '\\']));
    }

    #[test]
    fn row_keys_sort_numerically() {
        assert_eq!(history_row_key(0), "0000000000000000");
        assert_eq!(history_row_key(255), "00000000000000FF");
        let mut keys: Vec<String> =
            [10u64, 9, 100, 16].iter().map(|p| history_row_key(*p)).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["0000000000000009", "000000000000000A", "0000000000000010", "0000000000000064"]
        );
        assert!(history_row_key(u64::MAX).as_str() < SENTINEL_ROW_KEY);
    }
}
