//! The command line.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::settings::{CommonArgs, ServeArgs, ServeSettings, Settings};

/// Tandem, the coalition points exchange: partners register, agree rates, link members, convert
/// and earn points, and settle through a double-entry ledger.
#[derive(Debug, Parser)]
#[command(name = "tandem", version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole story on this machine: Tandem, two partner gateways, a link, a conversion,
    /// a ride that earns points, wallets and ledger checked against each other, a settled period
    /// and a reconciliation.
    Demo,
    /// Run every Tandem service in this process on one port (SQLite in ./tandem-data by default).
    Serve(ServeArgs),
    /// Run the reference partner: a small loyalty program behind PartnerGatewayService.
    PartnerSim(crate::partner_sim::PartnerSimArgs),
    /// Print the reference partner's movements of a period as the CSV `tandem reconcile submit`
    /// reads (from its wallet store, beside Tandem's).
    PartnerSimExport(crate::partner_sim::PartnerSimExportArgs),
    /// Mint an operator token (admin or ops) with the deployment's signing key.
    Token {
        /// The role: admin (registry administration) or ops (operations, read access).
        #[arg(long)]
        role: String,
        /// Who the token is for, recorded in logs of everything it does.
        #[arg(long, default_value = "operator")]
        subject: String,
        /// How long the token lives, such as 1h or 30m.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Measure Tandem against a yardstick on the same machine.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Manage the keys that sign access tokens.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    #[command(flatten)]
    Ops(OpsCommand),
}

/// The operations staff's commands, against a running server.
#[derive(Debug, Subcommand)]
enum OpsCommand {
    /// Read the ledger of a running server: accounts, partners' positions, the trial balance.
    Ledger {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        command: crate::ops::LedgerCommand,
    },
    /// Post adjustments to the ledger, and approve or reject other ops users' requests.
    Adjust {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        command: crate::ops::AdjustCommand,
    },
    /// Close periods into settlement runs, approve them with four eyes, settle them.
    Settlement {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        command: crate::settlement_cli::SettlementCommand,
    },
    /// Export a party's statement of a settlement run.
    Statement {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        command: crate::settlement_cli::StatementCommand,
    },
    /// Reconcile a partner's file of its own records against Tandem's, and resolve what differs.
    Reconcile {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        command: crate::reconcile_cli::ReconcileCommand,
    },
    /// Reports for finance: the points liability of each partner program.
    Report {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        command: crate::settlement_cli::ReportCommand,
    },
    /// Read the audit trail of every ops action, newest first.
    Audit {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(flatten)]
        audit: crate::ops::AuditArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Ledger transfers per second on PostgreSQL, spread and on one hot pair, beside pgbench TPC-B.
    Ledger(crate::bench::LedgerBenchArgs),
    /// Conversions per second end to end over gRPC (two partner-sims, PostgreSQL), beside pgbench.
    Convert(crate::bench_exchange::ExchangeBenchArgs),
    /// Activities per second streamed over RecordActivities, beside pgbench.
    Earn(crate::bench_exchange::ExchangeBenchArgs),
    /// A settlement run over a million (or ten million) entries, beside a bare GROUP BY.
    Settlement(crate::bench_settlement::SettlementBenchArgs),
    /// A reconciliation of a partner's records against as many of Tandem's, with peak memory.
    Reconcile(crate::bench_settlement::ReconcileBenchArgs),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create the key store and its first signing key, unless they exist (`serve` does the same)
    Init,
    /// Add a new signing key; tokens signed by older keys stay valid until they expire.
    Rotate,
    /// List the signing keys, newest (the one that signs) first.
    List,
}

impl Cli {
    pub fn run(self) -> ExitCode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        let result = runtime.block_on(self.dispatch());
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(if error.is::<crate::settings::SettingsError>() {
                    2
                } else {
                    1
                })
            }
        }
    }

    async fn dispatch(self) -> anyhow::Result<()> {
        match self.command {
            Command::Demo => crate::demo::run(&self.common).await,
            Command::Serve(serve) => {
                let settings = ServeSettings::load(&self.common, &serve)?;
                let _telemetry = tandem_telemetry::init("tandem", settings.common.log_format);
                crate::serve::run(settings).await
            }
            Command::Token { role, subject, ttl } => {
                let settings = Settings::load(&self.common)?;
                let ttl: Duration = humantime::parse_duration(&ttl)
                    .map_err(|error| anyhow::anyhow!("--ttl: {error} (write 30m, 1h, …)"))?;
                let token =
                    crate::keys::mint_operator_token(&settings, &role, &subject, ttl).await?;
                println!("{token}");
                Ok(())
            }
            Command::PartnerSimExport(args) => {
                let settings = Settings::load(&self.common)?;
                crate::partner_sim::export(settings, args).await
            }
            Command::PartnerSim(args) => {
                let settings = Settings::load(&self.common)?;
                let _telemetry = tandem_telemetry::init("tandem-partner-sim", settings.log_format);
                crate::partner_sim::run(settings, args).await
            }
            Command::Bench {
                command: BenchCommand::Ledger(args),
            } => {
                let _telemetry =
                    tandem_telemetry::init("tandem-bench", tandem_telemetry::LogFormat::Human);
                crate::bench::ledger(args).await
            }
            Command::Bench {
                command: BenchCommand::Convert(args),
            } => {
                let _telemetry =
                    tandem_telemetry::init("tandem-bench", tandem_telemetry::LogFormat::Human);
                crate::bench_exchange::run(crate::bench_exchange::Workload::Convert, args).await
            }
            Command::Bench {
                command: BenchCommand::Earn(args),
            } => {
                let _telemetry =
                    tandem_telemetry::init("tandem-bench", tandem_telemetry::LogFormat::Human);
                crate::bench_exchange::run(crate::bench_exchange::Workload::Earn, args).await
            }
            Command::Bench {
                command: BenchCommand::Settlement(args),
            } => {
                let _telemetry =
                    tandem_telemetry::init("tandem-bench", tandem_telemetry::LogFormat::Human);
                crate::bench_settlement::run(args).await
            }
            Command::Bench {
                command: BenchCommand::Reconcile(args),
            } => {
                let _telemetry =
                    tandem_telemetry::init("tandem-bench", tandem_telemetry::LogFormat::Human);
                crate::bench_settlement::reconcile(args).await
            }
            Command::Ops(command) => {
                let settings = Settings::load(&self.common)?;
                operate(&settings, command).await
            }
            Command::Keys { command } => {
                let settings = Settings::load(&self.common)?;
                match command {
                    KeysCommand::Init => crate::keys::init(&settings).await,
                    KeysCommand::Rotate => crate::keys::rotate(&settings).await,
                    KeysCommand::List => crate::keys::list(&settings).await,
                }
            }
        }
    }
}

async fn operate(settings: &Settings, command: OpsCommand) -> anyhow::Result<()> {
    match command {
        OpsCommand::Ledger { server, command } => {
            crate::ops::ledger(settings, &server, command).await
        }
        OpsCommand::Adjust { server, command } => {
            crate::ops::adjust(settings, &server, command).await
        }
        OpsCommand::Settlement { server, command } => {
            crate::settlement_cli::settlement(settings, &server, command).await
        }
        OpsCommand::Statement { server, command } => {
            crate::settlement_cli::statement(settings, &server, command).await
        }
        OpsCommand::Reconcile { server, command } => {
            crate::reconcile_cli::reconcile(settings, &server, command).await
        }
        OpsCommand::Report { server, command } => {
            crate::settlement_cli::report(settings, &server, command).await
        }
        OpsCommand::Audit { server, audit } => crate::ops::audit(settings, &server, audit).await,
    }
}
