//! Who may call what on the control plane: authentication, admin-only methods, and workspaces that cannot see or touch each other's resources.

#![allow(clippy::unwrap_used)]

use sluice_proto::control::v1 as pb;
use sluice_testkit::{
    ADMIN_KEY, Clients, ControlHarness, INTERNAL_TOKEN, assert_invalid, backends, count_rows,
};
use sluice_tests::control::*;
use tonic::Code;

const RECEIVER: &str = "http://127.0.0.1:9/x";

fn assert_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
) {
    match result {
        Ok(r) => panic!("{what}: expected {code:?}, got OK {:?}", r.into_inner()),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// One call of each public service that a valid caller may make; each must answer `code`.
async fn every_service_answers(c: &mut Clients, who: &str, code: Code) {
    assert_code(
        &format!("{who}: ListSubscriptions"),
        c.subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await,
        code,
    );
    assert_code(
        &format!("{who}: CreateSubscription"),
        c.subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(new_subscription(RECEIVER, &["*"])),
                ..Default::default()
            })
            .await,
        code,
    );
    assert_code(
        &format!("{who}: ListEventTypes"),
        c.event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await,
        code,
    );
    assert_code(
        &format!("{who}: CreateEventType"),
        c.event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "a.b".into(),
                    ..Default::default()
                }),
            })
            .await,
        code,
    );
    assert_code(
        &format!("{who}: ListWorkspaces"),
        c.workspaces
            .list_workspaces(pb::ListWorkspacesRequest::default())
            .await,
        code,
    );
    assert_code(
        &format!("{who}: CreateWorkspace"),
        c.workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: "x".into(),
                    ..Default::default()
                }),
            })
            .await,
        code,
    );
    assert_code(
        &format!("{who}: ListMessages"),
        c.deliveries
            .list_messages(pb::ListMessagesRequest::default())
            .await,
        code,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_need_a_valid_key() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let before = counts(&h.db).await;

        every_service_answers(
            &mut h.clients(None).await,
            "no authorization",
            Code::Unauthenticated,
        )
        .await;
        every_service_answers(
            &mut h.clients(Some("")).await,
            "empty bearer",
            Code::Unauthenticated,
        )
        .await;
        every_service_answers(
            &mut h
                .clients(Some("sk_wrong_key_0000000000000000000000000000000"))
                .await,
            "unknown key",
            Code::Unauthenticated,
        )
        .await;
        // A near miss of a real key.
        let near = format!("{}x", &key[..key.len() - 1]);
        every_service_answers(
            &mut h.clients(Some(&near)).await,
            "altered key",
            Code::Unauthenticated,
        )
        .await;
        // The planes' internal token is not a public credential.
        every_service_answers(
            &mut h.clients(Some(INTERNAL_TOKEN)).await,
            "internal token",
            Code::Unauthenticated,
        )
        .await;
        assert_eq!(
            counts(&h.db).await,
            before,
            "unauthenticated calls changed the database"
        );

        // The right key works.
        h.clients(Some(&key))
            .await
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap();
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_key_stops_working() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws, other_key) = h.workspace_with_key("Tideflow").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let created = admin
            .workspaces
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: ws.clone(),
                display_name: "ci".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let record = created.api_key.unwrap();
        let mut c = h.clients(Some(&created.key)).await;
        let (sub, _) = create_subscription(&mut c, "", new_subscription(RECEIVER, &["*"])).await;

        let revoked = admin
            .workspaces
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: record.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .api_key
            .unwrap();
        assert!(revoked.revoke_time.is_some(), "{revoked:?}");
        assert_eq!(revoked.id, record.id);

        let mut c = h.clients(Some(&created.key)).await;
        assert_code(
            "revoked key: GetSubscription",
            c.subscriptions
                .get_subscription(pb::GetSubscriptionRequest {
                    workspace_id: String::new(),
                    id: sub.id.clone(),
                })
                .await,
            Code::Unauthenticated,
        );
        every_service_answers(&mut c, "revoked key", Code::Unauthenticated).await;

        // The listing shows it revoked; the workspace's other key still works.
        let keys = admin
            .workspaces
            .list_api_keys(pb::ListApiKeysRequest {
                workspace_id: ws.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .api_keys;
        let listed = keys.iter().find(|k| k.id == record.id).unwrap();
        assert!(listed.revoke_time.is_some(), "{listed:?}");
        assert_eq!(
            keys.iter().filter(|k| k.revoke_time.is_none()).count(),
            1,
            "{keys:?}"
        );
        let mut other = h.clients(Some(&other_key)).await;
        assert_eq!(get_subscription(&mut other, "", &sub.id).await, sub);

        // Revoking again is harmless and the key stays revoked.
        admin
            .workspaces
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: record.id.clone(),
            })
            .await
            .unwrap();
        assert_code(
            "revoked key after a second revoke",
            c.subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest::default())
                .await,
            Code::Unauthenticated,
        );
        // An unknown key id.
        let missing = sluice_core::ids::new_id(sluice_core::ids::IdKind::ApiKey);
        assert_code(
            "revoking an unknown key",
            admin
                .workspaces
                .revoke_api_key(pb::RevokeApiKeyRequest { id: missing })
                .await,
            Code::NotFound,
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_keys_cannot_use_admin_methods() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        let (other, _) = h.workspace_with_key("Other").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let key_id = admin
            .workspaces
            .list_api_keys(pb::ListApiKeysRequest {
                workspace_id: ws.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .api_keys[0]
            .id
            .clone();
        let mut c = h.clients(Some(&key)).await;
        let before = counts(&h.db).await;
        let denied = Code::PermissionDenied;
        assert_code(
            "CreateWorkspace",
            c.workspaces
                .create_workspace(pb::CreateWorkspaceRequest {
                    workspace: Some(pb::Workspace {
                        display_name: "Mine".into(),
                        ..Default::default()
                    }),
                })
                .await,
            denied,
        );
        assert_code(
            "ListWorkspaces",
            c.workspaces
                .list_workspaces(pb::ListWorkspacesRequest::default())
                .await,
            denied,
        );
        assert_code(
            "UpdateWorkspace (own)",
            c.workspaces
                .update_workspace(pb::UpdateWorkspaceRequest {
                    workspace: Some(pb::Workspace {
                        id: ws.clone(),
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                })
                .await,
            denied,
        );
        assert_code(
            "DeleteWorkspace (own)",
            c.workspaces
                .delete_workspace(pb::DeleteWorkspaceRequest { id: ws.clone() })
                .await,
            denied,
        );
        assert_code(
            "DeleteWorkspace (other)",
            c.workspaces
                .delete_workspace(pb::DeleteWorkspaceRequest { id: other.clone() })
                .await,
            denied,
        );
        assert_code(
            "CreateApiKey (own)",
            c.workspaces
                .create_api_key(pb::CreateApiKeyRequest {
                    workspace_id: ws.clone(),
                    display_name: "more".into(),
                })
                .await,
            denied,
        );
        assert_code(
            "CreateApiKey (other)",
            c.workspaces
                .create_api_key(pb::CreateApiKeyRequest {
                    workspace_id: other.clone(),
                    display_name: "more".into(),
                })
                .await,
            denied,
        );
        assert_code(
            "ListApiKeys (own)",
            c.workspaces
                .list_api_keys(pb::ListApiKeysRequest {
                    workspace_id: ws.clone(),
                    ..Default::default()
                })
                .await,
            denied,
        );
        assert_code(
            "RevokeApiKey (own)",
            c.workspaces
                .revoke_api_key(pb::RevokeApiKeyRequest { id: key_id })
                .await,
            denied,
        );
        assert_eq!(
            counts(&h.db).await,
            before,
            "denied calls changed the database"
        );

        // It may get its own workspace, and no other.
        let own = c
            .workspaces
            .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.workspace.unwrap().display_name, "Tideflow");
        assert_code(
            "GetWorkspace (other)",
            c.workspaces
                .get_workspace(pb::GetWorkspaceRequest { id: other.clone() })
                .await,
            Code::NotFound,
        );
        // And the key still works for its own resources.
        c.subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap();
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_cannot_touch_each_other() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws_a, key_a) = h.workspace_with_key("A").await;
        let (ws_b, key_b) = h.workspace_with_key("B").await;
        let mut a = h.clients(Some(&key_a)).await;
        let mut b = h.clients(Some(&key_b)).await;
        let (sub_b, secret_b) =
            create_subscription(&mut b, "", new_subscription(RECEIVER, &["conversation.*"])).await;
        b.event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let stored_b = stored_subscription(&h.db, &sub_b.id).await.unwrap();
        let before = counts(&h.db).await;
        let id = sub_b.id.clone();

        // A's key, with its own scope (empty or its own id) or naming B: NOT_FOUND every time.
        for scope in [String::new(), ws_a.clone(), ws_b.clone()] {
            let nf = Code::NotFound;
            let w = || scope.clone();
            assert_code(
                &format!("Get as A in {scope:?}"),
                a.subscriptions
                    .get_subscription(pb::GetSubscriptionRequest {
                        workspace_id: w(),
                        id: id.clone(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("Update as A in {scope:?}"),
                a.subscriptions
                    .update_subscription(pb::UpdateSubscriptionRequest {
                        workspace_id: w(),
                        subscription: Some(pb::Subscription {
                            id: id.clone(),
                            url: "http://127.0.0.1:9/stolen".into(),
                            ..Default::default()
                        }),
                        update_mask: mask(&["url"]),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("Delete as A in {scope:?}"),
                a.subscriptions
                    .delete_subscription(pb::DeleteSubscriptionRequest {
                        workspace_id: w(),
                        id: id.clone(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("Disable as A in {scope:?}"),
                a.subscriptions
                    .disable_subscription(pb::DisableSubscriptionRequest {
                        workspace_id: w(),
                        id: id.clone(),
                        message: String::new(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("Enable as A in {scope:?}"),
                a.subscriptions
                    .enable_subscription(pb::EnableSubscriptionRequest {
                        workspace_id: w(),
                        id: id.clone(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("Rotate as A in {scope:?}"),
                a.subscriptions
                    .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                        workspace_id: w(),
                        id: id.clone(),
                        ..Default::default()
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("Reveal as A in {scope:?}"),
                a.subscriptions
                    .reveal_subscription_secret(pb::RevealSubscriptionSecretRequest {
                        workspace_id: w(),
                        id: id.clone(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("GetEndpointHealth as A in {scope:?}"),
                a.deliveries
                    .get_endpoint_health(pb::GetEndpointHealthRequest {
                        workspace_id: w(),
                        subscription_id: id.clone(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("GetEventType as A in {scope:?}"),
                a.event_types
                    .get_event_type(pb::GetEventTypeRequest {
                        workspace_id: w(),
                        name: "conversation.created".into(),
                    })
                    .await,
                nf,
            );
            assert_code(
                &format!("ArchiveEventType as A in {scope:?}"),
                a.event_types
                    .archive_event_type(pb::ArchiveEventTypeRequest {
                        workspace_id: w(),
                        name: "conversation.created".into(),
                    })
                    .await,
                nf,
            );
        }
        // Naming B's workspace on lists and creates.
        let nf = Code::NotFound;
        assert_code(
            "ListSubscriptions of B as A",
            a.subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    workspace_id: ws_b.clone(),
                    ..Default::default()
                })
                .await,
            nf,
        );
        assert_code(
            "CreateSubscription in B as A",
            a.subscriptions
                .create_subscription(pb::CreateSubscriptionRequest {
                    workspace_id: ws_b.clone(),
                    subscription: Some(new_subscription(RECEIVER, &["*"])),
                    secret: String::new(),
                })
                .await,
            nf,
        );
        assert_code(
            "ListEventTypes of B as A",
            a.event_types
                .list_event_types(pb::ListEventTypesRequest {
                    workspace_id: ws_b.clone(),
                    ..Default::default()
                })
                .await,
            nf,
        );
        assert_code(
            "CreateEventType in B as A",
            a.event_types
                .create_event_type(pb::CreateEventTypeRequest {
                    workspace_id: ws_b.clone(),
                    event_type: Some(pb::EventType {
                        name: "a.b".into(),
                        ..Default::default()
                    }),
                })
                .await,
            nf,
        );
        assert_code(
            "ListMessages of B as A",
            a.deliveries
                .list_messages(pb::ListMessagesRequest {
                    workspace_id: ws_b.clone(),
                    ..Default::default()
                })
                .await,
            nf,
        );
        assert_code(
            "ListDeliveries of B as A",
            a.deliveries
                .list_deliveries(pb::ListDeliveriesRequest {
                    workspace_id: ws_b.clone(),
                    ..Default::default()
                })
                .await,
            nf,
        );
        assert_code(
            "GetWorkspace B as A",
            a.workspaces
                .get_workspace(pb::GetWorkspaceRequest { id: ws_b.clone() })
                .await,
            nf,
        );

        let after = counts(&h.db).await;
        assert_eq!(
            after,
            before,
            "A's calls changed the database: {:?}",
            delta(&before, &after)
        );
        assert_eq!(
            stored_subscription(&h.db, &sub_b.id).await.unwrap(),
            stored_b,
            "B's subscription row changed"
        );
        assert_eq!(get_subscription(&mut b, "", &sub_b.id).await, sub_b);
        assert_eq!(reveal(&mut b, "", &sub_b.id).await.secret, secret_b);

        // A sees nothing of B in its own lists, and has its own event type namespace.
        let listed = a
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.subscriptions.is_empty(), "{listed:?}");
        let listed = a
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest {
                event_type: "conversation.created".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(listed.subscriptions.is_empty(), "{listed:?}");
        let listed = a
            .event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            listed
                .event_types
                .iter()
                .all(|t| t.name.starts_with("sluice.")),
            "only Sluice's own types: {listed:?}"
        );
        a.event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: ws_a.clone(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let (sub_a, _) =
            create_subscription(&mut a, &ws_a, new_subscription(RECEIVER, &["*"])).await;
        assert_eq!(sub_a.workspace_id, ws_a);
        // B cannot see A's either.
        assert_code(
            "Get A's subscription as B",
            b.subscriptions
                .get_subscription(pb::GetSubscriptionRequest {
                    workspace_id: String::new(),
                    id: sub_a.id.clone(),
                })
                .await,
            nf,
        );
        let listed = b
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.subscriptions, vec![sub_b.clone()]);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_names_the_workspace() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws_a, _) = h.workspace_with_key("A").await;
        let (ws_b, key_b) = h.workspace_with_key("B").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let before = counts(&h.db).await;

        let err = admin
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap_err();
        assert_invalid(&err, "workspace_id");
        let err = admin
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(new_subscription(RECEIVER, &["*"])),
                secret: String::new(),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "workspace_id");
        let err = admin
            .event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "a.b".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "workspace_id");
        let err = admin
            .event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await
            .unwrap_err();
        assert_invalid(&err, "workspace_id");
        let err = admin
            .deliveries
            .list_messages(pb::ListMessagesRequest::default())
            .await
            .unwrap_err();
        assert_invalid(&err, "workspace_id");
        // A workspace that does not exist.
        let missing = sluice_core::ids::new_id(sluice_core::ids::IdKind::Workspace);
        assert_code(
            "CreateSubscription in a missing workspace",
            admin
                .subscriptions
                .create_subscription(pb::CreateSubscriptionRequest {
                    workspace_id: missing,
                    subscription: Some(new_subscription(RECEIVER, &["*"])),
                    secret: String::new(),
                })
                .await,
            Code::NotFound,
        );
        assert_eq!(counts(&h.db).await, before);

        // Naming it works, and the result belongs to that workspace.
        let (sub, _) =
            create_subscription(&mut admin, &ws_b, new_subscription(RECEIVER, &["*"])).await;
        assert_eq!(sub.workspace_id, ws_b);
        assert_eq!(get_subscription(&mut admin, &ws_b, &sub.id).await, sub);
        let mut b = h.clients(Some(&key_b)).await;
        assert_eq!(
            get_subscription(&mut b, "", &sub.id).await,
            sub,
            "B's key sees what the admin made in B"
        );
        // The admin naming the wrong workspace does not find it.
        assert_code(
            "admin Get in the wrong workspace",
            admin
                .subscriptions
                .get_subscription(pb::GetSubscriptionRequest {
                    workspace_id: ws_a.clone(),
                    id: sub.id.clone(),
                })
                .await,
            Code::NotFound,
        );
        assert_code(
            "admin Delete in the wrong workspace",
            admin
                .subscriptions
                .delete_subscription(pb::DeleteSubscriptionRequest {
                    workspace_id: ws_a.clone(),
                    id: sub.id.clone(),
                })
                .await,
            Code::NotFound,
        );
        admin
            .subscriptions
            .disable_subscription(pb::DisableSubscriptionRequest {
                workspace_id: ws_b.clone(),
                id: sub.id.clone(),
                message: "by the operator".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            get_subscription(&mut b, "", &sub.id).await.state,
            pb::SubscriptionState::Disabled as i32
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_workspace_removes_its_resources_and_keys() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws_a, key_a) = h.workspace_with_key("A").await;
        let (_ws_b, key_b) = h.workspace_with_key("B").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let second_key = admin
            .workspaces
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: ws_a.clone(),
                display_name: "second".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .key;
        let mut a = h.clients(Some(&key_a)).await;
        let mut b = h.clients(Some(&key_b)).await;
        create_subscription(&mut a, "", new_subscription(RECEIVER, &["*"])).await;
        create_subscription(&mut a, "", new_subscription(RECEIVER, &["conversation.*"])).await;
        a.event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let (sub_b, _) = create_subscription(&mut b, "", new_subscription(RECEIVER, &["*"])).await;
        b.event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "conversation.created".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();

        let before = counts(&h.db).await;
        admin
            .workspaces
            .delete_workspace(pb::DeleteWorkspaceRequest { id: ws_a.clone() })
            .await
            .unwrap();
        let after = counts(&h.db).await;
        assert_eq!(
            delta(&before, &after),
            vec![
                ("subscriptions", -2),
                ("config_changes", 4),
                ("event_types", -1),
                ("workspaces", -1),
                ("api_keys", -2)
            ],
            "deleting A must remove its 2 subscriptions, event type, workspace and 2 keys, and record one change \
             per subscription and key for the data plane"
        );

        for (what, key) in [("A's first key", &key_a), ("A's second key", &second_key)] {
            let mut c = h.clients(Some(key)).await;
            every_service_answers(
                &mut c,
                &format!("{what} after DeleteWorkspace"),
                Code::Unauthenticated,
            )
            .await;
        }
        assert_code(
            "GetWorkspace A after delete",
            admin
                .workspaces
                .get_workspace(pb::GetWorkspaceRequest { id: ws_a.clone() })
                .await,
            Code::NotFound,
        );
        assert_code(
            "DeleteWorkspace A again",
            admin
                .workspaces
                .delete_workspace(pb::DeleteWorkspaceRequest { id: ws_a.clone() })
                .await,
            Code::NotFound,
        );
        assert_code(
            "ListSubscriptions of the deleted workspace",
            admin
                .subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    workspace_id: ws_a.clone(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
        );
        let keys = admin
            .workspaces
            .list_api_keys(pb::ListApiKeysRequest {
                workspace_id: ws_a.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().api_keys);
        assert!(
            keys.as_ref().map_or(true, Vec::is_empty),
            "keys of a deleted workspace: {keys:?}"
        );

        // B is untouched.
        assert_eq!(get_subscription(&mut b, "", &sub_b.id).await, sub_b);
        assert_eq!(count_rows(&h.db, "workspaces").await, 1);
        let listed = b
            .event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed
                .event_types
                .iter()
                .filter(|t| !t.name.starts_with("sluice."))
                .count(),
            1
        );
        h.stop().await;
    }
}
