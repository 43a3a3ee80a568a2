//! `tandem bench settlement`: a settlement run over a period of a million (or ten million)
//! ledger entries on PostgreSQL, beside the bare `GROUP BY` over the same entries as the
//! yardstick, measured in the same run on the same server.
//!
//! The entries are loaded by SQL straight into a scratch database that `tandem serve`'s own
//! migrations made: conversions between partners, each a payer's debit, a payee's credit and the
//! exchange's fee, committed over the day before the cut-off. Each round creates the run through
//! the same code `CreateSettlementRun` calls, then cancels it, so the next round closes the same
//! period again.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use secrecy::SecretString;
use sqlx::{Connection, Executor};
use tandem_ledger::{AccountId, Guard, Ledger, LedgerOptions, Owner, Purpose, Unit};
use tandem_settlement::{NewRun, Settlement, SettlementOptions};
use tandem_storage::Location;

use crate::bench::ScratchDatabase;

/// What `tandem bench settlement` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct SettlementBenchArgs {
    /// A postgres:// URL of the server to measure; the bench creates and drops its own database there.
    #[arg(long, env = "TANDEM_BENCH_DATABASE_URL", hide_env_values = true)]
    pub postgres: String,
    /// Ledger entries in the period, comma-separated: one measurement each.
    #[arg(long, default_value = "1000000", value_delimiter = ',')]
    pub entries: Vec<u64>,
    /// Partners the conversions run between.
    #[arg(long, default_value_t = 10)]
    pub partners: usize,
    /// Runs (and yardstick queries) per size; the table gives the median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Leave the scratch database (its name is printed) for a look at the plans afterwards.
    #[arg(long)]
    pub keep_database: bool,
}

/// One size's figures.
struct Measurement {
    entries: u64,
    load: Duration,
    yardstick: Duration,
    run: Duration,
    run_entries: i64,
    peak_rss_kib: Option<u64>,
}

/// The bench's ops user: runs are created as this name.
const BENCH_OPS_USER: &str = "bench-ops";

/// The length of the period the benches load, in microseconds.
const DAY_MICROS: i64 = 86_400_000_000;

/// Entries per conversion: the payer's debit, the payee's credit, the exchange's fee.
const LEGS: u64 = 3;

pub async fn run(args: SettlementBenchArgs) -> anyhow::Result<()> {
    if !(args.postgres.starts_with("postgres://") || args.postgres.starts_with("postgresql://")) {
        bail!("--postgres must be a postgres:// URL");
    }
    if args.partners < 2 || args.rounds == 0 {
        bail!("--partners must be at least 2 and --rounds at least 1");
    }
    sqlx::any::install_default_drivers();
    let mut results = Vec::new();
    for &entries in &args.entries {
        results.push(measure(&args, entries).await?);
    }
    print_table(&results);
    Ok(())
}

async fn measure(args: &SettlementBenchArgs, entries: u64) -> anyhow::Result<Measurement> {
    let (scratch, database, ledger, settlement) =
        scratch_settlement(&args.postgres, "settlement").await?;
    let accounts = open_accounts(&ledger, args.partners).await?;

    eprintln!("loading {entries} entries");
    let cutoff = tandem_domain::now();
    let started = Instant::now();
    load_entries(&scratch.url, &accounts, entries / LEGS, cutoff).await?;
    let load = started.elapsed();
    eprintln!("loaded in {load:.1?}");

    let mut yardsticks = Vec::new();
    let mut runs = Vec::new();
    let mut run_entries = 0;
    for round in 0..args.rounds {
        crate::bench::checkpoint(&args.postgres).await;
        yardsticks.push(yardstick(&scratch.url).await?);
        crate::bench::checkpoint(&args.postgres).await;
        let started = Instant::now();
        let (run, _) = settlement
            .create_run(
                BENCH_OPS_USER,
                NewRun {
                    idempotency_key: format!("bench-{round}"),
                    currency: Unit::parse("USD").expect("a valid unit"),
                    currency_scale: 2,
                    cutoff,
                },
            )
            .await
            .context("creating the settlement run")?;
        runs.push(started.elapsed());
        run_entries = run.entry_count;
        eprintln!(
            "round {}: yardstick {} ms, run {} ms over {} entries",
            round + 1,
            yardsticks[round].as_millis(),
            runs[round].as_millis(),
            run.entry_count
        );
        settlement
            .cancel_run(
                BENCH_OPS_USER,
                &run.run_id,
                "the bench closes the period again",
            )
            .await
            .context("cancelling the bench's run")?;
    }
    database.close().await;
    if args.keep_database {
        eprintln!("kept the database: {}", scratch.url);
    } else {
        scratch.drop_now().await?;
    }
    Ok(Measurement {
        entries,
        load,
        yardstick: median(&mut yardsticks),
        run: median(&mut runs),
        run_entries,
        peak_rss_kib: peak_rss_kib(),
    })
}

/// A scratch database with the settlement service's tables, and the ledger and settlement logic
/// on it, as `tandem serve` builds them.
async fn scratch_settlement(
    admin_url: &str,
    purpose: &str,
) -> anyhow::Result<(
    ScratchDatabase,
    tandem_storage::Database,
    Ledger,
    Settlement,
)> {
    let scratch = ScratchDatabase::create(admin_url, purpose).await?;
    let database = tandem_settlement::open_database(&Location::Postgres(SecretString::from(
        scratch.url.clone(),
    )))
    .await?;
    let ledger = Ledger::new(
        database.clone(),
        LedgerOptions::for_backend(database.backend()),
    );
    let settlement = Settlement::new(
        database.clone(),
        ledger.clone(),
        SettlementOptions::default(),
    );
    Ok((scratch, database, ledger, settlement))
}

/// The partners' settlement accounts, then the exchange's fee account, in USD.
async fn open_accounts(ledger: &Ledger, partners: usize) -> anyhow::Result<Vec<AccountId>> {
    let usd = Unit::parse("USD").expect("a valid unit");
    let mut accounts = Vec::with_capacity(partners + 1);
    for index in 0..partners {
        // Distinct owners make distinct accounts; bench owners are made-up partner ids.
        let owner = Owner::Partner(
            format!("00000000-0000-7000-8000-{index:012}")
                .parse()
                .expect("a valid id"),
        );
        let account = ledger
            .open_account(owner, Purpose::Settlement, &usd, 2, Guard::None)
            .await?;
        accounts.push(account.id);
    }
    let fees = ledger
        .open_account(Owner::Exchange, Purpose::Fees, &usd, 2, Guard::None)
        .await?;
    accounts.push(fees.id);
    Ok(accounts)
}

/// Conversion `g`'s transaction id, shaped as the UUIDv7 the ledger gives: its commit time's
/// milliseconds first, so ids follow commit order as they do in a real ledger.
const TRANSACTION_ID: &str = "(SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' \
     || lpad(to_hex(g % 4096), 3, '0') || '-8' || lpad(to_hex((g / 4096) % 4096), 3, '0') || '-' \
     || lpad(to_hex(g), 12, '0') \
     FROM (SELECT lpad(to_hex(($1 - ($2 - g) * $3 / $2) / 1000), 12, '0') AS h) AS millis)";

/// `conversions` conversions of 1.00 to 100.99 USD, each with a 1% fee, between the partners
/// (the last account is the exchange's fees), committed over the day before `cutoff`.
async fn load_entries(
    url: &str,
    accounts: &[AccountId],
    conversions: u64,
    cutoff: tandem_domain::Timestamp,
) -> anyhow::Result<()> {
    let mut connection = settlement_connection(url).await?;
    let partners = (accounts.len() - 1) as i64;
    let ids: Vec<String> = accounts.iter().map(ToString::to_string).collect();
    let end = tandem_domain::to_unix_micros(cutoff) - 1;
    let day = DAY_MICROS;
    let conversions = conversions as i64;
    load_transactions(&mut connection, end, conversions).await?;
    // Leg 0: the payer's debit; leg 1: the payee's credit (another partner); leg 2: the fee.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ledger_entries (transaction_id, leg, account_id, unit, debit_minor, \
         credit_minor, phase, committed_at_micros) \
         SELECT {TRANSACTION_ID}, leg, \
         CASE leg WHEN 0 THEN $4[(1 + g % $5)::int] \
                  WHEN 1 THEN $4[(1 + (g + 1 + (g / $5) % ($5 - 1)) % $5)::int] \
                  ELSE $4[($5 + 1)::int] END, \
         'USD', CASE leg WHEN 0 THEN 100 + g % 10000 ELSE 0 END, \
         CASE leg WHEN 0 THEN 0 WHEN 1 THEN 100 + g % 10000 - (100 + g % 10000) / 100 \
                  ELSE (100 + g % 10000) / 100 END, \
         'POSTED', $1 - ($2 - g) * $3 / $2 \
         FROM generate_series(1, $2) AS g CROSS JOIN generate_series(0, 2) AS leg"
    )))
    .bind(end)
    .bind(conversions)
    .bind(day)
    .bind(&ids)
    .bind(partners)
    .execute(&mut connection)
    .await
    .context("loading entries")?;
    connection.execute("ANALYZE").await?;
    connection.close().await?;
    Ok(())
}

/// A connection to the scratch database's settlement schema, where `tandem serve` keeps the
/// ledger.
async fn settlement_connection(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    connection.execute("SET search_path TO settlement").await?;
    Ok(connection)
}

/// `count` conversion transactions, committed evenly over the day up to `end` (micros): $1 the
/// period's last microsecond, $2 the count, $3 a day, as the entries' statements read them too.
async fn load_transactions(
    connection: &mut sqlx::PgConnection,
    end: i64,
    count: i64,
) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ledger_transactions (transaction_id, idempotency_key, content, kind, \
         type_code, external_reference, effective_at_micros, committed_at_micros, metadata) \
         SELECT {TRANSACTION_ID}, 'bench-' || g, 'sha256:bench', 'POSTED', \
         'CONVERSION', 'conversion-' || g, $1 - ($2 - g) * $3 / $2, $1 - ($2 - g) * $3 / $2, '{{}}' \
         FROM generate_series(1, $2) AS g"
    )))
    .bind(end)
    .bind(count)
    .bind(DAY_MICROS)
    .execute(connection)
    .await
    .context("loading transactions")?;
    Ok(())
}

/// The yardstick: every account's net over the same table, the least a run could read.
async fn yardstick(url: &str) -> anyhow::Result<Duration> {
    let mut connection = settlement_connection(url).await?;
    let started = Instant::now();
    let rows = sqlx::query(
        "SELECT account_id, SUM(credit_minor - debit_minor) FROM ledger_entries \
         GROUP BY account_id",
    )
    .fetch_all(&mut connection)
    .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(!rows.is_empty(), "the yardstick read no entries");
    connection.close().await?;
    Ok(elapsed)
}

fn median(durations: &mut [Duration]) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}

/// This process's peak resident memory (VmHWM), where the system reports it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn print_table(results: &[Measurement]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "entries",
        "load",
        "GROUP BY (yardstick)",
        "settlement run",
        "run ÷ yardstick",
        "entries in the run",
        "bench peak RSS",
    ]);
    for result in results {
        table.add_row(vec![
            result.entries.to_string(),
            format!("{:.1?}", result.load),
            format!("{} ms", result.yardstick.as_millis()),
            format!("{} ms", result.run.as_millis()),
            format!(
                "{:.2}×",
                result.run.as_secs_f64() / result.yardstick.as_secs_f64()
            ),
            result.run_entries.to_string(),
            result
                .peak_rss_kib
                .map_or_else(|| "n/a".to_owned(), |kib| format!("{} MiB", kib / 1024)),
        ]);
    }
    println!("{table}");
    println!(
        "Medians of each size's rounds. The run is CreateSettlementRun's own code, in this \
         process; the yardstick is SELECT account_id, SUM(credit_minor - debit_minor) FROM \
         ledger_entries GROUP BY account_id over the same table."
    );
}

/// What `tandem bench reconcile` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileBenchArgs {
    /// A postgres:// URL of the server to measure; the bench creates and drops its own database there.
    #[arg(long, env = "TANDEM_BENCH_DATABASE_URL", hide_env_values = true)]
    pub postgres: String,
    /// Partner records (and as many of Tandem's), comma-separated, smallest first: one
    /// measurement each, with this process's peak memory after each.
    #[arg(long, default_value = "100000,1000000", value_delimiter = ',')]
    pub records: Vec<u64>,
    /// Leave the scratch databases (their names are printed) for a look at the plans afterwards.
    #[arg(long)]
    pub keep_database: bool,
}

/// One size's figures.
struct Reconciled {
    records: u64,
    staged: Duration,
    compared: Duration,
    matched: i64,
    peak_rss_kib: Option<u64>,
}

/// Records staged in one statement, as `SubmitPartnerReport` stages them.
const RECORDS_PER_BATCH: u64 = 500;

pub async fn reconcile(args: ReconcileBenchArgs) -> anyhow::Result<()> {
    if !(args.postgres.starts_with("postgres://") || args.postgres.starts_with("postgresql://")) {
        bail!("--postgres must be a postgres:// URL");
    }
    sqlx::any::install_default_drivers();
    let mut results = Vec::new();
    for &records in &args.records {
        results.push(measure_reconciliation(&args, records).await?);
    }
    print_reconciliations(&results);
    Ok(())
}

/// A partner's `records` conversions in Tandem's ledger, then the partner's own record of each,
/// staged in batches and compared: every one matches.
async fn measure_reconciliation(
    args: &ReconcileBenchArgs,
    records: u64,
) -> anyhow::Result<Reconciled> {
    let admin_url = args.postgres.as_str();
    let (scratch, database, ledger, settlement) =
        scratch_settlement(admin_url, "reconcile").await?;
    let partner: tandem_domain::PartnerId = "00000000-0000-7000-8000-000000000001"
        .parse()
        .expect("a valid id");
    let points = Unit::parse("BENCH_PTS").expect("a valid unit");
    let usd = Unit::parse("USD").expect("a valid unit");
    let clearing = ledger
        .open_account(
            Owner::Partner(partner),
            Purpose::ProgramClearing,
            &points,
            0,
            Guard::None,
        )
        .await?;
    let settlement_account = ledger
        .open_account(
            Owner::Partner(partner),
            Purpose::Settlement,
            &usd,
            2,
            Guard::None,
        )
        .await?;
    let end = tandem_domain::now();
    let start = end - chrono::Duration::days(1);
    eprintln!("loading {records} of Tandem's records");
    load_partner_conversions(
        &scratch.url,
        (clearing.id, settlement_account.id),
        records,
        end,
    )
    .await?;

    crate::bench::checkpoint(admin_url).await;
    let id = settlement.new_report_id();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(RECORDS_PER_BATCH as usize);
    for g in 1..=records {
        batch.push((g as i64, partner_record(g, records, end)));
        if batch.len() as u64 == RECORDS_PER_BATCH {
            settlement.stage_records(&id, &batch).await?;
            batch.clear();
        }
    }
    settlement.stage_records(&id, &batch).await?;
    let staged = started.elapsed();
    let started = Instant::now();
    let header = tandem_settlement::ReportHeader {
        partner,
        start,
        end,
        dry_run: false,
        amount_tolerance_minor: 0,
        time_tolerance_seconds: 300,
    };
    let reconciliation = settlement
        .reconcile(BENCH_OPS_USER, &id, &header, records as i64)
        .await?;
    let compared = started.elapsed();
    let matched = reconciliation.counts.get("MATCHED").copied().unwrap_or(0);
    eprintln!(
        "{records} records: staged in {} ms, compared in {} ms, {matched} matched",
        staged.as_millis(),
        compared.as_millis()
    );
    database.close().await;
    if args.keep_database {
        eprintln!("kept the database: {}", scratch.url);
    } else {
        scratch.drop_now().await?;
    }
    Ok(Reconciled {
        records,
        staged,
        compared,
        matched,
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Conversion `g` of `records`: its points, money and commit time, the same on both sides.
fn conversion(g: u64, records: u64, end: tandem_domain::Timestamp) -> (i64, i64, i64) {
    let day = DAY_MICROS;
    let at = tandem_domain::to_unix_micros(end) - 1 - (records - g) as i64 * day / records as i64;
    (1_000 + (g % 5_000) as i64, 100 + (g % 10_000) as i64, at)
}

/// The partner's record of conversion `g`: points into its program, money it is owed less.
fn partner_record(
    g: u64,
    records: u64,
    end: tandem_domain::Timestamp,
) -> tandem_settlement::PartnerRecord {
    let (points, money, at) = conversion(g, records, end);
    tandem_settlement::PartnerRecord {
        partner_record_id: format!("partner-{g}"),
        reference: format!("conversion-{g}"),
        kind: "CONVERSION".to_owned(),
        points,
        money_minor: Some(-money),
        at: tandem_domain::from_unix_micros(at),
    }
}

/// Tandem's side of `records` conversions into the partner's program, loaded by SQL: each
/// credits its program clearing account the points and debits its settlement account the money
/// (the other legs, on other parties' accounts, do not enter its reconciliation).
async fn load_partner_conversions(
    url: &str,
    (clearing, settlement): (AccountId, AccountId),
    records: u64,
    end: tandem_domain::Timestamp,
) -> anyhow::Result<()> {
    let mut connection = settlement_connection(url).await?;
    let end = tandem_domain::to_unix_micros(end) - 1;
    let day = DAY_MICROS;
    let records = records as i64;
    // The same formulas as `conversion`: $1 the period's last microsecond, $2 the count, $3 a day.
    load_transactions(&mut connection, end, records).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ledger_entries (transaction_id, leg, account_id, unit, debit_minor, \
         credit_minor, phase, committed_at_micros) \
         SELECT {TRANSACTION_ID}, leg, CASE leg WHEN 0 THEN $4 ELSE $5 END, \
         CASE leg WHEN 0 THEN 'BENCH_PTS' ELSE 'USD' END, \
         CASE leg WHEN 0 THEN 0 ELSE 100 + g % 10000 END, \
         CASE leg WHEN 0 THEN 1000 + g % 5000 ELSE 0 END, \
         'POSTED', $1 - ($2 - g) * $3 / $2 \
         FROM generate_series(1, $2) AS g CROSS JOIN generate_series(0, 1) AS leg"
    )))
    .bind(end)
    .bind(records)
    .bind(day)
    .bind(clearing.to_string())
    .bind(settlement.to_string())
    .execute(&mut connection)
    .await
    .context("loading entries")?;
    connection.execute("ANALYZE").await?;
    connection.close().await?;
    Ok(())
}

fn print_reconciliations(results: &[Reconciled]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "records (each side)",
        "staging the partner's",
        "comparing",
        "total",
        "matched",
        "bench peak RSS after",
    ]);
    for result in results {
        table.add_row(vec![
            result.records.to_string(),
            format!("{} ms", result.staged.as_millis()),
            format!("{} ms", result.compared.as_millis()),
            format!("{} ms", (result.staged + result.compared).as_millis()),
            result.matched.to_string(),
            result
                .peak_rss_kib
                .map_or_else(|| "n/a".to_owned(), |kib| format!("{} MiB", kib / 1024)),
        ]);
    }
    println!("{table}");
    println!(
        "Staging and comparing are SubmitPartnerReport's own code (records staged {RECORDS_PER_BATCH} \
         at a time), in this process, without the gRPC stream; peak memory is this process's \
         high-water mark after each size, smallest size first."
    );
}
