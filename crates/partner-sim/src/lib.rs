//! `partner-sim`: a reference partner. A small but real loyalty program (members, balances,
//! standing) that implements `PartnerGatewayService` the way Tandem needs every partner to:
//! idempotent by transaction key, a definite outcome for everything it answers, and reversals
//! that hold even when they arrive before the operation they undo. It verifies Tandem's token
//! against the keys Tandem publishes. For tests, faults can be switched on per RPC.
//!
//! It is the demo's hotel and rideshare, and the first thing a partner's engineers should read.

mod auth;
mod faults;
mod grpc;
mod wallets;

pub use auth::TandemVerifier;
pub use faults::Faults;
pub use grpc::{GatewayGrpc, SimControlGrpc};
pub use wallets::{Move, Movement, Operation, Outcome, Refusal, ReportedMovement, Wallets};

/// The wallet database's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
