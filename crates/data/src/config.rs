//! The data plane's start-up configuration ([`DataConfig`]): every knob the binary's flags
//! set, its defaults, and the checks that refuse an unusable one before anything starts.

use std::time::Duration;

use sluice_core::retry::RetrySchedule;
use sluice_core::sealing::Keyring;
use sluice_delivery::SenderConfig;

use crate::error::DataError;
use crate::time::duration_ms;

/// The default of [`DataConfig::max_held_deliveries`]: beyond it new work waits in the
/// database, which bounds memory however large a backlog grows (a dead endpoint, a replay
/// of a million).
pub const DEFAULT_MAX_HELD_DELIVERIES: usize = 100_000;

/// What the data plane is told at start. Its `Debug` hides the internal token.
#[derive(Clone)]
pub struct DataConfig {
    /// Sent as `authorization: Bearer <token>` to the control plane, and required on
    /// DispatchService calls. Never logged.
    pub internal_token: String,
    /// The control plane's gRPC address, e.g. `http://127.0.0.1:50051`, or the addresses of
    /// several replicas separated by commas; a name that resolves to several addresses
    /// counts as several. Checked by [`DataConfig::control_endpoints`].
    pub control_endpoint: String,
    /// The wait before each attempt.
    pub retry: RetrySchedule,
    /// Each retry delay moves randomly within ± this fraction, so retries of deliveries
    /// that failed together spread out.
    pub retry_jitter: f64,
    /// The least `Retry-After` (on 429/503) taken as asked, so `Retry-After: 0` cannot make
    /// the data plane hammer an endpoint.
    pub retry_after_min: Duration,
    /// The most `Retry-After` honoured, so an endpoint cannot park a delivery for a year.
    pub retry_after_max: Duration,
    /// The largest accepted payload, in bytes.
    pub max_payload_bytes: usize,
    /// How the HTTP sender dials endpoints.
    pub sender: SenderConfig,
    /// The most attempts in flight to one subscription.
    pub endpoint_concurrency: usize,
    /// Whether each endpoint's limit adapts between 1 and `endpoint_concurrency` to how it
    /// answers (AIMD, `docs/concurrency.md`), or stays at `endpoint_concurrency`.
    pub adaptive_concurrency: bool,
    /// A subscription whose every attempt failed for this long is disabled.
    pub disable_after_failing_for: Duration,
    /// Alternatively, disable after this many failed attempts in a row (for tests).
    pub disable_after_failed_attempts: Option<u32>,
    /// Consecutive failures that open an endpoint's circuit breaker; 0 turns it off.
    pub circuit_breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    pub circuit_breaker_cooldown: Duration,
    /// How long a replica owns a delivery it claimed (PostgreSQL with several replicas).
    pub lease: Duration,
    /// The most deliveries this process holds in memory: claimed, waiting in a lane or on a
    /// retry timer, in flight, or with an outcome not yet committed. Beyond it the scanner
    /// claims no more and new events' deliveries stay in the database (durable already)
    /// for the scanner to claim as room frees, so memory stays bounded whatever the
    /// backlog.
    pub max_held_deliveries: usize,
    /// Events a second one workspace may publish through this process (0: no quota);
    /// beyond, a publish is refused with RESOURCE_EXHAUSTED and the time to wait.
    pub workspace_publish_rate: u32,
    /// The burst a workspace may publish at once within its quota (0: one second's worth).
    pub workspace_publish_burst: u32,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
    /// How long a publish waits for its event to be made durable: past it the publisher is
    /// answered UNAVAILABLE ("not stored, publish again"). The store's own waits (a
    /// connection, a statement) are bounded by the same figure (`sluice_store::StoreOptions`).
    pub store_timeout: Duration,
    /// The master keys that seal the stored copy of the signing secrets. Required: the
    /// default has none, and `DataPlane::start` refuses to run without.
    pub keyring: Option<Keyring>,
    /// How long messages, payloads and idempotency keys are kept where a workspace sets no
    /// window of its own, and how often the purge runs (`retention.rs`).
    pub retention: sluice_core::retention::RetentionDefaults,
}

impl std::fmt::Debug for DataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataConfig")
            .field("internal_token", &"<redacted>")
            .field("control_endpoint", &self.control_endpoint)
            .field("retry", &self.retry)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("sender", &self.sender)
            .field("endpoint_concurrency", &self.endpoint_concurrency)
            .field("adaptive_concurrency", &self.adaptive_concurrency)
            .field("lease", &self.lease)
            .field("max_held_deliveries", &self.max_held_deliveries)
            .field("workspace_publish_rate", &self.workspace_publish_rate)
            .field("workspace_publish_burst", &self.workspace_publish_burst)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("keyring", &self.keyring)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            internal_token: String::new(),
            control_endpoint: "http://127.0.0.1:50051".to_owned(),
            retry: RetrySchedule::default(),
            retry_jitter: 0.2,
            retry_after_min: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(3600),
            max_payload_bytes: 256 * 1024,
            sender: SenderConfig::default(),
            endpoint_concurrency: 16,
            adaptive_concurrency: true,
            disable_after_failing_for: Duration::from_secs(5 * 24 * 3600),
            disable_after_failed_attempts: None,
            circuit_breaker_failures: 10,
            circuit_breaker_cooldown: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            max_held_deliveries: DEFAULT_MAX_HELD_DELIVERIES,
            workspace_publish_rate: 0,
            workspace_publish_burst: 0,
            shutdown_grace: Duration::from_secs(10),
            store_timeout: sluice_store::DEFAULT_STORE_TIMEOUT,
            keyring: None,
            retention: Default::default(),
        }
    }
}

impl DataConfig {
    /// The entries of [`DataConfig::control_endpoint`], checked; the error names the first
    /// entry that is wrong (`entry 2 "..." is not an http://host:port URL: ...`).
    pub fn control_endpoints(&self) -> Result<Vec<ControlEndpoint>, String> {
        self.control_endpoint
            .split(',')
            .enumerate()
            .map(|(i, entry)| {
                let entry = entry.trim();
                ControlEndpoint::parse(entry).map_err(|why| {
                    format!(
                        "entry {} \"{entry}\" is not an http://host:port URL: {why}",
                        i + 1
                    )
                })
            })
            .collect()
    }

    /// The lease length in milliseconds.
    pub(crate) fn lease_ms(&self) -> i64 {
        duration_ms(self.lease)
    }

    /// Refuses a configuration the data plane cannot run with, naming the setting.
    pub(crate) fn validate(&self) -> Result<(), DataError> {
        let fail = |m: &str| Err(DataError::Config(m.to_owned()));
        if self.internal_token.is_empty() {
            return fail("internal_token is required");
        }
        if let Err(why) = self.control_endpoints() {
            return Err(DataError::Config(format!("control_endpoint: {why}")));
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            return fail("retry_jitter must be between 0 and 1");
        }
        if self.retry_after_min > self.retry_after_max {
            return fail("retry_after_min must not exceed retry_after_max");
        }
        if self.max_payload_bytes == 0 {
            return fail("max_payload_bytes must be positive");
        }
        if self.endpoint_concurrency == 0 {
            return fail("endpoint_concurrency must be positive");
        }
        if self.store_timeout < Duration::from_millis(100) {
            return fail("store_timeout must be at least 100 ms");
        }
        if self.max_held_deliveries == 0 {
            return fail("max_held_deliveries must be positive");
        }
        if self.lease < Duration::from_secs(1) {
            return fail("lease must be at least one second");
        }
        if self.disable_after_failed_attempts == Some(0) {
            return fail("disable_after_failed_attempts must be positive when set");
        }
        Ok(())
    }
}

/// One control-plane address of [`DataConfig::control_endpoint`]: `http://host:port`, the
/// host a name or an IP address, the port 80 when left out (as any HTTP URL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlEndpoint {
    /// As configured, without a path: the origin of calls, and what logs show.
    pub(crate) uri: http::Uri,
    /// The host without an IPv6 literal's brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl ControlEndpoint {
    fn parse(entry: &str) -> Result<ControlEndpoint, String> {
        if entry.is_empty() {
            return Err("it is empty".to_owned());
        }
        let uri: http::Uri = entry.parse().map_err(|e| format!("{e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            // The planes talk plain HTTP/2 to each other (this build has no TLS client), so
            // an https entry could never connect: refused now rather than retried forever.
            Some("https") => {
                return Err("https is not supported between the planes (plain HTTP/2; \
                     put TLS in a sidecar or a mesh)"
                    .to_owned());
            }
            Some(other) => return Err(format!("the scheme is {other}, not http")),
            None => return Err("it has no http:// scheme".to_owned()),
        }
        let Some(authority) = uri.authority() else {
            return Err("it has no host".to_owned());
        };
        if authority.as_str().contains('@') {
            return Err("it carries credentials; the internal token authenticates".to_owned());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("it has no host".to_owned());
        }
        // The authority is the host and maybe `:port` (credentials were refused above).
        let port = match authority
            .as_str()
            .strip_prefix(authority.host())
            .and_then(|rest| rest.strip_prefix(':'))
        {
            None => 80,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("the port {port} is not one from 1 to 65535")),
            },
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("it has a path; give only scheme, host and port".to_owned());
        }
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("{e}"))?;
        Ok(ControlEndpoint {
            uri,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for ControlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.uri.to_string();
        f.write_str(uri.strip_suffix('/').unwrap_or(&uri))
    }
}

#[cfg(test)]
mod tests {
    use super::DataConfig;

    fn endpoints(list: &str) -> Result<Vec<String>, String> {
        let config = DataConfig {
            control_endpoint: list.to_owned(),
            ..Default::default()
        };
        config
            .control_endpoints()
            .map(|all| all.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_list_of_replicas_is_split_and_each_entry_checked() {
        let table: &[(&str, Result<&[&str], &str>)] = &[
            ("http://127.0.0.1:50051", Ok(&["http://127.0.0.1:50051"])),
            (
                "http://control-1:50051, http://control-2:50051/",
                Ok(&["http://control-1:50051", "http://control-2:50051"]),
            ),
            ("http://[::1]:50051", Ok(&["http://[::1]:50051"])),
            ("http://control", Ok(&["http://control"])),
            (
                "http://a:1,",
                Err(r#"entry 2 "" is not an http://host:port URL: it is empty"#),
            ),
            (
                "http://a:1,nonsense",
                Err(
                    r#"entry 2 "nonsense" is not an http://host:port URL: it has no http:// scheme"#,
                ),
            ),
            (
                "control:50051",
                Err(
                    r#"entry 1 "control:50051" is not an http://host:port URL: it has no http:// scheme"#,
                ),
            ),
            ("https://control:50051", Err("https is not supported")),
            ("ftp://control:21", Err("the scheme is ftp, not http")),
            ("http://control:50051/sluice", Err("it has a path")),
            (
                "http://user:pw@control:50051",
                Err("it carries credentials"),
            ),
            (
                "http://control:0",
                Err("the port 0 is not one from 1 to 65535"),
            ),
            ("http://control:99999", Err("the port 99999 is not")),
            ("http://[::1]:70000", Err("the port 70000 is not")),
            ("http://a b:1", Err("entry 1")),
        ];
        for (list, expected) in table {
            match (endpoints(list), expected) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{list}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{list}: {got}"),
                (got, want) => panic!("{list}: got {got:?}, want {want:?}"),
            }
        }
    }
}
