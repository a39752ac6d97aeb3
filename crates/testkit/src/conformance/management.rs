//! Query, purge and client-side validation.

use std::collections::BTreeSet;
use std::time::Duration;

use durabletask_core::{
    ClientError, OrchestrationQuery, OrchestrationStatus, PurgeFilter, PurgeTimeFilter,
    StartOptions,
};

use super::{Harness, ProviderFactory, common_registry};

/// Purging one instance removes its row and history; active instances are refused.
pub async fn purge_instance(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let id = h.client.start_orchestration("Quick", &"x").await.expect("start");
    h.wait(&id).await;
    let running = h.client.start_orchestration("WaitForever", &()).await.expect("start");
    h.wait_status(&running, OrchestrationStatus::Running).await;
    assert_eq!(h.client.purge_instance(&id).await.expect("purge").deleted_instance_count, 1);
    assert!(h.client.get_state(&id).await.expect("state").is_none());
    assert!(h.client.get_history(&id).await.expect("history").is_empty());
    assert_eq!(h.client.purge_instance(&id).await.expect("purge again").deleted_instance_count, 0);
    match h.client.purge_instance(&running).await {
        Err(ClientError::NotTerminal(x)) => assert_eq!(x, running),
        other => panic!("expected NotTerminal, got {other:?}"),
    }
    assert!(h.client.get_state(&running).await.expect("state").is_some());
    h.stop().await;
}

/// Purging by time range removes only terminal instances created in the range.
pub async fn purge_by_filter(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let before = time::OffsetDateTime::now_utc() - Duration::from_secs(60);
    let mut done = Vec::new();
    for i in 0..3 {
        done.push(h.client.start_orchestration("Quick", &format!("{i}")).await.expect("start"));
    }
    for id in &done {
        h.wait(id).await;
    }
    let running = h.client.start_orchestration("WaitForever", &()).await.expect("start");
    h.wait_status(&running, OrchestrationStatus::Running).await;
    let none = PurgeFilter::new(PurgeTimeFilter::CreatedTime, before, Some(before));
    assert_eq!(h.client.purge_by_filter(&none).await.expect("purge").deleted_instance_count, 0);
    let all = PurgeFilter::new(PurgeTimeFilter::CreatedTime, before, None)
        .with_statuses([OrchestrationStatus::Completed, OrchestrationStatus::Running]);
    assert_eq!(h.client.purge_by_filter(&all).await.expect("purge").deleted_instance_count, 3);
    for id in &done {
        assert!(h.client.get_state(id).await.expect("state").is_none());
    }
    assert!(
        h.client.get_state(&running).await.expect("state").is_some(),
        "Running is never purged"
    );
    h.stop().await;
}

/// Queries filter by status, creation time and id prefix, and page with continuation tokens.
pub async fn query_paging(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    let prefix = format!("q{}-", &durabletask_core::new_execution_id()[..8]);
    let mut ids = BTreeSet::new();
    for i in 0..7 {
        let id = format!("{prefix}{i}");
        h.client
            .schedule_new_orchestration("Quick", &"x", StartOptions::with_instance_id(&id))
            .await
            .expect("start");
        ids.insert(id);
    }
    let other = h.client.start_orchestration("Quick", &"y").await.expect("start");
    for id in ids.iter().chain([&other]) {
        h.wait(id).await;
    }
    let mut q = OrchestrationQuery {
        instance_id_prefix: Some(prefix.clone()),
        runtime_status: vec![OrchestrationStatus::Completed],
        page_size: 3,
        fetch_inputs_and_outputs: false,
        ..OrchestrationQuery::default()
    };
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    loop {
        let page = h.client.query(&q).await.expect("query");
        pages += 1;
        assert!(page.states.len() <= 3, "page size respected");
        for s in page.states {
            assert!(s.input.is_none() && s.output.is_none(), "payloads excluded");
            assert!(
                seen.insert(s.orchestration_instance.instance_id.clone()),
                "no duplicates across pages"
            );
        }
        match page.continuation_token {
            Some(t) => q.continuation_token = Some(t),
            None => break,
        }
        assert!(pages < 20, "paging does not terminate");
    }
    assert_eq!(seen, ids);
    assert!(pages >= 3);
    let running = OrchestrationQuery {
        instance_id_prefix: Some(prefix.clone()),
        runtime_status: vec![OrchestrationStatus::Running],
        ..OrchestrationQuery::default()
    };
    assert!(h.client.query(&running).await.expect("query").states.is_empty());
    let future = OrchestrationQuery {
        created_from: Some(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
        ..OrchestrationQuery::default()
    };
    assert!(h.client.query(&future).await.expect("query").states.is_empty());
    let everything = h.client.query(&OrchestrationQuery::default()).await.expect("query");
    assert_eq!(everything.states.len(), 8);
    assert!(everything.states.iter().all(|s| s.input.is_some()), "payloads included by default");
    h.stop().await;
}

/// Invalid instance ids are rejected by the client and nothing is written.
pub async fn invalid_instance_id_rejected(f: &dyn ProviderFactory) {
    let h = Harness::start(f, common_registry()).await;
    for bad in ["", "a\u{2028}b", "a\u{2029}", "tab\there", "a\u{1}", &"x".repeat(300)] {
        let r = h
            .client
            .schedule_new_orchestration("Quick", &"x", StartOptions::with_instance_id(bad))
            .await;
        assert!(matches!(r, Err(ClientError::InvalidInstanceId(_))), "{bad:?} accepted: {r:?}");
        assert!(matches!(
            h.client.raise_event(bad, "E", &1).await,
            Err(ClientError::InvalidInstanceId(_))
        ));
    }
    let all = h.client.query(&OrchestrationQuery::default()).await.expect("query");
    assert!(all.states.is_empty(), "nothing was written: {:?}", all.states);
    h.stop().await;
}
