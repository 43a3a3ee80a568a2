//! A hold that nobody posts or voids expires: it stops counting in pending totals, and it can no
//! longer be posted. Waits on the condition with a deadline, never a fixed sleep.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tandem_ledger::{
    Direction, Guard, LedgerError, Leg, NewKind, NewTransaction, Owner, PendingStatus, Purpose,
    Resolution, Unit,
};
use tandem_storage::testing::TestDatabase;

const DEADLINE: Duration = Duration::from_secs(20);

async fn an_unresolved_hold_expires(database: TestDatabase) {
    let ledger = common::ledger_on(&database).await;
    let usd = Unit::parse("USD").unwrap();
    let from = ledger
        .open_account(Owner::Exchange, Purpose::Bank, &usd, 2, Guard::None)
        .await
        .unwrap();
    let to = ledger
        .open_account(Owner::Exchange, Purpose::Fees, &usd, 2, Guard::None)
        .await
        .unwrap();
    let hold = NewTransaction {
        idempotency_key: "short-hold".to_owned(),
        legs: vec![
            Leg {
                account: from.id,
                direction: Direction::Debit,
                amount_minor: 500,
            },
            Leg {
                account: to.id,
                direction: Direction::Credit,
                amount_minor: 500,
            },
        ],
        kind: NewKind::Pending { timeout_seconds: 1 },
        type_code: "HOLD".to_owned(),
        external_reference: String::new(),
        effective_at_micros: None,
        metadata: BTreeMap::new(),
    };
    let pending = ledger.post(hold).await.unwrap().transaction;
    assert_eq!(pending.pending_status, Some(PendingStatus::Open));
    assert_eq!(
        ledger
            .balance(from.id, None)
            .await
            .unwrap()
            .1
            .pending_debits,
        500
    );

    let started = Instant::now();
    while ledger.transaction(pending.id).await.unwrap().pending_status
        != Some(PendingStatus::Expired)
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the hold did not expire within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ledger
            .balance(from.id, None)
            .await
            .unwrap()
            .1
            .pending_debits,
        0,
        "an expired hold no longer counts"
    );
    let late = ledger
        .resolve_pending("post-late".to_owned(), pending.id, Resolution::Post)
        .await;
    assert_eq!(late, Err(LedgerError::PendingExpired(pending.id)));
    // Before it expired, it counted: the balance as of its commit time still shows it.
    assert_eq!(
        ledger
            .balance(from.id, Some(pending.committed_at))
            .await
            .unwrap()
            .1
            .pending_debits,
        500
    );
}

tandem_storage::on_every_database!(an_unresolved_hold_expires);
