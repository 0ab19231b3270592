//! A real gRPC client that sends bytes as they are, for requests no generated client can
//! build (strings that are not UTF-8, nesting past prost's limit, oversized messages): a
//! tonic client whose codec writes the given bytes as the message and reads answers back
//! as bytes.

use std::net::SocketAddr;

use bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Bytes in, bytes out.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

/// The encoder and decoder of [`RawCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBytes;

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

/// A raw client of the server at `addr`.
pub struct RawGrpc {
    grpc: tonic::client::Grpc<Channel>,
}

impl RawGrpc {
    /// Connects to `addr` (plain HTTP/2), accepting answers of any size.
    pub async fn connect(addr: SocketAddr) -> RawGrpc {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RawGrpc {
            grpc: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        }
    }

    /// A unary call of `path` (`/sluice.data.v1.IngestService/Publish`) with `key` as the
    /// bearer, sending `message` as its encoded request.
    pub async fn unary(
        &mut self,
        path: &'static str,
        key: &str,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, tonic::Status> {
        self.grpc.ready().await.unwrap();
        let request = crate::clients::authed(message, key);
        self.grpc
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .map(tonic::Response::into_inner)
    }

    /// A bidirectional stream of `path` sending `messages` then closing; the answers until
    /// the stream's end, and its final status (`Ok` when it ended cleanly).
    pub async fn stream(
        &mut self,
        path: &'static str,
        key: &str,
        messages: Vec<Vec<u8>>,
    ) -> Result<(Vec<Vec<u8>>, Result<(), tonic::Status>), tonic::Status> {
        self.grpc.ready().await.unwrap();
        let request = crate::clients::authed(tokio_stream::iter(messages), key);
        let mut inbound = self
            .grpc
            .streaming(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await?
            .into_inner();
        let mut answers = Vec::new();
        loop {
            match inbound.message().await {
                Ok(Some(answer)) => answers.push(answer),
                Ok(None) => return Ok((answers, Ok(()))),
                Err(status) => return Ok((answers, Err(status))),
            }
        }
    }
}
