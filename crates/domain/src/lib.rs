//! Tandem's domain types. Every type here is parsed once at the edge and is valid from then on:
//! constructors return `Result`, fields are private, and nothing here does I/O.

mod agreement;
mod codes;
mod currency;
mod identifiers;
mod ids;
mod numbers;
mod partner;
mod terms;
mod validation;

pub use agreement::{
    Agreement, AgreementRuleError, AgreementState, AgreementStatus, TermsVersion,
    TermsVersionStatus, terms_in_force,
};
pub use codes::{PartnerCode, ProgramCode, Reason, Text};
pub use currency::Currency;
pub use identifiers::{ExternalId, IdempotencyKey, MemberId, is_printable_identifier};
pub use ids::{AgreementId, IdParseError, PartnerId, is_server_id};
pub use numbers::{BasisPoints, Multiplier, Points, Price, Rate, Scale};
pub use partner::{Category, GatewayEndpoint, Partner, PartnerStatus, Program};
pub use terms::{EarnRules, PromotionWindow, Terms, TierMultiplier};
pub use validation::{FieldViolation, Violations};

/// A point in time, always UTC. Stored as microseconds since the Unix epoch.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// The current time at the precision Tandem stores (microseconds), so that what a call returns
/// equals what a later read returns.
pub fn now() -> Timestamp {
    from_unix_micros(to_unix_micros(chrono::Utc::now()))
}

/// Microseconds since the Unix epoch: how timestamps are stored, so both SQLite and PostgreSQL
/// order and compare them as plain integers.
pub fn to_unix_micros(at: Timestamp) -> i64 {
    at.timestamp_micros()
}

/// The inverse of [`to_unix_micros`]. Out-of-range values (only possible from a corrupted row)
/// clamp to the epoch rather than panic.
pub fn from_unix_micros(micros: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
