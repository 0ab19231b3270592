//! Entity of the `dp_deliveries` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dp_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subscription_id: String,
    pub workspace_id: String,
    pub status: String,
    pub attempt_count: i32,
    pub next_attempt_ms: i64,
    /// While set and in the future, one replica owns this delivery.
    pub lease_until_ms: Option<i64>,
    /// When the first failed attempt of the current failure streak happened.
    pub first_failure_ms: Option<i64>,
    /// Attempts made before the current run of the retry schedule (a failed manual retry
    /// or replay starts a new run); the schedule's step is the attempt number minus this.
    pub schedule_start: i32,
    pub create_ms: i64,
    /// The ordering key of a delivery to a subscription with ordered delivery (m0008).
    #[sea_orm(column_type = "Text", nullable)]
    pub ordering_key: Option<String>,
    /// Its place in the commit order: the pending row of lowest `seq` of its subscription
    /// and key is the only one that may be attempted.
    pub seq: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
