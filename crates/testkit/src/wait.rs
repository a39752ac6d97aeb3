//! Deadline-based polling helpers: tests wait for a *condition*, never for a fixed time.

use std::future::Future;
use std::time::Duration;

/// Polls `probe` until it returns `Some`, starting at 5 ms between polls and doubling up to
/// 250 ms, and panics with `what` once `timeout` has passed.
///
/// # Panics
/// When the condition is not met within `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}
