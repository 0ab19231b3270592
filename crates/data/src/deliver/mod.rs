//! Delivering: the dispatcher and its lanes (one per subscription, with its concurrency,
//! rate limit and circuit breaker), the one `attempt` module that sends, concludes and
//! records every attempt (scheduled, replayed or manual), the rules of what follows an
//! attempt, the retry timers, the scanner that claims due work from the database, and the
//! manual redelivery and replay the control plane asks for; `ordering` is which delivery of
//! an ordering key may go.

pub(crate) mod attempt;
pub(crate) mod breaker;
pub(crate) mod decision;
pub(crate) mod dispatcher;
pub(crate) mod fair_share;
pub(crate) mod lanes;
pub(crate) mod limiter;
pub(crate) mod manual;
pub(crate) mod ordering;
pub(crate) mod rate_limit;
pub(crate) mod scanner;
pub(crate) mod shape;
pub(crate) mod timers;
