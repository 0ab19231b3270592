//! A TCP forwarder on `127.0.0.1:0` that a test can cut: every connection through it is
//! dropped at once and new ones are closed as soon as they arrive, until it is restored.
//! Put between the planes and PostgreSQL, it is a real network fault (what the planes see
//! when the database restarts or a network path fails: their sockets die, reconnecting
//! fails for a while, then works), without restarting the machine's server, which other
//! tests use.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cuttable TCP forwarder to one upstream address.
pub struct TcpProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `true` while connections pass. Every forwarding task watches it and ends (dropping
    /// both sockets) when it turns `false`.
    up: Arc<watch::Sender<bool>>,
    server: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy forwarding every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(watch::Sender::new(true));
        let server = tokio::spawn({
            let up = Arc::clone(&up);
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !*up.borrow() {
                        // Cut: the connection is closed as soon as it is made.
                        drop(client);
                        continue;
                    }
                    tokio::spawn(forward(client, upstream, up.subscribe()));
                }
            }
        });
        TcpProxy { addr, up, server }
    }

    /// A proxy in front of the database server of `database_url`, and the URL that reaches
    /// the same database through it.
    pub async fn in_front_of(database_url: &str) -> (TcpProxy, String) {
        let mut url = url::Url::parse(database_url).unwrap();
        let upstream = tokio::net::lookup_host((
            url.host_str().unwrap().to_owned(),
            url.port().unwrap_or(5432),
        ))
        .await
        .unwrap()
        .next()
        .unwrap();
        let proxy = TcpProxy::start(upstream).await;
        url.set_ip_host(proxy.addr.ip()).unwrap();
        url.set_port(Some(proxy.addr.port())).unwrap();
        (proxy, url.to_string())
    }

    /// Drops every connection through the proxy now; new ones are closed on arrival until
    /// [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.server.abort();
    }
}

/// Copies both ways between `client` and a new connection to `upstream` until either side
/// closes or the proxy is cut.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
    // Both sockets are dropped here: the peers see the connection die.
}
