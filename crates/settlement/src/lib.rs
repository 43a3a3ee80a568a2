//! The settlement service. Today: `LedgerService`, the gRPC edge of the double-entry ledger that
//! settlement owns. Settlement runs, statements and reconciliation build on it next.

mod ledger_grpc;

pub use ledger_grpc::LedgerGrpc;
