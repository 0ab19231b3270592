//! The claims registry: the deliveries this process holds (in a lane, on a retry timer, or
//! in flight), each at most once, with the lease its database row has for this replica.
//!
//! The database row is the truth; a claim is this process's hold on it. Each claim carries
//! a generation: when the claim is withdrawn (the subscription was disabled, a manual
//! redelivery took over, the retry moved back to the database), the registry forgets the
//! generation and a copy still sitting in a lane or on a timer is dropped unseen.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::fast::RandomState;

/// One message to one subscription: the primary key of `dp_deliveries`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DeliveryKey {
    pub(crate) message_id: String,
    pub(crate) subscription_id: String,
}

/// The deliveries this process holds, so the scanner does not load one twice and a
/// withdrawn claim can be recognised.
pub(crate) struct Claims {
    registry: Mutex<Registry>,
    /// The most held at once: the scanner claims no more, and new publishes' deliveries are
    /// left to it in the database, once this many are held.
    max_held: usize,
}

impl Default for Claims {
    fn default() -> Self {
        Claims::new(crate::config::DEFAULT_MAX_HELD_DELIVERIES)
    }
}

#[derive(Default)]
struct Registry {
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

impl Claims {
    /// A registry holding `max_held` deliveries at most.
    pub(crate) fn new(max_held: usize) -> Claims {
        Claims {
            registry: Mutex::default(),
            max_held,
        }
    }

    /// How many more deliveries may be held now.
    pub(crate) fn room(&self) -> usize {
        self.max_held.saturating_sub(self.len())
    }

    /// Claims `key`, unless this process already holds it. Returns the claim's generation.
    pub(crate) fn claim(&self, key: &DeliveryKey, lease_until_ms: i64) -> Option<u64> {
        let mut registry = self.lock();
        if registry.claims.contains_key(key) {
            return None;
        }
        registry.next_generation += 1;
        let generation = registry.next_generation;
        registry.claims.insert(
            key.clone(),
            Claim {
                generation,
                lease_until_ms,
            },
        );
        depth(registry.claims.len());
        Some(generation)
    }

    /// Takes over `key` whatever holds it now (a manual redelivery), withdrawing any earlier
    /// claim. Returns the new generation.
    pub(crate) fn take_over(&self, key: &DeliveryKey, lease_until_ms: i64) -> u64 {
        let mut registry = self.lock();
        registry.next_generation += 1;
        let generation = registry.next_generation;
        registry.claims.insert(
            key.clone(),
            Claim {
                generation,
                lease_until_ms,
            },
        );
        depth(registry.claims.len());
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
        let mut registry = self.lock();
        if registry
            .claims
            .get(key)
            .is_some_and(|c| c.generation == generation)
        {
            registry.claims.remove(key);
            depth(registry.claims.len());
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
        let mut registry = self.lock();
        registry
            .claims
            .retain(|key, _| key.subscription_id != subscription_id);
        depth(registry.claims.len());
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
        let mut registry = self.lock();
        let mut keys = Vec::new();
        for (key, claim) in &mut registry.claims {
            if claim.lease_until_ms < before_ms {
                claim.lease_until_ms = renewed_until_ms;
                keys.push(key.clone());
            }
        }
        keys
    }

    /// Marks the leases of `keys` as unknown (a renewal that failed to be written), so the
    /// next [`Claims::leases_to_renew`] includes them.
    pub(crate) fn forget_leases(&self, keys: &[DeliveryKey]) {
        let mut registry = self.lock();
        for key in keys {
            if let Some(claim) = registry.claims.get_mut(key) {
                claim.lease_until_ms = 0;
            }
        }
    }

    /// Every held delivery (to release their leases at shutdown).
    pub(crate) fn keys(&self) -> Vec<DeliveryKey> {
        self.lock().claims.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Every critical section leaves the map consistent, so a panic elsewhere while the
        // lock was held does not invalidate it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
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
        let claims = Claims::default();
        let a = key("msg_1", "sub_1");
        let generation = claims.claim(&a, 10);
        assert!(generation.is_some());
        let generation = generation.unwrap_or_default();
        assert_eq!(claims.claim(&a, 10), None);
        assert!(claims.is_current(&a, generation));

        let newer = claims.take_over(&a, 10);
        assert!(!claims.is_current(&a, generation));
        // Releasing the stale generation does not drop the newer claim.
        claims.release(&a, generation);
        assert!(claims.is_current(&a, newer));
        claims.release(&a, newer);
        assert_eq!(claims.len(), 0);
    }

    #[test]
    fn releases_by_subscription_and_renews_leases() {
        let claims = Claims::default();
        claims.claim(&key("msg_1", "sub_1"), 100);
        claims.claim(&key("msg_2", "sub_1"), 500);
        claims.claim(&key("msg_1", "sub_2"), 100);
        let mut renew = claims.leases_to_renew(200, 1_000);
        renew.sort_by(|a, b| {
            (&a.message_id, &a.subscription_id).cmp(&(&b.message_id, &b.subscription_id))
        });
        assert_eq!(renew, [key("msg_1", "sub_1"), key("msg_1", "sub_2")]);
        assert!(claims.leases_to_renew(200, 1_000).is_empty());
        // A renewal that was not written is tried again at the next pass.
        claims.forget_leases(&[key("msg_1", "sub_2")]);
        assert_eq!(claims.leases_to_renew(200, 1_000), [key("msg_1", "sub_2")]);
        claims.release_subscription("sub_1");
        assert_eq!(claims.keys(), [key("msg_1", "sub_2")]);
    }
}
