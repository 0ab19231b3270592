//! The data plane's one writer of the hot path. One task takes every event queued by
//! `Publish` and `PublishStream`, every attempt outcome queued by the dispatcher and every
//! outbox row the control plane acked, and writes all of it in one transaction: messages
//! and their fan-out rows, what the outcomes change, one outbox row for the control plane,
//! and the deletion of acked rows (through `sluice_store::hot`: one round trip on SQLite).
//! Then it answers each publisher, hands the new deliveries straight to the dispatcher and
//! the outbox row straight to the reporter.
//!
//! Durability costs one commit per cycle, however many publishers and attempts wait on it;
//! while a commit is under way the next cycle's work piles up (group commit). A cycle of
//! outcomes alone waits a little for publishes to share their commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sea_orm::{DatabaseConnection, DbErr};
use sluice_store::hot::{self, Session};
use sluice_store::is_unique_violation;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::backoff::Backoff;
use crate::commit::publishes::{self, Admission, Publishes, Refusal, Resolution};
use crate::commit::{ordered, outcomes};
use crate::shutdown::Shutdown;
use crate::state::fanouts::{FanoutPlan, Fanouts};
use crate::state::outbox::{self, Committed, Outbox, ReportBody};
use crate::work::{NewMessage, OutcomeEvent, PublishJob};

/// The most events, and separately the most outcomes, committed together.
const MAX_BATCH: usize = 1000;
/// How long a cycle of outcomes alone waits for publishes to share its commit.
const OUTCOME_LINGER: Duration = Duration::from_millis(2);
/// How often a failing outcome write is tried during shutdown before its outcomes are
/// given up (the deliveries then stay pending and are attempted again after the restart).
const SHUTDOWN_WRITE_TRIES: u32 = 3;

/// The writer and what it writes to and hands on.
pub(crate) struct Writer {
    pub(crate) db: DatabaseConnection,
    /// How long a publisher waits for its event to be written at most (and a cycle of
    /// outcomes alone for its commit): past it, "not stored, publish again".
    pub(crate) store_timeout: Duration,
    pub(crate) publishes: Publishes,
    pub(crate) fanouts: Arc<Fanouts>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) shutdown: Shutdown,
}

/// Work for one transaction, as the loop gathered it.
#[derive(Default)]
struct WriteCycle {
    publishes: Vec<PublishJob>,
    outcomes: Vec<OutcomeEvent>,
    /// Acked outbox rows to delete.
    acked: Vec<i64>,
    /// A message's record is due for the control plane.
    reports_due: bool,
    /// Report every message not yet reported (the last cycle of shutdown).
    all_reports: bool,
}

impl WriteCycle {
    fn is_empty(&self) -> bool {
        self.publishes.is_empty()
            && self.outcomes.is_empty()
            && self.acked.is_empty()
            && !self.reports_due
            && !self.all_reports
    }
}

impl Writer {
    /// The writer's loop, until shutdown is over: publishes queued when shutdown began are
    /// still written and answered (those publishers are waiting and the write is quick), then
    /// the publish queue is closed; outcomes are written until `outcomes_closing` and nothing
    /// is left; a last cycle reports every message the control plane has not heard of yet.
    pub(crate) async fn run(
        self,
        mut publishes: mpsc::Receiver<PublishJob>,
        mut outcomes: mpsc::Receiver<OutcomeEvent>,
    ) {
        // However the loop ends, shutdown must not wait for publishes forever.
        let _drained = self.shutdown.publishes_drained_guard();
        let mut publishes_open = true;
        let mut outcomes_open = true;
        let mut publishes_closed = false;
        let mut closing = false;
        // Outcomes whose write failed, tried again at `retry_at` (publishes never wait for them).
        let mut carried: Vec<OutcomeEvent> = Vec::new();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Backoff::new();
        let mut failures_while_closing = 0u32;
        loop {
            let mut cycle = WriteCycle::default();
            let carried_due = !carried.is_empty() && retry_at.is_none_or(|at| at <= Instant::now());
            if !carried_due {
                if closing && !publishes_open && carried.is_empty() && outcomes.is_empty() {
                    if failures_while_closing >= SHUTDOWN_WRITE_TRIES
                        || self.fanouts.next_report_due().is_none()
                    {
                        return;
                    }
                    cycle.all_reports = true;
                } else {
                    let acked_deadline = self.outbox.acked_deadline();
                    let report_due = self.fanouts.next_report_due();
                    tokio::select! {
                        biased;
                        () = self.shutdown.requested(), if !publishes_closed => {
                            // Ingest refuses new events from now on; what is queued is still
                            // written.
                            publishes.close();
                            publishes_closed = true;
                        }
                        () = self.shutdown.outcomes_closing(), if !closing => closing = true,
                        job = publishes.recv(), if publishes_open => match job {
                            Some(job) => cycle.publishes.push(job),
                            None => {
                                publishes_open = false;
                                self.shutdown.mark_publishes_drained();
                            }
                        },
                        event = outcomes.recv(), if outcomes_open => match event {
                            Some(event) => cycle.outcomes.push(event),
                            // Every sender is gone: nothing produces outcomes any more.
                            None => {
                                outcomes_open = false;
                                closing = true;
                            }
                        },
                        () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if !carried.is_empty() => {}
                        () = self.outbox.acked_waiting.notified(), if acked_deadline.is_none() => {}
                        () = sleep_until(acked_deadline.unwrap_or_else(Instant::now)), if acked_deadline.is_some() => {
                            cycle.acked = self.outbox.acked_rows(MAX_BATCH);
                        }
                        () = sleep_until(report_due.unwrap_or_else(Instant::now)), if report_due.is_some() => {
                            cycle.reports_due = true;
                        }
                    }
                }
            }
            while publishes_open && cycle.publishes.len() < MAX_BATCH {
                match publishes.try_recv() {
                    Ok(job) => cycle.publishes.push(job),
                    Err(_) => break,
                }
            }
            if !carried.is_empty() && retry_at.is_none_or(|at| at <= Instant::now()) {
                // Older outcomes first: statements keep the order of events.
                carried.append(&mut cycle.outcomes);
                cycle.outcomes = std::mem::take(&mut carried);
            }
            while cycle.outcomes.len() < MAX_BATCH {
                match outcomes.try_recv() {
                    Ok(event) => cycle.outcomes.push(event),
                    Err(_) => break,
                }
            }
            if cycle.publishes.is_empty()
                && !cycle.outcomes.is_empty()
                && !closing
                && publishes_open
                && !cycle.outcomes.iter().any(OutcomeEvent::is_flush)
            {
                linger(&mut cycle, &mut publishes, &mut outcomes).await;
                while cycle.publishes.len() < MAX_BATCH {
                    match publishes.try_recv() {
                        Ok(job) => cycle.publishes.push(job),
                        Err(_) => break,
                    }
                }
            }
            if cycle.is_empty() {
                continue;
            }
            if cycle.acked.is_empty() {
                // Acked rows ride along with the rest of the work.
                cycle.acked = self.outbox.acked_rows(MAX_BATCH);
            }
            // A workspace with a few events in a cycle that another fills goes first, in a
            // commit of its own: it then waits for the commit under way and a small one,
            // not for the big workspace's too (docs/concurrency.md). One workspace alone, the
            // common case, costs one pass of comparisons.
            if let Some(light) = take_light(&mut cycle.publishes, |job| {
                job.message.workspace_id.as_str()
            }) {
                let first = WriteCycle {
                    publishes: light,
                    ..WriteCycle::default()
                };
                // Publishes alone: their failure is answered to their publishers inside,
                // and there are no outcomes to carry.
                let _ = self.commit_cycle(first).await;
            }
            match self.commit_cycle(cycle).await {
                Ok(()) => {
                    backoff.reset();
                    retry_at = None;
                    failures_while_closing = 0;
                }
                Err((failed, retry_now)) => {
                    if closing {
                        failures_while_closing += 1;
                        if failures_while_closing >= SHUTDOWN_WRITE_TRIES {
                            tracing::error!(
                                outcomes = failed.len(),
                                "giving up on these outcomes at shutdown; their deliveries stay pending"
                            );
                            outcomes::answer_flushes(failed);
                            continue;
                        }
                    }
                    // Added to, never replaced: a cycle that failed without the carried
                    // outcomes (they were not due yet) must not drop them, or their
                    // deliveries stay claimed here with no outcome ever written.
                    carried.extend(failed);
                    retry_at = (!retry_now).then(|| Instant::now() + backoff.next_delay());
                }
            }
        }
    }

    /// Writes one cycle in one transaction and completes it: answers publishers, hands the
    /// new deliveries to the dispatcher and the outbox batch to the reporter. A publisher
    /// past its deadline (`--store-timeout-ms` after it was accepted) is answered "not
    /// stored" without being written; the write of the others is bounded too. When
    /// the transaction fails, publishes are written again on their own if their deadline
    /// allows (so they never wait on a failing outcome write), and the outcomes are
    /// returned, to be tried again (at once when the failure may have been the publishes').
    async fn commit_cycle(&self, cycle: WriteCycle) -> Result<(), (Vec<OutcomeEvent>, bool)> {
        let started = Instant::now();
        let WriteCycle {
            publishes,
            outcomes: events,
            acked,
            all_reports,
            ..
        } = cycle;
        let (expired, publishes): (Vec<PublishJob>, Vec<PublishJob>) = publishes
            .into_iter()
            .partition(|job| job.deadline <= started);
        publishes::refuse(expired, Refusal::TimedOut(self.store_timeout));
        // A job not yet written by its deadline is refused above, unwritten. One being
        // written gets one more store timeout: the database's own timeouts (the pool's
        // acquire, PostgreSQL's `statement_timeout`, SQLite's busy timeout) then end a
        // stuck write with an error that says nothing was committed, before this process
        // has to give up on a commit whose outcome it cannot know.
        let deadline = publishes
            .iter()
            .map(|job| job.deadline)
            .min()
            .unwrap_or(started + self.store_timeout)
            + self.store_timeout;
        let written = self
            .write_by(deadline, &publishes, &events, &acked, all_reports)
            .await;
        tracing::debug!(
            events = publishes.len(),
            outcomes = events.len(),
            acked = acked.len(),
            micros = started.elapsed().as_micros() as u64,
            "write cycle committed"
        );
        let failure = match written {
            Ok(written) => {
                self.outbox.deleted(&acked);
                let admission = written.admission.clone();
                self.completed(publishes, written);
                self.publishes
                    .hand_on_notices(events.iter().filter_map(OutcomeEvent::notice), &admission);
                // After the fan-outs moved on (in `completed`), so a scanner that takes up
                // a released delivery sees its first attempt concluded.
                outcomes::release_claims(&self.publishes.claims, &events);
                outcomes::heads_moved(&self.publishes.heads, &events);
                outcomes::answer_flushes(events);
                return Ok(());
            }
            Err(failure) => failure,
        };
        if publishes.is_empty() {
            tracing::error!(error = %failure, outcomes = events.len(), "writing attempt outcomes failed; retrying");
            let mut events = events;
            if matches!(&failure, WriteFailure::Failed(err) if is_unique_violation(err)) {
                // Outcomes are written idempotently; the operational events' messages are
                // not. A conflict means an earlier commit whose outcome was unknown did store
                // them: they go no further, and the outcomes are written again without them.
                for event in &mut events {
                    event.drop_notice();
                }
            }
            return Err((events, false));
        }
        match failure {
            WriteFailure::Failed(err)
                if is_unique_violation(&err) || !sluice_store::is_unavailable(&err) =>
            {
                if !is_unique_violation(&err) {
                    tracing::warn!(error = %err, "writing a batch failed; writing its events on their own");
                }
                self.publish_alone(publishes, err, deadline).await;
                // The outcomes go again at once, with the next cycle.
                Err((events, true))
            }
            other => {
                tracing::error!(error = %other, events = publishes.len(), outcomes = events.len(), "writing published events failed");
                publishes::refuse(publishes, other.refusal(self.store_timeout));
                Err((events, false))
            }
        }
    }

    /// After a commit: open fan-outs move on, the batch goes to the reporter, publishers get
    /// their answers and the new deliveries go to the dispatcher.
    fn completed(&self, publishes: Vec<PublishJob>, written: Written) {
        let Written {
            resolutions,
            admission,
            batch,
            plan,
        } = written;
        self.fanouts.committed(plan);
        if let Some(batch) = batch {
            self.outbox.committed(batch);
        }
        self.publishes.answer(publishes, resolutions, &admission);
    }

    /// Writes publishes without anything else, by `deadline`, after a combined write
    /// failed with `err`.
    async fn publish_alone(&self, jobs: Vec<PublishJob>, err: DbErr, deadline: Instant) {
        if !is_unique_violation(&err) {
            match self.write_by(deadline, &jobs, &[], &[], false).await {
                Ok(written) => self.completed(jobs, written),
                Err(WriteFailure::Failed(err)) if is_unique_violation(&err) => {
                    Box::pin(self.publish_alone(jobs, err, deadline)).await
                }
                Err(failure) => {
                    tracing::error!(error = %failure, events = jobs.len(), "writing published events failed");
                    publishes::refuse(jobs, failure.refusal(self.store_timeout));
                }
            }
            return;
        }
        // Another writer (a replica, or a racing batch) took an idempotency key between our
        // check and our insert: redo each event alone, where the check then sees it.
        for job in jobs {
            let jobs = vec![job];
            match self.write_by(deadline, &jobs, &[], &[], false).await {
                Ok(written) => self.completed(jobs, written),
                Err(failure) => {
                    tracing::error!(error = %failure, "writing a published event failed");
                    publishes::refuse(jobs, failure.refusal(self.store_timeout));
                }
            }
        }
    }

    /// [`Writer::write`], bounded by `deadline`, with what a failure means for the events
    /// in it: not stored, or not known.
    async fn write_by(
        &self,
        deadline: Instant,
        jobs: &[PublishJob],
        events: &[OutcomeEvent],
        acked: &[i64],
        all_reports: bool,
    ) -> Result<Written, WriteFailure> {
        let committing = AtomicBool::new(false);
        let written = tokio::time::timeout_at(
            deadline,
            self.write(jobs, events, acked, all_reports, &committing),
        )
        .await;
        // Once the commit is on its way, a broken connection or the deadline leaves its
        // outcome unknown; before it, nothing was committed.
        let in_commit = committing.load(Ordering::Relaxed);
        match written {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(err))
                if in_commit
                    && sluice_store::is_unavailable(&err)
                    && !sluice_store::never_reached_the_database(&err) =>
            {
                Err(WriteFailure::Uncertain(err.to_string()))
            }
            Ok(Err(err)) => Err(WriteFailure::Failed(err)),
            Err(_) if in_commit => Err(WriteFailure::Uncertain(
                "the store timeout passed during the commit".to_owned(),
            )),
            Err(_) => Err(WriteFailure::TimedOut),
        }
    }

    /// Resolves idempotency, then writes in one transaction: the new events (messages and
    /// their fan-out rows), the outcomes, one outbox row with everything the control plane must
    /// hear, and the deletion of outbox rows it acked. `all_reports` reports every message not
    /// yet reported (shutdown), not only those due.
    async fn write(
        &self,
        jobs: &[PublishJob],
        events: &[OutcomeEvent],
        acked: &[i64],
        all_reports: bool,
        committing: &AtomicBool,
    ) -> Result<Written, DbErr> {
        let resolutions = self.publishes.resolve(jobs).await?;
        // New messages: the publishes not repeating an idempotency key, and the operational
        // events the outcomes carry (durable with the outcome that caused them).
        let created: Vec<(&NewMessage, &[String])> = jobs
            .iter()
            .zip(&resolutions)
            .filter(|(_, r)| matches!(r, Resolution::Created))
            .map(|(job, _)| (&job.message, job.subscription_ids.as_slice()))
            .chain(
                events
                    .iter()
                    .filter_map(OutcomeEvent::notice)
                    .map(|n| (&n.message, n.subscription_ids.as_slice())),
            )
            .collect();
        let admission = if created.is_empty() {
            Admission::default()
        } else {
            self.publishes.admission(&created)
        };
        let backend = self.db.get_database_backend();
        let session = Session::begin(&self.db).await?;
        let mut report = ReportBody::default();
        // Outcomes first: their rare writes (a failed delivery's row, a disabled subscription)
        // go through sea-orm on the session now; the rest of the cycle is sent below, with
        // the commit, in as few round trips as the database allows.
        let mut plan = FanoutPlan::default();
        if let Err(err) =
            outcomes::apply(&session, &self.fanouts, events, &mut report, &mut plan).await
        {
            session.rollback().await;
            return Err(err);
        }
        if let Err(err) = ordered::store(&session, &created, self.publishes.first_delay_ms).await {
            session.rollback().await;
            return Err(err);
        }
        let mut statements = Vec::new();
        if !created.is_empty() {
            self.publishes.store_created(
                backend,
                &created,
                &admission,
                &mut report,
                &mut statements,
            );
        }
        // Messages whose first attempts all concluded go with those outcomes; so do those that
        // waited long enough.
        self.fanouts
            .finish_plan(&mut plan, all_reports, |_, record| report.message(record));
        if !plan.finished.is_empty() {
            statements.push(hot::data::delete_fanouts(
                backend,
                plan.finished.iter().map(String::as_str),
            ));
        }
        let reporting = !report.is_empty();
        let (messages, attempts) = (report.messages, report.attempts);
        let body = Bytes::from(report.into_bytes());
        if reporting {
            statements.push(hot::data::insert_outbox(
                backend,
                body.to_vec(),
                sluice_store::now_ms(),
            ));
        }
        if !acked.is_empty() {
            statements.push(hot::data::delete_outbox(backend, acked));
        }
        // Independent: the fan-outs and outbox rows deleted were committed by earlier cycles.
        committing.store(true, Ordering::Relaxed);
        let rows = session.commit_independent(statements).await?;
        let batch = if reporting {
            let seq = rows
                .iter()
                .find_map(|row| row.try_get::<i64>("", "seq").ok())
                .ok_or_else(|| DbErr::Custom("the outbox insert returned no seq".to_owned()))?;
            outbox::inserted();
            Some(Committed {
                seq,
                body,
                messages,
                attempts,
            })
        } else {
            None
        };
        Ok(Written {
            resolutions,
            admission,
            batch,
            plan,
        })
    }
}

/// A cycle is split only when one workspace has at least this many events in it: below,
/// its commit is about as short as a light one's.
const HEAVY_EVENTS: usize = 16;
/// A workspace with at most an eighth of the heaviest one's events in the cycle is light.
const LIGHT_SHARE: usize = 8;

/// Takes the light workspaces' events out of `jobs` (keeping each one's order), when the
/// cycle holds several workspaces and one of them is heavy: those with at most
/// 1/[`LIGHT_SHARE`] of the heaviest's events, which has at least [`HEAVY_EVENTS`].
fn take_light<T>(jobs: &mut Vec<T>, workspace: impl Fn(&T) -> &str) -> Option<Vec<T>> {
    let first = workspace(jobs.first()?);
    if jobs.len() < HEAVY_EVENTS || jobs.iter().all(|job| workspace(job) == first) {
        return None;
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for job in jobs.iter() {
        *counts.entry(workspace(job)).or_default() += 1;
    }
    let heaviest = counts.values().copied().max().unwrap_or(0);
    if heaviest < HEAVY_EVENTS {
        return None;
    }
    let light: std::collections::HashSet<String> = counts
        .into_iter()
        .filter(|(_, n)| n * LIGHT_SHARE <= heaviest)
        .map(|(w, _)| w.to_owned())
        .collect();
    if light.is_empty() {
        return None;
    }
    let (taken, rest) = std::mem::take(jobs)
        .into_iter()
        .partition(|job| light.contains(workspace(job)));
    *jobs = rest;
    Some(taken)
}

/// Lets a cycle of outcomes alone wait up to [`OUTCOME_LINGER`] for more work, so that it
/// shares the next publishes' commit (publishes are answered only after theirs; outcomes
/// need no hurry). Ends at the first publish, at a `Flush`, or when the cycle is full.
async fn linger(
    cycle: &mut WriteCycle,
    publishes: &mut mpsc::Receiver<PublishJob>,
    outcomes: &mut mpsc::Receiver<OutcomeEvent>,
) {
    let until = Instant::now() + OUTCOME_LINGER;
    while cycle.outcomes.len() < MAX_BATCH {
        tokio::select! {
            biased;
            job = publishes.recv() => {
                if let Some(job) = job {
                    cycle.publishes.push(job);
                }
                return;
            }
            event = outcomes.recv() => match event {
                Some(event) => {
                    let flush = event.is_flush();
                    cycle.outcomes.push(event);
                    if flush {
                        return;
                    }
                }
                None => return,
            },
            () = sleep_until(until) => return,
        }
    }
}

/// Why a write did not commit, and so what its publishers are told.
enum WriteFailure {
    /// Nothing was committed: the database refused or failed before the commit.
    Failed(DbErr),
    /// The deadline passed before the commit was sent: nothing was committed.
    TimedOut,
    /// The commit was under way when the connection failed or the deadline passed: it may
    /// or may not have taken effect.
    Uncertain(String),
}

impl WriteFailure {
    fn refusal(&self, store_timeout: Duration) -> Refusal {
        match self {
            WriteFailure::Failed(_) => Refusal::Failed,
            WriteFailure::TimedOut => Refusal::TimedOut(store_timeout),
            WriteFailure::Uncertain(_) => Refusal::Uncertain,
        }
    }
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::Failed(err) => write!(f, "{err}"),
            WriteFailure::TimedOut => f.write_str("the store timeout passed before the commit"),
            WriteFailure::Uncertain(why) => write!(f, "commit outcome unknown: {why}"),
        }
    }
}

/// What a write did.
struct Written {
    /// One per publish job, in order.
    resolutions: Vec<Resolution>,
    /// Which new deliveries this process holds and hands to its dispatcher, and which it
    /// leaves to the scanner.
    admission: Admission,
    /// The outbox row committed.
    batch: Option<Committed>,
    /// What the write did to open fan-outs, applied once committed.
    plan: FanoutPlan,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A job: its workspace and its place among that workspace's.
    type Job = (&'static str, usize);

    fn jobs(spec: &[(&'static str, usize)]) -> Vec<Job> {
        let mut out = Vec::new();
        let mut i = 0;
        // Interleaved, as publishes arrive.
        loop {
            let mut any = false;
            for (w, n) in spec {
                if i < *n {
                    out.push((*w, i));
                    any = true;
                }
            }
            if !any {
                return out;
            }
            i += 1;
        }
    }

    fn split(spec: &[(&'static str, usize)]) -> (Vec<Job>, Option<Vec<Job>>) {
        let mut all = jobs(spec);
        let light = take_light(&mut all, |j| j.0);
        (all, light)
    }

    #[test]
    fn a_few_events_beside_a_heavy_workspace_go_first() {
        let (rest, light) = split(&[("big", 40), ("b", 2), ("c", 5), ("d", 6)]);
        let light = light.unwrap();
        // b and c are within an eighth of 40; d is not.
        assert_eq!(
            light,
            vec![
                ("b", 0),
                ("c", 0),
                ("b", 1),
                ("c", 1),
                ("c", 2),
                ("c", 3),
                ("c", 4)
            ]
        );
        assert_eq!(rest.len(), 46);
        assert!(rest.iter().all(|j| j.0 == "big" || j.0 == "d"));
        // Each workspace's events keep their order.
        let d: Vec<usize> = rest.iter().filter(|j| j.0 == "d").map(|j| j.1).collect();
        assert_eq!(d, (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_is_split_without_a_heavy_workspace_or_a_second_one() {
        assert_eq!(split(&[("big", 200)]).1, None);
        assert_eq!(split(&[("a", 15), ("b", 1)]).1, None);
        assert_eq!(split(&[("a", 30), ("b", 20)]).1, None);
        assert_eq!(split(&[]).1, None);
        assert!(split(&[("a", 16), ("b", 2)]).1.is_some());
    }
}
