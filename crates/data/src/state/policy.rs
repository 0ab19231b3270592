//! The delivery policy in the configuration copy: a workspace's or a subscription's
//! `RetryPolicy` as sent by the control plane (which validated it), read into
//! `sluice_core::policy::Overrides`, and the subscription's payload shape. Resolved against
//! the data plane's flags at attempt time (`deliver/attempt.rs`), so a workspace's change
//! applies to its subscriptions at their next attempt. And a workspace's own publish quota
//! (`OwnQuota`), which the ingest applies instead of the flags' (`api/quota.rs`).

use std::num::NonZeroU32;
use std::time::Duration;

use sluice_core::policy::{Limit, Overrides, PayloadShape};
use sluice_proto::control::v1 as pb;

fn ms(d: &prost_types::Duration) -> u64 {
    let d = Duration::new(
        d.seconds.max(0) as u64,
        d.nanos.clamp(0, 999_999_999) as u32,
    );
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The overrides a `RetryPolicy` sets; `None` when it sets nothing (the default path).
pub(crate) fn overrides(policy: Option<&pb::RetryPolicy>) -> Option<Overrides> {
    let p = policy?;
    let limit = if p.max_attempts > 0 {
        Some(Limit::Attempts(p.max_attempts))
    } else {
        p.max_age.as_ref().map(|age| Limit::AgeMs(ms(age)))
    };
    Overrides {
        retry_delays_ms: (!p.schedule.is_empty()).then(|| p.schedule.iter().map(ms).collect()),
        limit,
        request_timeout_ms: p.request_timeout.as_ref().map(ms),
        disable_after_ms: p.disable_after.as_ref().map(ms),
    }
    .non_empty()
}

/// A workspace's own publish quota, as the control plane sent it (and validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OwnQuota {
    /// No quota for this workspace, whatever the flags say.
    Unlimited,
    /// Events a second, in bursts of up to `burst`.
    Limit {
        per_second: NonZeroU32,
        burst: NonZeroU32,
    },
}

impl OwnQuota {
    /// A burst of 0 is one second's worth; a rate of 0 without `unlimited` (never sent by a
    /// control plane that validated it) is read as no quota of its own.
    pub(crate) fn from_proto(q: &pb::PublishQuota) -> Option<OwnQuota> {
        if q.unlimited {
            return Some(OwnQuota::Unlimited);
        }
        let per_second = NonZeroU32::new(q.events_per_second)?;
        let burst = NonZeroU32::new(q.burst).unwrap_or(per_second);
        Some(OwnQuota::Limit { per_second, burst })
    }
}

/// The payload shape of a subscription; unspecified (or unknown) is the envelope.
pub(crate) fn shape(value: i32) -> PayloadShape {
    match pb::PayloadShape::try_from(value) {
        Ok(pb::PayloadShape::Raw) => PayloadShape::Raw,
        Ok(pb::PayloadShape::Thin) => PayloadShape::Thin,
        _ => PayloadShape::Envelope,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_what_the_control_plane_sends() {
        assert_eq!(overrides(None), None);
        assert_eq!(overrides(Some(&pb::RetryPolicy::default())), None);
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        let policy = pb::RetryPolicy {
            schedule: vec![d(0, 200_000_000), d(1, 0)],
            max_age: Some(d(60, 0)),
            request_timeout: Some(d(2, 0)),
            ..Default::default()
        };
        assert_eq!(
            overrides(Some(&policy)),
            Some(Overrides {
                retry_delays_ms: Some(vec![200, 1_000]),
                limit: Some(Limit::AgeMs(60_000)),
                request_timeout_ms: Some(2_000),
                disable_after_ms: None,
            })
        );
        assert_eq!(shape(pb::PayloadShape::Thin as i32), PayloadShape::Thin);
        assert_eq!(shape(0), PayloadShape::Envelope);
        assert_eq!(shape(99), PayloadShape::Envelope);
    }

    #[test]
    fn reads_a_workspaces_quota() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let quota = |events_per_second, burst, unlimited| pb::PublishQuota {
            events_per_second,
            burst,
            unlimited,
        };
        assert_eq!(
            OwnQuota::from_proto(&quota(0, 0, true)),
            Some(OwnQuota::Unlimited)
        );
        assert_eq!(
            OwnQuota::from_proto(&quota(50, 0, false)),
            Some(OwnQuota::Limit {
                per_second: n(50),
                burst: n(50)
            })
        );
        assert_eq!(
            OwnQuota::from_proto(&quota(50, 200, false)),
            Some(OwnQuota::Limit {
                per_second: n(50),
                burst: n(200)
            })
        );
        assert_eq!(OwnQuota::from_proto(&quota(0, 5, false)), None);
    }
}
