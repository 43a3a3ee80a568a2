//! The exchange's one error enum, and its one mapping to gRPC statuses.
//!
//! The service logic, the sagas' drivers and the store return [`ExchangeError`]; only the gRPC
//! edge turns it into a `tonic::Status`, through [`ExchangeError::code_and_reason`]. Errors of
//! the other Tandem services and of the gateways arrive as statuses and are classified once, in
//! `peers`, by the reason they carry: a refusal of the request stays a refusal
//! ([`ExchangeError::PeerRefused`]), anything else is a peer that could not answer
//! ([`ExchangeError::PeerUnavailable`]), whose outcome is unknown.

use tandem_proto::status;
use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The request is malformed: one `(field, description)` per violation.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<(String, String)>),
    #[error("{0}")]
    PermissionDenied(&'static str),

    #[error("partner {0} not found")]
    PartnerNotFound(String),
    #[error("link {0} not found")]
    LinkNotFound(String),
    #[error("quote {0} not found")]
    QuoteNotFound(String),
    #[error("conversion {0} not found")]
    ConversionNotFound(String),
    #[error("activity {0} not found")]
    ActivityNotFound(String),
    #[error("no activity with external id {0:?}")]
    ExternalIdNotFound(String),

    #[error("partner {0} is not ACTIVE")]
    PartnerNotActive(String),
    #[error("partner {0} is not ACTIVE, so it reports no activities")]
    ReporterNotActive(String),
    #[error("partner {0} has no gateway endpoint, so its points cannot move")]
    GatewayNotConfigured(String),
    #[error("the link has ended; the member must link again")]
    LinkNotActive,
    #[error("the link has ended since the quote; the member must link again")]
    LinkEndedSinceQuote,
    #[error("there is no ACTIVE agreement from your program to the linked partner's")]
    NoActiveAgreement,
    #[error("no terms version of the agreement is in force now")]
    NoTermsInForce,
    #[error("the quote has expired; ask for a new one")]
    QuoteExpired,

    #[error(
        "the member may convert {cap} points a day under this agreement; {used} are used \
         today, so {points} more is too many"
    )]
    MemberDailyCapReached { cap: i64, used: i64, points: i64 },
    #[error(
        "the agreement allows {cap} points a month; {used} are used this month, so {points} \
         more is too many"
    )]
    AgreementMonthlyCapReached { cap: i64, used: i64, points: i64 },
    #[error(
        "a stream carries at most {0} activities; nothing was recorded; send them in several \
         streams"
    )]
    TooManyActivities(usize),

    #[error(
        "idempotency key {key:?} was used for another quote ({quote_id}); use a new key for a \
         new conversion"
    )]
    IdempotencyKeyReused { key: String, quote_id: String },
    #[error("the quote was already executed under another idempotency key")]
    QuoteAlreadyExecuted,
    #[error("external id {0:?} was reported before with different content")]
    ExternalIdReused(String),

    /// The conversion was refused reversal by a partner or the ledger, for the reason given.
    #[error("{0}")]
    ReversalRefused(String),
    #[error("only a COMPLETED conversion can be reversed; this one is {0}")]
    ConversionNotCompleted(&'static str),
    #[error("the agreement's terms allow no reversal of conversions")]
    ReversalNotAllowed,
    #[error(
        "conversions may be reversed for {0} hours after they complete; that window has closed"
    )]
    ReversalWindowClosed(i64),

    /// Another Tandem service refused the request itself, so asking again would be refused
    /// again: its code and reason pass through to the caller.
    #[error("the {peer} refused the request: {message}")]
    PeerRefused {
        peer: &'static str,
        code: Code,
        reason: String,
        message: String,
    },
    /// Another Tandem service, or a partner's gateway, could not answer: unreachable,
    /// overloaded, failing or too slow. Whatever was asked may or may not have applied.
    #[error("the {peer} could not answer; try again")]
    PeerUnavailable { peer: &'static str, cause: String },

    #[error("the quote could not be stored; ask for a new one")]
    QuoteNotStored,
    /// The batched writer stopped (the process is shutting down) with a write in its queue.
    #[error("the exchange's writer stopped; the outcome is unknown, retry")]
    WriterStopped,
    #[error("the exchange's database is busy; retry shortly")]
    DatabaseBusy,
    #[error("the request conflicted with another; retry it")]
    Conflict,
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ExchangeError {
    /// INVALID_ARGUMENT for one field.
    pub(crate) fn invalid(field: &str, description: impl std::fmt::Display) -> Self {
        ExchangeError::InvalidArgument(vec![(field.to_owned(), description.to_string())])
    }

    /// INVALID_ARGUMENT for each `(field, description)`.
    pub(crate) fn violations<F, D>(violations: impl IntoIterator<Item = (F, D)>) -> Self
    where
        F: AsRef<str>,
        D: AsRef<str>,
    {
        ExchangeError::InvalidArgument(
            violations
                .into_iter()
                .map(|(field, description)| {
                    (field.as_ref().to_owned(), description.as_ref().to_owned())
                })
                .collect(),
        )
    }

    /// An internal fault: a broken invariant, or a stored value this version cannot read.
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        ExchangeError::Internal(cause.to_string())
    }

    /// Whether what was asked may have applied although it failed. Every refusal certainly did
    /// not apply; a peer that could not answer, a writer that stopped mid-batch, or a fault
    /// after a call went out may have. A saga retries such a step by its key, never takes it as
    /// refused.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ExchangeError::PeerUnavailable { .. }
                | ExchangeError::WriterStopped
                | ExchangeError::Internal(_)
        )
    }

    /// The gRPC code and the `ErrorInfo` reason this error is answered with: the one mapping.
    pub fn code_and_reason(&self) -> (Code, &str) {
        use ExchangeError as E;
        match self {
            E::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            E::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            E::PartnerNotFound(_) => (Code::NotFound, "PARTNER_NOT_FOUND"),
            E::LinkNotFound(_) => (Code::NotFound, "LINK_NOT_FOUND"),
            E::QuoteNotFound(_) => (Code::NotFound, "QUOTE_NOT_FOUND"),
            E::ConversionNotFound(_) => (Code::NotFound, "CONVERSION_NOT_FOUND"),
            E::ActivityNotFound(_) | E::ExternalIdNotFound(_) => {
                (Code::NotFound, "ACTIVITY_NOT_FOUND")
            }
            E::PartnerNotActive(_) | E::ReporterNotActive(_) => {
                (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE")
            }
            E::GatewayNotConfigured(_) => (Code::FailedPrecondition, "GATEWAY_NOT_CONFIGURED"),
            E::LinkNotActive | E::LinkEndedSinceQuote => {
                (Code::FailedPrecondition, "LINK_NOT_ACTIVE")
            }
            E::NoActiveAgreement => (Code::FailedPrecondition, "NO_ACTIVE_AGREEMENT"),
            E::NoTermsInForce => (Code::FailedPrecondition, "NO_TERMS_IN_FORCE"),
            E::QuoteExpired => (Code::FailedPrecondition, "QUOTE_EXPIRED"),
            E::MemberDailyCapReached { .. } => {
                (Code::ResourceExhausted, "MEMBER_DAILY_CAP_REACHED")
            }
            E::AgreementMonthlyCapReached { .. } => {
                (Code::ResourceExhausted, "AGREEMENT_MONTHLY_CAP_REACHED")
            }
            E::TooManyActivities(_) => (Code::ResourceExhausted, "TOO_MANY_ACTIVITIES"),
            E::IdempotencyKeyReused { .. } => (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"),
            E::QuoteAlreadyExecuted => (Code::AlreadyExists, "QUOTE_ALREADY_EXECUTED"),
            E::ExternalIdReused(_) => (Code::AlreadyExists, "EXTERNAL_ID_REUSED"),
            E::ReversalRefused(_) => (Code::FailedPrecondition, "REVERSAL_REFUSED"),
            E::ConversionNotCompleted(_) => (Code::FailedPrecondition, "CONVERSION_NOT_COMPLETED"),
            E::ReversalNotAllowed => (Code::FailedPrecondition, "REVERSAL_NOT_ALLOWED"),
            E::ReversalWindowClosed(_) => (Code::FailedPrecondition, "REVERSAL_WINDOW_CLOSED"),
            E::PeerRefused { code, reason, .. } => (*code, reason.as_str()),
            E::PeerUnavailable { .. } => (Code::Unavailable, "DEPENDENCY_UNAVAILABLE"),
            E::QuoteNotStored => (Code::Unavailable, "QUOTE_NOT_STORED"),
            E::WriterStopped => (Code::Unavailable, "WRITER_STOPPED"),
            E::DatabaseBusy => (Code::Unavailable, "DATABASE_BUSY"),
            E::Conflict => (Code::Aborted, "CONFLICT"),
            E::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        self.code_and_reason().0
    }
}

impl From<sqlx::Error> for ExchangeError {
    fn from(error: sqlx::Error) -> Self {
        if tandem_storage::is_pool_exhausted(&error) {
            tracing::warn!("no database connection came free in time");
            return ExchangeError::DatabaseBusy;
        }
        if tandem_storage::is_retryable_conflict(&error) {
            return ExchangeError::Conflict;
        }
        ExchangeError::Internal(error.to_string())
    }
}

impl From<ExchangeError> for Status {
    fn from(error: ExchangeError) -> Self {
        match &error {
            ExchangeError::InvalidArgument(violations) => status::invalid_argument(
                violations
                    .iter()
                    .map(|(field, description)| (field.as_str(), description.as_str())),
            ),
            // The cause is logged and never sent: it may name the database or the host.
            ExchangeError::Internal(cause) => status::internal(cause),
            _ => {
                let (code, reason) = error.code_and_reason();
                status::with_reason(code, reason, error.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_pool_is_unavailable_and_a_bad_row_internal() {
        let busy = ExchangeError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(busy.code(), Code::Unavailable);
        assert!(!busy.outcome_unknown());
        let status = Status::from(ExchangeError::from(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("RowNotFound"));
    }

    #[test]
    fn a_peer_refusal_keeps_its_code_and_reason_and_is_certain() {
        let refused = ExchangeError::PeerRefused {
            peer: "linking service",
            code: Code::InvalidArgument,
            reason: "MEMBER_ID_INVALID".to_owned(),
            message: "member_id: has a space".to_owned(),
        };
        assert!(!refused.outcome_unknown());
        let status = Status::from(refused);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status::reason(&status), "MEMBER_ID_INVALID");
        assert!(status.message().contains("has a space"));
    }

    #[test]
    fn a_peer_that_could_not_answer_is_unavailable_and_unknown() {
        let unavailable = ExchangeError::PeerUnavailable {
            peer: "ledger",
            cause: "connection refused".to_owned(),
        };
        assert!(unavailable.outcome_unknown());
        let status = Status::from(unavailable);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status::reason(&status), "DEPENDENCY_UNAVAILABLE");
        assert!(!status.message().contains("connection refused"));
    }

    #[test]
    fn violations_become_field_violations() {
        let status = Status::from(ExchangeError::invalid("link_id", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("link_id: is required"));
    }
}
