//! Entity of the `dp_outbox` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dp_outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// An encoded `ReportOutcomesRequest` waiting for the control plane's ack.
    #[sea_orm(column_type = "Blob")]
    pub body: Vec<u8>,
    pub create_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
