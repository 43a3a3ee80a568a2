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

pub async fn run(settings: Settings, args: PartnerSimArgs) -> anyhow::Result<()> {
    let program =
        ProgramCode::parse(&args.program).map_err(|error| anyhow::anyhow!("--program: {error}"))?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    // Each program keeps its own wallet store (a SQLite file, or a PostgreSQL schema), so a hotel
    // and a rideshare simulator can share a data directory or a database. The name is built once
    // per process and lives as long as it, which is what `Database::open` asks of a store name.
    let store_name: &'static str =
        Box::leak(format!("sim_{}", program.as_str().to_lowercase()).into_boxed_str());
    let database = Database::open(
        &settings.location,
        store_name,
        &tandem_partner_sim::MIGRATOR,
    )
    .await?;
    let wallets = Wallets::new(database.clone());
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
