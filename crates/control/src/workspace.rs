//! `WorkspaceService`: tenants and their API keys. Admin key only, except that a workspace
//! key may get its own workspace.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use sluice_core::ids::{IdKind, is_valid_id, new_id};
use sluice_core::validate::bounded_text;
use sluice_proto::control::v1 as pb;
use sluice_store::control::{api_key, event_type, subscription, workspace};
use sluice_store::{lock_config_writes, now_ms};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Violations};
use crate::page::PageRequest;
use crate::{
    CHANGE_API_KEY, CHANGE_SUBSCRIPTION, CHANGE_WORKSPACE, ControlPlane, convert, record_change,
};

/// The longest display name.
pub const MAX_DISPLAY_NAME: usize = 200;

/// The `WorkspaceService` implementation.
pub struct WorkspaceApi(pub(crate) ControlPlane);

fn display_name(v: &mut Violations, field: &str, name: &str) {
    if name.trim().is_empty() {
        v.add(field, "required");
    } else {
        v.check(field, bounded_text(name, MAX_DISPLAY_NAME));
    }
}

/// A retention window as stored (milliseconds), checked: whole seconds from 1 s to 3650
/// days; `None` when unset (the server's default).
fn window(v: &mut Violations, field: &str, given: Option<&prost_types::Duration>) -> Option<i64> {
    let given = given?;
    if given.seconds < 0 || given.nanos < 0 {
        v.add(field, "must not be negative");
        return None;
    }
    let window = std::time::Duration::new(given.seconds as u64, given.nanos as u32);
    v.check(field, sluice_core::retention::check_window(window))?;
    i64::try_from(window.as_millis()).ok()
}

/// Idempotency keys live on their message, so they cannot outlive its window.
fn keys_within_retention(
    v: &mut Violations,
    retention_ms: Option<i64>,
    idempotency_ms: Option<i64>,
) {
    if let (Some(retention), Some(idempotency)) = (retention_ms, idempotency_ms)
        && idempotency > retention
    {
        v.add(
            "workspace.idempotency_retention",
            "must not be longer than workspace.retention (a key lives on its message)",
        );
    }
}

pub(crate) fn check_id(kind: IdKind, field: &str, id: &str) -> ApiResult<()> {
    if is_valid_id(kind, id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be an id like {}01h...", kind.prefix()),
        ))
    }
}

impl WorkspaceApi {
    /// The workspace `id` (`field` names it in errors).
    async fn find(&self, field: &str, id: &str) -> ApiResult<workspace::Model> {
        check_id(IdKind::Workspace, field, id)?;
        workspace::Entity::find_by_id(id.to_owned())
            .one(self.0.db())
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", id))
    }
}

#[tonic::async_trait]
impl pb::workspace_service_server::WorkspaceService for WorkspaceApi {
    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<pb::CreateWorkspaceResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let input = request.into_inner().workspace.unwrap_or_default();
        let mut v = Violations::default();
        display_name(&mut v, "workspace.display_name", &input.display_name);
        let retention_ms = window(&mut v, "workspace.retention", input.retention.as_ref());
        let idempotency_ms = window(
            &mut v,
            "workspace.idempotency_retention",
            input.idempotency_retention.as_ref(),
        );
        keys_within_retention(&mut v, retention_ms, idempotency_ms);
        let retry_policy = crate::policy::read(
            &mut v,
            "workspace.retry_policy",
            input.retry_policy.as_ref(),
        );
        let quota = crate::policy::publish_quota(
            &mut v,
            "workspace.publish_quota",
            input.publish_quota.as_ref(),
        );
        v.finish()?;
        let now = now_ms();
        let row = workspace::ActiveModel {
            id: Set(new_id(IdKind::Workspace)),
            display_name: Set(input.display_name),
            create_ms: Set(now),
            update_ms: Set(now),
            retention_ms: Set(retention_ms),
            idempotency_retention_ms: Set(idempotency_ms),
            retry_policy: Set(retry_policy.and_then(|p| p.to_json())),
            require_endpoint_verification: Set(input.require_endpoint_verification),
            publish_quota_rate: Set(quota.map(|(rate, _)| rate)),
            publish_quota_burst: Set(quota.map(|(_, burst)| burst)),
        };
        let (row, revision) = self
            .0
            .db()
            .transaction::<_, (workspace::Model, i64), ApiError>(|tx| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let row = row.insert(tx).await?;
                    // The data plane learns a workspace's own windows, policy and quota from
                    // the watch.
                    let revision = if crate::policy::held(&row) {
                        record_change(tx, CHANGE_WORKSPACE, &row.id, &row.id).await?
                    } else {
                        0
                    };
                    Ok((row, revision))
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        tracing::info!(workspace_id = %row.id, "workspace created");
        Ok(Response::new(pb::CreateWorkspaceResponse {
            workspace: Some(convert::workspace(row)),
        }))
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Result<Response<pb::GetWorkspaceResponse>, Status> {
        let caller = self.0.auth().caller(request.metadata()).await?;
        let id = &request.get_ref().id;
        if let Caller::Workspace(own) = &caller
            && own != id
        {
            return Err(ApiError::not_found("workspace", id).into());
        }
        let row = self.find("id", id).await?;
        Ok(Response::new(pb::GetWorkspaceResponse {
            workspace: Some(convert::workspace(row)),
        }))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let r = request.into_inner();
        let page = PageRequest::parse("workspaces", r.page_size, &r.page_token)?;
        let mut query = workspace::Entity::find()
            .order_by_asc(workspace::Column::Id)
            .limit(page.fetch());
        if let Some(after) = &page.after {
            query = query.filter(workspace::Column::Id.gt(after.clone()));
        }
        let rows = query.all(self.0.db()).await.map_err(ApiError::from)?;
        let (rows, next_page_token) = page.finish(rows, |w| w.id.clone());
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: rows.into_iter().map(convert::workspace).collect(),
            next_page_token,
        }))
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Result<Response<pb::UpdateWorkspaceResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let r = request.into_inner();
        let input = r.workspace.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "required: name the fields to update (display_name, retention, \
                 idempotency_retention, retry_policy, retry_policy.<field>, \
                 require_endpoint_verification, publish_quota)",
            );
        }
        let mut new_name = None;
        let mut new_retention = None;
        let mut new_idempotency = None;
        let mut new_verification = None;
        let mut new_quota = None;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    display_name(&mut v, "workspace.display_name", &input.display_name);
                    new_name = Some(input.display_name.clone());
                }
                "retention" => {
                    new_retention = Some(window(
                        &mut v,
                        "workspace.retention",
                        input.retention.as_ref(),
                    ));
                }
                "idempotency_retention" => {
                    new_idempotency = Some(window(
                        &mut v,
                        "workspace.idempotency_retention",
                        input.idempotency_retention.as_ref(),
                    ));
                }
                "require_endpoint_verification" => {
                    new_verification = Some(input.require_endpoint_verification);
                }
                "publish_quota" => {
                    new_quota = Some(crate::policy::publish_quota(
                        &mut v,
                        "workspace.publish_quota",
                        input.publish_quota.as_ref(),
                    ));
                }
                other if crate::policy::is_policy_path(other) => {}
                other => v.add(
                    "update_mask",
                    format!(
                        "unknown or read-only field {other:?}; updatable: display_name, \
                         retention, idempotency_retention, retry_policy, retry_policy.<field>, \
                         require_endpoint_verification, publish_quota"
                    ),
                ),
            }
        }
        v.finish()?;
        let current = self.find("workspace.id", &input.id).await?;
        let mut v = Violations::default();
        let new_policy = crate::policy::update(
            &mut v,
            "workspace.retry_policy",
            input.retry_policy.as_ref(),
            &paths,
            current.retry_policy.as_deref(),
        )
        .map(|p| p.and_then(|p| p.to_json()));
        v.finish()?;
        let retention_ms = new_retention.unwrap_or(current.retention_ms);
        let idempotency_ms = new_idempotency.unwrap_or(current.idempotency_retention_ms);
        let mut v = Violations::default();
        keys_within_retention(&mut v, retention_ms, idempotency_ms);
        v.finish()?;
        let policy = new_policy.unwrap_or_else(|| current.retry_policy.clone());
        let (quota_rate, quota_burst) = match new_quota {
            Some(quota) => (quota.map(|(rate, _)| rate), quota.map(|(_, burst)| burst)),
            None => (current.publish_quota_rate, current.publish_quota_burst),
        };
        // The data plane holds a workspace while it sets a window, a policy or a quota: any
        // change of those (one going back to the defaults included) is sent.
        let windows_changed = retention_ms != current.retention_ms
            || idempotency_ms != current.idempotency_retention_ms
            || policy != current.retry_policy
            || quota_rate != current.publish_quota_rate
            || quota_burst != current.publish_quota_burst;
        let mut row = current.into_active_model();
        row.retry_policy = Set(policy);
        if let Some(name) = new_name {
            row.display_name = Set(name);
        }
        if let Some(required) = new_verification {
            row.require_endpoint_verification = Set(required);
        }
        row.retention_ms = Set(retention_ms);
        row.idempotency_retention_ms = Set(idempotency_ms);
        row.publish_quota_rate = Set(quota_rate);
        row.publish_quota_burst = Set(quota_burst);
        row.update_ms = Set(now_ms());
        let (row, revision) = self
            .0
            .db()
            .transaction::<_, (workspace::Model, i64), ApiError>(|tx| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let row = row.update(tx).await?;
                    let revision = if windows_changed {
                        record_change(tx, CHANGE_WORKSPACE, &row.id, &row.id).await?
                    } else {
                        0
                    };
                    Ok((row, revision))
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        Ok(Response::new(pb::UpdateWorkspaceResponse {
            workspace: Some(convert::workspace(row)),
        }))
    }

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Result<Response<pb::DeleteWorkspaceResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let id = request.into_inner().id;
        let row = self.find("id", &id).await?;
        // The data plane holds only the workspaces with windows or a policy of their own.
        let held = crate::policy::held(&row);
        let revision = self
            .0
            .db()
            .transaction::<_, i64, ApiError>(|tx| {
                let id = id.clone();
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let subs = subscription::Entity::find()
                        .filter(subscription::Column::WorkspaceId.eq(&id))
                        .all(tx)
                        .await?;
                    let keys = api_key::Entity::find()
                        .filter(api_key::Column::WorkspaceId.eq(&id))
                        .all(tx)
                        .await?;
                    subscription::Entity::delete_many()
                        .filter(subscription::Column::WorkspaceId.eq(&id))
                        .exec(tx)
                        .await?;
                    api_key::Entity::delete_many()
                        .filter(api_key::Column::WorkspaceId.eq(&id))
                        .exec(tx)
                        .await?;
                    event_type::Entity::delete_many()
                        .filter(event_type::Column::WorkspaceId.eq(&id))
                        .exec(tx)
                        .await?;
                    workspace::Entity::delete_by_id(id.clone()).exec(tx).await?;
                    for s in &subs {
                        // Nothing will deliver what was still pending.
                        crate::cancel_pending_deliveries(tx, &id, &s.id).await?;
                    }
                    let mut revision = 0;
                    for s in subs {
                        revision = record_change(tx, CHANGE_SUBSCRIPTION, &s.id, &id).await?;
                    }
                    for k in keys {
                        revision = record_change(tx, CHANGE_API_KEY, &k.id, &id).await?;
                    }
                    if held {
                        revision = record_change(tx, CHANGE_WORKSPACE, &id, &id).await?;
                    }
                    Ok(revision)
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        tracing::info!(workspace_id = %id, "workspace deleted");
        Ok(Response::new(pb::DeleteWorkspaceResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        display_name(&mut v, "display_name", &r.display_name);
        v.finish()?;
        self.find("workspace_id", &r.workspace_id).await?;
        let key = sluice_core::apikey::generate_api_key();
        let row = api_key::ActiveModel {
            id: Set(new_id(IdKind::ApiKey)),
            workspace_id: Set(r.workspace_id.clone()),
            display_name: Set(r.display_name),
            key_hash: Set(sluice_core::apikey::hash_api_key(&key)),
            key_prefix: Set(sluice_core::apikey::key_display_prefix(&key)),
            create_ms: Set(now_ms()),
            revoke_ms: Set(None),
        };
        let (row, revision) = self
            .0
            .db()
            .transaction::<_, (api_key::Model, i64), ApiError>(|tx| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let row = row.insert(tx).await?;
                    let revision =
                        record_change(tx, CHANGE_API_KEY, &row.id, &row.workspace_id).await?;
                    Ok((row, revision))
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        tracing::info!(workspace_id = %row.workspace_id, key_id = %row.id, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(convert::api_key(row)),
            key,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let r = request.into_inner();
        let page = PageRequest::parse("api_keys", r.page_size, &r.page_token)?;
        self.find("workspace_id", &r.workspace_id).await?;
        let mut query = api_key::Entity::find()
            .filter(api_key::Column::WorkspaceId.eq(&r.workspace_id))
            .order_by_asc(api_key::Column::Id)
            .limit(page.fetch());
        if let Some(after) = &page.after {
            query = query.filter(api_key::Column::Id.gt(after.clone()));
        }
        let rows = query.all(self.0.db()).await.map_err(ApiError::from)?;
        let (rows, next_page_token) = page.finish(rows, |k| k.id.clone());
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.into_iter().map(convert::api_key).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        self.0.auth().admin(request.metadata()).await?;
        let id = request.into_inner().id;
        check_id(IdKind::ApiKey, "id", &id)?;
        let (row, revision) = self
            .0
            .db()
            .transaction::<_, (api_key::Model, i64), ApiError>(|tx| {
                Box::pin(async move {
                    lock_config_writes(tx).await?;
                    let row = api_key::Entity::find_by_id(id.clone())
                        .one(tx)
                        .await?
                        .ok_or_else(|| ApiError::not_found("API key", &id))?;
                    if row.revoke_ms.is_some() {
                        return Ok((row, 0));
                    }
                    let mut active = row.into_active_model();
                    active.revoke_ms = Set(Some(now_ms()));
                    let row = active.update(tx).await?;
                    let revision =
                        record_change(tx, CHANGE_API_KEY, &row.id, &row.workspace_id).await?;
                    Ok((row, revision))
                })
            })
            .await
            .map_err(ApiError::from)?;
        self.0.published(revision);
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(convert::api_key(row)),
        }))
    }
}
