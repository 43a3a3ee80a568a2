//! What conversions and earnings share as sagas: leases on their rows, and how long to wait
//! before asking a partner again; and each saga as a state machine ([`conversion`],
//! [`earning`]) with its driver ([`conversion_driver`], [`earning_driver`]).

pub(crate) mod conversion;
mod conversion_driver;
pub(crate) mod earning;
mod earning_driver;

use std::time::Duration;

use crate::{Exchange, ExchangeError, new_id, now_micros};

/// A status or step read from storage that this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} in storage")]
pub(crate) struct UnknownValue {
    what: &'static str,
    value: String,
}

macro_rules! stored_names {
    ($type:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }

            /// Parses a stored value; an unknown one is an error, never a default.
            pub(crate) fn parse(value: &str) -> Result<Self, UnknownValue> {
                match value {
                    $($name => Ok($type::$variant),)+
                    _ => Err(UnknownValue { what: $what, value: value.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use stored_names;

/// What one step's call answered, as either saga reads it. (A step that calls nobody, such as
/// an earning's wait for its hold, is asked with `Applied`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    /// Applied now or before; for ledger steps, with the transaction's id.
    Applied { transaction_id: Option<String> },
    /// Refused: this call did not apply. It does not say whether an earlier call of the same
    /// key did.
    Refused(String),
    /// No definite answer: it may or may not have applied.
    Unknown(String),
}

impl From<crate::peers::GatewayAnswer> for StepOutcome {
    fn from(answer: crate::peers::GatewayAnswer) -> Self {
        use crate::peers::GatewayAnswer;
        match answer {
            GatewayAnswer::Applied => StepOutcome::Applied {
                transaction_id: None,
            },
            GatewayAnswer::Refused(reason) => StepOutcome::Refused(reason),
            GatewayAnswer::Unknown(error) => StepOutcome::Unknown(error),
        }
    }
}

impl StepOutcome {
    /// A ledger call's answer as a saga reads it: a refusal of the request itself (by the reason
    /// it carries, which leads the refusal's text) cannot have applied; anything else may have.
    pub(crate) fn of_ledger(answer: Result<tandem_proto::v1::Transaction, ExchangeError>) -> Self {
        match answer {
            Ok(transaction) => StepOutcome::Applied {
                transaction_id: Some(transaction.transaction_id),
            },
            Err(ExchangeError::PeerRefused {
                reason, message, ..
            }) => StepOutcome::Refused(format!("{reason}: {message}")),
            // Anything else may stand beside a transaction the ledger holds.
            Err(ExchangeError::PeerUnavailable { peer, cause }) => {
                StepOutcome::Unknown(format!("{peer}: {cause}"))
            }
            Err(error) => StepOutcome::Unknown(error.to_string()),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_faults;

/// A gateway answer that never came is asked again this many times within one drive, with
/// short pauses, before the saga is parked for the recovery worker.
pub(crate) const TRIES_PER_DRIVE: u32 = 3;

/// After this many unanswered attempts at a step that may give up (a conversion's debit or
/// credit, a reversal's first two steps), the saga stops asking and undoes it by key instead: a
/// gateway voids a key it never saw when asked to reverse it, so giving up is safe.
pub(crate) const MAX_UNKNOWN_ATTEMPTS: i64 = 10;

/// The pause between tries within one drive.
pub(crate) fn quick_pause(try_number: u32) -> Duration {
    Duration::from_millis(100 * 3_u64.pow(try_number.saturating_sub(1)))
}

/// How long a parked saga waits before the worker tries again: doubling from a second, at most a
/// minute.
pub(crate) fn backoff(attempts: i64) -> Duration {
    let exponent = attempts.clamp(0, 6) as u32;
    Duration::from_secs(2_u64.pow(exponent)).min(Duration::from_secs(60))
}

/// The tables whose rows are sagas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SagaTable {
    Conversions,
    Earnings,
}

impl SagaTable {
    fn table(self) -> &'static str {
        match self {
            SagaTable::Conversions => "conversions",
            SagaTable::Earnings => "earnings",
        }
    }

    fn id_column(self) -> &'static str {
        match self {
            SagaTable::Conversions => "conversion_id",
            SagaTable::Earnings => "earning_id",
        }
    }
}

impl Exchange {
    /// When a lease taken now ends.
    pub(crate) fn lease_until(&self) -> i64 {
        now_micros() + self.options.saga_lease.as_micros() as i64
    }

    /// Takes the lease on a saga row unless another driver holds it; the lease owner on success.
    pub(crate) async fn claim(
        &self,
        table: SagaTable,
        id: &str,
    ) -> Result<Option<String>, ExchangeError> {
        let owner = new_id();
        let sql = format!(
            "UPDATE {} SET lease_owner = $1, lease_until_micros = $2 \
             WHERE {} = $3 AND lease_until_micros < $4",
            table.table(),
            table.id_column()
        );
        let claimed = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&owner)
            .bind(self.lease_until())
            .bind(id)
            .bind(now_micros())
            .execute(self.database.pool())
            .await
            .map_err(ExchangeError::from)?
            .rows_affected();
        Ok((claimed == 1).then_some(owner))
    }

    /// Ids of sagas whose next attempt is due and whose lease has lapsed.
    pub(crate) async fn due(
        &self,
        table: SagaTable,
        limit: i64,
    ) -> Result<Vec<String>, ExchangeError> {
        let now = now_micros();
        let sql = match table {
            SagaTable::Conversions => {
                "SELECT conversion_id FROM conversions WHERE status IN ('PENDING', 'REVERSING') \
                 AND next_attempt_micros <= $1 AND lease_until_micros < $2 \
                 ORDER BY next_attempt_micros LIMIT $3"
            }
            // Unfinished earnings are queued apart from the earnings themselves; see the
            // exchange's migration 0002.
            SagaTable::Earnings => {
                "SELECT earnings_due.earning_id FROM earnings_due JOIN earnings \
                 ON earnings.earning_id = earnings_due.earning_id \
                 WHERE earnings_due.next_attempt_micros <= $1 AND earnings.lease_until_micros < $2 \
                 ORDER BY earnings_due.next_attempt_micros LIMIT $3"
            }
        };
        // On the connections that plan by key: without statistics, PostgreSQL cannot tell that
        // the sagas due are a sliver of the table, and would scan the whole table every second
        // instead.
        sqlx::query_scalar(sql)
            .bind(now)
            .bind(now)
            .bind(limit)
            .fetch_all(self.keyed.pool())
            .await
            .map_err(ExchangeError::from)
    }
}
