//! Helpers of the end-to-end delivery suites (`delivery_*`, `control_outcomes`): polling
//! the control plane's delivery log, subscriptions, and publishing.

use std::time::{Duration, Instant};

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::{Clients, Intercepted, WAIT};

/// The event most scenarios publish.
pub const CONVERSATION_CREATED: &str = "conversation.created";

/// Polls `probe` until it yields `Some`, and returns that value; panics naming `what` after
/// `timeout`.
///
/// This is only for state that offers nothing to await: the control plane's delivery log
/// and subscription state, which the data plane updates asynchronously through the outcome
/// stream. A short sleep separates polls; it never stands in for synchronisation that
/// has an event (a receiver's arrivals are awaited with `Receiver::wait_for`).
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    within(timeout, probe)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Like [`eventually`], but gives `None` after `timeout` instead of panicking, so the
/// caller can fail with its own message (a `BUG:` report).
pub async fn within<T>(timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Read access to the control plane's log and subscriptions; every method takes `&self`
/// (cloning the cheap tonic client), so it can be used inside `eventually` probes.
#[derive(Clone)]
pub struct Log {
    deliveries: pb::delivery_service_client::DeliveryServiceClient<Intercepted>,
    subscriptions: pb::subscription_service_client::SubscriptionServiceClient<Intercepted>,
}

impl Log {
    /// The `DeliveryService` client, for calls this type has no shortcut for.
    pub fn deliveries_client(
        &self,
    ) -> pb::delivery_service_client::DeliveryServiceClient<Intercepted> {
        self.deliveries.clone()
    }

    /// The log as seen by the holder of `clients`' key.
    pub fn new(clients: &Clients) -> Log {
        Log {
            deliveries: clients.deliveries.clone(),
            subscriptions: clients.subscriptions.clone(),
        }
    }

    /// Every attempt matching `request`, all pages.
    pub async fn attempts(&self, request: pb::ListAttemptsRequest) -> Vec<pb::Attempt> {
        sluice_testkit::all_attempts(&self.deliveries, request).await
    }

    /// Every attempt of one message, oldest (lowest attempt number) first.
    pub async fn attempts_of(&self, message_id: &str) -> Vec<pb::Attempt> {
        let mut attempts = self
            .attempts(pb::ListAttemptsRequest {
                message_id: message_id.to_owned(),
                ..Default::default()
            })
            .await;
        attempts.sort_by_key(|a| (a.subscription_id.clone(), a.attempt_number));
        attempts
    }

    /// Every attempt to one subscription.
    pub async fn attempts_to(&self, subscription_id: &str) -> Vec<pb::Attempt> {
        self.attempts(pb::ListAttemptsRequest {
            subscription_id: subscription_id.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Every delivery matching `request`, all pages.
    pub async fn deliveries(&self, mut request: pb::ListDeliveriesRequest) -> Vec<pb::Delivery> {
        request.page_size = 1000;
        let mut all = Vec::new();
        loop {
            let page = self
                .deliveries
                .clone()
                .list_deliveries(request.clone())
                .await
                .unwrap()
                .into_inner();
            all.extend(page.deliveries);
            if page.next_page_token.is_empty() {
                return all;
            }
            request.page_token = page.next_page_token;
        }
    }

    /// The delivery of `message_id` to `subscription_id`, if the log has it.
    pub async fn delivery(&self, message_id: &str, subscription_id: &str) -> Option<pb::Delivery> {
        self.deliveries(pb::ListDeliveriesRequest {
            message_id: message_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
            ..Default::default()
        })
        .await
        .into_iter()
        .next()
    }

    /// Waits until the delivery of `message_id` to `subscription_id` has `status`.
    pub async fn delivery_with_status(
        &self,
        message_id: &str,
        subscription_id: &str,
        status: pb::DeliveryStatus,
    ) -> pb::Delivery {
        eventually(
            &format!("delivery {message_id} → {subscription_id} to be {status:?} in the log"),
            WAIT,
            async || {
                self.delivery(message_id, subscription_id)
                    .await
                    .filter(|d| d.status == status as i32)
            },
        )
        .await
    }

    /// Every message matching `request`, all pages.
    pub async fn messages(&self, mut request: pb::ListMessagesRequest) -> Vec<pb::Message> {
        request.page_size = 1000;
        let mut all = Vec::new();
        loop {
            let page = self
                .deliveries
                .clone()
                .list_messages(request.clone())
                .await
                .unwrap()
                .into_inner();
            all.extend(page.messages);
            if page.next_page_token.is_empty() {
                return all;
            }
            request.page_token = page.next_page_token;
        }
    }

    /// The endpoint health of a subscription.
    pub async fn health(&self, subscription_id: &str) -> pb::GetEndpointHealthResponse {
        self.deliveries
            .clone()
            .get_endpoint_health(pb::GetEndpointHealthRequest {
                workspace_id: String::new(),
                subscription_id: subscription_id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// A subscription as the control plane has it now.
    pub async fn subscription(&self, id: &str) -> pb::Subscription {
        self.subscriptions
            .clone()
            .get_subscription(pb::GetSubscriptionRequest {
                workspace_id: String::new(),
                id: id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap()
    }
}

/// A subscription to create.
pub fn webhook(url: &str, filters: &[&str]) -> pb::Subscription {
    pb::Subscription {
        url: url.to_owned(),
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        ..Default::default()
    }
}

/// Creates `subscription` in the caller's workspace; returns it and its secret.
pub async fn subscribe(
    clients: &mut Clients,
    subscription: pb::Subscription,
) -> (pb::Subscription, String) {
    let created = clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(subscription),
            secret: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (created.subscription.unwrap(), created.secret)
}

/// A publish request of `event_type` with `payload_json`.
pub fn event(event_type: &str, payload_json: &str) -> dpb::PublishRequest {
    dpb::PublishRequest {
        event_type: event_type.to_owned(),
        payload_json: payload_json.to_owned(),
        ..Default::default()
    }
}

/// The ingest client type.
pub type Publisher = dpb::ingest_service_client::IngestServiceClient<Intercepted>;

/// Publishes one event; panics on failure.
pub async fn publish(
    publisher: &mut Publisher,
    request: dpb::PublishRequest,
) -> dpb::PublishResponse {
    publisher
        .publish(request)
        .await
        .unwrap_or_else(|s| panic!("Publish failed: {s:?}"))
        .into_inner()
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}
