//! What the ledger's suites share: a ledger on a fresh database, and a plain two-leg transfer.

#![allow(dead_code)]

use std::collections::BTreeMap;

use tandem_ledger::{AccountId, Direction, Ledger, LedgerOptions, Leg, NewKind, NewTransaction};
use tandem_storage::{Database, testing::TestDatabase};

/// A ledger on `database`, migrated, with its writers started as `tandem serve` starts them.
pub async fn ledger_on(database: &TestDatabase) -> Ledger {
    let database = Database::open(database.location(), "settlement", &tandem_ledger::MIGRATOR)
        .await
        .unwrap();
    Ledger::new(
        database.clone(),
        LedgerOptions::for_backend(database.backend()),
    )
}

/// `amount` from `from` to `to` under `key`, POSTED or (with `pending`) held for an hour, with
/// the external reference `reference`.
pub fn transfer(
    reference: &str,
    key: String,
    (from, to): (AccountId, AccountId),
    amount: i64,
    pending: bool,
) -> NewTransaction {
    NewTransaction {
        idempotency_key: key,
        legs: vec![
            Leg {
                account: from,
                direction: Direction::Debit,
                amount_minor: amount,
            },
            Leg {
                account: to,
                direction: Direction::Credit,
                amount_minor: amount,
            },
        ],
        kind: if pending {
            NewKind::Pending {
                timeout_seconds: 3600,
            }
        } else {
            NewKind::Posted
        },
        type_code: "TRANSFER".to_owned(),
        external_reference: reference.to_owned(),
        effective_at_micros: None,
        metadata: BTreeMap::new(),
    }
}
