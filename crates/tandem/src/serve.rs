//! `tandem serve`: every service in one process, on one port.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tandem_auth::{AuthGrpc, Authenticator, KeyStore, TokenSettings};
use tandem_exchange::{Exchange, ExchangeGrpc, ExchangeOptions, Peers};
use tandem_linking::{Linking, LinkingGrpc, RegistryDirectory};
use tandem_proto::v1::{
    account_linking_service_server::AccountLinkingServiceServer,
    auth_service_server::AuthServiceServer, exchange_service_server::ExchangeServiceServer,
    ledger_service_server::LedgerServiceServer,
    partner_registry_service_server::PartnerRegistryServiceServer,
    settlement_service_server::SettlementServiceServer,
};
use tandem_registry::{Registry, RegistryGrpc};
use tandem_settlement::{LedgerGrpc, Settlement, SettlementGrpc, SettlementOptions};
use tandem_storage::{Database, Location};
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

/// The name a service is mounted under (`tandem.v1.XService`).
fn name_of<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Each service's own database.
struct Databases {
    auth: Database,
    registry: Database,
    linking: Database,
    settlement: Database,
    exchange: Database,
}

impl Databases {
    /// Opens (and migrates) every service's database.
    async fn open(location: &Location) -> anyhow::Result<Self> {
        let exchange = Database::open(location, "exchange", &tandem_exchange::MIGRATOR).await?;
        tandem_exchange::prepare_database(&exchange)
            .await
            .context("preparing the exchange's database")?;
        Ok(Self {
            auth: Database::open(location, "auth", &tandem_auth::MIGRATOR).await?,
            registry: Database::open(location, "registry", &tandem_registry::MIGRATOR).await?,
            linking: Database::open(location, "linking", &tandem_linking::MIGRATOR).await?,
            settlement: tandem_settlement::open_database(location).await?,
            exchange,
        })
    }

    async fn close(self) {
        for database in [
            self.auth,
            self.registry,
            self.linking,
            self.settlement,
            self.exchange,
        ] {
            database.close().await;
        }
    }
}

/// Every service, built over its database, as `serve` mounts them.
struct Services {
    auth: AuthServiceServer<AuthGrpc<Registry>>,
    registry: PartnerRegistryServiceServer<RegistryGrpc>,
    linking: AccountLinkingServiceServer<LinkingGrpc<RegistryDirectory>>,
    ledger: LedgerServiceServer<LedgerGrpc>,
    settlement: SettlementServiceServer<SettlementGrpc>,
    exchange: ExchangeServiceServer<ExchangeGrpc>,
    /// Settlement's logic, to finish adjustments a crash left half posted.
    settlement_logic: Settlement,
    /// The exchange's logic, for its recovery worker.
    exchange_logic: Exchange,
    /// The registry's logic and the authenticator, to bar partners another process offboards.
    offboardings: (Registry, Arc<Authenticator>),
}

/// The authenticator on the deployment's keys, barring the partners already offboarded.
async fn authenticator(
    settings: &ServeSettings,
    databases: &Databases,
    registry: &Registry,
) -> anyhow::Result<Arc<Authenticator>> {
    let token_settings = TokenSettings {
        audience: settings.common.token_audience.clone(),
    };
    let authenticator = Arc::new(
        Authenticator::load(KeyStore::new(databases.auth.clone()), token_settings)
            .await
            .context("loading signing keys")?,
    );
    authenticator.bar_partners(
        registry
            .offboarded_partner_ids()
            .await
            .context("reading the offboarded partners")?,
    );
    Ok(authenticator)
}

impl Services {
    /// Builds every service. `address` is where this process listens: linking reaches the
    /// registry there, through its gRPC client, as it would in another process.
    async fn build(
        settings: &ServeSettings,
        databases: &Databases,
        address: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let registry = Registry::new(databases.registry.clone());
        let authenticator = authenticator(settings, databases, &registry).await?;
        let auth = AuthServiceServer::new(AuthGrpc::new(
            authenticator.clone(),
            registry.clone(),
            settings.partner_token_ttl,
        ));
        let offboardings = (registry.clone(), authenticator.clone());
        let registry =
            PartnerRegistryServiceServer::new(RegistryGrpc::new(registry, authenticator.clone()));
        let settlement = tandem_settlement::services(
            databases.settlement.clone(),
            authenticator.clone(),
            SettlementOptions {
                adjustment_approval_threshold_minor: settings.adjustment_approval_threshold_minor,
                posting_lease: settings.saga_lease,
            },
        );
        let ledger = settlement.ledger;
        let registry_channel =
            tonic::transport::Channel::from_shared(format!("http://{}", reachable(address)))?
                .connect_lazy();
        let linking = AccountLinkingServiceServer::new(LinkingGrpc::new(
            Linking::new(
                databases.linking.clone(),
                RegistryDirectory::new(registry_channel, authenticator.clone()),
                settings.link_code_ttl,
            ),
            authenticator.clone(),
        ));
        // The exchange reaches registry, linking and the ledger through their gRPC clients; in
        // one process those talk to the services' routers directly, without a socket.
        let neighbours = tonic::service::Routes::new(registry.clone())
            .add_service(linking.clone())
            .add_service(ledger.clone())
            .prepare();
        let exchange_logic = Exchange::new(
            databases.exchange.clone(),
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
        let exchange =
            ExchangeServiceServer::new(ExchangeGrpc::new(exchange_logic.clone(), authenticator));
        Ok(Self {
            auth,
            registry,
            linking,
            ledger,
            settlement: settlement.settlement,
            exchange,
            exchange_logic,
            settlement_logic: settlement.logic,
            offboardings,
        })
    }

    /// Each service with the database its health depends on.
    fn mounted(&self, databases: &Databases) -> Vec<Mounted> {
        vec![
            Mounted {
                name: name_of(&self.auth),
                database: databases.auth.clone(),
            },
            Mounted {
                name: name_of(&self.registry),
                database: databases.registry.clone(),
            },
            Mounted {
                name: name_of(&self.linking),
                database: databases.linking.clone(),
            },
            Mounted {
                name: name_of(&self.ledger),
                database: databases.settlement.clone(),
            },
            Mounted {
                name: name_of(&self.settlement),
                database: databases.settlement.clone(),
            },
            Mounted {
                name: name_of(&self.exchange),
                database: databases.exchange.clone(),
            },
        ]
    }
}

pub async fn run(settings: ServeSettings) -> anyhow::Result<()> {
    // Bind first: a taken port fails fast, and port 0 is resolved before anything is announced.
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let address = listener.local_addr()?;
    let location = &settings.common.location;
    let databases = Databases::open(location).await?;
    let services = Services::build(&settings, &databases, address).await?;
    let mounted = services.mounted(&databases);
    let (health, health_service) = tonic_health::server::health_reporter();
    report_health(&health, &mounted).await;

    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone());
    let service_names: Vec<&'static str> = mounted.iter().map(|service| service.name).collect();
    tokio::spawn(watch_health(health.clone(), mounted, shutdown.clone()));
    let recovery = tokio::spawn(tandem_exchange::run_recovery(
        services.exchange_logic.clone(),
        shutdown.clone(),
    ));
    let settlement_recovery = tokio::spawn(finish_settlement_work(
        services.settlement_logic.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(follow_offboardings(
        services.offboardings.clone(),
        shutdown.clone(),
    ));

    tracing::info!(%address, storage = %location.describe(), "tandem serving");
    // Scripts and tests read this line to learn the port; it is the only thing serve prints to
    // standard output.
    println!("tandem listening on {address}");
    let draining = Draining {
        shutdown: shutdown.clone(),
        health,
        service_names,
    };
    serve(&settings, listener, services, health_service, draining).await?;

    // The worker stops at its next look; a saga it was driving keeps its lease and is resumed
    // by the next process once the lease lapses.
    shutdown.cancel();
    let _ = recovery.await;
    let _ = settlement_recovery.await;
    databases.close().await;
    tracing::info!("tandem stopped");
    Ok(())
}

/// Bars the tokens of partners offboarded through another process on the same registry: the
/// process that serves an offboarding bars them at once, every other within a second.
async fn follow_offboardings(
    (registry, authenticator): (Registry, Arc<Authenticator>),
    shutdown: CancellationToken,
) {
    loop {
        match registry.offboarded_partner_ids().await {
            Ok(partners) => authenticator.bar_partners(partners),
            Err(error) => tracing::warn!(%error, "could not read the offboarded partners"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(OFFBOARDING_FOLLOW_INTERVAL) => {}
        }
    }
}

const OFFBOARDING_FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Posts the adjustments and settlement runs a crash left half posted, each by its own ledger
/// keys, deletes what abandoned partner reports left, and takes a ledger checkpoint every hour;
/// a failure is logged, and the next round (or the ops user asking again) tries again.
async fn finish_settlement_work(settlement: Settlement, shutdown: CancellationToken) {
    sweep_abandoned_reports(&settlement).await;
    // Looked for every few seconds, not only at start-up: a post interrupted in another process
    // is this process's to finish once that process's lease lapses.
    loop {
        match settlement.resume_postings().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "finished adjustments left half posted"),
            Err(error) => tracing::warn!(%error, "could not finish adjustments left half posted"),
        }
        match settlement.checkpoint_if_due(CHECKPOINT_INTERVAL).await {
            Ok(Some(accounts)) => tracing::info!(accounts, "ledger checkpoint taken"),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "could not take a ledger checkpoint"),
        }
        match settlement.resume_settling().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "finished settlement runs left half settled"),
            Err(error) => {
                tracing::warn!(%error, "could not finish settlement runs left half settled")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SETTLEMENT_RECOVERY_INTERVAL) => {}
        }
    }
}

/// How often settlement looks for posts a crash interrupted.
const SETTLEMENT_RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How old the newest ledger checkpoint may grow before the next: balances and guards sum at
/// most about an hour of an account's entries past it.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

async fn sweep_abandoned_reports(settlement: &Settlement) {
    match settlement.sweep_abandoned_reports().await {
        Ok(0) => {}
        Ok(rows) => tracing::info!(rows, "deleted what abandoned partner reports left"),
        Err(error) => {
            tracing::warn!(%error, "could not delete what abandoned partner reports left")
        }
    }
}

/// What serving stops on, and the health to report while it drains.
struct Draining {
    shutdown: CancellationToken,
    health: HealthReporter,
    service_names: Vec<&'static str>,
}

impl Draining {
    /// Waits for the shutdown, then reports every service NOT_SERVING, so that load balancers
    /// stop sending new work while in-flight requests drain.
    async fn begun(self) {
        self.shutdown.cancelled().await;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in self.service_names {
            self.health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("shutting down: draining in-flight requests");
    }
}

/// Serves every service, with health and reflection, until `draining` begins and the requests
/// in flight are answered.
async fn serve(
    settings: &ServeSettings,
    listener: TcpListener,
    services: Services,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    draining: Draining,
) -> anyhow::Result<()> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    tonic::transport::Server::builder()
        .timeout(settings.request_timeout)
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .layer(tandem_proto::framework_errors::FrameworkErrorsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.auth)
        .add_service(services.registry)
        .add_service(services.ledger)
        .add_service(services.settlement)
        .add_service(services.linking)
        .add_service(services.exchange)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            draining.begun(),
        )
        .await
        .context("serving gRPC")
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
