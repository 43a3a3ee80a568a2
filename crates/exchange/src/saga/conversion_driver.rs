//! Drives a conversion's saga: performs its current step (one call to a gateway or the ledger,
//! with a key derived from the conversion id, so asking again is harmless), lets
//! [`conversion::next`] decide what follows, and records that before the next step starts.
//! Every write is conditional on the lease the driver holds, so a driver that outlived its lease
//! stops at its next write, and nothing is answered before it is recorded.

use std::time::Duration;

use super::{
    SagaTable, TRIES_PER_DRIVE, backoff,
    conversion::{self, Action, Call, ConversionSaga, Side, StepOutcome},
    quick_pause,
};
use crate::{
    Exchange, ExchangeError, failpoint, now_micros,
    peers::PointsMovement,
    rows::{ConversionRow, QuoteRow},
    writes::{ConversionProgress, SagaProgress},
};

/// A saga as a driver last recorded it.
pub(crate) struct Recorded {
    pub saga: ConversionSaga,
    pub written_at_micros: i64,
}

impl Exchange {
    /// Drives a conversion's saga as far as it goes now, holding its lease as `owner`. Returns
    /// the saga as last recorded, or `None` when another driver has taken it over.
    pub(crate) async fn drive_loaded(
        &self,
        row: &ConversionRow,
        quote: &QuoteRow,
        owner: &str,
    ) -> Result<Option<Recorded>, ExchangeError> {
        let mut saga = row.saga()?;
        let mut written_at_micros = row.updated_at_micros;
        let mut tries = 0_u32;
        while !saga.is_done() {
            let outcome = self.perform(row, quote, &saga).await;
            let (after, action) = conversion::next(&saga, outcome);
            let release = match action {
                Action::Record => None,
                Action::Finish => Some(Duration::ZERO),
                Action::Retry => {
                    tries += 1;
                    if tries < TRIES_PER_DRIVE {
                        saga = after;
                        tokio::time::sleep(quick_pause(tries)).await;
                        continue;
                    }
                    tracing::warn!(conversion = %row.conversion_id, step = %after.step, attempts = after.attempts, error = %after.last_error, "conversion parked until the next attempt");
                    Some(backoff(after.attempts))
                }
            };
            tries = 0;
            if let Some(moment) = failpoint::conversion_moment(saga.step, after.step) {
                failpoint::pause_at(moment).await;
            }
            let Some(written) = self
                .record_conversion(&row.conversion_id, owner, &after, release)
                .await?
            else {
                return Ok(None);
            };
            saga = after;
            written_at_micros = written;
            if release.is_some() {
                break;
            }
        }
        Ok(Some(Recorded {
            saga,
            written_at_micros,
        }))
    }

    /// Performs one step: one call, its answer as the saga reads it.
    async fn perform(
        &self,
        row: &ConversionRow,
        quote: &QuoteRow,
        saga: &ConversionSaga,
    ) -> StepOutcome {
        let id = row.conversion_id.as_str();
        let key = |suffix: &str| format!("tandem:conversion:{id}:{suffix}");
        let gateway = |side| match side {
            Side::Source => &quote.source_gateway,
            Side::Target => &quote.target_gateway,
        };
        match saga.step.call() {
            Call::Move {
                side,
                credit,
                key: suffix,
                reversal,
            } => {
                let (member, points) = match side {
                    Side::Source => (&quote.source_member_id, quote.source_points),
                    Side::Target => (&quote.target_member_id, quote.target_points),
                };
                let description = if reversal {
                    format!("Reversal of Tandem conversion {id}")
                } else {
                    format!(
                        "Tandem conversion {id}: {} {} to {} {}",
                        quote.source_points,
                        quote.source_program,
                        quote.target_points,
                        quote.target_program
                    )
                };
                let movement = PointsMovement {
                    credit,
                    key: key(suffix),
                    member_id: member.clone(),
                    amount_minor: points,
                    description,
                    tandem_reference: id.to_owned(),
                    kind: if reversal { "REVERSAL" } else { "CONVERSION" },
                };
                self.peers.move_points(gateway(side), movement).await.into()
            }
            Call::Reverse {
                side,
                key: suffix,
                original,
            } => self
                .peers
                .reverse_points(gateway(side), key(suffix), key(original))
                .await
                .into(),
            Call::PostLedger => self.post_conversion(row, quote).await,
            Call::ReverseLedger => {
                self.reverse_posted_conversion(
                    row,
                    &saga.ledger_transaction_id,
                    key("ledger:reverse"),
                )
                .await
            }
            Call::Nothing => StepOutcome::Applied {
                transaction_id: None,
            },
        }
    }

    async fn post_conversion(&self, row: &ConversionRow, quote: &QuoteRow) -> StepOutcome {
        let request = match self
            .conversion_transaction(&row.conversion_id, quote, row)
            .await
        {
            Ok(request) => request,
            Err(error) => return StepOutcome::Unknown(error.to_string()),
        };
        StepOutcome::of_ledger(self.peers.post(request).await)
    }

    /// Reverses the conversion's ledger transaction. The points are already back by now, so
    /// every error is asked about again, refusals included.
    async fn reverse_posted_conversion(
        &self,
        row: &ConversionRow,
        transaction_id: &str,
        key: String,
    ) -> StepOutcome {
        let reason = if row.reverse_reason.is_empty() {
            "conversion reversed".to_owned()
        } else {
            row.reverse_reason.clone()
        };
        // The points are back by now, so a refusal is asked about again like any other answer
        // (`next` never gives up on this step).
        StepOutcome::of_ledger(self.peers.reverse(key, transaction_id, &reason).await)
    }

    /// Writes a saga's state if `owner` still holds its lease; `release_after` gives the lease
    /// up and says when the worker may try again (a finished saga is never tried again). Returns
    /// when it was written, or `None` when another driver has taken the saga over.
    async fn record_conversion(
        &self,
        id: &str,
        owner: &str,
        saga: &ConversionSaga,
        release_after: Option<Duration>,
    ) -> Result<Option<i64>, ExchangeError> {
        let now = now_micros();
        let (next_attempt, lease_until) = match release_after {
            Some(wait) => (Some(now + wait.as_micros() as i64), 0),
            // Under the lease the stored next attempt stands: it is due by the time the lease
            // lapses, and leaving it makes the write cheaper (see `update_conversions`).
            None => (None, self.lease_until()),
        };
        let written = self
            .writers
            .progress(SagaProgress::Conversion(ConversionProgress {
                conversion_id: id.to_owned(),
                lease_owner: owner.to_owned(),
                status: saga.status.as_str(),
                step: saga.step.as_str(),
                attempts: saga.attempts,
                last_error: saga.last_error.clone(),
                failure_reason: saga.failure_reason.clone(),
                ledger_transaction_id: saga.ledger_transaction_id.clone(),
                reversal_transaction_id: saga.reversal_transaction_id.clone(),
                next_attempt_micros: next_attempt,
                lease_until_micros: lease_until,
                updated_at_micros: now,
                finished_at_micros: saga.is_done().then_some(now),
            }))
            .await?;
        if !written {
            tracing::warn!(conversion = %id, "another driver took the conversion over");
        }
        Ok(written.then_some(now))
    }

    /// Drives a conversion's saga as far as it goes now. The caller holds the lease as `owner`.
    pub(crate) async fn drive_conversion(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<(), ExchangeError> {
        let row = self
            .load_conversion(id)
            .await?
            .ok_or_else(|| ExchangeError::internal("conversion vanished"))?;
        let quote = self
            .load_quote(&row.quote_id)
            .await?
            .ok_or_else(|| ExchangeError::internal("conversion without its quote"))?;
        self.drive_loaded(&row, &quote, owner).await.map(drop)
    }

    /// Drives a saga the worker found due, if its lease can be taken.
    pub(crate) async fn resume_conversion(&self, id: &str) -> Result<(), ExchangeError> {
        if let Some(owner) = self.claim(SagaTable::Conversions, id).await? {
            self.drive_conversion(id, &owner).await?;
        }
        Ok(())
    }
}
