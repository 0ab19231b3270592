//! `EventTypeService`: the catalog of event types of a workspace. Names are stored in their
//! normalised dotted form, so `CONVERSATION_CREATED` and `conversation.created` are one type.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use sluice_core::event::normalize_event_name;
use sluice_core::operational::{self, BuiltinEventType};
use sluice_core::validate::multiline_text;
use sluice_proto::control::v1 as pb;
use sluice_proto::json::struct_to_json;
use sluice_store::control::event_type;
use sluice_store::{is_unique_violation, now_ms};
use tonic::{Request, Response, Status};

use crate::error::{ApiError, ApiResult, Violations};
use crate::page::PageRequest;
use crate::{ControlPlane, convert};

/// The longest description.
pub const MAX_DESCRIPTION: usize = 2000;
/// The largest JSON schema or example, serialised.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The `EventTypeService` implementation.
pub struct EventTypeApi(pub(crate) ControlPlane);

fn document(v: &mut Violations, field: &str, s: &Option<prost_types::Struct>) -> Option<String> {
    let json = match struct_to_json(s.as_ref()?) {
        Ok(json) => json,
        Err(e) => {
            v.add(field, e.to_string());
            return None;
        }
    };
    if json.len() > MAX_DOCUMENT_BYTES {
        v.add(
            field,
            format!(
                "at most {MAX_DOCUMENT_BYTES} bytes of JSON; got {}",
                json.len()
            ),
        );
    }
    Some(json)
}

fn version(v: &mut Violations, n: u32) -> i32 {
    match n {
        0 => 1,
        n if n <= 1000 => n as i32,
        n => {
            v.add(
                "event_type.version",
                format!("must be between 1 and 1000; got {n}"),
            );
            1
        }
    }
}

/// An operational event type as a catalog row (it has none in the database).
fn builtin_row(workspace_id: &str, builtin: &BuiltinEventType) -> event_type::Model {
    event_type::Model {
        workspace_id: workspace_id.to_owned(),
        name: builtin.name.to_owned(),
        version: 1,
        description: builtin.description.to_owned(),
        json_schema: None,
        example: None,
        archived: false,
        create_ms: 0,
        update_ms: 0,
    }
}

/// Sluice's own event types are not the user's to change.
fn refuse_builtin(name: &str) -> ApiResult<()> {
    match normalize_event_name(name) {
        Ok(name) if operational::is_reserved(&name) => Err(ApiError::FailedPrecondition(format!(
            "{name:?} is one of Sluice's operational event types, which cannot be changed or archived"
        ))),
        _ => Ok(()),
    }
}

impl EventTypeApi {
    /// The event type `name` (`field` names it in errors).
    async fn find(
        &self,
        workspace_id: &str,
        field: &str,
        name: &str,
    ) -> ApiResult<event_type::Model> {
        let name =
            normalize_event_name(name).map_err(|e| ApiError::invalid(field, e.to_string()))?;
        if let Some(builtin) = operational::builtin(&name) {
            return Ok(builtin_row(workspace_id, builtin));
        }
        event_type::Entity::find_by_id((workspace_id.to_owned(), name.clone()))
            .one(self.0.db())
            .await?
            .ok_or_else(|| ApiError::not_found("event type", &name))
    }

    async fn set_archived(
        &self,
        workspace_id: &str,
        name: &str,
        archived: bool,
    ) -> ApiResult<pb::EventType> {
        refuse_builtin(name)?;
        let mut row = self
            .find(workspace_id, "name", name)
            .await?
            .into_active_model();
        row.archived = Set(archived);
        row.update_ms = Set(now_ms());
        Ok(convert::event_type(row.update(self.0.db()).await?))
    }
}

#[tonic::async_trait]
impl pb::event_type_service_server::EventTypeService for EventTypeApi {
    async fn create_event_type(
        &self,
        request: Request<pb::CreateEventTypeRequest>,
    ) -> Result<Response<pb::CreateEventTypeResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let input = request.into_inner().event_type.unwrap_or_default();
        let mut v = Violations::default();
        let name = v.check("event_type.name", normalize_event_name(&input.name));
        v.check(
            "event_type.description",
            multiline_text(&input.description, MAX_DESCRIPTION),
        );
        let version = version(&mut v, input.version);
        let json_schema = document(&mut v, "event_type.json_schema", &input.json_schema);
        let example = document(&mut v, "event_type.example", &input.example);
        v.finish()?;
        let Some(name) = name else {
            return Err(ApiError::invalid("event_type.name", "required").into());
        };
        if operational::is_reserved(&name) {
            return Err(ApiError::invalid(
                "event_type.name",
                "the `sluice.` family is reserved for Sluice's operational events, which every \
                 workspace's catalog already lists",
            )
            .into());
        }
        let now = now_ms();
        let row = event_type::ActiveModel {
            workspace_id: Set(workspace_id),
            name: Set(name.clone()),
            version: Set(version),
            description: Set(input.description),
            json_schema: Set(json_schema),
            example: Set(example),
            archived: Set(false),
            create_ms: Set(now),
            update_ms: Set(now),
        }
        .insert(self.0.db())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ApiError::AlreadyExists(format!("event type {name:?} already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(Response::new(pb::CreateEventTypeResponse {
            event_type: Some(convert::event_type(row)),
        }))
    }

    async fn get_event_type(
        &self,
        request: Request<pb::GetEventTypeRequest>,
    ) -> Result<Response<pb::GetEventTypeResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let row = self
            .find(&workspace_id, "name", &request.get_ref().name)
            .await?;
        Ok(Response::new(pb::GetEventTypeResponse {
            event_type: Some(convert::event_type(row)),
        }))
    }

    async fn list_event_types(
        &self,
        request: Request<pb::ListEventTypesRequest>,
    ) -> Result<Response<pb::ListEventTypesResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let page = PageRequest::parse("event_types", r.page_size, &r.page_token)?;
        let mut query = event_type::Entity::find()
            .filter(event_type::Column::WorkspaceId.eq(workspace_id.clone()))
            .order_by_asc(event_type::Column::Name)
            .limit(page.fetch());
        if !r.show_archived {
            query = query.filter(event_type::Column::Archived.eq(false));
        }
        if let Some(after) = &page.after {
            query = query.filter(event_type::Column::Name.gt(after.clone()));
        }
        let mut rows = query.all(self.0.db()).await.map_err(ApiError::from)?;
        // The operational event types are in every catalog without a row: merged in name
        // order, so pages and their tokens work across both.
        rows.extend(
            operational::BUILTIN_EVENT_TYPES
                .iter()
                .filter(|b| page.after.as_deref().is_none_or(|after| b.name > after))
                .map(|b| builtin_row(&workspace_id, b)),
        );
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows.truncate(page.fetch() as usize);
        let (rows, next_page_token) = page.finish(rows, |e| e.name.clone());
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: rows.into_iter().map(convert::event_type).collect(),
            next_page_token,
        }))
    }

    async fn update_event_type(
        &self,
        request: Request<pb::UpdateEventTypeRequest>,
    ) -> Result<Response<pb::UpdateEventTypeResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let input = r.event_type.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "required: name the fields to update (version, description, json_schema, example)",
            );
        }
        for path in &paths {
            if !["version", "description", "json_schema", "example"].contains(&path.as_str()) {
                v.add(
                    "update_mask",
                    format!("unknown or read-only field {path:?}; updatable: version, description, json_schema, example"),
                );
            }
        }
        let has = |p: &str| paths.iter().any(|x| x == p);
        // Only the fields the mask names are read, so only they are validated.
        if has("description") {
            v.check(
                "event_type.description",
                multiline_text(&input.description, MAX_DESCRIPTION),
            );
        }
        let version = if has("version") {
            version(&mut v, input.version)
        } else {
            1
        };
        let json_schema = if has("json_schema") {
            document(&mut v, "event_type.json_schema", &input.json_schema)
        } else {
            None
        };
        let example = if has("example") {
            document(&mut v, "event_type.example", &input.example)
        } else {
            None
        };
        v.finish()?;
        refuse_builtin(&input.name)?;
        let mut row = self
            .find(&workspace_id, "event_type.name", &input.name)
            .await?
            .into_active_model();
        if has("version") {
            row.version = Set(version);
        }
        if has("description") {
            row.description = Set(input.description);
        }
        if has("json_schema") {
            row.json_schema = Set(json_schema);
        }
        if has("example") {
            row.example = Set(example);
        }
        row.update_ms = Set(now_ms());
        let row = row.update(self.0.db()).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::UpdateEventTypeResponse {
            event_type: Some(convert::event_type(row)),
        }))
    }

    async fn archive_event_type(
        &self,
        request: Request<pb::ArchiveEventTypeRequest>,
    ) -> Result<Response<pb::ArchiveEventTypeResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let event_type = self
            .set_archived(&workspace_id, &request.get_ref().name, true)
            .await?;
        Ok(Response::new(pb::ArchiveEventTypeResponse {
            event_type: Some(event_type),
        }))
    }

    async fn unarchive_event_type(
        &self,
        request: Request<pb::UnarchiveEventTypeRequest>,
    ) -> Result<Response<pb::UnarchiveEventTypeResponse>, Status> {
        let workspace_id = self
            .0
            .auth()
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let event_type = self
            .set_archived(&workspace_id, &request.get_ref().name, false)
            .await?;
        Ok(Response::new(pb::UnarchiveEventTypeResponse {
            event_type: Some(event_type),
        }))
    }
}
