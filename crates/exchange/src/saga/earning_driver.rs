//! Drives an earning's saga: performs its current step (one call to the target's gateway or the
//! ledger, with a key derived from the earning id), lets [`earning::next`] decide what follows,
//! and records it under the lease the driver holds.

use tandem_proto::v1 as pb;

use super::{
    TRIES_PER_DRIVE, backoff,
    earning::{self, Action, Call, EarningSaga, EarningStatus, EarningStep, Facts, StepOutcome},
    quick_pause,
};
use crate::{
    Exchange, ExchangeError, earn::HOLD_TIMEOUT_SECONDS, now_micros, peers::PointsMovement,
    rows::EarningRow,
};

impl Exchange {
    /// Drives one earning as far as it goes now; the caller holds its lease as `owner`.
    pub(crate) async fn drive_earning(
        &self,
        mut earning: EarningRow,
        owner: &str,
    ) -> Result<(), ExchangeError> {
        let mut saga = earning.saga()?;
        let mut tries = 0_u32;
        while !saga.is_done() {
            let facts = Facts {
                refund_requested: earning.refund_requested == 1,
                held: earning.hold_until_micros.is_some(),
                hold_over: earning
                    .hold_until_micros
                    .is_some_and(|until| until <= now_micros()),
            };
            let outcome = self.perform_earning_step(&earning, &saga).await;
            let (after, action) = earning::next(&saga, facts, outcome);
            earning.record(&after);
            saga = after;
            let written = match action {
                Action::Continue => {
                    tries = 0;
                    continue;
                }
                Action::Record => self.record_earning(&earning, owner, None, None).await?,
                Action::WaitForHold => {
                    let until = earning.hold_until_micros.unwrap_or_default();
                    self.record_earning(&earning, owner, None, Some(until))
                        .await?;
                    return Ok(());
                }
                Action::Finish => {
                    self.record_earning(&earning, owner, Some(Default::default()), None)
                        .await?;
                    return Ok(());
                }
                Action::Retry => {
                    tries += 1;
                    if tries < TRIES_PER_DRIVE {
                        tokio::time::sleep(quick_pause(tries)).await;
                        continue;
                    }
                    tracing::warn!(earning = %earning.earning_id, step = %saga.step, error = %saga.last_error, "earning parked until the next attempt");
                    self.record_earning(&earning, owner, Some(backoff(saga.attempts)), None)
                        .await?;
                    return Ok(());
                }
            };
            if !written {
                tracing::warn!(earning = %earning.earning_id, "another driver took the earning over");
                return Ok(());
            }
            tries = 0;
        }
        Ok(())
    }

    /// Performs one step: one call, its answer as the saga reads it.
    async fn perform_earning_step(&self, earning: &EarningRow, saga: &EarningSaga) -> StepOutcome {
        let id = &earning.earning_id;
        let key = |suffix: &str| format!("tandem:earning:{id}:{suffix}");
        let (gateway, ledger_id) = (&earning.target_gateway, &saga.ledger_transaction_id);
        match saga.step.call() {
            Call::Post {
                key: suffix,
                pending,
            } => {
                let (kind, timeout) = if pending {
                    (pb::TransactionKind::Pending, HOLD_TIMEOUT_SECONDS)
                } else {
                    (pb::TransactionKind::Posted, 0)
                };
                self.post_earning(earning, key(suffix), kind, timeout).await
            }
            Call::Move {
                credit,
                key: suffix,
            } => {
                let description = if credit {
                    format!("Earned with a partner purchase ({})", earning.activity_id)
                } else {
                    format!("Refunded partner purchase ({})", earning.activity_id)
                };
                let member = &earning.target_member_id;
                let movement = PointsMovement {
                    credit,
                    key: key(suffix),
                    member_id: member.clone(),
                    amount_minor: earning.points,
                    description,
                    tandem_reference: earning.activity_id.clone(),
                    // A debit of an earning is its clawback.
                    kind: if credit { "EARN" } else { "REVERSAL" },
                };
                self.peers.move_points(gateway, movement).await.into()
            }
            Call::Reverse {
                key: suffix,
                original,
            } => self
                .peers
                .reverse_points(gateway, key(suffix), key(original))
                .await
                .into(),
            Call::Resolve { key: suffix, post } => {
                let resolution = if post {
                    pb::PendingResolution::Post
                } else {
                    pb::PendingResolution::Void
                };
                StepOutcome::of_ledger(self.peers.resolve(key(suffix), ledger_id, resolution).await)
            }
            Call::ReverseLedger {
                key: suffix,
                reason,
            } => StepOutcome::of_ledger(self.peers.reverse(key(suffix), ledger_id, reason).await),
            Call::Nothing => StepOutcome::Applied {
                transaction_id: None,
            },
        }
    }

    async fn post_earning(
        &self,
        earning: &EarningRow,
        key: String,
        kind: pb::TransactionKind,
        timeout_seconds: i64,
    ) -> StepOutcome {
        match self
            .earning_transaction(earning, key, kind, timeout_seconds)
            .await
        {
            Ok(request) => StepOutcome::of_ledger(self.peers.post(request).await),
            Err(error) => StepOutcome::Unknown(error.to_string()),
        }
    }
}

impl EarningRow {
    /// The saga as stored; a status or step this version does not know is an error.
    pub(crate) fn saga(&self) -> Result<EarningSaga, ExchangeError> {
        let unknown = |error: super::UnknownValue| ExchangeError::internal(error);
        Ok(EarningSaga {
            status: EarningStatus::parse(&self.status).map_err(unknown)?,
            step: EarningStep::parse(&self.step).map_err(unknown)?,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            note: self.note.clone(),
            ledger_transaction_id: self.ledger_transaction_id.clone(),
        })
    }

    /// The row as `saga` leaves it.
    pub(crate) fn record(&mut self, saga: &EarningSaga) {
        self.status = saga.status.as_str().to_owned();
        self.step = saga.step.as_str().to_owned();
        self.attempts = saga.attempts;
        self.last_error = saga.last_error.clone();
        self.note = saga.note.clone();
        self.ledger_transaction_id = saga.ledger_transaction_id.clone();
    }
}
