//! The settlement service. Today: `LedgerService`, the gRPC edge of the double-entry ledger that
//! settlement owns. Settlement runs, statements and reconciliation build on it next.

mod ledger_grpc;

use std::sync::Arc;

use tandem_auth::Authenticator;
use tandem_ledger::{Ledger, LedgerOptions};
use tandem_proto::v1::ledger_service_server::LedgerServiceServer;
use tandem_storage::{Database, Location, StorageError};

pub use ledger_grpc::LedgerGrpc;

/// Opens (and migrates) settlement's own database, which holds the ledger.
pub async fn open_database(location: &Location) -> Result<Database, StorageError> {
    Database::open(location, "settlement", &tandem_ledger::MIGRATOR).await
}

/// Settlement's gRPC service over its database, the ledger tuned for the database's backend.
pub fn service(
    database: Database,
    authenticator: Arc<Authenticator>,
) -> LedgerServiceServer<LedgerGrpc> {
    let ledger = Ledger::new(
        database.clone(),
        LedgerOptions::for_backend(database.backend()),
    );
    LedgerServiceServer::new(LedgerGrpc::new(ledger, authenticator))
}
