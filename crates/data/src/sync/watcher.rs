//! The config watcher: follows the control plane's `WatchConfig` stream from the revision
//! last persisted, applies each consistent piece to memory and to the database (one
//! transaction per revision), and reconnects with jittered backoff whenever the stream ends
//! or the control plane is down, to the next control-plane replica when there are several.
//! Deliveries and publishes go on from the persisted copy meanwhile.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, TransactionTrait};
use sluice_core::sealing::Keyring;
use sluice_proto::control::v1::{WatchConfigRequest, WatchConfigResponse};

use crate::backoff::Backoff;
use crate::shutdown::Shutdown;
use crate::state::config_copy::{self, ConfigCopy};
use crate::sync::control_client::{ControlClient, Replica, is_auth_error};

/// The watcher and what it keeps current.
pub(crate) struct Watcher {
    pub(crate) db: DatabaseConnection,
    pub(crate) copy: Arc<ConfigCopy>,
    pub(crate) control: ControlClient,
    pub(crate) shutdown: Shutdown,
    /// Seals the secrets of the copy it persists.
    pub(crate) keyring: Keyring,
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

    /// Persists `pieces` and then publishes them to memory, so memory never runs ahead of
    /// what a restart would load.
    async fn apply(
        &self,
        pieces: &[WatchConfigResponse],
        revision: u64,
    ) -> Result<(), sea_orm::DbErr> {
        let next = self.copy.base().apply(pieces);
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
}
