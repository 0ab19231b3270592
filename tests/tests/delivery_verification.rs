//! Endpoint ownership verification through both planes and real receivers: a subscription
//! that requires it gets a signed `sluice.endpoint.verification` event with a challenge;
//! until the endpoint answers it, nothing is delivered and the subscription says why; once
//! it does, the pending deliveries flow; a URL change verifies again.

#![allow(clippy::unwrap_used)]

use sea_orm::{ActiveModelTrait as _, IntoActiveModel as _, Set};
use sluice_proto::control::v1 as pb;
use sluice_testkit::WAIT;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply, with_id};
use sluice_tests::control::{get_subscription, mask, stored_subscription, update_subscription};
use sluice_tests::delivery::*;

async fn verify(c: &mut sluice_testkit::Clients, id: &str) -> pb::Subscription {
    c.subscriptions
        .verify_subscription(pb::VerifySubscriptionRequest {
            workspace_id: String::new(),
            id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap()
}

/// The subscription once its verification is no longer pending.
async fn concluded(c: &mut sluice_testkit::Clients, id: &str) -> pb::Subscription {
    eventually("the verification to conclude", WAIT, async || {
        let sub = get_subscription(&mut *c, "", id).await;
        (sub.verification_state != pb::VerificationState::Pending as i32).then_some(sub)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_wait_until_the_endpoint_answers_the_challenge() {
    on_each_backend(PlaneOptions::default(), verification).await;
}

async fn verification(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Verify").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    // Answers 200, but not the challenge.
    let receiver = Receiver::ok().await;
    // A subscription without verification to the same events: when it has them, the
    // waiting one has had them too.
    let witness = Receiver::ok().await;
    let (sub, secret) = subscribe(
        &mut c,
        pb::Subscription {
            verification_required: true,
            ..webhook(&receiver.url("/v"), &["conversation.*"])
        },
    )
    .await;
    assert_eq!(
        sub.verification_state,
        pb::VerificationState::Pending as i32
    );
    assert!(sub.verification_message.contains("challenge"), "{sub:?}");
    let (plain, _) = subscribe(&mut c, webhook(&witness.url("/w"), &["conversation.*"])).await;
    assert_eq!(
        plain.verification_state,
        pb::VerificationState::NotRequired as i32
    );

    let failed = concluded(&mut c, &sub.id).await;
    assert_eq!(
        failed.verification_state,
        pb::VerificationState::Failed as i32
    );
    assert!(
        failed
            .verification_message
            .contains("without its `challenge`"),
        "{failed:?}"
    );
    let challenge = receiver.next().await;
    assert_eq!(challenge.json()["event"], "sluice.endpoint.verification");
    let sent = challenge.json()["payload"]["challenge"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sent.len(), 32);
    assert!(challenge.verifies_with(&secret), "signed like a delivery");

    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let published = publish(
            &mut publisher,
            event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
        ids.push(published.message_id);
    }
    witness.wait_for(2, WAIT).await;
    assert_eq!(
        receiver.count(),
        1,
        "only the challenge reached the endpoint"
    );
    assert!(log.attempts_to(&sub.id).await.is_empty());
    // A manual retry does not get around it.
    let status = c
        .deliveries
        .retry_delivery(pb::RetryDeliveryRequest {
            workspace_id: String::new(),
            message_id: ids[0].clone(),
            subscription_id: sub.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("verif"), "{status:?}");
    assert_eq!(receiver.count(), 1);

    // The endpoint answers the challenge: verified, and the pending deliveries flow.
    receiver.script([Reply::echo()]);
    let verified = verify(&mut c, &sub.id).await;
    assert_eq!(
        verified.verification_state,
        pb::VerificationState::Verified as i32,
        "{verified:?}"
    );
    assert!(verified.verify_time.is_some());
    let got = receiver.wait_for(4, WAIT).await;
    for id in &ids {
        assert_eq!(with_id(&got, id).len(), 1, "{id} delivered once");
    }

    // A new URL is verified again before anything reaches it.
    let moved = Receiver::ok().await;
    let updated = update_subscription(
        &mut c,
        pb::Subscription {
            id: sub.id.clone(),
            url: moved.url("/moved"),
            ..Default::default()
        },
        &["url"],
    )
    .await
    .unwrap();
    assert_eq!(
        updated.verification_state,
        pb::VerificationState::Pending as i32
    );
    let failed = concluded(&mut c, &sub.id).await;
    assert_eq!(
        failed.verification_state,
        pb::VerificationState::Failed as i32
    );
    planes.config_synced().await;
    let third = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":3}"#)).await;
    witness.wait_for(3, WAIT).await;
    assert_eq!(moved.count(), 1, "only the challenge reached the new URL");
    moved.script([Reply::echo()]);
    let verified = verify(&mut c, &sub.id).await;
    assert_eq!(
        verified.verification_state,
        pb::VerificationState::Verified as i32
    );
    let got = moved.wait_for(3, WAIT).await;
    assert_eq!(with_id(&got, &third.message_id).len(), 1);

    // Verifying a subscription that does not require it is refused.
    let status = c
        .subscriptions
        .verify_subscription(pb::VerifySubscriptionRequest {
            workspace_id: String::new(),
            id: plain.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_can_require_verification_of_its_new_subscriptions() {
    on_each_backend(PlaneOptions::default(), workspace_requirement).await;
}

async fn workspace_requirement(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Strict").await;
    let mut admin = planes.clients(Some(sluice_testkit::ADMIN_KEY)).await;
    let workspace = admin
        .workspaces
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: workspace_id.clone(),
                require_endpoint_verification: true,
                ..Default::default()
            }),
            update_mask: mask(&["require_endpoint_verification"]),
        })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert!(workspace.require_endpoint_verification);

    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::start(Vec::new(), Reply::echo()).await;
    // Not asked for, but the workspace requires it.
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/s"), &["*"])).await;
    assert!(sub.verification_required);
    assert_eq!(
        sub.verification_state,
        pb::VerificationState::Pending as i32
    );
    let verified = concluded(&mut c, &sub.id).await;
    assert_eq!(
        verified.verification_state,
        pb::VerificationState::Verified as i32,
        "{verified:?}"
    );
    // It cannot be turned off while the workspace requires it.
    let status = update_subscription(
        &mut c,
        pb::Subscription {
            id: sub.id.clone(),
            verification_required: false,
            ..Default::default()
        },
        &["verification_required"],
    )
    .await
    .unwrap_err();
    sluice_testkit::assert_invalid(&status, "subscription.verification_required");

    // A Slack destination answers `ok`, never a challenge: refused rather than held for
    // ever, on create (the workspace's requirement) and when an update would make one.
    let status = c
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: "https://hooks.slack.com/services/T000/B000/XXXX".into(),
                filters: vec!["*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    sluice_testkit::assert_invalid(&status, "subscription.verification_required");
    let status = update_subscription(
        &mut c,
        pb::Subscription {
            id: sub.id.clone(),
            destination_type: pb::DestinationType::Slack as i32,
            ..Default::default()
        },
        &["destination_type"],
    )
    .await
    .unwrap_err();
    sluice_testkit::assert_invalid(&status, "subscription.verification_required");
    let unchanged = get_subscription(&mut c, "", &sub.id).await;
    assert_eq!(
        unchanged.destination_type,
        pb::DestinationType::Webhook as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verification_left_pending_is_sent_again_at_start() {
    on_each_backend(PlaneOptions::default(), resumed).await;
}

async fn resumed(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Resume").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::start(vec![Reply::status(500)], Reply::echo()).await;
    let (sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            verification_required: true,
            ..webhook(&receiver.url("/r"), &["*"])
        },
    )
    .await;
    let failed = concluded(&mut c, &sub.id).await;
    assert_eq!(
        failed.verification_state,
        pb::VerificationState::Failed as i32
    );
    assert!(
        failed.verification_message.contains("HTTP 500"),
        "{failed:?}"
    );
    // As a control plane stopped before the verification concluded leaves it.
    planes.stop_control().await;
    let mut row = stored_subscription(&planes.control_db, &sub.id)
        .await
        .unwrap()
        .into_active_model();
    row.verification_state = Set(Some("pending".to_owned()));
    row.update(&planes.control_db).await.unwrap();
    planes.restart_control().await;
    let mut c = planes.clients(Some(&key)).await;
    let verified = concluded(&mut c, &sub.id).await;
    assert_eq!(
        verified.verification_state,
        pb::VerificationState::Verified as i32,
        "{verified:?}"
    );
    assert_eq!(receiver.count(), 2);
}
