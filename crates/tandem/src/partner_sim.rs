//! `tandem partner-sim`: runs the reference partner as its own process.

use std::sync::Arc;

use anyhow::Context;
use tandem_domain::ProgramCode;
use tandem_partner_sim::{Faults, GatewayGrpc, SimControlGrpc, TandemVerifier, Wallets};
use tandem_proto::{
    sim::v1::partner_sim_service_server::PartnerSimServiceServer,
    v1::partner_gateway_service_server::PartnerGatewayServiceServer,
};
use tandem_storage::Database;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, server::TcpIncoming};

use crate::settings::Settings;

/// Flags of `tandem partner-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct PartnerSimArgs {
    /// The simulated program's point code, such as HOTEL_PTS; it names the wallet store too.
    #[arg(long)]
    pub program: String,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Where Tandem listens, to fetch the keys that verify its calls.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub tandem: String,
}

/// The program's wallet store. Each program keeps its own (a SQLite file, or a PostgreSQL
/// schema), so a hotel and a rideshare simulator can share a data directory or a database. The
/// name is built once per process and lives as long as it, which is what `Database::open` asks
/// of a store name.
async fn open_wallets(
    settings: &Settings,
    program: &ProgramCode,
) -> anyhow::Result<(Database, Wallets)> {
    let store_name: &'static str =
        Box::leak(format!("sim_{}", program.as_str().to_lowercase()).into_boxed_str());
    let database = Database::open(
        &settings.location,
        store_name,
        &tandem_partner_sim::MIGRATOR,
    )
    .await?;
    let wallets = Wallets::new(database.clone());
    Ok((database, wallets))
}

pub async fn run(settings: Settings, args: PartnerSimArgs) -> anyhow::Result<()> {
    let program =
        ProgramCode::parse(&args.program).map_err(|error| anyhow::anyhow!("--program: {error}"))?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let (database, wallets) = open_wallets(&settings, &program).await?;
    let faults = Faults::default();
    let tandem = Channel::from_shared(args.tandem.clone())
        .context("--tandem must be a URL such as http://127.0.0.1:50051")?
        .connect_lazy();
    let verifier = Arc::new(TandemVerifier::new(tandem, settings.token_audience.clone()));

    let shutdown = CancellationToken::new();
    crate::serve::stop_on_signal(shutdown.clone());
    tracing::info!(%address, program = %program, storage = %settings.location.describe(), "partner-sim serving");
    println!("partner-sim listening on {address}");
    tonic::transport::Server::builder()
        .add_service(PartnerGatewayServiceServer::new(GatewayGrpc::new(
            wallets.clone(),
            faults.clone(),
            verifier,
        )))
        .add_service(PartnerSimServiceServer::new(SimControlGrpc::new(
            wallets, faults,
        )))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
        .context("serving gRPC")?;
    database.close().await;
    Ok(())
}

/// Flags of `tandem partner-sim-export`.
#[derive(Debug, Clone, clap::Args)]
pub struct PartnerSimExportArgs {
    /// The simulated program's point code, such as HOTEL_PTS.
    #[arg(long)]
    pub program: String,
    /// The period's start (RFC 3339), inclusive.
    #[arg(long)]
    pub from: String,
    /// The period's end (RFC 3339), exclusive.
    #[arg(long)]
    pub to: String,
}

/// Writes the program's movements of a period to standard output as the CSV `tandem reconcile
/// submit` reads: what a partner sends Tandem to reconcile. Money is left empty: the program
/// tracks points only.
pub async fn export(settings: Settings, args: PartnerSimExportArgs) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let program =
        ProgramCode::parse(&args.program).map_err(|error| anyhow::anyhow!("--program: {error}"))?;
    let micros = |flag: &str, text: &str| -> anyhow::Result<i64> {
        let at = chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("{flag}: {text:?} is not an RFC 3339 time"))?;
        Ok(tandem_domain::to_unix_micros(
            at.with_timezone(&chrono::Utc),
        ))
    };
    let (from, to) = (micros("--from", &args.from)?, micros("--to", &args.to)?);
    let (database, wallets) = open_wallets(&settings, &program).await?;
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write;
    writeln!(
        output,
        "partner_record_id,tandem_reference,kind,points,money_minor,time"
    )?;
    let mut movements = wallets.reported_movements(from, to);
    while let Some(movement) = movements.try_next().await? {
        let at = tandem_domain::from_unix_micros(movement.applied_at_micros)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        // Keys, references and kinds are printable without commas (Tandem makes them so).
        writeln!(
            output,
            "{},{},{},{},,{at}",
            movement.transaction_key,
            movement.tandem_reference,
            movement.tandem_kind,
            movement.points
        )?;
    }
    output.flush()?;
    drop(movements);
    database.close().await;
    Ok(())
}
