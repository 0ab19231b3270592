//! Signing secrets at rest, end to end on both backends: no stored byte of either plane
//! (the SQLite files, a `pg_dump` of the PostgreSQL databases) holds a known signing
//! secret in any form; after `sluice keys rotate` to a new master key the planes start
//! with the new key alone and every signature still verifies, with Sluice's verifier and
//! the Standard Webhooks reference library; a start with a key that does not open the
//! stored secrets fails with a message naming the key id; and secrets an older version
//! stored in clear are sealed at start.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use base64::Engine as _;
use prost::Message as _;
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Set};
use sluice_core::sealing::{Keyring, Resealed, generate_master_key};
use sluice_core::signing::SigningSecret;
use sluice_proto::control::v1 as pb;
use sluice_store::Plane;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Received, Receiver, with_id};
use sluice_testkit::{INTERNAL_TOKEN, TestDatabase, WAIT};
use sluice_tests::control::{reveal, secs, stored_subscription};
use sluice_tests::delivery::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_at_rest_and_rotation_keeps_every_signature_valid() {
    on_each_backend(PlaneOptions::default(), async |planes| {
        let receiver = Receiver::ok().await;
        let (_, key) = planes.workspace_with_key("Tideflow").await;
        let mut clients = planes.clients(Some(&key)).await;
        let url = receiver.url("/hook");
        // A secret the test chooses, then rotated with a grace period: the stored row holds
        // a current and a previous secret (and ed25519 key), and deliveries carry a
        // signature by each.
        let first = SigningSecret::generate().to_whsec();
        let subscription = clients
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    signature_scheme: pb::SignatureScheme::Both as i32,
                    ..webhook(&url, &["*"])
                }),
                secret: first.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap();
        let second = clients
            .subscriptions
            .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                id: subscription.id.clone(),
                grace_period: secs(3600),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret;
        let secrets = [first.as_str(), second.as_str()];
        planes.config_synced().await;
        let mut publisher = planes.publisher(&key).await;

        let delivered = deliver_one(&mut publisher, &receiver).await;
        assert_signed_by_both(&delivered, &secrets, "before the rotation");
        assert_nothing_at_rest(planes, &secrets, &url).await;

        // Rotate to a new master key while the planes run: the new key first, the old after.
        let old = planes.keyring().clone();
        let new_key = generate_master_key();
        let new = Keyring::parse(&format!("{new_key},{}", sluice_testkit::MASTER_KEY)).unwrap();
        let control = rotate(planes, Plane::Control, &new).await;
        let data = rotate(planes, Plane::Data, &new).await;
        assert_eq!((control.checked, control.resealed), (1, 1), "control plane");
        assert_eq!((data.checked, data.resealed), (1, 1), "data plane");
        let again = (
            rotate(planes, Plane::Control, &new).await,
            rotate(planes, Plane::Data, &new).await,
        );
        assert_eq!((again.0.resealed, again.1.resealed), (0, 0), "idempotent");
        assert_sealed_under(planes, &subscription.id, new.current_id()).await;
        let row = stored_subscription(&planes.control_db, &subscription.id)
            .await
            .unwrap();
        assert!(
            row.signing_key.is_some() && row.previous_signing_key.is_some(),
            "the ed25519 keys were rotated with the secret and are re-sealed too"
        );

        // Only the new key from now on.
        let only_new = Keyring::parse(&new_key).unwrap();
        planes.restart_with_keyring(only_new.clone()).await;
        planes.config_synced().await;
        let delivered = deliver_one(&mut publisher, &receiver).await;
        assert_signed_by_both(&delivered, &secrets, "after the rotation");
        let revealed = reveal(&mut planes.clients(Some(&key)).await, "", &subscription.id).await;
        assert_eq!(
            (revealed.secret.as_str(), revealed.previous_secret.as_str()),
            (second.as_str(), first.as_str())
        );
        assert_nothing_at_rest(planes, &secrets, &url).await;

        // The old key alone no longer opens what is stored: neither plane starts.
        planes.stop_data().await;
        planes.stop_control().await;
        let why = format!(
            "the master key does not open the stored secrets (subscription {}: key id {} is not among the configured keys ({}))",
            subscription.id,
            only_new.current_id(),
            old.current_id()
        );
        let control_start = sluice_control::ControlPlane::new(
            planes.control_db.clone(),
            sluice_control::ControlConfig {
                admin_key: sluice_testkit::ADMIN_KEY.into(),
                internal_token: INTERNAL_TOKEN.into(),
                allow_http: true,
                data_plane_endpoint: None,
                keyring: old.clone(),
                attempt_watch_buffer: sluice_control::attempt_watch::DEFAULT_BUFFER,
                attempt_watch_patience: sluice_control::attempt_watch::DEFAULT_PATIENCE,
                retention: Default::default(),
                policy_defaults: Default::default(),
            },
        )
        .await;
        match control_start {
            Ok(_) => panic!("the control plane started with a key that opens none of its secrets"),
            Err(e) => assert_eq!(e.to_string(), why),
        }
        let data_start = sluice_data::DataPlane::start(
            planes.data_db.clone(),
            sluice_data::DataConfig {
                internal_token: INTERNAL_TOKEN.into(),
                control_endpoint: format!("http://{}", planes.control_addr),
                keyring: Some(old),
                ..Default::default()
            },
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
        match data_start {
            Ok(_) => panic!("the data plane started with a key that opens none of its secrets"),
            Err(e) => assert_eq!(
                e.to_string(),
                format!("invalid data plane configuration: {why}")
            ),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stored_in_clear_by_an_older_version_are_sealed_at_start() {
    on_each_backend(PlaneOptions::default(), async |planes| {
        let receiver = Receiver::ok().await;
        let (_, key) = planes.workspace_with_key("Tideflow").await;
        let mut clients = planes.clients(Some(&key)).await;
        let (subscription, secret) =
            subscribe(&mut clients, webhook(&receiver.url("/hook"), &["*"])).await;
        planes.config_synced().await;
        planes.stop_data().await;
        planes.stop_control().await;

        // What an older version left: both planes' copies of the secret in clear.
        let mut row = stored_subscription(&planes.control_db, &subscription.id)
            .await
            .unwrap()
            .into_active_model();
        row.secret = Set(secret.clone());
        row.update(&planes.control_db).await.unwrap();
        let stored = sluice_store::data::subscription::Entity::find_by_id(subscription.id.clone())
            .one(&planes.data_db)
            .await
            .unwrap()
            .unwrap();
        let mut config = pb::ConfigSubscription::decode(stored.config.as_slice()).unwrap();
        for s in &mut config.secrets {
            s.secret = secret.clone();
        }
        let mut row = stored.into_active_model();
        row.config = Set(config.encode_to_vec());
        row.update(&planes.data_db).await.unwrap();
        assert!(
            data_rows(planes).await[0]
                .windows(6)
                .any(|w| w == b"whsec_")
        );

        planes.restart_with_keyring(planes.keyring().clone()).await;
        let keyring = planes.keyring().clone();
        assert_sealed_under(planes, &subscription.id, keyring.current_id()).await;
        planes.config_synced().await;
        let mut publisher = planes.publisher(&key).await;
        let delivered = deliver_one(&mut publisher, &receiver).await;
        assert!(
            delivered.verifies_with(&secret),
            "the secret sealed at start still signs"
        );
    })
    .await;
}

/// Publishes one event and returns its request to the receiver.
async fn deliver_one(publisher: &mut Publisher, receiver: &Receiver) -> Received {
    let message_id = publish(publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#))
        .await
        .message_id;
    let got = receiver
        .wait_until(WAIT, |got| !with_id(got, &message_id).is_empty())
        .await
        .unwrap_or_else(|got| panic!("{message_id} did not arrive: {got:?}"));
    with_id(&got, &message_id)[0].clone()
}

/// `sluice keys rotate` for one plane, through the function the subcommand calls.
async fn rotate(planes: &Planes, plane: Plane, keyring: &Keyring) -> Resealed {
    let db = match plane {
        Plane::Control => &planes.control_db,
        Plane::Data => &planes.data_db,
    };
    sluice::keys::rotate(db, plane, keyring).await.unwrap()
}

/// Each of `secrets` verifies a signature of `r`, with Sluice's verifier and with the
/// Standard Webhooks reference library.
fn assert_signed_by_both(r: &Received, secrets: &[&str], when: &str) {
    for secret in secrets {
        assert!(
            r.verifies_with(secret),
            "{when}: Sluice's verifier refuses {:?}",
            r.header("webhook-signature")
        );
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| {
                panic!(
                    "{when}: the reference library refuses {:?}: {e}",
                    r.header("webhook-signature")
                )
            });
    }
}

/// Every form a value could take in a stored byte: its text, and for a `whsec_` secret the
/// base64 after the prefix and the raw key; each also in lowercase hex, which is how
/// `pg_dump` writes a `bytea` column (the data plane's encoded copy).
fn forms(value: &str) -> Vec<Vec<u8>> {
    let mut plain = vec![value.as_bytes().to_vec()];
    if let Some(encoded) = value.strip_prefix("whsec_") {
        plain.push(encoded.as_bytes().to_vec());
        plain.push(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        );
    }
    let hexed: Vec<Vec<u8>> = plain.iter().map(|p| hex::encode(p).into_bytes()).collect();
    plain.into_iter().chain(hexed).collect()
}

fn holds(haystack: &[u8], value: &str) -> bool {
    forms(value).iter().any(|needle| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
    })
}

/// Everything each plane has at rest: for SQLite every file of its database's directory
/// (the database, its WAL, ...), for PostgreSQL a `pg_dump` of its database.
fn at_rest(database: &TestDatabase) -> Vec<(String, Vec<u8>)> {
    if let Some(rest) = database.url.strip_prefix("sqlite://") {
        let file = PathBuf::from(rest.split('?').next().unwrap());
        let dir = file.parent().unwrap();
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            all.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
        all
    } else {
        let dump = std::process::Command::new("pg_dump")
            .arg("--dbname")
            .arg(&database.url)
            .output()
            .unwrap_or_else(|e| panic!("pg_dump cannot run here: {e}"));
        assert!(
            dump.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        vec![("pg_dump".to_owned(), dump.stdout)]
    }
}

/// No stored byte of either plane holds any of `secrets`; the subscription's URL, stored
/// in clear, is found in each, so the scan does see the rows.
async fn assert_nothing_at_rest(planes: &Planes, secrets: &[&str], url: &str) {
    // SQLite's WAL is part of what is at rest; PostgreSQL's dump reads committed rows.
    for (plane, database) in [
        ("control", planes.control_database()),
        ("data", planes.data_database()),
    ] {
        let stored = at_rest(database);
        assert!(
            stored.iter().any(|(_, bytes)| holds(bytes, url)),
            "{plane} plane: the scan does not even find the subscription's URL"
        );
        for (name, bytes) in &stored {
            for (index, secret) in secrets.iter().enumerate() {
                assert!(
                    !holds(bytes, secret),
                    "{plane} plane: signing secret {index} is readable in {name}"
                );
            }
        }
    }
}

/// The stored secrets of both planes are sealed under `key_id`, and only under it.
async fn assert_sealed_under(planes: &Planes, subscription_id: &str, key_id: &str) {
    let prefix = format!("sealed:v1:{key_id}:");
    let row = stored_subscription(&planes.control_db, subscription_id)
        .await
        .unwrap();
    assert!(
        row.secret.starts_with(&prefix),
        "control plane: {}",
        row.secret
    );
    if let Some(previous) = &row.previous_secret {
        assert!(previous.starts_with(&prefix), "control plane: {previous}");
    }
    for key in [&row.signing_key, &row.previous_signing_key]
        .into_iter()
        .flatten()
    {
        assert!(key.starts_with(&prefix), "control plane: ed25519 key {key}");
    }
    for config in data_rows(planes).await {
        let config = pb::ConfigSubscription::decode(config.as_slice()).unwrap();
        assert!(!config.secrets.is_empty());
        for s in &config.secrets {
            assert!(s.secret.starts_with(&prefix), "data plane: {}", s.secret);
        }
    }
}

/// The data plane's stored subscription copies, as bytes.
async fn data_rows(planes: &Planes) -> Vec<Vec<u8>> {
    let db = &planes.data_db;
    db.query_all_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SELECT config FROM dp_subscriptions",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.try_get::<Vec<u8>>("", "config").unwrap())
    .collect()
}
