//! The in-memory side of the durable queue: deliveries this process holds (in a lane or on a
//! retry timer) and the registry that makes sure each is held at most once.
//!
//! The database row is the truth; a [`DeliveryTask`] is this process's claim on it. Each
//! claim carries a generation: when the claim is withdrawn (the subscription was disabled, a
//! manual redelivery took over, the retry moved back to the database), the registry forgets
//! the generation and a copy still sitting in a lane or on a timer is dropped unseen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use foldhash::fast::RandomState;
use sluice_proto::control::v1::AttemptTrigger;

/// One message to one subscription: the primary key of `dp_deliveries`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DeliveryKey {
    pub(crate) message_id: String,
    pub(crate) subscription_id: String,
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
}

/// A delivery this process holds and will attempt.
#[derive(Clone, Debug)]
pub(crate) struct DeliveryTask {
    pub(crate) key: DeliveryKey,
    pub(crate) message: Arc<StoredMessage>,
    /// Attempts already made; the next one is number `attempt_count + 1`.
    pub(crate) attempt_count: u32,
    /// When the first failed attempt of this delivery happened.
    pub(crate) first_failure_ms: Option<i64>,
    pub(crate) trigger: AttemptTrigger,
    /// This claim's generation in the [`Held`] registry.
    pub(crate) generation: u64,
}

/// Claims the first attempts of `message` to `subscription_ids` for this process, leaving
/// out any it already holds, as tasks ready for the dispatcher or a timer.
pub(crate) fn first_attempts(
    held: &Held,
    message: &Arc<StoredMessage>,
    subscription_ids: impl IntoIterator<Item = String>,
    lease_until_ms: i64,
) -> impl Iterator<Item = DeliveryTask> {
    subscription_ids
        .into_iter()
        .filter_map(move |subscription_id| {
            let key = DeliveryKey {
                message_id: message.id.clone(),
                subscription_id,
            };
            let generation = held.claim(&key, lease_until_ms)?;
            Some(DeliveryTask {
                key,
                message: Arc::clone(message),
                attempt_count: 0,
                first_failure_ms: None,
                trigger: AttemptTrigger::Scheduled,
                generation,
            })
        })
}

/// The deliveries this process holds, so the scanner does not load one twice and a
/// withdrawn claim can be recognised.
#[derive(Default)]
pub(crate) struct Held {
    inner: Mutex<HeldInner>,
}

#[derive(Default)]
struct HeldInner {
    next_generation: u64,
    /// Keys are ours (message and subscription ids), so a fast hash is safe.
    claims: HashMap<DeliveryKey, Claim, RandomState>,
}

#[derive(Clone, Copy, Debug)]
struct Claim {
    generation: u64,
    /// Until when the database row's lease is known to run, for renewal on PostgreSQL.
    lease_until_ms: i64,
}

impl Held {
    /// Claims `key`, unless this process already holds it. Returns the claim's generation.
    pub(crate) fn claim(&self, key: &DeliveryKey, lease_until_ms: i64) -> Option<u64> {
        let mut inner = self.lock();
        if inner.claims.contains_key(key) {
            return None;
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.claims.insert(
            key.clone(),
            Claim {
                generation,
                lease_until_ms,
            },
        );
        depth(inner.claims.len());
        Some(generation)
    }

    /// Takes over `key` whatever holds it now (a manual redelivery), withdrawing any earlier
    /// claim. Returns the new generation.
    pub(crate) fn take_over(&self, key: &DeliveryKey, lease_until_ms: i64) -> u64 {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.claims.insert(
            key.clone(),
            Claim {
                generation,
                lease_until_ms,
            },
        );
        depth(inner.claims.len());
        generation
    }

    /// Whether the claim `generation` on `key` still stands.
    pub(crate) fn is_current(&self, key: &DeliveryKey, generation: u64) -> bool {
        self.lock()
            .claims
            .get(key)
            .is_some_and(|c| c.generation == generation)
    }

    /// Withdraws the claim `generation` on `key`, if it still stands.
    pub(crate) fn release(&self, key: &DeliveryKey, generation: u64) {
        let mut inner = self.lock();
        if inner
            .claims
            .get(key)
            .is_some_and(|c| c.generation == generation)
        {
            inner.claims.remove(key);
            depth(inner.claims.len());
        }
    }

    /// Records that the row's lease now runs until `lease_until_ms`.
    pub(crate) fn set_lease(&self, key: &DeliveryKey, generation: u64, lease_until_ms: i64) {
        if let Some(claim) = self.lock().claims.get_mut(key)
            && claim.generation == generation
        {
            claim.lease_until_ms = lease_until_ms;
        }
    }

    /// Withdraws every claim on deliveries to `subscription_id`.
    pub(crate) fn release_subscription(&self, subscription_id: &str) {
        let mut inner = self.lock();
        inner
            .claims
            .retain(|key, _| key.subscription_id != subscription_id);
        depth(inner.claims.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().claims.len()
    }

    /// The held deliveries whose lease ends before `before_ms`, marked as renewed until
    /// `renewed_until_ms`; the caller writes that to the database.
    pub(crate) fn leases_to_renew(
        &self,
        before_ms: i64,
        renewed_until_ms: i64,
    ) -> Vec<DeliveryKey> {
        let mut inner = self.lock();
        let mut keys = Vec::new();
        for (key, claim) in &mut inner.claims {
            if claim.lease_until_ms < before_ms {
                claim.lease_until_ms = renewed_until_ms;
                keys.push(key.clone());
            }
        }
        keys
    }

    /// Every held delivery (to release their leases at shutdown).
    pub(crate) fn keys(&self) -> Vec<DeliveryKey> {
        self.lock().claims.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, HeldInner> {
        // Every critical section leaves the map consistent, so a panic elsewhere while the
        // lock was held does not invalidate it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Publishes the number of held deliveries as the queue-depth gauge.
fn depth(len: usize) {
    crate::metrics::metrics()
        .queue_depth
        .store(len as i64, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: &str, s: &str) -> DeliveryKey {
        DeliveryKey {
            message_id: m.into(),
            subscription_id: s.into(),
        }
    }

    #[test]
    fn claims_are_exclusive_and_withdrawable() {
        let held = Held::default();
        let a = key("msg_1", "sub_1");
        let generation = held.claim(&a, 10);
        assert!(generation.is_some());
        let generation = generation.unwrap_or_default();
        assert_eq!(held.claim(&a, 10), None);
        assert!(held.is_current(&a, generation));

        let newer = held.take_over(&a, 10);
        assert!(!held.is_current(&a, generation));
        // Releasing the stale generation does not drop the newer claim.
        held.release(&a, generation);
        assert!(held.is_current(&a, newer));
        held.release(&a, newer);
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn releases_by_subscription_and_renews_leases() {
        let held = Held::default();
        held.claim(&key("msg_1", "sub_1"), 100);
        held.claim(&key("msg_2", "sub_1"), 500);
        held.claim(&key("msg_1", "sub_2"), 100);
        let mut renew = held.leases_to_renew(200, 1_000);
        renew.sort_by(|a, b| {
            (&a.message_id, &a.subscription_id).cmp(&(&b.message_id, &b.subscription_id))
        });
        assert_eq!(renew, [key("msg_1", "sub_1"), key("msg_1", "sub_2")]);
        assert!(held.leases_to_renew(200, 1_000).is_empty());
        held.release_subscription("sub_1");
        assert_eq!(held.keys(), [key("msg_1", "sub_2")]);
    }
}
