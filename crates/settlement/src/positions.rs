//! Partners' settlement positions: what each partner's settlement account holds per currency,
//! now or as of a time, read from the ledger's entries.

use tandem_domain::{PartnerId, Timestamp, to_unix_micros};
use tandem_ledger::{Account, AccountFilter, AccountId, Unit};

use crate::{Settlement, SettlementError};

/// One partner's settlement account in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub partner_id: PartnerId,
    pub account_id: AccountId,
    pub currency: String,
    pub currency_scale: u32,
    pub posted_debits_minor: i64,
    pub posted_credits_minor: i64,
}

impl Position {
    /// Credits minus debits: positive when the coalition owes the partner.
    pub fn net_minor(&self) -> i64 {
        self.posted_credits_minor - self.posted_debits_minor
    }
}

impl Settlement {
    /// Up to `limit` accounts matching `filter` after `after`, oldest first.
    pub async fn accounts(
        &self,
        filter: &AccountFilter,
        after: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<Account>, SettlementError> {
        Ok(self.ledger.list_accounts(filter, after, limit).await?)
    }

    /// Every partner's settlement position (or one partner's), in `currency` or all, as of `at`,
    /// by partner id then currency: the posted entries committed by then, in one query.
    pub async fn positions(
        &self,
        partner: Option<PartnerId>,
        currency: Option<Unit>,
        at: Timestamp,
    ) -> Result<Vec<Position>, SettlementError> {
        let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT a.owner, a.account_id, a.unit, u.scale, \
             CAST(COALESCE(SUM(e.debit_minor), 0) AS BIGINT), \
             CAST(COALESCE(SUM(e.credit_minor), 0) AS BIGINT) \
             FROM ledger_accounts a JOIN ledger_units u ON u.unit = a.unit \
             LEFT JOIN ledger_entries e ON e.account_id = a.account_id \
             AND e.phase = 'POSTED' AND e.committed_at_micros <= $3 \
             WHERE a.purpose = 'SETTLEMENT' AND a.owner <> 'exchange' \
             AND ($1 = '' OR a.owner = $1) AND ($2 = '' OR a.unit = $2) \
             GROUP BY a.owner, a.account_id, a.unit, u.scale ORDER BY a.owner, a.unit",
        )
        .bind(partner.map(|id| id.to_string()).unwrap_or_default())
        .bind(currency.map(|unit| unit.to_string()).unwrap_or_default())
        .bind(to_unix_micros(at))
        .fetch_all(self.database.pool())
        .await?;
        rows.into_iter()
            .map(|(owner, account, currency, scale, debits, credits)| {
                let corrupt = |what: &str| {
                    SettlementError::Internal(format!("settlement account {account}: {what}"))
                };
                Ok(Position {
                    partner_id: owner.parse().map_err(|_| corrupt("owner"))?,
                    account_id: account.parse().map_err(|_| corrupt("id"))?,
                    currency,
                    currency_scale: u32::try_from(scale).map_err(|_| corrupt("scale"))?,
                    posted_debits_minor: debits,
                    posted_credits_minor: credits,
                })
            })
            .collect()
    }
}
