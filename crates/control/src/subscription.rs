//! `SubscriptionService`: endpoints, their filters, headers, rate limits, state and signing
//! secrets. Every change is recorded in the config change log in the same transaction, so
//! the data plane's watch stream sees it within a second. Secrets are stored sealed
//! (`secrets.rs`) and opened only to be revealed or sent to the data plane.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, Set, TransactionTrait,
};
use sluice_core::event::{EventFilter, normalize_event_name};
use sluice_core::ids::{IdKind, new_id};
use sluice_core::signing::SigningSecret;
use sluice_core::signing_ed25519::AsymmetricKey;
use sluice_core::validate::{
    MAX_CUSTOM_HEADERS, basic_authorization, basic_password, basic_username, bearer_token,
    custom_header, endpoint_url, multiline_text,
};
use sluice_proto::control::v1 as pb;
use sluice_proto::json::struct_to_json;
use sluice_store::control::{event_type, subscription, workspace};
use sluice_store::{lock_config_writes, now_ms};
use tonic::{Request, Response, Status};

use crate::error::{ApiError, ApiResult, Violations};
use crate::page::PageRequest;
use crate::workspace::check_id;
use crate::{
    CHANGE_SUBSCRIPTION, ControlPlane, convert, record_change, verification, verify_state,
};

/// The longest description or disable message.
pub const MAX_DESCRIPTION: usize = 2000;
/// The highest per-endpoint rate limit a subscription may set.
pub const MAX_RATE_LIMIT: u32 = 100_000;
/// The grace period of a rotation when the request names none.
pub const DEFAULT_GRACE_SECS: i64 = 24 * 3600;
/// The longest grace period of a rotation.
pub const MAX_GRACE_SECS: i64 = 7 * 24 * 3600;
/// Updatable fields, for `update_mask` (besides `retry_policy.<field>`).
pub const UPDATABLE: [&str; 12] = [
    "description",
    "url",
    "destination_type",
    "filters",
    "headers",
    "rate_limit_per_second",
    "signature_scheme",
    "auth",
    "payload_shape",
    "retry_policy",
    "verification_required",
    "ordered_delivery",
];

/// The `SubscriptionService` implementation.
pub struct SubscriptionApi(pub(crate) ControlPlane);

/// The validated, storable form of a subscription's settable fields.
#[derive(Default)]
struct Fields {
    description: String,
    url: String,
    /// `None`: infer from the URL (Slack for hooks.slack.com).
    destination_type: Option<&'static str>,
    filters: String,
    headers: String,
    rate_limit_per_second: i32,
    /// `None`: unspecified (symmetric on create, unchanged on update).
    signature_scheme: Option<&'static str>,
    /// The endpoint's authentication: (`basic` or `bearer`, the `Authorization` value) or
    /// (`oauth2` or `mtls`, their settings as JSON, see `endpoint_auth.rs`); `None` for none.
    auth: Option<(&'static str, String)>,
    /// `None`: unspecified (the envelope on create, unchanged on update).
    payload_shape: Option<sluice_core::policy::PayloadShape>,
    /// Whether the endpoint must prove ownership before deliveries.
    verification_required: bool,
    /// Deliveries of one ordering key go one at a time, in publish order.
    ordered_delivery: bool,
}

/// A new ed25519 key: sealed for storage, and its public half in clear.
fn new_signing_key(keyring: &sluice_core::sealing::Keyring) -> (String, String) {
    let key = AsymmetricKey::generate();
    (keyring.seal(&key.to_whsk()), key.public_key().to_whpk())
}

/// The destination type of `url` when none is given.
fn inferred_destination(url: &str) -> &'static str {
    let slack = url::Url::parse(url).is_ok_and(|u| u.host_str() == Some("hooks.slack.com"));
    if slack { "slack" } else { "webhook" }
}

/// Validates the fields `selected` says to read, recording every violation.
fn validate(
    v: &mut Violations,
    input: &pb::Subscription,
    selected: impl Fn(&str) -> bool,
    allow_http: bool,
) -> Fields {
    let mut f = Fields::default();
    if selected("description") {
        v.check(
            "subscription.description",
            multiline_text(&input.description, MAX_DESCRIPTION),
        );
        f.description = input.description.clone();
    }
    if selected("url") {
        if input.url.is_empty() {
            v.add("subscription.url", "required: the endpoint's https URL");
        } else if let Some(url) = v.check("subscription.url", endpoint_url(&input.url, allow_http))
        {
            f.url = url.to_string();
        }
    }
    if selected("destination_type") {
        f.destination_type = match pb::DestinationType::try_from(input.destination_type) {
            Ok(pb::DestinationType::Slack) => Some("slack"),
            Ok(pb::DestinationType::Webhook) => Some("webhook"),
            // Unspecified: inferred from the URL (the new one, or the stored one on update).
            Ok(pb::DestinationType::Unspecified) => None,
            Err(_) => {
                v.add(
                    "subscription.destination_type",
                    format!("unknown value {}", input.destination_type),
                );
                None
            }
        };
    }
    if selected("filters") {
        match EventFilter::parse(&input.filters) {
            Ok(filter) => f.filters = serde_json::to_string(filter.patterns()).unwrap_or_default(),
            Err(e) => {
                let field = match e.index {
                    Some(i) => format!("subscription.filters[{i}]"),
                    None => "subscription.filters".to_owned(),
                };
                v.add(field, e.to_string());
            }
        }
    }
    if selected("headers") {
        if input.headers.len() > MAX_CUSTOM_HEADERS {
            v.add(
                "subscription.headers",
                format!(
                    "at most {MAX_CUSTOM_HEADERS} headers; got {}",
                    input.headers.len()
                ),
            );
        }
        let mut headers = BTreeMap::new();
        for (name, value) in &input.headers {
            if v.check(
                format!("subscription.headers[{name:?}]"),
                custom_header(name, value),
            )
            .is_some()
                && headers
                    .insert(name.to_ascii_lowercase(), value.clone())
                    .is_some()
            {
                v.add(
                    format!("subscription.headers[{name:?}]"),
                    "given twice (header names ignore case)",
                );
            }
        }
        f.headers = serde_json::to_string(&headers).unwrap_or_default();
    }
    if selected("signature_scheme") {
        f.signature_scheme = match pb::SignatureScheme::try_from(input.signature_scheme) {
            Ok(pb::SignatureScheme::Unspecified) => None,
            Ok(pb::SignatureScheme::Symmetric) => Some("symmetric"),
            Ok(pb::SignatureScheme::Asymmetric) => Some("asymmetric"),
            Ok(pb::SignatureScheme::Both) => Some("both"),
            Err(_) => {
                v.add(
                    "subscription.signature_scheme",
                    format!(
                        "unknown value {}; use SIGNATURE_SCHEME_SYMMETRIC, _ASYMMETRIC or _BOTH",
                        input.signature_scheme
                    ),
                );
                None
            }
        };
    }
    if selected("auth") {
        f.auth = match input.auth.as_ref().and_then(|a| a.method.as_ref()) {
            None => None,
            Some(pb::endpoint_auth::Method::Basic(basic)) => {
                let user = v.check(
                    "subscription.auth.basic.username",
                    basic_username(&basic.username),
                );
                let password = v.check(
                    "subscription.auth.basic.password",
                    basic_password(&basic.password),
                );
                user.zip(password).map(|_| {
                    (
                        "basic",
                        basic_authorization(&basic.username, &basic.password),
                    )
                })
            }
            Some(pb::endpoint_auth::Method::Bearer(bearer)) => v
                .check(
                    "subscription.auth.bearer.token",
                    bearer_token(&bearer.token),
                )
                .map(|_| ("bearer", format!("Bearer {}", bearer.token))),
            Some(pb::endpoint_auth::Method::Oauth2ClientCredentials(oauth2)) => {
                crate::endpoint_auth::oauth2(v, oauth2, allow_http).map(|json| ("oauth2", json))
            }
            Some(pb::endpoint_auth::Method::MutualTls(tls)) => {
                crate::endpoint_auth::mutual_tls(v, tls).map(|json| ("mtls", json))
            }
        };
        // mTLS authenticates in the handshake; every other method is the Authorization header.
        if f.auth.as_ref().is_some_and(|(kind, _)| *kind != "mtls")
            && input
                .headers
                .keys()
                .any(|name| name.eq_ignore_ascii_case("authorization"))
        {
            v.add(
                "subscription.auth",
                "set either `auth` or a custom Authorization header, not both",
            );
        }
    }
    if selected("payload_shape") {
        f.payload_shape =
            crate::policy::payload_shape(v, "subscription.payload_shape", input.payload_shape);
    }
    if selected("verification_required") {
        f.verification_required = input.verification_required;
    }
    if selected("rate_limit_per_second") {
        if input.rate_limit_per_second > MAX_RATE_LIMIT {
            v.add(
                "subscription.rate_limit_per_second",
                format!(
                    "at most {MAX_RATE_LIMIT} (0 means no limit); got {}",
                    input.rate_limit_per_second
                ),
            );
        }
        f.rate_limit_per_second = input.rate_limit_per_second.min(MAX_RATE_LIMIT) as i32;
    }
    if selected("ordered_delivery") {
        f.ordered_delivery = input.ordered_delivery;
    }
    f
}

fn parse_secret(v: &mut Violations, field: &str, secret: &str) -> String {
    if secret.is_empty() {
        return SigningSecret::generate().to_whsec();
    }
    v.check(field, SigningSecret::parse(secret))
        .map(|s| s.to_whsec())
        .unwrap_or_default()
}

/// The `whpk_` public key of a stored (opened) `whsk_` key.
fn public_of(whsk: &str, subscription_id: &str) -> ApiResult<String> {
    AsymmetricKey::parse(whsk)
        .map(|key| key.public_key().to_whpk())
        .map_err(|e| {
            ApiError::Internal(format!(
                "subscription {subscription_id}: its stored ed25519 key does not parse: {e}"
            ))
        })
}

impl SubscriptionApi {
    /// A subscription as answered: its row with the effective retry policy (its own, its
    /// workspace's, the server's, each value with its source).
    async fn shown(&self, row: subscription::Model) -> ApiResult<pb::Subscription> {
        Ok(self.shown_all(vec![row]).await?.pop().unwrap_or_default())
    }

    /// [`Self::shown`] of rows of one workspace, which is read once.
    async fn shown_all(&self, rows: Vec<subscription::Model>) -> ApiResult<Vec<pb::Subscription>> {
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let workspace = workspace::Entity::find_by_id(first.workspace_id.clone())
            .one(self.0.db())
            .await?;
        let workspace_policy = workspace.and_then(|w| w.retry_policy);
        Ok(rows
            .into_iter()
            .map(|row| {
                let effective = crate::policy::effective(
                    &self.0.config().policy_defaults,
                    workspace_policy.as_deref(),
                    row.retry_policy.as_deref(),
                );
                pb::Subscription {
                    effective_retry_policy: Some(effective),
                    ..convert::subscription(row)
                }
            })
            .collect())
    }

    async fn find(&self, workspace_id: &str, id: &str) -> ApiResult<subscription::Model> {
        check_id(IdKind::Subscription, "id", id)?;
        find_in(self.0.db(), workspace_id, id).await
    }

    /// Runs `change` on the subscription inside a transaction that records the change.
    /// `field` names the id in errors.
    async fn modify<F>(
        &self,
        workspace_id: &str,
        field: &str,
        id: &str,
        change: F,
    ) -> ApiResult<subscription::Model>
    where
        F: FnOnce(&mut subscription::ActiveModel) + Send + 'static,
    {
        check_id(IdKind::Subscription, field, id)?;
        let (workspace_id, id) = (workspace_id.to_owned(), id.to_owned());
        let (row, revision) = self
            .0
            .db()
            .transaction::<_, (subscription::Model, i64), ApiError>(|tx| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let mut row = find_in(tx, &workspace_id, &id).await?.into_active_model();
                    change(&mut row);
                    row.update_ms = Set(now_ms());
                    let row = row.update(tx).await?;
                    if !row.enabled {
                        // Nothing more is delivered: what was pending ends failed in the log.
                        crate::fail_pending_deliveries(tx, &row.workspace_id, &row.id).await?;
                    }
                    let revision =
                        record_change(tx, CHANGE_SUBSCRIPTION, &row.id, &row.workspace_id).await?;
                    Ok((row, revision))
                })
            })
            .await?;
        self.0.published(revision);
        Ok(row)
    }
}

/// Whether the workspace requires endpoint verification of its new subscriptions.
/// A Slack incoming webhook answers `ok`, never a challenge: requiring verification of one
/// would hold its deliveries for ever, so the combination is refused (the workspace's
/// requirement included) rather than stored.
fn slack_cannot_verify(destination: &str, verification_required: bool) -> ApiResult<()> {
    if destination == "slack" && verification_required {
        let mut v = Violations::default();
        v.add(
            "subscription.verification_required",
            "a Slack destination cannot answer the ownership challenge (Slack answers `ok`); \
             deliver to Slack without verification, or through an endpoint of yours \
             (`destination_type: DESTINATION_TYPE_WEBHOOK`), or in a workspace that does not \
             set require_endpoint_verification",
        );
        v.finish()?;
    }
    Ok(())
}

async fn workspace_requires_verification<C: sea_orm::ConnectionTrait>(
    db: &C,
    workspace_id: &str,
) -> ApiResult<bool> {
    Ok(workspace::Entity::find_by_id(workspace_id.to_owned())
        .one(db)
        .await?
        .is_some_and(|w| w.require_endpoint_verification))
}

/// A subscription of one workspace; another workspace's id is NOT_FOUND.
pub(crate) async fn find_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    workspace_id: &str,
    id: &str,
) -> ApiResult<subscription::Model> {
    subscription::Entity::find_by_id(id.to_owned())
        .filter(subscription::Column::WorkspaceId.eq(workspace_id))
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription", id))
}

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for SubscriptionApi {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let input = r.subscription.unwrap_or_default();
        let mut v = Violations::default();
        let mut f = validate(&mut v, &input, |_| true, self.0.config().allow_http);
        let secret = parse_secret(&mut v, "secret", &r.secret);
        let retry_policy = crate::policy::read(
            &mut v,
            "subscription.retry_policy",
            input.retry_policy.as_ref(),
        );
        v.finish()?;
        f.verification_required |=
            workspace_requires_verification(self.0.db(), &workspace_id).await?;
        let now = now_ms();
        let destination = f
            .destination_type
            .unwrap_or_else(|| inferred_destination(&f.url));
        slack_cannot_verify(destination, f.verification_required)?;
        let scheme = f.signature_scheme.unwrap_or("symmetric");
        let (signing_key, public_key) = if convert::signs(scheme).1 {
            let (sealed, public) = new_signing_key(&self.0.config().keyring);
            (Some(sealed), Some(public))
        } else {
            (None, None)
        };
        let row = subscription::ActiveModel {
            id: Set(new_id(IdKind::Subscription)),
            workspace_id: Set(workspace_id),
            description: Set(f.description),
            url: Set(f.url),
            destination_type: Set(destination.to_owned()),
            filters: Set(f.filters),
            headers: Set(f.headers),
            rate_limit_per_second: Set(f.rate_limit_per_second),
            ordered_delivery: Set(f.ordered_delivery),
            enabled: Set(true),
            disabled_reason: Set(None),
            disabled_message: Set(None),
            disable_ms: Set(None),
            secret: Set(self.0.config().keyring.seal(&secret)),
            previous_secret: Set(None),
            previous_secret_expire_ms: Set(None),
            signature_scheme: Set(scheme.to_owned()),
            signing_key: Set(signing_key),
            previous_signing_key: Set(None),
            public_key: Set(public_key),
            auth_type: Set(f.auth.as_ref().map(|(kind, _)| (*kind).to_owned())),
            auth: Set(f
                .auth
                .as_ref()
                .map(|(_, value)| self.0.config().keyring.seal(value))),
            retry_policy: Set(retry_policy.and_then(|p| p.to_json())),
            payload_shape: Set(f.payload_shape.unwrap_or_default().as_str().to_owned()),
            verification_required: Set(f.verification_required),
            verification_state: Set(f
                .verification_required
                .then(|| verify_state::PENDING.to_owned())),
            verification_message: Set(f
                .verification_required
                .then(|| verify_state::PENDING_MESSAGE.to_owned())),
            verify_ms: Set(None),
            create_ms: Set(now),
            update_ms: Set(now),
        };
        let (row, revision) = self
            .0
            .db()
            .transaction::<_, (subscription::Model, i64), ApiError>(|tx: &DatabaseTransaction| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let row = row.insert(tx).await?;
                    let revision =
                        record_change(tx, CHANGE_SUBSCRIPTION, &row.id, &row.workspace_id).await?;
                    Ok((row, revision))
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        tracing::info!(workspace_id = %row.workspace_id, subscription_id = %row.id, "subscription created");
        if row.verification_required {
            verification::spawn(self.0.clone(), row.workspace_id.clone(), row.id.clone());
        }
        Ok(Response::new(pb::CreateSubscriptionResponse {
            subscription: Some(self.shown(row).await?),
            secret,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let row = self.find(&workspace_id, &request.get_ref().id).await?;
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: Some(self.shown(row).await?),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let page = PageRequest::parse("subscriptions", r.page_size, &r.page_token)?;
        let mut v = Violations::default();
        let state = v.check(
            "state",
            pb::SubscriptionState::try_from(r.state).map_err(|_| "unknown state"),
        );
        let event = if r.event_type.is_empty() {
            None
        } else {
            v.check("event_type", normalize_event_name(&r.event_type))
        };
        v.finish()?;
        let mut query = subscription::Entity::find()
            .filter(subscription::Column::WorkspaceId.eq(workspace_id))
            .order_by_asc(subscription::Column::Id);
        match state {
            Some(pb::SubscriptionState::Enabled) => {
                query = query.filter(subscription::Column::Enabled.eq(true))
            }
            Some(pb::SubscriptionState::Disabled) => {
                query = query.filter(subscription::Column::Enabled.eq(false))
            }
            _ => {}
        }
        if let Some(after) = &page.after {
            query = query.filter(subscription::Column::Id.gt(after.clone()));
        }
        let rows = match &event {
            // Filters are matched in Rust, so the page is cut after matching.
            Some(event) => {
                let mut matched = Vec::new();
                for row in query.all(self.0.db()).await.map_err(ApiError::from)? {
                    let patterns: Vec<String> =
                        serde_json::from_str(&row.filters).unwrap_or_default();
                    if EventFilter::parse(&patterns).is_ok_and(|f| f.matches(event)) {
                        matched.push(row);
                        if matched.len() as u64 == page.fetch() {
                            break;
                        }
                    }
                }
                matched
            }
            None => query
                .limit(page.fetch())
                .all(self.0.db())
                .await
                .map_err(ApiError::from)?,
        };
        let (rows, next_page_token) = page.finish(rows, |s| s.id.clone());
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: self.shown_all(rows).await?,
            next_page_token,
        }))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::UpdateSubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let input = r.subscription.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                format!(
                    "required: name the fields to update ({})",
                    UPDATABLE.join(", ")
                ),
            );
        }
        for path in &paths {
            if !UPDATABLE.contains(&path.as_str()) && !crate::policy::is_policy_path(path) {
                v.add(
                    "update_mask",
                    format!(
                        "unknown or read-only field {path:?}; updatable: {}, retry_policy.<field>",
                        UPDATABLE.join(", ")
                    ),
                );
            }
        }
        let has = |p: &str| paths.iter().any(|x| x == p);
        if input.id.is_empty() {
            v.add("subscription.id", "required");
        }
        let f = validate(&mut v, &input, has, self.0.config().allow_http);
        if has("verification_required")
            && !f.verification_required
            && workspace_requires_verification(self.0.db(), &workspace_id).await?
        {
            v.add(
                "subscription.verification_required",
                "the workspace requires endpoint verification (require_endpoint_verification)",
            );
        }
        v.finish()?;
        // Verification and a Slack destination exclude each other, whichever changes.
        let turns_on = has("verification_required") && f.verification_required;
        if turns_on || has("destination_type") {
            let current = self.find(&workspace_id, &input.id).await?;
            let destination = if has("destination_type") {
                let url = if has("url") { &f.url } else { &current.url };
                f.destination_type
                    .unwrap_or_else(|| inferred_destination(url))
            } else {
                current.destination_type.as_str()
            };
            slack_cannot_verify(destination, turns_on || current.verification_required)?;
        }
        // A policy change is merged into the stored one (field by field), so read it first.
        let new_policy = if paths.iter().any(|p| crate::policy::is_policy_path(p)) {
            let current = self.find(&workspace_id, &input.id).await?;
            let mut v = Violations::default();
            let merged = crate::policy::update(
                &mut v,
                "subscription.retry_policy",
                input.retry_policy.as_ref(),
                &paths,
                current.retry_policy.as_deref(),
            );
            v.finish()?;
            merged.map(|p| p.and_then(|p| p.to_json()))
        } else {
            None
        };
        let paths_owned = paths.clone();
        let fresh_key = new_signing_key(&self.0.config().keyring);
        let sealed_auth = f
            .auth
            .as_ref()
            .map(|(kind, value)| ((*kind).to_owned(), self.0.config().keyring.seal(value)));
        let verify_after = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let verify_flag = std::sync::Arc::clone(&verify_after);
        let row = self
            .modify(&workspace_id, "subscription.id", &input.id, move |row| {
                let has = |p: &str| paths_owned.iter().any(|x| x == p);
                let url_changed = has("url")
                    && matches!(&row.url, sea_orm::ActiveValue::Unchanged(old) if *old != f.url);
                let was_required = matches!(
                    &row.verification_required,
                    sea_orm::ActiveValue::Unchanged(true)
                );
                let required = if has("verification_required") {
                    f.verification_required
                } else {
                    was_required
                };
                row.verification_required = Set(required);
                if !required {
                    row.verification_state = Set(None);
                    row.verification_message = Set(None);
                    row.verify_ms = Set(None);
                } else if !was_required || url_changed {
                    // Before the first delivery, and again after the URL changes.
                    row.verification_state = Set(Some(verify_state::PENDING.to_owned()));
                    row.verification_message = Set(Some(verify_state::PENDING_MESSAGE.to_owned()));
                    row.verify_ms = Set(None);
                    verify_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if has("description") {
                    row.description = Set(f.description);
                }
                if has("url") {
                    row.url = Set(f.url);
                }
                if has("destination_type") {
                    let url = match &row.url {
                        sea_orm::ActiveValue::Set(u) | sea_orm::ActiveValue::Unchanged(u) => {
                            u.clone()
                        }
                        sea_orm::ActiveValue::NotSet => String::new(),
                    };
                    let kind = f
                        .destination_type
                        .unwrap_or_else(|| inferred_destination(&url));
                    row.destination_type = Set(kind.to_owned());
                }
                if has("filters") {
                    row.filters = Set(f.filters);
                }
                if has("headers") {
                    row.headers = Set(f.headers);
                }
                if has("rate_limit_per_second") {
                    row.rate_limit_per_second = Set(f.rate_limit_per_second);
                }
                if let Some(policy) = new_policy {
                    row.retry_policy = Set(policy);
                }
                if let Some(shape) = f.payload_shape {
                    row.payload_shape = Set(shape.as_str().to_owned());
                }
                if has("ordered_delivery") {
                    row.ordered_delivery = Set(f.ordered_delivery);
                }
                if has("auth") {
                    let (kind, sealed) = sealed_auth.unzip();
                    row.auth_type = Set(kind);
                    row.auth = Set(sealed);
                }
                if let Some(scheme) = f.signature_scheme.filter(|_| has("signature_scheme")) {
                    row.signature_scheme = Set(scheme.to_owned());
                    // The first switch to asymmetric signing makes the key pair; a later
                    // one keeps it, so receivers keep their public key.
                    let has_key = matches!(
                        &row.signing_key,
                        sea_orm::ActiveValue::Set(Some(_))
                            | sea_orm::ActiveValue::Unchanged(Some(_))
                    );
                    if convert::signs(scheme).1 && !has_key {
                        let (sealed, public) = fresh_key;
                        row.signing_key = Set(Some(sealed));
                        row.public_key = Set(Some(public));
                    }
                }
            })
            .await?;
        if verify_after.load(std::sync::atomic::Ordering::Relaxed) {
            verification::spawn(self.0.clone(), row.workspace_id.clone(), row.id.clone());
        }
        Ok(Response::new(pb::UpdateSubscriptionResponse {
            subscription: Some(self.shown(row).await?),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let id = request.into_inner().id;
        check_id(IdKind::Subscription, "id", &id)?;
        let revision = self
            .0
            .db()
            .transaction::<_, i64, ApiError>(|tx| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let row = find_in(tx, &workspace_id, &id).await?;
                    subscription::Entity::delete_by_id(row.id.clone())
                        .exec(tx)
                        .await?;
                    crate::cancel_pending_deliveries(tx, &row.workspace_id, &row.id).await?;
                    Ok(record_change(tx, CHANGE_SUBSCRIPTION, &row.id, &row.workspace_id).await?)
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn enable_subscription(
        &self,
        request: Request<pb::EnableSubscriptionRequest>,
    ) -> Result<Response<pb::EnableSubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let row = self
            .modify(&workspace_id, "id", &request.get_ref().id, |row| {
                row.enabled = Set(true);
                row.disabled_reason = Set(None);
                row.disabled_message = Set(None);
                row.disable_ms = Set(None);
            })
            .await?;
        Ok(Response::new(pb::EnableSubscriptionResponse {
            subscription: Some(self.shown(row).await?),
        }))
    }

    async fn disable_subscription(
        &self,
        request: Request<pb::DisableSubscriptionRequest>,
    ) -> Result<Response<pb::DisableSubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        v.check("message", multiline_text(&r.message, MAX_DESCRIPTION));
        v.finish()?;
        let message = if r.message.is_empty() {
            "disabled by a user".to_owned()
        } else {
            r.message
        };
        let row = self
            .modify(&workspace_id, "id", &r.id, move |row| {
                row.enabled = Set(false);
                row.disabled_reason = Set(Some("user".to_owned()));
                row.disabled_message = Set(Some(message));
                row.disable_ms = Set(Some(now_ms()));
            })
            .await?;
        Ok(Response::new(pb::DisableSubscriptionResponse {
            subscription: Some(self.shown(row).await?),
        }))
    }

    async fn reveal_subscription_secret(
        &self,
        request: Request<pb::RevealSubscriptionSecretRequest>,
    ) -> Result<Response<pb::RevealSubscriptionSecretResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let row = self.find(&workspace_id, &request.get_ref().id).await?;
        let now = now_ms();
        let open = |sealed: &str| {
            self.0
                .config()
                .keyring
                .open(sealed)
                .map_err(|e| crate::secrets::does_not_open(&row.id, e))
        };
        let (previous_secret, previous_secret_expire_time) =
            match (&row.previous_secret, row.previous_secret_expire_ms) {
                (Some(s), Some(expire)) if expire > now => (open(s)?, Some(convert::ts(expire))),
                _ => (String::new(), None),
            };
        let asymmetric = convert::signs(&row.signature_scheme).1;
        let previous_public_key = match (&row.previous_signing_key, row.previous_secret_expire_ms) {
            (Some(sealed), Some(expire)) if asymmetric && expire > now => {
                public_of(&open(sealed)?, &row.id)?
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::RevealSubscriptionSecretResponse {
            secret: open(&row.secret)?,
            previous_secret,
            previous_secret_expire_time,
            public_key: if asymmetric {
                row.public_key.clone().unwrap_or_default()
            } else {
                String::new()
            },
            previous_public_key,
        }))
    }

    async fn rotate_subscription_secret(
        &self,
        request: Request<pb::RotateSubscriptionSecretRequest>,
    ) -> Result<Response<pb::RotateSubscriptionSecretResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let secret = parse_secret(&mut v, "secret", &r.secret);
        let grace_secs = match &r.grace_period {
            None => DEFAULT_GRACE_SECS,
            Some(d) if d.seconds < 0 || d.nanos < 0 || d.seconds > MAX_GRACE_SECS => {
                v.add("grace_period", "must be between 0 and 7 days");
                0
            }
            Some(d) => d.seconds,
        };
        v.finish()?;
        let expire = (grace_secs > 0).then(|| now_ms() + grace_secs * 1000);
        // Stored sealed; the old secret moves to `previous_secret` as stored (sealed too).
        let new_secret = self.0.config().keyring.seal(&secret);
        // The ed25519 key pair rotates with the secret, under the same grace period, when
        // the subscription has one.
        let (new_key, new_public) = new_signing_key(&self.0.config().keyring);
        let row = self
            .modify(&workspace_id, "id", &r.id, move |row| {
                let old = match &row.secret {
                    sea_orm::ActiveValue::Set(s) | sea_orm::ActiveValue::Unchanged(s) => s.clone(),
                    sea_orm::ActiveValue::NotSet => String::new(),
                };
                row.secret = Set(new_secret);
                row.previous_secret = Set(expire.map(|_| old));
                row.previous_secret_expire_ms = Set(expire);
                let old_key = match &row.signing_key {
                    sea_orm::ActiveValue::Set(k) | sea_orm::ActiveValue::Unchanged(k) => k.clone(),
                    sea_orm::ActiveValue::NotSet => None,
                };
                if let Some(old_key) = old_key {
                    row.signing_key = Set(Some(new_key));
                    row.public_key = Set(Some(new_public));
                    row.previous_signing_key = Set(expire.map(|_| old_key));
                } else {
                    row.previous_signing_key = Set(None);
                }
            })
            .await?;
        tracing::info!(subscription_id = %row.id, grace_secs, "signing secret rotated");
        Ok(Response::new(pb::RotateSubscriptionSecretResponse {
            secret,
            previous_secret_expire_time: convert::opt_ts(expire),
            public_key: if convert::signs(&row.signature_scheme).1 {
                row.public_key.unwrap_or_default()
            } else {
                String::new()
            },
        }))
    }

    async fn send_test_event(
        &self,
        request: Request<pb::SendTestEventRequest>,
    ) -> Result<Response<pb::SendTestEventResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let event = v.check("event_type", normalize_event_name(&r.event_type));
        v.finish()?;
        let event = event.unwrap_or_default();
        let row = self.find(&workspace_id, &r.id).await?;
        let payload_json = match &r.payload {
            Some(p) => {
                struct_to_json(p).map_err(|e| ApiError::invalid("payload", e.to_string()))?
            }
            None => event_type::Entity::find_by_id((workspace_id.clone(), event.clone()))
                .one(self.0.db())
                .await
                .map_err(ApiError::from)?
                .and_then(|e| e.example)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "payload",
                        format!(
                            "event type {event:?} has no example in the catalog; give a payload"
                        ),
                    )
                })?,
        };
        let mut dispatch = self.0.dispatch()?;
        let config = convert::config_subscription(&row, now_ms(), &self.0.config().keyring)?;
        let req = self
            .0
            .internal_request(sluice_proto::data::v1::SendTestRequest {
                subscription: Some(config),
                event_type: event,
                payload_json,
            })?;
        let attempt = dispatch
            .send_test(req)
            .await
            .map_err(|s| {
                ApiError::Unavailable(format!(
                    "the data plane could not send the test: {}",
                    s.message()
                ))
            })?
            .into_inner()
            .attempt
            .unwrap_or_default();
        Ok(Response::new(pb::SendTestEventResponse {
            message_id: attempt.message_id,
            success: attempt.success,
            status_code: attempt.status_code,
            error_kind: attempt.error_kind,
            error_message: attempt.error_message,
            latency: attempt.latency,
            response_excerpt: attempt.response_excerpt,
        }))
    }

    async fn verify_subscription(
        &self,
        request: Request<pb::VerifySubscriptionRequest>,
    ) -> Result<Response<pb::VerifySubscriptionResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let id = &request.get_ref().id;
        check_id(IdKind::Subscription, "id", id)?;
        let row = verification::verify(&self.0, &workspace_id, id).await?;
        Ok(Response::new(pb::VerifySubscriptionResponse {
            subscription: Some(convert::subscription(row)),
        }))
    }
}
