//! `tandem bench convert` and `tandem bench earn`: the exchange end to end over gRPC (auth,
//! PostgreSQL, two partner-sim gateways on loopback), beside pgbench TPC-B measured on the same
//! server in the same run.
//!
//! - convert: each client is a partner app converting for its own linked member, quote then
//!   execute, back to back; a conversion counts once it is COMPLETED.
//! - earn: each client streams rides over RecordActivities in batches; a ride counts once its
//!   earning is credited and posted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tandem_client::TandemClient;
use tandem_proto::v1 as pb;

use crate::{
    bench::{CpuUse, Pgbench, ScratchDatabase, Yardstick, checkpoint, cpu_use, machine_cpu},
    coalition::{Coalition, Stack},
    settings::{CommonArgs, Settings},
};

/// What the exchange benchmarks take.
#[derive(Debug, Clone, clap::Args)]
pub struct ExchangeBenchArgs {
    /// A postgres:// URL of the server to measure; the bench creates and drops its own databases there.
    #[arg(long, env = "TANDEM_BENCH_DATABASE_URL", hide_env_values = true)]
    pub postgres: String,
    /// How long each measurement runs.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Concurrent clients (and pgbench clients), comma-separated.
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// For `earn`: rides per RecordActivities stream, like a day of one market's rides. A stream
    /// must finish within the server's request timeout (30 s).
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// For `earn`: the hold period of the earn rules, in days. With 0 each ride's points are
    /// credited at the hotel's gateway at once; with a hold the ledger holds them PENDING and the
    /// gateway is called when the hold ends (after the benchmark).
    #[arg(long, default_value_t = 0)]
    pub hold_days: u32,
    /// Rounds to run, each measuring every client count once beside its own pgbench run. On a
    /// shared machine a neighbour can slow a round down; with more than one, the summary gives
    /// the median ratio per client count.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Skip pgbench (when it is not installed).
    #[arg(long)]
    pub without_pgbench: bool,
}

/// What one client count achieved.
struct Run {
    clients: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
    /// The machine's CPU per conversion or activity and the time stolen from it, where they
    /// can be read.
    cpu: CpuUse,
}

/// One round at one client count: Tandem's run and pgbench's at the same count in the same round.
struct Round {
    round: u32,
    run: Run,
    yardstick: Option<Yardstick>,
}

impl Round {
    fn ratio(&self) -> Option<f64> {
        self.yardstick
            .map(|yardstick| self.run.per_second / yardstick.tps)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Convert,
    Earn,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

pub async fn run(workload: Workload, args: ExchangeBenchArgs) -> anyhow::Result<()> {
    if !(args.postgres.starts_with("postgres://") || args.postgres.starts_with("postgresql://")) {
        bail!("--postgres must be a postgres:// URL");
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients: give one or more counts above zero");
    }
    if workload == Workload::Earn && !(1..=20_000).contains(&args.batch) {
        bail!("--batch: must be from 1 to 20000 (one stream's limit)");
    }
    let duration = humantime::parse_duration(&args.duration).context("--duration")?;
    sqlx::any::install_default_drivers();
    let pgbench = if args.without_pgbench {
        None
    } else {
        Some(Pgbench::prepare(&args.postgres).await?)
    };
    // Each measurement starts Tandem on a fresh database, measures one client count, stops
    // Tandem, and is followed at once by pgbench at the same count: the two sides of a ratio
    // run within the same half minute, on a machine in the same state. Tandem is stopped first
    // because pgbench's 64 connections and Tandem's pools together pass the server's
    // connection limit.
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        for &clients in &args.clients {
            let run = tandem_measurement(workload, &args, clients, duration).await?;
            let yardstick = match &pgbench {
                Some(pgbench) => Some(pgbench.measure(clients, duration).await?),
                None => None,
            };
            rounds.push(Round {
                round,
                run,
                yardstick,
            });
        }
    }
    if let Some(pgbench) = pgbench {
        pgbench.finish().await?;
    }
    print_table(workload, &rounds);
    if args.rounds > 1 && !args.without_pgbench {
        print_summary(&args.clients, &rounds);
    }
    Ok(())
}

/// Starts Tandem on a scratch database, forms the coalition, measures `clients` and stops it
/// all again.
async fn tandem_measurement(
    workload: Workload,
    args: &ExchangeBenchArgs,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    let scratch = ScratchDatabase::create(
        &args.postgres,
        match workload {
            Workload::Convert => "convert",
            Workload::Earn => "earn",
        },
    )
    .await?;
    let common = CommonArgs {
        config: None,
        data_dir: None,
        database_url: Some(scratch.url.clone()),
        log_format: None,
        token_audience: None,
    };
    let settings = Settings::load(&common)?;
    let storage = vec!["--database-url".to_owned(), scratch.url.clone()];
    let run = {
        let stack = Stack::start(&storage, &[]).await?;
        // No caps: a capped agreement serializes its conversions on one lock, which is a
        // business rule, not the exchange's speed.
        let coalition = Arc::new(Coalition::form(&stack, &settings, false, args.hold_days).await?);
        // One member per converting client; rides are spread over at least 64 riders, as a
        // day of rides is, so no one hotel wallet takes every credit.
        let members = match workload {
            Workload::Convert => clients,
            Workload::Earn => clients.max(64),
        };
        let links = Arc::new(link_members(&coalition, members).await?);
        // Each client is an instance of the partner's app, with its own connection and token,
        // as each pgbench client has its own connection; tokens are fetched before timing.
        let mut apps = Vec::with_capacity(clients);
        for _ in 0..clients {
            let app = coalition.app(workload == Workload::Convert).await?;
            app.access_token().await?;
            apps.push(app);
        }
        // One short warm-up, so first-use account opening is not timed.
        measure(
            workload,
            &apps,
            &links,
            1,
            Duration::from_secs(1),
            args.batch,
        )
        .await?;
        // The measurement starts from a checkpoint, so it does not pay for the dirty pages of
        // whatever ran before it.
        checkpoint(&args.postgres).await;
        let run = measure(workload, &apps, &links, clients, duration, args.batch).await?;
        eprintln!(
            "{workload:?} × {clients:>2} clients: {:>8.0}/s, p50 {:?}, p99 {:?}, {} failed",
            run.per_second, run.p50, run.p99, run.failed
        );
        run
    };
    scratch.drop_now().await?;
    Ok(run)
}

/// `count` hotel members, each rich in points, linked to a rider with none: (link id, rider).
async fn link_members(
    coalition: &Coalition,
    count: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    eprintln!("linking {count} members");
    let mut links = Vec::with_capacity(count);
    for index in 0..count {
        let (hotel_member, rider) = (format!("H-{index}"), format!("R-{index}"));
        Coalition::put_member(&coalition.hotel_gateway, &hotel_member, 1_000_000_000_000).await?;
        Coalition::put_member(&coalition.ride_gateway, &rider, 0).await?;
        links.push((coalition.link(&hotel_member, &rider).await?, rider));
    }
    Ok(links)
}

async fn measure(
    workload: Workload,
    apps: &[TandemClient],
    links: &Arc<Vec<(String, String)>>,
    clients: usize,
    duration: Duration,
    batch: usize,
) -> anyhow::Result<Run> {
    let cpu_before = machine_cpu();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let links = links.clone();
        let app = apps[client].clone();
        tasks.push(tokio::spawn(async move {
            let link_id = &links[client].0;
            let mut latencies = Vec::new();
            let mut done = 0_usize;
            let mut failed = 0_usize;
            let mut sequence = 0_u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                let (ok, bad, answered) = match workload {
                    Workload::Convert => convert_once(&app, link_id).await,
                    Workload::Earn => earn_once(&app, &links, &mut sequence, batch).await,
                };
                done += ok;
                failed += bad;
                if answered {
                    latencies.push(began.elapsed());
                }
            }
            (done, failed, latencies)
        }));
    }
    let mut done = 0;
    let mut failed = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (task_done, task_failed, task_latencies) = task.await?;
        done += task_done;
        failed += task_failed;
        latencies.extend(task_latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_use(cpu_before, machine_cpu(), done as f64);
    latencies.sort();
    Ok(Run {
        clients,
        per_second: done as f64 / elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        failed,
        cpu,
    })
}

/// One conversion, quoted and executed: (completed, failed, whether it was answered COMPLETED).
async fn convert_once(app: &TandemClient, link_id: &str) -> (usize, usize, bool) {
    let outcome = async {
        let quote = app.quote_source_points(link_id, 1_000).await?;
        app.convert(&quote.quote_id).await
    }
    .await;
    match outcome {
        Ok(conversion) if conversion.status() == pb::ConversionStatus::Completed => (1, 0, true),
        Ok(conversion) => {
            tracing::warn!(status = ?conversion.status(), error = %conversion.last_error, "a conversion did not complete in its call");
            (0, 1, false)
        }
        Err(error) => {
            tracing::warn!(%error, "a conversion failed");
            (0, 1, false)
        }
    }
}

/// One stream of `batch` rides over the linked riders: (recorded, refused, whether the stream
/// was answered).
async fn earn_once(
    app: &TandemClient,
    links: &[(String, String)],
    sequence: &mut u64,
    batch: usize,
) -> (usize, usize, bool) {
    let rides = (0..batch)
        .map(|_| {
            *sequence += 1;
            pb::RecordActivityRequest {
                // Unique across every run: a repeated id with other content is refused as reused.
                external_id: uuid::Uuid::new_v4().to_string(),
                member_id: links[*sequence as usize % links.len()].1.clone(),
                spend_amount_minor: 1_850,
                spend_currency: "USD".to_owned(),
                category: "RIDE".to_owned(),
                activity_time: Some(tandem_proto::time::timestamp(chrono::Utc::now())),
                ..Default::default()
            }
        })
        .collect();
    match app.record_activities(rides).await {
        Ok(answer) => {
            if let Some(refused) = answer.results.iter().find(|result| result.code != 0) {
                tracing::warn!(code = refused.code, message = %refused.message, "a ride was refused");
            }
            (answer.recorded as usize, answer.refused as usize, true)
        }
        Err(error) => {
            tracing::warn!(%error, "a stream failed");
            (0, batch, false)
        }
    }
}

fn print_table(workload: Workload, rounds: &[Round]) {
    let (rate, latency, unit) = match workload {
        Workload::Convert => ("conversions/s", "per conversion", "conversion"),
        Workload::Earn => ("activities/s", "per stream", "activity"),
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "clients".to_owned(),
        "round".to_owned(),
        rate.to_owned(),
        format!("p50 {latency}"),
        format!("p99 {latency}"),
        "failed".to_owned(),
        "pgbench TPC-B tps".to_owned(),
        "÷ pgbench".to_owned(),
        format!("machine CPU µs per {unit} / per TPC-B"),
        "CPU stolen".to_owned(),
    ]);
    let micros = |cpu: Option<CpuUse>| {
        cpu.and_then(|cpu| cpu.micros_per_unit)
            .map_or("–".to_owned(), |micros| format!("{micros:.0}"))
    };
    let stolen = |cpu: Option<CpuUse>| {
        cpu.and_then(|cpu| cpu.stolen_share)
            .map_or("–".to_owned(), |share| format!("{:.0}%", share * 100.0))
    };
    for round in rounds {
        let run = &round.run;
        let pgbench_cpu = round.yardstick.map(|yardstick| yardstick.cpu);
        table.add_row([
            run.clients.to_string(),
            round.round.to_string(),
            format!("{:.0}", run.per_second),
            format!("{:.1} ms", run.p50.as_secs_f64() * 1000.0),
            format!("{:.1} ms", run.p99.as_secs_f64() * 1000.0),
            run.failed.to_string(),
            round.yardstick.map_or("–".to_owned(), |yardstick| {
                format!("{:.0}", yardstick.tps)
            }),
            round
                .ratio()
                .map_or("–".to_owned(), |ratio| format!("{ratio:.2}")),
            format!("{} / {}", micros(Some(run.cpu)), micros(pgbench_cpu)),
            format!("{} / {}", stolen(Some(run.cpu)), stolen(pgbench_cpu)),
        ]);
    }
    println!("{table}");
}

/// The ratio to pgbench at each client count over every round: its median, and its range.
fn print_summary(client_counts: &[usize], rounds: &[Round]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "clients",
        "rounds",
        "median ÷ pgbench",
        "lowest",
        "highest",
    ]);
    for &clients in client_counts {
        let mut ratios: Vec<f64> = rounds
            .iter()
            .filter(|round| round.run.clients == clients)
            .filter_map(Round::ratio)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let Some(middle) = median(&ratios) else {
            continue;
        };
        table.add_row([
            clients.to_string(),
            ratios.len().to_string(),
            format!("{middle:.2}"),
            format!("{:.2}", ratios[0]),
            format!("{:.2}", ratios[ratios.len() - 1]),
        ]);
    }
    println!("{table}");
}

/// The median of sorted values: the middle one, or the mean of the middle two.
fn median(sorted: &[f64]) -> Option<f64> {
    let count = sorted.len();
    match count {
        0 => None,
        _ if count % 2 == 1 => Some(sorted[count / 2]),
        _ => Some((sorted[count / 2 - 1] + sorted[count / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn the_median_is_the_middle_ratio_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.5, 5.25, 6.0]), Some(5.25));
        assert_eq!(median(&[4.5, 5.0, 6.0, 7.0]), Some(5.5));
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[]), None);
    }
}
