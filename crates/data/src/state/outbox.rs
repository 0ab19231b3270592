//! The outbox between the writer and the reporter.
//!
//! Every committed batch of outcomes (messages accepted, attempts made, subscriptions
//! disabled) is one `dp_outbox` row: the durable copy, which survives a crash and a control
//! plane that is down. The same batch, already built, is also handed to the reporter in
//! memory, so on the hot path the reporter never reads the table back; it reads it only at
//! the start of a stream session, after the in-memory feed overflowed, and once a second
//! for rows other replicas wrote.
//!
//! Rows the control plane acked are deleted by the writer in its next transaction (with
//! the rest of its work) rather than with a commit of their own per ack. Until that commit
//! they stay in `acked`, so a read of the table does not send them again.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use sluice_proto::control::v1::{AttemptOutcome, ReportOutcomesRequest, SubscriptionDisabled};
use sluice_store::data::outbox;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::metrics;
use crate::state::fanouts::EncodedRecord;

/// Committed batches waiting in memory for the reporter, at most. Beyond it (the control
/// plane is slow or down) batches are only in the table, and the reporter reads them from
/// there when it catches up.
const FEED_CAPACITY: usize = 256;
/// Acked rows deleted per statement.
const DELETE_CHUNK: usize = 500;
/// How long acked rows wait for other work to share a commit before the writer deletes
/// them on their own. Only matters when the data plane is otherwise idle.
pub(crate) const ACKED_DELETE_DELAY: Duration = Duration::from_millis(50);

/// The in-memory side of the outbox, shared by the writer and the reporter.
#[derive(Default)]
pub(crate) struct Outbox {
    state: Mutex<FeedState>,
    /// Wakes the reporter: a batch was committed.
    pub(crate) written: Notify,
    /// Wakes the writer: acked rows wait to be deleted.
    pub(crate) acked_waiting: Notify,
}

#[derive(Default)]
struct FeedState {
    /// Committed batches, oldest first.
    feed: VecDeque<Committed>,
    /// Some committed batch did not fit in `feed`: the reporter must read the table.
    overflowed: bool,
    /// Acked by the control plane, not yet deleted by a committed transaction.
    acked: BTreeSet<i64>,
    /// When the oldest row of `acked` was acked.
    acked_since: Option<Instant>,
}

/// A committed outbox row: what the control plane is told, encoded once.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    pub(crate) seq: i64,
    /// The row's body: the encoded fields of a `ReportOutcomesRequest` but its batch id and
    /// traceparent (set when it is sent).
    pub(crate) body: Bytes,
    /// How many messages and attempts it reports, for the reporter's span.
    pub(crate) messages: usize,
    pub(crate) attempts: usize,
}

/// The body of an outbox row under construction: each record is encoded as it comes, from
/// a reference, so nothing is copied into a request struct first.
#[derive(Default)]
pub(crate) struct ReportBody {
    buf: Vec<u8>,
    pub(crate) messages: usize,
    pub(crate) attempts: usize,
    disabled: usize,
}

impl ReportBody {
    /// Field 2 of `ReportOutcomesRequest`, already encoded.
    pub(crate) fn message(&mut self, record: &EncodedRecord) {
        use prost::encoding;
        let bytes = record.bytes();
        encoding::encode_key(2, encoding::WireType::LengthDelimited, &mut self.buf);
        encoding::encode_varint(bytes.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(bytes);
        self.messages += 1;
    }

    /// Field 3.
    pub(crate) fn attempt(&mut self, outcome: &AttemptOutcome) {
        prost::encoding::message::encode(3, outcome, &mut self.buf);
        self.attempts += 1;
    }

    /// Field 4.
    pub(crate) fn disabled(&mut self, disabled: &SubscriptionDisabled) {
        prost::encoding::message::encode(4, disabled, &mut self.buf);
        self.disabled += 1;
    }

    /// Whether there is nothing to tell.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages == 0 && self.attempts == 0 && self.disabled == 0
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// What the reporter takes from the feed.
pub(crate) struct Ready {
    pub(crate) batches: Vec<Committed>,
    /// Some batches are only in the table.
    pub(crate) overflowed: bool,
}

impl Outbox {
    /// Hands a committed row to the reporter.
    pub(crate) fn committed(&self, batch: Committed) {
        {
            let mut state = self.lock();
            if state.feed.len() < FEED_CAPACITY {
                state.feed.push_back(batch);
            } else {
                state.overflowed = true;
            }
        }
        self.written.notify_one();
    }

    /// Takes up to `max` committed batches, oldest first.
    pub(crate) fn take_ready(&self, max: usize) -> Ready {
        let mut state = self.lock();
        let n = max.min(state.feed.len());
        let batches = state.feed.drain(..n).collect();
        let overflowed = std::mem::take(&mut state.overflowed);
        Ready {
            batches,
            overflowed,
        }
    }

    /// Forgets the in-memory feed: a new stream session reads the table instead.
    pub(crate) fn clear_feed(&self) {
        let mut state = self.lock();
        state.feed.clear();
        state.overflowed = false;
    }

    /// Records that the control plane acked row `seq`; the writer deletes it.
    pub(crate) fn acked(&self, seq: i64) {
        {
            let mut state = self.lock();
            if state.acked.insert(seq) && state.acked_since.is_none() {
                state.acked_since = Some(Instant::now());
            }
        }
        self.acked_waiting.notify_one();
    }

    /// Whether row `seq` was acked (and is perhaps not deleted yet).
    pub(crate) fn is_acked(&self, seq: i64) -> bool {
        self.lock().acked.contains(&seq)
    }

    /// When acked rows should be deleted even if nothing else is written; `None` when no
    /// row waits.
    pub(crate) fn acked_deadline(&self) -> Option<Instant> {
        self.lock()
            .acked_since
            .map(|since| since + ACKED_DELETE_DELAY)
    }

    /// Acked rows to delete now (they stay marked acked until [`Outbox::deleted`]).
    pub(crate) fn acked_rows(&self, max: usize) -> Vec<i64> {
        self.lock().acked.iter().take(max).copied().collect()
    }

    /// The rows `seqs` are deleted (committed).
    pub(crate) fn deleted(&self, seqs: &[i64]) {
        if seqs.is_empty() {
            return;
        }
        let mut state = self.lock();
        for seq in seqs {
            state.acked.remove(seq);
        }
        state.acked_since = if state.acked.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        drop(state);
        metrics()
            .outbox_depth
            .fetch_sub(seqs.len() as i64, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a committed outbox row in the depth gauge.
pub(crate) fn inserted() {
    metrics().outbox_depth.fetch_add(1, Ordering::Relaxed);
}

/// Deletes the rows `seqs`.
pub(crate) async fn delete<C: ConnectionTrait>(tx: &C, seqs: &[i64]) -> Result<(), DbErr> {
    for chunk in seqs.chunks(DELETE_CHUNK) {
        outbox::Entity::delete_many()
            .filter(outbox::Column::Seq.is_in(chunk.iter().copied()))
            .exec(tx)
            .await?;
    }
    Ok(())
}

/// The oldest rows that are neither in `skip` nor acked, at most `limit`.
pub(crate) async fn read<C: ConnectionTrait>(
    db: &C,
    outbox_state: &Outbox,
    skip: &BTreeSet<i64>,
    limit: usize,
) -> Result<Vec<outbox::Model>, DbErr> {
    // Rows to pass over are filtered here rather than in SQL: they are few (the batches in
    // flight and those acked but not yet deleted), and a long NOT IN list would cost more.
    let passed_over = skip.len() + outbox_state.lock().acked.len();
    let rows = outbox::Entity::find()
        .order_by_asc(outbox::Column::Seq)
        .limit(u64::try_from(limit + passed_over).unwrap_or(u64::MAX))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| !skip.contains(&row.seq) && !outbox_state.is_acked(row.seq))
        .take(limit)
        .collect())
}

/// The highest `seq` in the table (0 when it is empty): every row committed so far is at
/// or below it (on PostgreSQL a lower `seq` may still commit later, never a higher one
/// earlier).
pub(crate) async fn last_seq<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    let last: Option<Option<i64>> = outbox::Entity::find()
        .select_only()
        .column_as(outbox::Column::Seq.max(), "last")
        .into_tuple()
        .one(db)
        .await?;
    Ok(last.flatten().unwrap_or(0))
}

/// A row read back from the table, checked to decode (a row that never will is dropped
/// rather than sent for ever); `None` for such a row.
pub(crate) fn decode(row: outbox::Model) -> Option<Committed> {
    match ReportOutcomesRequest::decode(row.body.as_slice()) {
        Ok(batch) => Some(Committed {
            seq: row.seq,
            body: Bytes::from(row.body),
            messages: batch.messages.len(),
            attempts: batch.attempts.len(),
        }),
        Err(err) => {
            tracing::error!(seq = row.seq, error = %err, "outbox row does not decode; dropping it");
            None
        }
    }
}

/// Deletes acked rows directly (once the writer has stopped, at the end of shutdown).
pub(crate) async fn delete_acked_now<C: ConnectionTrait>(db: &C, outbox_state: &Outbox) {
    loop {
        let seqs = outbox_state.acked_rows(DELETE_CHUNK);
        if seqs.is_empty() {
            return;
        }
        match delete(db, &seqs).await {
            Ok(()) => outbox_state.deleted(&seqs),
            Err(err) => {
                // They are sent again after the restart; the control plane ignores repeats.
                tracing::error!(error = %err, "deleting acked outbox rows failed");
                return;
            }
        }
    }
}
