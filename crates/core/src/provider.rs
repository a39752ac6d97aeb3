//! The storage-provider contract: [`OrchestrationService`] (worker side) and
//! [`OrchestrationServiceClient`] (client side). Both are object-safe `#[async_trait]` traits; the
//! doc comment of each method is the specification a provider must meet, and the conformance suite
//! in `durabletask-testkit` checks it.
//!
//! # Model
//!
//! * A **task hub** holds instances. Each instance has an *instance row* ([`OrchestrationState`])
//!   and the *history* of its current execution (a `Vec<HistoryEvent>`).
//! * Messages ([`TaskMessage`]) go to an **orchestration queue** (addressed to an instance) or to
//!   the **activity queue** (`TaskScheduled` events). Delivery is at-least-once: every consumer
//!   tolerates duplicates (core drops duplicate starts, stale executions and responses with no open
//!   task).
//! * A worker **locks** a batch of messages for one instance (an [`OrchestrationWorkItem`]) or one
//!   activity message (an [`ActivityWorkItem`]) until `locked_until`; the lock is renewable. A lock
//!   that expires makes the messages visible again (their `dequeue_count` grows).
//!
//! # Invariants every provider keeps
//!
//! 1. **One work item per instance at a time.** While an orchestration work item for an instance
//!    is locked, no other work item for that instance is handed out; messages arriving meanwhile
//!    wait for the next one.
//! 2. **Checkpoint order**: [`OrchestrationService::complete_orchestration_work_item`] sends the
//!    outbound messages first, then writes history (guarded by the history's concurrency token),
//!    then the instance row, then deletes the work item's messages. A crash in between leads to
//!    re-delivery, never to loss.
//! 3. **Start de-duplication**: a top-level `ExecutionStarted` (no `parent_instance`) is delivered
//!    only if its execution id equals the instance row's current execution id; stale or duplicate
//!    starts are deleted. (Core relies on this to treat a top-level start with a new execution id
//!    as a recreation.)
//! 4. **Timers** (`TimerFired` messages) and **scheduled starts**
//!    (`ExecutionStarted.scheduled_start_time`) are not delivered before their due time.
//! 5. Errors are [`ProviderError`]s; [`ProviderError::is_retryable`] tells callers whether the
//!    same call may succeed later. Dispatchers abandon a work item on any error.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::history::{HistoryEvent, TaskMessage};
#[allow(unused_imports)] // doc links
use crate::runtime::Checkpoint;
use crate::runtime::WorkItemResult;
use crate::state::{OrchestrationRuntimeState, OrchestrationState, OrchestrationStatus};

/// Classification of a [`ProviderError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderErrorKind {
    /// The instance, message or resource does not exist.
    NotFound,
    /// A create conflicted with existing data (e.g. an instance in a dedupe status).
    Conflict,
    /// An optimistic-concurrency token (ETag) no longer matches, or a precondition failed.
    PreconditionFailed,
    /// The work item's lock expired or was taken by another worker.
    LeaseLost,
    /// The backend asked us to slow down.
    Throttled,
    /// A transient failure (timeout, connection reset); retry later.
    Transient,
    /// A permanent failure; retrying the same call will not help.
    Permanent,
    /// The caller passed invalid input (an invalid instance id, a message over the size limit,
    /// a message kind clients may not send). Nothing was written.
    InvalidInput,
    /// A create lost a race: its start message was already queued, but another execution with a
    /// newer creation time now owns the instance row, so that start will be discarded as stale.
    Superseded,
}

/// The one error type of the provider contract.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {kind:?}: {message}")]
#[non_exhaustive]
pub struct ProviderError {
    /// Classification.
    pub kind: ProviderErrorKind,
    /// The provider operation that failed (e.g. `"complete_orchestration_work_item"`).
    pub operation: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// The backend error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    /// A new error.
    pub fn new(
        kind: ProviderErrorKind,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self { kind, operation, message: message.into(), source: None }
    }

    /// Attaches the underlying backend error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The classification.
    pub fn kind(&self) -> ProviderErrorKind {
        self.kind
    }

    /// True for `Throttled` and `Transient`: the same call may succeed later.
    /// (`LeaseLost`, `Conflict` and `PreconditionFailed` mean "abandon, someone else owns this";
    /// they are not retried blindly.)
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ProviderErrorKind::Throttled | ProviderErrorKind::Transient)
    }
}

/// Opaque per-provider lock data carried by a work item (queue pop receipts, ETags, lock ids...).
pub struct LockToken(Box<dyn Any + Send + Sync>);

impl LockToken {
    /// Wraps provider data.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// The provider data, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(..)")
    }
}

/// A locked batch of messages for one instance, with that instance's history.
#[derive(Debug)]
pub struct OrchestrationWorkItem {
    /// The instance.
    pub instance_id: String,
    /// The stored history of the instance's current execution (all `past_events`). May be empty
    /// (new instance, or the batch starts a new execution).
    pub runtime_state: OrchestrationRuntimeState,
    /// The batch, in delivery order.
    pub new_messages: Vec<TaskMessage>,
    /// Lock expiry; renew before it.
    pub locked_until: OffsetDateTime,
    /// Highest delivery count among the batch's messages (1 on first delivery).
    pub dequeue_count: u32,
    /// The provider knows that the instance's last checkpoint ran to its end (its messages were
    /// sent), e.g. because this process made it and cached the history. `false` when it cannot
    /// know (history read from storage after a restart, an aborted checkpoint or a partition
    /// move): an entity then sends the messages its committed state records again (receivers
    /// drop the copies).
    pub previous_checkpoint_finished: bool,
    /// Provider lock data.
    pub token: LockToken,
}

/// A locked activity message.
#[derive(Debug)]
pub struct ActivityWorkItem {
    /// Unique id of the work item (e.g. the queue message id).
    pub id: String,
    /// The `TaskScheduled` message (with its input) and the scheduling instance.
    pub message: TaskMessage,
    /// Lock expiry.
    pub locked_until: OffsetDateTime,
    /// Delivery count (1 on first delivery).
    pub dequeue_count: u32,
    /// Provider lock data.
    pub token: LockToken,
}

/// Hints the provider gives the dispatchers.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Suggested maximum concurrent orchestration work items.
    pub max_concurrent_orchestrations: usize,
    /// Suggested maximum concurrent activity work items.
    pub max_concurrent_activities: usize,
    /// The largest message the provider accepts (`None`: no limit). Entities fail an operation
    /// whose result or signal would not fit, instead of a checkpoint the provider refuses.
    pub max_message_bytes: Option<usize>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        // DTF FrameworkConstants: 100 orchestrations, 10 activities.
        Self {
            max_concurrent_orchestrations: 100,
            max_concurrent_activities: 10,
            max_message_bytes: None,
        }
    }
}

/// Worker side of the provider contract (DTF `IOrchestrationService`).
#[async_trait]
pub trait OrchestrationService: Send + Sync + fmt::Debug {
    /// Creates the task hub's resources if missing. Idempotent. Retryable errors: `Transient`,
    /// `Throttled`.
    async fn create_if_not_exists(&self) -> Result<(), ProviderError>;

    /// Deletes the task hub and all its data. Idempotent (deleting a missing hub succeeds).
    async fn delete(&self) -> Result<(), ProviderError>;

    /// Starts background machinery (partition ownership, prefetch). Called once by the worker
    /// before any `lock_next_*`. Idempotent.
    async fn start(&self) -> Result<(), ProviderError>;

    /// Stops background machinery. `graceful = true` waits for in-flight provider operations;
    /// afterwards `lock_next_*` return `Ok(None)` promptly. Idempotent.
    async fn stop(&self, graceful: bool) -> Result<(), ProviderError>;

    /// Concurrency hints for the dispatchers.
    fn settings(&self) -> ProviderSettings {
        ProviderSettings::default()
    }

    /// Locks the next instance that has visible messages and returns them with its history.
    ///
    /// * Waits up to `timeout` for work, then returns `Ok(None)` (also after `stop`).
    /// * Locks *all* currently visible messages for the chosen instance until `locked_until`.
    ///   Keeps invariant 1 (one work item per instance).
    /// * Messages addressed to instances that do not exist, and messages for terminal instances
    ///   (other than a new `ExecutionStarted`), may be deleted here; core would discard them
    ///   anyway.
    /// * An `ExecutionTerminated` for an instance that was created but has not started yet
    ///   (Pending, delayed start) terminates it here: the row becomes `Terminated` (output = the
    ///   reason) and the pending start message is deleted.
    /// * Messages for an instance that is Pending with a delayed start stay queued until the start
    ///   is due (a raised event does not wake the instance early).
    /// * Cancel-safe: dropping the future must not lose messages (at worst they reappear when
    ///   their lock expires).
    async fn lock_next_orchestration_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, ProviderError>;

    /// Extends the work item's lock; returns the new `locked_until`.
    /// `LeaseLost` if the lock already expired or was taken over.
    async fn renew_orchestration_work_item_lock(
        &self,
        work_item: &OrchestrationWorkItem,
    ) -> Result<OffsetDateTime, ProviderError>;

    /// Completes a work item with the outcome computed by core
    /// ([`crate::runtime::process_work_item`]).
    ///
    /// * [`WorkItemResult::Discard`]: delete the work item's messages; write nothing else.
    /// * [`WorkItemResult::Checkpoint`], in this order (invariant 2):
    ///   1. send `orchestrator_messages` (to their target instances; `ExecutionStarted` ones
    ///      create the child's instance row as Pending if it has none), `timer_messages` (to this
    ///      instance, visible at their `fire_at`) and `activity_messages` (activity queue);
    ///   2. write history: if `runtime_state.past_events()` is empty, *replace* the stored
    ///      history with `new_events()` (new execution); otherwise append `new_events()`. Guarded
    ///      by the token observed when the work item was locked: a concurrent writer yields
    ///      `Conflict`/`PreconditionFailed` and nothing of this checkpoint's history is kept;
    ///   3. write the instance row from `state`;
    ///   4. delete the work item's messages and release the instance lock.
    /// * `LeaseLost` if the lock expired and another worker may own the instance; the caller
    ///   abandons. Not idempotent across different outcomes, but re-running the same episode after
    ///   a failure overwrites the same history positions.
    async fn complete_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
        result: WorkItemResult,
    ) -> Result<(), ProviderError>;

    /// Gives the work item up: its messages become visible again after `retry_after` (the
    /// dispatcher passes an exponential back-off), with `dequeue_count` incremented. Releases the
    /// instance lock. Succeeds if the lock was already lost.
    async fn abandon_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
        retry_after: Duration,
    ) -> Result<(), ProviderError>;

    /// Releases in-memory session state for the instance after complete or abandon (DTF
    /// `ReleaseTaskOrchestrationWorkItemAsync`). Idempotent; may be a no-op.
    async fn release_orchestration_work_item(
        &self,
        work_item: &OrchestrationWorkItem,
    ) -> Result<(), ProviderError>;

    /// Locks the next visible activity message (waits up to `timeout`; `Ok(None)` when none).
    /// Cancel-safe as above.
    async fn lock_next_activity_work_item(
        &self,
        timeout: Duration,
    ) -> Result<Option<ActivityWorkItem>, ProviderError>;

    /// Extends an activity lock; returns the new `locked_until`. `LeaseLost` if it expired.
    async fn renew_activity_work_item_lock(
        &self,
        work_item: &ActivityWorkItem,
    ) -> Result<OffsetDateTime, ProviderError>;

    /// Sends `response` (a `TaskCompleted`/`TaskFailed` addressed to the scheduling instance)
    /// **then** deletes the activity message, so a crash re-runs the activity or duplicates the
    /// response but never loses it. `LeaseLost` if the lock expired (the response is not sent).
    async fn complete_activity_work_item(
        &self,
        work_item: &ActivityWorkItem,
        response: TaskMessage,
    ) -> Result<(), ProviderError>;

    /// Makes the activity message visible again after `retry_after`.
    async fn abandon_activity_work_item(
        &self,
        work_item: &ActivityWorkItem,
        retry_after: Duration,
    ) -> Result<(), ProviderError>;
}

/// Filter for [`OrchestrationServiceClient::query`] (DTF `OrchestrationQuery`).
#[derive(Debug, Clone)]
pub struct OrchestrationQuery {
    /// Match any of these statuses (empty = all).
    pub runtime_status: Vec<OrchestrationStatus>,
    /// Created at or after.
    pub created_from: Option<OffsetDateTime>,
    /// Created at or before.
    pub created_to: Option<OffsetDateTime>,
    /// Instance id starts with.
    pub instance_id_prefix: Option<String>,
    /// Maximum results per page (default 100, minimum 1).
    pub page_size: usize,
    /// Token from the previous page.
    pub continuation_token: Option<String>,
    /// Include `input` and `output` (default true).
    pub fetch_inputs_and_outputs: bool,
    /// Leave out entities (instance ids starting with `@`; DTF `ExcludeEntities`, default
    /// false).
    pub exclude_entities: bool,
}

impl Default for OrchestrationQuery {
    fn default() -> Self {
        Self {
            runtime_status: Vec::new(),
            created_from: None,
            created_to: None,
            instance_id_prefix: None,
            page_size: 100,
            continuation_token: None,
            fetch_inputs_and_outputs: true,
            exclude_entities: false,
        }
    }
}

/// One page of query results.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The matching instances of this page.
    pub states: Vec<OrchestrationState>,
    /// `Some` when more pages may follow.
    pub continuation_token: Option<String>,
}

/// Which timestamp of an instance row a [`PurgeFilter`] time range applies to (DTF
/// `OrchestrationStateTimeRangeFilterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PurgeTimeFilter {
    /// `CreatedTime` (DTF `OrchestrationCreatedTimeFilter`).
    #[default]
    CreatedTime,
    /// `CompletedTime` (DTF `OrchestrationCompletedTimeFilter`); an instance without one never
    /// matches.
    CompletedTime,
    /// `LastUpdatedTime` (DTF `OrchestrationLastUpdatedTimeFilter`).
    LastUpdatedTime,
}

/// Filter for [`OrchestrationServiceClient::purge_by_filter`].
#[derive(Debug, Clone)]
pub struct PurgeFilter {
    /// The chosen timestamp ([`Self::time_filter`]) is at or after this.
    pub from: OffsetDateTime,
    /// The chosen timestamp is at or before this (`None` = no upper bound).
    pub to: Option<OffsetDateTime>,
    /// Which timestamp `from` and `to` apply to (default: created time).
    pub time_filter: PurgeTimeFilter,
    /// Statuses to purge; only terminal statuses are honoured, and an empty list means all
    /// terminal statuses (unlike DTF, a non-terminal instance is never purged).
    pub runtime_status: Vec<OrchestrationStatus>,
}

impl PurgeFilter {
    /// Terminal instances whose `time_filter` timestamp lies in `[from, to]`, any terminal status.
    pub fn new(
        time_filter: PurgeTimeFilter,
        from: OffsetDateTime,
        to: Option<OffsetDateTime>,
    ) -> Self {
        Self { from, to, time_filter, runtime_status: Vec::new() }
    }

    /// Restricts the purge to `statuses` (non-terminal ones are ignored).
    pub fn with_statuses(mut self, statuses: impl Into<Vec<OrchestrationStatus>>) -> Self {
        self.runtime_status = statuses.into();
        self
    }

    /// True when `state` is terminal, has one of the filter's statuses and its chosen timestamp is
    /// in range. Providers that filter in memory use this; others must give the same answer.
    pub fn matches(&self, state: &OrchestrationState) -> bool {
        let status = state.orchestration_status;
        let status_ok = status.is_terminal()
            && (self.runtime_status.is_empty() || self.runtime_status.contains(&status));
        let time = match self.time_filter {
            PurgeTimeFilter::CreatedTime => Some(state.created_time),
            PurgeTimeFilter::CompletedTime => state.completed_time,
            PurgeTimeFilter::LastUpdatedTime => Some(state.last_updated_time),
        };
        status_ok && time.is_some_and(|t| t >= self.from && self.to.is_none_or(|to| t <= to))
    }
}

/// Outcome of a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeResult {
    /// Instances whose row and history were deleted.
    pub deleted_instance_count: usize,
}

/// Client side of the provider contract (DTF `IOrchestrationServiceClient` + purge and query).
#[async_trait]
pub trait OrchestrationServiceClient: Send + Sync + fmt::Debug {
    /// Creates an instance from `start` (an `ExecutionStarted` message; execution id set).
    ///
    /// * `InvalidInput`, nothing written, if the instance id fails
    ///   [`crate::validate_instance_id`], the message is not an `ExecutionStarted` or it is over
    ///   the provider's message size limit.
    /// * If the instance row exists and its status is in `dedupe_statuses` → `Conflict`, nothing
    ///   written.
    /// * Otherwise enqueue the start message (visible at `scheduled_start_time` if set) **then**
    ///   write the instance row as `Pending` with the new execution id (replacing an existing
    ///   row: recreation). This order is what the Azure start de-duplication relies on.
    /// * A recreation's start timestamp (the new row's created time) is made strictly later than
    ///   the replaced row's created time, so an instance row's created time only moves forward
    ///   and a start older than the row is always stale.
    /// * Concurrent creates of one id: the row is replaced only while it holds an older
    ///   execution. When a newer execution wrote the row first, this call fails with
    ///   `Superseded` (its start was queued and will be discarded as stale); when the row now has
    ///   a dedupe status, with `Conflict` (same: the queued start will be discarded). The error
    ///   messages say so.
    async fn create_orchestration(
        &self,
        start: TaskMessage,
        dedupe_statuses: &[OrchestrationStatus],
    ) -> Result<(), ProviderError>;

    /// Enqueues one message for an instance (raise event, terminate, suspend, resume). Delivery is
    /// at-least-once; there is no existence check (the typed client checks the row first).
    /// `InvalidInput`, nothing sent, for an invalid instance id, a `TaskScheduled` message or a
    /// message over the size limit.
    async fn send_message(&self, message: TaskMessage) -> Result<(), ProviderError>;

    /// Enqueues several messages (no atomicity across messages). Default: one by one.
    async fn send_messages(&self, messages: Vec<TaskMessage>) -> Result<(), ProviderError> {
        for m in messages {
            self.send_message(m).await?;
        }
        Ok(())
    }

    /// The instance row of the latest execution, or `None`. `include_payloads = false` leaves
    /// `input` and `output` empty.
    async fn get_state(
        &self,
        instance_id: &str,
        include_payloads: bool,
    ) -> Result<Option<OrchestrationState>, ProviderError>;

    /// The stored history of the instance's current execution (or of `execution_id`, which must
    /// then be the current one; otherwise `NotFound`). Empty when the instance has no history.
    async fn get_history(
        &self,
        instance_id: &str,
        execution_id: Option<&str>,
    ) -> Result<Vec<HistoryEvent>, ProviderError>;

    /// One page of instance rows matching `query`, ordered by instance id. Continuation tokens
    /// are opaque and only valid with the same filter.
    async fn query(&self, query: &OrchestrationQuery) -> Result<QueryResult, ProviderError>;

    /// Deletes the row and history of a terminal instance. Returns 0 if the instance does not
    /// exist; `PreconditionFailed` if it is not terminal (nothing deleted).
    async fn purge_instance(&self, instance_id: &str) -> Result<PurgeResult, ProviderError>;

    /// Purges every terminal instance matching `filter` (see [`PurgeFilter`]; the result must be
    /// the one [`PurgeFilter::matches`] gives for each row).
    async fn purge_by_filter(&self, filter: &PurgeFilter) -> Result<PurgeResult, ProviderError>;
}
