//! Ordered delivery per key (`docs/ordering.md`): the (subscription, ordering key) pairs
//! whose head may have moved, for the scanner to claim their next delivery at once.
//!
//! Only the pending delivery of lowest `seq` of a pair, its head, is ever claimed, and the
//! database says which one that is, so the order holds across retries, restarts and
//! replicas. A pair is noted here when a commit may have changed its head (a new event
//! with that key, or the head's final outcome); the scanner wakes, claims the new head if
//! it is free and due, and hands it to its lane like any claimed delivery. A note that is
//! lost (memory was full, the process stopped) costs only time: the scanner's periodic
//! pass claims heads too.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The pairs to look at, and the scanner's wake-up.
#[derive(Default)]
pub(crate) struct Heads {
    pending: Mutex<HashSet<(String, Arc<str>)>>,
    /// Wakes the scanner: pairs are waiting.
    pub(crate) wake: Notify,
}

impl Heads {
    /// Notes that the head of `ordering_key` on `subscription_id` may have moved.
    pub(crate) fn moved(&self, subscription_id: &str, ordering_key: &Arc<str>) {
        let added = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((subscription_id.to_owned(), Arc::clone(ordering_key)));
        if added {
            self.wake.notify_one();
        }
    }

    /// The pairs noted since the last call.
    pub(crate) fn take(&self) -> Vec<(String, Arc<str>)> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_each_pair_once_until_taken() {
        let heads = Heads::default();
        let key: Arc<str> = Arc::from("conv_1");
        heads.moved("sub_1", &key);
        heads.moved("sub_1", &key);
        heads.moved("sub_2", &key);
        let mut taken = heads.take();
        taken.sort();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].0, "sub_1");
        assert!(heads.take().is_empty());
    }
}
