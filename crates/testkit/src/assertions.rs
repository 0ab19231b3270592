//! The small assertions about gRPC answers that every suite makes.

use tonic_types::StatusExt as _;

/// The field violations of an INVALID_ARGUMENT status, as (field, description), in order.
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts `status` is INVALID_ARGUMENT naming `field` among its violations.
pub fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "expected INVALID_ARGUMENT, got {status:?}"
    );
    let violations = field_violations(status);
    assert!(
        violations.iter().any(|(f, _)| f == field),
        "expected a violation of {field:?}, got {violations:?}"
    );
}
