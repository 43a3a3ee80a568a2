//! An agreement's commercial terms. Each field is already valid; `Terms::new` and
//! `EarnRules::new` add the rules that span fields.

use std::collections::HashSet;

use crate::{
    BasisPoints, Currency, FieldViolation, Multiplier, Points, Price, Rate, Text, Timestamp,
    Violations,
};

/// Most tier multipliers, promotions or excluded categories one agreement carries; a bound keeps
/// every agreement cheap to load on the conversion path.
pub const MAX_RULE_ENTRIES: usize = 100;

/// The commercial terms of one agreement version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    conversion_rate: Rate,
    minimum_source_points: Points,
    increment_source_points: Points,
    member_daily_cap_points: Option<Points>,
    agreement_monthly_cap_points: Option<Points>,
    settlement_price: Price,
    exchange_fee: BasisPoints,
    earn_rules: Option<EarnRules>,
    conversion_reversal_hours: u32,
}

impl Terms {
    /// Longest reversal window an agreement may set: a year, so a conversion's books close.
    pub const MAX_REVERSAL_HOURS: u32 = 8760;

    /// Joins already-valid fields, checking the rules between them: the minimum is a whole number
    /// of increments (so the minimum itself can be converted), and caps are not below the minimum
    /// (a cap below it would make the agreement unusable).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conversion_rate: Rate,
        minimum_source_points: Points,
        increment_source_points: Points,
        member_daily_cap_points: Option<Points>,
        agreement_monthly_cap_points: Option<Points>,
        settlement_price: Price,
        exchange_fee: BasisPoints,
        earn_rules: Option<EarnRules>,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        let minimum = minimum_source_points.minor_units();
        let increment = increment_source_points.minor_units();
        if increment > 0 && minimum % increment != 0 {
            violations.push(FieldViolation::new(
                "minimum_source_points",
                format!(
                    "must be a multiple of increment_source_points ({increment}); got {minimum}"
                ),
            ));
        }
        for (field, cap) in [
            ("member_daily_cap_points", member_daily_cap_points),
            ("agreement_monthly_cap_points", agreement_monthly_cap_points),
        ] {
            if let Some(cap) = cap.filter(|cap| cap.minor_units() < minimum) {
                violations.push(FieldViolation::new(
                    field,
                    format!(
                        "must not be below minimum_source_points ({minimum}); got {}",
                        cap.minor_units()
                    ),
                ));
            }
        }
        violations.finish(|| Self {
            conversion_rate,
            minimum_source_points,
            increment_source_points,
            member_daily_cap_points,
            agreement_monthly_cap_points,
            settlement_price,
            exchange_fee,
            earn_rules,
            conversion_reversal_hours: 0,
        })
    }

    /// The same terms with a reversal window: conversions may be reversed for this many hours
    /// after they complete. New terms allow no reversal.
    pub fn with_conversion_reversal_hours(mut self, hours: u32) -> Result<Self, Violations> {
        if hours > Self::MAX_REVERSAL_HOURS {
            let mut violations = Violations::new();
            violations.push(FieldViolation::new(
                "conversion_reversal_hours",
                format!(
                    "must be from 0 to {}; got {hours}",
                    Self::MAX_REVERSAL_HOURS
                ),
            ));
            return Err(violations);
        }
        self.conversion_reversal_hours = hours;
        Ok(self)
    }

    pub fn conversion_rate(&self) -> Rate {
        self.conversion_rate
    }
    pub fn minimum_source_points(&self) -> Points {
        self.minimum_source_points
    }
    pub fn increment_source_points(&self) -> Points {
        self.increment_source_points
    }
    pub fn member_daily_cap_points(&self) -> Option<Points> {
        self.member_daily_cap_points
    }
    pub fn agreement_monthly_cap_points(&self) -> Option<Points> {
        self.agreement_monthly_cap_points
    }
    pub fn settlement_price(&self) -> Price {
        self.settlement_price
    }
    pub fn exchange_fee(&self) -> BasisPoints {
        self.exchange_fee
    }
    pub fn earn_rules(&self) -> Option<&EarnRules> {
        self.earn_rules.as_ref()
    }
    pub fn conversion_reversal_hours(&self) -> u32 {
        self.conversion_reversal_hours
    }
}

/// A multiplier for members of one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierMultiplier {
    pub tier: Text<32>,
    pub multiplier: Multiplier,
}

/// A multiplier for activity inside a time window, `[starts_at, ends_at)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionWindow {
    pub name: Text<100>,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub multiplier: Multiplier,
}

/// How a member earns the target's points when spending with the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarnRules {
    points_per_spend_unit: Rate,
    spend_currency: Currency,
    tier_multipliers: Vec<TierMultiplier>,
    promotions: Vec<PromotionWindow>,
    excluded_spend_categories: Vec<Text<32>>,
    annual_spend_cap_minor: Option<i64>,
    hold_days: u32,
}

impl EarnRules {
    pub const MAX_HOLD_DAYS: u32 = 365;

    /// Joins already-valid fields, checking: tiers are distinct (two multipliers for one tier
    /// would be ambiguous), every window ends after it starts, the hold is at most a year, the
    /// annual cap is positive, and no list is longer than [`MAX_RULE_ENTRIES`].
    pub fn new(
        points_per_spend_unit: Rate,
        spend_currency: Currency,
        tier_multipliers: Vec<TierMultiplier>,
        promotions: Vec<PromotionWindow>,
        excluded_spend_categories: Vec<Text<32>>,
        annual_spend_cap_minor: Option<i64>,
        hold_days: u32,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        let mut tiers = HashSet::new();
        for (index, entry) in tier_multipliers.iter().enumerate() {
            if !tiers.insert(entry.tier.as_str()) {
                violations.push(FieldViolation::new(
                    format!("tier_multipliers[{index}].tier"),
                    format!("tier {:?} appears more than once", entry.tier.as_str()),
                ));
            }
        }
        for (index, window) in promotions.iter().enumerate() {
            if window.ends_at <= window.starts_at {
                violations.push(FieldViolation::new(
                    format!("promotions[{index}].end_time"),
                    "must be after start_time",
                ));
            }
        }
        for (field, length) in [
            ("tier_multipliers", tier_multipliers.len()),
            ("promotions", promotions.len()),
            ("excluded_spend_categories", excluded_spend_categories.len()),
        ] {
            if length > MAX_RULE_ENTRIES {
                violations.push(FieldViolation::new(
                    field,
                    format!("must have at most {MAX_RULE_ENTRIES} entries; got {length}"),
                ));
            }
        }
        if let Some(cap) = annual_spend_cap_minor.filter(|cap| *cap < 1) {
            violations.push(FieldViolation::new(
                "annual_spend_cap_minor",
                format!("must be at least 1 when set; got {cap}"),
            ));
        }
        if hold_days > Self::MAX_HOLD_DAYS {
            violations.push(FieldViolation::new(
                "hold_days",
                format!("must be from 0 to {}; got {hold_days}", Self::MAX_HOLD_DAYS),
            ));
        }
        violations.finish(|| Self {
            points_per_spend_unit,
            spend_currency,
            tier_multipliers,
            promotions,
            excluded_spend_categories,
            annual_spend_cap_minor,
            hold_days,
        })
    }

    pub fn points_per_spend_unit(&self) -> Rate {
        self.points_per_spend_unit
    }
    pub fn spend_currency(&self) -> Currency {
        self.spend_currency
    }
    pub fn tier_multipliers(&self) -> &[TierMultiplier] {
        &self.tier_multipliers
    }
    pub fn promotions(&self) -> &[PromotionWindow] {
        &self.promotions
    }
    pub fn excluded_spend_categories(&self) -> &[Text<32>] {
        &self.excluded_spend_categories
    }
    pub fn annual_spend_cap_minor(&self) -> Option<i64> {
        self.annual_spend_cap_minor
    }
    pub fn hold_days(&self) -> u32 {
        self.hold_days
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_terms() -> Terms {
        Terms::new(
            "0.25".parse().unwrap(),
            Points::positive(1000).unwrap(),
            Points::positive(100).unwrap(),
            Some(Points::positive(50_000).unwrap()),
            None,
            "0.0085".parse().unwrap(),
            BasisPoints::new(150).unwrap(),
            None,
        )
        .unwrap()
    }

    fn terms_with(
        minimum: i64,
        increment: i64,
        daily_cap: Option<i64>,
    ) -> Result<Terms, Violations> {
        Terms::new(
            "1".parse().unwrap(),
            Points::positive(minimum).unwrap(),
            Points::positive(increment).unwrap(),
            daily_cap.map(|cap| Points::positive(cap).unwrap()),
            None,
            "0.01".parse().unwrap(),
            BasisPoints::new(0).unwrap(),
            None,
        )
    }

    #[test]
    fn the_minimum_is_a_whole_number_of_increments() {
        assert!(terms_with(1000, 100, None).is_ok());
        let refused = terms_with(1050, 100, None).unwrap_err();
        assert_eq!(
            refused.iter().next().unwrap().field,
            "minimum_source_points"
        );
    }

    #[test]
    fn a_cap_below_the_minimum_is_refused() {
        let refused = terms_with(1000, 100, Some(500)).unwrap_err();
        assert_eq!(
            refused.iter().next().unwrap().field,
            "member_daily_cap_points"
        );
    }

    fn rules(tiers: &[&str], window_hours: i64, hold_days: u32) -> Result<EarnRules, Violations> {
        let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        EarnRules::new(
            "2".parse().unwrap(),
            "USD".parse().unwrap(),
            tiers
                .iter()
                .map(|tier| TierMultiplier {
                    tier: Text::parse(tier).unwrap(),
                    multiplier: "1.5".parse().unwrap(),
                })
                .collect(),
            vec![PromotionWindow {
                name: Text::parse("double points day").unwrap(),
                starts_at: start,
                ends_at: start + chrono::Duration::hours(window_hours),
                multiplier: "2".parse().unwrap(),
            }],
            vec![],
            None,
            hold_days,
        )
    }

    #[test]
    fn earn_rules_check_tiers_windows_and_hold() {
        assert!(rules(&["GOLD", "SILVER"], 24, 14).is_ok());
        let fields = |result: Result<EarnRules, Violations>| -> Vec<String> {
            result
                .unwrap_err()
                .iter()
                .map(|violation| violation.field.clone())
                .collect()
        };
        assert_eq!(
            fields(rules(&["GOLD", "GOLD"], 24, 0)),
            ["tier_multipliers[1].tier"]
        );
        assert_eq!(fields(rules(&[], 0, 0)), ["promotions[0].end_time"]);
        assert_eq!(fields(rules(&[], 1, 366)), ["hold_days"]);
    }
}
