//! Reports for finance: the points liability of each partner program.
//!
//! Points the exchange issues into a program are credits to that partner's clearing account for
//! the program; points it takes out are debits. The money side of the same transactions is on
//! the partner's settlement account, which is what the points were sold or bought for.

use std::collections::BTreeMap;

use tandem_domain::{PartnerId, Timestamp, to_unix_micros};

use crate::{Settlement, SettlementError};

/// One partner program's points through the exchange, in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramLiability {
    pub partner_id: String,
    pub program: String,
    pub program_scale: u32,
    pub points_issued: i64,
    pub points_redeemed: i64,
    pub points_outstanding: i64,
    pub currency: String,
    pub currency_scale: u32,
    pub value_issued_minor: i64,
    pub value_redeemed_minor: i64,
}

/// Points per (partner, program) in a period: (scale, issued, redeemed).
type PointTotals = BTreeMap<(String, String), (u32, i64, i64)>;

/// Money per (partner, program) in a period, one row per currency: (currency, scale, credited
/// when issuing, debited when redeeming).
type ProgramValues = BTreeMap<(String, String), Vec<(String, u32, i64, i64)>>;

impl Settlement {
    /// Every partner program's liability (or one partner's) for `[start, end)`.
    pub async fn liability(
        &self,
        partner: Option<PartnerId>,
        start: Option<Timestamp>,
        end: Timestamp,
    ) -> Result<Vec<ProgramLiability>, SettlementError> {
        let owner = partner.map(|id| id.to_string()).unwrap_or_default();
        let start_micros = start.map(to_unix_micros).unwrap_or(i64::MIN);
        let end_micros = to_unix_micros(end);
        let period = self.points(&owner, start_micros, end_micros).await?;
        let outstanding = self.points(&owner, i64::MIN, end_micros).await?;
        let values = self.values(&owner, start_micros, end_micros).await?;
        let mut report: Vec<ProgramLiability> = Vec::new();
        for ((partner_id, program), (scale, issued, redeemed)) in &outstanding {
            let (_, period_issued, period_redeemed) = period
                .get(&(partner_id.clone(), program.clone()))
                .copied()
                .unwrap_or_default();
            let base = ProgramLiability {
                partner_id: partner_id.clone(),
                program: program.clone(),
                program_scale: *scale,
                points_issued: period_issued,
                points_redeemed: period_redeemed,
                points_outstanding: issued - redeemed,
                ..ProgramLiability::default()
            };
            let priced: Vec<&(String, u32, i64, i64)> = values
                .get(&(partner_id.clone(), program.clone()))
                .map(|rows| rows.iter().collect())
                .unwrap_or_default();
            if priced.is_empty() {
                report.push(base.clone());
            }
            for (currency, currency_scale, value_issued, value_redeemed) in priced {
                report.push(ProgramLiability {
                    currency: currency.clone(),
                    currency_scale: *currency_scale,
                    value_issued_minor: *value_issued,
                    value_redeemed_minor: *value_redeemed,
                    ..base.clone()
                });
            }
        }
        Ok(report)
    }

    /// Points issued into and redeemed out of each partner program in `[start, end)`.
    async fn points(
        &self,
        owner: &str,
        start_micros: i64,
        end_micros: i64,
    ) -> Result<PointTotals, SettlementError> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT a.owner, a.unit, u.scale, CAST(COALESCE(SUM(e.credit_minor), 0) AS BIGINT), \
             CAST(COALESCE(SUM(e.debit_minor), 0) AS BIGINT) \
             FROM ledger_accounts a JOIN ledger_units u ON u.unit = a.unit \
             LEFT JOIN ledger_entries e ON e.account_id = a.account_id AND e.phase = 'POSTED' \
             AND e.committed_at_micros >= $2 AND e.committed_at_micros < $3 \
             WHERE a.purpose = 'PROGRAM_CLEARING' AND a.owner <> 'exchange' \
             AND ($1 = '' OR a.owner = $1) \
             GROUP BY a.owner, a.unit, u.scale",
        )
        .bind(owner)
        .bind(start_micros)
        .bind(end_micros)
        .fetch_all(self.database.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(owner, unit, scale, issued, redeemed)| {
                ((owner, unit), (scale as u32, issued, redeemed))
            })
            .collect())
    }

    /// The money side of the transactions that moved each partner program's points in
    /// `[start, end)`: (currency, scale, credited when issuing, debited when redeeming).
    async fn values(
        &self,
        owner: &str,
        start_micros: i64,
        end_micros: i64,
    ) -> Result<ProgramValues, SettlementError> {
        let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT pa.owner, pa.unit, ma.unit, mu.scale, \
             CAST(SUM(CASE WHEN p.credit_minor > 0 THEN m.credit_minor ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN p.debit_minor > 0 THEN m.debit_minor ELSE 0 END) AS BIGINT) \
             FROM ledger_entries p \
             JOIN ledger_accounts pa ON pa.account_id = p.account_id \
             JOIN ledger_entries m ON m.transaction_id = p.transaction_id \
             JOIN ledger_accounts ma ON ma.account_id = m.account_id \
             JOIN ledger_units mu ON mu.unit = ma.unit \
             WHERE pa.purpose = 'PROGRAM_CLEARING' AND pa.owner <> 'exchange' \
             AND ($1 = '' OR pa.owner = $1) \
             AND p.phase = 'POSTED' AND p.committed_at_micros >= $2 \
             AND p.committed_at_micros < $3 \
             AND ma.purpose = 'SETTLEMENT' AND ma.owner = pa.owner AND m.phase = 'POSTED' \
             GROUP BY pa.owner, pa.unit, ma.unit, mu.scale",
        )
        .bind(owner)
        .bind(start_micros)
        .bind(end_micros)
        .fetch_all(self.database.pool())
        .await?;
        let mut values = ProgramValues::new();
        for (owner, program, currency, scale, issued, redeemed) in rows {
            values.entry((owner, program)).or_default().push((
                currency,
                scale as u32,
                issued,
                redeemed,
            ));
        }
        Ok(values)
    }
}
