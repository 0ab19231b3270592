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
    /// The workspace is over its publish quota; it may publish again after `retry_after`.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after: std::time::Duration,
    },
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
            DataError::QuotaExceeded { .. } => Code::ResourceExhausted,
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
        let retry_delay = match &self {
            DataError::QuotaExceeded { retry_after, .. } => {
                prost_types::Duration::try_from(*retry_after).ok()
            }
            _ => None,
        };
        PublishError {
            code: self.code() as i32,
            message: self.public_message(),
            field,
            retry_delay,
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
            DataError::QuotaExceeded { retry_after, .. } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.add_quota_failure_violation(
                    "workspace",
                    "events published per second (--workspace-publish-rate)",
                );
                Status::with_error_details(Code::ResourceExhausted, message, details)
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

/// The caller's mistake hidden in a status tonic made before any handler ran: prost's
/// decode errors (INTERNAL "failed to decode Protobuf message", for bytes that are not
/// UTF-8 in a string field or a `payload` Struct nested past prost's recursion limit) become
/// INVALID_ARGUMENT naming the field where prost's error names it, and a message over the
/// size limit (tonic's OUT_OF_RANGE) becomes RESOURCE_EXHAUSTED. `None` for every other
/// status. Used by both planes' servers (a layer rewrites unary answers) and by the publish
/// stream, whose decode errors reach the handler.
pub fn decode_failure(status: &Status) -> Option<Status> {
    const DECODE: &str = "failed to decode Protobuf message: ";
    const TOO_LARGE: &str = "Error, decoded message length too large: ";
    match status.code() {
        Code::Internal => {
            let rest = status.message().strip_prefix(DECODE)?;
            Some(decode_violation(rest).map_or_else(
                |description| {
                    Status::invalid_argument(format!(
                        "the request is not a valid protobuf message: {description}"
                    ))
                },
                |(field, description)| DataError::invalid(field, description).into(),
            ))
        }
        Code::OutOfRange => {
            let rest = status.message().strip_prefix(TOO_LARGE)?;
            Some(Status::resource_exhausted(format!(
                "the request message is too large: {rest}"
            )))
        }
        _ => None,
    }
}

/// Reads prost's decode error text (`Inner.field: Outer.field: description`, innermost
/// first) into the field path as the request names it (`event.payload`), stopping at the
/// well-known `google.protobuf` types of a payload, and a description a caller can act on.
/// `Err(description)` when prost names no field.
fn decode_violation(text: &str) -> Result<(String, String), String> {
    let mut stack = Vec::new();
    let mut rest = text;
    while let Some((segment, after)) = rest.split_once(": ") {
        let Some((message, field)) = segment.split_once('.') else {
            break;
        };
        let is_name =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !is_name(message) || !is_name(field) {
            break;
        }
        stack.push((message, field));
        rest = after;
    }
    let description = if rest.contains("recursion limit reached") {
        format!(
            "objects and arrays are nested more than {} levels deep",
            sluice_core::envelope::MAX_PAYLOAD_DEPTH
        )
    } else if rest.contains("not UTF-8") {
        "is not valid UTF-8".to_owned()
    } else {
        format!("could not be decoded: {rest}")
    };
    let path: Vec<&str> = stack
        .iter()
        .rev()
        .take_while(|(message, _)| !matches!(*message, "Struct" | "Value" | "ListValue"))
        .map(|(_, field)| *field)
        .collect();
    if path.is_empty() {
        Err(description)
    } else {
        Ok((path.join("."), description))
    }
}

#[cfg(test)]
mod decode_tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message;
    use prost_types::value::Kind;
    use prost_types::{Struct, Value};
    use sluice_proto::data::v1::{PublishRequest, PublishStreamRequest};
    use tonic_types::StatusExt;

    use super::*;

    fn nested_struct(depth: usize) -> Struct {
        let mut inner = Struct::default();
        for _ in 1..depth {
            let mut outer = Struct::default();
            outer.fields.insert(
                "a".into(),
                Value {
                    kind: Some(Kind::StructValue(inner)),
                },
            );
            inner = outer;
        }
        inner
    }

    /// What tonic's prost codec answers for `bytes`, then what callers get.
    fn mapped<M: Message + Default>(bytes: &[u8]) -> Option<Status> {
        let error = M::decode(bytes).err()?;
        decode_failure(&Status::internal(error.to_string()))
    }

    fn field_of(status: &Status) -> String {
        let bad = status.get_details_bad_request().unwrap();
        bad.field_violations[0].field.clone()
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        let mut bytes = PublishRequest {
            event_type: "ab".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let at = bytes.iter().position(|&b| b == b'a').unwrap();
        bytes[at] = 0xff;
        let status = mapped::<PublishRequest>(&bytes).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_of(&status), "event_type");
    }

    #[test]
    fn a_struct_past_the_limit_names_payload_in_both_rpcs() {
        // One limit for both payload forms: a Struct as deep as payload_json may be still
        // decodes, one level more does not (or fails validation, with the same words).
        let at_limit = PublishRequest {
            payload: Some(nested_struct(sluice_core::envelope::MAX_PAYLOAD_DEPTH)),
            ..Default::default()
        };
        let stream = PublishStreamRequest {
            event: Some(at_limit.clone()),
            ..Default::default()
        };
        PublishRequest::decode(&at_limit.encode_to_vec()[..]).unwrap();
        PublishStreamRequest::decode(&stream.encode_to_vec()[..]).unwrap();

        let deep = PublishRequest {
            payload: Some(nested_struct(200)),
            ..Default::default()
        };
        let status = mapped::<PublishRequest>(&deep.encode_to_vec()).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_of(&status), "payload");
        assert!(status.message().contains("nested more than"), "{status:?}");
        let stream = PublishStreamRequest {
            event: Some(deep),
            ..Default::default()
        };
        let status = mapped::<PublishStreamRequest>(&stream.encode_to_vec()).unwrap();
        assert_eq!(field_of(&status), "event.payload");
    }

    #[test]
    fn garbage_is_invalid_argument_and_size_is_resource_exhausted() {
        let status = mapped::<PublishRequest>(&[0xff, 0xff, 0xff]).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(
            decode_failure(&too_large).unwrap().code(),
            Code::ResourceExhausted
        );
        assert!(decode_failure(&Status::internal("database")).is_none());
        assert!(decode_failure(&Status::out_of_range("page")).is_none());
    }
}
