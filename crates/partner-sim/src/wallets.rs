//! The wallet store. Each operation runs in one write transaction: look up the key, decide,
//! apply, record. A key is applied at most once, whatever the concurrency.

use sqlx::AnyConnection;
use tandem_storage::Database;

/// Why the program refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownMember,
    MemberBlocked,
    InsufficientPoints,
    KeyConflict,
    AlreadyReversed,
    PartnerRule,
}

/// A definite answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied { balance_after_minor: i64 },
    AlreadyApplied { balance_after_minor: i64 },
    Refused(Refusal),
}

/// Which way points move in a member's wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    Debit,
    Credit,
}

impl Movement {
    fn as_str(self) -> &'static str {
        match self {
            Movement::Debit => "DEBIT",
            Movement::Credit => "CREDIT",
        }
    }
}

/// The simulated program's wallets.
#[derive(Debug, Clone)]
pub struct Wallets {
    database: Database,
}

async fn balance(
    connection: &mut AnyConnection,
    member: &str,
) -> Result<Option<(i64, bool)>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT balance_minor, in_good_standing FROM sim_members WHERE member_id = $1",
    )
    .bind(member)
    .fetch_optional(connection)
    .await?;
    Ok(row.map(|(balance, standing)| (balance, standing != 0)))
}

async fn operation(
    connection: &mut AnyConnection,
    key: &str,
) -> Result<Option<(String, String, i64, Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, member_id, amount_minor, original_key, reversed_by FROM sim_operations WHERE transaction_key = $1")
        .bind(key)
        .fetch_optional(connection)
        .await
}

impl Wallets {
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// Creates or replaces a member.
    pub async fn put_member(
        &self,
        member: &str,
        balance_minor: i64,
        in_good_standing: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO sim_members (member_id, balance_minor, in_good_standing) VALUES ($1, $2, $3) \
             ON CONFLICT (member_id) DO UPDATE SET balance_minor = excluded.balance_minor, in_good_standing = excluded.in_good_standing",
        )
        .bind(member)
        .bind(balance_minor)
        .bind(i64::from(in_good_standing))
        .execute(self.database.pool())
        .await?;
        Ok(())
    }

    /// A member's balance and standing.
    pub async fn member(&self, member: &str) -> Result<Option<(i64, bool)>, sqlx::Error> {
        let mut connection = self.database.pool().acquire().await?;
        balance(&mut connection, member).await
    }

    /// Debits or credits a member once per key: a repeat of the same operation is already
    /// applied, a different operation under the same key is refused.
    pub async fn apply(
        &self,
        key: &str,
        member: &str,
        amount_minor: i64,
        kind: Movement,
    ) -> Result<Outcome, sqlx::Error> {
        let mut transaction = self.database.begin_write().await?;
        if let Some((stored_kind, stored_member, stored_amount, _, _)) =
            operation(&mut transaction, key).await?
        {
            let same = stored_kind == kind.as_str()
                && stored_member == member
                && stored_amount == amount_minor;
            if !same {
                return Ok(Outcome::Refused(Refusal::KeyConflict));
            }
            let (balance_after_minor, _) =
                balance(&mut transaction, member).await?.unwrap_or_default();
            return Ok(Outcome::AlreadyApplied {
                balance_after_minor,
            });
        }
        let Some((_, in_good_standing)) = balance(&mut transaction, member).await? else {
            return Ok(Outcome::Refused(Refusal::UnknownMember));
        };
        if !in_good_standing {
            return Ok(Outcome::Refused(Refusal::MemberBlocked));
        }
        let delta = match kind {
            Movement::Debit => -amount_minor,
            Movement::Credit => amount_minor,
        };
        // Relative and guarded in one statement: concurrent movements on one member queue on its
        // row and each sees the balance the previous one left, so none is lost.
        let Some(balance_after_minor) = move_balance(&mut transaction, member, delta, true).await?
        else {
            return Ok(Outcome::Refused(Refusal::InsufficientPoints));
        };
        record(
            &mut transaction,
            key,
            kind.as_str(),
            member,
            amount_minor,
            None,
        )
        .await?;
        transaction.commit().await?;
        Ok(Outcome::Applied {
            balance_after_minor,
        })
    }

    /// Undoes the operation under `original`. If it was never seen, its key becomes void, so
    /// that it is refused should it arrive later: a reversal is never overtaken.
    pub async fn reverse(&self, key: &str, original: &str) -> Result<Outcome, sqlx::Error> {
        let mut transaction = self.database.begin_write().await?;
        if let Some((kind, member, _, stored_original, _)) =
            operation(&mut transaction, key).await?
        {
            if kind != "REVERSAL" || stored_original.as_deref() != Some(original) {
                return Ok(Outcome::Refused(Refusal::KeyConflict));
            }
            let (balance_after_minor, _) = balance(&mut transaction, &member)
                .await?
                .unwrap_or_default();
            return Ok(Outcome::AlreadyApplied {
                balance_after_minor,
            });
        }
        let outcome = match operation(&mut transaction, original).await? {
            None => {
                record(&mut transaction, original, "VOID", "", 0, None).await?;
                sqlx::query(
                    "UPDATE sim_operations SET reversed_by = $1 WHERE transaction_key = $2",
                )
                .bind(key)
                .bind(original)
                .execute(&mut *transaction)
                .await?;
                record(&mut transaction, key, "REVERSAL", "", 0, Some(original)).await?;
                Outcome::Applied {
                    balance_after_minor: 0,
                }
            }
            Some((_, _, _, _, Some(_))) => return Ok(Outcome::Refused(Refusal::AlreadyReversed)),
            Some((kind, _, _, _, None)) if kind == "REVERSAL" || kind == "VOID" => {
                return Ok(Outcome::Refused(Refusal::KeyConflict));
            }
            Some((kind, member, amount, _, None)) => {
                // Undoing a credit may leave the member below zero if they spent the points; the
                // books must still be restored, so the program lets the balance go negative.
                let delta = if kind == "DEBIT" { amount } else { -amount };
                // Claim the original first, so two reversals racing under different keys undo
                // it once.
                let claimed = sqlx::query(
                    "UPDATE sim_operations SET reversed_by = $1 \
                     WHERE transaction_key = $2 AND reversed_by IS NULL",
                )
                .bind(key)
                .bind(original)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                if claimed == 0 {
                    return Ok(Outcome::Refused(Refusal::AlreadyReversed));
                }
                let balance_after_minor = move_balance(&mut transaction, &member, delta, false)
                    .await?
                    .unwrap_or_default();
                record(
                    &mut transaction,
                    key,
                    "REVERSAL",
                    &member,
                    amount,
                    Some(original),
                )
                .await?;
                Outcome::Applied {
                    balance_after_minor,
                }
            }
        };
        transaction.commit().await?;
        Ok(outcome)
    }
}

/// Adds `delta` to a member's balance and returns the new balance; with `guarded`, only if it
/// stays at or above zero (`None` otherwise).
async fn move_balance(
    connection: &mut AnyConnection,
    member: &str,
    delta: i64,
    guarded: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let statement = if guarded {
        "UPDATE sim_members SET balance_minor = balance_minor + $1 \
         WHERE member_id = $2 AND balance_minor + $1 >= 0 RETURNING balance_minor"
    } else {
        "UPDATE sim_members SET balance_minor = balance_minor + $1 \
         WHERE member_id = $2 RETURNING balance_minor"
    };
    sqlx::query_scalar(statement)
        .bind(delta)
        .bind(member)
        .fetch_optional(connection)
        .await
}

async fn record(
    connection: &mut AnyConnection,
    key: &str,
    kind: &str,
    member: &str,
    amount_minor: i64,
    original: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO sim_operations (transaction_key, kind, member_id, amount_minor, original_key, applied_at_micros) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(key)
        .bind(kind)
        .bind(member)
        .bind(amount_minor)
        .bind(original)
        .bind(tandem_domain::to_unix_micros(tandem_domain::now()))
        .execute(connection)
        .await?;
    Ok(())
}
