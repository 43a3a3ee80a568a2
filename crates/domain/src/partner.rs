//! Partners: brands in the coalition, each with one loyalty program.

use std::{fmt, str::FromStr};

use crate::{Currency, PartnerCode, PartnerId, ProgramCode, Scale, Text, Timestamp};

/// A partner's line of business. Agreements join only different categories, so the coalition
/// never joins competitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Hotel,
    Rideshare,
    Airline,
    Retail,
    Dining,
    Grocery,
    CarRental,
    Fuel,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Hotel,
        Category::Rideshare,
        Category::Airline,
        Category::Retail,
        Category::Dining,
        Category::Grocery,
        Category::CarRental,
        Category::Fuel,
    ];

    /// The stored and displayed name, for example "HOTEL".
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Hotel => "HOTEL",
            Category::Rideshare => "RIDESHARE",
            Category::Airline => "AIRLINE",
            Category::Retail => "RETAIL",
            Category::Dining => "DINING",
            Category::Grocery => "GROCERY",
            Category::CarRental => "CAR_RENTAL",
            Category::Fuel => "FUEL",
        }
    }
}

impl FromStr for Category {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|category| category.as_str() == text)
            .ok_or_else(|| format!("unknown category {text:?}"))
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a partner stands in the coalition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartnerStatus {
    Active,
    Suspended,
    Offboarded,
}

impl PartnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PartnerStatus::Active => "ACTIVE",
            PartnerStatus::Suspended => "SUSPENDED",
            PartnerStatus::Offboarded => "OFFBOARDED",
        }
    }

    /// The status after suspending, or why a partner in this status cannot be suspended.
    pub fn suspend(self) -> Result<PartnerStatus, String> {
        match self {
            PartnerStatus::Active => Ok(PartnerStatus::Suspended),
            other => Err(format!(
                "only an ACTIVE partner can be suspended; this one is {}",
                other.as_str()
            )),
        }
    }

    /// The status after reactivating, or why a partner in this status cannot be reactivated.
    pub fn reactivate(self) -> Result<PartnerStatus, String> {
        match self {
            PartnerStatus::Suspended => Ok(PartnerStatus::Active),
            other => Err(format!(
                "only a SUSPENDED partner can be reactivated; this one is {}",
                other.as_str()
            )),
        }
    }

    /// The status after offboarding, which is final.
    pub fn offboard(self) -> Result<PartnerStatus, String> {
        match self {
            PartnerStatus::Active | PartnerStatus::Suspended => Ok(PartnerStatus::Offboarded),
            PartnerStatus::Offboarded => Err("the partner is already OFFBOARDED".to_owned()),
        }
    }
}

impl FromStr for PartnerStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            PartnerStatus::Active,
            PartnerStatus::Suspended,
            PartnerStatus::Offboarded,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
        .ok_or_else(|| format!("unknown partner status {text:?}"))
    }
}

/// A partner's loyalty currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub code: ProgramCode,
    pub name: Text<100>,
    pub scale: Scale,
}

/// Where a partner's gateway listens: an absolute http:// or https:// URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEndpoint(String);

impl GatewayEndpoint {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"));
        let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        let valid = text.len() <= 500
            && host.is_some_and(|host| !host.is_empty() && !host.starts_with(':'))
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(format!(
                "must be an http:// or https:// URL with a host, at most 500 characters; got {text:?}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A brand in the coalition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    pub id: PartnerId,
    pub code: PartnerCode,
    pub display_name: Text<100>,
    pub category: Category,
    pub program: Program,
    pub settlement_currency: Currency,
    pub gateway_endpoint: Option<GatewayEndpoint>,
    pub status: PartnerStatus,
    pub status_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip() {
        for category in Category::ALL {
            assert_eq!(category.as_str().parse::<Category>(), Ok(category));
        }
        assert!("SPACESHIP".parse::<Category>().is_err());
    }

    #[test]
    fn status_transitions_follow_the_lifecycle() {
        assert_eq!(
            PartnerStatus::Active.suspend(),
            Ok(PartnerStatus::Suspended)
        );
        assert_eq!(
            PartnerStatus::Suspended.reactivate(),
            Ok(PartnerStatus::Active)
        );
        assert_eq!(
            PartnerStatus::Suspended.offboard(),
            Ok(PartnerStatus::Offboarded)
        );
        assert!(PartnerStatus::Suspended.suspend().is_err());
        assert!(PartnerStatus::Active.reactivate().is_err());
        assert!(PartnerStatus::Offboarded.reactivate().is_err());
        assert!(PartnerStatus::Offboarded.offboard().is_err());
    }

    #[test]
    fn gateway_endpoints_are_http_urls() {
        assert!(GatewayEndpoint::parse("https://gateway.skyline.example:443").is_ok());
        assert!(GatewayEndpoint::parse("http://127.0.0.1:7001/").is_ok());
        for bad in [
            "",
            "gateway.example",
            "ftp://x",
            "https://",
            "https://:443",
            "https://a b",
        ] {
            assert!(
                GatewayEndpoint::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
