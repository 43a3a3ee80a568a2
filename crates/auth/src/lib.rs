//! Access tokens for Tandem's gRPC services.
//!
//! Partners exchange client credentials for short-lived JWTs (`AuthService.IssueToken`); operators
//! get theirs from the CLI, which holds the signing key. Every token is signed with Ed25519
//! (`EdDSA`), names its key in `kid`, and says who calls: a [`Role`] and, for partners, the one
//! partner it acts for. Each RPC authenticates with [`Authenticator::authenticate`] and then states
//! who may call it.

mod caller;
mod grpc;
mod keys;
mod secrets;
mod service_token;
mod tokens;

pub use caller::{Caller, Role};
pub use grpc::{AuthGrpc, CredentialVerifier};
pub use keys::{KeyStore, SigningKeyInfo};
pub use secrets::{ClientCredentials, SecretHash, hash_secret, verify_secret};
pub use service_token::ServiceToken;
pub use tokens::{AuthError, Authenticator, IssuedToken, TokenSettings};

/// The migrations of the auth database (signing keys).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
