//! The signing secrets of the persisted configuration copy (`dp_subscriptions.config`, an
//! encoded `ConfigSubscription`): sealed under the master keyring (`sluice_core::sealing`)
//! before they are written, opened after they are read. Memory holds them in clear, as
//! signing needs; the watch stream carries them in clear (transport, not rest).
//!
//! [`SealedConfig`] is the only form `config_copy` writes, so a clear secret cannot reach
//! the table by mistake. [`reseal_secrets`] walks every row: at each start with
//! [`Reseal::ClearText`] (what an older version stored in clear is sealed; a migration
//! cannot do it, having no key) and from `sluice keys rotate` with
//! [`Reseal::NotCurrentKey`]. Either way it opens every stored secret, so a wrong keyring
//! stops the start with a clear message before anything is signed. Each row is rewritten
//! by one compare-and-set `UPDATE` (only if it still holds the bytes that were read, else
//! it is read again), so it is safe while the watcher writes.

use prost::Message as _;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sluice_core::sealing::{Keyring, OpenError, Reseal, Resealed};
use sluice_proto::control::v1::ConfigSubscription;
use sluice_store::data::subscription;

use crate::error::DataError;

/// Rows read per query of a pass.
const BATCH: u64 = 200;

/// A subscription's configuration with every secret sealed: what `dp_subscriptions` holds.
pub(crate) struct SealedConfig(ConfigSubscription);

impl SealedConfig {
    /// `config` with its secrets sealed under the keyring's current key.
    pub(crate) fn seal(keyring: &Keyring, config: &ConfigSubscription) -> SealedConfig {
        let mut sealed = config.clone();
        for secret in &mut sealed.secrets {
            secret.secret = keyring.seal(&secret.secret);
        }
        SealedConfig(sealed)
    }

    pub(crate) fn id(&self) -> &str {
        &self.0.id
    }

    pub(crate) fn workspace_id(&self) -> &str {
        &self.0.workspace_id
    }

    /// The bytes stored in `dp_subscriptions.config`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }
}

/// A stored configuration with its secrets opened.
pub(crate) fn open_config(
    keyring: &Keyring,
    mut config: ConfigSubscription,
) -> Result<ConfigSubscription, DataError> {
    for secret in &mut config.secrets {
        secret.secret = keyring
            .open(&secret.secret)
            .map_err(|e| does_not_open(&config.id, e))?;
    }
    Ok(config)
}

/// Rewrites the stored secrets `scope` names under the keyring's current key, and checks
/// that every other one opens. Returns what it did; fails on the first secret that does
/// not open, naming its subscription. A row that does not decode is left to `load`, which
/// skips it.
pub async fn reseal_secrets<C: ConnectionTrait>(
    db: &C,
    keyring: &Keyring,
    scope: Reseal,
) -> Result<Resealed, DataError> {
    let mut done = Resealed::default();
    let mut after = String::new();
    loop {
        let rows: Vec<(String, Vec<u8>)> = subscription::Entity::find()
            .select_only()
            .columns([subscription::Column::Id, subscription::Column::Config])
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
        for (id, config) in rows {
            done.checked += 1;
            if reseal_row(db, keyring, scope, &id, config).await? {
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
    id: &str,
    mut stored: Vec<u8>,
) -> Result<bool, DataError> {
    loop {
        let Ok(mut config) = ConfigSubscription::decode(stored.as_slice()) else {
            return Ok(false);
        };
        let mut changed = false;
        for secret in &mut config.secrets {
            if let Some(text) = keyring
                .reseal(&secret.secret, scope)
                .map_err(|e| does_not_open(id, e))?
            {
                secret.secret = text;
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        let written = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::Config,
                Expr::value(config.encode_to_vec()),
            )
            .filter(subscription::Column::Id.eq(id))
            .filter(subscription::Column::Config.eq(stored))
            .exec(db)
            .await?;
        if written.rows_affected == 1 {
            return Ok(true);
        }
        // Changed since it was read (a new revision, a disable): read it again.
        match subscription::Entity::find_by_id(id.to_owned())
            .one(db)
            .await?
        {
            Some(row) => stored = row.config,
            None => return Ok(false),
        }
    }
}

/// The start-up error of a stored secret that does not open: it names the subscription
/// and the key id, never the value.
fn does_not_open(subscription_id: &str, err: OpenError) -> DataError {
    DataError::Config(format!(
        "the master key does not open the stored secrets (subscription {subscription_id}: {err})"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sluice_core::signing::SigningSecret;
    use sluice_proto::control::v1::ConfigSecret;

    use super::*;

    #[test]
    fn every_secret_is_sealed_before_it_is_stored_and_opens_after() {
        let keyring = Keyring::from_keys(&[[9; 32]]).unwrap();
        let secrets: Vec<String> = (0..2)
            .map(|_| SigningSecret::generate().to_whsec())
            .collect();
        let config = ConfigSubscription {
            id: "sub_1".into(),
            secrets: secrets
                .iter()
                .map(|s| ConfigSecret {
                    secret: s.clone(),
                    expire_time: None,
                })
                .collect(),
            ..Default::default()
        };
        let stored = SealedConfig::seal(&keyring, &config).encode();
        for secret in &secrets {
            let needle = secret.as_bytes();
            assert!(!stored.windows(needle.len()).any(|w| w == needle));
        }
        let decoded = ConfigSubscription::decode(stored.as_slice()).unwrap();
        assert_eq!(open_config(&keyring, decoded).unwrap(), config);

        let other = Keyring::from_keys(&[[8; 32]]).unwrap();
        let decoded = ConfigSubscription::decode(stored.as_slice()).unwrap();
        let refused = open_config(&other, decoded).unwrap_err().to_string();
        assert!(
            refused.contains("does not open the stored secrets (subscription sub_1: key id"),
            "{refused}"
        );
    }
}
