//! Publishing the bench's events through `sluice-client`, the client publishers use: one
//! `IngestService.PublishStream` per data plane with a bounded number of events in flight
//! (closed loop: the next goes when an ack returns), optionally paced at a fixed rate (open
//! loop, still bounded), noting when each event went and its ack came.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_client::{ClientError, Config, Event, Publisher};

/// The event type of the measured events.
pub(crate) const EVENT_TYPE: &str = "bench.event";

/// What to publish and how.
pub(crate) struct PublishPlan {
    pub(crate) events: u64,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) payload_json: String,
    pub(crate) api_key: String,
    /// Give every event an idempotency key (the client's default); off, events go without.
    pub(crate) idempotency_keys: bool,
}

/// Counters the progress bar reads while publishing runs.
#[derive(Default)]
pub(crate) struct PublishProgress {
    pub(crate) answered: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// What happened to every request.
pub(crate) struct PublishOutcome {
    /// When the first request was handed to the stream.
    pub(crate) started: Instant,
    /// When the last answer came (or publishing stopped).
    pub(crate) finished: Instant,
    /// Per sequence: when it was sent.
    pub(crate) sent_at: Vec<Option<Instant>>,
    /// Per sequence: when its answer came.
    pub(crate) acked_at: Vec<Option<Instant>>,
    /// Per sequence: the message id, when accepted.
    pub(crate) message_ids: Vec<Option<String>>,
    /// Events accepted.
    pub(crate) accepted: u64,
    /// Deliveries the data plane said it would make (sum of `delivery_count`).
    pub(crate) expected_deliveries: u64,
    /// Events refused (an error in their answer).
    pub(crate) errors: u64,
    /// The first refusal, for people.
    pub(crate) first_error: Option<String>,
    /// Why the stream itself failed or ended early, if it did.
    pub(crate) stream_error: Option<String>,
}

/// A JSON object of exactly `bytes` bytes (at least `{"pad":""}`, 10 bytes).
pub(crate) fn payload(bytes: usize) -> String {
    const HEAD: &str = "{\"pad\":\"";
    const TAIL: &str = "\"}";
    let pad = bytes.saturating_sub(HEAD.len() + TAIL.len());
    let mut s = String::with_capacity(HEAD.len() + pad + TAIL.len());
    s.push_str(HEAD);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(TAIL);
    s
}

/// A publisher of the data plane at `endpoint` (`http://host:port`) with `api_key`:
/// `in_flight` events unanswered at most, giving up after `give_up_after` without an answer.
pub(crate) fn publisher(
    endpoint: &str,
    api_key: &str,
    in_flight: usize,
    idempotency_keys: bool,
    give_up_after: Duration,
) -> anyhow::Result<Publisher> {
    let mut config = Config::new(vec![endpoint.to_owned()], api_key);
    config.max_in_flight = in_flight.max(1);
    config.give_up_after = give_up_after;
    config.automatic_idempotency_keys = idempotency_keys;
    Ok(Publisher::new(config)?)
}

/// Publishes one warm-up event (unary). Returns its message id and how many subscriptions
/// the data plane matched, or the gRPC error (UNAVAILABLE when no answer came in time).
pub(crate) async fn publish_one(
    publisher: &Publisher,
    event_type: &str,
    payload_json: &str,
) -> anyhow::Result<Result<(String, u32), tonic::Status>> {
    match publisher
        .publish(&Event::new(event_type, payload_json))
        .await
    {
        Ok(r) => Ok(Ok((r.message_id, r.delivery_count))),
        Err(ClientError::Refused(status)) => Ok(Err(status)),
        Err(ClientError::Unavailable(message)) => Ok(Err(tonic::Status::unavailable(message))),
        Err(e) => Err(e.into()),
    }
}

/// Runs one stream until every event is answered, the stream fails, or `deadline`.
pub(crate) async fn publish(
    endpoint: String,
    plan: PublishPlan,
    progress: Arc<PublishProgress>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<PublishOutcome> {
    let events = plan.events;
    let n = usize::try_from(events)?;
    let give_up = deadline.saturating_duration_since(tokio::time::Instant::now());
    let publisher = publisher(
        &endpoint,
        &plan.api_key,
        plan.concurrency,
        plan.idempotency_keys,
        give_up,
    )?;
    let (mut sender, mut acks) = publisher.stream().split();
    let started = Instant::now();

    // The sender: waits while `concurrency` events are unanswered (the client's bound).
    let payload_json = plan.payload_json.clone();
    let rate = plan.rate;
    let sending = tokio::spawn(async move {
        let mut sent_at: Vec<Option<Instant>> = vec![None; n];
        let pace_start = tokio::time::Instant::now();
        for index in 0..events {
            if let Some(rate) = rate {
                let due = pace_start + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            let Ok(sequence) = sender
                .send(Event::new(EVENT_TYPE, payload_json.clone()))
                .await
            else {
                break;
            };
            if let Some(at) = slot(&mut sent_at, sequence) {
                *at = Some(Instant::now());
            }
        }
        // Dropping the sender closes the stream; the acks still come.
        sent_at
    });

    let mut outcome = PublishOutcome {
        started,
        finished: started,
        sent_at: Vec::new(),
        acked_at: vec![None; n],
        message_ids: vec![None; n],
        accepted: 0,
        expected_deliveries: 0,
        errors: 0,
        first_error: None,
        stream_error: None,
    };

    let answers = tokio::time::timeout_at(deadline, async {
        let mut answered = 0u64;
        while answered < events {
            let ack = match acks.next_ack().await {
                Some(Ok(ack)) => ack,
                Some(Err(e)) => return Err(e),
                None => break,
            };
            let now = Instant::now();
            answered += 1;
            progress.answered.fetch_add(1, Ordering::Relaxed);
            let Some(index) = index_of(ack.sequence, n) else {
                outcome.errors += 1;
                outcome.first_error.get_or_insert_with(|| {
                    format!("an answer with unknown sequence {}", ack.sequence)
                });
                continue;
            };
            outcome.acked_at[index] = Some(now);
            match ack.result {
                Ok(result) => {
                    outcome.accepted += 1;
                    outcome.expected_deliveries += u64::from(result.delivery_count);
                    outcome.message_ids[index] = Some(result.message_id);
                }
                Err(error) => {
                    outcome.errors += 1;
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    outcome.first_error.get_or_insert_with(|| {
                        let field = if error.field.is_empty() {
                            String::new()
                        } else {
                            format!(" (field {})", error.field)
                        };
                        format!("code {}: {}{field}", error.code, error.message)
                    });
                }
            }
        }
        if answered < events {
            outcome.stream_error = Some(format!(
                "the stream ended after {answered} of {events} answers"
            ));
        }
        Ok(())
    })
    .await;
    outcome.finished = Instant::now();
    match answers {
        Ok(Ok(())) => {}
        Ok(Err(e)) => outcome.stream_error = Some(format!("PublishStream failed: {e}")),
        Err(_) => {
            outcome.stream_error = Some("timed out before every event was answered".into());
        }
    }
    // Stop the stream (and the sender, if it still waits for room).
    drop(acks);
    sending.abort();
    outcome.sent_at = match sending.await {
        Ok(sent_at) => sent_at,
        Err(_) => vec![None; n],
    };
    // The sender may have been aborted: send times are then unknown, but acks still count.
    outcome.finished = outcome
        .acked_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(outcome.finished);
    Ok(outcome)
}

/// The index of the event the client numbered `sequence` (from 1), if it is one of `n`.
fn index_of(sequence: u64, n: usize) -> Option<usize> {
    usize::try_from(sequence.checked_sub(1)?)
        .ok()
        .filter(|i| *i < n)
}

/// The entry of `sequence` in a per-event vector.
fn slot<T>(per_event: &mut [T], sequence: u64) -> Option<&mut T> {
    let n = per_event.len();
    per_event.get_mut(index_of(sequence, n)?)
}

/// [`publish`] over several data planes at once, one stream (and client) each: the events, the
/// concurrency and the rate shared evenly among them; the outcomes are merged (per-request
/// vectors one after the other, counts summed, the first errors kept).
pub(crate) async fn publish_spread(
    endpoints: &[String],
    plan: PublishPlan,
    progress: Arc<PublishProgress>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<PublishOutcome> {
    if endpoints.len() == 1 {
        return publish(endpoints[0].clone(), plan, progress, deadline).await;
    }
    let n = endpoints.len() as u64;
    let mut tasks = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let share = PublishPlan {
            events: plan.events / n + u64::from((i as u64) < plan.events % n),
            concurrency: (plan.concurrency / endpoints.len()).max(1),
            rate: plan.rate.map(|r| r / n as f64),
            payload_json: plan.payload_json.clone(),
            api_key: plan.api_key.clone(),
            idempotency_keys: plan.idempotency_keys,
        };
        tasks.push(tokio::spawn(publish(
            endpoint.clone(),
            share,
            progress.clone(),
            deadline,
        )));
    }
    let mut merged: Option<PublishOutcome> = None;
    for task in tasks {
        let part = task.await??;
        merged = Some(match merged {
            None => part,
            Some(mut all) => {
                all.started = all.started.min(part.started);
                all.finished = all.finished.max(part.finished);
                all.sent_at.extend(part.sent_at);
                all.acked_at.extend(part.acked_at);
                all.message_ids.extend(part.message_ids);
                all.accepted += part.accepted;
                all.expected_deliveries += part.expected_deliveries;
                all.errors += part.errors;
                all.first_error = all.first_error.or(part.first_error);
                all.stream_error = all.stream_error.or(part.stream_error);
                all
            }
        });
    }
    merged.ok_or_else(|| anyhow::anyhow!("no data plane to publish to"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_a_json_object_of_the_size_asked() {
        for bytes in [0, 10, 11, 1024, 4096] {
            let p = payload(bytes);
            assert_eq!(p.len(), bytes.max(10));
            let v: serde_json::Value = serde_json::from_str(&p).expect("valid JSON");
            assert!(v.is_object());
        }
    }
}
