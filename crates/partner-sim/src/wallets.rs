//! The wallet store. Each operation runs in one write transaction: look up the key, decide,
//! apply, record. A key is applied at most once, whatever the concurrency.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::AnyConnection;
use tandem_storage::{Backend, ColumnType, Database, JsonRows};

/// Why the program refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownMember,
    MemberBlocked,
    InsufficientPoints,
    KeyConflict,
    AlreadyReversed,
    PartnerRule,
    /// A movement of a batch that is malformed; the single RPCs answer INVALID_ARGUMENT.
    InvalidRequest,
}

/// A definite answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied { balance_after_minor: i64 },
    AlreadyApplied { balance_after_minor: i64 },
    Refused(Refusal),
}

/// Which way points move in a member's wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    Debit,
    Credit,
}

impl Movement {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Movement::Debit => "DEBIT",
            Movement::Credit => "CREDIT",
        }
    }
}

/// The simulated program's wallets.
#[derive(Debug, Clone)]
pub struct Wallets {
    database: Database,
    /// Connections of its own for batches, which find every row by key.
    batches: Database,
}

async fn balance(
    connection: &mut AnyConnection,
    member: &str,
) -> Result<Option<(i64, bool)>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT balance_minor, in_good_standing FROM sim_members WHERE member_id = $1",
    )
    .bind(member)
    .fetch_optional(connection)
    .await?;
    Ok(row.map(|(balance, standing)| (balance, standing != 0)))
}

async fn operation(
    connection: &mut AnyConnection,
    key: &str,
) -> Result<Option<(String, String, i64, Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, member_id, amount_minor, original_key, reversed_by FROM sim_operations WHERE transaction_key = $1")
        .bind(key)
        .fetch_optional(connection)
        .await
}

impl Wallets {
    pub fn new(database: Database) -> Self {
        Self {
            batches: database.keyed(4),
            database,
        }
    }

    /// Creates or replaces a member.
    pub async fn put_member(
        &self,
        member: &str,
        balance_minor: i64,
        in_good_standing: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO sim_members (member_id, balance_minor, in_good_standing) VALUES ($1, $2, $3) \
             ON CONFLICT (member_id) DO UPDATE SET balance_minor = excluded.balance_minor, in_good_standing = excluded.in_good_standing",
        )
        .bind(member)
        .bind(balance_minor)
        .bind(i64::from(in_good_standing))
        .execute(self.database.pool())
        .await?;
        Ok(())
    }

    /// Whether the program has stored an operation (or a void) under `key`.
    pub async fn knows(&self, key: &str) -> Result<bool, sqlx::Error> {
        let mut connection = self.database.pool().acquire().await?;
        Ok(operation(&mut connection, key).await?.is_some())
    }

    /// A member's balance and standing.
    pub async fn member(&self, member: &str) -> Result<Option<(i64, bool)>, sqlx::Error> {
        let mut connection = self.database.pool().acquire().await?;
        balance(&mut connection, member).await
    }

    /// Debits or credits a member once per key: a repeat of the same operation is already
    /// applied, a different operation under the same key is refused.
    pub async fn apply(&self, requested: &Move) -> Result<Outcome, sqlx::Error> {
        let (key, member, amount_minor, kind) = (
            requested.key.as_str(),
            requested.member.as_str(),
            requested.amount_minor,
            requested.movement,
        );
        let mut transaction = self.database.begin_write().await?;
        if let Some((stored_kind, stored_member, stored_amount, _, _)) =
            operation(&mut transaction, key).await?
        {
            let same = stored_kind == kind.as_str()
                && stored_member == member
                && stored_amount == amount_minor;
            if !same {
                return Ok(Outcome::Refused(Refusal::KeyConflict));
            }
            let (balance_after_minor, _) =
                balance(&mut transaction, member).await?.unwrap_or_default();
            return Ok(Outcome::AlreadyApplied {
                balance_after_minor,
            });
        }
        let Some((_, in_good_standing)) = balance(&mut transaction, member).await? else {
            return Ok(Outcome::Refused(Refusal::UnknownMember));
        };
        if !in_good_standing {
            return Ok(Outcome::Refused(Refusal::MemberBlocked));
        }
        let delta = match kind {
            Movement::Debit => -amount_minor,
            Movement::Credit => amount_minor,
        };
        // Relative and guarded in one statement: concurrent movements on one member queue on its
        // row and each sees the balance the previous one left, so none is lost.
        let Some(balance_after_minor) = move_balance(&mut transaction, member, delta, true).await?
        else {
            return Ok(Outcome::Refused(Refusal::InsufficientPoints));
        };
        record(
            &mut transaction,
            key,
            kind.as_str(),
            member,
            amount_minor,
            (None, (&requested.tandem_reference, &requested.tandem_kind)),
        )
        .await?;
        transaction.commit().await?;
        Ok(Outcome::Applied {
            balance_after_minor,
        })
    }

    /// Undoes the operation under `original`. If it was never seen, its key becomes void, so
    /// that it is refused should it arrive later: a reversal is never overtaken.
    pub async fn reverse(&self, key: &str, original: &str) -> Result<Outcome, sqlx::Error> {
        let mut transaction = self.database.begin_write().await?;
        if let Some((kind, member, _, stored_original, _)) =
            operation(&mut transaction, key).await?
        {
            if kind != "REVERSAL" || stored_original.as_deref() != Some(original) {
                return Ok(Outcome::Refused(Refusal::KeyConflict));
            }
            let (balance_after_minor, _) = balance(&mut transaction, &member)
                .await?
                .unwrap_or_default();
            return Ok(Outcome::AlreadyApplied {
                balance_after_minor,
            });
        }
        let outcome = match operation(&mut transaction, original).await? {
            None => {
                record_void(&mut transaction, key, original).await?;
                Outcome::Applied {
                    balance_after_minor: 0,
                }
            }
            Some((_, _, _, _, Some(_))) => return Ok(Outcome::Refused(Refusal::AlreadyReversed)),
            Some((kind, _, _, _, None)) if kind == "REVERSAL" || kind == "VOID" => {
                return Ok(Outcome::Refused(Refusal::KeyConflict));
            }
            Some((kind, member, amount, _, None)) => {
                // Undoing a credit may leave the member below zero if they spent the points; the
                // books must still be restored, so the program lets the balance go negative.
                let delta = if kind == "DEBIT" { amount } else { -amount };
                // Claim the original first, so two reversals racing under different keys undo
                // it once.
                let claimed = sqlx::query(
                    "UPDATE sim_operations SET reversed_by = $1 \
                     WHERE transaction_key = $2 AND reversed_by IS NULL",
                )
                .bind(key)
                .bind(original)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                if claimed == 0 {
                    return Ok(Outcome::Refused(Refusal::AlreadyReversed));
                }
                let balance_after_minor = move_balance(&mut transaction, &member, delta, false)
                    .await?
                    .unwrap_or_default();
                record(
                    &mut transaction,
                    key,
                    "REVERSAL",
                    &member,
                    amount,
                    (Some(original), ("", "")),
                )
                .await?;
                Outcome::Applied {
                    balance_after_minor,
                }
            }
        };
        transaction.commit().await?;
        Ok(outcome)
    }
}

/// Adds `delta` to a member's balance and returns the new balance; with `guarded`, only if it
/// stays at or above zero (`None` otherwise).
async fn move_balance(
    connection: &mut AnyConnection,
    member: &str,
    delta: i64,
    guarded: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let statement = if guarded {
        "UPDATE sim_members SET balance_minor = balance_minor + $1 \
         WHERE member_id = $2 AND balance_minor + $1 >= 0 RETURNING balance_minor"
    } else {
        "UPDATE sim_members SET balance_minor = balance_minor + $1 \
         WHERE member_id = $2 RETURNING balance_minor"
    };
    sqlx::query_scalar(statement)
        .bind(delta)
        .bind(member)
        .fetch_optional(connection)
        .await
}

/// The reversal `key` of a key never seen: `original` becomes a void reversed by it, so that it
/// is refused should it arrive later.
async fn record_void(
    connection: &mut AnyConnection,
    key: &str,
    original: &str,
) -> Result<(), sqlx::Error> {
    record(connection, original, "VOID", "", 0, (None, ("", ""))).await?;
    sqlx::query("UPDATE sim_operations SET reversed_by = $1 WHERE transaction_key = $2")
        .bind(key)
        .bind(original)
        .execute(&mut *connection)
        .await?;
    record(
        connection,
        key,
        "REVERSAL",
        "",
        0,
        (Some(original), ("", "")),
    )
    .await
}

/// Stores an operation; `(original, (tandem_reference, tandem_kind))`: the key a reversal
/// undoes, and what Tandem said a move is for.
async fn record(
    connection: &mut AnyConnection,
    key: &str,
    kind: &str,
    member: &str,
    amount_minor: i64,
    (original, (tandem_reference, tandem_kind)): (Option<&str>, (&str, &str)),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sim_operations (transaction_key, kind, member_id, amount_minor, \
         original_key, applied_at_micros, tandem_reference, tandem_kind) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(key)
    .bind(kind)
    .bind(member)
    .bind(amount_minor)
    .bind(original)
    .bind(tandem_domain::to_unix_micros(tandem_domain::now()))
    .bind(tandem_reference)
    .bind(tandem_kind)
    .execute(connection)
    .await?;
    Ok(())
}

/// One of the program's own records of a movement, as a partner reports it to Tandem for
/// reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReportedMovement {
    /// The program's own id for it: Tandem's transaction key.
    pub transaction_key: String,
    pub tandem_reference: String,
    pub tandem_kind: String,
    /// Credited to the member positive, debited negative.
    pub points: i64,
    pub applied_at_micros: i64,
}

impl Wallets {
    /// The movements applied in `[from_micros, to_micros)` that still stand, in the order they
    /// were applied, as a partner reports them: a debit or credit later undone by ReversePoints
    /// never happened for Tandem's ledger either, and a void moved nothing. Read as a stream.
    pub fn reported_movements(
        &self,
        from_micros: i64,
        to_micros: i64,
    ) -> impl futures::Stream<Item = Result<ReportedMovement, sqlx::Error>> + '_ {
        sqlx::query_as(
            "SELECT transaction_key, tandem_reference, tandem_kind, \
             CASE WHEN kind = 'DEBIT' THEN -amount_minor ELSE amount_minor END AS points, \
             applied_at_micros FROM sim_operations \
             WHERE kind IN ('DEBIT', 'CREDIT') AND reversed_by IS NULL \
             AND tandem_reference <> '' AND applied_at_micros >= $1 AND applied_at_micros < $2 \
             ORDER BY applied_at_micros, transaction_key",
        )
        .bind(from_micros)
        .bind(to_micros)
        .fetch(self.database.pool())
    }
}

/// A debit or credit of a member, with what Tandem says it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub key: String,
    pub member: String,
    pub amount_minor: i64,
    pub movement: Movement,
    /// The conversion or activity id Tandem sent with it, kept for reconciliation.
    pub tandem_reference: String,
    /// CONVERSION, EARN or REVERSAL, as Tandem sent it.
    pub tandem_kind: String,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A debit or credit of a member.
    Move(Move),
    /// The undoing of the operation under `original`.
    Reverse { key: String, original: String },
}

impl Operation {
    /// The transaction key the operation is asked under.
    pub fn key(&self) -> &str {
        match self {
            Operation::Move(Move { key, .. }) | Operation::Reverse { key, .. } => key,
        }
    }
}

/// An operation as stored: its kind (DEBIT, CREDIT, REVERSAL or VOID), member, amount, the key
/// a reversal undoes, and the reversal that undid it.
#[derive(Debug, Clone)]
struct StoredOperation {
    kind: String,
    member: String,
    amount_minor: i64,
    original: Option<String>,
    reversed_by: Option<String>,
    /// What Tandem said a new move is for; empty for reversals, voids, and operations read back
    /// (a batch only decides on those, and never rewrites them).
    tandem_reference: String,
    tandem_kind: String,
}

impl StoredOperation {
    fn read(
        kind: String,
        member: String,
        amount_minor: i64,
        original: Option<String>,
        reversed_by: Option<String>,
    ) -> Self {
        Self {
            kind,
            member,
            amount_minor,
            original,
            reversed_by,
            tandem_reference: String::new(),
            tandem_kind: String::new(),
        }
    }
}

/// A member's wallet as a batch sees it.
#[derive(Debug, Clone, Copy)]
struct Wallet {
    balance_minor: i64,
    in_good_standing: bool,
    changed: bool,
}

/// A batch worked out in memory: the outcomes, and the writes that make them true.
#[derive(Default)]
struct Plan {
    outcomes: Vec<Outcome>,
    /// New operations, in order, with the reversal that already undid them (a key reversed
    /// before it was seen becomes a VOID undone by that reversal).
    inserts: Vec<(String, StoredOperation)>,
    /// Operations stored before the batch that a reversal in it claims.
    claims: Vec<(String, String)>,
}

/// How many times a batch that lost a race with another (the same new key, or a deadlock) is
/// worked out again from what is then stored.
const BATCH_ATTEMPTS: usize = 5;

impl Wallets {
    /// Applies operations in order, each exactly as [`Wallets::apply`] or [`Wallets::reverse`]
    /// would, in one write transaction: the stored operations and wallets a batch names are read
    /// once (the wallets locked, in member order), every outcome is worked out in memory, and the
    /// writes go out in a few multi-row statements.
    pub async fn apply_batch(&self, operations: &[Operation]) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_batch(operations).await {
                Ok(Some(outcomes)) => return Ok(outcomes),
                Ok(None) if attempt < BATCH_ATTEMPTS => {
                    tracing::debug!(attempt, "another batch reversed an operation first");
                }
                Err(error)
                    if attempt < BATCH_ATTEMPTS
                        && (tandem_storage::is_retryable_conflict(&error)
                            || tandem_storage::violates_unique(
                                &error,
                                "sim_operations_by_key",
                                "sim_operations.transaction_key",
                            )) =>
                {
                    tracing::debug!(%error, attempt, "a batch raced another; working it out again");
                }
                Ok(None) => {
                    return Err(sqlx::Error::Protocol(
                        "concurrent batches kept reversing the same operations".to_owned(),
                    ));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt at a batch; `None` when another batch claimed an operation first, and
    /// nothing was written.
    async fn try_batch(
        &self,
        operations: &[Operation],
    ) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
        let mut transaction = self.batches.begin_write().await?;
        let mut keys: Vec<&str> = Vec::with_capacity(operations.len() * 2);
        for operation in operations {
            match operation {
                Operation::Move(Move { key, .. }) => keys.push(key),
                Operation::Reverse { key, original } => keys.extend([key.as_str(), original]),
            }
        }
        let named: Vec<&str> = operations
            .iter()
            .filter_map(|operation| match operation {
                Operation::Move(Move { member, .. }) => Some(member.as_str()),
                Operation::Reverse { .. } => None,
            })
            .collect();
        let (mut stored, mut wallets) = match self.batches.backend() {
            Backend::Postgres => read_and_lock(&mut transaction, &keys, &named).await?,
            Backend::Sqlite => {
                // SQLite's write lock already keeps every other batch out.
                let stored = stored_operations(&mut transaction, &keys).await?;
                let mut members: Vec<&str> = named
                    .iter()
                    .copied()
                    .chain(stored.values().map(|operation| operation.member.as_str()))
                    .filter(|member| !member.is_empty())
                    .collect();
                members.sort_unstable();
                members.dedup();
                let wallets = wallets(&mut transaction, &members).await?;
                (stored, wallets)
            }
        };
        let plan = work_out(operations, &mut stored, &mut wallets);
        if !write_plan(&mut transaction, &plan, &wallets).await? {
            return Ok(None);
        }
        transaction.commit().await?;
        Ok(Some(plan.outcomes))
    }
}

async fn stored_operations(
    connection: &mut AnyConnection,
    keys: &[&str],
) -> Result<HashMap<String, StoredOperation>, sqlx::Error> {
    let query = format!(
        "SELECT transaction_key, kind, member_id, amount_minor, original_key, reversed_by \
         FROM sim_operations WHERE transaction_key IN (SELECT key FROM {})",
        KEYS.source(Backend::of(connection), 1, "wanted")
    );
    let rows: Vec<OperationRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(keys_json(keys))
        .fetch_all(&mut *connection)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(key, kind, member, amount_minor, original, reversed_by)| {
            (
                key,
                StoredOperation::read(kind, member, amount_minor, original, reversed_by),
            )
        })
        .collect())
}

/// An operation as read: key, kind, member, amount, original key, reversed by.
type OperationRow = (String, String, String, i64, Option<String>, Option<String>);

/// A list of keys as JSON rows of one column.
const KEYS: JsonRows = JsonRows::new(&[("key", ColumnType::Text)]);

fn keys_json(keys: &[&str]) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        key: &'a str,
    }
    KEYS.to_json(&keys.iter().map(|key| Key { key }).collect::<Vec<_>>())
}

/// The wallets of `members`.
async fn wallets(
    connection: &mut AnyConnection,
    members: &[&str],
) -> Result<HashMap<String, Wallet>, sqlx::Error> {
    let query = format!(
        "SELECT member_id, balance_minor, in_good_standing FROM sim_members \
         WHERE member_id IN (SELECT key FROM {})",
        KEYS.source(Backend::of(connection), 1, "wanted")
    );
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(keys_json(members))
        .fetch_all(&mut *connection)
        .await?;
    Ok(rows.into_iter().map(wallet_of).collect())
}

fn wallet_of((member, balance_minor, standing): (String, i64, i64)) -> (String, Wallet) {
    (
        member,
        Wallet {
            balance_minor,
            in_good_standing: standing != 0,
            changed: false,
        },
    )
}

/// On PostgreSQL, in one round trip: the operations stored under `keys`, and the wallets of the
/// members `named` and of those operations, locked in member order, so that concurrent batches
/// take them in one order and never deadlock on them.
async fn read_and_lock(
    connection: &mut AnyConnection,
    keys: &[&str],
    named: &[&str],
) -> Result<(HashMap<String, StoredOperation>, HashMap<String, Wallet>), sqlx::Error> {
    let query = format!(
        "WITH wanted_operations AS ( \
           SELECT transaction_key, kind, member_id, amount_minor, original_key, reversed_by \
           FROM sim_operations WHERE transaction_key IN (SELECT key FROM {keys})), \
         locked_wallets AS ( \
           SELECT member_id, balance_minor, in_good_standing FROM sim_members \
           WHERE member_id IN (SELECT key FROM {named}) \
           OR member_id IN (SELECT member_id FROM wanted_operations) \
           ORDER BY member_id FOR UPDATE) \
         SELECT transaction_key, kind, member_id, amount_minor, original_key, reversed_by, \
           CAST(NULL AS BIGINT) AS balance_minor, CAST(NULL AS BIGINT) AS in_good_standing \
         FROM wanted_operations \
         UNION ALL \
         SELECT CAST(NULL AS TEXT), CAST(NULL AS TEXT), member_id, CAST(NULL AS BIGINT), \
           CAST(NULL AS TEXT), CAST(NULL AS TEXT), balance_minor, in_good_standing \
         FROM locked_wallets",
        keys = KEYS.source(Backend::Postgres, 1, "wanted_keys"),
        named = KEYS.source(Backend::Postgres, 2, "named_members"),
    );
    let rows: Vec<StateRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(keys_json(keys))
        .bind(keys_json(named))
        .fetch_all(&mut *connection)
        .await?;
    let mut stored = HashMap::new();
    let mut wallets = HashMap::new();
    for (key, kind, member, amount_minor, original, reversed_by, balance, standing) in rows {
        match (key, kind, amount_minor, balance, standing) {
            (Some(key), Some(kind), Some(amount_minor), _, _) => {
                let operation =
                    StoredOperation::read(kind, member, amount_minor, original, reversed_by);
                stored.insert(key, operation);
            }
            (_, _, _, Some(balance), Some(standing)) => {
                let (member, wallet) = wallet_of((member, balance, standing));
                wallets.insert(member, wallet);
            }
            _ => {
                return Err(sqlx::Error::Protocol(
                    "an unreadable batch state row".to_owned(),
                ));
            }
        }
    }
    Ok((stored, wallets))
}

/// A row of [`read_and_lock`]: an operation (key, kind, member, amount, original, reversed by)
/// or a wallet (member, balance, standing), the other columns NULL.
type StateRow = (
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Works out every operation in order against the stored state, updating it in memory as each
/// applies, so a later operation sees what an earlier one did.
fn work_out(
    operations: &[Operation],
    stored: &mut HashMap<String, StoredOperation>,
    wallets: &mut HashMap<String, Wallet>,
) -> Plan {
    let mut plan = Plan::default();
    for operation in operations {
        let outcome = match operation {
            Operation::Move(movement) => work_out_move(&mut plan, stored, wallets, movement),
            Operation::Reverse { key, original } => {
                work_out_reversal(&mut plan, stored, wallets, key, original)
            }
        };
        plan.outcomes.push(outcome);
    }
    plan
}

fn balance_of(wallets: &HashMap<String, Wallet>, member: &str) -> i64 {
    wallets.get(member).map_or(0, |wallet| wallet.balance_minor)
}

fn work_out_move(
    plan: &mut Plan,
    stored: &mut HashMap<String, StoredOperation>,
    wallets: &mut HashMap<String, Wallet>,
    requested: &Move,
) -> Outcome {
    let (key, member, amount_minor, movement) = (
        requested.key.as_str(),
        requested.member.as_str(),
        requested.amount_minor,
        requested.movement,
    );
    if let Some(existing) = stored.get(key) {
        let same = existing.kind == movement.as_str()
            && existing.member == member
            && existing.amount_minor == amount_minor;
        if !same {
            return Outcome::Refused(Refusal::KeyConflict);
        }
        return Outcome::AlreadyApplied {
            balance_after_minor: balance_of(wallets, member),
        };
    }
    let Some(wallet) = wallets.get_mut(member) else {
        return Outcome::Refused(Refusal::UnknownMember);
    };
    if !wallet.in_good_standing {
        return Outcome::Refused(Refusal::MemberBlocked);
    }
    let delta = match movement {
        Movement::Debit => -amount_minor,
        Movement::Credit => amount_minor,
    };
    let Some(balance_after_minor) = wallet
        .balance_minor
        .checked_add(delta)
        .filter(|balance| *balance >= 0)
    else {
        return Outcome::Refused(Refusal::InsufficientPoints);
    };
    wallet.balance_minor = balance_after_minor;
    wallet.changed = true;
    let operation = StoredOperation {
        kind: movement.as_str().to_owned(),
        member: member.to_owned(),
        amount_minor,
        original: None,
        reversed_by: None,
        tandem_reference: requested.tandem_reference.clone(),
        tandem_kind: requested.tandem_kind.clone(),
    };
    stored.insert(key.to_owned(), operation.clone());
    plan.inserts.push((key.to_owned(), operation));
    Outcome::Applied {
        balance_after_minor,
    }
}

/// A reversal of a key never seen: the key becomes void, so that it is refused should it arrive
/// later, and the reversal (`reversal`, undoing nothing) is stored under `key`.
fn void_unseen(
    plan: &mut Plan,
    stored: &mut HashMap<String, StoredOperation>,
    key: &str,
    original: &str,
    reversal: StoredOperation,
) {
    let void = StoredOperation {
        kind: "VOID".to_owned(),
        member: String::new(),
        amount_minor: 0,
        original: None,
        reversed_by: Some(key.to_owned()),
        tandem_reference: String::new(),
        tandem_kind: String::new(),
    };
    stored.insert(original.to_owned(), void.clone());
    plan.inserts.push((original.to_owned(), void));
    stored.insert(key.to_owned(), reversal.clone());
    plan.inserts.push((key.to_owned(), reversal));
}

/// Marks `original` reversed by `key`: one inserted by this batch carries its reversal from the
/// start; one stored before is claimed by an update that another batch cannot also win.
fn claim_original(
    plan: &mut Plan,
    stored: &mut HashMap<String, StoredOperation>,
    key: &str,
    original: &str,
) {
    match plan
        .inserts
        .iter_mut()
        .find(|(inserted, _)| inserted == original)
    {
        Some((_, inserted)) => inserted.reversed_by = Some(key.to_owned()),
        None => plan.claims.push((original.to_owned(), key.to_owned())),
    }
    if let Some(entry) = stored.get_mut(original) {
        entry.reversed_by = Some(key.to_owned());
    }
}

fn work_out_reversal(
    plan: &mut Plan,
    stored: &mut HashMap<String, StoredOperation>,
    wallets: &mut HashMap<String, Wallet>,
    key: &str,
    original: &str,
) -> Outcome {
    if let Some(existing) = stored.get(key) {
        if existing.kind != "REVERSAL" || existing.original.as_deref() != Some(original) {
            return Outcome::Refused(Refusal::KeyConflict);
        }
        return Outcome::AlreadyApplied {
            balance_after_minor: balance_of(wallets, &existing.member),
        };
    }
    let reversal = |member: &str, amount_minor: i64| {
        let original = Some(original.to_owned());
        StoredOperation::read(
            "REVERSAL".to_owned(),
            member.to_owned(),
            amount_minor,
            original,
            None,
        )
    };
    let Some(undone) = stored.get(original).cloned() else {
        void_unseen(plan, stored, key, original, reversal("", 0));
        return Outcome::Applied {
            balance_after_minor: 0,
        };
    };
    if undone.reversed_by.is_some() {
        return Outcome::Refused(Refusal::AlreadyReversed);
    }
    if undone.kind == "REVERSAL" || undone.kind == "VOID" {
        return Outcome::Refused(Refusal::KeyConflict);
    }
    // Undoing a credit may leave the member below zero if they spent the points; the books
    // must still be restored, so the program lets the balance go negative.
    let delta = if undone.kind == "DEBIT" {
        undone.amount_minor
    } else {
        -undone.amount_minor
    };
    let balance_after_minor = match wallets.get_mut(&undone.member) {
        Some(wallet) => {
            wallet.balance_minor += delta;
            wallet.changed = true;
            wallet.balance_minor
        }
        None => 0,
    };
    claim_original(plan, stored, key, original);
    let reversal = reversal(&undone.member, undone.amount_minor);
    stored.insert(key.to_owned(), reversal.clone());
    plan.inserts.push((key.to_owned(), reversal));
    Outcome::Applied {
        balance_after_minor,
    }
}

/// An operation row as the batch insert reads it.
#[derive(Serialize)]
struct NewOperation<'a> {
    transaction_key: &'a str,
    kind: &'a str,
    member_id: &'a str,
    amount_minor: i64,
    original_key: Option<&'a str>,
    reversed_by: Option<&'a str>,
    applied_at_micros: i64,
    tandem_reference: &'a str,
    tandem_kind: &'a str,
}

impl<'a> NewOperation<'a> {
    fn of(key: &'a str, operation: &'a StoredOperation, applied_at_micros: i64) -> Self {
        Self {
            transaction_key: key,
            kind: &operation.kind,
            member_id: &operation.member,
            amount_minor: operation.amount_minor,
            original_key: operation.original.as_deref(),
            reversed_by: operation.reversed_by.as_deref(),
            applied_at_micros,
            tandem_reference: &operation.tandem_reference,
            tandem_kind: &operation.tandem_kind,
        }
    }
}

const OPERATION_ROWS: JsonRows = JsonRows::new(&[
    ("transaction_key", ColumnType::Text),
    ("kind", ColumnType::Text),
    ("member_id", ColumnType::Text),
    ("amount_minor", ColumnType::BigInt),
    ("original_key", ColumnType::Text),
    ("reversed_by", ColumnType::Text),
    ("applied_at_micros", ColumnType::BigInt),
    ("tandem_reference", ColumnType::Text),
    ("tandem_kind", ColumnType::Text),
]);

/// A wallet's balance as the batch update reads it.
#[derive(Serialize)]
struct Moved<'a> {
    member_id: &'a str,
    balance_minor: i64,
}

const MOVED_ROWS: JsonRows = JsonRows::new(&[
    ("member_id", ColumnType::Text),
    ("balance_minor", ColumnType::BigInt),
]);

/// Writes a worked-out batch; false when a claim on a stored operation was lost to another
/// batch, in which case the transaction must be dropped and the batch worked out again. The
/// wallets are locked (or the whole database is, on SQLite), so writing the balances worked out
/// in memory loses no concurrent movement.
/// Claims, for their reversals, the originals stored before this batch; false when another
/// batch reversed one first.
async fn claim_originals(connection: &mut AnyConnection, plan: &Plan) -> Result<bool, sqlx::Error> {
    for (original, reversal) in &plan.claims {
        let claimed = sqlx::query(
            "UPDATE sim_operations SET reversed_by = $1 \
             WHERE transaction_key = $2 AND reversed_by IS NULL",
        )
        .bind(reversal.as_str())
        .bind(original.as_str())
        .execute(&mut *connection)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn write_plan(
    connection: &mut AnyConnection,
    plan: &Plan,
    wallets: &HashMap<String, Wallet>,
) -> Result<bool, sqlx::Error> {
    let now = tandem_domain::to_unix_micros(tandem_domain::now());
    if !claim_originals(connection, plan).await? {
        return Ok(false);
    }
    let operations: Vec<NewOperation<'_>> = plan
        .inserts
        .iter()
        .map(|(key, operation)| NewOperation::of(key, operation, now))
        .collect();
    let moved: Vec<Moved<'_>> = wallets
        .iter()
        .filter(|(_, wallet)| wallet.changed)
        .map(|(member, wallet)| Moved {
            member_id: member,
            balance_minor: wallet.balance_minor,
        })
        .collect();
    let backend = Backend::of(connection);
    let insert = |parameter| {
        format!(
            "INSERT INTO sim_operations ({}) SELECT {} FROM {}",
            OPERATION_ROWS.names(),
            OPERATION_ROWS.columns("new_operation"),
            OPERATION_ROWS.source(backend, parameter, "new_operation")
        )
    };
    let update = |parameter| {
        format!(
            "UPDATE sim_members SET balance_minor = moved.balance_minor FROM {} \
             WHERE sim_members.member_id = moved.member_id",
            MOVED_ROWS.source(backend, parameter, "moved")
        )
    };
    match backend {
        // One statement, one round trip.
        Backend::Postgres => {
            let query = format!(
                "WITH new_operations AS ({}), moved_wallets AS ({}) SELECT 1",
                insert(1),
                update(2)
            );
            sqlx::query(sqlx::AssertSqlSafe(query))
                .bind(OPERATION_ROWS.to_json(&operations))
                .bind(MOVED_ROWS.to_json(&moved))
                .execute(&mut *connection)
                .await?;
        }
        Backend::Sqlite => {
            sqlx::query(sqlx::AssertSqlSafe(insert(1)))
                .bind(OPERATION_ROWS.to_json(&operations))
                .execute(&mut *connection)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(update(1)))
                .bind(MOVED_ROWS.to_json(&moved))
                .execute(&mut *connection)
                .await?;
        }
    }
    Ok(true)
}
