//! The settlement service: `LedgerService`, the gRPC edge of the double-entry ledger that
//! settlement owns, and `SettlementService`, where operations staff read accounts and partners'
//! positions, post adjustments (with a second ops user's approval above a threshold) and read the
//! audit trail of everything ops did.

mod adjustments;
mod audit;
mod error;
mod ledger_grpc;
mod netting;
mod positions;
mod reconciliation;
mod reconciliation_pb;
mod reports;
mod runs;
mod runs_pb;
mod settlement_grpc;

use std::sync::Arc;

use tandem_auth::Authenticator;
use tandem_ledger::{Ledger, LedgerOptions};
use tandem_proto::v1::{
    ledger_service_server::LedgerServiceServer, settlement_service_server::SettlementServiceServer,
};
use tandem_storage::{Database, Location, StorageError};

pub use adjustments::{Adjustment, AdjustmentStatus, NewAdjustment};
pub use audit::{AuditEvent, AuditFilter};
pub use error::SettlementError;
pub use ledger_grpc::LedgerGrpc;
pub use positions::Position;
pub use reconciliation::{
    Discrepancy, DiscrepancyClass, PartnerRecord, RECORD_KINDS, Reconciliation, ReportHeader,
};
pub use reports::ProgramLiability;
pub use runs::{KindTotals, NewRun, RunStatus, RunSummary, SettlementRun, StatementLine};
pub use settlement_grpc::SettlementGrpc;

/// How settlement behaves; the defaults suit a small coalition.
#[derive(Debug, Clone)]
pub struct SettlementOptions {
    /// An adjustment that moves more than this, in the minor units of any one unit, waits for a
    /// second ops user's approval before it posts.
    pub adjustment_approval_threshold_minor: i64,
    /// How long one request owns the posting of an adjustment before another (a retry, the
    /// recovery loop) may take it over: far longer than a ledger post takes, short enough that
    /// what a crash interrupted is finished soon.
    pub posting_lease: std::time::Duration,
}

impl Default for SettlementOptions {
    fn default() -> Self {
        Self {
            // $1,000.00, or 100,000 points of a program without decimals.
            adjustment_approval_threshold_minor: 100_000,
            posting_lease: std::time::Duration::from_secs(30),
        }
    }
}

/// Settlement's logic, over its database and the ledger in it.
#[derive(Debug, Clone)]
pub struct Settlement {
    database: Database,
    ledger: Ledger,
    options: SettlementOptions,
}

impl Settlement {
    pub fn new(database: Database, ledger: Ledger, options: SettlementOptions) -> Self {
        Self {
            database,
            ledger,
            options,
        }
    }
}

/// The migrations of settlement's own tables (adjustments, the audit trail). They live in the
/// same database as the ledger's, tracked in a table of their own so the two sets never clash.
fn settlement_migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_settlement_migrations");
    migrator
}

/// Opens (and migrates) settlement's own database, which holds the ledger.
pub async fn open_database(location: &Location) -> Result<Database, StorageError> {
    let database = Database::open(location, "settlement", &tandem_ledger::MIGRATOR).await?;
    settlement_migrator()
        .run(database.pool())
        .await
        .map_err(|source| StorageError::Migrate {
            service: "settlement",
            source,
        })?;
    Ok(database)
}

/// Settlement's two gRPC services over its database, sharing one ledger tuned for the
/// database's backend.
pub struct Services {
    pub ledger: LedgerServiceServer<LedgerGrpc>,
    pub settlement: SettlementServiceServer<SettlementGrpc>,
    /// The logic, for the start-up job that finishes adjustments a crash left POSTING.
    pub logic: Settlement,
}

/// Builds settlement's services over `database` (opened with [`open_database`]).
pub fn services(
    database: Database,
    authenticator: Arc<Authenticator>,
    options: SettlementOptions,
) -> Services {
    let ledger = Ledger::new(
        database.clone(),
        LedgerOptions::for_backend(database.backend()),
    );
    let logic = Settlement::new(database, ledger.clone(), options);
    Services {
        ledger: LedgerServiceServer::new(LedgerGrpc::new(ledger, authenticator.clone())),
        settlement: SettlementServiceServer::new(SettlementGrpc::new(logic.clone(), authenticator)),
        logic,
    }
}
