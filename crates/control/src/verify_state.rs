//! Where a subscription's ownership verification stands, as stored (`verification_state`)
//! and as shown (`VerificationState`, `ConfigSubscription.awaiting_verification`). Its own
//! file so `convert.rs` and `verification.rs` (which uses `convert.rs`) both read it.

use sluice_proto::control::v1 as pb;
use sluice_store::control::subscription;

/// A verification is under way, or could not be sent.
pub const PENDING: &str = "pending";
/// The endpoint answered the challenge.
pub const VERIFIED: &str = "verified";
/// The endpoint did not answer the challenge.
pub const FAILED: &str = "failed";

/// The message of a subscription whose verification has not concluded yet.
pub const PENDING_MESSAGE: &str = "waiting for the endpoint to answer the `sluice.endpoint.verification` challenge; deliveries wait until it does";

/// The proto state of a stored one.
pub fn state(m: &subscription::Model) -> pb::VerificationState {
    if !m.verification_required {
        return pb::VerificationState::NotRequired;
    }
    match m.verification_state.as_deref() {
        Some(VERIFIED) => pb::VerificationState::Verified,
        Some(FAILED) => pb::VerificationState::Failed,
        _ => pb::VerificationState::Pending,
    }
}

/// Whether the data plane must hold the subscription's deliveries.
pub fn awaiting(m: &subscription::Model) -> bool {
    m.verification_required && m.verification_state.as_deref() != Some(VERIFIED)
}
