//! Entities of the data plane's database.

pub mod api_key;
pub mod delivery;
pub mod fanout;
pub mod message;
pub mod outbox;
pub mod state;
pub mod subscription;
pub mod workspace;
