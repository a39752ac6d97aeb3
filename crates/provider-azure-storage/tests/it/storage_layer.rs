//! What is specific to `AzureStorage` (the SDK clients): how Azurite's answers are classified,
//! and the per-call timeout. The behaviours every storage implementation shares (queues, ETag-
//! guarded batches, leases, limits, counters) are in the storage conformance suite
//! (`storage_conformance.rs` here, and on the in-memory store in the crate's unit tests).

use crate::support::TestHub;
use durabletask_azure_storage::storage::{
    AzureStorage, QueueStore, StorageAccount, StorageErrorKind, StorageOp, TableStore,
};
use std::time::Duration;

#[tokio::test]
async fn a_stale_pop_receipt_is_azurites_400_reported_as_precondition_failed() {
    let Some(hub) = TestHub::new("storage_layer::stale_pop_receipt", 1) else { return };
    let s = &hub.storage;
    let q = &hub.names.control_queues[0];
    s.create_queue_if_not_exists(q).await.unwrap();
    s.put_message(q, "m", Duration::ZERO).await.unwrap();
    let m = s.get_messages(q, 1, Duration::from_secs(30)).await.unwrap().remove(0);
    let receipt =
        s.update_message(q, &m.id, &m.pop_receipt, "m", Duration::from_secs(30)).await.unwrap();
    for e in [
        s.delete_message(q, &m.id, &m.pop_receipt).await.unwrap_err(),
        s.update_message(q, &m.id, &m.pop_receipt, "m", Duration::ZERO).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), StorageErrorKind::PreconditionFailed, "{e}");
        assert_eq!((e.status(), e.code()), (Some(400), Some("PopReceiptMismatch")), "{e}");
    }
    s.delete_message(q, &m.id, &receipt).await.unwrap();
    let e = s.delete_message(q, &m.id, &receipt).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (StorageErrorKind::NotFound, Some(404)), "{e}");
    s.delete_queue_if_exists(q).await.unwrap();
}

/// Storage with a 300-ms call timeout over a listener that accepts connections and never
/// answers (a frozen service); abort the handle to close it.
async fn silent_storage() -> (AzureStorage, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let account = StorageAccount::emulator("127.0.0.1", port, port, port);
    (AzureStorage::new(&account, Duration::from_millis(300)), hold)
}

#[tokio::test]
async fn a_call_without_an_answer_fails_as_transient_after_the_timeout() {
    // A listener that accepts connections and never answers: no Azurite needed.
    let (s, hold) = silent_storage().await;
    let started = std::time::Instant::now();
    let e = s.put_message("q", "m", Duration::ZERO).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::Transient, "{e}");
    assert!(e.is_retryable());
    let e = s.query("t", None, None, None, None).await.unwrap_err();
    assert_eq!(e.kind(), StorageErrorKind::Transient, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Both calls were counted: they may have reached the service.
    let counts = s.counters().snapshot();
    assert_eq!((counts.get(StorageOp::QueuePut), counts.get(StorageOp::TableQuery)), (1, 1));
    hold.abort();
}

#[tokio::test]
async fn a_receive_is_not_given_up_before_the_visibility_it_asked_for() {
    // A receive the client gives up on may still take its messages when the service answers
    // late (the CI flake: an Azurite freeze longer than the call timeout left the messages of an
    // abandoned receive invisible for 5 minutes, known to nobody). So a receive waits as long as
    // what it takes stays hidden. A listener that never answers stands for the frozen service.
    let (s, hold) = silent_storage().await;
    let started = std::time::Instant::now();
    let e = s.get_messages("q", 1, Duration::from_secs(2)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(e.kind(), StorageErrorKind::Transient, "{e}");
    assert!(waited >= Duration::from_secs(2), "gave up after {waited:?}, before the visibility");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Other calls keep the call timeout.
    let started = std::time::Instant::now();
    s.delete_message("q", "id", "receipt").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    hold.abort();
}
