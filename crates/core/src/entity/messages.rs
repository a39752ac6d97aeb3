//! The entity message formats (DTF `DurableTask.Core.Entities.EventFormat`): requests (calls,
//! signals, lock requests), releases and responses, carried as the JSON input of `EventRaised`
//! events. Field names are DTF's; `stream`, `seq` and `ordered` are this crate's de-duplication
//! fields (a DTF reader ignores them, and a message without them passes the sorter unchecked).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::EntityId;
use crate::history::TaskMessage;
use crate::history::{EventKind, FailureDetails, HistoryEvent, NO_EVENT_ID, OrchestrationInstance};

/// Event name of a request (call, signal, lock request).
pub const REQUEST_EVENT_NAME: &str = "op";
/// Event name of a lock release.
pub const RELEASE_EVENT_NAME: &str = "release";
/// The result of a lock response (DTF's text).
pub const LOCK_ACQUIRED: &str = "Lock Acquisition Completed";

/// The event name of a request scheduled for `due` (DTF `op@{due:o}`).
pub fn scheduled_request_event_name(due: OffsetDateTime) -> String {
    let t = due.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_default();
    format!("{REQUEST_EVENT_NAME}@{t}")
}

/// The due time in an `op@{time}` event name.
pub fn scheduled_time_of(event_name: &str) -> Option<OffsetDateTime> {
    let t = event_name.strip_prefix("op@")?;
    OffsetDateTime::parse(t, &Rfc3339).ok()
}

/// Whether an event name is a request (`op` or `op@...`).
pub(crate) fn is_request_name(name: &str) -> bool {
    name == REQUEST_EVENT_NAME || name.starts_with("op@")
}

/// Where a message sits in its sender's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sequencing {
    /// The sender's stream (an orchestration execution, an entity's stream towards this
    /// receiver, a client). `None`: not sequenced (passes the sorter unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<String>,
    /// 1, 2, 3... within the stream (0 when not sequenced).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) seq: u64,
    /// Apply only after every lower number of the stream (orchestration and entity streams);
    /// otherwise only de-duplicate (client streams, scheduled signals).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ordered: bool,
    /// The sender's clock when it sent this message.
    #[serde(rename = "Timestamp", with = "time::serde::rfc3339")]
    pub(crate) timestamp: OffsetDateTime,
    /// The sender's clock when it sent the stream's previous message (`None`: first).
    #[serde(
        rename = "Predecessor",
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub(crate) predecessor: Option<OffsetDateTime>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Sequencing {
    pub(crate) fn unsequenced(now: OffsetDateTime) -> Self {
        Self { stream: None, seq: 0, ordered: false, timestamp: now, predecessor: None }
    }
}

/// A request: an operation (call or signal) or a lock request (DTF `RequestMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RequestMessage {
    /// The operation; `None` for a lock request.
    #[serde(rename = "op", default, skip_serializing_if = "Option::is_none")]
    pub(crate) operation: Option<String>,
    /// One-way (no response).
    #[serde(rename = "signal", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) is_signal: bool,
    /// The serialized operation input.
    #[serde(rename = "input", default, skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<String>,
    /// The request id (the response's event name).
    pub(crate) id: String,
    /// The sender instance (where a response goes; the lock holder of a lock request).
    #[serde(rename = "parent", default, skip_serializing_if = "Option::is_none")]
    pub(crate) parent_instance_id: Option<String>,
    /// The sender's execution.
    #[serde(rename = "parentExecution", default, skip_serializing_if = "Option::is_none")]
    pub(crate) parent_execution_id: Option<String>,
    /// A scheduled signal's due time.
    #[serde(
        rename = "due",
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub(crate) scheduled_time: Option<OffsetDateTime>,
    /// A lock request's sorted lock set.
    #[serde(rename = "lockset", default, skip_serializing_if = "Option::is_none")]
    pub(crate) lock_set: Option<Vec<EntityId>>,
    /// A lock request's position in the lock set (the entity it is addressed to).
    #[serde(rename = "pos", default, skip_serializing_if = "is_zero_usize")]
    pub(crate) position: usize,
    /// A client's clean-up request: complete the entity if it is empty and idle.
    #[serde(rename = "cleanup", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) cleanup: bool,
    #[serde(flatten)]
    pub(crate) seq: Sequencing,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

impl RequestMessage {
    pub(crate) fn is_lock_request(&self) -> bool {
        self.lock_set.is_some()
    }
}

/// A lock release (DTF `ReleaseMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReleaseMessage {
    /// The lock holder.
    #[serde(rename = "parent")]
    pub(crate) parent_instance_id: String,
    /// The critical section's id (the lock request id).
    pub(crate) id: String,
    #[serde(flatten)]
    pub(crate) seq: Sequencing,
}

/// A response to a call or a lock request (DTF `ResponseMessage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResponseMessage {
    /// The serialized result.
    #[serde(rename = "result", default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<String>,
    /// Set when the operation failed.
    #[serde(rename = "failureDetails", default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure_details: Option<FailureDetails>,
}

/// A message an entity received, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum Incoming {
    /// A request.
    Request(RequestMessage),
    /// A release.
    Release(ReleaseMessage),
}

impl Incoming {
    pub(crate) fn seq(&self) -> &Sequencing {
        match self {
            Self::Request(r) => &r.seq,
            Self::Release(r) => &r.seq,
        }
    }

    pub(crate) fn parent(&self) -> Option<&str> {
        match self {
            Self::Request(r) => r.parent_instance_id.as_deref(),
            Self::Release(r) => Some(&r.parent_instance_id),
        }
    }

    /// Decodes an `EventRaised` sent to an entity. `Ok(None)`: not an entity message.
    pub(crate) fn decode(name: &str, input: Option<&str>) -> Result<Option<Self>, String> {
        let text = input.unwrap_or("null");
        if is_request_name(name) {
            serde_json::from_str::<RequestMessage>(text)
                .map(|r| Some(Self::Request(r)))
                .map_err(|e| format!("malformed entity request: {e}"))
        } else if name == RELEASE_EVENT_NAME {
            serde_json::from_str::<ReleaseMessage>(text)
                .map(|r| Some(Self::Release(r)))
                .map_err(|e| format!("malformed entity release: {e}"))
        } else {
            Ok(None)
        }
    }
}

/// The `EventRaised` message carrying `request` to `target`.
pub(crate) fn request_message(
    target: &EntityId,
    request: &RequestMessage,
    now: OffsetDateTime,
) -> TaskMessage {
    let name = match request.scheduled_time {
        Some(due) => scheduled_request_event_name(due),
        None => REQUEST_EVENT_NAME.to_owned(),
    };
    raised(OrchestrationInstance::new(target.instance_id()), name, to_json(request), now)
}

/// The `EventRaised` message carrying `release` to `target`.
pub(crate) fn release_message(
    target: &EntityId,
    release: &ReleaseMessage,
    now: OffsetDateTime,
) -> TaskMessage {
    raised(
        OrchestrationInstance::new(target.instance_id()),
        RELEASE_EVENT_NAME.to_owned(),
        to_json(release),
        now,
    )
}

/// The response event to the orchestration that sent request `request_id`.
pub(crate) fn response_message(
    parent: OrchestrationInstance,
    request_id: &str,
    response: &ResponseMessage,
    now: OffsetDateTime,
) -> TaskMessage {
    raised(parent, request_id.to_owned(), to_json(response), now)
}

fn raised(
    target: OrchestrationInstance,
    name: String,
    input: String,
    now: OffsetDateTime,
) -> TaskMessage {
    TaskMessage::new(
        target,
        HistoryEvent::new(NO_EVENT_ID, now, EventKind::EventRaised { name, input: Some(input) }),
    )
}

/// Room left for what the size estimates below do not know exactly (instance ids up to 256
/// characters, sequencing fields, the provider's envelope).
const SIZE_MARGIN: usize = 2048;

/// Whether a call's result of `result` would fit in a response message of at most `limit` bytes.
pub(crate) fn response_fits(result: Option<&str>, limit: Option<usize>) -> Result<(), usize> {
    let Some(limit) = limit else { return Ok(()) };
    let response = ResponseMessage { result: result.map(str::to_owned), failure_details: None };
    let m = response_message(
        OrchestrationInstance::with_execution("", ""),
        "00000000-0000-0000-0000-000000000000",
        &response,
        OffsetDateTime::UNIX_EPOCH,
    );
    let size = serde_json::to_vec(&m).map_or(usize::MAX, |v| v.len()) + SIZE_MARGIN;
    if size > limit { Err(size) } else { Ok(()) }
}

/// Whether a signal of `operation` with `input` to `target` would fit in `limit` bytes.
pub(crate) fn signal_fits(
    target: &EntityId,
    operation: &str,
    input: Option<&str>,
    limit: Option<usize>,
) -> Result<(), usize> {
    let Some(limit) = limit else { return Ok(()) };
    let request = RequestMessage {
        operation: Some(operation.to_owned()),
        is_signal: true,
        input: input.map(str::to_owned),
        id: "00000000-0000-0000-0000-000000000000".into(),
        parent_instance_id: None,
        parent_execution_id: None,
        scheduled_time: None,
        lock_set: None,
        position: 0,
        cleanup: false,
        seq: Sequencing::unsequenced(OffsetDateTime::UNIX_EPOCH),
    };
    let m = request_message(target, &request, OffsetDateTime::UNIX_EPOCH);
    let size = serde_json::to_vec(&m).map_or(usize::MAX, |v| v.len()) + SIZE_MARGIN;
    if size > limit { Err(size) } else { Ok(()) }
}

/// The size of a message as the providers measure it for their limit (at most).
pub(crate) fn message_size(m: &TaskMessage) -> usize {
    serde_json::to_vec(m).map_or(usize::MAX, |v| v.len())
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    // These types serialize infallibly (strings, numbers, times, nested structs).
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn request_uses_dtf_field_names() {
        let r = RequestMessage {
            operation: Some("add".into()),
            is_signal: true,
            input: Some("5".into()),
            id: "abc".into(),
            parent_instance_id: Some("orch".into()),
            parent_execution_id: Some("e1".into()),
            scheduled_time: None,
            lock_set: None,
            position: 0,
            cleanup: false,
            seq: Sequencing {
                stream: Some("e1".into()),
                seq: 3,
                ordered: true,
                timestamp: datetime!(2026-01-01 0:00 UTC),
                predecessor: Some(datetime!(2025-12-31 23:59 UTC)),
            },
        };
        let v: serde_json::Value = serde_json::from_str(&to_json(&r)).unwrap();
        for k in [
            "op",
            "signal",
            "input",
            "id",
            "parent",
            "parentExecution",
            "Timestamp",
            "Predecessor",
            "seq",
            "stream",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(serde_json::from_value::<RequestMessage>(v).unwrap(), r);
        // A DTF request without our fields decodes (unsequenced).
        let dtf = r#"{"op":"get","id":"x","Timestamp":"2026-01-01T00:00:00Z"}"#;
        let d = serde_json::from_str::<RequestMessage>(dtf).unwrap();
        assert_eq!((d.seq.seq, d.seq.stream), (0, None));
    }

    #[test]
    fn scheduled_names_round_trip() {
        let due = datetime!(2026-12-02 18:00:01.5 UTC);
        let n = scheduled_request_event_name(due);
        assert!(n.starts_with("op@2026-12-02T18:00:01.5"));
        assert_eq!(scheduled_time_of(&n), Some(due));
        assert_eq!(scheduled_time_of("op"), None);
        assert!(is_request_name(&n) && is_request_name("op") && !is_request_name("operation"));
    }
}
