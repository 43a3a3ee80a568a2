//! The audit trail: every ops action, appended in the same database transaction as the change it
//! records, and never edited.

use std::collections::BTreeMap;

use sqlx::AnyConnection;
use tandem_domain::{Timestamp, from_unix_micros};
use tandem_storage::{PageCursor, PageRequest};

use crate::{Settlement, SettlementError};

/// What an ops user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    AdjustmentRequested,
    AdjustmentApproved,
    AdjustmentRejected,
    AdjustmentPosted,
    AdjustmentFailed,
    RunCreated,
    RunApproved,
    RunCancelled,
    RunSettling,
    RunSettled,
    ReportReconciled,
    DiscrepancyResolved,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::AdjustmentRequested => "ADJUSTMENT_REQUESTED",
            AuditAction::AdjustmentApproved => "ADJUSTMENT_APPROVED",
            AuditAction::AdjustmentRejected => "ADJUSTMENT_REJECTED",
            AuditAction::AdjustmentPosted => "ADJUSTMENT_POSTED",
            AuditAction::AdjustmentFailed => "ADJUSTMENT_FAILED",
            AuditAction::RunCreated => "SETTLEMENT_RUN_CREATED",
            AuditAction::RunApproved => "SETTLEMENT_RUN_APPROVED",
            AuditAction::RunCancelled => "SETTLEMENT_RUN_CANCELLED",
            AuditAction::RunSettling => "SETTLEMENT_RUN_SETTLING",
            AuditAction::RunSettled => "SETTLEMENT_RUN_SETTLED",
            AuditAction::ReportReconciled => "PARTNER_REPORT_RECONCILED",
            AuditAction::DiscrepancyResolved => "DISCREPANCY_RESOLVED",
        }
    }
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub event_id: String,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub object_id: String,
    pub reason: String,
    pub details: BTreeMap<String, String>,
}

/// An action about to be recorded.
pub(crate) struct NewEvent<'a> {
    pub actor: &'a str,
    pub action: AuditAction,
    pub object_id: &'a str,
    pub reason: &'a str,
    pub details: BTreeMap<String, String>,
}

/// Appends `event` on `connection`, inside the caller's transaction.
pub(crate) async fn append(
    connection: &mut AnyConnection,
    event: NewEvent<'_>,
) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO settlement_audit_events \
         (event_id, at_micros, actor, action, object_id, reason, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(tandem_domain::to_unix_micros(tandem_domain::now()))
    .bind(event.actor)
    .bind(event.action.as_str())
    .bind(event.object_id)
    .bind(event.reason)
    .bind(serde_json::to_string(&event.details).expect("string maps serialize"))
    .execute(connection)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: String,
    at_micros: i64,
    actor: String,
    action: String,
    object_id: String,
    reason: String,
    details: String,
}

impl EventRow {
    fn into_event(self) -> Result<AuditEvent, SettlementError> {
        let details = serde_json::from_str(&self.details).map_err(|error| {
            SettlementError::Internal(format!("audit event {}: {error}", self.event_id))
        })?;
        Ok(AuditEvent {
            event_id: self.event_id,
            at: from_unix_micros(self.at_micros),
            actor: self.actor,
            action: self.action,
            object_id: self.object_id,
            reason: self.reason,
            details,
        })
    }
}

/// Which events a listing shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub object_id: Option<String>,
}

impl Settlement {
    /// One page of the trail, newest first, and the cursor of the next page.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<(Vec<AuditEvent>, Option<PageCursor>), SettlementError> {
        // Event ids are UUIDv7, so they sort by time; "before the cursor" is older.
        let mut conditions = vec!["event_id < $1".to_owned()];
        let mut values = Vec::new();
        if let Some(actor) = &filter.actor {
            values.push(actor.clone());
            conditions.push(format!("actor = ${}", values.len() + 1));
        }
        if let Some(object_id) = &filter.object_id {
            values.push(object_id.clone());
            conditions.push(format!("object_id = ${}", values.len() + 1));
        }
        let query = format!(
            "SELECT event_id, at_micros, actor, action, object_id, reason, details \
             FROM settlement_audit_events WHERE {} ORDER BY event_id DESC LIMIT ${}",
            conditions.join(" AND "),
            values.len() + 2
        );
        let before = page
            .after
            .as_ref()
            .map(|cursor| cursor.id.clone())
            // Past every UUID: the first page starts at the newest event.
            .unwrap_or_else(|| "g".to_owned());
        let mut statement = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(query)).bind(before);
        for value in values {
            statement = statement.bind(value);
        }
        let rows = statement
            .bind((page.size + 1) as i64)
            .fetch_all(self.database.pool())
            .await?;
        let events = rows
            .into_iter()
            .map(EventRow::into_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.split(events, |event| PageCursor {
            created_at_micros: tandem_domain::to_unix_micros(event.at),
            id: event.event_id.clone(),
        }))
    }
}
