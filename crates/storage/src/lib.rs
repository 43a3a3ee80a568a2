//! One storage code path for both backends. Services write portable SQL (`$1` placeholders,
//! TEXT and BIGINT columns, timestamps as Unix microseconds) against an [`sqlx::AnyPool`]:
//! SQLite is the zero-configuration default, PostgreSQL is production.
//!
//! Each service owns its own database: a SQLite file per service under the data directory, or a
//! schema per service on PostgreSQL, each with its own migrations.

mod errors;
mod json_rows;
mod page;
pub mod test_pause;
#[cfg(feature = "testing")]
pub mod testing;

use std::{path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    AnyPool, Executor,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::Migrator,
};

pub use errors::{is_pool_exhausted, is_retryable_conflict, violates_unique};
pub use json_rows::{ColumnType, JsonRows};
pub use page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageCursor, PageRequest};

/// `count` numbered placeholders from `first`: `$3, $4, $5`.
pub fn placeholders(count: usize, first: usize) -> String {
    let mut text = String::with_capacity(count * 5);
    for index in first..first + count {
        if index > first {
            text.push_str(", ");
        }
        text.push('$');
        text.push_str(&index.to_string());
    }
    text
}

/// Placeholders for a multi-row `VALUES`: `rows` rows of `columns` each, numbered from `first`,
/// as in `($1, $2), ($3, $4)`. Multi-row statements are how batches reach the database in a
/// few round trips instead of one per row.
pub fn row_placeholders(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholders(columns, first + row * columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why some statements are sent with `.persistent(false)`: a batch statement (a multi-row
/// `UPDATE … FROM (VALUES …)`, a look-up of many keys with `IN (…)`) is planned afresh each
/// time on PostgreSQL, with the table as it is now. A prepared statement's cached generic plan
/// is made once, often while the table is still small, and a sequential scan that was right for
/// ten rows stays chosen for ten million wherever statistics are not refreshed.
pub const REPLANNED: bool = false;

/// Where the services keep their data.
#[derive(Debug, Clone)]
pub enum Location {
    /// One SQLite file per service in this directory, created if missing.
    SqliteDirectory(PathBuf),
    /// A PostgreSQL database; each service uses its own schema in it.
    Postgres(SecretString),
}

impl Location {
    /// `postgres://` and `postgresql://` URLs select PostgreSQL; anything else is refused so a
    /// typo never silently falls back to a local file.
    pub fn from_url_or_directory(
        url: Option<SecretString>,
        directory: PathBuf,
    ) -> Result<Self, String> {
        match url {
            None => Ok(Location::SqliteDirectory(directory)),
            Some(url) => {
                let text = url.expose_secret();
                if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                    Ok(Location::Postgres(url))
                } else {
                    Err("the database URL must start with postgres:// or postgresql://; leave it unset for the embedded SQLite default".to_owned())
                }
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Location::SqliteDirectory(_) => Backend::Sqlite,
            Location::Postgres(_) => Backend::Postgres,
        }
    }

    /// A description safe for logs: the directory, or "postgres" without the URL's secrets.
    pub fn describe(&self) -> String {
        match self {
            Location::SqliteDirectory(directory) => format!("sqlite in {}", directory.display()),
            Location::Postgres(_) => "postgres".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a connection talks to, for code that holds a connection rather than the
    /// [`Database`] it came from.
    pub fn of(connection: &sqlx::AnyConnection) -> Backend {
        if connection.backend_name().eq_ignore_ascii_case("sqlite") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to the {service} database: {source}")]
    Connect {
        service: &'static str,
        source: sqlx::Error,
    },
    #[error("cannot migrate the {service} database: {source}")]
    Migrate {
        service: &'static str,
        source: sqlx::migrate::MigrateError,
    },
}

/// A service's connection pool, knowing which backend it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// The service's schema, on PostgreSQL.
    schema: Option<&'static str>,
}

impl Database {
    /// Opens `service`'s database at `location` and applies its migrations.
    pub async fn open(
        location: &Location,
        service: &'static str,
        migrator: &Migrator,
    ) -> Result<Self, StorageError> {
        install_default_drivers();
        let database = match location {
            Location::SqliteDirectory(directory) => open_sqlite(directory, service).await?,
            Location::Postgres(url) => open_postgres(url, service).await?,
        };
        migrator
            .run(&database.pool)
            .await
            .map_err(|source| StorageError::Migrate { service, source })?;
        tracing::debug!(service, backend = ?database.backend, "database ready");
        Ok(database)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later can fail
    /// with "database is locked" without waiting, where an immediate one waits its turn.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// A small pool of its own, for a batch writer whose statements all find their rows by key
    /// (a primary key, a unique key, `IN` a list of keys, a join on the key to a list of rows).
    /// On PostgreSQL its sessions plan every statement as index look-ups, one row of the list
    /// at a time (no sequential scans, no hash or merge joins): a prepared statement's cached
    /// generic plan is made once, often while the table is still small, and a scan that was
    /// right for ten rows would otherwise stay chosen for ten million wherever statistics are
    /// not refreshed. On SQLite, with its one writer, it is the same pool. Connections open on
    /// first use.
    pub fn keyed(&self, connections: u32) -> Database {
        let Some(schema) = self.schema else {
            return self.clone();
        };
        let pool = pool_options(connections)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    connection
                        .execute(sqlx::AssertSqlSafe(format!(
                            "SET search_path TO \"{schema}\"; SET enable_seqscan = off; \
                             SET enable_hashjoin = off; SET enable_mergejoin = off"
                        )))
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with((*self.pool.connect_options()).clone());
        Database {
            pool,
            backend: self.backend,
            schema: self.schema,
        }
    }

    /// Whether the database answers a trivial query: what health checks report.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A connection idle for this long is checked before it is handed out.
const IDLE_BEFORE_CHECK: Duration = Duration::from_secs(30);

/// Pool settings every Tandem pool shares. A connection is checked (a round trip) before use only
/// when it has sat idle a while, when a restarted server or a dropped network is likely to have
/// broken it; sqlx's default checks every connection on every acquire, which doubled the round
/// trips of every statement a busy service sends.
fn pool_options(max_connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= IDLE_BEFORE_CHECK {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
}

async fn open_sqlite(
    directory: &std::path::Path,
    service: &'static str,
) -> Result<Database, StorageError> {
    std::fs::create_dir_all(directory).map_err(|source| StorageError::DataDirectory {
        path: directory.to_owned(),
        source,
    })?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        directory.join(format!("{service}.db")).display()
    );
    // SQLite has one writer at a time; a few connections serve concurrent readers.
    let pool = pool_options(8)
        .after_connect(|connection, _| {
            Box::pin(async move {
                // WAL lets readers proceed during a write; synchronous=FULL makes every commit
                // durable before it is acknowledged, as money and points require.
                connection
                    .execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                    .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|source| StorageError::Connect { service, source })?;
    Ok(Database {
        pool,
        backend: Backend::Sqlite,
        schema: None,
    })
}

/// Connections each service keeps to PostgreSQL. `tandem serve` runs five services and a partner
/// gateway often shares the server, so this stays well inside PostgreSQL's default limit of 100
/// connections; past it, requests queue for a connection instead of failing to connect. Work is
/// bounded by commits, which the busy services batch, not by connections.
const POSTGRES_CONNECTIONS_PER_SERVICE: u32 = 10;

async fn open_postgres(
    url: &SecretString,
    service: &'static str,
) -> Result<Database, StorageError> {
    // Service names are fixed identifiers in our code, never user input, so quoting them into
    // the statements below is safe.
    let create_schema = format!("CREATE SCHEMA IF NOT EXISTS \"{service}\"");
    let setup = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url.expose_secret())
        .await
        .map_err(|source| StorageError::Connect { service, source })?;
    setup
        .execute(sqlx::AssertSqlSafe(create_schema))
        .await
        .map_err(|source| StorageError::Connect { service, source })?;
    setup.close().await;

    let pool = pool_options(POSTGRES_CONNECTIONS_PER_SERVICE)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                connection
                    .execute(sqlx::AssertSqlSafe(format!(
                        "SET search_path TO \"{service}\""
                    )))
                    .await?;
                Ok(())
            })
        })
        .connect(url.expose_secret())
        .await
        .map_err(|source| StorageError::Connect { service, source })?;
    Ok(Database {
        pool,
        backend: Backend::Postgres,
        schema: Some(service),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_one_after_another() {
        assert_eq!(placeholders(3, 2), "$2, $3, $4");
        assert_eq!(placeholders(0, 1), "");
        assert_eq!(row_placeholders(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(row_placeholders(1, 3, 4), "($4, $5, $6)");
    }
}
