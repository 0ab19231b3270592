//! Bad input to the control plane: INVALID_ARGUMENT naming the right field in `google.rpc.BadRequest`, and nothing stored or changed.

#![allow(clippy::unwrap_used)]

use sluice_core::signing::SigningSecret;
use sluice_proto::control::v1 as pb;
use sluice_testkit::{
    ADMIN_KEY, ControlHarness, assert_invalid, backends, field_violations, keyring, now_secs,
};
use sluice_tests::control::*;
use sluice_tests::headers;

const URL: &str = "https://example.com/hooks";

/// Runs a call that must fail with INVALID_ARGUMENT naming `$field`, and asserts no table
/// changed.
macro_rules! invalid {
    ($h:expr, $what:expr, $field:expr, $call:expr) => {{
        let what = $what.to_string();
        let before = counts(&$h.db).await;
        let result = $call.await;
        let status = match result {
            Ok(r) => panic!(
                "{what}: expected INVALID_ARGUMENT on {:?}, got OK {:?}",
                $field,
                r.into_inner()
            ),
            Err(status) => status,
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: expected INVALID_ARGUMENT, got {status:?}"
        );
        let violations = field_violations(&status);
        assert!(
            violations.iter().any(|(f, _)| f == $field),
            "{what}: expected a violation of {:?}, got {violations:?}",
            $field
        );
        assert!(
            violations.iter().all(|(_, d)| !d.is_empty()),
            "{what}: every violation says why: {violations:?}"
        );
        let after = counts(&$h.db).await;
        assert_eq!(
            after,
            before,
            "{what}: the database changed: {:?}",
            delta(&before, &after)
        );
        status
    }};
}

fn create(subscription: pb::Subscription) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest {
        workspace_id: String::new(),
        subscription: Some(subscription),
        secret: String::new(),
    }
}

fn valid() -> pb::Subscription {
    pb::Subscription {
        url: URL.into(),
        filters: vec!["conversation.*".into()],
        headers: headers(&[("x-tenant", "acme")]),
        description: "CRM".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_subscription_refuses_bad_input() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        // Something to not change.
        create_subscription(&mut c, "", valid()).await;

        let long_url = format!("https://example.com/{}", "a".repeat(2048));
        let url_cases: Vec<(&str, String)> = vec![
            (
                "http with allow_http=false",
                "http://example.com/hooks".into(),
            ),
            (
                "loopback http with allow_http=false",
                "http://127.0.0.1:9/x".into(),
            ),
            ("no scheme", "example.com/hooks".into()),
            ("not a URL", "not a url".into()),
            ("ftp", "ftp://example.com/x".into()),
            ("fragment", "https://example.com/x#frag".into()),
            ("no host", "https://".into()),
            ("URL over 2048 bytes", long_url),
            ("blank URL", "   ".into()),
            ("missing URL", String::new()),
            (
                "user and password in the URL",
                "https://alice:s3cr3t@example.com/hook".into(),
            ),
            ("user in the URL", "https://alice@example.com/hook".into()),
        ];
        for (what, url) in url_cases {
            invalid!(
                h,
                what,
                "subscription.url",
                c.subscriptions
                    .create_subscription(create(pb::Subscription { url, ..valid() }))
            );
        }
        // The refusal says what to do about the credentials, and never repeats them.
        let status = invalid!(
            h,
            "credentials in an http URL",
            "subscription.url",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    url: "http://alice:s3cr3t@example.com/hook".into(),
                    ..valid()
                }))
        );
        let violations = field_violations(&status);
        let (_, why) = violations
            .iter()
            .find(|(field, _)| field == "subscription.url")
            .unwrap();
        assert!(
            why.contains("credentials in URLs are not accepted"),
            "{why}"
        );
        assert!(
            !why.contains("s3cr3t") && !status.message().contains("s3cr3t"),
            "{why}"
        );

        invalid!(
            h,
            "no subscription at all",
            "subscription.url",
            c.subscriptions
                .create_subscription(pb::CreateSubscriptionRequest::default())
        );
        invalid!(
            h,
            "empty filter list",
            "subscription.filters",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    filters: vec![],
                    ..valid()
                }))
        );
        let filter_cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["conversation.*", "a..b"], "subscription.filters[1]"),
            (vec!["conversation"], "subscription.filters[0]"),
            (
                vec!["conversation.created", "billing.*", "bad name"],
                "subscription.filters[2]",
            ),
            (vec!["conv*.created"], "subscription.filters[0]"),
            (vec!["conversation.created", ""], "subscription.filters[1]"),
            (vec!["Conversation_created"], "subscription.filters[0]"),
        ];
        for (filters, field) in filter_cases {
            let what = format!("filters {filters:?}");
            let filters = filters.into_iter().map(String::from).collect();
            invalid!(
                h,
                what,
                field,
                c.subscriptions
                    .create_subscription(create(pb::Subscription { filters, ..valid() }))
            );
        }
        let too_many: Vec<String> = (0..101).map(|i| format!("family{i}.created")).collect();
        invalid!(
            h,
            "101 filters",
            "subscription.filters",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    filters: too_many,
                    ..valid()
                }))
        );

        for name in [
            "webhook-signature",
            "webhook-id",
            "host",
            "content-type",
            "user-agent",
            "Host",
            "proxy-authorization",
        ] {
            let field = format!("subscription.headers[{name:?}]");
            invalid!(
                h,
                format!("reserved header {name}"),
                field.as_str(),
                c.subscriptions
                    .create_subscription(create(pb::Subscription {
                        headers: headers(&[(name, "v")]),
                        ..valid()
                    }))
            );
        }
        for value in ["a\r\nHost: evil.example", "a\nb", "a\rb"] {
            invalid!(
                h,
                format!("header value {value:?}"),
                "subscription.headers[\"x-note\"]",
                c.subscriptions
                    .create_subscription(create(pb::Subscription {
                        headers: headers(&[("x-note", value)]),
                        ..valid()
                    }))
            );
        }
        invalid!(
            h,
            "header name with a space",
            "subscription.headers[\"x note\"]",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    headers: headers(&[("x note", "v")]),
                    ..valid()
                }))
        );
        let names: Vec<String> = (0..21).map(|i| format!("x-h{i}")).collect();
        let many = names.iter().map(|n| (n.clone(), "v".to_owned())).collect();
        invalid!(
            h,
            "21 headers",
            "subscription.headers",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    headers: many,
                    ..valid()
                }))
        );
        // Header names ignore case: the same header twice.
        let status = {
            let before = counts(&h.db).await;
            let err = c
                .subscriptions
                .create_subscription(create(pb::Subscription {
                    headers: headers(&[("X-A", "1"), ("x-a", "2")]),
                    ..valid()
                }))
                .await
                .unwrap_err();
            assert_eq!(counts(&h.db).await, before);
            err
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            field_violations(&status)
                .iter()
                .any(|(f, _)| f.starts_with("subscription.headers[")),
            "{:?}",
            field_violations(&status)
        );

        invalid!(
            h,
            "description over 2000 bytes",
            "subscription.description",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    description: "d".repeat(2001),
                    ..valid()
                }))
        );
        invalid!(
            h,
            "description with a control character",
            "subscription.description",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    description: "a\u{7}b".into(),
                    ..valid()
                }))
        );
        invalid!(
            h,
            "rate limit over 100000",
            "subscription.rate_limit_per_second",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    rate_limit_per_second: 100_001,
                    ..valid()
                }))
        );
        invalid!(
            h,
            "unknown destination type",
            "subscription.destination_type",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    destination_type: 9,
                    ..valid()
                }))
        );

        let short = SigningSecret::from_bytes(vec![1u8; 24])
            .unwrap()
            .to_whsec()
            .replace("whsec_", "");
        let too_short = format!("whsec_{}", &short[..short.len() - 8]);
        for (what, secret) in [
            ("secret without whsec_", "not-a-secret".to_owned()),
            ("raw base64 secret", short.clone()),
            ("whsec_ with an 18-byte key", too_short),
            ("whsec_ with nothing", "whsec_".to_owned()),
            ("whsec_ not base64", "whsec_!!!!not*base64".to_owned()),
        ] {
            invalid!(
                h,
                what,
                "secret",
                c.subscriptions
                    .create_subscription(pb::CreateSubscriptionRequest {
                        secret,
                        ..create(valid())
                    })
            );
        }

        // Several mistakes: every one is named in one answer (the README's example).
        let status = invalid!(
            h,
            "ftp URL and a..b filter",
            "subscription.url",
            c.subscriptions
                .create_subscription(create(pb::Subscription {
                    url: "ftp://x".into(),
                    filters: vec!["a..b".into()],
                    ..Default::default()
                }))
        );
        assert_invalid(&status, "subscription.filters[0]");
        let status = invalid!(
            h,
            "four mistakes",
            "subscription.url",
            c.subscriptions
                .create_subscription(pb::CreateSubscriptionRequest {
                    workspace_id: String::new(),
                    subscription: Some(pb::Subscription {
                        url: "http://example.com".into(),
                        filters: vec![],
                        headers: headers(&[("host", "x")]),
                        rate_limit_per_second: 1_000_000,
                        ..Default::default()
                    }),
                    secret: "nope".into(),
                })
        );
        for field in [
            "subscription.filters",
            "subscription.headers[\"host\"]",
            "subscription.rate_limit_per_second",
            "secret",
        ] {
            assert_invalid(&status, field);
        }
        h.stop().await;
    }
}

/// The largest accepted values are accepted: the limits are inclusive.
#[tokio::test(flavor = "multi_thread")]
async fn limits_are_inclusive() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let url = format!("https://example.com/{}", "a".repeat(2048 - 20));
        assert_eq!(url.len(), 2048);
        let names: Vec<String> = (0..20).map(|i| format!("x-h{i}")).collect();
        let filters: Vec<String> = (0..100).map(|i| format!("family{i}.created")).collect();
        let secret = SigningSecret::from_bytes(vec![3u8; 64]).unwrap().to_whsec();
        let r = c
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    url: url.clone(),
                    filters: filters.clone(),
                    headers: names
                        .iter()
                        .map(|n| (n.clone(), "v".repeat(1024)))
                        .collect(),
                    description: "d".repeat(2000),
                    rate_limit_per_second: 100_000,
                    ..Default::default()
                }),
                secret: secret.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.secret, secret);
        let sub = r.subscription.unwrap();
        assert_eq!(
            (sub.url.len(), sub.filters.len(), sub.headers.len()),
            (2048, 100, 20)
        );
        assert_eq!(
            (sub.description.len(), sub.rate_limit_per_second),
            (2000, 100_000)
        );
        let stored = stored_subscription(&h.db, &sub.id).await.unwrap();
        assert_eq!(
            keyring().open(&stored.secret).unwrap(),
            secret,
            "stored sealed"
        );

        let min_secret = SigningSecret::from_bytes(vec![4u8; 24]).unwrap().to_whsec();
        let r = c
            .subscriptions
            .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                id: sub.id.clone(),
                secret: min_secret.clone(),
                grace_period: secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.secret, min_secret);
        let expire = r.previous_secret_expire_time.unwrap();
        assert!(
            (expire.seconds - (now_secs() + 7 * 24 * 3600)).abs() < 300,
            "{expire:?}"
        );

        let name = format!("a.{}", "b".repeat(126));
        assert_eq!(name.len(), 128);
        let et = c
            .event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: name.clone(),
                    description: "e".repeat(2000),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert_eq!(et.name, name);

        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let w = admin
            .workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: "w".repeat(200),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        assert_eq!(w.display_name.len(), 200);
        admin
            .workspaces
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: ws,
                display_name: "k".repeat(200),
            })
            .await
            .unwrap();
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn update_and_rotate_refuse_bad_input_and_change_nothing() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let (sub, secret) = create_subscription(&mut c, "", valid()).await;
        let stored = stored_subscription(&h.db, &sub.id).await.unwrap();
        let update = |s: pb::Subscription, paths: &[&str]| pb::UpdateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(pb::Subscription {
                id: sub.id.clone(),
                ..s
            }),
            update_mask: mask(paths),
        };

        let cases: Vec<(&str, pb::UpdateSubscriptionRequest, &str)> = vec![
            (
                "unknown mask path",
                update(valid(), &["secret"]),
                "update_mask",
            ),
            (
                "read-only mask path state",
                update(valid(), &["state"]),
                "update_mask",
            ),
            (
                "read-only mask path id",
                update(valid(), &["id"]),
                "update_mask",
            ),
            (
                "mask with a typo next to a good path",
                update(valid(), &["description", "descripton"]),
                "update_mask",
            ),
            ("empty mask", update(valid(), &[]), "update_mask"),
            (
                "no mask",
                pb::UpdateSubscriptionRequest {
                    update_mask: None,
                    ..update(valid(), &[])
                },
                "update_mask",
            ),
            (
                "http URL",
                update(
                    pb::Subscription {
                        url: "http://example.com/x".into(),
                        ..valid()
                    },
                    &["url"],
                ),
                "subscription.url",
            ),
            (
                "credentials in the URL",
                update(
                    pb::Subscription {
                        url: "https://alice:s3cr3t@example.com/x".into(),
                        ..valid()
                    },
                    &["url"],
                ),
                "subscription.url",
            ),
            (
                "empty URL",
                update(
                    pb::Subscription {
                        url: String::new(),
                        ..valid()
                    },
                    &["url"],
                ),
                "subscription.url",
            ),
            (
                "empty filters",
                update(
                    pb::Subscription {
                        filters: vec![],
                        ..valid()
                    },
                    &["filters"],
                ),
                "subscription.filters",
            ),
            (
                "bad second filter",
                update(
                    pb::Subscription {
                        filters: vec!["a.b".into(), "x".into()],
                        ..valid()
                    },
                    &["filters"],
                ),
                "subscription.filters[1]",
            ),
            (
                "reserved header",
                update(
                    pb::Subscription {
                        headers: headers(&[("webhook-signature", "v1,x")]),
                        ..valid()
                    },
                    &["headers"],
                ),
                "subscription.headers[\"webhook-signature\"]",
            ),
            (
                "long description",
                update(
                    pb::Subscription {
                        description: "d".repeat(2001),
                        ..valid()
                    },
                    &["description"],
                ),
                "subscription.description",
            ),
            (
                "rate limit",
                update(
                    pb::Subscription {
                        rate_limit_per_second: 100_001,
                        ..valid()
                    },
                    &["rate_limit_per_second"],
                ),
                "subscription.rate_limit_per_second",
            ),
            (
                "missing id",
                pb::UpdateSubscriptionRequest {
                    workspace_id: String::new(),
                    subscription: Some(valid()),
                    update_mask: mask(&["description"]),
                },
                "subscription.id",
            ),
            (
                "missing subscription",
                pb::UpdateSubscriptionRequest {
                    workspace_id: String::new(),
                    subscription: None,
                    update_mask: mask(&["description"]),
                },
                "subscription.id",
            ),
        ];
        for (what, request, field) in cases {
            invalid!(h, what, field, c.subscriptions.update_subscription(request));
            assert_eq!(
                get_subscription(&mut c, "", &sub.id).await,
                sub,
                "{what}: the subscription changed"
            );
        }

        let rotate = |grace: Option<prost_types::Duration>, secret: &str| {
            pb::RotateSubscriptionSecretRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
                secret: secret.into(),
                grace_period: grace,
            }
        };
        let nanos = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        let rotate_cases = [
            ("negative grace", rotate(secs(-1), ""), "grace_period"),
            (
                "negative nanos grace",
                rotate(nanos(0, -1), ""),
                "grace_period",
            ),
            (
                "grace over 7 days",
                rotate(secs(7 * 24 * 3600 + 1), ""),
                "grace_period",
            ),
            (
                "grace of a year",
                rotate(secs(365 * 24 * 3600), ""),
                "grace_period",
            ),
            ("bad secret", rotate(None, "secret"), "secret"),
            ("short secret", rotate(None, "whsec_AAAA"), "secret"),
        ];
        for (what, request, field) in rotate_cases {
            invalid!(
                h,
                what,
                field,
                c.subscriptions.rotate_subscription_secret(request)
            );
            let revealed = reveal(&mut c, "", &sub.id).await;
            assert_eq!(revealed.secret, secret, "{what}: the secret changed");
            assert!(revealed.previous_secret.is_empty(), "{what}: {revealed:?}");
        }

        invalid!(
            h,
            "disable message over 2000 bytes",
            "message",
            c.subscriptions
                .disable_subscription(pb::DisableSubscriptionRequest {
                    workspace_id: String::new(),
                    id: sub.id.clone(),
                    message: "m".repeat(2001),
                })
        );
        assert_eq!(get_subscription(&mut c, "", &sub.id).await, sub);
        assert_eq!(
            stored_subscription(&h.db, &sub.id).await.unwrap(),
            stored,
            "the stored row changed"
        );
        h.stop().await;
    }
}

/// Fields outside the mask are not read, so they are not validated either.
#[tokio::test(flavor = "multi_thread")]
async fn update_validates_only_masked_fields() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let (sub, _) = create_subscription(&mut c, "", valid()).await;
        let updated = c
            .subscriptions
            .update_subscription(pb::UpdateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    id: sub.id.clone(),
                    description: "new".into(),
                    url: "ftp://nope".into(),
                    filters: vec![],
                    headers: headers(&[("host", "x")]),
                    rate_limit_per_second: 9_999_999,
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap();
        assert_eq!(
            updated,
            pb::Subscription {
                description: "new".into(),
                update_time: updated.update_time,
                ..sub
            }
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_types_refuse_bad_input() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let et = c
            .event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    description: "original".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        let create = |e: pb::EventType| pb::CreateEventTypeRequest {
            workspace_id: String::new(),
            event_type: Some(e),
        };
        let named = |name: &str| pb::EventType {
            name: name.into(),
            ..Default::default()
        };
        let long = "a.".repeat(100);
        for name in [
            "conversation",
            "a..b",
            "Conversation_created",
            "",
            "a.b.c.d.e.f",
            "conversation created",
            ".a.b",
            "1a.b",
            "caf\u{e9}.created",
            &long,
        ] {
            invalid!(
                h,
                format!("event name {name:?}"),
                "event_type.name",
                c.event_types.create_event_type(create(named(name)))
            );
        }
        let two_hundred = format!("a.{}", "b".repeat(198));
        invalid!(
            h,
            "200-char event name",
            "event_type.name",
            c.event_types.create_event_type(create(named(&two_hundred)))
        );
        invalid!(
            h,
            "no event type",
            "event_type.name",
            c.event_types
                .create_event_type(pb::CreateEventTypeRequest::default())
        );
        invalid!(
            h,
            "long description",
            "event_type.description",
            c.event_types.create_event_type(create(pb::EventType {
                description: "d".repeat(2001),
                ..named("a.b")
            }))
        );
        invalid!(
            h,
            "version over 1000",
            "event_type.version",
            c.event_types.create_event_type(create(pb::EventType {
                version: 1001,
                ..named("a.b")
            }))
        );

        let update = |e: pb::EventType, paths: &[&str]| pb::UpdateEventTypeRequest {
            workspace_id: String::new(),
            event_type: Some(e),
            update_mask: mask(paths),
        };
        let cases = [
            (
                "mask names the name",
                update(named("conversation.created"), &["name"]),
                "update_mask",
            ),
            (
                "mask names archived",
                update(named("conversation.created"), &["archived"]),
                "update_mask",
            ),
            (
                "empty mask",
                update(named("conversation.created"), &[]),
                "update_mask",
            ),
            (
                "long description",
                update(
                    pb::EventType {
                        description: "d".repeat(2001),
                        ..named("conversation.created")
                    },
                    &["description"],
                ),
                "event_type.description",
            ),
        ];
        for (what, request, field) in cases {
            invalid!(h, what, field, c.event_types.update_event_type(request));
        }
        invalid!(
            h,
            "get by a bad name",
            "name",
            c.event_types.get_event_type(pb::GetEventTypeRequest {
                workspace_id: String::new(),
                name: "conversation".into()
            })
        );
        invalid!(
            h,
            "archive by a bad name",
            "name",
            c.event_types
                .archive_event_type(pb::ArchiveEventTypeRequest {
                    workspace_id: String::new(),
                    name: "a..b".into()
                })
        );
        let now = c
            .event_types
            .get_event_type(pb::GetEventTypeRequest {
                workspace_id: String::new(),
                name: "conversation.created".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert_eq!(now, et, "the event type changed");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_and_keys_refuse_bad_input() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (ws, _key) = h.workspace_with_key("Tideflow").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let original = admin
            .workspaces
            .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        let named = |name: &str| pb::CreateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                display_name: name.into(),
                ..Default::default()
            }),
        };
        let long = "w".repeat(201);
        for name in ["", "   ", "tab\there", long.as_str()] {
            invalid!(
                h,
                format!("display name {name:?}"),
                "workspace.display_name",
                admin.workspaces.create_workspace(named(name))
            );
        }
        invalid!(
            h,
            "no workspace",
            "workspace.display_name",
            admin
                .workspaces
                .create_workspace(pb::CreateWorkspaceRequest { workspace: None })
        );

        let update = |name: &str, paths: &[&str]| pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: ws.clone(),
                display_name: name.into(),
                ..Default::default()
            }),
            update_mask: mask(paths),
        };
        let cases = [
            (
                "oversized name",
                update(&long, &["display_name"]),
                "workspace.display_name",
            ),
            (
                "empty name",
                update("", &["display_name"]),
                "workspace.display_name",
            ),
            ("unknown mask path", update("New", &["id"]), "update_mask"),
            ("empty mask", update("New", &[]), "update_mask"),
        ];
        for (what, request, field) in cases {
            invalid!(h, what, field, admin.workspaces.update_workspace(request));
            let now = admin
                .workspaces
                .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
                .await
                .unwrap()
                .into_inner()
                .workspace
                .unwrap();
            assert_eq!(now, original, "{what}: the workspace changed");
        }

        let key = |workspace_id: &str, name: &str| pb::CreateApiKeyRequest {
            workspace_id: workspace_id.into(),
            display_name: name.into(),
        };
        invalid!(
            h,
            "key without a name",
            "display_name",
            admin.workspaces.create_api_key(key(&ws, ""))
        );
        invalid!(
            h,
            "key with a long name",
            "display_name",
            admin.workspaces.create_api_key(key(&ws, &long))
        );
        invalid!(
            h,
            "key for a malformed workspace",
            "workspace_id",
            admin.workspaces.create_api_key(key("wrk_nope", "ci"))
        );
        invalid!(
            h,
            "key for no workspace",
            "workspace_id",
            admin.workspaces.create_api_key(key("", "ci"))
        );
        invalid!(
            h,
            "keys of a malformed workspace",
            "workspace_id",
            admin.workspaces.list_api_keys(pb::ListApiKeysRequest {
                workspace_id: "nope".into(),
                ..Default::default()
            })
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ids_are_invalid_arguments() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let mut c = h.clients(Some(&key)).await;
        let (sub, _) = create_subscription(&mut c, "", valid()).await;
        let upper = sub.id.to_uppercase().replace("SUB_", "sub_");
        let other_kind = ws.clone();
        let bad_ids = [
            "",
            "nope",
            "sub_",
            "sub_123",
            upper.as_str(),
            other_kind.as_str(),
            "sub_01hq3k8w0y5x2v7n4m6p9r1t3s; DROP TABLE",
        ];
        for id in bad_ids {
            let id = id.to_owned();
            let ws_ = String::new();
            invalid!(
                h,
                format!("GetSubscription {id:?}"),
                "id",
                c.subscriptions
                    .get_subscription(pb::GetSubscriptionRequest {
                        workspace_id: ws_.clone(),
                        id: id.clone()
                    })
            );
            invalid!(
                h,
                format!("DeleteSubscription {id:?}"),
                "id",
                c.subscriptions
                    .delete_subscription(pb::DeleteSubscriptionRequest {
                        workspace_id: ws_.clone(),
                        id: id.clone()
                    })
            );
            invalid!(
                h,
                format!("EnableSubscription {id:?}"),
                "id",
                c.subscriptions
                    .enable_subscription(pb::EnableSubscriptionRequest {
                        workspace_id: ws_.clone(),
                        id: id.clone()
                    })
            );
            invalid!(
                h,
                format!("DisableSubscription {id:?}"),
                "id",
                c.subscriptions
                    .disable_subscription(pb::DisableSubscriptionRequest {
                        workspace_id: ws_.clone(),
                        id: id.clone(),
                        message: String::new(),
                    })
            );
            invalid!(
                h,
                format!("RevealSubscriptionSecret {id:?}"),
                "id",
                c.subscriptions
                    .reveal_subscription_secret(pb::RevealSubscriptionSecretRequest {
                        workspace_id: ws_.clone(),
                        id: id.clone(),
                    })
            );
            invalid!(
                h,
                format!("RotateSubscriptionSecret {id:?}"),
                "id",
                c.subscriptions
                    .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                        id: id.clone(),
                        ..Default::default()
                    })
            );
        }
        for id in [
            "",
            "nope",
            "wrk_",
            "wrk_123",
            "sub_01hq3k8w0y5x2v7n4m6p9r1t3s",
        ] {
            invalid!(
                h,
                format!("GetWorkspace {id:?}"),
                "id",
                admin
                    .workspaces
                    .get_workspace(pb::GetWorkspaceRequest { id: id.into() })
            );
            invalid!(
                h,
                format!("DeleteWorkspace {id:?}"),
                "id",
                admin
                    .workspaces
                    .delete_workspace(pb::DeleteWorkspaceRequest { id: id.into() })
            );
        }
        for id in [
            "",
            "nope",
            "key_",
            "key_123",
            "sk_test_admin_key_0123456789",
        ] {
            invalid!(
                h,
                format!("RevokeApiKey {id:?}"),
                "id",
                admin
                    .workspaces
                    .revoke_api_key(pb::RevokeApiKeyRequest { id: id.into() })
            );
        }
        assert_eq!(get_subscription(&mut c, "", &sub.id).await, sub);
        h.stop().await;
    }
}

/// Update requests carry the id inside the resource, so a malformed one is reported at
/// `subscription.id`, `workspace.id` or `event_type.name`, as an empty subscription id is
/// (AIP-193: the field path is the request's).
#[tokio::test(flavor = "multi_thread")]
async fn update_with_malformed_resource_id_names_the_nested_field() {
    let mut problems = Vec::new();
    for backend in backends() {
        let backend_label = backend.label();
        let h = ControlHarness::start(&backend, false, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let mut c = h.clients(Some(&key)).await;
        let mut expect = |what: &str, status: tonic::Status, field: &str| {
            let violations = field_violations(&status);
            if status.code() != tonic::Code::InvalidArgument
                || !violations.iter().any(|(f, _)| f == field)
            {
                problems.push(format!("{backend_label} {what}: expected INVALID_ARGUMENT naming {field:?}, got {:?} {violations:?}", status.code()));
            }
        };
        let before = counts(&h.db).await;
        let status = c
            .subscriptions
            .update_subscription(pb::UpdateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    id: "nope".into(),
                    description: "x".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            })
            .await
            .unwrap_err();
        expect(
            "UpdateSubscription with subscription.id \"nope\"",
            status,
            "subscription.id",
        );
        let status = admin
            .workspaces
            .update_workspace(pb::UpdateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    id: "nope".into(),
                    display_name: "x".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            })
            .await
            .unwrap_err();
        expect(
            "UpdateWorkspace with workspace.id \"nope\"",
            status,
            "workspace.id",
        );
        let status = c
            .event_types
            .update_event_type(pb::UpdateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation".into(),
                    description: "x".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            })
            .await
            .unwrap_err();
        expect(
            "UpdateEventType with event_type.name \"conversation\"",
            status,
            "event_type.name",
        );
        assert_eq!(counts(&h.db).await, before);
        h.stop().await;
    }
    assert!(
        problems.is_empty(),
        "BUG: update methods name a field the request does not have \
             (subscription.rs modify -> check_id(.., \"id\", ..); workspace.rs find -> \"id\"; \
             event_type.rs find -> \"name\"):\n{}",
        problems.join("\n")
    );
}

/// UpdateEventType, like UpdateSubscription, reads only the fields its mask names (AIP-134):
/// a value outside the mask must neither be stored nor refused.
#[tokio::test(flavor = "multi_thread")]
async fn event_type_update_ignores_fields_outside_the_mask() {
    let mut problems = Vec::new();
    for backend in backends() {
        let backend_label = backend.label();
        let h = ControlHarness::start(&backend, false, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let et = c
            .event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    description: "original".into(),
                    version: 3,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        let result = c
            .event_types
            .update_event_type(pb::UpdateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    description: "new".into(),
                    // Not in the mask, and out of range: must be ignored.
                    version: 5000,
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            })
            .await;
        match result {
            Ok(r) => {
                let updated = r.into_inner().event_type.unwrap();
                assert_eq!(
                    updated,
                    pb::EventType {
                        description: "new".into(),
                        update_time: updated.update_time,
                        ..et
                    }
                );
            }
            Err(status) => problems.push(format!(
                "{backend_label}: {:?} {:?}",
                status.code(),
                field_violations(&status)
            )),
        }
        h.stop().await;
    }
    assert!(
        problems.is_empty(),
        "BUG: UpdateEventType with update_mask [description] refused a field outside the mask \
         (crates/control/src/event_type.rs update_event_type validates version, description, json_schema and \
         example whatever the mask says):\n{}",
        problems.join("\n")
    );
}

/// A duration of `ms` milliseconds (negative ones too).
fn millis(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_policies_and_payload_shapes_refuse_bad_input() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, false, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let policy = |p: pb::RetryPolicy| pb::Subscription {
            retry_policy: Some(p),
            ..valid()
        };
        let delays = |ms: &[i64]| ms.iter().map(|d| millis(*d)).collect::<Vec<_>>();
        let p = pb::RetryPolicy::default;
        let week_and_a_bit = 7 * 24 * 3600 * 1000 + 1;
        let cases: Vec<(&str, pb::Subscription, &str)> = vec![
            (
                "a negative delay",
                policy(pb::RetryPolicy {
                    schedule: delays(&[200, -1]),
                    ..p()
                }),
                "subscription.retry_policy.schedule[1]",
            ),
            (
                "a zero delay",
                policy(pb::RetryPolicy {
                    schedule: delays(&[0]),
                    ..p()
                }),
                "subscription.retry_policy.schedule[0]",
            ),
            (
                "a delay over 7 days",
                policy(pb::RetryPolicy {
                    schedule: delays(&[200, 400, week_and_a_bit]),
                    ..p()
                }),
                "subscription.retry_policy.schedule[2]",
            ),
            (
                "a delay of part of a millisecond",
                policy(pb::RetryPolicy {
                    schedule: vec![prost_types::Duration {
                        seconds: 1,
                        nanos: 500,
                    }],
                    ..p()
                }),
                "subscription.retry_policy.schedule[0]",
            ),
            (
                "51 delays",
                policy(pb::RetryPolicy {
                    schedule: delays(&[200; 51]),
                    ..p()
                }),
                "subscription.retry_policy.schedule",
            ),
            (
                "a timeout under 1 s",
                policy(pb::RetryPolicy {
                    request_timeout: Some(millis(500)),
                    ..p()
                }),
                "subscription.retry_policy.request_timeout",
            ),
            (
                "a timeout over 120 s",
                policy(pb::RetryPolicy {
                    request_timeout: Some(millis(121_000)),
                    ..p()
                }),
                "subscription.retry_policy.request_timeout",
            ),
            (
                "101 attempts",
                policy(pb::RetryPolicy {
                    max_attempts: 101,
                    ..p()
                }),
                "subscription.retry_policy.max_attempts",
            ),
            (
                "max_attempts and max_age",
                policy(pb::RetryPolicy {
                    max_attempts: 3,
                    max_age: Some(millis(60_000)),
                    ..p()
                }),
                "subscription.retry_policy.max_age",
            ),
            (
                "a zero max_age",
                policy(pb::RetryPolicy {
                    max_age: Some(millis(0)),
                    ..p()
                }),
                "subscription.retry_policy.max_age",
            ),
            (
                "a negative disable_after",
                policy(pb::RetryPolicy {
                    disable_after: Some(millis(-5_000)),
                    ..p()
                }),
                "subscription.retry_policy.disable_after",
            ),
            (
                "an unknown payload shape",
                pb::Subscription {
                    payload_shape: 9,
                    ..valid()
                },
                "subscription.payload_shape",
            ),
        ];
        for (what, subscription, field) in cases {
            invalid!(
                h,
                what,
                field,
                c.subscriptions.create_subscription(create(subscription))
            );
        }

        // Updates: the stored subscription does not change.
        let (sub, _) = create_subscription(
            &mut c,
            "",
            policy(pb::RetryPolicy {
                schedule: delays(&[200]),
                max_attempts: 4,
                ..p()
            }),
        )
        .await;
        let stored = stored_subscription(&h.db, &sub.id).await;
        let update = |s: pb::Subscription, paths: &[&str]| pb::UpdateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(pb::Subscription {
                id: sub.id.clone(),
                ..s
            }),
            update_mask: mask(paths),
        };
        let cases = [
            (
                "a bad delay, by field",
                update(
                    policy(pb::RetryPolicy {
                        schedule: delays(&[-200]),
                        ..p()
                    }),
                    &["retry_policy.schedule"],
                ),
                "subscription.retry_policy.schedule[0]",
            ),
            (
                "max_age while max_attempts is stored",
                update(
                    policy(pb::RetryPolicy {
                        max_age: Some(millis(60_000)),
                        ..p()
                    }),
                    &["retry_policy.max_age"],
                ),
                "subscription.retry_policy.max_age",
            ),
            (
                "an unknown policy field",
                update(policy(p()), &["retry_policy.jitter"]),
                "update_mask",
            ),
            (
                "an unknown payload shape",
                update(
                    pb::Subscription {
                        payload_shape: -1,
                        ..valid()
                    },
                    &["payload_shape"],
                ),
                "subscription.payload_shape",
            ),
        ];
        for (what, request, field) in cases {
            invalid!(h, what, field, c.subscriptions.update_subscription(request));
            assert_eq!(
                stored_subscription(&h.db, &sub.id).await,
                stored,
                "{what}: the subscription changed"
            );
        }

        // Workspaces: the same rules under `workspace.retry_policy`.
        invalid!(
            h,
            "a workspace with a zero delay",
            "workspace.retry_policy.schedule[0]",
            admin
                .workspaces
                .create_workspace(pb::CreateWorkspaceRequest {
                    workspace: Some(pb::Workspace {
                        display_name: "Bad policy".into(),
                        retry_policy: Some(pb::RetryPolicy {
                            schedule: delays(&[0]),
                            ..p()
                        }),
                        ..Default::default()
                    }),
                })
        );
        let update = |policy: pb::RetryPolicy, paths: &[&str]| pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: ws.clone(),
                retry_policy: Some(policy),
                ..Default::default()
            }),
            update_mask: mask(paths),
        };
        for (what, request, field) in [
            (
                "a workspace timeout of zero",
                update(
                    pb::RetryPolicy {
                        request_timeout: Some(millis(0)),
                        ..p()
                    },
                    &["retry_policy"],
                ),
                "workspace.retry_policy.request_timeout",
            ),
            (
                "an unknown workspace policy field",
                update(p(), &["retry_policy.nope"]),
                "update_mask",
            ),
        ] {
            invalid!(h, what, field, admin.workspaces.update_workspace(request));
        }
        let workspace = admin
            .workspaces
            .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        assert_eq!(workspace.retry_policy, None);

        // Publish quotas.
        let quota = |events_per_second, burst, unlimited| pb::PublishQuota {
            events_per_second,
            burst,
            unlimited,
        };
        let create_with = |q: pb::PublishQuota| pb::CreateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                display_name: "Bad quota".into(),
                publish_quota: Some(q),
                ..Default::default()
            }),
        };
        for (what, q, field) in [
            (
                "a quota of zero events a second",
                quota(0, 10, false),
                "workspace.publish_quota.events_per_second",
            ),
            (
                "a quota over a million a second",
                quota(1_000_001, 0, false),
                "workspace.publish_quota.events_per_second",
            ),
            (
                "a burst over a million",
                quota(10, 1_000_001, false),
                "workspace.publish_quota.burst",
            ),
            (
                "unlimited with a rate",
                quota(10, 0, true),
                "workspace.publish_quota.events_per_second",
            ),
            (
                "unlimited with a burst",
                quota(0, 10, true),
                "workspace.publish_quota.burst",
            ),
        ] {
            invalid!(
                h,
                what,
                field,
                admin.workspaces.create_workspace(create_with(q))
            );
            invalid!(
                h,
                format!("{what} (update)"),
                field,
                admin
                    .workspaces
                    .update_workspace(pb::UpdateWorkspaceRequest {
                        workspace: Some(pb::Workspace {
                            id: ws.clone(),
                            publish_quota: Some(q),
                            ..Default::default()
                        }),
                        update_mask: mask(&["publish_quota"]),
                    })
            );
        }
        // The limits are inclusive, and a quota outside the mask is not looked at.
        let renamed = pb::Workspace {
            id: ws.clone(),
            display_name: "Renamed".into(),
            publish_quota: Some(quota(0, 0, false)),
            ..Default::default()
        };
        let set = update_workspace(&mut admin, renamed, &["display_name"])
            .await
            .unwrap();
        assert_eq!(set.publish_quota, None);
        let most = quota(1_000_000, 1_000_000, false);
        let limits = pb::Workspace {
            id: ws.clone(),
            publish_quota: Some(most),
            ..Default::default()
        };
        let set = update_workspace(&mut admin, limits, &["publish_quota"])
            .await
            .unwrap();
        assert_eq!(set.publish_quota, Some(most));
        h.stop().await;
    }
}
