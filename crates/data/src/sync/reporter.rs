//! The outcome reporter: streams the outbox (messages accepted, attempt outcomes,
//! subscriptions disabled) to the control plane's `ReportOutcomes`, and has each row deleted
//! once the control plane acks its batch. Batches come straight from the writer after its
//! commit; the table is read after a reconnect, so unacked rows are sent again (the control
//! plane stores them idempotently, so a repeat is harmless, on the same replica or, after a
//! move to the next one, on another replica of the same database).
//!
//! Deliveries never wait for this: while the control plane is down the outbox grows and the
//! reporter retries with backoff.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_stream::wrappers::ReceiverStream;

use sea_orm::DatabaseConnection;

use crate::backoff::Backoff;
use crate::shutdown::Shutdown;
use crate::state::outbox::{self, Committed, Outbox};
use crate::sync::control_client::{ControlClient, EncodedBatch, Replica, is_auth_error};
use crate::sync::leader::{self, Leader};

/// Batches sent but not yet acked, at most: enough to keep the pipe full across a
/// round trip, few enough that a reconnect resends little.
const WINDOW: usize = 32;
/// A safety net for a missed wake-up: the outbox is checked at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How often a replica that does not report checks whether the reporter went away.
const FOLLOWER_RETRY: Duration = Duration::from_secs(5);
/// How often the reporting replica checks that it still holds its lock.
const LEADER_CHECK: Duration = Duration::from_secs(5);

/// Why a stream session ended.
enum SessionEnd {
    /// The stream broke or could not open: back off and reconnect.
    Broken,
    /// Shutdown flush finished (outbox empty) or its deadline passed.
    Done,
}

/// The reporter and what it reads and talks to.
pub(crate) struct Reporter {
    pub(crate) db: DatabaseConnection,
    /// On PostgreSQL replicas elect the one that reports; SQLite has one process.
    pub(crate) postgres: bool,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) control: ControlClient,
    pub(crate) shutdown: Shutdown,
    /// The outbox's last seq when the shutdown flush began (the writer has stopped by
    /// then): on PostgreSQL the flush ends once everything up to it is acked. The other
    /// replicas keep adding rows under load, and those are the next reporter's; waiting
    /// for the table to empty held a reporting replica's shutdown for its whole grace.
    pub(crate) flush_floor: tokio::sync::OnceCell<i64>,
}

impl Reporter {
    /// The reporter's loop: one stream session after another until shutdown's flush ends.
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::new();
        let mut leader: Option<Leader> = None;
        loop {
            if self.flush_over().await {
                break;
            }
            if self.postgres && !self.lead(&mut leader, &mut backoff).await {
                if self.shutdown.is_flushing_reports() {
                    // Another replica reports; nothing for this one to flush.
                    break;
                }
                tokio::select! {
                    () = sleep(FOLLOWER_RETRY) => {}
                    () = self.shutdown.reports_flushing() => {}
                }
                continue;
            }
            let replica = self.control.replica().await;
            let ended = self.session(&replica, &mut backoff, leader.as_mut()).await;
            if matches!(ended, SessionEnd::Broken) {
                self.control.failed(&replica).await;
            }
            match ended {
                SessionEnd::Done => break,
                // Flushing for shutdown and the control plane is not there: what is left is
                // sent after the restart rather than holding the shutdown up.
                SessionEnd::Broken if self.shutdown.is_flushing_reports() => {
                    tracing::info!(
                        "control plane unreachable at shutdown; unsent outcomes stay in the outbox"
                    );
                    break;
                }
                SessionEnd::Broken => {
                    let delay = backoff.next_delay();
                    let deadline = self.shutdown.report_flush_deadline();
                    tokio::select! {
                        () = sleep(delay) => {}
                        () = sleep_until(deadline.unwrap_or_else(|| Instant::now() + delay)), if deadline.is_some() => break,
                    }
                }
            }
        }
        if let Some(leader) = leader {
            leader.resign().await;
        }
    }

    /// Makes sure this replica leads (PostgreSQL only); false when another one does.
    async fn lead(&self, leader: &mut Option<Leader>, backoff: &mut Backoff) -> bool {
        if let Some(current) = leader.as_mut() {
            if current.still_held().await {
                return true;
            }
            tracing::warn!("lost the outbox reporter lock (its connection failed); electing again");
            *leader = None;
        }
        match leader::try_lead(&self.db).await {
            Ok(Some(won)) => {
                tracing::info!("this replica reports outcomes to the control plane");
                *leader = Some(won);
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::error!(error = %err, "electing the outbox reporter failed");
                tokio::time::sleep(backoff.next_delay()).await;
                false
            }
        }
    }

    /// Whether the shutdown flush is finished: past its deadline, or nothing left to send.
    async fn flush_over(&self) -> bool {
        let Some(deadline) = self.shutdown.report_flush_deadline() else {
            return false;
        };
        if Instant::now() >= deadline {
            return true;
        }
        outbox::delete_acked_now(&self.db, &self.outbox).await;
        matches!(self.nothing_left_to_flush(&BTreeSet::new()).await, Ok(true))
    }

    /// Up to `room` outbox rows not in `unacked`, oldest first; while flushing for shutdown
    /// on PostgreSQL, only those the flush must send ([`Reporter::flush_floor`]).
    async fn read_to_send(
        &self,
        unacked: &BTreeSet<i64>,
        room: usize,
    ) -> Result<Vec<sluice_store::data::outbox::Model>, sea_orm::DbErr> {
        let mut rows = outbox::read(&self.db, &self.outbox, unacked, room).await?;
        if self.postgres && self.shutdown.is_flushing_reports() {
            let floor = self
                .flush_floor
                .get_or_try_init(|| outbox::last_seq(&self.db))
                .await?;
            rows.retain(|row| row.seq <= *floor);
        }
        Ok(rows)
    }

    /// Whether the shutdown flush has sent everything it must, `unacked` aside: on SQLite
    /// the whole outbox, on PostgreSQL what was there when the flush began
    /// ([`Reporter::flush_floor`]).
    async fn nothing_left_to_flush(&self, unacked: &BTreeSet<i64>) -> Result<bool, sea_orm::DbErr> {
        let rows = outbox::read(&self.db, &self.outbox, unacked, 1).await?;
        let Some(first) = rows.first() else {
            return Ok(true);
        };
        if !self.postgres {
            return Ok(false);
        }
        let floor = self
            .flush_floor
            .get_or_try_init(|| outbox::last_seq(&self.db))
            .await?;
        Ok(first.seq > *floor)
    }

    /// Resolves when the shutdown flush is over while a stream is still opening (a replica
    /// that accepts connections and never answers holds an open up until the keep-alive
    /// gives up): at once when nothing is left to send, else at the flush deadline. Never
    /// while running normally, however long the open takes.
    async fn flush_over_while_opening(&self) {
        self.shutdown.reports_flushing().await;
        if self.flush_over().await {
            return;
        }
        if let Some(deadline) = self.shutdown.report_flush_deadline() {
            sleep_until(deadline).await;
        }
    }

    /// One stream session on `replica`, until it breaks or the shutdown flush ends.
    async fn session(
        &self,
        replica: &Replica,
        backoff: &mut Backoff,
        mut leader: Option<&mut Leader>,
    ) -> SessionEnd {
        let (requests, outgoing) = mpsc::channel::<EncodedBatch>(WINDOW);
        let opened = tokio::select! {
            opened = self.control.report_outcomes(replica, ReceiverStream::new(outgoing)) => opened,
            () = self.flush_over_while_opening() => return SessionEnd::Done,
        };
        let mut acks = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if is_auth_error(&status) => {
                tracing::warn!(control_plane = replica.name(), code = ?status.code(), message = %status.message(), "control plane refused the outcome stream; check the internal token");
                return SessionEnd::Broken;
            }
            Err(status) => {
                tracing::debug!(control_plane = replica.name(), code = ?status.code(), message = %status.message(), "control plane not taking outcomes yet");
                return SessionEnd::Broken;
            }
        };
        tracing::debug!(
            control_plane = replica.name(),
            "streaming outcomes to the control plane"
        );

        // Batches sent on this stream and not yet acked, by outbox seq. Rows are picked by "not
        // sent yet" rather than "after the last seq sent": on PostgreSQL a lower seq can commit
        // after a higher one, and it must not be skipped.
        let mut unacked: BTreeSet<i64> = BTreeSet::new();
        // One span per batch, open until the control plane acks it; its context travels in the
        // batch so the control plane's span storing it joins the same trace.
        let mut spans: std::collections::HashMap<i64, tracing::Span> =
            std::collections::HashMap::new();
        // A new session reads the table until it has caught up (what an earlier session sent
        // but never saw acked is there); after that the writer's in-memory feed is the source.
        self.outbox.clear_feed();
        // Batches at or below this seq may have been sent before (by an earlier session, another
        // replica, or this session's reads of the table); one above it that comes from the
        // feed never was, and says so, so the control plane skips its check for repeats.
        let mut sent_floor = match outbox::last_seq(&self.db).await {
            Ok(seq) => seq,
            Err(err) => {
                tracing::error!(error = %err, "reading the outbox failed");
                return SessionEnd::Broken;
            }
        };
        let mut read_table = true;
        let mut last_read = Instant::now();
        let mut leader_checked = Instant::now();
        loop {
            if leader_checked.elapsed() >= LEADER_CHECK
                && let Some(leader) = leader.as_deref_mut()
            {
                leader_checked = Instant::now();
                if !leader.still_held().await {
                    // Another replica may report now; end the session and elect again.
                    return SessionEnd::Broken;
                }
            }
            // Fill the window: batches just committed first, then the table when it must be
            // read (session start, a feed overflow, and once a second for rows other replicas
            // wrote or anything missed).
            if unacked.len() < WINDOW {
                let ready = self.outbox.take_ready(WINDOW - unacked.len());
                read_table |= ready.overflowed;
                for batch in ready.batches {
                    let seq = batch.seq;
                    if unacked.contains(&seq) || self.outbox.is_acked(seq) {
                        continue;
                    }
                    // Only on SQLite: on PostgreSQL a replica that lost the reporter's lock may
                    // still be sending its own rows while the new reporter reads them from the
                    // table, and a first send arriving after that read's copy would count its
                    // failures in the endpoint's health twice. SQLite has one replica.
                    let first_send = !self.postgres && seq > sent_floor;
                    sent_floor = sent_floor.max(seq);
                    if !send(&requests, batch, first_send, &mut spans).await {
                        return SessionEnd::Broken;
                    }
                    unacked.insert(seq);
                }
            }
            if unacked.len() < WINDOW && (read_table || last_read.elapsed() >= IDLE_CHECK) {
                last_read = Instant::now();
                let room = WINDOW - unacked.len();
                match self.read_to_send(&unacked, room).await {
                    Ok(rows) => {
                        read_table = rows.len() >= room;
                        for row in rows {
                            let seq = row.seq;
                            let Some(batch) = outbox::decode(row) else {
                                // Never sendable: drop it rather than block everything after it.
                                self.forget(seq).await;
                                continue;
                            };
                            sent_floor = sent_floor.max(seq);
                            if !send(&requests, batch, false, &mut spans).await {
                                return SessionEnd::Broken;
                            }
                            unacked.insert(seq);
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "reading the outbox failed");
                        return SessionEnd::Broken;
                    }
                }
            }
            if unacked.is_empty() && self.shutdown.is_flushing_reports() {
                // Flushing for shutdown: done when nothing is in flight and nothing is left.
                outbox::delete_acked_now(&self.db, &self.outbox).await;
                match self.nothing_left_to_flush(&unacked).await {
                    Ok(true) => return SessionEnd::Done,
                    Ok(false) => {
                        read_table = true;
                        continue;
                    }
                    Err(_) => return SessionEnd::Broken,
                }
            }
            let deadline = self.shutdown.report_flush_deadline();
            tokio::select! {
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        let Ok(seq) = i64::try_from(ack.batch_id) else { continue };
                        spans.remove(&seq);
                        if unacked.remove(&seq) {
                            self.forget(seq).await;
                            backoff.reset();
                        }
                    }
                    Ok(None) => return SessionEnd::Broken,
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = %status.message(), "outcome stream to the control plane broke; reconnecting");
                        return SessionEnd::Broken;
                    }
                },
                () = self.outbox.written.notified(), if unacked.len() < WINDOW => {}
                () = sleep(IDLE_CHECK) => {}
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tracing::warn!(unacked = unacked.len(), "shutdown grace ended before the control plane acked every outcome; they are sent after the restart");
                    return SessionEnd::Done;
                }
            }
        }
    }

    /// A row the control plane has (or that can never be sent): the writer deletes it with its
    /// next transaction; once the writer has stopped (shutdown), it is deleted here.
    async fn forget(&self, seq: i64) {
        self.outbox.acked(seq);
        if self.shutdown.is_flushing_reports() {
            outbox::delete_acked_now(&self.db, &self.outbox).await;
        }
    }
}

/// Sends one batch on the stream, in a span that stays open until its ack. False when the
/// stream is gone.
async fn send(
    requests: &mpsc::Sender<EncodedBatch>,
    batch: Committed,
    first_send: bool,
    spans: &mut std::collections::HashMap<i64, tracing::Span>,
) -> bool {
    let span = tracing::info_span!(
        "report_outcomes",
        otel.name = "sluice.report_outcomes",
        otel.kind = "producer",
        sluice.batch_id = batch.seq,
        sluice.messages = sluice_telemetry::int_attr(batch.messages),
        sluice.attempts = sluice_telemetry::int_attr(batch.attempts),
    );
    let traceparent = sluice_telemetry::span_headers(&span)
        .map(|(parent, _)| parent)
        .unwrap_or_default();
    spans.insert(batch.seq, span);
    requests
        .send(EncodedBatch {
            body: batch.body,
            batch_id: u64::try_from(batch.seq).unwrap_or_default(),
            traceparent,
            first_send,
        })
        .await
        .is_ok()
}
