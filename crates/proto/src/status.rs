//! Error statuses as every Tandem service returns them: a standard code, a message for people,
//! and a `google.rpc.ErrorInfo` whose reason is a stable string programs can match on.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Tandem error.
pub const ERROR_DOMAIN: &str = "tandem.v1";

/// The longest message a status carries, in bytes. Messages quote what the caller sent (an id
/// that was not found, a value that was refused), and a caller can send megabytes: gRPC clients
/// read the message from HTTP/2 headers, and many refuse headers past 8 or 16 KiB.
pub const MAX_MESSAGE_BYTES: usize = 1_024;

/// The most field violations a status lists; the rest are counted in one last violation.
pub const MAX_FIELD_VIOLATIONS: usize = 20;

/// The longest description of one field violation, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 200;

/// `text` cut at a character boundary to at most `max` bytes, with "…" where it was cut.
pub fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A status with `code`, `message` (cut to [`MAX_MESSAGE_BYTES`]) and an `ErrorInfo` carrying
/// `reason` (SCREAMING_SNAKE_CASE, stable across releases).
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    let details =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, shortened(&message.into(), MAX_MESSAGE_BYTES), details)
}

/// INVALID_ARGUMENT with one `BadRequest` field violation per `(field, description)`, and the
/// reason `INVALID_ARGUMENT`. At most [`MAX_FIELD_VIOLATIONS`] are listed, the last saying how
/// many more there were, and the message is cut to [`MAX_MESSAGE_BYTES`], so the error stays
/// small whatever the request.
pub fn invalid_argument<'a>(violations: impl IntoIterator<Item = (&'a str, &'a str)>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "INVALID_ARGUMENT",
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    let mut summary = Vec::new();
    let mut more = 0_usize;
    for (field, description) in violations {
        if summary.len() == MAX_FIELD_VIOLATIONS {
            more += 1;
            continue;
        }
        let field = shortened(field, MAX_DESCRIPTION_BYTES);
        let description = shortened(description, MAX_DESCRIPTION_BYTES);
        summary.push(format!("{field}: {description}"));
        details.add_bad_request_violation(field, description);
    }
    if more > 0 {
        let description = format!("and {more} more violations, not listed");
        summary.push(description.clone());
        details.add_bad_request_violation("", description);
    }
    Status::with_error_details(
        Code::InvalidArgument,
        shortened(
            &format!("invalid request: {}", summary.join("; ")),
            MAX_MESSAGE_BYTES,
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        assert_eq!(shortened("short", 10), "short");
        let long = "é".repeat(1_000);
        let cut = shortened(&long, MAX_MESSAGE_BYTES);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(cut.ends_with('…'));
        let status = with_reason(Code::NotFound, "LINK_NOT_FOUND", "x".repeat(10_000));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert_eq!(reason(&status), "LINK_NOT_FOUND");
    }

    #[test]
    fn violations_are_capped_and_counted() {
        let fields: Vec<String> = (0..10_000).map(|index| format!("legs[{index}]")).collect();
        let status = invalid_argument(fields.iter().map(|field| (field.as_str(), "is wrong")));
        let violations = status
            .get_error_details()
            .bad_request()
            .map(|bad| bad.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(violations.len(), MAX_FIELD_VIOLATIONS + 1);
        assert_eq!(
            violations.last().map(|last| last.description.as_str()),
            Some("and 9980 more violations, not listed")
        );
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        let huge = "v".repeat(10_000);
        let status = invalid_argument([(huge.as_str(), huge.as_str())]);
        assert!(status.details().len() < 2 * MAX_MESSAGE_BYTES);
    }
}
