//! Asymmetric (ed25519, Standard Webhooks `v1a`) signatures through both planes: a
//! subscription signs symmetric, asymmetric or both; its public key is readable through the
//! control plane; a rotation keeps the old and new keys signing through the grace period;
//! the signatures verify with a receiver check written from the spec.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Verifier as _;
use sluice_proto::control::v1 as pb;
use sluice_testkit::WAIT;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Received, Receiver, with_id};
use sluice_tests::control::{get_subscription, mask, reveal};
use sluice_tests::delivery::*;

/// The receiver's check, from the spec alone: `whpk_` + base64 of the 32-byte key; each
/// `v1a,` entry base64 of an ed25519 signature over `{id}.{timestamp}.{body}`.
fn verifies_v1a(r: &Received, whpk: &str) -> bool {
    let bytes = STANDARD
        .decode(whpk.strip_prefix("whpk_").unwrap())
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes.try_into().unwrap()).unwrap();
    let mut content = format!(
        "{}.{}.",
        r.header("webhook-id"),
        r.header("webhook-timestamp")
    )
    .into_bytes();
    content.extend_from_slice(&r.body);
    r.header("webhook-signature").split(' ').any(|entry| {
        entry
            .strip_prefix("v1a,")
            .and_then(|s| STANDARD.decode(s).ok())
            .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
            .is_some_and(|s| key.verify(&content, &s).is_ok())
    })
}

fn versions(r: &Received) -> Vec<&str> {
    r.header("webhook-signature")
        .split(' ')
        .map(|e| e.split(',').next().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_sign_symmetric_asymmetric_or_both_and_rotate_keys_with_grace() {
    on_each_backend(PlaneOptions::default(), schemes).await;
}

async fn schemes(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Signatures").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    let mut subs = Vec::new();
    for (path, scheme) in [
        ("/symmetric", pb::SignatureScheme::Unspecified),
        ("/asymmetric", pb::SignatureScheme::Asymmetric),
        ("/both", pb::SignatureScheme::Both),
    ] {
        let (sub, secret) = subscribe(
            &mut c,
            pb::Subscription {
                signature_scheme: scheme as i32,
                ..webhook(&receiver.url(path), &["conversation.*"])
            },
        )
        .await;
        subs.push((path, sub, secret));
    }
    let (_, symmetric, _) = &subs[0];
    assert_eq!(
        symmetric.signature_scheme,
        pb::SignatureScheme::Symmetric as i32
    );
    assert!(symmetric.public_key.is_empty());
    for (_, sub, _) in &subs[1..] {
        assert!(sub.public_key.starts_with("whpk_"), "{sub:?}");
        // Readable again through Get and Reveal.
        let got = get_subscription(&mut c, "", &sub.id).await;
        assert_eq!(got.public_key, sub.public_key);
        assert_eq!(reveal(&mut c, "", &sub.id).await.public_key, sub.public_key);
    }
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let first = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    let got = receiver.wait_for(3, WAIT).await;
    for (path, sub, secret) in &subs {
        let r = with_id(&got, &first.message_id)
            .into_iter()
            .find(|r| r.path == *path)
            .unwrap();
        let want: &[&str] = match *path {
            "/symmetric" => &["v1"],
            "/asymmetric" => &["v1a"],
            _ => &["v1", "v1a"],
        };
        assert_eq!(versions(r), want, "{path}");
        assert_eq!(r.verifies_with(secret), want.contains(&"v1"), "{path}");
        if want.contains(&"v1a") {
            assert!(verifies_v1a(r, &sub.public_key), "{path}");
        }
    }

    // Rotation: the new key pair signs, and the old one too through the grace period.
    let (_, both, _) = &subs[2];
    let rotated = c
        .subscriptions
        .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
            workspace_id: String::new(),
            id: both.id.clone(),
            secret: String::new(),
            grace_period: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.public_key.starts_with("whpk_"));
    assert_ne!(rotated.public_key, both.public_key);
    let revealed = reveal(&mut c, "", &both.id).await;
    assert_eq!(revealed.public_key, rotated.public_key);
    assert_eq!(revealed.previous_public_key, both.public_key);
    planes.config_synced().await;
    let second = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    let got = receiver.wait_for(6, WAIT).await;
    let r = with_id(&got, &second.message_id)
        .into_iter()
        .find(|r| r.path == "/both")
        .unwrap();
    assert_eq!(versions(r), ["v1", "v1", "v1a", "v1a"]);
    assert!(verifies_v1a(r, &rotated.public_key));
    assert!(verifies_v1a(r, &both.public_key));
    assert!(r.verifies_with(&rotated.secret));

    // The symmetric one switches to asymmetric by update: a key pair is made for it.
    let (_, symmetric, _) = &subs[0];
    let updated = c
        .subscriptions
        .update_subscription(pb::UpdateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(pb::Subscription {
                id: symmetric.id.clone(),
                signature_scheme: pb::SignatureScheme::Asymmetric as i32,
                ..Default::default()
            }),
            update_mask: mask(&["signature_scheme"]),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert!(updated.public_key.starts_with("whpk_"));
    planes.config_synced().await;
    let third = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":3}"#)).await;
    let got = receiver.wait_for(9, WAIT).await;
    let r = with_id(&got, &third.message_id)
        .into_iter()
        .find(|r| r.path == "/symmetric")
        .unwrap();
    assert_eq!(versions(r), ["v1a"]);
    assert!(verifies_v1a(r, &updated.public_key));

    // An unknown scheme is refused, naming the field.
    let status = c
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(pb::Subscription {
                signature_scheme: 42,
                ..webhook(&receiver.url("/x"), &["*"])
            }),
            secret: String::new(),
        })
        .await
        .unwrap_err();
    sluice_testkit::assert_invalid(&status, "subscription.signature_scheme");
}
