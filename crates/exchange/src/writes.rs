//! The exchange's hot writes, group-committed: new quotes, new conversions, and every saga's
//! progress. They share one [`Batcher`]: what arrives while a batch commits is written together
//! in the next, one multi-row statement per kind and one commit, so hundreds of conversions in
//! flight share a handful of commits instead of each paying for its own.

use std::collections::HashSet;

use serde::Serialize;
use tandem_storage::{Backend, ColumnType, Database, JsonRows};

use crate::{ExchangeError, batch::Batcher, rows::QuoteRow};

/// Most writes one batch carries.
const ROWS_PER_BATCH: usize = 1_000;

/// A conversion about to start: written PENDING at its first step, with its driver's lease.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NewConversion {
    pub conversion_id: String,
    pub quote_id: String,
    pub source_partner_id: String,
    pub idempotency_key: String,
    pub source_member_id: String,
    pub target_partner_id: String,
    pub target_member_id: String,
    pub agreement_id: String,
    pub source_points: i64,
    pub lease_owner: String,
    pub lease_until_micros: i64,
    pub created_at_micros: i64,
}

/// Where a conversion's saga stands, to be written if its driver still holds the lease.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConversionProgress {
    pub conversion_id: String,
    pub lease_owner: String,
    pub status: &'static str,
    pub step: &'static str,
    pub attempts: i64,
    pub last_error: String,
    pub failure_reason: String,
    pub ledger_transaction_id: String,
    pub reversal_transaction_id: String,
    /// When the recovery worker may take the saga up; `None` keeps what is stored, so that a
    /// step recorded under a held lease changes no indexed column (see `update_conversions`).
    pub next_attempt_micros: Option<i64>,
    pub lease_until_micros: i64,
    pub updated_at_micros: i64,
    /// When the saga ended, if it ends with this write.
    pub finished_at_micros: Option<i64>,
}

/// Where an earning's saga stands, to be written if its driver still holds the lease.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EarningProgress {
    pub earning_id: String,
    pub lease_owner: String,
    pub status: String,
    pub step: String,
    pub attempts: i64,
    pub last_error: String,
    pub note: String,
    pub ledger_transaction_id: String,
    pub next_attempt_micros: i64,
    pub lease_until_micros: i64,
    pub updated_at_micros: i64,
}

/// A saga's progress.
#[derive(Debug, Clone)]
pub(crate) enum SagaProgress {
    Conversion(ConversionProgress),
    Earning(EarningProgress),
}

/// One write of the exchange's hot path.
#[derive(Debug, Clone)]
enum Write {
    Quote(QuoteRow),
    Conversion(NewConversion),
    Progress(SagaProgress),
}

/// The exchange's batched writer. Quotes, new conversions and saga progress share one queue and
/// one commit per batch: each kind alone would form small batches, since a conversion spends
/// only part of its life waiting on any one of them.
#[derive(Debug, Clone)]
pub(crate) struct Writers {
    writes: Batcher<Write, Result<bool, ExchangeError>>,
}

impl Writers {
    /// Starts the writer on `database`, whose connections plan by key (`Database::keyed`).
    pub(crate) fn start(database: &Database) -> Self {
        let database = database.clone();
        // One batch in flight: while it commits, the next one gathers.
        let writes = Batcher::start(ROWS_PER_BATCH, 1, move |writes: Vec<Write>| {
            let database = database.clone();
            async move {
                match write_batch(&database, &writes).await {
                    Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                    Err(error) => {
                        let status = ExchangeError::from(error);
                        vec![Err(status); writes.len()]
                    }
                }
            }
        });
        Self { writes }
    }

    async fn write(&self, write: Write) -> Result<bool, ExchangeError> {
        self.writes
            .submit(write)
            .await
            .unwrap_or(Err(ExchangeError::WriterStopped))
    }

    /// Stores a quote.
    pub(crate) async fn quote(&self, quote: QuoteRow) -> Result<(), ExchangeError> {
        self.write(Write::Quote(quote)).await.map(drop)
    }

    /// Writes a new conversion; false when its idempotency key or its quote was already taken,
    /// in which case nothing was written.
    pub(crate) async fn conversion(
        &self,
        conversion: NewConversion,
    ) -> Result<bool, ExchangeError> {
        self.write(Write::Conversion(conversion)).await
    }

    /// Writes a saga's progress; false when its driver no longer holds the lease, in which case
    /// nothing was written.
    pub(crate) async fn progress(&self, progress: SagaProgress) -> Result<bool, ExchangeError> {
        self.write(Write::Progress(progress)).await
    }
}

/// Builds a statement reading its rows from the numbered parameter.
type StatementFor = fn(Backend, usize) -> String;

/// Writes a batch, a statement per kind of write present, all committed together; for each
/// write, whether it took effect (a quote always does). On PostgreSQL the statements go as one,
/// joined by WITH, so a batch costs one round trip and one commit.
async fn write_batch(database: &Database, writes: &[Write]) -> Result<Vec<bool>, sqlx::Error> {
    let mut quotes = Vec::new();
    let mut conversions = Vec::new();
    let mut conversion_progress = Vec::new();
    let mut earning_progress = Vec::new();
    for write in writes {
        match write {
            Write::Quote(quote) => quotes.push(quote),
            Write::Conversion(conversion) => conversions.push(conversion),
            Write::Progress(SagaProgress::Conversion(progress)) => {
                conversion_progress.push(progress)
            }
            Write::Progress(SagaProgress::Earning(progress)) => earning_progress.push(progress),
        }
    }
    // Each statement is built for the parameter its rows are bound to: on PostgreSQL the four
    // are joined into one statement, so they read parameters 1 to 4; on SQLite each runs alone.
    let statements: [BatchStatement; 4] = [
        (
            insert_quotes,
            QUOTE_ROWS.to_json(&quotes),
            quotes.is_empty(),
        ),
        (
            insert_conversions,
            CONVERSION_ROWS.to_json(&conversions),
            conversions.is_empty(),
        ),
        (
            update_conversions,
            CONVERSION_PROGRESS_ROWS.to_json(&conversion_progress),
            conversion_progress.is_empty(),
        ),
        (
            update_earnings,
            EARNING_PROGRESS_ROWS.to_json(&earning_progress),
            earning_progress.is_empty(),
        ),
    ];
    let written = match database.backend() {
        Backend::Postgres => write_joined(database, statements).await?,
        Backend::Sqlite => write_one_by_one(database, statements, &earning_progress).await?,
    };
    Ok(writes
        .iter()
        .map(|write| match write {
            Write::Quote(_) => true,
            Write::Conversion(conversion) => written.contains(&conversion.conversion_id),
            // A progress write landed only if its own driver's lease matched: two drivers of one
            // saga (one that outlived its lease, and the one that took over) can meet in a batch,
            // and only the holder may be told its write landed.
            Write::Progress(SagaProgress::Conversion(progress)) => {
                written.contains(&written_key(&progress.conversion_id, &progress.lease_owner))
            }
            Write::Progress(SagaProgress::Earning(progress)) => {
                written.contains(&written_key(&progress.earning_id, &progress.lease_owner))
            }
        })
        .collect())
}

/// How a progress statement names a row it wrote: the saga's id and the lease it was written
/// under (their `RETURNING … AS written`).
fn written_key(id: &str, lease_owner: &str) -> String {
    format!("{id} {lease_owner}")
}

/// One statement of a batch: how to build it, its rows as JSON, and whether it has none.
type BatchStatement = (StatementFor, String, bool);

/// On PostgreSQL: the batch's statements joined by WITH into one, one round trip and one commit;
/// the ids of the conversions and earnings written.
async fn write_joined(
    database: &Database,
    statements: [BatchStatement; 4],
) -> Result<HashSet<String>, sqlx::Error> {
    let backend = Backend::Postgres;
    let [quotes, conversions, conversion_progress, earning_progress] = statements;
    let query = format!(
        "WITH new_quotes AS ({}), new_conversions AS ({}), conversion_progress AS ({}), \
         earning_progress AS ({}), {} \
         SELECT id FROM new_conversions UNION ALL SELECT written FROM conversion_progress \
         UNION ALL SELECT written FROM earning_progress",
        (quotes.0)(backend, 1),
        (conversions.0)(backend, 2),
        (conversion_progress.0)(backend, 3),
        (earning_progress.0)(backend, 4),
        EARNINGS_DUE_AFTER_PROGRESS,
    );
    let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(quotes.1)
        .bind(conversions.1)
        .bind(conversion_progress.1)
        .bind(earning_progress.1)
        .fetch_all(database.pool())
        .await?;
    Ok(ids.into_iter().collect())
}

/// On SQLite: the batch's statements one after another in one transaction; the ids of the
/// conversions and earnings written.
async fn write_one_by_one(
    database: &Database,
    statements: [BatchStatement; 4],
    earning_progress: &[&EarningProgress],
) -> Result<HashSet<String>, sqlx::Error> {
    let backend = Backend::Sqlite;
    let mut written = HashSet::new();
    let mut transaction = database.begin_write().await?;
    for (index, (statement, rows, empty)) in statements.into_iter().enumerate() {
        if empty {
            continue;
        }
        let statement = statement(backend, 1);
        // Quotes return no ids: a quote is always written.
        if index == 0 {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(rows)
                .execute(&mut *transaction)
                .await?;
            continue;
        }
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
            .bind(rows)
            .fetch_all(&mut *transaction)
            .await?;
        written.extend(ids);
    }
    if !earning_progress.is_empty() {
        // Each statement alone sees the progress just written, so the queue follows the
        // earnings' own steps.
        let rows = EARNING_PROGRESS_ROWS.to_json(earning_progress);
        for statement in [ended_earnings_leave_the_queue, due_earnings_stay_queued] {
            sqlx::query(sqlx::AssertSqlSafe(statement(backend, 1)))
                .bind(rows.as_str())
                .execute(&mut *transaction)
                .await?;
        }
    }
    transaction.commit().await?;
    Ok(written)
}

const QUOTE_ROWS: JsonRows = JsonRows::new(&[
    ("quote_id", ColumnType::Text),
    ("link_id", ColumnType::Text),
    ("source_partner_id", ColumnType::Text),
    ("source_member_id", ColumnType::Text),
    ("source_gateway", ColumnType::Text),
    ("source_program", ColumnType::Text),
    ("source_scale", ColumnType::BigInt),
    ("source_points", ColumnType::BigInt),
    ("target_partner_id", ColumnType::Text),
    ("target_member_id", ColumnType::Text),
    ("target_gateway", ColumnType::Text),
    ("target_program", ColumnType::Text),
    ("target_scale", ColumnType::BigInt),
    ("target_points", ColumnType::BigInt),
    ("agreement_id", ColumnType::Text),
    ("terms_version", ColumnType::BigInt),
    ("conversion_rate", ColumnType::Text),
    ("settlement_currency", ColumnType::Text),
    ("currency_scale", ColumnType::BigInt),
    ("settlement_amount_minor", ColumnType::BigInt),
    ("fee_amount_minor", ColumnType::BigInt),
    ("member_daily_cap_points", ColumnType::BigInt),
    ("agreement_monthly_cap_points", ColumnType::BigInt),
    ("reversal_hours", ColumnType::BigInt),
    ("created_at_micros", ColumnType::BigInt),
    ("expires_at_micros", ColumnType::BigInt),
]);

fn insert_quotes(backend: Backend, parameter: usize) -> String {
    format!(
        "INSERT INTO quotes ({}) SELECT {} FROM {}",
        QUOTE_ROWS.names(),
        QUOTE_ROWS.columns("new_quote"),
        QUOTE_ROWS.source(backend, parameter, "new_quote")
    )
}

const CONVERSION_ROWS: JsonRows = JsonRows::new(&[
    ("conversion_id", ColumnType::Text),
    ("quote_id", ColumnType::Text),
    ("source_partner_id", ColumnType::Text),
    ("idempotency_key", ColumnType::Text),
    ("source_member_id", ColumnType::Text),
    ("target_partner_id", ColumnType::Text),
    ("target_member_id", ColumnType::Text),
    ("agreement_id", ColumnType::Text),
    ("source_points", ColumnType::BigInt),
    ("lease_owner", ColumnType::Text),
    ("lease_until_micros", ColumnType::BigInt),
    ("created_at_micros", ColumnType::BigInt),
]);

/// New conversions, PENDING at their first step, skipping any whose idempotency key or quote is
/// already taken (`ON CONFLICT DO NOTHING`, so one taken key never fails the others); returns
/// the ids inserted. (`WHERE true` settles SQLite's parsing of an upsert whose rows come from a
/// SELECT.)
fn insert_conversions(backend: Backend, parameter: usize) -> String {
    format!(
        "INSERT INTO conversions ({}, status, step, attempts, last_error, failure_reason, \
         ledger_transaction_id, reversal_transaction_id, reverse_reason, next_attempt_micros, \
         updated_at_micros) \
         SELECT {}, 'PENDING', 'DEBIT_SOURCE', 0, '', '', '', '', '', \
         new_conversion.created_at_micros, new_conversion.created_at_micros FROM {} \
         WHERE true ON CONFLICT DO NOTHING RETURNING conversion_id AS id",
        CONVERSION_ROWS.names(),
        CONVERSION_ROWS.columns("new_conversion"),
        CONVERSION_ROWS.source(backend, parameter, "new_conversion")
    )
}

const CONVERSION_PROGRESS_ROWS: JsonRows = JsonRows::new(&[
    ("conversion_id", ColumnType::Text),
    ("lease_owner", ColumnType::Text),
    ("status", ColumnType::Text),
    ("step", ColumnType::Text),
    ("attempts", ColumnType::BigInt),
    ("last_error", ColumnType::Text),
    ("failure_reason", ColumnType::Text),
    ("ledger_transaction_id", ColumnType::Text),
    ("reversal_transaction_id", ColumnType::Text),
    ("next_attempt_micros", ColumnType::BigInt),
    ("lease_until_micros", ColumnType::BigInt),
    ("updated_at_micros", ColumnType::BigInt),
    ("finished_at_micros", ColumnType::BigInt),
]);

/// Conversions' progress, where the writer still holds the lease; returns each row written as
/// its id and the lease it was written under ([`written_key`]).
///
/// A step recorded while its driver holds the lease keeps the stored status and next attempt:
/// the worker cannot take the saga until the lease lapses, and then the stored next attempt is
/// already due. Such a write changes no column an index covers (nor the partial index's
/// condition), so on PostgreSQL, with room on the row's page (`prepare_database`), it is a
/// heap-only update that touches none of the table's five indexes.
fn update_conversions(backend: Backend, parameter: usize) -> String {
    format!(
        "UPDATE conversions SET status = progress.status, step = progress.step, \
         attempts = progress.attempts, last_error = progress.last_error, \
         failure_reason = progress.failure_reason, \
         ledger_transaction_id = progress.ledger_transaction_id, \
         reversal_transaction_id = progress.reversal_transaction_id, \
         next_attempt_micros = COALESCE(progress.next_attempt_micros, \
         conversions.next_attempt_micros), \
         lease_until_micros = progress.lease_until_micros, \
         updated_at_micros = progress.updated_at_micros, \
         finished_at_micros = COALESCE(progress.finished_at_micros, \
         conversions.finished_at_micros) \
         FROM {} WHERE conversions.conversion_id = progress.conversion_id \
         AND conversions.lease_owner = progress.lease_owner \
         RETURNING conversions.conversion_id || ' ' || conversions.lease_owner AS written",
        CONVERSION_PROGRESS_ROWS.source(backend, parameter, "progress")
    )
}

const EARNING_PROGRESS_ROWS: JsonRows = JsonRows::new(&[
    ("earning_id", ColumnType::Text),
    ("lease_owner", ColumnType::Text),
    ("status", ColumnType::Text),
    ("step", ColumnType::Text),
    ("attempts", ColumnType::BigInt),
    ("last_error", ColumnType::Text),
    ("note", ColumnType::Text),
    ("ledger_transaction_id", ColumnType::Text),
    ("next_attempt_micros", ColumnType::BigInt),
    ("lease_until_micros", ColumnType::BigInt),
    ("updated_at_micros", ColumnType::BigInt),
]);

/// Earnings' progress, where the writer still holds the lease; returns the ids written. A
/// refund may have been recorded while the driver worked: an earning that has just posted goes
/// on to its clawback, and a waiting one is due now.
fn update_earnings(backend: Backend, parameter: usize) -> String {
    format!(
        "UPDATE earnings SET \
         status = CASE WHEN earnings.refund_requested = 1 AND progress.status = 'POSTED' \
         THEN 'CLAWING_BACK' ELSE progress.status END, \
         step = CASE WHEN earnings.refund_requested = 1 AND progress.status = 'POSTED' \
         THEN 'CLAWBACK' ELSE progress.step END, \
         attempts = progress.attempts, last_error = progress.last_error, \
         note = progress.note, ledger_transaction_id = progress.ledger_transaction_id, \
         next_attempt_micros = CASE WHEN earnings.refund_requested = 1 \
         THEN progress.updated_at_micros ELSE progress.next_attempt_micros END, \
         lease_until_micros = progress.lease_until_micros, \
         updated_at_micros = progress.updated_at_micros \
         FROM {} WHERE earnings.earning_id = progress.earning_id \
         AND earnings.lease_owner = progress.lease_owner \
         RETURNING earnings.earning_id || ' ' || earnings.lease_owner AS written{}",
        EARNING_PROGRESS_ROWS.source(backend, parameter, "progress"),
        match backend {
            // What EARNINGS_DUE_AFTER_PROGRESS reads.
            Backend::Postgres => {
                ", earnings.earning_id AS id, earnings.step, \
                 GREATEST(earnings.next_attempt_micros, earnings.lease_until_micros) AS due_at_micros"
            }
            Backend::Sqlite => "",
        }
    )
}

/// On PostgreSQL, the statements that keep `earnings_due` in step with the earnings' progress,
/// as the clauses of the batch's WITH: they read what `earning_progress` wrote (its RETURNING),
/// since every clause of one statement sees the tables as they were before it. An earning whose
/// saga ended leaves the queue; one with steps left is queued for when the recovery worker may
/// take it: its next attempt, or the end of its driver's lease if that comes later. The worker
/// looks for lapsed leases only, so an earning being driven is not in its way each second.
const EARNINGS_DUE_AFTER_PROGRESS: &str = "\
    ended_earnings AS (DELETE FROM earnings_due WHERE earning_id IN \
    (SELECT id FROM earning_progress WHERE step = 'DONE')), \
    due_earnings AS (INSERT INTO earnings_due (earning_id, next_attempt_micros) \
    SELECT id, due_at_micros FROM earning_progress WHERE step <> 'DONE' \
    ON CONFLICT (earning_id) DO UPDATE SET next_attempt_micros = excluded.next_attempt_micros)";

/// On SQLite, run after the earnings' progress: the earnings of these rows whose saga ended leave
/// the queue.
fn ended_earnings_leave_the_queue(backend: Backend, parameter: usize) -> String {
    format!(
        "DELETE FROM earnings_due WHERE earning_id IN (SELECT earning_id FROM earnings \
         WHERE step = 'DONE' AND earning_id IN (SELECT progress.earning_id FROM {}))",
        EARNING_PROGRESS_ROWS.source(backend, parameter, "progress")
    )
}

/// On SQLite, run after the earnings' progress: the earnings of these rows with steps left are
/// queued for their next attempt or the end of their lease, whichever comes later (as
/// [`EARNINGS_DUE_AFTER_PROGRESS`] on PostgreSQL).
fn due_earnings_stay_queued(backend: Backend, parameter: usize) -> String {
    format!(
        "INSERT INTO earnings_due (earning_id, next_attempt_micros) \
         SELECT earning_id, MAX(next_attempt_micros, lease_until_micros) FROM earnings \
         WHERE step <> 'DONE' \
         AND earning_id IN (SELECT progress.earning_id FROM {}) \
         ON CONFLICT (earning_id) DO UPDATE SET next_attempt_micros = excluded.next_attempt_micros",
        EARNING_PROGRESS_ROWS.source(backend, parameter, "progress")
    )
}

#[cfg(test)]
mod tests {
    use tandem_storage::{Database, testing::TestDatabase};

    use super::*;

    fn new_conversion(owner: &str) -> NewConversion {
        NewConversion {
            conversion_id: "0192f0c4-8a1e-7c3a-9b5e-1d2f3a4b5c6d".to_owned(),
            quote_id: "0192f0c4-8a1e-7c3a-9b5e-000000000001".to_owned(),
            source_partner_id: "source".to_owned(),
            idempotency_key: "key".to_owned(),
            source_member_id: "H-1".to_owned(),
            target_partner_id: "target".to_owned(),
            target_member_id: "R-1".to_owned(),
            agreement_id: "agreement".to_owned(),
            source_points: 1_000,
            lease_owner: owner.to_owned(),
            lease_until_micros: i64::MAX,
            created_at_micros: 1,
        }
    }

    fn progress(owner: &str, step: &'static str) -> Write {
        Write::Progress(SagaProgress::Conversion(ConversionProgress {
            conversion_id: new_conversion(owner).conversion_id,
            lease_owner: owner.to_owned(),
            status: "PENDING",
            step,
            attempts: 0,
            last_error: String::new(),
            failure_reason: String::new(),
            ledger_transaction_id: String::new(),
            reversal_transaction_id: String::new(),
            next_attempt_micros: None,
            lease_until_micros: i64::MAX,
            updated_at_micros: 2,
            finished_at_micros: None,
        }))
    }

    /// A driver that outlived its lease and the one that took the saga over write in the same
    /// batch: only the holder is told its write landed, and only its state is stored.
    async fn only_the_lease_holder_is_told_its_write_landed(database: TestDatabase) {
        let database = Database::open(database.location(), "exchange", &crate::MIGRATOR)
            .await
            .expect("open the exchange's database");
        let inserted = write_batch(&database, &[Write::Conversion(new_conversion("holder"))])
            .await
            .expect("insert a conversion");
        assert_eq!(inserted, [true]);
        let answers = write_batch(
            &database,
            &[
                progress("outlived", "UNDO_CREDIT"),
                progress("holder", "POST_LEDGER"),
            ],
        )
        .await
        .expect("write a batch");
        assert_eq!(answers, [false, true], "only the holder's write landed");
        let step: String = sqlx::query_scalar("SELECT step FROM conversions")
            .fetch_one(database.pool())
            .await
            .unwrap();
        assert_eq!(step, "POST_LEDGER");
    }

    tandem_storage::on_every_database!(only_the_lease_holder_is_told_its_write_landed);
}
