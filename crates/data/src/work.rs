//! The work that crosses tasks: what ingest hands the writer ([`PublishJob`]), what the
//! writer, the timers and the scanner hand the dispatcher ([`DeliveryTask`]), what attempts
//! put on a timer ([`ScheduledRetry`]) and what they hand the writer ([`OutcomeEvent`],
//! through [`OutcomeSender`]). Plain data and the channel ends; no task's logic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::outcome::DeliveryStatus;
use sluice_proto::control::v1::{AttemptOutcome, AttemptTrigger, SubscriptionDisabled};
use sluice_proto::data::v1::PublishResponse;
use tokio::sync::{mpsc, oneshot};

use crate::error::DataError;
use crate::state::claims::{Claims, DeliveryKey};
use crate::state::sealed::SealedConfig;
use crate::state::streaks::StreakChange;

/// An event validated by ingest, waiting to be made durable.
pub(crate) struct PublishJob {
    pub(crate) message: NewMessage,
    /// The subscriptions it matched, in a stable order, but for those its ordering key
    /// orders (`message.ordered`): these are its fan-out's first attempts.
    pub(crate) subscription_ids: Vec<String>,
    /// When the publisher stops waiting: acceptance plus the store timeout. A job not written
    /// by then is answered "not stored" instead.
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) reply: oneshot::Sender<Result<PublishResponse, DataError>>,
}

/// A message as ingest built it.
#[derive(Clone)]
pub(crate) struct NewMessage {
    pub(crate) id: String,
    pub(crate) workspace_id: String,
    pub(crate) event_type: String,
    pub(crate) envelope: Bytes,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) create_ms: i64,
    /// Its ordering key and the subscriptions with ordered delivery it matched; `None` for
    /// an event without a key, or when none of its subscriptions orders.
    pub(crate) ordered: Option<Box<Ordered>>,
}

/// The deliveries of an event that wait their turn behind earlier events of the same
/// ordering key (see `docs/ordering.md`).
#[derive(Clone, Debug)]
pub(crate) struct Ordered {
    pub(crate) key: Arc<str>,
    /// Subscriptions with ordered delivery: each gets a `dp_deliveries` row at commit.
    pub(crate) subscription_ids: Vec<String>,
}

impl PublishJob {
    /// Every subscription the event goes to: its fan-out's, then the ordered ones.
    pub(crate) fn delivery_count(&self) -> u32 {
        let ordered = self
            .message
            .ordered
            .as_ref()
            .map_or(0, |o| o.subscription_ids.len());
        u32::try_from(self.subscription_ids.len() + ordered).unwrap_or(u32::MAX)
    }
}

/// A message as stored: the envelope built once at ingest and sent as is on every attempt.
#[derive(Debug)]
pub(crate) struct StoredMessage {
    pub(crate) id: String,
    pub(crate) workspace_id: String,
    pub(crate) event_type: String,
    /// The envelope bytes; `Bytes` so every attempt shares one copy.
    pub(crate) envelope: Bytes,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) create_ms: i64,
}

impl StoredMessage {
    pub(crate) fn from_row(row: sluice_store::data::message::Model) -> StoredMessage {
        StoredMessage {
            id: row.id,
            workspace_id: row.workspace_id,
            event_type: row.event_type,
            envelope: Bytes::from(row.envelope),
            traceparent: row.traceparent,
            tracestate: row.tracestate,
            create_ms: row.create_ms,
        }
    }

    pub(crate) fn from_new(message: NewMessage) -> StoredMessage {
        StoredMessage {
            id: message.id,
            workspace_id: message.workspace_id,
            event_type: message.event_type,
            envelope: message.envelope,
            traceparent: message.traceparent,
            tracestate: message.tracestate,
            create_ms: message.create_ms,
        }
    }
}

/// A delivery this process holds (a claim in [`Claims`]) and will attempt.
#[derive(Clone, Debug)]
pub(crate) struct DeliveryTask {
    pub(crate) key: DeliveryKey,
    pub(crate) message: Arc<StoredMessage>,
    /// Attempts already made; the next one is number `attempt_count + 1`.
    pub(crate) attempt_count: u32,
    /// When the first failed attempt of this delivery happened.
    pub(crate) first_failure_ms: Option<i64>,
    /// Attempts made before the current run of the retry schedule.
    pub(crate) schedule_start: u32,
    pub(crate) trigger: AttemptTrigger,
    /// This claim's generation in the [`Claims`] registry.
    pub(crate) generation: u64,
    /// The ordering key, when this delivery is the head of its key on an ordered
    /// subscription: its final outcome lets the key's next delivery go.
    pub(crate) ordering_key: Option<Arc<str>>,
}

impl DeliveryTask {
    /// Claims the first attempts of `message` to `subscription_ids` for this process,
    /// leaving out any it already holds, as tasks ready for the dispatcher or a timer.
    pub(crate) fn first_attempts<'a>(
        claims: &'a Claims,
        message: &'a Arc<StoredMessage>,
        subscription_ids: impl IntoIterator<Item = String> + 'a,
        lease_until_ms: i64,
    ) -> impl Iterator<Item = DeliveryTask> + 'a {
        subscription_ids
            .into_iter()
            .filter_map(move |subscription_id| {
                let key = DeliveryKey {
                    message_id: message.id.clone(),
                    subscription_id,
                };
                let generation = claims.claim(&key, &message.workspace_id, lease_until_ms)?;
                Some(DeliveryTask {
                    key,
                    message: Arc::clone(message),
                    attempt_count: 0,
                    first_failure_ms: None,
                    schedule_start: 0,
                    trigger: AttemptTrigger::Scheduled,
                    generation,
                    ordering_key: None,
                })
            })
    }
}

/// A retry to make at `due_ms`, held by the timers.
pub(crate) struct ScheduledRetry {
    pub(crate) due_ms: i64,
    pub(crate) task: DeliveryTask,
}

/// What the writer is asked to store.
pub(crate) enum OutcomeEvent {
    /// An attempt was made.
    Attempt(Box<AttemptRecord>),
    /// A delivery ended without an attempt (its subscription was deleted or disabled).
    Ended(Box<EndedDelivery>),
    /// The data plane disabled a subscription: fail its pending deliveries, keep the local
    /// copy disabled, and tell the control plane.
    Disabled(Box<DisabledSubscription>),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
}

impl OutcomeEvent {
    /// The operational event written with this outcome, if any.
    pub(crate) fn notice(&self) -> Option<&OperationalEvent> {
        match self {
            OutcomeEvent::Attempt(record) => record.notice.as_deref(),
            OutcomeEvent::Disabled(disabled) => disabled.notice.as_ref(),
            OutcomeEvent::Ended(_) | OutcomeEvent::Flush(_) => None,
        }
    }

    /// Drops the operational event written with this outcome (see the writer: a retry
    /// after a commit whose outcome was unknown finds it already stored).
    pub(crate) fn drop_notice(&mut self) {
        match self {
            OutcomeEvent::Attempt(record) => record.notice = None,
            OutcomeEvent::Disabled(disabled) => disabled.notice = None,
            OutcomeEvent::Ended(_) | OutcomeEvent::Flush(_) => {}
        }
    }

    /// Whether someone waits for this event's commit.
    pub(crate) fn is_flush(&self) -> bool {
        matches!(self, OutcomeEvent::Flush(_))
    }
}

/// One attempt's effect on its delivery.
pub(crate) struct AttemptRecord {
    pub(crate) key: DeliveryKey,
    /// The message's workspace and acceptance time, for a delivery row written now (a first
    /// attempt that failed).
    pub(crate) workspace_id: String,
    pub(crate) message_create_ms: i64,
    /// What the control plane is told.
    pub(crate) outcome: AttemptOutcome,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempt_count: u32,
    /// The next attempt's due time; `None` leaves the stored one.
    pub(crate) next_attempt_ms: Option<i64>,
    /// The row's lease after this; `None` clears it so any replica's scanner may take it.
    pub(crate) lease_until_ms: Option<i64>,
    pub(crate) first_failure_ms: Option<i64>,
    /// Attempts made before the current run of the retry schedule.
    pub(crate) schedule_start: u32,
    pub(crate) streak: StreakChange,
    /// The claim generation to release once this is committed; `None` when the delivery
    /// stays held (a retry on a timer). Released only then, so neither this replica's
    /// scanner nor another replica takes the delivery up while its outcome is in flight.
    pub(crate) release_after_commit: Option<u64>,
    /// The operational event this attempt caused (its endpoint's breaker opened or closed),
    /// written in the same transaction.
    pub(crate) notice: Option<Box<OperationalEvent>>,
    /// The delivery's ordering key (ordered subscriptions only).
    pub(crate) ordering_key: Option<Arc<str>>,
}

/// An operational event (`sluice.*`, see `sluice_core::operational`) to publish: a message
/// built like ingest builds one, and the subscriptions it goes to (never the one it is
/// about). The writer stores it with the outcome that caused it, in the same transaction,
/// and hands its deliveries on like a publish's.
#[derive(Clone)]
pub(crate) struct OperationalEvent {
    pub(crate) message: NewMessage,
    pub(crate) subscription_ids: Vec<String>,
}

/// A delivery that ends without an attempt.
pub(crate) struct EndedDelivery {
    pub(crate) key: DeliveryKey,
    pub(crate) status: DeliveryStatus,
    /// The message's workspace and acceptance time, for a delivery row written now.
    pub(crate) workspace_id: String,
    pub(crate) create_ms: i64,
    /// The claim generation to release once this is committed.
    pub(crate) release_after_commit: u64,
    /// The delivery's ordering key (ordered subscriptions only).
    pub(crate) ordering_key: Option<Arc<str>>,
}

/// A subscription the data plane disabled.
pub(crate) struct DisabledSubscription {
    /// What the control plane is told.
    pub(crate) report: SubscriptionDisabled,
    /// The local copy, with `enabled` false, to persist (its secrets sealed).
    pub(crate) config: SealedConfig,
    /// `sluice.subscription.disabled`, durable with the disable.
    pub(crate) notice: Option<OperationalEvent>,
}

/// The writer's end for outcomes: attempts, the timers and the scanner record through it.
#[derive(Clone)]
pub(crate) struct OutcomeSender {
    tx: mpsc::Sender<OutcomeEvent>,
}

/// How long [`OutcomeSender::flush`] waits, in case the writer is stuck retrying a broken
/// database.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

impl OutcomeSender {
    pub(crate) fn new(tx: mpsc::Sender<OutcomeEvent>) -> OutcomeSender {
        OutcomeSender { tx }
    }

    /// Hands an outcome to the writer. Fails only when the writer has stopped (at the very
    /// end of shutdown); the delivery then stays pending in the database.
    pub(crate) async fn record(&self, event: OutcomeEvent) {
        if self.tx.send(event).await.is_err() {
            tracing::warn!(
                "outcome writer stopped; the outcome is not recorded and the delivery stays pending"
            );
        }
    }

    /// Waits until every outcome handed to the writer before this call is committed, so a
    /// caller reads the delivery rows as the attempts left them.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(OutcomeEvent::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(FLUSH_WAIT, wait).await;
        }
    }
}
