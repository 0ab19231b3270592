//! Entity of the `subscriptions` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscriptions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub workspace_id: String,
    #[sea_orm(column_type = "Text")]
    pub description: String,
    #[sea_orm(column_type = "Text")]
    pub url: String,
    /// `webhook` or `slack`.
    pub destination_type: String,
    /// JSON array of normalised filter patterns.
    #[sea_orm(column_type = "Text")]
    pub filters: String,
    /// JSON object of custom headers.
    #[sea_orm(column_type = "Text")]
    pub headers: String,
    pub rate_limit_per_second: i32,
    pub enabled: bool,
    /// `user`, `endpoint_gone` or `persistent_failure` while disabled.
    pub disabled_reason: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub disabled_message: Option<String>,
    pub disable_ms: Option<i64>,
    /// The signing secret in `whsec_` form.
    pub secret: String,
    /// The previous secret, signing too until `previous_secret_expire_ms`.
    pub previous_secret: Option<String>,
    pub previous_secret_expire_ms: Option<i64>,
    /// `symmetric`, `asymmetric` or `both` (m0006).
    pub signature_scheme: String,
    /// The ed25519 key in `whsk_` form, sealed; set once the subscription signs
    /// asymmetrically.
    #[sea_orm(column_type = "Text", nullable)]
    pub signing_key: Option<String>,
    /// The previous ed25519 key, sealed, signing too until `previous_secret_expire_ms`.
    #[sea_orm(column_type = "Text", nullable)]
    pub previous_signing_key: Option<String>,
    /// The current key's public half, `whpk_`, in clear.
    #[sea_orm(column_type = "Text", nullable)]
    pub public_key: Option<String>,
    /// The endpoint's `Authorization` header value, sealed (m0006).
    #[sea_orm(column_type = "Text", nullable)]
    pub auth: Option<String>,
    /// `basic`, `bearer`, `oauth2` or `mtls` when `auth` is set.
    #[sea_orm(column_type = "Text", nullable)]
    pub auth_type: Option<String>,
    /// The subscription's own retry policy, JSON of `sluice_core::policy::Overrides`; `None`
    /// inherits (m0007).
    #[sea_orm(column_type = "Text", nullable)]
    pub retry_policy: Option<String>,
    /// `envelope`, `raw` or `thin` (m0007).
    pub payload_shape: String,
    /// Whether deliveries wait for the endpoint to prove it wants them (m0010).
    pub verification_required: bool,
    /// `pending`, `verified` or `failed`; null when verification is not required.
    #[sea_orm(column_type = "Text", nullable)]
    pub verification_state: Option<String>,
    /// Why the state is what it is, for people.
    #[sea_orm(column_type = "Text", nullable)]
    pub verification_message: Option<String>,
    /// When the last verification concluded.
    pub verify_ms: Option<i64>,
    /// Events with an ordering key are delivered in publish order per key (m0008).
    pub ordered_delivery: bool,
    pub create_ms: i64,
    pub update_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
