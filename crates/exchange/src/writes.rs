//! The exchange's hot writes, group-committed: new quotes, new conversions, and every saga's
//! progress. They share one [`Batcher`]: what arrives while a batch commits is written together
//! in the next, one multi-row statement per kind and one commit, so hundreds of conversions in
//! flight share a handful of commits instead of each paying for its own.

use std::collections::HashSet;

use tandem_storage::{Database, row_placeholders};
use tonic::Status;

use crate::{
    batch::Batcher,
    database_error,
    rows::{QUOTE_COLUMNS, QuoteRow},
};

/// Most rows one batch writes.
const ROWS_PER_BATCH: usize = 256;

/// A conversion about to start: written PENDING at its first step, with its driver's lease.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
    pub next_attempt_micros: i64,
    pub lease_until_micros: i64,
    pub updated_at_micros: i64,
    /// Whether the saga ends with this write.
    pub finished: bool,
}

/// Where an earning's saga stands, to be written if its driver still holds the lease.
#[derive(Debug, Clone)]
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
pub(crate) enum Progress {
    Conversion(ConversionProgress),
    Earning(EarningProgress),
}

/// One write of the exchange's hot path.
#[derive(Debug, Clone)]
enum Write {
    Quote(QuoteRow),
    Conversion(NewConversion),
    Progress(Progress),
}

/// The exchange's batched writer. Quotes, new conversions and saga progress share one queue and
/// one commit per batch: each kind alone would form small batches, since a conversion spends
/// only part of its life waiting on any one of them.
#[derive(Debug, Clone)]
pub(crate) struct Writers {
    writes: Batcher<Write, Result<bool, Status>>,
}

fn stopped() -> Status {
    Status::unavailable("the exchange's writer stopped; the outcome is unknown, retry")
}

impl Writers {
    pub(crate) fn start(database: &Database) -> Self {
        let database = database.clone();
        // One batch in flight: while it commits, the next one gathers.
        let writes = Batcher::start(ROWS_PER_BATCH, 1, move |writes: Vec<Write>| {
            let database = database.clone();
            async move {
                match write_batch(&database, &writes).await {
                    Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                    Err(error) => {
                        let status = database_error(error);
                        vec![Err(status); writes.len()]
                    }
                }
            }
        });
        Self { writes }
    }

    async fn write(&self, write: Write) -> Result<bool, Status> {
        self.writes
            .submit(write)
            .await
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Stores a quote.
    pub(crate) async fn quote(&self, quote: QuoteRow) -> Result<(), Status> {
        self.write(Write::Quote(quote)).await.map(drop)
    }

    /// Writes a new conversion; false when its idempotency key or its quote was already taken,
    /// in which case nothing was written.
    pub(crate) async fn conversion(&self, conversion: NewConversion) -> Result<bool, Status> {
        self.write(Write::Conversion(conversion)).await
    }

    /// Writes a saga's progress; false when its driver no longer holds the lease, in which case
    /// nothing was written.
    pub(crate) async fn progress(&self, progress: Progress) -> Result<bool, Status> {
        self.write(Write::Progress(progress)).await
    }
}

/// Writes a batch in one transaction, a statement per kind of write present; for each write,
/// whether it took effect (a quote always does).
async fn write_batch(database: &Database, writes: &[Write]) -> Result<Vec<bool>, sqlx::Error> {
    let mut quotes = Vec::new();
    let mut conversions = Vec::new();
    let mut progress = Vec::new();
    for write in writes {
        match write {
            Write::Quote(quote) => quotes.push(quote),
            Write::Conversion(conversion) => conversions.push(conversion),
            Write::Progress(write) => progress.push(write),
        }
    }
    let mut transaction = database.begin_keyed_write().await?;
    if !quotes.is_empty() {
        insert_quotes(&mut transaction, &quotes).await?;
    }
    let inserted = if conversions.is_empty() {
        Default::default()
    } else {
        insert_conversions(&mut transaction, &conversions).await?
    };
    let written = if progress.is_empty() {
        Default::default()
    } else {
        write_progress(&mut transaction, &progress).await?
    };
    transaction.commit().await?;
    Ok(writes
        .iter()
        .map(|write| match write {
            Write::Quote(_) => true,
            Write::Conversion(conversion) => inserted.contains(&conversion.conversion_id),
            Write::Progress(Progress::Conversion(progress)) => {
                written.contains(&progress.conversion_id)
            }
            Write::Progress(Progress::Earning(progress)) => written.contains(&progress.earning_id),
        })
        .collect())
}

async fn insert_quotes(
    connection: &mut sqlx::AnyConnection,
    quotes: &[&QuoteRow],
) -> Result<(), sqlx::Error> {
    const COLUMNS: usize = 26;
    let query = format!(
        "INSERT INTO quotes ({QUOTE_COLUMNS}) VALUES {}",
        row_placeholders(quotes.len(), COLUMNS, 1)
    );
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(query));
    for quote in quotes {
        statement = statement
            .bind(quote.quote_id.clone())
            .bind(quote.link_id.clone())
            .bind(quote.source_partner_id.clone())
            .bind(quote.source_member_id.clone())
            .bind(quote.source_gateway.clone())
            .bind(quote.source_program.clone())
            .bind(quote.source_scale)
            .bind(quote.source_points)
            .bind(quote.target_partner_id.clone())
            .bind(quote.target_member_id.clone())
            .bind(quote.target_gateway.clone())
            .bind(quote.target_program.clone())
            .bind(quote.target_scale)
            .bind(quote.target_points)
            .bind(quote.agreement_id.clone())
            .bind(quote.terms_version)
            .bind(quote.conversion_rate.clone())
            .bind(quote.settlement_currency.clone())
            .bind(quote.currency_scale)
            .bind(quote.settlement_amount_minor)
            .bind(quote.fee_amount_minor)
            .bind(quote.member_daily_cap_points)
            .bind(quote.agreement_monthly_cap_points)
            .bind(quote.reversal_hours)
            .bind(quote.created_at_micros)
            .bind(quote.expires_at_micros);
    }
    statement.execute(connection).await?;
    Ok(())
}

/// Inserts new conversions, skipping any whose idempotency key or quote is already taken
/// (`ON CONFLICT DO NOTHING`, so one taken key never fails the others); the ids inserted.
/// (`WHERE true` settles SQLite's parsing of an upsert whose rows come from a SELECT.)
async fn insert_conversions(
    connection: &mut sqlx::AnyConnection,
    conversions: &[&NewConversion],
) -> Result<HashSet<String>, sqlx::Error> {
    const COLUMNS: usize = 12;
    let query = format!(
        "INSERT INTO conversions (conversion_id, quote_id, source_partner_id, idempotency_key, \
         source_member_id, target_partner_id, target_member_id, agreement_id, source_points, \
         lease_owner, lease_until_micros, created_at_micros, status, step, attempts, last_error, \
         failure_reason, ledger_transaction_id, reversal_transaction_id, reverse_reason, \
         next_attempt_micros, updated_at_micros) \
         SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, \
         column10, column11, column12, 'PENDING', 'DEBIT_SOURCE', 0, '', '', '', '', '', \
         column12, column12 FROM (VALUES {}) AS new_conversions \
         WHERE true ON CONFLICT DO NOTHING RETURNING conversion_id",
        row_placeholders(conversions.len(), COLUMNS, 1)
    );
    let mut statement = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query));
    for conversion in conversions {
        statement = statement
            .bind(conversion.conversion_id.clone())
            .bind(conversion.quote_id.clone())
            .bind(conversion.source_partner_id.clone())
            .bind(conversion.idempotency_key.clone())
            .bind(conversion.source_member_id.clone())
            .bind(conversion.target_partner_id.clone())
            .bind(conversion.target_member_id.clone())
            .bind(conversion.agreement_id.clone())
            .bind(conversion.source_points)
            .bind(conversion.lease_owner.clone())
            .bind(conversion.lease_until_micros)
            .bind(conversion.created_at_micros);
    }
    Ok(statement.fetch_all(connection).await?.into_iter().collect())
}

/// Writes each saga's progress where its driver still holds the lease; the ids written.
async fn write_progress(
    connection: &mut sqlx::AnyConnection,
    writes: &[&Progress],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut conversions = Vec::new();
    let mut earnings = Vec::new();
    for write in writes {
        match write {
            Progress::Conversion(progress) => conversions.push(progress),
            Progress::Earning(progress) => earnings.push(progress),
        }
    }
    let mut written = HashSet::new();
    if !conversions.is_empty() {
        written.extend(write_conversions(&mut *connection, &conversions).await?);
    }
    if !earnings.is_empty() {
        written.extend(write_earnings(&mut *connection, &earnings).await?);
    }
    Ok(written)
}

async fn write_conversions(
    connection: &mut sqlx::AnyConnection,
    writes: &[&ConversionProgress],
) -> Result<Vec<String>, sqlx::Error> {
    const COLUMNS: usize = 13;
    let query = format!(
        "UPDATE conversions SET status = progress.column3, step = progress.column4, \
         attempts = progress.column5, last_error = progress.column6, \
         failure_reason = progress.column7, ledger_transaction_id = progress.column8, \
         reversal_transaction_id = progress.column9, next_attempt_micros = progress.column10, \
         lease_until_micros = progress.column11, updated_at_micros = progress.column12, \
         finished_at_micros = CASE WHEN progress.column13 = 1 THEN progress.column12 \
         ELSE conversions.finished_at_micros END \
         FROM (VALUES {}) AS progress \
         WHERE conversions.conversion_id = progress.column1 \
         AND conversions.lease_owner = progress.column2 \
         RETURNING conversions.conversion_id",
        row_placeholders(writes.len(), COLUMNS, 1)
    );
    let mut statement = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query));
    for write in writes {
        statement = statement
            .bind(write.conversion_id.clone())
            .bind(write.lease_owner.clone())
            .bind(write.status)
            .bind(write.step)
            .bind(write.attempts)
            .bind(write.last_error.clone())
            .bind(write.failure_reason.clone())
            .bind(write.ledger_transaction_id.clone())
            .bind(write.reversal_transaction_id.clone())
            .bind(write.next_attempt_micros)
            .bind(write.lease_until_micros)
            .bind(write.updated_at_micros)
            .bind(i64::from(write.finished));
    }
    statement.fetch_all(connection).await
}

async fn write_earnings(
    connection: &mut sqlx::AnyConnection,
    writes: &[&EarningProgress],
) -> Result<Vec<String>, sqlx::Error> {
    const COLUMNS: usize = 11;
    // A refund may have been recorded while the driver worked: an earning that has just posted
    // goes on to its clawback, and a waiting one is due now.
    let query = format!(
        "UPDATE earnings SET \
         status = CASE WHEN earnings.refund_requested = 1 AND progress.column3 = 'POSTED' \
         THEN 'CLAWING_BACK' ELSE progress.column3 END, \
         step = CASE WHEN earnings.refund_requested = 1 AND progress.column3 = 'POSTED' \
         THEN 'CLAWBACK' ELSE progress.column4 END, \
         attempts = progress.column5, last_error = progress.column6, note = progress.column7, \
         ledger_transaction_id = progress.column8, \
         next_attempt_micros = CASE WHEN earnings.refund_requested = 1 \
         THEN progress.column11 ELSE progress.column9 END, \
         lease_until_micros = progress.column10, updated_at_micros = progress.column11 \
         FROM (VALUES {}) AS progress \
         WHERE earnings.earning_id = progress.column1 AND earnings.lease_owner = progress.column2 \
         RETURNING earnings.earning_id",
        row_placeholders(writes.len(), COLUMNS, 1)
    );
    let mut statement = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query));
    for write in writes {
        statement = statement
            .bind(write.earning_id.clone())
            .bind(write.lease_owner.clone())
            .bind(write.status.clone())
            .bind(write.step.clone())
            .bind(write.attempts)
            .bind(write.last_error.clone())
            .bind(write.note.clone())
            .bind(write.ledger_transaction_id.clone())
            .bind(write.next_attempt_micros)
            .bind(write.lease_until_micros)
            .bind(write.updated_at_micros);
    }
    statement.fetch_all(connection).await
}
