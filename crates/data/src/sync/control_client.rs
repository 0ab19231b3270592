//! The connection to the control plane's `DataPlaneService`, shared by the config watcher
//! and the outcome reporter, with the internal token attached to every call.
//!
//! The control plane may run as several replicas over one database: `control_endpoint` is a
//! list, and a name that resolves to several addresses counts as several. The client uses
//! one address at a time and moves to the next when a session on it ends; the watcher and
//! the reporter then reconnect with their jittered backoff, the watcher from the revision it
//! stored last and the reporter resending every unacked outbox row (the control plane
//! stores outcomes idempotently by attempt id). An explicit list rather than tonic's
//! balanced channel, because both callers hold long-lived streams: a balancer picks an
//! address per call, out of sight, and learns of a dead one only through its own probing,
//! while here each stream lives on one known replica, every move happens in one place
//! ([`ControlClient::failed`]) after a session really ended, each address gets its turn in
//! order, and the logs say which replica is in use. Names are resolved again after each
//! pass over the list, so a replaced replica's new address is found.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use sluice_proto::control::v1::ReportOutcomesResponse;
use sluice_proto::control::v1::data_plane_service_client::DataPlaneServiceClient;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::config::{ControlEndpoint, DataConfig};
use crate::error::DataError;

/// Bounds a connect to the control plane, so a dead one is noticed and retried quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds resolving a name, so a slow DNS server cannot hold both streams up.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the long-lived streams, so a silently dropped connection (a NAT or a
/// crashed peer) is detected instead of waiting forever for the next config change.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control-plane replicas, the one in use, and the bearer header. Cheap to clone; the
/// clones share the replica in use, so the watcher and the reporter move together.
#[derive(Clone)]
pub(crate) struct ControlClient {
    endpoints: Arc<[ControlEndpoint]>,
    rotation: Arc<tokio::sync::Mutex<Rotation>>,
    authorization: MetadataValue<Ascii>,
}

/// Where the client stands in the list of addresses.
#[derive(Default)]
struct Rotation {
    /// This pass's addresses, every endpoint's in order; resolved when a pass begins.
    addresses: Vec<Address>,
    /// The address in use (or next to use) in `addresses`.
    position: usize,
    /// The replica in use, once a session asked for it.
    current: Option<Replica>,
    /// Moves so far: a session that ends on a replica already left moves nothing.
    moves: u64,
}

/// One address of an endpoint: resolved, or the endpoint as configured when its name did
/// not resolve (the channel then resolves it when it connects, and fails like a dead
/// replica if it still cannot).
#[derive(Clone, Copy)]
struct Address {
    endpoint: usize,
    socket: Option<SocketAddr>,
}

/// A control-plane replica in use: the channel to it and what the logs call it.
#[derive(Clone)]
pub(crate) struct Replica {
    channel: Channel,
    name: Arc<str>,
    turn: u64,
}

impl Replica {
    /// The replica as logs show it: the endpoint, and the address a name resolved to.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn client(&self) -> DataPlaneServiceClient<Channel> {
        DataPlaneServiceClient::new(self.channel.clone())
    }
}

impl ControlClient {
    /// The client of the configured replicas, without connecting: the data plane starts
    /// (and keeps delivering) while the control plane is down.
    pub(crate) fn new(config: &DataConfig) -> Result<ControlClient, DataError> {
        let endpoints = config
            .control_endpoints()
            .map_err(|why| DataError::Config(format!("control_endpoint: {why}")))?;
        Ok(ControlClient {
            endpoints: endpoints.into(),
            rotation: Arc::default(),
            authorization: bearer(&config.internal_token)?,
        })
    }

    /// The replica to use now: the one in use, or the next address of the list (resolving
    /// the names again when a pass over the list begins).
    pub(crate) async fn replica(&self) -> Replica {
        let mut rotation = self.rotation.lock().await;
        if let Some(current) = &rotation.current {
            return current.clone();
        }
        if rotation.position >= rotation.addresses.len() {
            rotation.addresses = resolve(&self.endpoints).await;
            rotation.position = 0;
        }
        // `resolve` gives every endpoint one address at least, and there is one endpoint at
        // least (`control_endpoints` refuses an empty list).
        let address = rotation.addresses[rotation.position];
        let replica = self.connect_lazy(address, rotation.moves);
        rotation.current = Some(replica.clone());
        replica
    }

    /// A session on `replica` ended (it broke, could not open, or the replica ended it):
    /// the next [`ControlClient::replica`] is the next address. Once per replica however
    /// many sessions on it end.
    pub(crate) async fn failed(&self, replica: &Replica) {
        let mut rotation = self.rotation.lock().await;
        if rotation.moves != replica.turn {
            return;
        }
        rotation.moves += 1;
        rotation.current = None;
        rotation.position += 1;
        if rotation.addresses.len() > 1 {
            tracing::info!(left = %replica.name, "moving to the next control-plane replica");
        }
    }

    /// A lazily connecting channel to `address`, whose calls name the endpoint as
    /// configured (the `:authority` a proxy in between would route by).
    fn connect_lazy(&self, address: Address, turn: u64) -> Replica {
        let endpoint = &self.endpoints[address.endpoint];
        let (target, name) = match address.socket.and_then(|socket| {
            let uri = http::Uri::builder()
                .scheme("http")
                .authority(socket.to_string())
                .path_and_query("/")
                .build()
                .ok()?;
            Some((uri, socket))
        }) {
            Some((uri, socket)) if socket.ip().to_string() != endpoint.host => {
                (uri, format!("{endpoint} ({socket})"))
            }
            Some((uri, _)) => (uri, endpoint.to_string()),
            None => (endpoint.uri.clone(), endpoint.to_string()),
        };
        let channel = Endpoint::from(target)
            .origin(endpoint.uri.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Replica {
            channel,
            name: name.into(),
            turn,
        }
    }

    /// `ReportOutcomes` on `replica` with batches already encoded: the writer encodes each
    /// batch once, for its outbox row, and the same bytes go on the wire (the generated
    /// client would want the message back as a struct, to encode it again).
    pub(crate) async fn report_outcomes(
        &self,
        replica: &Replica,
        batches: impl tokio_stream::Stream<Item = EncodedBatch> + Send + 'static,
    ) -> Result<tonic::Response<tonic::Streaming<ReportOutcomesResponse>>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(replica.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("control plane not ready: {e}")))?;
        let mut request = self.request(batches);
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "sluice.control.v1.DataPlaneService",
            "ReportOutcomes",
        ));
        let path = http::uri::PathAndQuery::from_static(
            "/sluice.control.v1.DataPlaneService/ReportOutcomes",
        );
        grpc.streaming(
            request,
            path,
            tonic_prost::ProstCodec::<EncodedBatch, ReportOutcomesResponse>::default(),
        )
        .await
    }

    /// `message` as a request carrying the internal token.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        sluice_telemetry::inject_current(request.metadata_mut());
        request
    }
}

/// Every endpoint's addresses, in the order configured, each once.
async fn resolve(endpoints: &[ControlEndpoint]) -> Vec<Address> {
    let mut addresses: Vec<Address> = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let found = resolve_one(endpoint).await;
        if found.is_empty() {
            addresses.push(Address {
                endpoint: index,
                socket: None,
            });
        }
        for socket in found {
            if !addresses.iter().any(|a| a.socket == Some(socket)) {
                addresses.push(Address {
                    endpoint: index,
                    socket: Some(socket),
                });
            }
        }
    }
    addresses
}

/// The addresses of one endpoint: its IP address, or what its name resolves to now (none
/// when it does not resolve, which is logged: the replica may not exist yet).
async fn resolve_one(endpoint: &ControlEndpoint) -> Vec<SocketAddr> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, endpoint.port)];
    }
    let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(found)) => {
            let mut sockets: Vec<SocketAddr> = Vec::new();
            for socket in found {
                if !sockets.contains(&socket) {
                    sockets.push(socket);
                }
            }
            sockets
        }
        Ok(Err(err)) => {
            tracing::warn!(control_plane = %endpoint, error = %err, "cannot resolve the control plane's name");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(control_plane = %endpoint, "resolving the control plane's name timed out");
            Vec::new()
        }
    }
}

/// At start, asks every control-plane address whether it takes the internal token (an
/// empty `ReportOutcomes` stream: authenticated, then nothing to store), each within
/// `within`. The error names a replica that refused it; a replica that is down, slow or
/// answers anything else passes, since the data plane must start while the control plane
/// is down and keep delivering from its stored copy.
pub async fn check_internal_token(config: &DataConfig, within: Duration) -> Result<(), DataError> {
    let client = ControlClient::new(config)?;
    let Ok(addresses) = tokio::time::timeout(within, resolve(&client.endpoints)).await else {
        return Ok(());
    };
    let probes = addresses.into_iter().map(|address| {
        let replica = client.connect_lazy(address, 0);
        let client = client.clone();
        async move {
            let answer = tokio::time::timeout(
                within,
                client.report_outcomes(&replica, tokio_stream::empty()),
            )
            .await;
            (replica, answer)
        }
    });
    for (replica, answer) in futures::future::join_all(probes).await {
        match answer {
            Ok(Err(status)) if is_auth_error(&status) => {
                return Err(DataError::Unauthenticated(format!(
                    "the control plane at {} refused the internal token ({:?}: {}); \
                     every plane needs the same one",
                    replica.name,
                    status.code(),
                    status.message()
                )));
            }
            Ok(Ok(_)) => {
                tracing::debug!(control_plane = %replica.name, "the control plane takes the internal token")
            }
            Ok(Err(status)) => {
                tracing::debug!(control_plane = %replica.name, code = ?status.code(), "the control plane did not answer the token check")
            }
            Err(_) => {
                tracing::debug!(control_plane = %replica.name, "the control plane did not answer the token check in time")
            }
        }
    }
    Ok(())
}

/// The `authorization` value for the internal token, marked sensitive so it never shows in
/// debug output.
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<Ascii>, DataError> {
    if token.is_empty() {
        return Err(DataError::Config("internal_token is empty".to_owned()));
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| DataError::Config("internal_token must be printable ASCII".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A refusal that retrying will not fix: the internal tokens of the planes disagree.
pub(crate) fn is_auth_error(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// A `ReportOutcomesRequest` whose messages, attempts and disables are already encoded
/// (`body`, as stored in the outbox row), with the fields set at sending appended: a
/// protobuf message may carry its fields in any order, so the bytes are never rebuilt.
#[derive(Clone, Debug, Default)]
pub(crate) struct EncodedBatch {
    pub(crate) body: Bytes,
    /// Field 1.
    pub(crate) batch_id: u64,
    /// Field 5.
    pub(crate) traceparent: String,
    /// Field 6.
    pub(crate) first_send: bool,
}

impl prost::Message for EncodedBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.body);
        if self.batch_id != 0 {
            prost::encoding::uint64::encode(1, &self.batch_id, buf);
        }
        if !self.traceparent.is_empty() {
            prost::encoding::string::encode(5, &self.traceparent, buf);
        }
        if self.first_send {
            prost::encoding::bool::encode(6, &self.first_send, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never received; anything read is skipped.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.body.len()
            + if self.batch_id != 0 {
                prost::encoding::uint64::encoded_len(1, &self.batch_id)
            } else {
                0
            }
            + if self.traceparent.is_empty() {
                0
            } else {
                prost::encoding::string::encoded_len(5, &self.traceparent)
            }
            + if self.first_send {
                prost::encoding::bool::encoded_len(6, &self.first_send)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = EncodedBatch::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message as _;
    use sluice_proto::control::v1::{MessageRecord, ReportOutcomesRequest};

    use super::{ControlClient, EncodedBatch, resolve};
    use crate::config::DataConfig;

    fn config(control_endpoint: &str) -> DataConfig {
        DataConfig {
            internal_token: "it_test_internal_token_0123456789".into(),
            control_endpoint: control_endpoint.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn one_replica_at_a_time_each_in_turn_one_move_per_replica() {
        let client = ControlClient::new(&config("http://127.0.0.1:1, http://127.0.0.1:2")).unwrap();
        let first = client.replica().await;
        assert_eq!(first.name(), "http://127.0.0.1:1");
        // The watcher and the reporter share it while it works.
        assert_eq!(client.clone().replica().await.name(), first.name());
        // Both sessions on it end: it moves once, not past the next replica.
        client.failed(&first).await;
        client.failed(&first).await;
        let second = client.replica().await;
        assert_eq!(second.name(), "http://127.0.0.1:2");
        // After the last, the next pass begins with the first again.
        client.failed(&second).await;
        assert_eq!(client.replica().await.name(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_name_counts_as_each_of_its_addresses_and_an_unknown_one_as_itself() {
        let endpoints = config("http://localhost:7,http://nowhere.invalid:7")
            .control_endpoints()
            .unwrap();
        let mut expected: Vec<std::net::SocketAddr> = Vec::new();
        for socket in tokio::net::lookup_host(("localhost", 7)).await.unwrap() {
            if !expected.contains(&socket) {
                expected.push(socket);
            }
        }
        let addresses = resolve(&endpoints).await;
        let (named, unknown): (Vec<&super::Address>, Vec<&super::Address>) =
            addresses.iter().partition(|a| a.endpoint == 0);
        assert_eq!(
            named.iter().map(|a| a.socket.unwrap()).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].socket, None);
    }

    #[test]
    fn an_encoded_batch_decodes_as_the_request() {
        let message = MessageRecord {
            id: "msg_1".into(),
            ..Default::default()
        };
        let mut body = Vec::new();
        prost::encoding::message::encode(2, &message, &mut body);
        for first_send in [false, true] {
            let batch = EncodedBatch {
                body: body.clone().into(),
                batch_id: 42,
                traceparent: "00-ab-cd-01".into(),
                first_send,
            };
            let bytes = batch.encode_to_vec();
            assert_eq!(bytes.len(), batch.encoded_len());
            let decoded = ReportOutcomesRequest::decode(bytes.as_slice()).unwrap();
            assert_eq!(decoded.batch_id, 42);
            assert_eq!(decoded.traceparent, "00-ab-cd-01");
            assert_eq!(decoded.messages, std::slice::from_ref(&message));
            assert_eq!(decoded.first_send, first_send);
        }
    }
}
