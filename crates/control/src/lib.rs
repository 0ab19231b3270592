//! The control plane: workspaces, API keys, event types and subscriptions over gRPC, the
//! configuration watch stream and outcome intake for the data plane, and the delivery log.
//!
//! Every method authenticates first, validates everything before touching the database,
//! and scopes every query to the caller's workspace. It never sends HTTP itself: test sends,
//! retries and replays go through the data plane's `DispatchService`.

pub mod attempt_watch;
pub mod auth;
pub mod convert;
pub mod delivery;
mod endpoint_auth;
pub mod error;
pub mod event_type;
mod metrics;
pub mod page;
mod policy;
pub mod retention;
pub mod secrets;
pub mod subscription;
pub mod sync;
pub mod verification;
pub mod verify_state;
pub mod workspace;

use std::sync::Arc;

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryOrder,
    QuerySelect, Set,
};
use sluice_core::sealing::{Keyring, Reseal};
use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1::dispatch_service_client::DispatchServiceClient;
use sluice_store::control::config_change;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::auth::Authenticator;
use crate::error::{ApiError, ApiResult};

/// What the control plane is told at start. Its `Debug` hides the secrets.
#[derive(Clone)]
pub struct ControlConfig {
    /// The key that manages workspaces. Never logged.
    pub admin_key: String,
    /// The token the planes use with each other. Never logged.
    pub internal_token: String,
    /// Whether subscriptions may use plain `http://` URLs (development and tests).
    pub allow_http: bool,
    /// Where the data plane's `DispatchService` listens (`http://127.0.0.1:50052`), for
    /// test sends, retries and replays; `None` answers those with UNAVAILABLE.
    pub data_plane_endpoint: Option<String>,
    /// The master keys that seal the signing secrets at rest (`secrets.rs`).
    pub keyring: Keyring,
    /// Messages a `WatchAttempts` stream may have waiting for its reader before the reader
    /// is told it fell behind (`attempt_watch::DEFAULT_BUFFER`).
    pub attempt_watch_buffer: usize,
    /// How long a full `WatchAttempts` channel waits for its reader before the reader is
    /// told it fell behind (`attempt_watch::DEFAULT_PATIENCE`).
    pub attempt_watch_patience: std::time::Duration,
    /// How long the delivery log and `config_changes` are kept where a workspace sets no
    /// window of its own, and how often the purge runs (`retention.rs`).
    pub retention: sluice_core::retention::RetentionDefaults,
    /// The server's retry policy (the data plane's flags), which `GetSubscription` shows
    /// where neither the workspace nor the subscription sets a value (`policy.rs`).
    pub policy_defaults: sluice_core::policy::Defaults,
}

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig")
            .field("admin_key", &"<redacted>")
            .field("internal_token", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .field("data_plane_endpoint", &self.data_plane_endpoint)
            .field("keyring", &self.keyring)
            .field("attempt_watch_buffer", &self.attempt_watch_buffer)
            .field("attempt_watch_patience", &self.attempt_watch_patience)
            .field("retention", &self.retention)
            .field("policy_defaults", &self.policy_defaults)
            .finish()
    }
}

/// The control plane's shared state; cheap to clone into each service.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    config: ControlConfig,
    auth: Authenticator,
    /// The latest config revision this process committed; wakes watch streams at once.
    revision: watch::Sender<i64>,
    /// Bumped after each commit of outcomes; wakes `WatchAttempts` streams at once.
    attempts_logged: watch::Sender<u64>,
    dispatch: Option<DispatchServiceClient<Channel>>,
    /// Cancelled at shutdown: long-lived streams (watch, outcomes) end so the server can stop.
    streams: tokio_util::sync::CancellationToken,
}

impl ControlPlane {
    /// The control plane over an open, migrated database. Seals any signing secret still
    /// stored in clear, and fails (FAILED_PRECONDITION, naming the key id) when the keyring
    /// does not open every stored one.
    pub async fn new(
        db: DatabaseConnection,
        config: ControlConfig,
    ) -> Result<ControlPlane, ApiError> {
        let sealed = secrets::reseal_secrets(&db, &config.keyring, Reseal::ClearText).await?;
        if sealed.resealed > 0 {
            tracing::info!(
                subscriptions = sealed.resealed,
                key_id = config.keyring.current_id(),
                "sealed the signing secrets that were stored in clear"
            );
        }
        let latest = latest_revision(&db).await?;
        let dispatch = match &config.data_plane_endpoint {
            Some(url) => Some(DispatchServiceClient::new(
                Channel::from_shared(url.clone())
                    .map_err(|e| ApiError::Internal(format!("data plane endpoint {url:?}: {e}")))?
                    .connect_timeout(std::time::Duration::from_secs(5))
                    .connect_lazy(),
            )),
            None => None,
        };
        let auth = Authenticator::new(&config.admin_key, &config.internal_token, db.clone());
        let streams = tokio_util::sync::CancellationToken::new();
        tokio::spawn(retention::run(
            db.clone(),
            config.retention,
            streams.clone(),
        ));
        let plane = ControlPlane {
            inner: Arc::new(Inner {
                db,
                auth,
                revision: watch::Sender::new(latest),
                attempts_logged: watch::Sender::new(0),
                dispatch,
                config,
                streams,
            }),
        };
        verification::resume_pending(plane.clone());
        Ok(plane)
    }

    /// `WorkspaceService`.
    pub fn workspace_service(
        &self,
    ) -> pb::workspace_service_server::WorkspaceServiceServer<workspace::WorkspaceApi> {
        pb::workspace_service_server::WorkspaceServiceServer::new(workspace::WorkspaceApi(
            self.clone(),
        ))
    }

    /// `EventTypeService`.
    pub fn event_type_service(
        &self,
    ) -> pb::event_type_service_server::EventTypeServiceServer<event_type::EventTypeApi> {
        pb::event_type_service_server::EventTypeServiceServer::new(event_type::EventTypeApi(
            self.clone(),
        ))
    }

    /// `SubscriptionService`.
    pub fn subscription_service(
        &self,
    ) -> pb::subscription_service_server::SubscriptionServiceServer<subscription::SubscriptionApi>
    {
        pb::subscription_service_server::SubscriptionServiceServer::new(
            subscription::SubscriptionApi(self.clone()),
        )
    }

    /// `DeliveryService`.
    pub fn delivery_service(
        &self,
    ) -> pb::delivery_service_server::DeliveryServiceServer<delivery::DeliveryApi> {
        pb::delivery_service_server::DeliveryServiceServer::new(delivery::DeliveryApi(self.clone()))
    }

    /// `DataPlaneService` (internal).
    pub fn data_plane_service(
        &self,
    ) -> pb::data_plane_service_server::DataPlaneServiceServer<sync::DataPlaneApi> {
        pb::data_plane_service_server::DataPlaneServiceServer::new(sync::DataPlaneApi(self.clone()))
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// At start, asks the data plane at `data_plane_endpoint` whether it takes the internal
    /// token (`Redeliver` with an empty request: authenticated first, then refused as
    /// invalid, so nothing happens), within `within`. The error is the data plane's refusal;
    /// a data plane that is down, slow or answers anything else passes, since either plane
    /// may start first.
    pub async fn check_internal_token(
        &self,
        within: std::time::Duration,
    ) -> Result<(), tonic::Status> {
        let Some(mut client) = self.inner.dispatch.clone() else {
            return Ok(());
        };
        let Ok(mut request) =
            self.internal_request(sluice_proto::data::v1::RedeliverRequest::default())
        else {
            return Ok(());
        };
        request.set_timeout(within);
        match tokio::time::timeout(within, client.redeliver(request)).await {
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                Err(status)
            }
            _ => Ok(()),
        }
    }

    /// Ends the long-lived internal streams; call when shutting down, or the server would
    /// wait for them forever.
    pub fn close_streams(&self) {
        self.inner.streams.cancel();
    }

    fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// The data plane's dispatch client, with the internal token attached per call.
    fn dispatch(&self) -> ApiResult<DispatchServiceClient<Channel>> {
        self.inner.dispatch.clone().ok_or_else(|| {
            ApiError::Unavailable("no data plane is configured (--data-plane-endpoint)".into())
        })
    }

    /// Wraps a message for an internal call to the data plane.
    fn internal_request<T>(&self, message: T) -> ApiResult<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.inner.config.internal_token)
            .parse()
            .map_err(|_| ApiError::Internal("the internal token is not valid metadata".into()))?;
        request.metadata_mut().insert("authorization", value);
        sluice_telemetry::inject_current(request.metadata_mut());
        request.set_timeout(std::time::Duration::from_secs(30));
        Ok(request)
    }

    /// Wakes `WatchAttempts` streams after a commit of outcomes.
    fn logged_attempts(&self) {
        self.inner
            .attempts_logged
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Follows the commits of outcomes (see [`ControlPlane::logged_attempts`]).
    fn attempts_logged(&self) -> watch::Receiver<u64> {
        self.inner.attempts_logged.subscribe()
    }

    /// `ControlConfig::attempt_watch_buffer`, at least 1.
    fn attempt_watch_buffer(&self) -> usize {
        self.inner.config.attempt_watch_buffer.max(1)
    }

    /// `ControlConfig::attempt_watch_patience`.
    fn attempt_watch_patience(&self) -> std::time::Duration {
        self.inner.config.attempt_watch_patience
    }

    /// Ends when the server stops its long-lived streams.
    async fn streams_cancelled(&self) {
        self.inner.streams.cancelled().await;
    }

    /// Wakes watch streams after a commit that recorded config changes.
    fn published(&self, revision: i64) {
        self.inner.revision.send_if_modified(|current| {
            if revision > *current {
                *current = revision;
                true
            } else {
                false
            }
        });
    }
}

/// The kinds of resource a config change names.
pub(crate) const CHANGE_SUBSCRIPTION: &str = "subscription";
pub(crate) const CHANGE_API_KEY: &str = "api_key";
/// A workspace's retention windows (set, changed, or the workspace deleted).
pub(crate) const CHANGE_WORKSPACE: &str = "workspace";

/// Records that a resource the data plane holds changed; returns the new revision.
/// Call inside the transaction that changed it, after `lock_config_writes`.
pub(crate) async fn record_change<C: ConnectionTrait>(
    tx: &C,
    kind: &str,
    resource_id: &str,
    workspace_id: &str,
) -> Result<i64, DbErr> {
    let row = config_change::ActiveModel {
        kind: Set(kind.to_owned()),
        resource_id: Set(resource_id.to_owned()),
        workspace_id: Set(workspace_id.to_owned()),
        create_ms: Set(sluice_store::now_ms()),
        ..Default::default()
    }
    .insert(tx)
    .await?;
    Ok(row.revision)
}

/// Marks the still-pending deliveries of a subscription failed: it was disabled, so the
/// data plane delivers none of them (it ends them on its side without an attempt to
/// report); a replay once it is enabled again delivers them.
pub(crate) async fn fail_pending_deliveries<C: ConnectionTrait>(
    tx: &C,
    workspace_id: &str,
    subscription_id: &str,
) -> Result<(), DbErr> {
    end_pending_deliveries(tx, workspace_id, subscription_id, "failed").await
}

/// Marks the still-pending deliveries of a deleted subscription cancelled: nothing will
/// ever deliver them, and they are not failures of the endpoint.
pub(crate) async fn cancel_pending_deliveries<C: ConnectionTrait>(
    tx: &C,
    workspace_id: &str,
    subscription_id: &str,
) -> Result<(), DbErr> {
    end_pending_deliveries(tx, workspace_id, subscription_id, "cancelled").await
}

async fn end_pending_deliveries<C: ConnectionTrait>(
    tx: &C,
    workspace_id: &str,
    subscription_id: &str,
    status: &'static str,
) -> Result<(), DbErr> {
    use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
    use sluice_store::control::delivery;
    delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(status))
        .col_expr(
            delivery::Column::NextAttemptMs,
            Expr::value(Option::<i64>::None),
        )
        // The workspace first: the (workspace_id, subscription_id, status) index finds the
        // rows, where the subscription alone would read the whole log.
        .filter(delivery::Column::WorkspaceId.eq(workspace_id))
        .filter(delivery::Column::SubscriptionId.eq(subscription_id))
        .filter(delivery::Column::Status.eq("pending"))
        .exec(tx)
        .await?;
    Ok(())
}

async fn latest_revision<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    Ok(config_change::Entity::find()
        .order_by_desc(config_change::Column::Revision)
        .limit(1)
        .one(db)
        .await?
        .map(|c| c.revision)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn config_debug_never_shows_the_secrets() {
        let config = super::ControlConfig {
            admin_key: "sk_admin_secret_value".into(),
            internal_token: "internal_secret_value".into(),
            allow_http: false,
            data_plane_endpoint: None,
            keyring: sluice_core::sealing::Keyring::from_keys(&[[7; 32]]).unwrap(),
            attempt_watch_buffer: 1,
            attempt_watch_patience: std::time::Duration::from_secs(1),
            retention: Default::default(),
            policy_defaults: Default::default(),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret_value"), "{shown}");
        assert!(shown.contains("Keyring { current: "), "{shown}");
    }
}
