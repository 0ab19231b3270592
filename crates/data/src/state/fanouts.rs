//! Fan-out: the first attempts of a message, tracked as one unit.
//!
//! A message's first attempt to each subscription it matched needs no delivery row of its
//! own: the `dp_fanout` row written with the message stands for all of them until each has
//! concluded. A first attempt that succeeds writes nothing for its delivery; one that fails
//! (or cannot be made) gets its `dp_deliveries` row then, with its retry schedule. When the
//! last one has concluded, the writer deletes the fan-out row in the same transaction. The
//! hot path of a message thus costs two small writes however many subscriptions it has,
//! where a row per delivery cost an insert and an update each.
//!
//! The control plane hears of the message (its `MessageRecord`) in the batch that carries
//! the outcomes of its first attempts, so it can store each delivery once, in its final
//! state. A message whose first attempts take longer than [`REPORT_DELAY`] is reported on its
//! own then, so the delivery log never lags by more than that.
//!
//! Only the writer task concludes fan-outs. It decides inside its transaction which ones
//! end (a [`FanoutPlan`]) and applies that after the commit ([`Fanouts::committed`]), so
//! memory never runs ahead of the database.

use std::collections::{HashMap, HashSet, VecDeque};

use foldhash::fast::RandomState;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_proto::control::v1::MessageRecord;
use tokio::time::Instant;

/// How long a message's record may wait for its first attempts before it is reported to the
/// control plane on its own.
pub(crate) const REPORT_DELAY: Duration = Duration::from_secs(1);

/// The open fan-outs of this process.
#[derive(Default)]
pub(crate) struct Fanouts {
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// By message id (ids are ours, so a fast hash needs no protection from chosen keys).
    open: HashMap<String, OpenFanout, RandomState>,
    /// Report deadlines of open fan-outs, in the order they were registered (so in deadline
    /// order, [`REPORT_DELAY`] being fixed; recovered ones are due at once).
    unreported: VecDeque<(Instant, String)>,
}

/// A message's record for the control plane (`MessageRecord`), encoded once when the
/// message is accepted.
#[derive(Clone, Debug)]
pub(crate) struct EncodedRecord {
    bytes: Vec<u8>,
}

impl EncodedRecord {
    /// Encodes a record from its parts, copying nothing but into the encoding.
    pub(crate) fn encode(
        id: &String,
        workspace_id: &String,
        event_type: &String,
        create_ms: i64,
        subscription_ids: &[String],
    ) -> EncodedRecord {
        use prost::encoding;
        let time = crate::time::timestamp_from_ms(create_ms);
        let mut bytes = Vec::with_capacity(
            id.len() + workspace_id.len() + event_type.len() + 16 + subscription_ids.len() * 32,
        );
        encoding::string::encode(1, id, &mut bytes);
        encoding::string::encode(2, workspace_id, &mut bytes);
        encoding::string::encode(3, event_type, &mut bytes);
        encoding::message::encode(4, &time, &mut bytes);
        encoding::string::encode_repeated(5, subscription_ids, &mut bytes);
        EncodedRecord { bytes }
    }

    /// This record with the event's ordering key (ordered delivery only).
    pub(crate) fn with_ordering_key(mut self, key: &str) -> EncodedRecord {
        prost::encoding::string::encode(50, &key.to_owned(), &mut self.bytes);
        self
    }

    /// The encoded `MessageRecord`.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn decode(&self) -> Option<MessageRecord> {
        prost::Message::decode(self.bytes.as_slice()).ok()
    }
}

/// One message whose first attempts have not all concluded.
struct OpenFanout {
    /// What the control plane is told of the message.
    record: EncodedRecord,
    /// Subscriptions whose first attempt has not concluded.
    remaining: Vec<String>,
    /// Whether `record` went into a committed outbox batch.
    reported: bool,
}

/// What a write cycle does to the open fan-outs, decided inside its transaction.
#[derive(Default)]
pub(crate) struct FanoutPlan {
    /// First attempts this cycle concludes.
    concluded: HashSet<(String, String), RandomState>,
    /// Fan-outs whose every first attempt has now concluded: their rows are deleted.
    pub(crate) finished: Vec<String>,
    /// Messages reported in this cycle's batch.
    pub(crate) reported: Vec<String>,
}

impl FanoutPlan {
    /// Whether the delivery `message_id` → `subscription_id` is a first attempt that
    /// concludes now (it has no delivery row yet). Records the conclusion; true only once.
    pub(crate) fn concludes(
        &mut self,
        fanouts: &Fanouts,
        message_id: &str,
        subscription_id: &str,
    ) -> bool {
        let open = fanouts
            .lock()
            .open
            .get(message_id)
            .is_some_and(|open| open.remaining.iter().any(|s| s == subscription_id));
        open && self
            .concluded
            .insert((message_id.to_owned(), subscription_id.to_owned()))
    }
}

/// A first attempt that has not concluded, for writing its delivery row when its
/// subscription is disabled.
pub(crate) struct Unconcluded {
    pub(crate) message_id: String,
    pub(crate) workspace_id: String,
    pub(crate) create_ms: i64,
}

impl Fanouts {
    /// Opens a fan-out for `record`, whose first attempts to `remaining` are about to be
    /// made by this process. Its record is reported with them, or after `report_after`.
    /// False (and nothing changes) when this process already has it open.
    pub(crate) fn open(
        &self,
        id: &str,
        record: EncodedRecord,
        remaining: Vec<String>,
        report_after: Duration,
    ) -> bool {
        let mut registry = self.lock();
        if registry.open.contains_key(id) {
            return false;
        }
        let id = id.to_owned();
        registry
            .unreported
            .push_back((Instant::now() + report_after, id.clone()));
        registry.open.insert(
            id,
            OpenFanout {
                record,
                remaining,
                reported: false,
            },
        );
        true
    }

    /// Whether this process has the fan-out of `message_id` open.
    pub(crate) fn is_open(&self, message_id: &str) -> bool {
        self.lock().open.contains_key(message_id)
    }

    /// Whether the first attempt `message_id` → `subscription_id` is still to conclude here.
    pub(crate) fn is_unconcluded(&self, message_id: &str, subscription_id: &str) -> bool {
        self.lock()
            .open
            .get(message_id)
            .is_some_and(|open| open.remaining.iter().any(|s| s == subscription_id))
    }

    /// When the oldest unreported record is due, if any.
    pub(crate) fn next_report_due(&self) -> Option<Instant> {
        let mut registry = self.lock();
        registry.prune_reported();
        registry.unreported.front().map(|(due, _)| *due)
    }

    /// The first attempts to `subscription_id` not yet concluded (and not in `plan`).
    pub(crate) fn unconcluded_to(
        &self,
        subscription_id: &str,
        plan: &FanoutPlan,
    ) -> Vec<Unconcluded> {
        let registry = self.lock();
        registry
            .open
            .iter()
            .filter(|(id, open)| {
                open.remaining.iter().any(|s| s == subscription_id)
                    && !plan
                        .concluded
                        .contains(&((*id).clone(), subscription_id.to_owned()))
            })
            .map(|(id, open)| {
                // Rare (a subscription was disabled): the record is decoded for its parts.
                let record = open.record.decode().unwrap_or_default();
                Unconcluded {
                    message_id: id.clone(),
                    workspace_id: record.workspace_id,
                    create_ms: record
                        .create_time
                        .as_ref()
                        .and_then(crate::time::ms_from_timestamp)
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Completes `plan` once the cycle's outcomes are applied: which fan-outs finish, and
    /// the records to report in this cycle's batch (those finishing, those past their
    /// deadline, and at shutdown every unreported one), each handed to `report`.
    pub(crate) fn finish_plan(
        &self,
        plan: &mut FanoutPlan,
        everything: bool,
        mut report: impl FnMut(&str, &EncodedRecord),
    ) {
        let mut registry = self.lock();
        let mut messages: Vec<&str> = plan.concluded.iter().map(|(m, _)| m.as_str()).collect();
        messages.sort_unstable();
        messages.dedup();
        let mut finished = Vec::new();
        let mut reported = Vec::new();
        for message_id in messages {
            let Some(open) = registry.open.get(message_id) else {
                continue;
            };
            let done = open
                .remaining
                .iter()
                .all(|s| plan.concluded.contains(&(message_id.to_owned(), s.clone())));
            if done {
                finished.push(message_id.to_owned());
                if !open.reported {
                    report(message_id, &open.record);
                    reported.push(message_id.to_owned());
                }
            }
        }
        let now = Instant::now();
        let Registry { open, unreported } = &mut *registry;
        for (due, message_id) in unreported.iter() {
            if !everything && *due > now {
                break;
            }
            if let Some(open) = open.get(message_id)
                && !open.reported
                && !reported.contains(message_id)
            {
                report(message_id, &open.record);
                reported.push(message_id.clone());
            }
        }
        plan.finished.extend(finished);
        plan.reported.extend(reported);
    }

    /// Applies a committed plan.
    pub(crate) fn committed(&self, plan: FanoutPlan) {
        let mut registry = self.lock();
        for (message_id, subscription_id) in &plan.concluded {
            if let Some(open) = registry.open.get_mut(message_id) {
                open.remaining.retain(|s| s != subscription_id);
            }
        }
        for message_id in &plan.reported {
            if let Some(open) = registry.open.get_mut(message_id) {
                open.reported = true;
            }
        }
        for message_id in &plan.finished {
            registry.open.remove(message_id);
        }
        registry.prune_reported();
    }

    /// The subscriptions whose first attempt is still to conclude, when the fan-out of
    /// `message_id` is open here.
    pub(crate) fn remaining(&self, message_id: &str) -> Option<Vec<String>> {
        self.lock()
            .open
            .get(message_id)
            .map(|open| open.remaining.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Every critical section leaves the maps consistent.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registry {
    /// Drops deadlines of fan-outs already reported or finished from the front.
    fn prune_reported(&mut self) {
        while let Some((_, id)) = self.unreported.front() {
            match self.open.get(id) {
                Some(open) if !open.reported => break,
                _ => {
                    self.unreported.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, subs: &[&str]) -> EncodedRecord {
        let subs: Vec<String> = subs.iter().map(|s| (*s).to_owned()).collect();
        EncodedRecord::encode(
            &id.to_owned(),
            &"wrk_1".to_owned(),
            &"a.b".to_owned(),
            5,
            &subs,
        )
    }

    #[test]
    fn a_record_encodes_as_prost_would() {
        let subs = vec!["sub_a".to_owned(), "sub_b".to_owned()];
        let record = EncodedRecord::encode(
            &"msg_1".to_owned(),
            &"wrk_1".to_owned(),
            &"a.b".to_owned(),
            1_700_000_000_123,
            &subs,
        );
        let want = MessageRecord {
            id: "msg_1".into(),
            workspace_id: "wrk_1".into(),
            event_type: "a.b".into(),
            create_time: Some(crate::time::timestamp_from_ms(1_700_000_000_123)),
            subscription_ids: subs,
            ordering_key: String::new(),
        };
        assert_eq!(
            record.bytes(),
            prost::Message::encode_to_vec(&want).as_slice()
        );
        assert_eq!(record.decode(), Some(want));
    }

    /// The ids `finish_plan` reports.
    fn reported(fanouts: &Fanouts, plan: &mut FanoutPlan, everything: bool) -> Vec<String> {
        let mut ids = Vec::new();
        fanouts.finish_plan(plan, everything, |id, _| ids.push(id.to_owned()));
        ids
    }

    fn open(fanouts: &Fanouts, id: &str, subs: &[&str], after: Duration) {
        let subs_owned: Vec<String> = subs.iter().map(|s| (*s).to_owned()).collect();
        assert!(fanouts.open(id, record(id, subs), subs_owned, after));
    }

    #[test]
    fn a_fanout_finishes_with_its_last_first_attempt_and_is_reported_then() {
        let fanouts = Fanouts::default();
        open(&fanouts, "msg_1", &["sub_a", "sub_b"], REPORT_DELAY);
        assert!(!fanouts.open("msg_1", record("msg_1", &["sub_a"]), vec![], REPORT_DELAY));

        // One of two concludes: nothing finishes, nothing is due for reporting yet.
        let mut plan = FanoutPlan::default();
        assert!(plan.concludes(&fanouts, "msg_1", "sub_a"));
        assert!(
            !plan.concludes(&fanouts, "msg_1", "sub_a"),
            "concludes once"
        );
        assert!(
            !plan.concludes(&fanouts, "msg_1", "sub_x"),
            "not one of its first attempts"
        );
        assert!(reported(&fanouts, &mut plan, false).is_empty());
        assert!(plan.finished.is_empty());
        fanouts.committed(plan);
        assert!(!fanouts.is_unconcluded("msg_1", "sub_a"));
        assert!(fanouts.is_unconcluded("msg_1", "sub_b"));

        // The last one: the fan-out finishes and its record goes with it.
        let mut plan = FanoutPlan::default();
        assert!(plan.concludes(&fanouts, "msg_1", "sub_b"));
        assert_eq!(reported(&fanouts, &mut plan, false), ["msg_1"]);
        assert_eq!(plan.finished, ["msg_1"]);
        fanouts.committed(plan);
        assert!(!fanouts.is_open("msg_1"));
        assert_eq!(fanouts.next_report_due(), None);
    }

    #[test]
    fn a_slow_fanout_is_reported_once_at_its_deadline_and_a_failed_write_changes_nothing() {
        let fanouts = Fanouts::default();
        open(&fanouts, "msg_1", &["sub_a"], Duration::ZERO);
        open(&fanouts, "msg_2", &["sub_a"], Duration::from_secs(3600));

        // A plan that was never committed (the transaction failed) leaves no trace.
        let mut plan = FanoutPlan::default();
        assert!(plan.concludes(&fanouts, "msg_2", "sub_a"));
        drop(plan);
        assert!(fanouts.is_unconcluded("msg_2", "sub_a"));

        let mut plan = FanoutPlan::default();
        assert_eq!(reported(&fanouts, &mut plan, false), ["msg_1"]);
        assert!(plan.finished.is_empty());
        fanouts.committed(plan);
        assert!(fanouts.is_open("msg_1"), "reported, still open");

        // Reported once only; at shutdown everything unreported goes.
        let mut plan = FanoutPlan::default();
        assert_eq!(reported(&fanouts, &mut plan, true), ["msg_2"]);
        fanouts.committed(plan);

        // Finishing after the report does not report again.
        let mut plan = FanoutPlan::default();
        assert!(plan.concludes(&fanouts, "msg_1", "sub_a"));
        assert!(reported(&fanouts, &mut plan, true).is_empty());
        assert_eq!(plan.finished, ["msg_1"]);
    }

    #[test]
    fn lists_the_first_attempts_a_disable_cuts_off() {
        let fanouts = Fanouts::default();
        open(&fanouts, "msg_1", &["sub_a", "sub_b"], REPORT_DELAY);
        open(&fanouts, "msg_2", &["sub_b"], REPORT_DELAY);
        let mut plan = FanoutPlan::default();
        assert!(plan.concludes(&fanouts, "msg_2", "sub_b"));
        let cut: Vec<String> = fanouts
            .unconcluded_to("sub_b", &plan)
            .into_iter()
            .map(|u| u.message_id)
            .collect();
        assert_eq!(cut, ["msg_1"]);
        assert_eq!(
            fanouts.remaining("msg_1"),
            Some(vec!["sub_a".to_owned(), "sub_b".to_owned()])
        );
        assert_eq!(fanouts.remaining("msg_3"), None);
    }
}
