//! Bursts of transfers posted together, as the exchange sends them: plain transfers share a
//! batch and are written in bulk. Inside one burst a key may come twice with the same content (a
//! retry), twice with different content (a client bug), or a transfer may be refused; each gets
//! the answer it would get alone, and no key is applied twice.

mod common;

use std::collections::HashMap;

use tandem_domain::PartnerId;
use tandem_ledger::{AccountId, Guard, LedgerError, NewTransaction, Owner, Purpose, Unit};
use tandem_storage::testing::TestDatabase;

const BURSTS: usize = 6;
const TRANSFERS_PER_BURST: usize = 120;

fn transfer(key: &str, from: AccountId, to: AccountId, amount: i64) -> NewTransaction {
    common::transfer("burst", key.to_owned(), (from, to), amount, false)
}

/// What a transfer of a burst is meant to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shape {
    Fresh,
    /// The same key and content as the transfer before it.
    Retry,
    /// The same key as the transfer before it, with another amount.
    Conflicting,
    /// One leg's amount is off, so the transfer does not balance.
    Unbalanced,
    /// A leg names an account that does not exist.
    UnknownAccount,
}

fn shape_of(index: usize) -> Shape {
    match index % 10 {
        3 => Shape::Retry,
        6 => Shape::Conflicting,
        8 if index % 20 == 8 => Shape::Unbalanced,
        8 => Shape::UnknownAccount,
        _ => Shape::Fresh,
    }
}

async fn bursts(database: TestDatabase) {
    let ledger = common::ledger_on(&database).await;
    let usd = Unit::parse("USD").unwrap();
    let mut accounts = Vec::new();
    for _ in 0..3 {
        let account = ledger
            .open_account(
                Owner::Partner(PartnerId::generate()),
                Purpose::Settlement,
                &usd,
                2,
                Guard::None,
            )
            .await
            .unwrap();
        accounts.push(account.id);
    }

    // Keys that were applied, with the amount that was applied under them.
    let mut applied: HashMap<String, i64> = HashMap::new();
    for burst in 0..BURSTS {
        let mut transfers = Vec::with_capacity(TRANSFERS_PER_BURST);
        let mut shapes = Vec::with_capacity(TRANSFERS_PER_BURST);
        for index in 0..TRANSFERS_PER_BURST {
            let shape = shape_of(index);
            let (from, to) = (accounts[index % 3], accounts[(index + 1) % 3]);
            let amount = 1 + (index as i64 * 7) % 500;
            let transaction = match shape {
                Shape::Fresh => transfer(&format!("b{burst}-{index}"), from, to, amount),
                Shape::Retry => transfers
                    .last()
                    .cloned()
                    .expect("a retry follows a transfer"),
                Shape::Conflicting => {
                    let previous: &NewTransaction = transfers.last().expect("follows a transfer");
                    let mut changed = previous.clone();
                    changed.legs[0].amount_minor += 1;
                    changed.legs[1].amount_minor += 1;
                    changed
                }
                Shape::Unbalanced => {
                    let mut unbalanced = transfer(&format!("b{burst}-{index}"), from, to, amount);
                    unbalanced.legs[1].amount_minor += 1;
                    unbalanced
                }
                Shape::UnknownAccount => transfer(
                    &format!("b{burst}-{index}"),
                    from,
                    AccountId::generate(),
                    amount,
                ),
            };
            transfers.push(transaction);
            shapes.push(shape);
        }
        // The same burst from two clients at once: every key is then submitted at least twice.
        let (first, second) = tokio::join!(
            ledger.post_many(transfers.clone()),
            ledger.post_many(transfers.clone())
        );
        // Refusals are each the refusal they would be alone.
        let mut by_key: HashMap<&str, Vec<(&NewTransaction, &Result<_, LedgerError>)>> =
            HashMap::new();
        for (index, shape) in shapes.iter().enumerate() {
            let transaction = &transfers[index];
            for outcome in [&first[index], &second[index]] {
                match shape {
                    Shape::Unbalanced => assert!(
                        matches!(outcome, Err(LedgerError::Unbalanced(_))),
                        "{outcome:?}"
                    ),
                    Shape::UnknownAccount => assert!(
                        matches!(outcome, Err(LedgerError::AccountNotFound(_))),
                        "{outcome:?}"
                    ),
                    Shape::Fresh | Shape::Retry | Shape::Conflicting => by_key
                        .entry(transaction.idempotency_key.as_str())
                        .or_default()
                        .push((transaction, outcome)),
                }
            }
        }
        // Per key: one submission applied it, every submission with the same content got that
        // transaction back, and every one with other content was refused as a reused key.
        // Which content wins a race between batches committing side by side is not fixed.
        for (key, submissions) in by_key {
            let winners: Vec<_> = submissions
                .iter()
                .filter_map(|(_, outcome)| outcome.as_ref().ok())
                .filter(|posted| !posted.replayed)
                .collect();
            assert_eq!(winners.len(), 1, "{key} applied {} times", winners.len());
            let winner = &winners[0].transaction;
            for (transaction, outcome) in &submissions {
                if transaction.legs == winner.legs {
                    let posted = outcome.as_ref().expect("the winning content is answered");
                    assert_eq!(posted.transaction.id, winner.id);
                } else {
                    // The refusal says what differs: the amounts, on the legs.
                    assert!(
                        matches!(
                            outcome,
                            Err(LedgerError::IdempotencyConflict { differences, .. })
                                if differences == &["legs"]
                        ),
                        "{key} with other content: {outcome:?}"
                    );
                }
            }
            applied.insert(key.to_owned(), winner.legs[0].amount_minor);
        }
    }

    // Exactly the applied keys are stored, each with the winning amount.
    let stored = ledger.transactions_by_reference("burst").await.unwrap();
    assert_eq!(stored.len(), applied.len());
    for transaction in &stored {
        assert_eq!(
            applied.get(&transaction.idempotency_key),
            Some(&transaction.legs[0].amount_minor),
            "{} stored with another amount",
            transaction.idempotency_key
        );
    }
    let mut net = 0i128;
    for account in &accounts {
        let (_, totals) = ledger.balance(*account, None).await.unwrap();
        net += totals.posted_net();
    }
    assert_eq!(net, 0, "transfers among the accounts create nothing");
    for row in ledger.trial_balance().await.unwrap() {
        assert_eq!(row.net_minor(), 0);
    }
}

tandem_storage::on_every_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)];
    bursts
);
