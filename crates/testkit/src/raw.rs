//! A raw TCP peer on `127.0.0.1:0`, for what no well-behaved HTTP server does: answer a
//! TLS handshake with plain text, send fewer body bytes than promised, or stall halfway
//! through a body. It writes fixed bytes on every connection and reports what it read.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::WAIT;

/// What the peer does with a connection once it has written its answer.
#[derive(Clone, Copy, Debug)]
pub enum AfterAnswer {
    /// Closes it (after a clean shutdown of its side, so the bytes arrive before the end).
    Close,
    /// Holds it open, saying nothing more.
    Hold,
}

/// A raw TCP peer that reads what a client sends first, writes `answer`, and then closes
/// or holds the connection.
pub struct RawPeer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What was read from each connection, sent once the answer is written.
    first_reads: mpsc::UnboundedReceiver<Vec<u8>>,
    server: JoinHandle<()>,
}

impl RawPeer {
    /// A peer answering every connection with `answer`, then doing `after`.
    pub async fn start(answer: &'static [u8], after: AfterAnswer) -> RawPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, first_reads) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let read = socket.read(&mut buffer).await.unwrap_or(0);
                    let _ = socket.write_all(answer).await;
                    let _ = tx.send(buffer[..read].to_vec());
                    match after {
                        AfterAnswer::Close => {
                            let _ = socket.shutdown().await;
                        }
                        AfterAnswer::Hold => {
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        RawPeer {
            addr,
            first_reads,
            server,
        }
    }

    /// The URL of `path` on this peer with `scheme` (`http` or `https`).
    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    /// What the next connection sent first, once it has been answered (panics after
    /// [`WAIT`]).
    pub async fn next_read(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.first_reads.recv())
            .await
            .expect("no connection was answered in time")
            .expect("the peer stopped")
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.server.abort();
    }
}
