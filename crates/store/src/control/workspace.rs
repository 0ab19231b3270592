//! Entity of the `workspaces` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "workspaces")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub create_ms: i64,
    pub update_ms: i64,
    /// The workspace's own retention window in milliseconds; `None`: the server's default.
    pub retention_ms: Option<i64>,
    /// The workspace's own idempotency-key window in milliseconds; `None`: the default.
    pub idempotency_retention_ms: Option<i64>,
    /// The workspace's own retry policy, JSON of `sluice_core::policy::Overrides`; `None`:
    /// the server's (m0007).
    #[sea_orm(column_type = "Text", nullable)]
    pub retry_policy: Option<String>,
    /// New subscriptions require endpoint ownership verification (m0010).
    pub require_endpoint_verification: bool,
    /// The workspace's own publish quota, events a second; 0: none, whatever the server's;
    /// `None`: the server's (m0012).
    pub publish_quota_rate: Option<i64>,
    /// Its burst; 0: one second's worth (m0012).
    pub publish_quota_burst: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
