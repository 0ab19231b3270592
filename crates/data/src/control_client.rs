//! The connection to the control plane's `DataPlaneService`, shared by the config watcher
//! and the outcome reporter, with the internal token attached to every call.

use std::time::Duration;

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
