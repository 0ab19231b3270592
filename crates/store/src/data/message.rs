//! Entity of the `dp_messages` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dp_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub workspace_id: String,
    pub event_type: String,
    /// The envelope exactly as receivers get it, built once at ingest.
    #[sea_orm(column_type = "Blob")]
    pub envelope: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub create_ms: i64,
    /// The subscriptions the message matched at ingest, comma-separated; `None` on rows
    /// written before fan-out rows existed (they have a delivery row per subscription).
    pub subscription_ids: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
