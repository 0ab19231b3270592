//! `DeliveryService`: the delivery log (messages, deliveries, attempts), endpoint health,
//! and retry/replay through the data plane. Lists are newest first.

use sea_orm::{
    ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use sluice_core::event::normalize_event_name;
use sluice_core::ids::IdKind;
use sluice_core::ids::id_timestamp_ms;
use sluice_core::retention::{Windows, cutoff_ms, format_window};
use sluice_proto::control::v1 as pb;
use sluice_store::control::{attempt, delivery, endpoint_health, message, workspace};
use sluice_store::now_ms;
use tonic::{Request, Response, Status};

use crate::ControlPlane;
use crate::attempt_watch;
use crate::convert::{ms, opt_ts, ts};
use crate::error::{ApiError, ApiResult, Violations};
use crate::page::PageRequest;
use crate::subscription::find_in;
use crate::workspace::check_id;

/// The `DeliveryService` implementation.
pub struct DeliveryApi(pub(crate) ControlPlane);

/// Common filters, validated.
struct Filters {
    event_type: Option<String>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
}

fn filters(
    v: &mut Violations,
    event_type: &str,
    start: &Option<prost_types::Timestamp>,
    end: &Option<prost_types::Timestamp>,
) -> Filters {
    let event_type = if event_type.is_empty() {
        None
    } else {
        v.check("event_type", normalize_event_name(event_type))
    };
    let mut time = |field: &str, t: &Option<prost_types::Timestamp>| {
        t.as_ref().and_then(|t| {
            let parsed = ms(t);
            if parsed.is_none() {
                v.add(field, "not a valid timestamp");
            }
            parsed
        })
    };
    let start_ms = time("start_time", start);
    let end_ms = time("end_time", end);
    Filters {
        event_type,
        start_ms,
        end_ms,
    }
}

fn optional_id(v: &mut Violations, kind: IdKind, field: &str, id: &str) -> Option<String> {
    if id.is_empty() {
        None
    } else {
        v.check(
            field,
            check_id(kind, field, id)
                .map_err(|_| format!("must be an id like {}01h...", kind.prefix())),
        )
        .map(|()| id.to_owned())
    }
}

fn status_name(s: pb::DeliveryStatus) -> Option<&'static str> {
    match s {
        pb::DeliveryStatus::Unspecified => None,
        pb::DeliveryStatus::Pending => Some("pending"),
        pb::DeliveryStatus::Succeeded => Some("succeeded"),
        pb::DeliveryStatus::Failed => Some("failed"),
        pb::DeliveryStatus::Cancelled => Some("cancelled"),
    }
}

fn status(name: &str) -> pb::DeliveryStatus {
    match name {
        "succeeded" => pb::DeliveryStatus::Succeeded,
        "failed" => pb::DeliveryStatus::Failed,
        "cancelled" => pb::DeliveryStatus::Cancelled,
        _ => pb::DeliveryStatus::Pending,
    }
}

/// An attempt row as its proto.
pub fn attempt_proto(a: attempt::Model) -> pb::Attempt {
    pb::Attempt {
        id: a.id,
        message_id: a.message_id,
        subscription_id: a.subscription_id,
        workspace_id: a.workspace_id,
        event_type: a.event_type,
        attempt_number: a.attempt_number as u32,
        attempt_time: Some(ts(a.attempt_ms)),
        success: a.success,
        status_code: a.status_code as u32,
        error_kind: a.error_kind,
        error_message: a.error_message,
        latency: Some(prost_types::Duration {
            seconds: a.latency_us / 1_000_000,
            nanos: ((a.latency_us % 1_000_000) * 1000) as i32,
        }),
        response_excerpt: a.response_excerpt,
        trigger: match a.trigger.as_str() {
            "manual" => pb::AttemptTrigger::Manual,
            "replay" => pb::AttemptTrigger::Replay,
            _ => pb::AttemptTrigger::Scheduled,
        } as i32,
        url: a.url,
    }
}

fn message_proto(m: message::Model) -> pb::Message {
    pb::Message {
        id: m.id,
        workspace_id: m.workspace_id,
        event_type: m.event_type,
        create_time: Some(ts(m.create_ms)),
        delivery_count: m.delivery_count as u32,
        ordering_key: m.ordering_key.unwrap_or_default(),
    }
}

impl DeliveryApi {
    /// The retention windows of `workspace_id`.
    async fn windows(&self, workspace_id: &str) -> ApiResult<Windows> {
        let row = workspace::Entity::find_by_id(workspace_id.to_owned())
            .one(self.0.db())
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", workspace_id))?;
        Ok(crate::retention::windows(&self.0.config().retention, &row))
    }

    /// Whether message `id` is older than the workspace's window: purged, or about to be.
    async fn purged(&self, workspace_id: &str, id: &str) -> ApiResult<Option<String>> {
        let windows = self.windows(workspace_id).await?;
        let created = id_timestamp_ms(IdKind::Message, id)
            .and_then(|ms| i64::try_from(ms).ok())
            .unwrap_or(i64::MAX);
        Ok((created < cutoff_ms(now_ms(), windows.retention)).then(|| {
            format!(
                "message {id:?} was purged: the workspace keeps messages for {} (its retention)",
                format_window(windows.retention)
            )
        }))
    }

    async fn workspace(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        requested: &str,
    ) -> ApiResult<String> {
        self.0.auth().workspace(metadata, requested).await
    }
}

type AttemptStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchAttemptsResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::delivery_service_server::DeliveryService for DeliveryApi {
    type WatchAttemptsStream = AttemptStream;

    async fn watch_attempts(
        &self,
        request: Request<pb::WatchAttemptsRequest>,
    ) -> Result<Response<Self::WatchAttemptsStream>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let f = filters(&mut v, &r.event_type, &None, &None);
        let subscription_id = optional_id(
            &mut v,
            IdKind::Subscription,
            "subscription_id",
            &r.subscription_id,
        );
        let from = if r.cursor.is_empty() {
            None
        } else {
            let position = attempt_watch::Position::from_cursor(&r.cursor);
            if position.is_none() {
                v.add(
                    "cursor",
                    "not a cursor this server issued; pass a WatchAttemptsResponse's cursor back \
                     unchanged, or none to start from now",
                );
            }
            position
        };
        v.finish()?;
        if let Some(id) = &subscription_id {
            find_in(self.0.db(), &workspace_id, id).await?;
        }
        let from = match from {
            Some(position) => position,
            None => attempt_watch::horizon(self.0.db())
                .await
                .map_err(ApiError::from)?,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(self.0.attempt_watch_buffer());
        let filters = attempt_watch::Filters {
            workspace_id,
            subscription_id,
            event_type: f.event_type,
            success: r.success,
        };
        tokio::spawn(attempt_watch::run(
            self.0.clone(),
            filters,
            from,
            tx,
            attempt_proto,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let page = PageRequest::parse("messages", r.page_size, &r.page_token)?;
        let mut v = Violations::default();
        let f = filters(&mut v, &r.event_type, &r.start_time, &r.end_time);
        v.finish()?;
        let mut query = message::Entity::find()
            .filter(message::Column::WorkspaceId.eq(workspace_id))
            .order_by_desc(message::Column::Id)
            .limit(page.fetch());
        if let Some(e) = f.event_type {
            query = query.filter(message::Column::EventType.eq(e));
        }
        if let Some(t) = f.start_ms {
            query = query.filter(message::Column::CreateMs.gte(t));
        }
        if let Some(t) = f.end_ms {
            query = query.filter(message::Column::CreateMs.lt(t));
        }
        if let Some(after) = &page.after {
            query = query.filter(message::Column::Id.lt(after.clone()));
        }
        let rows = query.all(self.0.db()).await.map_err(ApiError::from)?;
        let (rows, next_page_token) = page.finish(rows, |m| m.id.clone());
        Ok(Response::new(pb::ListMessagesResponse {
            messages: rows.into_iter().map(message_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let id = request.into_inner().message_id;
        check_id(IdKind::Message, "message_id", &id)?;
        let row = message::Entity::find_by_id((id.clone(), workspace_id.clone()))
            .one(self.0.db())
            .await
            .map_err(ApiError::from)?;
        match row {
            Some(m) => Ok(Response::new(pb::GetMessageResponse {
                message: Some(message_proto(m)),
            })),
            None => match self.purged(&workspace_id, &id).await? {
                Some(why) => Err(ApiError::NotFound(why).into()),
                None => Err(ApiError::not_found("message", &id).into()),
            },
        }
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let page = PageRequest::parse("deliveries", r.page_size, &r.page_token)?;
        let mut v = Violations::default();
        let f = filters(&mut v, &r.event_type, &r.start_time, &r.end_time);
        let sub = optional_id(
            &mut v,
            IdKind::Subscription,
            "subscription_id",
            &r.subscription_id,
        );
        let msg = optional_id(&mut v, IdKind::Message, "message_id", &r.message_id);
        let wanted = v.check(
            "status",
            pb::DeliveryStatus::try_from(r.status).map_err(|_| "unknown status"),
        );
        let after = page
            .after
            .as_ref()
            .map(|t| t.split_once('/').map(|(m, s)| (m.to_owned(), s.to_owned())));
        if let Some(None) = after {
            v.add("page_token", "not a token this server issued");
        }
        v.finish()?;
        let mut query = delivery::Entity::find()
            .filter(delivery::Column::WorkspaceId.eq(workspace_id))
            .order_by_desc(delivery::Column::MessageId)
            .order_by_asc(delivery::Column::SubscriptionId)
            .limit(page.fetch());
        if let Some(s) = sub {
            query = query.filter(delivery::Column::SubscriptionId.eq(s));
        }
        if let Some(m) = msg {
            query = query.filter(delivery::Column::MessageId.eq(m));
        }
        if let Some(name) = wanted.and_then(status_name) {
            query = query.filter(delivery::Column::Status.eq(name));
        }
        if let Some(e) = f.event_type {
            query = query.filter(delivery::Column::EventType.eq(e));
        }
        if let Some(t) = f.start_ms {
            query = query.filter(delivery::Column::CreateMs.gte(t));
        }
        if let Some(t) = f.end_ms {
            query = query.filter(delivery::Column::CreateMs.lt(t));
        }
        if let Some(Some((m, s))) = after {
            query = query.filter(
                Condition::any()
                    .add(delivery::Column::MessageId.lt(m.clone()))
                    .add(
                        Condition::all()
                            .add(delivery::Column::MessageId.eq(m))
                            .add(delivery::Column::SubscriptionId.gt(s)),
                    ),
            );
        }
        let rows = query.all(self.0.db()).await.map_err(ApiError::from)?;
        let (rows, next_page_token) =
            page.finish(rows, |d| format!("{}/{}", d.message_id, d.subscription_id));
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: rows
                .into_iter()
                .map(|d| pb::Delivery {
                    status: status(&d.status) as i32,
                    message_id: d.message_id,
                    subscription_id: d.subscription_id,
                    workspace_id: d.workspace_id,
                    event_type: d.event_type,
                    attempt_count: d.attempt_count as u32,
                    last_attempt_time: opt_ts(d.last_attempt_ms),
                    next_attempt_time: if d.status == "pending" {
                        opt_ts(d.next_attempt_ms)
                    } else {
                        None
                    },
                    last_status_code: d.last_status_code as u32,
                    last_error_kind: d.last_error_kind,
                    create_time: Some(ts(d.create_ms)),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn list_attempts(
        &self,
        request: Request<pb::ListAttemptsRequest>,
    ) -> Result<Response<pb::ListAttemptsResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let page = PageRequest::parse("attempts", r.page_size, &r.page_token)?;
        let mut v = Violations::default();
        let f = filters(&mut v, &r.event_type, &r.start_time, &r.end_time);
        let sub = optional_id(
            &mut v,
            IdKind::Subscription,
            "subscription_id",
            &r.subscription_id,
        );
        let msg = optional_id(&mut v, IdKind::Message, "message_id", &r.message_id);
        v.finish()?;
        let mut query = attempt::Entity::find()
            .filter(attempt::Column::WorkspaceId.eq(workspace_id))
            .order_by_desc(attempt::Column::Id)
            .limit(page.fetch());
        if let Some(s) = sub {
            query = query.filter(attempt::Column::SubscriptionId.eq(s));
        }
        if let Some(m) = msg {
            query = query.filter(attempt::Column::MessageId.eq(m));
        }
        if let Some(success) = r.success {
            query = query.filter(attempt::Column::Success.eq(success));
        }
        if let Some(e) = f.event_type {
            query = query.filter(attempt::Column::EventType.eq(e));
        }
        if let Some(t) = f.start_ms {
            query = query.filter(attempt::Column::AttemptMs.gte(t));
        }
        if let Some(t) = f.end_ms {
            query = query.filter(attempt::Column::AttemptMs.lt(t));
        }
        if let Some(after) = &page.after {
            query = query.filter(attempt::Column::Id.lt(after.clone()));
        }
        let rows = query.all(self.0.db()).await.map_err(ApiError::from)?;
        let (rows, next_page_token) = page.finish(rows, |a| a.id.clone());
        Ok(Response::new(pb::ListAttemptsResponse {
            attempts: rows.into_iter().map(attempt_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_endpoint_health(
        &self,
        request: Request<pb::GetEndpointHealthRequest>,
    ) -> Result<Response<pb::GetEndpointHealthResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let id = request.into_inner().subscription_id;
        check_id(IdKind::Subscription, "subscription_id", &id)?;
        find_in(self.0.db(), &workspace_id, &id).await?;
        let db = self.0.db();
        let since = now_ms() - 24 * 3600 * 1000;
        let recent = attempt::Entity::find()
            .filter(attempt::Column::WorkspaceId.eq(&workspace_id))
            .filter(attempt::Column::SubscriptionId.eq(&id))
            .filter(attempt::Column::AttemptMs.gte(since));
        let attempts_24h = recent.clone().count(db).await.map_err(ApiError::from)?;
        let successes_24h = recent
            .filter(attempt::Column::Success.eq(true))
            .count(db)
            .await
            .map_err(ApiError::from)?;
        let count_status = |s: &'static str| {
            delivery::Entity::find()
                .filter(delivery::Column::WorkspaceId.eq(&workspace_id))
                .filter(delivery::Column::SubscriptionId.eq(&id))
                .filter(delivery::Column::Status.eq(s))
                .count(db)
        };
        let pending_deliveries = count_status("pending").await.map_err(ApiError::from)?;
        let failed_deliveries = count_status("failed").await.map_err(ApiError::from)?;
        let health = endpoint_health::Entity::find_by_id(id.clone())
            .one(db)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetEndpointHealthResponse {
            subscription_id: id,
            attempts_24h,
            successes_24h,
            success_rate_24h: if attempts_24h == 0 {
                1.0
            } else {
                successes_24h as f64 / attempts_24h as f64
            },
            consecutive_failures: health
                .as_ref()
                .map(|h| h.consecutive_failures as u64)
                .unwrap_or(0),
            last_success_time: health.as_ref().and_then(|h| opt_ts(h.last_success_ms)),
            last_failure_time: health.as_ref().and_then(|h| opt_ts(h.last_failure_ms)),
            pending_deliveries,
            failed_deliveries,
            concurrency_limit: health
                .as_ref()
                .and_then(|h| h.concurrency_limit)
                .and_then(|limit| u32::try_from(limit).ok())
                .unwrap_or(0),
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::RetryDeliveryResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        v.check(
            "message_id",
            check_id(IdKind::Message, "message_id", &r.message_id)
                .map_err(|_| "must be an id like msg_01h..."),
        );
        v.check(
            "subscription_id",
            check_id(IdKind::Subscription, "subscription_id", &r.subscription_id)
                .map_err(|_| "must be an id like sub_01h..."),
        );
        v.finish()?;
        find_in(self.0.db(), &workspace_id, &r.subscription_id).await?;
        if let Some(why) = self.purged(&workspace_id, &r.message_id).await? {
            return Err(ApiError::FailedPrecondition(why).into());
        }
        let mut dispatch = self.0.dispatch()?;
        let req = self
            .0
            .internal_request(sluice_proto::data::v1::RedeliverRequest {
                workspace_id,
                message_id: r.message_id.clone(),
                subscription_id: r.subscription_id,
            })?;
        let attempt = dispatch
            .redeliver(req)
            .await
            .map_err(forward)?
            .into_inner()
            .attempt;
        Ok(Response::new(pb::RetryDeliveryResponse { attempt }))
    }

    async fn replay_failed_deliveries(
        &self,
        request: Request<pb::ReplayFailedDeliveriesRequest>,
    ) -> Result<Response<pb::ReplayFailedDeliveriesResponse>, Status> {
        let workspace_id = self
            .workspace(request.metadata(), &request.get_ref().workspace_id)
            .await?;
        let r = request.into_inner();
        let mut v = Violations::default();
        v.check(
            "subscription_id",
            check_id(IdKind::Subscription, "subscription_id", &r.subscription_id)
                .map_err(|_| "must be an id like sub_01h..."),
        );
        match &r.since_time {
            None => v.add("since_time", "required"),
            Some(t) if ms(t).is_none() => v.add("since_time", "not a valid timestamp"),
            Some(_) => {}
        }
        v.finish()?;
        find_in(self.0.db(), &workspace_id, &r.subscription_id).await?;
        let windows = self.windows(&workspace_id).await?;
        let oldest_kept = cutoff_ms(now_ms(), windows.retention);
        if r.since_time
            .as_ref()
            .and_then(ms)
            .is_some_and(|since| since < oldest_kept)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "since_time is before the workspace's retention window: deliveries older than \
                 {} were purged; replay from {} or later",
                format_window(windows.retention),
                chrono::DateTime::from_timestamp_millis(oldest_kept)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            ))
            .into());
        }
        let mut dispatch = self.0.dispatch()?;
        let req = self
            .0
            .internal_request(sluice_proto::data::v1::ReplayRequest {
                workspace_id,
                subscription_id: r.subscription_id,
                since_time: r.since_time,
            })?;
        let queued_count = dispatch
            .replay(req)
            .await
            .map_err(forward)?
            .into_inner()
            .queued_count;
        Ok(Response::new(pb::ReplayFailedDeliveriesResponse {
            queued_count,
        }))
    }
}

/// A data-plane error as the answer to the caller: NOT_FOUND and INVALID_ARGUMENT pass
/// through, anything else means the data plane could not do it now.
fn forward(status: Status) -> Status {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            status
        }
        _ => Status::unavailable(format!(
            "the data plane could not do it: {}",
            status.message()
        )),
    }
}
