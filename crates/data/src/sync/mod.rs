//! Talking with the control plane: the connection (`control_client`), the configuration
//! watch that keeps the local copy current (`watcher`), and the reporter that streams the
//! outbox of outcomes (`reporter`), elected among replicas on PostgreSQL (`leader`).

pub(crate) mod control_client;
pub(crate) mod leader;
pub(crate) mod reporter;
pub(crate) mod watcher;
