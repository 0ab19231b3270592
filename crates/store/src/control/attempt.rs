//! Entity of the `attempts` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub workspace_id: String,
    pub message_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub attempt_number: i32,
    pub attempt_ms: i64,
    pub success: bool,
    pub status_code: i32,
    pub error_kind: String,
    #[sea_orm(column_type = "Text")]
    pub error_message: String,
    pub latency_us: i64,
    #[sea_orm(column_type = "Text")]
    pub response_excerpt: String,
    pub trigger: String,
    #[sea_orm(column_type = "Text")]
    pub url: String,
    /// Where it was logged, with `log_seq` (migration m0005): the inserting transaction on
    /// PostgreSQL, 0 on SQLite; `None` for rows logged before.
    pub log_txid: Option<i64>,
    /// Its number in the log (a sequence on PostgreSQL, numbered at insert on SQLite).
    pub log_seq: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
