//! Settlement's one error enum, and its one mapping to gRPC codes.

use tandem_domain::Violations;
use tandem_ledger::LedgerError;
use tandem_proto::status;
use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SettlementError {
    #[error("{0}")]
    InvalidArgument(Violations),
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// Four eyes: the ops user who requested an adjustment or created a run may not approve it.
    #[error("{0} is yours; another ops user must approve it")]
    SameOpsUser(String),
    #[error("settlement run {0} not found")]
    RunNotFound(String),
    #[error(
        "settlement run {0} was settled with other payment references; ask again with the same \
         ones to finish it"
    )]
    PaymentReferencesDiffer(String),
    #[error("reconciliation {0} not found")]
    ReconciliationNotFound(String),
    #[error("discrepancy {0} not found")]
    DiscrepancyNotFound(String),
    #[error("discrepancy {0} is already resolved")]
    DiscrepancyResolved(String),
    #[error("settlement run {id} is {status}, not {expected}")]
    RunNotInStatus {
        id: String,
        status: &'static str,
        expected: &'static str,
    },
    /// The run's positions do not sum to zero: a transaction in its currency reaches an account
    /// outside the run (the exchange's bank clearing account), which ops must look at.
    #[error(
        "the run's positions do not sum to zero (off by {0} minor units): a transaction in this \
         currency moves money to or from the exchange's bank clearing account; nothing was stored"
    )]
    RunUnbalanced(i64),
    /// Runs of a currency close consecutive periods: a new one must end after the last one.
    #[error(
        "a run of {currency} already closes the period up to {last_cutoff}; choose a cut-off \
         after it"
    )]
    CutoffNotAfterLastRun {
        currency: String,
        last_cutoff: String,
    },
    /// Only the newest live run of a currency may be cancelled: its period goes back to the
    /// next run, which a later run's would not.
    #[error("settlement run {id} is followed by run {later}; cancel that one first")]
    LaterRunExists { id: String, later: String },
    #[error("adjustment {0} not found")]
    AdjustmentNotFound(String),
    #[error("adjustment {id} is {status}, not AWAITING_APPROVAL")]
    NotAwaitingApproval { id: String, status: &'static str },
    #[error(
        "idempotency key {0:?} was used for another adjustment; use a new key for a new adjustment"
    )]
    IdempotencyKeyReused(String),
    /// The ledger refused the request itself; its reason passes through.
    #[error("{message}")]
    LedgerRefused {
        code: Code,
        reason: &'static str,
        message: String,
    },
    /// The ledger's storage failed: what was asked may or may not have landed.
    #[error("the ledger's storage failed and the outcome is unknown; retry with the same key")]
    OutcomeUnknown,
    #[error("the settlement database is busy; retry shortly")]
    DatabaseBusy,
    /// Another request changed the same rows at the same moment (two runs taking the same
    /// entries): nothing was stored, and a retry sees the other's outcome.
    #[error("the request conflicted with another at the same moment; nothing was stored, retry it")]
    Conflict,
    #[error("internal error: {0}")]
    Internal(String),
}

impl SettlementError {
    pub(crate) fn invalid(field: &str, description: impl Into<String>) -> Self {
        SettlementError::InvalidArgument(Violations::single(field, description))
    }

    /// Whether what was asked may have applied although it failed; a retry with the same key
    /// is then the way to find out.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            SettlementError::OutcomeUnknown | SettlementError::Internal(_)
        )
    }
}

impl From<sqlx::Error> for SettlementError {
    fn from(error: sqlx::Error) -> Self {
        if tandem_storage::is_pool_exhausted(&error) {
            return SettlementError::DatabaseBusy;
        }
        let unique_violation = error
            .as_database_error()
            .is_some_and(|database_error| database_error.is_unique_violation());
        if unique_violation || tandem_storage::is_retryable_conflict(&error) {
            return SettlementError::Conflict;
        }
        SettlementError::Internal(error.to_string())
    }
}

impl From<LedgerError> for SettlementError {
    fn from(error: LedgerError) -> Self {
        let message = error.to_string();
        let refused = |code, reason| SettlementError::LedgerRefused {
            code,
            reason,
            message: message.clone(),
        };
        match &error {
            LedgerError::Invalid(violations) => {
                SettlementError::InvalidArgument(violations.clone())
            }
            LedgerError::Unbalanced(description) => {
                SettlementError::InvalidArgument(Violations::single("legs", description.clone()))
            }
            LedgerError::AccountNotFound(_) => refused(Code::NotFound, "ACCOUNT_NOT_FOUND"),
            LedgerError::TransactionNotFound(_) => refused(Code::NotFound, "TRANSACTION_NOT_FOUND"),
            LedgerError::ScaleMismatch { .. } => {
                refused(Code::FailedPrecondition, "UNIT_SCALE_MISMATCH")
            }
            LedgerError::AccountGuardDiffers(_) => refused(Code::AlreadyExists, "ACCOUNT_EXISTS"),
            LedgerError::IdempotencyConflict { .. } => {
                refused(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
            }
            LedgerError::GuardRefused(_) => {
                refused(Code::FailedPrecondition, "INSUFFICIENT_BALANCE")
            }
            LedgerError::NotPending(_) => refused(Code::FailedPrecondition, "NOT_PENDING"),
            LedgerError::PendingExpired(_) => refused(Code::FailedPrecondition, "PENDING_EXPIRED"),
            LedgerError::AlreadyResolved(..) => {
                refused(Code::FailedPrecondition, "PENDING_ALREADY_RESOLVED")
            }
            LedgerError::NotReversible { .. } => {
                refused(Code::FailedPrecondition, "NOT_REVERSIBLE")
            }
            LedgerError::AlreadyReversed(_) => {
                refused(Code::FailedPrecondition, "ALREADY_REVERSED")
            }
            LedgerError::Conflict => refused(Code::Aborted, "CONCURRENT_WRITE"),
            LedgerError::Stopped => refused(Code::Unavailable, "LEDGER_STOPPED"),
            LedgerError::Storage(cause) => {
                tracing::error!(%cause, "ledger storage failed");
                SettlementError::OutcomeUnknown
            }
        }
    }
}

impl From<SettlementError> for Status {
    fn from(error: SettlementError) -> Self {
        let message = error.to_string();
        let (code, reason) = match &error {
            SettlementError::InvalidArgument(violations) => {
                return status::invalid_argument(
                    violations.iter().map(|violation| {
                        (violation.field.as_str(), violation.description.as_str())
                    }),
                );
            }
            SettlementError::Internal(cause) => return status::internal(cause),
            SettlementError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            SettlementError::SameOpsUser(_) => (Code::PermissionDenied, "SAME_OPS_USER"),
            SettlementError::AdjustmentNotFound(_) => (Code::NotFound, "ADJUSTMENT_NOT_FOUND"),
            SettlementError::RunNotFound(_) => (Code::NotFound, "SETTLEMENT_RUN_NOT_FOUND"),
            SettlementError::ReconciliationNotFound(_) => {
                (Code::NotFound, "RECONCILIATION_NOT_FOUND")
            }
            SettlementError::DiscrepancyNotFound(_) => (Code::NotFound, "DISCREPANCY_NOT_FOUND"),
            SettlementError::DiscrepancyResolved(_) => {
                (Code::FailedPrecondition, "DISCREPANCY_RESOLVED")
            }
            SettlementError::RunNotInStatus { .. } => {
                (Code::FailedPrecondition, "SETTLEMENT_RUN_STATUS")
            }
            SettlementError::RunUnbalanced(_) => (Code::FailedPrecondition, "RUN_UNBALANCED"),
            SettlementError::CutoffNotAfterLastRun { .. } => {
                (Code::FailedPrecondition, "CUTOFF_NOT_AFTER_LAST_RUN")
            }
            SettlementError::LaterRunExists { .. } => {
                (Code::FailedPrecondition, "LATER_RUN_EXISTS")
            }
            SettlementError::PaymentReferencesDiffer(_) => {
                (Code::FailedPrecondition, "PAYMENT_REFERENCES_DIFFER")
            }
            SettlementError::NotAwaitingApproval { .. } => {
                (Code::FailedPrecondition, "ADJUSTMENT_NOT_AWAITING_APPROVAL")
            }
            SettlementError::IdempotencyKeyReused(_) => {
                (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
            }
            SettlementError::LedgerRefused { code, reason, .. } => (*code, *reason),
            SettlementError::OutcomeUnknown => (Code::Unavailable, "OUTCOME_UNKNOWN"),
            SettlementError::DatabaseBusy => (Code::Unavailable, "DATABASE_BUSY"),
            SettlementError::Conflict => (Code::Aborted, "CONFLICT"),
        };
        status::with_reason(code, reason, message)
    }
}
