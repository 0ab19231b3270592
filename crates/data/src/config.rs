//! The data plane's start-up configuration ([`DataConfig`]): every knob the binary's flags
//! set, its defaults, and the checks that refuse an unusable one before anything starts.

use std::time::Duration;

use sluice_core::retry::RetrySchedule;
use sluice_core::sealing::Keyring;
use sluice_delivery::SenderConfig;

use crate::error::DataError;
use crate::time::duration_ms;

/// What the data plane is told at start. Its `Debug` hides the internal token.
#[derive(Clone)]
pub struct DataConfig {
    /// Sent as `authorization: Bearer <token>` to the control plane, and required on
    /// DispatchService calls. Never logged.
    pub internal_token: String,
    /// The control plane's gRPC address, e.g. `http://127.0.0.1:50051`.
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
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
    /// How long a publish waits for its event to be made durable: past it the publisher is
    /// answered UNAVAILABLE ("not stored, publish again"). The store's own waits (a
    /// connection, a statement) are bounded by the same figure (`sluice_store::StoreOptions`).
    pub store_timeout: Duration,
    /// The master keys that seal the stored copy of the signing secrets. Required: the
    /// default has none, and `DataPlane::start` refuses to run without.
    pub keyring: Option<Keyring>,
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
            .field("lease", &self.lease)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("keyring", &self.keyring)
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
            disable_after_failing_for: Duration::from_secs(5 * 24 * 3600),
            disable_after_failed_attempts: None,
            circuit_breaker_failures: 10,
            circuit_breaker_cooldown: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            store_timeout: sluice_store::DEFAULT_STORE_TIMEOUT,
            keyring: None,
        }
    }
}

impl DataConfig {
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
        if self.lease < Duration::from_secs(1) {
            return fail("lease must be at least one second");
        }
        if self.disable_after_failed_attempts == Some(0) {
            return fail("disable_after_failed_attempts must be positive when set");
        }
        Ok(())
    }
}
