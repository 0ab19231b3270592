//! The control plane's errors and their one mapping to `tonic::Status`: field violations
//! become INVALID_ARGUMENT with `google.rpc.BadRequest` details, so grpcurl shows which
//! field is wrong; internal errors are logged with their cause and answered opaquely.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// An error a control-plane method answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; each violation names a field.
    #[error("invalid argument: {}", describe(.0))]
    Invalid(Vec<(String, String)>),
    /// No or an unknown credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The resource does not exist, or belongs to another workspace.
    #[error("{0}")]
    NotFound(String),
    /// The resource exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The resource is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (the data plane, the database) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure; the cause is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, why)| format!("{field}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        ApiError::Invalid(vec![(field.into(), why.into())])
    }

    /// Not found, phrased the same whether it is missing or another workspace's.
    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::NotFound(format!("{what} {id:?} not found"))
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if sluice_store::is_unavailable(&err) {
            // Bounded by the store timeout: the caller hears at once instead of waiting on
            // a database that is down.
            tracing::warn!(error = %err, "the control plane's database is unavailable");
            return ApiError::Unavailable(
                "the control plane's database did not answer in time or is unreachable; try again shortly"
                    .to_owned(),
            );
        }
        ApiError::Internal(format!("database: {err}"))
    }
}

impl From<sea_orm::TransactionError<ApiError>> for ApiError {
    fn from(err: sea_orm::TransactionError<ApiError>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(e) => e.into(),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        match err {
            ApiError::Invalid(violations) => {
                let message = format!("invalid argument: {}", describe(&violations));
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|(field, why)| FieldViolation::new(field, why))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal("internal error; the server log has the cause")
            }
        }
    }
}

/// Collects every field violation of a request, so one answer names them all.
#[derive(Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, why: impl Into<String>) {
        self.0.push((field.into(), why.into()));
    }

    /// Records the error of `result`, if any, and passes its value on.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.0))
        }
    }
}

/// The result type of every method body.
pub type ApiResult<T> = Result<T, ApiError>;
