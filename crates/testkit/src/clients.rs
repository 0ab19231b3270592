//! gRPC clients of both planes: a plain channel to an address, the `authorization: Bearer`
//! interceptor, the control plane's public clients under one key, and a publisher.

use std::net::SocketAddr;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use tonic::transport::Channel;

use crate::ADMIN_KEY;

/// An interceptor adding `authorization: Bearer <key>` (nothing when `None`).
#[derive(Clone)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// The interceptor sending `key`.
    pub fn key(key: &str) -> Bearer {
        Bearer(Some(format!("Bearer {key}").parse().unwrap()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel with the bearer interceptor.
pub type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// `message` as a request with `authorization: Bearer <key>`, for a client without the
/// interceptor (one client, several keys).
pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// A plain-text gRPC channel to `addr`, connected.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An ingest client of the data plane at `addr`, publishing with `key`.
/// Every attempt of the delivery log matching `request`, all pages (1,000 a page).
pub async fn all_attempts(
    deliveries: &pb::delivery_service_client::DeliveryServiceClient<Intercepted>,
    mut request: pb::ListAttemptsRequest,
) -> Vec<pb::Attempt> {
    request.page_size = 1000;
    let mut all = Vec::new();
    loop {
        let page = deliveries
            .clone()
            .list_attempts(request.clone())
            .await
            .unwrap()
            .into_inner();
        all.extend(page.attempts);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

/// Publishes `request()` until the data plane accepts it and matches exactly one
/// subscription, and returns that answer: a data plane learns keys and subscriptions from
/// its watch stream, so until then a publish is refused (UNAUTHENTICATED) or matches
/// nothing. Nothing outside its process can be awaited for that, so it tries every 50 ms.
pub async fn publish_when_configured<R: tonic::IntoRequest<dpb::PublishRequest>>(
    ingest: &mut dpb::ingest_service_client::IngestServiceClient<Intercepted>,
    mut request: impl FnMut() -> R,
) -> dpb::PublishResponse {
    loop {
        match ingest.publish(request()).await {
            Ok(r) if r.get_ref().delivery_count == 1 => return r.into_inner(),
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::Unauthenticated => {}
            Err(s) => panic!("publish failed: {s:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub(crate) async fn ingest_client(
    addr: SocketAddr,
    key: &str,
) -> dpb::ingest_service_client::IngestServiceClient<Intercepted> {
    dpb::ingest_service_client::IngestServiceClient::with_interceptor(
        connect(addr).await,
        Bearer::key(key),
    )
}

/// Clients of the control plane's public services.
pub struct Clients {
    /// WorkspaceService.
    pub workspaces: pb::workspace_service_client::WorkspaceServiceClient<Intercepted>,
    /// EventTypeService.
    pub event_types: pb::event_type_service_client::EventTypeServiceClient<Intercepted>,
    /// SubscriptionService.
    pub subscriptions: pb::subscription_service_client::SubscriptionServiceClient<Intercepted>,
    /// DeliveryService.
    pub deliveries: pb::delivery_service_client::DeliveryServiceClient<Intercepted>,
}

impl Clients {
    /// Clients over `channel` sending `key`.
    pub fn new(channel: Channel, key: Option<&str>) -> Clients {
        let bearer = key.map_or(Bearer(None), Bearer::key);
        Clients {
            workspaces: pb::workspace_service_client::WorkspaceServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            event_types: pb::event_type_service_client::EventTypeServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            subscriptions:
                pb::subscription_service_client::SubscriptionServiceClient::with_interceptor(
                    channel.clone(),
                    bearer.clone(),
                ),
            deliveries: pb::delivery_service_client::DeliveryServiceClient::with_interceptor(
                channel, bearer,
            ),
        }
    }

    /// Clients of the control plane at `addr` sending `key`.
    pub async fn connect(addr: SocketAddr, key: Option<&str>) -> Clients {
        Clients::new(connect(addr).await, key)
    }

    /// Creates a workspace and a key for it with the admin key; returns (workspace id, key).
    pub async fn workspace_with_key(addr: SocketAddr, name: &str) -> (String, String) {
        let mut admin = Clients::connect(addr, Some(ADMIN_KEY)).await;
        let ws = admin
            .workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: name.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap();
        let key = admin
            .workspaces
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: ws.id.clone(),
                display_name: "tests".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .key;
        (ws.id, key)
    }
}
