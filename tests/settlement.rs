//! SettlementService through the real server, as operations staff use it: the ledger's accounts
//! and each partner's position, now and as of a time; adjustments with four eyes above the
//! threshold, their replays and refusals; the audit trail; and the same through the `tandem` CLI.

mod helpers;

use std::process::Stdio;

use helpers::{
    TANDEM, TestServer, authed, eventually, kill_while_waiting, reason, storage_args,
    violated_fields,
};
use tandem_auth::Role;
use tandem_proto::v1 as pb;
use tandem_storage::testing::TestDatabase;
use tonic::Code;

const HOTEL: &str = "01a20560-0000-7000-8000-00000000000a";
const RIDE: &str = "01a20560-0000-7000-8000-00000000000b";
const AIRLINE: &str = "01a20560-0000-7000-8000-00000000000c";

/// Two partners' USD settlement accounts and the exchange's USD fee account.
struct Books {
    hotel: String,
    ride: String,
    airline: String,
    fees: String,
    service_token: String,
}

impl Books {
    async fn open(server: &TestServer) -> Self {
        let service_token = server.staff_token(Role::Service).await;
        let mut ledger = server.ledger();
        let mut open = async |owner: &str, purpose: pb::AccountPurpose| {
            let request = pb::OpenAccountRequest {
                owner: owner.to_owned(),
                purpose: purpose.into(),
                unit: "USD".to_owned(),
                unit_scale: 2,
                ..Default::default()
            };
            ledger
                .open_account(authed(&service_token, request))
                .await
                .unwrap()
                .into_inner()
                .account
                .unwrap()
                .account_id
        };
        let hotel = open(HOTEL, pb::AccountPurpose::Settlement).await;
        let ride = open(RIDE, pb::AccountPurpose::Settlement).await;
        let fees = open("exchange", pb::AccountPurpose::Fees).await;
        let airline = open(AIRLINE, pb::AccountPurpose::Settlement).await;
        Self {
            hotel,
            ride,
            airline,
            fees,
            service_token,
        }
    }

    /// What a conversion posts: the hotel pays the ride `amount_minor` and the exchange a fee
    /// of 100.
    async fn conversion(&self, server: &TestServer, key: &str, amount_minor: i64) {
        self.payment(server, key, &self.hotel, &self.ride, amount_minor)
            .await;
    }

    /// `payer` pays `payee` `amount_minor` and the exchange a fee of 100, as a conversion does.
    async fn payment(
        &self,
        server: &TestServer,
        key: &str,
        payer: &str,
        payee: &str,
        amount_minor: i64,
    ) {
        let request = pb::PostTransactionRequest {
            idempotency_key: key.to_owned(),
            legs: vec![
                leg(payer, pb::Direction::Debit, amount_minor + 100),
                leg(payee, pb::Direction::Credit, amount_minor),
                leg(&self.fees, pb::Direction::Credit, 100),
            ],
            type_code: "CONVERSION".to_owned(),
            ..Default::default()
        };
        server
            .ledger()
            .post_transaction(authed(&self.service_token, request))
            .await
            .unwrap();
    }
}

fn leg(account: &str, direction: pb::Direction, amount_minor: i64) -> pb::Leg {
    pb::Leg {
        account_id: account.to_owned(),
        direction: direction.into(),
        amount_minor,
    }
}

async fn positions(
    server: &TestServer,
    token: &str,
    request: pb::ListPositionsRequest,
) -> Result<Vec<(String, i64)>, tonic::Status> {
    let answer = server
        .settlement()
        .list_positions(authed(token, request))
        .await?
        .into_inner();
    Ok(answer
        .positions
        .into_iter()
        .map(|position| (position.partner_id, position.net_minor))
        .collect())
}

async fn positions_show_what_each_partner_is_owed_now_and_as_of_a_time(server: TestServer) {
    let books = Books::open(&server).await;
    let ops = server.ops_token("alice").await;
    books.conversion(&server, "first", 2_500).await;
    let between = tandem_proto::time::timestamp(tandem_domain::now());
    books.conversion(&server, "second", 1_000).await;

    let now = positions(&server, &ops, pb::ListPositionsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        now,
        [
            (HOTEL.to_owned(), -3_700),
            (RIDE.to_owned(), 3_500),
            (AIRLINE.to_owned(), 0)
        ],
        "the exchange's fee account is not a partner's position"
    );
    let earlier = positions(
        &server,
        &ops,
        pb::ListPositionsRequest {
            as_of_time: Some(between),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        earlier,
        [
            (HOTEL.to_owned(), -2_600),
            (RIDE.to_owned(), 2_500),
            (AIRLINE.to_owned(), 0)
        ]
    );

    // A partner reads its own position, and only its own.
    let hotel_token = server.partner_token_for(HOTEL).await;
    let own = pb::ListPositionsRequest {
        partner_id: HOTEL.to_owned(),
        ..Default::default()
    };
    assert_eq!(
        positions(&server, &hotel_token, own).await.unwrap(),
        [(HOTEL.to_owned(), -3_700)]
    );
    for request in [
        pb::ListPositionsRequest::default(),
        pb::ListPositionsRequest {
            partner_id: RIDE.to_owned(),
            ..Default::default()
        },
    ] {
        let refused = positions(&server, &hotel_token, request).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let future = pb::ListPositionsRequest {
        as_of_time: Some(prost_types::Timestamp {
            seconds: 4_000_000_000,
            nanos: 0,
        }),
        currency: "XXQ".to_owned(),
        ..Default::default()
    };
    let refused = positions(&server, &ops, future).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["currency", "as_of_time"]);
}

async fn accounts_are_listed_by_filter_a_page_at_a_time(server: TestServer) {
    let books = Books::open(&server).await;
    let ops = server.ops_token("alice").await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .settlement()
            .list_accounts(authed(
                &ops,
                pb::ListAccountsRequest {
                    purpose: pb::AccountPurpose::Settlement.into(),
                    page_size: 1,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.accounts.len() <= 1);
        seen.extend(page.accounts.into_iter().map(|account| account.account_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        [
            books.hotel.clone(),
            books.ride.clone(),
            books.airline.clone()
        ],
        "oldest first, once each"
    );
    let exchange_only = server
        .settlement()
        .list_accounts(authed(
            &ops,
            pb::ListAccountsRequest {
                owner: "exchange".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exchange_only.accounts.len(), 1);
    assert_eq!(exchange_only.accounts[0].account_id, books.fees);
    let refused = server
        .settlement()
        .list_accounts(authed(
            &ops,
            pb::ListAccountsRequest {
                owner: "not-a-partner".to_owned(),
                unit: "x".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["owner", "unit"]);
}

fn adjustment(key: &str, from: &str, to: &str, amount_minor: i64) -> pb::PostAdjustmentRequest {
    pb::PostAdjustmentRequest {
        idempotency_key: key.to_owned(),
        legs: vec![
            leg(from, pb::Direction::Debit, amount_minor),
            leg(to, pb::Direction::Credit, amount_minor),
        ],
        reason: "conversion 42 failed after the partners settled by hand".to_owned(),
        reference: "conversion-42".to_owned(),
    }
}

async fn post(
    server: &TestServer,
    token: &str,
    request: pb::PostAdjustmentRequest,
) -> Result<(pb::Adjustment, bool), tonic::Status> {
    let answer = server
        .settlement()
        .post_adjustment(authed(token, request))
        .await?
        .into_inner();
    Ok((answer.adjustment.unwrap(), answer.replayed))
}

async fn approve(
    server: &TestServer,
    token: &str,
    id: &str,
) -> Result<pb::Adjustment, tonic::Status> {
    let request = pb::ApproveAdjustmentRequest {
        adjustment_id: id.to_owned(),
    };
    Ok(server
        .settlement()
        .approve_adjustment(authed(token, request))
        .await?
        .into_inner()
        .adjustment
        .unwrap())
}

async fn an_adjustment_above_the_threshold_needs_a_second_ops_user(server: TestServer) {
    let books = Books::open(&server).await;
    let (alice, bob) = (
        server.ops_token("alice").await,
        server.ops_token("bob").await,
    );
    // $1,500.00 is above the default threshold of 100,000 minor units.
    let big = adjustment("big", &books.hotel, &books.ride, 150_000);
    let (requested, replayed) = post(&server, &alice, big.clone()).await.unwrap();
    assert!(!replayed);
    assert_eq!(
        requested.status,
        pb::AdjustmentStatus::AwaitingApproval as i32
    );
    assert_eq!(requested.amount_minor, 150_000);
    assert!(requested.transaction_id.is_empty());
    assert_eq!(
        positions(&server, &alice, pb::ListPositionsRequest::default())
            .await
            .unwrap(),
        [
            (HOTEL.to_owned(), 0),
            (RIDE.to_owned(), 0),
            (AIRLINE.to_owned(), 0)
        ],
        "nothing posts before the approval"
    );

    let refused = approve(&server, &alice, &requested.adjustment_id)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason(&refused), "SAME_OPS_USER");
    let approved = approve(&server, &bob, &requested.adjustment_id)
        .await
        .unwrap();
    assert_eq!(approved.status, pb::AdjustmentStatus::Posted as i32);
    assert_eq!(approved.decided_by, "bob");
    assert_eq!(
        positions(&server, &bob, pb::ListPositionsRequest::default())
            .await
            .unwrap(),
        [
            (HOTEL.to_owned(), -150_000),
            (RIDE.to_owned(), 150_000),
            (AIRLINE.to_owned(), 0)
        ]
    );
    let posted = server
        .ledger()
        .list_transactions(authed(
            &bob,
            pb::ListTransactionsRequest {
                external_reference: "conversion-42".to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .transactions;
    assert_eq!(posted.len(), 1, "posted once");
    assert_eq!(posted[0].transaction_id, approved.transaction_id);
    assert_eq!(posted[0].type_code, "ADJUSTMENT");
    assert_eq!(posted[0].metadata["approved_by"], "bob");

    // The approver asking again gets the posted adjustment; the same key again is the original.
    let again = approve(&server, &bob, &requested.adjustment_id)
        .await
        .unwrap();
    assert_eq!(again.transaction_id, approved.transaction_id);
    let (replay, replayed) = post(&server, &alice, big.clone()).await.unwrap();
    assert!(replayed);
    assert_eq!(replay.adjustment_id, requested.adjustment_id);
    let mut other = big;
    other.reason = "another reason".to_owned();
    let reused = post(&server, &alice, other).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
}

async fn small_adjustments_post_at_once_and_waiting_ones_can_be_rejected(server: TestServer) {
    let books = Books::open(&server).await;
    let (alice, bob) = (
        server.ops_token("alice").await,
        server.ops_token("bob").await,
    );
    let (small, _) = post(
        &server,
        &alice,
        adjustment("small", &books.ride, &books.hotel, 700),
    )
    .await
    .unwrap();
    assert_eq!(small.status, pb::AdjustmentStatus::Posted as i32);
    assert!(!small.transaction_id.is_empty());

    let (waiting, _) = post(
        &server,
        &alice,
        adjustment("waiting", &books.hotel, &books.ride, 200_000),
    )
    .await
    .unwrap();
    let rejected = server
        .settlement()
        .reject_adjustment(authed(
            &bob,
            pb::RejectAdjustmentRequest {
                adjustment_id: waiting.adjustment_id.clone(),
                reason: "the partners settled it between them".to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .adjustment
        .unwrap();
    assert_eq!(rejected.status, pb::AdjustmentStatus::Rejected as i32);
    let late = approve(&server, &bob, &waiting.adjustment_id)
        .await
        .unwrap_err();
    assert_eq!(reason(&late), "ADJUSTMENT_NOT_AWAITING_APPROVAL");
    assert_eq!(
        positions(&server, &bob, pb::ListPositionsRequest::default())
            .await
            .unwrap(),
        [
            (HOTEL.to_owned(), 700),
            (RIDE.to_owned(), -700),
            (AIRLINE.to_owned(), 0)
        ],
        "only the small one posted"
    );

    let listed = server
        .settlement()
        .list_adjustments(authed(
            &alice,
            pb::ListAdjustmentsRequest {
                status: pb::AdjustmentStatus::Rejected.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .adjustments;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].adjustment_id, waiting.adjustment_id);

    let trail: Vec<(String, String, String)> = server
        .settlement()
        .list_audit_events(authed(&alice, pb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|event| (event.actor, event.action, event.object_id))
        .collect();
    let small_id = small.adjustment_id;
    let waiting_id = waiting.adjustment_id;
    assert_eq!(
        trail,
        [
            (
                "bob".into(),
                "ADJUSTMENT_REJECTED".into(),
                waiting_id.clone()
            ),
            ("alice".into(), "ADJUSTMENT_REQUESTED".into(), waiting_id),
            ("alice".into(), "ADJUSTMENT_POSTED".into(), small_id.clone()),
            ("alice".into(), "ADJUSTMENT_REQUESTED".into(), small_id),
        ],
        "newest first, every action once"
    );
}

async fn a_bad_adjustment_is_refused_and_writes_nothing(server: TestServer) {
    let books = Books::open(&server).await;
    let alice = server.ops_token("alice").await;
    let mut unbalanced = adjustment("unbalanced", &books.hotel, &books.ride, 100);
    unbalanced.legs[1].amount_minor = 99;
    let refused = post(&server, &alice, unbalanced).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["legs"]);
    let mut blank = adjustment("", &books.hotel, &books.ride, 100);
    blank.reason = " ".to_owned();
    let refused = post(&server, &alice, blank).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["idempotency_key", "reason"]);
    let unknown = adjustment(
        "unknown-account",
        &books.hotel,
        "01a20560-0000-7000-8000-0000000000ff",
        100,
    );
    let refused = post(&server, &alice, unknown).await.unwrap_err();
    assert_eq!(reason(&refused), "ACCOUNT_NOT_FOUND");
    // The bank clearing account moves only by settlement: an adjustment there is refused, and
    // so is any other ledger transaction that claims settlement's own type code.
    let bank = server
        .ledger()
        .open_account(authed(
            &books.service_token,
            pb::OpenAccountRequest {
                owner: "exchange".to_owned(),
                purpose: pb::AccountPurpose::Bank.into(),
                unit: "USD".to_owned(),
                unit_scale: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .account_id;
    let refused = post(&server, &alice, adjustment("bank", &bank, &books.ride, 100))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["legs[0].account_id"]);
    let settlement_code = pb::PostTransactionRequest {
        idempotency_key: "not-a-settlement".to_owned(),
        legs: vec![
            leg(&books.hotel, pb::Direction::Debit, 1),
            leg(&books.ride, pb::Direction::Credit, 1),
        ],
        type_code: "SETTLEMENT".to_owned(),
        ..Default::default()
    };
    let refused = server
        .ledger()
        .post_transaction(authed(&books.service_token, settlement_code))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["type_code"]);
    // A partner, or Tandem's own services, may not post adjustments.
    let partner = server.partner_token_for(HOTEL).await;
    let refused = post(
        &server,
        &partner,
        adjustment("partner", &books.hotel, &books.ride, 100),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let listed = server
        .settlement()
        .list_adjustments(authed(&alice, pb::ListAdjustmentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .adjustments;
    assert!(listed.is_empty(), "{listed:?}");
    let trail = server
        .settlement()
        .list_audit_events(authed(&alice, pb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(trail.is_empty(), "{trail:?}");
}

async fn create_run(
    server: &TestServer,
    token: &str,
    key: &str,
    cutoff: prost_types::Timestamp,
) -> Result<(pb::SettlementRun, bool), tonic::Status> {
    let request = pb::CreateSettlementRunRequest {
        idempotency_key: key.to_owned(),
        currency: "USD".to_owned(),
        cutoff_time: Some(cutoff),
    };
    let answer = server
        .settlement()
        .create_settlement_run(authed(token, request))
        .await?
        .into_inner();
    Ok((answer.run.unwrap(), answer.replayed))
}

fn nets(run: &pb::SettlementRun) -> Vec<(String, i64)> {
    run.positions
        .iter()
        .map(|position| (position.party.clone(), position.net_minor))
        .collect()
}

fn now() -> prost_types::Timestamp {
    tandem_proto::time::timestamp(tandem_domain::now())
}

async fn a_run_nets_three_partners_and_settles_with_four_eyes(server: TestServer) {
    let books = Books::open(&server).await;
    let (alice, bob) = (
        server.ops_token("alice").await,
        server.ops_token("bob").await,
    );
    books
        .payment(&server, "h-r", &books.hotel, &books.ride, 2_500)
        .await;
    books
        .payment(&server, "r-a", &books.ride, &books.airline, 1_000)
        .await;
    books
        .payment(&server, "a-h", &books.airline, &books.hotel, 500)
        .await;
    let cutoff = now();
    // Committed after the cut-off: the next run's.
    books
        .payment(&server, "late", &books.hotel, &books.ride, 700)
        .await;

    let (run, replayed) = create_run(&server, &alice, "december", cutoff)
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(run.status, pb::SettlementRunStatus::Draft as i32);
    assert_eq!(run.entry_count, 9);
    assert_eq!(
        nets(&run),
        [
            (HOTEL.to_owned(), -2_100),
            (RIDE.to_owned(), 1_400),
            (AIRLINE.to_owned(), 400),
            ("exchange".to_owned(), 300),
        ]
    );
    let bilateral: Vec<(String, String, i64)> = run
        .bilateral
        .iter()
        .map(|amount| {
            (
                amount.debtor.clone(),
                amount.creditor.clone(),
                amount.amount_minor,
            )
        })
        .collect();
    for (debtor, creditor, amount) in [
        (HOTEL, RIDE, 2_500),
        (HOTEL, "exchange", 100),
        (RIDE, AIRLINE, 1_000),
        (AIRLINE, HOTEL, 500),
    ] {
        assert!(
            bilateral.contains(&(debtor.to_owned(), creditor.to_owned(), amount)),
            "{debtor} owes {creditor} {amount}: {bilateral:?}"
        );
    }
    assert_eq!(run.totals.len(), 1);
    assert_eq!(run.totals[0].kind, "CONVERSION");
    assert_eq!(
        (run.totals[0].debits_minor, run.totals[0].credits_minor),
        (4_300, 4_300)
    );

    let (again, replayed) = create_run(&server, &alice, "december", cutoff)
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(again.run_id, run.run_id);
    let reused = create_run(&server, &alice, "december", now())
        .await
        .unwrap_err();
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");

    let approve = |token: String, run_id: String| {
        let mut client = server.settlement();
        async move {
            client
                .approve_settlement_run(authed(&token, pb::ApproveSettlementRunRequest { run_id }))
                .await
        }
    };
    let refused = approve(alice.clone(), run.run_id.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SAME_OPS_USER");
    // Until a second ops user approves it, the run is no partner's statement.
    let draft = server
        .settlement()
        .get_statement(authed(
            &server.partner_token_for(RIDE).await,
            pb::GetStatementRequest {
                run_id: run.run_id.clone(),
                party: RIDE.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(draft.code(), Code::NotFound);
    approve(bob.clone(), run.run_id.clone()).await.unwrap();

    let settle = |references: Vec<(&str, &str)>| {
        let mut client = server.settlement();
        let request = pb::SettleSettlementRunRequest {
            run_id: run.run_id.clone(),
            payment_references: references
                .into_iter()
                .map(|(party, reference)| (party.to_owned(), reference.to_owned()))
                .collect(),
        };
        let token = bob.clone();
        async move { client.settle_settlement_run(authed(&token, request)).await }
    };
    let missing = settle(vec![(HOTEL, "wire-1")]).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&missing).len(), 3, "{missing:?}");
    let settled = settle(vec![
        (HOTEL, "wire-1"),
        (RIDE, "wire-2"),
        (AIRLINE, "wire-3"),
        ("exchange", "internal-4"),
    ])
    .await
    .unwrap()
    .into_inner()
    .run
    .unwrap();
    assert_eq!(settled.status, pb::SettlementRunStatus::Settled as i32);
    let other_payments = settle(vec![
        (HOTEL, "wire-9"),
        (RIDE, "wire-2"),
        (AIRLINE, "wire-3"),
        ("exchange", "internal-4"),
    ])
    .await
    .unwrap_err();
    assert_eq!(reason(&other_payments), "PAYMENT_REFERENCES_DIFFER");
    assert_eq!(settled.settlement_transaction_ids.len(), 1);
    assert_eq!(settled.positions[1].payment_reference, "wire-2");
    assert_eq!(
        positions(&server, &bob, pb::ListPositionsRequest::default())
            .await
            .unwrap(),
        [
            (HOTEL.to_owned(), -800),
            (RIDE.to_owned(), 700),
            (AIRLINE.to_owned(), 0)
        ],
        "settled positions are zero; only the late payment is left"
    );

    // The ride reads its own statement: its two lines, and its position.
    let ride_token = server.partner_token_for(RIDE).await;
    let statement = server
        .settlement()
        .get_statement(authed(
            &ride_token,
            pb::GetStatementRequest {
                run_id: run.run_id.clone(),
                party: RIDE.to_owned(),
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statement.position.unwrap().net_minor, 1_400);
    assert_eq!(statement.lines.len(), 1);
    assert!(!statement.next_page_token.is_empty(), "a second page");
    let not_its_own = server
        .settlement()
        .get_statement(authed(
            &ride_token,
            pb::GetStatementRequest {
                run_id: run.run_id.clone(),
                party: HOTEL.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(not_its_own.code(), Code::PermissionDenied);

    // The next run takes only the late payment: not the settlement's own transaction.
    let (next, _) = create_run(&server, &alice, "january", now()).await.unwrap();
    assert_eq!(next.entry_count, 3);
    assert_eq!(
        nets(&next),
        [
            (HOTEL.to_owned(), -800),
            (RIDE.to_owned(), 700),
            ("exchange".to_owned(), 100),
        ]
    );
    // Cancelled, it lets go of its entries, and a new run takes them again.
    server
        .settlement()
        .cancel_settlement_run(authed(
            &alice,
            pb::CancelSettlementRunRequest {
                run_id: next.run_id.clone(),
                reason: "wrong cut-off".to_owned(),
            },
        ))
        .await
        .unwrap();
    let (retaken, _) = create_run(&server, &alice, "january-again", now())
        .await
        .unwrap();
    assert_eq!(retaken.entry_count, 3);
    let (empty, _) = create_run(&server, &alice, "nothing-left", now())
        .await
        .unwrap();
    assert_eq!(empty.entry_count, 0, "every entry in exactly one run");
    assert_eq!(
        empty.period_start_time, retaken.cutoff_time,
        "a run's period starts where the live run before it ends"
    );
    // Periods follow one another: a cut-off before the last run's is refused, and only the
    // newest live run may be cancelled.
    let refused = create_run(
        &server,
        &alice,
        "back-in-time",
        retaken.cutoff_time.unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "CUTOFF_NOT_AFTER_LAST_RUN")
    );
    let refused = server
        .settlement()
        .cancel_settlement_run(authed(
            &alice,
            pb::CancelSettlementRunRequest {
                run_id: retaken.run_id.clone(),
                reason: "not the newest".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "LATER_RUN_EXISTS")
    );
}

async fn a_bad_run_request_is_refused_and_stores_nothing(server: TestServer) {
    let alice = server.ops_token("alice").await;
    let future = prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    };
    let refused = create_run(&server, &alice, "future", future)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["cutoff_time"]);
    let request = pb::CreateSettlementRunRequest {
        idempotency_key: "unknown".to_owned(),
        currency: "XXQ".to_owned(),
        cutoff_time: None,
    };
    let refused = server
        .settlement()
        .create_settlement_run(authed(&alice, request))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["currency", "cutoff_time"]);
    let runs = server
        .settlement()
        .list_settlement_runs(authed(&alice, pb::ListSettlementRunsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "{runs:?}");
}

/// A conversion as the exchange posts it: 10,000 hotel points out of the hotel's program,
/// 2,500 ride miles into the ride's, and the hotel paying the ride $25.00 and the exchange $1.00.
async fn conversion_with_points(server: &TestServer, books: &Books, key: &str) {
    converted(server, books, key, "").await;
}

/// The conversion of `conversion_with_points`, recording `reference`.
async fn converted(server: &TestServer, books: &Books, key: &str, reference: &str) {
    let mut ledger = server.ledger();
    let token = books.service_token.clone();
    let mut open = async |owner: &str, unit: &str| {
        let request = pb::OpenAccountRequest {
            owner: owner.to_owned(),
            purpose: pb::AccountPurpose::ProgramClearing.into(),
            unit: unit.to_owned(),
            unit_scale: 0,
            ..Default::default()
        };
        ledger
            .open_account(authed(&token, request))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
            .account_id
    };
    let hotel_points = open(HOTEL, "SKYLINE_PTS").await;
    let exchange_points = open("exchange", "SKYLINE_PTS").await;
    let ride_miles = open(RIDE, "ZOOM_MILES").await;
    let exchange_miles = open("exchange", "ZOOM_MILES").await;
    let request = pb::PostTransactionRequest {
        idempotency_key: key.to_owned(),
        legs: vec![
            leg(&hotel_points, pb::Direction::Debit, 10_000),
            leg(&exchange_points, pb::Direction::Credit, 10_000),
            leg(&exchange_miles, pb::Direction::Debit, 2_500),
            leg(&ride_miles, pb::Direction::Credit, 2_500),
            leg(&books.hotel, pb::Direction::Debit, 2_600),
            leg(&books.ride, pb::Direction::Credit, 2_500),
            leg(&books.fees, pb::Direction::Credit, 100),
        ],
        type_code: "CONVERSION".to_owned(),
        external_reference: reference.to_owned(),
        ..Default::default()
    };
    ledger
        .post_transaction(authed(&token, request))
        .await
        .unwrap();
}

async fn the_liability_report_shows_points_issued_and_redeemed_with_their_value(
    server: TestServer,
) {
    let books = Books::open(&server).await;
    let before = now();
    conversion_with_points(&server, &books, "points").await;
    let ops = server.ops_token("alice").await;
    let report = |request: pb::GetLiabilityReportRequest, token: String| {
        let mut client = server.settlement();
        async move {
            client
                .get_liability_report(authed(&token, request))
                .await
                .map(|answer| {
                    answer
                        .into_inner()
                        .programs
                        .into_iter()
                        .map(|program| {
                            (
                                program.program,
                                program.points_issued,
                                program.points_redeemed,
                                program.points_outstanding,
                                program.value_issued_minor,
                                program.value_redeemed_minor,
                            )
                        })
                        .collect::<Vec<_>>()
                })
        }
    };
    assert_eq!(
        report(pb::GetLiabilityReportRequest::default(), ops.clone())
            .await
            .unwrap(),
        [
            ("SKYLINE_PTS".to_owned(), 0, 10_000, -10_000, 0, 2_600),
            ("ZOOM_MILES".to_owned(), 2_500, 0, 2_500, 2_500, 0),
        ]
    );
    let until_before = pb::GetLiabilityReportRequest {
        end_time: Some(before),
        ..Default::default()
    };
    let empty = report(until_before, ops.clone()).await.unwrap();
    assert!(
        empty
            .iter()
            .all(|row| row.1 == 0 && row.2 == 0 && row.3 == 0),
        "nothing before the conversion: {empty:?}"
    );
    let ride = server.partner_token_for(RIDE).await;
    let own = pb::GetLiabilityReportRequest {
        partner_id: RIDE.to_owned(),
        ..Default::default()
    };
    assert_eq!(
        report(own, ride.clone()).await.unwrap(),
        [("ZOOM_MILES".to_owned(), 2_500, 0, 2_500, 2_500, 0)]
    );
    let everyone = report(pb::GetLiabilityReportRequest::default(), ride)
        .await
        .unwrap_err();
    assert_eq!(everyone.code(), Code::PermissionDenied);
    let backwards = pb::GetLiabilityReportRequest {
        start_time: Some(now()),
        end_time: Some(before),
        ..Default::default()
    };
    let refused = report(backwards, ops.clone()).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["start_time"]);

    let (code, csv, error) = cli(
        &server,
        "alice",
        &["report", "liability", "--output", "csv"],
    );
    assert_eq!(code, 0, "{error}");
    assert!(
        csv.contains(&format!("{RIDE},ZOOM_MILES,2500,0,2500,USD,25.00,0.00")),
        "{csv}"
    );
}

fn record(id: &str, reference: &str, points: i64) -> pb::PartnerRecord {
    pb::PartnerRecord {
        partner_record_id: id.to_owned(),
        tandem_reference: reference.to_owned(),
        kind: "CONVERSION".to_owned(),
        points,
        money_minor: Some(points),
        time: Some(now()),
    }
}

async fn submit(
    server: &TestServer,
    token: &str,
    header: pb::ReportHeader,
    records: Vec<pb::PartnerRecord>,
) -> Result<pb::Reconciliation, tonic::Status> {
    // Header alone first, then the records two to a message, as a partner's file streams in.
    let mut messages = vec![pb::SubmitPartnerReportRequest {
        header: Some(header),
        records: Vec::new(),
    }];
    messages.extend(
        records
            .chunks(2)
            .map(|chunk| pb::SubmitPartnerReportRequest {
                header: None,
                records: chunk.to_vec(),
            }),
    );
    Ok(server
        .settlement()
        .submit_partner_report(authed(token, futures::stream::iter(messages)))
        .await?
        .into_inner()
        .reconciliation
        .unwrap())
}

fn counts(reconciliation: &pb::Reconciliation) -> Vec<(String, i64)> {
    reconciliation
        .counts
        .iter()
        .filter(|count| count.count > 0)
        .map(|count| {
            let class = pb::DiscrepancyClass::try_from(count.class).unwrap();
            (
                class
                    .as_str_name()
                    .trim_start_matches("DISCREPANCY_CLASS_")
                    .to_owned(),
                count.count,
            )
        })
        .collect()
}

async fn a_partner_report_is_reconciled_and_its_discrepancies_resolved(server: TestServer) {
    let books = Books::open(&server).await;
    let start = now();
    for reference in ["c1", "c2", "c3", "c4"] {
        converted(&server, &books, reference, reference).await;
    }
    let end = now();
    let header = pb::ReportHeader {
        partner_id: RIDE.to_owned(),
        start_time: Some(start),
        end_time: Some(end),
        ..Default::default()
    };
    // The ride's own records: c2's amount changed, c3 dropped, c4 twice, one Tandem never saw.
    let records = vec![
        record("r-1", "c1", 2_500),
        record("r-2", "c2", 2_400),
        record("r-4", "c4", 2_500),
        record("r-4-again", "c4", 2_500),
        record("r-9", "not-in-tandem", 300),
    ];
    let ops = server.ops_token("alice").await;
    let dry = submit(
        &server,
        &ops,
        pb::ReportHeader {
            dry_run: true,
            ..header.clone()
        },
        records.clone(),
    )
    .await
    .unwrap();
    let expected = [
        ("MATCHED".to_owned(), 2),
        ("MISSING_OURS".to_owned(), 1),
        ("MISSING_THEIRS".to_owned(), 1),
        ("AMOUNT_MISMATCH".to_owned(), 1),
        ("DUPLICATE".to_owned(), 1),
    ];
    assert_eq!(counts(&dry), expected);
    assert!(dry.reconciliation_id.is_empty(), "a dry run stores nothing");

    // The partner sends its own report.
    let ride = server.partner_token_for(RIDE).await;
    let stored = submit(&server, &ride, header.clone(), records)
        .await
        .unwrap();
    assert_eq!(counts(&stored), expected);
    assert_eq!(
        (stored.partner_record_count, stored.tandem_record_count),
        (5, 4)
    );
    let hotel = server.partner_token_for(HOTEL).await;
    let not_its_own = submit(&server, &hotel, header.clone(), Vec::new())
        .await
        .unwrap_err();
    assert_eq!(not_its_own.code(), Code::PermissionDenied);

    let missing_theirs = server
        .settlement()
        .list_discrepancies(authed(
            &ops,
            pb::ListDiscrepanciesRequest {
                reconciliation_id: stored.reconciliation_id.clone(),
                class: pb::DiscrepancyClass::MissingTheirs.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .discrepancies;
    assert_eq!(missing_theirs.len(), 1);
    assert_eq!(missing_theirs[0].tandem_reference, "c3");
    assert_eq!(missing_theirs[0].our_points, 2_500);
    let all = server
        .settlement()
        .list_discrepancies(authed(
            &ride,
            pb::ListDiscrepanciesRequest {
                reconciliation_id: stored.reconciliation_id.clone(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.discrepancies.len(), 2);
    assert!(!all.next_page_token.is_empty());

    // An adjustment still waiting for approval moves nothing, so it resolves nothing.
    let (waiting, _) = post(
        &server,
        &ops,
        adjustment("fix-c3-big", &books.hotel, &books.ride, 500_000),
    )
    .await
    .unwrap();
    let not_posted = server
        .settlement()
        .resolve_discrepancy(authed(
            &ops,
            pb::ResolveDiscrepancyRequest {
                discrepancy_id: missing_theirs[0].discrepancy_id.clone(),
                adjustment_id: waiting.adjustment_id,
                reason: "too early".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&not_posted), ["adjustment_id"]);
    // Resolved by an adjustment, which the next settlement run takes.
    let (fix, _) = post(
        &server,
        &ops,
        adjustment("fix-c3", &books.hotel, &books.ride, 50),
    )
    .await
    .unwrap();
    let resolve = |adjustment_id: String| {
        let mut client = server.settlement();
        let request = pb::ResolveDiscrepancyRequest {
            discrepancy_id: missing_theirs[0].discrepancy_id.clone(),
            adjustment_id,
            reason: "the ride lost the record; corrected".to_owned(),
        };
        let token = ops.clone();
        async move { client.resolve_discrepancy(authed(&token, request)).await }
    };
    let resolved = resolve(fix.adjustment_id.clone())
        .await
        .unwrap()
        .into_inner()
        .discrepancy
        .unwrap();
    assert_eq!(resolved.status, pb::DiscrepancyStatus::Adjusted as i32);
    let again = resolve(String::new()).await.unwrap_err();
    assert_eq!(reason(&again), "DISCREPANCY_RESOLVED");
    let (run, _) = create_run(&server, &ops, "after-reconciliation", now())
        .await
        .unwrap();
    assert!(
        run.totals.iter().any(|total| total.kind == "ADJUSTMENT"),
        "{:?}",
        run.totals
    );
}

async fn a_malformed_report_names_the_line_and_stores_nothing(server: TestServer) {
    let ops = server.ops_token("alice").await;
    let header = pb::ReportHeader {
        partner_id: RIDE.to_owned(),
        start_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        end_time: Some(now()),
        ..Default::default()
    };
    let mut bad = record("r-2", "c2", 10);
    bad.kind = "GIFT".to_owned();
    let refused = submit(&server, &ops, header, vec![record("r-1", "c1", 10), bad])
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["records[line 2].kind"]);
    let trail = server
        .settlement()
        .list_audit_events(authed(&ops, pb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(trail.is_empty(), "{trail:?}");
}

async fn ops_reconcile_a_file_from_the_cli(server: TestServer) {
    let books = Books::open(&server).await;
    let from = tandem_domain::now().to_rfc3339();
    converted(&server, &books, "cli-c1", "cli-c1").await;
    converted(&server, &books, "cli-c2", "cli-c2").await;
    let to = tandem_domain::now().to_rfc3339();
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("ride.csv");
    let at = tandem_domain::now().to_rfc3339();
    std::fs::write(
        &file,
        format!(
            "partner_record_id,tandem_reference,kind,points,money_minor,time\n\
             r-1,cli-c1,CONVERSION,2500,2500,{at}\n\
             r-2,cli-c2,CONVERSION,2500,,{at}\n"
        ),
    )
    .unwrap();
    let path = file.display().to_string();
    let (code, csv, error) = cli(
        &server,
        "alice",
        &[
            "reconcile",
            "submit",
            "--partner",
            RIDE,
            "--file",
            &path,
            "--from",
            &from,
            "--to",
            &to,
            "--output",
            "csv",
        ],
    );
    assert_eq!(code, 0, "{error}");
    assert!(csv.contains("MATCHED,2"), "{csv}");
    assert!(csv.contains("MISSING_THEIRS,0"), "{csv}");

    std::fs::write(
        &file,
        format!(
            "partner_record_id,tandem_reference,kind,points,money_minor,time\n\
             r-1,cli-c1,CONVERSION,2500,2500,{at}\n\
             r-2,cli-c2,CONVERSION,many,,{at}\n"
        ),
    )
    .unwrap();
    let (code, _, error) = cli(
        &server,
        "alice",
        &[
            "reconcile",
            "submit",
            "--partner",
            RIDE,
            "--file",
            &path,
            "--from",
            &from,
            "--to",
            &to,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        error.contains("line 3") && error.contains("nothing was stored"),
        "{error}"
    );
}

/// `tandem` run against the server as the ops user `user`: (exit code, standard output,
/// standard error).
fn cli(server: &TestServer, user: &str, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(TANDEM)
        .args(storage_args(&server.database))
        .args(args)
        .args([
            "--server",
            &format!("http://{}", server.address),
            "--as",
            user,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn ops_run_the_four_eyes_flow_from_the_cli(server: TestServer) {
    let books = Books::open(&server).await;
    books.conversion(&server, "first", 2_500).await;
    let (code, table, _) = cli(&server, "alice", &["ledger", "positions"]);
    assert_eq!(code, 0);
    assert!(table.contains(HOTEL) && table.contains("-26.00"), "{table}");
    assert!(table.contains(RIDE) && table.contains("25.00"), "{table}");

    let debit = format!("{}:debit:150000", books.hotel);
    let credit = format!("{}:credit:150000", books.ride);
    let post_args = [
        "adjust",
        "post",
        "--key",
        "cli-1",
        "--leg",
        &debit,
        "--leg",
        &credit,
        "--reason",
        "settled by hand",
        "--output",
        "json",
    ];
    let (code, json, error) = cli(&server, "alice", &post_args);
    assert_eq!(code, 0, "{error}");
    let posted: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(posted[0]["status"], "AWAITING_APPROVAL");
    let id = posted[0]["adjustment_id"].as_str().unwrap().to_owned();

    let (code, _, error) = cli(&server, "alice", &["adjust", "approve", &id]);
    assert_eq!(code, 1);
    assert!(error.contains("SAME_OPS_USER"), "{error}");
    let (code, csv, error) = cli(
        &server,
        "bob",
        &["adjust", "approve", &id, "--output", "csv"],
    );
    assert_eq!(code, 0, "{error}");
    assert!(csv.starts_with("adjustment_id,status,"), "{csv}");
    assert!(
        csv.contains(&format!("{id},POSTED,150000,alice,bob")),
        "{csv}"
    );

    let (code, trail, _) = cli(&server, "bob", &["audit", "--output", "csv"]);
    assert_eq!(code, 0);
    let actions: Vec<&str> = trail
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(2).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "ADJUSTMENT_POSTED",
            "ADJUSTMENT_APPROVED",
            "ADJUSTMENT_REQUESTED"
        ]
    );
    let (code, _, error) = cli(&server, "bob", &["ledger", "trial-balance"]);
    assert_eq!(code, 0);
    assert!(error.contains("balanced"), "{error}");
    let (code, _, error) = cli(
        &server,
        "bob",
        &["ledger", "accounts", "--purpose", "sideways"],
    );
    assert_eq!(code, 1);
    assert!(error.contains("--purpose"), "{error}");
}

async fn ops_close_a_period_from_the_cli(server: TestServer) {
    let books = Books::open(&server).await;
    books.conversion(&server, "first", 2_500).await;
    let cutoff = tandem_domain::now().to_rfc3339();
    let (code, json, error) = cli(
        &server,
        "alice",
        &[
            "settlement",
            "run",
            "--currency",
            "USD",
            "--cutoff",
            &cutoff,
            "--key",
            "cli-run",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{error}");
    let created: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(created[0]["status"], "DRAFT");
    let run_id = created[0]["run_id"].as_str().unwrap().to_owned();
    let (code, _, error) = cli(&server, "alice", &["settlement", "approve", &run_id]);
    assert_eq!(code, 1);
    assert!(error.contains("SAME_OPS_USER"), "{error}");
    let (code, table, error) = cli(&server, "bob", &["settlement", "approve", &run_id]);
    assert_eq!(code, 0, "{error}");
    assert!(
        table.contains("APPROVED") && table.contains("-26.00"),
        "{table}"
    );
    let payments = [
        format!("{HOTEL}=wire-1"),
        format!("{RIDE}=wire-2"),
        "exchange=fees-3".to_owned(),
    ];
    let (code, table, error) = cli(
        &server,
        "bob",
        &[
            "settlement",
            "settle",
            &run_id,
            "--payment",
            &payments[0],
            "--payment",
            &payments[1],
            "--payment",
            &payments[2],
        ],
    );
    assert_eq!(code, 0, "{error}");
    assert!(
        table.contains("SETTLED") && table.contains("wire-2"),
        "{table}"
    );
    let (code, csv, error) = cli(
        &server,
        "bob",
        &["statement", "export", "--run", &run_id, "--party", RIDE],
    );
    assert_eq!(code, 0, "{error}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "transaction_id,kind,external_reference,debit_minor,credit_minor,commit_time"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].contains(",CONVERSION,,0,2500,"), "{csv}");
    assert!(error.contains("net 25.00 USD"), "{error}");
}

/// The lease after which another request or the recovery loop may finish an interrupted post.
const LEASE: [&str; 2] = ["--saga-lease", "1s"];

async fn adjustments(server: &TestServer, token: &str) -> Vec<pb::Adjustment> {
    server
        .settlement()
        .list_adjustments(authed(token, pb::ListAdjustmentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .adjustments
}

/// The server stands paused between an adjustment's ledger post and the record of it, and is
/// killed there: the caller was never told POSTED, and a new server's recovery finishes it from
/// the ledger's answer to the same key; asking again with the request's key answers the same
/// posted adjustment. It posts once.
async fn an_adjustment_killed_after_its_ledger_post_posts_once(database: TestDatabase) {
    let (server, pause) = TestServer::pausing_at(database, &LEASE, "adjustment-posted").await;
    let books = Books::open(&server).await;
    let alice = server.ops_token("alice").await;
    let request = adjustment("killed", &books.ride, &books.hotel, 700);
    let mut client = server.settlement();
    let token = alice.clone();
    let sent = request.clone();
    let posting = tokio::spawn(async move { client.post_adjustment(authed(&token, sent)).await });
    pause.reached().await;
    assert_eq!(
        adjustments(&server, &alice).await[0].status,
        pb::AdjustmentStatus::Posting as i32,
        "the post applied, its record not yet landed"
    );
    let database = kill_while_waiting(server, vec![posting]).await;

    let server = TestServer::start_on(database, &LEASE).await;
    let posted = eventually(SETTLED_DEADLINE, "the adjustment to be posted", || async {
        let listed = adjustments(&server, &alice).await;
        (listed[0].status == pb::AdjustmentStatus::Posted as i32).then(|| listed[0].clone())
    })
    .await;
    let (again, replayed) = post(&server, &alice, request).await.unwrap();
    assert!(replayed);
    assert_eq!(again.transaction_id, posted.transaction_id);
    assert_eq!(
        transactions_of(&server, &books, "conversion-42").await,
        1,
        "posted once"
    );
    assert_eq!(
        positions(&server, &alice, pb::ListPositionsRequest::default())
            .await
            .unwrap(),
        [
            (HOTEL.to_owned(), 700),
            (RIDE.to_owned(), -700),
            (AIRLINE.to_owned(), 0)
        ]
    );
}

/// How long a new server may take to finish what a killed one left.
const SETTLED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

async fn transactions_of(server: &TestServer, books: &Books, reference: &str) -> usize {
    server
        .ledger()
        .list_transactions(authed(
            &books.service_token,
            pb::ListTransactionsRequest {
                external_reference: reference.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .transactions
        .len()
}

/// The server stands paused between a run's settlement post and its SETTLED record, and is
/// killed there: the caller was never told SETTLED, and a new server's recovery finishes the
/// run by the same ledger keys. The positions move to the clearing account once.
async fn a_run_killed_after_its_settlement_post_settles_once(database: TestDatabase) {
    let (server, pause) = TestServer::pausing_at(database, &LEASE, "run-settlement-posted").await;
    let books = Books::open(&server).await;
    books.conversion(&server, "first", 2_500).await;
    let (alice, bob) = (
        server.ops_token("alice").await,
        server.ops_token("bob").await,
    );
    let (run, _) = create_run(&server, &alice, "killed", now()).await.unwrap();
    server
        .settlement()
        .approve_settlement_run(authed(
            &bob,
            pb::ApproveSettlementRunRequest {
                run_id: run.run_id.clone(),
            },
        ))
        .await
        .unwrap();
    let request = pb::SettleSettlementRunRequest {
        run_id: run.run_id.clone(),
        payment_references: [
            (HOTEL.to_owned(), "wire-1".to_owned()),
            (RIDE.to_owned(), "wire-2".to_owned()),
            ("exchange".to_owned(), "fees-3".to_owned()),
        ]
        .into(),
    };
    let mut client = server.settlement();
    let token = bob.clone();
    let settling =
        tokio::spawn(async move { client.settle_settlement_run(authed(&token, request)).await });
    pause.reached().await;
    assert_eq!(transactions_of(&server, &books, &run.run_id).await, 1);
    let database = kill_while_waiting(server, vec![settling]).await;

    let server = TestServer::start_on(database, &LEASE).await;
    let run_id = run.run_id.clone();
    let settled = eventually(SETTLED_DEADLINE, "the run to be settled", || async {
        let run = server
            .settlement()
            .get_settlement_run(authed(
                &bob,
                pb::GetSettlementRunRequest {
                    run_id: run_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        (run.status == pb::SettlementRunStatus::Settled as i32).then_some(run)
    })
    .await;
    assert_eq!(settled.settlement_transaction_ids.len(), 1);
    assert_eq!(
        transactions_of(&server, &books, &run.run_id).await,
        1,
        "posted once"
    );
    assert_eq!(
        positions(&server, &bob, pb::ListPositionsRequest::default())
            .await
            .unwrap(),
        [
            (HOTEL.to_owned(), 0),
            (RIDE.to_owned(), 0),
            (AIRLINE.to_owned(), 0)
        ]
    );
}

/// The server stands paused after a run sealed its cut-off in the ledger and before the run was
/// stored, and is killed there: the caller was never answered, nothing of the run was kept, and
/// the same request to a new server creates it once, holding the period's entries.
async fn a_run_killed_after_sealing_its_cutoff_is_created_once(database: TestDatabase) {
    let (server, pause) = TestServer::pausing_at(database, &LEASE, "run-sealed").await;
    let books = Books::open(&server).await;
    books.conversion(&server, "first", 2_500).await;
    let alice = server.ops_token("alice").await;
    let cutoff = now();
    let request = pb::CreateSettlementRunRequest {
        idempotency_key: "sealed".to_owned(),
        currency: "USD".to_owned(),
        cutoff_time: Some(cutoff),
    };
    let mut client = server.settlement();
    let token = alice.clone();
    let creating =
        tokio::spawn(async move { client.create_settlement_run(authed(&token, request)).await });
    pause.reached().await;
    let database = kill_while_waiting(server, vec![creating]).await;

    let server = TestServer::start_on(database, &LEASE).await;
    let listed = server
        .settlement()
        .list_settlement_runs(authed(&alice, pb::ListSettlementRunsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(listed.is_empty(), "nothing of the killed request was kept");
    let (run, replayed) = create_run(&server, &alice, "sealed", cutoff).await.unwrap();
    assert!(!replayed);
    assert!(run.entry_count > 0, "the conversion is in the run");
    assert_eq!(nets(&run).iter().map(|(_, net)| net).sum::<i64>(), 0);
    let (again, replayed) = create_run(&server, &alice, "sealed", cutoff).await.unwrap();
    assert!(replayed);
    assert_eq!(again.run_id, run.run_id, "created once");
    let (next, _) = create_run(&server, &alice, "after", now()).await.unwrap();
    assert_eq!(next.entry_count, 0, "every entry in exactly one run");
}

#[tokio::test]
async fn run_killed_after_sealing_on_sqlite() {
    a_run_killed_after_sealing_its_cutoff_is_created_once(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn run_killed_after_sealing_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    a_run_killed_after_sealing_its_cutoff_is_created_once(database).await;
}

#[tokio::test]
async fn adjustment_killed_after_its_post_on_sqlite() {
    an_adjustment_killed_after_its_ledger_post_posts_once(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn adjustment_killed_after_its_post_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    an_adjustment_killed_after_its_ledger_post_posts_once(database).await;
}

#[tokio::test]
async fn run_killed_after_its_settlement_post_on_sqlite() {
    a_run_killed_after_its_settlement_post_settles_once(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn run_killed_after_its_settlement_post_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    a_run_killed_after_its_settlement_post_settles_once(database).await;
}

on_every_backend!(
    positions_show_what_each_partner_is_owed_now_and_as_of_a_time,
    accounts_are_listed_by_filter_a_page_at_a_time,
    an_adjustment_above_the_threshold_needs_a_second_ops_user,
    small_adjustments_post_at_once_and_waiting_ones_can_be_rejected,
    a_bad_adjustment_is_refused_and_writes_nothing,
    ops_run_the_four_eyes_flow_from_the_cli,
    a_run_nets_three_partners_and_settles_with_four_eyes,
    a_bad_run_request_is_refused_and_stores_nothing,
    ops_close_a_period_from_the_cli,
    the_liability_report_shows_points_issued_and_redeemed_with_their_value,
    a_partner_report_is_reconciled_and_its_discrepancies_resolved,
    a_malformed_report_names_the_line_and_stores_nothing,
    ops_reconcile_a_file_from_the_cli
);
