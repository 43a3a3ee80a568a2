//! Ledger invariants under random sequences of operations, on SQLite and (when
//! `TANDEM_TEST_DATABASE_URL` is set) PostgreSQL. After every step: each transaction sums to zero
//! per unit, each balance equals the sum of its entries and the independent model's, a rejected
//! request changed nothing, and the trial balance is zero. Checkpoints fall at random among the
//! steps, and at the end the balance as of every step's time equals the model's then.
mod common;

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use tandem_domain::PartnerId;
use tandem_ledger::{
    AccountId, Direction, Guard, Ledger, LedgerError, Leg, NewKind, NewTransaction, Owner, Posted,
    Purpose, Resolution, Totals, TransactionId, TransactionKind, Unit, check_balanced,
};
use tandem_storage::testing::TestDatabase;

#[derive(Debug, Clone)]
enum Operation {
    /// Moves `amount` from account `from` to `to` (indices into the accounts); `pending` holds it.
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
        pending: bool,
        reuse_key: Option<usize>,
    },
    /// Legs that do not balance: always refused.
    Unbalanced { from: usize, to: usize, amount: i64 },
    /// Posts or voids the n-th pending transaction so far.
    Resolve { pending: usize, post: bool },
    /// Reverses the n-th posted transaction so far.
    Reverse { posted: usize },
    /// Records every account's totals as of now; later balances start from it.
    Checkpoint,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => (0..6usize, 0..6usize, 1..500i64, any::<bool>(), proptest::option::weighted(0.2, 0..20usize))
            .prop_map(|(from, to, amount, pending, reuse_key)| Operation::Transfer { from, to, amount, pending, reuse_key }),
        1 => (0..6usize, 0..6usize, 1..500i64).prop_map(|(from, to, amount)| Operation::Unbalanced { from, to, amount }),
        2 => (0..10usize, any::<bool>()).prop_map(|(pending, post)| Operation::Resolve { pending, post }),
        1 => (0..10usize).prop_map(|posted| Operation::Reverse { posted }),
        1 => Just(Operation::Checkpoint),
    ]
}

/// Each account's posted (debits, credits).
type PostedTotals = HashMap<AccountId, (i64, i64)>;

struct World {
    ledger: Ledger,
    accounts: Vec<(AccountId, Unit)>,
    /// What the posted totals must be, kept independently of the ledger: (debits, credits).
    expected: PostedTotals,
    keys: Vec<(String, NewTransaction)>,
    pendings: Vec<(TransactionId, Vec<Leg>)>,
    posted: Vec<(TransactionId, Vec<Leg>)>,
    counter: usize,
    /// The model's posted totals after each step, with a time after that step's commits and
    /// before the next step's: what a balance as of that time must read.
    history: Vec<(tandem_domain::Timestamp, PostedTotals)>,
}

async fn world(database: &TestDatabase) -> World {
    let ledger = common::ledger_on(database).await;
    let (usd, points) = (
        Unit::parse("USD").unwrap(),
        Unit::parse("HOTEL_PTS").unwrap(),
    );
    let mut accounts = Vec::new();
    // Four money accounts (one guarded, so some transfers are refused) and two point accounts.
    for (index, (unit, scale, guard)) in [
        (&usd, 2, Guard::None),
        (&usd, 2, Guard::None),
        (
            &usd,
            2,
            Guard::DebitsNotExceedCredits {
                overdraft_limit_minor: 300,
            },
        ),
        (&usd, 2, Guard::None),
        (&points, 0, Guard::None),
        (&points, 0, Guard::None),
    ]
    .into_iter()
    .enumerate()
    {
        let owner = if index == 0 {
            Owner::Exchange
        } else {
            Owner::Partner(PartnerId::generate())
        };
        let account = ledger
            .open_account(owner, Purpose::Settlement, unit, scale, guard)
            .await
            .unwrap();
        accounts.push((account.id, unit.clone()));
    }
    World {
        ledger,
        accounts,
        expected: HashMap::new(),
        keys: Vec::new(),
        pendings: Vec::new(),
        posted: Vec::new(),
        counter: 0,
        history: Vec::new(),
    }
}

/// Everything observable about the ledger's balances, to compare before and after a refusal.
async fn snapshot(world: &World) -> (Vec<Totals>, Vec<(String, i64, i64)>) {
    let mut totals = Vec::new();
    for (id, _) in &world.accounts {
        totals.push(world.ledger.balance(*id, None).await.unwrap().1);
    }
    let trial = world.ledger.trial_balance().await.unwrap();
    (
        totals,
        trial
            .into_iter()
            .map(|row| {
                (
                    row.unit.to_string(),
                    row.posted_debits_minor,
                    row.posted_credits_minor,
                )
            })
            .collect(),
    )
}

fn apply_expected(world: &mut World, legs: &[Leg]) {
    for leg in legs {
        let entry = world.expected.entry(leg.account).or_default();
        match leg.direction {
            Direction::Debit => entry.0 += leg.amount_minor,
            Direction::Credit => entry.1 += leg.amount_minor,
        }
    }
}

fn mirrored(legs: &[Leg]) -> Vec<Leg> {
    legs.iter()
        .map(|leg| Leg {
            direction: if leg.direction == Direction::Debit {
                Direction::Credit
            } else {
                Direction::Debit
            },
            ..leg.clone()
        })
        .collect()
}

async fn step(world: &mut World, operation: Operation) -> Result<Posted, LedgerError> {
    world.counter += 1;
    match operation {
        Operation::Transfer {
            from,
            to,
            amount,
            pending,
            reuse_key,
        } => {
            let (from, to) = (from % world.accounts.len(), to % world.accounts.len());
            let reused = reuse_key
                .and_then(|index| world.keys.get(index % world.keys.len().max(1)).cloned());
            let transaction = match reused {
                // Half the reuses resend the same content (a retry), half change it (a conflict).
                Some((_, original)) if amount % 2 == 0 => original,
                Some((key, original)) => NewTransaction {
                    idempotency_key: key,
                    type_code: format!("changed-{amount}"),
                    ..original
                },
                None => {
                    // Transfers across units are unbalanced by nature, and are refused.
                    common::transfer(
                        &format!("ref-{}", world.counter % 3),
                        format!("transfer-{}", world.counter),
                        (world.accounts[from].0, world.accounts[to].0),
                        amount,
                        pending,
                    )
                }
            };
            let outcome = world.ledger.post(transaction.clone()).await;
            if let Ok(posted) = &outcome
                && !posted.replayed
            {
                world
                    .keys
                    .push((transaction.idempotency_key.clone(), transaction.clone()));
                match posted.transaction.kind {
                    TransactionKind::Pending => world
                        .pendings
                        .push((posted.transaction.id, posted.transaction.legs.clone())),
                    _ => {
                        apply_expected(world, &posted.transaction.legs);
                        world
                            .posted
                            .push((posted.transaction.id, posted.transaction.legs.clone()));
                    }
                }
            }
            outcome
        }
        Operation::Unbalanced { from, to, amount } => {
            let legs = vec![
                Leg {
                    account: world.accounts[from % 6].0,
                    direction: Direction::Debit,
                    amount_minor: amount,
                },
                Leg {
                    account: world.accounts[to % 6].0,
                    direction: Direction::Credit,
                    amount_minor: amount + 1,
                },
            ];
            let transaction = NewTransaction {
                idempotency_key: format!("unbalanced-{}", world.counter),
                legs,
                kind: NewKind::Posted,
                type_code: String::new(),
                external_reference: String::new(),
                effective_at_micros: None,
                metadata: BTreeMap::new(),
            };
            world.ledger.post(transaction).await
        }
        Operation::Resolve { pending, post } => {
            let Some((id, legs)) = world
                .pendings
                .get(pending % world.pendings.len().max(1))
                .cloned()
            else {
                return Err(LedgerError::Stopped);
            };
            let resolution = if post {
                Resolution::Post
            } else {
                Resolution::Void
            };
            let outcome = world
                .ledger
                .resolve_pending(format!("resolve-{}", world.counter), id, resolution)
                .await;
            if let Ok(posted) = &outcome
                && post
            {
                apply_expected(world, &legs);
                world.posted.push((posted.transaction.id, legs));
            }
            outcome
        }
        Operation::Reverse { posted } => {
            let Some((id, legs)) = world
                .posted
                .get(posted % world.posted.len().max(1))
                .cloned()
            else {
                return Err(LedgerError::Stopped);
            };
            let outcome = world
                .ledger
                .reverse(format!("reverse-{}", world.counter), id, "test".to_owned())
                .await;
            if outcome.is_ok() {
                apply_expected(world, &mirrored(&legs));
            }
            outcome
        }
        Operation::Checkpoint => {
            world
                .ledger
                .checkpoint(tandem_domain::now())
                .await
                .expect("a checkpoint as of now");
            // Nothing posted: not an outcome the sequence checks as a transaction.
            Err(LedgerError::Stopped)
        }
    }
}

/// Marks the time after a step: every entry so far is committed before it, and the next step's
/// entries, stamped when they start, after it.
async fn mark_time(world: &mut World) {
    let at = tandem_domain::now();
    world.history.push((at, world.expected.clone()));
    while tandem_domain::now() <= at {
        tokio::task::yield_now().await;
    }
}

/// Balances as of every marked time agree with the model then, checkpoints or not: a checkpoint
/// plus the entries after it is the full sum at every point.
async fn check_history(world: &World) {
    for (at, expected) in &world.history {
        for (id, unit) in &world.accounts {
            let (_, totals) = world.ledger.balance(*id, Some(*at)).await.unwrap();
            assert_eq!(
                (totals.posted_debits, totals.posted_credits),
                expected.get(id).copied().unwrap_or_default(),
                "account {id} ({unit}) as of {at} differs from the model then"
            );
        }
    }
}

async fn check_invariants(world: &World) {
    let trial = world.ledger.trial_balance().await.unwrap();
    for row in &trial {
        assert_eq!(
            row.net_minor(),
            0,
            "the trial balance of {} is not zero",
            row.unit
        );
    }
    for (id, unit) in &world.accounts {
        let (_, totals) = world.ledger.balance(*id, None).await.unwrap();
        let expected = world.expected.get(id).copied().unwrap_or_default();
        assert_eq!(
            (totals.posted_debits, totals.posted_credits),
            expected,
            "account {id} ({unit}) differs from the model"
        );
        let entries = world.ledger.entries(*id, None, 10_000).await.unwrap();
        let (mut debits, mut credits) = (0, 0);
        for entry in entries.iter().filter(|entry| entry.kind.posts()) {
            match entry.direction {
                Direction::Debit => debits += entry.amount_minor,
                Direction::Credit => credits += entry.amount_minor,
            }
        }
        assert_eq!(
            (debits, credits),
            (totals.posted_debits, totals.posted_credits),
            "account {id}: the balance is not the sum of its entries"
        );
    }
}

async fn run_sequence(database: TestDatabase, operations: Vec<Operation>) {
    let mut world = world(&database).await;
    for operation in operations {
        let before = snapshot(&world).await;
        let outcome = step(&mut world, operation.clone()).await;
        match &outcome {
            Ok(posted) => {
                let units: HashMap<AccountId, Unit> = world.accounts.iter().cloned().collect();
                check_balanced(
                    posted
                        .transaction
                        .legs
                        .iter()
                        .map(|leg| (leg, &units[&leg.account])),
                )
                .expect("every transaction balances per unit");
            }
            Err(_) => assert_eq!(
                snapshot(&world).await,
                before,
                "the refused {operation:?} changed the ledger"
            ),
        }
        check_invariants(&world).await;
        mark_time(&mut world).await;
    }
    check_history(&world).await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_on_sqlite(operations in proptest::collection::vec(operation(), 1..25)) {
        runtime().block_on(run_sequence(TestDatabase::sqlite(), operations));
    }
}

proptest! {
    // Each case creates and drops a PostgreSQL database, so fewer cases; SQLite covers more.
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    #[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
    fn invariants_hold_on_postgres(operations in proptest::collection::vec(operation(), 1..25)) {
        let runtime = runtime();
        let database = runtime.block_on(TestDatabase::postgres_required());
        runtime.block_on(run_sequence(database, operations));
    }
}
