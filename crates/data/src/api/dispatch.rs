//! `DispatchService`, which the control plane calls with the internal token to make
//! deliveries happen now: a test send, a manual redelivery, a replay of failed deliveries.

use chrono::Utc;
use sluice_core::envelope::{build_envelope, validate_payload};
use sluice_core::event::normalize_event_name;
use sluice_core::ids::{IdKind, new_id};
use sluice_proto::control::v1::AttemptTrigger;
use sluice_proto::data::v1::dispatch_service_server::DispatchService;
use sluice_proto::data::v1::{
    RedeliverRequest, RedeliverResponse, ReplayRequest, ReplayResponse, SendTestRequest,
    SendTestResponse,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::deliver::manual::ManualDeliveries;
use crate::error::{DataError, Violation};
use crate::state::config_copy::Endpoint;
use crate::time::ms_from_timestamp;
use crate::work::StoredMessage;

/// The DispatchService implementation.
pub(crate) struct DispatchApi {
    /// `Bearer <internal token>`, which callers must present.
    pub(crate) internal_authorization: String,
    pub(crate) manual: ManualDeliveries,
    /// The largest payload a test send may carry, in bytes.
    pub(crate) max_payload_bytes: usize,
}

/// Checks the internal token in constant time (a timing leak would reveal it bytewise).
fn authorize(expected: &str, metadata: &MetadataMap) -> Result<(), DataError> {
    let presented = metadata
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = expected.as_bytes();
    let mut difference = presented.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ presented.get(i).copied().unwrap_or(0));
    }
    if difference == 0 {
        Ok(())
    } else {
        Err(DataError::Unauthenticated(
            "DispatchService needs the internal token (`authorization: Bearer <token>`)".to_owned(),
        ))
    }
}

fn required(field: &str, value: &str, violations: &mut Vec<Violation>) {
    if value.is_empty() {
        violations.push(Violation::new(field, "is required"));
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchApi {
    async fn send_test(
        &self,
        request: Request<SendTestRequest>,
    ) -> Result<Response<SendTestResponse>, Status> {
        authorize(&self.internal_authorization, request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        let endpoint = match &request.subscription {
            None => {
                violations.push(Violation::new("subscription", "is required"));
                None
            }
            Some(subscription) => match Endpoint::parse(subscription) {
                Ok(endpoint) => Some(endpoint),
                Err(why) => {
                    violations.push(Violation::new("subscription", why));
                    None
                }
            },
        };
        let event_type = match normalize_event_name(&request.event_type) {
            Ok(name) => Some(name),
            Err(e) => {
                violations.push(Violation::new("event_type", e.to_string()));
                None
            }
        };
        if let Err(e) = validate_payload(&request.payload_json, self.max_payload_bytes) {
            violations.push(Violation::new("payload_json", e.to_string()));
        }
        let (Some(endpoint), Some(event_type), Some(subscription), true) = (
            endpoint,
            event_type,
            request.subscription.as_ref(),
            violations.is_empty(),
        ) else {
            return Err(DataError::InvalidArgument(violations).into());
        };
        let now = Utc::now();
        let id = new_id(IdKind::Message);
        let envelope = build_envelope(
            &id,
            &event_type,
            1,
            now,
            &subscription.workspace_id,
            &request.payload_json,
        );
        let message = StoredMessage {
            id,
            workspace_id: subscription.workspace_id.clone(),
            event_type,
            envelope: envelope.into(),
            // The test send is part of the control plane's SendTestEvent trace.
            traceparent: sluice_telemetry::span_headers(&tracing::Span::current()).map(|(p, _)| p),
            tracestate: None,
            create_ms: now.timestamp_millis(),
        };
        // The subscription's policy as the control plane sent it, under its workspace's.
        let own = crate::state::policy::overrides(subscription.retry_policy.as_ref());
        let snapshot = self.manual.attempts.copy.current();
        let timeout = self
            .manual
            .attempts
            .plan(&snapshot, &subscription.workspace_id, own.as_ref())
            .request_timeout_override();
        let (attempt, _) = self
            .manual
            .attempts
            .send(
                &endpoint,
                &message,
                &subscription.id,
                1,
                AttemptTrigger::Manual,
                timeout,
            )
            .await;
        Ok(Response::new(SendTestResponse {
            attempt: Some(attempt),
        }))
    }

    async fn redeliver(
        &self,
        request: Request<RedeliverRequest>,
    ) -> Result<Response<RedeliverResponse>, Status> {
        authorize(&self.internal_authorization, request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        required("workspace_id", &request.workspace_id, &mut violations);
        required("message_id", &request.message_id, &mut violations);
        required("subscription_id", &request.subscription_id, &mut violations);
        if !violations.is_empty() {
            return Err(DataError::InvalidArgument(violations).into());
        }
        let attempt = self
            .manual
            .redeliver(
                &request.workspace_id,
                &request.message_id,
                &request.subscription_id,
            )
            .await?;
        Ok(Response::new(RedeliverResponse {
            attempt: Some(attempt),
        }))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        authorize(&self.internal_authorization, request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        required("workspace_id", &request.workspace_id, &mut violations);
        required("subscription_id", &request.subscription_id, &mut violations);
        let since_ms = match request.since_time.as_ref().map(ms_from_timestamp) {
            Some(Some(ms)) => Some(ms),
            Some(None) => {
                violations.push(Violation::new("since_time", "is not a valid timestamp"));
                None
            }
            None => {
                violations.push(Violation::new("since_time", "is required"));
                None
            }
        };
        let Some(since_ms) = since_ms.filter(|_| violations.is_empty()) else {
            return Err(DataError::InvalidArgument(violations).into());
        };
        let queued = self
            .manual
            .replay(&request.workspace_id, &request.subscription_id, since_ms)
            .await?;
        Ok(Response::new(ReplayResponse {
            queued_count: queued,
        }))
    }
}
