//! The ledger through the real server's LedgerService: a conversion-shaped transaction with a
//! points leg, a money leg and a fee leg; idempotent replays and conflicting keys; holds that
//! post or void once; reversals once; balances, entries and the trial balance; batches of
//! transactions answered one by one.

mod helpers;

use helpers::{TestServer, authed, reason, violated_fields};
use tandem_auth::Role;
use tandem_proto::v1::{self as pb, ledger_service_client::LedgerServiceClient};
use tonic::{Code, transport::Channel};

struct Books {
    client: LedgerServiceClient<Channel>,
    token: String,
}

impl Books {
    /// The ledger as the exchange reaches it: with a service token.
    async fn as_service(server: &TestServer) -> Self {
        Self {
            client: server.ledger(),
            token: server.staff_token(Role::Service).await,
        }
    }

    async fn open(
        &mut self,
        owner: &str,
        purpose: pb::AccountPurpose,
        unit: &str,
        scale: u32,
    ) -> String {
        let request = pb::OpenAccountRequest {
            owner: owner.to_owned(),
            purpose: purpose.into(),
            unit: unit.to_owned(),
            unit_scale: scale,
            ..Default::default()
        };
        self.client
            .open_account(authed(&self.token, request))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
            .account_id
    }

    /// A partner's USD settlement account and the exchange's USD fee account.
    async fn settlement_and_fees(&mut self, partner: &str) -> (String, String) {
        (
            self.open(partner, pb::AccountPurpose::Settlement, "USD", 2)
                .await,
            self.open("exchange", pb::AccountPurpose::Fees, "USD", 2)
                .await,
        )
    }

    async fn balance(&mut self, account: &str) -> (i64, i64, i64, i64) {
        let balance = self
            .client
            .get_balance(authed(
                &self.token,
                pb::GetBalanceRequest {
                    account_id: account.to_owned(),
                    as_of_time: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        (
            balance.posted_debits_minor,
            balance.posted_credits_minor,
            balance.pending_debits_minor,
            balance.pending_credits_minor,
        )
    }
}

fn leg(account: &str, direction: pb::Direction, amount_minor: i64) -> pb::Leg {
    pb::Leg {
        account_id: account.to_owned(),
        direction: direction.into(),
        amount_minor,
    }
}

async fn a_conversion_posts_balanced_legs_once_and_reverses_once(server: TestServer) {
    let mut books = Books::as_service(&server).await;
    let token = books.token.clone();
    let (hotel, ride) = (
        "01a20560-0000-7000-8000-00000000000a",
        "01a20560-0000-7000-8000-00000000000b",
    );
    let hotel_points = books
        .open(hotel, pb::AccountPurpose::ProgramClearing, "SKYLINE_PTS", 0)
        .await;
    let exchange_hotel_points = books
        .open(
            "exchange",
            pb::AccountPurpose::ProgramClearing,
            "SKYLINE_PTS",
            0,
        )
        .await;
    let ride_miles = books
        .open(ride, pb::AccountPurpose::ProgramClearing, "ZOOM_MILES", 0)
        .await;
    let exchange_ride_miles = books
        .open(
            "exchange",
            pb::AccountPurpose::ProgramClearing,
            "ZOOM_MILES",
            0,
        )
        .await;
    let hotel_money = books
        .open(hotel, pb::AccountPurpose::Settlement, "USD", 2)
        .await;
    let ride_money = books
        .open(ride, pb::AccountPurpose::Settlement, "USD", 2)
        .await;
    let fees = books
        .open("exchange", pb::AccountPurpose::Fees, "USD", 2)
        .await;

    // 10,000 hotel points become 2,500 ride miles; the hotel owes $21.25 plus a $0.32 fee.
    let conversion = pb::PostTransactionRequest {
        idempotency_key: "conversion-1".to_owned(),
        legs: vec![
            leg(&hotel_points, pb::Direction::Debit, 10_000),
            leg(&exchange_hotel_points, pb::Direction::Credit, 10_000),
            leg(&exchange_ride_miles, pb::Direction::Debit, 2_500),
            leg(&ride_miles, pb::Direction::Credit, 2_500),
            leg(&hotel_money, pb::Direction::Debit, 2_157),
            leg(&ride_money, pb::Direction::Credit, 2_125),
            leg(&fees, pb::Direction::Credit, 32),
        ],
        type_code: "CONVERSION".to_owned(),
        external_reference: "conversion-1".to_owned(),
        ..Default::default()
    };
    let first = books
        .client
        .post_transaction(authed(&token, conversion.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let replay = books
        .client
        .post_transaction(authed(&token, conversion.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        replay.transaction.as_ref().unwrap().transaction_id,
        first.transaction.as_ref().unwrap().transaction_id
    );

    let mut changed = conversion.clone();
    changed.legs[5].amount_minor = 2_126;
    changed.legs[6].amount_minor = 31;
    let conflict = books
        .client
        .post_transaction(authed(&token, changed))
        .await
        .unwrap_err();
    assert_eq!(
        (conflict.code(), reason(&conflict).as_str()),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
    );
    assert!(
        conflict.message().contains("legs"),
        "{}",
        conflict.message()
    );

    let mut unbalanced = conversion.clone();
    unbalanced.idempotency_key = "conversion-2".to_owned();
    unbalanced.legs[6].amount_minor = 33;
    let refused = books
        .client
        .post_transaction(authed(&token, unbalanced))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["legs"]);
    assert!(
        refused.message().contains("USD is off by 1"),
        "{}",
        refused.message()
    );

    assert_eq!(books.balance(&hotel_money).await, (2_157, 0, 0, 0));
    assert_eq!(books.balance(&ride_money).await, (0, 2_125, 0, 0));
    assert_eq!(books.balance(&fees).await, (0, 32, 0, 0));

    let original = first.transaction.unwrap().transaction_id;
    let reverse = |key: &str| pb::ReverseTransactionRequest {
        idempotency_key: key.to_owned(),
        transaction_id: original.clone(),
        reason: "customer refund".to_owned(),
    };
    let reversal = books
        .client
        .reverse_transaction(authed(&token, reverse("reverse-1")))
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(reversal.kind, pb::TransactionKind::Reversal as i32);
    assert_eq!(reversal.related_transaction_id, original);
    let twice = books
        .client
        .reverse_transaction(authed(&token, reverse("reverse-2")))
        .await
        .unwrap_err();
    assert_eq!(
        (twice.code(), reason(&twice).as_str()),
        (Code::FailedPrecondition, "ALREADY_REVERSED")
    );
    assert_eq!(books.balance(&hotel_money).await, (2_157, 2_157, 0, 0));

    let by_reference = books
        .client
        .list_transactions(authed(
            &token,
            pb::ListTransactionsRequest {
                external_reference: "conversion-1".to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_reference.transactions.len(), 2);
    let trial = books
        .client
        .get_trial_balance(authed(&token, pb::GetTrialBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(trial.balanced);
    assert_eq!(
        trial
            .units
            .iter()
            .map(|unit| unit.unit.as_str())
            .collect::<Vec<_>>(),
        ["SKYLINE_PTS", "USD", "ZOOM_MILES"]
    );
}

async fn holds_post_or_void_once_and_guards_refuse_overdrafts(server: TestServer) {
    let mut books = Books::as_service(&server).await;
    let token = books.token.clone();
    let bank = books
        .open("exchange", pb::AccountPurpose::Bank, "USD", 2)
        .await;
    let guarded = {
        let request = pb::OpenAccountRequest {
            owner: "01a20560-0000-7000-8000-00000000000c".to_owned(),
            purpose: pb::AccountPurpose::Settlement.into(),
            unit: "USD".to_owned(),
            unit_scale: 2,
            guard: pb::BalanceGuard::DebitsNotExceedCredits.into(),
            overdraft_limit_minor: 0,
        };
        books
            .client
            .open_account(authed(&token, request))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
            .account_id
    };
    let transfer = |key: &str, from: &str, to: &str, amount: i64, kind: pb::TransactionKind| {
        pb::PostTransactionRequest {
            idempotency_key: key.to_owned(),
            legs: vec![
                leg(from, pb::Direction::Debit, amount),
                leg(to, pb::Direction::Credit, amount),
            ],
            kind: kind.into(),
            pending_timeout_seconds: 600,
            ..Default::default()
        }
    };
    books
        .client
        .post_transaction(authed(
            &token,
            transfer("fund", &bank, &guarded, 1_000, pb::TransactionKind::Posted),
        ))
        .await
        .unwrap();
    let hold = books
        .client
        .post_transaction(authed(
            &token,
            transfer("hold", &guarded, &bank, 800, pb::TransactionKind::Pending),
        ))
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(hold.pending_status, pb::PendingStatus::Open as i32);
    assert_eq!(books.balance(&guarded).await, (0, 1_000, 800, 0));

    let overdraft = books
        .client
        .post_transaction(authed(
            &token,
            transfer(
                "too-much",
                &guarded,
                &bank,
                201,
                pb::TransactionKind::Posted,
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (overdraft.code(), reason(&overdraft).as_str()),
        (Code::FailedPrecondition, "INSUFFICIENT_BALANCE")
    );

    let resolve = |key: &str, resolution: pb::PendingResolution| pb::ResolvePendingRequest {
        idempotency_key: key.to_owned(),
        pending_transaction_id: hold.transaction_id.clone(),
        resolution: resolution.into(),
    };
    books
        .client
        .resolve_pending(authed(
            &token,
            resolve("void-hold", pb::PendingResolution::Void),
        ))
        .await
        .unwrap();
    let again = books
        .client
        .resolve_pending(authed(
            &token,
            resolve("post-hold", pb::PendingResolution::Post),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::FailedPrecondition, "PENDING_ALREADY_RESOLVED")
    );
    assert_eq!(
        books.balance(&guarded).await,
        (0, 1_000, 0, 0),
        "a voided hold no longer counts"
    );

    let entries = books
        .client
        .list_entries(authed(
            &token,
            pb::ListEntriesRequest {
                account_id: guarded.clone(),
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entries.entries.len(), 1);
    let rest = books
        .client
        .list_entries(authed(
            &token,
            pb::ListEntriesRequest {
                account_id: guarded.clone(),
                page_size: 10,
                page_token: entries.next_page_token,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.entries.len(),
        1,
        "the fund and the hold, one page each"
    );
    assert!(rest.next_page_token.is_empty());
}

/// A batch answers each transaction as PostTransaction would, in the order sent.
async fn a_batch_answers_each_transaction_on_its_own(server: TestServer) {
    let mut books = Books::as_service(&server).await;
    let token = books.token.clone();
    let (from, to) = books
        .settlement_and_fees("01a20560-0000-7000-8000-00000000000a")
        .await;
    let transfer = |key: &str, debit: i64, credit: i64| pb::PostTransactionRequest {
        idempotency_key: key.to_owned(),
        legs: vec![
            leg(&from, pb::Direction::Debit, debit),
            leg(&to, pb::Direction::Credit, credit),
        ],
        type_code: "FEE".to_owned(),
        external_reference: "batch".to_owned(),
        ..Default::default()
    };
    let first = transfer("batch-1", 100, 100);
    let batch = |transactions| {
        authed(
            &token,
            pb::PostTransactionsRequest {
                transactions,
                ..Default::default()
            },
        )
    };
    let results = books
        .client
        .post_transactions(batch(vec![
            first.clone(),
            transfer("batch-2", 250, 250),
            // The first again, as a retry inside the same call.
            first.clone(),
            // The first's key with another amount.
            transfer("batch-1", 101, 101),
            transfer("batch-3", 10, 9),
            pb::PostTransactionRequest {
                idempotency_key: String::new(),
                ..transfer("", 1, 1)
            },
        ]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 6);
    let posted = |index: usize| results[index].transaction.clone().unwrap();
    assert_eq!((results[0].code, results[0].replayed), (0, false));
    assert_eq!(posted(0).legs[0].amount_minor, 100);
    assert_eq!((results[1].code, results[1].replayed), (0, false));
    assert_eq!(
        (
            results[2].code,
            results[2].replayed,
            posted(2).transaction_id
        ),
        (0, true, posted(0).transaction_id),
        "a retry in the same call gets the original"
    );
    assert_eq!(
        (results[3].code, results[3].reason.as_str()),
        (Code::AlreadyExists as i32, "IDEMPOTENCY_KEY_REUSED")
    );
    assert!(results[3].transaction.is_none());
    assert_eq!(
        (results[4].code, results[4].reason.as_str()),
        (Code::InvalidArgument as i32, "INVALID_ARGUMENT")
    );
    assert!(
        results[4].message.contains("legs"),
        "{}",
        results[4].message
    );
    assert_eq!(results[5].code, Code::InvalidArgument as i32);
    assert!(
        results[5].message.contains("idempotency_key"),
        "{}",
        results[5].message
    );
    assert_eq!(
        books.balance(&from).await,
        (350, 0, 0, 0),
        "only the two good transfers moved money, once each"
    );

    // The same call again is all replays.
    let again = books
        .client
        .post_transactions(batch(vec![first.clone(), transfer("batch-2", 250, 250)]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        again
            .iter()
            .all(|result| result.code == 0 && result.replayed)
    );
    assert_eq!(books.balance(&from).await, (350, 0, 0, 0));

    // The basic view answers without the legs and metadata the caller has just sent, for a new
    // transaction and for a replay alike; the ledger still holds both.
    let mut with_metadata = transfer("batch-4", 40, 40);
    with_metadata
        .metadata
        .insert("earning_id".to_owned(), "e-4".to_owned());
    let basic = |transactions| {
        authed(
            &token,
            pb::PostTransactionsRequest {
                transactions,
                view: pb::TransactionView::Basic.into(),
            },
        )
    };
    let answered = books
        .client
        .post_transactions(basic(vec![with_metadata.clone(), first.clone()]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        answered
            .iter()
            .map(|result| (result.code, result.replayed))
            .collect::<Vec<_>>(),
        [(0, false), (0, true)]
    );
    for result in &answered {
        let transaction = result.transaction.as_ref().unwrap();
        assert!(!transaction.transaction_id.is_empty());
        assert_eq!(transaction.kind(), pb::TransactionKind::Posted);
        assert!(transaction.legs.is_empty() && transaction.metadata.is_empty());
    }
    assert_eq!(
        answered[1].transaction.as_ref().unwrap().transaction_id,
        posted(0).transaction_id
    );
    let new_id = &answered[0].transaction.as_ref().unwrap().transaction_id;
    let stored = books
        .client
        .list_transactions(authed(
            &token,
            pb::ListTransactionsRequest {
                external_reference: "batch".to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .transactions
        .into_iter()
        .find(|transaction| &transaction.transaction_id == new_id)
        .unwrap();
    assert_eq!(stored.legs.len(), 2);
    assert_eq!(stored.metadata["earning_id"], "e-4");
    assert_eq!(books.balance(&from).await, (390, 0, 0, 0));

    for size in [0, 1_001] {
        let error = books
            .client
            .post_transactions(batch(vec![first.clone(); size]))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{size} transactions");
        assert_eq!(violated_fields(&error), ["transactions"]);
    }
}

/// A statement pages through an account's entries in (commit time, transaction, leg) order, each
/// entry once, also where a batch gave many entries one commit time and a page ends inside them.
async fn statement_pages_cover_every_entry_once_in_order(server: TestServer) {
    let mut books = Books::as_service(&server).await;
    let token = books.token.clone();
    let (from, to) = books
        .settlement_and_fees("01a20560-0000-7000-8000-00000000000b")
        .await;
    let transfer = |key: String| pb::PostTransactionRequest {
        idempotency_key: key,
        legs: vec![
            leg(&from, pb::Direction::Debit, 5),
            leg(&to, pb::Direction::Credit, 5),
        ],
        type_code: "FEE".to_owned(),
        external_reference: "statement".to_owned(),
        ..Default::default()
    };
    let mut sent = 0;
    for batch in [7, 1, 5] {
        let results = books
            .client
            .post_transactions(authed(
                &token,
                pb::PostTransactionsRequest {
                    transactions: (0..batch)
                        .map(|index| transfer(format!("statement-{}", sent + index)))
                        .collect(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(results.iter().all(|result| result.code == 0));
        sent += batch;
    }

    for page_size in [1, 3, 4, 13, 100] {
        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = books
                .client
                .list_entries(authed(
                    &token,
                    pb::ListEntriesRequest {
                        account_id: from.clone(),
                        page_size,
                        page_token,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(page.entries.len() <= page_size as usize);
            seen.extend(page.entries.into_iter().map(|entry| {
                let commit = entry.commit_time.unwrap();
                ((commit.seconds, commit.nanos), entry.transaction_id)
            }));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(seen.len(), sent, "every entry once, {page_size} a page");
        let mut ordered = seen.clone();
        ordered.sort();
        ordered.dedup();
        assert_eq!(
            seen, ordered,
            "in order and never twice, {page_size} a page"
        );
    }
}

on_every_backend!(
    a_conversion_posts_balanced_legs_once_and_reverses_once,
    holds_post_or_void_once_and_guards_refuse_overdrafts,
    a_batch_answers_each_transaction_on_its_own,
    statement_pages_cover_every_entry_once_in_order
);
