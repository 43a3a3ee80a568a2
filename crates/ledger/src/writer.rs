//! Group commit. Writes are queued to a few writer tasks; each takes whatever is waiting (up to
//! a batch), applies it in one database transaction with a savepoint per request, and commits
//! once. Durable commits are what bound a ledger's throughput, so sharing one commit among many
//! transactions is the main lever; deriving balances from entries (no balance row to update) is
//! what lets batches on the same hot accounts proceed side by side.

use std::collections::BTreeSet;

use tandem_storage::{Database, is_retryable_conflict};
use tokio::sync::{mpsc, oneshot};

use crate::{
    LedgerError,
    model::{AccountId, Guard, Posted},
    store::{self, Step, WriteRequest},
};

/// How many times a batch that lost a deadlock or serialization conflict is run again.
const BATCH_RETRIES: usize = 5;

pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) request: WriteRequest,
    pub(crate) reply: oneshot::Sender<Result<Posted, LedgerError>>,
}

/// Starts `writers` writer tasks sharing one queue; they stop when every sender is dropped.
pub(crate) fn start(database: Database, writers: usize, max_batch: usize) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel::<Job>(max_batch * writers * 4);
    let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
    for _ in 0..writers.max(1) {
        let database = database.clone();
        let receiver = receiver.clone();
        tokio::spawn(async move {
            loop {
                let mut jobs = Vec::with_capacity(max_batch);
                {
                    let mut receiver = receiver.lock().await;
                    if receiver.recv_many(&mut jobs, max_batch).await == 0 {
                        return;
                    }
                }
                run_batch(&database, jobs).await;
            }
        });
    }
    sender
}

async fn run_batch(database: &Database, jobs: Vec<Job>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apply_batch(database, &jobs).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    // The caller may have given up waiting; its transaction is committed anyway.
                    let _ = job.reply.send(outcome);
                }
                return;
            }
            Err(error) if is_retryable_conflict(&error) && attempt < BATCH_RETRIES => {
                tracing::debug!(%error, attempt, "ledger batch conflicted; running it again");
            }
            Err(error) => {
                tracing::error!(%error, size = jobs.len(), "ledger batch failed");
                let retryable = is_retryable_conflict(&error);
                for job in jobs {
                    let outcome = if retryable {
                        LedgerError::Conflict
                    } else {
                        LedgerError::Storage(error.to_string())
                    };
                    let _ = job.reply.send(Err(outcome));
                }
                return;
            }
        }
    }
}

/// Applies every job in one transaction. A job refused for its own reason is rolled back to its
/// savepoint and the others go on; a database failure rolls back the whole batch.
async fn apply_batch(
    database: &Database,
    jobs: &[Job],
) -> Result<Vec<Result<Posted, LedgerError>>, sqlx::Error> {
    let now = tandem_domain::now();
    let mut transaction = database.begin_write().await?;
    let mut touched = BTreeSet::<AccountId>::new();
    for job in jobs {
        touched.extend(store::accounts_touched(&mut transaction, &job.request).await?);
    }
    let accounts = store::accounts(&mut transaction, &touched).await?;
    let guarded: BTreeSet<AccountId> = accounts
        .values()
        .filter(|account| account.guard != Guard::None)
        .map(|account| account.id)
        .collect();
    store::lock_guarded(&mut transaction, database.backend(), &guarded).await?;

    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        sqlx::query("SAVEPOINT ledger_request")
            .execute(&mut *transaction)
            .await?;
        let outcome = match store::apply(&mut transaction, &accounts, &job.key, &job.request, now)
            .await
        {
            Ok(posted) => Ok(posted),
            Err(Step::Refused(error)) => Err(error),
            Err(Step::Database(error)) if store::is_duplicate_key(&error) => {
                // Another writer committed the same key between our check and our insert: the
                // request is a replay or a conflict, which the stored row now tells.
                sqlx::query("ROLLBACK TO SAVEPOINT ledger_request")
                    .execute(&mut *transaction)
                    .await?;
                match store::apply(&mut transaction, &accounts, &job.key, &job.request, now).await {
                    Ok(posted) => Ok(posted),
                    Err(Step::Refused(error)) => Err(error),
                    Err(Step::Database(error)) => return Err(error),
                }
            }
            Err(Step::Database(error)) => return Err(error),
        };
        let end = if outcome.is_ok() {
            "RELEASE SAVEPOINT ledger_request"
        } else {
            "ROLLBACK TO SAVEPOINT ledger_request"
        };
        sqlx::query(end).execute(&mut *transaction).await?;
        outcomes.push(outcome);
    }
    transaction.commit().await?;
    Ok(outcomes)
}
