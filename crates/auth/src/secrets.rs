//! Client credentials: generated at random, shown once, stored only as an Argon2id hash.

use std::sync::OnceLock;

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// A freshly generated client id and secret. The secret exists in clear only here, on its way
/// to the caller who asked for it.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

impl ClientCredentials {
    /// A new client id ("tc_" and 128 random bits) and secret ("ts_" and 256 random bits).
    pub fn generate() -> Self {
        Self {
            client_id: format!("tc_{}", random_text::<16>()),
            client_secret: format!("ts_{}", random_text::<32>()),
        }
    }
}

fn random_text<const BYTES: usize>() -> String {
    let mut bytes = [0u8; BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An Argon2id hash in PHC string form (salt and parameters included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(pub String);

/// Hashes a secret with Argon2id at the crate's default cost. Slow by design (tens of
/// milliseconds): call it off the async executor, as `spawn_blocking` does.
pub fn hash_secret(secret: &str) -> SecretHash {
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any input");
    SecretHash(hash.to_string())
}

/// Whether `secret` matches `hash`. With `None` (an unknown client id) it still spends the time
/// of one verification, so response times do not tell which client ids exist.
pub fn verify_secret(secret: &str, hash: Option<&SecretHash>) -> bool {
    static DECOY: OnceLock<SecretHash> = OnceLock::new();
    let (hash, is_decoy) = match hash {
        Some(hash) => (hash, false),
        None => (
            DECOY.get_or_init(|| hash_secret("decoy secret that matches nothing")),
            true,
        ),
    };
    let Ok(parsed) = PasswordHash::new(&hash.0) else {
        return false;
    };
    Argon2::default()
        .verify_password(secret.as_bytes(), &parsed)
        .is_ok()
        && !is_decoy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_verifies_against_its_own_hash_only() {
        let credentials = ClientCredentials::generate();
        let hash = hash_secret(&credentials.client_secret);
        assert!(!hash.0.contains(&credentials.client_secret));
        assert!(verify_secret(&credentials.client_secret, Some(&hash)));
        assert!(!verify_secret("ts_wrong", Some(&hash)));
        assert!(!verify_secret(&credentials.client_secret, None));
    }

    #[test]
    fn generated_credentials_are_distinct_and_redacted_in_debug() {
        let (first, second) = (ClientCredentials::generate(), ClientCredentials::generate());
        assert_ne!(first.client_id, second.client_id);
        assert_ne!(first.client_secret, second.client_secret);
        assert!(!format!("{first:?}").contains(&first.client_secret));
    }
}
