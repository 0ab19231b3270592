//! The signing secrets at rest in the `subscriptions` table (`secret`, `previous_secret`,
//! and the ed25519 keys `signing_key`, `previous_signing_key`):
//! always sealed under the master keyring (`sluice_core::sealing`). Written sealed by
//! `subscription.rs`, opened only where they are used: revealed to their owner, or sent to
//! the data plane in its configuration.
//!
//! [`reseal_secrets`] walks every row: at each start with [`Reseal::ClearText`] (secrets an
//! older version stored in clear are sealed; a migration cannot do it, having no key), and
//! from `sluice keys rotate` with [`Reseal::NotCurrentKey`]. Either way it opens every
//! stored secret, so a wrong keyring stops the start with a clear message before anything
//! is signed. Each row is rewritten by one compare-and-set `UPDATE` (only if it still holds
//! what was read, else it is read again), so it is safe while other replicas change
//! secrets.

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sluice_core::sealing::{Keyring, OpenError, Reseal, Resealed};
use sluice_store::control::subscription;

use crate::error::ApiError;

/// Rows read per query of a pass.
const BATCH: u64 = 200;

/// The secrets of one row as stored: (id, secret, previous secret, signing key, previous
/// signing key, endpoint authorization).
type StoredSecrets = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Rewrites the stored secrets `scope` names under the keyring's current key, and checks
/// that every other one opens. Returns what it did; fails on the first secret that does
/// not open, naming its subscription.
pub async fn reseal_secrets<C: ConnectionTrait>(
    db: &C,
    keyring: &Keyring,
    scope: Reseal,
) -> Result<Resealed, ApiError> {
    let mut done = Resealed::default();
    let mut after = String::new();
    loop {
        let rows: Vec<StoredSecrets> = subscription::Entity::find()
            .select_only()
            .columns([
                subscription::Column::Id,
                subscription::Column::Secret,
                subscription::Column::PreviousSecret,
                subscription::Column::SigningKey,
                subscription::Column::PreviousSigningKey,
                subscription::Column::Auth,
            ])
            .filter(subscription::Column::Id.gt(after.as_str()))
            .order_by_asc(subscription::Column::Id)
            .limit(BATCH)
            .into_tuple()
            .all(db)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(done);
        };
        after = last.0.clone();
        let full = rows.len() as u64 == BATCH;
        for row in rows {
            done.checked += 1;
            if reseal_row(db, keyring, scope, row).await? {
                done.resealed += 1;
            }
        }
        if !full {
            return Ok(done);
        }
    }
}

/// Reseals one row; true when it was rewritten.
async fn reseal_row<C: ConnectionTrait>(
    db: &C,
    keyring: &Keyring,
    scope: Reseal,
    (id, mut secret, mut previous, mut key, mut previous_key, mut auth): StoredSecrets,
) -> Result<bool, ApiError> {
    let reseal = |stored: &Option<String>| match stored {
        Some(s) => keyring.reseal(s, scope).map_err(|e| does_not_open(&id, e)),
        None => Ok(None),
    };
    // The optional columns: its new value, and the condition that it still holds `old`.
    let optional = |column: subscription::Column, old: &Option<String>, new: Option<String>| {
        let condition = match old {
            Some(value) => column.eq(value.as_str()),
            None => column.is_null(),
        };
        (Expr::value(new.or_else(|| old.clone())), condition)
    };
    loop {
        let new_secret = keyring
            .reseal(&secret, scope)
            .map_err(|e| does_not_open(&id, e))?;
        let new_previous = reseal(&previous)?;
        let new_key = reseal(&key)?;
        let new_previous_key = reseal(&previous_key)?;
        let new_auth = reseal(&auth)?;
        if new_secret.is_none()
            && new_previous.is_none()
            && new_key.is_none()
            && new_previous_key.is_none()
            && new_auth.is_none()
        {
            return Ok(false);
        }
        let (previous_value, previous_held) = optional(
            subscription::Column::PreviousSecret,
            &previous,
            new_previous,
        );
        let (key_value, key_held) = optional(subscription::Column::SigningKey, &key, new_key);
        let (previous_key_value, previous_key_held) = optional(
            subscription::Column::PreviousSigningKey,
            &previous_key,
            new_previous_key,
        );
        let (auth_value, auth_held) = optional(subscription::Column::Auth, &auth, new_auth);
        let written = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::Secret,
                Expr::value(new_secret.unwrap_or_else(|| secret.clone())),
            )
            .col_expr(subscription::Column::PreviousSecret, previous_value)
            .col_expr(subscription::Column::SigningKey, key_value)
            .col_expr(subscription::Column::PreviousSigningKey, previous_key_value)
            .col_expr(subscription::Column::Auth, auth_value)
            .filter(subscription::Column::Id.eq(id.as_str()))
            .filter(subscription::Column::Secret.eq(secret.as_str()))
            .filter(previous_held)
            .filter(key_held)
            .filter(previous_key_held)
            .filter(auth_held)
            .exec(db)
            .await?;
        if written.rows_affected == 1 {
            return Ok(true);
        }
        // Changed since it was read (rotated, deleted): read it again.
        match subscription::Entity::find_by_id(id.clone()).one(db).await? {
            Some(row) => {
                (secret, previous, key, previous_key, auth) = (
                    row.secret,
                    row.previous_secret,
                    row.signing_key,
                    row.previous_signing_key,
                    row.auth,
                )
            }
            None => return Ok(false),
        }
    }
}

/// The error of a stored secret that does not open: it names the subscription and the key
/// id, never the value.
pub(crate) fn does_not_open(subscription_id: &str, err: OpenError) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "the master key does not open the stored secrets (subscription {subscription_id}: {err})"
    ))
}
