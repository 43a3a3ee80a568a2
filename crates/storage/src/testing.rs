//! Fresh databases for test suites: a new SQLite directory per test always, and a new
//! PostgreSQL database per test when `TANDEM_TEST_DATABASE_URL` names a server.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{AnyConnection, Connection, Executor};

use crate::Location;

/// The environment variable naming a PostgreSQL server for tests, for example
/// `postgres://postgres@127.0.0.1:5432/test`. The PostgreSQL variants of tests are marked
/// ignored: `cargo test` reports them as such, and `cargo test -- --include-ignored` runs them,
/// failing each one when this is unset.
pub const TEST_DATABASE_URL: &str = "TANDEM_TEST_DATABASE_URL";

/// A throw-away database, removed when dropped.
pub struct TestDatabase {
    location: Location,
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    /// A new, empty SQLite data directory.
    pub fn sqlite() -> Self {
        let directory = tempfile::tempdir().expect("a temporary directory");
        Self {
            location: Location::SqliteDirectory(directory.path().to_owned()),
            cleanup: Cleanup::Directory(directory),
        }
    }

    /// A new, empty PostgreSQL database on the server named by `TANDEM_TEST_DATABASE_URL`, or
    /// `None` when it is unset.
    pub async fn postgres() -> Option<Self> {
        let admin_url = std::env::var(TEST_DATABASE_URL)
            .ok()
            .filter(|url| !url.is_empty())?;
        sqlx::any::install_default_drivers();
        let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AnyConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| {
                panic!("{TEST_DATABASE_URL} is set but PostgreSQL cannot be reached: {error}")
            });
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create a test database");
        admin.close().await.ok();
        let url = replace_database(&admin_url, &name);
        Some(Self {
            location: Location::Postgres(SecretString::from(url)),
            cleanup: Cleanup::Postgres { admin_url, name },
        })
    }

    /// A new, empty PostgreSQL database for a test that runs only on PostgreSQL. Such tests are
    /// marked ignored, so they run only when asked for (`-- --include-ignored`); asked for
    /// without `TANDEM_TEST_DATABASE_URL`, they fail rather than pass without running.
    pub async fn postgres_required() -> Self {
        Self::postgres().await.unwrap_or_else(|| {
            panic!(
                "this test runs on PostgreSQL: set {TEST_DATABASE_URL}, for example \
                 postgres://postgres@127.0.0.1:5432/test"
            )
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The `--database-url` to hand a spawned server, or `None` for SQLite.
    pub fn url(&self) -> Option<String> {
        match &self.location {
            Location::Postgres(url) => Some(url.expose_secret().to_owned()),
            Location::SqliteDirectory(_) => None,
        }
    }
}

/// The same server URL with another database name (the path), keeping any query string.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let server = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with its own
        // runtime removes the database and is waited for, so nothing is left behind.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = AnyConnection::connect(&admin_url).await {
                    let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(error) = admin.execute(sqlx::AssertSqlSafe(statement)).await {
                        eprintln!("could not drop test database {name}: {error}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Runs each named `async fn(TestDatabase)` twice, as `sqlite::name` on a new SQLite directory
/// and as `postgres::name` on a new PostgreSQL database (doing nothing when
/// `TANDEM_TEST_DATABASE_URL` is unset). An attribute before a `;` replaces `#[tokio::test]`,
/// for a runtime with more threads.
#[macro_export]
macro_rules! on_every_database {
    (#[$runtime:meta]; $($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[$runtime] async fn $test() {
                super::$test($crate::testing::TestDatabase::sqlite()).await;
            })*
        }
        mod postgres {
            $(#[$runtime]
            #[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
            async fn $test() {
                super::$test($crate::testing::TestDatabase::postgres_required().await).await;
            })*
        }
    };
    ($($test:ident),* $(,)?) => {
        $crate::on_every_database!(#[tokio::test]; $($test),*);
    };
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            replace_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
