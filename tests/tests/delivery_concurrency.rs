//! Adaptive concurrency (`docs/concurrency.md`): against an endpoint that slows down
//! sharply above 4 requests at a time, the data plane settles at a handful in flight and
//! delivers faster than a fixed limit of 16; endpoint health shows the limit.
//!
//! The figures (in flight, deliveries per second, both ways) are printed; the assertions
//! hold only the behaviour, with generous bands: the adaptive limit stays well under the
//! maximum, and adaptive is not slower than fixed.

use std::time::{Duration, Instant};

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::backends;
use sluice_testkit::planes::on_each_backend;
use sluice_testkit::planes::{PlaneOptions, Planes};
use sluice_testkit::receiver::{Receiver, Reply, by_payload_key};
use sluice_tests::delivery::*;

/// Events per run.
const EVENTS: usize = 240;
/// The endpoint answers in 10 ms up to this many requests at a time...
const KNEE: usize = 4;
/// ... and this much slower for each one beyond.
const PER_EXTRA: Duration = Duration::from_millis(50);

/// What one run saw.
struct Run {
    /// Median of the requests in flight at the receiver (at each arrival) once settled.
    median_in_flight: usize,
    /// Most requests in flight once settled.
    peak_in_flight: usize,
    deliveries_per_second: f64,
    /// The limit endpoint health showed at the end.
    health_limit: u32,
}

/// Publishes `events` events at once, each its own unary call; returns once all are acked.
async fn publish_concurrently(publisher: &Publisher, events: usize) {
    let mut publishes = tokio::task::JoinSet::new();
    for n in 0..events {
        let mut publisher = publisher.clone();
        publishes.spawn(async move {
            publish(
                &mut publisher,
                event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
            )
            .await
        });
    }
    publishes.join_all().await;
}

async fn run(planes: &mut Planes, label: &str) -> Run {
    let (_, key) = planes.workspace_with_key(label).await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::start(
        Vec::new(),
        Reply::status(200)
            .delay(Duration::from_millis(10))
            .slower_above(KNEE, PER_EXTRA),
    )
    .await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/slow"), &["*"])).await;
    planes.config_synced().await;
    let publisher = planes.publisher(&key).await;

    let started = Instant::now();
    publish_concurrently(&publisher, EVENTS).await;
    let got = receiver.wait_for(EVENTS, Duration::from_secs(120)).await;
    let elapsed = started.elapsed().as_secs_f64();

    // Settled: after the first quarter (slow start, the first decreases).
    let mut settled: Vec<usize> = got[EVENTS / 4..].iter().map(|r| r.in_flight).collect();
    settled.sort_unstable();
    let health = eventually(
        "endpoint health to show a concurrency limit",
        Duration::from_secs(20),
        async || {
            let h = log.health(&sub.id).await;
            (h.concurrency_limit > 0).then_some(h)
        },
    )
    .await;
    Run {
        median_in_flight: settled[settled.len() / 2],
        peak_in_flight: settled.last().copied().unwrap_or(0),
        deliveries_per_second: EVENTS as f64 / elapsed,
        health_limit: health.concurrency_limit,
    }
}

fn options(adaptive_concurrency: bool) -> PlaneOptions {
    PlaneOptions {
        adaptive_concurrency,
        endpoint_concurrency: 16,
        ..PlaneOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_concurrency_settles_below_the_knee_and_beats_a_fixed_limit() {
    for backend in backends() {
        let backend_name = format!("{backend:?}");
        let backend_name = backend_name
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut planes = Planes::start(&backend, options(true)).await;
        let adaptive = run(&mut planes, "Adaptive").await;
        planes.stop().await;
        let mut planes = Planes::start(&backend, options(false)).await;
        let fixed = run(&mut planes, "Fixed").await;
        planes.stop().await;

        for (name, r) in [("adaptive", &adaptive), ("fixed 16", &fixed)] {
            println!(
                "{backend_name} {name}: median {} in flight (peak {}), endpoint health limit {}, \
                 {:.1} deliveries/s",
                r.median_in_flight, r.peak_in_flight, r.health_limit, r.deliveries_per_second
            );
        }
        assert!(
            (2..=7).contains(&adaptive.median_in_flight),
            "adaptive settled at a median of {} in flight",
            adaptive.median_in_flight
        );
        assert!(
            (1..=8).contains(&adaptive.health_limit),
            "endpoint health shows {}",
            adaptive.health_limit
        );
        assert_eq!(fixed.health_limit, 16, "a fixed limit is shown as it is");
        assert!(
            fixed.median_in_flight > KNEE,
            "a fixed 16 kept {} in flight",
            fixed.median_in_flight
        );
        assert!(
            adaptive.deliveries_per_second >= fixed.deliveries_per_second,
            "adaptive {:.1}/s is slower than fixed {:.1}/s",
            adaptive.deliveries_per_second,
            fixed.deliveries_per_second
        );
    }
}

/// Events of the big workspace, whose endpoint takes one at a time.
const BIG_EVENTS: usize = 160;
/// Events of the small workspace, published once the big one's backlog waits in the
/// database.
const SMALL_EVENTS: usize = 10;

/// Fairness between workspaces (`docs/concurrency.md`): memory holds 20 deliveries, a big
/// workspace's backlog of 160 waits in the database behind an endpoint that takes one
/// request at a time, 30 ms each. A small workspace's 10 events, published after all of
/// the big one's, go mostly to the database too (memory is full); the scanner shares what
/// room frees between the two, so the small one's all arrive while most of the big one's
/// backlog still waits. Claimed oldest first, they would arrive after all 160.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_workspaces_backlog_does_not_hold_back_a_small_workspaces_events() {
    for backend in backends() {
        let planes = Planes::start(
            &backend,
            PlaneOptions {
                max_held_deliveries: 20,
                endpoint_concurrency: 1,
                adaptive_concurrency: false,
                ..PlaneOptions::default()
            },
        )
        .await;
        let big_receiver = Receiver::start(
            Vec::new(),
            Reply::status(200).delay(Duration::from_millis(30)),
        )
        .await;
        let small_receiver = Receiver::ok().await;
        let mut publishers = Vec::new();
        for (label, receiver) in [("Big", &big_receiver), ("Small", &small_receiver)] {
            let (_, key) = planes.workspace_with_key(label).await;
            let mut c = planes.clients(Some(&key)).await;
            subscribe(&mut c, webhook(&receiver.url("/hook"), &["*"])).await;
            publishers.push(planes.publisher(&key).await);
        }
        planes.config_synced().await;

        publish_concurrently(&publishers[0], BIG_EVENTS).await;
        // The small workspace's events in one stream, so they come in one write cycle:
        // more than memory has room for, they all wait in the database.
        let started = Instant::now();
        let requests: Vec<dpb::PublishStreamRequest> = (0..SMALL_EVENTS as u64)
            .map(|sequence| dpb::PublishStreamRequest {
                sequence,
                event: Some(event(
                    CONVERSATION_CREATED,
                    &format!(r#"{{"n":{sequence}}}"#),
                )),
            })
            .collect();
        let mut acks = publishers[1]
            .clone()
            .publish_stream(tokio_stream::iter(requests))
            .await
            .expect("the stream opens")
            .into_inner();
        while let Some(ack) = acks.message().await.expect("the stream answers") {
            assert!(ack.result.is_some(), "refused: {ack:?}");
        }
        small_receiver
            .wait_for(SMALL_EVENTS, Duration::from_secs(60))
            .await;
        let small_took = started.elapsed();
        let big_by_then = big_receiver.count();
        big_receiver
            .wait_for(BIG_EVENTS, Duration::from_secs(60))
            .await;
        let big_took = started.elapsed();
        println!(
            "{}: the small workspace's {SMALL_EVENTS} events arrived in {small_took:?}, when \
             the big one's endpoint had {big_by_then} of {BIG_EVENTS} (all by {big_took:?})",
            backend.label()
        );
        assert!(
            big_by_then <= BIG_EVENTS * 3 / 4,
            "the small workspace's events waited behind the big one's backlog: they arrived \
             when {big_by_then} of its {BIG_EVENTS} had"
        );
        planes.stop().await;
    }
}

/// A cycle of the writer that holds a few events of a small workspace beside many of a big
/// one commits the small one's first, on their own (`commit/writer.rs`, `take_light`). The
/// big workspace publishes 600 events at once while the small one publishes 30 of one
/// ordering key, each after the answer to the one before, to an ordered subscription: every
/// event of both is delivered once, and the small one's arrive in publish order.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_workspaces_events_committed_ahead_of_a_big_ones_arrive_once_in_order() {
    on_each_backend(PlaneOptions::default(), small_beside_big).await;
}

async fn small_beside_big(planes: &mut Planes) {
    const BIG: usize = 600;
    const SMALL: u64 = 30;
    let big_receiver = Receiver::ok().await;
    let small_receiver = Receiver::ok().await;
    let (_, big_key) = planes.workspace_with_key("Big").await;
    let mut c = planes.clients(Some(&big_key)).await;
    subscribe(&mut c, webhook(&big_receiver.url("/big"), &["*"])).await;
    let (_, small_key) = planes.workspace_with_key("Small").await;
    let mut c = planes.clients(Some(&small_key)).await;
    let ordered = pb::Subscription {
        ordered_delivery: true,
        ..webhook(&small_receiver.url("/small"), &["*"])
    };
    subscribe(&mut c, ordered).await;
    planes.config_synced().await;

    let big = planes.publisher(&big_key).await;
    let big_publishes = tokio::spawn(async move { publish_concurrently(&big, BIG).await });
    let mut small = planes.publisher(&small_key).await;
    for n in 0..SMALL {
        let request = dpb::PublishRequest {
            ordering_key: "cnv_1".to_owned(),
            ..event(
                CONVERSATION_CREATED,
                &format!(r#"{{"key":"cnv_1","n":{n}}}"#),
            )
        };
        publish(&mut small, request).await;
    }
    big_publishes.await.expect("the big workspace publishes");

    let got = small_receiver
        .wait_for(SMALL as usize, Duration::from_secs(60))
        .await;
    let sequence: Vec<u64> = by_payload_key(&got, "key", "n")
        .remove("cnv_1")
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        sequence,
        (0..SMALL).collect::<Vec<_>>(),
        "the small workspace's events"
    );
    let got = big_receiver.wait_for(BIG, Duration::from_secs(60)).await;
    let distinct: std::collections::HashSet<&[u8]> = got.iter().map(|r| r.body.as_ref()).collect();
    assert_eq!(
        (got.len(), distinct.len()),
        (BIG, BIG),
        "the big workspace's events, once each"
    );
}
