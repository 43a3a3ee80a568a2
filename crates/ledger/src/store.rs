//! The ledger's SQL. Rows stay here; callers get model types. Every write runs inside a batch
//! transaction opened by the group-commit writer (`writer.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, FromRow, Row};
use tandem_domain::{Timestamp, from_unix_micros, to_unix_micros};
use tandem_storage::{Backend, ColumnType, JsonRows, placeholders};

use crate::{
    LedgerError, checkpoints,
    model::{
        Account, AccountId, Direction, Guard, Leg, NewKind, NewTransaction, Owner, PendingStatus,
        Posted, Purpose, Totals, Transaction, TransactionId, TransactionKind, Unit, check_balanced,
    },
};

/// Whether to post or void a pending transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    Post,
    Void,
}

/// A write as the caller asked for it. Its digest (of its canonical JSON, without the key) is
/// what a reused idempotency key is compared against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteRequest {
    Post(NewTransaction),
    Resolve {
        pending: TransactionId,
        resolution: Resolution,
    },
    Reverse {
        original: TransactionId,
        reason: String,
    },
}

/// How a stored digest begins; content stored before digests is the request's JSON itself.
const DIGEST_PREFIX: &str = "sha256:";

impl WriteRequest {
    /// What the transaction row stores of the request: a SHA-256 digest of its canonical JSON.
    /// Equal requests have equal digests; the full request would add some 600 bytes to every
    /// row and its log record, to be read back only when a key is reused. The JSON is written
    /// straight into the hash rather than built first.
    fn digest(&self) -> String {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        serde_json::to_writer(&mut hasher, self).expect("a write request always serializes");
        format!("{DIGEST_PREFIX}{:x}", hasher.finalize())
    }

    /// The request a stored transaction answered, as far as the transaction shows it: what a
    /// reused key's new request is compared with to say what differs.
    fn answered_by(transaction: &Transaction, new: &WriteRequest) -> WriteRequest {
        let related = transaction.related.unwrap_or(transaction.id);
        match transaction.kind {
            TransactionKind::PostPending => WriteRequest::Resolve {
                pending: related,
                resolution: Resolution::Post,
            },
            TransactionKind::VoidPending => WriteRequest::Resolve {
                pending: related,
                resolution: Resolution::Void,
            },
            TransactionKind::Reversal => WriteRequest::Reverse {
                original: related,
                reason: transaction
                    .metadata
                    .get("reason")
                    .cloned()
                    .unwrap_or_default(),
            },
            TransactionKind::Posted | TransactionKind::Pending => {
                let committed = to_unix_micros(transaction.committed_at);
                let effective = to_unix_micros(transaction.effective_at);
                let kind = match transaction.expires_at {
                    Some(expires) if transaction.kind == TransactionKind::Pending => {
                        NewKind::Pending {
                            timeout_seconds: (to_unix_micros(expires) - committed) / 1_000_000,
                        }
                    }
                    _ => NewKind::Posted,
                };
                // A request without an effective time took the commit time.
                let asked_without =
                    matches!(new, WriteRequest::Post(new) if new.effective_at_micros.is_none());
                WriteRequest::Post(NewTransaction {
                    idempotency_key: transaction.idempotency_key.clone(),
                    legs: transaction.legs.clone(),
                    kind,
                    type_code: transaction.type_code.clone(),
                    external_reference: transaction.external_reference.clone(),
                    effective_at_micros: (!(asked_without && effective == committed))
                        .then_some(effective),
                    metadata: transaction.metadata.clone(),
                })
            }
        }
    }

    /// What differs between the stored request of a key and a new one.
    fn differences(stored: &WriteRequest, new: &WriteRequest) -> Vec<&'static str> {
        match (stored, new) {
            (WriteRequest::Post(stored), WriteRequest::Post(new)) => stored.differences(new),
            (
                WriteRequest::Resolve {
                    pending: a,
                    resolution: x,
                },
                WriteRequest::Resolve {
                    pending: b,
                    resolution: y,
                },
            ) => [(a != b, "pending_transaction_id"), (x != y, "resolution")]
                .into_iter()
                .filter_map(|(differs, field)| differs.then_some(field))
                .collect(),
            (
                WriteRequest::Reverse {
                    original: a,
                    reason: x,
                },
                WriteRequest::Reverse {
                    original: b,
                    reason: y,
                },
            ) => [(a != b, "transaction_id"), (x != y, "reason")]
                .into_iter()
                .filter_map(|(differs, field)| differs.then_some(field))
                .collect(),
            _ => vec!["operation"],
        }
    }
}

/// The outcome of one request inside a batch.
pub(crate) enum Step {
    /// The key had been used with the same content: the original transaction.
    Replayed(Posted),
    /// Refused for a reason of its own; the batch goes on without it.
    Refused(LedgerError),
    /// The database failed; the whole batch is rolled back.
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Step {
    fn from(error: sqlx::Error) -> Self {
        Step::Database(error)
    }
}

impl From<LedgerError> for Step {
    fn from(error: LedgerError) -> Self {
        Step::Refused(error)
    }
}

#[derive(FromRow)]
struct AccountRow {
    account_id: String,
    owner: String,
    purpose: String,
    unit: String,
    scale: i64,
    guard: String,
    overdraft_limit_minor: i64,
    created_at_micros: i64,
}

const ACCOUNT_SELECT: &str = "SELECT a.account_id, a.owner, a.purpose, a.unit, u.scale, a.guard, a.overdraft_limit_minor, a.created_at_micros \
     FROM ledger_accounts a JOIN ledger_units u ON u.unit = a.unit";

fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

impl AccountRow {
    fn into_account(self) -> Result<Account, sqlx::Error> {
        let bad = |field: &str| corrupt(format!("ledger account {}: {field}", self.account_id));
        Ok(Account {
            id: self.account_id.parse().map_err(|_| bad("id"))?,
            owner: self.owner.parse().map_err(|_| bad("owner"))?,
            purpose: Purpose::parse(&self.purpose).ok_or_else(|| bad("purpose"))?,
            unit: Unit::parse(&self.unit).map_err(|_| bad("unit"))?,
            unit_scale: u32::try_from(self.scale).map_err(|_| bad("scale"))?,
            guard: Guard::from_parts(&self.guard, self.overdraft_limit_minor)
                .ok_or_else(|| bad("guard"))?,
            created_at: from_unix_micros(self.created_at_micros),
        })
    }
}

#[derive(FromRow)]
struct TransactionRow {
    transaction_id: String,
    idempotency_key: String,
    content: String,
    kind: String,
    type_code: String,
    external_reference: String,
    effective_at_micros: i64,
    committed_at_micros: i64,
    metadata: String,
    related_transaction_id: Option<String>,
    expires_at_micros: Option<i64>,
}

const TRANSACTION_COLUMNS: &str = "transaction_id, idempotency_key, content, kind, type_code, external_reference, effective_at_micros, \
     committed_at_micros, metadata, related_transaction_id, expires_at_micros";

/// Opens an account, or returns the one already open for the owner, purpose and unit.
pub(crate) async fn open_account(
    connection: &mut AnyConnection,
    owner: Owner,
    purpose: Purpose,
    unit: &Unit,
    unit_scale: u32,
    guard: Guard,
) -> Result<Account, LedgerError> {
    sqlx::query(
        "INSERT INTO ledger_units (unit, scale) VALUES ($1, $2) ON CONFLICT (unit) DO NOTHING",
    )
    .bind(unit.as_str())
    .bind(i64::from(unit_scale))
    .execute(&mut *connection)
    .await?;
    let scale: i64 = sqlx::query_scalar("SELECT scale FROM ledger_units WHERE unit = $1")
        .bind(unit.as_str())
        .fetch_one(&mut *connection)
        .await?;
    if scale != i64::from(unit_scale) {
        return Err(LedgerError::ScaleMismatch {
            unit: unit.to_string(),
            scale: scale as u32,
            requested: unit_scale,
        });
    }
    sqlx::query(
        "INSERT INTO ledger_accounts (account_id, owner, purpose, unit, guard, overdraft_limit_minor, created_at_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (owner, purpose, unit) DO NOTHING",
    )
    .bind(AccountId::generate().to_string())
    .bind(owner.to_string())
    .bind(purpose.as_str())
    .bind(unit.as_str())
    .bind(guard.kind())
    .bind(guard.overdraft_limit_minor())
    .bind(to_unix_micros(tandem_domain::now()))
    .execute(&mut *connection)
    .await?;
    let query = format!("{ACCOUNT_SELECT} WHERE a.owner = $1 AND a.purpose = $2 AND a.unit = $3");
    let row: AccountRow = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(owner.to_string())
        .bind(purpose.as_str())
        .bind(unit.as_str())
        .fetch_one(&mut *connection)
        .await?;
    let account = row.into_account()?;
    if account.guard != guard {
        return Err(LedgerError::AccountGuardDiffers(account.id));
    }
    Ok(account)
}

pub(crate) async fn account(
    connection: &mut AnyConnection,
    id: AccountId,
) -> Result<Option<Account>, sqlx::Error> {
    let query = format!("{ACCOUNT_SELECT} WHERE a.account_id = $1");
    let row: Option<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(AccountRow::into_account).transpose()
}

/// Which accounts a listing shows; `None` shows all.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    pub owner: Option<Owner>,
    pub purpose: Option<Purpose>,
    pub unit: Option<Unit>,
}

/// Up to `limit` accounts matching `filter` whose ids sort after `after`, by id: ids are UUIDv7,
/// so that is the order they were opened in.
pub(crate) async fn list_accounts(
    connection: &mut AnyConnection,
    filter: &AccountFilter,
    after: Option<AccountId>,
    limit: usize,
) -> Result<Vec<Account>, sqlx::Error> {
    let mut conditions = vec!["a.account_id > $1".to_owned()];
    let mut values = Vec::new();
    if let Some(owner) = &filter.owner {
        values.push(owner.to_string());
        conditions.push(format!("a.owner = ${}", values.len() + 1));
    }
    if let Some(purpose) = filter.purpose {
        values.push(purpose.as_str().to_owned());
        conditions.push(format!("a.purpose = ${}", values.len() + 1));
    }
    if let Some(unit) = &filter.unit {
        values.push(unit.as_str().to_owned());
        conditions.push(format!("a.unit = ${}", values.len() + 1));
    }
    let query = format!(
        "{ACCOUNT_SELECT} WHERE {} ORDER BY a.account_id LIMIT ${}",
        conditions.join(" AND "),
        values.len() + 2
    );
    let mut statement = sqlx::query_as::<_, AccountRow>(sqlx::AssertSqlSafe(query))
        .bind(after.map(|id| id.to_string()).unwrap_or_default());
    for value in values {
        statement = statement.bind(value);
    }
    let rows = statement
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(connection)
        .await?;
    rows.into_iter().map(AccountRow::into_account).collect()
}

/// The accounts with these ids; missing ones are simply absent.
pub(crate) async fn accounts(
    connection: &mut AnyConnection,
    ids: &BTreeSet<AccountId>,
) -> Result<HashMap<AccountId, Account>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let query = format!(
        "{ACCOUNT_SELECT} WHERE a.account_id IN ({})",
        placeholders(ids.len(), 1)
    );
    let mut statement = sqlx::query_as(sqlx::AssertSqlSafe(query));
    for id in ids {
        statement = statement.bind(id.to_string());
    }
    let rows: Vec<AccountRow> = statement.fetch_all(connection).await?;
    rows.into_iter()
        .map(|row| row.into_account().map(|account| (account.id, account)))
        .collect()
}

/// Locks the guarded accounts of a batch, in id order, so that two batches touching the same
/// accounts wait for each other instead of deadlocking. SQLite's write lock already serializes
/// batches, so there is nothing to do there.
pub(crate) async fn lock_guarded(
    connection: &mut AnyConnection,
    backend: Backend,
    guarded: &BTreeSet<AccountId>,
) -> Result<(), sqlx::Error> {
    if backend != Backend::Postgres || guarded.is_empty() {
        return Ok(());
    }
    let query = format!(
        "SELECT account_id FROM ledger_accounts WHERE account_id IN ({}) ORDER BY account_id FOR UPDATE",
        placeholders(guarded.len(), 1)
    );
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(query));
    for id in guarded {
        statement = statement.bind(id.to_string());
    }
    statement.fetch_all(connection).await?;
    Ok(())
}

/// The accounts a request touches: its legs, or the legs of the transaction it resolves or
/// reverses.
pub(crate) async fn accounts_touched(
    connection: &mut AnyConnection,
    request: &WriteRequest,
) -> Result<Vec<AccountId>, sqlx::Error> {
    let related = match request {
        WriteRequest::Post(transaction) => {
            return Ok(transaction.legs.iter().map(|leg| leg.account).collect());
        }
        WriteRequest::Resolve { pending, .. } => pending,
        WriteRequest::Reverse { original, .. } => original,
    };
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT account_id FROM ledger_entries WHERE transaction_id = $1")
            .bind(related.to_string())
            .fetch_all(connection)
            .await?;
    Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
}

/// An account's totals right now, for a guard check inside the write: its latest checkpoint and
/// every entry after it, whatever commit time it carries (a batch that started later may have
/// committed first; the seal keeps any from landing before the checkpoint), and pending entries
/// of transactions still unresolved and unexpired at `now`.
pub(crate) async fn current_totals(
    connection: &mut AnyConnection,
    account: AccountId,
    now: Timestamp,
) -> Result<Totals, sqlx::Error> {
    let id = account.to_string();
    let checkpoint = checkpoints::latest(&mut *connection, &id, i64::MAX).await?;
    let posted = checkpoints::posted_since(&mut *connection, &id, checkpoint, i64::MAX).await?;
    let pending = sqlx::query(
        "SELECT CAST(COALESCE(SUM(e.debit_minor), 0) AS BIGINT) AS debits, CAST(COALESCE(SUM(e.credit_minor), 0) AS BIGINT) AS credits \
         FROM ledger_entries e JOIN ledger_transactions p ON p.transaction_id = e.transaction_id \
         WHERE e.account_id = $1 AND e.phase = 'PENDING' AND p.expires_at_micros > $2 \
           AND NOT EXISTS (SELECT 1 FROM ledger_transactions r WHERE r.resolves_pending_id = p.transaction_id)",
    )
    .bind(&id)
    .bind(to_unix_micros(now))
    .fetch_one(&mut *connection)
    .await?;
    Ok(Totals {
        posted_debits: posted.posted_debits,
        posted_credits: posted.posted_credits,
        pending_debits: pending.try_get("debits")?,
        pending_credits: pending.try_get("credits")?,
    })
}

/// An account's totals for entries committed at or before `at`: the latest checkpoint by then
/// and the posted entries after it; pending entries count while their transaction is open at
/// `at`.
pub(crate) async fn totals(
    connection: &mut AnyConnection,
    account: AccountId,
    at: Timestamp,
) -> Result<Totals, sqlx::Error> {
    let id = account.to_string();
    let until = to_unix_micros(at).saturating_add(1);
    let checkpoint = checkpoints::latest(&mut *connection, &id, until).await?;
    let posted = checkpoints::posted_since(&mut *connection, &id, checkpoint, until).await?;
    let at = to_unix_micros(at);
    let pending = sqlx::query(
        "SELECT CAST(COALESCE(SUM(e.debit_minor), 0) AS BIGINT) AS debits, CAST(COALESCE(SUM(e.credit_minor), 0) AS BIGINT) AS credits \
         FROM ledger_entries e JOIN ledger_transactions p ON p.transaction_id = e.transaction_id \
         WHERE e.account_id = $1 AND e.phase = 'PENDING' AND e.committed_at_micros <= $2 AND p.expires_at_micros > $2 \
           AND NOT EXISTS (SELECT 1 FROM ledger_transactions r WHERE r.resolves_pending_id = p.transaction_id AND r.committed_at_micros <= $2)",
    )
    .bind(&id)
    .bind(at)
    .fetch_one(&mut *connection)
    .await?;
    Ok(Totals {
        posted_debits: posted.posted_debits,
        posted_credits: posted.posted_credits,
        pending_debits: pending.try_get("debits")?,
        pending_credits: pending.try_get("credits")?,
    })
}

async fn transaction_row_by(
    connection: &mut AnyConnection,
    column: &str,
    value: &str,
) -> Result<Option<TransactionRow>, sqlx::Error> {
    // `column` is one of this module's own column names, never input.
    let query =
        format!("SELECT {TRANSACTION_COLUMNS} FROM ledger_transactions WHERE {column} = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(value)
        .fetch_optional(connection)
        .await
}

/// A stored transaction with its legs and, for a pending one, its status at `now`.
pub(crate) async fn load_transaction(
    connection: &mut AnyConnection,
    id: TransactionId,
    now: Timestamp,
) -> Result<Option<Transaction>, sqlx::Error> {
    match transaction_row_by(connection, "transaction_id", &id.to_string()).await? {
        Some(row) => Ok(Some(complete(connection, row, now).await?)),
        None => Ok(None),
    }
}

async fn legs_of(connection: &mut AnyConnection, id: &str) -> Result<Vec<Leg>, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as("SELECT account_id, debit_minor, credit_minor FROM ledger_entries WHERE transaction_id = $1 ORDER BY leg")
        .bind(id)
        .fetch_all(connection)
        .await?;
    rows.into_iter()
        .map(|(account, debit, credit)| {
            let account = account
                .parse()
                .map_err(|_| corrupt(format!("entry of {id}: account")))?;
            Ok(if debit > 0 {
                Leg {
                    account,
                    direction: Direction::Debit,
                    amount_minor: debit,
                }
            } else {
                Leg {
                    account,
                    direction: Direction::Credit,
                    amount_minor: credit,
                }
            })
        })
        .collect()
}

async fn pending_status(
    connection: &mut AnyConnection,
    row: &TransactionRow,
    now: Timestamp,
) -> Result<PendingStatus, sqlx::Error> {
    let resolution: Option<String> =
        sqlx::query_scalar("SELECT kind FROM ledger_transactions WHERE resolves_pending_id = $1")
            .bind(&row.transaction_id)
            .fetch_optional(connection)
            .await?;
    Ok(match resolution.as_deref() {
        Some("POST_PENDING") => PendingStatus::Posted,
        Some(_) => PendingStatus::Voided,
        None if row
            .expires_at_micros
            .is_some_and(|expires| expires <= to_unix_micros(now)) =>
        {
            PendingStatus::Expired
        }
        None => PendingStatus::Open,
    })
}

async fn complete(
    connection: &mut AnyConnection,
    row: TransactionRow,
    now: Timestamp,
) -> Result<Transaction, sqlx::Error> {
    let bad = |field: &str| {
        corrupt(format!(
            "ledger transaction {}: {field}",
            row.transaction_id
        ))
    };
    let kind = TransactionKind::parse(&row.kind).ok_or_else(|| bad("kind"))?;
    // A void records no entries of its own; it shows the legs it voided.
    let legs_source = match (kind, &row.related_transaction_id) {
        (TransactionKind::VoidPending, Some(pending)) => pending.clone(),
        _ => row.transaction_id.clone(),
    };
    let legs = legs_of(connection, &legs_source).await?;
    let pending_status = if kind == TransactionKind::Pending {
        Some(pending_status(connection, &row, now).await?)
    } else {
        None
    };
    Ok(Transaction {
        id: row.transaction_id.parse().map_err(|_| bad("id"))?,
        idempotency_key: row.idempotency_key,
        kind,
        legs,
        type_code: row.type_code,
        external_reference: row.external_reference,
        effective_at: from_unix_micros(row.effective_at_micros),
        committed_at: from_unix_micros(row.committed_at_micros),
        metadata: serde_json::from_str(&row.metadata).map_err(|_| bad("metadata"))?,
        related: row
            .related_transaction_id
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|_| bad("related"))?,
        expires_at: row.expires_at_micros.map(from_unix_micros),
        pending_status,
    })
}

/// The transaction a key already names: a replay if the content matches, a conflict if not.
async fn replay(
    connection: &mut AnyConnection,
    key: &str,
    request: &WriteRequest,
    now: Timestamp,
) -> Result<Option<Posted>, Step> {
    let Some(row) = transaction_row_by(connection, "idempotency_key", key).await? else {
        return Ok(None);
    };
    if row.content.starts_with(DIGEST_PREFIX) {
        let same = request.digest() == row.content;
        let transaction = complete(connection, row, now).await?;
        if same {
            return Ok(Some(Posted {
                transaction,
                replayed: true,
            }));
        }
        let answered = WriteRequest::answered_by(&transaction, request);
        let mut differences = WriteRequest::differences(&answered, request);
        if differences.is_empty() {
            differences.push("content");
        }
        return Err(LedgerError::IdempotencyConflict {
            key: key.to_owned(),
            differences,
        }
        .into());
    }
    // Written before digests: the request itself.
    let stored: WriteRequest = serde_json::from_str(&row.content).map_err(|_| {
        corrupt(format!(
            "ledger transaction {}: content",
            row.transaction_id
        ))
    })?;
    let differences = WriteRequest::differences(&stored, request);
    if !differences.is_empty() {
        return Err(LedgerError::IdempotencyConflict {
            key: key.to_owned(),
            differences,
        }
        .into());
    }
    Ok(Some(Posted {
        transaction: complete(connection, row, now).await?,
        replayed: true,
    }))
}

/// Everything about a new transaction row except its legs.
#[derive(Clone)]
struct Header<'a> {
    key: &'a str,
    request: &'a WriteRequest,
    /// The request's digest, as stored.
    content: String,
    kind: TransactionKind,
    type_code: &'a str,
    external_reference: &'a str,
    effective_at_micros: i64,
    metadata: &'a BTreeMap<String, String>,
    related: Option<TransactionId>,
    expires_at_micros: Option<i64>,
}

/// Applies one request inside the batch transaction. Every refusal happens before anything is
/// written, and writes never raise a constraint error (conflicts are `ON CONFLICT DO NOTHING`),
/// so a refused or duplicate request leaves the batch transaction clean without savepoints.
pub(crate) async fn apply(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    key: &str,
    request: &WriteRequest,
    now: Timestamp,
) -> Result<Posted, Step> {
    // A retry must be recognised before checks that its own first success would now fail (a
    // guard the original used up, a pending it already resolved). A plain transfer needs no
    // look-up first: its insert finds the key taken and the replay is answered then.
    let checks_depend_on_history = match request {
        WriteRequest::Post(transaction) => transaction.legs.iter().any(|leg| {
            accounts
                .get(&leg.account)
                .is_some_and(|account| account.guard != Guard::None)
        }),
        WriteRequest::Resolve { .. } | WriteRequest::Reverse { .. } => true,
    };
    if checks_depend_on_history && let Some(posted) = replay(connection, key, request, now).await? {
        return Ok(posted);
    }
    match request {
        WriteRequest::Post(transaction) => {
            post(connection, accounts, key, request, transaction, now).await
        }
        WriteRequest::Resolve {
            pending,
            resolution,
        } => resolve(connection, key, request, *pending, *resolution, now).await,
        WriteRequest::Reverse { original, reason } => {
            reverse(connection, accounts, key, request, *original, reason, now).await
        }
    }
}

async fn post(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    key: &str,
    request: &WriteRequest,
    transaction: &NewTransaction,
    now: Timestamp,
) -> Result<Posted, Step> {
    let header = checked_header(accounts, key, request, transaction, now)?;
    let pending = matches!(transaction.kind, NewKind::Pending { .. });
    check_guards(connection, accounts, &transaction.legs, pending, now).await?;
    insert(connection, accounts, &header, &transaction.legs, now).await
}

/// The row of a new POSTED or PENDING transaction.
fn new_header<'a>(
    key: &'a str,
    request: &'a WriteRequest,
    transaction: &'a NewTransaction,
    now: Timestamp,
) -> Header<'a> {
    let (kind, expires_at_micros) = match transaction.kind {
        NewKind::Posted => (TransactionKind::Posted, None),
        NewKind::Pending { timeout_seconds } => (
            TransactionKind::Pending,
            Some(to_unix_micros(now) + timeout_seconds * 1_000_000),
        ),
    };
    Header {
        key,
        request,
        content: request.digest(),
        kind,
        type_code: &transaction.type_code,
        external_reference: &transaction.external_reference,
        effective_at_micros: transaction
            .effective_at_micros
            .unwrap_or_else(|| to_unix_micros(now)),
        metadata: &transaction.metadata,
        related: None,
        expires_at_micros,
    }
}

/// Refuses the legs if, added to what is already on the accounts, they would break a guard.
async fn check_guards(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    legs: &[Leg],
    pending: bool,
    now: Timestamp,
) -> Result<(), Step> {
    for leg in legs {
        let account = &accounts[&leg.account];
        if account.guard == Guard::None {
            continue;
        }
        let mut totals = current_totals(connection, account.id, now).await?;
        let amount = leg.amount_minor;
        let slot = match (leg.direction, pending) {
            (Direction::Debit, false) => &mut totals.posted_debits,
            (Direction::Credit, false) => &mut totals.posted_credits,
            (Direction::Debit, true) => &mut totals.pending_debits,
            (Direction::Credit, true) => &mut totals.pending_credits,
        };
        *slot = slot
            .checked_add(amount)
            .ok_or(LedgerError::GuardRefused(account.id))?;
        if !account.guard.allows(&totals) {
            return Err(LedgerError::GuardRefused(account.id).into());
        }
    }
    Ok(())
}

async fn resolve(
    connection: &mut AnyConnection,
    key: &str,
    request: &WriteRequest,
    pending_id: TransactionId,
    resolution: Resolution,
    now: Timestamp,
) -> Result<Posted, Step> {
    let pending = load_transaction(connection, pending_id, now)
        .await?
        .ok_or(LedgerError::TransactionNotFound(pending_id))?;
    match pending.pending_status {
        None => return Err(LedgerError::NotPending(pending_id).into()),
        Some(PendingStatus::Open) => {}
        Some(PendingStatus::Expired) => return Err(LedgerError::PendingExpired(pending_id).into()),
        Some(status) => return Err(LedgerError::AlreadyResolved(pending_id, status).into()),
    }
    // Posting moves the legs from pending to posted and voiding drops them, so neither can
    // break a guard that the pending transaction satisfied.
    let (kind, legs) = match resolution {
        Resolution::Post => (TransactionKind::PostPending, pending.legs.clone()),
        Resolution::Void => (TransactionKind::VoidPending, Vec::new()),
    };
    let header = Header {
        key,
        request,
        content: request.digest(),
        kind,
        type_code: &pending.type_code,
        external_reference: &pending.external_reference,
        effective_at_micros: to_unix_micros(now),
        metadata: &pending.metadata,
        related: Some(pending_id),
        expires_at_micros: None,
    };
    insert(connection, &HashMap::new(), &header, &legs, now).await
}

#[allow(clippy::too_many_arguments)]
async fn reverse(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    key: &str,
    request: &WriteRequest,
    original_id: TransactionId,
    reason: &str,
    now: Timestamp,
) -> Result<Posted, Step> {
    let original = load_transaction(connection, original_id, now)
        .await?
        .ok_or(LedgerError::TransactionNotFound(original_id))?;
    if !matches!(
        original.kind,
        TransactionKind::Posted | TransactionKind::PostPending
    ) {
        return Err(LedgerError::NotReversible {
            id: original_id,
            kind: original.kind,
        }
        .into());
    }
    let mirrored: Vec<Leg> = original
        .legs
        .iter()
        .map(|leg| Leg {
            account: leg.account,
            direction: match leg.direction {
                Direction::Debit => Direction::Credit,
                Direction::Credit => Direction::Debit,
            },
            amount_minor: leg.amount_minor,
        })
        .collect();
    check_guards(connection, accounts, &mirrored, false, now).await?;
    let mut metadata = original.metadata.clone();
    metadata.insert("reason".to_owned(), reason.to_owned());
    let header = Header {
        key,
        request,
        content: request.digest(),
        kind: TransactionKind::Reversal,
        type_code: &original.type_code,
        external_reference: &original.external_reference,
        effective_at_micros: to_unix_micros(now),
        metadata: &metadata,
        related: Some(original_id),
        expires_at_micros: None,
    };
    insert(connection, accounts, &header, &mirrored, now).await
}

/// A transaction row about to be written, with its legs.
struct NewRow<'a> {
    id: TransactionId,
    /// The id as the row and each of its entries store it, formatted once.
    id_text: String,
    header: Header<'a>,
    legs: &'a [Leg],
}

impl<'a> NewRow<'a> {
    fn new(header: Header<'a>, legs: &'a [Leg]) -> Self {
        let id = TransactionId::generate();
        Self {
            id,
            id_text: id.to_string(),
            header,
            legs,
        }
    }

    fn posted(&self, committed_at_micros: i64) -> Posted {
        let header = &self.header;
        let pending_status =
            (header.kind == TransactionKind::Pending).then_some(PendingStatus::Open);
        Posted {
            transaction: Transaction {
                id: self.id,
                idempotency_key: header.key.to_owned(),
                kind: header.kind,
                legs: self.legs.to_vec(),
                type_code: header.type_code.to_owned(),
                external_reference: header.external_reference.to_owned(),
                effective_at: from_unix_micros(header.effective_at_micros),
                committed_at: from_unix_micros(committed_at_micros),
                metadata: header.metadata.clone(),
                related: header.related,
                expires_at: header.expires_at_micros.map(from_unix_micros),
                pending_status,
            },
            replayed: false,
        }
    }
}

async fn insert(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    header: &Header<'_>,
    legs: &[Leg],
    now: Timestamp,
) -> Result<Posted, Step> {
    let row = NewRow::new(header.clone(), legs);
    let inserted = insert_rows(
        connection,
        accounts,
        std::slice::from_ref(&row),
        now,
        Taken::AnyKey,
    )
    .await?;
    if !inserted[0] {
        return Err(taken(connection, header, now).await);
    }
    Ok(row.posted(to_unix_micros(now)))
}

/// A transaction row as the bulk insert reads it.
#[derive(Serialize)]
struct TransactionJson<'a> {
    transaction_id: &'a str,
    idempotency_key: &'a str,
    content: &'a str,
    kind: &'static str,
    type_code: &'a str,
    external_reference: &'a str,
    effective_at_micros: i64,
    committed_at_micros: i64,
    metadata: String,
    related_transaction_id: Option<String>,
    resolves_pending_id: Option<String>,
    reverses_id: Option<String>,
    expires_at_micros: Option<i64>,
}

const TRANSACTION_ROWS: JsonRows = JsonRows::new(&[
    ("transaction_id", ColumnType::Text),
    ("idempotency_key", ColumnType::Text),
    ("content", ColumnType::Text),
    ("kind", ColumnType::Text),
    ("type_code", ColumnType::Text),
    ("external_reference", ColumnType::Text),
    ("effective_at_micros", ColumnType::BigInt),
    ("committed_at_micros", ColumnType::BigInt),
    ("metadata", ColumnType::Text),
    ("related_transaction_id", ColumnType::Text),
    ("resolves_pending_id", ColumnType::Text),
    ("reverses_id", ColumnType::Text),
    ("expires_at_micros", ColumnType::BigInt),
]);

/// An entry row as the bulk insert reads it.
#[derive(Serialize)]
struct EntryJson<'a> {
    transaction_id: &'a str,
    leg: i64,
    account_id: String,
    unit: std::borrow::Cow<'a, str>,
    debit_minor: i64,
    credit_minor: i64,
    phase: &'static str,
    committed_at_micros: i64,
}

const ENTRY_ROWS: JsonRows = JsonRows::new(&[
    ("transaction_id", ColumnType::Text),
    ("leg", ColumnType::BigInt),
    ("account_id", ColumnType::Text),
    ("unit", ColumnType::Text),
    ("debit_minor", ColumnType::BigInt),
    ("credit_minor", ColumnType::BigInt),
    ("phase", ColumnType::Text),
    ("committed_at_micros", ColumnType::BigInt),
]);

/// Which taken keys a transaction insert skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Any: the idempotency key, a pending's resolution or a reversal.
    AnyKey,
    /// The idempotency key alone, for rows that resolve and reverse nothing (their partial
    /// unique indexes hold no entry for them). PostgreSQL then checks one unique index for a
    /// conflict before each insert instead of every one of them.
    IdempotencyKey,
}

/// New transaction rows, skipping any whose key (or pending resolution, or reversal) is already
/// taken: `ON CONFLICT DO NOTHING`, so one taken key never aborts the batch. Returns the ids that
/// landed. (`WHERE true` settles SQLite's parsing of an upsert whose rows come from a SELECT.)
fn insert_transactions_sql(
    backend: Backend,
    parameter: usize,
    taken: Taken,
    condition: &str,
) -> String {
    let conflict = match taken {
        Taken::AnyKey => "",
        Taken::IdempotencyKey => "(idempotency_key)",
    };
    format!(
        "INSERT INTO ledger_transactions ({}) SELECT {} FROM {} \
         WHERE {condition} ON CONFLICT {conflict} DO NOTHING RETURNING transaction_id",
        TRANSACTION_ROWS.names(),
        TRANSACTION_ROWS.columns("new_transaction"),
        TRANSACTION_ROWS.source(backend, parameter, "new_transaction")
    )
}

fn insert_entries_sql(backend: Backend, parameter: usize) -> String {
    format!(
        "INSERT INTO ledger_entries ({}) SELECT {} FROM {}",
        ENTRY_ROWS.names(),
        ENTRY_ROWS.columns("new_entry"),
        ENTRY_ROWS.source(backend, parameter, "new_entry")
    )
}

fn transaction_json<'a>(row: &'a NewRow<'_>, committed_at_micros: i64) -> TransactionJson<'a> {
    let header = &row.header;
    let (resolves, reverses) = match header.kind {
        TransactionKind::PostPending | TransactionKind::VoidPending => (header.related, None),
        TransactionKind::Reversal => (None, header.related),
        _ => (None, None),
    };
    TransactionJson {
        transaction_id: &row.id_text,
        idempotency_key: header.key,
        content: &header.content,
        kind: header.kind.as_str(),
        type_code: header.type_code,
        external_reference: header.external_reference,
        effective_at_micros: header.effective_at_micros,
        committed_at_micros,
        metadata: serde_json::to_string(header.metadata).expect("string metadata serializes"),
        related_transaction_id: header.related.map(|id| id.to_string()),
        resolves_pending_id: resolves.map(|id| id.to_string()),
        reverses_id: reverses.map(|id| id.to_string()),
        expires_at_micros: header.expires_at_micros,
    }
}

/// The entries of `rows`, each leg in its account's unit.
async fn entries_json<'a>(
    connection: &mut AnyConnection,
    accounts: &'a HashMap<AccountId, Account>,
    rows: &[&'a NewRow<'_>],
    committed_at_micros: i64,
) -> Result<Vec<EntryJson<'a>>, sqlx::Error> {
    let mut entries = Vec::new();
    for row in rows {
        let phase = if row.header.kind == TransactionKind::Pending {
            "PENDING"
        } else {
            "POSTED"
        };
        for (index, leg) in row.legs.iter().enumerate() {
            let unit = match accounts.get(&leg.account) {
                Some(account) => std::borrow::Cow::Borrowed(account.unit.as_str()),
                None => std::borrow::Cow::Owned(
                    sqlx::query_scalar("SELECT unit FROM ledger_accounts WHERE account_id = $1")
                        .bind(leg.account.to_string())
                        .fetch_one(&mut *connection)
                        .await?,
                ),
            };
            let (debit_minor, credit_minor) = match leg.direction {
                Direction::Debit => (leg.amount_minor, 0),
                Direction::Credit => (0, leg.amount_minor),
            };
            entries.push(EntryJson {
                transaction_id: &row.id_text,
                leg: index as i64,
                account_id: leg.account.to_string(),
                unit,
                debit_minor,
                credit_minor,
                phase,
                committed_at_micros,
            });
        }
    }
    Ok(entries)
}

/// Inserts transaction rows, then the entries of those that landed: two statements, whatever the
/// batch's size. Returns, for each row, whether it landed.
async fn insert_rows(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    rows: &[NewRow<'_>],
    now: Timestamp,
    taken: Taken,
) -> Result<Vec<bool>, sqlx::Error> {
    let backend = Backend::of(connection);
    let committed_at_micros = to_unix_micros(now);
    let transactions = transactions_json(rows, committed_at_micros);
    let landed: std::collections::HashSet<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(
        insert_transactions_sql(backend, 1, taken, "true"),
    ))
    .bind(TRANSACTION_ROWS.to_json(&transactions))
    .fetch_all(&mut *connection)
    .await?
    .into_iter()
    .collect();
    let inserted = which_landed(rows, &landed);
    let with_entries: Vec<&NewRow<'_>> = rows
        .iter()
        .zip(&inserted)
        .filter_map(|(row, inserted)| inserted.then_some(row))
        .collect();
    let entries = entries_json(connection, accounts, &with_entries, committed_at_micros).await?;
    if !entries.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(insert_entries_sql(backend, 1)))
            .bind(ENTRY_ROWS.to_json(&entries))
            .execute(&mut *connection)
            .await?;
    }
    Ok(inserted)
}

/// Writes plain transfers on PostgreSQL in one statement, committed on its own: the transactions
/// and, for those that landed, their entries. Returns, for each row, whether it landed; `None`,
/// having written nothing, when the commit seal has moved past `now` (see `checkpoints`). The
/// statement holds the seal shared, as a batch's transaction does, and finds its time fresh:
/// a row lock that waited for a sealing reads the row as the sealing left it.
async fn insert_rows_alone(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    rows: &[NewRow<'_>],
    now: Timestamp,
) -> Result<Option<Vec<bool>>, sqlx::Error> {
    let committed_at_micros = to_unix_micros(now);
    let transactions = transactions_json(rows, committed_at_micros);
    let all: Vec<&NewRow<'_>> = rows.iter().collect();
    let entries = entries_json(connection, accounts, &all, committed_at_micros).await?;
    let query = format!(
        "WITH seal AS (SELECT sealed_before_micros FROM ledger_commit_seal WHERE seal_id = 1 \
         FOR SHARE), landed AS ({}), new_entries AS ({} WHERE new_entry.transaction_id IN \
         (SELECT transaction_id FROM landed)) SELECT transaction_id FROM landed \
         UNION ALL SELECT '' FROM seal WHERE sealed_before_micros > $3",
        insert_transactions_sql(
            Backend::Postgres,
            1,
            Taken::IdempotencyKey,
            "(SELECT sealed_before_micros FROM seal) <= $3"
        ),
        insert_entries_sql(Backend::Postgres, 2)
    );
    let landed: std::collections::HashSet<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(TRANSACTION_ROWS.to_json(&transactions))
        .bind(ENTRY_ROWS.to_json(&entries))
        .bind(committed_at_micros)
        .fetch_all(&mut *connection)
        .await?
        .into_iter()
        .collect();
    if landed.contains("") {
        return Ok(None);
    }
    Ok(Some(which_landed(rows, &landed)))
}

/// The transaction rows of a batch, as its insert reads them.
fn transactions_json<'a>(
    rows: &'a [NewRow<'_>],
    committed_at_micros: i64,
) -> Vec<TransactionJson<'a>> {
    rows.iter()
        .map(|row| transaction_json(row, committed_at_micros))
        .collect()
}

/// For each row, whether its id is among those the insert returned.
fn which_landed(rows: &[NewRow<'_>], landed: &std::collections::HashSet<String>) -> Vec<bool> {
    rows.iter()
        .map(|row| landed.contains(&row.id_text))
        .collect()
}

/// Posts a batch's plain transfers together: transactions without a guarded account, which need
/// no look-up before their insert. Each is checked on its own (a refused one is skipped), then
/// all are inserted in bulk; one whose key was already taken is answered as a replay or a
/// conflict, as a single post would be. `alone`: the batch is nothing but these, on
/// PostgreSQL, outside a transaction, so one statement writes and commits it all.
pub(crate) async fn post_plain(
    connection: &mut AnyConnection,
    accounts: &HashMap<AccountId, Account>,
    jobs: &[(&str, &WriteRequest, &NewTransaction)],
    now: Timestamp,
    alone: bool,
) -> Result<PlainOutcome, sqlx::Error> {
    let mut outcomes: Vec<Result<Posted, LedgerError>> = Vec::with_capacity(jobs.len());
    let mut rows = Vec::with_capacity(jobs.len());
    let mut positions = Vec::with_capacity(jobs.len());
    for (position, (key, request, transaction)) in jobs.iter().enumerate() {
        match checked_header(accounts, key, request, transaction, now) {
            Ok(header) => {
                rows.push(NewRow::new(header, &transaction.legs));
                positions.push(position);
                // Answered below, once the insert tells whether the key was free.
                outcomes.push(Err(LedgerError::Stopped));
            }
            Err(error) => outcomes.push(Err(error)),
        }
    }
    if rows.is_empty() {
        return Ok(PlainOutcome::Finished(outcomes));
    }
    let inserted = if alone {
        match insert_rows_alone(connection, accounts, &rows, now).await? {
            Some(inserted) => inserted,
            None => return Ok(PlainOutcome::SealedPast),
        }
    } else {
        insert_rows(connection, accounts, &rows, now, Taken::IdempotencyKey).await?
    };
    let committed_at_micros = to_unix_micros(now);
    for ((row, inserted), position) in rows.iter().zip(inserted).zip(positions) {
        outcomes[position] = if inserted {
            Ok(row.posted(committed_at_micros))
        } else {
            match taken(connection, &row.header, now).await {
                Step::Replayed(posted) => Ok(posted),
                Step::Refused(error) => Err(error),
                Step::Database(error) => return Err(error),
            }
        };
    }
    Ok(PlainOutcome::Finished(outcomes))
}

/// What a batch of plain transfers came to.
pub(crate) enum PlainOutcome {
    /// Each transfer's outcome.
    Finished(Vec<Result<Posted, LedgerError>>),
    /// Nothing written: a batch written alone found the commit seal past its time.
    SealedPast,
}

impl PlainOutcome {
    pub(crate) fn finished(self) -> Option<Vec<Result<Posted, LedgerError>>> {
        match self {
            Self::Finished(outcomes) => Some(outcomes),
            Self::SealedPast => None,
        }
    }
}

/// The row of a new transaction, or why it is refused: an unknown account or legs that do not
/// balance. Guards are checked separately, inside the write.
fn checked_header<'a>(
    accounts: &HashMap<AccountId, Account>,
    key: &'a str,
    request: &'a WriteRequest,
    transaction: &'a NewTransaction,
    now: Timestamp,
) -> Result<Header<'a>, LedgerError> {
    let mut resolved = Vec::with_capacity(transaction.legs.len());
    for leg in &transaction.legs {
        let account = accounts
            .get(&leg.account)
            .ok_or(LedgerError::AccountNotFound(leg.account))?;
        resolved.push((leg, &account.unit));
    }
    check_balanced(resolved).map_err(LedgerError::Unbalanced)?;
    Ok(new_header(key, request, transaction, now))
}

/// Whether a request is a plain transfer: a post touching no guarded account, whose checks do
/// not depend on the ledger's history.
pub(crate) fn is_plain(request: &WriteRequest, accounts: &HashMap<AccountId, Account>) -> bool {
    match request {
        WriteRequest::Post(transaction) => transaction.legs.iter().all(|leg| {
            accounts
                .get(&leg.account)
                .is_some_and(|account| account.guard == Guard::None)
        }),
        WriteRequest::Resolve { .. } | WriteRequest::Reverse { .. } => false,
    }
}

/// Why an insert found its place taken: the key was used (a replay or a conflict), or the
/// pending transaction was resolved, or the original reversed, by a concurrent writer.
async fn taken(connection: &mut AnyConnection, header: &Header<'_>, now: Timestamp) -> Step {
    match replay(connection, header.key, header.request, now).await {
        Ok(Some(posted)) => Step::Replayed(posted),
        Err(step) => step,
        Ok(None) => {
            let related = header.related.unwrap_or_else(TransactionId::generate);
            match header.kind {
                TransactionKind::PostPending | TransactionKind::VoidPending => {
                    LedgerError::AlreadyResolved(related, PendingStatus::Posted).into()
                }
                TransactionKind::Reversal => LedgerError::AlreadyReversed(related).into(),
                _ => Step::Database(corrupt(format!(
                    "transaction insert for key {} conflicted with nothing",
                    header.key
                ))),
            }
        }
    }
}

/// One entry as it landed on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub transaction_id: TransactionId,
    pub leg: i64,
    pub kind: TransactionKind,
    pub direction: Direction,
    pub amount_minor: i64,
    pub effective_at: Timestamp,
    pub committed_at: Timestamp,
}

/// Where a page of entries ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryCursor {
    pub committed_at_micros: i64,
    pub transaction_id: String,
    pub leg: i64,
}

pub(crate) async fn entries(
    connection: &mut AnyConnection,
    account: AccountId,
    after: Option<&EntryCursor>,
    limit: usize,
) -> Result<Vec<Entry>, sqlx::Error> {
    // The first page starts before every entry: no commit time is i64::MIN and no transaction
    // id is empty. The bound on commit time alone is what the index by account can seek to.
    let (micros, transaction, leg) = after.map_or((i64::MIN, String::new(), 0), |cursor| {
        (
            cursor.committed_at_micros,
            cursor.transaction_id.clone(),
            cursor.leg,
        )
    });
    let rows: Vec<(String, i64, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT e.transaction_id, e.leg, t.kind, e.debit_minor, e.credit_minor, t.effective_at_micros, e.committed_at_micros \
         FROM ledger_entries e JOIN ledger_transactions t ON t.transaction_id = e.transaction_id \
         WHERE e.account_id = $1 AND e.committed_at_micros >= $2 \
           AND (e.committed_at_micros > $2 OR e.transaction_id > $3 OR (e.transaction_id = $3 AND e.leg > $4)) \
         ORDER BY e.committed_at_micros, e.transaction_id, e.leg LIMIT $5",
    )
    .bind(account.to_string())
    .bind(micros)
    .bind(transaction)
    .bind(leg)
    .bind(limit as i64)
    .fetch_all(connection)
    .await?;
    rows.into_iter()
        .map(
            |(transaction_id, leg, kind, debit, credit, effective, committed)| {
                Ok(Entry {
                    transaction_id: transaction_id
                        .parse()
                        .map_err(|_| corrupt(format!("entry {transaction_id}: id")))?,
                    leg,
                    kind: TransactionKind::parse(&kind)
                        .ok_or_else(|| corrupt(format!("entry {transaction_id}: kind")))?,
                    direction: if debit > 0 {
                        Direction::Debit
                    } else {
                        Direction::Credit
                    },
                    amount_minor: debit.max(credit),
                    effective_at: from_unix_micros(effective),
                    committed_at: from_unix_micros(committed),
                })
            },
        )
        .collect()
}

pub(crate) async fn transactions_by_reference(
    connection: &mut AnyConnection,
    reference: &str,
    now: Timestamp,
) -> Result<Vec<Transaction>, sqlx::Error> {
    let query = format!(
        "SELECT {TRANSACTION_COLUMNS} FROM ledger_transactions WHERE external_reference = $1 ORDER BY committed_at_micros, transaction_id LIMIT 1000"
    );
    let rows: Vec<TransactionRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(reference)
        .fetch_all(&mut *connection)
        .await?;
    let mut transactions = Vec::with_capacity(rows.len());
    for row in rows {
        transactions.push(complete(connection, row, now).await?);
    }
    Ok(transactions)
}

/// Posted debits and credits per unit, across every account.
pub(crate) async fn trial_balance(
    connection: &mut AnyConnection,
) -> Result<Vec<(Unit, i64, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT unit, CAST(COALESCE(SUM(debit_minor), 0) AS BIGINT), CAST(COALESCE(SUM(credit_minor), 0) AS BIGINT) \
         FROM ledger_entries WHERE phase = 'POSTED' GROUP BY unit ORDER BY unit",
    )
    .fetch_all(connection)
    .await?;
    rows.into_iter()
        .map(|(unit, debits, credits)| {
            Ok((
                Unit::parse(&unit).map_err(|_| corrupt(format!("unit {unit}")))?,
                debits,
                credits,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored digests are compared with new requests' digests for as long as the rows live, so
    /// a request's digest must stay the SHA-256 of its JSON, in lower-case hex, after the prefix.
    #[test]
    fn a_digest_is_the_sha256_of_the_requests_json() {
        use sha2::Digest;
        let requests = [
            WriteRequest::Post(NewTransaction {
                idempotency_key: "earn:1".to_owned(),
                legs: vec![
                    Leg {
                        account: AccountId::generate(),
                        direction: Direction::Debit,
                        amount_minor: 1_500,
                    },
                    Leg {
                        account: AccountId::generate(),
                        direction: Direction::Credit,
                        amount_minor: 1_500,
                    },
                ],
                kind: NewKind::Pending {
                    timeout_seconds: 3_600,
                },
                type_code: "EARN".to_owned(),
                external_reference: "ride \"42\"".to_owned(),
                effective_at_micros: Some(1_700_000_000_000_000),
                metadata: [("earning_id".to_owned(), "é\n".to_owned())].into(),
            }),
            WriteRequest::Resolve {
                pending: TransactionId::generate(),
                resolution: Resolution::Void,
            },
            WriteRequest::Reverse {
                original: TransactionId::generate(),
                reason: "refund".to_owned(),
            },
        ];
        for request in requests {
            let json = serde_json::to_string(&request).unwrap();
            let expected = format!("sha256:{:x}", sha2::Sha256::digest(json.as_bytes()));
            assert_eq!(request.digest(), expected);
            assert_eq!(request.digest().len(), DIGEST_PREFIX.len() + 64);
        }
    }
}
