//! `tandem serve`: every service in one process, on one port.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tandem_auth::{AuthGrpc, Authenticator, KeyStore, TokenSettings};
use tandem_exchange::{Exchange, ExchangeGrpc, ExchangeOptions, Peers};
use tandem_ledger::{Ledger, LedgerOptions};
use tandem_linking::{Linking, LinkingGrpc, RegistryDirectory};
use tandem_proto::v1::{
    account_linking_service_server::AccountLinkingServiceServer,
    auth_service_server::AuthServiceServer, exchange_service_server::ExchangeServiceServer,
    ledger_service_server::LedgerServiceServer,
    partner_registry_service_server::PartnerRegistryServiceServer,
};
use tandem_registry::{Registry, RegistryGrpc};
use tandem_settlement::LedgerGrpc;
use tandem_storage::Database;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::settings::ServeSettings;

/// How often health re-checks that the databases answer.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Concurrent requests per HTTP/2 connection; past it, requests wait instead of piling up.
const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 256;

/// The gRPC services this process serves, each with the database it needs to be healthy.
struct Mounted {
    name: &'static str,
    database: Database,
}

pub async fn run(settings: ServeSettings) -> anyhow::Result<()> {
    // Bind first: a taken port fails fast, and port 0 is resolved before anything is announced.
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let address = listener.local_addr()?;
    let location = &settings.common.location;

    let auth_database = Database::open(location, "auth", &tandem_auth::MIGRATOR).await?;
    let registry_database =
        Database::open(location, "registry", &tandem_registry::MIGRATOR).await?;
    let linking_database = Database::open(location, "linking", &tandem_linking::MIGRATOR).await?;
    let settlement_database =
        Database::open(location, "settlement", &tandem_ledger::MIGRATOR).await?;
    let exchange_database =
        Database::open(location, "exchange", &tandem_exchange::MIGRATOR).await?;
    tandem_exchange::prepare_database(&exchange_database)
        .await
        .context("preparing the exchange's database")?;
    let token_settings = TokenSettings {
        audience: settings.common.token_audience.clone(),
    };
    let authenticator = Arc::new(
        Authenticator::load(KeyStore::new(auth_database.clone()), token_settings)
            .await
            .context("loading signing keys")?,
    );
    let registry = Registry::new(registry_database.clone());

    let auth_service = AuthServiceServer::new(AuthGrpc::new(
        authenticator.clone(),
        registry.clone(),
        settings.partner_token_ttl,
    ));
    let registry_service =
        PartnerRegistryServiceServer::new(RegistryGrpc::new(registry, authenticator.clone()));
    let ledger = Ledger::new(
        settlement_database.clone(),
        LedgerOptions::for_backend(settlement_database.backend()),
    );
    let ledger_service = LedgerServiceServer::new(LedgerGrpc::new(ledger, authenticator.clone()));
    // Linking asks the registry through its gRPC client even in one process, so the services can
    // be split across processes without changing a line of either.
    let registry_channel =
        tonic::transport::Channel::from_shared(format!("http://{}", reachable(address)))?
            .connect_lazy();
    let linking = Linking::new(
        linking_database.clone(),
        RegistryDirectory::new(registry_channel.clone(), authenticator.clone()),
        settings.link_code_ttl,
    );
    let linking_service =
        AccountLinkingServiceServer::new(LinkingGrpc::new(linking, authenticator.clone()));
    // The exchange too reaches registry, linking and the ledger through their gRPC clients; in
    // one process those talk to the services' routers directly, without a socket.
    let neighbours = tonic::service::Routes::new(registry_service.clone())
        .add_service(linking_service.clone())
        .add_service(ledger_service.clone())
        .prepare();
    let exchange = Exchange::new(
        exchange_database.clone(),
        Peers::new(
            tandem_proto::channel::local(neighbours),
            authenticator.clone(),
        ),
        ExchangeOptions {
            quote_lifetime: settings.quote_ttl,
            saga_lease: settings.saga_lease,
            ..ExchangeOptions::default()
        },
    );
    let exchange_service =
        ExchangeServiceServer::new(ExchangeGrpc::new(exchange.clone(), authenticator));
    let mounted = vec![
        Mounted {
            name: <AuthServiceServer<AuthGrpc<Registry>> as NamedService>::NAME,
            database: auth_database.clone(),
        },
        Mounted {
            name: <PartnerRegistryServiceServer<RegistryGrpc> as NamedService>::NAME,
            database: registry_database.clone(),
        },
        Mounted {
            name:
                <AccountLinkingServiceServer<LinkingGrpc<RegistryDirectory>> as NamedService>::NAME,
            database: linking_database.clone(),
        },
        Mounted {
            name: <LedgerServiceServer<LedgerGrpc> as NamedService>::NAME,
            database: settlement_database.clone(),
        },
        Mounted {
            name: <ExchangeServiceServer<ExchangeGrpc> as NamedService>::NAME,
            database: exchange_database.clone(),
        },
    ];

    let service_names: Vec<&'static str> = mounted.iter().map(|service| service.name).collect();
    let (health, health_service) = tonic_health::server::health_reporter();
    report_health(&health, &mounted).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone());
    tokio::spawn(watch_health(health.clone(), mounted, shutdown.clone()));
    let recovery = tokio::spawn(tandem_exchange::run_recovery(exchange, shutdown.clone()));

    tracing::info!(%address, storage = %location.describe(), "tandem serving");
    // Scripts and tests read this line to learn the port; it is the only thing serve prints to
    // standard output.
    println!("tandem listening on {address}");

    let stopping = shutdown.clone();
    let draining_health = health.clone();
    tonic::transport::Server::builder()
        .timeout(settings.request_timeout)
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .layer(tandem_proto::framework_errors::FrameworkErrorsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth_service)
        .add_service(registry_service)
        .add_service(ledger_service)
        .add_service(linking_service)
        .add_service(exchange_service)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                stopping.cancelled().await;
                // Load balancers stop sending new work while in-flight requests drain.
                draining_health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                for name in service_names {
                    draining_health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                tracing::info!("shutting down: draining in-flight requests");
            },
        )
        .await
        .context("serving gRPC")?;

    // The worker stops at its next look; a saga it was driving keeps its lease and is resumed
    // by the next process once the lease lapses.
    shutdown.cancel();
    let _ = recovery.await;
    for database in [
        auth_database,
        registry_database,
        linking_database,
        settlement_database,
        exchange_database,
    ] {
        database.close().await;
    }
    tracing::info!("tandem stopped");
    Ok(())
}

/// An address this process can call itself on: the listening address, with an unspecified IP
/// (0.0.0.0 or ::) replaced by loopback.
fn reachable(address: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut reachable = address;
    if address.ip().is_unspecified() {
        reachable.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    reachable
}

/// Each service is SERVING only while its database answers; the whole server ("") only while
/// all of them are.
async fn report_health(health: &HealthReporter, mounted: &[Mounted]) {
    let mut all_serving = true;
    for service in mounted {
        let status = if service.database.ping().await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        all_serving &= status == ServingStatus::Serving;
        health.set_service_status(service.name, status).await;
    }
    health
        .set_service_status(
            "",
            if all_serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            },
        )
        .await;
}

async fn watch_health(health: HealthReporter, mounted: Vec<Mounted>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => report_health(&health, &mounted).await,
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C. The handlers are installed before this returns, so a
/// signal that arrives once the process has announced that it listens is never missed: a handler
/// installed only when a spawned task first ran could lose that race, and the default action
/// would kill the process mid-request.
pub(crate) fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (terminate, interrupt) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (mut terminate, mut interrupt) = match (terminate, interrupt) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "cannot listen for SIGTERM or SIGINT; the server stops only when killed");
                return;
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("interrupt received"),
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
            }
            shutdown.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("interrupt received");
            shutdown.cancel();
        }
    });
}
