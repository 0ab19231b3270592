//! The scanner: loads due work from the database (at start, every pending delivery; then
//! every second, due ones nobody holds) so retries that wait there, work left by a restart
//! and a dead replica's work are all picked up. Also renews and gives back the leases of
//! what this replica holds.
//!
//! On PostgreSQL several replicas share the queue. The scanner claims rows by setting
//! `lease_until_ms` in one `UPDATE … WHERE key IN (SELECT … FOR UPDATE SKIP LOCKED)`, so two
//! replicas never take the same row, and a dead replica's rows come free when its leases
//! expire. Every replica (SQLite's one too) renews the leases of what it holds, in a lane,
//! on a timer, in flight, or with its outcome not yet committed, so the scanner never takes
//! up again what this replica holds; a claim is given back only once its outcome is
//! committed (`commit::outcomes::release_claims`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, Statement, Value,
};
use sluice_core::outcome::DeliveryStatus;
use sluice_proto::control::v1::AttemptTrigger;
use sluice_store::data::{delivery, fanout, message};
use sluice_store::{now_ms, placeholder, skip_locked};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::deliver::dispatcher::Dispatcher;
use crate::deliver::fair_share::{RoundRobin, again};
use crate::deliver::ordering;
use crate::shutdown::Shutdown;
use crate::state::claims::{Claims, DeliveryKey};
use crate::state::fanouts::{EncodedRecord, Fanouts};
use crate::state::heads::Heads;
use crate::work::{
    DeliveryTask, EndedDelivery, OutcomeEvent, OutcomeSender, ScheduledRetry, StoredMessage,
};

/// How often the scanner looks for due deliveries nobody holds.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How soon the scanner looks again when its last pass left memory full
/// (`DataConfig::max_held_deliveries`): more work may wait in the database, and room frees
/// as fast as the endpoints answer, so waiting a whole [`SCAN_INTERVAL`] would cap a
/// backlog's drain at one memory's worth a second. A pass while memory is still full
/// sends no query.
const REFILL_INTERVAL: Duration = Duration::from_millis(100);
/// Deliveries due within this are claimed a little early and put on a timer, so a scan
/// period does not delay them.
const SCAN_LOOKAHEAD_MS: i64 = 1_000;
/// Rows claimed per query.
const CLAIM_BATCH: usize = 500;
/// Rows updated per statement when renewing or releasing leases.
const LEASE_CHUNK: usize = 500;
/// Messages read per statement for claimed work (their envelopes: up to a payload's size
/// each), so the writer, which shares SQLite's one connection, waits for one short read at
/// most.
const MESSAGE_CHUNK: usize = 100;
/// Workspaces one pass shares the room among at most (the round robin's cursor brings the
/// others round in later passes).
const WORKSPACES_PER_PASS: usize = 256;

/// The scanner and what it works with.
pub(crate) struct Scanner {
    pub(crate) db: DatabaseConnection,
    pub(crate) claims: Arc<Claims>,
    pub(crate) fanouts: Arc<Fanouts>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// To the retry timers, for claimed work due a little later.
    pub(crate) retries: mpsc::Sender<ScheduledRetry>,
    pub(crate) outcomes: OutcomeSender,
    pub(crate) lease_ms: i64,
    pub(crate) shutdown: Shutdown,
    /// Ordering keys whose head may have moved: claimed at once (`deliver::ordering`).
    pub(crate) heads: Arc<Heads>,
    /// Where the next pass's round robin over workspaces starts (`deliver::fair_share`),
    /// one per [`Queue`].
    pub(crate) round_robin: [Mutex<RoundRobin>; 2],
}

impl Scanner {
    /// The scanner task: every [`SCAN_INTERVAL`], renews the leases of what this process
    /// holds, then claims due deliveries; while memory is full, tries to claim again every
    /// [`REFILL_INTERVAL`] in between.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut interval = tokio::time::interval(SCAN_INTERVAL);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut full = false;
        loop {
            let (scan, heads_only) = tokio::select! {
                biased;
                () = self.shutdown.requested() => return,
                _ = interval.tick() => (true, false),
                () = tokio::time::sleep(REFILL_INTERVAL), if full => (false, false),
                () = self.heads.wake.notified() => (false, true),
            };
            if scan {
                // Renewed first, so nothing this replica holds looks free to the claim below.
                if let Err(err) = self.renew_leases().await {
                    tracing::error!(error = %err, "renewing delivery leases failed");
                }
            }
            if let Err(err) = self.claim_heads().await {
                tracing::error!(error = %err, "claiming the next deliveries of ordering keys failed; the next scan claims them");
            }
            let claimed = if scan {
                self.claim_all_due().await
            } else if heads_only {
                Ok(())
            } else {
                self.claim_queues().await
            };
            if let Err(err) = claimed {
                tracing::error!(error = %err, "loading due deliveries failed; trying again shortly");
            }
            full = self.claims.room() <= self.claims.reserve();
        }
    }

    /// Frees the fan-outs whose lease ran out, then claims due deliveries and due first
    /// attempts until none are left or memory is full.
    pub(crate) async fn claim_all_due(&self) -> Result<(), DbErr> {
        self.free_expired_fanouts().await?;
        self.claim_queues().await
    }

    /// Claims due deliveries, then due first attempts, until none are left or memory is
    /// full, the room shared between workspaces each time.
    async fn claim_queues(&self) -> Result<(), DbErr> {
        for queue in [Queue::Deliveries, Queue::Fanouts] {
            loop {
                let claimed = self.claim_shared(queue).await?;
                if claimed < CLAIM_BATCH || self.shutdown.is_requested() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// `None` when memory holds all it may.
    fn claim_window(&self) -> Option<ClaimWindow> {
        // The reserve is for new events of workspaces within their share.
        let room = self.claims.room().saturating_sub(self.claims.reserve());
        if room == 0 {
            return None;
        }
        let now = now_ms();
        let due_by = now.saturating_add(SCAN_LOOKAHEAD_MS);
        let backend = self.db.get_database_backend();
        Some(ClaimWindow {
            limit: i64::try_from(room.min(CLAIM_BATCH)).unwrap_or(i64::MAX),
            now,
            due_by,
            lease_until: due_by.saturating_add(self.lease_ms),
            backend,
            lock: skip_locked(backend),
        })
    }

    /// Claims due (or nearly due) rows of `queue` whose lease is free (of an ordering key,
    /// its head only), the room shared between the workspaces that have some by deficit
    /// round robin (`fair_share`), so a workspace's backlog cannot hold another's work
    /// back. Each query reads one workspace's index range, so none holds SQLite's one
    /// connection for long.
    async fn claim_shared(&self, queue: Queue) -> Result<usize, DbErr> {
        let Some(window) = self.claim_window() else {
            return Ok(0);
        };
        let workspaces = self.waiting_workspaces(queue, &window).await?;
        let room = usize::try_from(window.limit).unwrap_or(CLAIM_BATCH);
        let quanta = self.round_robin[queue as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .quanta(workspaces.len(), room);
        let mut claimed = 0;
        let mut hungry = Vec::new();
        for (index, quantum) in quanta {
            let got = self
                .claim_in(queue, &window, &workspaces[index], quantum)
                .await?;
            claimed += got;
            if got == quantum {
                hungry.push(index);
            }
        }
        for (index, quantum) in again(&hungry, room.saturating_sub(claimed)) {
            claimed += self
                .claim_in(queue, &window, &workspaces[index], quantum)
                .await?;
        }
        Ok(claimed)
    }

    /// The workspaces with rows in `queue` (pending deliveries, due or not; fan-outs nobody
    /// holds, due or not), at most [`WORKSPACES_PER_PASS`], sorted, starting after the last
    /// one the previous pass listed when that pass was full (so with more workspaces than
    /// that, every one comes round): a skip scan of the index on `dp_deliveries (status,
    /// workspace_id, next_attempt_ms)` (m0009) or the partial one on `dp_fanout
    /// (workspace_id, message_id)` (m0011), one index seek per workspace however long its
    /// backlog.
    async fn waiting_workspaces(
        &self,
        queue: Queue,
        window: &ClaimWindow,
    ) -> Result<Vec<String>, DbErr> {
        let round_robin = &self.round_robin[queue as usize];
        let after = round_robin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .resume_after();
        let mut listed = self
            .list_workspaces(queue, window, after.as_deref())
            .await?;
        if listed.is_empty() && after.is_some() {
            listed = self.list_workspaces(queue, window, None).await?;
        }
        round_robin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listed(&listed, WORKSPACES_PER_PASS);
        Ok(listed)
    }

    /// The skip scan of [`Scanner::waiting_workspaces`], from the first workspace after
    /// `after` or from the first of all.
    async fn list_workspaces(
        &self,
        queue: Queue,
        window: &ClaimWindow,
        after: Option<&str>,
    ) -> Result<Vec<String>, DbErr> {
        let backend = window.backend;
        let mut values = vec![Value::from(
            i64::try_from(WORKSPACES_PER_PASS).unwrap_or(i64::MAX),
        )];
        let (table, rows) = match queue {
            Queue::Deliveries => {
                values.push(Value::from(DeliveryStatus::Pending.as_str()));
                (
                    "dp_deliveries",
                    format!("status = {}", placeholder(backend, 2)),
                )
            }
            Queue::Fanouts => ("dp_fanout", UNLEASED.to_owned()),
        };
        let start = match after {
            Some(after) => {
                values.push(Value::from(after));
                format!(" AND workspace_id > {}", placeholder(backend, values.len()))
            }
            None => String::new(),
        };
        let sql = format!(
            "WITH RECURSIVE w(id) AS ( \
               SELECT (SELECT MIN(workspace_id) FROM {table} WHERE {rows}{start}) \
               UNION ALL \
               SELECT (SELECT MIN(workspace_id) FROM {table} \
                       WHERE {rows} AND workspace_id > w.id) \
               FROM w WHERE w.id IS NOT NULL) \
             SELECT id FROM w WHERE id IS NOT NULL LIMIT {p1}",
            p1 = placeholder(backend, 1),
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        rows.iter()
            .map(|row| row.try_get_by_index::<String>(0))
            .collect()
    }

    /// One claim query of at most `limit` rows of `queue` of one workspace, in due order
    /// (deliveries) or creation order (fan-outs; message ids sort by creation).
    async fn claim_in(
        &self,
        queue: Queue,
        window: &ClaimWindow,
        workspace_id: &str,
        limit: usize,
    ) -> Result<usize, DbErr> {
        let (backend, lock) = (window.backend, window.lock);
        let p = |n| placeholder(backend, n);
        let mut values = vec![
            Value::from(window.lease_until),
            Value::from(window.due_by),
            Value::from(i64::try_from(limit).unwrap_or(i64::MAX)),
        ];
        if queue == Queue::Deliveries {
            values.push(Value::from(window.now));
            values.push(Value::from(DeliveryStatus::Pending.as_str()));
        }
        values.push(Value::from(workspace_id));
        let workspace = p(values.len());
        let statement = |sql| Statement::from_sql_and_values(backend, sql, values);
        match queue {
            Queue::Deliveries => {
                let sql = format!(
                    "UPDATE dp_deliveries SET lease_until_ms = {p1} \
                     WHERE (message_id, subscription_id) IN ( \
                       SELECT message_id, subscription_id FROM dp_deliveries d \
                       WHERE workspace_id = {workspace} AND status = {p5} \
                         AND next_attempt_ms <= {p2} \
                         AND (lease_until_ms IS NULL OR lease_until_ms <= {p4}) AND {head_only} \
                       ORDER BY next_attempt_ms LIMIT {p3}{lock}) \
                     RETURNING *",
                    p1 = p(1),
                    p2 = p(2),
                    p3 = p(3),
                    p4 = p(4),
                    p5 = p(5),
                    head_only = ordering::HEAD_ONLY,
                );
                let rows = delivery::Entity::find()
                    .from_raw_sql(statement(sql))
                    .all(&self.db)
                    .await?;
                let count = rows.len();
                if count > 0 {
                    self.take_rows(rows, AttemptTrigger::Scheduled, window.lease_until)
                        .await?;
                }
                Ok(count)
            }
            Queue::Fanouts => {
                // Only rows nobody holds: the partial index's (m0011); leases that ran out
                // were cleared by `free_expired_fanouts`.
                let sql = format!(
                    "UPDATE dp_fanout SET lease_until_ms = {p1} \
                     WHERE message_id IN ( \
                       SELECT message_id FROM dp_fanout \
                       WHERE workspace_id = {workspace} AND {UNLEASED} AND due_ms <= {p2} \
                       ORDER BY message_id LIMIT {p3}{lock}) \
                     RETURNING *",
                    p1 = p(1),
                    p2 = p(2),
                    p3 = p(3),
                );
                let rows = fanout::Entity::find()
                    .from_raw_sql(statement(sql))
                    .all(&self.db)
                    .await?;
                let count = rows.len();
                if count > 0 {
                    self.take_fanouts(rows, window.lease_until).await?;
                }
                Ok(count)
            }
        }
    }

    /// Clears the leases of fan-outs that ran out (a replica that died, or a process killed
    /// before it gave them back), so the fair claim, which reads the fan-outs nobody holds,
    /// sees them. Each statement frees at most [`LEASE_CHUNK`] rows, so none holds SQLite's
    /// connection for long. Reads the table (no index on the lease: every fan-out row is
    /// written with one), once a scan period.
    async fn free_expired_fanouts(&self) -> Result<(), DbErr> {
        let backend = self.db.get_database_backend();
        let lock = skip_locked(backend);
        let sql = format!(
            "UPDATE dp_fanout SET lease_until_ms = NULL \
             WHERE message_id IN ( \
               SELECT message_id FROM dp_fanout WHERE lease_until_ms <= {p1} \
               LIMIT {p2}{lock})",
            p1 = placeholder(backend, 1),
            p2 = placeholder(backend, 2),
        );
        loop {
            let freed = self
                .db
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    sql.clone(),
                    [
                        Value::from(now_ms()),
                        Value::from(i64::try_from(LEASE_CHUNK).unwrap_or(i64::MAX)),
                    ],
                ))
                .await?
                .rows_affected();
            if freed < LEASE_CHUNK as u64 || self.shutdown.is_requested() {
                return Ok(());
            }
        }
    }

    /// Turns claimed fan-outs into held first attempts: each subscription of the message that
    /// has neither a delivery row nor a concluded first attempt here.
    async fn take_fanouts(
        &self,
        rows: Vec<fanout::Model>,
        lease_until_ms: i64,
    ) -> Result<(), DbErr> {
        let ids: Vec<String> = rows.iter().map(|r| r.message_id.clone()).collect();
        let mut messages: HashMap<String, message::Model> = HashMap::with_capacity(ids.len());
        let mut with_rows: HashSet<(String, String)> = HashSet::new();
        for chunk in ids.chunks(MESSAGE_CHUNK) {
            for row in message::Entity::find()
                .filter(message::Column::Id.is_in(chunk.to_vec()))
                .all(&self.db)
                .await?
            {
                messages.insert(row.id.clone(), row);
            }
            let stored: Vec<(String, String)> = delivery::Entity::find()
                .select_only()
                .column(delivery::Column::MessageId)
                .column(delivery::Column::SubscriptionId)
                .filter(delivery::Column::MessageId.is_in(chunk.to_vec()))
                .into_tuple()
                .all(&self.db)
                .await?;
            with_rows.extend(stored);
        }
        let now = now_ms();
        let mut due_now = Vec::new();
        let mut finished = Vec::new();
        for row in rows {
            let Some(message) = messages.remove(&row.message_id) else {
                tracing::error!(message_id = %row.message_id, "fan-out without its message; dropping it");
                finished.push(row.message_id);
                continue;
            };
            let remaining = match self.fanouts.remaining(&message.id) {
                Some(remaining) => remaining,
                None => {
                    let matched: Vec<String> = message
                        .subscription_ids
                        .as_deref()
                        .unwrap_or_default()
                        .split(',')
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let remaining: Vec<String> = matched
                        .iter()
                        .filter(|id| !with_rows.contains(&(message.id.clone(), (*id).clone())))
                        .cloned()
                        .collect();
                    if remaining.is_empty() {
                        finished.push(message.id.clone());
                        continue;
                    }
                    // Reported again at once: the control plane may never have heard of it (a
                    // repeat is harmless).
                    let record = EncodedRecord::encode(
                        &message.id,
                        &message.workspace_id,
                        &message.event_type,
                        message.create_ms,
                        &matched,
                    );
                    self.fanouts
                        .open(&message.id, record, remaining.clone(), Duration::ZERO);
                    remaining
                }
            };
            let stored = Arc::new(StoredMessage::from_row(message));
            for task in
                DeliveryTask::first_attempts(&self.claims, &stored, remaining, lease_until_ms)
            {
                if !self.route(task, row.due_ms, now, &mut due_now).await {
                    // Timers stopped: shutting down, the fan-out stays in the database.
                    return Ok(());
                }
            }
        }
        self.dispatcher.enqueue(due_now);
        // Nothing is left to attempt for these (every delivery has its own row): no process
        // has them open, so the scanner may end them.
        for chunk in finished.chunks(LEASE_CHUNK) {
            fanout::Entity::delete_many()
                .filter(fanout::Column::MessageId.is_in(chunk.iter().cloned()))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Claims the heads of the ordering keys noted in `heads` that are free and due, and
    /// hands them on like any claimed delivery. Notes are dropped while memory is full (the
    /// periodic claim takes those heads up later).
    async fn claim_heads(&self) -> Result<(), DbErr> {
        let keys = self.heads.take();
        if keys.is_empty() {
            return Ok(());
        }
        let Some(window) = self.claim_window() else {
            return Ok(());
        };
        // At most as many as memory has room for; the rest stay noted for the next round.
        let mut keys = keys;
        let room = usize::try_from(window.limit).unwrap_or(usize::MAX);
        if keys.len() > room {
            for (subscription_id, ordering_key) in keys.split_off(room) {
                self.heads.moved(&subscription_id, &ordering_key);
            }
        }
        let mut rows = Vec::new();
        for chunk in keys.chunks(ordering::KEYS_PER_CLAIM) {
            rows.extend(
                ordering::claim_heads(
                    &self.db,
                    chunk,
                    window.now,
                    window.due_by,
                    window.lease_until,
                )
                .await?,
            );
        }
        if !rows.is_empty() {
            self.take_rows(rows, AttemptTrigger::Scheduled, window.lease_until)
                .await?;
        }
        Ok(())
    }

    /// Turns claimed rows into held tasks: due ones to their lanes, the rest onto timers.
    pub(crate) async fn take_rows(
        &self,
        rows: Vec<delivery::Model>,
        trigger: AttemptTrigger,
        lease_until_ms: i64,
    ) -> Result<(), DbErr> {
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.message_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut messages: HashMap<String, Arc<StoredMessage>> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(MESSAGE_CHUNK) {
            let found = message::Entity::find()
                .filter(message::Column::Id.is_in(chunk.to_vec()))
                .all(&self.db)
                .await?;
            for row in found {
                messages.insert(row.id.clone(), Arc::new(StoredMessage::from_row(row)));
            }
        }
        let now = now_ms();
        let mut due_now = Vec::new();
        for row in rows {
            let key = DeliveryKey {
                message_id: row.message_id,
                subscription_id: row.subscription_id,
            };
            let Some(generation) = self.claims.claim(&key, &row.workspace_id, lease_until_ms)
            else {
                // Already held here (a lease that ran out while it waited in a lane).
                continue;
            };
            let Some(message) = messages.get(&key.message_id) else {
                tracing::error!(message_id = %key.message_id, subscription_id = %key.subscription_id, "pending delivery without its message; cancelling it");
                self.outcomes
                    .record(OutcomeEvent::Ended(Box::new(EndedDelivery {
                        key,
                        status: DeliveryStatus::Cancelled,
                        workspace_id: row.workspace_id,
                        create_ms: row.create_ms,
                        release_after_commit: generation,
                        ordering_key: row.ordering_key.map(Arc::from),
                    })))
                    .await;
                continue;
            };
            let task = DeliveryTask {
                ordering_key: row.ordering_key.map(Arc::from),
                key,
                message: Arc::clone(message),
                attempt_count: u32::try_from(row.attempt_count).unwrap_or(0),
                first_failure_ms: row.first_failure_ms,
                schedule_start: u32::try_from(row.schedule_start).unwrap_or(0),
                trigger,
                generation,
            };
            if !self
                .route(task, row.next_attempt_ms, now, &mut due_now)
                .await
            {
                // Timers stopped: shutting down, the row stays pending.
                return Ok(());
            }
        }
        self.dispatcher.enqueue(due_now);
        Ok(())
    }

    /// Puts a claimed task with its lane's work (`due_now`) or on a timer; false when the
    /// timers have stopped (shutdown).
    async fn route(
        &self,
        task: DeliveryTask,
        due_ms: i64,
        now: i64,
        due_now: &mut Vec<DeliveryTask>,
    ) -> bool {
        if due_ms <= now {
            due_now.push(task);
            return true;
        }
        self.retries
            .send(ScheduledRetry { due_ms, task })
            .await
            .is_ok()
    }

    /// Extends the leases of held deliveries that would otherwise run out, so another replica
    /// does not take work this one still has queued.
    async fn renew_leases(&self) -> Result<(), DbErr> {
        let now = now_ms();
        let lease = self.lease_ms;
        let renewed_until = now.saturating_add(lease);
        let keys = self
            .claims
            .leases_to_renew(now.saturating_add(lease / 2), renewed_until);
        let written = self.set_leases(&keys, Some(renewed_until)).await;
        if written.is_err() {
            // Not renewed after all (the database is away): the next pass tries them again,
            // rather than when the lease it believes in would run low.
            self.claims.forget_leases(&keys);
        }
        written
    }

    /// Clears the leases of everything this process holds, so another replica can take it at
    /// once (shutdown).
    pub(crate) async fn release_all(&self) -> Result<(), DbErr> {
        let keys = self.claims.keys();
        self.set_leases(&keys, None).await
    }

    async fn set_leases(
        &self,
        keys: &[DeliveryKey],
        lease_until_ms: Option<i64>,
    ) -> Result<(), DbErr> {
        let mut by_subscription: HashMap<&str, Vec<String>> = HashMap::new();
        for key in keys {
            by_subscription
                .entry(key.subscription_id.as_str())
                .or_default()
                .push(key.message_id.clone());
        }
        // First attempts are leased through their message's fan-out row.
        let mut messages: Vec<String> = keys.iter().map(|k| k.message_id.clone()).collect();
        messages.sort_unstable();
        messages.dedup();
        for chunk in messages.chunks(LEASE_CHUNK) {
            fanout::Entity::update_many()
                .col_expr(fanout::Column::LeaseUntilMs, Expr::value(lease_until_ms))
                .filter(fanout::Column::MessageId.is_in(chunk.iter().cloned()))
                .exec(&self.db)
                .await?;
        }
        for (subscription_id, message_ids) in by_subscription {
            for chunk in message_ids.chunks(LEASE_CHUNK) {
                delivery::Entity::update_many()
                    .col_expr(delivery::Column::LeaseUntilMs, Expr::value(lease_until_ms))
                    .filter(delivery::Column::SubscriptionId.eq(subscription_id))
                    .filter(delivery::Column::MessageId.is_in(chunk.to_vec()))
                    .filter(delivery::Column::Status.eq(DeliveryStatus::Pending.as_str()))
                    .exec(&self.db)
                    .await?;
            }
        }
        Ok(())
    }
}

/// What a claim takes from the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    /// Pending deliveries (`dp_deliveries`): retries, and attempts that could not be made.
    Deliveries = 0,
    /// Fan-outs (`dp_fanout`): messages whose first attempts are left to the scanner.
    Fanouts = 1,
}

/// What one claim query may take: how many rows (memory has room for), the lease they get,
/// and the row-locking clause (PostgreSQL replicas skip rows another is claiming).
struct ClaimWindow {
    /// Rows at most, as the query's `LIMIT`.
    limit: i64,
    now: i64,
    /// Rows due by this are taken (the scan looks a little ahead).
    due_by: i64,
    lease_until: i64,
    backend: DbBackend,
    lock: &'static str,
}

/// The fan-outs nobody holds, as the partial index on `dp_fanout` (m0011) states it.
const UNLEASED: &str = "lease_until_ms IS NULL";
