//! Property tests of the control plane's stored rows as `convert.rs` reads them back: rows
//! with any text in their columns (JSON columns that are not JSON, unknown scheme and state
//! names, sealed values that are not, times at either end) are written to a real database
//! (SQLite, and PostgreSQL when `SLUICE_TEST_DATABASE_URL` is set), read back and
//! converted: an answer or an error naming the row, never a panic, never a secret or a URL's
//! password in an answer. Rows whose secrets were sealed by the keyring open to them, in
//! order. Cases: `PROPTEST_CASES` (CI bounds it), at most 64 a backend (each is a database
//! round trip). The conversions of single values have a `cargo fuzz` target (`crates/fuzz`,
//! docs/fuzzing.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Rows are filled field by field from `ActiveModel::default()`, so a column another change
// adds keeps its database default here instead of breaking this suite.
#![allow(clippy::field_reassign_with_default)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sluice_control::convert;
use sluice_core::sealing::Keyring;
use sluice_core::signing::SigningSecret;
use sluice_core::signing_ed25519::AsymmetricKey;
use sluice_store::Plane;
use sluice_store::control::{event_type, subscription};
use sluice_store::sea_orm::{ActiveValue::Set, EntityTrait};
use sluice_testkit::database::{TestDatabase, backends};

/// Text a database column holds: anything but NUL, which PostgreSQL's text refuses.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,40}"
}

/// What the columns of one subscription row are made of.
#[derive(Clone, Debug)]
struct Row {
    url: String,
    names: (String, String, Option<String>, Option<String>),
    json: (String, String),
    times: (i64, i64, Option<i64>, Option<i64>),
    rate: i32,
    enabled: bool,
    /// Whether the secret columns hold values sealed by the keyring (else any text).
    sealed: bool,
    secrets: [String; 4],
    auth: Option<String>,
}

fn row() -> impl Strategy<Value = Row> {
    let name = |known: &'static [&'static str]| {
        prop_oneof![
            proptest::sample::select(known).prop_map(str::to_owned),
            text()
        ]
    };
    (
        prop_oneof![
            "https://[a-z]{1,8}:[a-zA-Z0-9]{8,12}@[a-z]{1,8}\\.example/[a-z]{0,4}",
            "https://[a-z]{1,8}\\.example/[a-z]{0,4}",
            text(),
        ],
        (
            name(&["symmetric", "asymmetric", "both"]),
            name(&["webhook", "slack"]),
            proptest::option::of(name(&["basic", "bearer"])),
            proptest::option::of(name(&["user", "endpoint_gone", "persistent_failure"])),
        ),
        (
            prop_oneof![Just(r#"["a.*","b.c"]"#.to_owned()), text()],
            prop_oneof![Just(r#"{"x-a":"1"}"#.to_owned()), text()],
        ),
        (
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
        ),
        (any::<i32>(), any::<bool>(), any::<bool>()),
        [text(), text(), text(), text()],
        proptest::option::of("Bearer [a-zA-Z0-9]{8,16}"),
    )
        .prop_map(
            |(url, names, json, times, (rate, enabled, sealed), secrets, auth)| Row {
                url,
                names,
                json,
                times,
                rate,
                enabled,
                sealed,
                secrets,
                auth,
            },
        )
}

/// The plaintexts a sealed row holds: v1 secrets, then v1a keys, each current then
/// previous.
fn plaintexts() -> [String; 4] {
    [
        SigningSecret::generate().to_whsec(),
        SigningSecret::generate().to_whsec(),
        AsymmetricKey::generate().to_whsk(),
        AsymmetricKey::generate().to_whsk(),
    ]
}

/// The proptest settings of a suite whose every case is a database round trip.
fn config() -> Config {
    Config {
        cases: Config::default().cases.min(64),
        ..Config::default()
    }
}

#[test]
fn stored_rows_convert_or_fail_but_never_panic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let keyring = Keyring::from_keys(&[[3; 32]]).unwrap();
    let keys = plaintexts();
    for backend in backends() {
        let database = runtime.block_on(TestDatabase::create(&backend));
        let db = runtime.block_on(database.open(Plane::Control));
        let mut runner = TestRunner::new(config());
        let n = std::cell::Cell::new(0u64);
        let result = runner.run(&row(), |row| {
            n.set(n.get() + 1);
            let id = format!("sub_{:06}", n.get());
            let stored: [String; 4] = if row.sealed {
                keys.clone().map(|k| keyring.seal(&k))
            } else {
                row.secrets.clone()
            };
            let auth = row.auth.as_ref().map(|a| {
                if row.sealed {
                    keyring.seal(a)
                } else {
                    a.clone()
                }
            });
            let (scheme, destination, auth_type, reason) = row.names.clone();
            let (create_ms, update_ms, disable_ms, previous_expire_ms) = row.times;
            let model = runtime.block_on(async {
                // Field by field: columns added later keep their defaults.
                let mut active = subscription::ActiveModel::default();
                active.id = Set(id.clone());
                active.workspace_id = Set("wrk_1".to_owned());
                active.description = Set(String::new());
                active.url = Set(row.url.clone());
                active.destination_type = Set(destination);
                active.filters = Set(row.json.0.clone());
                active.headers = Set(row.json.1.clone());
                active.rate_limit_per_second = Set(row.rate);
                active.enabled = Set(row.enabled);
                active.disabled_reason = Set(reason);
                active.disabled_message = Set(None);
                active.disable_ms = Set(disable_ms);
                active.secret = Set(stored[0].clone());
                active.previous_secret = Set(Some(stored[1].clone()));
                active.previous_secret_expire_ms = Set(previous_expire_ms);
                active.signature_scheme = Set(scheme);
                active.signing_key = Set(Some(stored[2].clone()));
                active.previous_signing_key = Set(Some(stored[3].clone()));
                active.public_key = Set(None);
                active.auth = Set(auth);
                active.auth_type = Set(auth_type);
                active.create_ms = Set(create_ms);
                active.update_ms = Set(update_ms);
                subscription::Entity::insert(active)
                    .exec_without_returning(&db)
                    .await
                    .expect("a row of any text is stored");
                subscription::Entity::find_by_id(id.clone())
                    .one(&db)
                    .await
                    .expect("read back")
                    .expect("the row is there")
            });
            // The answer to List/Get: never a secret, never the URL's password.
            let answer = format!("{:?}", convert::subscription(model.clone()));
            for secret in stored.iter().chain(&keys).filter(|s| s.len() >= 8) {
                prop_assert!(!answer.contains(secret.as_str()), "a secret in {}", answer);
            }
            if let Ok(url) = url::Url::parse(&row.url)
                && let Some(password) = url.password()
            {
                prop_assert!(
                    !answer.contains(password),
                    "the URL's password in {}",
                    answer
                );
            }
            // What the data plane gets: the secrets opened, or an error.
            let now_ms = 1_700_000_000_000;
            match convert::config_subscription(&model, now_ms, &keyring) {
                Ok(config) => {
                    let (v1, v1a) = convert::signs(&model.signature_scheme);
                    let live = previous_expire_ms.is_some_and(|e| e > now_ms);
                    let mut expected = Vec::new();
                    if v1 {
                        expected.push(keys[0].clone());
                        if live {
                            expected.push(keys[1].clone());
                        }
                    }
                    if v1a {
                        expected.push(keys[2].clone());
                        if live {
                            expected.push(keys[3].clone());
                        }
                    }
                    if let Some(auth) = &row.auth {
                        expected.push(format!("authorization:{auth}"));
                    }
                    let got: Vec<String> = config.secrets.into_iter().map(|s| s.secret).collect();
                    prop_assert!(row.sealed, "unsealed secrets were opened: {:?}", got);
                    prop_assert_eq!(got, expected);
                }
                Err(e) => {
                    prop_assert!(!row.sealed, "sealed secrets did not open: {:?}", e);
                }
            }
            Ok::<(), TestCaseError>(())
        });
        runtime.block_on(database.drop_database());
        if let Err(e) = result {
            panic!("{}: {e}", backend.label());
        }
    }
}

/// Event type rows with any text as their schema and example: a Struct when it is a JSON
/// object, none otherwise.
#[test]
fn stored_event_types_convert() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in backends() {
        let database = runtime.block_on(TestDatabase::create(&backend));
        let db = runtime.block_on(database.open(Plane::Control));
        let mut runner = TestRunner::new(config());
        let n = std::cell::Cell::new(0u64);
        let schema = prop_oneof![
            Just(r#"{"type":"object"}"#.to_owned()),
            Just("[1,2]".to_owned()),
            text()
        ];
        let result = runner.run(
            &(
                proptest::option::of(schema.clone()),
                proptest::option::of(schema),
                any::<i32>(),
            ),
            |(json_schema, example, version)| {
                n.set(n.get() + 1);
                let name = format!("fuzz.e{}", n.get());
                let model = runtime.block_on(async {
                    event_type::Entity::insert(event_type::ActiveModel {
                        workspace_id: Set("wrk_1".to_owned()),
                        name: Set(name.clone()),
                        version: Set(version),
                        description: Set(String::new()),
                        json_schema: Set(json_schema.clone()),
                        example: Set(example.clone()),
                        archived: Set(false),
                        create_ms: Set(0),
                        update_ms: Set(0),
                    })
                    .exec_without_returning(&db)
                    .await
                    .expect("stored");
                    event_type::Entity::find_by_id(("wrk_1".to_owned(), name))
                        .one(&db)
                        .await
                        .expect("read back")
                        .expect("there")
                });
                let answer = convert::event_type(model);
                let is_object = |text: &Option<String>| {
                    text.as_deref()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                        .is_some_and(|v| v.is_object())
                };
                prop_assert_eq!(answer.json_schema.is_some(), is_object(&json_schema));
                prop_assert_eq!(answer.example.is_some(), is_object(&example));
                Ok(())
            },
        );
        runtime.block_on(database.drop_database());
        if let Err(e) = result {
            panic!("{}: {e}", backend.label());
        }
    }
}

proptest! {
    /// Times at either end of the range: a Timestamp and back, or refused.
    #[test]
    fn times_convert_both_ways(ms in any::<i64>(), seconds in any::<i64>(), nanos in any::<i32>()) {
        let t = convert::ts(ms);
        prop_assert!((0..1_000_000_000).contains(&t.nanos));
        if ms > i64::MIN / 2 {
            prop_assert_eq!(convert::ms(&t), Some(ms));
        }
        let _ = convert::ms(&prost_types::Timestamp { seconds, nanos });
        let d = convert::duration_ms(ms);
        prop_assert!((0..1_000_000_000).contains(&d.nanos));
    }
}
