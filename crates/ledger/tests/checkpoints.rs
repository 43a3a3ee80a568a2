//! Balance checkpoints taken while transfers are being written: a checkpoint seals the commit
//! times before it, so no transfer in flight can land behind it uncounted, and the balances read
//! from checkpoints plus later entries are exactly the sums of every transfer.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tandem_domain::PartnerId;
use tandem_ledger::{Guard, Owner, Purpose, Unit};
use tandem_storage::testing::TestDatabase;

const WRITERS: usize = 8;
const TRANSFERS_PER_WRITER: usize = 40;

async fn checkpoints_taken_while_writing_miss_nothing(database: TestDatabase) {
    let ledger = Arc::new(common::ledger_on(&database).await);
    let usd = Unit::parse("USD").unwrap();
    let mut accounts = Vec::new();
    for _ in 0..2 {
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
    let (payer, payee) = (accounts[0], accounts[1]);

    let writing = Arc::new(AtomicBool::new(true));
    let checkpointer = {
        let (ledger, writing) = (ledger.clone(), writing.clone());
        tokio::spawn(async move {
            let mut taken = 0;
            while writing.load(Ordering::Acquire) {
                ledger
                    .checkpoint(tandem_domain::now())
                    .await
                    .expect("a checkpoint as of now");
                taken += 1;
            }
            taken
        })
    };
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let ledger = ledger.clone();
        writers.push(tokio::spawn(async move {
            for index in 0..TRANSFERS_PER_WRITER {
                let amount = (writer * TRANSFERS_PER_WRITER + index + 1) as i64;
                ledger
                    .post(common::transfer(
                        "checkpointed",
                        format!("transfer-{writer}-{index}"),
                        (payer, payee),
                        amount,
                        false,
                    ))
                    .await
                    .expect("a transfer posts");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    writing.store(false, Ordering::Release);
    let taken = checkpointer.await.unwrap();
    assert!(
        taken > 0,
        "checkpoints were taken while transfers were written"
    );

    let count = (WRITERS * TRANSFERS_PER_WRITER) as i64;
    let expected = count * (count + 1) / 2;
    // Once more after the last transfer: the newest checkpoint then holds every one of them.
    ledger.checkpoint(tandem_domain::now()).await.unwrap();
    let (_, paid) = ledger.balance(payee, None).await.unwrap();
    let (_, spent) = ledger.balance(payer, None).await.unwrap();
    assert_eq!(
        (paid.posted_credits, spent.posted_debits),
        (expected, expected),
        "every transfer counted once, across {taken} checkpoints"
    );
    let entries = ledger.entries(payee, None, 10_000).await.unwrap();
    assert_eq!(entries.len() as i64, count);
}

tandem_storage::on_every_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)];
    checkpoints_taken_while_writing_miss_nothing
);
