//! The exchange end to end: `tandem serve` with two partner-sim processes (Skyline Hotels'
//! SKYLINE_PTS and Zoom Rides' ZOOM_MILES). A linked member converts hotel points into ride
//! miles and both wallets and the ledger agree; a rider earns hotel points on rides, with tier
//! and promotion multipliers, holds, and refunds; and the saga's failures: a refused credit, a
//! credit that timed out after applying, and the server killed mid-conversion.

mod helpers;

use std::time::Duration;

use helpers::{
    Backend, Simulator, TestServer, agree, authed, create_partner_request, eventually,
    kill_while_waiting, reason, refused, storage_args, terms,
};
use prost_types::Timestamp;
use tandem_auth::Role;
use tandem_proto::{sim::v1::Fault, v1 as pb};
use tandem_storage::testing::TestDatabase;
use tonic::Code;

const HOTEL_MEMBER: &str = "H-1001";
const RIDER: &str = "R-77";
/// Longest a saga may take to finish on a busy machine.
const SAGA_DEADLINE: Duration = Duration::from_secs(60);

struct Coalition {
    server: TestServer,
    hotel_sim: Simulator,
    ride_sim: Simulator,
    hotel: String,
    hotel_token: String,
    ride: String,
    ride_token: String,
    link_id: String,
    ops_token: String,
    /// When the rides of a test happened: one fixed time, so a report sent twice is the same.
    ride_time: Timestamp,
}

fn at(offset_seconds: i64) -> Timestamp {
    tandem_proto::time::timestamp(chrono::Utc::now() + chrono::Duration::seconds(offset_seconds))
}

async fn register(
    server: &TestServer,
    admin: &str,
    code: &str,
    category: pb::PartnerCategory,
    program: &str,
    sim: &Simulator,
) -> (String, String) {
    let mut request = create_partner_request(code, category, program);
    request.gateway_endpoint = format!("http://{}", sim.address);
    let created = server
        .registry()
        .create_partner(authed(admin, request))
        .await
        .expect("create a partner")
        .into_inner();
    let token = server
        .partner_token(created.credentials.as_ref().unwrap())
        .await;
    (created.partner.unwrap().partner_id, token)
}

/// Two rides per dollar, GOLD members earn 1.5×, and a double-points window around now.
fn earn_terms(hold_days: u32) -> pb::AgreementTerms {
    let mut terms = terms("4");
    terms.settlement_price = "0.01".to_owned();
    terms.earn_rules = Some(pb::EarnRules {
        points_per_spend_unit: "2".to_owned(),
        spend_currency: "USD".to_owned(),
        tier_multipliers: vec![pb::TierMultiplier {
            tier: "GOLD".to_owned(),
            multiplier: "1.5".to_owned(),
        }],
        promotions: vec![pb::PromotionWindow {
            name: "double points".to_owned(),
            start_time: Some(at(-60)),
            end_time: Some(at(3600)),
            multiplier: "2".to_owned(),
        }],
        excluded_spend_categories: vec!["TIPS".to_owned()],
        annual_spend_cap_minor: Some(100_000),
        hold_days,
    });
    terms
}

/// The ledger transactions that carry `reference`, as ops read them.
async fn transactions_of(
    server: &TestServer,
    ops_token: &str,
    reference: &str,
) -> Vec<pb::Transaction> {
    server
        .ledger()
        .list_transactions(authed(
            ops_token,
            pb::ListTransactionsRequest {
                external_reference: reference.to_owned(),
            },
        ))
        .await
        .expect("list ledger transactions")
        .into_inner()
        .transactions
}

impl Coalition {
    /// Skyline Hotels and Zoom Rides with their gateways, agreements both ways (hotel points
    /// convert into miles; rides earn hotel points with `hold_days`), and H-1001 linked to R-77.
    async fn new(server: TestServer, hold_days: u32) -> Self {
        let admin = server.staff_token(Role::Admin).await;
        let ops_token = server.staff_token(Role::Ops).await;
        let hotel_sim = Simulator::start_for(&server, "SKYLINE_PTS").await;
        let ride_sim = Simulator::start_for(&server, "ZOOM_MILES").await;
        let (hotel, hotel_token) = register(
            &server,
            &admin,
            "skyline-hotels",
            pb::PartnerCategory::Hotel,
            "SKYLINE_PTS",
            &hotel_sim,
        )
        .await;
        let (ride, ride_token) = register(
            &server,
            &admin,
            "zoom-rides",
            pb::PartnerCategory::Rideshare,
            "ZOOM_MILES",
            &ride_sim,
        )
        .await;
        agree(
            &server,
            (&hotel, &hotel_token),
            (&ride, &ride_token),
            terms("0.25"),
        )
        .await;
        agree(
            &server,
            (&ride, &ride_token),
            (&hotel, &hotel_token),
            earn_terms(hold_days),
        )
        .await;
        hotel_sim.put_member(HOTEL_MEMBER, 50_000, true).await;
        ride_sim.put_member(RIDER, 0, true).await;
        let started = server
            .linking()
            .start_link(authed(
                &hotel_token,
                pb::StartLinkRequest {
                    partner_id: hotel.clone(),
                    member_id: HOTEL_MEMBER.to_owned(),
                    target_partner_id: ride.clone(),
                },
            ))
            .await
            .expect("start a link")
            .into_inner();
        let link_id = server
            .linking()
            .complete_link(authed(
                &ride_token,
                pb::CompleteLinkRequest {
                    partner_id: ride.clone(),
                    member_id: RIDER.to_owned(),
                    code: started.code,
                },
            ))
            .await
            .expect("complete the link")
            .into_inner()
            .link
            .unwrap()
            .link_id;
        Self {
            server,
            hotel_sim,
            ride_sim,
            hotel,
            hotel_token,
            ride,
            ride_token,
            link_id,
            ops_token,
            ride_time: at(0),
        }
    }

    async fn quote(&self, source_points: i64) -> Result<pb::Quote, tonic::Status> {
        self.server
            .exchange()
            .get_quote(authed(
                &self.hotel_token,
                pb::GetQuoteRequest {
                    partner_id: self.hotel.clone(),
                    link_id: self.link_id.clone(),
                    amount: Some(pb::get_quote_request::Amount::SourcePoints(source_points)),
                },
            ))
            .await
            .map(|response| response.into_inner().quote.unwrap())
    }

    /// A conversion as the holder of `token` reads it.
    async fn conversion_as(&self, token: &str, conversion_id: &str) -> pb::Conversion {
        self.server
            .exchange()
            .get_conversion(authed(
                token,
                pb::GetConversionRequest {
                    conversion_id: conversion_id.to_owned(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .conversion
            .unwrap()
    }

    async fn execute(
        &self,
        quote_id: &str,
        key: &str,
    ) -> Result<pb::ExecuteConversionResponse, tonic::Status> {
        self.server
            .exchange()
            .execute_conversion(authed(
                &self.hotel_token,
                pb::ExecuteConversionRequest {
                    partner_id: self.hotel.clone(),
                    quote_id: quote_id.to_owned(),
                    idempotency_key: key.to_owned(),
                },
            ))
            .await
            .map(|response| response.into_inner())
    }

    async fn conversion(&self, id: &str) -> pb::Conversion {
        self.server
            .exchange()
            .get_conversion(authed(
                &self.ops_token,
                pb::GetConversionRequest {
                    conversion_id: id.to_owned(),
                },
            ))
            .await
            .expect("get a conversion")
            .into_inner()
            .conversion
            .unwrap()
    }

    /// The ledger transactions that carry `reference`.
    async fn ledger_transactions(&self, reference: &str) -> Vec<pb::Transaction> {
        transactions_of(&self.server, &self.ops_token, reference).await
    }

    async fn trial_balance_is_zero(&self) {
        let trial = self
            .server
            .ledger()
            .get_trial_balance(authed(
                &self.ops_token,
                pb::GetTrialBalanceRequest::default(),
            ))
            .await
            .expect("trial balance")
            .into_inner();
        assert!(trial.balanced, "every unit must sum to zero: {trial:?}");
    }

    async fn ride(
        &self,
        external_id: &str,
        spend_minor: i64,
        tier: &str,
        category: &str,
    ) -> Result<pb::Activity, tonic::Status> {
        self.server
            .exchange()
            .record_activity(authed(
                &self.ride_token,
                pb::RecordActivityRequest {
                    partner_id: self.ride.clone(),
                    external_id: external_id.to_owned(),
                    member_id: RIDER.to_owned(),
                    spend_amount_minor: spend_minor,
                    spend_currency: "USD".to_owned(),
                    category: category.to_owned(),
                    member_tier: tier.to_owned(),
                    activity_time: Some(self.ride_time),
                },
            ))
            .await
            .map(|response| response.into_inner().activity.unwrap())
    }

    async fn refund(&self, external_id: &str) -> pb::Activity {
        self.server
            .exchange()
            .reverse_activity(authed(
                &self.ride_token,
                pb::ReverseActivityRequest {
                    partner_id: self.ride.clone(),
                    external_id: external_id.to_owned(),
                    reason: "ride refunded".to_owned(),
                },
            ))
            .await
            .expect("reverse an activity")
            .into_inner()
            .activity
            .unwrap()
    }

    async fn activity(&self, id: &str) -> pb::Activity {
        self.server
            .exchange()
            .get_activity(authed(
                &self.ride_token,
                pb::GetActivityRequest {
                    activity_id: id.to_owned(),
                },
            ))
            .await
            .expect("get an activity")
            .into_inner()
            .activity
            .unwrap()
    }
}

async fn a_member_converts_and_wallets_and_ledger_agree(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let quote = coalition.quote(10_000).await.expect("a quote");
    // 10,000 × 0.25 = 2,500 miles; 2,500 × $0.0085 = $21.25; a 1.5% fee of 31.875¢ is 32¢.
    assert_eq!(quote.target_points, 2_500);
    assert_eq!(quote.settlement_amount_minor, 2_125);
    assert_eq!(quote.fee_amount_minor, 32);
    assert_eq!(quote.source_member_id, HOTEL_MEMBER);
    assert_eq!(
        quote.target_member_id, "",
        "the hotel never sees the rider's member id"
    );

    let executed = coalition
        .execute(&quote.quote_id, "convert-1")
        .await
        .expect("execute");
    let conversion = executed.conversion.unwrap();
    assert!(!executed.replayed);
    assert_eq!(
        conversion.status,
        pb::ConversionStatus::Completed as i32,
        "{conversion:?}"
    );
    // Read straight back, it is as it was answered.
    let read_back = coalition
        .conversion_as(&coalition.hotel_token, &conversion.conversion_id)
        .await;
    assert_eq!(read_back.status, pb::ConversionStatus::Completed as i32);
    assert_eq!(
        read_back.ledger_transaction_id,
        conversion.ledger_transaction_id
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 40_000);
    assert_eq!(coalition.ride_sim.balance(RIDER).await, 2_500);
    let posted = coalition
        .ledger_transactions(&conversion.conversion_id)
        .await;
    assert_eq!(posted.len(), 1, "one ledger transaction per conversion");
    assert_eq!(posted[0].transaction_id, conversion.ledger_transaction_id);
    assert_eq!(
        posted[0].legs.len(),
        7,
        "two points legs each side and three money legs"
    );
    coalition.trial_balance_is_zero().await;

    // A retry with the same key is the same conversion; nothing moves again.
    let replay = coalition
        .execute(&quote.quote_id, "convert-1")
        .await
        .expect("replay");
    assert!(replay.replayed);
    assert_eq!(
        replay.conversion.unwrap().conversion_id,
        conversion.conversion_id
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 40_000);
    // The same key for another quote, and the same quote under another key, are refused.
    let other = coalition.quote(1_000).await.unwrap();
    let reused = coalition
        .execute(&other.quote_id, "convert-1")
        .await
        .unwrap_err();
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
    );
    let twice = coalition
        .execute(&quote.quote_id, "convert-2")
        .await
        .unwrap_err();
    assert_eq!(
        (twice.code(), reason(&twice).as_str()),
        (Code::AlreadyExists, "QUOTE_ALREADY_EXECUTED")
    );

    // The rideshare sees the conversion with its own member, not the hotel's.
    let seen_by_ride = coalition
        .conversion_as(&coalition.ride_token, &conversion.conversion_id)
        .await;
    let seen_quote = seen_by_ride.quote.unwrap();
    assert_eq!(
        (
            seen_quote.source_member_id.as_str(),
            seen_quote.target_member_id.as_str()
        ),
        ("", RIDER)
    );
    let listed = coalition
        .server
        .exchange()
        .list_conversions(authed(
            &coalition.hotel_token,
            pb::ListConversionsRequest {
                partner_id: coalition.hotel.clone(),
                member_id: HOTEL_MEMBER.to_owned(),
                status: pb::ConversionStatus::Completed.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.conversions.len(), 1);

    // Reversal inside the window: the miles go back, the points come home, the ledger mirrors.
    let reversed = coalition
        .server
        .exchange()
        .reverse_conversion(authed(
            &coalition.hotel_token,
            pb::ReverseConversionRequest {
                conversion_id: conversion.conversion_id.clone(),
                reason: "member changed their mind".to_owned(),
            },
        ))
        .await
        .expect("reverse")
        .into_inner()
        .conversion
        .unwrap();
    assert_eq!(
        reversed.status,
        pb::ConversionStatus::Reversed as i32,
        "{reversed:?}"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_000);
    assert_eq!(coalition.ride_sim.balance(RIDER).await, 0);
    let kinds: Vec<i32> = coalition
        .ledger_transactions(&conversion.conversion_id)
        .await
        .iter()
        .map(|transaction| transaction.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            pb::TransactionKind::Posted as i32,
            pb::TransactionKind::Reversal as i32
        ]
    );
    assert!(!reversed.reversal_transaction_id.is_empty());
    coalition.trial_balance_is_zero().await;
}

async fn caps_expired_quotes_and_bad_amounts_are_refused(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let below = coalition.quote(900).await.unwrap_err();
    assert_eq!(helpers::violated_fields(&below), ["source_points"]);
    // The member may convert 50,000 a day.
    coalition
        .hotel_sim
        .put_member(HOTEL_MEMBER, 100_000, true)
        .await;
    let all = coalition.quote(50_000).await.unwrap();
    let done = coalition
        .execute(&all.quote_id, "cap-1")
        .await
        .unwrap()
        .conversion
        .unwrap();
    assert_eq!(done.status, pb::ConversionStatus::Completed as i32);
    let over = coalition.quote(1_000).await.unwrap_err();
    assert_eq!(
        (over.code(), reason(&over).as_str()),
        (Code::ResourceExhausted, "MEMBER_DAILY_CAP_REACHED")
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_000);
}

/// Converts 10,000 hotel points with `fault` armed once on the rideshare's CreditPoints.
async fn convert_with_credit_fault(
    server: TestServer,
    fault: Fault,
) -> (Coalition, pb::Conversion) {
    let coalition = Coalition::new(server, 0).await;
    coalition
        .ride_sim
        .set_fault("CreditPoints", fault, 1, 0)
        .await;
    let quote = coalition.quote(10_000).await.unwrap();
    let conversion = coalition
        .execute(&quote.quote_id, "with-a-fault")
        .await
        .unwrap()
        .conversion
        .unwrap();
    (coalition, conversion)
}

async fn a_refused_credit_is_compensated(server: TestServer) {
    let (coalition, conversion) = convert_with_credit_fault(server, Fault::Refuse).await;
    assert_eq!(
        conversion.status,
        pb::ConversionStatus::Failed as i32,
        "{conversion:?}"
    );
    assert!(
        conversion.failure_reason.contains("refused the credit"),
        "{}",
        conversion.failure_reason
    );
    assert_eq!(
        coalition.hotel_sim.balance(HOTEL_MEMBER).await,
        50_000,
        "the debit was given back"
    );
    assert_eq!(coalition.ride_sim.balance(RIDER).await, 0);
    let seen_by_ops = coalition.conversion(&conversion.conversion_id).await;
    assert_eq!(
        (seen_by_ops.status, seen_by_ops.step),
        (
            pb::ConversionStatus::Failed as i32,
            pb::ConversionStep::Done as i32
        )
    );
    assert!(
        coalition
            .ledger_transactions(&conversion.conversion_id)
            .await
            .is_empty()
    );
}

async fn a_credit_that_timed_out_after_applying_credits_once(server: TestServer) {
    let (coalition, conversion) = convert_with_credit_fault(server, Fault::FailAfterApplying).await;
    assert_eq!(
        conversion.status,
        pb::ConversionStatus::Completed as i32,
        "{conversion:?}"
    );
    assert_eq!(
        coalition.ride_sim.balance(RIDER).await,
        2_500,
        "exactly one credit"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 40_000);
    assert_eq!(
        coalition
            .ledger_transactions(&conversion.conversion_id)
            .await
            .len(),
        1
    );
}

async fn rides_earn_hotel_points_with_tier_and_promotion(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    // $23.45 × 2 points per dollar × 1.5 (GOLD) × 2 (double points) = 140.7 → 140 points.
    let activity = coalition
        .ride("ride-1", 2_345, "GOLD", "RIDE")
        .await
        .expect("record a ride");
    assert_eq!(activity.earnings.len(), 1);
    let earning = &activity.earnings[0];
    assert_eq!(earning.points, 140);
    assert_eq!(
        earning.status,
        pb::EarningStatus::Posted as i32,
        "{earning:?}"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_140);
    let posted = coalition.ledger_transactions(&activity.activity_id).await;
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].type_code, "EARN");
    // A replay is the same activity; different content under the same id is refused.
    let again = coalition
        .ride("ride-1", 2_345, "GOLD", "RIDE")
        .await
        .unwrap();
    assert_eq!(again.activity_id, activity.activity_id);
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_140);
    let changed = coalition
        .ride("ride-1", 9_999, "GOLD", "RIDE")
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::AlreadyExists);
    // Tips earn nothing; a refund after posting takes the points back.
    let tip = coalition.ride("tip-1", 500, "", "TIPS").await.unwrap();
    assert_eq!(tip.earnings[0].status, pb::EarningStatus::NotEarned as i32);
    let refunded = coalition.refund("ride-1").await;
    assert_eq!(refunded.status, pb::ActivityStatus::Reversed as i32);
    assert_eq!(
        refunded.earnings[0].status,
        pb::EarningStatus::Reversed as i32,
        "{refunded:?}"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_000);
    coalition.trial_balance_is_zero().await;
    // The annual cap ($1,000 of spend): a $1,500 ride earns on $1,000 only.
    let big = coalition.ride("ride-2", 150_000, "", "RIDE").await.unwrap();
    assert_eq!(big.earnings[0].eligible_spend_minor, 100_000);
    assert_eq!(big.earnings[0].points, 4_000);
    let capped = coalition.ride("ride-3", 1_000, "", "RIDE").await.unwrap();
    assert_eq!(
        capped.earnings[0].status,
        pb::EarningStatus::NotEarned as i32
    );
}

/// Moves an activity's hold end to now, as if the hold period had passed.
async fn end_hold(server: &TestServer, activity_id: &str) {
    let database = tandem_storage::Database::open(
        server.database.location(),
        "exchange",
        &tandem_exchange::MIGRATOR,
    )
    .await
    .expect("open the exchange database");
    let now = tandem_domain::to_unix_micros(tandem_domain::now());
    sqlx::query("UPDATE earnings SET hold_until_micros = $1, next_attempt_micros = $1 WHERE activity_id = $2")
        .bind(now)
        .bind(activity_id)
        .execute(database.pool())
        .await
        .expect("end the hold");
    sqlx::query(
        "UPDATE earnings_due SET next_attempt_micros = $1 \
         WHERE earning_id IN (SELECT earning_id FROM earnings WHERE activity_id = $2)",
    )
    .bind(now)
    .bind(activity_id)
    .execute(database.pool())
    .await
    .expect("make the held earnings due");
    database.close().await;
}

async fn held_points_post_after_the_hold_and_refunds_inside_it_void(server: TestServer) {
    let coalition = Coalition::new(server, 7).await;
    let held = coalition
        .ride("ride-held", 1_000, "", "RIDE")
        .await
        .unwrap();
    let earning = &held.earnings[0];
    assert_eq!(
        earning.status,
        pb::EarningStatus::Held as i32,
        "{earning:?}"
    );
    assert_eq!(
        coalition.hotel_sim.balance(HOTEL_MEMBER).await,
        50_000,
        "nothing reaches the member yet"
    );
    let pending = coalition.ledger_transactions(&held.activity_id).await;
    assert_eq!(pending[0].kind, pb::TransactionKind::Pending as i32);

    // Refunded inside the hold: voided, and the member never saw the points.
    let voided = coalition
        .ride("ride-voided", 1_000, "", "RIDE")
        .await
        .unwrap();
    let refunded = coalition.refund("ride-voided").await;
    assert_eq!(
        refunded.earnings[0].status,
        pb::EarningStatus::Voided as i32,
        "{refunded:?}"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_000);
    let _ = voided;

    // When the hold ends, the worker credits the member and posts the ledger transaction.
    end_hold(&coalition.server, &held.activity_id).await;
    let points = earning.points;
    eventually(SAGA_DEADLINE, "the held earning to post", || async {
        let activity = coalition.activity(&held.activity_id).await;
        (activity.earnings[0].status == pb::EarningStatus::Posted as i32).then_some(())
    })
    .await;
    assert_eq!(
        coalition.hotel_sim.balance(HOTEL_MEMBER).await,
        50_000 + points
    );
    coalition.trial_balance_is_zero().await;
}

async fn expired_quotes_cannot_be_executed(database: TestDatabase) {
    let server = TestServer::start_on(database, &["--quote-ttl", "1s"]).await;
    let coalition = Coalition::new(server, 0).await;
    let quote = coalition.quote(1_000).await.unwrap();
    let expires = tandem_proto::time::datetime(quote.expire_time.as_ref().unwrap()).unwrap();
    eventually(Duration::from_secs(10), "the quote to expire", || async {
        (chrono::Utc::now() > expires).then_some(())
    })
    .await;
    let expired = coalition
        .execute(&quote.quote_id, "late")
        .await
        .unwrap_err();
    assert_eq!(
        (expired.code(), reason(&expired).as_str()),
        (Code::FailedPrecondition, "QUOTE_EXPIRED")
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_000);
}

/// Tandem as two processes on the same databases: a quote priced by one executes on the other at
/// once, while the quote may still be on its way to the database.
async fn a_quote_priced_by_one_process_executes_on_another(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let other = coalition.server.another_process().await;
    for index in 0..3 {
        let quote = coalition.quote(1_000).await.expect("a quote");
        let executed = other
            .exchange()
            .execute_conversion(authed(
                &coalition.hotel_token,
                pb::ExecuteConversionRequest {
                    partner_id: coalition.hotel.clone(),
                    quote_id: quote.quote_id,
                    idempotency_key: format!("elsewhere-{index}"),
                },
            ))
            .await
            .expect("executed by the other process")
            .into_inner()
            .conversion
            .unwrap();
        assert_eq!(executed.status, pb::ConversionStatus::Completed as i32);
    }
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 47_000);
    assert_eq!(coalition.ride_sim.balance(RIDER).await, 750);
    coalition.trial_balance_is_zero().await;
}

/// The server is killed while four conversions wait on the target gateway, each already debited
/// at the source; a new server on the same databases finishes every one of them, once.
async fn conversions_interrupted_by_a_crash_finish_once(database: TestDatabase) {
    const IN_FLIGHT: usize = 4;
    let flags = ["--saga-lease", "1s"];
    let server = TestServer::start_on(database, &flags).await;
    let coalition = Coalition::new(server, 0).await;
    // Every credit waits 4 s (inside the exchange's 5 s gateway timeout) until cleared.
    coalition
        .ride_sim
        .set_fault("CreditPoints", Fault::Delay, 0, 4_000)
        .await;
    let mut executing = Vec::new();
    for index in 0..IN_FLIGHT {
        let quote = coalition.quote(10_000).await.unwrap();
        let mut exchange = coalition.server.exchange();
        let request = authed(
            &coalition.hotel_token,
            pb::ExecuteConversionRequest {
                partner_id: coalition.hotel.clone(),
                quote_id: quote.quote_id.clone(),
                idempotency_key: format!("crash-{index}"),
            },
        );
        executing.push(tokio::spawn(async move {
            exchange.execute_conversion(request).await
        }));
    }
    eventually(SAGA_DEADLINE, "every source debit", || async {
        (coalition.hotel_sim.balance(HOTEL_MEMBER).await == 10_000).then_some(())
    })
    .await;
    let Coalition {
        server,
        hotel_sim,
        ride_sim,
        ops_token,
        ..
    } = coalition;
    let database = kill_while_waiting(server, executing).await;
    ride_sim
        .set_fault("CreditPoints", Fault::Unspecified, 0, 0)
        .await;

    let server = TestServer::start_on(database, &flags).await;
    let conversions = eventually(SAGA_DEADLINE, "every conversion to finish", || async {
        let listed = server
            .exchange()
            .list_conversions(authed(&ops_token, pb::ListConversionsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .conversions;
        listed
            .iter()
            .all(|conversion| conversion.status == pb::ConversionStatus::Completed as i32)
            .then_some(listed)
    })
    .await;
    assert_eq!(conversions.len(), IN_FLIGHT);
    assert_eq!(
        hotel_sim.balance(HOTEL_MEMBER).await,
        10_000,
        "each debited once"
    );
    assert_eq!(
        ride_sim.balance(RIDER).await,
        2_500 * IN_FLIGHT as i64,
        "each credited once"
    );
    for conversion in &conversions {
        let posted = transactions_of(&server, &ops_token, &conversion.conversion_id).await;
        assert_eq!(posted.len(), 1, "each posted once");
    }
    let trial = server
        .ledger()
        .get_trial_balance(authed(&ops_token, pb::GetTrialBalanceRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(trial.balanced, "{trial:?}");
}

/// Flags of the servers the pause tests start: a lapsed lease is taken over within a second.
const PAUSE_FLAGS: [&str; 2] = ["--saga-lease", "1s"];

/// A server that stops for good at `moment` of a conversion (a step applied, its outcome not
/// yet recorded), with one conversion of 10,000 hotel points executing into it and paused there.
async fn conversion_paused_at(
    database: TestDatabase,
    moment: &str,
) -> (
    Coalition,
    tokio::task::JoinHandle<Result<tonic::Response<pb::ExecuteConversionResponse>, tonic::Status>>,
    tempfile::TempDir,
) {
    let (server, pause) = TestServer::pausing_at(database, &PAUSE_FLAGS, moment).await;
    let coalition = Coalition::new(server, 0).await;
    let quote = coalition.quote(10_000).await.unwrap();
    let mut exchange = coalition.server.exchange();
    let request = authed(
        &coalition.hotel_token,
        pb::ExecuteConversionRequest {
            partner_id: coalition.hotel.clone(),
            quote_id: quote.quote_id.clone(),
            idempotency_key: "paused".to_owned(),
        },
    );
    let executing = tokio::spawn(async move { exchange.execute_conversion(request).await });
    pause.reached().await;
    (coalition, executing, pause.folder)
}

/// The server stands paused between a conversion's ledger post and the record of its COMPLETED
/// status, and is killed there; meanwhile the source gateway has gone down for good. The caller
/// was never told COMPLETED (nothing is answered before it is recorded), and a new server
/// finishes the conversion forward from its recorded step, without asking the source gateway
/// anything: the debit, the credit and the ledger transaction each exist once.
async fn a_conversion_killed_after_its_ledger_post_only_goes_forward(database: TestDatabase) {
    let flags = PAUSE_FLAGS;
    let (coalition, executing, _scratch) =
        conversion_paused_at(database, "conversion-posted").await;
    let Coalition {
        server,
        hotel_sim,
        ride_sim,
        ops_token,
        ..
    } = coalition;
    // The source gateway answers nothing from now on.
    hotel_sim.set_fault("DebitPoints", Fault::Fail, 0, 0).await;
    hotel_sim
        .set_fault("ReversePoints", Fault::Fail, 0, 0)
        .await;
    let database = kill_while_waiting(server, vec![executing]).await;

    let server = TestServer::start_on(database, &flags).await;
    let conversion = eventually(SAGA_DEADLINE, "the conversion to complete", || async {
        let listed = server
            .exchange()
            .list_conversions(authed(&ops_token, pb::ListConversionsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .conversions;
        assert_eq!(listed.len(), 1);
        let conversion = listed.into_iter().next().unwrap();
        assert_ne!(
            conversion.status,
            pb::ConversionStatus::Failed as i32,
            "a conversion the ledger holds is never compensated: {conversion:?}"
        );
        (conversion.status == pb::ConversionStatus::Completed as i32).then_some(conversion)
    })
    .await;
    assert_eq!(
        hotel_sim.balance(HOTEL_MEMBER).await,
        40_000,
        "debited once"
    );
    assert_eq!(ride_sim.balance(RIDER).await, 2_500, "credited once");
    let posted = transactions_of(&server, &ops_token, &conversion.conversion_id).await;
    assert_eq!(posted.len(), 1, "posted once");
    assert_eq!(conversion.ledger_transaction_id, posted[0].transaction_id);
}

/// The server is killed after the source debit applied and before its outcome was recorded;
/// the source gateway then forgets it applied the debit and refuses the key. The resumed saga
/// does not take the refusal as "nothing moved": it reverses the debit by key, and the
/// conversion ends FAILED with both wallets as before and nothing in the ledger.
async fn a_conversion_killed_after_its_debit_meets_a_forgetful_gateway(database: TestDatabase) {
    let (coalition, executing, _scratch) =
        conversion_paused_at(database, "conversion-debited").await;
    let Coalition {
        server,
        hotel_sim,
        ride_sim,
        ops_token,
        ..
    } = coalition;
    assert_eq!(
        hotel_sim.balance(HOTEL_MEMBER).await,
        40_000,
        "the debit applied before the kill"
    );
    hotel_sim
        .set_fault("DebitPoints", Fault::Forgetful, 0, 0)
        .await;
    let database = kill_while_waiting(server, vec![executing]).await;

    let server = TestServer::start_on(database, &PAUSE_FLAGS).await;
    let conversion = eventually(SAGA_DEADLINE, "the conversion to end", || async {
        let listed = server
            .exchange()
            .list_conversions(authed(&ops_token, pb::ListConversionsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .conversions;
        let conversion = listed.into_iter().next().expect("the conversion");
        (conversion.status != pb::ConversionStatus::Pending as i32).then_some(conversion)
    })
    .await;
    assert_eq!(
        conversion.status,
        pb::ConversionStatus::Failed as i32,
        "{conversion:?}"
    );
    assert_eq!(
        hotel_sim.balance(HOTEL_MEMBER).await,
        50_000,
        "the debit given back"
    );
    assert_eq!(ride_sim.balance(RIDER).await, 0, "never credited");
    assert!(
        transactions_of(&server, &ops_token, &conversion.conversion_id)
            .await
            .is_empty()
    );
}

/// Converts 10,000 hotel points while the gateway `forgetful` picks applies the first call of
/// `rpc`, gives no answer, then refuses the same key: a gateway that forgot what it applied. The
/// refusal proves nothing, so what may have moved is reversed by key: the conversion ends
/// FAILED, saying `why`, with both wallets as before and nothing in the ledger.
async fn a_forgotten_movement_is_undone(
    server: TestServer,
    forgetful: fn(&Coalition) -> &Simulator,
    rpc: &str,
    why: &str,
) {
    let coalition = Coalition::new(server, 0).await;
    forgetful(&coalition).forget_after_applying(rpc).await;
    let quote = coalition.quote(10_000).await.unwrap();
    let conversion = coalition
        .execute(&quote.quote_id, "forgotten")
        .await
        .unwrap()
        .conversion
        .unwrap();
    assert_eq!(
        conversion.status,
        pb::ConversionStatus::Failed as i32,
        "{conversion:?}"
    );
    assert!(
        conversion.failure_reason.contains(why),
        "{}",
        conversion.failure_reason
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_000);
    assert_eq!(coalition.ride_sim.balance(RIDER).await, 0);
    assert!(
        coalition
            .ledger_transactions(&conversion.conversion_id)
            .await
            .is_empty()
    );
}

/// The target's credit: reversed by key before the debit is given back.
async fn a_credit_refused_after_an_unknown_outcome_is_reversed(server: TestServer) {
    a_forgotten_movement_is_undone(
        server,
        |coalition| &coalition.ride_sim,
        "CreditPoints",
        "refused the credit",
    )
    .await;
}

/// The source's debit: the member's points are given back all the same.
async fn a_debit_refused_after_an_unknown_outcome_is_given_back(server: TestServer) {
    a_forgotten_movement_is_undone(
        server,
        |coalition| &coalition.hotel_sim,
        "DebitPoints",
        "refused the debit",
    )
    .await;
}

/// A reversal whose target debit applied, went unanswered and was then refused is undone by key:
/// the conversion stands COMPLETED, with the member's miles where they were.
async fn a_reversal_refused_after_an_unknown_outcome_is_undone(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let quote = coalition.quote(10_000).await.unwrap();
    let conversion = coalition
        .execute(&quote.quote_id, "to-reverse")
        .await
        .unwrap()
        .conversion
        .unwrap();
    assert_eq!(conversion.status, pb::ConversionStatus::Completed as i32);
    coalition
        .ride_sim
        .forget_after_applying("DebitPoints")
        .await;
    let refused = coalition
        .server
        .exchange()
        .reverse_conversion(authed(
            &coalition.hotel_token,
            pb::ReverseConversionRequest {
                conversion_id: conversion.conversion_id.clone(),
                reason: "member changed their mind".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "REVERSAL_REFUSED"),
        "{refused:?}"
    );
    let after = coalition.conversion(&conversion.conversion_id).await;
    assert_eq!(
        (after.status, after.step),
        (
            pb::ConversionStatus::Completed as i32,
            pb::ConversionStep::Done as i32
        )
    );
    assert_eq!(
        coalition.ride_sim.balance(RIDER).await,
        2_500,
        "the miles stay"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 40_000);
    let posted = coalition
        .ledger_transactions(&conversion.conversion_id)
        .await;
    assert_eq!(posted.len(), 1, "the conversion's transaction, unreversed");
    coalition.trial_balance_is_zero().await;
}

/// The hotel's gateway applies a ride's credit, gives no answer, then refuses the same key: the
/// credit is reversed by key and the posted ledger transaction reversed, so the earning ends
/// FAILED with the member's points and the ledger agreeing.
async fn an_earning_credit_refused_after_an_unknown_outcome_is_undone(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    coalition
        .hotel_sim
        .forget_after_applying("CreditPoints")
        .await;
    let activity = coalition
        .ride("forgotten-ride", 2_345, "GOLD", "RIDE")
        .await
        .expect("record a ride");
    let earning = &activity.earnings[0];
    assert_eq!(
        earning.status,
        pb::EarningStatus::Failed as i32,
        "{earning:?}"
    );
    assert!(
        earning.note.contains("refused the credit"),
        "{}",
        earning.note
    );
    assert_eq!(
        coalition.hotel_sim.balance(HOTEL_MEMBER).await,
        50_000,
        "the credit was reversed"
    );
    let kinds: Vec<i32> = coalition
        .ledger_transactions(&activity.activity_id)
        .await
        .iter()
        .map(|transaction| transaction.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            pb::TransactionKind::Posted as i32,
            pb::TransactionKind::Reversal as i32
        ],
        "what the ledger posted is reversed"
    );
    coalition.trial_balance_is_zero().await;
}

/// A ride report as the rideshare sends it, for `member_id`.
fn ride_report(
    coalition: &Coalition,
    external_id: &str,
    member_id: &str,
) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        partner_id: coalition.ride.clone(),
        external_id: external_id.to_owned(),
        member_id: member_id.to_owned(),
        spend_amount_minor: 1_000,
        spend_currency: "USD".to_owned(),
        category: "RIDE".to_owned(),
        member_tier: String::new(),
        activity_time: Some(coalition.ride_time),
    }
}

/// A malformed member id (a space, a new line, a NUL byte) is the reporter's own INVALID_ARGUMENT,
/// never UNAVAILABLE (which the SDK would retry for ever); in a stream it is refused alone and
/// the good reports around it are recorded.
async fn a_malformed_member_id_is_refused_alone(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    for (index, member) in ["R 77", "R-77\n", "R\u{0}77", "R\u{7}77"]
        .into_iter()
        .enumerate()
    {
        let status = refused(
            coalition
                .server
                .exchange()
                .record_activity(authed(
                    &coalition.ride_token,
                    ride_report(&coalition, &format!("bad-{index}"), member),
                ))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(
            helpers::violated_fields(&status),
            ["member_id"],
            "{member:?}"
        );
    }
    let reports = ["good-1", "bad", "good-2"].map(|external_id| pb::RecordActivitiesRequest {
        activity: Some(ride_report(
            &coalition,
            external_id,
            if external_id == "bad" { "R 77" } else { RIDER },
        )),
    });
    let response = coalition
        .server
        .exchange()
        .record_activities(authed(
            &coalition.ride_token,
            futures::stream::iter(reports),
        ))
        .await
        .expect("the stream is answered")
        .into_inner();
    assert_eq!(
        (response.recorded, response.refused),
        (2, 1),
        "{response:?}"
    );
    let codes: Vec<Code> = response
        .results
        .iter()
        .map(|result| Code::from(result.code))
        .collect();
    assert_eq!(codes, [Code::Ok, Code::InvalidArgument, Code::Ok]);
    // $10 × 2 points a dollar × 2 (double points) for each good ride.
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 50_080);
    // Only a partner reports activities: anyone else is refused at the call.
    refused(
        coalition
            .server
            .exchange()
            .record_activities(authed(
                &coalition.ops_token,
                futures::stream::iter(Vec::new()),
            ))
            .await,
        Code::PermissionDenied,
    );
}

/// Values PostgreSQL cannot store (a NUL byte) and values out of all reason are refused with the
/// same code on both backends before any database sees them.
async fn unstorable_values_are_refused_the_same_on_every_backend(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let exchange = || coalition.server.exchange();
    let mut report = ride_report(&coalition, "nul\u{0}", RIDER);
    let status = refused(
        exchange()
            .record_activity(authed(&coalition.ride_token, report.clone()))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(helpers::violated_fields(&status), ["external_id"]);
    report.external_id = "year-one".to_owned();
    report.activity_time = Some(Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    });
    let status = refused(
        exchange()
            .record_activity(authed(&coalition.ride_token, report))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(helpers::violated_fields(&status), ["activity_time"]);
    let quote = coalition.quote(10_000).await.unwrap();
    let status = refused(
        coalition.execute(&quote.quote_id, "key\u{0}").await,
        Code::InvalidArgument,
    );
    assert_eq!(helpers::violated_fields(&status), ["idempotency_key"]);
    refused(
        exchange()
            .get_conversion(authed(
                &coalition.ops_token,
                pb::GetConversionRequest {
                    conversion_id: "\u{0}".repeat(10_000),
                },
            ))
            .await,
        Code::NotFound,
    );
    refused(
        exchange()
            .get_activity(authed(
                &coalition.ride_token,
                pb::GetActivityRequest {
                    activity_id: "ride\u{0}".to_owned(),
                },
            ))
            .await,
        Code::NotFound,
    );
    refused(
        exchange()
            .get_quote(authed(
                &coalition.hotel_token,
                pb::GetQuoteRequest {
                    partner_id: coalition.hotel.clone(),
                    link_id: "link\u{0}".to_owned(),
                    amount: Some(pb::get_quote_request::Amount::SourcePoints(10_000)),
                },
            ))
            .await,
        Code::NotFound,
    );
    let status = refused(
        exchange()
            .list_conversions(authed(
                &coalition.ops_token,
                pb::ListConversionsRequest {
                    partner_id: "not-a-partner-id".to_owned(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(helpers::violated_fields(&status), ["partner_id"]);
    let status = refused(
        exchange()
            .reverse_activity(authed(
                &coalition.ride_token,
                pb::ReverseActivityRequest {
                    partner_id: coalition.ride.clone(),
                    external_id: "ride\u{0}".to_owned(),
                    reason: "refund".to_owned(),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(helpers::violated_fields(&status), ["external_id"]);
}

/// A ride before the earn terms took effect still answers one outcome for the linked hotel,
/// saying why it earned nothing; the hotel reads a ride that earned with its own member's id and
/// its own earning only.
async fn every_linked_partner_gets_an_outcome_and_may_read_it(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let mut early = ride_report(&coalition, "before-the-terms", RIDER);
    early.activity_time = Some(at(-7 * 24 * 3600));
    let activity = coalition
        .server
        .exchange()
        .record_activity(authed(&coalition.ride_token, early))
        .await
        .expect("record a ride")
        .into_inner()
        .activity
        .unwrap();
    assert_eq!(activity.earnings.len(), 1, "{activity:?}");
    let earning = &activity.earnings[0];
    assert_eq!(earning.status, pb::EarningStatus::NotEarned as i32);
    assert_eq!(earning.target_partner_id, coalition.hotel);
    assert!(
        earning.note.contains("in force at activity_time"),
        "{}",
        earning.note
    );

    let earned = coalition
        .ride("earned", 1_000, "GOLD", "RIDE")
        .await
        .expect("record a ride");
    let seen_by_hotel = coalition
        .server
        .exchange()
        .get_activity(authed(
            &coalition.hotel_token,
            pb::GetActivityRequest {
                activity_id: earned.activity_id.clone(),
            },
        ))
        .await
        .expect("the hotel reads the ride its member earned on")
        .into_inner()
        .activity
        .unwrap();
    assert_eq!(
        seen_by_hotel.member_id, HOTEL_MEMBER,
        "its own member id only"
    );
    assert!(seen_by_hotel.member_tier.is_empty());
    assert_eq!(seen_by_hotel.earnings.len(), 1);
    assert_eq!(seen_by_hotel.earnings[0].target_partner_id, coalition.hotel);
    let unearned = coalition
        .server
        .exchange()
        .get_activity(authed(
            &coalition.hotel_token,
            pb::GetActivityRequest {
                activity_id: activity.activity_id.clone(),
            },
        ))
        .await
        .expect("an outcome at the hotel, even of nothing, is the hotel's to read")
        .into_inner()
        .activity
        .unwrap();
    assert_eq!(unearned.member_id, HOTEL_MEMBER);
}

/// A suspended partner reports no activities (its token still works for reading), from within a
/// second of the suspension; reactivated, it reports again.
async fn a_suspended_partner_reports_no_activities(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let admin = coalition.server.staff_token(Role::Admin).await;
    coalition
        .server
        .registry()
        .suspend_partner(authed(
            &admin,
            pb::SuspendPartnerRequest {
                partner_id: coalition.ride.clone(),
                reason: "under review".to_owned(),
            },
        ))
        .await
        .expect("suspend the rideshare");
    let status = eventually(
        SAGA_DEADLINE,
        "the suspension to reach the exchange",
        || async {
            coalition
                .ride("while-suspended", 1_000, "", "RIDE")
                .await
                .err()
        },
    )
    .await;
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE"),
        "{status:?}"
    );
    coalition
        .server
        .registry()
        .reactivate_partner(authed(
            &admin,
            pb::ReactivatePartnerRequest {
                partner_id: coalition.ride.clone(),
                reason: "review passed".to_owned(),
            },
        ))
        .await
        .expect("reactivate the rideshare");
    eventually(SAGA_DEADLINE, "the rideshare to report again", || async {
        coalition.ride("after-review", 1_000, "", "RIDE").await.ok()
    })
    .await;
}

/// Earnings queued for their saga (`earnings_due`), read straight from the exchange's database.
async fn earnings_due(database: &TestDatabase) -> i64 {
    let exchange =
        tandem_storage::Database::open(database.location(), "exchange", &tandem_exchange::MIGRATOR)
            .await
            .expect("open the exchange database");
    let due: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM earnings_due")
        .fetch_one(exchange.pool())
        .await
        .expect("count the earnings due");
    exchange.close().await;
    due
}

/// The `index`th ride of the earnings crash test, as the rideshare partner reports it.
fn crash_ride(ride: &str, index: usize, ride_time: Timestamp) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        partner_id: ride.to_owned(),
        external_id: format!("crash-ride-{index}"),
        member_id: RIDER.to_owned(),
        spend_amount_minor: 1_000,
        spend_currency: "USD".to_owned(),
        category: "RIDE".to_owned(),
        member_tier: String::new(),
        activity_time: Some(ride_time),
    }
}

/// The server is killed while four rides' earnings wait on the hotel's gateway; a new server on
/// the same databases finishes every one of them: each credited once, posted once, and out of
/// the queue of unfinished earnings.
async fn earnings_interrupted_by_a_crash_finish_once(database: TestDatabase) {
    const IN_FLIGHT: usize = 4;
    let flags = ["--saga-lease", "1s"];
    let server = TestServer::start_on(database, &flags).await;
    let coalition = Coalition::new(server, 0).await;
    // One ride earned before the crash, so the hotel's gateway holds Tandem's signing key: it
    // asks for keys at the address of the server it was started with, which is gone after the
    // crash (and may be another test's server by then). Keys live in the database, so the new
    // server signs with the same one.
    let warm_up = coalition
        .ride("crash-warm-up", 1_000, "", "RIDE")
        .await
        .expect("a ride before the crash");
    assert_eq!(
        warm_up.earnings[0].status,
        pb::EarningStatus::Posted as i32,
        "{warm_up:?}"
    );
    let warm_up_points = warm_up.earnings[0].points;
    // Every credit waits 4 s (inside the exchange's 5 s gateway timeout) until cleared.
    coalition
        .hotel_sim
        .set_fault("CreditPoints", Fault::Delay, 0, 4_000)
        .await;
    let mut recording = Vec::new();
    for index in 0..IN_FLIGHT {
        let mut exchange = coalition.server.exchange();
        let request = authed(
            &coalition.ride_token,
            crash_ride(&coalition.ride, index, coalition.ride_time),
        );
        recording.push(tokio::spawn(async move {
            exchange.record_activity(request).await
        }));
    }
    eventually(SAGA_DEADLINE, "every earning recorded", || async {
        (earnings_due(&coalition.server.database).await == IN_FLIGHT as i64).then_some(())
    })
    .await;
    let Coalition {
        server,
        hotel_sim,
        ride_token,
        ride,
        ride_time,
        ops_token,
        ..
    } = coalition;
    let database = kill_while_waiting(server, recording).await;
    hotel_sim
        .set_fault("CreditPoints", Fault::Unspecified, 0, 0)
        .await;

    let server = TestServer::start_on(database, &flags).await;
    let mut earned = 0;
    for index in 0..IN_FLIGHT {
        // Reporting the ride again is a replay: it answers the recorded activity.
        let activity = eventually(SAGA_DEADLINE, "the ride's earning to post", || async {
            let activity = server
                .exchange()
                .record_activity(authed(&ride_token, crash_ride(&ride, index, ride_time)))
                .await
                .unwrap()
                .into_inner()
                .activity
                .unwrap();
            (activity.earnings[0].status == pb::EarningStatus::Posted as i32).then_some(activity)
        })
        .await;
        let earning = &activity.earnings[0];
        assert!(earning.points > 0, "{earning:?}");
        earned += earning.points;
        let posted = server
            .ledger()
            .list_transactions(authed(
                &ops_token,
                pb::ListTransactionsRequest {
                    external_reference: activity.activity_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .transactions;
        assert_eq!(posted.len(), 1, "each posted once");
    }
    assert_eq!(
        hotel_sim.balance(HOTEL_MEMBER).await,
        50_000 + warm_up_points + earned,
        "each credited once"
    );
    assert_eq!(earnings_due(&server.database).await, 0, "none left to do");
}

/// A partner's gateway built before BatchMovePoints existed answers it UNIMPLEMENTED: the exchange
/// moves points there one call at a time instead, and conversions and earnings complete as usual.
async fn a_gateway_without_batches_gets_one_call_per_movement(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    for sim in [&coalition.hotel_sim, &coalition.ride_sim] {
        sim.set_fault("BatchMovePoints", Fault::Unimplemented, 0, 0)
            .await;
    }
    let quote = coalition.quote(10_000).await.expect("a quote");
    let conversion = coalition
        .execute(&quote.quote_id, "without-batches")
        .await
        .expect("execute")
        .conversion
        .unwrap();
    assert_eq!(
        conversion.status,
        pb::ConversionStatus::Completed as i32,
        "{conversion:?}"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 40_000);
    assert_eq!(coalition.ride_sim.balance(RIDER).await, 2_500);
    // $23.45 × 2 points per dollar × 1.5 (GOLD) × 2 (double points) = 140.7 → 140 points.
    let activity = coalition
        .ride("ride-without-batches", 2_345, "GOLD", "RIDE")
        .await
        .expect("record a ride");
    assert_eq!(
        activity.earnings[0].status,
        pb::EarningStatus::Posted as i32,
        "{activity:?}"
    );
    assert_eq!(coalition.hotel_sim.balance(HOTEL_MEMBER).await, 40_140);
    coalition.trial_balance_is_zero().await;
}

/// `tandem` with the server's storage flags; (exit code, standard output, standard error).
fn tandem(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(helpers::TANDEM)
        .args(storage_args(&server.database))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The reference partner exports its own movements of a period; with one record dropped on
/// each side, one amount changed and one duplicated, reconciling it against Tandem's ledger
/// finds exactly those, and a conversion that failed (its debit undone) is on neither side.
async fn a_partner_sim_export_reconciles_against_the_ledger(server: TestServer) {
    let coalition = Coalition::new(server, 0).await;
    let from = chrono::Utc::now().to_rfc3339();
    let mut conversions = Vec::new();
    for key in ["export-1", "export-2", "export-3"] {
        let quote = coalition.quote(10_000).await.unwrap();
        let conversion = coalition.execute(&quote.quote_id, key).await.unwrap();
        conversions.push(conversion.conversion.unwrap().conversion_id);
    }
    coalition
        .ride_sim
        .set_fault("CreditPoints", Fault::Refuse, 0, 0)
        .await;
    let quote = coalition.quote(10_000).await.unwrap();
    let failed = coalition
        .execute(&quote.quote_id, "export-failed")
        .await
        .unwrap();
    assert_eq!(
        failed.conversion.unwrap().status,
        pb::ConversionStatus::Failed as i32
    );
    let ride = coalition
        .ride("export-ride", 2_345, "GOLD", "RIDE")
        .await
        .unwrap();
    let to = chrono::Utc::now().to_rfc3339();

    let (code, exported, error) = tandem(
        &coalition.server,
        &[
            "partner-sim-export",
            "--program",
            "SKYLINE_PTS",
            "--from",
            &from,
            "--to",
            &to,
        ],
    );
    assert_eq!(code, 0, "{error}");
    let mut lines: Vec<String> = exported.lines().map(str::to_owned).collect();
    assert_eq!(
        lines.len(),
        5,
        "a header, three debits and the ride's credit: {exported}"
    );
    assert!(
        lines[4].contains(&format!(",{},EARN,", ride.activity_id)),
        "{exported}"
    );
    // Dropped on the hotel's side, changed, and duplicated; and one Tandem never saw.
    lines.retain(|line| !line.contains(&conversions[0]));
    let changed = lines
        .iter()
        .position(|line| line.contains(&conversions[1]))
        .unwrap();
    lines[changed] = lines[changed].replace(",-10000,", ",-9000,");
    let earned = lines.last().unwrap().clone();
    lines.push(earned.replace("tandem:earning", "duplicate:earning"));
    lines.push(format!(
        "hotel-only,not-in-tandem,CONVERSION,-500,,{}",
        chrono::Utc::now().to_rfc3339()
    ));
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("hotel.csv");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let path = file.display().to_string();
    let (code, counts, error) = tandem(
        &coalition.server,
        &[
            "reconcile",
            "submit",
            "--partner",
            &coalition.hotel,
            "--file",
            &path,
            "--from",
            &from,
            "--to",
            &to,
            "--server",
            &format!("http://{}", coalition.server.address),
            "--as",
            "alice",
            "--output",
            "csv",
        ],
    );
    assert_eq!(code, 0, "{error}");
    for expected in [
        "MATCHED,2",
        "MISSING_OURS,1",
        "MISSING_THEIRS,1",
        "AMOUNT_MISMATCH,1",
        "TIME_MISMATCH,0",
        "DUPLICATE,1",
    ] {
        assert!(counts.contains(expected), "{expected} in {counts}");
    }
}

on_every_backend!(
    a_partner_sim_export_reconciles_against_the_ledger,
    a_gateway_without_batches_gets_one_call_per_movement,
    a_member_converts_and_wallets_and_ledger_agree,
    a_quote_priced_by_one_process_executes_on_another,
    caps_expired_quotes_and_bad_amounts_are_refused,
    a_refused_credit_is_compensated,
    a_credit_that_timed_out_after_applying_credits_once,
    a_credit_refused_after_an_unknown_outcome_is_reversed,
    a_debit_refused_after_an_unknown_outcome_is_given_back,
    a_reversal_refused_after_an_unknown_outcome_is_undone,
    an_earning_credit_refused_after_an_unknown_outcome_is_undone,
    a_malformed_member_id_is_refused_alone,
    unstorable_values_are_refused_the_same_on_every_backend,
    every_linked_partner_gets_an_outcome_and_may_read_it,
    a_suspended_partner_reports_no_activities,
    rides_earn_hotel_points_with_tier_and_promotion,
    held_points_post_after_the_hold_and_refunds_inside_it_void,
);

#[tokio::test]
async fn expired_quotes_on_sqlite() {
    expired_quotes_cannot_be_executed(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn expired_quotes_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    expired_quotes_cannot_be_executed(database).await;
}

#[tokio::test]
async fn crash_recovery_on_sqlite() {
    conversions_interrupted_by_a_crash_finish_once(Backend::Sqlite.database().await).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn crash_recovery_on_postgres() {
    conversions_interrupted_by_a_crash_finish_once(Backend::Postgres.database().await).await;
}

#[tokio::test]
async fn killed_after_the_ledger_post_on_sqlite() {
    a_conversion_killed_after_its_ledger_post_only_goes_forward(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn killed_after_the_ledger_post_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    a_conversion_killed_after_its_ledger_post_only_goes_forward(database).await;
}

#[tokio::test]
async fn killed_after_the_debit_on_sqlite() {
    a_conversion_killed_after_its_debit_meets_a_forgetful_gateway(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn killed_after_the_debit_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    a_conversion_killed_after_its_debit_meets_a_forgetful_gateway(database).await;
}

#[tokio::test]
async fn earnings_crash_recovery_on_sqlite() {
    earnings_interrupted_by_a_crash_finish_once(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn earnings_crash_recovery_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    earnings_interrupted_by_a_crash_finish_once(database).await;
}
