//! Endpoint authentication through both planes: basic and bearer credentials reach the
//! receiver as the `Authorization` header, are never returned by Get or List, nor shown in
//! attempt URLs, and bad credentials are INVALID_ARGUMENT naming the field.

#![allow(clippy::unwrap_used)]

use sea_orm::{ActiveModelTrait as _, IntoActiveModel as _, Set};
use sluice_proto::control::v1 as pb;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, with_id};
use sluice_testkit::{WAIT, assert_invalid};
use sluice_tests::control::{get_subscription, stored_subscription, update_subscription};
use sluice_tests::delivery::*;

const PASSWORD: &str = "s3cr3t-pa55";
const TOKEN: &str = "tok_9f8e7d6c5b4a";

fn basic() -> pb::EndpointAuth {
    pb::EndpointAuth {
        method: Some(pb::endpoint_auth::Method::Basic(pb::BasicAuth {
            username: "alice".into(),
            password: PASSWORD.into(),
        })),
    }
}

fn bearer(token: &str) -> pb::EndpointAuth {
    pb::EndpointAuth {
        method: Some(pb::endpoint_auth::Method::Bearer(pb::BearerAuth {
            token: token.into(),
        })),
    }
}

async fn set_auth(
    c: &mut sluice_testkit::Clients,
    id: &str,
    auth: Option<pb::EndpointAuth>,
) -> pb::Subscription {
    update_subscription(
        c,
        pb::Subscription {
            id: id.to_owned(),
            auth,
            ..Default::default()
        },
        &["auth"],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_and_bearer_credentials_reach_the_endpoint_and_are_never_shown() {
    on_each_backend(PlaneOptions::default(), auth).await;
}

async fn auth(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Auth").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::ok().await;
    let (sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            auth: Some(basic()),
            ..webhook(&receiver.url("/hook"), &["conversation.*"])
        },
    )
    .await;
    assert_eq!(sub.auth_type, pb::EndpointAuthType::Basic as i32);
    assert!(sub.auth.is_none());
    let shown = format!(
        "{sub:?} {:?} {:?}",
        get_subscription(&mut c, "", &sub.id).await,
        c.subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(
        !shown.contains(PASSWORD) && !shown.contains("YWxpY2"),
        "{shown}"
    );
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    let first = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    let got = receiver.wait_for(1, WAIT).await;
    let r = with_id(&got, &first.message_id)[0];
    // RFC 7617: base64("alice:s3cr3t-pa55").
    assert_eq!(r.header("authorization"), "Basic YWxpY2U6czNjcjN0LXBhNTU=");
    let attempts = eventually("the attempt in the log", WAIT, async || {
        let attempts = log.attempts_to(&sub.id).await;
        (!attempts.is_empty()).then_some(attempts)
    })
    .await;
    let logged = format!("{attempts:?}");
    assert!(
        !logged.contains(PASSWORD) && !logged.contains("YWxpY2"),
        "{logged}"
    );

    // Bearer instead.
    let updated = set_auth(&mut c, &sub.id, Some(bearer(TOKEN))).await;
    assert_eq!(updated.auth_type, pb::EndpointAuthType::Bearer as i32);
    assert!(!format!("{updated:?}").contains(TOKEN));
    planes.config_synced().await;
    let second = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    let got = receiver.wait_for(2, WAIT).await;
    let r = with_id(&got, &second.message_id)[0];
    assert_eq!(r.header("authorization"), format!("Bearer {TOKEN}"));

    // Removed: no Authorization header at all.
    let cleared = set_auth(&mut c, &sub.id, None).await;
    assert_eq!(cleared.auth_type, pb::EndpointAuthType::None as i32);
    planes.config_synced().await;
    let third = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":3}"#)).await;
    let got = receiver.wait_for(3, WAIT).await;
    let r = with_id(&got, &third.message_id)[0];
    assert!(r.headers.get("authorization").is_none());

    // Bad credentials name their field, and nothing changes.
    let bad_cases = [
        (
            pb::EndpointAuth {
                method: Some(pb::endpoint_auth::Method::Basic(pb::BasicAuth {
                    username: "al:ice".into(),
                    password: "x".into(),
                })),
            },
            "subscription.auth.basic.username",
        ),
        (
            pb::EndpointAuth {
                method: Some(pb::endpoint_auth::Method::Basic(pb::BasicAuth {
                    username: "alice".into(),
                    password: String::new(),
                })),
            },
            "subscription.auth.basic.password",
        ),
        (bearer("has space"), "subscription.auth.bearer.token"),
        (bearer(""), "subscription.auth.bearer.token"),
    ];
    for (auth, field) in bad_cases {
        let status = c
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    auth: Some(auth),
                    ..webhook(&receiver.url("/bad"), &["*"])
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid(&status, field);
        assert!(!status.message().contains("al:ice"));
    }
    let status = c
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                auth: Some(bearer(TOKEN)),
                headers: sluice_tests::headers(&[("Authorization", "Bearer other")]),
                ..webhook(&receiver.url("/bad"), &["*"])
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "subscription.auth");
    let status = c
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(webhook("https://alice:s3cr3t@example.com/hook", &["*"])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "subscription.url");
    assert!(status.to_string().contains("`auth`"), "{status:?}");

    // A URL with credentials stored before they were refused: Get shows it without them,
    // and so does the attempt log.
    let (legacy, _) = subscribe(
        &mut c,
        webhook(&receiver.url("/legacy"), &["conversation.*"]),
    )
    .await;
    let with_user = receiver
        .url("/legacy")
        .replace("http://", "http://bob:hunter2@");
    let mut row = stored_subscription(&planes.control_db, &legacy.id)
        .await
        .unwrap()
        .into_active_model();
    row.url = Set(with_user);
    row.update(&planes.control_db).await.unwrap();
    let shown = get_subscription(&mut c, "", &legacy.id).await;
    assert_eq!(shown.url, receiver.url("/legacy"));
    let listed = format!(
        "{:?}",
        c.subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(!listed.contains("hunter2"), "{listed}");
    // Another change through the API sends the row to the data plane.
    set_auth(&mut c, &legacy.id, None).await;
    planes.config_synced().await;
    let fourth = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":4}"#)).await;
    let attempt = eventually("the legacy attempt in the log", WAIT, async || {
        log.attempts_of(&fourth.message_id)
            .await
            .into_iter()
            .find(|a| a.subscription_id == legacy.id)
    })
    .await;
    assert!(!attempt.url.contains("hunter2"), "{attempt:?}");
    assert_eq!(attempt.url, receiver.url("/legacy"));
    // The user info is sent as it always meant: HTTP Basic, base64("bob:hunter2").
    let got = receiver.wait_for(5, WAIT).await;
    let legacy_request = with_id(&got, &fourth.message_id)
        .into_iter()
        .find(|r| r.path == "/legacy")
        .unwrap();
    assert_eq!(
        legacy_request.header("authorization"),
        "Basic Ym9iOmh1bnRlcjI="
    );
}

const CLIENT_SECRET: &str = "cs_7b1f0e9d8c";

fn oauth2(token_url: &str, client_secret: &str) -> pb::EndpointAuth {
    pb::EndpointAuth {
        method: Some(pb::endpoint_auth::Method::Oauth2ClientCredentials(
            pb::OAuth2ClientCredentials {
                token_url: token_url.into(),
                client_id: "client-e2e".into(),
                client_secret: client_secret.into(),
                scope: "hooks".into(),
                audience: String::new(),
                client_authentication: pb::OAuth2ClientAuthentication::Basic as i32,
            },
        )),
    }
}

fn mutual_tls(cert: &str, key: &str, ca: &str) -> pb::EndpointAuth {
    pb::EndpointAuth {
        method: Some(pb::endpoint_auth::Method::MutualTls(pb::MutualTls {
            certificate_pem: cert.into(),
            private_key_pem: key.into(),
            ca_certificates_pem: ca.into(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_and_mtls_credentials_are_used_and_never_shown() {
    on_each_backend(PlaneOptions::default(), oauth2_and_mtls).await;
}

async fn oauth2_and_mtls(planes: &mut Planes) {
    use sluice_testkit::receiver::Reply;
    use sluice_testkit::tls::{TestCa, Validity};

    let (_, key) = planes.workspace_with_key("Trust").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let tokens = Receiver::start(
        Vec::new(),
        Reply::status(200)
            .body(r#"{"access_token":"tok-e2e","token_type":"bearer","expires_in":3600}"#),
    )
    .await;
    let endpoint = Receiver::ok().await;
    let (oauth_sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            auth: Some(oauth2(&tokens.url("/token"), CLIENT_SECRET)),
            ..webhook(&endpoint.url("/oauth"), &["conversation.*"])
        },
    )
    .await;
    assert_eq!(
        oauth_sub.auth_type,
        pb::EndpointAuthType::Oauth2ClientCredentials as i32
    );

    let server_ca = TestCa::new();
    let client_ca = TestCa::new();
    let client = client_ca.issue_client("sluice");
    let tls = Receiver::start_tls(
        Vec::new(),
        Reply::status(200),
        server_ca
            .issue(&["localhost"], Validity::Current)
            .server_config_requiring_client_certs(&[b"h2", b"http/1.1"], &client_ca),
    )
    .await;
    let (tls_sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            auth: Some(mutual_tls(
                &client.cert_pem,
                &client.key_pem,
                &server_ca.cert_pem,
            )),
            ..webhook(&tls.url_by_name("/mtls"), &["conversation.*"])
        },
    )
    .await;
    assert_eq!(tls_sub.auth_type, pb::EndpointAuthType::MutualTls as i32);

    let shown = format!(
        "{oauth_sub:?} {tls_sub:?} {:?} {:?} {:?}",
        get_subscription(&mut c, "", &oauth_sub.id).await,
        get_subscription(&mut c, "", &tls_sub.id).await,
        c.subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    for secret in [CLIENT_SECRET, "PRIVATE KEY", "client-e2e", "/token"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }

    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    for n in 0..3 {
        publish(
            &mut publisher,
            event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
    }
    let got = endpoint.wait_for(3, WAIT).await;
    assert!(
        got.iter()
            .all(|r| r.header("authorization") == "Bearer tok-e2e"),
        "{got:?}"
    );
    assert_eq!(tokens.count(), 1, "one token for three deliveries");
    tls.wait_for(3, WAIT).await;
    let attempts = eventually("six attempts in the log", WAIT, async || {
        let mut all = log.attempts_to(&oauth_sub.id).await;
        all.extend(log.attempts_to(&tls_sub.id).await);
        (all.len() >= 6).then_some(all)
    })
    .await;
    assert!(attempts.iter().all(|a| a.success), "{attempts:?}");
    let logged = format!("{attempts:?}");
    for secret in [CLIENT_SECRET, "tok-e2e", "PRIVATE KEY"] {
        assert!(!logged.contains(secret), "{secret} logged: {logged}");
    }

    // Bad credentials name their field; an update with them changes nothing.
    let other = TestCa::new().issue_client("other");
    let bad_cases = [
        (
            oauth2("", CLIENT_SECRET),
            "subscription.auth.oauth2_client_credentials.token_url",
        ),
        (
            oauth2("ftp://idp.example.com/token", CLIENT_SECRET),
            "subscription.auth.oauth2_client_credentials.token_url",
        ),
        (
            oauth2("https://idp.example.com/token", ""),
            "subscription.auth.oauth2_client_credentials.client_secret",
        ),
        (
            {
                let mut auth = oauth2("https://idp.example.com/token", CLIENT_SECRET);
                if let Some(pb::endpoint_auth::Method::Oauth2ClientCredentials(o)) =
                    auth.method.as_mut()
                {
                    o.client_authentication = 99;
                }
                auth
            },
            "subscription.auth.oauth2_client_credentials.client_authentication",
        ),
        (
            mutual_tls("not a certificate", &client.key_pem, ""),
            "subscription.auth.mutual_tls.certificate_pem",
        ),
        (
            mutual_tls(&client.cert_pem, &other.key_pem, ""),
            "subscription.auth.mutual_tls.private_key_pem",
        ),
        (
            mutual_tls(&client.cert_pem, &client.key_pem, "junk"),
            "subscription.auth.mutual_tls.ca_certificates_pem",
        ),
    ];
    for (auth, field) in bad_cases {
        let status = c
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    auth: Some(auth.clone()),
                    ..webhook(&endpoint.url("/bad"), &["*"])
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid(&status, field);
        assert!(!status.message().contains("PRIVATE KEY"), "{status:?}");
        let status = update_subscription(
            &mut c,
            pb::Subscription {
                id: tls_sub.id.clone(),
                auth: Some(auth),
                ..Default::default()
            },
            &["auth"],
        )
        .await
        .unwrap_err();
        assert_invalid(&status, field);
    }
    let unchanged = get_subscription(&mut c, "", &tls_sub.id).await;
    assert_eq!(unchanged.auth_type, pb::EndpointAuthType::MutualTls as i32);
    let stored = stored_subscription(&planes.control_db, &tls_sub.id)
        .await
        .unwrap();
    assert!(
        stored
            .auth
            .as_deref()
            .is_some_and(|a| a.starts_with("sealed:")),
        "stored sealed"
    );
}
