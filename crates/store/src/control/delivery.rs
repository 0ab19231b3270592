//! Entity of the `deliveries` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subscription_id: String,
    /// The key is (workspace_id, message_id, subscription_id): every read names the
    /// workspace.
    #[sea_orm(primary_key, auto_increment = false)]
    pub workspace_id: String,
    pub event_type: String,
    pub status: String,
    pub attempt_count: i32,
    pub last_attempt_ms: Option<i64>,
    pub next_attempt_ms: Option<i64>,
    pub last_status_code: i32,
    pub last_error_kind: String,
    pub create_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
