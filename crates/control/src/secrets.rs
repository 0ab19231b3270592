//! The signing secrets at rest in the `subscriptions` table (`secret`, `previous_secret`):
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

/// The secrets of one row as stored: (id, secret, previous secret).
type StoredSecrets = (String, String, Option<String>);

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
    (id, mut secret, mut previous): StoredSecrets,
) -> Result<bool, ApiError> {
    loop {
        let new_secret = keyring
            .reseal(&secret, scope)
            .map_err(|e| does_not_open(&id, e))?;
        let new_previous = match &previous {
            Some(p) => keyring
                .reseal(p, scope)
                .map_err(|e| does_not_open(&id, e))?,
            None => None,
        };
        if new_secret.is_none() && new_previous.is_none() {
            return Ok(false);
        }
        let written = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::Secret,
                Expr::value(new_secret.unwrap_or_else(|| secret.clone())),
            )
            .col_expr(
                subscription::Column::PreviousSecret,
                Expr::value(new_previous.or_else(|| previous.clone())),
            )
            .filter(subscription::Column::Id.eq(id.as_str()))
            .filter(subscription::Column::Secret.eq(secret.as_str()))
            .filter(match &previous {
                Some(p) => subscription::Column::PreviousSecret.eq(p.as_str()),
                None => subscription::Column::PreviousSecret.is_null(),
            })
            .exec(db)
            .await?;
        if written.rows_affected == 1 {
            return Ok(true);
        }
        // Changed since it was read (rotated, deleted): read it again.
        match subscription::Entity::find_by_id(id.clone()).one(db).await? {
            Some(row) => (secret, previous) = (row.secret, row.previous_secret),
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
