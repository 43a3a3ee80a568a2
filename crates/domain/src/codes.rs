//! Short codes and free text, each with the rules that keep them safe to show, store and log.

use std::fmt;

fn is_control_free(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// A partner's unique short code: lower case letters, digits and dashes, 2 to 32 characters,
/// starting with a letter and not ending with a dash (`skyline-hotels`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartnerCode(String);

impl PartnerCode {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid_chars = text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let starts_with_letter = text.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        if !(2..=32).contains(&text.len())
            || !valid_chars
            || !starts_with_letter
            || text.ends_with('-')
        {
            return Err(format!(
                "must be 2 to 32 lower case letters, digits or dashes, starting with a letter and not ending with a dash; got {text:?}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartnerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A loyalty program's point currency code: upper case letters, digits and underscores, 2 to 16
/// characters, starting with a letter (`HOTEL_PTS`). It names a ledger unit, so it is unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProgramCode(String);

impl ProgramCode {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid_chars = text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let starts_with_letter = text.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if !(2..=16).contains(&text.len()) || !valid_chars || !starts_with_letter {
            return Err(format!(
                "must be 2 to 16 upper case letters, digits or underscores, starting with a letter; got {text:?}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProgramCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A short human text such as a display name or a tier: trimmed, 1 to `MAX` characters, no
/// control characters (they break logs and terminals).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let length = trimmed.chars().count();
        if length == 0 || length > MAX || !is_control_free(trimmed) {
            return Err(format!(
                "must be 1 to {MAX} characters without control characters"
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why someone changed something, kept for the record: 1 to 500 characters.
pub type Reason = Text<500>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_codes_are_slugs() {
        assert!(PartnerCode::parse("skyline-hotels").is_ok());
        assert!(PartnerCode::parse("r2").is_ok());
        for bad in [
            "",
            "a",
            "Skyline",
            "-skyline",
            "skyline-",
            "sky line",
            "9lives",
            &"a".repeat(33),
        ] {
            assert!(
                PartnerCode::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn program_codes_are_upper_case() {
        assert!(ProgramCode::parse("HOTEL_PTS").is_ok());
        for bad in [
            "",
            "H",
            "hotel_pts",
            "_PTS",
            "HOTEL-PTS",
            "A23456789012345678",
        ] {
            assert!(
                ProgramCode::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(Text::<10>::parse("  Skyline ").unwrap().as_str(), "Skyline");
        assert!(Text::<10>::parse("   ").is_err());
        assert!(Text::<3>::parse("abcd").is_err());
        assert!(Text::<10>::parse("a\nb").is_err());
        // Characters, not bytes: three accented letters fit in three.
        assert!(Text::<3>::parse("éèê").is_ok());
    }
}
