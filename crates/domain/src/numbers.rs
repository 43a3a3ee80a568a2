//! Amounts, rates and prices. Amounts are integers in minor units; rates and prices are exact
//! decimals. No floating point comes near any of them.

use std::{fmt, str::FromStr};

use rust_decimal::Decimal;

/// The most decimal places a rate, price or multiplier may carry. Twelve is far beyond any real
/// negotiated price and keeps every later multiplication far from `Decimal`'s 28-digit limit.
const MAX_DECIMAL_PLACES: u32 = 12;

/// An amount of points in the program's minor units (at its scale). Never negative: a debit is
/// a direction, not a negative amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Points(i64);

impl Points {
    pub fn new(minor_units: i64) -> Result<Self, String> {
        if minor_units < 0 {
            return Err(format!("must not be negative; got {minor_units}"));
        }
        Ok(Self(minor_units))
    }

    /// A point amount that must be at least one minor unit (minimums, increments, caps).
    pub fn positive(minor_units: i64) -> Result<Self, String> {
        if minor_units < 1 {
            return Err(format!("must be at least 1; got {minor_units}"));
        }
        Ok(Self(minor_units))
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

/// Decimal places of a program's point amounts: 0 (whole points) to 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scale(u8);

impl Scale {
    pub const MAX: u32 = 6;

    pub fn new(places: u32) -> Result<Self, String> {
        if places > Self::MAX {
            return Err(format!("must be from 0 to {}; got {places}", Self::MAX));
        }
        Ok(Self(places as u8))
    }

    pub fn places(self) -> u32 {
        u32::from(self.0)
    }
}

fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let value = Decimal::from_str_exact(text.trim())
        .map_err(|_| format!("must be a decimal number such as \"1.25\"; got {text:?}"))?;
    if value.scale() > MAX_DECIMAL_PLACES && value.normalize().scale() > MAX_DECIMAL_PLACES {
        return Err(format!(
            "must have at most {MAX_DECIMAL_PLACES} decimal places; got {text:?}"
        ));
    }
    Ok(value.normalize())
}

macro_rules! decimal_newtype {
    ($(#[$doc:meta])* $name:ident, |$value:ident| $check:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Decimal);

        impl $name {
            pub fn new($value: Decimal) -> Result<Self, String> {
                if !($check) {
                    return Err(format!(concat!("must be ", $rule, "; got {}"), $value));
                }
                Ok(Self($value.normalize()))
            }

            pub fn value(self) -> Decimal {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::new(parse_decimal(text)?)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

decimal_newtype!(
    /// Target points per source point (or per unit of spend): exact, greater than zero.
    Rate,
    |value| value > Decimal::ZERO && value <= Decimal::from(1_000_000),
    "greater than 0 and at most 1000000"
);
decimal_newtype!(
    /// Money per point in a currency's major units (0.0085 USD per point): exact, not negative.
    Price,
    |value| value >= Decimal::ZERO && value <= Decimal::from(1_000_000),
    "from 0 to 1000000"
);
decimal_newtype!(
    /// A multiplier on earned points (1.5 for a gold tier, 2 for double-points days).
    Multiplier,
    |value| value > Decimal::ZERO && value <= Decimal::from(100),
    "greater than 0 and at most 100"
);

/// A fee in hundredths of a percent: 0 to 10,000 (100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BasisPoints(u32);

impl BasisPoints {
    pub fn new(basis_points: u32) -> Result<Self, String> {
        if basis_points > 10_000 {
            return Err(format!(
                "must be from 0 to 10000 basis points; got {basis_points}"
            ));
        }
        Ok(Self(basis_points))
    }

    pub fn value(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates_must_be_positive_and_exact() {
        assert_eq!("0.25".parse::<Rate>().unwrap().to_string(), "0.25");
        assert_eq!("2.500".parse::<Rate>().unwrap().to_string(), "2.5");
        for bad in ["0", "-1", "", "abc", "1e3", "0.0000000000001", "1000001"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn prices_may_be_zero_but_not_negative() {
        assert!("0".parse::<Price>().is_ok());
        assert!("0.0085".parse::<Price>().is_ok());
        assert!("-0.01".parse::<Price>().is_err());
    }

    #[test]
    fn trailing_zeros_beyond_the_limit_are_not_precision() {
        assert_eq!(
            "1.50000000000000".parse::<Rate>().unwrap().to_string(),
            "1.5"
        );
    }

    #[test]
    fn amounts_and_fees_have_bounds() {
        assert!(Points::new(-1).is_err());
        assert!(Points::positive(0).is_err());
        assert!(Scale::new(7).is_err());
        assert!(BasisPoints::new(10_001).is_err());
        assert!(Multiplier::new(Decimal::from(101)).is_err());
    }

    proptest! {
        #[test]
        fn a_parsed_rate_prints_back_to_the_same_rate(units in 1i64..1_000_000_000, places in 0u32..=9) {
            let rate = Decimal::new(units, places);
            prop_assume!(rate <= Decimal::from(1_000_000));
            let parsed: Rate = rate.to_string().parse().unwrap();
            prop_assert_eq!(parsed.value(), rate.normalize());
            prop_assert_eq!(parsed.to_string().parse::<Rate>().unwrap(), parsed);
        }
    }
}
