//! `tandem demo`: the whole story on this machine, with nothing to set up. It starts Tandem and
//! two reference partners, registers Skyline Hotels and Zoom Rides, agrees terms both ways,
//! links a hotel member to a rider, converts hotel points into ride miles, records a ride that
//! earns hotel points, and shows that both wallets and the ledger agree. Then operations staff
//! close the period with four eyes and settle it, and the hotel reconciles its own records
//! against Tandem's.

use anyhow::{Context, bail};
use tandem_proto::v1::{self as pb, settlement_service_client::SettlementServiceClient};

use crate::{
    coalition::{Coalition, Stack, authed},
    settings::Settings,
};

const HOTEL_MEMBER: &str = "H-1001";
const RIDER: &str = "R-77";

pub async fn run(common: &crate::settings::CommonArgs) -> anyhow::Result<()> {
    // The period the demo reconciles: from now on, so a database an earlier demo used adds
    // nothing to it.
    let started = chrono::Utc::now();
    // A fresh data directory unless one was named, so the demo never meets an earlier run.
    let scratch = tempfile::Builder::new()
        .prefix("tandem-demo-")
        .tempdir()
        .context("creating a scratch data directory")?;
    let mut common = common.clone();
    if common.data_dir.is_none() && common.database_url.is_none() {
        common.data_dir = Some(scratch.path().to_owned());
    }
    let settings = Settings::load(&common)?;
    let storage = match (&common.data_dir, &common.database_url) {
        (_, Some(url)) => vec!["--database-url".to_owned(), url.clone()],
        (Some(directory), None) => vec!["--data-dir".to_owned(), directory.display().to_string()],
        (None, None) => unreachable!("a data directory was set above"),
    };
    println!(
        "1. Starting Tandem and two partner gateways ({})",
        settings.location.describe()
    );
    let stack = Stack::start(&storage, &[]).await?;
    println!(
        "   tandem on {}, Skyline Hotels' gateway on {}, Zoom Rides' on {}",
        stack.address, stack.hotel_gateway, stack.ride_gateway
    );

    println!("2. Registering Skyline Hotels and Zoom Rides; agreeing terms both ways");
    let coalition = Coalition::form(&stack, &settings, true, 0).await?;
    println!(
        "   hotel points → miles at 0.25, $0.0085 a mile, 1.5% fee; rides earn 2 hotel points a dollar, GOLD 1.5×"
    );

    Coalition::put_member(&coalition.hotel_gateway, HOTEL_MEMBER, 50_000).await?;
    Coalition::put_member(&coalition.ride_gateway, RIDER, 0).await?;
    println!("3. {HOTEL_MEMBER} holds 50,000 SKYLINE_PTS; rider {RIDER} holds 0 ZOOM_MILES");

    let link_id = coalition.link(HOTEL_MEMBER, RIDER).await?;
    println!("4. {HOTEL_MEMBER} linked to {RIDER} with a one-time code (link {link_id})");

    let (quote, conversion) = convert(&coalition, &link_id).await?;
    let (ride, earned) = earn_on_a_ride(&coalition).await?;
    check_books(&coalition, &quote, &conversion, &ride, earned).await?;
    println!("8. Wallets and ledger agree; the trial balance is zero in every unit.");
    settle_the_period(&coalition, &settings).await?;
    reconcile_the_hotel(&coalition, &settings, started).await?;
    Ok(())
}

/// Step 9: ops close the period into a settlement run; a second ops user approves it; it
/// settles, each net position paid.
async fn settle_the_period(coalition: &Coalition, settings: &Settings) -> anyhow::Result<()> {
    let hour = std::time::Duration::from_secs(3600);
    let alice = crate::keys::mint_operator_token(settings, "ops", "alice", hour).await?;
    let bob = crate::keys::mint_operator_token(settings, "ops", "bob", hour).await?;
    let mut settlement = SettlementServiceClient::new(coalition.channel.clone());
    let run = settlement
        .create_settlement_run(authed(
            &alice,
            pb::CreateSettlementRunRequest {
                idempotency_key: format!("demo-period-{}", uuid::Uuid::now_v7()),
                currency: "USD".to_owned(),
                cutoff_time: Some(tandem_proto::time::timestamp(chrono::Utc::now())),
            },
        ))
        .await?
        .into_inner()
        .run
        .context("a run")?;
    println!(
        "9. Ops user alice closes the period: run {} takes {} ledger entries in USD",
        run.run_id, run.entry_count
    );
    for position in &run.positions {
        println!(
            "   {} nets {} {}",
            party_name(coalition, &position.party),
            crate::ops::decimal(position.net_minor, run.currency_scale),
            run.currency
        );
    }
    four_eyes(&mut settlement, &run.run_id, &alice, &bob).await?;
    let references = run
        .positions
        .iter()
        .filter(|position| position.net_minor != 0)
        .map(|position| {
            (
                position.party.clone(),
                format!("WIRE-{}", &position.party[..8]),
            )
        })
        .collect();
    let settled = settlement
        .settle_settlement_run(authed(
            &bob,
            pb::SettleSettlementRunRequest {
                run_id: run.run_id.clone(),
                payment_references: references,
            },
        ))
        .await?
        .into_inner()
        .run
        .context("a run")?;
    println!(
        "   settled: every position moved to the bank clearing account ({:?})",
        settled.status()
    );
    Ok(())
}

/// The run's creator may not approve it; another ops user does.
async fn four_eyes(
    settlement: &mut SettlementServiceClient<tonic::transport::Channel>,
    run_id: &str,
    creator: &str,
    approver: &str,
) -> anyhow::Result<()> {
    let approve = |token: &str| {
        authed(
            token,
            pb::ApproveSettlementRunRequest {
                run_id: run_id.to_owned(),
            },
        )
    };
    if settlement
        .approve_settlement_run(approve(creator))
        .await
        .is_ok()
    {
        bail!("the run's creator approved it alone");
    }
    println!("   alice may not approve her own run; bob does");
    settlement.approve_settlement_run(approve(approver)).await?;
    Ok(())
}

fn party_name(coalition: &Coalition, party: &str) -> String {
    if party == coalition.hotel.partner_id() {
        "Skyline Hotels".to_owned()
    } else if party == coalition.ride.partner_id() {
        "Zoom Rides".to_owned()
    } else if party == "exchange" {
        "Tandem (its fees)".to_owned()
    } else {
        party.to_owned()
    }
}

/// Step 10: Skyline Hotels sends its own records of the period, read from its gateway's wallet
/// store, and every one matches Tandem's.
async fn reconcile_the_hotel(
    coalition: &Coalition,
    settings: &Settings,
    started: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let database = tandem_storage::Database::open(
        &settings.location,
        "sim_skyline_pts",
        &tandem_partner_sim::MIGRATOR,
    )
    .await?;
    let wallets = tandem_partner_sim::Wallets::new(database.clone());
    let now = chrono::Utc::now();
    let records: Vec<pb::PartnerRecord> = wallets
        .reported_movements(
            tandem_domain::to_unix_micros(started),
            tandem_domain::to_unix_micros(now),
        )
        .map_ok(|movement| pb::PartnerRecord {
            partner_record_id: movement.transaction_key,
            tandem_reference: movement.tandem_reference,
            kind: movement.tandem_kind,
            points: movement.points,
            money_minor: None,
            time: Some(tandem_proto::time::timestamp(
                tandem_domain::from_unix_micros(movement.applied_at_micros),
            )),
        })
        .try_collect()
        .await?;
    database.close().await;
    let count = records.len();
    let messages = vec![pb::SubmitPartnerReportRequest {
        header: Some(pb::ReportHeader {
            partner_id: coalition.hotel.partner_id().to_owned(),
            start_time: Some(tandem_proto::time::timestamp(started)),
            end_time: Some(tandem_proto::time::timestamp(now)),
            ..Default::default()
        }),
        records,
    }];
    let hotel_token = coalition.hotel.access_token().await?;
    let reconciliation = SettlementServiceClient::new(coalition.channel.clone())
        .submit_partner_report(authed(&hotel_token, futures::stream::iter(messages)))
        .await?
        .into_inner()
        .reconciliation
        .context("a reconciliation")?;
    let matched = reconciliation
        .counts
        .iter()
        .find(|count| count.class() == pb::DiscrepancyClass::Matched)
        .map_or(0, |count| count.count);
    let discrepancies: i64 = reconciliation
        .counts
        .iter()
        .filter(|count| count.class() != pb::DiscrepancyClass::Matched)
        .map(|count| count.count)
        .sum();
    println!(
        "10. Skyline Hotels reconciles its own {count} records of the period: {matched} match \
         Tandem's, {discrepancies} discrepancies"
    );
    if discrepancies != 0 || matched as usize != count {
        bail!("the hotel's records do not reconcile with Tandem's");
    }
    Ok(())
}

/// Step 5: the hotel member converts 10,000 hotel points into ride miles.
async fn convert(
    coalition: &Coalition,
    link_id: &str,
) -> anyhow::Result<(pb::Quote, pb::Conversion)> {
    let quote = coalition.hotel.quote_source_points(link_id, 10_000).await?;
    println!(
        "5. Quote {}: 10,000 SKYLINE_PTS → {} ZOOM_MILES; Skyline owes Zoom {} (+{} fee) {} minor units",
        quote.quote_id,
        quote.target_points,
        quote.settlement_amount_minor,
        quote.fee_amount_minor,
        quote.settlement_currency
    );
    let conversion = coalition.hotel.convert(&quote.quote_id).await?;
    println!(
        "   conversion {}: {:?}",
        conversion.conversion_id,
        conversion.status()
    );
    if conversion.status() != pb::ConversionStatus::Completed {
        bail!("the conversion did not complete: {}", conversion.last_error);
    }
    Ok((quote, conversion))
}

/// Step 6: a ride by the GOLD rider earns hotel points; the activity and the points earned.
async fn earn_on_a_ride(coalition: &Coalition) -> anyhow::Result<(pb::Activity, i64)> {
    let ride = coalition
        .ride
        .record_activity(pb::RecordActivityRequest {
            external_id: "ride-2026-0001".to_owned(),
            member_id: RIDER.to_owned(),
            spend_amount_minor: 2_345,
            spend_currency: "USD".to_owned(),
            category: "RIDE".to_owned(),
            member_tier: "GOLD".to_owned(),
            activity_time: Some(tandem_proto::time::timestamp(chrono::Utc::now())),
            ..Default::default()
        })
        .await?;
    let earned: i64 = ride.earnings.iter().map(|earning| earning.points).sum();
    println!(
        "6. A $23.45 GOLD ride by {RIDER} earns {earned} SKYLINE_PTS for {HOTEL_MEMBER} (activity {})",
        ride.activity_id
    );
    Ok((ride, earned))
}

/// Step 7: both wallets and the ledger, which must agree.
async fn check_books(
    coalition: &Coalition,
    quote: &pb::Quote,
    conversion: &pb::Conversion,
    ride: &pb::Activity,
    earned: i64,
) -> anyhow::Result<()> {
    let hotel_wallet = Coalition::balance(&coalition.hotel_gateway, HOTEL_MEMBER).await?;
    let ride_wallet = Coalition::balance(&coalition.ride_gateway, RIDER).await?;
    println!(
        "7. Wallets: {HOTEL_MEMBER} {hotel_wallet} SKYLINE_PTS, {RIDER} {ride_wallet} ZOOM_MILES"
    );
    let mut ledger = coalition.ledger();
    let mut recorded = Vec::new();
    for reference in [&conversion.conversion_id, &ride.activity_id] {
        let transactions = ledger
            .list_transactions(authed(
                &coalition.ops_token,
                pb::ListTransactionsRequest {
                    external_reference: reference.clone(),
                },
            ))
            .await?
            .into_inner()
            .transactions;
        for transaction in transactions {
            println!(
                "   ledger: {} {} with {} legs",
                transaction.type_code,
                transaction.transaction_id,
                transaction.legs.len()
            );
            recorded.push(transaction.type_code);
        }
    }
    let trial = ledger
        .get_trial_balance(authed(
            &coalition.ops_token,
            pb::GetTrialBalanceRequest::default(),
        ))
        .await?
        .into_inner();
    let expected_hotel = 50_000 - 10_000 + earned;
    let agrees = hotel_wallet == expected_hotel
        && ride_wallet == quote.target_points
        && recorded == ["CONVERSION", "EARN"]
        && trial.balanced;
    if !agrees {
        bail!(
            "wallets and ledger disagree: hotel {hotel_wallet} (expected {expected_hotel}), rider {ride_wallet} (expected {}), ledger {recorded:?}, trial balance balanced: {}",
            quote.target_points,
            trial.balanced
        );
    }
    Ok(())
}
