//! Settings of the HTTP sender, with the defaults the data plane runs with.

use std::time::Duration;

use sluice_core::egress::AllowList;

/// The `user-agent` sent when the configuration does not name another one.
pub const DEFAULT_USER_AGENT: &str = concat!("Sluice-Webhooks/", env!("CARGO_PKG_VERSION"));

/// How the sender dials endpoints. Built once per process; [`Default`] is the production
/// posture (HTTPS only, public addresses only).
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Bounds the TCP (and TLS) connect, so an unroutable endpoint fails fast instead of
    /// holding a delivery slot for the whole request timeout.
    pub connect_timeout: Duration,
    /// Total time for one attempt: connect, send, wait for the answer and read the capped
    /// response body. A receiver slower than this counts as failed.
    pub request_timeout: Duration,
    /// Plain `http://` destinations are refused unless set: webhook bodies and signatures
    /// must not cross the network in clear. Meant for local development and tests.
    pub allow_http: bool,
    /// Loopback, private, link-local, CGNAT and metadata addresses are refused unless set
    /// (or named by `allow_list`), so a subscription cannot be aimed at internal services.
    pub allow_private: bool,
    /// Addresses allowed even though the default policy refuses them, e.g. an internal
    /// receiver in a private network.
    pub allow_list: AllowList,
    /// Sent on every attempt so receivers can recognise (and allow-list) Sluice.
    pub user_agent: String,
    /// How much of the response body is kept for the attempt log; the rest is never read.
    pub response_excerpt_bytes: usize,
    /// Idle keep-alive connections kept per host, so frequent deliveries to one endpoint
    /// skip the TCP and TLS handshakes. Unbounded by default: the dispatcher already bounds
    /// the connections to an endpoint (its concurrency), and an idle connection is closed
    /// after 90 seconds (reqwest's default). A cap below the attempts in flight to one host
    /// (several subscriptions to one receiver, or to `hooks.slack.com`) closed connections
    /// as they came back and opened new ones, nearly one per delivery, each with its
    /// handshake (docs/benchmarks.md has the measurement).
    pub max_idle_per_host: usize,
    /// Certificate authorities trusted besides the system's, as a PEM bundle: for
    /// endpoints whose certificates a private CA signs (`--extra-ca-file`).
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            allow_http: false,
            allow_private: false,
            allow_list: AllowList::default(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            response_excerpt_bytes: 4096,
            max_idle_per_host: usize::MAX,
            extra_ca_pem: None,
        }
    }
}
