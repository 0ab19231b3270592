//! Serving a plane: its services plus gRPC health and reflection (v1 and v1alpha, so
//! grpcurl of any age lists them) on one listener, until the shutdown token fires.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// The reflection services advertising `services` (fully-qualified names) plus health.
pub(crate) fn reflection(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest, so grpcurl can show the field violations of an error.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The accepted connections of `listener`, with `TCP_NODELAY` set. The server builder's
/// own `tcp_nodelay` only applies to listeners it binds itself; without it, small gRPC
/// responses (publish acks) wait for the peer's delayed ACK, about 40 ms.
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Records the gRPC status of each call on its server span (`rpc.grpc.status_code`, and
/// `otel.status_code = ERROR` when it is not OK). The status is read from the response
/// headers, where tonic puts it for calls that fail before any message; a response without
/// it is OK at this point (a stream that fails later reports it in trailers, not seen here).
/// It also rewrites the status of a request that did not decode (`rewrite_decode_failure`).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcStatusLayer;

impl<S> tower::Layer<S> for GrpcStatusLayer {
    type Service = GrpcStatus<S>;

    fn layer(&self, inner: S) -> GrpcStatus<S> {
        GrpcStatus(inner)
    }
}

/// The service of [`GrpcStatusLayer`].
#[derive(Clone, Debug)]
pub struct GrpcStatus<S>(S);

impl<S, B, R> tower::Service<http::Request<B>> for GrpcStatus<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            // Polled inside the server span, which tonic enters around this future.
            let span = tracing::Span::current();
            let mut result = response.await;
            if let Ok(response) = &mut result {
                rewrite_decode_failure(response.headers_mut());
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
        })
    }
}

/// Rewrites the status of a request tonic could not decode (answered in the headers,
/// before any handler ran) into the caller's mistake it is: INVALID_ARGUMENT naming the
/// field, or RESOURCE_EXHAUSTED for a message over the size limit
/// (`sluice_data::decode_failure`).
fn rewrite_decode_failure(headers: &mut http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let Some(mapped) = sluice_data::decode_failure(&status) else {
        return;
    };
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if mapped.add_header(headers).is_err() {
        // Only a status that cannot be written as headers fails here; keep a code at least.
        headers.insert("grpc-status", http::HeaderValue::from(mapped.code() as i32));
    }
}

/// A tonic server builder with the settings both planes share.
pub(crate) fn builder()
-> Server<tower::layer::util::Stack<GrpcStatusLayer, tower::layer::util::Identity>> {
    Server::builder()
        .trace_fn(crate::telemetry::grpc_server_span)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(GrpcStatusLayer)
}

/// Serves the control plane on `listener` until `shutdown` fires.
pub async fn serve_control(
    listener: TcpListener,
    plane: sluice_control::ControlPlane,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let closer = plane.clone();
    let closing = shutdown.clone();
    tokio::spawn(async move {
        closing.cancelled().await;
        closer.close_streams();
    });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let workspace = plane.workspace_service();
    let event_type = plane.event_type_service();
    let subscription = plane.subscription_service();
    let delivery = plane.delivery_service();
    let data_plane = plane.data_plane_service();
    health_reporter
        .set_serving::<sluice_proto::control::v1::workspace_service_server::WorkspaceServiceServer<
            sluice_control::workspace::WorkspaceApi,
        >>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection(&[
        "sluice.control.v1.WorkspaceService",
        "sluice.control.v1.EventTypeService",
        "sluice.control.v1.SubscriptionService",
        "sluice.control.v1.DeliveryService",
        "sluice.control.v1.DataPlaneService",
    ])?;
    let router = builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(workspace)
        .add_service(event_type)
        .add_service(subscription)
        .add_service(delivery)
        .add_service(data_plane);
    router
        .serve_with_incoming_shutdown(
            crate::server::incoming(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}
