//! Tandem's double-entry ledger.
//!
//! Accounts belong to an owner (a partner or the exchange), serve a purpose, and hold one unit.
//! Transactions have two or more legs that balance per unit, are atomic and immutable, and are
//! idempotent by key. Two-phase transactions reserve (PENDING) and are then posted or voided once,
//! or expire. Reversals mirror a posted transaction, once. Guards are checked inside the write.
//! Balances are derived from entries; writes are group-committed. See README.md for why.

mod checkpoints;
mod model;
mod store;
mod writer;

use std::collections::BTreeSet;

use tandem_domain::{Timestamp, Violations};
use tandem_storage::Database;
use tokio::sync::{mpsc, oneshot};

pub use model::{
    Account, AccountId, Direction, Guard, Leg, MAX_LEGS, NewKind, NewTransaction, Owner,
    PendingStatus, Posted, Purpose, Totals, Transaction, TransactionId, TransactionKind, Unit,
    check_balanced,
};
pub use store::{AccountFilter, Entry, EntryCursor, Resolution};

/// The ledger database's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the ledger refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    Invalid(Violations),
    #[error("account {0} not found")]
    AccountNotFound(AccountId),
    #[error("transaction {0} not found")]
    TransactionNotFound(TransactionId),
    #[error("{0}")]
    Unbalanced(String),
    #[error("unit {unit} has scale {scale}, not {requested}")]
    ScaleMismatch {
        unit: String,
        scale: u32,
        requested: u32,
    },
    #[error("account {0} is already open with a different guard")]
    AccountGuardDiffers(AccountId),
    #[error("idempotency key {key:?} was used for a different request (differs in: {})", differences.join(", "))]
    IdempotencyConflict {
        key: String,
        differences: Vec<&'static str>,
    },
    #[error("account {0} refuses this transaction: its balance guard would be broken")]
    GuardRefused(AccountId),
    #[error("transaction {0} is not a pending transaction")]
    NotPending(TransactionId),
    #[error("pending transaction {0} has expired")]
    PendingExpired(TransactionId),
    #[error("pending transaction {0} is already resolved ({1:?})")]
    AlreadyResolved(TransactionId, PendingStatus),
    #[error("transaction {id} is {} and cannot be reversed", kind.as_str())]
    NotReversible {
        id: TransactionId,
        kind: TransactionKind,
    },
    #[error("transaction {0} is already reversed")]
    AlreadyReversed(TransactionId),
    #[error("the write conflicted with a concurrent one; retry with the same idempotency key")]
    Conflict,
    #[error("the ledger's writer has stopped")]
    Stopped,
    #[error("storage failed: {0}")]
    Storage(String),
}

impl LedgerError {
    /// Whether the request may have been applied even though it returned this error: only a
    /// storage failure leaves the outcome unknown (the commit itself may have failed after
    /// reaching the disk). Every other error means certainly not applied. Either way, retrying
    /// with the same idempotency key is safe.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, LedgerError::Storage(_))
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        if tandem_storage::is_retryable_conflict(&error) {
            LedgerError::Conflict
        } else {
            LedgerError::Storage(error.to_string())
        }
    }
}

/// How the ledger writes.
#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// Writer tasks, each committing its own batches. SQLite has one writer at a time, so one
    /// is enough there; PostgreSQL commits batches from several in parallel.
    pub writers: usize,
    /// Most requests in one commit.
    pub max_batch: usize,
}

impl LedgerOptions {
    pub fn for_backend(backend: tandem_storage::Backend) -> Self {
        match backend {
            tandem_storage::Backend::Sqlite => Self {
                writers: 1,
                max_batch: 256,
            },
            tandem_storage::Backend::Postgres => Self {
                writers: 8,
                max_batch: 128,
            },
        }
    }
}

/// One row of the trial balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitTotal {
    pub unit: Unit,
    pub posted_debits_minor: i64,
    pub posted_credits_minor: i64,
}

impl UnitTotal {
    pub fn net_minor(&self) -> i128 {
        i128::from(self.posted_credits_minor) - i128::from(self.posted_debits_minor)
    }
}

/// The ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    database: Database,
    writer: mpsc::Sender<Vec<writer::Job>>,
}

impl std::fmt::Debug for writer::Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("key", &self.key).finish()
    }
}

impl Ledger {
    /// A ledger on `database` (migrated with [`MIGRATOR`]), with its writer tasks started.
    pub fn new(database: Database, options: LedgerOptions) -> Self {
        let writer = writer::start(&database, options.writers, options.max_batch);
        Self { database, writer }
    }

    /// Opens an account, or returns the one already open for this owner, purpose and unit.
    pub async fn open_account(
        &self,
        owner: Owner,
        purpose: Purpose,
        unit: &Unit,
        unit_scale: u32,
        guard: Guard,
    ) -> Result<Account, LedgerError> {
        if unit_scale > 6 {
            return Err(LedgerError::Invalid(Violations::single(
                "unit_scale",
                format!("must be from 0 to 6; got {unit_scale}"),
            )));
        }
        if guard.overdraft_limit_minor() < 0 {
            return Err(LedgerError::Invalid(Violations::single(
                "overdraft_limit_minor",
                "must not be negative",
            )));
        }
        let mut transaction = self.database.begin_write().await?;
        let account =
            store::open_account(&mut transaction, owner, purpose, unit, unit_scale, guard).await?;
        transaction.commit().await?;
        Ok(account)
    }

    async fn write(
        &self,
        key: String,
        request: store::WriteRequest,
    ) -> Result<Posted, LedgerError> {
        let outcome = self.submit(key, request).await?;
        outcome.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Checks a request and queues it for the writers; the receiver answers once its batch has
    /// committed.
    async fn submit(
        &self,
        key: String,
        request: store::WriteRequest,
    ) -> Result<oneshot::Receiver<Result<Posted, LedgerError>>, LedgerError> {
        let (job, outcome) = Self::job(key, request)?;
        self.writer
            .send(vec![job])
            .await
            .map_err(|_| LedgerError::Stopped)?;
        Ok(outcome)
    }

    /// A checked request as a job for the writers, with the receiver of its outcome.
    fn job(
        key: String,
        request: store::WriteRequest,
    ) -> Result<(writer::Job, oneshot::Receiver<Result<Posted, LedgerError>>), LedgerError> {
        let mut violations = Violations::new();
        model::check_key(&mut violations, &key);
        if let store::WriteRequest::Post(transaction) = &request
            && let Err(more) = transaction.validate()
        {
            violations = more;
        }
        if !violations.is_empty() {
            return Err(LedgerError::Invalid(violations));
        }
        let (reply, outcome) = oneshot::channel();
        Ok((
            writer::Job {
                key,
                request,
                reply,
            },
            outcome,
        ))
    }

    /// Posts many transactions, each exactly as [`Ledger::post`] would (its own key, its own
    /// outcome, in the order given). They are queued as one group, so they share a commit.
    pub async fn post_many(
        &self,
        transactions: Vec<NewTransaction>,
    ) -> Vec<Result<Posted, LedgerError>> {
        let mut group = Vec::with_capacity(transactions.len());
        let mut queued = Vec::with_capacity(transactions.len());
        for transaction in transactions {
            let key = transaction.idempotency_key.clone();
            match Self::job(key, store::WriteRequest::Post(transaction)) {
                Ok((job, outcome)) => {
                    group.push(job);
                    queued.push(Ok(outcome));
                }
                Err(error) => queued.push(Err(error)),
            }
        }
        if !group.is_empty() && self.writer.send(group).await.is_err() {
            return queued.iter().map(|_| Err(LedgerError::Stopped)).collect();
        }
        let mut outcomes = Vec::with_capacity(queued.len());
        for queued in queued {
            outcomes.push(match queued {
                Ok(outcome) => outcome.await.unwrap_or(Err(LedgerError::Stopped)),
                Err(error) => Err(error),
            });
        }
        outcomes
    }

    /// Posts a balanced transaction (POSTED or PENDING).
    pub async fn post(&self, transaction: NewTransaction) -> Result<Posted, LedgerError> {
        let key = transaction.idempotency_key.clone();
        self.write(key, store::WriteRequest::Post(transaction))
            .await
    }

    /// Posts or voids a pending transaction, at most once.
    pub async fn resolve_pending(
        &self,
        key: String,
        pending: TransactionId,
        resolution: Resolution,
    ) -> Result<Posted, LedgerError> {
        self.write(
            key,
            store::WriteRequest::Resolve {
                pending,
                resolution,
            },
        )
        .await
    }

    /// Reverses a posted transaction, at most once.
    pub async fn reverse(
        &self,
        key: String,
        original: TransactionId,
        reason: String,
    ) -> Result<Posted, LedgerError> {
        if reason.len() > 500 {
            return Err(LedgerError::Invalid(Violations::single(
                "reason",
                "must be at most 500 characters",
            )));
        }
        self.write(key, store::WriteRequest::Reverse { original, reason })
            .await
    }

    pub async fn account(&self, id: AccountId) -> Result<Account, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        store::account(&mut connection, id)
            .await?
            .ok_or(LedgerError::AccountNotFound(id))
    }

    /// Up to `limit` accounts matching `filter` after `after`, oldest first.
    pub async fn list_accounts(
        &self,
        filter: &AccountFilter,
        after: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<Account>, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        Ok(store::list_accounts(&mut connection, filter, after, limit).await?)
    }

    /// An account's totals as of `at` (now when `None`).
    pub async fn balance(
        &self,
        id: AccountId,
        at: Option<Timestamp>,
    ) -> Result<(Account, Totals), LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        let account = store::account(&mut connection, id)
            .await?
            .ok_or(LedgerError::AccountNotFound(id))?;
        let totals =
            store::totals(&mut connection, id, at.unwrap_or_else(tandem_domain::now)).await?;
        Ok((account, totals))
    }

    /// Up to `limit` entries of an account after `after`, in commit order.
    pub async fn entries(
        &self,
        id: AccountId,
        after: Option<&EntryCursor>,
        limit: usize,
    ) -> Result<Vec<Entry>, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        store::account(&mut connection, id)
            .await?
            .ok_or(LedgerError::AccountNotFound(id))?;
        Ok(store::entries(&mut connection, id, after, limit).await?)
    }

    pub async fn transaction(&self, id: TransactionId) -> Result<Transaction, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        store::load_transaction(&mut connection, id, tandem_domain::now())
            .await?
            .ok_or(LedgerError::TransactionNotFound(id))
    }

    pub async fn transactions_by_reference(
        &self,
        reference: &str,
    ) -> Result<Vec<Transaction>, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        Ok(
            store::transactions_by_reference(&mut connection, reference, tandem_domain::now())
                .await?,
        )
    }

    /// Posted totals per unit across the whole ledger.
    pub async fn trial_balance(&self) -> Result<Vec<UnitTotal>, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        let rows = store::trial_balance(&mut connection).await?;
        Ok(rows
            .into_iter()
            .map(
                |(unit, posted_debits_minor, posted_credits_minor)| UnitTotal {
                    unit,
                    posted_debits_minor,
                    posted_credits_minor,
                },
            )
            .collect())
    }

    /// Seals commit times before `before`: waits for the writes in flight, after which every
    /// entry committed before `before` is visible and no later one can carry an earlier time.
    /// A settlement run seals its cut-off before it reads the period. Refused for a time to come,
    /// which would stamp every later write in the future.
    pub async fn seal_before(&self, before: Timestamp) -> Result<(), LedgerError> {
        if before > tandem_domain::now() {
            return Err(LedgerError::Invalid(Violations::single(
                "before",
                "is in the future",
            )));
        }
        let mut transaction = self.database.begin_write().await?;
        checkpoints::seal(&mut transaction, tandem_domain::to_unix_micros(before)).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Records every account's posted totals as of `as_of`, sealed there first; balances, as-of
    /// reads and guards then start from the newest checkpoint instead of an account's first
    /// entry. Taking one again at the same time writes nothing. How many accounts it recorded.
    pub async fn checkpoint(&self, as_of: Timestamp) -> Result<usize, LedgerError> {
        self.seal_before(as_of).await?;
        let mut transaction = self.database.begin_write().await?;
        let written =
            checkpoints::record(&mut transaction, tandem_domain::to_unix_micros(as_of)).await?;
        transaction.commit().await?;
        Ok(written)
    }

    /// When the newest checkpoint was taken as of, if one was.
    pub async fn newest_checkpoint(&self) -> Result<Option<Timestamp>, LedgerError> {
        let mut connection = self.database.pool().acquire().await?;
        Ok(checkpoints::newest(&mut connection)
            .await?
            .map(tandem_domain::from_unix_micros))
    }

    /// Every account id with entries, for checks that walk the whole ledger.
    pub async fn account_ids(&self) -> Result<BTreeSet<AccountId>, LedgerError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT account_id FROM ledger_accounts ORDER BY account_id")
                .fetch_all(self.database.pool())
                .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}
