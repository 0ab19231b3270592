//! The helpers the end-to-end suites in `tests/tests/` share: the control plane's
//! resources and field masks ([`control`]), and the delivery log, subscriptions and
//! publishing ([`delivery`]). What they stand on (databases, planes, receivers, clients)
//! is the test kit's, `sluice-testkit`.

#![allow(clippy::unwrap_used)]

pub mod control;
pub mod delivery;

use std::collections::HashMap;

/// Headers from pairs.
pub fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
