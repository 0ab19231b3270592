//! What several tasks share, each piece behind its own lock: the configuration copy (its
//! secrets sealed at rest), the claims on deliveries this replica holds, the open fan-outs,
//! the endpoints' failure streaks, the outbox between the writer and the reporter, and the
//! ordering keys whose head may have moved.
//! Nothing here runs a task; nothing here imports a task's module.

pub(crate) mod claims;
pub(crate) mod config_copy;
pub(crate) mod endpoint_auth;
pub(crate) mod fanouts;
pub(crate) mod heads;
pub(crate) mod outbox;
pub(crate) mod policy;
#[cfg(test)]
mod properties;
pub(crate) mod sealed;
pub(crate) mod streaks;
