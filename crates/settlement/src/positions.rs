//! Partners' settlement positions: what each partner's settlement account holds per currency,
//! now or as of a time, read from the ledger's entries.

use tandem_domain::{PartnerId, Timestamp};
use tandem_ledger::{Account, AccountFilter, AccountId, Owner, Purpose, Unit};

use crate::{Settlement, SettlementError};

/// One partner's settlement account in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub partner_id: PartnerId,
    pub account: Account,
    pub posted_debits_minor: i64,
    pub posted_credits_minor: i64,
}

impl Position {
    /// Credits minus debits: positive when the coalition owes the partner.
    pub fn net_minor(&self) -> i64 {
        self.posted_credits_minor - self.posted_debits_minor
    }
}

/// Accounts read per page while walking every settlement account.
const ACCOUNTS_PER_PAGE: usize = 500;

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
    /// by partner id then currency.
    pub async fn positions(
        &self,
        partner: Option<PartnerId>,
        currency: Option<Unit>,
        at: Timestamp,
    ) -> Result<Vec<Position>, SettlementError> {
        let filter = AccountFilter {
            owner: partner.map(Owner::Partner),
            purpose: Some(Purpose::Settlement),
            unit: currency,
        };
        let mut positions = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .ledger
                .list_accounts(&filter, after, ACCOUNTS_PER_PAGE)
                .await?;
            after = page.last().map(|account| account.id);
            for account in &page {
                let Owner::Partner(partner_id) = account.owner else {
                    continue;
                };
                let (account, totals) = self.ledger.balance(account.id, Some(at)).await?;
                positions.push(Position {
                    partner_id,
                    account,
                    posted_debits_minor: totals.posted_debits,
                    posted_credits_minor: totals.posted_credits,
                });
            }
            if page.len() < ACCOUNTS_PER_PAGE {
                break;
            }
        }
        positions.sort_by(|left, right| {
            (left.partner_id.to_string(), left.account.unit.as_str())
                .cmp(&(right.partner_id.to_string(), right.account.unit.as_str()))
        });
        Ok(positions)
    }
}
