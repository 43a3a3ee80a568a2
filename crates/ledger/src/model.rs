//! The ledger's vocabulary: accounts, units, legs and transactions, each valid once built.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use tandem_domain::{FieldViolation, PartnerId, Timestamp, Violations};

/// Identifies an account. UUIDv7, so ids sort by creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(uuid::Uuid);

/// Identifies a transaction. UUIDv7, so ids sort by commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransactionId(uuid::Uuid);

macro_rules! uuid_id {
    ($name:ident) => {
        impl $name {
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                if text.len() != 36 {
                    return Err(format!("must be a UUID; got {text:?}"));
                }
                uuid::Uuid::parse_str(text)
                    .map(Self)
                    .map_err(|_| format!("must be a UUID; got {text:?}"))
            }
        }
    };
}
uuid_id!(AccountId);
uuid_id!(TransactionId);

/// Who an account belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The exchange itself (clearing, fees, bank).
    Exchange,
    Partner(PartnerId),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Exchange => f.write_str("exchange"),
            Owner::Partner(id) => id.fmt(f),
        }
    }
}

impl FromStr for Owner {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "exchange" {
            return Ok(Owner::Exchange);
        }
        text.parse()
            .map(Owner::Partner)
            .map_err(|_| format!("must be \"exchange\" or a partner id; got {text:?}"))
    }
}

/// What an account is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Settlement,
    ProgramClearing,
    Fees,
    Bank,
    Adjustments,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Settlement,
        Purpose::ProgramClearing,
        Purpose::Fees,
        Purpose::Bank,
        Purpose::Adjustments,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Settlement => "SETTLEMENT",
            Purpose::ProgramClearing => "PROGRAM_CLEARING",
            Purpose::Fees => "FEES",
            Purpose::Bank => "BANK",
            Purpose::Adjustments => "ADJUSTMENTS",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|purpose| purpose.as_str() == text)
    }
}

/// A unit of account: an ISO 4217 currency or a program's point code, with a fixed scale.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit(String);

impl Unit {
    /// Upper case letters, digits and underscores, 2 to 16 characters, starting with a letter:
    /// the shape both currency codes and program codes have.
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = (2..=16).contains(&text.len())
            && text.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && text
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(format!(
                "must be a currency or program code (2 to 16 upper case letters, digits or underscores); got {text:?}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an account refuses, checked inside the write that would break it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    None,
    /// Posted and pending debits may not exceed posted credits by more than the limit.
    DebitsNotExceedCredits {
        overdraft_limit_minor: i64,
    },
    /// Posted and pending credits may not exceed posted debits by more than the limit.
    CreditsNotExceedDebits {
        overdraft_limit_minor: i64,
    },
}

impl Guard {
    pub fn kind(self) -> &'static str {
        match self {
            Guard::None => "NONE",
            Guard::DebitsNotExceedCredits { .. } => "DEBITS_NOT_EXCEED_CREDITS",
            Guard::CreditsNotExceedDebits { .. } => "CREDITS_NOT_EXCEED_DEBITS",
        }
    }

    pub fn overdraft_limit_minor(self) -> i64 {
        match self {
            Guard::None => 0,
            Guard::DebitsNotExceedCredits {
                overdraft_limit_minor,
            }
            | Guard::CreditsNotExceedDebits {
                overdraft_limit_minor,
            } => overdraft_limit_minor,
        }
    }

    pub fn from_parts(kind: &str, overdraft_limit_minor: i64) -> Option<Self> {
        match kind {
            "NONE" => Some(Guard::None),
            "DEBITS_NOT_EXCEED_CREDITS" => Some(Guard::DebitsNotExceedCredits {
                overdraft_limit_minor,
            }),
            "CREDITS_NOT_EXCEED_DEBITS" => Some(Guard::CreditsNotExceedDebits {
                overdraft_limit_minor,
            }),
            _ => None,
        }
    }

    /// Whether totals that include a new transaction's legs stay within the guard.
    pub fn allows(self, totals: &Totals) -> bool {
        let debits = i128::from(totals.posted_debits) + i128::from(totals.pending_debits);
        let credits = i128::from(totals.posted_credits) + i128::from(totals.pending_credits);
        match self {
            Guard::None => true,
            Guard::DebitsNotExceedCredits {
                overdraft_limit_minor,
            } => debits - i128::from(totals.posted_credits) <= i128::from(overdraft_limit_minor),
            Guard::CreditsNotExceedDebits {
                overdraft_limit_minor,
            } => credits - i128::from(totals.posted_debits) <= i128::from(overdraft_limit_minor),
        }
    }
}

/// An open account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub owner: Owner,
    pub purpose: Purpose,
    pub unit: Unit,
    pub unit_scale: u32,
    pub guard: Guard,
    pub created_at: Timestamp,
}

/// An account's sums, in the unit's minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub posted_debits: i64,
    pub posted_credits: i64,
    pub pending_debits: i64,
    pub pending_credits: i64,
}

impl Totals {
    /// Credits minus debits of posted entries.
    pub fn posted_net(&self) -> i128 {
        i128::from(self.posted_credits) - i128::from(self.posted_debits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    Debit,
    Credit,
}

/// One debit or credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub account: AccountId,
    pub direction: Direction,
    pub amount_minor: i64,
}

/// What a new transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NewKind {
    Posted,
    /// A hold that expires after this many seconds unless posted or voided.
    Pending {
        timeout_seconds: i64,
    },
}

/// The most legs in one transaction; a conversion needs six, a settlement run's netting a few
/// per partner.
pub const MAX_LEGS: usize = 64;
const MAX_PENDING_TIMEOUT_SECONDS: i64 = 400 * 24 * 3600;

/// A transaction to post. Its content (everything but the key) decides whether a reused key is
/// a retry or a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTransaction {
    #[serde(skip)]
    pub idempotency_key: String,
    pub legs: Vec<Leg>,
    pub kind: NewKind,
    pub type_code: String,
    pub external_reference: String,
    /// `None` means the commit time.
    pub effective_at_micros: Option<i64>,
    pub metadata: BTreeMap<String, String>,
}

impl NewTransaction {
    /// Checks everything that does not need the accounts: key, leg count and amounts, each account
    /// at most once, text lengths. Balance per unit needs the accounts' units and is checked when
    /// posting.
    pub fn validate(&self) -> Result<(), Violations> {
        let mut violations = Violations::new();
        check_key(&mut violations, &self.idempotency_key);
        if !(2..=MAX_LEGS).contains(&self.legs.len()) {
            violations.push(FieldViolation::new(
                "legs",
                format!("must have 2 to {MAX_LEGS} legs; got {}", self.legs.len()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (index, leg) in self.legs.iter().enumerate() {
            if leg.amount_minor < 1 {
                violations.push(FieldViolation::new(
                    format!("legs[{index}].amount_minor"),
                    format!("must be at least 1; got {}", leg.amount_minor),
                ));
            }
            if !seen.insert(leg.account) {
                violations.push(FieldViolation::new(
                    format!("legs[{index}].account_id"),
                    "an account may appear in only one leg of a transaction",
                ));
            }
        }
        if let NewKind::Pending { timeout_seconds } = self.kind
            && !(1..=MAX_PENDING_TIMEOUT_SECONDS).contains(&timeout_seconds)
        {
            violations.push(FieldViolation::new(
                "pending_timeout_seconds",
                "must be from 1 second to 400 days for a PENDING transaction",
            ));
        }
        if self.type_code.len() > 64 {
            violations.push(FieldViolation::new(
                "type_code",
                "must be at most 64 characters",
            ));
        }
        if self.external_reference.len() > 200 {
            violations.push(FieldViolation::new(
                "external_reference",
                "must be at most 200 characters",
            ));
        }
        if self.metadata.len() > 32
            || self
                .metadata
                .iter()
                .any(|(key, value)| key.is_empty() || key.len() > 64 || value.len() > 500)
        {
            violations.push(FieldViolation::new("metadata", "must have at most 32 entries, keys of 1 to 64 and values of at most 500 characters"));
        }
        violations.finish(|| ())
    }

    /// The canonical text of the content, stored with the transaction so that a reused key can
    /// be compared against what it first carried.
    pub fn content(&self) -> String {
        serde_json::to_string(self).expect("a transaction always serializes")
    }

    /// Which parts of the content differ from `other`, for an error a caller can act on.
    pub fn differences(&self, other: &NewTransaction) -> Vec<&'static str> {
        let mut differences = Vec::new();
        if self.legs != other.legs {
            differences.push("legs");
        }
        if self.kind != other.kind {
            differences.push("kind");
        }
        if self.type_code != other.type_code {
            differences.push("type_code");
        }
        if self.external_reference != other.external_reference {
            differences.push("external_reference");
        }
        if self.effective_at_micros != other.effective_at_micros {
            differences.push("effective_time");
        }
        if self.metadata != other.metadata {
            differences.push("metadata");
        }
        differences
    }
}

pub(crate) fn check_key(violations: &mut Violations, key: &str) {
    if key.is_empty() || key.len() > 200 {
        violations.push(FieldViolation::new(
            "idempotency_key",
            "must be 1 to 200 characters",
        ));
    }
}

/// Checks that legs balance in every unit: per unit, debits equal credits. `unit_of` gives each
/// leg's unit (the accounts are loaded by then). Sums are i128, so no sum of i64 amounts
/// overflows.
pub fn check_balanced<'a>(
    legs: impl IntoIterator<Item = (&'a Leg, &'a Unit)>,
) -> Result<(), String> {
    let mut nets: BTreeMap<&Unit, i128> = BTreeMap::new();
    for (leg, unit) in legs {
        let signed = match leg.direction {
            Direction::Debit => -i128::from(leg.amount_minor),
            Direction::Credit => i128::from(leg.amount_minor),
        };
        *nets.entry(unit).or_default() += signed;
    }
    let unbalanced: Vec<String> = nets
        .iter()
        .filter(|(_, net)| **net != 0)
        .map(|(unit, net)| format!("{unit} is off by {net}"))
        .collect();
    if unbalanced.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "debits must equal credits in every unit: {}",
            unbalanced.join(", ")
        ))
    }
}

/// What a stored transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    Posted,
    Pending,
    PostPending,
    VoidPending,
    Reversal,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionKind::Posted => "POSTED",
            TransactionKind::Pending => "PENDING",
            TransactionKind::PostPending => "POST_PENDING",
            TransactionKind::VoidPending => "VOID_PENDING",
            TransactionKind::Reversal => "REVERSAL",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Posted,
            Self::Pending,
            Self::PostPending,
            Self::VoidPending,
            Self::Reversal,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// Whether its legs count in posted balances.
    pub fn posts(self) -> bool {
        matches!(
            self,
            TransactionKind::Posted | TransactionKind::PostPending | TransactionKind::Reversal
        )
    }
}

/// Where a pending transaction stands at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PendingStatus {
    Open,
    Posted,
    Voided,
    Expired,
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: TransactionId,
    pub idempotency_key: String,
    pub kind: TransactionKind,
    pub legs: Vec<Leg>,
    pub type_code: String,
    pub external_reference: String,
    pub effective_at: Timestamp,
    pub committed_at: Timestamp,
    pub metadata: BTreeMap<String, String>,
    /// The pending transaction a resolution resolves, or the original a reversal reverses.
    pub related: Option<TransactionId>,
    pub expires_at: Option<Timestamp>,
    /// For pending transactions: where it stands when read.
    pub pending_status: Option<PendingStatus>,
}

/// The outcome of a write: the transaction, and whether the key had been used already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub transaction: Transaction,
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(account: AccountId, direction: Direction, amount_minor: i64) -> Leg {
        Leg {
            account,
            direction,
            amount_minor,
        }
    }

    #[test]
    fn legs_balance_per_unit_not_across_units() {
        let (a, b, c, d) = (
            AccountId::generate(),
            AccountId::generate(),
            AccountId::generate(),
            AccountId::generate(),
        );
        let (usd, pts) = (
            Unit::parse("USD").unwrap(),
            Unit::parse("HOTEL_PTS").unwrap(),
        );
        let legs = [
            leg(a, Direction::Debit, 100),
            leg(b, Direction::Credit, 100),
            leg(c, Direction::Debit, 5),
            leg(d, Direction::Credit, 5),
        ];
        assert!(
            check_balanced([
                (&legs[0], &usd),
                (&legs[1], &usd),
                (&legs[2], &pts),
                (&legs[3], &pts)
            ])
            .is_ok()
        );
        let error = check_balanced([(&legs[0], &usd), (&legs[1], &pts)]).unwrap_err();
        assert!(
            error.contains("USD is off by -100") && error.contains("HOTEL_PTS is off by 100"),
            "{error}"
        );
    }

    #[test]
    fn guards_count_pending_debits_against_posted_credits() {
        let guard = Guard::DebitsNotExceedCredits {
            overdraft_limit_minor: 0,
        };
        assert!(guard.allows(&Totals {
            posted_credits: 100,
            posted_debits: 60,
            pending_debits: 40,
            pending_credits: 0
        }));
        assert!(!guard.allows(&Totals {
            posted_credits: 100,
            posted_debits: 60,
            pending_debits: 41,
            pending_credits: 0
        }));
        // Pending credits are not money yet, so they do not make room for debits.
        assert!(!guard.allows(&Totals {
            posted_credits: 0,
            posted_debits: 1,
            pending_debits: 0,
            pending_credits: 1000
        }));
        let with_overdraft = Guard::DebitsNotExceedCredits {
            overdraft_limit_minor: 50,
        };
        assert!(with_overdraft.allows(&Totals {
            posted_debits: 50,
            ..Totals::default()
        }));
        assert!(Guard::None.allows(&Totals {
            posted_debits: i64::MAX,
            ..Totals::default()
        }));
    }

    #[test]
    fn validation_names_each_problem() {
        let a = AccountId::generate();
        let transaction = NewTransaction {
            idempotency_key: String::new(),
            legs: vec![leg(a, Direction::Debit, 0), leg(a, Direction::Credit, 10)],
            kind: NewKind::Pending { timeout_seconds: 0 },
            type_code: "x".repeat(65),
            external_reference: String::new(),
            effective_at_micros: None,
            metadata: BTreeMap::new(),
        };
        let fields: Vec<String> = transaction
            .validate()
            .unwrap_err()
            .iter()
            .map(|violation| violation.field.clone())
            .collect();
        assert_eq!(
            fields,
            [
                "idempotency_key",
                "legs[0].amount_minor",
                "legs[1].account_id",
                "pending_timeout_seconds",
                "type_code"
            ]
        );
    }
}
