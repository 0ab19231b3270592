//! The bench's results: computed from the publisher's and the receiver's records after the
//! run, printed as a table or as one JSON object.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::baseline::Baseline;
use super::publisher::PublishOutcome;
use super::receiver::Receiver;

/// Percentiles of a latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// Nearest-rank percentiles of `micros` (sorted here), in milliseconds; `None` when empty.
pub(crate) fn percentiles(micros: &mut [u64]) -> Option<Percentiles> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * micros.len() as f64).ceil() as usize;
        micros[rank.clamp(1, micros.len()) - 1] as f64 / 1000.0
    };
    Some(Percentiles {
        p50: at(50.0),
        p95: at(95.0),
        p99: at(99.0),
        max: at(100.0),
    })
}

/// What the receiver got of the bench's events, joined with the publisher's acks.
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    /// (message, subscription) pairs answered 200 at least once.
    pub(crate) delivered: u64,
    /// Pairs that arrived at least once, whatever the answer.
    pub(crate) attempted: u64,
    /// Arrivals of a pair after it was answered 200.
    pub(crate) duplicates: u64,
    /// Pairs answered only 500 (on purpose) so far.
    pub(crate) failed_by_design: u64,
    /// Ack to first arrival of each pair, in microseconds.
    pub(crate) latencies_us: Vec<u64>,
    /// Request sent to first arrival of each pair, in microseconds.
    pub(crate) end_to_end_us: Vec<u64>,
    /// Pairs whose first arrival came before the publisher saw the ack.
    pub(crate) before_ack: u64,
    /// The last first-200 of a pair.
    pub(crate) last_delivery: Option<Instant>,
}

/// Joins the receiver's arrivals with the acks. Arrivals of messages the bench did not
/// publish in the measured run (the warm-up) and of unknown subscriptions are left out.
pub(crate) fn deliveries(
    receiver: &Receiver,
    publish: &PublishOutcome,
    subscriptions: u32,
) -> Deliveries {
    // Per message id: when its request was sent (if known) and when its ack came.
    let acks: HashMap<&str, (Option<Instant>, Instant)> = publish
        .message_ids
        .iter()
        .zip(publish.acked_at.iter().zip(&publish.sent_at))
        .filter_map(|(id, (acked, sent))| Some((id.as_deref()?, (*sent, (*acked)?))))
        .collect();
    let mut d = Deliveries::default();
    receiver.for_each(|id, pairs| {
        let Some(&(sent, acked)) = acks.get(id) else {
            return;
        };
        for pair in pairs.iter().filter(|p| p.sub < subscriptions) {
            d.attempted += 1;
            d.duplicates += u64::from(pair.after_ok);
            match pair.first_ok {
                Some(ok) => {
                    d.delivered += 1;
                    d.last_delivery = d.last_delivery.max(Some(ok));
                }
                None => d.failed_by_design += 1,
            }
            if pair.first < acked {
                d.before_ack += 1;
            }
            let micros = |from: Instant| {
                u64::try_from(pair.first.saturating_duration_since(from).as_micros())
                    .unwrap_or(u64::MAX)
            };
            d.latencies_us.push(micros(acked));
            if let Some(sent) = sent {
                d.end_to_end_us.push(micros(sent));
            }
        }
    });
    d
}

/// The bench's result.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Events the bench published.
    pub(crate) events: u64,
    /// Subscriptions each event went to.
    pub(crate) subscriptions: u32,
    /// Payload size in bytes.
    pub(crate) payload_bytes: usize,
    /// Requests in flight on the stream at most.
    pub(crate) concurrency: usize,
    /// Whether every event carried an idempotency key (`--idempotency-keys`).
    pub(crate) idempotency_keys: bool,
    /// Open-loop rate in events/s; null for closed loop.
    pub(crate) rate: Option<f64>,
    /// Receiver settings.
    pub(crate) receiver_delay_ms: u64,
    pub(crate) receiver_failure_rate: f64,
    /// `sqlite`, `postgres (host:port)`, or `unknown` for planes the bench did not start.
    pub(crate) backend: String,
    /// Data-plane processes the events were spread over.
    pub(crate) data_replicas: usize,
    /// Events accepted by the data plane.
    pub(crate) accepted: u64,
    /// Events refused (per-event errors in the stream's answers).
    pub(crate) publish_errors: u64,
    /// The first refusal, for people.
    pub(crate) first_publish_error: Option<String>,
    /// When the stream itself failed or ended early.
    pub(crate) stream_error: Option<String>,
    /// Deliveries the data plane said it would make (sum of delivery_count).
    pub(crate) expected_deliveries: u64,
    /// Distinct (event, subscription) deliveries answered 200.
    pub(crate) deliveries: u64,
    /// Distinct (event, subscription) pairs that arrived, whatever the answer.
    pub(crate) attempted: u64,
    /// Pairs answered only 500 (by --receiver-failure-rate), not yet retried successfully.
    pub(crate) failed_by_design: u64,
    /// Requests that reached the receiver during the measured run (every attempt).
    pub(crate) receiver_requests: u64,
    /// Requests the receiver answered 500 on purpose.
    pub(crate) receiver_500s: u64,
    /// Arrivals of a delivery after it had been answered 200 (same webhook-id, same
    /// subscription).
    pub(crate) duplicates: u64,
    /// Requests without a webhook-id header.
    pub(crate) missing_webhook_id: u64,
    /// Whether the bench stopped waiting at --timeout.
    pub(crate) timed_out: bool,
    /// Seconds from the first request to the last ack.
    pub(crate) publish_seconds: f64,
    /// Events / publish_seconds.
    pub(crate) publish_acks_per_second: f64,
    /// Seconds from the first request to the last delivery.
    pub(crate) delivery_seconds: Option<f64>,
    /// Deliveries / delivery_seconds.
    pub(crate) deliveries_per_second: Option<f64>,
    /// Request sent to its ack, ms.
    pub(crate) publish_ack_latency_ms: Option<Percentiles>,
    /// Ack to the first arrival at the receiver, ms (0 when the arrival came first).
    pub(crate) ack_to_arrival_latency_ms: Option<Percentiles>,
    /// Request sent to the first arrival at the receiver, ms: end to end.
    pub(crate) publish_to_arrival_latency_ms: Option<Percentiles>,
    /// Arrivals that came before the publisher saw their ack.
    pub(crate) arrivals_before_ack: u64,
    /// CPU seconds (user + system) of the planes' process(es) during the measured run.
    pub(crate) planes_cpu_seconds: Option<f64>,
    /// planes_cpu_seconds per 1,000 deliveries.
    pub(crate) planes_cpu_seconds_per_1000_deliveries: Option<f64>,
    /// CPU seconds of the bench's own process (publisher and receiver) during the run: it
    /// shares the machine with the planes.
    pub(crate) bench_cpu_seconds: Option<f64>,
    /// CPU seconds per 1,000 deliveries of the PostgreSQL server (every process named
    /// `postgres` on this machine), when the planes the bench started use one on this
    /// machine: with the planes' figure, the CPU a delivery costs in all.
    pub(crate) database_cpu_seconds_per_1000_deliveries: Option<f64>,
    /// Peak RSS (VmHWM) of the planes' process(es), MiB.
    pub(crate) planes_peak_rss_mib: Option<f64>,
    /// The machine's CPU time its hypervisor gave to other guests during the run, percent
    /// (steal in `/proc/stat`). Runs on a busy host are slower and cost more CPU per
    /// delivery: compare figures only between runs with similar steal.
    pub(crate) machine_steal_percent: Option<f64>,
    /// With --with-http-baseline: loopback POSTs per second just before and just after the
    /// run.
    pub(crate) http_baseline_posts_per_second: Option<[f64; 2]>,
    /// With --with-http-baseline: CPU of one loopback POST (client and receiver), µs, the
    /// mean of the two baselines.
    pub(crate) http_baseline_cpu_us_per_post: Option<f64>,
    /// The planes' CPU per delivery over `http_baseline_cpu_us_per_post`.
    pub(crate) planes_cpu_per_delivery_in_posts: Option<f64>,
}

/// CPU per delivery (given in seconds per 1,000 deliveries, that is ms per delivery) as a
/// multiple of the CPU of one loopback POST, in µs.
fn in_posts(seconds_per_1000: Option<f64>, post_us: Option<f64>) -> Option<f64> {
    let (per_1000, post) = seconds_per_1000.zip(post_us)?;
    (post > 0.0).then(|| per_1000 * 1000.0 / post)
}

/// The report of a `--http-baseline` run.
pub(crate) fn baseline_table(baseline: &Baseline) -> String {
    {
        let cpu = baseline
            .cpu_us_per_post
            .map_or_else(|| "unknown".to_owned(), |us| format!("{us:.1} µs"));
        format!(
            "sluice bench --http-baseline: {} POSTs of {} bytes, {} in flight, reqwest to the \
             bench's receiver on loopback\n  POST/s                 {:.0}  ({:.2} s)\n  \
             CPU per POST           {cpu} (client and receiver)\n  VM steal               {}\n",
            baseline.posts,
            baseline.payload_bytes,
            baseline.concurrency,
            baseline.posts_per_second,
            baseline.seconds,
            steal_row(baseline.machine_steal_percent)
        )
    }
}

/// The table's line on steal.
fn steal_row(steal: Option<f64>) -> String {
    steal.map_or_else(
        || "n/a".to_owned(),
        |s| format!("{s:.1}% of the machine's CPU time went to other VMs on the host"),
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

fn lat(p: Option<Percentiles>) -> String {
    p.map_or_else(
        || "n/a".to_owned(),
        |p| {
            format!(
                "p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
                p.p50, p.p95, p.p99, p.max
            )
        },
    )
}

impl Report {
    /// Takes in the HTTP baselines measured just before and just after the run.
    pub(crate) fn add_http_baseline(&mut self, before: &Baseline, after: &Baseline) {
        self.http_baseline_posts_per_second =
            Some([before.posts_per_second, after.posts_per_second]);
        self.http_baseline_cpu_us_per_post = before
            .cpu_us_per_post
            .zip(after.cpu_us_per_post)
            .map(|(b, a)| (b + a) / 2.0);
        self.planes_cpu_per_delivery_in_posts = in_posts(
            self.planes_cpu_seconds_per_1000_deliveries,
            self.http_baseline_cpu_us_per_post,
        );
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} events/s"),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(
            t,
            "\nsluice bench: {} events x {} subscription(s), {}-byte payloads, {} in flight ({mode}), backend {}",
            self.events, self.subscriptions, self.payload_bytes, self.concurrency, self.backend
        );
        if self.idempotency_keys {
            let _ = writeln!(t, "every event with an idempotency key");
        }
        if self.data_replicas > 1 {
            let _ = writeln!(
                t,
                "spread over {} data planes, one stream each (CPU summed over every plane process)",
                self.data_replicas
            );
        }
        if self.receiver_delay_ms > 0 || self.receiver_failure_rate > 0.0 {
            let _ = writeln!(
                t,
                "receiver: {} ms delay, {:.1}% answered 500",
                self.receiver_delay_ms,
                self.receiver_failure_rate * 100.0
            );
        }
        let mut rows: Vec<(&str, String)> = vec![
            (
                "events accepted",
                format!(
                    "{} of {} ({} refused)",
                    self.accepted, self.events, self.publish_errors
                ),
            ),
            (
                "deliveries received",
                format!(
                    "{} of {} expected ({} duplicates, {} failed by design)",
                    self.deliveries,
                    self.expected_deliveries,
                    self.duplicates,
                    self.failed_by_design
                ),
            ),
            (
                "publish acks/s",
                format!(
                    "{:.0}  ({:.2} s)",
                    self.publish_acks_per_second, self.publish_seconds
                ),
            ),
            (
                "deliveries/s",
                format!(
                    "{}  ({} s, first publish to last arrival)",
                    opt(self.deliveries_per_second, 0),
                    opt(self.delivery_seconds, 2)
                ),
            ),
            ("publish -> ack ms", lat(self.publish_ack_latency_ms)),
            ("ack -> arrival ms", lat(self.ack_to_arrival_latency_ms)),
            (
                "publish -> arrival ms",
                lat(self.publish_to_arrival_latency_ms),
            ),
            (
                "planes CPU",
                match (
                    self.planes_cpu_seconds_per_1000_deliveries,
                    self.planes_cpu_seconds,
                ) {
                    (Some(per), Some(total)) => {
                        format!("{:.1} µs per delivery ({total:.2} s in all)", per * 1000.0)
                    }
                    (None, Some(total)) => format!("{total:.2} s"),
                    _ => "n/a (planes not started by the bench; give --pid)".to_owned(),
                },
            ),
            (
                "bench's own CPU",
                opt(self.bench_cpu_seconds, 2) + " s (publisher and receiver)",
            ),
            (
                "planes peak RSS",
                self.planes_peak_rss_mib
                    .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.1} MiB")),
            ),
            ("VM steal", steal_row(self.machine_steal_percent)),
        ];
        if self.backend.starts_with("postgres") {
            // SQLite runs inside the planes: their CPU already includes it.
            let database = self.database_cpu_seconds_per_1000_deliveries.map_or_else(
                || "n/a (read only for a PostgreSQL server on this machine)".to_owned(),
                |per| {
                    format!(
                        "{:.1} µs per delivery (postgres processes on this machine)",
                        per * 1000.0
                    )
                },
            );
            let after_planes = rows
                .iter()
                .position(|(name, _)| *name == "planes CPU")
                .map_or(rows.len(), |i| i + 1);
            rows.insert(after_planes, ("database CPU", database));
        }
        if let (Some([before, after]), Some(post)) = (
            self.http_baseline_posts_per_second,
            self.http_baseline_cpu_us_per_post,
        ) {
            rows.push((
                "loopback HTTP",
                format!(
                    "{before:.0} POST/s before the run, {after:.0} after; {post:.1} µs of CPU \
                     per POST (client and receiver)"
                ),
            ));
            if let Some(times) = self.planes_cpu_per_delivery_in_posts {
                rows.push((
                    "planes CPU in POSTs",
                    format!("{times:.2} loopback POSTs' CPU per delivery"),
                ));
            }
        }
        for (name, value) in rows {
            let _ = writeln!(t, "  {name:<22} {value}");
        }
        if self.arrivals_before_ack > 0 {
            let _ = writeln!(
                t,
                "  ({} arrivals came before their ack reached the publisher: counted as 0 ms)",
                self.arrivals_before_ack
            );
        }
        if let Some(e) = &self.first_publish_error {
            let _ = writeln!(t, "  first publish error: {e}");
        }
        if let Some(e) = &self.stream_error {
            let _ = writeln!(t, "  stream error: {e}");
        }
        if self.timed_out {
            let _ = writeln!(
                t,
                "  TIMED OUT waiting for deliveries: {} of {} arrived",
                self.attempted, self.expected_deliveries
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_posts_is_the_ratio_of_the_two_in_microseconds() {
        // 0.0467 s per 1,000 deliveries is 46.7 µs each; a POST of 21.4 µs.
        let times = in_posts(Some(0.0467), Some(21.4)).expect("both figures are known");
        assert!((times - 2.182).abs() < 0.001, "{times}");
        assert_eq!(in_posts(Some(0.05), Some(0.0)), None);
        assert_eq!(in_posts(None, Some(20.0)), None);
        assert_eq!(in_posts(Some(0.05), None), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let p = percentiles(&mut v).expect("not empty");
        assert_eq!(
            p,
            Percentiles {
                p50: 50.0,
                p95: 95.0,
                p99: 99.0,
                max: 100.0
            }
        );
        assert_eq!(percentiles(&mut []), None);
        let p = percentiles(&mut [7000]).expect("one");
        assert_eq!((p.p50, p.max), (7.0, 7.0));
    }
}
