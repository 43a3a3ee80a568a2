//! The bank test: many tasks at once post random transfers among a few hot accounts, resubmit
//! some of them (duplicates and retries), and race to resolve the same pending transactions.
//! At the end nothing was created or destroyed, no key applied twice, no pending resolved twice.

mod common;

use std::{collections::HashSet, sync::Arc};

use tandem_domain::PartnerId;
use tandem_ledger::{
    Guard, Ledger, LedgerError, NewTransaction, Owner, PendingStatus, Purpose, Resolution,
    TransactionKind, Unit,
};
use tandem_storage::testing::TestDatabase;
use tokio::sync::Mutex;

const TASKS: usize = 16;
const TRANSFERS_PER_TASK: usize = 25;
const OPENING_BALANCE: i64 = 10_000;

/// Posts, retrying while the ledger says the write conflicted (safe: the key is the same).
async fn post_with_retries(
    ledger: &Ledger,
    transaction: NewTransaction,
) -> Result<tandem_ledger::Posted, LedgerError> {
    loop {
        match ledger.post(transaction.clone()).await {
            Err(LedgerError::Conflict) => continue,
            other => return other,
        }
    }
}

/// A tiny deterministic generator, so a failure reproduces.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

async fn bank(database: TestDatabase) {
    let ledger = common::ledger_on(&database).await;
    let usd = Unit::parse("USD").unwrap();
    let funding = ledger
        .open_account(Owner::Exchange, Purpose::Bank, &usd, 2, Guard::None)
        .await
        .unwrap();
    let mut hot = Vec::new();
    for _ in 0..4 {
        // Guarded: no account may go below zero, however the transfers interleave.
        let guard = Guard::DebitsNotExceedCredits {
            overdraft_limit_minor: 0,
        };
        let account = ledger
            .open_account(
                Owner::Partner(PartnerId::generate()),
                Purpose::Settlement,
                &usd,
                2,
                guard,
            )
            .await
            .unwrap();
        ledger
            .post(common::transfer(
                "bank",
                format!("fund-{}", account.id),
                (funding.id, account.id),
                OPENING_BALANCE,
                false,
            ))
            .await
            .unwrap();
        hot.push(account.id);
    }

    let applied_keys = Arc::new(Mutex::new(HashSet::new()));
    let pendings = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (ledger, hot, applied_keys, pendings) = (
            ledger.clone(),
            hot.clone(),
            applied_keys.clone(),
            pendings.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut random = Sequence(task as u64 + 1);
            for index in 0..TRANSFERS_PER_TASK {
                let from = hot[random.next(4) as usize];
                let to = hot[random.next(4) as usize];
                if from == to {
                    continue;
                }
                let pending = random.next(4) == 0;
                let transaction = common::transfer(
                    "bank",
                    format!("t{task}-{index}"),
                    (from, to),
                    1 + random.next(3_000) as i64,
                    pending,
                );
                // Every fifth transfer is sent twice at once, as a client retrying on a timeout would.
                let copies = if random.next(5) == 0 { 2 } else { 1 };
                let outcomes = futures::future::join_all(
                    (0..copies).map(|_| post_with_retries(&ledger, transaction.clone())),
                )
                .await;
                let fresh: Vec<_> = outcomes
                    .iter()
                    .filter_map(|outcome| outcome.as_ref().ok())
                    .filter(|posted| !posted.replayed)
                    .collect();
                assert!(
                    fresh.len() <= 1,
                    "key {} applied {} times",
                    transaction.idempotency_key,
                    fresh.len()
                );
                for outcome in &outcomes {
                    assert!(
                        matches!(outcome, Ok(_) | Err(LedgerError::GuardRefused(_))),
                        "unexpected {outcome:?}"
                    );
                }
                if let Some(posted) = fresh.first() {
                    applied_keys
                        .lock()
                        .await
                        .insert(transaction.idempotency_key.clone());
                    if posted.transaction.kind == TransactionKind::Pending {
                        pendings.lock().await.push(posted.transaction.id);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Several resolvers race for each pending transaction: exactly one wins.
    let pendings = pendings.lock().await.clone();
    for (index, pending) in pendings.iter().enumerate() {
        let attempts = (0..4).map(|attempt| {
            let resolution = if (index + attempt) % 2 == 0 {
                Resolution::Post
            } else {
                Resolution::Void
            };
            ledger.resolve_pending(format!("resolve-{pending}-{attempt}"), *pending, resolution)
        });
        let outcomes = futures::future::join_all(attempts).await;
        let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(
            winners, 1,
            "pending {pending} resolved {winners} times: {outcomes:?}"
        );
        let status = ledger.transaction(*pending).await.unwrap().pending_status;
        assert!(matches!(
            status,
            Some(PendingStatus::Posted | PendingStatus::Voided)
        ));
    }

    // Nothing created or destroyed: the hot accounts hold exactly what was funded.
    let mut total = 0i128;
    for account in &hot {
        let (_, totals) = ledger.balance(*account, None).await.unwrap();
        assert!(totals.posted_net() >= 0, "a guarded account went negative");
        assert_eq!(
            totals.pending_debits + totals.pending_credits,
            0,
            "every pending was resolved"
        );
        total += totals.posted_net();
    }
    assert_eq!(total, i128::from(OPENING_BALANCE) * 4);
    for row in ledger.trial_balance().await.unwrap() {
        assert_eq!(row.net_minor(), 0);
    }
    // Each applied key is exactly one stored transaction (plus funding and resolutions).
    let stored = ledger.transactions_by_reference("bank").await.unwrap();
    let transfers: Vec<_> = stored
        .iter()
        .filter(|transaction| transaction.idempotency_key.starts_with('t'))
        .collect();
    assert_eq!(transfers.len(), applied_keys.lock().await.len());
    let resolutions = stored
        .iter()
        .filter(|transaction| {
            matches!(
                transaction.kind,
                TransactionKind::PostPending | TransactionKind::VoidPending
            )
        })
        .count();
    assert_eq!(resolutions, pendings.len());
}

tandem_storage::on_every_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)];
    bank
);
