//! Entity of the `dp_fanout` table: a message whose first attempts have not all concluded.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dp_fanout")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: String,
    /// The message's workspace (the scanner shares its claims between workspaces).
    pub workspace_id: String,
    /// When the first attempts are due.
    pub due_ms: i64,
    /// While set and in the future, one replica owns these first attempts.
    pub lease_until_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
