//! `tandem demo`: the whole story on this machine, with nothing to set up. It starts Tandem and
//! two reference partners, registers Skyline Hotels and Zoom Rides, agrees terms both ways,
//! links a hotel member to a rider, converts hotel points into ride miles, records a ride that
//! earns hotel points, and shows that both wallets and the ledger agree.

use anyhow::{Context, bail};
use tandem_proto::v1 as pb;

use crate::{
    coalition::{Coalition, Stack, authed},
    settings::Settings,
};

const HOTEL_MEMBER: &str = "H-1001";
const RIDER: &str = "R-77";

pub async fn run(common: &crate::settings::CommonArgs) -> anyhow::Result<()> {
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
