//! The config watcher: follows the control plane's `WatchConfig` stream from the revision
//! last persisted, applies each consistent piece to memory and to the database (one
//! transaction per revision), and reconnects with jittered backoff whenever the stream ends
//! or the control plane is down, to the next control-plane replica when there are several.
//! Deliveries and publishes go on from the persisted copy meanwhile.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{DatabaseConnection, TransactionTrait};
use sluice_core::operational;
use sluice_core::sealing::Keyring;
use sluice_proto::control::v1::{DisabledReason, WatchConfigRequest, WatchConfigResponse};
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::notices::{self, Cause};
use crate::shutdown::Shutdown;
use crate::state::config_copy::{self, ConfigCopy, ConfigSnapshot};
use crate::sync::control_client::{ControlClient, Replica, is_auth_error};
use crate::work::PublishJob;

/// The watcher and what it keeps current.
pub(crate) struct Watcher {
    pub(crate) db: DatabaseConnection,
    pub(crate) copy: Arc<ConfigCopy>,
    pub(crate) control: ControlClient,
    pub(crate) shutdown: Shutdown,
    /// Seals the secrets of the copy it persists.
    pub(crate) keyring: Keyring,
    /// To the writer: the operational events of a user's enable or disable.
    pub(crate) publishes: mpsc::Sender<PublishJob>,
    /// How long such an event may wait to be stored.
    pub(crate) store_timeout: Duration,
}

impl Watcher {
    /// The watcher's loop; returns at shutdown.
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::new();
        loop {
            let replica = tokio::select! {
                replica = self.control.replica() => replica,
                () = self.shutdown.requested() => return,
            };
            tokio::select! {
                () = self.watch_once(&replica, &mut backoff) => {}
                () = self.shutdown.requested() => return,
            }
            self.control.failed(&replica).await;
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.requested() => return,
            }
        }
    }

    /// One stream session on `replica`, until it ends or fails.
    async fn watch_once(&self, replica: &Replica, backoff: &mut Backoff) {
        let from_revision = self.copy.base().revision;
        let mut client = replica.client();
        let mut stream = match client
            .watch_config(self.control.request(WatchConfigRequest { from_revision }))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) if is_auth_error(&status) => {
                tracing::warn!(control_plane = replica.name(), code = ?status.code(), message = %status.message(), "control plane refused the config watch; check the internal token");
                return;
            }
            Err(status) => {
                tracing::debug!(control_plane = replica.name(), code = ?status.code(), message = %status.message(), "control plane config watch not available yet");
                return;
            }
        };
        tracing::info!(
            control_plane = replica.name(),
            from_revision,
            "watching the control plane's configuration"
        );
        // Pieces of a snapshot arrive with revision 0 until the last one; they are applied
        // together, so nobody ever sees half a snapshot.
        let mut pending: Vec<WatchConfigResponse> = Vec::new();
        loop {
            let piece = match stream.message().await {
                Ok(Some(piece)) => piece,
                Ok(None) => {
                    tracing::info!("control plane ended the config watch; reconnecting");
                    return;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = %status.message(), "config watch broke; reconnecting");
                    return;
                }
            };
            if piece.reset {
                pending.clear();
            }
            let revision = piece.revision;
            pending.push(piece);
            if revision == 0 {
                continue;
            }
            if let Err(err) = self.apply(&pending, revision).await {
                tracing::error!(error = %err, revision, "storing the configuration failed; resuming from the last stored revision");
                return;
            }
            pending.clear();
            backoff.reset();
        }
    }

    /// Publishes the operational events of what `pieces` change, then persists them and
    /// then publishes them to memory, so memory never runs ahead of what a restart would
    /// load.
    async fn apply(
        &self,
        pieces: &[WatchConfigResponse],
        revision: u64,
    ) -> Result<(), sea_orm::DbErr> {
        let base = self.copy.base();
        let next = base.apply(pieces);
        // Before the revision is persisted: if storing an event fails, the change is received
        // again after the reconnect and its event published again (the idempotency key
        // makes the repeat harmless).
        self.publish_user_changes(&base, &next, pieces).await?;
        let tx = self.db.begin().await?;
        config_copy::persist(&tx, &self.keyring, pieces, revision).await?;
        tx.commit().await?;
        let subscriptions = pieces
            .iter()
            .map(|p| p.upserted_subscriptions.len() + p.deleted_subscription_ids.len())
            .sum::<usize>();
        tracing::debug!(
            revision,
            subscriptions,
            reset = pieces.iter().any(|p| p.reset),
            "configuration applied"
        );
        self.copy.set_base(next);
        Ok(())
    }

    /// Publishes `sluice.subscription.enabled` / `.disabled` for each subscription a user
    /// enabled or disabled in `pieces` (the data plane's own disables were published by the
    /// replica whose attempt concluded them). Every replica sees the change, so each event
    /// carries an idempotency key made of the subscription and its change time: the first
    /// replica's is stored, the others' are repeats.
    async fn publish_user_changes(
        &self,
        base: &ConfigSnapshot,
        next: &ConfigSnapshot,
        pieces: &[WatchConfigResponse],
    ) -> Result<(), sea_orm::DbErr> {
        let mut answers = Vec::new();
        for config in pieces.iter().flat_map(|p| &p.upserted_subscriptions) {
            let (Some(before), Some(after)) =
                (base.subscription(&config.id), next.subscription(&config.id))
            else {
                continue;
            };
            if before.enabled == after.enabled {
                continue;
            }
            let (event_type, message) = if after.enabled {
                (operational::SUBSCRIPTION_ENABLED, "enabled by a user")
            } else if config.disabled_reason == DisabledReason::User as i32 {
                (
                    operational::SUBSCRIPTION_DISABLED,
                    config.disabled_message.as_str(),
                )
            } else {
                continue;
            };
            let change_ms = config.update_time.as_ref().map_or(0, |t| {
                t.seconds
                    .saturating_mul(1000)
                    .saturating_add(i64::from(t.nanos / 1_000_000))
            });
            let event = notices::build(
                next,
                after,
                Cause {
                    event_type,
                    reason: "user",
                    message: if message.is_empty() {
                        "disabled by a user"
                    } else {
                        message
                    },
                    last_error: None,
                    idempotency_key: Some(format!("{event_type}:{}:{change_ms}", config.id)),
                },
            );
            let (reply, answer) = oneshot::channel();
            let job = PublishJob {
                message: event.message,
                subscription_ids: event.subscription_ids,
                deadline: tokio::time::Instant::now() + self.store_timeout,
                reply,
            };
            self.publishes
                .send(job)
                .await
                .map_err(|_| sea_orm::DbErr::Custom("the writer has stopped".to_owned()))?;
            answers.push(answer);
        }
        for answer in answers {
            match answer.await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    return Err(sea_orm::DbErr::Custom(format!(
                        "storing an operational event failed: {err}"
                    )));
                }
                Err(_) => return Err(sea_orm::DbErr::Custom("the writer has stopped".to_owned())),
            }
        }
        Ok(())
    }
}
