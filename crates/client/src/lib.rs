//! A publisher client of Sluice's data plane, so publishers need not write their own
//! stream handling.
//!
//! [`Publisher::stream`] opens a [`PublishStream`]: [`PublishStream::send`] waits while
//! `max_in_flight` events are unanswered (back-pressure to the caller), and answers come
//! back, in any order, from [`PublishStream::next_ack`]. Every event carries an
//! idempotency key (the caller's, or one made here), so when the stream breaks or a data
//! plane answers UNAVAILABLE, the unanswered events are sent again, on the next endpoint of
//! the list, and the data plane answers a repeat as a duplicate of the first: nothing is
//! delivered twice. [`Publisher::publish`] is one event over the unary RPC, with the same
//! key-and-retry rule.
//!
//! An event refused because its workspace is over its publish quota (RESOURCE_EXHAUSTED
//! with a retry delay) is sent again, with its key, once the delay the data plane gave has
//! passed, for up to `give_up_after`; only then is the refusal the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::data::v1 as pb;
use sluice_proto::data::v1::ingest_service_client::IngestServiceClient;
use tokio::sync::{Semaphore, mpsc};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// One event to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `family.action`.
    pub event_type: String,
    /// The payload, a JSON object as text.
    pub payload_json: String,
    /// The idempotency key; one is made when `None`. Give a key derived from the event's
    /// identity to make a publish that is run again (after a crash) deliver nothing twice.
    pub idempotency_key: Option<String>,
}

impl Event {
    /// An event with an automatic idempotency key.
    pub fn new(event_type: impl Into<String>, payload_json: impl Into<String>) -> Event {
        Event {
            event_type: event_type.into(),
            payload_json: payload_json.into(),
            idempotency_key: None,
        }
    }

    fn request(&self, key: &str) -> pb::PublishRequest {
        pb::PublishRequest {
            event_type: self.event_type.clone(),
            payload_json: self.payload_json.clone(),
            idempotency_key: key.to_owned(),
            ..Default::default()
        }
    }
}

/// The answer to one event of a stream.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The number `send` returned for the event.
    pub sequence: u64,
    /// The idempotency key it was published with.
    pub idempotency_key: String,
    /// Accepted (`Ok`, `duplicate` set when a resend or a rerun hit the key) or refused.
    pub result: Result<pb::PublishResponse, pb::PublishError>,
}

/// What can go wrong for the client as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint given, or one that is not a URL.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data plane refused the call (not a transient failure).
    #[error("publish refused: {0}")]
    Refused(tonic::Status),
    /// Every endpoint stayed unreachable for `give_up_after`.
    #[error("no data plane answered: {0}")]
    Unavailable(String),
    /// The stream's background task stopped.
    #[error("the publish stream is closed")]
    Closed,
}

/// How to reach the data plane.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data-plane endpoints (`http://host:port`), tried in order, moving to the next on
    /// failure.
    pub endpoints: Vec<String>,
    /// The workspace's API key.
    pub api_key: String,
    /// Events a stream keeps unanswered at most (back-pressure beyond).
    pub max_in_flight: usize,
    /// How long to keep retrying when no endpoint answers, or while the workspace is
    /// over its publish quota.
    pub give_up_after: Duration,
    /// Whether an event without an idempotency key gets one made here (the default). Off,
    /// such an event is published without a key: the data plane then skips the lookup of
    /// earlier keys, but a resend after a broken stream may deliver it twice.
    pub automatic_idempotency_keys: bool,
}

impl Config {
    /// `endpoints` and `api_key`, 256 in flight, giving up after 60 s without a data plane,
    /// automatic idempotency keys.
    pub fn new(endpoints: Vec<String>, api_key: impl Into<String>) -> Config {
        Config {
            endpoints,
            api_key: api_key.into(),
            max_in_flight: 256,
            give_up_after: Duration::from_secs(60),
            automatic_idempotency_keys: true,
        }
    }
}

/// A publisher: the endpoints, lazily connected.
#[derive(Clone)]
pub struct Publisher {
    config: Arc<Config>,
    channels: Arc<Vec<Channel>>,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Publisher {
    /// A publisher of `config` (no connection is made until the first call).
    pub fn new(config: Config) -> Result<Publisher, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoint".into()));
        }
        if config.max_in_flight == 0 {
            return Err(ClientError::Config(
                "max_in_flight must be at least 1".into(),
            ));
        }
        let channels = config
            .endpoints
            .iter()
            .map(|e| {
                Endpoint::from_shared(e.clone())
                    .map(|e| {
                        e.connect_timeout(Duration::from_secs(5))
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .map_err(|err| ClientError::Config(format!("endpoint {e:?}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let authorization = format!("Bearer {}", config.api_key)
            .parse()
            .map_err(|_| ClientError::Config("the API key is not valid header text".into()))?;
        Ok(Publisher {
            config: Arc::new(config),
            channels: Arc::new(channels),
            authorization,
        })
    }

    /// The key `event` is published with: its own, or (unless turned off) a new one.
    fn key_of(&self, event: &Event) -> String {
        match &event.idempotency_key {
            Some(key) => key.clone(),
            None if self.config.automatic_idempotency_keys => auto_key(),
            None => String::new(),
        }
    }

    fn client(&self, endpoint: usize) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channels[endpoint % self.channels.len()].clone())
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    /// Publishes one event over the unary RPC; on UNAVAILABLE or a broken connection it
    /// tries the next endpoint with the same idempotency key.
    pub async fn publish(&self, event: &Event) -> Result<pb::PublishResponse, ClientError> {
        let key = self.key_of(event);
        let deadline = tokio::time::Instant::now() + self.config.give_up_after;
        let mut endpoint = 0;
        let mut backoff = Backoff::default();
        loop {
            match self
                .client(endpoint)
                .publish(self.authed(event.request(&key)))
                .await
            {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if transient(&status) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClientError::Unavailable(status.message().to_owned()));
                    }
                    endpoint += 1;
                    if endpoint.is_multiple_of(self.channels.len()) {
                        backoff.wait().await;
                    }
                }
                Err(status) => match quota_delay(&status) {
                    Some(delay) if tokio::time::Instant::now() + delay < deadline => {
                        tokio::time::sleep(delay).await;
                    }
                    _ => return Err(ClientError::Refused(status)),
                },
            }
        }
    }

    /// Opens a stream (its connection is made by a background task, which reconnects and
    /// fails over as needed).
    pub fn stream(&self) -> PublishStream {
        // Never more queued than permits: `send` hands an event over without waiting.
        let (events_tx, events_rx) = mpsc::channel(self.config.max_in_flight);
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight));
        let task = tokio::spawn(run_stream(
            self.clone(),
            events_rx,
            acks_tx,
            Arc::clone(&permits),
        ));
        PublishStream {
            sender: StreamSender {
                publisher: self.clone(),
                events: Some(events_tx),
                permits,
                next_sequence: 1,
            },
            acks: StreamAcks {
                acks: acks_rx,
                task,
            },
        }
    }
}

/// A stream of events to publish; see the crate's documentation. [`PublishStream::split`]
/// gives its sending and its answering halves, to use from two tasks.
pub struct PublishStream {
    sender: StreamSender,
    acks: StreamAcks,
}

/// The sending half of a [`PublishStream`]; dropping it closes the stream (the acks of the
/// events sent still arrive).
pub struct StreamSender {
    publisher: Publisher,
    events: Option<mpsc::Sender<InFlight>>,
    permits: Arc<Semaphore>,
    next_sequence: u64,
}

/// The answering half of a [`PublishStream`]; dropping it stops the stream.
pub struct StreamAcks {
    acks: mpsc::UnboundedReceiver<Result<Ack, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

struct InFlight {
    sequence: u64,
    key: String,
    event: Event,
    /// When the data plane first refused it for the workspace's quota.
    over_quota_since: Option<tokio::time::Instant>,
}

impl PublishStream {
    /// Queues `event`, waiting while `max_in_flight` events are unanswered. Returns its
    /// sequence number, which its [`Ack`] carries. Cancel-safe: dropped while it waits,
    /// it queued nothing.
    pub async fn send(&mut self, event: Event) -> Result<u64, ClientError> {
        self.sender.send(event).await
    }

    /// Says no more events will be sent; the acks of those sent still arrive.
    pub fn close(&mut self) {
        self.sender.close();
    }

    /// The next answer; `None` once the stream is closed and every event answered. An
    /// `Err` means the stream gave up (no data plane answered).
    pub async fn next_ack(&mut self) -> Option<Result<Ack, ClientError>> {
        self.acks.next_ack().await
    }

    /// An answer if one is ready, without waiting.
    pub fn try_next_ack(&mut self) -> Option<Result<Ack, ClientError>> {
        self.acks.try_next_ack()
    }

    /// The sending and the answering halves, to use from two tasks.
    pub fn split(self) -> (StreamSender, StreamAcks) {
        (self.sender, self.acks)
    }
}

impl StreamSender {
    /// As [`PublishStream::send`].
    pub async fn send(&mut self, event: Event) -> Result<u64, ClientError> {
        let sender = self.events.as_ref().ok_or(ClientError::Closed)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let sequence = self.next_sequence;
        let key = self.publisher.key_of(&event);
        // A permit is held and the channel holds as many events as there are permits, so
        // this never waits: nothing to undo when the future is dropped.
        sender
            .try_send(InFlight {
                sequence,
                key,
                event,
                over_quota_since: None,
            })
            .map_err(|_| ClientError::Closed)?;
        // The permit is given back when the event's final answer arrives.
        permit.forget();
        self.next_sequence += 1;
        Ok(sequence)
    }

    /// As [`PublishStream::close`].
    pub fn close(&mut self) {
        self.events = None;
    }
}

impl StreamAcks {
    /// As [`PublishStream::next_ack`].
    pub async fn next_ack(&mut self) -> Option<Result<Ack, ClientError>> {
        self.acks.recv().await
    }

    /// As [`PublishStream::try_next_ack`].
    pub fn try_next_ack(&mut self) -> Option<Result<Ack, ClientError>> {
        self.acks.try_recv().ok()
    }
}

impl Drop for StreamAcks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The stream's background task: owns the connection, resends on failure.
async fn run_stream(
    publisher: Publisher,
    mut events: mpsc::Receiver<InFlight>,
    acks: mpsc::UnboundedSender<Result<Ack, ClientError>>,
    permits: Arc<Semaphore>,
) {
    let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let mut input_open = true;
    let mut endpoint = 0usize;
    let mut backoff = Backoff::default();
    let mut unavailable_since: Option<tokio::time::Instant> = None;
    let answer = |flight: InFlight, result| {
        permits.add_permits(1);
        let _ = acks.send(Ok(Ack {
            sequence: flight.sequence,
            idempotency_key: flight.key,
            result,
        }));
    };
    while input_open || !in_flight.is_empty() {
        // One connection: open the stream, send what is unanswered, then new events.
        let (requests, requests_rx) = mpsc::channel::<pb::PublishStreamRequest>(
            publisher.config.max_in_flight.saturating_add(1),
        );
        for flight in in_flight.values() {
            let _ = requests.try_send(request(flight));
        }
        let outcome = publisher
            .client(endpoint)
            .publish_stream(
                publisher.authed(tokio_stream::wrappers::ReceiverStream::new(requests_rx)),
            )
            .await;
        let mut responses = match outcome {
            Ok(r) => r.into_inner(),
            Err(status) if transient(&status) => {
                let since = *unavailable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= publisher.config.give_up_after {
                    let _ = acks.send(Err(ClientError::Unavailable(status.message().to_owned())));
                    return;
                }
                endpoint += 1;
                if endpoint.is_multiple_of(publisher.channels.len()) {
                    backoff.wait().await;
                }
                continue;
            }
            Err(status) => {
                let _ = acks.send(Err(ClientError::Refused(status)));
                return;
            }
        };
        let mut requests = Some(requests);
        let mut broke = false;
        // Events over the workspace's quota, by when to send them again on this connection
        // (a new connection sends every unanswered event at once anyway). Each waits the
        // delay it was given after the one before it, so they go out at about the quota's
        // rate instead of all at once, and no new event is sent while any waits: it would
        // only be refused too.
        let mut resend_at: BTreeSet<(tokio::time::Instant, u64)> = BTreeSet::new();
        loop {
            if !input_open && in_flight.is_empty() {
                break;
            }
            let next_resend = resend_at.first().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                |(at, _)| *at,
            );
            tokio::select! {
                () = tokio::time::sleep_until(next_resend), if !resend_at.is_empty() => {
                    let now = tokio::time::Instant::now();
                    while let Some(&(at, sequence)) = resend_at.first() {
                        if at > now {
                            break;
                        }
                        resend_at.pop_first();
                        if let (Some(r), Some(flight)) = (&requests, in_flight.get(&sequence)) {
                            let _ = r.send(request(flight)).await;
                        }
                    }
                }
                event = events.recv(), if input_open && resend_at.is_empty() => match event {
                    Some(flight) => {
                        if let Some(r) = &requests {
                            let _ = r.send(request(&flight)).await;
                        }
                        in_flight.insert(flight.sequence, flight);
                    }
                    None => input_open = false,
                },
                response = responses.message() => match response {
                    Ok(Some(response)) => {
                        unavailable_since = None;
                        backoff = Backoff::default();
                        match (response.result, response.error) {
                            (_, Some(error)) if error.code == Code::Unavailable as i32 => {
                                // Resent on the next connection with the same key.
                                broke = true;
                                requests = None;
                            }
                            (_, Some(error))
                                if error.code == Code::ResourceExhausted as i32
                                    && error.retry_delay.is_some() =>
                            {
                                let delay = error
                                    .retry_delay
                                    .and_then(|d| Duration::try_from(d).ok())
                                    .unwrap_or_default();
                                let give_up = publisher.config.give_up_after;
                                let within = in_flight.get_mut(&response.sequence).map(|flight| {
                                    let since = *flight
                                        .over_quota_since
                                        .get_or_insert_with(tokio::time::Instant::now);
                                    since.elapsed() + delay < give_up
                                });
                                match within {
                                    Some(true) => {
                                        let now = tokio::time::Instant::now();
                                        let after = resend_at
                                            .last()
                                            .map_or(now, |(at, _)| (*at).max(now));
                                        resend_at.insert((after + delay, response.sequence));
                                    }
                                    Some(false) => {
                                        if let Some(flight) = in_flight.remove(&response.sequence) {
                                            answer(flight, Err(error));
                                        }
                                    }
                                    None => {}
                                }
                            }
                            (Some(result), None) => {
                                if let Some(flight) = in_flight.remove(&response.sequence) {
                                    answer(flight, Ok(result));
                                }
                            }
                            (_, error) => {
                                if let Some(flight) = in_flight.remove(&response.sequence) {
                                    answer(flight, Err(error.unwrap_or_default()));
                                }
                            }
                        }
                    }
                    // The stream ended or broke: reconnect and resend what is unanswered.
                    Ok(None) | Err(_) => {
                        broke = true;
                        break;
                    }
                },
            }
        }
        drop(requests);
        if broke {
            endpoint += 1;
            if endpoint.is_multiple_of(publisher.channels.len()) {
                backoff.wait().await;
            }
        }
    }
}

fn request(flight: &InFlight) -> pb::PublishStreamRequest {
    pb::PublishStreamRequest {
        sequence: flight.sequence,
        event: Some(flight.event.request(&flight.key)),
    }
}

/// The delay a RESOURCE_EXHAUSTED answer asks for (the workspace's publish quota), from its
/// `google.rpc.RetryInfo`.
fn quota_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    status.get_error_details().retry_info()?.retry_delay
}

/// Whether another try (elsewhere, later) may succeed.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// A key no other event has: `auto_` and a random time-sortable id.
fn auto_key() -> String {
    format!(
        "auto_{}",
        sluice_core::ids::new_id(sluice_core::ids::IdKind::Message)
    )
}

/// Exponential backoff between rounds over every endpoint: 50 ms doubling to 2 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    async fn wait(&mut self) {
        let ms = 50u64.saturating_mul(1 << self.0.min(5)).min(2000);
        self.0 += 1;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
