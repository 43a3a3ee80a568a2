//! Group commit. Writes are queued to a few writer tasks; each takes whatever is waiting (up to
//! a batch), applies it in one database transaction, and commits once. Durable commits are what
//! bound a ledger's throughput, so sharing one commit among many transactions is the main lever;
//! deriving balances from entries (no balance row to update) is what lets batches on the same hot
//! accounts proceed side by side. Requests queued together (a PostTransactions call) are never
//! split between batches.

use std::collections::{BTreeSet, HashMap};

use tandem_storage::{Backend, Database, is_retryable_conflict};
use tokio::sync::{mpsc, oneshot};

use crate::{
    LedgerError,
    model::{Account, AccountId, Guard, Posted},
    store::{self, Step, WriteRequest},
};

/// How many times a batch that lost a deadlock or serialization conflict is run again.
const BATCH_RETRIES: usize = 5;

pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) request: WriteRequest,
    pub(crate) reply: oneshot::Sender<Result<Posted, LedgerError>>,
}

/// Accounts never change once opened, so the writers keep those they have read; a batch reads
/// only accounts it has not seen before.
pub(crate) type AccountCache = std::sync::Arc<std::sync::RwLock<HashMap<AccountId, Account>>>;

/// Starts `writers` writer tasks sharing one queue of job groups; they stop when every sender is
/// dropped. A batch takes whole groups, up to `max_batch` groups.
pub(crate) fn start(
    database: &Database,
    writers: usize,
    max_batch: usize,
) -> mpsc::Sender<Vec<Job>> {
    // The writers' own connections, which plan every statement by key; a batch of plain
    // transfers, which looks nothing up in a table, goes through the service's pool.
    let plain = database.clone();
    let database = database.keyed(writers.max(1) as u32);
    let cache = AccountCache::default();
    let (sender, receiver) = mpsc::channel::<Vec<Job>>(max_batch * writers * 4);
    let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
    for _ in 0..writers.max(1) {
        let database = database.clone();
        let plain = plain.clone();
        let receiver = receiver.clone();
        let cache = cache.clone();
        tokio::spawn(async move {
            loop {
                let mut groups = Vec::with_capacity(max_batch);
                {
                    let mut receiver = receiver.lock().await;
                    if receiver.recv_many(&mut groups, max_batch).await == 0 {
                        return;
                    }
                }
                let jobs = groups.into_iter().flatten().collect();
                run_batch(&database, &plain, &cache, jobs).await;
            }
        });
    }
    sender
}

async fn run_batch(database: &Database, plain: &Database, cache: &AccountCache, jobs: Vec<Job>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apply_batch(database, plain, cache, &jobs).await {
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

/// A request's own outcome, or the database failure that rolls back its whole batch.
fn settle(outcome: Result<Posted, Step>) -> Result<Result<Posted, LedgerError>, sqlx::Error> {
    match outcome {
        Ok(posted) | Err(Step::Replayed(posted)) => Ok(Ok(posted)),
        Err(Step::Refused(error)) => Ok(Err(error)),
        Err(Step::Database(error)) => Err(error),
    }
}

/// The batch's accounts, when the whole batch is plain transfers on accounts already known:
/// then nothing needs reading or locking before the insert.
fn known_plain(cache: &AccountCache, jobs: &[Job]) -> Option<HashMap<AccountId, Account>> {
    let cached = cache.read().expect("account cache lock");
    let mut accounts = HashMap::new();
    for job in jobs {
        let WriteRequest::Post(transaction) = &job.request else {
            return None;
        };
        for leg in &transaction.legs {
            let account = cached.get(&leg.account)?;
            if account.guard != Guard::None {
                return None;
            }
            accounts.insert(account.id, account.clone());
        }
    }
    Some(accounts)
}

/// Applies every job in one transaction (on PostgreSQL, a batch of plain transfers on known
/// accounts in one statement). A job refused for its own reason wrote nothing, and the others go
/// on; a database failure rolls back the whole batch, which is then retried or failed.
/// The accounts a batch touches, from the cache where it has them and the database otherwise
/// (which fills the cache).
async fn touched_accounts(
    transaction: &mut sqlx::AnyConnection,
    cache: &AccountCache,
    jobs: &[Job],
) -> Result<HashMap<AccountId, Account>, sqlx::Error> {
    let mut touched = BTreeSet::<AccountId>::new();
    for job in jobs {
        touched.extend(store::accounts_touched(&mut *transaction, &job.request).await?);
    }
    let mut accounts: HashMap<AccountId, Account> = {
        let cached = cache.read().expect("account cache lock");
        touched
            .iter()
            .filter_map(|id| cached.get(id).map(|account| (*id, account.clone())))
            .collect()
    };
    let missing: BTreeSet<AccountId> = touched
        .iter()
        .filter(|id| !accounts.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        let loaded = store::accounts(&mut *transaction, &missing).await?;
        cache
            .write()
            .expect("account cache lock")
            .extend(loaded.iter().map(|(id, account)| (*id, account.clone())));
        accounts.extend(loaded);
    }
    Ok(accounts)
}

async fn apply_batch(
    database: &Database,
    plain_database: &Database,
    cache: &AccountCache,
    jobs: &[Job],
) -> Result<Vec<Result<Posted, LedgerError>>, sqlx::Error> {
    let now = tandem_domain::now();
    if database.backend() == Backend::Postgres
        && let Some(accounts) = known_plain(cache, jobs)
    {
        let plain: Vec<_> = jobs
            .iter()
            .filter_map(|job| match &job.request {
                WriteRequest::Post(new) => Some((job.key.as_str(), &job.request, new)),
                _ => None,
            })
            .collect();
        let mut connection = plain_database.pool().acquire().await?;
        if let Some(outcomes) = store::post_plain(&mut connection, &accounts, &plain, now, true)
            .await?
            .finished()
        {
            return Ok(outcomes);
        }
        // Sealed past `now` while the batch waited: it goes the transactional way, stamped at
        // the seal.
    }
    let mut transaction = database.begin_write().await?;
    let sealed = crate::checkpoints::hold_seal(&mut transaction).await?;
    let now = now.max(tandem_domain::from_unix_micros(sealed));
    let accounts = touched_accounts(&mut transaction, cache, jobs).await?;
    let guarded: BTreeSet<AccountId> = accounts
        .values()
        .filter(|account| account.guard != Guard::None)
        .map(|account| account.id)
        .collect();
    store::lock_guarded(&mut transaction, database.backend(), &guarded).await?;

    // Plain transfers first, all in a couple of statements; then each other request in queue
    // order. Every request of a batch commits at the same instant, so their order inside it is
    // not observable.
    let mut outcomes: Vec<Option<Result<Posted, LedgerError>>> = vec![None; jobs.len()];
    let mut plain = Vec::new();
    let mut plain_positions = Vec::new();
    for (position, job) in jobs.iter().enumerate() {
        if let store::WriteRequest::Post(new) = &job.request
            && store::is_plain(&job.request, &accounts)
        {
            plain.push((job.key.as_str(), &job.request, new));
            plain_positions.push(position);
        }
    }
    let posted = store::post_plain(&mut transaction, &accounts, &plain, now, false)
        .await?
        .finished()
        .expect("a batch holding the seal is never sealed past");
    for (position, outcome) in plain_positions.into_iter().zip(posted) {
        outcomes[position] = Some(outcome);
    }
    for (job, outcome) in jobs.iter().zip(outcomes.iter_mut()) {
        if outcome.is_none() {
            let applied =
                store::apply(&mut transaction, &accounts, &job.key, &job.request, now).await;
            *outcome = Some(settle(applied)?);
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every job has an outcome"))
        .collect();
    transaction.commit().await?;
    Ok(outcomes)
}
