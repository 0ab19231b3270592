//! Endpoint ownership verification, opt-in per subscription (`verification_required`).
//!
//! Before the first delivery and after every URL change, the control plane has the data
//! plane send the endpoint a signed `sluice.endpoint.verification` event (through
//! `DispatchService.SendTest`, so it carries the subscription's signatures and endpoint
//! authentication) whose payload holds a random `challenge`. The endpoint proves it wants
//! the events by answering 2xx with the challenge in the first 4 KiB of its body (for
//! example `{"challenge":"..."}`, as Slack's `url_verification` does). Until then the
//! subscription's config tells the data plane `awaiting_verification`, and its deliveries
//! stay pending without an attempt; `verification_state` and `verification_message` say
//! why. `VerifySubscription` sends the challenge again.

use sea_orm::{ActiveModelTrait, IntoActiveModel, Set, TransactionTrait};
use sluice_core::validate::without_credentials;
use sluice_proto::control::v1 as pb;
use sluice_store::control::subscription;
use sluice_store::{lock_config_writes, now_ms};

use crate::error::{ApiError, ApiResult};
use crate::verify_state::{FAILED, PENDING, VERIFIED};
use crate::{CHANGE_SUBSCRIPTION, ControlPlane, convert, record_change};

/// The event type of the verification request.
pub const VERIFICATION_EVENT: &str = "sluice.endpoint.verification";
/// Sends the challenge in the background (after a create or a URL change); the outcome is
/// stored on the subscription.
pub(crate) fn spawn(plane: ControlPlane, workspace_id: String, id: String) {
    tokio::spawn(async move {
        if let Err(err) = verify(&plane, &workspace_id, &id).await {
            tracing::warn!(subscription_id = %id, error = ?err, "endpoint verification not concluded");
        }
    });
}

/// How many times a verification the data plane could not take is tried at start.
const RESUME_TRIES: u32 = 5;

/// Sends the challenge again, once at start, to every subscription whose verification was
/// left pending: stopped before it concluded, or the data plane could not be reached. A
/// send the data plane cannot take yet (it may start after this plane) is tried again after
/// 1, 2, 4 and 8 seconds.
pub(crate) fn resume_pending(plane: ControlPlane) {
    tokio::spawn(async move {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
        let pending: Vec<(String, String)> = match subscription::Entity::find()
            .select_only()
            .columns([subscription::Column::WorkspaceId, subscription::Column::Id])
            .filter(subscription::Column::VerificationRequired.eq(true))
            .filter(subscription::Column::VerificationState.eq(PENDING))
            .into_tuple()
            .all(plane.db())
            .await
        {
            Ok(pending) => pending,
            Err(err) => {
                tracing::warn!(error = %err, "listing pending endpoint verifications failed");
                return;
            }
        };
        for (workspace_id, id) in pending {
            let mut delay = std::time::Duration::from_secs(1);
            for _ in 0..RESUME_TRIES {
                if plane.inner.streams.is_cancelled() {
                    return;
                }
                match verify(&plane, &workspace_id, &id).await {
                    Ok(row) if row.verification_state.as_deref() == Some(PENDING) => {}
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(subscription_id = %id, error = ?err, "endpoint verification not concluded");
                        break;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = plane.inner.streams.cancelled() => return,
                }
                delay *= 2;
            }
        }
    });
}

/// A subscription of one workspace; another workspace's id is NOT_FOUND.
async fn find_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    workspace_id: &str,
    id: &str,
) -> ApiResult<subscription::Model> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    subscription::Entity::find_by_id(id.to_owned())
        .filter(subscription::Column::WorkspaceId.eq(workspace_id))
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription", id))
}

/// Sends the challenge now and stores the outcome; returns the subscription as stored.
pub(crate) async fn verify(
    plane: &ControlPlane,
    workspace_id: &str,
    id: &str,
) -> ApiResult<subscription::Model> {
    let row = find_in(plane.db(), workspace_id, id).await?;
    if !row.verification_required {
        return Err(ApiError::FailedPrecondition(
            "the subscription does not require verification; set `verification_required` first"
                .to_owned(),
        ));
    }
    let challenge = challenge();
    let (state, message) = match send(plane, &row, &challenge).await {
        Ok(attempt) => judge(&attempt, &challenge),
        Err(why) => (
            PENDING,
            format!(
                "the verification request could not be sent ({why}); VerifySubscription sends it again"
            ),
        ),
    };
    if state != VERIFIED {
        tracing::info!(subscription_id = %row.id, state, reason = %message, "endpoint not verified");
    }
    store(plane, &row, state, message).await
}

/// A random challenge: 32 hex digits.
fn challenge() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send(
    plane: &ControlPlane,
    row: &subscription::Model,
    challenge: &str,
) -> Result<pb::Attempt, String> {
    let mut dispatch = plane.dispatch().map_err(|e| e.to_string())?;
    let mut config = convert::config_subscription(row, now_ms(), &plane.config().keyring)
        .map_err(|e| e.to_string())?;
    config.awaiting_verification = false;
    let payload = serde_json::json!({
        "challenge": challenge,
        "subscription_id": row.id,
        "url": without_credentials(&row.url),
    });
    let request = plane
        .internal_request(sluice_proto::data::v1::SendTestRequest {
            subscription: Some(config),
            event_type: VERIFICATION_EVENT.to_owned(),
            payload_json: payload.to_string(),
        })
        .map_err(|e| e.to_string())?;
    let response = dispatch
        .send_test(request)
        .await
        .map_err(|status| format!("the data plane: {}", status.message()))?;
    Ok(response.into_inner().attempt.unwrap_or_default())
}

/// Whether the attempt answered the challenge, and why, for people.
fn judge(attempt: &pb::Attempt, challenge: &str) -> (&'static str, String) {
    if !attempt.success {
        let what = if attempt.status_code != 0 {
            format!("answered HTTP {}", attempt.status_code)
        } else {
            format!("could not be reached: {}", attempt.error_message)
        };
        return (
            FAILED,
            format!(
                "the endpoint {what} to the `sluice.endpoint.verification` event; answer it with 2xx and its `challenge` in the body, then call VerifySubscription"
            ),
        );
    }
    if !attempt.response_excerpt.contains(challenge) {
        return (
            FAILED,
            format!(
                "the endpoint answered HTTP {} to the `sluice.endpoint.verification` event without its `challenge` in the body; answer with the challenge (e.g. {{\"challenge\":\"...\"}}), then call VerifySubscription",
                attempt.status_code
            ),
        );
    }
    (
        VERIFIED,
        "the endpoint answered the verification challenge".to_owned(),
    )
}

/// Stores the outcome, unless the URL changed meanwhile (that change started a
/// verification of its own) or verification is no longer required.
async fn store(
    plane: &ControlPlane,
    verified: &subscription::Model,
    state: &'static str,
    message: String,
) -> ApiResult<subscription::Model> {
    let (workspace_id, id, url) = (
        verified.workspace_id.clone(),
        verified.id.clone(),
        verified.url.clone(),
    );
    let (row, revision) = plane
        .db()
        .transaction::<_, (subscription::Model, Option<i64>), ApiError>(|tx| {
            Box::pin(async move {
                lock_config_writes(tx).await?;
                let current = find_in(tx, &workspace_id, &id).await?;
                if current.url != url || !current.verification_required {
                    return Ok((current, None));
                }
                let now = now_ms();
                let mut row = current.into_active_model();
                row.verification_state = Set(Some(state.to_owned()));
                row.verification_message = Set(Some(message));
                row.verify_ms = Set(Some(now));
                row.update_ms = Set(now);
                let row = row.update(tx).await?;
                let revision =
                    record_change(tx, CHANGE_SUBSCRIPTION, &row.id, &row.workspace_id).await?;
                Ok((row, Some(revision)))
            })
        })
        .await?;
    if let Some(revision) = revision {
        plane.published(revision);
    }
    Ok(row)
}
