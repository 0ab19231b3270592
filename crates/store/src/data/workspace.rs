//! Entity of the `dp_workspaces` table: the workspaces' own retention windows, retry
//! policy and publish quota, as the configuration watch sent them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dp_workspaces")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub retention_ms: Option<i64>,
    pub idempotency_retention_ms: Option<i64>,
    /// The workspace's `RetryPolicy` as protobuf bytes; `None`: none (m0007).
    pub retry_policy: Option<Vec<u8>>,
    /// The workspace's `PublishQuota` as protobuf bytes; `None`: the flags' (m0012).
    pub publish_quota: Option<Vec<u8>>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
