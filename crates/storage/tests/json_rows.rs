//! JSON rows read back exactly on both backends: texts with quotes, backslashes, new lines and
//! characters beyond ASCII, integers at the ends of their range, and NULLs.

use serde::Serialize;
use sqlx::Executor;
use tandem_storage::{ColumnType, Database, JsonRows, testing::TestDatabase};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

#[derive(Serialize)]
struct Row {
    id: String,
    amount: Option<i64>,
}

const SHAPE: JsonRows = JsonRows::new(&[("id", ColumnType::Text), ("amount", ColumnType::BigInt)]);

async fn round_trip(database: TestDatabase) {
    let database = Database::open(database.location(), "scratch", &MIGRATOR)
        .await
        .unwrap();
    database
        .pool()
        .execute("CREATE TABLE json_rows_test (id TEXT PRIMARY KEY, amount BIGINT)")
        .await
        .unwrap();
    let rows = vec![
        Row {
            id: "plain".to_owned(),
            amount: Some(1),
        },
        Row {
            id: "quote \" backslash \\ new line \n tab \t".to_owned(),
            amount: Some(i64::MAX),
        },
        Row {
            id: "Zoë's 旅行 ✈ \u{1F697}".to_owned(),
            amount: Some(i64::MIN),
        },
        Row {
            id: "nothing".to_owned(),
            amount: None,
        },
    ];
    for keyed in [false, true] {
        let database = if keyed {
            database.keyed(1)
        } else {
            database.clone()
        };
        sqlx::query("DELETE FROM json_rows_test")
            .execute(database.pool())
            .await
            .unwrap();
        let insert = format!(
            "INSERT INTO json_rows_test ({}) SELECT {} FROM {}",
            SHAPE.names(),
            SHAPE.columns("new_rows"),
            SHAPE.source(database.backend(), 1, "new_rows")
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(SHAPE.to_json(&rows))
            .execute(database.pool())
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(inserted, 4);
        let mut stored: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT id, amount FROM json_rows_test")
                .fetch_all(database.pool())
                .await
                .unwrap();
        stored.sort();
        let mut expected: Vec<(String, Option<i64>)> = rows
            .iter()
            .map(|row| (row.id.clone(), row.amount))
            .collect();
        expected.sort();
        assert_eq!(stored, expected);

        // No rows is no rows.
        let none = format!(
            "INSERT INTO json_rows_test ({}) SELECT {} FROM {}",
            SHAPE.names(),
            SHAPE.columns("new_rows"),
            SHAPE.source(database.backend(), 1, "new_rows")
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(none))
            .bind(SHAPE.to_json::<Row>(&[]))
            .execute(database.pool())
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(inserted, 0);
    }
}

tandem_storage::on_every_database!(round_trip);
