//! The delivery policy of workspaces and subscriptions (issue 22): their retry policy, read
//! from requests (validated, field by field with `update_mask: retry_policy.<field>`),
//! stored as JSON, sent to the data plane, and resolved for `GetSubscription` against the
//! server's defaults; and the subscription's payload shape.

use std::time::Duration;

use sluice_core::policy::{self, Defaults, Given, Limit, Overrides, PayloadShape, Source};
use sluice_proto::control::v1 as pb;
use sluice_store::control::workspace;

use crate::error::Violations;

/// The fields of a `RetryPolicy`, as `update_mask` names them after `retry_policy.`.
pub(crate) const FIELDS: [&str; 5] = [
    "schedule",
    "max_attempts",
    "max_age",
    "request_timeout",
    "disable_after",
];

/// Whether an `update_mask` path is about the retry policy (`retry_policy` or
/// `retry_policy.<field>`), and a known one.
pub(crate) fn is_policy_path(path: &str) -> bool {
    path == "retry_policy"
        || path
            .strip_prefix("retry_policy.")
            .is_some_and(|field| FIELDS.contains(&field))
}

fn duration(d: &prost_types::Duration) -> Result<Duration, ()> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(());
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The given policy, keeping the fields `selected` names.
fn given(input: &pb::RetryPolicy, selected: impl Fn(&str) -> bool) -> Given {
    Given {
        schedule: if selected("schedule") {
            input.schedule.iter().map(duration).collect()
        } else {
            Vec::new()
        },
        max_attempts: if selected("max_attempts") {
            input.max_attempts
        } else {
            0
        },
        max_age: input
            .max_age
            .as_ref()
            .filter(|_| selected("max_age"))
            .map(duration),
        request_timeout: input
            .request_timeout
            .as_ref()
            .filter(|_| selected("request_timeout"))
            .map(duration),
        disable_after: input
            .disable_after
            .as_ref()
            .filter(|_| selected("disable_after"))
            .map(duration),
    }
}

fn checked(v: &mut Violations, prefix: &str, given: &Given) -> Option<Overrides> {
    match policy::check(given) {
        Ok(o) => Some(o),
        Err(violations) => {
            for violation in violations {
                v.add(format!("{prefix}.{}", violation.field), violation.message);
            }
            None
        }
    }
}

/// A whole policy as given on create (`prefix` names it in errors, e.g.
/// `subscription.retry_policy`); `None` when it sets nothing or is refused.
pub(crate) fn read(
    v: &mut Violations,
    prefix: &str,
    input: Option<&pb::RetryPolicy>,
) -> Option<Overrides> {
    let input = input?;
    checked(v, prefix, &given(input, |_| true))?.non_empty()
}

/// The policy after an update whose mask names `paths`: `None` when no path is about the
/// policy (leave it), `Some(new)` otherwise. `retry_policy` replaces it all; each
/// `retry_policy.<field>` replaces that value (unset: inherit again). A limit of the other
/// kind still stored is a conflict unless the mask names it too.
pub(crate) fn update(
    v: &mut Violations,
    prefix: &str,
    input: Option<&pb::RetryPolicy>,
    paths: &[String],
    current: Option<&str>,
) -> Option<Option<Overrides>> {
    let named: Vec<&str> = paths
        .iter()
        .filter_map(|p| {
            if p == "retry_policy" {
                Some("*")
            } else {
                p.strip_prefix("retry_policy.")
            }
        })
        .collect();
    if named.is_empty() {
        return None;
    }
    let default = pb::RetryPolicy::default();
    let input = input.unwrap_or(&default);
    if named.contains(&"*") {
        return Some(checked(v, prefix, &given(input, |_| true)).and_then(Overrides::non_empty));
    }
    let has = |field: &str| named.contains(&field);
    let new = checked(v, prefix, &given(input, has))?;
    let mut merged = Overrides::from_json(current).unwrap_or_default();
    if has("schedule") {
        merged.retry_delays_ms = new.retry_delays_ms;
    }
    if has("request_timeout") {
        merged.request_timeout_ms = new.request_timeout_ms;
    }
    if has("disable_after") {
        merged.disable_after_ms = new.disable_after_ms;
    }
    match (has("max_attempts"), has("max_age")) {
        (true, true) => merged.limit = new.limit,
        (named_attempts, named_age) if named_attempts || named_age => {
            let (field, other) = if named_attempts {
                ("max_attempts", "max_age")
            } else {
                ("max_age", "max_attempts")
            };
            let kept_other = match merged.limit {
                Some(Limit::Attempts(_)) => named_age,
                Some(Limit::AgeMs(_)) => named_attempts,
                None => false,
            };
            match (new.limit, kept_other) {
                (Some(_), true) => {
                    v.add(
                        format!("{prefix}.{field}"),
                        format!(
                            "set either max_attempts or max_age, not both: {other} is set; \
                             name retry_policy.{other} in update_mask too to clear it"
                        ),
                    );
                    return None;
                }
                (Some(limit), false) => merged.limit = Some(limit),
                // Named but unset: clear the limit if it is of this kind.
                (None, true) => {}
                (None, false) => merged.limit = None,
            }
        }
        _ => {}
    }
    Some(merged.non_empty())
}

fn proto_duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A stored policy as its proto (unset when there is none).
pub(crate) fn to_proto(stored: Option<&str>) -> Option<pb::RetryPolicy> {
    let o = Overrides::from_json(stored)?;
    Some(pb::RetryPolicy {
        schedule: o
            .retry_delays_ms
            .iter()
            .flatten()
            .map(|ms| proto_duration_ms(*ms))
            .collect(),
        max_attempts: match o.limit {
            Some(Limit::Attempts(n)) => n,
            _ => 0,
        },
        max_age: match o.limit {
            Some(Limit::AgeMs(ms)) => Some(proto_duration_ms(ms)),
            _ => None,
        },
        request_timeout: o.request_timeout_ms.map(proto_duration_ms),
        disable_after: o.disable_after_ms.map(proto_duration_ms),
    })
}

fn source(s: Source) -> i32 {
    let source = match s {
        Source::ServerDefault => pb::PolicySource::ServerDefault,
        Source::Workspace => pb::PolicySource::Workspace,
        Source::Subscription => pb::PolicySource::Subscription,
    };
    source as i32
}

/// The policy that applies to a subscription whose own policy is `subscription` in a
/// workspace whose policy is `workspace`, with each value's source.
pub(crate) fn effective(
    defaults: &Defaults,
    workspace: Option<&str>,
    subscription: Option<&str>,
) -> pb::EffectiveRetryPolicy {
    let workspace = Overrides::from_json(workspace);
    let subscription = Overrides::from_json(subscription);
    let e = policy::resolve(defaults, workspace.as_ref(), subscription.as_ref());
    pb::EffectiveRetryPolicy {
        schedule: e
            .retry_delays_ms
            .0
            .iter()
            .map(|ms| proto_duration_ms(*ms))
            .collect(),
        schedule_source: source(e.retry_delays_ms.1),
        max_attempts: e.max_attempts().unwrap_or(0),
        max_age: match e.limit.0 {
            Some(Limit::AgeMs(ms)) => Some(proto_duration_ms(ms)),
            _ => None,
        },
        limit_source: source(e.limit.1),
        request_timeout: Some(proto_duration_ms(e.request_timeout_ms.0)),
        request_timeout_source: source(e.request_timeout_ms.1),
        disable_after: Some(proto_duration_ms(e.disable_after_ms.0)),
        disable_after_source: source(e.disable_after_ms.1),
    }
}

/// Whether the data plane holds a copy of this workspace: it has retention windows, a
/// retry policy or a publish quota of its own.
pub(crate) fn held(w: &workspace::Model) -> bool {
    w.retention_ms.is_some()
        || w.idempotency_retention_ms.is_some()
        || w.retry_policy.is_some()
        || w.publish_quota_rate.is_some()
}

/// The most events a second (and the largest burst) a workspace's publish quota may set.
pub(crate) const MAX_PUBLISH_QUOTA: u32 = 1_000_000;

/// A publish quota as stored: events a second (0: none, whatever the server's) and burst
/// (0: one second's worth).
pub(crate) type StoredQuota = (i64, i64);

/// The publish quota given, validated (`None`: unset, the server's).
pub(crate) fn publish_quota(
    v: &mut Violations,
    field: &str,
    input: Option<&pb::PublishQuota>,
) -> Option<StoredQuota> {
    let q = input?;
    if q.unlimited {
        for (name, value) in [
            ("events_per_second", q.events_per_second),
            ("burst", q.burst),
        ] {
            if value != 0 {
                v.add(
                    format!("{field}.{name}"),
                    "must be 0 (unset) when `unlimited` is set",
                );
            }
        }
        return Some((0, 0));
    }
    if !(1..=MAX_PUBLISH_QUOTA).contains(&q.events_per_second) {
        v.add(
            format!("{field}.events_per_second"),
            format!(
                "{} is out of range: 1 to {MAX_PUBLISH_QUOTA} events a second (or set \
                 `unlimited` for no quota)",
                q.events_per_second
            ),
        );
    }
    if q.burst > MAX_PUBLISH_QUOTA {
        v.add(
            format!("{field}.burst"),
            format!(
                "{} is out of range: 1 to {MAX_PUBLISH_QUOTA} events, or 0 for one second's worth",
                q.burst
            ),
        );
    }
    Some((i64::from(q.events_per_second), i64::from(q.burst)))
}

/// A stored publish quota as its proto.
pub(crate) fn quota_to_proto(rate: Option<i64>, burst: Option<i64>) -> Option<pb::PublishQuota> {
    let rate = rate?;
    let clamp = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    Some(if rate == 0 {
        pb::PublishQuota {
            unlimited: true,
            ..Default::default()
        }
    } else {
        pb::PublishQuota {
            events_per_second: clamp(rate),
            burst: clamp(burst.unwrap_or(0)),
            unlimited: false,
        }
    })
}

/// The payload shape given (`None`: unspecified).
pub(crate) fn payload_shape(v: &mut Violations, field: &str, value: i32) -> Option<PayloadShape> {
    match pb::PayloadShape::try_from(value) {
        Ok(pb::PayloadShape::Unspecified) => None,
        Ok(pb::PayloadShape::Envelope) => Some(PayloadShape::Envelope),
        Ok(pb::PayloadShape::Raw) => Some(PayloadShape::Raw),
        Ok(pb::PayloadShape::Thin) => Some(PayloadShape::Thin),
        Err(_) => {
            v.add(
                field,
                format!(
                    "unknown value {value}; use PAYLOAD_SHAPE_ENVELOPE, PAYLOAD_SHAPE_RAW or \
                     PAYLOAD_SHAPE_THIN"
                ),
            );
            None
        }
    }
}

/// The stored shape name as its proto enum.
pub(crate) fn shape_proto(name: &str) -> i32 {
    let shape = match PayloadShape::from_name(name) {
        PayloadShape::Envelope => pb::PayloadShape::Envelope,
        PayloadShape::Raw => pb::PayloadShape::Raw,
        PayloadShape::Thin => pb::PayloadShape::Thin,
    };
    shape as i32
}
