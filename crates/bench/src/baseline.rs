//! `sluice bench --http-baseline`: the machine's own loopback HTTP ceiling, with no plane in
//! the way. reqwest POSTs `--events` bodies of `--payload-bytes` to the bench's receiver,
//! `--concurrency` at a time over keep-alive connections, as the data plane's sender would
//! (each with a `webhook-id`, so the receiver does the same work as in a real run).
//!
//! VMs of the same kind differ, and one VM differs from hour to hour; this figure, taken
//! beside a run of the planes, says how fast the machine's loopback HTTP was then. It is
//! not a yardstick for the planes as a whole: they also wait on the disk (`fsync`), which
//! it does not touch. docs/benchmarks.md has the figures of the machines measured so far.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::args::BenchArgs;
use crate::{child, publisher, receiver};

/// What `--http-baseline` measured.
#[derive(Debug, Serialize)]
pub(crate) struct Baseline {
    pub(crate) http_baseline: bool,
    pub(crate) posts: u64,
    pub(crate) payload_bytes: usize,
    pub(crate) concurrency: usize,
    pub(crate) seconds: f64,
    pub(crate) posts_per_second: f64,
    /// Client and receiver together (both are the bench's process).
    pub(crate) cpu_us_per_post: Option<f64>,
    /// As in a run of the planes: what other VMs on the host took, percent.
    pub(crate) machine_steal_percent: Option<f64>,
}

/// Runs the baseline: `--events` POSTs.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<Baseline> {
    run_posts(args, args.events).await
}

/// Runs the baseline with `events` POSTs and the rest of `args`.
pub(crate) async fn run_posts(args: &BenchArgs, events: u64) -> anyhow::Result<Baseline> {
    let receiver = receiver::start(Duration::ZERO, 0.0).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(args.timeout))
        .build()
        .context("cannot build the HTTP client")?;
    let url: Arc<str> = Arc::from(format!("http://{}/hook/0", receiver.addr));
    let body = Bytes::from(publisher::payload(args.payload_bytes));
    let next = Arc::new(AtomicU64::new(0));

    let cpu_before = child::sample(std::process::id());
    let machine_before = child::machine_ticks();
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, url, body, next) = (client.clone(), url.clone(), body.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= events {
                    return Ok::<(), anyhow::Error>(());
                }
                let response = client
                    .post(&*url)
                    .header("webhook-id", format!("msg_baseline_{n}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .context("a baseline POST failed")?;
                let status = response.status();
                response
                    .bytes()
                    .await
                    .context("a baseline response failed")?;
                if !status.is_success() {
                    bail!("the bench's receiver answered {status}");
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a baseline worker panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = child::sample(std::process::id());
    let machine_after = child::machine_ticks();

    let received = receiver.state.counters().requests;
    if received != events {
        bail!("the receiver counted {received} POSTs of the {events} sent");
    }
    let cpu_us_per_post = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some((a.cpu_seconds - b.cpu_seconds) * 1e6 / events as f64),
        _ => None,
    };
    Ok(Baseline {
        http_baseline: true,
        posts: events,
        payload_bytes: args.payload_bytes,
        concurrency: args.concurrency,
        seconds,
        posts_per_second: events as f64 / seconds,
        cpu_us_per_post,
        machine_steal_percent: machine_before
            .zip(machine_after)
            .and_then(|(b, a)| child::steal_percent(b, a)),
    })
}
