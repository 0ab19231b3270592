//! The flags of the server's level of the layered retry policy (`docs/delivery-policy.md`):
//! read by the data plane, which applies them where a workspace or subscription sets no
//! value of its own, and by the control plane, which shows them as the source
//! `SERVER_DEFAULT` in `GetSubscription`. Give both planes the same values (the same
//! `SLUICE_*` variables do it).

use std::time::Duration;

use clap::Args;

/// The retry schedule, request timeout and disable period of the server.
#[derive(Debug, Args, Clone)]
pub struct PolicyArgs {
    /// Delays before each attempt, comma-separated (`0s,5s,5m,30m,2h,5h,10h,10h`).
    #[arg(
        long,
        env = "SLUICE_RETRY_SCHEDULE",
        default_value = "0s,5s,5m,30m,2h,5h,10h,10h"
    )]
    pub retry_schedule: String,
    /// Total timeout of an attempt, in milliseconds.
    #[arg(long, env = "SLUICE_REQUEST_TIMEOUT_MS", default_value_t = 15_000)]
    pub request_timeout_ms: u64,
    /// Disable an endpoint whose every attempt failed for this many hours.
    #[arg(long, env = "SLUICE_DISABLE_AFTER_HOURS", default_value_t = 120)]
    pub disable_after_hours: u64,
}

impl PolicyArgs {
    /// The parsed schedule.
    pub fn schedule(&self) -> anyhow::Result<sluice_core::retry::RetrySchedule> {
        sluice_core::retry::RetrySchedule::parse(&self.retry_schedule)
            .map_err(|e| anyhow::anyhow!("--retry-schedule: {e}"))
    }

    /// The total timeout of an attempt.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How long an endpoint fails before it is disabled.
    pub fn disable_after(&self) -> Duration {
        Duration::from_secs(self.disable_after_hours.saturating_mul(3600))
    }

    /// The server's level of the policy.
    pub fn defaults(&self) -> anyhow::Result<sluice_core::policy::Defaults> {
        Ok(sluice_core::policy::Defaults::new(
            &self.schedule()?,
            self.request_timeout(),
            self.disable_after(),
        ))
    }
}
