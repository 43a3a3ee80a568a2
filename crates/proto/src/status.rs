//! Error statuses as every Tandem service returns them: a standard code, a message for people,
//! and a `google.rpc.ErrorInfo` whose reason is a stable string programs can match on.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Tandem error.
pub const ERROR_DOMAIN: &str = "tandem.v1";

/// A status with `code`, `message` and an `ErrorInfo` carrying `reason`
/// (SCREAMING_SNAKE_CASE, stable across releases).
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    let details =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, message, details)
}

/// INVALID_ARGUMENT with one `BadRequest` field violation per `(field, description)`, and the
/// reason `INVALID_ARGUMENT`.
pub fn invalid_argument<'a>(violations: impl IntoIterator<Item = (&'a str, &'a str)>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "INVALID_ARGUMENT",
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    let mut summary = Vec::new();
    for (field, description) in violations {
        details.add_bad_request_violation(field, description);
        summary.push(format!("{field}: {description}"));
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {}", summary.join("; ")),
        details,
    )
}

/// The stable reason of a status's `ErrorInfo`, or an empty string when it carries none.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// INTERNAL with a generic message. The cause is logged here and never sent: it may carry
/// details of the database or the host that a caller has no business seeing.
pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %cause, "internal error");
    with_reason(
        Code::Internal,
        "INTERNAL",
        "internal error; the cause has been logged",
    )
}
