//! The arithmetic of quotes and earnings, with its rounding rules in one place.
//!
//! - Points the member receives round **down** to the target program's minor unit: a member never
//!   gets more than the agreed rate gives, and the partner never issues a fraction.
//! - Asked for a target amount, the quote spends the **least** whole increments of source points
//!   that give at least that many target points (and at least the minimum).
//! - Money rounds **half away from zero** to the settlement currency's minor unit, first the
//!   settlement amount (target points × price), then the fee (basis points of that amount). Each
//!   is rounded once, from exact decimals, so no rounding compounds.
//! - Earned points: spend (in whole currency units) × points per unit × multiplier, rounded
//!   **down**. The multiplier is the member's tier multiplier (1 when the tier has none) times
//!   the largest promotion multiplier whose window holds the activity time (1 when none).

use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive};

/// What the terms say about converting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionTerms {
    pub rate: Decimal,
    pub minimum_source_points: i64,
    pub increment_source_points: i64,
    pub settlement_price: Decimal,
    pub fee_basis_points: u32,
}

/// Decimal places of each unit involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scales {
    pub source_points: u32,
    pub target_points: u32,
    pub currency: u32,
}

/// The amount a quote starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Source(i64),
    Target(i64),
}

/// A priced conversion, every amount in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    pub source_points: i64,
    pub target_points: i64,
    pub settlement_minor: i64,
    pub fee_minor: i64,
}

/// Why an amount cannot be converted; each names the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("must be at least {minimum}; got {got}")]
    BelowMinimum { minimum: i64, got: i64 },
    #[error("must be a multiple of {increment}; got {got}")]
    NotAnIncrement { increment: i64, got: i64 },
    #[error("must be at least 1; got {0}")]
    NotPositive(i64),
    #[error("converts to less than one target point at the agreed rate")]
    NothingReceived,
    #[error("is too large to convert")]
    TooLarge,
}

fn power_of_ten(places: u32) -> Decimal {
    Decimal::from_i128_with_scale(10_i128.pow(places), 0)
}

/// Minor units to a decimal amount of whole units.
fn whole(minor: i64, places: u32) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(minor), places)
}

fn to_minor(amount: Decimal, places: u32, strategy: RoundingStrategy) -> Option<i64> {
    amount
        .checked_mul(power_of_ten(places))?
        .round_dp_with_strategy(0, strategy)
        .to_i64()
}

/// Prices a conversion under `terms`.
pub fn price_conversion(
    terms: &ConversionTerms,
    amount: Amount,
    scales: Scales,
) -> Result<Priced, PricingError> {
    let source_points = match amount {
        Amount::Source(points) => {
            if points < terms.minimum_source_points {
                return Err(PricingError::BelowMinimum {
                    minimum: terms.minimum_source_points,
                    got: points,
                });
            }
            if points % terms.increment_source_points != 0 {
                return Err(PricingError::NotAnIncrement {
                    increment: terms.increment_source_points,
                    got: points,
                });
            }
            points
        }
        Amount::Target(points) => source_for_target(terms, points, scales)?,
    };
    let target_points = target_for_source(terms.rate, source_points, scales)?;
    if target_points < 1 {
        return Err(PricingError::NothingReceived);
    }
    let settlement = whole(target_points, scales.target_points)
        .checked_mul(terms.settlement_price)
        .ok_or(PricingError::TooLarge)?;
    let settlement_minor = to_minor(
        settlement,
        scales.currency,
        RoundingStrategy::MidpointAwayFromZero,
    )
    .ok_or(PricingError::TooLarge)?;
    let fee_minor = fee(settlement_minor, terms.fee_basis_points).ok_or(PricingError::TooLarge)?;
    Ok(Priced {
        source_points,
        target_points,
        settlement_minor,
        fee_minor,
    })
}

/// The exchange fee on a settlement amount: basis points, rounded half away from zero.
pub fn fee(settlement_minor: i64, basis_points: u32) -> Option<i64> {
    Decimal::from(settlement_minor)
        .checked_mul(Decimal::from(basis_points))?
        .checked_div(Decimal::from(10_000))?
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
}

fn target_for_source(
    rate: Decimal,
    source_points: i64,
    scales: Scales,
) -> Result<i64, PricingError> {
    let target = whole(source_points, scales.source_points)
        .checked_mul(rate)
        .ok_or(PricingError::TooLarge)?;
    to_minor(target, scales.target_points, RoundingStrategy::ToZero).ok_or(PricingError::TooLarge)
}

/// The fewest source points, in whole increments and at least the minimum, that give at least
/// `target_points`.
fn source_for_target(
    terms: &ConversionTerms,
    target_points: i64,
    scales: Scales,
) -> Result<i64, PricingError> {
    if target_points < 1 {
        return Err(PricingError::NotPositive(target_points));
    }
    let needed = whole(target_points, scales.target_points)
        .checked_div(terms.rate)
        .ok_or(PricingError::TooLarge)?;
    let needed_minor = to_minor(needed, scales.source_points, RoundingStrategy::AwayFromZero)
        .ok_or(PricingError::TooLarge)?;
    let increment = terms.increment_source_points;
    let mut source = needed_minor
        .checked_add(increment - 1)
        .ok_or(PricingError::TooLarge)?
        / increment
        * increment;
    source = source.max(terms.minimum_source_points);
    // Rounding the division up can still fall one increment short when the rate's own
    // representation was rounded; step up until the promise holds.
    while target_for_source(terms.rate, source, scales)? < target_points {
        source = source
            .checked_add(increment)
            .ok_or(PricingError::TooLarge)?;
    }
    Ok(source)
}

/// The multiplier an activity earns with: tier times the best promotion in force.
pub fn earn_multiplier(
    tier: Option<Decimal>,
    promotions: impl Iterator<Item = Decimal>,
) -> Decimal {
    let best_promotion = promotions.fold(Decimal::ONE, Decimal::max);
    tier.unwrap_or(Decimal::ONE) * best_promotion
}

/// Points earned on `spend_minor` (at `spend_places`), rounded down to the target's minor unit.
pub fn earned_points(
    points_per_spend_unit: Decimal,
    spend_minor: i64,
    spend_places: u32,
    multiplier: Decimal,
    target_places: u32,
) -> Option<i64> {
    let points = whole(spend_minor, spend_places)
        .checked_mul(points_per_spend_unit)?
        .checked_mul(multiplier)?;
    to_minor(points, target_places, RoundingStrategy::ToZero)
}

/// Settlement and fee for `points` earned or converted at `price` per target point.
pub fn settlement(
    points: i64,
    target_places: u32,
    price: Decimal,
    currency_places: u32,
    fee_basis_points: u32,
) -> Option<(i64, i64)> {
    let amount = whole(points, target_places).checked_mul(price)?;
    let minor = to_minor(
        amount,
        currency_places,
        RoundingStrategy::MidpointAwayFromZero,
    )?;
    Some((minor, fee(minor, fee_basis_points)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn terms(rate: &str) -> ConversionTerms {
        ConversionTerms {
            rate: rate.parse().unwrap(),
            minimum_source_points: 1000,
            increment_source_points: 100,
            settlement_price: "0.0085".parse().unwrap(),
            fee_basis_points: 150,
        }
    }

    const WHOLE_POINTS_USD: Scales = Scales {
        source_points: 0,
        target_points: 0,
        currency: 2,
    };

    #[test]
    fn a_hotel_member_converting_ten_thousand_points() {
        // 10,000 × 0.25 = 2,500 miles; 2,500 × $0.0085 = $21.25; 1.5% of that is 31.875¢ → 32¢.
        let priced =
            price_conversion(&terms("0.25"), Amount::Source(10_000), WHOLE_POINTS_USD).unwrap();
        assert_eq!(
            priced,
            Priced {
                source_points: 10_000,
                target_points: 2_500,
                settlement_minor: 2_125,
                fee_minor: 32,
            }
        );
    }

    #[test]
    fn target_points_round_down_and_money_rounds_half_away_from_zero() {
        // 1,100 × 0.333 = 366.3 → 366 points; 366 × 0.0085 = 3.111 → $3.11; 1.5% = 4.665 → 5¢.
        let priced =
            price_conversion(&terms("0.333"), Amount::Source(1_100), WHOLE_POINTS_USD).unwrap();
        assert_eq!(priced.target_points, 366);
        assert_eq!(priced.settlement_minor, 311);
        assert_eq!(priced.fee_minor, 5);
        assert_eq!(fee(50, 100), Some(1), "0.5 rounds away from zero");
        assert_eq!(fee(49, 100), Some(0));
    }

    #[test]
    fn amounts_outside_the_terms_are_refused() {
        let terms = terms("0.25");
        assert_eq!(
            price_conversion(&terms, Amount::Source(900), WHOLE_POINTS_USD),
            Err(PricingError::BelowMinimum {
                minimum: 1000,
                got: 900
            })
        );
        assert_eq!(
            price_conversion(&terms, Amount::Source(1_050), WHOLE_POINTS_USD),
            Err(PricingError::NotAnIncrement {
                increment: 100,
                got: 1_050
            })
        );
        assert_eq!(
            price_conversion(&terms, Amount::Target(0), WHOLE_POINTS_USD),
            Err(PricingError::NotPositive(0))
        );
        // Four target points per source point overflows what a wallet can hold.
        assert_eq!(
            price_conversion(
                &super::tests::terms("4"),
                Amount::Source(i64::MAX / 100 * 100),
                WHOLE_POINTS_USD
            )
            .map(|priced| priced.source_points),
            Err(PricingError::TooLarge)
        );
    }

    #[test]
    fn a_rate_too_small_for_one_point_is_refused() {
        assert_eq!(
            price_conversion(&terms("0.0001"), Amount::Source(1_000), WHOLE_POINTS_USD),
            Err(PricingError::NothingReceived)
        );
    }

    #[test]
    fn asking_for_target_points_spends_the_fewest_increments() {
        // 2,501 miles at 0.25 need 10,004 points, so 10,100 in increments of 100.
        let priced =
            price_conversion(&terms("0.25"), Amount::Target(2_501), WHOLE_POINTS_USD).unwrap();
        assert_eq!(priced.source_points, 10_100);
        assert_eq!(priced.target_points, 2_525);
        // A small ask still spends the minimum.
        let priced =
            price_conversion(&terms("0.25"), Amount::Target(10), WHOLE_POINTS_USD).unwrap();
        assert_eq!(priced.source_points, 1_000);
    }

    #[test]
    fn earning_multiplies_tier_by_the_best_promotion_and_rounds_down() {
        let multiplier = earn_multiplier(
            Some("1.5".parse().unwrap()),
            ["2".parse().unwrap(), "1.25".parse().unwrap()].into_iter(),
        );
        assert_eq!(multiplier, "3.0".parse::<Decimal>().unwrap());
        // $23.45 × 2 points per dollar × 3 = 140.7 → 140.
        assert_eq!(
            earned_points("2".parse().unwrap(), 2_345, 2, multiplier, 0),
            Some(140)
        );
        assert_eq!(earn_multiplier(None, std::iter::empty()), Decimal::ONE);
    }

    proptest! {
        /// Asked for N target points, the quote gives at least N, and one increment fewer would
        /// not (unless the minimum forbids going lower).
        #[test]
        fn target_quotes_are_the_cheapest_that_deliver(
            rate_thousandths in 1_i64..5_000,
            wanted in 1_i64..1_000_000,
            increment in prop::sample::select(vec![1_i64, 10, 100, 250]),
        ) {
            let terms = ConversionTerms {
                rate: Decimal::new(rate_thousandths, 3),
                minimum_source_points: increment * 4,
                increment_source_points: increment,
                settlement_price: Decimal::new(85, 4),
                fee_basis_points: 150,
            };
            let priced = price_conversion(&terms, Amount::Target(wanted), WHOLE_POINTS_USD).unwrap();
            prop_assert!(priced.target_points >= wanted);
            prop_assert_eq!(priced.source_points % increment, 0);
            let cheaper = priced.source_points - increment;
            if cheaper >= terms.minimum_source_points {
                let fewer = target_for_source(terms.rate, cheaper, WHOLE_POINTS_USD).unwrap();
                prop_assert!(fewer < wanted);
            }
        }

        /// The member never receives more than source × rate, and never a whole point less.
        #[test]
        fn target_points_are_the_floor_of_source_times_rate(
            rate_thousandths in 1_i64..5_000,
            increments in 10_i64..100_000,
        ) {
            let terms = ConversionTerms {
                rate: Decimal::new(rate_thousandths, 3),
                minimum_source_points: 1_000,
                increment_source_points: 100,
                settlement_price: Decimal::new(85, 4),
                fee_basis_points: 150,
            };
            let source = increments * 100;
            if let Ok(priced) = price_conversion(&terms, Amount::Source(source), WHOLE_POINTS_USD) {
                let exact = Decimal::from(source) * terms.rate;
                prop_assert!(Decimal::from(priced.target_points) <= exact);
                prop_assert!(exact - Decimal::from(priced.target_points) < Decimal::ONE);
            }
        }
    }
}
