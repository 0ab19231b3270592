//! Retention, end to end on both planes: what is older than its workspace's window is
//! purged (the control plane's log, the data plane's messages and payloads once their
//! deliveries are final, idempotency keys on their own window), what is younger is kept;
//! purged data answers FAILED_PRECONDITION to a retry or a replay and NOT_FOUND to a read;
//! a config watcher behind the compaction point gets a snapshot; bad windows are refused.
//! Windows are shrunk to seconds and the purge runs every 100 ms.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_core::retention::RetentionDefaults;
use sluice_proto::control::v1 as pb;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{ADMIN_KEY, Bearer, INTERNAL_TOKEN, WAIT, assert_invalid, count_rows};
use sluice_tests::control::{mask, secs};
use sluice_tests::delivery::*;

/// Fast passes; defaults long enough that nothing is purged unless a test shrinks it.
fn fast_purge(retention: Duration, idempotency: Duration) -> PlaneOptions {
    PlaneOptions {
        retention: RetentionDefaults {
            retention,
            idempotency,
            every: Duration::from_millis(100),
        },
        ..PlaneOptions::default()
    }
}

const DAY: Duration = Duration::from_secs(86_400);

/// Sets a workspace's own windows through the API.
async fn set_windows(
    planes: &Planes,
    workspace_id: &str,
    retention: Option<i64>,
    idempotency: Option<i64>,
) -> pb::Workspace {
    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    admin
        .workspaces
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: workspace_id.to_owned(),
                retention: retention.and_then(secs),
                idempotency_retention: idempotency.and_then(secs),
                ..Default::default()
            }),
            update_mask: mask(&["retention", "idempotency_retention"]),
        })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap()
}

async fn dp_messages(planes: &Planes, id: &str) -> i64 {
    count_rows(&planes.data_db, &format!("dp_messages WHERE id = '{id}'")).await
}

async fn get_message(log: &Log, id: &str) -> Result<pb::Message, tonic::Status> {
    log.deliveries_client()
        .get_message(pb::GetMessageRequest {
            workspace_id: String::new(),
            message_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().message.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_older_than_the_window_are_purged_and_younger_ones_kept() {
    // A failed first attempt waits an hour for its retry: its delivery stays pending.
    let options = PlaneOptions {
        retry_schedule: "0s,1h".into(),
        ..fast_purge(30 * DAY, DAY)
    };
    on_each_backend(options, purge_after_the_window).await;
}

async fn purge_after_the_window(planes: &mut Planes) {
    // Workspace "short" keeps 3 s; "long" keeps the default (30 days).
    let (short_ws, short_key) = planes.workspace_with_key("Short").await;
    let (_, long_key) = planes.workspace_with_key("Long").await;
    let set = set_windows(planes, &short_ws, Some(3), None).await;
    assert_eq!(set.retention, secs(3));
    let receiver = Receiver::ok().await;
    // A subscription that fails with a retry an hour away: its delivery stays pending.
    let failing = Receiver::start(Vec::new(), Reply::status(500)).await;
    let mut short = planes.clients(Some(&short_key)).await;
    let mut long = planes.clients(Some(&long_key)).await;
    let (short_sub, _) = subscribe(
        &mut short,
        webhook(&receiver.url("/short"), &["conversation.*"]),
    )
    .await;
    let (_, _) = subscribe(&mut short, webhook(&failing.url("/pending"), &["call.*"])).await;
    let (long_sub, _) = subscribe(&mut long, webhook(&receiver.url("/long"), &["*"])).await;
    planes.config_synced().await;
    let short_log = Log::new(&short);
    let long_log = Log::new(&long);

    let mut short_publisher = planes.publisher(&short_key).await;
    let mut long_publisher = planes.publisher(&long_key).await;
    let purged = publish(
        &mut short_publisher,
        event(CONVERSATION_CREATED, r#"{"n":1}"#),
    )
    .await;
    let pending = publish(&mut short_publisher, event("call.handled", r#"{"n":2}"#)).await;
    let kept = publish(
        &mut long_publisher,
        event(CONVERSATION_CREATED, r#"{"n":3}"#),
    )
    .await;
    receiver.wait_for(2, WAIT).await;
    failing.wait_for(1, WAIT).await;
    short_log
        .delivery_with_status(
            &purged.message_id,
            &short_sub.id,
            pb::DeliveryStatus::Succeeded,
        )
        .await;
    long_log
        .delivery_with_status(
            &kept.message_id,
            &long_sub.id,
            pb::DeliveryStatus::Succeeded,
        )
        .await;

    // Within the window: everything is there.
    assert_eq!(
        get_message(&short_log, &purged.message_id)
            .await
            .unwrap()
            .id,
        purged.message_id
    );
    assert_eq!(dp_messages(planes, &purged.message_id).await, 1);
    // Another workspace's message is not found; a malformed id is refused by name.
    let other = get_message(&long_log, &purged.message_id)
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound, "{other:?}");
    assert!(!other.message().contains("purged"), "{other:?}");
    let malformed = get_message(&short_log, "msg_nope").await.unwrap_err();
    assert_invalid(&malformed, "message_id");

    // Past it: gone from both planes' tables, on the window of the message's workspace.
    eventually(
        "the short workspace's delivered message purged on both planes",
        WAIT,
        async || {
            let control = count_rows(
                &planes.control_db,
                &format!("messages WHERE id = '{}'", purged.message_id),
            )
            .await;
            let data = dp_messages(planes, &purged.message_id).await;
            (control == 0 && data == 0).then_some(())
        },
    )
    .await;
    for table in ["deliveries", "attempts"] {
        assert_eq!(
            count_rows(
                &planes.control_db,
                &format!("{table} WHERE message_id = '{}'", purged.message_id)
            )
            .await,
            0,
            "{table}"
        );
    }
    assert_eq!(
        count_rows(
            &planes.data_db,
            &format!("dp_deliveries WHERE message_id = '{}'", purged.message_id)
        )
        .await,
        0
    );
    // The delivery still pending keeps its payload on the data plane (the control plane's
    // log of it goes with the window).
    assert_eq!(
        dp_messages(planes, &pending.message_id).await,
        1,
        "a pending delivery's message is kept"
    );
    // The other workspace keeps its message.
    assert_eq!(
        get_message(&long_log, &kept.message_id).await.unwrap().id,
        kept.message_id
    );
    assert_eq!(dp_messages(planes, &kept.message_id).await, 1);

    // Reading a purged message: NOT_FOUND, saying why.
    let read = get_message(&short_log, &purged.message_id)
        .await
        .unwrap_err();
    assert_eq!(read.code(), tonic::Code::NotFound, "{read:?}");
    assert!(read.message().contains("purged"), "{read:?}");
    // Retrying it, or replaying from before the window: FAILED_PRECONDITION, saying why.
    let retry = short
        .deliveries
        .retry_delivery(pb::RetryDeliveryRequest {
            workspace_id: String::new(),
            message_id: purged.message_id.clone(),
            subscription_id: short_sub.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(retry.code(), tonic::Code::FailedPrecondition, "{retry:?}");
    assert!(retry.message().contains("purged"), "{retry:?}");
    let mut since = now_timestamp();
    since.seconds -= 60;
    let replay = short
        .deliveries
        .replay_failed_deliveries(pb::ReplayFailedDeliveriesRequest {
            workspace_id: String::new(),
            subscription_id: short_sub.id.clone(),
            since_time: Some(since),
        })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), tonic::Code::FailedPrecondition, "{replay:?}");
    assert!(replay.message().contains("purged"), "{replay:?}");
    // A replay within the window is fine.
    let mut recent = now_timestamp();
    recent.seconds -= 1;
    short
        .deliveries
        .replay_failed_deliveries(pb::ReplayFailedDeliveriesRequest {
            workspace_id: String::new(),
            subscription_id: short_sub.id.clone(),
            since_time: Some(recent),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_expire_on_their_own_window() {
    // The default key window (the `--idempotency-retention` flag) is 2 s; messages stay.
    on_each_backend(fast_purge(30 * DAY, Duration::from_secs(2)), keys_expire).await;
}

async fn keys_expire(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Keys").await;
    let receiver = Receiver::ok().await;
    let mut c = planes.clients(Some(&key)).await;
    subscribe(&mut c, webhook(&receiver.url("/keys"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let keyed = || dpb_keyed(r#"{"order":1}"#, "order-1");

    let first = publish(&mut publisher, keyed()).await;
    let repeat = publish(&mut publisher, keyed()).await;
    assert_eq!(
        repeat.message_id, first.message_id,
        "a repeat within the window"
    );
    receiver.wait_for(1, WAIT).await;

    eventually("the idempotency key cleared", WAIT, async || {
        let keyed = count_rows(
            &planes.data_db,
            &format!(
                "dp_messages WHERE id = '{}' AND idempotency_key IS NOT NULL",
                first.message_id
            ),
        )
        .await;
        (keyed == 0).then_some(())
    })
    .await;
    // The message itself is kept (its window is 30 days) ...
    assert_eq!(dp_messages(planes, &first.message_id).await, 1);
    // ... and the key is free again: a new message, delivered.
    let after = publish(&mut publisher, keyed()).await;
    assert_ne!(after.message_id, first.message_id);
    receiver.wait_for(2, WAIT).await;
}

fn dpb_keyed(payload: &str, key: &str) -> sluice_proto::data::v1::PublishRequest {
    sluice_proto::data::v1::PublishRequest {
        idempotency_key: key.to_owned(),
        ..event(CONVERSATION_CREATED, payload)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_behind_the_compaction_point_gets_a_snapshot() {
    // Config changes older than 2 s are compacted.
    on_each_backend(
        fast_purge(Duration::from_secs(2), Duration::from_secs(1)),
        behind_compaction,
    )
    .await;
}

async fn behind_compaction(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Watch").await;
    let mut c = planes.clients(Some(&key)).await;
    let (first, _) = subscribe(&mut c, webhook("http://127.0.0.1:9/a", &["*"])).await;
    let (second, _) = subscribe(&mut c, webhook("http://127.0.0.1:9/b", &["*"])).await;
    planes.config_synced().await;
    let latest = sluice_testkit::max_revision(&planes.control_db).await;
    eventually(
        "config_changes compacted down to the latest revision",
        WAIT,
        async || {
            let rows = count_rows(&planes.control_db, "config_changes").await;
            (rows == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        sluice_testkit::max_revision(&planes.control_db).await,
        latest,
        "the latest revision is kept"
    );

    let channel = sluice_testkit::connect(planes.control_addr).await;
    let mut watch = pb::data_plane_service_client::DataPlaneServiceClient::with_interceptor(
        channel,
        Bearer(Some(format!("Bearer {INTERNAL_TOKEN}").parse().unwrap())),
    );
    // From revision 1, whose successors are gone: a snapshot with both subscriptions.
    let mut stream = watch
        .watch_config(pb::WatchConfigRequest { from_revision: 1 })
        .await
        .unwrap()
        .into_inner();
    let mut pieces = Vec::new();
    loop {
        let piece = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let done = piece.revision != 0;
        pieces.push(piece);
        if done {
            break;
        }
    }
    assert!(pieces[0].reset, "a snapshot starts with reset: {pieces:?}");
    assert_eq!(pieces.last().unwrap().revision, latest as u64);
    let ids: Vec<&str> = pieces
        .iter()
        .flat_map(|p| p.upserted_subscriptions.iter().map(|s| s.id.as_str()))
        .collect();
    assert!(
        ids.contains(&first.id.as_str()) && ids.contains(&second.id.as_str()),
        "{ids:?}"
    );

    // From the latest revision: no snapshot; the next change arrives as a change.
    let mut stream = watch
        .watch_config(pb::WatchConfigRequest {
            from_revision: latest as u64,
        })
        .await
        .unwrap()
        .into_inner();
    let (third, _) = subscribe(&mut c, webhook("http://127.0.0.1:9/c", &["*"])).await;
    let piece = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!piece.reset, "{piece:?}");
    assert_eq!(piece.upserted_subscriptions.len(), 1, "{piece:?}");
    assert_eq!(piece.upserted_subscriptions[0].id, third.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_window_reaches_the_data_planes_stored_copy() {
    on_each_backend(fast_purge(30 * DAY, DAY), window_in_the_copy).await;
}

async fn window_in_the_copy(planes: &mut Planes) {
    let (ws, _) = planes.workspace_with_key("Copy").await;
    set_windows(planes, &ws, Some(7200), Some(60)).await;
    planes.config_synced().await;
    let stored = count_rows(
        &planes.data_db,
        &format!("dp_workspaces WHERE id = '{ws}' AND retention_ms = 7200000 AND idempotency_retention_ms = 60000"),
    )
    .await;
    assert_eq!(stored, 1, "the data plane keeps the workspace's windows");
    // Back to the defaults: the data plane forgets them.
    set_windows(planes, &ws, None, None).await;
    planes.config_synced().await;
    assert_eq!(
        count_rows(&planes.data_db, &format!("dp_workspaces WHERE id = '{ws}'")).await,
        0
    );
    // And so it does when a workspace with windows of its own is deleted.
    set_windows(planes, &ws, Some(7200), None).await;
    planes.config_synced().await;
    assert_eq!(
        count_rows(&planes.data_db, &format!("dp_workspaces WHERE id = '{ws}'")).await,
        1
    );
    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    admin
        .workspaces
        .delete_workspace(pb::DeleteWorkspaceRequest { id: ws.clone() })
        .await
        .unwrap();
    planes.config_synced().await;
    assert_eq!(
        count_rows(&planes.data_db, &format!("dp_workspaces WHERE id = '{ws}'")).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_retention_values_are_refused_naming_the_field() {
    on_each_backend(PlaneOptions::default(), bad_windows).await;
}

async fn bad_windows(planes: &mut Planes) {
    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    let half = Some(prost_types::Duration {
        seconds: 1,
        nanos: 500_000_000,
    });
    let cases: Vec<(
        Option<prost_types::Duration>,
        Option<prost_types::Duration>,
        &str,
    )> = vec![
        (secs(0), None, "workspace.retention"),
        (secs(-5), None, "workspace.retention"),
        (half, None, "workspace.retention"),
        (secs(3651 * 86_400), None, "workspace.retention"),
        (None, secs(0), "workspace.idempotency_retention"),
        (secs(60), secs(120), "workspace.idempotency_retention"),
    ];
    for (retention, idempotency, field) in &cases {
        let err = admin
            .workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: "Bad".into(),
                    retention: *retention,
                    idempotency_retention: *idempotency,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, field);
    }
    assert_eq!(
        count_rows(&planes.control_db, "workspaces").await,
        0,
        "nothing was created"
    );

    let (ws, _) = planes.workspace_with_key("Good").await;
    let before = count_rows(&planes.control_db, "config_changes").await;
    for (retention, idempotency, field) in &cases {
        let err = admin
            .workspaces
            .update_workspace(pb::UpdateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    id: ws.clone(),
                    retention: *retention,
                    idempotency_retention: *idempotency,
                    ..Default::default()
                }),
                update_mask: mask(&["retention", "idempotency_retention"]),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, field);
    }
    // An idempotency window longer than the workspace's existing retention.
    set_windows(planes, &ws, Some(60), None).await;
    let err = admin
        .workspaces
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: ws.clone(),
                idempotency_retention: secs(3600),
                ..Default::default()
            }),
            update_mask: mask(&["idempotency_retention"]),
        })
        .await
        .unwrap_err();
    assert_invalid(&err, "workspace.idempotency_retention");
    let got = admin
        .workspaces
        .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!((got.retention, got.idempotency_retention), (secs(60), None));
    assert_eq!(
        count_rows(&planes.control_db, "config_changes").await,
        before + 1,
        "only the valid update recorded a change"
    );
}
