//! The wallet store's migrations keep what an older store holds: rebuilding the operations table
//! for a partial index of reversals carries every operation over, and an operation can still be
//! marked reversed only once.

use std::borrow::Cow;

use tandem_partner_sim::MIGRATOR;
use tandem_storage::{Database, testing::TestDatabase};

const SERVICE: &str = "sim_migrations";

type Operation = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
);

async fn operations_survive_the_rebuild(database: TestDatabase) {
    // The store as the first migration left it, holding a debit, its reversal, and a credit.
    let first = sqlx::migrate::Migrator {
        migrations: Cow::Owned(MIGRATOR.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let old = Database::open(database.location(), SERVICE, &first)
        .await
        .unwrap();
    let held: Vec<Operation> = vec![
        (
            "k1".into(),
            "DEBIT".into(),
            "m1".into(),
            500,
            None,
            Some("r1".into()),
            10,
        ),
        (
            "r1".into(),
            "REVERSAL".into(),
            "m1".into(),
            500,
            Some("k1".into()),
            None,
            11,
        ),
        (
            "k2".into(),
            "CREDIT".into(),
            "m2".into(),
            70,
            None,
            None,
            12,
        ),
    ];
    for (key, kind, member, amount, original, reversed_by, applied) in &held {
        sqlx::query(
            "INSERT INTO sim_operations (transaction_key, kind, member_id, amount_minor, \
             original_key, reversed_by, applied_at_micros) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key)
        .bind(kind)
        .bind(member)
        .bind(amount)
        .bind(original.as_deref())
        .bind(reversed_by.as_deref())
        .bind(applied)
        .execute(old.pool())
        .await
        .unwrap();
    }
    old.pool().close().await;

    let migrated = Database::open(database.location(), SERVICE, &MIGRATOR)
        .await
        .unwrap();
    let kept: Vec<Operation> = sqlx::query_as(
        "SELECT transaction_key, kind, member_id, amount_minor, original_key, reversed_by, \
         applied_at_micros FROM sim_operations ORDER BY applied_at_micros",
    )
    .fetch_all(migrated.pool())
    .await
    .unwrap();
    assert_eq!(kept, held);

    // A key is still one operation; many unreversed operations hold no reversal; a second
    // operation claiming the same reversal is refused.
    let insert = |key: &'static str, reversed_by: Option<&'static str>| {
        sqlx::query(
            "INSERT INTO sim_operations (transaction_key, kind, member_id, amount_minor, \
             original_key, reversed_by, applied_at_micros) VALUES ($1, 'CREDIT', 'm3', 1, NULL, $2, 13)",
        )
        .bind(key)
        .bind(reversed_by)
        .execute(migrated.pool())
    };
    assert!(insert("k1", None).await.is_err(), "a key is applied once");
    insert("k3", None).await.unwrap();
    insert("k4", None).await.unwrap();
    assert!(
        insert("k5", Some("r1")).await.is_err(),
        "one reversal undoes one operation"
    );
}

tandem_storage::on_every_database!(operations_survive_the_rebuild);
