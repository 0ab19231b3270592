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
    /// Each workspace's number, by id (a workspace is numbered when it is first held).
    workspaces: HashMap<Box<str>, u32, RandomState>,
    /// Deliveries held per workspace, by number.
    held: Vec<usize>,
    /// Workspaces holding at least one delivery.
    active: usize,
}

impl Registry {
    fn add(&mut self, workspace: u32) {
        let held = &mut self.held[workspace as usize];
        if *held == 0 {
            self.active += 1;
        }
        *held += 1;
    }

    fn remove(&mut self, workspace: u32) {
        let held = &mut self.held[workspace as usize];
        *held = held.saturating_sub(1);
        if *held == 0 {
            self.active = self.active.saturating_sub(1);
        }
    }

    /// The number of `workspace_id`, numbering it now if new.
    fn workspace(&mut self, workspace_id: &str) -> u32 {
        if let Some(&number) = self.workspaces.get(workspace_id) {
            return number;
        }
        let number = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        self.workspaces.insert(Box::from(workspace_id), number);
        self.held.push(0);
        number
    }
}

#[derive(Clone, Copy, Debug)]
struct Claim {
    generation: u64,
    /// Until when the database row's lease is known to run, for renewal on PostgreSQL.
    lease_until_ms: i64,
    /// The delivery's workspace, by number ([`Registry::workspace`]).
    workspace: u32,
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

    /// The most deliveries held at once.
    pub(crate) fn max_held(&self) -> usize {
        self.max_held
    }

    /// The last tenth of memory, kept for workspaces within their share
    /// (`commit::publishes::Publishes::admission`): the scanner never claims into it.
    pub(crate) fn reserve(&self) -> usize {
        self.max_held / 10
    }

    /// What memory holds now, per workspace (see [`Holding::of`]).
    pub(crate) fn holding(&self) -> Holding {
        let registry = self.lock();
        Holding {
            active: registry.active,
            held: registry
                .workspaces
                .iter()
                .map(|(id, &n)| (id.clone(), registry.held[n as usize]))
                .filter(|(_, held)| *held > 0)
                .collect(),
        }
    }

    /// Claims `key` (a delivery of `workspace_id`), unless this process already holds it.
    /// Returns the claim's generation.
    pub(crate) fn claim(
        &self,
        key: &DeliveryKey,
        workspace_id: &str,
        lease_until_ms: i64,
    ) -> Option<u64> {
        let mut registry = self.lock();
        if registry.claims.contains_key(key) {
            return None;
        }
        registry.next_generation += 1;
        let generation = registry.next_generation;
        let workspace = registry.workspace(workspace_id);
        registry.claims.insert(
            key.clone(),
            Claim {
                generation,
                lease_until_ms,
                workspace,
            },
        );
        registry.add(workspace);
        depth(registry.claims.len());
        Some(generation)
    }

    /// Takes over `key` (a delivery of `workspace_id`) whatever holds it now (a manual
    /// redelivery), withdrawing any earlier claim. Returns the new generation.
    pub(crate) fn take_over(
        &self,
        key: &DeliveryKey,
        workspace_id: &str,
        lease_until_ms: i64,
    ) -> u64 {
        let mut registry = self.lock();
        registry.next_generation += 1;
        let generation = registry.next_generation;
        let workspace = registry.workspace(workspace_id);
        let earlier = registry.claims.insert(
            key.clone(),
            Claim {
                generation,
                lease_until_ms,
                workspace,
            },
        );
        if let Some(earlier) = earlier {
            registry.remove(earlier.workspace);
        }
        registry.add(workspace);
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
            if let Some(claim) = registry.claims.remove(key) {
                registry.remove(claim.workspace);
            }
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
        let mut released = Vec::new();
        registry.claims.retain(|key, claim| {
            let keep = key.subscription_id != subscription_id;
            if !keep {
                released.push(claim.workspace);
            }
            keep
        });
        for workspace in released {
            registry.remove(workspace);
        }
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

/// What memory holds, for the writer's admission of new events (`commit::publishes`):
/// taken once per write cycle, and only when memory is nearly full.
pub(crate) struct Holding {
    /// Workspaces holding at least one.
    pub(crate) active: usize,
    held: Vec<(Box<str>, usize)>,
}

impl Holding {
    /// Deliveries of `workspace_id` held.
    pub(crate) fn of(&self, workspace_id: &str) -> usize {
        self.held
            .iter()
            .find(|(id, _)| id.as_ref() == workspace_id)
            .map_or(0, |(_, held)| *held)
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
        let generation = claims.claim(&a, "wrk_1", 10);
        assert!(generation.is_some());
        let generation = generation.unwrap_or_default();
        assert_eq!(claims.claim(&a, "wrk_1", 10), None);
        assert!(claims.is_current(&a, generation));
        assert_eq!(claims.holding().of("wrk_1"), 1);

        let newer = claims.take_over(&a, "wrk_1", 10);
        assert_eq!(claims.holding().of("wrk_1"), 1);
        assert!(!claims.is_current(&a, generation));
        // Releasing the stale generation does not drop the newer claim.
        claims.release(&a, generation);
        assert!(claims.is_current(&a, newer));
        claims.release(&a, newer);
        assert_eq!(claims.len(), 0);
        let holding = claims.holding();
        assert_eq!((holding.of("wrk_1"), holding.active), (0, 0));
    }

    #[test]
    fn releases_by_subscription_and_renews_leases() {
        let claims = Claims::default();
        claims.claim(&key("msg_1", "sub_1"), "wrk_1", 100);
        claims.claim(&key("msg_2", "sub_1"), "wrk_1", 500);
        claims.claim(&key("msg_1", "sub_2"), "wrk_2", 100);
        assert_eq!(claims.holding().active, 2);
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
        let holding = claims.holding();
        assert_eq!(
            (holding.of("wrk_1"), holding.of("wrk_2"), holding.active),
            (0, 1, 1)
        );
    }
}
