//! Who is calling: the admin key, a workspace API key, or the data plane's internal token,
//! read from `authorization: Bearer ...` metadata. Keys are compared by SHA-256 hash, so a
//! key is never held or logged in clear after this point.

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use sluice_core::apikey::hash_api_key;
use sluice_store::control::{api_key, workspace};

use crate::error::{ApiError, ApiResult};

/// The authenticated caller of a public method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The admin key: every workspace.
    Admin,
    /// A workspace API key: that workspace only.
    Workspace(String),
}

/// Checks credentials against the configured admin key and the stored key hashes.
#[derive(Clone)]
pub struct Authenticator {
    admin_key_hash: String,
    internal_token_hash: String,
    db: DatabaseConnection,
}

impl Authenticator {
    /// An authenticator for these secrets.
    pub fn new(admin_key: &str, internal_token: &str, db: DatabaseConnection) -> Self {
        Authenticator {
            admin_key_hash: hash_api_key(admin_key),
            internal_token_hash: hash_api_key(internal_token),
            db,
        }
    }

    /// The caller of a public method.
    pub async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> ApiResult<Caller> {
        let hash = hash_api_key(bearer(metadata)?);
        if hash == self.admin_key_hash {
            return Ok(Caller::Admin);
        }
        let key = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(hash))
            .one(&self.db)
            .await?;
        match key {
            Some(k) if k.revoke_ms.is_none() => Ok(Caller::Workspace(k.workspace_id)),
            _ => Err(ApiError::Unauthenticated(
                "the API key is not valid (unknown or revoked)".into(),
            )),
        }
    }

    /// Requires the admin key.
    pub async fn admin(&self, metadata: &tonic::metadata::MetadataMap) -> ApiResult<()> {
        match self.caller(metadata).await? {
            Caller::Admin => Ok(()),
            Caller::Workspace(_) => Err(ApiError::PermissionDenied(
                "this method needs the admin key".into(),
            )),
        }
    }

    /// Requires the internal token shared with the data plane.
    pub fn internal(&self, metadata: &tonic::metadata::MetadataMap) -> ApiResult<()> {
        if hash_api_key(bearer(metadata)?) == self.internal_token_hash {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated(
                "the internal token is not valid".into(),
            ))
        }
    }

    /// The workspace a workspace-scoped request acts on. A workspace key acts on its own
    /// workspace (an empty `requested` means it); naming another answers NOT_FOUND, as if it
    /// did not exist. The admin key must name an existing workspace.
    pub async fn scope(&self, caller: &Caller, requested: &str) -> ApiResult<String> {
        match caller {
            Caller::Workspace(own) if requested.is_empty() || requested == own => Ok(own.clone()),
            Caller::Workspace(_) => Err(ApiError::not_found("workspace", requested)),
            Caller::Admin if requested.is_empty() => Err(ApiError::invalid(
                "workspace_id",
                "required when calling with the admin key (a workspace key implies it)",
            )),
            Caller::Admin => {
                if !sluice_core::ids::is_valid_id(sluice_core::ids::IdKind::Workspace, requested) {
                    return Err(ApiError::invalid(
                        "workspace_id",
                        "must be an id like wrk_01h...",
                    ));
                }
                if workspace::Entity::find_by_id(requested.to_owned())
                    .one(&self.db)
                    .await?
                    .is_some()
                {
                    Ok(requested.to_owned())
                } else {
                    Err(ApiError::not_found("workspace", requested))
                }
            }
        }
    }

    /// `caller` then `scope` in one step.
    pub async fn workspace(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        requested: &str,
    ) -> ApiResult<String> {
        let caller = self.caller(metadata).await?;
        self.scope(&caller, requested).await
    }
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> ApiResult<&str> {
    let value = metadata.get("authorization").ok_or_else(|| {
        ApiError::Unauthenticated("missing `authorization: Bearer <key>` metadata".into())
    })?;
    let value = value.to_str().map_err(|_| {
        ApiError::Unauthenticated("the authorization metadata is not readable text".into())
    })?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::Unauthenticated("authorization must be `Bearer <key>`".into()))?
        .trim();
    if token.is_empty() {
        return Err(ApiError::Unauthenticated("the bearer key is empty".into()));
    }
    Ok(token)
}
