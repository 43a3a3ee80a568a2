//! Rows handed to a statement as one JSON parameter.
//!
//! A batch of a few hundred rows bound value by value costs a bound parameter per column per row,
//! and a new statement text for every batch size, so nothing stays prepared. Serialized as one
//! JSON array and read back as rows by the database itself, a batch is one parameter and one
//! constant statement, prepared once per connection, on both backends:
//!
//! ```text
//! INSERT INTO quotes (quote_id, points)
//! SELECT quote_id, points FROM <JsonRows::source(backend, 1, "new_quotes")>
//! ```
//!
//! reads `$1 = [{"quote_id": "…", "points": 2500}, …]` as the rows of `new_quotes`.

use serde::Serialize;

use crate::Backend;

/// The SQL type a column of JSON rows is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    BigInt,
}

/// The shape of JSON rows: each row is an object with these keys, read as columns of the same
/// names. A key that is missing or `null` reads as NULL.
#[derive(Debug, Clone, Copy)]
pub struct JsonRows {
    columns: &'static [(&'static str, ColumnType)],
}

impl JsonRows {
    pub const fn new(columns: &'static [(&'static str, ColumnType)]) -> Self {
        Self { columns }
    }

    /// A row source for a FROM clause, named `alias`, reading the JSON array bound to
    /// parameter `$parameter`.
    pub fn source(&self, backend: Backend, parameter: usize, alias: &str) -> String {
        match backend {
            Backend::Postgres => {
                let columns: Vec<String> = self
                    .columns
                    .iter()
                    .map(|(name, kind)| {
                        let kind = match kind {
                            ColumnType::Text => "TEXT",
                            ColumnType::BigInt => "BIGINT",
                        };
                        format!("{name} {kind}")
                    })
                    .collect();
                format!(
                    "json_to_recordset(CAST(${parameter} AS JSON)) AS {alias}({})",
                    columns.join(", ")
                )
            }
            Backend::Sqlite => {
                let columns: Vec<String> = self
                    .columns
                    .iter()
                    .map(|(name, _)| format!("json_extract(value, '$.{name}') AS {name}"))
                    .collect();
                format!(
                    "(SELECT {} FROM json_each(${parameter})) AS {alias}",
                    columns.join(", ")
                )
            }
        }
    }

    /// The column names, each qualified by `alias`, comma-separated.
    pub fn columns(&self, alias: &str) -> String {
        self.columns
            .iter()
            .map(|(name, _)| format!("{alias}.{name}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The column names, comma-separated, for an INSERT's column list.
    pub fn names(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Rows serialized for a [`JsonRows`] parameter: each row's fields named as the columns.
pub fn to_json<T: Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("rows of strings and integers always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: JsonRows = JsonRows::new(&[("id", ColumnType::Text), ("n", ColumnType::BigInt)]);

    #[test]
    fn each_backend_reads_the_same_columns() {
        assert_eq!(
            SHAPE.source(Backend::Postgres, 2, "r"),
            "json_to_recordset(CAST($2 AS JSON)) AS r(id TEXT, n BIGINT)"
        );
        assert_eq!(
            SHAPE.source(Backend::Sqlite, 1, "r"),
            "(SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.n') AS n \
             FROM json_each($1)) AS r"
        );
        assert_eq!(SHAPE.columns("r"), "r.id, r.n");
        assert_eq!(SHAPE.names(), "id, n");
    }
}
