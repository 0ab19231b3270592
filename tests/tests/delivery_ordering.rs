//! Ordered delivery per key (docs/ordering.md), through both planes and a real receiver:
//! events with an ordering key reach a subscription with `ordered_delivery` in publish
//! order, one at a time per key, through random failures and retries; a key whose head
//! keeps failing holds back only itself, and moves on when the head fails for good.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply, by_payload_key};
use sluice_tests::delivery::*;
use tokio::task::JoinSet;

/// How long a whole run may take on a busy machine.
const RUN: Duration = Duration::from_secs(240);

/// A subscription to `receiver` that orders events by key.
fn ordered(receiver: &Receiver) -> pb::Subscription {
    pb::Subscription {
        ordered_delivery: true,
        ..webhook(&receiver.url("/ordered"), &["conversation.*"])
    }
}

/// Event `n` of `key`, with both in its payload for the receiver to check.
fn keyed(key: &str, n: usize, extra: &str) -> dpb::PublishRequest {
    dpb::PublishRequest {
        ordering_key: key.to_owned(),
        ..event(
            CONVERSATION_CREATED,
            &format!(r#"{{"key":"{key}","n":{n}{extra}}}"#),
        )
    }
}

/// Publishes `per_key` events of each key, each key's in order (each publish waits for the
/// previous one's answer), the keys side by side; event `n` through
/// `publishers[n % publishers.len()]` (data-plane replicas take turns).
async fn publish_keys(publishers: &[Publisher], keys: &[String], per_key: usize) {
    let mut tasks = JoinSet::new();
    for key in keys {
        let (mut publishers, key) = (publishers.to_vec(), key.clone());
        tasks.spawn(async move {
            for n in 0..per_key {
                let turn = n % publishers.len();
                publish(&mut publishers[turn], keyed(&key, n, "")).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Asserts that `requests` (one key's, in arrival order) took its events one at a time in
/// order: the first is event 0; each next request repeats a failed one (a retry) or, once
/// the one before was accepted, is the next event; and every event up to `count` was
/// accepted.
fn assert_one_at_a_time_in_order(key: &str, requests: &[(u64, u16)], count: u64) {
    let accepted = |status: u16| (200..300).contains(&status);
    let mut previous: Option<(u64, u16)> = None;
    for &(n, status) in requests {
        match previous {
            None => assert_eq!(n, 0, "{key}: the first request is event 0: {requests:?}"),
            Some((before, before_status)) if accepted(before_status) => assert_eq!(
                n,
                before + 1,
                "{key}: after event {before} was accepted comes the next: {requests:?}"
            ),
            Some((before, _)) => assert_eq!(
                n, before,
                "{key}: after a failure of event {before} comes its retry: {requests:?}"
            ),
        }
        previous = Some((n, status));
    }
    let sequence: Vec<u64> = requests
        .iter()
        .filter(|(_, status)| accepted(*status))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        sequence,
        (0..count).collect::<Vec<_>>(),
        "{key}: the accepted sequence"
    );
}

/// Ten attempts, 10 ms apart: 0.2^10 that an event fails for good.
fn ten_quick_attempts() -> PlaneOptions {
    PlaneOptions {
        retry_schedule: format!("0s{}", ",10ms".repeat(9)),
        circuit_breaker_failures: 0,
        ..PlaneOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_arrives_in_publish_order_through_random_failures() {
    on_each_backend(ten_quick_attempts(), random_failures).await;
}

async fn random_failures(planes: &mut Planes) {
    const KEYS: usize = 20;
    const PER_KEY: usize = 200;
    const UNKEYED: usize = 20;
    let (_, key) = planes.workspace_with_key("Ordered").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver =
        Receiver::start(Vec::new(), Reply::status(200).failing_at_random(0.2, 500)).await;
    let (sub, _) = subscribe(&mut c, ordered(&receiver)).await;
    assert!(sub.ordered_delivery, "{sub:?}");
    planes.config_synced().await;
    let publisher = planes.publisher(&key).await;

    let keys: Vec<String> = (0..KEYS).map(|k| format!("conv_{k}")).collect();
    let started = Instant::now();
    let unkeyed = {
        let mut publisher = publisher.clone();
        tokio::spawn(async move {
            for n in 0..UNKEYED {
                publish(
                    &mut publisher,
                    event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
                )
                .await;
            }
        })
    };
    publish_keys(std::slice::from_ref(&publisher), &keys, PER_KEY).await;
    unkeyed.await.unwrap();
    let published = started.elapsed();
    let total = KEYS * PER_KEY + UNKEYED;
    assert!(
        receiver.wait_accepted(total, RUN).await,
        "{} of {total} events accepted within {RUN:?}",
        receiver.accepted()
    );
    let received = receiver.received();
    eprintln!(
        "ordering: {KEYS} keys x {PER_KEY} events (+{UNKEYED} without a key) in {:?} \
         (published in {published:?}), {} requests for {total} events",
        started.elapsed(),
        received.len()
    );
    let by_key = by_payload_key(&received, "key", "n");
    assert_eq!(by_key.len(), KEYS, "{:?}", by_key.keys());
    for (key, requests) in &by_key {
        assert_one_at_a_time_in_order(key, requests, PER_KEY as u64);
    }
    assert!(
        received.len() > total,
        "20% of the requests failed, so some were retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_head_holds_back_only_its_key_and_the_key_moves_on_when_it_fails_for_good() {
    let options = PlaneOptions {
        // Fifty attempts over about fifteen seconds: far longer than the other keys take,
        // even on a busy machine.
        retry_schedule: format!("0s{}", ",300ms".repeat(49)),
        circuit_breaker_failures: 0,
        ..PlaneOptions::default()
    };
    on_each_backend(options, stuck_head).await;
}

async fn stuck_head(planes: &mut Planes) {
    const KEYS: usize = 19;
    const PER_KEY: usize = 10;
    const STUCK: usize = 5;
    const ATTEMPTS: usize = 50;
    let (_, key) = planes.workspace_with_key("Stuck").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::ok().await;
    receiver.answer_containing(r#""stuck":true"#, Reply::status(503));
    let (sub, _) = subscribe(&mut c, ordered(&receiver)).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    // Without a stuck key: how long the other keys take.
    let baseline_keys: Vec<String> = (0..KEYS).map(|k| format!("free_{k}")).collect();
    let started = Instant::now();
    publish_keys(std::slice::from_ref(&publisher), &baseline_keys, PER_KEY).await;
    assert!(receiver.wait_accepted(KEYS * PER_KEY, RUN).await);
    let without = started.elapsed();

    // A key whose head keeps failing, with events behind it.
    let head = publish(&mut publisher, keyed("stuck", 0, r#","stuck":true"#)).await;
    for n in 1..STUCK {
        publish(&mut publisher, keyed("stuck", n, "")).await;
    }
    receiver
        .wait_until(RUN, |got| {
            by_payload_key(got, "key", "n")
                .get("stuck")
                .is_some_and(|r| !r.is_empty())
        })
        .await
        .unwrap();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("busy_{k}")).collect();
    let started = Instant::now();
    publish_keys(std::slice::from_ref(&publisher), &keys, PER_KEY).await;
    assert!(receiver.wait_accepted(2 * KEYS * PER_KEY, RUN).await);
    let with = started.elapsed();
    let received = receiver.received();
    let by_key = by_payload_key(&received, "key", "n");
    let stuck = &by_key["stuck"];
    eprintln!(
        "ordering: {KEYS} keys x {PER_KEY} events took {without:?} alone and {with:?} beside \
         a key whose head kept failing ({} attempts of it so far)",
        stuck.len()
    );
    // The other keys completed while the head was still failing: none of the events
    // behind it went, and it has attempts left.
    assert!(
        stuck.iter().all(|&(n, status)| n == 0 && status == 503),
        "{stuck:?}"
    );
    assert!(
        stuck.len() < ATTEMPTS,
        "the head still had attempts left: {stuck:?}"
    );
    for key in &keys {
        assert_one_at_a_time_in_order(key, &by_key[key], PER_KEY as u64);
    }

    // Its last attempt fails, and the key moves on: the events behind it go, in order.
    assert!(
        receiver
            .wait_accepted(2 * KEYS * PER_KEY + STUCK - 1, RUN)
            .await
    );
    let received = receiver.received();
    let stuck = &by_payload_key(&received, "key", "n")["stuck"];
    assert_eq!(stuck.len(), ATTEMPTS + STUCK - 1, "{stuck:?}");
    assert!(
        stuck[..ATTEMPTS]
            .iter()
            .all(|&(n, status)| n == 0 && status == 503)
    );
    let rest: Vec<u64> = stuck[ATTEMPTS..].iter().map(|(n, _)| *n).collect();
    assert_eq!(rest, (1..STUCK as u64).collect::<Vec<_>>());

    // The log shows the key, and says the key moved on: the head failed after its last
    // attempt, which says so.
    let message = log
        .deliveries_client()
        .get_message(pb::GetMessageRequest {
            message_id: head.message_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(message.ordering_key, "stuck", "{message:?}");
    let failed = log
        .delivery_with_status(&head.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    assert_eq!(failed.attempt_count as usize, ATTEMPTS, "{failed:?}");
    let attempts = log.attempts_of(&head.message_id).await;
    let last = attempts.iter().max_by_key(|a| a.attempt_number).unwrap();
    assert_eq!(last.attempt_number as usize, ATTEMPTS);
    assert!(
        last.error_message.contains("ordering key moves on"),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_data_plane_replicas_keep_each_key_in_order() {
    on_each_backend(ten_quick_attempts(), two_replicas).await;
}

async fn two_replicas(planes: &mut Planes) {
    const KEYS: usize = 10;
    const PER_KEY: usize = 100;
    if planes.data_db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        eprintln!("SKIPPING the SQLite run: a SQLite file belongs to one data plane");
        return;
    }
    let replica = planes.data_replica().await;
    let (_, key) = planes.workspace_with_key("Replicas").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver =
        Receiver::start(Vec::new(), Reply::status(200).failing_at_random(0.2, 500)).await;
    subscribe(&mut c, ordered(&receiver)).await;
    planes.config_synced().await;
    replica
        .wait_for_revision(planes.latest_revision().await)
        .await;

    // Each key's events alternate between the replicas: each commits some, and both
    // claim heads.
    let publishers = [
        planes.publisher(&key).await,
        sluice_testkit::cluster::ingest_client(replica.addr, &key),
    ];
    let keys: Vec<String> = (0..KEYS).map(|k| format!("conv_{k}")).collect();
    let started = Instant::now();
    publish_keys(&publishers, &keys, PER_KEY).await;
    assert!(
        receiver.wait_accepted(KEYS * PER_KEY, RUN).await,
        "{} of {} accepted",
        receiver.accepted(),
        KEYS * PER_KEY
    );
    let received = receiver.received();
    eprintln!(
        "ordering: {KEYS} keys x {PER_KEY} events through two replicas in {:?}, {} requests",
        started.elapsed(),
        received.len()
    );
    for (key, requests) in &by_payload_key(&received, "key", "n") {
        assert_one_at_a_time_in_order(key, requests, PER_KEY as u64);
    }
    replica.stop().await;
}
