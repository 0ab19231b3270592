//! The connection to the control plane's `DataPlaneService`, shared by the config watcher
//! and the outcome reporter, with the internal token attached to every call.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use sluice_proto::control::v1::ReportOutcomesResponse;
use sluice_proto::control::v1::data_plane_service_client::DataPlaneServiceClient;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::error::DataError;

/// Bounds a connect to the control plane, so a dead one is noticed and retried quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the long-lived streams, so a silently dropped connection (a NAT or a
/// crashed peer) is detected instead of waiting forever for the next config change.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily connecting, self-reconnecting channel plus the bearer header.
#[derive(Clone)]
pub(crate) struct ControlClient {
    channel: Channel,
    authorization: MetadataValue<Ascii>,
}

impl ControlClient {
    /// Builds the channel without connecting: the data plane starts (and keeps delivering)
    /// while the control plane is down.
    pub(crate) fn new(endpoint: &str, token: &str) -> Result<ControlClient, DataError> {
        let endpoint = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| DataError::Config(format!("control_endpoint: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let authorization = bearer(token)?;
        Ok(ControlClient {
            channel: endpoint.connect_lazy(),
            authorization,
        })
    }

    pub(crate) fn client(&self) -> DataPlaneServiceClient<Channel> {
        DataPlaneServiceClient::new(self.channel.clone())
    }

    /// `ReportOutcomes` with batches already encoded: the writer encodes each batch once,
    /// for its outbox row, and the same bytes go on the wire (the generated client would
    /// want the message back as a struct, to encode it again).
    pub(crate) async fn report_outcomes(
        &self,
        batches: impl tokio_stream::Stream<Item = EncodedBatch> + Send + 'static,
    ) -> Result<tonic::Response<tonic::Streaming<ReportOutcomesResponse>>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
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

    use super::EncodedBatch;

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
