//! The exchange: quotes, conversions and cross-brand earning.
//!
//! Points live in each brand's own loyalty system, so the exchange moves them by calling the
//! partners' gateways, and records who owes whom in the ledger. Each conversion and each earning
//! is a saga whose whole state is a row in the exchange's database, written before any partner is
//! called. Every call carries a key derived from the row's id, so asking again is harmless; a
//! crash leaves a row that the recovery worker picks up and finishes. Whoever drives a saga holds
//! a lease on its row, so two processes never drive one saga at once.

mod batch;
mod conversions;
mod earn;
mod error;
mod failpoint;
mod grpc;
mod peers;
pub mod pricing;
mod rows;
mod saga;
mod store;
mod worker;
mod writes;

use std::time::Duration;

use tandem_auth::{Caller, Role};
use tandem_storage::Database;

pub use error::ExchangeError;
pub use grpc::ExchangeGrpc;
pub use peers::Peers;
pub use worker::run_recovery;

/// The exchange database's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the exchange behaves; the defaults suit production.
#[derive(Debug, Clone)]
pub struct ExchangeOptions {
    /// How long a quote can be executed.
    pub quote_lifetime: Duration,
    /// How long a driver owns a saga before another may take it over. Longer than the slowest
    /// step (a gateway call times out after 5 s), short enough that a crash is recovered soon.
    pub saga_lease: Duration,
    /// How often the recovery worker looks for sagas to resume.
    pub recovery_interval: Duration,
}

impl Default for ExchangeOptions {
    fn default() -> Self {
        Self {
            quote_lifetime: Duration::from_secs(5 * 60),
            saga_lease: Duration::from_secs(30),
            recovery_interval: Duration::from_secs(1),
        }
    }
}

/// The exchange's logic, over its database and its peers.
#[derive(Clone, Debug)]
pub struct Exchange {
    database: Database,
    /// Connections of the exchange's own whose plans go by key (`Database::keyed`): the writer's,
    /// and the recovery worker's look for due sagas.
    keyed: Database,
    peers: Peers,
    options: ExchangeOptions,
    writers: writes::Writers,
    recent_quotes: conversions::RecentQuotes,
}

impl Exchange {
    /// The exchange over `database` (migrated with [`MIGRATOR`]); starts its batched writers,
    /// so it must be built inside a Tokio runtime.
    pub fn new(database: Database, peers: Peers, options: ExchangeOptions) -> Self {
        let keyed = database.keyed(2);
        Self {
            writers: writes::Writers::start(&keyed),
            keyed,
            recent_quotes: conversions::RecentQuotes::default(),
            database,
            peers,
            options,
        }
    }
}

/// How full PostgreSQL fills each page of `earnings` and `conversions`, in percent. The rest is
/// kept for the writes that follow a row's insert: an earning's end and a conversion's steps
/// change no indexed column (see migration 0002 and `writes::update_conversions`), so with room
/// on the row's own page each is a heap-only update that touches no index. A page holds about
/// fifteen earnings; at half full, every earning on it can end there.
const SAGA_TABLES_FILLFACTOR: &[(&str, u32)] = &[("earnings", 50), ("conversions", 50)];

/// Storage settings the shared migrations cannot carry, since SQLite has no such thing: on
/// PostgreSQL, the room the saga tables keep on each page ([`SAGA_TABLES_FILLFACTOR`]). Run
/// after opening the exchange's database. A table is altered only when its setting is missing:
/// `ALTER TABLE` waits for any vacuum of the table, and a start should not.
pub async fn prepare_database(database: &Database) -> Result<(), sqlx::Error> {
    if database.backend() != tandem_storage::Backend::Postgres {
        return Ok(());
    }
    for (table, fillfactor) in SAGA_TABLES_FILLFACTOR {
        let setting = format!("fillfactor={fillfactor}");
        let already: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_class WHERE oid = CAST($1 AS regclass) \
             AND $2 = ANY(COALESCE(reloptions, CAST('{}' AS TEXT[])))",
        )
        .bind(table)
        .bind(&setting)
        .fetch_one(database.pool())
        .await?;
        if already == 0 {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} SET (fillfactor = {fillfactor})"
            )))
            .execute(database.pool())
            .await?;
        }
    }
    Ok(())
}

/// The caller's own partner id, when it is a partner acting for `partner_id`.
pub(crate) fn require_partner(caller: &Caller, partner_id: &str) -> Result<(), ExchangeError> {
    match caller.partner_id() {
        Some(own) if caller.role() == Role::Partner && own.to_string() == partner_id => Ok(()),
        _ if caller.role() == Role::Partner => Err(ExchangeError::PermissionDenied(
            "a partner may act only for itself: partner_id must be your own",
        )),
        _ => Err(ExchangeError::PermissionDenied(
            "only the partner itself may do this",
        )),
    }
}

pub(crate) fn is_staff(caller: &Caller) -> bool {
    caller.is_any(&[Role::Ops, Role::Service])
}

/// The partner id a partner caller acts for, as text.
pub(crate) fn own_partner(caller: &Caller) -> Option<String> {
    caller
        .partner_id()
        .filter(|_| caller.role() == Role::Partner)
        .map(|id| id.to_string())
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn now_micros() -> i64 {
    tandem_domain::to_unix_micros(tandem_domain::now())
}
