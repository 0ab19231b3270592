//! `--workload fairness`: does a workspace that publishes far more than another delay it?
//!
//! Two workspaces, each with `--subscriptions` subscriptions on the bench's receiver: a big
//! one (A) and a small one (B). First B alone publishes `--small-events` events at
//! `--small-rate` events per second; then A publishes `--events` as fast as acks return
//! (`--concurrency` in flight), or at `--rate` events per second, while B, starting once A
//! has run for a second, publishes its events again at the same rate. It prints B's
//! publish→arrival and publish→ack latencies (p50, p95, p99, max) alone and with A, and
//! the ratio of the p99s, plus A's delivery rate. "With A" counts only B's events sent
//! while A was at work, from A's first publish to A's last delivery (how many is printed):
//! the ones sent after would dilute the figure. It waits for every delivery of both
//! before it stops.

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
    /// B's events counted (with A: those sent while A was at work).
    pub(crate) events: u64,
    /// Deliveries of B that arrived answered 200.
    pub(crate) delivered: u64,
    /// Request sent to first arrival, ms.
    pub(crate) publish_to_arrival_ms: Option<Percentiles>,
    /// Request sent to its ack (the event durable), ms: the writer's part of the above.
    pub(crate) publish_to_ack_ms: Option<Percentiles>,
}

/// The fairness workload's result.
#[derive(Debug, Serialize)]
pub(crate) struct FairnessReport {
    pub(crate) big_events: u64,
    pub(crate) small_events: u64,
    pub(crate) small_rate: f64,
    /// A's publish rate, events per second; `None`: closed loop.
    pub(crate) big_rate: Option<f64>,
    /// A's own publish quota, events per second, if it was given one.
    pub(crate) big_publish_quota: Option<u32>,
    pub(crate) subscriptions: u32,
    /// B publishing alone.
    pub(crate) small_alone: SmallRun,
    /// B's events sent while A was at work (first publish to last delivery).
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
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   ({} events, {} delivered)\n",
                p.p50, p.p95, p.p99, p.max, run.events, run.delivered
            ),
            None => format!("{name:<22} (nothing arrived)\n"),
        };
        let ack_row = |name: &str, run: &SmallRun| match run.publish_to_ack_ms {
            Some(p) => format!(
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
                p.p50, p.p95, p.p99, p.max
            ),
            None => format!("{name:<22} (nothing acked)\n"),
        };
        let mut pace = match self.big_rate {
            Some(rate) => format!("at {rate}/s"),
            None => "closed loop".to_owned(),
        };
        if let Some(quota) = self.big_publish_quota {
            pace.push_str(&format!(", its own quota {quota}/s"));
        }
        let mut out = format!(
            "sluice bench --workload fairness: A publishes {} events ({pace}) while B \
             publishes {} at {}/s; {} subscription(s) each\n\n\
             B publish->arrival, ms     p50       p95       p99       max\n",
            self.big_events, self.small_events, self.small_rate, self.subscriptions
        );
        out.push_str(&row("B alone", &self.small_alone));
        out.push_str(&row("B while A runs", &self.small_with_big));
        out.push_str("\nB publish->ack, ms         p50       p95       p99       max\n");
        out.push_str(&ack_row("B alone", &self.small_alone));
        out.push_str(&ack_row("B while A runs", &self.small_with_big));
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
    let small_alone = small_run(receiver, &alone, args, None);

    // A flat out, B at its pace once A has run for a second.
    let big_plan = PublishPlan {
        events: args.events,
        concurrency: args.concurrency,
        rate: args.rate,
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
    let big = deliveries(&receiver.state, &big_outcome, args.subscriptions);
    // A is at work from its first publish until its last delivery (a backlog it left
    // behind is drained after its last publish).
    let big_until = big
        .last_delivery
        .map_or(big_outcome.finished, |last| last.max(big_outcome.finished));
    let small_with_big = small_run(
        receiver,
        &with,
        args,
        Some((big_outcome.started, big_until)),
    );
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
        big_rate: args.rate,
        big_publish_quota: args.big_publish_quota,
        subscriptions: args.subscriptions,
        small_alone,
        small_with_big,
        p99_ratio,
        big_deliveries_per_second,
        timed_out,
    })
}

/// B's figures in `outcome`; with `window`, only of the events sent within it.
fn small_run(
    receiver: &RunningReceiver,
    outcome: &PublishOutcome,
    args: &BenchArgs,
    window: Option<(Instant, Instant)>,
) -> SmallRun {
    let counted = |sent: &Option<Instant>| match (sent, window) {
        (Some(sent), Some((from, to))) => (from..=to).contains(sent),
        (sent, _) => sent.is_some(),
    };
    // Events outside the window lose their message id, so the join with arrivals skips them.
    let within = PublishOutcome {
        message_ids: outcome
            .message_ids
            .iter()
            .zip(&outcome.sent_at)
            .map(|(id, sent)| id.clone().filter(|_| counted(sent)))
            .collect(),
        sent_at: outcome.sent_at.clone(),
        acked_at: outcome.acked_at.clone(),
        started: outcome.started,
        finished: outcome.finished,
        accepted: 0,
        expected_deliveries: 0,
        errors: 0,
        first_error: None,
        stream_error: None,
    };
    let mut d = deliveries(&receiver.state, &within, args.subscriptions);
    let mut acks: Vec<u64> = outcome
        .sent_at
        .iter()
        .zip(&outcome.acked_at)
        .filter(|(sent, _)| counted(sent))
        .filter_map(|(sent, acked)| {
            let waited = (*acked)?.saturating_duration_since((*sent)?);
            u64::try_from(waited.as_micros()).ok()
        })
        .collect();
    SmallRun {
        events: outcome.sent_at.iter().filter(|sent| counted(sent)).count() as u64,
        delivered: d.delivered,
        publish_to_arrival_ms: percentiles(&mut d.end_to_end_us),
        publish_to_ack_ms: percentiles(&mut acks),
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
