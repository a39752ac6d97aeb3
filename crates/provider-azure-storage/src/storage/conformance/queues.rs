//! Queue behaviours.

use super::{StorageFactory, StorageUnderTest, sut};
use crate::storage::{MAX_QUEUE_MESSAGE_BYTES, QueueStore, ReceivedMessage, StorageErrorKind};
use std::time::Duration;

const SECS_30: Duration = Duration::from_secs(30);

async fn queue(s: &StorageUnderTest, name: &str) -> String {
    let q = s.queue(name);
    s.stores.queues.create_queue_if_not_exists(&q).await.unwrap();
    q
}

async fn receive_one(q: &dyn QueueStore, queue: &str, visibility: Duration) -> ReceivedMessage {
    let mut got = q.get_messages(queue, 32, visibility).await.unwrap();
    assert_eq!(got.len(), 1, "expected exactly one visible message, got {got:?}");
    got.remove(0)
}

async fn nothing_visible(q: &dyn QueueStore, queue: &str) {
    let got = q.get_messages(queue, 32, SECS_30).await.unwrap();
    assert!(got.is_empty(), "expected no visible message, got {got:?}");
}

/// Create and delete are idempotent; every call on a missing queue is `NotFound`.
pub async fn queue_admin_is_idempotent_and_missing_queues_are_not_found(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_admin");
    let q = &*s.stores.queues;
    let name = s.queue("a");
    q.create_queue_if_not_exists(&name).await.unwrap();
    q.create_queue_if_not_exists(&name).await.unwrap();
    assert_eq!(q.approximate_message_count(&name).await.unwrap(), 0);
    q.delete_queue_if_exists(&name).await.unwrap();
    q.delete_queue_if_exists(&name).await.unwrap();

    let missing = s.queue("missing");
    let kinds = [
        q.put_message(&missing, "x", Duration::ZERO).await.unwrap_err().kind(),
        q.get_messages(&missing, 1, SECS_30).await.unwrap_err().kind(),
        q.approximate_message_count(&missing).await.unwrap_err().kind(),
    ];
    assert_eq!(kinds, [StorageErrorKind::NotFound; 3]);
}

/// A peek reads visible messages from the front without receiving them: no dequeue, no change
/// of visibility, invisible messages left out, the batch limit enforced.
pub async fn queue_peek_reads_without_receiving(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_peek_reads_without_receiving");
    let q = &*s.stores.queues;
    let name = queue(&s, "p").await;
    q.put_message(&name, "first", Duration::ZERO).await.unwrap();
    q.put_message(&name, "second", Duration::ZERO).await.unwrap();
    q.put_message(&name, "later", Duration::from_secs(60)).await.unwrap();
    let peeked = q.peek_messages(&name, 32).await.unwrap();
    let texts: Vec<&str> = peeked.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["first", "second"], "visible messages only, in order");
    assert!(peeked.iter().all(|m| m.dequeue_count == 0), "{peeked:?}");
    assert_eq!(q.peek_messages(&name, 1).await.unwrap().len(), 1);
    // Still there to receive, first delivery.
    let got = q.get_messages(&name, 32, SECS_30).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.dequeue_count == 1), "{got:?}");
    assert_eq!(got[0].id, peeked[0].id);
    // Received messages are invisible: nothing to peek now.
    assert!(q.peek_messages(&name, 32).await.unwrap().is_empty());
    for bad in [0, 33] {
        let e = q.peek_messages(&name, bad).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{bad}: {e}");
    }
    let missing = s.queue("nopeek");
    assert_eq!(q.peek_messages(&missing, 1).await.unwrap_err().kind(), StorageErrorKind::NotFound);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// A received message is hidden for its visibility timeout, then redelivered with the same ID,
/// a higher dequeue count and a new pop receipt.
pub async fn queue_receive_hides_and_redelivers(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_receive_hides_and_redelivers");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    q.put_message(&name, "hello", Duration::ZERO).await.unwrap();
    let first = receive_one(q, &name, Duration::from_secs(1)).await;
    assert_eq!(first.text, "hello");
    assert_eq!(first.dequeue_count, 1);
    assert!(first.next_visible > first.insertion_time, "{first:?}");
    // Both times come in whole seconds.
    assert_eq!((first.insertion_time.nanosecond(), first.next_visible.nanosecond()), (0, 0));
    nothing_visible(q, &name).await;

    s.time.pass(Duration::from_millis(2500)).await;
    let again = receive_one(q, &name, SECS_30).await;
    assert_eq!(again.id, first.id);
    assert_eq!(again.dequeue_count, 2);
    assert_eq!(again.insertion_time, first.insertion_time);
    assert_ne!(again.pop_receipt, first.pop_receipt);
    assert!(again.next_visible > first.next_visible);
    q.delete_message(&name, &again.id, &again.pop_receipt).await.unwrap();
    assert_eq!(q.approximate_message_count(&name).await.unwrap(), 0);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// Visibility is counted in whole seconds, rounded up: a message never becomes visible early.
pub async fn queue_visibility_rounds_up_to_whole_seconds(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_visibility_rounds_up");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    // 1.2 s is 2 s: still hidden after 1.5 s, visible after 3 s.
    q.put_message(&name, "later", Duration::from_millis(1200)).await.unwrap();
    s.time.pass(Duration::from_millis(1500)).await;
    nothing_visible(q, &name).await;
    s.time.pass(Duration::from_millis(1500)).await;
    let m = receive_one(q, &name, Duration::from_millis(200)).await;
    // A 0.2 s receive hides it for 1 s.
    s.time.pass(Duration::from_millis(500)).await;
    nothing_visible(q, &name).await;
    s.time.pass(Duration::from_millis(1500)).await;
    let again = receive_one(q, &name, SECS_30).await;
    assert_eq!(again.id, m.id);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// Only the latest pop receipt deletes or updates a message; older ones are refused, and a
/// deleted message is `NotFound`.
pub async fn queue_stale_pop_receipts_are_refused(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_stale_pop_receipts");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    q.put_message(&name, "m", Duration::ZERO).await.unwrap();
    let first = receive_one(q, &name, Duration::from_secs(1)).await;
    s.time.pass(Duration::from_millis(2500)).await;
    // Redelivered: the first delivery's receipt is stale.
    let second = receive_one(q, &name, SECS_30).await;
    let e = q.delete_message(&name, &first.id, &first.pop_receipt).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::PreconditionFailed, "{e}");
    assert!(e.is_message_gone());
    // An update replaces the receipt, so the one it was given is stale too.
    let third =
        q.update_message(&name, &second.id, &second.pop_receipt, "m", SECS_30).await.unwrap();
    assert_ne!(third, second.pop_receipt);
    let e =
        q.update_message(&name, &second.id, &second.pop_receipt, "m", SECS_30).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::PreconditionFailed, "{e}");
    let e = q.delete_message(&name, &second.id, &second.pop_receipt).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::PreconditionFailed, "{e}");
    q.delete_message(&name, &second.id, &third).await.unwrap();
    // Gone: the receipt that deleted it now finds nothing.
    let e = q.delete_message(&name, &second.id, &third).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::NotFound, "{e}");
    assert!(e.is_message_gone());
    let e = q.update_message(&name, &second.id, &third, "m", SECS_30).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::NotFound, "{e}");
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// An update replaces the text and the visibility (zero: visible at once) and keeps the dequeue
/// count; the next receive increments it.
pub async fn queue_update_changes_text_and_visibility(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_update");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    q.put_message(&name, "v1", Duration::ZERO).await.unwrap();
    let m = receive_one(q, &name, SECS_30).await;
    q.update_message(&name, &m.id, &m.pop_receipt, "v2", Duration::ZERO).await.unwrap();
    let again = receive_one(q, &name, SECS_30).await;
    assert_eq!(
        (again.id.as_str(), again.text.as_str(), again.dequeue_count),
        (m.id.as_str(), "v2", 2)
    );
    // Hide it for 1 s by update: invisible now, visible after 2.5 s.
    q.update_message(&name, &again.id, &again.pop_receipt, "v3", Duration::from_secs(1))
        .await
        .unwrap();
    nothing_visible(q, &name).await;
    s.time.pass(Duration::from_millis(2500)).await;
    let third = receive_one(q, &name, SECS_30).await;
    assert_eq!((third.text.as_str(), third.dequeue_count), ("v3", 3));
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// Visible messages come in the order they were put, up to `max` per receive.
pub async fn queue_visible_messages_come_in_order(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_order");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    for t in ["a", "b", "c", "d"] {
        q.put_message(&name, t, Duration::ZERO).await.unwrap();
    }
    let two = q.get_messages(&name, 2, SECS_30).await.unwrap();
    let rest = q.get_messages(&name, 32, SECS_30).await.unwrap();
    let texts = |v: &[ReceivedMessage]| v.iter().map(|m| m.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&two), ["a", "b"]);
    assert_eq!(texts(&rest), ["c", "d"]);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// The approximate count includes invisible messages.
pub async fn queue_count_includes_invisible_messages(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_count");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    q.put_message(&name, "now", Duration::ZERO).await.unwrap();
    q.put_message(&name, "later", SECS_30).await.unwrap();
    q.put_message(&name, "soon", Duration::ZERO).await.unwrap();
    let got = q.get_messages(&name, 1, SECS_30).await.unwrap();
    assert_eq!(q.approximate_message_count(&name).await.unwrap(), 3);
    q.delete_message(&name, &got[0].id, &got[0].pop_receipt).await.unwrap();
    assert_eq!(q.approximate_message_count(&name).await.unwrap(), 2);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// A message of 64 KiB is accepted; one byte more is refused, on put and on update.
pub async fn queue_message_size_limit(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_message_size_limit");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    let max = "a".repeat(MAX_QUEUE_MESSAGE_BYTES);
    let over = "a".repeat(MAX_QUEUE_MESSAGE_BYTES + 1);
    let e = q.put_message(&name, &over, Duration::ZERO).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
    q.put_message(&name, &max, Duration::ZERO).await.unwrap();
    let m = receive_one(q, &name, SECS_30).await;
    assert_eq!(m.text.len(), MAX_QUEUE_MESSAGE_BYTES);
    let e = q.update_message(&name, &m.id, &m.pop_receipt, &over, SECS_30).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
    // The refused update changed nothing: the receipt still deletes.
    q.delete_message(&name, &m.id, &m.pop_receipt).await.unwrap();
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// A receive takes 1-32 messages.
pub async fn queue_receive_batch_limits(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_receive_batch_limits");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    for max in [0, 33] {
        let e = q.get_messages(&name, max, SECS_30).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
    }
    for i in 0..34 {
        q.put_message(&name, &i.to_string(), Duration::ZERO).await.unwrap();
    }
    assert_eq!(q.get_messages(&name, 32, SECS_30).await.unwrap().len(), 32);
    assert_eq!(q.get_messages(&name, 32, SECS_30).await.unwrap().len(), 2);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// A redelivered message and newer messages: the order of one receive once both are visible.
pub async fn queue_redelivery_order(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_redelivery_order");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    q.put_message(&name, "old", Duration::ZERO).await.unwrap();
    receive_one(q, &name, Duration::from_secs(1)).await;
    q.put_message(&name, "new", Duration::ZERO).await.unwrap();
    s.time.pass(Duration::from_millis(2500)).await;
    let got = q.get_messages(&name, 32, SECS_30).await.unwrap();
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    // Azurite orders by the time a message became visible: the newer one first.
    assert_eq!(texts, ["new", "old"]);
    q.delete_queue_if_exists(&name).await.unwrap();
}

/// Visibility timeouts of more than 7 days are refused (put, receive and update), and so is a
/// receive that would not hide at all.
pub async fn queue_visibility_limit(f: &dyn StorageFactory) {
    let s = sut!(f, "storage::queue_visibility_limit");
    let q = &*s.stores.queues;
    let name = queue(&s, "q").await;
    let week = Duration::from_secs(7 * 24 * 3600);
    let eight_days = Duration::from_secs(8 * 24 * 3600);
    let e = q.put_message(&name, "x", eight_days).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
    q.put_message(&name, "later", week).await.unwrap();
    q.put_message(&name, "now", Duration::ZERO).await.unwrap();
    // A receive hides for 1 s to 7 days.
    for visibility in [eight_days, Duration::ZERO] {
        let e = q.get_messages(&name, 1, visibility).await.unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{visibility:?}: {e}");
    }
    let m = receive_one(q, &name, week).await;
    assert_eq!(m.text, "now");
    let e = q.update_message(&name, &m.id, &m.pop_receipt, "x", eight_days).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::InvalidInput, "{e}");
    assert_eq!(q.approximate_message_count(&name).await.unwrap(), 2);
    q.delete_queue_if_exists(&name).await.unwrap();
}
