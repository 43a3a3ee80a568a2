//! Settlement runs: the closing of a period in one currency.
//!
//! A run holds every posted entry in its currency committed in its period, on every account but
//! the exchange's bank clearing account: the partners' settlement accounts, the exchange's fees
//! and adjustments. Its period runs from the cut-off of the live run before it (in the same
//! currency) up to its own cut-off, which the ledger seals first, so no entry of the period can
//! still appear; the runs of a currency thus follow one another without gap or overlap, and each
//! entry lands in exactly one of them. Only the newest live run may be cancelled, which hands its
//! period to the next run. The ledger transactions that settle a run (type code SETTLEMENT) are
//! never taken. Creating a run is one database transaction: the run, its positions (checked to
//! sum to zero) and its audit event land together or not at all.
//!
//! DRAFT → APPROVED (by another ops user) → SETTLING → SETTLED, or DRAFT → CANCELLED. Settling
//! is recorded before the ledger is asked, and the ledger is asked by keys derived from the run,
//! so a crash mid-settlement is finished by asking again, and never posts twice.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sqlx::AnyConnection;
use tandem_domain::{Timestamp, from_unix_micros, to_unix_micros};
use tandem_ledger::{
    AccountId, Direction, Guard, LedgerError, Leg, MAX_LEGS, NewKind, NewTransaction, Owner,
    Purpose, Unit,
};
use tandem_storage::{PageCursor, PageRequest};

use crate::{
    Settlement, SettlementError,
    audit::{self, AuditAction, NewEvent},
    netting::{Netting, PartyTotals},
};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Draft,
    Approved,
    Settling,
    Settled,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Draft => "DRAFT",
            RunStatus::Approved => "APPROVED",
            RunStatus::Settling => "SETTLING",
            RunStatus::Settled => "SETTLED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }

    /// A stored status; an unknown one is an error, never a default.
    pub fn parse(text: &str) -> Result<Self, SettlementError> {
        Ok(match text {
            "DRAFT" => RunStatus::Draft,
            "APPROVED" => RunStatus::Approved,
            "SETTLING" => RunStatus::Settling,
            "SETTLED" => RunStatus::Settled,
            "CANCELLED" => RunStatus::Cancelled,
            other => {
                return Err(SettlementError::Internal(format!(
                    "unknown settlement run status {other:?} in storage"
                )));
            }
        })
    }
}

/// A run's entries of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KindTotals {
    pub debits_minor: i64,
    pub credits_minor: i64,
    pub entry_count: i64,
}

/// What a run computed: a few rows per party, whatever the number of entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    /// Each party's totals, by party.
    pub positions: BTreeMap<String, PartyTotals>,
    /// What a debtor owes a creditor, as (debtor, creditor, amount).
    pub bilateral: Vec<(String, String, i64)>,
    /// Totals by kind.
    pub totals: BTreeMap<String, KindTotals>,
    /// Each account's net in the run, to move when it settles: (account id, net).
    pub account_nets: Vec<(String, i64)>,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRun {
    pub run_id: String,
    pub idempotency_key: String,
    pub currency: String,
    pub currency_scale: u32,
    /// Where its period starts: the previous live run's cut-off (the Unix epoch for the first).
    pub start: Timestamp,
    pub cutoff: Timestamp,
    pub status: RunStatus,
    pub created_by: String,
    pub approved_by: String,
    pub settled_by: String,
    pub cancelled_by: String,
    pub cancel_reason: String,
    pub summary: RunSummary,
    pub entry_count: i64,
    pub payment_references: BTreeMap<String, String>,
    pub settlement_transaction_ids: Vec<String>,
    pub created_at: Timestamp,
    pub decided_at: Option<Timestamp>,
}

/// A run as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub idempotency_key: String,
    pub currency: Unit,
    pub currency_scale: u32,
    pub cutoff: Timestamp,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: String,
    idempotency_key: String,
    currency: String,
    currency_scale: i64,
    start_micros: i64,
    cutoff_micros: i64,
    status: String,
    created_by: String,
    approved_by: String,
    settled_by: String,
    cancelled_by: String,
    cancel_reason: String,
    summary: String,
    entry_count: i64,
    payment_references: String,
    settlement_transaction_ids: String,
    created_at_micros: i64,
    decided_at_micros: Option<i64>,
}

const RUN_COLUMNS: &str = "run_id, idempotency_key, currency, currency_scale, start_micros, cutoff_micros, \
     status, created_by, approved_by, settled_by, cancelled_by, cancel_reason, summary, \
     entry_count, payment_references, settlement_transaction_ids, created_at_micros, \
     decided_at_micros";

fn corrupt(run_id: &str, what: &str, error: impl std::fmt::Display) -> SettlementError {
    SettlementError::Internal(format!("settlement run {run_id}: {what}: {error}"))
}

impl RunRow {
    fn into_run(self) -> Result<SettlementRun, SettlementError> {
        let id = self.run_id.clone();
        Ok(SettlementRun {
            status: RunStatus::parse(&self.status)?,
            summary: serde_json::from_str(&self.summary)
                .map_err(|error| corrupt(&id, "summary", error))?,
            payment_references: serde_json::from_str(&self.payment_references)
                .map_err(|error| corrupt(&id, "payment references", error))?,
            settlement_transaction_ids: serde_json::from_str(&self.settlement_transaction_ids)
                .map_err(|error| corrupt(&id, "settlement transactions", error))?,
            currency_scale: u32::try_from(self.currency_scale)
                .map_err(|error| corrupt(&id, "scale", error))?,
            run_id: self.run_id,
            idempotency_key: self.idempotency_key,
            currency: self.currency,
            start: from_unix_micros(self.start_micros),
            cutoff: from_unix_micros(self.cutoff_micros),
            created_by: self.created_by,
            approved_by: self.approved_by,
            settled_by: self.settled_by,
            cancelled_by: self.cancelled_by,
            cancel_reason: self.cancel_reason,
            entry_count: self.entry_count,
            created_at: from_unix_micros(self.created_at_micros),
            decided_at: self.decided_at_micros.map(from_unix_micros),
        })
    }
}

/// The run's type code on the ledger transactions that settle it; never taken by a run.
const SETTLEMENT_TYPE_CODE: &str = "SETTLEMENT";

/// The kind a run files an entry under: REVERSAL for a reversal, else the transaction's type
/// code (its kind when it has none). The same expression serves the statements.
const KIND_OF_ENTRY: &str = "CASE WHEN t.kind = 'REVERSAL' THEN 'REVERSAL' \
     WHEN t.type_code = '' THEN t.kind ELSE t.type_code END";

/// The entries of a run's period: posted, in its currency, committed in [$2, $3), of a
/// transaction that does not settle a run ($4).
const PERIOD_ENTRIES: &str = "FROM ledger_entries e \
     JOIN ledger_transactions t ON t.transaction_id = e.transaction_id \
     WHERE e.unit = $1 AND e.phase = 'POSTED' AND e.committed_at_micros >= $2 \
     AND e.committed_at_micros < $3 AND t.type_code <> $4";

/// The entry's transaction reaches no bank clearing account: a run leaves out such a
/// transaction whole (see `Summing::add`).
const OUTSIDE_BANK: &str = "NOT EXISTS (SELECT 1 FROM ledger_entries b \
     JOIN ledger_accounts ba ON ba.account_id = b.account_id \
     WHERE b.transaction_id = e.transaction_id AND ba.purpose = 'BANK')";

/// One transaction's entries in a period: (party, account, debit, credit), and whether one of
/// them is on the bank clearing account.
#[derive(Default)]
struct PeriodTransaction {
    kind: String,
    entries: Vec<(String, String, i64, i64)>,
    reaches_bank: bool,
}

/// What a run's summary adds up while it reads its period.
#[derive(Default)]
struct Summing {
    netting: Netting,
    totals: BTreeMap<String, KindTotals>,
    account_nets: BTreeMap<String, i64>,
    entry_count: i64,
}

impl Summing {
    /// Adds one transaction; one that reaches the bank clearing account is left out whole: its
    /// other entries alone would leave the positions short of zero (adjustments may not touch
    /// that account, and settlements are left out by their type code, so none should exist).
    fn add(&mut self, transaction: &PeriodTransaction) {
        if transaction.reaches_bank || transaction.entries.is_empty() {
            return;
        }
        let kind_totals = self.totals.entry(transaction.kind.clone()).or_default();
        let mut parties = Vec::with_capacity(transaction.entries.len());
        for (party, account, debit, credit) in &transaction.entries {
            kind_totals.debits_minor += debit;
            kind_totals.credits_minor += credit;
            kind_totals.entry_count += 1;
            *self.account_nets.entry(account.clone()).or_default() += credit - debit;
            parties.push((party.clone(), *debit, *credit));
        }
        self.entry_count += transaction.entries.len() as i64;
        self.netting.add_transaction(&parties);
    }
}

/// Positions, the bilateral breakdown and totals of the entries of `currency` committed in
/// [`start`, `cutoff`), read as a stream in transaction order: memory holds one transaction's
/// entries at a time. Returns the summary and how many entries it holds.
async fn summarize(
    connection: &mut AnyConnection,
    currency: &str,
    (start, cutoff): (i64, i64),
) -> Result<(RunSummary, i64), SettlementError> {
    // The currency's accounts, by id: a few rows, joined here rather than on every entry.
    let accounts: std::collections::HashMap<String, (String, String)> =
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT account_id, owner, purpose FROM ledger_accounts WHERE unit = $1",
        )
        .bind(currency)
        .fetch_all(&mut *connection)
        .await?
        .into_iter()
        .map(|(account, owner, purpose)| (account, (owner, purpose)))
        .collect();
    let mut summing = Summing::default();
    let mut current: Option<String> = None;
    let mut transaction = PeriodTransaction::default();
    {
        let mut rows =
            sqlx::query_as::<_, (String, String, String, i64, i64)>(sqlx::AssertSqlSafe(format!(
                "SELECT e.transaction_id, {KIND_OF_ENTRY}, e.account_id, e.debit_minor, \
                 e.credit_minor {PERIOD_ENTRIES} ORDER BY e.transaction_id, e.leg"
            )))
            .bind(currency)
            .bind(start)
            .bind(cutoff)
            .bind(SETTLEMENT_TYPE_CODE)
            .fetch(&mut *connection);
        while let Some((transaction_id, kind, account, debit, credit)) = rows.try_next().await? {
            if current.as_deref() != Some(transaction_id.as_str()) {
                summing.add(&transaction);
                transaction = PeriodTransaction {
                    kind,
                    ..PeriodTransaction::default()
                };
                current = Some(transaction_id);
            }
            let (party, purpose) = accounts.get(&account).ok_or_else(|| {
                SettlementError::Internal(format!("entry on account {account}, not in {currency}"))
            })?;
            transaction.reaches_bank |= purpose == Purpose::Bank.as_str();
            transaction
                .entries
                .push((party.clone(), account, debit, credit));
        }
    }
    summing.add(&transaction);
    if summing.netting.imbalance_minor() != 0 {
        return Err(SettlementError::RunUnbalanced(
            summing.netting.imbalance_minor(),
        ));
    }
    let summary = RunSummary {
        positions: summing.netting.parties,
        bilateral: summing
            .netting
            .bilateral
            .into_iter()
            .map(|((debtor, creditor), amount)| (debtor, creditor, amount))
            .collect(),
        totals: summing.totals,
        account_nets: summing
            .account_nets
            .into_iter()
            .filter(|(_, net)| *net != 0)
            .collect(),
    };
    Ok((summary, summing.entry_count))
}

/// Serializes the creation and cancelling of a currency's runs, which decide where periods start
/// and end. SQLite's write lock already does.
async fn lock_periods(connection: &mut AnyConnection, currency: &str) -> Result<(), sqlx::Error> {
    if tandem_storage::Backend::of(connection) == tandem_storage::Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tandem settlement runs ' || $1))")
            .bind(currency)
            .execute(connection)
            .await?;
    }
    Ok(())
}

/// The newest live run of `currency`: its id and cut-off.
async fn last_live_run(
    connection: &mut AnyConnection,
    currency: &str,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT run_id, cutoff_micros FROM settlement_runs \
         WHERE currency = $1 AND status <> 'CANCELLED' \
         ORDER BY cutoff_micros DESC, run_id DESC LIMIT 1",
    )
    .bind(currency)
    .fetch_optional(connection)
    .await
}

impl Settlement {
    /// Creates the run of `new`'s currency and cut-off as `actor`, DRAFT; the same key with the
    /// same currency and cut-off returns the original.
    pub async fn create_run(
        &self,
        actor: &str,
        new: NewRun,
    ) -> Result<(SettlementRun, bool), SettlementError> {
        if let Some(existing) = self.run_by_key(&new.idempotency_key).await? {
            return replay(existing, &new);
        }
        // Every entry before the cut-off is committed and visible from here on.
        self.ledger.seal_before(new.cutoff).await?;
        tandem_storage::test_pause::pause_at("run-sealed").await;
        let run_id = uuid::Uuid::now_v7().to_string();
        let cutoff = to_unix_micros(new.cutoff);
        let mut transaction = self.database.begin_write().await?;
        lock_periods(&mut transaction, new.currency.as_str()).await?;
        let start = match last_live_run(&mut transaction, new.currency.as_str()).await? {
            Some((_, last)) if last >= cutoff => {
                drop(transaction);
                if let Some(existing) = self.run_by_key(&new.idempotency_key).await? {
                    return replay(existing, &new);
                }
                return Err(SettlementError::CutoffNotAfterLastRun {
                    currency: new.currency.to_string(),
                    last_cutoff: from_unix_micros(last).to_rfc3339(),
                });
            }
            Some((_, last)) => last,
            None => 0,
        };
        let (summary, entry_count) =
            summarize(&mut transaction, new.currency.as_str(), (start, cutoff)).await?;
        let inserted = self
            .insert_run(&mut transaction, actor, &run_id, &new, (start, cutoff))
            .await?;
        if !inserted {
            drop(transaction);
            let existing = self
                .run_by_key(&new.idempotency_key)
                .await?
                .ok_or(SettlementError::Conflict)?;
            return replay(existing, &new);
        }
        sqlx::query("UPDATE settlement_runs SET summary = $1, entry_count = $2 WHERE run_id = $3")
            .bind(serde_json::to_string(&summary).expect("a summary serializes"))
            .bind(entry_count)
            .bind(&run_id)
            .execute(&mut *transaction)
            .await?;
        let details = BTreeMap::from([
            ("currency".to_owned(), new.currency.to_string()),
            ("entry_count".to_owned(), entry_count.to_string()),
        ]);
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action: AuditAction::RunCreated,
                object_id: &run_id,
                reason: "",
                details,
            },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(%run_id, actor, entry_count, currency = %new.currency, "settlement run created");
        Ok((self.run(&run_id).await?, false))
    }

    /// Inserts a DRAFT run for the period [`start`, `cutoff`); false when its key is taken.
    async fn insert_run(
        &self,
        connection: &mut AnyConnection,
        actor: &str,
        run_id: &str,
        new: &NewRun,
        (start, cutoff): (i64, i64),
    ) -> Result<bool, SettlementError> {
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO settlement_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, 'DRAFT', \
             $7, '', '', '', '', '{{}}', 0, '{{}}', '[]', $8, NULL) ON CONFLICT DO NOTHING"
        )))
        .bind(run_id)
        .bind(&new.idempotency_key)
        .bind(new.currency.as_str())
        .bind(i64::from(new.currency_scale))
        .bind(start)
        .bind(cutoff)
        .bind(actor)
        .bind(to_unix_micros(tandem_domain::now()))
        .execute(connection)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Approves a DRAFT run; its creator may not.
    pub async fn approve_run(
        &self,
        actor: &str,
        id: &str,
    ) -> Result<SettlementRun, SettlementError> {
        let run = self.run(id).await?;
        if run.created_by == actor {
            return Err(SettlementError::SameOpsUser(format!("settlement run {id}")));
        }
        if run.status == RunStatus::Approved && run.approved_by == actor {
            return Ok(run);
        }
        self.move_run(
            &run,
            (RunStatus::Draft, RunStatus::Approved),
            "approved_by = $3",
            (actor, ""),
            AuditAction::RunApproved,
        )
        .await
    }

    /// Cancels a DRAFT run, the newest live one of its currency: its period goes to the next
    /// run.
    pub async fn cancel_run(
        &self,
        actor: &str,
        id: &str,
        reason: &str,
    ) -> Result<SettlementRun, SettlementError> {
        let run = self.run(id).await?;
        let mut transaction = self.database.begin_write().await?;
        lock_periods(&mut transaction, &run.currency).await?;
        if let Some((later, _)) = last_live_run(&mut transaction, &run.currency).await?
            && later != run.run_id
            && run.status == RunStatus::Draft
        {
            return Err(SettlementError::LaterRunExists {
                id: run.run_id,
                later,
            });
        }
        self.move_run_in(
            transaction,
            &run,
            (RunStatus::Draft, RunStatus::Cancelled),
            "cancelled_by = $3, cancel_reason = $4",
            (actor, reason),
            AuditAction::RunCancelled,
        )
        .await
    }

    /// Moves `run` from `from` to `to`, setting `assignments` ($3 the actor, $4 the reason),
    /// with its audit event.
    async fn move_run(
        &self,
        run: &SettlementRun,
        from_to: (RunStatus, RunStatus),
        assignments: &str,
        actor_reason: (&str, &str),
        action: AuditAction,
    ) -> Result<SettlementRun, SettlementError> {
        let transaction = self.database.begin_write().await?;
        self.move_run_in(transaction, run, from_to, assignments, actor_reason, action)
            .await
    }

    /// [`Self::move_run`] in a transaction already begun, committed here.
    async fn move_run_in(
        &self,
        mut transaction: sqlx::Transaction<'static, sqlx::Any>,
        run: &SettlementRun,
        (from, to): (RunStatus, RunStatus),
        assignments: &str,
        (actor, reason): (&str, &str),
        action: AuditAction,
    ) -> Result<SettlementRun, SettlementError> {
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE settlement_runs SET status = $1, {assignments}, decided_at_micros = $5 \
             WHERE run_id = $2 AND status = $6"
        )))
        .bind(to.as_str())
        .bind(&run.run_id)
        .bind(actor)
        .bind(reason)
        .bind(to_unix_micros(tandem_domain::now()))
        .bind(from.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed == 0 {
            drop(transaction);
            let current = self.run(&run.run_id).await?;
            return Err(SettlementError::RunNotInStatus {
                id: run.run_id.clone(),
                status: current.status.as_str(),
                expected: from.as_str(),
            });
        }
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action,
                object_id: &run.run_id,
                reason,
                details: BTreeMap::new(),
            },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(run_id = %run.run_id, actor, action = action.as_str(), "settlement run moved");
        self.run(&run.run_id).await
    }

    /// Records the payments of an APPROVED run and moves every account's net to the exchange's
    /// bank clearing account. Asked again (after a crash, or a timeout), it finishes by the same
    /// ledger keys.
    pub async fn settle_run(
        &self,
        actor: &str,
        id: &str,
        payment_references: BTreeMap<String, String>,
    ) -> Result<SettlementRun, SettlementError> {
        let run = self.run(id).await?;
        match run.status {
            // Asked again (after a crash or a timeout): the same payments finish it; others are
            // a different settlement, refused.
            RunStatus::Settling | RunStatus::Settled
                if run.payment_references == payment_references =>
            {
                return self.finish_settling(actor, run).await;
            }
            RunStatus::Settling | RunStatus::Settled => {
                return Err(SettlementError::PaymentReferencesDiffer(id.to_owned()));
            }
            RunStatus::Approved => {}
            status => {
                return Err(SettlementError::RunNotInStatus {
                    id: id.to_owned(),
                    status: status.as_str(),
                    expected: RunStatus::Approved.as_str(),
                });
            }
        }
        check_payment_references(&run, &payment_references)?;
        // Opened (or found) before SETTLING is recorded: an account the ledger refuses leaves the
        // run APPROVED, not stuck half-settled.
        self.bank_clearing(&run).await?;
        self.record_settling(actor, id, payment_references).await?;
        let run = self.run(id).await?;
        self.finish_settling(actor, run).await
    }

    /// Records an APPROVED run SETTLING with its payments, and the audit event; when another
    /// request moved it first, nothing is written and that request's settling is finished.
    async fn record_settling(
        &self,
        actor: &str,
        id: &str,
        payment_references: BTreeMap<String, String>,
    ) -> Result<(), SettlementError> {
        let references =
            serde_json::to_string(&payment_references).expect("a string map serializes");
        let mut transaction = self.database.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE settlement_runs SET status = 'SETTLING', settled_by = $1, \
             payment_references = $2 WHERE run_id = $3 AND status = 'APPROVED'",
        )
        .bind(actor)
        .bind(&references)
        .bind(id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(());
        }
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action: AuditAction::RunSettling,
                object_id: id,
                reason: "",
                details: payment_references,
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Posts a SETTLING run's settlement transactions by their keys and records it SETTLED.
    async fn finish_settling(
        &self,
        actor: &str,
        run: SettlementRun,
    ) -> Result<SettlementRun, SettlementError> {
        if run.status != RunStatus::Settling {
            return Ok(run);
        }
        let clearing = self.bank_clearing(&run).await?;
        let mut transaction_ids = Vec::new();
        for (chunk, nets) in run.summary.account_nets.chunks(MAX_LEGS - 1).enumerate() {
            let posted = self
                .ledger
                .post(settlement_transaction(&run, chunk, nets, clearing.id)?)
                .await
                .map_err(|error| match error {
                    LedgerError::Storage(_) | LedgerError::Stopped | LedgerError::Conflict => {
                        SettlementError::from(error)
                    }
                    // A refusal of a transaction the run computed is a fault to look into,
                    // not the caller's: the run stays SETTLING until it posts.
                    other => SettlementError::Internal(format!(
                        "the ledger refused settlement run {}: {other}",
                        run.run_id
                    )),
                })?;
            transaction_ids.push(posted.transaction.id.to_string());
        }
        tandem_storage::test_pause::pause_at("run-settlement-posted").await;
        let ids = serde_json::to_string(&transaction_ids).expect("strings serialize");
        let mut transaction = self.database.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE settlement_runs SET status = 'SETTLED', settlement_transaction_ids = $1, \
             decided_at_micros = $2 WHERE run_id = $3 AND status = 'SETTLING'",
        )
        .bind(&ids)
        .bind(to_unix_micros(tandem_domain::now()))
        .bind(&run.run_id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed == 1 {
            let details =
                BTreeMap::from([("transaction_ids".to_owned(), transaction_ids.join(" "))]);
            audit::append(
                &mut transaction,
                NewEvent {
                    actor,
                    action: AuditAction::RunSettled,
                    object_id: &run.run_id,
                    reason: "",
                    details,
                },
            )
            .await?;
            transaction.commit().await?;
            tracing::info!(run_id = %run.run_id, actor, "settlement run settled");
            // Balances start from the settled period's end from now on. A checkpoint that
            // fails costs only speed; the periodic one takes its place.
            if let Err(error) = self.ledger.checkpoint(run.cutoff).await {
                tracing::warn!(run_id = %run.run_id, %error, "no checkpoint at the run's cut-off");
            }
        }
        self.run(&run.run_id).await
    }

    /// Takes a ledger checkpoint as of now when the newest is older than `every` (or there is
    /// none) and the ledger has accounts to record; how many it recorded, if it took one.
    pub async fn checkpoint_if_due(
        &self,
        every: std::time::Duration,
    ) -> Result<Option<usize>, SettlementError> {
        let now = tandem_domain::now();
        let due = match self.ledger.newest_checkpoint().await? {
            Some(newest) => (now - newest).to_std().unwrap_or_default() >= every,
            None => true,
        };
        // A ledger without accounts has nothing to record, and would be sealed for nothing on
        // every look; its accounts are read only once a checkpoint is due.
        if !due || self.ledger.account_ids().await?.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.ledger.checkpoint(now).await?))
    }

    /// The exchange's bank clearing account in `run`'s currency, opened on first use: where a
    /// settled run moves every account's net.
    async fn bank_clearing(
        &self,
        run: &SettlementRun,
    ) -> Result<tandem_ledger::Account, SettlementError> {
        let currency =
            Unit::parse(&run.currency).map_err(|error| corrupt(&run.run_id, "currency", error))?;
        Ok(self
            .ledger
            .open_account(
                Owner::Exchange,
                Purpose::Bank,
                &currency,
                run.currency_scale,
                Guard::None,
            )
            .await?)
    }

    /// Finishes every run left SETTLING, by the run's own keys; run by the recovery loop. How
    /// many it finished; one that still fails is logged and tried again next time.
    pub async fn resume_settling(&self) -> Result<usize, SettlementError> {
        let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM settlement_runs WHERE status = 'SETTLING'"
        )))
        .fetch_all(self.database.pool())
        .await?;
        // Each run on its own: one the ledger refuses (it stays SETTLING until ops fix what the
        // ledger names) must not keep the others from finishing.
        let mut finished = 0;
        for row in rows {
            let run = row.into_run()?;
            let (id, actor) = (run.run_id.clone(), run.settled_by.clone());
            match self.finish_settling(&actor, run).await {
                Ok(_) => finished += 1,
                Err(error) => {
                    tracing::warn!(run_id = %id, %error, "settlement run still SETTLING");
                }
            }
        }
        Ok(finished)
    }

    async fn run_by_key(&self, key: &str) -> Result<Option<SettlementRun>, SettlementError> {
        let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM settlement_runs WHERE idempotency_key = $1"
        )))
        .bind(key)
        .fetch_optional(self.database.pool())
        .await?;
        row.map(RunRow::into_run).transpose()
    }

    /// One run, or SETTLEMENT_RUN_NOT_FOUND.
    pub async fn run(&self, id: &str) -> Result<SettlementRun, SettlementError> {
        if !tandem_domain::is_server_id(id) {
            return Err(SettlementError::RunNotFound(id.to_owned()));
        }
        let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM settlement_runs WHERE run_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await?;
        row.map(RunRow::into_run)
            .transpose()?
            .ok_or_else(|| SettlementError::RunNotFound(id.to_owned()))
    }

    /// One page of runs, newest first, and the cursor of the next page.
    pub async fn runs(
        &self,
        status: Option<RunStatus>,
        page: &PageRequest,
    ) -> Result<(Vec<SettlementRun>, Option<PageCursor>), SettlementError> {
        let before = page
            .after
            .as_ref()
            .map(|cursor| cursor.id.clone())
            // Past every UUID: the first page starts at the newest run.
            .unwrap_or_else(|| "g".to_owned());
        let status_condition = if status.is_some() {
            "AND status = $3"
        } else {
            "AND $3 = ''"
        };
        let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM settlement_runs WHERE run_id < $1 {status_condition} \
             ORDER BY run_id DESC LIMIT $2"
        )))
        .bind(before)
        .bind((page.size + 1) as i64)
        .bind(status.map(RunStatus::as_str).unwrap_or_default())
        .fetch_all(self.database.pool())
        .await?;
        let runs = rows
            .into_iter()
            .map(RunRow::into_run)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.split(runs, |run| PageCursor {
            created_at_micros: to_unix_micros(run.created_at),
            id: run.run_id.clone(),
        }))
    }
}

/// A payment reference for every party of `run` with a net position, and for no one else.
fn check_payment_references(
    run: &SettlementRun,
    references: &BTreeMap<String, String>,
) -> Result<(), SettlementError> {
    let mut violations = tandem_domain::Violations::new();
    for (party, totals) in &run.summary.positions {
        if totals.net_minor() != 0 && !references.contains_key(party) {
            violations.push(tandem_domain::FieldViolation::new(
                format!("payment_references[{party}]"),
                "is required: the party has a net position in the run",
            ));
        }
    }
    for party in references.keys() {
        if !run.summary.positions.contains_key(party) {
            violations.push(tandem_domain::FieldViolation::new(
                format!("payment_references[{party}]"),
                "names no party of the run",
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(SettlementError::InvalidArgument(violations))
    }
}

fn replay(existing: SettlementRun, new: &NewRun) -> Result<(SettlementRun, bool), SettlementError> {
    if existing.currency != new.currency.as_str()
        || to_unix_micros(existing.cutoff) != to_unix_micros(new.cutoff)
    {
        return Err(SettlementError::IdempotencyKeyReused(
            new.idempotency_key.clone(),
        ));
    }
    Ok((existing, true))
}

/// The `chunk`th settlement transaction of `run`: each account's net moved to `clearing`, which
/// takes the difference, so every chunk balances and the clearing account returns to zero once
/// all have posted.
fn settlement_transaction(
    run: &SettlementRun,
    chunk: usize,
    nets: &[(String, i64)],
    clearing: AccountId,
) -> Result<NewTransaction, SettlementError> {
    let mut legs = Vec::with_capacity(nets.len() + 1);
    let mut clearing_net = 0_i64;
    for (account, net) in nets {
        let account: AccountId = account
            .parse()
            .map_err(|error| corrupt(&run.run_id, "account", error))?;
        // An account the coalition owes (credits over debits) is debited back to zero.
        let direction = if *net > 0 {
            Direction::Debit
        } else {
            Direction::Credit
        };
        legs.push(Leg {
            account,
            direction,
            amount_minor: net.abs(),
        });
        clearing_net += net;
    }
    if clearing_net != 0 {
        legs.push(Leg {
            account: clearing,
            direction: if clearing_net > 0 {
                Direction::Credit
            } else {
                Direction::Debit
            },
            amount_minor: clearing_net.abs(),
        });
    }
    Ok(NewTransaction {
        idempotency_key: format!("tandem:settlement-run:{}:{chunk}", run.run_id),
        legs,
        kind: NewKind::Posted,
        type_code: SETTLEMENT_TYPE_CODE.to_owned(),
        external_reference: run.run_id.clone(),
        effective_at_micros: Some(to_unix_micros(run.cutoff)),
        metadata: BTreeMap::from([("settled_by".to_owned(), run.settled_by.clone())]),
    })
}

/// One line of a party's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    pub transaction_id: String,
    pub leg: i64,
    pub kind: String,
    pub external_reference: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub committed_at: Timestamp,
}

impl Settlement {
    /// One page of `party`'s lines in `run`, in commit order, and the next page's cursor.
    pub async fn statement_lines(
        &self,
        run: &SettlementRun,
        party: &str,
        page: &PageRequest,
    ) -> Result<(Vec<StatementLine>, Option<PageCursor>), SettlementError> {
        // The cursor's id is "<transaction id>:<leg>".
        let (after_micros, after_transaction, after_leg) = match &page.after {
            Some(cursor) => {
                let (transaction, leg) = cursor.id.rsplit_once(':').ok_or_else(|| {
                    SettlementError::invalid(
                        "page_token",
                        "is not a page token from a previous response",
                    )
                })?;
                let leg: i64 = leg.parse().map_err(|_| {
                    SettlementError::invalid(
                        "page_token",
                        "is not a page token from a previous response",
                    )
                })?;
                (cursor.created_at_micros, transaction.to_owned(), leg)
            }
            None => (i64::MIN, String::new(), -1),
        };
        let rows: Vec<(String, i64, String, String, i64, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT e.transaction_id, e.leg, {KIND_OF_ENTRY}, t.external_reference, \
                 e.debit_minor, e.credit_minor, e.committed_at_micros {PERIOD_ENTRIES} \
                 AND e.account_id IN (SELECT account_id FROM ledger_accounts WHERE owner = $5) \
                 AND {OUTSIDE_BANK} AND (e.committed_at_micros > $6 \
                 OR (e.committed_at_micros = $6 AND (e.transaction_id > $7 \
                 OR (e.transaction_id = $7 AND e.leg > $8)))) \
                 ORDER BY e.committed_at_micros, e.transaction_id, e.leg LIMIT $9"
            )))
            .bind(&run.currency)
            .bind(to_unix_micros(run.start))
            .bind(to_unix_micros(run.cutoff))
            .bind(SETTLEMENT_TYPE_CODE)
            .bind(party)
            .bind(after_micros)
            .bind(&after_transaction)
            .bind(after_leg)
            .bind((page.size + 1) as i64)
            .fetch_all(self.database.pool())
            .await?;
        let lines = rows
            .into_iter()
            .map(
                |(transaction_id, leg, kind, external_reference, debit, credit, micros)| {
                    StatementLine {
                        transaction_id,
                        leg,
                        kind,
                        external_reference,
                        debit_minor: debit,
                        credit_minor: credit,
                        committed_at: from_unix_micros(micros),
                    }
                },
            )
            .collect();
        Ok(page.split(lines, |line: &StatementLine| PageCursor {
            created_at_micros: to_unix_micros(line.committed_at),
            id: format!("{}:{}", line.transaction_id, line.leg),
        }))
    }

    /// `party`'s totals by kind in `run`.
    pub async fn statement_totals(
        &self,
        run: &SettlementRun,
        party: &str,
    ) -> Result<BTreeMap<String, KindTotals>, SettlementError> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {KIND_OF_ENTRY} AS entry_kind, CAST(SUM(e.debit_minor) AS BIGINT), \
             CAST(SUM(e.credit_minor) AS BIGINT), COUNT(*) {PERIOD_ENTRIES} \
             AND e.account_id IN (SELECT account_id FROM ledger_accounts WHERE owner = $5) \
                 AND {OUTSIDE_BANK} GROUP BY entry_kind ORDER BY entry_kind"
        )))
        .bind(&run.currency)
        .bind(to_unix_micros(run.start))
        .bind(to_unix_micros(run.cutoff))
        .bind(SETTLEMENT_TYPE_CODE)
        .bind(party)
        .fetch_all(self.database.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kind, debits, credits, count)| {
                (
                    kind,
                    KindTotals {
                        debits_minor: debits,
                        credits_minor: credits,
                        entry_count: count,
                    },
                )
            })
            .collect())
    }
}
