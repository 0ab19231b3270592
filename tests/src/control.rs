//! Helpers of the control-plane suites (`control_*`): table counts, field masks, and
//! subscription shortcuts.

use sea_orm::{DatabaseConnection, EntityTrait};
use sluice_proto::control::v1 as pb;
use sluice_testkit::{Clients, count_rows};

/// The tables a control-plane write may touch.
pub const TABLES: [&str; 5] = [
    "subscriptions",
    "config_changes",
    "event_types",
    "workspaces",
    "api_keys",
];

/// The row count of every table in [`TABLES`], by name, for before/after comparisons.
pub async fn counts(db: &DatabaseConnection) -> Vec<(&'static str, i64)> {
    let mut all = Vec::new();
    for table in TABLES {
        all.push((table, count_rows(db, table).await));
    }
    all
}

/// `counts` after minus `counts` before, for the tables that changed.
pub fn delta(
    before: &[(&'static str, i64)],
    after: &[(&'static str, i64)],
) -> Vec<(&'static str, i64)> {
    before
        .iter()
        .zip(after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((t, b), (_, a))| (*t, a - b))
        .collect()
}

/// A field mask of `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// A duration of `seconds`.
pub fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// A subscription to create: `url` and `filters`, nothing else.
pub fn new_subscription(url: &str, filters: &[&str]) -> pb::Subscription {
    pb::Subscription {
        url: url.to_owned(),
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        ..Default::default()
    }
}

/// Creates `subscription` in the caller's workspace (or `workspace_id`, for the admin);
/// panics on failure. Returns the subscription and its secret.
pub async fn create_subscription(
    clients: &mut Clients,
    workspace_id: &str,
    subscription: pb::Subscription,
) -> (pb::Subscription, String) {
    let r = clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            workspace_id: workspace_id.to_owned(),
            subscription: Some(subscription),
            secret: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (r.subscription.unwrap(), r.secret)
}

/// Gets a subscription; panics on failure.
pub async fn get_subscription(
    clients: &mut Clients,
    workspace_id: &str,
    id: &str,
) -> pb::Subscription {
    clients
        .subscriptions
        .get_subscription(pb::GetSubscriptionRequest {
            workspace_id: workspace_id.to_owned(),
            id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap()
}

/// Updates the fields `paths` names of `subscription` (whose `id` says which) in the
/// caller's workspace; the answer's subscription, or the refusal.
pub async fn update_subscription(
    clients: &mut Clients,
    subscription: pb::Subscription,
    paths: &[&str],
) -> Result<pb::Subscription, tonic::Status> {
    let response = clients
        .subscriptions
        .update_subscription(pb::UpdateSubscriptionRequest {
            workspace_id: String::new(),
            subscription: Some(subscription),
            update_mask: mask(paths),
        })
        .await?;
    Ok(response.into_inner().subscription.unwrap())
}

/// Updates the fields `paths` names of `workspace` (whose `id` says which), as the admin
/// `clients` are; the answer's workspace, or the refusal.
pub async fn update_workspace(
    clients: &mut Clients,
    workspace: pb::Workspace,
    paths: &[&str],
) -> Result<pb::Workspace, tonic::Status> {
    let response = clients
        .workspaces
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(workspace),
            update_mask: mask(paths),
        })
        .await?;
    Ok(response.into_inner().workspace.unwrap())
}

/// Reveals a subscription's secrets; panics on failure.
pub async fn reveal(
    clients: &mut Clients,
    workspace_id: &str,
    id: &str,
) -> pb::RevealSubscriptionSecretResponse {
    clients
        .subscriptions
        .reveal_subscription_secret(pb::RevealSubscriptionSecretRequest {
            workspace_id: workspace_id.to_owned(),
            id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The stored row of a subscription, secrets included, straight from the database.
pub async fn stored_subscription(
    db: &DatabaseConnection,
    id: &str,
) -> Option<sluice_store::control::subscription::Model> {
    sluice_store::control::subscription::Entity::find_by_id(id.to_owned())
        .one(db)
        .await
        .unwrap()
}

/// Lists every subscription id of a workspace, following page tokens.
pub async fn list_all_subscription_ids(
    clients: &mut Clients,
    request: pb::ListSubscriptionsRequest,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut request = request;
    loop {
        let page = clients
            .subscriptions
            .list_subscriptions(request.clone())
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.subscriptions.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}
