//! The commit seal and balance checkpoints (see `migrations/0005_commit_seal_and_checkpoints.sql`).
//!
//! A batch holds the seal shared from its start to its commit and stamps its entries no earlier
//! than it; sealing at T takes the seal exclusively, so it waits for the batches in flight, and
//! after it no entry before T can appear. A checkpoint at T, taken after sealing at T, therefore
//! counts every entry that will ever carry a commit time before T.

use sqlx::AnyConnection;
use tandem_storage::Backend;

/// No checkpoint: the totals start from nothing, at the beginning of time.
pub(crate) const NO_CHECKPOINT: Checkpoint = Checkpoint {
    as_of_micros: i64::MIN,
    posted_debits: 0,
    posted_credits: 0,
};

/// An account's posted totals over its entries committed before `as_of_micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) as_of_micros: i64,
    pub(crate) posted_debits: i64,
    pub(crate) posted_credits: i64,
}

/// The seal's time, read inside a batch's write and held until it commits: PostgreSQL shares the
/// row lock, so batches never wait for one another, only for a sealing; SQLite's write lock
/// already orders the two.
pub(crate) async fn hold_seal(connection: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    let query = match Backend::of(connection) {
        Backend::Postgres => {
            "SELECT sealed_before_micros FROM ledger_commit_seal WHERE seal_id = 1 FOR SHARE"
        }
        Backend::Sqlite => "SELECT sealed_before_micros FROM ledger_commit_seal WHERE seal_id = 1",
    };
    sqlx::query_scalar(query).fetch_one(connection).await
}

/// Seals commit times before `before_micros`; a seal never moves back. Waits for every batch in
/// flight, so it runs in a transaction of its own, committed at once.
pub(crate) async fn seal(
    connection: &mut AnyConnection,
    before_micros: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ledger_commit_seal SET sealed_before_micros = $1 \
         WHERE seal_id = 1 AND sealed_before_micros < $1",
    )
    .bind(before_micros)
    .execute(connection)
    .await?;
    Ok(())
}

/// `account`'s latest checkpoint as of `at_most_micros` or earlier, or [`NO_CHECKPOINT`].
pub(crate) async fn latest(
    connection: &mut AnyConnection,
    account: &str,
    at_most_micros: i64,
) -> Result<Checkpoint, sqlx::Error> {
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT as_of_micros, posted_debit_minor, posted_credit_minor FROM ledger_checkpoints \
         WHERE account_id = $1 AND as_of_micros <= $2 ORDER BY as_of_micros DESC LIMIT 1",
    )
    .bind(account)
    .bind(at_most_micros)
    .fetch_optional(connection)
    .await?;
    Ok(
        row.map_or(NO_CHECKPOINT, |(as_of_micros, debits, credits)| {
            Checkpoint {
                as_of_micros,
                posted_debits: debits,
                posted_credits: credits,
            }
        }),
    )
}

/// `account`'s posted totals: `from`, plus its posted entries committed from `from`'s time up to
/// (not including) `until_micros`.
pub(crate) async fn posted_since(
    connection: &mut AnyConnection,
    account: &str,
    from: Checkpoint,
    until_micros: i64,
) -> Result<Checkpoint, sqlx::Error> {
    let (debits, credits): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(debit_minor), 0) AS BIGINT), \
         CAST(COALESCE(SUM(credit_minor), 0) AS BIGINT) FROM ledger_entries \
         WHERE account_id = $1 AND phase = 'POSTED' \
           AND committed_at_micros >= $2 AND committed_at_micros < $3",
    )
    .bind(account)
    .bind(from.as_of_micros)
    .bind(until_micros)
    .fetch_one(connection)
    .await?;
    Ok(Checkpoint {
        as_of_micros: until_micros,
        posted_debits: from.posted_debits + debits,
        posted_credits: from.posted_credits + credits,
    })
}

/// Records every account's checkpoint as of `as_of_micros` (sealed there already), each from its
/// previous one; an account that has one at that time keeps it. How many were written.
pub(crate) async fn record(
    connection: &mut AnyConnection,
    as_of_micros: i64,
) -> Result<usize, sqlx::Error> {
    let accounts: Vec<String> = sqlx::query_scalar("SELECT account_id FROM ledger_accounts")
        .fetch_all(&mut *connection)
        .await?;
    let mut written = 0;
    for account in accounts {
        let previous = latest(connection, &account, as_of_micros).await?;
        if previous.as_of_micros == as_of_micros {
            continue;
        }
        let next = posted_since(connection, &account, previous, as_of_micros).await?;
        sqlx::query(
            "INSERT INTO ledger_checkpoints (account_id, as_of_micros, posted_debit_minor, \
             posted_credit_minor) VALUES ($1, $2, $3, $4)",
        )
        .bind(&account)
        .bind(next.as_of_micros)
        .bind(next.posted_debits)
        .bind(next.posted_credits)
        .execute(&mut *connection)
        .await?;
        written += 1;
    }
    Ok(written)
}

/// The time of the newest checkpoint, if any was taken.
pub(crate) async fn newest(connection: &mut AnyConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MAX(as_of_micros) FROM ledger_checkpoints")
        .fetch_one(connection)
        .await
}
