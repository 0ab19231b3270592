//! Adaptive concurrency (`docs/concurrency.md`): against an endpoint that slows down
//! sharply above 4 requests at a time, the data plane settles at a handful in flight and
//! delivers faster than a fixed limit of 16; endpoint health shows the limit.
//!
//! The figures (in flight, deliveries per second, both ways) are printed; the assertions
//! hold only the behaviour, with generous bands: the adaptive limit stays well under the
//! maximum, and adaptive is not slower than fixed.

use std::time::{Duration, Instant};

use sluice_testkit::backends;
use sluice_testkit::planes::{PlaneOptions, Planes};
use sluice_testkit::receiver::{Receiver, Reply};
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
    let mut publishes = tokio::task::JoinSet::new();
    for n in 0..EVENTS {
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
