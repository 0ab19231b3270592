//! What a write cycle does for new events: which are new and which repeat an idempotency
//! key, the statements that store the new ones (their messages and fan-out rows), and,
//! once committed, the answers to their publishers and their first attempts handed to the
//! dispatcher (or to the timers when the schedule delays first attempts).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect,
    Statement,
};
use sluice_proto::data::v1::PublishResponse;
use sluice_store::data::{delivery, message};
use sluice_store::hot;
use tokio::sync::mpsc;

use crate::deliver::dispatcher::Dispatcher;
use crate::error::DataError;
use crate::shutdown::Shutdown;
use crate::state::claims::Claims;
use crate::state::fanouts::{EncodedRecord, Fanouts, REPORT_DELAY};
use crate::state::heads::Heads;
use crate::state::outbox::ReportBody;
use crate::work::{
    DeliveryTask, NewMessage, OperationalEvent, PublishJob, ScheduledRetry, StoredMessage,
};

/// Keys looked up per query, well under SQLite's and PostgreSQL's bound-parameter limits.
const KEYS_PER_QUERY: usize = 1000;

/// What the writer needs to store new events and hand them on.
pub(crate) struct Publishes {
    pub(crate) db: DatabaseConnection,
    pub(crate) claims: Arc<Claims>,
    pub(crate) fanouts: Arc<Fanouts>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// To the retry timers, when the schedule delays first attempts.
    pub(crate) retries: mpsc::Sender<ScheduledRetry>,
    pub(crate) lease_ms: i64,
    /// The wait before first attempts, in milliseconds (the schedule's first delay).
    pub(crate) first_delay_ms: i64,
    pub(crate) shutdown: Shutdown,
    /// Ordering keys whose head may have moved, for the scanner.
    pub(crate) heads: Arc<Heads>,
}

/// Which new events this process holds in memory and which it leaves to the scanner
/// ([`Publishes::admission`]), decided once per write cycle.
#[derive(Clone, Debug, Default)]
pub(crate) struct Admission {
    /// The lease of what is held; `None` leaves everything to the scanner.
    lease_until: Option<i64>,
    /// Workspaces left to the scanner all the same (over their share while memory is
    /// nearly full; empty otherwise, so the check per message costs nothing).
    left: Vec<String>,
}

impl Admission {
    /// The lease a new event of `workspace_id` gets here, if this process holds it.
    pub(crate) fn lease(&self, workspace_id: &str) -> Option<i64> {
        self.lease_until
            .filter(|_| !self.left.iter().any(|w| w == workspace_id))
    }
}

/// What became of one job.
pub(crate) enum Resolution {
    /// Written now.
    Created,
    /// A repeat of an earlier idempotency key: nothing written.
    Duplicate {
        message_id: String,
        delivery_count: u32,
    },
    /// A repeat of an earlier job of the same batch.
    DuplicateOfJob(usize),
}

impl Publishes {
    /// What each job is: new, or a repeat of an idempotency key already stored or earlier
    /// in the batch.
    pub(crate) async fn resolve(&self, jobs: &[PublishJob]) -> Result<Vec<Resolution>, DbErr> {
        let existing = self.existing_keys(jobs).await?;
        let mut first_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
        let mut resolutions = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            let Some(key) = job.message.idempotency_key.as_deref() else {
                resolutions.push(Resolution::Created);
                continue;
            };
            let workspace = job.message.workspace_id.as_str();
            if let Some((message_id, delivery_count)) =
                existing.get(&(workspace.to_owned(), key.to_owned()))
            {
                resolutions.push(Resolution::Duplicate {
                    message_id: message_id.clone(),
                    delivery_count: *delivery_count,
                });
            } else if let Some(first) = first_in_batch.get(&(workspace, key)) {
                resolutions.push(Resolution::DuplicateOfJob(*first));
            } else {
                first_in_batch.insert((workspace, key), index);
                resolutions.push(Resolution::Created);
            }
        }
        Ok(resolutions)
    }

    /// Which new events this process holds (their fan-outs leased here, their first
    /// attempts dispatched from memory) and which it leaves to the scanner in the database:
    /// all held while they fit with a tenth of memory to spare ([`Claims::reserve`]); in
    /// that last tenth, only the workspaces within an equal share of memory (among those
    /// holding any, plus one for a newcomer), so a workspace whose backlog fills memory
    /// cannot push another's new events into the database behind it. None at shutdown.
    pub(crate) fn admission(&self, created: &[(&NewMessage, &[String])]) -> Admission {
        if self.shutdown.is_requested() {
            return Admission::default();
        }
        let lease_until = Some(sluice_store::now_ms().saturating_add(self.lease_ms));
        let deliveries: usize = created.iter().map(|(_, ids)| ids.len()).sum();
        let room = self.claims.room();
        let reserve = self.claims.reserve();
        if deliveries.saturating_add(reserve) <= room {
            return Admission {
                lease_until,
                left: Vec::new(),
            };
        }
        // Memory is nearly full: once per cycle, workspace by workspace, smallest first.
        let mut demand: Vec<(&str, usize)> = Vec::new();
        for (message, ids) in created {
            let workspace = message.workspace_id.as_str();
            match demand.iter_mut().find(|(w, _)| *w == workspace) {
                Some((_, n)) => *n += ids.len(),
                None => demand.push((workspace, ids.len())),
            }
        }
        demand.sort_by_key(|(_, n)| *n);
        let holding = self.claims.holding();
        let newcomers = demand.iter().filter(|(w, _)| holding.of(w) == 0).count();
        let share = self.claims.max_held() / (holding.active + newcomers + 1);
        let mut admitted = 0usize;
        let mut left = Vec::new();
        for (workspace, n) in demand {
            let total = admitted.saturating_add(n);
            let fits = total <= room;
            let spare = total.saturating_add(reserve) <= room;
            let within_share = holding.of(workspace).saturating_add(n) <= share;
            if fits && (spare || within_share) {
                admitted = total;
            } else {
                left.push(workspace.to_owned());
            }
        }
        Admission { lease_until, left }
    }

    /// The statements that store new events (publishes' and operational events', each a
    /// message and the subscriptions it goes to): their messages and their fan-out rows. The
    /// control plane hears of those this process does not attempt itself in `report`.
    pub(crate) fn store_created(
        &self,
        backend: DbBackend,
        created: &[(&NewMessage, &[String])],
        admission: &Admission,
        report: &mut ReportBody,
        statements: &mut Vec<Statement>,
    ) {
        let subscription_lists: Vec<String> = created
            .iter()
            .map(|(m, ids)| all_subscriptions(m, ids).join(","))
            .collect();
        let rows: Vec<hot::data::MessageRow> = created
            .iter()
            .zip(&subscription_lists)
            .map(|((m, _), subscriptions)| hot::data::MessageRow {
                id: &m.id,
                workspace_id: &m.workspace_id,
                event_type: &m.event_type,
                envelope: &m.envelope,
                idempotency_key: m.idempotency_key.as_deref(),
                traceparent: m.traceparent.as_deref(),
                tracestate: m.tracestate.as_deref(),
                create_ms: m.create_ms,
                subscription_ids: subscriptions,
            })
            .collect();
        statements.push(hot::data::insert_messages(backend, &rows));
        // One fan-out row per message stands for all of its first attempts (see
        // `state::fanouts`).
        let fanouts: Vec<hot::data::FanoutRow> = created
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(message, _)| hot::data::FanoutRow {
                message_id: &message.id,
                workspace_id: &message.workspace_id,
                due_ms: message.create_ms.saturating_add(self.first_delay_ms),
                lease_until_ms: admission.lease(&message.workspace_id),
            })
            .collect();
        if !fanouts.is_empty() {
            statements.push(hot::data::insert_fanouts(backend, &fanouts));
        }
        // The control plane hears of a message with its first attempts' outcomes, unless
        // this process does not make them itself (no subscription but ordered ones, or left
        // to the scanner).
        for (message, ids) in created.iter().filter(|(message, ids)| {
            ids.is_empty() || admission.lease(&message.workspace_id).is_none()
        }) {
            report.message(&message_record(message, ids));
        }
    }

    /// After the commit: answers every publisher, then hands the new deliveries to the
    /// dispatcher (or to the timers when first attempts wait).
    pub(crate) fn answer(
        &self,
        jobs: Vec<PublishJob>,
        resolutions: Vec<Resolution>,
        admission: &Admission,
    ) {
        let answers: Vec<PublishResponse> = jobs
            .iter()
            .zip(&resolutions)
            .map(|(job, resolution)| match resolution {
                Resolution::Created => PublishResponse {
                    message_id: job.message.id.clone(),
                    duplicate: false,
                    delivery_count: job.delivery_count(),
                },
                Resolution::Duplicate {
                    message_id,
                    delivery_count,
                } => PublishResponse {
                    message_id: message_id.clone(),
                    duplicate: true,
                    delivery_count: *delivery_count,
                },
                Resolution::DuplicateOfJob(first) => PublishResponse {
                    message_id: jobs[*first].message.id.clone(),
                    duplicate: true,
                    delivery_count: jobs[*first].delivery_count(),
                },
            })
            .collect();
        let mut due_now = Vec::new();
        let mut later = Vec::new();
        for ((job, resolution), answer) in jobs.into_iter().zip(&resolutions).zip(answers) {
            // The publisher may have gone away; the event is durable and is delivered anyway.
            if matches!(resolution, Resolution::Created) {
                crate::metrics::metrics().published.add(1, &[]);
            }
            let _ = job.reply.send(Ok(answer));
            if let (Resolution::Created, Some(ordered)) = (resolution, &job.message.ordered) {
                // Their rows are written; the scanner claims each key's head.
                for subscription_id in &ordered.subscription_ids {
                    self.heads.moved(subscription_id, &ordered.key);
                }
            }
            let lease = admission.lease(&job.message.workspace_id);
            let (Resolution::Created, Some(lease_until)) = (resolution, lease) else {
                continue;
            };
            self.first_attempts(
                job.message,
                job.subscription_ids,
                lease_until,
                &mut due_now,
                &mut later,
            );
        }
        self.hand_on(due_now, later);
    }

    /// After the commit: hands the deliveries of operational events written with outcomes to
    /// the dispatcher, like a publish's.
    pub(crate) fn hand_on_notices<'a>(
        &self,
        notices: impl Iterator<Item = &'a OperationalEvent>,
        admission: &Admission,
    ) {
        let mut due_now = Vec::new();
        let mut later = Vec::new();
        for notice in notices {
            let Some(lease_until) = admission.lease(&notice.message.workspace_id) else {
                continue;
            };
            self.first_attempts(
                notice.message.clone(),
                notice.subscription_ids.clone(),
                lease_until,
                &mut due_now,
                &mut later,
            );
        }
        self.hand_on(due_now, later);
    }

    /// Opens a new message's fan-out and claims its first attempts, due now or later.
    fn first_attempts(
        &self,
        message: NewMessage,
        subscription_ids: Vec<String>,
        lease_until: i64,
        due_now: &mut Vec<DeliveryTask>,
        later: &mut Vec<ScheduledRetry>,
    ) {
        if subscription_ids.is_empty() {
            return;
        }
        // Opened before any attempt can conclude, so the writer sees each conclusion.
        self.fanouts.open(
            &message.id,
            message_record(&message, &subscription_ids),
            subscription_ids.clone(),
            REPORT_DELAY,
        );
        let message = Arc::new(StoredMessage::from_new(message));
        for task in
            DeliveryTask::first_attempts(&self.claims, &message, subscription_ids, lease_until)
        {
            if self.first_delay_ms == 0 {
                due_now.push(task);
            } else {
                later.push(ScheduledRetry {
                    due_ms: message.create_ms.saturating_add(self.first_delay_ms),
                    task,
                });
            }
        }
    }

    /// Hands first attempts to the dispatcher, or to the timers when they wait.
    fn hand_on(&self, due_now: Vec<DeliveryTask>, later: Vec<ScheduledRetry>) {
        self.dispatcher.enqueue(due_now);
        for retry in later {
            if let Err(err) = self.retries.try_send(retry) {
                // Timers busy or stopped: the scanner finds the delivery due in the database
                // once this process's lease on it runs out.
                let retry = err.into_inner();
                self.claims.release(&retry.task.key, retry.task.generation);
            }
        }
    }

    /// The stored messages that already carry an idempotency key of this batch:
    /// (workspace, key) → (message id, its delivery count).
    async fn existing_keys(
        &self,
        jobs: &[PublishJob],
    ) -> Result<HashMap<(String, String), (String, u32)>, DbErr> {
        let keys: Vec<String> = jobs
            .iter()
            .filter_map(|j| j.message.idempotency_key.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let workspaces: HashSet<&str> = jobs
            .iter()
            .map(|j| j.message.workspace_id.as_str())
            .collect();
        let mut found = Vec::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let rows: Vec<MessageKey> = message::Entity::find()
                .select_only()
                .column(message::Column::Id)
                .column(message::Column::WorkspaceId)
                .column(message::Column::IdempotencyKey)
                .column(message::Column::SubscriptionIds)
                .filter(message::Column::WorkspaceId.is_in(workspaces.iter().copied()))
                .filter(message::Column::IdempotencyKey.is_in(chunk.to_vec()))
                .into_tuple()
                .all(&self.db)
                .await?;
            found.extend(
                rows.into_iter()
                    .filter(|(_, workspace, _, _)| workspaces.contains(workspace.as_str())),
            );
        }
        // Messages stored before fan-out rows existed have no subscription list: count their
        // delivery rows instead.
        let older: Vec<String> = found
            .iter()
            .filter(|(_, _, _, subscriptions)| subscriptions.is_none())
            .map(|(id, _, _, _)| id.clone())
            .collect();
        let counts: HashMap<String, i64> = if older.is_empty() {
            HashMap::new()
        } else {
            delivery::Entity::find()
                .select_only()
                .column(delivery::Column::MessageId)
                .column_as(delivery::Column::SubscriptionId.count(), "n")
                .filter(delivery::Column::MessageId.is_in(older))
                .group_by(delivery::Column::MessageId)
                .into_tuple::<(String, i64)>()
                .all(&self.db)
                .await?
                .into_iter()
                .collect()
        };
        Ok(found
            .into_iter()
            .filter_map(|(id, workspace, key, subscriptions)| {
                let count = match subscriptions {
                    Some(list) => list.split(',').filter(|s| !s.is_empty()).count(),
                    None => usize::try_from(counts.get(&id).copied().unwrap_or(0)).unwrap_or(0),
                };
                Some((
                    (workspace, key?),
                    (id, u32::try_from(count).unwrap_or(u32::MAX)),
                ))
            })
            .collect())
    }
}

/// Why events were not acked as stored.
pub(crate) enum Refusal {
    /// The write failed before its commit: not stored.
    Failed,
    /// The database did not answer within the store timeout: not stored.
    TimedOut(Duration),
    /// The commit was under way when the database failed: perhaps stored.
    Uncertain,
}

/// Answers every job of a write that did not commit, with UNAVAILABLE and what the
/// publisher should do (the cause is logged by the writer).
pub(crate) fn refuse(jobs: Vec<PublishJob>, why: Refusal) {
    if jobs.is_empty() {
        return;
    }
    let message = match why {
        Refusal::Failed => "the event could not be stored; publish it again".to_owned(),
        Refusal::TimedOut(timeout) => format!(
            "the event was not stored: the database did not answer within the store timeout \
             ({} ms); publish it again",
            timeout.as_millis()
        ),
        Refusal::Uncertain => "the database failed while the event was being committed, so it \
             may have been stored; publish it again with the same idempotency key, which makes \
             a repeat harmless"
            .to_owned(),
    };
    for job in jobs {
        let _ = job.reply.send(Err(DataError::Unavailable(message.clone())));
    }
}

/// What the control plane is told of an accepted message.
fn message_record(message: &NewMessage, subscription_ids: &[String]) -> EncodedRecord {
    let record = EncodedRecord::encode(
        &message.id,
        &message.workspace_id,
        &message.event_type,
        message.create_ms,
        &all_subscriptions(message, subscription_ids),
    );
    match &message.ordered {
        None => record,
        Some(ordered) => record.with_ordering_key(&ordered.key),
    }
}

/// Every subscription a message goes to: its fan-out's (`subscription_ids`) and, with an
/// ordering key, the ordered ones (borrowed as is without).
fn all_subscriptions<'a>(
    message: &NewMessage,
    subscription_ids: &'a [String],
) -> std::borrow::Cow<'a, [String]> {
    match &message.ordered {
        None => std::borrow::Cow::Borrowed(subscription_ids),
        Some(ordered) => {
            let mut all = subscription_ids.to_vec();
            all.extend(ordered.subscription_ids.iter().cloned());
            std::borrow::Cow::Owned(all)
        }
    }
}

/// A stored message's id, workspace, idempotency key and subscription list.
type MessageKey = (String, String, Option<String>, Option<String>);
