//! Entity of the `messages` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The key is (workspace_id, id): every read names the workspace.
    #[sea_orm(primary_key, auto_increment = false)]
    pub workspace_id: String,
    pub event_type: String,
    pub create_ms: i64,
    pub delivery_count: i32,
    /// The ordering key, for events ordered on some subscription (m0008).
    #[sea_orm(column_type = "Text", nullable)]
    pub ordering_key: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
