//! Identifier rules: generated ids and instance-id validation.

/// Maximum length of an instance id, in characters.
///
/// DTF itself has no limit; 256 matches Durable Functions and keeps the Azure Storage partition key
/// (escaped id, at most ~2x longer) well under the 1 KiB key limit.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

/// Characters never allowed in an instance id besides control characters: U+2028 (LINE SEPARATOR)
/// and U+2029 (PARAGRAPH SEPARATOR). The table service refuses a PartitionKey containing them
/// with 400 (checked on Azurite) and, unlike `/ \ # ?` and control characters, the DTF key
/// escaping does not remove them. `/ \ # ?` are allowed, as in DTF: the Azure Storage provider
/// escapes them in table keys and blob names.
pub const FORBIDDEN_INSTANCE_ID_CHARS: [char; 2] = ['\u{2028}', '\u{2029}'];

/// A new execution id or generated instance id: 32 lowercase hex characters (DTF `Guid.ToString("N")`).
pub fn new_execution_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Why an instance id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceIdError {
    /// The id is empty.
    #[error("instance id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_INSTANCE_ID_LEN`].
    #[error("instance id is {len} characters long; the limit is {MAX_INSTANCE_ID_LEN}")]
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    /// The id contains a forbidden or control character.
    #[error("instance id contains the forbidden character {ch:?}")]
    ForbiddenChar {
        /// The offending character.
        ch: char,
    },
    /// Ids starting with `@` name durable entities (`@name@key`); an orchestration cannot have
    /// one, and orchestration operations do not apply to entities (signal them instead).
    #[error(
        "instance id {0:?} starts with '@', which names a durable entity, not an orchestration"
    )]
    EntityId(String),
}

/// [`validate_instance_id`], and not an entity id (`@...`): the rule for orchestration
/// instances (starts, events, terminate, suspend, resume, sub-orchestration ids).
///
/// # Errors
/// [`InstanceIdError`].
pub fn validate_orchestration_instance_id(id: &str) -> Result<(), InstanceIdError> {
    validate_instance_id(id)?;
    if crate::entity::is_entity_instance(id) {
        return Err(InstanceIdError::EntityId(id.to_owned()));
    }
    Ok(())
}

/// Checks an instance id: non-empty, at most [`MAX_INSTANCE_ID_LEN`] characters, no control
/// characters (U+0000-001F, U+007F-009F) and none of [`FORBIDDEN_INSTANCE_ID_CHARS`]. Every
/// provider applies it before writing anything, so an id is accepted or refused the same way
/// everywhere.
pub fn validate_instance_id(id: &str) -> Result<(), InstanceIdError> {
    if id.is_empty() {
        return Err(InstanceIdError::Empty);
    }
    let len = id.chars().count();
    if len > MAX_INSTANCE_ID_LEN {
        return Err(InstanceIdError::TooLong { len });
    }
    if let Some(ch) = id.chars().find(|c| c.is_control() || FORBIDDEN_INSTANCE_ID_CHARS.contains(c))
    {
        return Err(InstanceIdError::ForbiddenChar { ch });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_lower_hex() {
        let id = new_execution_id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(id, new_execution_id());
    }

    #[test]
    fn instance_id_rules() {
        let cases: &[(&str, Option<InstanceIdError>)] = &[
            ("ok-id_1:2", None),
            ("", Some(InstanceIdError::Empty)),
            ("a/b", None),
            ("a#b?c\\d", None),
            ("a\u{2028}b", Some(InstanceIdError::ForbiddenChar { ch: '\u{2028}' })),
            ("a\u{2029}b", Some(InstanceIdError::ForbiddenChar { ch: '\u{2029}' })),
            ("a\u{1}b", Some(InstanceIdError::ForbiddenChar { ch: '\u{1}' })),
            ("a\u{85}b", Some(InstanceIdError::ForbiddenChar { ch: '\u{85}' })),
            ("a\nb", Some(InstanceIdError::ForbiddenChar { ch: '\n' })),
            ("a\u{7f}", Some(InstanceIdError::ForbiddenChar { ch: '\u{7f}' })),
            ("ünïcode", None),
        ];
        for (id, want) in cases {
            assert_eq!(validate_instance_id(id).err(), *want, "{id:?}");
        }
        assert!(validate_instance_id(&"x".repeat(MAX_INSTANCE_ID_LEN)).is_ok());
        assert_eq!(
            validate_instance_id(&"x".repeat(MAX_INSTANCE_ID_LEN + 1)),
            Err(InstanceIdError::TooLong { len: MAX_INSTANCE_ID_LEN + 1 })
        );
    }
}
