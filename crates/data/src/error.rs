//! The data plane's errors and their one mapping to `tonic::Status` (and to the per-event
//! `PublishError` of a publish stream). Field violations become INVALID_ARGUMENT with
//! `google.rpc.BadRequest` details so grpcurl shows which field is wrong; internal errors are
//! logged here with their cause and answered opaquely.

use sluice_proto::data::v1::PublishError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Everything that can go wrong in the data plane, from a caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The request is malformed; each violation names a field of the request.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<Violation>),
    /// No credential, or one the data plane does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential asking for something it may not do.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing asked for does not exist (or belongs to another workspace).
    #[error("{0}")]
    NotFound(String),
    /// The thing exists but is not in a state that allows the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The data plane is shutting down or its queue is gone; the caller may retry elsewhere.
    #[error("{0}")]
    Unavailable(String),
    /// The start-up configuration is unusable.
    #[error("invalid data plane configuration: {0}")]
    Config(String),
    /// The database failed; the cause is logged, never returned to callers.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A bug or an unexpected state; the cause is logged, never returned to callers.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One invalid field: its path in the request and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field's path, as grpcurl users name it (`event_type`, `payload_json`).
    pub field: String,
    /// What is wrong, in a sentence the publisher can act on.
    pub description: String,
}

impl Violation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            description: description.into(),
        }
    }
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl DataError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DataError::InvalidArgument(vec![Violation::new(field, description)])
    }

    /// The gRPC code callers get for this error.
    pub fn code(&self) -> Code {
        match self {
            DataError::InvalidArgument(_) => Code::InvalidArgument,
            DataError::Unauthenticated(_) => Code::Unauthenticated,
            DataError::PermissionDenied(_) => Code::PermissionDenied,
            DataError::NotFound(_) => Code::NotFound,
            DataError::FailedPrecondition(_) => Code::FailedPrecondition,
            DataError::Unavailable(_) => Code::Unavailable,
            DataError::Config(_) | DataError::Database(_) | DataError::Internal(_) => {
                Code::Internal
            }
        }
    }

    /// Whether the cause must stay out of the answer (it may name tables or hosts).
    fn is_internal(&self) -> bool {
        self.code() == Code::Internal
    }

    /// The message a caller sees: the error itself, or an opaque line for internal ones,
    /// whose cause is logged here.
    fn public_message(&self) -> String {
        if self.is_internal() {
            tracing::error!(error = %self, "request failed");
            "internal error; the cause is in the data plane's log".to_owned()
        } else {
            self.to_string()
        }
    }

    /// The per-event error of a publish stream, which carries the first offending field.
    pub(crate) fn into_publish_error(self) -> PublishError {
        let field = match &self {
            DataError::InvalidArgument(violations) => violations
                .first()
                .map(|v| v.field.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        PublishError {
            code: self.code() as i32,
            message: self.public_message(),
            field,
        }
    }
}

impl From<DataError> for Status {
    fn from(err: DataError) -> Status {
        let message = err.public_message();
        match err {
            DataError::InvalidArgument(violations) => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            other => Status::new(other.code(), message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = Status::from(DataError::InvalidArgument(vec![
            Violation::new("event_type", "is empty"),
            Violation::new("payload_json", "is not JSON"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("event_type: is empty"));
        let fields: Vec<String> = status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["event_type", "payload_json"]);
    }

    #[test]
    fn internal_errors_are_opaque() {
        let status = Status::from(DataError::Internal("table dp_messages is locked".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("dp_messages"));
    }

    #[test]
    fn publish_errors_name_the_first_field() {
        let error = DataError::InvalidArgument(vec![Violation::new("payload", "too big")])
            .into_publish_error();
        assert_eq!(error.code, Code::InvalidArgument as i32);
        assert_eq!(error.field, "payload");
        let error = DataError::Unavailable("shutting down".into()).into_publish_error();
        assert_eq!(error.code, 14);
        assert_eq!(error.field, "");
    }
}
