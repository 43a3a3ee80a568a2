//! The recovery worker: finds sagas whose next attempt is due and whose lease has lapsed (a
//! parked retry, a hold that ended, or a driver that crashed) and drives them on.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Exchange, saga::SagaTable};

/// Sagas driven side by side by one worker.
const CONCURRENT_SAGAS: usize = 16;
/// Sagas taken per look.
const BATCH: i64 = 256;

/// Runs until `shutdown` is cancelled.
pub async fn run_recovery(exchange: Exchange, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(exchange.options.recovery_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        for table in [SagaTable::Conversions, SagaTable::Earnings] {
            let due = match exchange.due(table, BATCH).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(%error, "recovery could not look for sagas");
                    continue;
                }
            };
            if due.is_empty() {
                continue;
            }
            tracing::info!(sagas = due.len(), ?table, "recovery resumes sagas");
            futures::stream::iter(due)
                .for_each_concurrent(CONCURRENT_SAGAS, |id| {
                    let exchange = exchange.clone();
                    async move {
                        let result = match table {
                            SagaTable::Conversions => exchange.resume_conversion(&id).await,
                            SagaTable::Earnings => exchange.resume_earning(&id).await,
                        };
                        if let Err(error) = result {
                            tracing::warn!(saga = %id, %error, "recovery step failed");
                        }
                    }
                })
                .await;
        }
    }
}
