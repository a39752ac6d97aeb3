//! De-duplication and ordering of the messages an entity receives, and the numbering of the
//! messages it sends (the successor of DTF's `MessageSorter`, with sequence numbers instead of
//! sender clocks so that a re-send after a failed checkpoint is recognised as the same message).
//!
//! Receiving: per stream, the applied sequence numbers as ranges (so a duplicate is dropped
//! however late it comes) and, for ordered streams, messages that wait for a predecessor. A
//! message without a stream passes unchecked (DTF senders). Sending: per destination, a stream
//! and its last number.
//!
//! Both sides forget a stream idle for longer than the reorder window: a receiver then accepts a
//! message whose predecessor was sent before the window as the new start of the stream, and a
//! sender starts a new stream.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::messages::{Incoming, Sequencing};

/// What one stream has delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiveStream {
    /// The sender (diagnostics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<String>,
    /// Delivered numbers, as sorted disjoint inclusive ranges.
    delivered: Vec<(u64, u64)>,
    /// The highest delivered number.
    high: u64,
    /// When this stream last delivered or buffered a message (receiver clock).
    #[serde(with = "time::serde::rfc3339")]
    last: OffsetDateTime,
    /// Messages waiting for a predecessor, by number, with their arrival time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    buffered: BTreeMap<u64, Waiting>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Waiting {
    #[serde(with = "time::serde::rfc3339")]
    arrived: OffsetDateTime,
    message: Incoming,
}

impl ReceiveStream {
    fn contains(&self, n: u64) -> bool {
        self.delivered.iter().any(|(lo, hi)| *lo <= n && n <= *hi)
    }

    fn record(&mut self, n: u64) {
        self.high = self.high.max(n);
        let pos = self.delivered.partition_point(|(lo, _)| *lo < n);
        self.delivered.insert(pos, (n, n));
        // Merge neighbours.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.delivered.len());
        for (lo, hi) in self.delivered.drain(..) {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.delivered = merged;
    }
}

/// Where this entity's messages to one destination stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SendStream {
    stream: String,
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    last: OffsetDateTime,
    /// Scheduled signals: their own unordered stream (`{stream}#s`), so that an ordered message
    /// never waits for a signal that is due later.
    #[serde(default, skip_serializing_if = "is_zero")]
    scheduled: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The sorter state persisted with the entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageSorter {
    /// Receive streams by stream id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    received: BTreeMap<String, ReceiveStream>,
    /// Send streams by destination instance id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sent: BTreeMap<String, SendStream>,
}

/// What the sorter did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sorted {
    /// Deliver these, in order (the message, and any it released).
    Deliver(Vec<Incoming>),
    /// A copy of a message already delivered (or already waiting).
    Duplicate,
    /// Waits for a predecessor.
    Buffered,
}

fn window_start(now: OffsetDateTime, window: Duration) -> OffsetDateTime {
    now - time::Duration::try_from(window).unwrap_or(time::Duration::MAX)
}

impl MessageSorter {
    /// Receives one message at `now`.
    pub(crate) fn receive(
        &mut self,
        message: Incoming,
        now: OffsetDateTime,
        window: Duration,
    ) -> Sorted {
        let seq = message.seq().clone();
        let Some(stream_id) = seq.stream.clone().filter(|_| seq.seq > 0) else {
            return Sorted::Deliver(vec![message]);
        };
        let horizon = window_start(now, window);
        let sender = message.parent().map(str::to_owned);
        let stream = self.received.entry(stream_id).or_insert_with(|| ReceiveStream {
            sender,
            delivered: Vec::new(),
            high: 0,
            last: now,
            buffered: BTreeMap::new(),
        });
        if stream.contains(seq.seq) || stream.buffered.contains_key(&seq.seq) {
            // A copy changes nothing (not even the stream's idle clock).
            return Sorted::Duplicate;
        }
        stream.last = now;
        let in_turn = !seq.ordered
            || seq.seq == stream.high + 1
            || seq.predecessor.is_none_or(|p| p < horizon)
            || stream.contains(seq.seq - 1);
        if !in_turn {
            stream.buffered.insert(seq.seq, Waiting { arrived: now, message });
            return Sorted::Buffered;
        }
        stream.record(seq.seq);
        let mut out = vec![message];
        release_buffered(stream, horizon, &mut out);
        Sorted::Deliver(out)
    }

    /// Messages that waited longer than the window for a predecessor (delivered anyway, in
    /// order), and forgets idle streams. Call once per batch, after receiving.
    pub(crate) fn expire(&mut self, now: OffsetDateTime, window: Duration) -> Vec<Incoming> {
        let horizon = window_start(now, window);
        let mut out = Vec::new();
        for stream in self.received.values_mut() {
            while let Some((&n, w)) = stream.buffered.iter().next() {
                if w.arrived >= horizon {
                    break;
                }
                if let Some(w) = stream.buffered.remove(&n) {
                    stream.record(n);
                    out.push(w.message);
                }
                release_buffered(stream, horizon, &mut out);
            }
        }
        self.received.retain(|_, s| !s.buffered.is_empty() || s.last >= horizon);
        self.sent.retain(|_, s| s.last >= horizon);
        out
    }

    /// Numbers a message this entity sends to `destination` at `now`; `new_stream` names a
    /// stream when none is open (deterministic: the entity's current execution id).
    pub(crate) fn label(
        &mut self,
        destination: &str,
        now: OffsetDateTime,
        scheduled: bool,
        new_stream: &str,
    ) -> Sequencing {
        let s = self.sent.entry(destination.to_owned()).or_insert_with(|| SendStream {
            stream: new_stream.to_owned(),
            seq: 0,
            last: now,
            scheduled: 0,
        });
        if scheduled {
            s.scheduled += 1;
            return Sequencing {
                stream: Some(format!("{}#s", s.stream)),
                seq: s.scheduled,
                ordered: false,
                timestamp: now,
                predecessor: None,
            };
        }
        let predecessor = (s.seq > 0).then_some(s.last);
        s.seq += 1;
        // Timestamps never go backwards within a stream.
        s.last = now.max(s.last);
        Sequencing {
            stream: Some(s.stream.clone()),
            seq: s.seq,
            ordered: true,
            timestamp: s.last,
            predecessor,
        }
    }

    /// Messages waiting for a predecessor, over all streams.
    pub(crate) fn buffered_count(&self) -> usize {
        self.received.values().map(|s| s.buffered.len()).sum()
    }

    /// Open receive streams.
    #[cfg(test)]
    pub(crate) fn stream_count(&self) -> usize {
        self.received.len()
    }

    /// No stream is remembered (after [`Self::expire`]: nothing sent or received for a window).
    pub(crate) fn is_idle(&self) -> bool {
        self.received.is_empty() && self.sent.is_empty()
    }
}

/// Delivers the buffered messages that are now in turn.
fn release_buffered(stream: &mut ReceiveStream, horizon: OffsetDateTime, out: &mut Vec<Incoming>) {
    while let Some((&n, w)) = stream.buffered.iter().next() {
        let pred_old = w.message.seq().predecessor.is_none_or(|p| p < horizon);
        if n != stream.high + 1 && !stream.contains(n - 1) && !pred_old {
            break;
        }
        if let Some(w) = stream.buffered.remove(&n) {
            stream.record(n);
            out.push(w.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::messages::ReleaseMessage;
    use time::macros::datetime;

    const W: Duration = Duration::from_secs(1800);

    fn msg(stream: &str, seq: u64, ordered: bool, pred: Option<OffsetDateTime>) -> Incoming {
        Incoming::Release(ReleaseMessage {
            parent_instance_id: "p".into(),
            id: format!("{stream}-{seq}"),
            seq: Sequencing {
                stream: Some(stream.into()),
                seq,
                ordered,
                timestamp: datetime!(2026-01-01 0:00 UTC),
                predecessor: pred,
            },
        })
    }

    fn ids(s: Sorted) -> Vec<String> {
        match s {
            Sorted::Deliver(v) => v
                .into_iter()
                .map(|m| match m {
                    Incoming::Release(r) => r.id,
                    Incoming::Request(r) => r.id,
                })
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn ordered_streams_deliver_once_in_order() {
        let now = datetime!(2026-01-01 0:01 UTC);
        let pred = Some(datetime!(2026-01-01 0:00 UTC));
        let mut s = MessageSorter::default();
        assert_eq!(ids(s.receive(msg("a", 1, true, None), now, W)), ["a-1"]);
        assert_eq!(s.receive(msg("a", 3, true, pred), now, W), Sorted::Buffered);
        assert_eq!(s.receive(msg("a", 3, true, pred), now, W), Sorted::Duplicate);
        assert_eq!(ids(s.receive(msg("a", 2, true, pred), now, W)), ["a-2", "a-3"]);
        assert_eq!(s.receive(msg("a", 1, true, None), now, W), Sorted::Duplicate);
        assert_eq!(s.receive(msg("a", 2, true, pred), now, W), Sorted::Duplicate);
        // Another stream is independent.
        assert_eq!(ids(s.receive(msg("b", 1, true, None), now, W)), ["b-1"]);
    }

    #[test]
    fn unordered_streams_only_deduplicate() {
        let now = datetime!(2026-01-01 0:01 UTC);
        let mut s = MessageSorter::default();
        assert_eq!(ids(s.receive(msg("c", 5, false, None), now, W)), ["c-5"]);
        assert_eq!(ids(s.receive(msg("c", 2, false, None), now, W)), ["c-2"]);
        assert_eq!(s.receive(msg("c", 5, false, None), now, W), Sorted::Duplicate);
        assert_eq!(ids(s.receive(msg("c", 3, false, None), now, W)), ["c-3"]);
        assert_eq!(s.received["c"].delivered, vec![(2, 3), (5, 5)]);
    }

    #[test]
    fn old_predecessors_and_idle_streams_expire() {
        let t0 = datetime!(2026-01-01 0:00 UTC);
        let mut s = MessageSorter::default();
        // A stream first seen at seq 7 whose predecessor is older than the window: delivered.
        let later = t0 + time::Duration::hours(1);
        assert_eq!(ids(s.receive(msg("d", 7, true, Some(t0)), later, W)), ["d-7"]);
        // A message waiting for a predecessor is delivered once it waited longer than the window.
        let pred = Some(later);
        assert_eq!(s.receive(msg("d", 9, true, pred), later, W), Sorted::Buffered);
        assert!(s.expire(later, W).is_empty());
        let much_later = later + time::Duration::hours(1);
        let out: Vec<_> = s.expire(much_later, W);
        assert_eq!(out.len(), 1);
        // Nothing waits, nothing happened in the window: the stream is forgotten.
        assert!(s.expire(much_later + time::Duration::hours(1), W).is_empty());
        assert_eq!(s.stream_count(), 0);
    }

    #[test]
    fn labels_number_per_destination_and_keep_scheduled_apart() {
        let t0 = datetime!(2026-01-01 0:00 UTC);
        let mut s = MessageSorter::default();
        let a1 = s.label("@x@1", t0, false, "exec1");
        let a2 = s.label("@x@1", t0, false, "exec2");
        let b1 = s.label("@x@2", t0, false, "exec2");
        let sch = s.label("@x@1", t0, true, "exec3");
        assert_eq!((a1.seq, a1.stream.as_deref(), a1.predecessor), (1, Some("exec1"), None));
        assert_eq!((a2.seq, a2.stream.as_deref(), a2.predecessor), (2, Some("exec1"), Some(t0)));
        assert_eq!((b1.seq, b1.stream.as_deref()), (1, Some("exec2")));
        assert_eq!((sch.seq, sch.stream.as_deref(), sch.ordered), (1, Some("exec1#s"), false));
        // An idle send stream is forgotten; the next message opens a new one.
        assert!(s.expire(t0 + time::Duration::hours(1), W).is_empty());
        let a3 = s.label("@x@1", t0 + time::Duration::hours(1), false, "exec9");
        assert_eq!((a3.seq, a3.stream.as_deref()), (1, Some("exec9")));
    }
}
