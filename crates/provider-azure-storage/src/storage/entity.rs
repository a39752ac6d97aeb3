//! Table entities with typed (EDM) properties, and their OData JSON form.

use super::{StorageError, StorageErrorKind};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A typed table property value (the EDM types Azure Tables stores).
#[derive(Debug, Clone, PartialEq)]
pub enum EdmValue {
    /// `Edm.String`.
    String(String),
    /// `Edm.Int32`.
    Int32(i32),
    /// `Edm.Int64`.
    Int64(i64),
    /// `Edm.Double`.
    Double(f64),
    /// `Edm.Boolean`.
    Bool(bool),
    /// `Edm.DateTime` (UTC).
    DateTime(OffsetDateTime),
    /// `Edm.Guid`.
    Guid(String),
    /// `Edm.Binary`.
    Binary(Vec<u8>),
}

impl EdmValue {
    /// The string, if this is an `Edm.String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            EdmValue::String(s) | EdmValue::Guid(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is an `Edm.Int32` or `Edm.Int64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            EdmValue::Int32(v) => Some(i64::from(*v)),
            EdmValue::Int64(v) => Some(*v),
            _ => None,
        }
    }
    /// The boolean, if this is an `Edm.Boolean`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            EdmValue::Bool(v) => Some(*v),
            _ => None,
        }
    }
    /// The timestamp, if this is an `Edm.DateTime`.
    pub fn as_datetime(&self) -> Option<OffsetDateTime> {
        match self {
            EdmValue::DateTime(v) => Some(*v),
            _ => None,
        }
    }
}

/// One table row: keys, the service's ETag and timestamp, and typed custom properties.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableEntity {
    /// `PartitionKey`.
    pub partition_key: String,
    /// `RowKey`.
    pub row_key: String,
    /// The ETag as last read (`None` for entities built locally).
    pub etag: Option<String>,
    /// The service-maintained `Timestamp` as last read.
    pub timestamp: Option<OffsetDateTime>,
    /// Custom properties by name.
    pub properties: BTreeMap<String, EdmValue>,
}

impl TableEntity {
    /// A new entity with the given keys and no properties.
    pub fn new(partition_key: impl Into<String>, row_key: impl Into<String>) -> Self {
        Self { partition_key: partition_key.into(), row_key: row_key.into(), ..Self::default() }
    }

    /// Sets a property (builder style).
    pub fn with(mut self, name: impl Into<String>, value: EdmValue) -> Self {
        self.properties.insert(name.into(), value);
        self
    }

    /// A property by name.
    pub fn get(&self, name: &str) -> Option<&EdmValue> {
        self.properties.get(name)
    }

    /// A string property by name.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(EdmValue::as_str)
    }

    /// The OData JSON body for writes (keys + annotated properties).
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("PartitionKey".into(), Value::String(self.partition_key.clone()));
        map.insert("RowKey".into(), Value::String(self.row_key.clone()));
        for (name, value) in &self.properties {
            let (json, edm) = match value {
                EdmValue::String(s) => (Value::String(s.clone()), None),
                EdmValue::Int32(v) => (Value::from(*v), None),
                EdmValue::Int64(v) => (Value::String(v.to_string()), Some("Edm.Int64")),
                EdmValue::Double(v) => (Value::from(*v), Some("Edm.Double")),
                EdmValue::Bool(v) => (Value::Bool(*v), None),
                EdmValue::DateTime(v) => (Value::String(format_datetime(*v)), Some("Edm.DateTime")),
                EdmValue::Guid(v) => (Value::String(v.clone()), Some("Edm.Guid")),
                EdmValue::Binary(v) => (Value::String(base64_encode(v)), Some("Edm.Binary")),
            };
            if let Some(edm) = edm {
                map.insert(format!("{name}@odata.type"), Value::String(edm.into()));
            }
            map.insert(name.clone(), json);
        }
        Value::Object(map)
    }

    /// Parses an entity from a full-metadata OData JSON object.
    pub(crate) fn from_json(value: Value) -> Result<Self, StorageError> {
        let bad = |m: String| StorageError::new(StorageErrorKind::Permanent, "parse entity", m);
        let Value::Object(map) = value else { return Err(bad("entity is not an object".into())) };
        let mut entity = TableEntity::default();
        let types: BTreeMap<String, String> = map
            .iter()
            .filter_map(|(k, v)| {
                Some((k.strip_suffix("@odata.type")?.to_owned(), v.as_str()?.to_owned()))
            })
            .collect();
        for (name, value) in &map {
            if name.contains('@') || name.starts_with("odata.") {
                if name == "odata.etag" {
                    entity.etag = value.as_str().map(str::to_owned);
                }
                continue;
            }
            match name.as_str() {
                "PartitionKey" => entity.partition_key = value.as_str().unwrap_or_default().into(),
                "RowKey" => entity.row_key = value.as_str().unwrap_or_default().into(),
                "Timestamp" => entity.timestamp = value.as_str().and_then(parse_datetime),
                _ => {
                    let edm = types.get(name).map(String::as_str);
                    let parsed = match (edm, value) {
                        (Some("Edm.Int64"), Value::String(s)) => {
                            s.parse().ok().map(EdmValue::Int64)
                        }
                        (Some("Edm.DateTime"), Value::String(s)) => {
                            parse_datetime(s).map(EdmValue::DateTime)
                        }
                        (Some("Edm.Guid"), Value::String(s)) => Some(EdmValue::Guid(s.clone())),
                        (Some("Edm.Binary"), Value::String(s)) => {
                            base64_decode(s).map(EdmValue::Binary)
                        }
                        (Some("Edm.Double"), v) => v
                            .as_f64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            .map(EdmValue::Double),
                        (_, Value::String(s)) => Some(EdmValue::String(s.clone())),
                        (_, Value::Bool(b)) => Some(EdmValue::Bool(*b)),
                        (_, Value::Number(n)) => match n.as_i64().map(i32::try_from) {
                            Some(Ok(v)) => Some(EdmValue::Int32(v)),
                            _ => n.as_f64().map(EdmValue::Double),
                        },
                        (_, Value::Null) => None,
                        (_, other) => Some(EdmValue::String(other.to_string())),
                    };
                    match parsed {
                        Some(v) => {
                            entity.properties.insert(name.clone(), v);
                        }
                        None if value.is_null() => {}
                        None => return Err(bad(format!("property {name} has an invalid {edm:?}"))),
                    }
                }
            }
        }
        Ok(entity)
    }
}

/// Azure Tables' `Edm.DateTime` wire form: RFC 3339 UTC with up to 7 fractional digits.
pub(crate) fn format_datetime(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let nanos = t.nanosecond();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        nanos / 100
    )
}

pub(crate) fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub(crate) fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn json_round_trip_keeps_types() {
        let e = TableEntity::new("pk", "rk")
            .with("S", EdmValue::String("x".into()))
            .with("I", EdmValue::Int32(-5))
            .with("L", EdmValue::Int64(1 << 40))
            .with("B", EdmValue::Bool(true))
            .with("T", EdmValue::DateTime(datetime!(2024-01-02 03:04:05.1234567 UTC)))
            .with("Bin", EdmValue::Binary(vec![0, 1, 2, 250, 251]));
        let back = TableEntity::from_json(e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn datetime_has_seven_fraction_digits() {
        assert_eq!(
            format_datetime(datetime!(2024-01-02 03:04:05.5 UTC)),
            "2024-01-02T03:04:05.5000000Z"
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (raw, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")]
        {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
        }
    }
}
