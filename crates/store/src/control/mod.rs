//! Entities of the control plane's database.

pub mod api_key;
pub mod attempt;
pub mod config_change;
pub mod delivery;
pub mod endpoint_health;
pub mod event_type;
pub mod message;
pub mod quarantined_outcome;
pub mod subscription;
pub mod workspace;
