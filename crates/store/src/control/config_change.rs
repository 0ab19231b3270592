//! Entity of the `config_changes` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "config_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub revision: i64,
    /// `subscription` or `api_key`: which table `resource_id` is in.
    pub kind: String,
    pub resource_id: String,
    pub workspace_id: String,
    pub create_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
