//! Conversions between stored rows and proto messages, in one place.

use prost_types::Timestamp;
use sluice_core::sealing::Keyring;
use sluice_proto::control::v1 as pb;
use sluice_store::control::{api_key, event_type, subscription, workspace};

use crate::error::ApiResult;

/// Unix milliseconds to a protobuf Timestamp.
pub fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// An optional time.
pub fn opt_ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(ts)
}

/// A protobuf Timestamp to unix milliseconds, refusing out-of-range values.
pub fn ms(t: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(t.nanos / 1_000_000))
}

/// A workspace row as its proto.
pub fn workspace(m: workspace::Model) -> pb::Workspace {
    pb::Workspace {
        id: m.id,
        display_name: m.display_name,
        create_time: Some(ts(m.create_ms)),
        update_time: Some(ts(m.update_ms)),
        retention: m.retention_ms.map(duration_ms),
        idempotency_retention: m.idempotency_retention_ms.map(duration_ms),
        retry_policy: crate::policy::to_proto(m.retry_policy.as_deref()),
        require_endpoint_verification: m.require_endpoint_verification,
        publish_quota: crate::policy::quota_to_proto(m.publish_quota_rate, m.publish_quota_burst),
    }
}

/// Milliseconds as a proto duration.
pub fn duration_ms(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The stored scheme name as its proto enum.
pub fn signature_scheme(name: &str) -> pb::SignatureScheme {
    match name {
        "asymmetric" => pb::SignatureScheme::Asymmetric,
        "both" => pb::SignatureScheme::Both,
        _ => pb::SignatureScheme::Symmetric,
    }
}

/// Whether the stored scheme signs `v1` (HMAC) and `v1a` (ed25519).
pub fn signs(scheme: &str) -> (bool, bool) {
    match scheme {
        "asymmetric" => (false, true),
        "both" => (true, true),
        _ => (true, false),
    }
}

/// An API key row as its proto (without the key, which is not stored).
pub fn api_key(m: api_key::Model) -> pb::ApiKey {
    pb::ApiKey {
        id: m.id,
        workspace_id: m.workspace_id,
        display_name: m.display_name,
        key_prefix: m.key_prefix,
        create_time: Some(ts(m.create_ms)),
        revoke_time: opt_ts(m.revoke_ms),
    }
}

/// An event type row as its proto.
pub fn event_type(m: event_type::Model) -> pb::EventType {
    pb::EventType {
        name: m.name,
        workspace_id: m.workspace_id,
        version: m.version as u32,
        description: m.description,
        json_schema: m
            .json_schema
            .as_deref()
            .and_then(sluice_proto::json::json_to_struct),
        example: m
            .example
            .as_deref()
            .and_then(sluice_proto::json::json_to_struct),
        archived: m.archived,
        create_time: Some(ts(m.create_ms)),
        update_time: Some(ts(m.update_ms)),
    }
}

/// The stored name of a destination type.
pub fn destination_name(t: pb::DestinationType) -> &'static str {
    match t {
        pb::DestinationType::Slack => "slack",
        _ => "webhook",
    }
}

/// A stored destination name as its enum.
pub fn destination_type(name: &str) -> pb::DestinationType {
    match name {
        "slack" => pb::DestinationType::Slack,
        _ => pb::DestinationType::Webhook,
    }
}

/// The stored name of a disabled reason.
pub fn reason_name(r: pb::DisabledReason) -> &'static str {
    match r {
        pb::DisabledReason::EndpointGone => "endpoint_gone",
        pb::DisabledReason::PersistentFailure => "persistent_failure",
        _ => "user",
    }
}

fn reason(name: Option<&str>) -> pb::DisabledReason {
    match name {
        None => pb::DisabledReason::Unspecified,
        Some("endpoint_gone") => pb::DisabledReason::EndpointGone,
        Some("persistent_failure") => pb::DisabledReason::PersistentFailure,
        Some(_) => pb::DisabledReason::User,
    }
}

/// A subscription row as its proto (without secrets).
pub fn subscription(m: subscription::Model) -> pb::Subscription {
    let verification_state = crate::verify_state::state(&m) as i32;
    pb::Subscription {
        id: m.id,
        workspace_id: m.workspace_id,
        description: m.description,
        url: sluice_core::validate::without_credentials(&m.url),
        destination_type: destination_type(&m.destination_type) as i32,
        filters: serde_json::from_str(&m.filters).unwrap_or_default(),
        headers: serde_json::from_str(&m.headers).unwrap_or_default(),
        rate_limit_per_second: m.rate_limit_per_second as u32,
        state: if m.enabled {
            pb::SubscriptionState::Enabled
        } else {
            pb::SubscriptionState::Disabled
        } as i32,
        disabled_reason: reason(m.disabled_reason.as_deref()) as i32,
        disabled_message: m.disabled_message.unwrap_or_default(),
        disable_time: opt_ts(m.disable_ms),
        create_time: Some(ts(m.create_ms)),
        update_time: Some(ts(m.update_ms)),
        signature_scheme: signature_scheme(&m.signature_scheme) as i32,
        public_key: if signs(&m.signature_scheme).1 {
            m.public_key.unwrap_or_default()
        } else {
            String::new()
        },
        // The credentials themselves are never returned.
        auth: None,
        auth_type: match m.auth_type.as_deref() {
            Some("basic") => pb::EndpointAuthType::Basic,
            Some("bearer") => pb::EndpointAuthType::Bearer,
            Some("oauth2") => pb::EndpointAuthType::Oauth2ClientCredentials,
            Some("mtls") => pb::EndpointAuthType::MutualTls,
            _ => pb::EndpointAuthType::None,
        } as i32,
        retry_policy: crate::policy::to_proto(m.retry_policy.as_deref()),
        // Resolved by the service, which reads the workspace (`SubscriptionApi::shown`).
        effective_retry_policy: None,
        payload_shape: crate::policy::shape_proto(&m.payload_shape),
        verification_required: m.verification_required,
        verification_state,
        verification_message: if m.verification_required {
            m.verification_message.unwrap_or_default()
        } else {
            String::new()
        },
        verify_time: opt_ts(m.verify_ms),
        ordered_delivery: m.ordered_delivery,
    }
}

/// What the data plane needs of a subscription, secrets included: opened here from their
/// sealed form, so the error names a stored secret that does not open.
pub fn config_subscription(
    m: &subscription::Model,
    now_ms: i64,
    keyring: &Keyring,
) -> ApiResult<pb::ConfigSubscription> {
    let open = |sealed: &str| {
        keyring
            .open(sealed)
            .map_err(|e| crate::secrets::does_not_open(&m.id, e))
    };
    // `whsec_` secrets sign `v1`, `whsk_` keys `v1a`; the data plane tells them apart by
    // their prefix. Current ones first, then the previous ones of a rotation.
    let (symmetric, asymmetric) = signs(&m.signature_scheme);
    let mut secrets = Vec::with_capacity(4);
    let live_previous = m
        .previous_secret_expire_ms
        .filter(|expire| *expire > now_ms);
    if symmetric {
        secrets.push(pb::ConfigSecret {
            secret: open(&m.secret)?,
            expire_time: None,
        });
        if let (Some(previous), Some(expire)) = (&m.previous_secret, live_previous) {
            secrets.push(pb::ConfigSecret {
                secret: open(previous)?,
                expire_time: Some(ts(expire)),
            });
        }
    }
    if asymmetric && let Some(key) = &m.signing_key {
        secrets.push(pb::ConfigSecret {
            secret: open(key)?,
            expire_time: None,
        });
        if let (Some(previous), Some(expire)) = (&m.previous_signing_key, live_previous) {
            secrets.push(pb::ConfigSecret {
                secret: open(previous)?,
                expire_time: Some(ts(expire)),
            });
        }
    }
    if let Some(auth) = &m.auth {
        use sluice_core::validate::{
            AUTHORIZATION_SECRET_PREFIX, MUTUAL_TLS_SECRET_PREFIX, OAUTH2_SECRET_PREFIX,
        };
        let prefix = match m.auth_type.as_deref() {
            Some("oauth2") => OAUTH2_SECRET_PREFIX,
            Some("mtls") => MUTUAL_TLS_SECRET_PREFIX,
            _ => AUTHORIZATION_SECRET_PREFIX,
        };
        secrets.push(pb::ConfigSecret {
            secret: format!("{prefix}{}", open(auth)?),
            expire_time: None,
        });
    }
    Ok(pb::ConfigSubscription {
        id: m.id.clone(),
        workspace_id: m.workspace_id.clone(),
        url: m.url.clone(),
        destination_type: destination_type(&m.destination_type) as i32,
        filters: serde_json::from_str(&m.filters).unwrap_or_default(),
        headers: serde_json::from_str(&m.headers).unwrap_or_default(),
        rate_limit_per_second: m.rate_limit_per_second as u32,
        enabled: m.enabled,
        secrets,
        disabled_reason: reason(m.disabled_reason.as_deref()) as i32,
        disabled_message: m.disabled_message.clone().unwrap_or_default(),
        update_time: Some(ts(m.update_ms)),
        retry_policy: crate::policy::to_proto(m.retry_policy.as_deref()),
        payload_shape: crate::policy::shape_proto(&m.payload_shape),
        awaiting_verification: crate::verify_state::awaiting(m),
        ordered_delivery: m.ordered_delivery,
    })
}
