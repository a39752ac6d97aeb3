//! Durable entities: signals, calls, failures, critical sections, scheduled signals, deletion,
//! queries, large state and the clean-up.

use std::time::Duration;

use durabletask_core::client::EntityQuery;
use durabletask_core::{
    EntityContext, EntityError, EntityId, OrchestrationContext, OrchestrationError,
    OrchestrationStatus, RegistryBuilder,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Harness, ProviderFactory, common_registry};
use crate::wait::wait_until;

/// What the "Counter" entity records: its value and when each `add` was applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CounterState {
    /// The value.
    pub value: i64,
    /// When the last `add` was applied (the batch time).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_add: Option<OffsetDateTime>,
    /// Filler for the large-state test.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blob: String,
}

fn counter(ctx: &mut EntityContext<CounterState>) -> Result<serde_json::Value, EntityError> {
    match ctx.operation() {
        "add" => {
            let n: i64 = ctx.input()?;
            let now = ctx.current_utc_datetime();
            let s = ctx.state_mut();
            s.value += n;
            s.last_add = Some(now);
            Ok(serde_json::Value::Null)
        }
        "get" => Ok(serde_json::json!(ctx.state().map_or(0, |s| s.value))),
        "fail" => {
            ctx.state_mut().value += 1_000_000;
            Err(EntityError::new("this operation always fails"))
        }
        "panic" => {
            ctx.state_mut().value += 1_000_000;
            panic!("entity operation panicked on purpose")
        }
        "delete" => {
            ctx.delete_state();
            Ok(serde_json::Value::Null)
        }
        "fill" => {
            let bytes: usize = ctx.input()?;
            ctx.state_mut().blob = "x".repeat(bytes);
            Ok(serde_json::Value::Null)
        }
        "blob_len" => Ok(serde_json::json!(ctx.state().map_or(0, |s| s.blob.len()))),
        "forward" => {
            // Entity-to-entity signal: add this counter's value to the target.
            let target: String = ctx.input()?;
            let v = ctx.state().map_or(0, |s| s.value);
            ctx.signal_entity(&EntityId::new("Counter", target), "add", &v)?;
            Ok(serde_json::Value::Null)
        }
        other => Err(EntityError::new(format!("Counter has no operation '{other}'"))),
    }
}

fn account(ctx: &mut EntityContext<i64>) -> Result<i64, EntityError> {
    match ctx.operation() {
        "deposit" => {
            let n: i64 = ctx.input()?;
            *ctx.state_mut() += n;
            Ok(*ctx.state_mut())
        }
        "withdraw" => {
            let n: i64 = ctx.input()?;
            let balance = ctx.state().copied().unwrap_or(0);
            if balance < n {
                return Err(EntityError::with_type(
                    "InsufficientFunds",
                    format!("balance {balance} < {n}"),
                ));
            }
            ctx.set_state(balance - n);
            Ok(balance - n)
        }
        "balance" => Ok(ctx.state().copied().unwrap_or(0)),
        other => Err(EntityError::new(format!("Account has no operation '{other}'"))),
    }
}

/// Transfer input: from, to, amount.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
    /// Lock in this order (the library sorts; the test passes both orders).
    reverse: bool,
}

fn list(ctx: &mut EntityContext<Vec<u64>>) -> Result<Vec<u64>, EntityError> {
    match ctx.operation() {
        "push" => {
            let n: u64 = ctx.input()?;
            ctx.state_mut().push(n);
            Ok(Vec::new())
        }
        "get" => Ok(ctx.state().cloned().unwrap_or_default()),
        other => Err(EntityError::new(format!("List has no operation '{other}'"))),
    }
}

/// The entities and orchestrations of this module.
pub fn entity_registry() -> RegistryBuilder {
    common_registry()
        .entity("Counter", counter)
        .entity("List", list)
        .orchestration(
            "PushMany",
            |ctx: OrchestrationContext, (key, from, n): (String, u64, u64)| async move {
                let id = EntityId::new("List", key);
                for i in from..from + n {
                    // Signals and calls interleaved, over several episodes.
                    if i % 10 == 9 {
                        let _: Vec<u64> = ctx.call_entity(&id, "push", &i).await?;
                    } else {
                        ctx.signal_entity(&id, "push", &i)?;
                    }
                }
                let all: Vec<u64> = ctx.call_entity(&id, "get", &()).await?;
                Ok(all)
            },
        )
        .entity("Account", account)
        .orchestration(
            "SignalMany",
            |ctx: OrchestrationContext, (key, n): (String, u64)| async move {
                let id = EntityId::new("Counter", key);
                for _ in 0..n {
                    ctx.signal_entity(&id, "add", &1)?;
                }
                Ok(n)
            },
        )
        .orchestration(
            "CallCounter",
            |ctx: OrchestrationContext, (key, op, input): (String, String, i64)| async move {
                let id = EntityId::new("Counter", key);
                let v: serde_json::Value = ctx.call_entity(&id, &op, &input).await?;
                Ok(v)
            },
        )
        .orchestration(
            "CallCatching",
            |ctx: OrchestrationContext, (key, op): (String, String)| async move {
                let id = EntityId::new("Counter", key);
                match ctx.call_entity::<_, serde_json::Value>(&id, &op, &()).await {
                    Ok(v) => Ok(format!("ok:{v}")),
                    Err(e) => {
                        Ok(format!("failed:{}:{}", e.failure.error_type, e.failure.error_message))
                    }
                }
            },
        )
        .orchestration("LockAndWait", |ctx: OrchestrationContext, key: String| async move {
            let _lock = ctx.lock_entities(&[EntityId::new("Account", key)]).await?;
            let v: String = ctx.wait_for_external_event("Never").await?;
            Ok(v)
        })
        .orchestration("Transfer", |ctx: OrchestrationContext, t: Transfer| async move {
            let from = EntityId::new("Account", &t.from);
            let to = EntityId::new("Account", &t.to);
            let order =
                if t.reverse { [to.clone(), from.clone()] } else { [from.clone(), to.clone()] };
            let lock = ctx.lock_entities(&order).await?;
            let ok = match ctx.call_entity::<_, i64>(&from, "withdraw", &t.amount).await {
                Ok(_) => {
                    let _: i64 = ctx.call_entity(&to, "deposit", &t.amount).await?;
                    true
                }
                Err(_) => false,
            };
            // Rules inside the section: no signal to a locked entity, no call outside the set.
            let signal_refused = ctx.signal_entity(&from, "deposit", &1).is_err();
            let outside = EntityId::new("Account", "outside");
            let call_refused = ctx.call_entity::<_, i64>(&outside, "balance", &()).await.is_err();
            lock.release();
            if !(signal_refused && call_refused) {
                return Err(OrchestrationError::new("locking rules were not enforced"));
            }
            Ok(ok)
        })
}

async fn value(h: &Harness, key: &str) -> Option<CounterState> {
    h.client
        .get_entity::<CounterState>(&EntityId::new("Counter", key))
        .await
        .expect("get_entity")
        .and_then(|m| m.state)
}

async fn wait_value(h: &Harness, key: &str, want: i64) -> CounterState {
    wait_until(h.config.timeout, &format!("counter {key} to reach {want}"), || async {
        value(h, key).await.filter(|s| s.value == want)
    })
    .await
}

/// A counter receiving 1,000 signals from 10 orchestrations (100 each) ends at exactly 1,000;
/// `call_entity` then returns that value; a client signal and an entity-to-entity signal add on.
pub async fn entity_counter_exactly_once(f: &dyn ProviderFactory) {
    let h = Harness::start(f, entity_registry()).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            h.client.start_orchestration("SignalMany", &("hot", 100u64)).await.expect("start"),
        );
    }
    for id in &ids {
        let s = h.wait(id).await;
        assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    }
    wait_value(&h, "hot", 1000).await;
    // Give stragglers (a double) a moment to show up, then check again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(value(&h, "hot").await.map(|s| s.value), Some(1000));
    let call =
        h.client.start_orchestration("CallCounter", &("hot", "get", 0i64)).await.expect("start");
    let s = h.wait(&call).await;
    assert_eq!(s.output_as::<i64>().expect("output"), 1000, "{s:?}");
    // A client signal, then an entity-to-entity signal.
    h.client.signal_entity(&EntityId::new("Counter", "hot"), "add", &5).await.expect("signal");
    wait_value(&h, "hot", 1005).await;
    h.client
        .signal_entity(&EntityId::new("Counter", "hot"), "forward", &"cold")
        .await
        .expect("signal");
    wait_value(&h, "cold", 1005).await;
    h.stop().await;
}

/// A failing operation leaves the state unchanged and reports its error to the caller; a
/// panicking one does too, and the worker goes on.
pub async fn entity_failing_operation_rolls_back(f: &dyn ProviderFactory) {
    let h = Harness::start(f, entity_registry()).await;
    let id = EntityId::new("Counter", "f");
    h.client.signal_entity(&id, "add", &7).await.expect("signal");
    wait_value(&h, "f", 7).await;
    let call = h.client.start_orchestration("CallCatching", &("f", "fail")).await.expect("start");
    let out: String = h.wait(&call).await.output_as().expect("output");
    assert_eq!(out, "failed:EntityOperationFailed:this operation always fails");
    let call = h.client.start_orchestration("CallCatching", &("f", "panic")).await.expect("start");
    let out: String = h.wait(&call).await.output_as().expect("output");
    assert!(out.starts_with("failed:Panic:entity operation panicked on purpose"), "{out}");
    let call = h.client.start_orchestration("CallCatching", &("f", "nosuch")).await.expect("start");
    let out: String = h.wait(&call).await.output_as().expect("output");
    assert!(out.contains("has no operation 'nosuch'"), "{out}");
    // State unchanged by the failures; the entity still works.
    h.client.signal_entity(&id, "add", &1).await.expect("signal");
    wait_value(&h, "f", 8).await;
    h.stop().await;
}

/// Two orchestrations lock the same two accounts in opposite order; both complete (no deadlock),
/// the money is conserved and the locking rules hold inside the section.
pub async fn entity_critical_sections_do_not_deadlock(f: &dyn ProviderFactory) {
    let h = Harness::start(f, entity_registry()).await;
    for (k, v) in [("a", 100i64), ("b", 100)] {
        h.client.signal_entity(&EntityId::new("Account", k), "deposit", &v).await.expect("signal");
    }
    let mut ids = Vec::new();
    for i in 0..4u8 {
        let t = Transfer {
            from: if i % 2 == 0 { "a".into() } else { "b".into() },
            to: if i % 2 == 0 { "b".into() } else { "a".into() },
            amount: 10 + i64::from(i),
            reverse: i % 2 == 1,
        };
        ids.push(h.client.start_orchestration("Transfer", &t).await.expect("start"));
    }
    for id in &ids {
        let s = h.wait(id).await;
        assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
        assert!(s.output_as::<bool>().expect("output"), "transfer {id} failed");
    }
    // The releases go out with each orchestration's last checkpoint and apply right after.
    let mut total = 0;
    for k in ["a", "b"] {
        let m = wait_until(h.config.timeout, &format!("account {k} to be unlocked"), || async {
            h.client
                .get_entity::<i64>(&EntityId::new("Account", k))
                .await
                .expect("get")
                .filter(|m| m.locked_by.is_none())
        })
        .await;
        total += m.state.expect("state");
    }
    assert_eq!(total, 200);
    let a =
        h.client.get_entity::<i64>(&EntityId::new("Account", "a")).await.expect("get").expect("a");
    // a: -10 +11 -12 +13 = +2.
    assert_eq!(a.state, Some(102));
    // A terminated lock holder releases its locks; a transfer that waited for them completes.
    let holder = h.client.start_orchestration("LockAndWait", &"a").await.expect("start");
    wait_until(h.config.timeout, "account a to be locked", || async {
        let m = h.client.get_entity::<i64>(&EntityId::new("Account", "a")).await.expect("get")?;
        (m.locked_by.as_deref() == Some(holder.as_str())).then_some(())
    })
    .await;
    let t = Transfer { from: "a".into(), to: "b".into(), amount: 2, reverse: false };
    let waiting = h.client.start_orchestration("Transfer", &t).await.expect("start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = h.client.get_state(&waiting).await.expect("state").expect("exists");
    assert!(!s.orchestration_status.is_terminal(), "the transfer waits for the lock: {s:?}");
    h.client.terminate(&holder, "done").await.expect("terminate");
    let s = h.wait(&waiting).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    assert!(s.output_as::<bool>().expect("output"));
    h.stop().await;
}

/// A signal scheduled 2 s ahead is not applied before its time.
pub async fn entity_scheduled_signal_waits(f: &dyn ProviderFactory) {
    let h = Harness::start(f, entity_registry()).await;
    let id = EntityId::new("Counter", "later");
    let due = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    h.client.signal_entity_at(&id, "add", &3, due).await.expect("signal");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(value(&h, "later").await, None, "applied before its due time");
    let s = wait_value(&h, "later", 3).await;
    let applied = s.last_add.expect("applied time");
    assert!(applied >= due - time::Duration::milliseconds(100), "applied at {applied}, due {due}");
    h.stop().await;
}

/// Delete, then query: the entity is gone from reads and queries (unless deleted ones are
/// asked for); query pages and name prefixes work; the clean-up removes empty entities.
pub async fn entity_delete_query_and_clean_up(f: &dyn ProviderFactory) {
    let window = Duration::from_secs(3);
    let h = Harness::start_with(f, entity_registry(), |c| {
        c.worker_options.runtime.entity_reorder_window = window;
    })
    .await;
    for k in ["q1", "q2", "q3", "gone"] {
        h.client.signal_entity(&EntityId::new("Counter", k), "add", &1).await.expect("signal");
    }
    h.client.signal_entity(&EntityId::new("Account", "x"), "deposit", &1).await.expect("signal");
    for k in ["q1", "q2", "q3", "gone"] {
        wait_value(&h, k, 1).await;
    }
    let gone = EntityId::new("Counter", "gone");
    h.client.signal_entity(&gone, "delete", &()).await.expect("signal");
    wait_until(h.config.timeout, "the entity to be deleted", || async {
        h.client.get_entity::<CounterState>(&gone).await.expect("get").is_none().then_some(())
    })
    .await;
    // Paged query over the Counter entities, with state.
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let q = EntityQuery {
            name_prefix: Some("coun".into()),
            include_state: true,
            page_size: 2,
            continuation_token: token,
            ..EntityQuery::default()
        };
        let page = h.client.query_entities::<CounterState>(&q).await.expect("query");
        all.extend(page.entities);
        token = page.continuation_token;
        if token.is_none() {
            break;
        }
    }
    let mut keys: Vec<&str> = all.iter().map(|m| m.id.key()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["q1", "q2", "q3"]);
    assert!(all.iter().all(|m| m.state.as_ref().is_some_and(|s| s.value == 1)));
    // Including deleted ones, without state.
    let q = EntityQuery { include_deleted: true, ..EntityQuery::default() };
    let page = h.client.query_entities::<serde_json::Value>(&q).await.expect("query");
    let listed: Vec<String> = page.entities.iter().map(|m| m.id.to_string()).collect();
    assert!(listed.contains(&"@counter@gone".to_owned()), "{listed:?}");
    assert!(listed.contains(&"@account@x".to_owned()), "{listed:?}");
    assert!(page.entities.iter().all(|m| m.state.is_none()));
    // Orchestration queries can leave entities out (DTF ExcludeEntities).
    let orchestrations = h
        .client
        .query(&durabletask_core::OrchestrationQuery {
            exclude_entities: true,
            ..durabletask_core::OrchestrationQuery::default()
        })
        .await
        .expect("query");
    assert!(
        orchestrations.states.iter().all(|s| !s.instance_id().starts_with('@')),
        "{:?}",
        orchestrations.states.iter().map(|s| s.instance_id()).collect::<Vec<_>>()
    );
    let everything =
        h.client.query(&durabletask_core::OrchestrationQuery::default()).await.expect("query");
    assert!(everything.states.iter().any(|s| s.instance_id() == "@counter@q1"));
    // Right after a message the entity still remembers its sender: the clean-up keeps it, and
    // says so without waiting for the whole timeout.
    let before = h.client.get_state(&gone.instance_id()).await.expect("state").expect("row");
    h.client.signal_entity(&gone, "delete", &()).await.expect("signal");
    wait_until(h.config.timeout, "the second delete to apply", || async {
        let s = h.client.get_state(&gone.instance_id()).await.expect("state")?;
        (s.last_updated_time != before.last_updated_time).then_some(())
    })
    .await;
    let begun = std::time::Instant::now();
    let r = h.client.clean_entity_storage(true, true, h.config.timeout).await.expect("clean");
    assert!(begun.elapsed() < h.config.timeout, "the refusal was seen");
    let counts = (r.empty_entities_removed, r.orphaned_locks_released, r.empty_entities_kept);
    assert_eq!(counts, (0, 0, 1), "{r:?}");
    // Once its reorder window has passed (3 s here) the clean-up removes it and keeps the others.
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    let r = h.client.clean_entity_storage(true, true, h.config.timeout).await.expect("clean");
    let counts = (r.empty_entities_removed, r.orphaned_locks_released, r.empty_entities_kept);
    assert_eq!(counts, (1, 0, 0), "{r:?}");
    assert_eq!(h.client.get_state(&gone.instance_id()).await.expect("state"), None);
    assert_eq!(value(&h, "q1").await.map(|s| s.value), Some(1));
    // A removed entity starts afresh on its next signal.
    h.client.signal_entity(&gone, "add", &4).await.expect("signal");
    wait_value(&h, "gone", 4).await;
    h.stop().await;
}

/// A 1 MiB entity state is stored and read back whole.
pub async fn entity_large_state(f: &dyn ProviderFactory) {
    let h = Harness::start(f, entity_registry()).await;
    let id = EntityId::new("Counter", "big");
    h.client.signal_entity(&id, "fill", &(1024 * 1024usize)).await.expect("signal");
    h.client.signal_entity(&id, "add", &1).await.expect("signal");
    let s = wait_value(&h, "big", 1).await;
    assert_eq!(s.blob.len(), 1024 * 1024);
    let call = h
        .client
        .start_orchestration("CallCounter", &("big", "blob_len", 0i64))
        .await
        .expect("start");
    let out = h.wait(&call).await;
    assert_eq!(out.output_as::<usize>().expect("output"), 1024 * 1024, "{out:?}");
    h.stop().await;
}

/// Entity ids are refused where an orchestration is meant (start, raise, terminate, suspend,
/// resume, a sub-orchestration id), before anything is written; an invalid entity id is refused
/// by signals; orchestration operations never answer `Ok` for an entity.
pub async fn entity_ids_are_not_orchestrations(f: &dyn ProviderFactory) {
    use durabletask_core::{ClientError, InstanceIdError, StartOptions};
    let h = Harness::start(f, entity_registry()).await;
    let id = EntityId::new("Counter", "e");
    h.client.signal_entity(&id, "add", &1).await.expect("signal");
    wait_value(&h, "e", 1).await;
    let entity = id.instance_id();
    let r = h
        .client
        .schedule_new_orchestration("Quick", &"x", StartOptions::with_instance_id(&entity))
        .await;
    assert!(
        matches!(r, Err(ClientError::InvalidInstanceId(InstanceIdError::EntityId(_)))),
        "{r:?}"
    );
    let is_refused = |r: Result<(), ClientError>| {
        matches!(r, Err(ClientError::InvalidInstanceId(InstanceIdError::EntityId(_))))
    };
    assert!(is_refused(h.client.raise_event(&entity, "x", &1).await));
    assert!(is_refused(h.client.terminate(&entity, "no").await));
    assert!(is_refused(h.client.suspend(&entity, None).await));
    assert!(is_refused(h.client.resume(&entity, None).await));
    // The provider itself refuses to create an orchestration with an entity id.
    let start = durabletask_core::TaskMessage::new(
        durabletask_core::OrchestrationInstance::with_execution("@counter@direct", "e1"),
        durabletask_core::HistoryEvent::new(
            -1,
            OffsetDateTime::now_utc(),
            durabletask_core::EventKind::ExecutionStarted(
                durabletask_core::ExecutionStartedEvent::new(
                    durabletask_core::OrchestrationInstance::with_execution(
                        "@counter@direct",
                        "e1",
                    ),
                    "Quick",
                    None,
                ),
            ),
        ),
    );
    let r = h.hub.client.create_orchestration(start, &[]).await;
    assert!(
        r.as_ref().is_err_and(|e| e.kind() == durabletask_core::ProviderErrorKind::InvalidInput),
        "{r:?}"
    );
    assert_eq!(h.client.get_state("@counter@direct").await.expect("state"), None);
    // Invalid entity ids.
    for bad in [EntityId::new("", "k"), EntityId::new("a@b", "k"), EntityId::new("c", "k\u{7}")] {
        let r = h.client.signal_entity(&bad, "add", &1).await;
        assert!(matches!(r, Err(ClientError::InvalidEntityId(_))), "{bad:?}: {r:?}");
    }
    // The entity is untouched by all of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(value(&h, "e").await.map(|s| s.value), Some(1));
    h.stop().await;
}

/// Operations from one orchestration apply in the order it sent them, across episodes and
/// mixed signals and calls; two orchestrations' streams interleave but each stays in order.
pub async fn entity_operations_keep_sender_order(f: &dyn ProviderFactory) {
    let h = Harness::start(f, entity_registry()).await;
    let one =
        h.client.start_orchestration("PushMany", &("solo", 0u64, 60u64)).await.expect("start");
    let s = h.wait(&one).await;
    assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    let got: Vec<u64> = s.output_as().expect("output");
    assert_eq!(got, (0..60).collect::<Vec<_>>());
    // Two senders to one list: each one's numbers appear in its own order.
    let a =
        h.client.start_orchestration("PushMany", &("shared", 0u64, 30u64)).await.expect("start");
    let b =
        h.client.start_orchestration("PushMany", &("shared", 100u64, 30u64)).await.expect("start");
    for id in [&a, &b] {
        let s = h.wait(id).await;
        assert_eq!(s.orchestration_status, OrchestrationStatus::Completed, "{s:?}");
    }
    let m = h
        .client
        .get_entity::<Vec<u64>>(&EntityId::new("List", "shared"))
        .await
        .expect("get")
        .expect("exists");
    let all = m.state.expect("state");
    let from_a: Vec<u64> = all.iter().copied().filter(|v| *v < 100).collect();
    let from_b: Vec<u64> = all.iter().copied().filter(|v| *v >= 100).collect();
    assert_eq!(from_a, (0..30).collect::<Vec<_>>(), "{all:?}");
    assert_eq!(from_b, (100..130).collect::<Vec<_>>(), "{all:?}");
    h.stop().await;
}
