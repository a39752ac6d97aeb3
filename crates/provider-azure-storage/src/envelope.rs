//! The queue message envelope (DTF `MessageData`) and its wire format.
//!
//! Wire format: the envelope is MessagePack (`rmp-serde`, named fields) and the queue text is its
//! standard base64. The first field is a format version; a reader rejects versions it does not
//! know with a typed error instead of guessing. Envelopes whose encoded size passes the queue
//! payload threshold are gzip-uploaded to the large-message container and replaced on the queue
//! by a small wrapper carrying only the blob name.
//!
//! This is deliberately not DTF's Newtonsoft JSON with `$type` names: MessagePack is smaller and
//! faster, and queues are not shared with .NET workers (tables keep the .NET column layout).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use durabletask_core::{OrchestrationInstance, TaskMessage};
use serde::{Deserialize, Serialize};

/// Current envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;

/// DTF `MessageData`: one queue message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    /// Format version ([`ENVELOPE_VERSION`]).
    pub v: u8,
    /// New id per outbound message (32 hex); also names the large-message blob.
    pub activity_id: String,
    /// The payload; `None` in a large-message wrapper.
    #[serde(default)]
    pub task_message: Option<TaskMessage>,
    /// Set when the real envelope lives in a blob of the hub's large-message container.
    #[serde(default)]
    pub compressed_blob_name: Option<String>,
    /// Per-process send counter; a tie-breaker when ordering a batch.
    #[serde(default)]
    pub sequence_number: i64,
    /// The sender's episode (number of `OrchestratorStarted` events), when sent by a worker.
    #[serde(default)]
    pub episode: Option<i32>,
    /// The sending instance (clients leave it empty).
    #[serde(default)]
    pub sender: Option<OrchestrationInstance>,
}

/// Why a queue message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The text is JSON: probably a .NET DurableTask.AzureStorage message or another producer's.
    #[error("foreign message: JSON text is not a durabletask-rs envelope")]
    ForeignJson,
    /// The text is not base64.
    #[error("message text is not base64: {0}")]
    NotBase64(String),
    /// The bytes are not a MessagePack envelope.
    #[error("message is not a MessagePack envelope: {0}")]
    Malformed(String),
    /// A version this build does not understand.
    #[error("unsupported envelope version {0} (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u8),
    /// Neither a task message nor a blob reference.
    #[error("envelope carries neither a task message nor a blob reference")]
    Empty,
}

impl MessageData {
    /// An envelope for `message` with a fresh activity id.
    pub fn new(message: TaskMessage, sequence_number: i64) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            activity_id: uuid::Uuid::new_v4().simple().to_string(),
            task_message: Some(message),
            compressed_blob_name: None,
            sequence_number,
            episode: None,
            sender: None,
        }
    }

    /// A wrapper pointing at the blob that holds the full envelope.
    pub fn wrapper(full: &MessageData, blob_name: String) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            activity_id: full.activity_id.clone(),
            task_message: None,
            compressed_blob_name: Some(blob_name),
            sequence_number: full.sequence_number,
            episode: full.episode,
            sender: full.sender.clone(),
        }
    }

    /// MessagePack bytes of the envelope.
    ///
    /// # Errors
    /// Only if a payload cannot be represented (never for well-formed task messages).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        rmp_serde::to_vec_named(self).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Decodes MessagePack bytes and checks the version and shape.
    ///
    /// # Errors
    /// [`EnvelopeError`] for anything that is not a version-1 envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        // Read the version first so a future format with other fields still gets a clear error.
        #[derive(Deserialize)]
        struct Version {
            v: u8,
        }
        let version: Version =
            rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if version.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version.v));
        }
        let data: MessageData =
            rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if data.task_message.is_none() && data.compressed_blob_name.is_none() {
            return Err(EnvelopeError::Empty);
        }
        Ok(data)
    }

    /// The queue text for MessagePack `bytes`.
    pub fn encode_text(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    /// Decodes queue text into an envelope.
    ///
    /// # Errors
    /// [`EnvelopeError`] for foreign, malformed or truncated messages.
    pub fn decode_text(text: &str) -> Result<Self, EnvelopeError> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            return Err(EnvelopeError::ForeignJson);
        }
        let bytes =
            STANDARD.decode(trimmed).map_err(|e| EnvelopeError::NotBase64(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durabletask_core::{EventKind, ExecutionStartedEvent, FailureDetails, HistoryEvent};
    use std::collections::BTreeMap;
    use time::macros::datetime;

    const NO_EVENT_ID: i32 = -1;

    fn samples() -> Vec<TaskMessage> {
        let inst = OrchestrationInstance::with_execution("inst/ä", "e1");
        let ts = datetime!(2026-01-02 03:04:05.123456 UTC);
        let mut started = ExecutionStartedEvent::new(inst.clone(), "Orch", Some("\"in\"".into()));
        started.tags = Some(BTreeMap::from([("k".to_owned(), "v".to_owned())]));
        started.scheduled_start_time = Some(ts);
        started.generation = Some(3);
        vec![
            TaskMessage::new(
                inst.clone(),
                HistoryEvent::new(NO_EVENT_ID, ts, EventKind::ExecutionStarted(started)),
            ),
            TaskMessage::new(
                inst.clone(),
                HistoryEvent::new(
                    NO_EVENT_ID,
                    ts,
                    EventKind::TaskFailed {
                        task_scheduled_id: 4,
                        reason: Some("boom".into()),
                        details: None,
                        failure_details: Some(FailureDetails::new("E", "boom")),
                    },
                ),
            ),
            TaskMessage::new(
                inst.clone(),
                HistoryEvent::new(
                    NO_EVENT_ID,
                    ts,
                    EventKind::TimerFired { timer_id: 2, fire_at: ts },
                ),
            ),
            TaskMessage::new(
                inst,
                HistoryEvent::new(
                    NO_EVENT_ID,
                    ts,
                    EventKind::HistoryState { state: Some(serde_json::json!({"a": [1, 2]})) },
                ),
            ),
        ]
    }

    #[test]
    fn envelopes_round_trip_through_queue_text() {
        for (i, m) in samples().into_iter().enumerate() {
            let mut data = MessageData::new(m, i as i64);
            data.episode = Some(2);
            data.sender = Some(OrchestrationInstance::new("parent"));
            let text = MessageData::encode_text(&data.to_bytes().unwrap());
            assert_eq!(MessageData::decode_text(&text).unwrap(), data);
        }
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        assert_eq!(MessageData::decode_text("{\"$type\":\"x\"}"), Err(EnvelopeError::ForeignJson));
        assert!(matches!(MessageData::decode_text("%%%"), Err(EnvelopeError::NotBase64(_))));
        assert!(matches!(
            MessageData::decode_text(&STANDARD.encode(b"hello")),
            Err(EnvelopeError::Malformed(_))
        ));
        let data = MessageData::new(samples().remove(0), 1);
        let bytes = data.to_bytes().unwrap();
        let truncated = MessageData::encode_text(&bytes[..bytes.len() / 2]);
        assert!(matches!(MessageData::decode_text(&truncated), Err(EnvelopeError::Malformed(_))));
        let mut future = data.clone();
        future.v = 9;
        let text = MessageData::encode_text(&rmp_serde::to_vec_named(&future).unwrap());
        assert_eq!(MessageData::decode_text(&text), Err(EnvelopeError::UnsupportedVersion(9)));
        let mut empty = data;
        empty.task_message = None;
        let text = MessageData::encode_text(&empty.to_bytes().unwrap());
        assert_eq!(MessageData::decode_text(&text), Err(EnvelopeError::Empty));
    }
}
