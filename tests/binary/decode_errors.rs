//! Requests that do not decode are the caller's mistake: raw bytes through a real gRPC
//! client to the real binary answer INVALID_ARGUMENT naming the field (not INTERNAL
//! "failed to decode Protobuf message"), a `payload` Struct and `payload_json` share one
//! nesting limit, and an oversized message answers RESOURCE_EXHAUSTED. The logs, written
//! to a file, carry no ANSI colour.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use sluice_proto::data::v1 as dpb;
use sluice_testkit::process::Deployment;
use sluice_testkit::raw_grpc::RawGrpc;
use sluice_testkit::{ADMIN_KEY, TestDatabase, backends};
use tonic::Code;
use tonic_types::StatusExt;

const PUBLISH: &str = "/sluice.data.v1.IngestService/Publish";
const PUBLISH_STREAM: &str = "/sluice.data.v1.IngestService/PublishStream";
/// The limit of both payload forms (sluice_core::envelope::MAX_PAYLOAD_DEPTH).
const MAX_DEPTH: usize = 32;

fn nested_struct(depth: usize) -> Struct {
    let mut inner = Struct::default();
    for _ in 1..depth {
        let mut outer = Struct::default();
        outer.fields.insert(
            "a".into(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        inner = outer;
    }
    inner
}

fn nested_json(depth: usize) -> String {
    format!(
        "{}{}",
        r#"{"a":"#.repeat(depth - 1) + "{",
        "}".repeat(depth)
    )
}

/// The field the status's BadRequest names first.
fn field(status: &tonic::Status) -> String {
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    bad.field_violations[0].field.clone()
}

fn event(payload: Option<Struct>, payload_json: String) -> dpb::PublishRequest {
    dpb::PublishRequest {
        event_type: "conversation.created".into(),
        payload,
        payload_json,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_errors_are_invalid_argument() {
    let backend = backends().remove(0);
    let control_db = TestDatabase::create(&backend).await;
    let data_db = TestDatabase::create(&backend).await;
    let deployment = Deployment::start(
        &sluice_testkit::sluice_bin!(),
        &control_db.url,
        &data_db.url,
        &[],
        &[],
    )
    .await;
    let (_, key) = deployment.workspace_with_key("decode").await;
    let mut raw = RawGrpc::connect(deployment.data_addr()).await;

    // The data plane knows the key once a well-formed publish is accepted.
    let good = event(None, "{}".into()).encode_to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match raw.unary(PUBLISH, &key, good.clone()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unauthenticated => {
                assert!(tokio::time::Instant::now() < deadline, "key never arrived");
            }
            Err(s) => panic!("publish failed: {s:?}"),
        }
        // No event to await from outside the process: the key arrives by its watch stream.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bytes that are not UTF-8 in a string field.
    let mut not_utf8 = event(None, r#"{"k":"zz"}"#.into()).encode_to_vec();
    let at = not_utf8.windows(2).position(|w| w == b"zz").unwrap();
    not_utf8[at] = 0xff;
    let status = raw
        .unary(PUBLISH, &key, not_utf8.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field(&status), "payload_json");
    assert!(status.message().contains("UTF-8"), "{status:?}");

    // Garbage that is no protobuf at all.
    let status = raw.unary(PUBLISH, &key, vec![0xff; 8]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // One nesting limit for both payload forms: at the limit both are accepted, past it
    // both are refused naming their field, whether prost or validation stops them.
    raw.unary(
        PUBLISH,
        &key,
        event(Some(nested_struct(MAX_DEPTH)), String::new()).encode_to_vec(),
    )
    .await
    .unwrap();
    raw.unary(
        PUBLISH,
        &key,
        event(None, nested_json(MAX_DEPTH)).encode_to_vec(),
    )
    .await
    .unwrap();
    for depth in [MAX_DEPTH + 1, MAX_DEPTH + 2, 64, 500] {
        let status = raw
            .unary(
                PUBLISH,
                &key,
                event(Some(nested_struct(depth)), String::new()).encode_to_vec(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "depth {depth}: {status:?}"
        );
        assert_eq!(field(&status), "payload", "depth {depth}");
        assert!(
            status
                .message()
                .contains(&format!("more than {MAX_DEPTH} levels")),
            "depth {depth}: {status:?}"
        );
        let status = raw
            .unary(
                PUBLISH,
                &key,
                event(None, nested_json(depth)).encode_to_vec(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "depth {depth}: {status:?}"
        );
        assert_eq!(field(&status), "payload_json", "depth {depth}");
        assert!(
            status
                .message()
                .contains(&format!("more than {MAX_DEPTH} levels")),
            "depth {depth}: {status:?}"
        );
    }

    // Over the message size limit.
    let huge = event(None, format!(r#"{{"k":"{}"}}"#, "x".repeat(40 << 20))).encode_to_vec();
    let status = raw.unary(PUBLISH, &key, huge).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{:?}",
        status.message()
    );

    // On a stream: the events before the bad one are answered, then the stream ends with
    // INVALID_ARGUMENT naming the field inside the stream's request.
    let first = dpb::PublishStreamRequest {
        sequence: 1,
        event: Some(event(None, "{}".into())),
    }
    .encode_to_vec();
    let bad = dpb::PublishStreamRequest {
        sequence: 2,
        event: Some(event(Some(nested_struct(200)), String::new())),
    }
    .encode_to_vec();
    let (answers, end) = raw
        .stream(PUBLISH_STREAM, &key, vec![first, bad])
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
    let answer = dpb::PublishStreamResponse::decode(&answers[0][..]).unwrap();
    assert_eq!(answer.sequence, 1);
    assert!(answer.result.is_some(), "{answer:?}");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field(&status), "event.payload");

    // The control plane too.
    let mut control = RawGrpc::connect(deployment.control.addr).await;
    let status = control
        .unary(
            "/sluice.control.v1.WorkspaceService/ListWorkspaces",
            ADMIN_KEY,
            vec![0xff; 8],
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Logs went to a file: plain text, no ANSI escape sequences.
    let logs = deployment.logs();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI colour in logs written to a file"
    );

    drop(deployment);
    control_db.drop_database().await;
    data_db.drop_database().await;
}
