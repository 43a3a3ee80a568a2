//! `tandem bench ledger`: ledger transfers per second on PostgreSQL, spread over many accounts
//! and all on one hot pair, at several writer counts, with pgbench's TPC-B measured on the same
//! server in the same run as the yardstick.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use secrecy::SecretString;
use sqlx::{AnyConnection, Connection, Executor};
use tandem_ledger::{
    AccountId, Direction, Guard, Ledger, LedgerOptions, Leg, NewKind, NewTransaction, Owner,
    Purpose, Unit,
};
use tandem_storage::{Database, Location};

/// What `tandem bench ledger` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerBenchArgs {
    /// A postgres:// URL of the server to measure; the bench creates and drops its own databases there.
    #[arg(long, env = "TANDEM_BENCH_DATABASE_URL", hide_env_values = true)]
    pub postgres: String,
    /// How long each measurement runs.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Concurrent writers (and pgbench clients), comma-separated.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub writers: Vec<usize>,
    /// Accounts the spread case picks from.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Skip pgbench (when it is not installed).
    #[arg(long)]
    pub without_pgbench: bool,
}

struct Measurement {
    case: &'static str,
    writers: usize,
    per_second: f64,
}

/// A fresh database on the server, dropped when the bench ends.
pub(crate) struct ScratchDatabase {
    admin_url: String,
    name: String,
    pub(crate) url: String,
}

impl ScratchDatabase {
    pub(crate) async fn create(admin_url: &str, purpose: &str) -> anyhow::Result<Self> {
        let name = format!("tandem_bench_{purpose}_{}", std::process::id());
        let mut admin = AnyConnection::connect(admin_url)
            .await
            .context("connecting to PostgreSQL")?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url, None), |(base, query)| (base, Some(query)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = match query {
            Some(query) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}"),
        };
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    pub(crate) async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = AnyConnection::connect(&self.admin_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        Ok(())
    }
}

pub async fn ledger(args: LedgerBenchArgs) -> anyhow::Result<()> {
    if !(args.postgres.starts_with("postgres://") || args.postgres.starts_with("postgresql://")) {
        bail!("--postgres must be a postgres:// URL");
    }
    let duration = humantime::parse_duration(&args.duration).context("--duration")?;
    sqlx::any::install_default_drivers();

    let scratch = ScratchDatabase::create(&args.postgres, "ledger").await?;
    let database = Database::open(
        &Location::Postgres(SecretString::from(scratch.url.clone())),
        "settlement",
        &tandem_ledger::MIGRATOR,
    )
    .await?;
    let ledger = Ledger::new(
        database.clone(),
        LedgerOptions::for_backend(database.backend()),
    );
    eprintln!("opening {} accounts", args.accounts);
    let accounts = open_accounts(&ledger, args.accounts.max(2)).await?;

    let mut results = Vec::new();
    for &writers in &args.writers {
        for case in ["spread", "hot pair"] {
            let picker = if case == "spread" {
                Picker::Spread(accounts.clone())
            } else {
                Picker::HotPair(accounts[0], accounts[1])
            };
            checkpoint(&args.postgres).await;
            let per_second = run_transfers(&ledger, picker, writers, duration).await?;
            eprintln!("{case:>8} × {writers:>2} writers: {per_second:>8.0} transfers/s");
            results.push(Measurement {
                case,
                writers,
                per_second,
            });
        }
    }
    database.close().await;
    scratch.drop_now().await?;

    let pgbench = if args.without_pgbench {
        BTreeMap::new()
    } else {
        pgbench_tps(&args.postgres, &args.writers, duration).await?
    };
    print_table(&results, &pgbench);
    Ok(())
}

async fn open_accounts(ledger: &Ledger, count: usize) -> anyhow::Result<Vec<AccountId>> {
    let usd = Unit::parse("USD").expect("a valid unit");
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (ledger, usd, next) = (ledger.clone(), usd.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut opened = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                if index >= count {
                    return Ok::<_, tandem_ledger::LedgerError>(opened);
                }
                // Distinct owners make distinct accounts; bench owners are made-up partner ids.
                let owner = Owner::Partner(
                    format!("00000000-0000-7000-8000-{index:012}")
                        .parse()
                        .expect("a valid id"),
                );
                opened.push(
                    ledger
                        .open_account(owner, Purpose::Settlement, &usd, 2, Guard::None)
                        .await?
                        .id,
                );
            }
        }));
    }
    let mut accounts = Vec::with_capacity(count);
    for task in tasks {
        accounts.extend(task.await??);
    }
    accounts.sort();
    Ok(accounts)
}

#[derive(Clone)]
enum Picker {
    Spread(Vec<AccountId>),
    HotPair(AccountId, AccountId),
}

impl Picker {
    fn pick(&self, seed: &mut u64) -> (AccountId, AccountId) {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        match self {
            Picker::Spread(accounts) => {
                let from = (*seed >> 33) as usize % accounts.len();
                let to =
                    (from + 1 + (*seed >> 13) as usize % (accounts.len() - 1)) % accounts.len();
                (accounts[from], accounts[to])
            }
            Picker::HotPair(a, b) if *seed & 1 == 0 => (*a, *b),
            Picker::HotPair(a, b) => (*b, *a),
        }
    }
}

/// Posts transfers from `writers` concurrent tasks for `duration`; returns transfers per second.
async fn run_transfers(
    ledger: &Ledger,
    picker: Picker,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let run = uuid_like();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (ledger, picker, stop, done, run) = (
            ledger.clone(),
            picker.clone(),
            stop.clone(),
            done.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seed = writer as u64 + 1;
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let (from, to) = picker.pick(&mut seed);
                let transfer = NewTransaction {
                    idempotency_key: format!("{run}-{writer}-{sequence}"),
                    legs: vec![
                        Leg {
                            account: from,
                            direction: Direction::Debit,
                            amount_minor: 100,
                        },
                        Leg {
                            account: to,
                            direction: Direction::Credit,
                            amount_minor: 100,
                        },
                    ],
                    kind: NewKind::Posted,
                    type_code: "BENCH".to_owned(),
                    external_reference: String::new(),
                    effective_at_micros: None,
                    metadata: BTreeMap::new(),
                };
                ledger.post(transfer).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tandem_ledger::LedgerError>(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(counted as f64 / elapsed.as_secs_f64())
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

/// The machine's CPU time so far, in ticks of the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    /// User, nice, system, irq and softirq: the work this machine's processes and kernel did.
    busy: u64,
    /// Steal: time the hypervisor gave another guest while this one had work to run.
    stolen: u64,
    /// Every tick of every CPU, idle and waiting on I/O included.
    all: u64,
}

fn cpu_ticks(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    Some(CpuTicks {
        busy,
        stolen: steal,
        all: busy + steal + idle + iowait,
    })
}

/// The machine's CPU time so far; `None` off Linux. Every process of a benchmark (server,
/// gateways, PostgreSQL, the load itself) runs on this machine, so busy time over a measurement
/// divided by the work done is what each unit of work costs the machine: a figure that, unlike a
/// throughput ratio, does not depend on whether the yardstick waits on the disk or on the CPU.
pub(crate) fn machine_cpu() -> Option<CpuTicks> {
    cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// What one measurement cost the machine, between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuUse {
    /// Microseconds of busy CPU per unit of work. Stolen time is left out: it is time the
    /// machine wanted and did not get, not work done.
    pub micros_per_unit: Option<f64>,
    /// The share of the machine's time the hypervisor gave to other guests. On a shared virtual
    /// machine a measurement that lost much of its time this way ran slower for reasons outside
    /// the code, and its ratio to a yardstick measured at another moment says little.
    pub stolen_share: Option<f64>,
}

pub(crate) fn cpu_use(before: Option<CpuTicks>, after: Option<CpuTicks>, work: f64) -> CpuUse {
    let (Some(before), Some(after)) = (before, after) else {
        return CpuUse::default();
    };
    let busy = after.busy.saturating_sub(before.busy) as f64 / TICKS_PER_SECOND;
    let stolen = after.stolen.saturating_sub(before.stolen) as f64;
    let all = after.all.saturating_sub(before.all) as f64;
    CpuUse {
        micros_per_unit: (work > 0.0).then(|| busy * 1_000_000.0 / work),
        stolen_share: (all > 0.0).then(|| stolen / all),
    }
}

/// The ticks of `/proc/stat` a second (the kernel's USER_HZ, 100 on every Linux architecture
/// Tandem builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// Asks the server to write every dirty page out now, so the next measurement starts clean
/// instead of paying for the pages the previous one (Tandem's or pgbench's) left behind.
/// CHECKPOINT needs a superuser or the `pg_checkpoint` role; without it the bench goes on and
/// says so once.
pub(crate) async fn checkpoint(admin_url: &str) {
    static REFUSED: AtomicBool = AtomicBool::new(false);
    let outcome = async {
        let mut admin = AnyConnection::connect(admin_url).await?;
        admin.execute("CHECKPOINT").await?;
        admin.close().await
    }
    .await;
    if let Err(error) = outcome
        && !REFUSED.swap(true, Ordering::Relaxed)
    {
        eprintln!("CHECKPOINT before each measurement failed ({error}); measuring without it");
    }
}

/// What pgbench achieved at one client count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Yardstick {
    pub tps: f64,
    /// The machine's CPU per TPC-B transaction and the time stolen from it, where they can be
    /// read.
    pub cpu: CpuUse,
}

/// pgbench's TPC-B on a scratch database of scale 10 on the same server: the yardstick every
/// Tandem benchmark is compared against. Prepared once, then measured at each client count
/// right beside the Tandem measurement it is compared with.
pub(crate) struct Pgbench {
    admin_url: String,
    scratch: ScratchDatabase,
}

impl Pgbench {
    pub(crate) async fn prepare(admin_url: &str) -> anyhow::Result<Self> {
        let scratch = ScratchDatabase::create(admin_url, "pgbench").await?;
        run_pgbench(&["-i", "-s", "10", "-q", &scratch.url])?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            scratch,
        })
    }

    /// TPC-B at `clients` for `duration`, after a checkpoint.
    pub(crate) async fn measure(
        &self,
        clients: usize,
        duration: Duration,
    ) -> anyhow::Result<Yardstick> {
        checkpoint(&self.admin_url).await;
        let threads = clients
            .min(std::thread::available_parallelism().map_or(2, usize::from))
            .to_string();
        let before = machine_cpu();
        let output = run_pgbench(&[
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &threads,
            "-T",
            &duration.as_secs().max(1).to_string(),
            &self.scratch.url,
        ])?;
        let after = machine_cpu();
        let tps = parse_tps(&output).context("reading pgbench's tps")?;
        let transactions = parse_transactions(&output).unwrap_or(0.0);
        eprintln!(" pgbench × {clients:>2} clients: {tps:>8.0} tps");
        Ok(Yardstick {
            tps,
            cpu: cpu_use(before, after, transactions),
        })
    }

    pub(crate) async fn finish(self) -> anyhow::Result<()> {
        self.scratch.drop_now().await
    }
}

/// pgbench's TPC-B transactions per second at each client count, one after another.
pub(crate) async fn pgbench_tps(
    admin_url: &str,
    client_counts: &[usize],
    duration: Duration,
) -> anyhow::Result<BTreeMap<usize, Yardstick>> {
    let pgbench = Pgbench::prepare(admin_url).await?;
    let mut tps_by_clients = BTreeMap::new();
    for &clients in client_counts {
        tps_by_clients.insert(clients, pgbench.measure(clients, duration).await?);
    }
    pgbench.finish().await?;
    Ok(tps_by_clients)
}

fn run_pgbench(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("pgbench").args(args).output().context(
        "running pgbench (install PostgreSQL's client tools, or pass --without-pgbench)",
    )?;
    if !output.status.success() {
        bail!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// How many transactions pgbench completed, from its report.
fn parse_transactions(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|number| number.parse().ok())
}

fn print_table(results: &[Measurement], pgbench: &BTreeMap<usize, Yardstick>) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "writers",
        "spread transfers/s",
        "hot pair transfers/s",
        "hot ÷ spread",
        "pgbench TPC-B tps",
        "spread ÷ pgbench",
        "hot ÷ pgbench",
    ]);
    let writers: std::collections::BTreeSet<usize> =
        results.iter().map(|result| result.writers).collect();
    for count in writers {
        let rate = |case: &str| {
            results
                .iter()
                .find(|result| result.writers == count && result.case == case)
                .map_or(0.0, |result| result.per_second)
        };
        let (spread, hot) = (rate("spread"), rate("hot pair"));
        let yardstick = pgbench.get(&count).map(|yardstick| yardstick.tps);
        let ratio =
            |value: f64| yardstick.map_or("–".to_owned(), |tps| format!("{:.2}", value / tps));
        table.add_row([
            count.to_string(),
            format!("{spread:.0}"),
            format!("{hot:.0}"),
            format!("{:.2}", hot / spread),
            yardstick.map_or("–".to_owned(), |tps| format!("{tps:.0}")),
            ratio(spread),
            ratio(hot),
        ]);
    }
    println!("{table}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_tps_is_read_from_its_report() {
        let report = "number of transactions actually processed: 1234\nlatency average = 8.1 ms\ntps = 123.456789 (without initial connection time)\n";
        assert_eq!(parse_tps(report), Some(123.456789));
        assert_eq!(parse_tps("no numbers here"), None);
        assert_eq!(parse_transactions(report), Some(1234.0));
        // pgbench with -t reports what it did out of what it was asked.
        let bounded = "number of transactions actually processed: 800/800\n";
        assert_eq!(parse_transactions(bounded), Some(800.0));
    }

    #[test]
    fn busy_time_leaves_out_idle_io_wait_and_stolen_time() {
        let stat = "cpu  100 2 30 5000 70 4 5 6 0 0\ncpu0 50 1 15 2500 35 2 2 3 0 0\n";
        assert_eq!(
            cpu_ticks(stat),
            Some(CpuTicks {
                busy: 100 + 2 + 30 + 4 + 5,
                stolen: 6,
                all: 100 + 2 + 30 + 5000 + 70 + 4 + 5 + 6,
            })
        );
        assert_eq!(cpu_ticks("cpu  1 2 3\n"), None);
        assert_eq!(cpu_ticks("intr 5\n"), None);
    }

    #[test]
    fn a_measurements_cpu_is_its_busy_time_per_unit_and_its_stolen_share() {
        let before = CpuTicks {
            busy: 1_000,
            stolen: 10,
            all: 5_000,
        };
        // 2 s busy and 50 ticks stolen out of 400: 500 µs per unit of 4,000, 12.5% stolen.
        let after = CpuTicks {
            busy: 1_200,
            stolen: 60,
            all: 5_400,
        };
        let used = cpu_use(Some(before), Some(after), 4_000.0);
        assert_eq!(used.micros_per_unit, Some(500.0));
        assert_eq!(used.stolen_share, Some(0.125));
        assert_eq!(cpu_use(None, Some(after), 4_000.0), CpuUse::default());
        let idle = cpu_use(Some(before), Some(after), 0.0);
        assert_eq!(idle.micros_per_unit, None);
        assert_eq!(idle.stolen_share, Some(0.125));
    }

    #[test]
    fn the_spread_picker_never_picks_one_account_twice() {
        let accounts: Vec<AccountId> = (0..3).map(|_| AccountId::generate()).collect();
        let picker = Picker::Spread(accounts);
        let mut seed = 7;
        for _ in 0..1000 {
            let (from, to) = picker.pick(&mut seed);
            assert_ne!(from, to);
        }
    }
}
