//! Publishing the bench's events over one `IngestService.PublishStream`: a bounded number of
//! requests in flight (closed loop: the next goes when an ack returns), optionally paced at a
//! fixed rate (open loop, still bounded), noting when each request went and its ack came.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_proto::data::v1::ingest_service_client::IngestServiceClient;
use sluice_proto::data::v1::{PublishRequest, PublishStreamRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The event type of the measured events.
pub(crate) const EVENT_TYPE: &str = "bench.event";

/// What to publish and how.
pub(crate) struct PublishPlan {
    pub(crate) events: u64,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) payload_json: String,
    pub(crate) api_key: String,
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

fn request(sequence: u64, event_type: &str, payload_json: &str) -> PublishStreamRequest {
    PublishStreamRequest {
        sequence,
        event: Some(PublishRequest {
            event_type: event_type.to_owned(),
            payload_json: payload_json.to_owned(),
            ..Default::default()
        }),
    }
}

fn with_bearer<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the API key is not valid metadata"))?,
    );
    Ok(request)
}

/// Publishes one warm-up event (unary). Returns its message id and how many subscriptions
/// the data plane matched, or the gRPC error.
pub(crate) async fn publish_one(
    client: &mut IngestServiceClient<Channel>,
    api_key: &str,
    event_type: &str,
    payload_json: &str,
) -> anyhow::Result<Result<(String, u32), tonic::Status>> {
    let PublishStreamRequest { event, .. } = request(0, event_type, payload_json);
    let req = with_bearer(event.unwrap_or_default(), api_key)?;
    Ok(client.publish(req).await.map(|r| {
        let r = r.into_inner();
        (r.message_id, r.delivery_count)
    }))
}

/// Runs the stream until every request is answered, the stream fails, or `deadline`.
pub(crate) async fn publish(
    channel: Channel,
    plan: PublishPlan,
    progress: Arc<PublishProgress>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<PublishOutcome> {
    let events = plan.events;
    let n = usize::try_from(events)?;
    let (tx, rx) = mpsc::channel::<PublishStreamRequest>(plan.concurrency.max(1));
    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let started = Instant::now();

    // The sender: one request per permit; answers give permits back.
    let sender_permits = permits.clone();
    let payload_json = plan.payload_json.clone();
    let rate = plan.rate;
    let sender = tokio::spawn(async move {
        let mut sent_at: Vec<Option<Instant>> = vec![None; n];
        let pace_start = tokio::time::Instant::now();
        for sequence in 0..events {
            if let Some(rate) = rate {
                let due = pace_start + Duration::from_secs_f64(sequence as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            let Ok(permit) = sender_permits.acquire().await else {
                break;
            };
            permit.forget();
            let req = request(sequence, EVENT_TYPE, &payload_json);
            sent_at[sequence as usize] = Some(Instant::now());
            if tx.send(req).await.is_err() {
                break;
            }
        }
        // Dropping tx ends the request stream.
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

    let mut client = IngestServiceClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let request = with_bearer(ReceiverStream::new(rx), &plan.api_key)?;
    let answers = tokio::time::timeout_at(deadline, async {
        let mut stream = client.publish_stream(request).await?.into_inner();
        let mut answered = 0u64;
        while answered < events {
            let Some(answer) = stream.message().await? else {
                break;
            };
            let now = Instant::now();
            permits.add_permits(1);
            answered += 1;
            progress.answered.fetch_add(1, Ordering::Relaxed);
            let Some(seq) = usize::try_from(answer.sequence).ok().filter(|s| *s < n) else {
                outcome.errors += 1;
                outcome.first_error.get_or_insert_with(|| {
                    format!("an answer with unknown sequence {}", answer.sequence)
                });
                continue;
            };
            outcome.acked_at[seq] = Some(now);
            match (answer.result, answer.error) {
                (Some(result), None) => {
                    outcome.accepted += 1;
                    outcome.expected_deliveries += u64::from(result.delivery_count);
                    outcome.message_ids[seq] = Some(result.message_id);
                }
                (_, Some(error)) => {
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
                (None, None) => {
                    outcome.errors += 1;
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    outcome
                        .first_error
                        .get_or_insert_with(|| "an answer with neither result nor error".into());
                }
            }
        }
        if answered < events {
            outcome.stream_error = Some(format!(
                "the stream ended after {answered} of {events} answers"
            ));
        }
        Ok::<(), tonic::Status>(())
    })
    .await;
    outcome.finished = Instant::now();
    match answers {
        Ok(Ok(())) => {}
        Ok(Err(status)) => {
            outcome.stream_error = Some(format!(
                "PublishStream failed: {:?}: {}",
                status.code(),
                status.message()
            ));
        }
        Err(_) => {
            outcome.stream_error = Some("timed out before every event was answered".into());
        }
    }
    // Stop the sender if it still waits for a permit or a send.
    permits.close();
    sender.abort();
    outcome.sent_at = match sender.await {
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

/// [`publish`] over several data planes at once, one stream each: the events, the
/// concurrency and the rate shared evenly among them; the outcomes are merged (per-request
/// vectors one after the other, counts summed, the first errors kept).
pub(crate) async fn publish_spread(
    channels: &[Channel],
    plan: PublishPlan,
    progress: Arc<PublishProgress>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<PublishOutcome> {
    if channels.len() == 1 {
        return publish(channels[0].clone(), plan, progress, deadline).await;
    }
    let n = channels.len() as u64;
    let mut tasks = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let share = PublishPlan {
            events: plan.events / n + u64::from((i as u64) < plan.events % n),
            concurrency: (plan.concurrency / channels.len()).max(1),
            rate: plan.rate.map(|r| r / n as f64),
            payload_json: plan.payload_json.clone(),
            api_key: plan.api_key.clone(),
        };
        tasks.push(tokio::spawn(publish(
            channel.clone(),
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
