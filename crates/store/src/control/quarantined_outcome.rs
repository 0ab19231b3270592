//! Entity of the `quarantined_outcomes` table: outcome batches set aside after the control
//! plane failed to store them a few times (the encoded `ReportOutcomesRequest`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "quarantined_outcomes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub batch_id: i64,
    pub body: Vec<u8>,
    #[sea_orm(column_type = "Text")]
    pub error: String,
    pub tries: i32,
    pub create_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
