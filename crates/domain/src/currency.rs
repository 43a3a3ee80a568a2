//! ISO 4217 currencies, with the exponent that fixes how many minor units make a major unit.

use std::{fmt, str::FromStr};

/// An active ISO 4217 currency, such as USD (exponent 2) or JPY (exponent 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// The three-letter code, for example "USD".
    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// Decimal places of the minor unit (2 for USD: cents). Currencies without a defined minor
    /// unit (precious metals, fund codes) are refused at parsing, so this always exists.
    pub fn exponent(&self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        let unknown = || {
            format!(
                "must be an ISO 4217 currency code with minor units, such as USD or EUR; got {code:?}"
            )
        };
        let currency = iso_currency::Currency::from_code(code).ok_or_else(unknown)?;
        // X-codes (gold, test, SDR) have no minor unit and are not money anyone settles in.
        if currency.exponent().is_none() {
            return Err(unknown());
        }
        Ok(Self(currency))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_currencies_parse_with_their_exponent() {
        assert_eq!("USD".parse::<Currency>().unwrap().exponent(), 2);
        assert_eq!("JPY".parse::<Currency>().unwrap().exponent(), 0);
        assert_eq!("BHD".parse::<Currency>().unwrap().exponent(), 3);
    }

    #[test]
    fn unknown_and_unit_less_codes_are_refused() {
        for bad in ["", "usd", "XXX", "XAU", "ABC", "US"] {
            assert!(
                bad.parse::<Currency>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
