//! Endpoint authentication through both planes: basic and bearer credentials reach the
//! receiver as the `Authorization` header, are never returned by Get or List, nor shown in
//! attempt URLs, and bad credentials are INVALID_ARGUMENT naming the field.

#![allow(clippy::unwrap_used)]

use sea_orm::{ActiveModelTrait as _, IntoActiveModel as _, Set};
use sluice_proto::control::v1 as pb;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, with_id};
use sluice_testkit::{WAIT, assert_invalid};
use sluice_tests::control::{get_subscription, mask, stored_subscription};
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
    c.subscriptions
        .update_subscription(pb::UpdateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(pb::Subscription {
                id: id.to_owned(),
                auth,
                ..Default::default()
            }),
            update_mask: mask(&["auth"]),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
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
}
