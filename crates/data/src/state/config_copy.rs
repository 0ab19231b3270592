//! The data plane's copy of the configuration it needs: subscriptions (parsed once, ready to
//! match and sign) and API-key hashes (to authenticate publishers).
//!
//! Readers take an immutable [`ConfigSnapshot`] behind an `Arc`, swapped whole when a change
//! arrives, so the hot path never waits on a writer and always sees one consistent revision.
//! The copy is persisted in `dp_subscriptions`, `dp_api_keys` and `dp_state` so that after a
//! restart publishers are authenticated and deliveries continue while the control plane is
//! down; its signing secrets are persisted sealed (`sealed.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prost::Message as _;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use sluice_core::event::EventFilter;
use sluice_core::policy::{Overrides, PayloadShape};
use sluice_core::sealing::Keyring;
use sluice_core::signing::SigningSecret;
use sluice_core::signing_ed25519::{AsymmetricKey, SECRET_KEY_PREFIX};
use sluice_core::validate::AUTHORIZATION_SECRET_PREFIX;
use sluice_delivery::{CustomHeaders, EndpointCredentials};
use sluice_proto::control::v1::{
    ConfigApiKey, ConfigSubscription, ConfigWorkspace, DestinationType, WatchConfigResponse,
};
use sluice_store::data::{api_key, state, subscription, workspace};
use tokio::sync::watch;
use url::Url;

use crate::error::DataError;
use crate::state::policy::OwnQuota;
use crate::state::sealed::{SealedConfig, open_config};

/// The `dp_state` row holding the last revision applied and persisted.
pub(crate) const REVISION_STATE: &str = "revision";

/// Where and how to send: what an attempt needs of a subscription, parsed once.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) url: Url,
    /// Slack incoming webhooks get a formatted message, unsigned.
    pub(crate) slack: bool,
    /// Custom headers, parsed once, sorted by name so requests are reproducible.
    pub(crate) custom_headers: CustomHeaders,
    /// The body to send (Slack keeps its own message whatever this says).
    pub(crate) shape: PayloadShape,
    /// OAuth2 client credentials (with their token cache) or a TLS client certificate
    /// (with its client): kept as long as the subscription is unchanged.
    pub(crate) credentials: Option<EndpointCredentials>,
    /// Current secret first, then older ones still within their grace period.
    secrets: Vec<Secret>,
}

#[derive(Debug)]
struct Secret {
    secret: SecretKind,
    /// Unix milliseconds after which this secret no longer signs; `None` for the current one.
    expire_ms: Option<i64>,
}

/// What a stored secret signs with, told apart by its prefix.
#[derive(Debug)]
enum SecretKind {
    /// `whsec_`: `v1` (HMAC-SHA256).
    Symmetric(SigningSecret),
    /// `whsk_`: `v1a` (ed25519).
    Asymmetric(AsymmetricKey),
}

impl Endpoint {
    /// Parses the sending half of a subscription. Errors never quote the URL or a secret.
    pub(crate) fn parse(config: &ConfigSubscription) -> Result<Endpoint, String> {
        let mut url = Url::parse(&config.url).map_err(|e| format!("url: {e}"))?;
        let legacy_authorization = crate::state::endpoint_auth::take_legacy_user_info(&mut url);
        let slack = match DestinationType::try_from(config.destination_type) {
            Ok(DestinationType::Slack) => true,
            Ok(DestinationType::Webhook) => false,
            // Unspecified (or unknown) is inferred the way the control plane documents it.
            _ => url.host_str() == Some("hooks.slack.com"),
        };
        let mut secrets = Vec::with_capacity(config.secrets.len());
        let mut authorization = None;
        let mut credentials = None;
        for (index, secret) in config.secrets.iter().enumerate() {
            if let Some(value) = secret.secret.strip_prefix(AUTHORIZATION_SECRET_PREFIX) {
                authorization = Some(value.to_owned());
                continue;
            }
            if let Some(parsed) = crate::state::endpoint_auth::credentials(&secret.secret) {
                credentials = Some(parsed.map_err(|e| format!("secrets[{index}]: {e}"))?);
                continue;
            }
            let parsed = if secret.secret.starts_with(SECRET_KEY_PREFIX) {
                AsymmetricKey::parse(&secret.secret)
                    .map(SecretKind::Asymmetric)
                    .map_err(|e| format!("secrets[{index}]: ed25519 key {e}"))?
            } else {
                SigningSecret::parse(&secret.secret)
                    .map(SecretKind::Symmetric)
                    .map_err(|e| format!("secrets[{index}]: {e}"))?
            };
            let expire_ms = secret.expire_time.as_ref().map(|t| {
                // Saturating both ways: a far-off time must not overflow (property tests).
                t.seconds
                    .saturating_mul(1000)
                    .saturating_add(i64::from(t.nanos / 1_000_000))
            });
            secrets.push(Secret {
                secret: parsed,
                expire_ms,
            });
        }
        if authorization.is_none() && credentials.is_none() {
            // A URL with user info stored before it was refused: sent as it always meant.
            authorization = legacy_authorization;
        }
        if secrets.is_empty() && !slack {
            return Err("secrets: a webhook subscription needs a signing secret".to_owned());
        }
        let mut headers: Vec<(String, String)> = config
            .headers
            .iter()
            .filter(|(name, _)| {
                // The endpoint's authentication replaces a custom Authorization header.
                (authorization.is_none()
                    && !matches!(credentials, Some(EndpointCredentials::OAuth2(_))))
                    || !name.eq_ignore_ascii_case("authorization")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.sort();
        if let Some(value) = authorization {
            headers.push(("authorization".to_owned(), value));
        }
        let custom_headers = CustomHeaders::new(&headers);
        Ok(Endpoint {
            url,
            slack,
            custom_headers,
            shape: crate::state::policy::shape(config.payload_shape),
            credentials,
            secrets,
        })
    }

    /// The secrets that sign an attempt made at `now_ms`: unexpired ones, current first.
    /// Slack destinations are never signed.
    pub(crate) fn signing_secrets(&self, now_ms: i64) -> Vec<&SigningSecret> {
        if self.slack {
            return Vec::new();
        }
        self.live(now_ms)
            .filter_map(|s| match s {
                SecretKind::Symmetric(secret) => Some(secret),
                SecretKind::Asymmetric(_) => None,
            })
            .collect()
    }

    /// The ed25519 keys that sign an attempt made at `now_ms` (`v1a`), current first.
    pub(crate) fn signing_keys(&self, now_ms: i64) -> Vec<&AsymmetricKey> {
        if self.slack {
            return Vec::new();
        }
        self.live(now_ms)
            .filter_map(|s| match s {
                SecretKind::Asymmetric(key) => Some(key),
                SecretKind::Symmetric(_) => None,
            })
            .collect()
    }

    fn live(&self, now_ms: i64) -> impl Iterator<Item = &SecretKind> {
        self.secrets
            .iter()
            .filter(move |s| s.expire_ms.is_none_or(|expire| expire > now_ms))
            .map(|s| &s.secret)
    }
}

/// A subscription as the dispatcher and ingest use it.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) id: String,
    pub(crate) workspace_id: String,
    pub(crate) filter: EventFilter,
    pub(crate) rate_limit_per_second: u32,
    pub(crate) enabled: bool,
    /// The endpoint has not proved ownership yet: deliveries wait, unattempted.
    pub(crate) awaiting_verification: bool,
    pub(crate) endpoint: Endpoint,
    /// The subscription's own retry policy; `None` (the usual case) inherits everything.
    pub(crate) policy: Option<Overrides>,
    /// What the control plane sent, kept to persist a local change (a disable) faithfully.
    pub(crate) config: ConfigSubscription,
}

impl Subscription {
    pub(crate) fn parse(config: ConfigSubscription) -> Result<Subscription, String> {
        let filter =
            EventFilter::parse(&config.filters).map_err(|e| format!("filters: {}", e.message))?;
        let endpoint = Endpoint::parse(&config)?;
        Ok(Subscription {
            id: config.id.clone(),
            workspace_id: config.workspace_id.clone(),
            filter,
            rate_limit_per_second: config.rate_limit_per_second,
            enabled: config.enabled,
            awaiting_verification: config.awaiting_verification,
            endpoint,
            policy: crate::state::policy::overrides(config.retry_policy.as_ref()),
            config,
        })
    }

    fn disabled_copy(&self) -> Option<Subscription> {
        let mut config = self.config.clone();
        config.enabled = false;
        Subscription::parse(config).ok()
    }
}

/// One consistent revision of the configuration, indexed for the hot path.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigSnapshot {
    /// The control plane's revision this snapshot is consistent at; 0 before the first.
    pub(crate) revision: u64,
    subscriptions: HashMap<String, Arc<Subscription>>,
    api_keys: HashMap<String, ConfigApiKey>,
    /// key hash → workspace id, for authenticating publishers.
    workspace_by_key_hash: HashMap<String, String>,
    /// workspace id → its subscriptions, for matching an event.
    by_workspace: HashMap<String, Vec<Arc<Subscription>>>,
    /// The workspaces with retention windows of their own, by id (the rest use the data
    /// plane's defaults).
    workspaces: HashMap<String, ConfigWorkspace>,
    /// The workspaces' own retry policies, by id; empty unless one sets a policy.
    workspace_policies: HashMap<String, Overrides>,
    /// The workspaces' own publish quotas, by id; empty unless one sets a quota.
    workspace_quotas: HashMap<String, OwnQuota>,
}

impl ConfigSnapshot {
    /// The workspace of the API key with this hash.
    pub(crate) fn workspace_for_key_hash(&self, key_hash: &str) -> Option<&str> {
        self.workspace_by_key_hash.get(key_hash).map(String::as_str)
    }

    pub(crate) fn subscription(&self, id: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.get(id)
    }

    /// The workspaces with retention windows of their own (not those held for a retry
    /// policy alone).
    pub(crate) fn workspaces(&self) -> impl Iterator<Item = &ConfigWorkspace> {
        self.workspaces
            .values()
            .filter(|w| w.retention.is_some() || w.idempotency_retention.is_some())
    }

    /// The retention settings of `workspace_id`, when it has its own.
    pub(crate) fn workspace(&self, workspace_id: &str) -> Option<&ConfigWorkspace> {
        self.workspaces.get(workspace_id)
    }

    /// The retry policy `workspace_id` sets, if any. Free when no workspace sets one.
    pub(crate) fn workspace_policy(&self, workspace_id: &str) -> Option<&Overrides> {
        if self.workspace_policies.is_empty() {
            return None;
        }
        self.workspace_policies.get(workspace_id)
    }

    /// The publish quota `workspace_id` sets, if any. Free when no workspace sets one.
    pub(crate) fn workspace_quota(&self, workspace_id: &str) -> Option<OwnQuota> {
        if self.workspace_quotas.is_empty() {
            return None;
        }
        self.workspace_quotas.get(workspace_id).copied()
    }

    /// The enabled subscriptions of `workspace_id` whose filter passes `event_type`.
    pub(crate) fn matching<'a>(
        &'a self,
        workspace_id: &str,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Subscription>> + 'a {
        self.by_workspace
            .get(workspace_id)
            .into_iter()
            .flatten()
            .filter(move |s| s.enabled && s.filter.matches(event_type))
    }

    /// This snapshot with `pieces` applied in order; `revision` is the last piece's.
    pub(crate) fn apply(&self, pieces: &[WatchConfigResponse]) -> ConfigSnapshot {
        let mut next = self.clone();
        for piece in pieces {
            if piece.reset {
                next.subscriptions.clear();
                next.api_keys.clear();
                next.workspaces.clear();
            }
            for id in &piece.deleted_workspace_ids {
                next.workspaces.remove(id);
            }
            for w in &piece.upserted_workspaces {
                next.workspaces.insert(w.id.clone(), w.clone());
            }
            for id in &piece.deleted_subscription_ids {
                next.subscriptions.remove(id);
            }
            for config in &piece.upserted_subscriptions {
                let id = config.id.clone();
                match Subscription::parse(config.clone()) {
                    Ok(parsed) => {
                        next.subscriptions.insert(id, Arc::new(parsed));
                    }
                    Err(why) => {
                        // Kept in the database as sent, left out of memory: nothing can be
                        // delivered to it until the control plane sends a usable version.
                        tracing::warn!(subscription_id = %id, reason = %why, "unusable subscription in the configuration; not delivering to it");
                        next.subscriptions.remove(&id);
                    }
                }
            }
            for id in &piece.deleted_api_key_ids {
                next.api_keys.remove(id);
            }
            for key in &piece.upserted_api_keys {
                next.api_keys.insert(key.id.clone(), key.clone());
            }
            if piece.revision != 0 {
                next.revision = piece.revision;
            }
        }
        next.reindex();
        next
    }

    fn reindex(&mut self) {
        self.workspace_policies = self
            .workspaces
            .values()
            .filter_map(|w| {
                let policy = crate::state::policy::overrides(w.retry_policy.as_ref())?;
                Some((w.id.clone(), policy))
            })
            .collect();
        self.workspace_quotas = self
            .workspaces
            .values()
            .filter_map(|w| {
                let quota = OwnQuota::from_proto(w.publish_quota.as_ref()?)?;
                Some((w.id.clone(), quota))
            })
            .collect();
        self.workspace_by_key_hash = self
            .api_keys
            .values()
            .map(|k| (k.key_hash.clone(), k.workspace_id.clone()))
            .collect();
        let mut by_workspace: HashMap<String, Vec<Arc<Subscription>>> = HashMap::new();
        for sub in self.subscriptions.values() {
            by_workspace
                .entry(sub.workspace_id.clone())
                .or_default()
                .push(Arc::clone(sub));
        }
        // Stable order, so deliveries of one event are created in the same order every time.
        for subs in by_workspace.values_mut() {
            subs.sort_by(|a, b| a.id.cmp(&b.id));
        }
        self.by_workspace = by_workspace;
    }
}

/// The live copy: the snapshot from the control plane plus the subscriptions this data plane
/// disabled itself (410 Gone, persistent failure) and the control plane has not yet echoed.
pub(crate) struct ConfigCopy {
    current: RwLock<Arc<ConfigSnapshot>>,
    state: Mutex<CopyState>,
    /// The revision in effect, for whoever waits for a change to land (readiness, tests).
    revision: watch::Sender<u64>,
    /// Whether some workspace in the snapshot sets a retry policy: when none does, an
    /// attempt resolves its policy without reading the snapshot.
    any_workspace_policy: AtomicBool,
}

struct CopyState {
    base: Arc<ConfigSnapshot>,
    locally_disabled: HashSet<String>,
}

impl ConfigCopy {
    pub(crate) fn new(base: ConfigSnapshot) -> Self {
        let base = Arc::new(base);
        ConfigCopy {
            any_workspace_policy: AtomicBool::new(!base.workspace_policies.is_empty()),
            revision: watch::Sender::new(base.revision),
            current: RwLock::new(Arc::clone(&base)),
            state: Mutex::new(CopyState {
                base,
                locally_disabled: HashSet::new(),
            }),
        }
    }

    /// The snapshot to use now. Cheap: an `Arc` clone under a read lock.
    pub(crate) fn current(&self) -> Arc<ConfigSnapshot> {
        // A poisoned lock only means a writer panicked between statements that each leave a
        // valid Arc in place, so the value is still good.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The snapshot as the control plane sent it, without local disables.
    pub(crate) fn base(&self) -> Arc<ConfigSnapshot> {
        Arc::clone(&self.lock_state().base)
    }

    /// Replaces the control plane's snapshot. A local disable is forgotten once the control
    /// plane shows the subscription disabled or deleted: it then owns that state.
    pub(crate) fn set_base(&self, base: ConfigSnapshot) {
        let mut state = self.lock_state();
        state
            .locally_disabled
            .retain(|id| base.subscription(id).is_some_and(|s| s.enabled));
        let revision = base.revision;
        state.base = Arc::new(base);
        self.publish(&state);
        self.revision.send_replace(revision);
    }

    /// Follows the revision in effect.
    pub(crate) fn subscribe_revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Disables a subscription in memory at once. Returns false when it is unknown or
    /// already disabled (so the caller reports it only once).
    pub(crate) fn disable_locally(&self, subscription_id: &str) -> bool {
        let mut state = self.lock_state();
        let enabled = state
            .base
            .subscription(subscription_id)
            .is_some_and(|s| s.enabled);
        if !enabled || !state.locally_disabled.insert(subscription_id.to_owned()) {
            return false;
        }
        self.publish(&state);
        true
    }

    fn publish(&self, state: &CopyState) {
        let effective = if state.locally_disabled.is_empty() {
            Arc::clone(&state.base)
        } else {
            let mut snapshot = (*state.base).clone();
            for id in &state.locally_disabled {
                let disabled = snapshot
                    .subscriptions
                    .get(id)
                    .and_then(|s| s.disabled_copy());
                if let Some(disabled) = disabled {
                    snapshot
                        .subscriptions
                        .insert(id.clone(), Arc::new(disabled));
                }
            }
            snapshot.reindex();
            Arc::new(snapshot)
        };
        self.any_workspace_policy
            .store(!effective.workspace_policies.is_empty(), Ordering::Relaxed);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = effective;
    }

    /// Whether some workspace sets a retry policy (one atomic load).
    pub(crate) fn any_workspace_policy(&self) -> bool {
        self.any_workspace_policy.load(Ordering::Relaxed)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the persisted copy, opening its secrets. Rows that no longer decode are skipped
/// with a warning rather than stopping the data plane: the control plane's next snapshot
/// replaces them. A secret the keyring does not open stops the start.
pub(crate) async fn load<C: ConnectionTrait>(
    db: &C,
    keyring: &Keyring,
) -> Result<ConfigSnapshot, DataError> {
    let revision = state::Entity::find_by_id(REVISION_STATE)
        .one(db)
        .await?
        .and_then(|row| row.value.parse::<u64>().ok())
        .unwrap_or(0);
    let mut piece = WatchConfigResponse {
        reset: true,
        revision,
        ..Default::default()
    };
    for row in subscription::Entity::find().all(db).await? {
        match ConfigSubscription::decode(row.config.as_slice()) {
            Ok(config) => piece
                .upserted_subscriptions
                .push(open_config(keyring, config)?),
            Err(e) => {
                tracing::warn!(subscription_id = %row.id, error = %e, "stored subscription does not decode; skipped");
            }
        }
    }
    for row in workspace::Entity::find().all(db).await? {
        piece.upserted_workspaces.push(ConfigWorkspace {
            id: row.id,
            retention: row.retention_ms.map(proto_duration_ms),
            idempotency_retention: row.idempotency_retention_ms.map(proto_duration_ms),
            retry_policy: row.retry_policy.and_then(|bytes| {
                sluice_proto::control::v1::RetryPolicy::decode(bytes.as_slice()).ok()
            }),
            publish_quota: row.publish_quota.and_then(|bytes| {
                sluice_proto::control::v1::PublishQuota::decode(bytes.as_slice()).ok()
            }),
        });
    }
    for row in api_key::Entity::find().all(db).await? {
        piece.upserted_api_keys.push(ConfigApiKey {
            id: row.id,
            workspace_id: row.workspace_id,
            key_hash: row.key_hash,
        });
    }
    let mut snapshot = ConfigSnapshot::default().apply(std::slice::from_ref(&piece));
    snapshot.revision = revision;
    Ok(snapshot)
}

/// Writes `pieces` (ending at `revision`) to the persisted copy, secrets sealed; call inside
/// a transaction so the copy and its revision move together.
pub(crate) async fn persist<C: ConnectionTrait>(
    tx: &C,
    keyring: &Keyring,
    pieces: &[WatchConfigResponse],
    revision: u64,
) -> Result<(), DbErr> {
    for piece in pieces {
        if piece.reset {
            subscription::Entity::delete_many().exec(tx).await?;
            api_key::Entity::delete_many().exec(tx).await?;
            workspace::Entity::delete_many().exec(tx).await?;
        }
        let mut replaced: Vec<String> = piece.deleted_workspace_ids.clone();
        replaced.extend(piece.upserted_workspaces.iter().map(|w| w.id.clone()));
        if !replaced.is_empty() {
            workspace::Entity::delete_many()
                .filter(workspace::Column::Id.is_in(replaced))
                .exec(tx)
                .await?;
        }
        if !piece.upserted_workspaces.is_empty() {
            workspace::Entity::insert_many(piece.upserted_workspaces.iter().map(|w| {
                workspace::ActiveModel {
                    id: Set(w.id.clone()),
                    retention_ms: Set(w.retention.as_ref().map(duration_proto_ms)),
                    idempotency_retention_ms: Set(w
                        .idempotency_retention
                        .as_ref()
                        .map(duration_proto_ms)),
                    retry_policy: Set(w.retry_policy.as_ref().map(|p| p.encode_to_vec())),
                    publish_quota: Set(w.publish_quota.as_ref().map(|q| q.encode_to_vec())),
                }
            }))
            .exec_without_returning(tx)
            .await?;
        }
        if !piece.deleted_subscription_ids.is_empty() {
            subscription::Entity::delete_many()
                .filter(subscription::Column::Id.is_in(piece.deleted_subscription_ids.clone()))
                .exec(tx)
                .await?;
        }
        for config in &piece.upserted_subscriptions {
            upsert_subscription(tx, &SealedConfig::seal(keyring, config)).await?;
        }
        let mut deleted_keys = piece.deleted_api_key_ids.clone();
        // A re-sent key is deleted and inserted again, so a key whose hash moved to another
        // id cannot trip the unique index on key_hash.
        deleted_keys.extend(piece.upserted_api_keys.iter().map(|k| k.id.clone()));
        if !deleted_keys.is_empty() {
            api_key::Entity::delete_many()
                .filter(api_key::Column::Id.is_in(deleted_keys))
                .exec(tx)
                .await?;
        }
        if !piece.upserted_api_keys.is_empty() {
            let hashes: Vec<String> = piece
                .upserted_api_keys
                .iter()
                .map(|k| k.key_hash.clone())
                .collect();
            api_key::Entity::delete_many()
                .filter(api_key::Column::KeyHash.is_in(hashes))
                .exec(tx)
                .await?;
            api_key::Entity::insert_many(piece.upserted_api_keys.iter().map(|k| {
                api_key::ActiveModel {
                    id: Set(k.id.clone()),
                    workspace_id: Set(k.workspace_id.clone()),
                    key_hash: Set(k.key_hash.clone()),
                }
            }))
            // On PostgreSQL the replicas share this copy, and replicas started together
            // store the same snapshot at once: the second one's insert meets the first's
            // rows, and takes them as they are.
            .on_conflict(
                OnConflict::column(api_key::Column::Id)
                    .update_columns([api_key::Column::WorkspaceId, api_key::Column::KeyHash])
                    .to_owned(),
            )
            .exec_without_returning(tx)
            .await?;
        }
    }
    set_state(tx, REVISION_STATE, &revision.to_string()).await
}

/// Milliseconds as a proto duration.
fn proto_duration_ms(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A proto duration in milliseconds (negative ones as zero).
pub(crate) fn duration_proto_ms(d: &prost_types::Duration) -> i64 {
    d.seconds
        .max(0)
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos.max(0) / 1_000_000))
}

/// Stores a subscription as the data plane now holds it.
pub(crate) async fn upsert_subscription<C: ConnectionTrait>(
    tx: &C,
    config: &SealedConfig,
) -> Result<(), DbErr> {
    subscription::Entity::insert(subscription::ActiveModel {
        id: Set(config.id().to_owned()),
        workspace_id: Set(config.workspace_id().to_owned()),
        config: Set(config.encode()),
    })
    .on_conflict(
        OnConflict::column(subscription::Column::Id)
            .update_columns([
                subscription::Column::WorkspaceId,
                subscription::Column::Config,
            ])
            .to_owned(),
    )
    .exec_without_returning(tx)
    .await?;
    Ok(())
}

/// Upserts one `dp_state` row.
pub(crate) async fn set_state<C: ConnectionTrait>(
    tx: &C,
    name: &str,
    value: &str,
) -> Result<(), DbErr> {
    state::Entity::insert(state::ActiveModel {
        name: Set(name.to_owned()),
        value: Set(value.to_owned()),
    })
    .on_conflict(
        OnConflict::column(state::Column::Name)
            .update_column(state::Column::Value)
            .to_owned(),
    )
    .exec_without_returning(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_proto::control::v1::ConfigSecret;

    fn sub(id: &str, workspace: &str, filters: &[&str], enabled: bool) -> ConfigSubscription {
        ConfigSubscription {
            id: id.to_owned(),
            workspace_id: workspace.to_owned(),
            url: "https://example.com/hook".to_owned(),
            destination_type: DestinationType::Webhook as i32,
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
            headers: HashMap::from([
                ("x-b".to_owned(), "2".to_owned()),
                ("x-a".to_owned(), "1".to_owned()),
            ]),
            rate_limit_per_second: 0,
            enabled,
            secrets: vec![ConfigSecret {
                secret: SigningSecret::generate().to_whsec(),
                expire_time: None,
            }],
            ..Default::default()
        }
    }

    fn key(id: &str, workspace: &str, hash: &str) -> ConfigApiKey {
        ConfigApiKey {
            id: id.to_owned(),
            workspace_id: workspace.to_owned(),
            key_hash: hash.to_owned(),
        }
    }

    #[test]
    fn snapshot_then_changes() {
        let snapshot = ConfigSnapshot::default().apply(&[
            WatchConfigResponse {
                reset: true,
                upserted_subscriptions: vec![sub("sub_a", "wrk_1", &["conversation.*"], true)],
                ..Default::default()
            },
            WatchConfigResponse {
                revision: 7,
                upserted_subscriptions: vec![sub("sub_b", "wrk_1", &["*"], false)],
                upserted_api_keys: vec![key("key_1", "wrk_1", "h1")],
                ..Default::default()
            },
        ]);
        assert_eq!(snapshot.revision, 7);
        assert_eq!(snapshot.workspace_for_key_hash("h1"), Some("wrk_1"));
        let matched: Vec<&str> = snapshot
            .matching("wrk_1", "conversation.created")
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(matched, ["sub_a"], "disabled subscriptions do not match");
        assert_eq!(snapshot.matching("wrk_1", "call.handled").count(), 0);
        assert_eq!(
            snapshot.matching("wrk_2", "conversation.created").count(),
            0
        );
        let headers = &snapshot
            .subscription("sub_a")
            .unwrap()
            .endpoint
            .custom_headers;
        assert_eq!(headers.names().next(), Some("x-a"));

        let changed = snapshot.apply(&[WatchConfigResponse {
            revision: 8,
            deleted_subscription_ids: vec!["sub_a".into()],
            deleted_api_key_ids: vec!["key_1".into()],
            ..Default::default()
        }]);
        assert_eq!(changed.revision, 8);
        assert!(changed.subscription("sub_a").is_none());
        assert_eq!(changed.workspace_for_key_hash("h1"), None);

        let reset = changed.apply(&[WatchConfigResponse {
            reset: true,
            revision: 9,
            ..Default::default()
        }]);
        assert!(reset.subscription("sub_b").is_none());
    }

    #[test]
    fn unusable_subscriptions_are_left_out() {
        let mut bad = sub("sub_bad", "wrk_1", &["*"], true);
        bad.secrets[0].secret = "not-a-secret".into();
        let mut bad_filter = sub("sub_bad_filter", "wrk_1", &[], true);
        bad_filter.filters.clear();
        let snapshot = ConfigSnapshot::default().apply(&[WatchConfigResponse {
            reset: true,
            revision: 1,
            upserted_subscriptions: vec![bad, bad_filter],
            ..Default::default()
        }]);
        assert!(snapshot.subscription("sub_bad").is_none());
        assert!(snapshot.subscription("sub_bad_filter").is_none());
    }

    #[test]
    fn secrets_expire_and_slack_is_unsigned() {
        let mut config = sub("sub_a", "wrk_1", &["*"], true);
        config.secrets.push(ConfigSecret {
            secret: SigningSecret::generate().to_whsec(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
        });
        let endpoint = Endpoint::parse(&config).unwrap();
        assert_eq!(endpoint.signing_secrets(99_999).len(), 2);
        assert_eq!(endpoint.signing_secrets(100_000).len(), 1);

        config.url = "https://hooks.slack.com/services/T/B/X".into();
        config.destination_type = DestinationType::Unspecified as i32;
        let endpoint = Endpoint::parse(&config).unwrap();
        assert!(endpoint.slack);
        assert!(endpoint.signing_secrets(0).is_empty());
    }

    #[test]
    fn whsk_keys_sign_v1a_and_expire_like_secrets() {
        let mut config = sub("sub_a", "wrk_1", &["*"], true);
        for expire in [None, Some(100)] {
            config.secrets.push(ConfigSecret {
                secret: AsymmetricKey::generate().to_whsk(),
                expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            });
        }
        let endpoint = Endpoint::parse(&config).unwrap();
        assert_eq!(endpoint.signing_secrets(99_999).len(), 1);
        assert_eq!(endpoint.signing_keys(99_999).len(), 2);
        assert_eq!(endpoint.signing_keys(100_000).len(), 1);

        // Asymmetric only: still a signed webhook.
        config.secrets.remove(0);
        let endpoint = Endpoint::parse(&config).unwrap();
        assert!(endpoint.signing_secrets(0).is_empty());
        assert_eq!(endpoint.signing_keys(0).len(), 2);

        config.secrets[0].secret = "whsk_AAAA".into();
        let refused = Endpoint::parse(&config).unwrap_err();
        assert!(
            refused.contains("ed25519") && !refused.contains("AAAA"),
            "{refused}"
        );
    }

    #[test]
    fn local_disables_last_until_the_control_plane_agrees() {
        let base = ConfigSnapshot::default().apply(&[WatchConfigResponse {
            reset: true,
            revision: 1,
            upserted_subscriptions: vec![sub("sub_a", "wrk_1", &["*"], true)],
            ..Default::default()
        }]);
        let copy = ConfigCopy::new(base.clone());
        assert!(copy.disable_locally("sub_a"));
        assert!(!copy.disable_locally("sub_a"), "reported once");
        assert!(!copy.disable_locally("sub_unknown"));
        assert!(!copy.current().subscription("sub_a").unwrap().enabled);
        assert!(copy.base().subscription("sub_a").unwrap().enabled);

        // An unrelated change that still shows it enabled keeps the local disable.
        let unrelated = base.apply(&[WatchConfigResponse {
            revision: 2,
            upserted_api_keys: vec![key("key_1", "wrk_1", "h")],
            ..Default::default()
        }]);
        copy.set_base(unrelated.clone());
        assert!(!copy.current().subscription("sub_a").unwrap().enabled);

        // The control plane echoes the disable, then a user enables it again.
        let echoed = unrelated.apply(&[WatchConfigResponse {
            revision: 3,
            upserted_subscriptions: vec![sub("sub_a", "wrk_1", &["*"], false)],
            ..Default::default()
        }]);
        copy.set_base(echoed.clone());
        let enabled = echoed.apply(&[WatchConfigResponse {
            revision: 4,
            upserted_subscriptions: vec![sub("sub_a", "wrk_1", &["*"], true)],
            ..Default::default()
        }]);
        copy.set_base(enabled);
        assert!(copy.current().subscription("sub_a").unwrap().enabled);
    }
}
