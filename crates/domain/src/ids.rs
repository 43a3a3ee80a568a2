//! Server-assigned identifiers. UUIDv7, so that ids sort by creation time and index well.

use std::{fmt, str::FromStr};

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a UUID such as 0192f0c4-8a1e-7c3a-9b5e-1d2f3a4b5c6d")]
pub struct IdParseError;

/// Whether `text` is a server-assigned id in its one spelling (a hyphenated UUID, 36
/// characters). Anything else names nothing Tandem made, so a look-up by it need not reach a
/// database (where a NUL byte, for one, is an error on PostgreSQL and a value on SQLite).
pub fn is_server_id(text: &str) -> bool {
    text.len() == 36 && Uuid::parse_str(text).is_ok()
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh id, ordered after every id made before it.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                // Only the canonical hyphenated form, so one id has exactly one spelling.
                if text.len() != 36 {
                    return Err(IdParseError);
                }
                Uuid::parse_str(text).map(Self).map_err(|_| IdParseError)
            }
        }
    };
}

uuid_id!(
    /// Identifies a partner brand.
    PartnerId
);
uuid_id!(
    /// Identifies an agreement between two partners.
    AgreementId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = PartnerId::generate();
        assert_eq!(id.to_string().parse::<PartnerId>(), Ok(id));
    }

    #[test]
    fn only_the_canonical_form_parses() {
        assert!("not-a-uuid".parse::<PartnerId>().is_err());
        assert!(
            "0192f0c48a1e7c3a9b5e1d2f3a4b5c6d"
                .parse::<PartnerId>()
                .is_err()
        );
        assert!("".parse::<AgreementId>().is_err());
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let first = AgreementId::generate();
        let second = AgreementId::generate();
        assert!(first < second);
    }
}
