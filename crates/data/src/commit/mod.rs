//! Making things durable: the one writer of the hot path, which commits every cycle's
//! publishes and attempt outcomes in one transaction, then answers publishers and hands the
//! new deliveries to the dispatcher (`writer`); what a cycle stores for new events
//! (`publishes`, and `ordered` for the deliveries an ordering key orders) and for attempt
//! outcomes (`outcomes`).

pub(crate) mod ordered;
pub(crate) mod outcomes;
pub(crate) mod publishes;
pub(crate) mod writer;
