//! The control plane's API as a user walks through it: workspaces, keys, event types and subscriptions end to end, pagination, list filters, and the config change log the data plane follows.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use sea_orm::{EntityTrait, QueryOrder};
use sluice_core::signing::SigningSecret;
use sluice_proto::control::v1 as pb;
use sluice_testkit::{ADMIN_KEY, ControlHarness, assert_invalid, backends, count_rows, now_secs};
use sluice_tests::control::*;
use sluice_tests::headers;
use tonic::Code;

const RECEIVER: &str = "http://127.0.0.1:9/x";

#[tokio::test(flavor = "multi_thread")]
async fn readme_walk_through() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;

        // 1. A workspace, then a key for it, shown once.
        let ws = admin
            .workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: "Tideflow".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        assert!(ws.id.starts_with("wrk_"), "{ws:?}");
        assert_eq!(ws.display_name, "Tideflow");
        assert!(
            ws.create_time.is_some() && ws.update_time.is_some(),
            "{ws:?}"
        );

        let created_key = admin
            .workspaces
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: ws.id.clone(),
                display_name: "publisher".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let key = created_key.key.clone();
        let key_record = created_key.api_key.unwrap();
        assert!(key.starts_with("sk_") && key.len() > 20, "key {key:?}");
        assert!(key_record.id.starts_with("key_"), "{key_record:?}");
        assert_eq!(key_record.workspace_id, ws.id);
        assert_eq!(key_record.display_name, "publisher");
        assert!(key_record.revoke_time.is_none());
        assert!(!key_record.key_prefix.is_empty() && key.starts_with(&key_record.key_prefix));
        assert!(
            key_record.key_prefix.len() < key.len(),
            "the prefix must not be the whole key"
        );

        let listed = admin
            .workspaces
            .list_api_keys(pb::ListApiKeysRequest {
                workspace_id: ws.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.api_keys.len(), 1);
        assert_eq!(
            listed.api_keys[0], key_record,
            "ListApiKeys shows the same record"
        );
        assert!(
            !format!("{listed:?}").contains(&key),
            "ListApiKeys must never show the key itself"
        );
        // Stored hashed: no column of the stored row holds the key.
        let rows = sluice_store::control::api_key::Entity::find()
            .all(&h.db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert!(
            !format!("{rows:?}").contains(&key),
            "the key is stored in clear: {rows:?}"
        );

        let mut c = h.clients(Some(&key)).await;

        // 2. An event type, UPPER_SNAKE in, dotted stored.
        let example =
            sluice_proto::json::json_to_struct(r#"{"conversation": {"id": "cnv_1"}}"#).unwrap();
        let et = c
            .event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "CONVERSATION_CREATED".into(),
                    description: "A conversation started".into(),
                    example: Some(example.clone()),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert_eq!(et.name, "conversation.created");
        assert_eq!(et.workspace_id, ws.id);
        assert_eq!(et.version, 1, "version 0 means 1");
        assert_eq!(et.description, "A conversation started");
        assert_eq!(et.example, Some(example));
        assert!(!et.archived);
        for spelling in [
            "conversation.created",
            "CONVERSATION_CREATED",
            "Conversation.Created",
        ] {
            let got = c
                .event_types
                .get_event_type(pb::GetEventTypeRequest {
                    workspace_id: String::new(),
                    name: spelling.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("GetEventType {spelling:?}: {s:?}"))
                .into_inner()
                .event_type
                .unwrap();
            assert_eq!(got, et, "GetEventType {spelling:?}");
        }
        for spelling in ["conversation.created", "CONVERSATION_CREATED"] {
            let err = c
                .event_types
                .create_event_type(pb::CreateEventTypeRequest {
                    workspace_id: String::new(),
                    event_type: Some(pb::EventType {
                        name: spelling.into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Code::AlreadyExists,
                "creating {spelling:?} again: {err:?}"
            );
        }
        assert_eq!(count_rows(&h.db, "event_types").await, 1);

        // 3. A subscription to every conversation event, with a custom header.
        let created = c
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    url: RECEIVER.into(),
                    filters: vec!["conversation.*".into()],
                    headers: headers(&[("x-tenant", "acme")]),
                    description: "CRM".into(),
                    rate_limit_per_second: 10,
                    ..Default::default()
                }),
                secret: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let secret = created.secret.clone();
        let sub = created.subscription.unwrap();
        assert!(secret.starts_with("whsec_"), "secret {secret:?}");
        assert!(
            SigningSecret::parse(&secret).is_ok(),
            "the generated secret parses: {secret:?}"
        );
        assert!(sub.id.starts_with("sub_"), "{sub:?}");
        assert_eq!(sub.workspace_id, ws.id);
        assert_eq!(sub.url, RECEIVER);
        assert_eq!(sub.filters, vec!["conversation.*".to_owned()]);
        assert_eq!(sub.headers, headers(&[("x-tenant", "acme")]));
        assert_eq!(sub.description, "CRM");
        assert_eq!(sub.rate_limit_per_second, 10);
        assert_eq!(sub.destination_type, pb::DestinationType::Webhook as i32);
        assert_eq!(sub.state, pb::SubscriptionState::Enabled as i32);
        assert_eq!(sub.disabled_reason, pb::DisabledReason::Unspecified as i32);
        assert!(
            sub.disable_time.is_none() && sub.create_time.is_some() && sub.update_time.is_some()
        );
        assert!(
            !format!("{sub:?}").contains(&secret),
            "the Subscription message must not carry the secret"
        );

        // 4. List, then update two fields by field mask.
        let list = c
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.subscriptions, vec![sub.clone()]);
        assert!(list.next_page_token.is_empty());

        let updated = c
            .subscriptions
            .update_subscription(pb::UpdateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    id: sub.id.clone(),
                    description: "CRM sync".into(),
                    filters: vec!["conversation.created".into(), "MESSAGE_*".into()],
                    // Not in the mask: must be ignored.
                    url: "http://127.0.0.1:9/elsewhere".into(),
                    headers: headers(&[("x-other", "1")]),
                    rate_limit_per_second: 99,
                    destination_type: pb::DestinationType::Slack as i32,
                    ..Default::default()
                }),
                update_mask: mask(&["description", "filters"]),
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap();
        assert_eq!(updated.description, "CRM sync");
        assert_eq!(
            updated.filters,
            vec!["conversation.created".to_owned(), "message.*".to_owned()]
        );
        let unchanged = pb::Subscription {
            description: updated.description.clone(),
            filters: updated.filters.clone(),
            update_time: updated.update_time,
            ..sub.clone()
        };
        assert_eq!(
            updated, unchanged,
            "only description and filters may change"
        );
        assert!(updated.update_time.unwrap().seconds >= sub.update_time.unwrap().seconds);
        assert_eq!(get_subscription(&mut c, "", &sub.id).await, updated);

        // 5. Reveal, rotate (default grace), reveal again.
        let revealed = reveal(&mut c, "", &sub.id).await;
        assert_eq!(revealed.secret, secret);
        assert!(
            revealed.previous_secret.is_empty() && revealed.previous_secret_expire_time.is_none()
        );

        let rotated = c
            .subscriptions
            .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                id: sub.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            rotated.secret.starts_with("whsec_") && rotated.secret != secret,
            "{rotated:?}"
        );
        let expire = rotated.previous_secret_expire_time.unwrap();
        let in_24h = now_secs() + 24 * 3600;
        assert!(
            (expire.seconds - in_24h).abs() < 300,
            "previous secret expires at {expire:?}, expected ~24 h from now"
        );
        let revealed = reveal(&mut c, "", &sub.id).await;
        assert_eq!(revealed.secret, rotated.secret);
        assert_eq!(revealed.previous_secret, secret);
        assert_eq!(revealed.previous_secret_expire_time, Some(expire));

        // Rotate with no grace: the old secret stops at once.
        let rotated2 = c
            .subscriptions
            .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                id: sub.id.clone(),
                grace_period: secs(0),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            rotated2.secret != rotated.secret && rotated2.previous_secret_expire_time.is_none(),
            "{rotated2:?}"
        );
        let revealed = reveal(&mut c, "", &sub.id).await;
        assert_eq!(revealed.secret, rotated2.secret);
        assert_eq!(revealed.previous_secret, "");
        assert!(revealed.previous_secret_expire_time.is_none());

        // Rotate to a chosen secret with a one-hour grace.
        let chosen = SigningSecret::from_bytes(vec![7u8; 32]).unwrap().to_whsec();
        let rotated3 = c
            .subscriptions
            .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                id: sub.id.clone(),
                secret: chosen.clone(),
                grace_period: secs(3600),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rotated3.secret, chosen);
        let expire = rotated3.previous_secret_expire_time.unwrap();
        assert!(
            (expire.seconds - (now_secs() + 3600)).abs() < 300,
            "{expire:?}"
        );
        let revealed = reveal(&mut c, "", &sub.id).await;
        assert_eq!(
            (revealed.secret.as_str(), revealed.previous_secret.as_str()),
            (chosen.as_str(), rotated2.secret.as_str())
        );

        // Disable with a message, enable.
        let disabled = c
            .subscriptions
            .disable_subscription(pb::DisableSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
                message: "endpoint under maintenance".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap();
        assert_eq!(disabled.state, pb::SubscriptionState::Disabled as i32);
        assert_eq!(disabled.disabled_reason, pb::DisabledReason::User as i32);
        assert_eq!(disabled.disabled_message, "endpoint under maintenance");
        assert!(disabled.disable_time.is_some());
        assert_eq!(get_subscription(&mut c, "", &sub.id).await, disabled);

        let enabled = c
            .subscriptions
            .enable_subscription(pb::EnableSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap();
        assert_eq!(enabled.state, pb::SubscriptionState::Enabled as i32);
        assert_eq!(
            enabled.disabled_reason,
            pb::DisabledReason::Unspecified as i32
        );
        assert_eq!(enabled.disabled_message, "");
        assert!(enabled.disable_time.is_none());
        assert_eq!(
            enabled.filters, updated.filters,
            "enable keeps the settings"
        );
        assert_eq!(
            reveal(&mut c, "", &sub.id).await.secret,
            chosen,
            "enable keeps the secret"
        );

        // 6. Delete it.
        c.subscriptions
            .delete_subscription(pb::DeleteSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
            })
            .await
            .unwrap();
        let err = c
            .subscriptions
            .get_subscription(pb::GetSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let err = c
            .subscriptions
            .delete_subscription(pb::DeleteSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "deleting twice: {err:?}");
        let list = c
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(list.subscriptions.is_empty(), "{list:?}");
        assert_eq!(count_rows(&h.db, "subscriptions").await, 0);

        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_types_archive_unarchive_and_update() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        for name in [
            "conversation.created",
            "CALL_HANDLED",
            "billing.invoice.paid",
        ] {
            c.event_types
                .create_event_type(pb::CreateEventTypeRequest {
                    workspace_id: String::new(),
                    event_type: Some(pb::EventType {
                        name: name.into(),
                        description: format!("about {name}"),
                        example: sluice_proto::json::json_to_struct(r#"{"n": 1}"#),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
        // The workspace's own types (every catalog also lists Sluice's `sluice.*` ones).
        let names = |r: pb::ListEventTypesResponse| {
            r.event_types
                .into_iter()
                .map(|e| e.name)
                .filter(|name| !name.starts_with("sluice."))
                .collect::<Vec<_>>()
        };
        let all = [
            "billing.invoice.paid",
            "call.handled",
            "conversation.created",
        ];
        let listed = c
            .event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(names(listed), all, "listed by name");

        let archived = c
            .event_types
            .archive_event_type(pb::ArchiveEventTypeRequest {
                workspace_id: String::new(),
                name: "CALL_HANDLED".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert_eq!(archived.name, "call.handled");
        assert!(archived.archived);
        let got = c
            .event_types
            .get_event_type(pb::GetEventTypeRequest {
                workspace_id: String::new(),
                name: "call.handled".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert!(got.archived, "Get still finds an archived type: {got:?}");

        let listed = c
            .event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            names(listed),
            ["billing.invoice.paid", "conversation.created"],
            "archived types are hidden"
        );
        let listed = c
            .event_types
            .list_event_types(pb::ListEventTypesRequest {
                show_archived: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed
                .event_types
                .iter()
                .filter(|e| !e.name.starts_with("sluice."))
                .map(|e| (e.name.as_str(), e.archived))
                .collect::<Vec<_>>(),
            [
                ("billing.invoice.paid", false),
                ("call.handled", true),
                ("conversation.created", false)
            ]
        );
        // The name stays taken while archived.
        let err = c
            .event_types
            .create_event_type(pb::CreateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "call.handled".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

        let restored = c
            .event_types
            .unarchive_event_type(pb::UnarchiveEventTypeRequest {
                workspace_id: String::new(),
                name: "call.handled".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert!(!restored.archived);
        let listed = c
            .event_types
            .list_event_types(pb::ListEventTypesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(names(listed), all);

        // Update by mask: only the description changes.
        let before = c
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
        let updated = c
            .event_types
            .update_event_type(pb::UpdateEventTypeRequest {
                workspace_id: String::new(),
                event_type: Some(pb::EventType {
                    name: "CONVERSATION_CREATED".into(),
                    description: "A conversation started".into(),
                    version: 2,
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            })
            .await
            .unwrap()
            .into_inner()
            .event_type
            .unwrap();
        assert_eq!(
            updated,
            pb::EventType {
                description: "A conversation started".into(),
                update_time: updated.update_time,
                ..before
            },
            "only the description may change"
        );

        for missing in ["ticket.created", "TICKET_CREATED"] {
            let err = c
                .event_types
                .archive_event_type(pb::ArchiveEventTypeRequest {
                    workspace_id: String::new(),
                    name: missing.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "archiving {missing:?}: {err:?}");
            let err = c
                .event_types
                .get_event_type(pb::GetEventTypeRequest {
                    workspace_id: String::new(),
                    name: missing.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "getting {missing:?}: {err:?}");
        }
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_update_by_mask_and_listing() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws, key) = h.workspace_with_key("Old name").await;
        let (other, _) = h.workspace_with_key("Other").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;

        let before = admin
            .workspaces
            .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        let updated = admin
            .workspaces
            .update_workspace(pb::UpdateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    id: ws.clone(),
                    display_name: "Tideflow".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        assert_eq!(updated.display_name, "Tideflow");
        assert_eq!(
            (&updated.id, updated.create_time),
            (&before.id, before.create_time)
        );
        assert!(updated.update_time.unwrap().seconds >= before.update_time.unwrap().seconds);

        // The workspace's own key may get it (and sees the new name), but nothing else.
        let mut c = h.clients(Some(&key)).await;
        let own = c
            .workspaces
            .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        assert_eq!(own, updated);

        let listed = admin
            .workspaces
            .list_workspaces(pb::ListWorkspacesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut names: Vec<(String, String)> = listed
            .workspaces
            .into_iter()
            .map(|w| (w.id, w.display_name))
            .collect();
        names.sort();
        let mut want = vec![
            (ws.clone(), "Tideflow".to_owned()),
            (other.clone(), "Other".to_owned()),
        ];
        want.sort();
        assert_eq!(names, want);

        // Paged one at a time.
        let first = admin
            .workspaces
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.workspaces.len(), 1);
        assert!(!first.next_page_token.is_empty());
        let second = admin
            .workspaces
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: 1,
                page_token: first.next_page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.workspaces.len(), 1);
        assert_ne!(first.workspaces[0].id, second.workspaces[0].id);
        assert!(
            second.next_page_token.is_empty(),
            "two workspaces, two pages: {second:?}"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_paginate() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let mut created = Vec::new();
        for i in 0..7 {
            let (s, _) = create_subscription(
                &mut c,
                "",
                new_subscription(&format!("{RECEIVER}/{i}"), &["*"]),
            )
            .await;
            created.push(s.id);
        }

        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            pages.push(
                page.subscriptions
                    .iter()
                    .map(|s| s.id.clone())
                    .collect::<Vec<_>>(),
            );
            assert!(pages.len() <= 3, "too many pages: {pages:?}");
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 1],
            "{pages:?}"
        );
        let seen: Vec<String> = pages.concat();
        assert_eq!(
            seen.iter().collect::<HashSet<_>>().len(),
            7,
            "duplicates across pages: {pages:?}"
        );
        assert_eq!(seen, created, "every subscription, oldest first");

        // 0 means the default page (50): all seven, no token.
        let page = c
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.subscriptions.len(), 7);
        assert!(page.next_page_token.is_empty());
        // Exactly a page's worth: no further page is promised.
        let page = c
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest {
                page_size: 7,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.subscriptions.len(), 7);
        assert!(
            page.next_page_token.is_empty(),
            "a full last page must not carry a token: {:?}",
            page.next_page_token
        );
        let page = c
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.subscriptions.len(), 7);

        for size in [-1, 1001, i32::MIN, i32::MAX] {
            let err = c
                .subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    page_size: size,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_invalid(&err, "page_size");
        }
        for token in ["!!!", "not a token", "%%%%", "\u{e9}t\u{e9}"] {
            let err = c
                .subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    page_token: token.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_invalid(&err, "page_token");
            let err = c
                .event_types
                .list_event_types(pb::ListEventTypesRequest {
                    page_token: token.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_invalid(&err, "page_token");
        }
        h.stop().await;
    }
}

/// A page token is opaque: one the server never issued must be refused, not read as a
/// position (AIP-158). Here: base64url of plain text, and a token of another list.
#[tokio::test(flavor = "multi_thread")]
async fn page_tokens_not_issued_for_the_list_are_refused() {
    let mut problems = Vec::new();
    for backend in backends() {
        let backend_label = backend.label();
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        h.workspace_with_key("Other").await;
        let mut c = h.clients(Some(&key)).await;
        for i in 0..3 {
            create_subscription(
                &mut c,
                "",
                new_subscription(&format!("{RECEIVER}/{i}"), &["*"]),
            )
            .await;
        }
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let workspace_token = admin
            .workspaces
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token;
        assert!(!workspace_token.is_empty());
        // "Zm9vYmFy" is base64url of "foobar"; "d3JrXw" of "wrk_".
        for token in ["Zm9vYmFy", "d3JrXw", workspace_token.as_str()] {
            let result = c
                .subscriptions
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    workspace_id: ws.clone(),
                    page_token: token.into(),
                    ..Default::default()
                })
                .await;
            match result {
                Err(status) => assert_invalid(&status, "page_token"),
                Ok(r) => problems.push(format!(
                    "{backend_label}: page_token {token:?} answered {} of the 3 subscriptions",
                    r.into_inner().subscriptions.len()
                )),
            }
        }
        h.stop().await;
    }
    assert!(
        problems.is_empty(),
        "BUG: ListSubscriptions accepts page tokens it never issued instead of INVALID_ARGUMENT page_token \
         (crates/control/src/page.rs PageRequest::parse takes any base64url UTF-8 text as the last key, so a \
         token of another list silently skips rows):\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn other_lists_paginate() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let mut c = h.clients(Some(&key)).await;
        for name in ["a.one", "b.two", "c.three", "d.four", "e.five"] {
            c.event_types
                .create_event_type(pb::CreateEventTypeRequest {
                    workspace_id: String::new(),
                    event_type: Some(pb::EventType {
                        name: name.into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .event_types
                .list_event_types(pb::ListEventTypesRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            sizes.push(page.event_types.len());
            seen.extend(page.event_types.into_iter().map(|e| e.name));
            assert!(sizes.len() <= 5, "too many pages");
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        // Five of the workspace's and Sluice's four operational types.
        assert_eq!(sizes, [2, 2, 2, 2, 1]);
        assert_eq!(
            seen,
            [
                "a.one",
                "b.two",
                "c.three",
                "d.four",
                "e.five",
                "sluice.endpoint.recovered",
                "sluice.endpoint.unhealthy",
                "sluice.subscription.disabled",
                "sluice.subscription.enabled"
            ]
        );

        // Keys: the harness's plus two more, one a page.
        for name in ["ci", "backup"] {
            admin
                .workspaces
                .create_api_key(pb::CreateApiKeyRequest {
                    workspace_id: ws.clone(),
                    display_name: name.into(),
                })
                .await
                .unwrap();
        }
        let mut ids = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin
                .workspaces
                .list_api_keys(pb::ListApiKeysRequest {
                    workspace_id: ws.clone(),
                    page_size: 1,
                    page_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.api_keys.len(), 1);
            ids.push(page.api_keys[0].id.clone());
            assert!(ids.len() <= 3, "too many pages");
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "{ids:?}");
        let err = admin
            .workspaces
            .list_api_keys(pb::ListApiKeysRequest {
                workspace_id: ws.clone(),
                page_size: 1001,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "page_size");
        let err = admin
            .workspaces
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: -5,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "page_size");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_list_by_event_type_and_state() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let (family, _) =
            create_subscription(&mut c, "", new_subscription(RECEIVER, &["conversation.*"])).await;
        let (exact, _) = create_subscription(
            &mut c,
            "",
            new_subscription(RECEIVER, &["CONVERSATION_CREATED"]),
        )
        .await;
        let (billing, _) =
            create_subscription(&mut c, "", new_subscription(RECEIVER, &["billing.*"])).await;
        let (everything, _) =
            create_subscription(&mut c, "", new_subscription(RECEIVER, &["*"])).await;
        c.subscriptions
            .disable_subscription(pb::DisableSubscriptionRequest {
                workspace_id: String::new(),
                id: billing.id.clone(),
                message: String::new(),
            })
            .await
            .unwrap();
        let req = |event_type: &str, state: pb::SubscriptionState| pb::ListSubscriptionsRequest {
            event_type: event_type.into(),
            state: state as i32,
            ..Default::default()
        };
        use pb::SubscriptionState::{Disabled, Enabled, Unspecified};
        let cases = [
            (
                "conversation.created",
                Unspecified,
                vec![&family, &exact, &everything],
            ),
            (
                "CONVERSATION_CREATED",
                Unspecified,
                vec![&family, &exact, &everything],
            ),
            (
                "conversation.deleted",
                Unspecified,
                vec![&family, &everything],
            ),
            (
                "billing.invoice.paid",
                Unspecified,
                vec![&billing, &everything],
            ),
            ("billing.invoice.paid", Enabled, vec![&everything]),
            ("billing.invoice.paid", Disabled, vec![&billing]),
            ("ticket.created", Unspecified, vec![&everything]),
            ("", Enabled, vec![&family, &exact, &everything]),
            ("", Disabled, vec![&billing]),
            (
                "",
                Unspecified,
                vec![&family, &exact, &billing, &everything],
            ),
        ];
        for (event_type, state, want) in cases {
            let want: Vec<String> = want.iter().map(|s| s.id.clone()).collect();
            let got = list_all_subscription_ids(&mut c, req(event_type, state)).await;
            assert_eq!(got, want, "event_type {event_type:?}, state {state:?}");
            // One a page gives the same, across pages.
            let paged = list_all_subscription_ids(
                &mut c,
                pb::ListSubscriptionsRequest {
                    page_size: 1,
                    ..req(event_type, state)
                },
            )
            .await;
            assert_eq!(
                paged, want,
                "paged: event_type {event_type:?}, state {state:?}"
            );
        }
        let err = c
            .subscriptions
            .list_subscriptions(req("conversation", Unspecified))
            .await
            .unwrap_err();
        assert_invalid(&err, "event_type");
        let err = c
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest {
                state: 42,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "state");
        h.stop().await;
    }
}

/// Every change the data plane must learn of adds exactly one row to `config_changes`,
/// naming the resource; failed calls add none.
#[tokio::test(flavor = "multi_thread")]
async fn config_changes_record_each_change_once() {
    use sluice_store::control::config_change;
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (ws, key) = h.workspace_with_key("Tideflow").await;
        let mut admin = h.clients(Some(ADMIN_KEY)).await;
        let mut c = h.clients(Some(&key)).await;

        // The last change row, after asserting exactly one was added since `before`.
        async fn one_more(
            db: &sea_orm::DatabaseConnection,
            before: i64,
            what: &str,
        ) -> config_change::Model {
            let after = count_rows(db, "config_changes").await;
            assert_eq!(
                after - before,
                1,
                "{what} must add exactly one config change (added {})",
                after - before
            );
            config_change::Entity::find()
                .order_by_desc(config_change::Column::Revision)
                .one(db)
                .await
                .unwrap()
                .unwrap()
        }
        let mut last_revision = 0;
        let mut check = |row: &config_change::Model, kind: &str, id: &str, what: &str| {
            assert_eq!(
                (
                    row.kind.as_str(),
                    row.resource_id.as_str(),
                    row.workspace_id.as_str()
                ),
                (kind, id, ws.as_str()),
                "{what}"
            );
            assert!(
                row.revision > last_revision,
                "{what}: revisions must increase ({} after {last_revision})",
                row.revision
            );
            last_revision = row.revision;
        };

        let n = count_rows(&h.db, "config_changes").await;
        let (sub, _) =
            create_subscription(&mut c, "", new_subscription(RECEIVER, &["conversation.*"])).await;
        check(
            &one_more(&h.db, n, "CreateSubscription").await,
            "subscription",
            &sub.id,
            "create",
        );

        let n = count_rows(&h.db, "config_changes").await;
        c.subscriptions
            .update_subscription(pb::UpdateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    id: sub.id.clone(),
                    rate_limit_per_second: 5,
                    ..Default::default()
                }),
                update_mask: mask(&["rate_limit_per_second"]),
            })
            .await
            .unwrap();
        check(
            &one_more(&h.db, n, "UpdateSubscription").await,
            "subscription",
            &sub.id,
            "update",
        );

        let n = count_rows(&h.db, "config_changes").await;
        c.subscriptions
            .disable_subscription(pb::DisableSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
                message: "pause".into(),
            })
            .await
            .unwrap();
        check(
            &one_more(&h.db, n, "DisableSubscription").await,
            "subscription",
            &sub.id,
            "disable",
        );

        let n = count_rows(&h.db, "config_changes").await;
        c.subscriptions
            .enable_subscription(pb::EnableSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
            })
            .await
            .unwrap();
        check(
            &one_more(&h.db, n, "EnableSubscription").await,
            "subscription",
            &sub.id,
            "enable",
        );

        for grace in [None, secs(0)] {
            let n = count_rows(&h.db, "config_changes").await;
            c.subscriptions
                .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                    id: sub.id.clone(),
                    grace_period: grace,
                    ..Default::default()
                })
                .await
                .unwrap();
            check(
                &one_more(&h.db, n, "RotateSubscriptionSecret").await,
                "subscription",
                &sub.id,
                "rotate",
            );
        }

        // Reads and failed writes record nothing.
        let n = count_rows(&h.db, "config_changes").await;
        get_subscription(&mut c, "", &sub.id).await;
        reveal(&mut c, "", &sub.id).await;
        c.subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await
            .unwrap();
        let missing = sluice_core::ids::new_id(sluice_core::ids::IdKind::Subscription);
        let err = c
            .subscriptions
            .enable_subscription(pb::EnableSubscriptionRequest {
                workspace_id: String::new(),
                id: missing.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = c
            .subscriptions
            .update_subscription(pb::UpdateSubscriptionRequest {
                workspace_id: String::new(),
                subscription: Some(pb::Subscription {
                    id: missing,
                    description: "x".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            count_rows(&h.db, "config_changes").await,
            n,
            "reads and failed writes must not record changes"
        );

        let n = count_rows(&h.db, "config_changes").await;
        c.subscriptions
            .delete_subscription(pb::DeleteSubscriptionRequest {
                workspace_id: String::new(),
                id: sub.id.clone(),
            })
            .await
            .unwrap();
        check(
            &one_more(&h.db, n, "DeleteSubscription").await,
            "subscription",
            &sub.id,
            "delete",
        );

        let n = count_rows(&h.db, "config_changes").await;
        let new_key = admin
            .workspaces
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: ws.clone(),
                display_name: "ci".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .api_key
            .unwrap();
        check(
            &one_more(&h.db, n, "CreateApiKey").await,
            "api_key",
            &new_key.id,
            "create key",
        );

        let n = count_rows(&h.db, "config_changes").await;
        let revoked = admin
            .workspaces
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: new_key.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .api_key
            .unwrap();
        assert!(revoked.revoke_time.is_some());
        check(
            &one_more(&h.db, n, "RevokeApiKey").await,
            "api_key",
            &new_key.id,
            "revoke key",
        );

        h.stop().await;
    }
}

/// UpdateSubscription with update_mask [url] changes the URL only: the destination type,
/// not in the mask, is neither read from the request nor reset (AIP-134).
#[tokio::test(flavor = "multi_thread")]
async fn url_update_keeps_the_destination_type() {
    let mut problems = Vec::new();
    for backend in backends() {
        let backend_label = backend.label();
        let h = ControlHarness::start(&backend, true, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        // A Slack-format endpoint behind a relay (not hooks.slack.com), chosen explicitly.
        let (slack, _) = create_subscription(
            &mut c,
            "",
            pb::Subscription {
                destination_type: pb::DestinationType::Slack as i32,
                ..new_subscription("https://relay.example.com/slack/1", &["*"])
            },
        )
        .await;
        assert_eq!(slack.destination_type, pb::DestinationType::Slack as i32);
        let (webhook, _) = create_subscription(
            &mut c,
            "",
            new_subscription("https://example.com/hooks", &["*"]),
        )
        .await;
        assert_eq!(
            webhook.destination_type,
            pb::DestinationType::Webhook as i32
        );

        for (sub, body_type) in [
            (&slack, pb::DestinationType::Unspecified),
            (&webhook, pb::DestinationType::Slack),
        ] {
            let new_url = format!("{}/moved", sub.url);
            let updated = c
                .subscriptions
                .update_subscription(pb::UpdateSubscriptionRequest {
                    workspace_id: String::new(),
                    subscription: Some(pb::Subscription {
                        id: sub.id.clone(),
                        url: new_url.clone(),
                        destination_type: body_type as i32,
                        ..Default::default()
                    }),
                    update_mask: mask(&["url"]),
                })
                .await
                .unwrap()
                .into_inner()
                .subscription
                .unwrap();
            assert_eq!(updated.url, new_url);
            if updated.destination_type != sub.destination_type {
                problems.push(format!(
                    "{backend_label} {}: destination_type went from {:?} to {:?} on an update_mask of [url] (request carried {body_type:?})",
                    sub.url,
                    pb::DestinationType::try_from(sub.destination_type),
                    pb::DestinationType::try_from(updated.destination_type),
                ));
            }
        }
        h.stop().await;
    }
    assert!(
        problems.is_empty(),
        "BUG: a url-only update reads and applies destination_type, which is not in the mask \
             (crates/control/src/subscription.rs validate: `selected(\"destination_type\") || selected(\"url\")`, \
             and update_subscription: `has(\"url\") || has(\"destination_type\")`):\n{}",
        problems.join("\n")
    );
}

/// Many writers at once (as several operators and the data plane would be): every change
/// succeeds and records exactly one config change, with distinct revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_all_succeed_and_record_once() {
    use sluice_store::control::config_change;
    let mut failures = Vec::new();
    for backend in backends() {
        let backend_label = backend.label();
        let h = ControlHarness::start(&backend, true, None).await;
        let (_ws, key) = h.workspace_with_key("Tideflow").await;
        let mut c = h.clients(Some(&key)).await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(
                create_subscription(
                    &mut c,
                    "",
                    new_subscription(&format!("{RECEIVER}/{i}"), &["*"]),
                )
                .await
                .0
                .id,
            );
        }
        let before = count_rows(&h.db, "config_changes").await;
        let channel = h.channel().await;
        let mut tasks = tokio::task::JoinSet::new();
        const TASKS: usize = 16;
        const OPS_PER_TASK: i64 = 4;
        for t in 0..TASKS {
            let mut c = sluice_testkit::Clients::new(channel.clone(), Some(&key));
            let id = ids[t % ids.len()].clone();
            tasks.spawn(async move {
                let mut errors = Vec::new();
                let r = c
                    .subscriptions
                    .update_subscription(pb::UpdateSubscriptionRequest {
                        workspace_id: String::new(),
                        subscription: Some(pb::Subscription {
                            id: id.clone(),
                            description: format!("task {t}"),
                            ..Default::default()
                        }),
                        update_mask: mask(&["description"]),
                    })
                    .await;
                errors.extend(r.err().map(|s| format!("update: {s:?}")));
                let r = c
                    .subscriptions
                    .disable_subscription(pb::DisableSubscriptionRequest {
                        workspace_id: String::new(),
                        id: id.clone(),
                        message: String::new(),
                    })
                    .await;
                errors.extend(r.err().map(|s| format!("disable: {s:?}")));
                let r = c
                    .subscriptions
                    .enable_subscription(pb::EnableSubscriptionRequest {
                        workspace_id: String::new(),
                        id: id.clone(),
                    })
                    .await;
                errors.extend(r.err().map(|s| format!("enable: {s:?}")));
                let r = c
                    .subscriptions
                    .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                        id,
                        ..Default::default()
                    })
                    .await;
                errors.extend(r.err().map(|s| format!("rotate: {s:?}")));
                errors
            });
        }
        let mut errors = Vec::new();
        while let Some(r) = tasks.join_next().await {
            errors.extend(r.unwrap());
        }
        let after = count_rows(&h.db, "config_changes").await;
        let rows = config_change::Entity::find().all(&h.db).await.unwrap();
        let revisions: HashSet<i64> = rows.iter().map(|r| r.revision).collect();
        assert_eq!(
            revisions.len(),
            rows.len(),
            "{backend_label}: revisions must be distinct"
        );
        h.stop().await;
        // Every backend runs before the verdict, so the report says which ones fail.
        if errors.is_empty() {
            assert_eq!(
                after - before,
                TASKS as i64 * OPS_PER_TASK,
                "{backend_label}: one config change per change"
            );
        } else {
            failures.push(format!(
                "{backend_label}: {} of {} concurrent changes failed (config_changes grew by {}), e.g. {}",
                errors.len(),
                TASKS as i64 * OPS_PER_TASK,
                after - before,
                errors[0]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "BUG: concurrent subscription changes fail with INTERNAL (server log: `database is locked`, SQLite codes 5 \
         and 517). Write transactions start DEFERRED and read before writing (subscription.rs `modify`, \
         `delete_subscription`; workspace.rs `revoke_api_key`), and store/src/lib.rs `lock_config_writes` does \
         nothing on SQLite, so the upgrade to a write lock fails at once instead of waiting:\n{}",
        failures.join("\n")
    );
}
