//! Linking's vocabulary.

use std::fmt;

use tandem_domain::{Category, PartnerId, Timestamp};

pub use tandem_domain::MemberId;

/// The characters of a code: no 0/O or 1/I, so a customer can read it off a screen and type it.
const CODE_ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
pub(crate) const HANDLE_LENGTH: usize = 4;
pub(crate) const SECRET_LENGTH: usize = 6;

/// A one-time code: a public handle naming the request, and a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCode {
    pub handle: String,
    pub secret: String,
}

impl LinkCode {
    pub fn generate() -> Self {
        let mut bytes = [0u8; HANDLE_LENGTH + SECRET_LENGTH];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        let text: String = bytes
            .iter()
            .map(|byte| CODE_ALPHABET[usize::from(byte % 32)] as char)
            .collect();
        Self {
            handle: text[..HANDLE_LENGTH].to_owned(),
            secret: text[HANDLE_LENGTH..].to_owned(),
        }
    }

    /// Reads a code as a customer typed it: case, spaces and dashes do not matter.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cleaned: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let valid = cleaned.len() == HANDLE_LENGTH + SECRET_LENGTH
            && cleaned.bytes().all(|byte| CODE_ALPHABET.contains(&byte));
        if !valid {
            return Err("must be a link code such as K7QF-9XM2TR".to_owned());
        }
        Ok(Self {
            handle: cleaned[..HANDLE_LENGTH].to_owned(),
            secret: cleaned[HANDLE_LENGTH..].to_owned(),
        })
    }
}

impl fmt::Display for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.handle, self.secret)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    Active,
    Ended,
}

/// One brand's side of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSide {
    pub partner: PartnerId,
    pub member: MemberId,
    pub category: Category,
}

/// One entry of a link's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub kind: String,
    pub actor_partner: Option<PartnerId>,
    pub actor: String,
    pub reason: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: String,
    pub initiator: LinkSide,
    pub acceptor: LinkSide,
    pub status: LinkStatus,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub events: Vec<LinkEvent>,
}

impl Link {
    pub fn involves(&self, partner: PartnerId) -> bool {
        self.initiator.partner == partner || self.acceptor.partner == partner
    }
}

/// A partner's rules for its members' links.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkPolicy {
    pub allow_multiple_accounts_per_partner: bool,
    pub exclusive_categories: Vec<Category>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_however_they_are_typed() {
        let code = LinkCode::generate();
        let shown = code.to_string();
        assert_eq!(shown.len(), HANDLE_LENGTH + SECRET_LENGTH + 1);
        assert_eq!(LinkCode::parse(&shown), Ok(code.clone()));
        assert_eq!(
            LinkCode::parse(&shown.to_lowercase().replace('-', " ")),
            Ok(code)
        );
        for bad in [
            "",
            "K7QF-9XM2T",
            "K7QF-9XM2TRR",
            "K0QF-9XM2TR",
            "K7QF-9XM2T!",
        ] {
            assert!(LinkCode::parse(bad).is_err(), "{bad:?}");
        }
    }
}
