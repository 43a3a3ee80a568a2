//! The gRPC edge of `LedgerService`: proto in, ledger types out, and the one mapping of ledger
//! errors to gRPC codes.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tandem_auth::{Authenticator, Caller, Role};
use tandem_domain::{FieldViolation, Violations};
use tandem_ledger::{
    Account, AccountId, Direction, EntryCursor, Guard, Ledger, LedgerError, Leg, NewKind,
    NewTransaction, Owner, PendingStatus, Posted, Purpose, Resolution, Transaction, TransactionId,
    TransactionKind, Unit,
};
use tandem_proto::{
    status,
    time::{datetime, timestamp},
    v1::{self as pb, ledger_service_server::LedgerService},
};
use tonic::{Code, Request, Response, Status};

const DEFAULT_ENTRY_PAGE: usize = 100;
const MAX_ENTRY_PAGE: usize = 1000;

/// `LedgerService` over gRPC.
pub struct LedgerGrpc {
    ledger: Ledger,
    authenticator: Arc<Authenticator>,
}

impl LedgerGrpc {
    pub fn new(ledger: Ledger, authenticator: Arc<Authenticator>) -> Self {
        Self {
            ledger,
            authenticator,
        }
    }

    async fn require<T>(
        &self,
        request: &Request<T>,
        roles: &[Role],
        action: &str,
    ) -> Result<Caller, Status> {
        let caller = self.authenticator.authenticate(request.metadata()).await?;
        if !caller.is_any(roles) {
            return Err(status::with_reason(
                Code::PermissionDenied,
                "PERMISSION_DENIED",
                format!("permission denied: {action}"),
            ));
        }
        Ok(caller)
    }
}

const WRITERS: &[Role] = &[Role::Service];
const READERS: &[Role] = &[Role::Ops, Role::Service];

fn to_status(error: LedgerError) -> Status {
    let message = error.to_string();
    let (code, reason) = match &error {
        LedgerError::Invalid(violations) => {
            return status::invalid_argument(
                violations
                    .iter()
                    .map(|violation| (violation.field.as_str(), violation.description.as_str())),
            );
        }
        LedgerError::Unbalanced(description) => {
            return status::invalid_argument([("legs", description.as_str())]);
        }
        LedgerError::AccountNotFound(_) => (Code::NotFound, "ACCOUNT_NOT_FOUND"),
        LedgerError::TransactionNotFound(_) => (Code::NotFound, "TRANSACTION_NOT_FOUND"),
        LedgerError::ScaleMismatch { .. } => (Code::FailedPrecondition, "UNIT_SCALE_MISMATCH"),
        LedgerError::AccountGuardDiffers(_) => (Code::AlreadyExists, "ACCOUNT_EXISTS"),
        LedgerError::IdempotencyConflict { .. } => (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"),
        LedgerError::GuardRefused(_) => (Code::FailedPrecondition, "INSUFFICIENT_BALANCE"),
        LedgerError::NotPending(_) => (Code::FailedPrecondition, "NOT_PENDING"),
        LedgerError::PendingExpired(_) => (Code::FailedPrecondition, "PENDING_EXPIRED"),
        LedgerError::AlreadyResolved(..) => (Code::FailedPrecondition, "PENDING_ALREADY_RESOLVED"),
        LedgerError::NotReversible { .. } => (Code::FailedPrecondition, "NOT_REVERSIBLE"),
        LedgerError::AlreadyReversed(_) => (Code::FailedPrecondition, "ALREADY_REVERSED"),
        LedgerError::Conflict => (Code::Aborted, "CONCURRENT_WRITE"),
        LedgerError::Stopped => (Code::Unavailable, "LEDGER_STOPPED"),
        LedgerError::Storage(cause) => {
            // The commit may or may not have landed; the idempotency key makes a retry safe.
            tracing::error!(%cause, "ledger storage failed");
            return status::with_reason(
                Code::Unavailable,
                "OUTCOME_UNKNOWN",
                "storage failed and the outcome is unknown; retry with the same idempotency key",
            );
        }
    };
    status::with_reason(code, reason, message)
}

fn invalid(field: &str, description: impl Into<String>) -> Status {
    to_status(LedgerError::Invalid(Violations::single(field, description)))
}

fn parse<T: std::str::FromStr<Err = String>>(field: &str, text: &str) -> Result<T, Status> {
    text.parse().map_err(|error: String| invalid(field, error))
}

pub(crate) fn purpose_from_pb(value: i32) -> Result<Purpose, Status> {
    Ok(
        match pb::AccountPurpose::try_from(value).unwrap_or(pb::AccountPurpose::Unspecified) {
            pb::AccountPurpose::Unspecified => return Err(invalid("purpose", "is required")),
            pb::AccountPurpose::Settlement => Purpose::Settlement,
            pb::AccountPurpose::ProgramClearing => Purpose::ProgramClearing,
            pb::AccountPurpose::Fees => Purpose::Fees,
            pb::AccountPurpose::Bank => Purpose::Bank,
            pb::AccountPurpose::Adjustments => Purpose::Adjustments,
        },
    )
}

fn purpose_to_pb(purpose: Purpose) -> pb::AccountPurpose {
    match purpose {
        Purpose::Settlement => pb::AccountPurpose::Settlement,
        Purpose::ProgramClearing => pb::AccountPurpose::ProgramClearing,
        Purpose::Fees => pb::AccountPurpose::Fees,
        Purpose::Bank => pb::AccountPurpose::Bank,
        Purpose::Adjustments => pb::AccountPurpose::Adjustments,
    }
}

fn guard_from_pb(value: i32, overdraft_limit_minor: i64) -> Result<Guard, Status> {
    Ok(
        match pb::BalanceGuard::try_from(value)
            .map_err(|_| invalid("guard", format!("unknown guard {value}")))?
        {
            pb::BalanceGuard::Unspecified if overdraft_limit_minor != 0 => {
                return Err(invalid(
                    "overdraft_limit_minor",
                    "must be 0 without a guard",
                ));
            }
            pb::BalanceGuard::Unspecified => Guard::None,
            pb::BalanceGuard::DebitsNotExceedCredits => Guard::DebitsNotExceedCredits {
                overdraft_limit_minor,
            },
            pb::BalanceGuard::CreditsNotExceedDebits => Guard::CreditsNotExceedDebits {
                overdraft_limit_minor,
            },
        },
    )
}

fn guard_to_pb(guard: Guard) -> pb::BalanceGuard {
    match guard {
        Guard::None => pb::BalanceGuard::Unspecified,
        Guard::DebitsNotExceedCredits { .. } => pb::BalanceGuard::DebitsNotExceedCredits,
        Guard::CreditsNotExceedDebits { .. } => pb::BalanceGuard::CreditsNotExceedDebits,
    }
}

pub(crate) fn account_to_pb(account: &Account) -> pb::Account {
    pb::Account {
        account_id: account.id.to_string(),
        owner: account.owner.to_string(),
        purpose: purpose_to_pb(account.purpose).into(),
        unit: account.unit.to_string(),
        unit_scale: account.unit_scale,
        guard: guard_to_pb(account.guard).into(),
        overdraft_limit_minor: account.guard.overdraft_limit_minor(),
        create_time: Some(timestamp(account.created_at)),
    }
}

pub(crate) fn direction_to_pb(direction: Direction) -> pb::Direction {
    match direction {
        Direction::Debit => pb::Direction::Debit,
        Direction::Credit => pb::Direction::Credit,
    }
}

fn kind_to_pb(kind: TransactionKind) -> pb::TransactionKind {
    match kind {
        TransactionKind::Posted => pb::TransactionKind::Posted,
        TransactionKind::Pending => pb::TransactionKind::Pending,
        TransactionKind::PostPending => pb::TransactionKind::PostPending,
        TransactionKind::VoidPending => pb::TransactionKind::VoidPending,
        TransactionKind::Reversal => pb::TransactionKind::Reversal,
    }
}

fn transaction_to_pb(transaction: &Transaction) -> pb::Transaction {
    transaction_to_pb_in(transaction, pb::TransactionView::Full)
}

/// The transaction as `view` shows it: BASIC leaves out the legs and the metadata.
fn transaction_to_pb_in(transaction: &Transaction, view: pb::TransactionView) -> pb::Transaction {
    let full = view != pb::TransactionView::Basic;
    let pending_status = match transaction.pending_status {
        None => pb::PendingStatus::Unspecified,
        Some(PendingStatus::Open) => pb::PendingStatus::Open,
        Some(PendingStatus::Posted) => pb::PendingStatus::Posted,
        Some(PendingStatus::Voided) => pb::PendingStatus::Voided,
        Some(PendingStatus::Expired) => pb::PendingStatus::Expired,
    };
    pb::Transaction {
        transaction_id: transaction.id.to_string(),
        idempotency_key: transaction.idempotency_key.clone(),
        kind: kind_to_pb(transaction.kind).into(),
        legs: if full {
            transaction
                .legs
                .iter()
                .map(|leg| pb::Leg {
                    account_id: leg.account.to_string(),
                    direction: direction_to_pb(leg.direction).into(),
                    amount_minor: leg.amount_minor,
                })
                .collect()
        } else {
            Vec::new()
        },
        type_code: transaction.type_code.clone(),
        external_reference: transaction.external_reference.clone(),
        effective_time: Some(timestamp(transaction.effective_at)),
        commit_time: Some(timestamp(transaction.committed_at)),
        metadata: if full {
            transaction.metadata.clone().into_iter().collect()
        } else {
            Default::default()
        },
        related_transaction_id: transaction
            .related
            .map(|id| id.to_string())
            .unwrap_or_default(),
        expire_time: transaction.expires_at.map(timestamp),
        pending_status: pending_status.into(),
    }
}

/// The legs whose account id and direction read, with a violation for each that does not.
pub(crate) fn legs_from_pb(violations: &mut Violations, legs: &[pb::Leg]) -> Vec<Leg> {
    let mut read = Vec::with_capacity(legs.len());
    for (index, leg) in legs.iter().enumerate() {
        let account = violations.check(
            &format!("legs[{index}].account_id"),
            leg.account_id.parse::<AccountId>(),
        );
        let direction = match pb::Direction::try_from(leg.direction) {
            Ok(pb::Direction::Debit) => Some(Direction::Debit),
            Ok(pb::Direction::Credit) => Some(Direction::Credit),
            _ => {
                violations.push(FieldViolation::new(
                    format!("legs[{index}].direction"),
                    "must be DEBIT or CREDIT",
                ));
                None
            }
        };
        if let (Some(account), Some(direction)) = (account, direction) {
            read.push(Leg {
                account,
                direction,
                amount_minor: leg.amount_minor,
            });
        }
    }
    read
}

fn new_transaction_from_pb(request: pb::PostTransactionRequest) -> Result<NewTransaction, Status> {
    let mut violations = Violations::new();
    let legs = legs_from_pb(&mut violations, &request.legs);
    let kind = match pb::TransactionKind::try_from(request.kind) {
        Ok(pb::TransactionKind::Unspecified | pb::TransactionKind::Posted) => NewKind::Posted,
        Ok(pb::TransactionKind::Pending) => NewKind::Pending {
            timeout_seconds: request.pending_timeout_seconds,
        },
        _ => {
            violations.push(FieldViolation::new("kind", "must be POSTED or PENDING"));
            NewKind::Posted
        }
    };
    let effective_at_micros = request
        .effective_time
        .as_ref()
        .map(datetime)
        .transpose()
        .unwrap_or_else(|error| {
            violations.push(FieldViolation::new("effective_time", error));
            None
        });
    // Settlement runs leave out their own transactions by this code; another transaction under
    // it would be in no run.
    if request.type_code == "SETTLEMENT" {
        violations.push(FieldViolation::new(
            "type_code",
            "SETTLEMENT is reserved for the transactions that settle a settlement run",
        ));
    }
    if !violations.is_empty() {
        return Err(to_status(LedgerError::Invalid(violations)));
    }
    Ok(NewTransaction {
        idempotency_key: request.idempotency_key,
        legs,
        kind,
        type_code: request.type_code,
        external_reference: request.external_reference,
        effective_at_micros: effective_at_micros.map(tandem_domain::to_unix_micros),
        metadata: request.metadata.into_iter().collect(),
    })
}

/// Most transactions one PostTransactions call carries.
const MAX_TRANSACTIONS_PER_CALL: usize = 1_000;

/// A transaction of a batch that was not posted, answered as PostTransaction would have been.
fn refused_result(status: &Status) -> pb::PostTransactionResult {
    pb::PostTransactionResult {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason: status::reason(status),
        ..Default::default()
    }
}

fn posted_response(posted: Posted) -> (Option<pb::Transaction>, bool) {
    (
        Some(transaction_to_pb(&posted.transaction)),
        posted.replayed,
    )
}

fn encode_cursor(cursor: &EntryCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}:{}",
        cursor.committed_at_micros, cursor.transaction_id, cursor.leg
    ))
}

fn decode_cursor(token: &str) -> Result<EntryCursor, Status> {
    let invalid_token = || invalid("page_token", "is not a page token from a previous response");
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid_token())?)
        .map_err(|_| invalid_token())?;
    let mut parts = text.splitn(3, ':');
    let (Some(micros), Some(transaction_id), Some(leg)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_token());
    };
    Ok(EntryCursor {
        committed_at_micros: micros.parse().map_err(|_| invalid_token())?,
        transaction_id: transaction_id
            .parse::<TransactionId>()
            .map_err(|_| invalid_token())?
            .to_string(),
        leg: leg.parse().map_err(|_| invalid_token())?,
    })
}

#[tonic::async_trait]
impl LedgerService for LedgerGrpc {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        self.require(
            &request,
            WRITERS,
            "only Tandem's services open ledger accounts",
        )
        .await?;
        let request = request.into_inner();
        let owner: Owner = parse("owner", &request.owner)?;
        let purpose = purpose_from_pb(request.purpose)?;
        let unit = Unit::parse(&request.unit).map_err(|error| invalid("unit", error))?;
        let guard = guard_from_pb(request.guard, request.overdraft_limit_minor)?;
        let account = self
            .ledger
            .open_account(owner, purpose, &unit, request.unit_scale, guard)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::OpenAccountResponse {
            account: Some(account_to_pb(&account)),
        }))
    }

    async fn post_transaction(
        &self,
        request: Request<pb::PostTransactionRequest>,
    ) -> Result<Response<pb::PostTransactionResponse>, Status> {
        self.require(
            &request,
            WRITERS,
            "only Tandem's services post to the ledger",
        )
        .await?;
        let transaction = new_transaction_from_pb(request.into_inner())?;
        let (transaction, replayed) =
            posted_response(self.ledger.post(transaction).await.map_err(to_status)?);
        Ok(Response::new(pb::PostTransactionResponse {
            transaction,
            replayed,
        }))
    }

    async fn post_transactions(
        &self,
        request: Request<pb::PostTransactionsRequest>,
    ) -> Result<Response<pb::PostTransactionsResponse>, Status> {
        self.require(
            &request,
            WRITERS,
            "only Tandem's services post to the ledger",
        )
        .await?;
        let request = request.into_inner();
        let view = request.view();
        let requests = request.transactions;
        if !(1..=MAX_TRANSACTIONS_PER_CALL).contains(&requests.len()) {
            return Err(invalid(
                "transactions",
                format!("must hold 1 to {MAX_TRANSACTIONS_PER_CALL} transactions"),
            ));
        }
        // Malformed transactions are answered without reaching the ledger; the rest are posted
        // together and their answers put back in place.
        let mut results = vec![pb::PostTransactionResult::default(); requests.len()];
        let mut transactions = Vec::with_capacity(requests.len());
        let mut positions = Vec::with_capacity(requests.len());
        for (position, request) in requests.into_iter().enumerate() {
            match new_transaction_from_pb(request) {
                Ok(transaction) => {
                    transactions.push(transaction);
                    positions.push(position);
                }
                Err(status) => results[position] = refused_result(&status),
            }
        }
        let outcomes = self.ledger.post_many(transactions).await;
        for (position, outcome) in positions.into_iter().zip(outcomes) {
            results[position] = match outcome {
                Ok(posted) => pb::PostTransactionResult {
                    transaction: Some(transaction_to_pb_in(&posted.transaction, view)),
                    replayed: posted.replayed,
                    ..Default::default()
                },
                Err(error) => refused_result(&to_status(error)),
            };
        }
        Ok(Response::new(pb::PostTransactionsResponse { results }))
    }

    async fn resolve_pending(
        &self,
        request: Request<pb::ResolvePendingRequest>,
    ) -> Result<Response<pb::ResolvePendingResponse>, Status> {
        self.require(
            &request,
            WRITERS,
            "only Tandem's services resolve pending transactions",
        )
        .await?;
        let request = request.into_inner();
        let pending: TransactionId =
            parse("pending_transaction_id", &request.pending_transaction_id)?;
        let resolution = match pb::PendingResolution::try_from(request.resolution) {
            Ok(pb::PendingResolution::Post) => Resolution::Post,
            Ok(pb::PendingResolution::Void) => Resolution::Void,
            _ => return Err(invalid("resolution", "must be POST or VOID")),
        };
        let (transaction, replayed) = posted_response(
            self.ledger
                .resolve_pending(request.idempotency_key, pending, resolution)
                .await
                .map_err(to_status)?,
        );
        Ok(Response::new(pb::ResolvePendingResponse {
            transaction,
            replayed,
        }))
    }

    async fn reverse_transaction(
        &self,
        request: Request<pb::ReverseTransactionRequest>,
    ) -> Result<Response<pb::ReverseTransactionResponse>, Status> {
        self.require(
            &request,
            WRITERS,
            "only Tandem's services reverse transactions",
        )
        .await?;
        let request = request.into_inner();
        let original: TransactionId = parse("transaction_id", &request.transaction_id)?;
        let (transaction, replayed) = posted_response(
            self.ledger
                .reverse(request.idempotency_key, original, request.reason)
                .await
                .map_err(to_status)?,
        );
        Ok(Response::new(pb::ReverseTransactionResponse {
            transaction,
            replayed,
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        self.require(
            &request,
            READERS,
            "only ops and Tandem's services read balances",
        )
        .await?;
        let request = request.into_inner();
        let id: AccountId = parse("account_id", &request.account_id)?;
        let at = request
            .as_of_time
            .as_ref()
            .map(datetime)
            .transpose()
            .map_err(|error| invalid("as_of_time", error))?;
        let (account, totals) = self.ledger.balance(id, at).await.map_err(to_status)?;
        Ok(Response::new(pb::GetBalanceResponse {
            account: Some(account_to_pb(&account)),
            posted_debits_minor: totals.posted_debits,
            posted_credits_minor: totals.posted_credits,
            pending_debits_minor: totals.pending_debits,
            pending_credits_minor: totals.pending_credits,
        }))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.require(
            &request,
            READERS,
            "only ops and Tandem's services read entries",
        )
        .await?;
        let request = request.into_inner();
        let id: AccountId = parse("account_id", &request.account_id)?;
        let size = match request.page_size {
            size if size < 0 => return Err(invalid("page_size", "must not be negative")),
            0 => DEFAULT_ENTRY_PAGE,
            size => (size as usize).min(MAX_ENTRY_PAGE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(decode_cursor(&request.page_token)?)
        };
        let mut entries = self
            .ledger
            .entries(id, after.as_ref(), size + 1)
            .await
            .map_err(to_status)?;
        let next_page_token = if entries.len() > size {
            entries.truncate(size);
            entries
                .last()
                .map(|entry| {
                    encode_cursor(&EntryCursor {
                        committed_at_micros: tandem_domain::to_unix_micros(entry.committed_at),
                        transaction_id: entry.transaction_id.to_string(),
                        leg: entry.leg,
                    })
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        let entries = entries
            .into_iter()
            .map(|entry| pb::Entry {
                transaction_id: entry.transaction_id.to_string(),
                kind: kind_to_pb(entry.kind).into(),
                direction: direction_to_pb(entry.direction).into(),
                amount_minor: entry.amount_minor,
                effective_time: Some(timestamp(entry.effective_at)),
                commit_time: Some(timestamp(entry.committed_at)),
            })
            .collect();
        Ok(Response::new(pb::ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        self.require(
            &request,
            READERS,
            "only ops and Tandem's services read transactions",
        )
        .await?;
        let reference = request.into_inner().external_reference;
        if reference.is_empty() || reference.len() > 200 {
            return Err(invalid("external_reference", "must be 1 to 200 characters"));
        }
        let transactions = self
            .ledger
            .transactions_by_reference(&reference)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: transactions.iter().map(transaction_to_pb).collect(),
        }))
    }

    async fn get_trial_balance(
        &self,
        request: Request<pb::GetTrialBalanceRequest>,
    ) -> Result<Response<pb::GetTrialBalanceResponse>, Status> {
        self.require(
            &request,
            READERS,
            "only ops and Tandem's services read the trial balance",
        )
        .await?;
        let rows = self.ledger.trial_balance().await.map_err(to_status)?;
        let balanced = rows.iter().all(|row| row.net_minor() == 0);
        let units = rows
            .into_iter()
            .map(|row| pb::UnitTotal {
                net_minor: i64::try_from(row.net_minor()).unwrap_or(i64::MAX),
                unit: row.unit.to_string(),
                posted_debits_minor: row.posted_debits_minor,
                posted_credits_minor: row.posted_credits_minor,
            })
            .collect();
        Ok(Response::new(pb::GetTrialBalanceResponse {
            units,
            balanced,
        }))
    }
}
