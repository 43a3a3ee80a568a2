//! The stored form of agreement terms: a JSON document with decimals as strings. Private to the
//! registry's storage; it converts to and from the domain's `Terms`, re-validating on the way in
//! so a damaged row is caught rather than trusted.

use serde::{Deserialize, Serialize};
use tandem_domain::{
    BasisPoints, EarnRules, Points, PromotionWindow, Terms, Text, TierMultiplier, from_unix_micros,
    to_unix_micros,
};

#[derive(Serialize, Deserialize)]
pub(crate) struct TermsDocument {
    conversion_rate: String,
    minimum_source_points: i64,
    increment_source_points: i64,
    member_daily_cap_points: Option<i64>,
    agreement_monthly_cap_points: Option<i64>,
    settlement_price: String,
    exchange_fee_basis_points: u32,
    earn_rules: Option<EarnRulesDocument>,
    /// Absent from documents stored before reversal windows existed: those allow no reversal.
    #[serde(default)]
    conversion_reversal_hours: u32,
}

#[derive(Serialize, Deserialize)]
struct EarnRulesDocument {
    points_per_spend_unit: String,
    spend_currency: String,
    tier_multipliers: Vec<(String, String)>,
    promotions: Vec<PromotionDocument>,
    excluded_spend_categories: Vec<String>,
    annual_spend_cap_minor: Option<i64>,
    hold_days: u32,
}

#[derive(Serialize, Deserialize)]
struct PromotionDocument {
    name: String,
    starts_at_micros: i64,
    ends_at_micros: i64,
    multiplier: String,
}

impl From<&Terms> for TermsDocument {
    fn from(terms: &Terms) -> Self {
        Self {
            conversion_rate: terms.conversion_rate().to_string(),
            minimum_source_points: terms.minimum_source_points().minor_units(),
            increment_source_points: terms.increment_source_points().minor_units(),
            member_daily_cap_points: terms.member_daily_cap_points().map(Points::minor_units),
            agreement_monthly_cap_points: terms
                .agreement_monthly_cap_points()
                .map(Points::minor_units),
            settlement_price: terms.settlement_price().to_string(),
            exchange_fee_basis_points: terms.exchange_fee().value(),
            earn_rules: terms.earn_rules().map(|rules| EarnRulesDocument {
                points_per_spend_unit: rules.points_per_spend_unit().to_string(),
                spend_currency: rules.spend_currency().code().to_owned(),
                tier_multipliers: rules
                    .tier_multipliers()
                    .iter()
                    .map(|entry| (entry.tier.to_string(), entry.multiplier.to_string()))
                    .collect(),
                promotions: rules
                    .promotions()
                    .iter()
                    .map(|window| PromotionDocument {
                        name: window.name.to_string(),
                        starts_at_micros: to_unix_micros(window.starts_at),
                        ends_at_micros: to_unix_micros(window.ends_at),
                        multiplier: window.multiplier.to_string(),
                    })
                    .collect(),
                excluded_spend_categories: rules
                    .excluded_spend_categories()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                annual_spend_cap_minor: rules.annual_spend_cap_minor(),
                hold_days: rules.hold_days(),
            }),
            conversion_reversal_hours: terms.conversion_reversal_hours(),
        }
    }
}

impl TermsDocument {
    pub(crate) fn into_terms(self) -> Result<Terms, String> {
        let earn_rules = self
            .earn_rules
            .map(EarnRulesDocument::into_rules)
            .transpose()?;
        Terms::new(
            self.conversion_rate.parse()?,
            Points::positive(self.minimum_source_points)?,
            Points::positive(self.increment_source_points)?,
            self.member_daily_cap_points
                .map(Points::positive)
                .transpose()?,
            self.agreement_monthly_cap_points
                .map(Points::positive)
                .transpose()?,
            self.settlement_price.parse()?,
            BasisPoints::new(self.exchange_fee_basis_points)?,
            earn_rules,
        )
        .and_then(|terms| terms.with_conversion_reversal_hours(self.conversion_reversal_hours))
        .map_err(|violations| violations.to_string())
    }
}

impl EarnRulesDocument {
    fn into_rules(self) -> Result<EarnRules, String> {
        let tier_multipliers = self
            .tier_multipliers
            .into_iter()
            .map(|(tier, multiplier)| {
                Ok(TierMultiplier {
                    tier: Text::parse(&tier)?,
                    multiplier: multiplier.parse()?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let promotions = self
            .promotions
            .into_iter()
            .map(|window| {
                Ok(PromotionWindow {
                    name: Text::parse(&window.name)?,
                    starts_at: from_unix_micros(window.starts_at_micros),
                    ends_at: from_unix_micros(window.ends_at_micros),
                    multiplier: window.multiplier.parse()?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let excluded = self
            .excluded_spend_categories
            .iter()
            .map(|category| Text::parse(category))
            .collect::<Result<Vec<_>, String>>()?;
        EarnRules::new(
            self.points_per_spend_unit.parse()?,
            self.spend_currency.parse()?,
            tier_multipliers,
            promotions,
            excluded,
            self.annual_spend_cap_minor,
            self.hold_days,
        )
        .map_err(|violations| violations.to_string())
    }
}
