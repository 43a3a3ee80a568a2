//! Reconciliation: a partner's own records of a period, compared with Tandem's ledger.
//!
//! Tandem's records of a partner are its ledger transactions in the period that touch the
//! partner's accounts, one per reference (the conversion, activity or adjustment id) and kind:
//! the points its program clearing accounts moved (credits positive) and the money its settlement
//! accounts moved (credits positive). The partner's records stream into a staging table as they
//! arrive, then both sides are compared in SQL and the results stream out, so memory holds a
//! batch at a time whatever the size of the period. Nothing ever changes a ledger entry.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use tandem_domain::{PartnerId, Timestamp, from_unix_micros, to_unix_micros};
use tandem_storage::{ColumnType, JsonRows, PageCursor, PageRequest};

use crate::{
    Settlement, SettlementError,
    audit::{self, AuditAction, NewEvent},
};

/// The kinds a record can be.
pub const RECORD_KINDS: [&str; 4] = ["CONVERSION", "EARN", "ADJUSTMENT", "REVERSAL"];

/// What a report compares, and how closely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportHeader {
    pub partner: PartnerId,
    pub start: Timestamp,
    pub end: Timestamp,
    pub dry_run: bool,
    pub amount_tolerance_minor: i64,
    pub time_tolerance_seconds: i64,
}

/// One record as the partner sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRecord {
    pub partner_record_id: String,
    pub reference: String,
    pub kind: String,
    pub points: i64,
    pub money_minor: Option<i64>,
    pub at: Timestamp,
}

/// How a record compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiscrepancyClass {
    Matched,
    MissingOurs,
    MissingTheirs,
    AmountMismatch,
    TimeMismatch,
    Duplicate,
}

impl DiscrepancyClass {
    pub const ALL: [DiscrepancyClass; 6] = [
        DiscrepancyClass::Matched,
        DiscrepancyClass::MissingOurs,
        DiscrepancyClass::MissingTheirs,
        DiscrepancyClass::AmountMismatch,
        DiscrepancyClass::TimeMismatch,
        DiscrepancyClass::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DiscrepancyClass::Matched => "MATCHED",
            DiscrepancyClass::MissingOurs => "MISSING_OURS",
            DiscrepancyClass::MissingTheirs => "MISSING_THEIRS",
            DiscrepancyClass::AmountMismatch => "AMOUNT_MISMATCH",
            DiscrepancyClass::TimeMismatch => "TIME_MISMATCH",
            DiscrepancyClass::Duplicate => "DUPLICATE",
        }
    }

    pub fn parse(text: &str) -> Result<Self, SettlementError> {
        DiscrepancyClass::ALL
            .into_iter()
            .find(|class| class.as_str() == text)
            .ok_or_else(|| {
                SettlementError::Internal(format!("unknown discrepancy class {text:?} in storage"))
            })
    }
}

/// A stored reconciliation, or a dry run's result (with an empty id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub reconciliation_id: String,
    pub partner_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub partner_record_count: i64,
    pub tandem_record_count: i64,
    pub counts: BTreeMap<String, i64>,
    pub submitted_by: String,
    pub created_at: Timestamp,
    pub dry_run: bool,
}

/// One record that did not match.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Discrepancy {
    pub discrepancy_id: String,
    pub reconciliation_id: String,
    pub class: String,
    pub reference: String,
    pub kind: String,
    pub partner_record_id: String,
    pub line: i64,
    pub our_points: i64,
    pub their_points: i64,
    pub our_money_minor: i64,
    pub their_money_minor: Option<i64>,
    pub our_at_micros: Option<i64>,
    pub their_at_micros: Option<i64>,
    pub status: String,
    pub adjustment_id: String,
    pub resolved_by: String,
    pub resolution_reason: String,
}

/// Tandem's records of partner `$1` committed in `[$2, $3)`, one per reference and kind. The
/// partner's accounts are looked up by subquery, not joined on every entry.
const OURS: &str = "ours AS (\
     SELECT t.external_reference AS reference, \
     CASE WHEN t.kind = 'REVERSAL' THEN 'REVERSAL' WHEN t.type_code = '' THEN t.kind \
     ELSE t.type_code END AS kind, \
     CAST(SUM(CASE WHEN e.account_id IN (SELECT account_id FROM ledger_accounts \
     WHERE owner = $1 AND purpose = 'PROGRAM_CLEARING') THEN e.credit_minor - e.debit_minor \
     ELSE 0 END) AS BIGINT) AS points, \
     CAST(SUM(CASE WHEN e.account_id IN (SELECT account_id FROM ledger_accounts \
     WHERE owner = $1 AND purpose = 'SETTLEMENT') THEN e.credit_minor - e.debit_minor \
     ELSE 0 END) AS BIGINT) AS money, \
     MIN(e.committed_at_micros) AS at_micros \
     FROM ledger_entries e \
     JOIN ledger_transactions t ON t.transaction_id = e.transaction_id \
     WHERE e.account_id IN (SELECT account_id FROM ledger_accounts WHERE owner = $1) \
     AND e.phase = 'POSTED' AND e.committed_at_micros >= $2 \
     AND e.committed_at_micros < $3 AND t.type_code <> 'SETTLEMENT' \
     GROUP BY t.external_reference, \
     CASE WHEN t.kind = 'REVERSAL' THEN 'REVERSAL' WHEN t.type_code = '' THEN t.kind \
     ELSE t.type_code END)";

/// A partner record beside Tandem's of the same reference and kind, if any, or a record of
/// Tandem's the partner did not send: (line, none for the latter, partner record id, reference, kind, their points, their money, their time, how many of the same
/// reference and kind came before it plus one, whether Tandem has one, our points, our money,
/// our time).
type Compared = (
    Option<i64>,
    String,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A partner record as staged, in the columns of `settlement_partner_records`.
#[derive(serde::Serialize)]
struct StagedRecord<'a> {
    reconciliation_id: &'a str,
    line: i64,
    partner_record_id: &'a str,
    reference: &'a str,
    kind: &'a str,
    points: i64,
    money_minor: Option<i64>,
    at_micros: i64,
}

static STAGED_RECORDS: JsonRows = JsonRows::new(&[
    ("reconciliation_id", ColumnType::Text),
    ("line", ColumnType::BigInt),
    ("partner_record_id", ColumnType::Text),
    ("reference", ColumnType::Text),
    ("kind", ColumnType::Text),
    ("points", ColumnType::BigInt),
    ("money_minor", ColumnType::BigInt),
    ("at_micros", ColumnType::BigInt),
]);

/// The memory a comparison's hashes and sorts may take on PostgreSQL, per operation: a period
/// of a million records each side sorts and hashes in memory (measured with `tandem bench
/// reconcile`; the server default, 4 MB, sends them to disk).
const COMPARISON_MEMORY: &str = "SET LOCAL work_mem = '256MB'";

/// Most discrepancies written in one statement.
const DISCREPANCIES_PER_BATCH: usize = 200;

/// What a comparison found so far: counts per class, and the discrepancies not yet written.
struct Found {
    counts: BTreeMap<DiscrepancyClass, i64>,
    batch: Vec<Discrepancy>,
    /// False for a dry run, which only counts.
    store: bool,
}

impl Found {
    /// Counts one record of `class`, keeping its discrepancy unless it matched or nothing is
    /// stored; a full batch, to be written, once it fills.
    fn add(
        &mut self,
        class: DiscrepancyClass,
        discrepancy: impl FnOnce() -> Discrepancy,
    ) -> Option<Vec<Discrepancy>> {
        *self.counts.entry(class).or_default() += 1;
        if class == DiscrepancyClass::Matched || !self.store {
            return None;
        }
        self.batch.push(discrepancy());
        (self.batch.len() == DISCREPANCIES_PER_BATCH).then(|| std::mem::take(&mut self.batch))
    }
}

fn classify(header: &ReportHeader, compared: &Compared) -> DiscrepancyClass {
    let (line, _, _, _, points, money, at, nth, ours, our_points, our_money, our_at) = compared;
    if line.is_none() {
        return DiscrepancyClass::MissingTheirs;
    }
    if *nth > 1 {
        return DiscrepancyClass::Duplicate;
    }
    if *ours == 0 {
        return DiscrepancyClass::MissingOurs;
    }
    // Differences as unsigned magnitudes: a partner's figure may be anywhere in i64.
    let tolerance = header.amount_tolerance_minor.unsigned_abs();
    let points_differ = points.abs_diff(our_points.unwrap_or(0)) > tolerance;
    let money_differ =
        money.is_some_and(|money| money.abs_diff(our_money.unwrap_or(0)) > tolerance);
    if points_differ || money_differ {
        return DiscrepancyClass::AmountMismatch;
    }
    let seconds = at.abs_diff(our_at.unwrap_or(*at)) / 1_000_000;
    if seconds > header.time_tolerance_seconds.unsigned_abs() {
        return DiscrepancyClass::TimeMismatch;
    }
    DiscrepancyClass::Matched
}

fn discrepancy_of(
    reconciliation_id: &str,
    class: DiscrepancyClass,
    compared: Compared,
) -> Discrepancy {
    let (line, record_id, reference, kind, points, money, at, _, _, our_points, our_money, our_at) =
        compared;
    Discrepancy {
        discrepancy_id: uuid::Uuid::now_v7().to_string(),
        reconciliation_id: reconciliation_id.to_owned(),
        class: class.as_str().to_owned(),
        reference,
        kind,
        partner_record_id: record_id,
        line: line.unwrap_or(0),
        our_points: our_points.unwrap_or(0),
        their_points: points,
        our_money_minor: our_money.unwrap_or(0),
        their_money_minor: money,
        our_at_micros: our_at,
        // A record of Tandem's the partner did not send has no time of theirs.
        their_at_micros: line.map(|_| at),
        status: "OPEN".to_owned(),
        adjustment_id: String::new(),
        resolved_by: String::new(),
        resolution_reason: String::new(),
    }
}

impl Settlement {
    /// A fresh id under which a report's records are staged.
    pub fn new_report_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// Stages records of report `id`, each with the line it came on: one statement with one
    /// parameter, the batch as JSON rows.
    pub async fn stage_records(
        &self,
        id: &str,
        records: &[(i64, PartnerRecord)],
    ) -> Result<(), SettlementError> {
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<StagedRecord<'_>> = records
            .iter()
            .map(|(line, record)| StagedRecord {
                reconciliation_id: id,
                line: *line,
                partner_record_id: &record.partner_record_id,
                reference: &record.reference,
                kind: &record.kind,
                points: record.points,
                money_minor: record.money_minor,
                at_micros: to_unix_micros(record.at),
            })
            .collect();
        let sql = format!(
            "INSERT INTO settlement_partner_records ({}) SELECT {} FROM {}",
            STAGED_RECORDS.names(),
            STAGED_RECORDS.columns("staged"),
            STAGED_RECORDS.source(self.database.backend(), 1, "staged")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(STAGED_RECORDS.to_json(&rows))
            .execute(self.database.pool())
            .await?;
        Ok(())
    }

    /// Deletes what reports left behind when their stream broke off or their process stopped
    /// before they were stored: staged records and discrepancies of no reconciliation, older
    /// than a day (a report still streaming in another process is younger). Run at start-up.
    pub async fn sweep_abandoned_reports(&self) -> Result<u64, SettlementError> {
        let day_ago = tandem_domain::now() - chrono::Duration::days(1);
        let seconds = u64::try_from(day_ago.timestamp()).unwrap_or(0);
        let before =
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, 0)).to_string();
        let mut swept = 0;
        for table in ["settlement_partner_records", "settlement_discrepancies"] {
            swept += sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE reconciliation_id < $1 AND NOT EXISTS \
                 (SELECT 1 FROM settlement_reconciliations s \
                 WHERE s.reconciliation_id = {table}.reconciliation_id)"
            )))
            .bind(&before)
            .execute(self.database.pool())
            .await?
            .rows_affected();
        }
        Ok(swept)
    }

    /// Forgets report `id`'s staged records and anything compared from them: a refused or dry
    /// report stores nothing.
    pub async fn discard_report(&self, id: &str) -> Result<(), SettlementError> {
        let mut transaction = self.database.begin_write().await?;
        for table in ["settlement_partner_records", "settlement_discrepancies"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE reconciliation_id = $1"
            )))
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Compares report `id`'s staged records with Tandem's, and stores the result unless it is
    /// a dry run (whose staged records are then discarded).
    pub async fn reconcile(
        &self,
        actor: &str,
        id: &str,
        header: &ReportHeader,
        partner_record_count: i64,
    ) -> Result<Reconciliation, SettlementError> {
        let outcome = self.compare(id, header).await;
        let (counts, tandem_record_count) = match outcome {
            Ok(compared) => compared,
            Err(error) => {
                self.discard_report(id).await?;
                return Err(error);
            }
        };
        let reconciliation = Reconciliation {
            reconciliation_id: if header.dry_run {
                String::new()
            } else {
                id.to_owned()
            },
            partner_id: header.partner.to_string(),
            start: header.start,
            end: header.end,
            partner_record_count,
            tandem_record_count,
            counts: DiscrepancyClass::ALL
                .iter()
                .map(|class| {
                    (
                        class.as_str().to_owned(),
                        counts.get(class).copied().unwrap_or(0),
                    )
                })
                .collect(),
            submitted_by: actor.to_owned(),
            created_at: tandem_domain::now(),
            dry_run: header.dry_run,
        };
        if header.dry_run {
            self.discard_report(id).await?;
            return Ok(reconciliation);
        }
        self.store_reconciliation(actor, &reconciliation).await?;
        Ok(reconciliation)
    }

    /// Counts per class (writing the discrepancies unless a dry run), and Tandem's record count.
    /// Both sides are read in one statement, so in one snapshot of the ledger: each partner
    /// record beside Tandem's of the same reference and kind, in the order they came, then
    /// Tandem's records the partner did not send.
    async fn compare(
        &self,
        id: &str,
        header: &ReportHeader,
    ) -> Result<(BTreeMap<DiscrepancyClass, i64>, i64), SettlementError> {
        let mut found = Found {
            counts: BTreeMap::new(),
            batch: Vec::with_capacity(DISCREPANCIES_PER_BATCH),
            store: !header.dry_run,
        };
        let both = format!(
            "WITH {OURS}, theirs AS (SELECT r.*, ROW_NUMBER() OVER (PARTITION BY r.reference, \
             r.kind ORDER BY r.line) AS nth FROM settlement_partner_records r \
             WHERE r.reconciliation_id = $4) \
             SELECT theirs.line, COALESCE(theirs.partner_record_id, ''), \
             COALESCE(theirs.reference, ours.reference), COALESCE(theirs.kind, ours.kind), \
             COALESCE(theirs.points, 0), theirs.money_minor, COALESCE(theirs.at_micros, 0), \
             CAST(COALESCE(theirs.nth, 1) AS BIGINT), \
             CASE WHEN ours.reference IS NULL THEN 0 ELSE 1 END, ours.points, ours.money, \
             ours.at_micros \
             FROM theirs FULL JOIN ours ON ours.reference = theirs.reference \
             AND ours.kind = theirs.kind \
             ORDER BY CASE WHEN theirs.line IS NULL THEN 1 ELSE 0 END, theirs.line, \
             ours.reference, ours.kind"
        );
        let mut ours_count = 0;
        // A read-only transaction of its own, so that PostgreSQL may give this one statement the
        // memory to hash and sort a period's records without spilling them to disk.
        let mut reading = self.database.pool().begin().await?;
        if self.database.backend() == tandem_storage::Backend::Postgres {
            sqlx::query(COMPARISON_MEMORY)
                .execute(&mut *reading)
                .await?;
        }
        let mut rows = sqlx::query_as::<_, Compared>(sqlx::AssertSqlSafe(both))
            .bind(header.partner.to_string())
            .bind(to_unix_micros(header.start))
            .bind(to_unix_micros(header.end))
            .bind(id)
            .fetch(&mut *reading);
        while let Some(compared) = rows.try_next().await? {
            let (_, _, _, _, _, _, _, nth, ours, ..) = &compared;
            ours_count += i64::from(*ours == 1 && *nth == 1);
            let class = classify(header, &compared);
            if let Some(full) = found.add(class, || discrepancy_of(id, class, compared)) {
                self.write_discrepancies(&full).await?;
            }
        }
        drop(rows);
        reading.commit().await?;
        self.write_discrepancies(&found.batch).await?;
        Ok((found.counts, ours_count))
    }

    async fn write_discrepancies(&self, batch: &[Discrepancy]) -> Result<(), SettlementError> {
        if batch.is_empty() {
            return Ok(());
        }
        const COLUMNS: usize = 17;
        let rows: Vec<String> = (0..batch.len())
            .map(|index| {
                let placeholders: Vec<String> = (1..=COLUMNS)
                    .map(|column| format!("${}", index * COLUMNS + column))
                    .collect();
                format!("({})", placeholders.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO settlement_discrepancies (discrepancy_id, reconciliation_id, class, \
             reference, kind, partner_record_id, line, our_points, their_points, \
             our_money_minor, their_money_minor, our_at_micros, their_at_micros, status, \
             adjustment_id, resolved_by, resolution_reason) VALUES {}",
            rows.join(", ")
        );
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for discrepancy in batch {
            statement = statement
                .bind(&discrepancy.discrepancy_id)
                .bind(&discrepancy.reconciliation_id)
                .bind(&discrepancy.class)
                .bind(&discrepancy.reference)
                .bind(&discrepancy.kind)
                .bind(&discrepancy.partner_record_id)
                .bind(discrepancy.line)
                .bind(discrepancy.our_points)
                .bind(discrepancy.their_points)
                .bind(discrepancy.our_money_minor)
                .bind(discrepancy.their_money_minor)
                .bind(discrepancy.our_at_micros)
                .bind(discrepancy.their_at_micros)
                .bind(&discrepancy.status)
                .bind(&discrepancy.adjustment_id)
                .bind(&discrepancy.resolved_by)
                .bind(&discrepancy.resolution_reason);
        }
        statement.execute(self.database.pool()).await?;
        Ok(())
    }

    async fn store_reconciliation(
        &self,
        actor: &str,
        reconciliation: &Reconciliation,
    ) -> Result<(), SettlementError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "INSERT INTO settlement_reconciliations (reconciliation_id, partner_id, start_micros, \
             end_micros, partner_record_count, tandem_record_count, counts, submitted_by, \
             created_at_micros) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&reconciliation.reconciliation_id)
        .bind(&reconciliation.partner_id)
        .bind(to_unix_micros(reconciliation.start))
        .bind(to_unix_micros(reconciliation.end))
        .bind(reconciliation.partner_record_count)
        .bind(reconciliation.tandem_record_count)
        .bind(serde_json::to_string(&reconciliation.counts).expect("counts serialize"))
        .bind(actor)
        .bind(to_unix_micros(reconciliation.created_at))
        .execute(&mut *transaction)
        .await?;
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action: AuditAction::ReportReconciled,
                object_id: &reconciliation.reconciliation_id,
                reason: "",
                details: reconciliation
                    .counts
                    .iter()
                    .map(|(class, count)| (class.clone(), count.to_string()))
                    .collect(),
            },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(reconciliation_id = %reconciliation.reconciliation_id, actor, "partner report reconciled");
        Ok(())
    }

    /// One reconciliation, or RECONCILIATION_NOT_FOUND.
    pub async fn reconciliation(&self, id: &str) -> Result<Reconciliation, SettlementError> {
        let not_found = || SettlementError::ReconciliationNotFound(id.to_owned());
        if !tandem_domain::is_server_id(id) {
            return Err(not_found());
        }
        type Row = (String, String, i64, i64, i64, i64, String, String, i64);
        let row: Option<Row> = sqlx::query_as(
            "SELECT reconciliation_id, partner_id, start_micros, end_micros, \
             partner_record_count, tandem_record_count, counts, submitted_by, created_at_micros \
             FROM settlement_reconciliations WHERE reconciliation_id = $1",
        )
        .bind(id)
        .fetch_optional(self.database.pool())
        .await?;
        let (reconciliation_id, partner_id, start, end, theirs, ours, counts, by, at) =
            row.ok_or_else(not_found)?;
        Ok(Reconciliation {
            counts: serde_json::from_str(&counts).map_err(|error| {
                SettlementError::Internal(format!("reconciliation {id}: counts: {error}"))
            })?,
            reconciliation_id,
            partner_id,
            start: from_unix_micros(start),
            end: from_unix_micros(end),
            partner_record_count: theirs,
            tandem_record_count: ours,
            submitted_by: by,
            created_at: from_unix_micros(at),
            dry_run: false,
        })
    }

    /// One page of a reconciliation's discrepancies, optionally of one class.
    pub async fn discrepancies(
        &self,
        reconciliation_id: &str,
        class: Option<DiscrepancyClass>,
        page: &PageRequest,
    ) -> Result<(Vec<Discrepancy>, Option<PageCursor>), SettlementError> {
        let after = page
            .after
            .as_ref()
            .map(|cursor| cursor.id.clone())
            .unwrap_or_default();
        let class_condition = if class.is_some() {
            "AND class = $3"
        } else {
            "AND $3 = ''"
        };
        let rows: Vec<Discrepancy> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM settlement_discrepancies WHERE reconciliation_id = $1 \
             AND discrepancy_id > $2 {class_condition} ORDER BY discrepancy_id LIMIT $4"
        )))
        .bind(reconciliation_id)
        .bind(after)
        .bind(class.map(DiscrepancyClass::as_str).unwrap_or_default())
        .bind((page.size + 1) as i64)
        .fetch_all(self.database.pool())
        .await?;
        Ok(page.split(rows, |discrepancy| PageCursor {
            created_at_micros: 0,
            id: discrepancy.discrepancy_id.clone(),
        }))
    }

    /// One discrepancy, or DISCREPANCY_NOT_FOUND.
    pub async fn discrepancy(&self, id: &str) -> Result<Discrepancy, SettlementError> {
        if !tandem_domain::is_server_id(id) {
            return Err(SettlementError::DiscrepancyNotFound(id.to_owned()));
        }
        sqlx::query_as("SELECT * FROM settlement_discrepancies WHERE discrepancy_id = $1")
            .bind(id)
            .fetch_optional(self.database.pool())
            .await?
            .ok_or_else(|| SettlementError::DiscrepancyNotFound(id.to_owned()))
    }

    /// Resolves an open discrepancy by `adjustment_id`, or accepts it when that is `None`.
    pub async fn resolve_discrepancy(
        &self,
        actor: &str,
        id: &str,
        adjustment_id: Option<&str>,
        reason: &str,
    ) -> Result<Discrepancy, SettlementError> {
        let discrepancy = self.discrepancy(id).await?;
        if let Some(adjustment_id) = adjustment_id {
            let adjustment = self.adjustment(adjustment_id).await?;
            // Only a posted adjustment corrects anything; one waiting, rejected or refused
            // would mark the discrepancy resolved with nothing moved.
            if adjustment.status != crate::AdjustmentStatus::Posted {
                return Err(SettlementError::invalid(
                    "adjustment_id",
                    format!(
                        "adjustment {adjustment_id} is {}; only a POSTED adjustment resolves a \
                         discrepancy",
                        adjustment.status.as_str()
                    ),
                ));
            }
        }
        let status = if adjustment_id.is_some() {
            "ADJUSTED"
        } else {
            "ACCEPTED"
        };
        let mut transaction = self.database.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE settlement_discrepancies SET status = $1, adjustment_id = $2, \
             resolved_by = $3, resolution_reason = $4 WHERE discrepancy_id = $5 AND status = 'OPEN'",
        )
        .bind(status)
        .bind(adjustment_id.unwrap_or_default())
        .bind(actor)
        .bind(reason)
        .bind(id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(SettlementError::DiscrepancyResolved(
                discrepancy.discrepancy_id,
            ));
        }
        let details = BTreeMap::from([
            (
                "reconciliation_id".to_owned(),
                discrepancy.reconciliation_id.clone(),
            ),
            (
                "adjustment_id".to_owned(),
                adjustment_id.unwrap_or_default().to_owned(),
            ),
        ]);
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action: AuditAction::DiscrepancyResolved,
                object_id: id,
                reason,
                details,
            },
        )
        .await?;
        transaction.commit().await?;
        self.discrepancy(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ReportHeader {
        ReportHeader {
            partner: "01a20560-0000-7000-8000-00000000000a".parse().unwrap(),
            start: tandem_domain::now(),
            end: tandem_domain::now(),
            dry_run: false,
            amount_tolerance_minor: 1,
            time_tolerance_seconds: 60,
        }
    }

    fn compared(nth: i64, ours: i64, points: i64, our_points: i64, seconds: i64) -> Compared {
        (
            Some(1),
            "p-1".to_owned(),
            "ref".to_owned(),
            "CONVERSION".to_owned(),
            points,
            None,
            seconds * 1_000_000,
            nth,
            ours,
            Some(our_points),
            Some(0),
            Some(0),
        )
    }

    #[test]
    fn records_classify_by_presence_then_amount_then_time() {
        let header = header();
        let class = |compared| classify(&header, &compared);
        assert_eq!(
            class(compared(1, 1, 100, 100, 0)),
            DiscrepancyClass::Matched
        );
        assert_eq!(
            class(compared(1, 1, 101, 100, 60)),
            DiscrepancyClass::Matched,
            "within tolerance"
        );
        assert_eq!(
            class(compared(1, 1, 102, 100, 0)),
            DiscrepancyClass::AmountMismatch
        );
        assert_eq!(
            class(compared(1, 1, 100, 100, 61)),
            DiscrepancyClass::TimeMismatch
        );
        assert_eq!(
            class(compared(1, 0, 100, 0, 0)),
            DiscrepancyClass::MissingOurs
        );
        assert_eq!(
            class(compared(2, 1, 100, 100, 0)),
            DiscrepancyClass::Duplicate
        );
        let mut with_money = compared(1, 1, 100, 100, 0);
        with_money.5 = Some(5);
        assert_eq!(
            class(with_money),
            DiscrepancyClass::AmountMismatch,
            "money compared when given"
        );
    }

    #[test]
    fn stored_classes_read_back() {
        for class in DiscrepancyClass::ALL {
            assert_eq!(DiscrepancyClass::parse(class.as_str()).unwrap(), class);
        }
        assert!(DiscrepancyClass::parse("ODD").is_err());
    }
}
