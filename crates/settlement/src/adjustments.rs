//! Adjustments: balanced ledger transactions that ops post for what the exchange could not finish
//! by itself, with a reason and a reference; above the approval threshold, only after a second
//! ops user approves.
//!
//! The adjustment's row is written before anything is posted, with the audit event of the same
//! action, in one database transaction. Posting uses the key `tandem:adjustment:<id>`, so a post
//! interrupted by a crash (the ledger has it, the row still says POSTING) is posted again by the
//! same key and answered by the ledger as a replay: an adjustment never posts twice.

use std::collections::BTreeMap;

use tandem_domain::{Timestamp, from_unix_micros, to_unix_micros};
use tandem_ledger::{
    Direction, LedgerError, Leg, NewKind, NewTransaction, Purpose, check_balanced,
};
use tandem_storage::{PageCursor, PageRequest};

use crate::{
    Settlement, SettlementError,
    audit::{self, AuditAction, NewEvent},
};

/// Where an adjustment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentStatus {
    AwaitingApproval,
    Posting,
    Posted,
    Rejected,
    Failed,
}

impl AdjustmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentStatus::AwaitingApproval => "AWAITING_APPROVAL",
            AdjustmentStatus::Posting => "POSTING",
            AdjustmentStatus::Posted => "POSTED",
            AdjustmentStatus::Rejected => "REJECTED",
            AdjustmentStatus::Failed => "FAILED",
        }
    }

    /// A stored status; an unknown one is an error, never a default.
    pub fn parse(text: &str) -> Result<Self, SettlementError> {
        Ok(match text {
            "AWAITING_APPROVAL" => AdjustmentStatus::AwaitingApproval,
            "POSTING" => AdjustmentStatus::Posting,
            "POSTED" => AdjustmentStatus::Posted,
            "REJECTED" => AdjustmentStatus::Rejected,
            "FAILED" => AdjustmentStatus::Failed,
            other => {
                return Err(SettlementError::Internal(format!(
                    "unknown adjustment status {other:?} in storage"
                )));
            }
        })
    }
}

/// An adjustment as requested: checked for shape, not yet against the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAdjustment {
    pub idempotency_key: String,
    pub legs: Vec<Leg>,
    pub reason: String,
    pub reference: String,
}

/// A stored adjustment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub adjustment_id: String,
    pub idempotency_key: String,
    pub legs: Vec<Leg>,
    pub reason: String,
    pub reference: String,
    pub status: AdjustmentStatus,
    pub requested_by: String,
    pub decided_by: String,
    pub rejection_reason: String,
    pub transaction_id: String,
    pub amount_minor: i64,
    pub created_at: Timestamp,
    pub decided_at: Option<Timestamp>,
}

impl Adjustment {
    /// The ledger transaction this adjustment posts; the same every time it is asked, so a
    /// repeated post is the ledger's replay.
    fn transaction(&self) -> NewTransaction {
        let mut metadata = BTreeMap::from([
            ("adjustment_id".to_owned(), self.adjustment_id.clone()),
            ("reason".to_owned(), self.reason.clone()),
            ("requested_by".to_owned(), self.requested_by.clone()),
        ]);
        if !self.decided_by.is_empty() {
            metadata.insert("approved_by".to_owned(), self.decided_by.clone());
        }
        NewTransaction {
            idempotency_key: format!("tandem:adjustment:{}", self.adjustment_id),
            legs: self.legs.clone(),
            kind: NewKind::Posted,
            type_code: "ADJUSTMENT".to_owned(),
            external_reference: if self.reference.is_empty() {
                self.adjustment_id.clone()
            } else {
                self.reference.clone()
            },
            effective_at_micros: None,
            metadata,
        }
    }

    fn same_request(&self, new: &NewAdjustment) -> bool {
        self.legs == new.legs && self.reason == new.reason && self.reference == new.reference
    }
}

/// The longest ops user name a token carries (`tandem token --subject`), in bytes.
const MAX_OPS_USER_BYTES: usize = 100;

/// The largest amount an adjustment moves in any one unit (its debits there), which is what the
/// approval threshold is compared with.
fn amount_minor(legs: &[Leg], units: &[String]) -> i64 {
    let mut debits: BTreeMap<&str, i64> = BTreeMap::new();
    for (leg, unit) in legs.iter().zip(units) {
        if leg.direction == Direction::Debit {
            let total = debits.entry(unit.as_str()).or_default();
            *total = total.saturating_add(leg.amount_minor);
        }
    }
    debits.into_values().max().unwrap_or(0)
}

#[derive(sqlx::FromRow)]
struct AdjustmentRow {
    adjustment_id: String,
    idempotency_key: String,
    legs: String,
    reason: String,
    reference: String,
    status: String,
    requested_by: String,
    decided_by: String,
    rejection_reason: String,
    transaction_id: String,
    amount_minor: i64,
    created_at_micros: i64,
    decided_at_micros: Option<i64>,
}

const ADJUSTMENT_COLUMNS: &str = "adjustment_id, idempotency_key, legs, reason, reference, status, \
     requested_by, decided_by, rejection_reason, transaction_id, amount_minor, created_at_micros, \
     decided_at_micros";

impl AdjustmentRow {
    fn into_adjustment(self) -> Result<Adjustment, SettlementError> {
        let legs = serde_json::from_str(&self.legs).map_err(|error| {
            SettlementError::Internal(format!("adjustment {}: legs: {error}", self.adjustment_id))
        })?;
        Ok(Adjustment {
            status: AdjustmentStatus::parse(&self.status)?,
            adjustment_id: self.adjustment_id,
            idempotency_key: self.idempotency_key,
            legs,
            reason: self.reason,
            reference: self.reference,
            requested_by: self.requested_by,
            decided_by: self.decided_by,
            rejection_reason: self.rejection_reason,
            transaction_id: self.transaction_id,
            amount_minor: self.amount_minor,
            created_at: from_unix_micros(self.created_at_micros),
            decided_at: self.decided_at_micros.map(from_unix_micros),
        })
    }
}

/// Whether the ledger's answer is final: anything but a storage failure, a stop or a retryable
/// conflict, whose outcome is unknown or which may pass when asked again.
fn ledger_refused(error: &LedgerError) -> bool {
    !matches!(
        error,
        LedgerError::Storage(_) | LedgerError::Stopped | LedgerError::Conflict
    )
}

impl Settlement {
    /// Records `new` as requested by `actor` and, at or below the approval threshold, posts it.
    /// The same key with the same content returns the original (and finishes its post if a
    /// crash interrupted it); with other content it is refused.
    pub async fn post_adjustment(
        &self,
        actor: &str,
        new: NewAdjustment,
    ) -> Result<(Adjustment, bool), SettlementError> {
        if let Some(existing) = self.adjustment_by_key(&new.idempotency_key).await? {
            return self.replay(actor, existing, &new).await;
        }
        let mut adjustment = Adjustment {
            adjustment_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: new.idempotency_key.clone(),
            legs: new.legs.clone(),
            reason: new.reason.clone(),
            reference: new.reference.clone(),
            status: AdjustmentStatus::Posting,
            requested_by: actor.to_owned(),
            decided_by: String::new(),
            rejection_reason: String::new(),
            transaction_id: String::new(),
            amount_minor: 0,
            created_at: tandem_domain::now(),
            decided_at: None,
        };
        let units = self.check_against_ledger(&adjustment).await?;
        adjustment.amount_minor = amount_minor(&new.legs, &units);
        if adjustment.amount_minor > self.options.adjustment_approval_threshold_minor {
            adjustment.status = AdjustmentStatus::AwaitingApproval;
        }
        let (status, amount_minor) = (adjustment.status, adjustment.amount_minor);
        if !self.insert(&adjustment).await? {
            // The same key landed concurrently: answer as its replay.
            let existing = self
                .adjustment_by_key(&new.idempotency_key)
                .await?
                .ok_or_else(|| SettlementError::Internal("adjustment vanished".to_owned()))?;
            return self.replay(actor, existing, &new).await;
        }
        tracing::info!(adjustment_id = %adjustment.adjustment_id, actor, amount_minor, status = status.as_str(), "adjustment requested");
        if status == AdjustmentStatus::Posting {
            return Ok((self.finish_post(actor, adjustment).await?, false));
        }
        Ok((adjustment, false))
    }

    async fn replay(
        &self,
        actor: &str,
        existing: Adjustment,
        new: &NewAdjustment,
    ) -> Result<(Adjustment, bool), SettlementError> {
        if !existing.same_request(new) {
            return Err(SettlementError::IdempotencyKeyReused(
                new.idempotency_key.clone(),
            ));
        }
        if existing.status == AdjustmentStatus::Posting {
            return Ok((self.finish_post(actor, existing).await?, true));
        }
        Ok((existing, true))
    }

    /// The units of the legs' accounts, once the adjustment's own ledger transaction (its key,
    /// legs and metadata, as it will be posted) is shown to be one the ledger could post: every
    /// account open and not the bank clearing account, balanced in every unit.
    async fn check_against_ledger(
        &self,
        adjustment: &Adjustment,
    ) -> Result<Vec<String>, SettlementError> {
        let mut transaction = adjustment.transaction();
        // The approver's name joins the metadata when it posts; a stand-in of the longest name
        // checks that it will still fit.
        transaction
            .metadata
            .insert("approved_by".to_owned(), "x".repeat(MAX_OPS_USER_BYTES));
        transaction
            .validate()
            .map_err(|violations| SettlementError::from(LedgerError::Invalid(violations)))?;
        let mut units = Vec::with_capacity(adjustment.legs.len());
        for (index, leg) in adjustment.legs.iter().enumerate() {
            let account = self.ledger.account(leg.account).await?;
            // The bank clearing account moves only when a settlement run settles: an entry on it
            // would leave a run's positions short of zero.
            if account.purpose == Purpose::Bank {
                return Err(SettlementError::invalid(
                    &format!("legs[{index}].account_id"),
                    "is the bank clearing account, which only settlement runs move",
                ));
            }
            units.push(account.unit);
        }
        check_balanced(adjustment.legs.iter().zip(&units)).map_err(|description| {
            SettlementError::InvalidArgument(tandem_domain::Violations::single("legs", description))
        })?;
        Ok(units.iter().map(|unit| unit.to_string()).collect())
    }

    /// Approves and posts an adjustment awaiting approval; the requester may not approve it.
    pub async fn approve_adjustment(
        &self,
        actor: &str,
        id: &str,
    ) -> Result<Adjustment, SettlementError> {
        let adjustment = self.adjustment(id).await?;
        if adjustment.requested_by == actor {
            return Err(SettlementError::SameOpsUser(format!("adjustment {id}")));
        }
        match adjustment.status {
            AdjustmentStatus::AwaitingApproval => {}
            // Asked again after a crash or a timeout: finish what the approval started.
            AdjustmentStatus::Posting if adjustment.decided_by == actor => {
                return self.finish_post(actor, adjustment).await;
            }
            AdjustmentStatus::Posted | AdjustmentStatus::Failed
                if adjustment.decided_by == actor =>
            {
                return Ok(adjustment);
            }
            status => {
                return Err(SettlementError::NotAwaitingApproval {
                    id: id.to_owned(),
                    status: status.as_str(),
                });
            }
        }
        let decided = self
            .decide(
                &adjustment,
                actor,
                AdjustmentStatus::Posting,
                "",
                AuditAction::AdjustmentApproved,
            )
            .await?;
        self.finish_post(actor, decided).await
    }

    /// Rejects an adjustment awaiting approval; nothing is posted.
    pub async fn reject_adjustment(
        &self,
        actor: &str,
        id: &str,
        reason: &str,
    ) -> Result<Adjustment, SettlementError> {
        let adjustment = self.adjustment(id).await?;
        if adjustment.status != AdjustmentStatus::AwaitingApproval {
            return Err(SettlementError::NotAwaitingApproval {
                id: id.to_owned(),
                status: adjustment.status.as_str(),
            });
        }
        self.decide(
            &adjustment,
            actor,
            AdjustmentStatus::Rejected,
            reason,
            AuditAction::AdjustmentRejected,
        )
        .await
    }

    /// Moves an adjustment out of AWAITING_APPROVAL, with its audit event; refused when another
    /// decision landed first.
    async fn decide(
        &self,
        adjustment: &Adjustment,
        actor: &str,
        status: AdjustmentStatus,
        reason: &str,
        action: AuditAction,
    ) -> Result<Adjustment, SettlementError> {
        let now = tandem_domain::now();
        let mut transaction = self.database.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE settlement_adjustments SET status = $1, decided_by = $2, \
             rejection_reason = $3, decided_at_micros = $4 \
             WHERE adjustment_id = $5 AND status = 'AWAITING_APPROVAL'",
        )
        .bind(status.as_str())
        .bind(actor)
        .bind(reason)
        .bind(to_unix_micros(now))
        .bind(&adjustment.adjustment_id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed == 0 {
            drop(transaction);
            let current = self.adjustment(&adjustment.adjustment_id).await?;
            return Err(SettlementError::NotAwaitingApproval {
                id: current.adjustment_id,
                status: current.status.as_str(),
            });
        }
        let details = BTreeMap::from([(
            "amount_minor".to_owned(),
            adjustment.amount_minor.to_string(),
        )]);
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action,
                object_id: &adjustment.adjustment_id,
                reason,
                details,
            },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(adjustment_id = %adjustment.adjustment_id, actor, action = action.as_str(), "adjustment decided");
        let mut decided = adjustment.clone();
        decided.status = status;
        decided.decided_by = actor.to_owned();
        decided.rejection_reason = reason.to_owned();
        decided.decided_at = Some(now);
        Ok(decided)
    }

    /// Posts a POSTING adjustment by its key and records the outcome. An unknown outcome leaves
    /// it POSTING, to be posted again by the same key.
    async fn finish_post(
        &self,
        actor: &str,
        adjustment: Adjustment,
    ) -> Result<Adjustment, SettlementError> {
        let now = to_unix_micros(tandem_domain::now());
        let claimed = sqlx::query(
            "UPDATE settlement_adjustments SET posting_until_micros = $1 \
             WHERE adjustment_id = $2 AND status = 'POSTING' AND posting_until_micros < $3",
        )
        .bind(now + self.options.posting_lease.as_micros() as i64)
        .bind(&adjustment.adjustment_id)
        .bind(now)
        .execute(self.database.pool())
        .await?
        .rows_affected();
        if claimed == 0 {
            // Posted or refused already, or another request is posting it now.
            return self.adjustment(&adjustment.adjustment_id).await;
        }
        match self.ledger.post(adjustment.transaction()).await {
            Ok(posted) => {
                tandem_storage::test_pause::pause_at("adjustment-posted").await;
                let transaction_id = posted.transaction.id.to_string();
                self.record_outcome(
                    actor,
                    adjustment,
                    AdjustmentStatus::Posted,
                    &transaction_id,
                    "",
                )
                .await
            }
            Err(error) if ledger_refused(&error) => {
                tracing::warn!(adjustment_id = %adjustment.adjustment_id, %error, "the ledger refused an adjustment");
                let reason = format!("the ledger refused it: {error}");
                self.record_outcome(actor, adjustment, AdjustmentStatus::Failed, "", &reason)
                    .await
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn record_outcome(
        &self,
        actor: &str,
        mut adjustment: Adjustment,
        status: AdjustmentStatus,
        transaction_id: &str,
        reason: &str,
    ) -> Result<Adjustment, SettlementError> {
        let now = tandem_domain::now();
        let mut transaction = self.database.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE settlement_adjustments SET status = $1, transaction_id = $2, \
             rejection_reason = $3, decided_at_micros = COALESCE(decided_at_micros, $4) \
             WHERE adjustment_id = $5 AND status = 'POSTING'",
        )
        .bind(status.as_str())
        .bind(transaction_id)
        .bind(reason)
        .bind(to_unix_micros(now))
        .bind(&adjustment.adjustment_id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed == 0 {
            // Another request recorded the outcome first; it is the same post, by key.
            drop(transaction);
            return self.adjustment(&adjustment.adjustment_id).await;
        }
        let action = match status {
            AdjustmentStatus::Posted => AuditAction::AdjustmentPosted,
            _ => AuditAction::AdjustmentFailed,
        };
        let details = BTreeMap::from([("transaction_id".to_owned(), transaction_id.to_owned())]);
        audit::append(
            &mut transaction,
            NewEvent {
                actor,
                action,
                object_id: &adjustment.adjustment_id,
                reason,
                details,
            },
        )
        .await?;
        transaction.commit().await?;
        adjustment.status = status;
        adjustment.transaction_id = transaction_id.to_owned();
        adjustment.rejection_reason = reason.to_owned();
        adjustment.decided_at = adjustment.decided_at.or(Some(now));
        Ok(adjustment)
    }

    /// Posts every adjustment left POSTING whose posting lease lapsed (its request crashed or
    /// gave up); run by the recovery loop. Each is posted by its own key, so one the ledger
    /// already holds is only recorded.
    pub async fn resume_postings(&self) -> Result<usize, SettlementError> {
        let rows: Vec<AdjustmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ADJUSTMENT_COLUMNS} FROM settlement_adjustments \
             WHERE status = 'POSTING' AND posting_until_micros < $1"
        )))
        .bind(to_unix_micros(tandem_domain::now()))
        .fetch_all(self.database.pool())
        .await?;
        // Each adjustment on its own: one that fails now must not keep the others waiting.
        let mut finished = 0;
        for row in rows {
            let adjustment = row.into_adjustment()?;
            let actor = if adjustment.decided_by.is_empty() {
                adjustment.requested_by.clone()
            } else {
                adjustment.decided_by.clone()
            };
            let id = adjustment.adjustment_id.clone();
            match self.finish_post(&actor, adjustment).await {
                Ok(_) => finished += 1,
                Err(error) => {
                    tracing::warn!(adjustment_id = %id, %error, "adjustment still POSTING")
                }
            }
        }
        Ok(finished)
    }

    /// Writes a new adjustment with its ADJUSTMENT_REQUESTED event; false when its key was taken.
    async fn insert(&self, adjustment: &Adjustment) -> Result<bool, SettlementError> {
        let mut transaction = self.database.begin_write().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO settlement_adjustments ({ADJUSTMENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (idempotency_key) DO NOTHING"
        )))
        .bind(&adjustment.adjustment_id)
        .bind(&adjustment.idempotency_key)
        .bind(serde_json::to_string(&adjustment.legs).expect("legs serialize"))
        .bind(&adjustment.reason)
        .bind(&adjustment.reference)
        .bind(adjustment.status.as_str())
        .bind(&adjustment.requested_by)
        .bind(&adjustment.decided_by)
        .bind(&adjustment.rejection_reason)
        .bind(&adjustment.transaction_id)
        .bind(adjustment.amount_minor)
        .bind(to_unix_micros(adjustment.created_at))
        .bind(adjustment.decided_at.map(to_unix_micros))
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        let details = BTreeMap::from([
            (
                "amount_minor".to_owned(),
                adjustment.amount_minor.to_string(),
            ),
            ("reference".to_owned(), adjustment.reference.clone()),
        ]);
        audit::append(
            &mut transaction,
            NewEvent {
                actor: &adjustment.requested_by,
                action: AuditAction::AdjustmentRequested,
                object_id: &adjustment.adjustment_id,
                reason: &adjustment.reason,
                details,
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    async fn adjustment_by_key(&self, key: &str) -> Result<Option<Adjustment>, SettlementError> {
        let row: Option<AdjustmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ADJUSTMENT_COLUMNS} FROM settlement_adjustments WHERE idempotency_key = $1"
        )))
        .bind(key)
        .fetch_optional(self.database.pool())
        .await?;
        row.map(AdjustmentRow::into_adjustment).transpose()
    }

    /// One adjustment, or ADJUSTMENT_NOT_FOUND.
    pub async fn adjustment(&self, id: &str) -> Result<Adjustment, SettlementError> {
        // An id Tandem never made names no adjustment, and never reaches the database.
        if !tandem_domain::is_server_id(id) {
            return Err(SettlementError::AdjustmentNotFound(id.to_owned()));
        }
        let row: Option<AdjustmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ADJUSTMENT_COLUMNS} FROM settlement_adjustments WHERE adjustment_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await?;
        row.map(AdjustmentRow::into_adjustment)
            .transpose()?
            .ok_or_else(|| SettlementError::AdjustmentNotFound(id.to_owned()))
    }

    /// One page of adjustments, newest first, and the cursor of the next page.
    pub async fn adjustments(
        &self,
        status: Option<AdjustmentStatus>,
        page: &PageRequest,
    ) -> Result<(Vec<Adjustment>, Option<PageCursor>), SettlementError> {
        let before = page
            .after
            .as_ref()
            .map(|cursor| cursor.id.clone())
            // Past every UUID: the first page starts at the newest adjustment.
            .unwrap_or_else(|| "g".to_owned());
        let status_condition = if status.is_some() {
            "AND status = $3"
        } else {
            "AND $3 = ''"
        };
        let rows: Vec<AdjustmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ADJUSTMENT_COLUMNS} FROM settlement_adjustments \
             WHERE adjustment_id < $1 {status_condition} ORDER BY adjustment_id DESC LIMIT $2"
        )))
        .bind(before)
        .bind((page.size + 1) as i64)
        .bind(status.map(AdjustmentStatus::as_str).unwrap_or_default())
        .fetch_all(self.database.pool())
        .await?;
        let adjustments = rows
            .into_iter()
            .map(AdjustmentRow::into_adjustment)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.split(adjustments, |adjustment| PageCursor {
            created_at_micros: to_unix_micros(adjustment.created_at),
            id: adjustment.adjustment_id.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(direction: Direction, amount_minor: i64) -> Leg {
        Leg {
            account: tandem_ledger::AccountId::generate(),
            direction,
            amount_minor,
        }
    }

    #[test]
    fn the_amount_is_the_largest_debit_total_of_any_unit() {
        let legs = [
            leg(Direction::Debit, 700),
            leg(Direction::Debit, 300),
            leg(Direction::Credit, 1_000),
            leg(Direction::Debit, 5_000),
            leg(Direction::Credit, 5_000),
        ];
        let units = ["USD", "USD", "USD", "SKY", "SKY"].map(str::to_owned);
        assert_eq!(amount_minor(&legs, &units), 5_000);
        assert_eq!(amount_minor(&legs[..3], &units[..3]), 1_000);
    }

    #[test]
    fn stored_statuses_read_back_and_unknown_ones_are_errors() {
        for status in [
            AdjustmentStatus::AwaitingApproval,
            AdjustmentStatus::Posting,
            AdjustmentStatus::Posted,
            AdjustmentStatus::Rejected,
            AdjustmentStatus::Failed,
        ] {
            assert_eq!(AdjustmentStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(AdjustmentStatus::parse("DONE").is_err());
    }
}
