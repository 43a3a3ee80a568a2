//! Identifiers that partners choose: their members' ids, the external ids of what they report,
//! and the idempotency keys of their calls. One rule each, used by every service at its edge, so
//! a value refused by one service is refused the same way by all, on SQLite and PostgreSQL alike,
//! before any database sees it: printable ASCII without spaces, so no NUL byte, control
//! character, trailing new line or look-alike character ever reaches storage or a log line.

use std::fmt;

/// Whether `text` is 1 to `max` printable ASCII characters without spaces: the rule of every
/// identifier a caller chooses (client ids and secrets too).
pub fn is_printable_identifier(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_graphic())
}

macro_rules! partner_identifier {
    ($(#[$doc:meta])* $name:ident, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The most characters it may have.
            pub const MAX_LENGTH: usize = $max;

            pub fn parse(text: &str) -> Result<Self, String> {
                if !is_printable_identifier(text, $max) {
                    return Err(format!(
                        "must be 1 to {} printable ASCII characters without spaces",
                        $max
                    ));
                }
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

partner_identifier!(
    /// A partner's own identifier for one of its members.
    MemberId,
    128
);
partner_identifier!(
    /// A partner's own identifier for something it reports, such as a ride or a stay.
    ExternalId,
    200
);
partner_identifier!(
    /// The key a caller gives a request so that a retry is recognised as the same request.
    IdempotencyKey,
    200
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn member_ids_are_printable_and_bounded() {
        assert!(MemberId::parse("member-42").is_ok());
        assert!(MemberId::parse(&"x".repeat(128)).is_ok());
        for bad in [
            "",
            "a b",
            "R 77",
            "R-77\n",
            "R\u{0}77",
            "R\u{7}77",
            "Ré-77",
            &"x".repeat(129),
        ] {
            assert!(MemberId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn keys_and_external_ids_allow_200_characters() {
        assert!(IdempotencyKey::parse(&"k".repeat(200)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(201)).is_err());
        assert!(ExternalId::parse("ride-2024/05/01#17").is_ok());
        assert!(ExternalId::parse("ride\u{0}").is_err());
    }

    proptest! {
        /// The three rules differ only in length: a text short enough for all three is accepted
        /// by one exactly when it is accepted by every other.
        #[test]
        fn one_rule_for_every_identifier(text in "\\PC{0,130}|[ -~]{0,130}") {
            let member = MemberId::parse(&text).is_ok();
            prop_assert_eq!(member, ExternalId::parse(&text).is_ok() && text.len() <= 128);
            prop_assert_eq!(ExternalId::parse(&text).is_ok(), IdempotencyKey::parse(&text).is_ok());
            if member {
                prop_assert!(text.bytes().all(|byte| byte.is_ascii_graphic()));
            }
        }
    }
}
