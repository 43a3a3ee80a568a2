//! Classifying database errors by constraint and SQLSTATE, never by parsing free text where the
//! backend gives something better.

use sqlx::error::ErrorKind;

/// Whether `error` violates the unique constraint called `constraint` (PostgreSQL reports the
/// name) on `table.column` (SQLite reports the columns, as "UNIQUE constraint failed:
/// partners.code", since it has no names for column constraints).
pub fn violates_unique(error: &sqlx::Error, constraint: &str, table_column: &str) -> bool {
    let Some(database_error) = error.as_database_error() else {
        return false;
    };
    if database_error.kind() != ErrorKind::UniqueViolation {
        return false;
    }
    match database_error.constraint() {
        Some(name) => name == constraint,
        None => database_error
            .message()
            .strip_prefix("UNIQUE constraint failed: ")
            .is_some_and(|columns| columns.split(", ").any(|column| column == table_column)),
    }
}

/// Whether `error` is the pool having no connection free for its whole acquire timeout: overload,
/// which passes. Nothing was sent to the database, so the request did nothing and a retry is
/// safe; services answer UNAVAILABLE, which tells clients to retry, where INTERNAL would tell them
/// to give up.
pub fn is_pool_exhausted(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::PoolTimedOut)
}

/// Whether `error` is a conflict with a concurrent transaction that is safe to retry:
/// PostgreSQL's serialization failure (40001) or deadlock (40P01), or SQLite's busy or locked
/// database (codes 5 and 6, and their extended forms).
pub fn is_retryable_conflict(error: &sqlx::Error) -> bool {
    let Some(database_error) = error.as_database_error() else {
        return false;
    };
    let Some(code) = database_error.code() else {
        return false;
    };
    match code.as_ref() {
        "40001" | "40P01" => true,
        sqlite_code => sqlite_code
            .parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6)),
    }
}
