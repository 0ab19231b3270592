//! Property tests of what the data plane reads from the control plane's watch stream and
//! back from its own database (`dp_subscriptions.config`, secrets sealed): any bytes and any
//! decoded message are answered (applied, skipped or refused), never a panic; a stored
//! configuration reads back as it was, its secrets never in clear. The case count is
//! proptest's (256), or `PROPTEST_CASES` (CI bounds it). The same parsers have a `cargo
//! fuzz` target (`crates/fuzz`, docs/fuzzing.md).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use prost::Message as _;
use sluice_core::sealing::Keyring;
use sluice_core::signing::SigningSecret;
use sluice_core::signing_ed25519::AsymmetricKey;
use sluice_proto::control::v1::{
    ConfigApiKey, ConfigSecret, ConfigSubscription, WatchConfigResponse,
};

use super::config_copy::{ConfigSnapshot, Subscription};
use super::sealed::{SealedConfig, open_config};

fn keyring() -> Keyring {
    Keyring::from_keys(&[[7; 32]]).unwrap()
}

/// A stored secret: the three kinds the control plane sends, or anything.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|_| SigningSecret::generate().to_whsec()),
        any::<u64>().prop_map(|_| AsymmetricKey::generate().to_whsk()),
        "authorization:Bearer [A-Za-z0-9]{1,20}",
        "whsec_[A-Za-z0-9+/=]{0,60}",
        "whsk_[A-Za-z0-9+/=]{0,60}",
        any::<String>(),
    ]
}

/// A subscription as the control plane might send it, valid or not.
fn config() -> impl Strategy<Value = ConfigSubscription> {
    (
        ("sub_[a-z0-9]{1,6}", "wrk_[a-z0-9]{1,2}"),
        prop_oneof![
            "https://[a-z]{1,10}\\.example/[a-z]{0,5}",
            Just("https://hooks.slack.com/services/T/B/x".to_owned()),
            any::<String>(),
        ],
        -1i32..4,
        proptest::collection::vec(
            prop_oneof![
                "\\*",
                "[a-z]{1,5}\\.\\*",
                "[a-z]{1,5}\\.[a-z]{1,5}",
                any::<String>()
            ],
            0..3,
        ),
        proptest::collection::hash_map("[A-Za-z-]{1,10}", any::<String>(), 0..3),
        (any::<u32>(), any::<bool>()),
        proptest::collection::vec(
            (secret(), proptest::option::of((any::<i64>(), any::<i32>()))),
            0..3,
        ),
    )
        .prop_map(
            |(
                (id, workspace_id),
                url,
                destination_type,
                filters,
                headers,
                (rate, enabled),
                secrets,
            )| {
                ConfigSubscription {
                    id,
                    workspace_id,
                    url,
                    destination_type,
                    filters,
                    headers,
                    rate_limit_per_second: rate,
                    enabled,
                    secrets: secrets
                        .into_iter()
                        .map(|(secret, expire)| ConfigSecret {
                            secret,
                            expire_time: expire
                                .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                        })
                        .collect(),
                    ..Default::default()
                }
            },
        )
}

fn piece(subscriptions: Vec<ConfigSubscription>, reset: bool) -> WatchConfigResponse {
    WatchConfigResponse {
        reset,
        revision: 1,
        upserted_api_keys: subscriptions
            .iter()
            .map(|s| ConfigApiKey {
                id: format!("key_{}", s.id),
                workspace_id: s.workspace_id.clone(),
                key_hash: s.id.clone(),
            })
            .collect(),
        upserted_subscriptions: subscriptions,
        ..Default::default()
    }
}

proptest! {
    /// Sealed, stored and read back, a configuration is what it was; its secrets are not
    /// in the stored bytes.
    #[test]
    fn stored_configs_read_back_sealed(config in config()) {
        let keyring = keyring();
        let stored = SealedConfig::seal(&keyring, &config).encode();
        for secret in &config.secrets {
            let text = secret.secret.as_str();
            if text.starts_with("whsec_") || text.starts_with("whsk_") || text.starts_with("authorization:") {
                prop_assert!(!stored.windows(text.len()).any(|w| w == text.as_bytes()));
            }
        }
        let decoded = ConfigSubscription::decode(stored.as_slice()).unwrap();
        let opened = open_config(&keyring, decoded).unwrap();
        prop_assert_eq!(&opened, &config);
        prop_assert_eq!(
            Subscription::parse(opened).is_ok(),
            Subscription::parse(config).is_ok()
        );
    }

    /// Any configuration, at any time: parsed or refused, and once parsed its signing
    /// secrets are chosen for any clock (far-off expiry times included).
    #[test]
    fn any_config_is_parsed_or_refused(config in config(), now_ms in any::<i64>(), event in any::<String>()) {
        let workspace = config.workspace_id.clone();
        let id = config.id.clone();
        if let Ok(subscription) = Subscription::parse(config.clone()) {
            let _ = subscription.endpoint.signing_secrets(now_ms);
            let _ = subscription.endpoint.signing_keys(now_ms);
            let _ = subscription.filter.matches(&event);
        }
        let snapshot = ConfigSnapshot::default().apply(&[piece(vec![config.clone()], true)]);
        prop_assert_eq!(
            snapshot.subscription(&id).is_some(),
            Subscription::parse(config).is_ok()
        );
        let _ = snapshot.matching(&workspace, &event).count();
        prop_assert_eq!(snapshot.workspace_for_key_hash(&id), Some(workspace.as_str()));
    }

    /// Bytes from the database or the stream that are not what was written: skipped or
    /// refused, never a panic. (Mostly garbage, so also the encoding of a valid message
    /// with bytes flipped.)
    #[test]
    fn any_stored_or_streamed_bytes_are_answered(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        config in config(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let keyring = keyring();
        let mut encoded = SealedConfig::seal(&keyring, &config).encode();
        for (at, byte) in flips {
            if !encoded.is_empty() {
                let i = at.index(encoded.len());
                encoded[i] ^= byte;
            }
        }
        for candidate in [&bytes, &encoded] {
            if let Ok(stored) = ConfigSubscription::decode(candidate.as_slice()) {
                if let Ok(opened) = open_config(&keyring, stored.clone()) {
                    let _ = Subscription::parse(opened);
                }
                let _ = ConfigSnapshot::default().apply(&[piece(vec![stored], false)]);
            }
            if let Ok(streamed) = WatchConfigResponse::decode(candidate.as_slice()) {
                let _ = ConfigSnapshot::default().apply(&[streamed]);
            }
        }
    }
}

/// Found by `any_config_is_parsed_or_refused`: a secret's expiry time far in the future
/// overflowed the conversion to milliseconds (a panic in debug builds, an expired secret
/// in release ones); it saturates now, and the secret still signs.
#[test]
fn a_far_off_secret_expiry_saturates() {
    let config = ConfigSubscription {
        id: "sub_1".into(),
        workspace_id: "wrk_1".into(),
        url: "https://hooks.example/".into(),
        filters: vec!["*".into()],
        enabled: true,
        secrets: vec![
            ConfigSecret {
                secret: SigningSecret::generate().to_whsec(),
                expire_time: None,
            },
            ConfigSecret {
                secret: SigningSecret::generate().to_whsec(),
                expire_time: Some(prost_types::Timestamp {
                    seconds: i64::MAX / 1000 + 1,
                    nanos: 999_999_999,
                }),
            },
        ],
        ..Default::default()
    };
    let subscription = Subscription::parse(config).unwrap();
    assert_eq!(
        subscription
            .endpoint
            .signing_secrets(1_700_000_000_000)
            .len(),
        2
    );
}
