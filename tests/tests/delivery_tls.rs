//! HTTPS through both planes to the test kit's TLS receiver: delivered over HTTP/2 by ALPN
//! when the endpoint's CA is trusted (`--extra-ca-file`), and each certificate failure
//! named in the delivery log.

#![allow(clippy::unwrap_used)]

use sluice_testkit::WAIT;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::tls::{TestCa, Validity, self_signed};
use sluice_tests::delivery::*;

#[tokio::test(flavor = "multi_thread")]
async fn https_endpoints_get_webhooks_and_certificate_failures_are_named_in_the_log() {
    let ca = TestCa::new();
    let options = PlaneOptions {
        // One attempt per delivery, so a failure is final at once.
        retry_schedule: "0s".into(),
        extra_ca_pem: Some(ca.cert_pem.clone().into_bytes()),
        ..PlaneOptions::default()
    };
    on_each_backend(options, async |planes: &mut Planes| {
        https(planes, &ca).await
    })
    .await;
}

async fn https(planes: &mut Planes, ca: &TestCa) {
    let (_, key) = planes.workspace_with_key("Https").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let names = &["localhost", "127.0.0.1"];
    let good = Receiver::start_tls(
        Vec::new(),
        Reply::status(204),
        ca.issue(names, Validity::Current)
            .server_config(&[b"h2", b"http/1.1"]),
    )
    .await;
    let expired = Receiver::start_tls(
        Vec::new(),
        Reply::status(204),
        ca.issue(names, Validity::Expired).server_config(&[]),
    )
    .await;
    let wrong_name = Receiver::start_tls(
        Vec::new(),
        Reply::status(204),
        ca.issue(&["elsewhere.example"], Validity::Current)
            .server_config(&[]),
    )
    .await;
    let untrusted = Receiver::start_tls(
        Vec::new(),
        Reply::status(204),
        self_signed(names).server_config(&[]),
    )
    .await;
    let (good_sub, secret) = subscribe(
        &mut c,
        webhook(&good.url_by_name("/hook"), &["conversation.*"]),
    )
    .await;
    let mut failing = Vec::new();
    for (receiver, want) in [
        (&expired, "certificate has expired"),
        (&wrong_name, "wrong name"),
        (&untrusted, "unknown certificate authority"),
    ] {
        let (sub, _) =
            subscribe(&mut c, webhook(&receiver.url("/hook"), &["conversation.*"])).await;
        failing.push((sub.id, want));
    }
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let message = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;

    let got = good.wait_for(1, WAIT).await;
    assert_eq!(got[0].version, axum::http::Version::HTTP_2);
    assert!(got[0].verifies_with(&secret));
    assert_eq!(got[0].header("webhook-id"), message.message_id);
    let attempts = eventually("the HTTPS attempt in the log", WAIT, async || {
        let attempts = log.attempts_to(&good_sub.id).await;
        (!attempts.is_empty()).then_some(attempts)
    })
    .await;
    assert!(attempts[0].success, "{:?}", attempts[0]);

    for (sub, want) in failing {
        let attempt = eventually("the failed attempt in the log", WAIT, async || {
            log.attempts_to(&sub).await.into_iter().next()
        })
        .await;
        assert!(!attempt.success);
        assert_eq!(attempt.error_kind, "tls", "{attempt:?}");
        assert!(attempt.error_message.contains(want), "{want}: {attempt:?}");
    }
    for receiver in [&expired, &wrong_name, &untrusted] {
        assert!(receiver.received().is_empty());
    }
}
