//! `--workload fairness`: does a workspace that publishes far more than another delay it?
//!
//! Two workspaces, each with `--subscriptions` subscriptions on the bench's receiver: a big
//! one (A) and a small one (B). First B alone publishes `--small-events` events at
//! `--small-rate` events per second; then A publishes `--events` as fast as acks return
//! (`--concurrency` in flight) while B, starting once A has run for a second, publishes
//! its events again at the same rate. It prints B's publish→arrival latency in both runs
//! (p50, p95, p99, max) and the ratio of the p99s, plus A's delivery rate. It waits for
//! every delivery of both before it stops.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::publisher::{self, PublishOutcome, PublishPlan, PublishProgress};
use super::receiver::RunningReceiver;
use super::report::{Percentiles, deliveries, percentiles};
use super::{BenchArgs, Planes};

/// B's figures in one run.
#[derive(Debug, Serialize)]
pub(crate) struct SmallRun {
    /// Deliveries of B that arrived answered 200.
    pub(crate) delivered: u64,
    /// Request sent to first arrival, ms.
    pub(crate) publish_to_arrival_ms: Option<Percentiles>,
}

/// The fairness workload's result.
#[derive(Debug, Serialize)]
pub(crate) struct FairnessReport {
    pub(crate) big_events: u64,
    pub(crate) small_events: u64,
    pub(crate) small_rate: f64,
    pub(crate) subscriptions: u32,
    /// B publishing alone.
    pub(crate) small_alone: SmallRun,
    /// B publishing while A publishes.
    pub(crate) small_with_big: SmallRun,
    /// p99 with A over p99 alone.
    pub(crate) p99_ratio: Option<f64>,
    /// A's deliveries per second, from its first publish to its last delivery.
    pub(crate) big_deliveries_per_second: Option<f64>,
    /// Whether some delivery did not arrive before --timeout.
    pub(crate) timed_out: bool,
}

impl FairnessReport {
    pub(crate) fn table(&self) -> String {
        let row = |name: &str, run: &SmallRun| match run.publish_to_arrival_ms {
            Some(p) => format!(
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   ({} delivered)\n",
                p.p50, p.p95, p.p99, p.max, run.delivered
            ),
            None => format!("{name:<22} (nothing arrived)\n"),
        };
        let mut out = format!(
            "sluice bench --workload fairness: A publishes {} events (closed loop) while B \
             publishes {} at {}/s; {} subscription(s) each\n\n\
             B publish->arrival, ms     p50       p95       p99       max\n",
            self.big_events, self.small_events, self.small_rate, self.subscriptions
        );
        out.push_str(&row("B alone", &self.small_alone));
        out.push_str(&row("B while A publishes", &self.small_with_big));
        if let Some(ratio) = self.p99_ratio {
            out.push_str(&format!("\nB's p99 with A / alone: {ratio:.2}x\n"));
        }
        if let Some(rate) = self.big_deliveries_per_second {
            out.push_str(&format!("A's deliveries/s:       {rate:.0}\n"));
        }
        if self.timed_out {
            out.push_str("TIMED OUT: some deliveries did not arrive\n");
        }
        out
    }
}

/// One workspace of the workload.
pub(crate) struct Tenant {
    pub(crate) api_key: String,
}

/// Runs the workload on warm planes: `big` and `small` are set up and warmed.
pub(crate) async fn run(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    planes: &mut Planes,
    data: &[String],
    big: &Tenant,
    small: &Tenant,
    payload: String,
) -> anyhow::Result<FairnessReport> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let small_plan = || PublishPlan {
        events: args.small_events,
        concurrency: args.concurrency,
        rate: Some(args.small_rate),
        payload_json: payload.clone(),
        api_key: small.api_key.clone(),
        idempotency_keys: args.idempotency_keys,
    };
    let mut timed_out = false;

    // B alone.
    let alone = publisher::publish_spread(data, small_plan(), Default::default(), deadline).await?;
    timed_out |= !wait_delivered(receiver, planes, &alone, args, deadline).await?;
    let small_alone = small_run(receiver, &alone, args);

    // A flat out, B at its pace once A has run for a second.
    let big_plan = PublishPlan {
        events: args.events,
        concurrency: args.concurrency,
        rate: None,
        payload_json: payload.clone(),
        api_key: big.api_key.clone(),
        idempotency_keys: args.idempotency_keys,
    };
    let channels = data.to_vec();
    let big_task = tokio::spawn(async move {
        publisher::publish_spread(
            &channels,
            big_plan,
            std::sync::Arc::new(PublishProgress::default()),
            deadline,
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with = publisher::publish_spread(data, small_plan(), Default::default(), deadline).await?;
    let big_outcome = big_task.await??;
    if let Some(e) = big_outcome
        .stream_error
        .as_ref()
        .or(with.stream_error.as_ref())
    {
        bail!("publishing failed: {e}");
    }
    timed_out |= !wait_delivered(receiver, planes, &with, args, deadline).await?;
    timed_out |= !wait_delivered(receiver, planes, &big_outcome, args, deadline).await?;
    let small_with_big = small_run(receiver, &with, args);
    let big = deliveries(&receiver.state, &big_outcome, args.subscriptions);
    let big_deliveries_per_second = big
        .last_delivery
        .map(|last| {
            last.saturating_duration_since(big_outcome.started)
                .as_secs_f64()
        })
        .filter(|s| *s > 0.0)
        .map(|s| big.delivered as f64 / s);
    let p99_ratio = small_alone
        .publish_to_arrival_ms
        .zip(small_with_big.publish_to_arrival_ms)
        .filter(|(alone, _)| alone.p99 > 0.0)
        .map(|(alone, with)| with.p99 / alone.p99);
    Ok(FairnessReport {
        big_events: args.events,
        small_events: args.small_events,
        small_rate: args.small_rate,
        subscriptions: args.subscriptions,
        small_alone,
        small_with_big,
        p99_ratio,
        big_deliveries_per_second,
        timed_out,
    })
}

fn small_run(receiver: &RunningReceiver, outcome: &PublishOutcome, args: &BenchArgs) -> SmallRun {
    let mut d = deliveries(&receiver.state, outcome, args.subscriptions);
    SmallRun {
        delivered: d.delivered,
        publish_to_arrival_ms: percentiles(&mut d.end_to_end_us),
    }
}

/// Waits until every delivery `outcome` was promised arrived; false at `deadline`.
async fn wait_delivered(
    receiver: &RunningReceiver,
    planes: &mut Planes,
    outcome: &PublishOutcome,
    args: &BenchArgs,
    deadline: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    loop {
        let d = deliveries(&receiver.state, outcome, args.subscriptions);
        if d.attempted >= outcome.expected_deliveries {
            return Ok(true);
        }
        planes.check_alive()?;
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        // The join above walks every arrival: look again after more may have come,
        // less often the longer the wait.
        let pause =
            (started.elapsed() / 20).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let now = receiver.state.counters().distinct;
        receiver.state.wait_for_distinct(now + 1, pause).await;
    }
}
