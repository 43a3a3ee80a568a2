//! Shared by the end-to-end suites: start the real `tandem serve` on port 0 against a fresh
//! database, mint tokens from its key store, and build authenticated requests.

#![allow(dead_code)] // Each suite uses its own subset.

use std::{process::Stdio, time::Duration};

use tandem_auth::{Authenticator, Caller, KeyStore, Role, TokenSettings};
use tandem_proto::v1::{
    self as pb, account_linking_service_client::AccountLinkingServiceClient,
    auth_service_client::AuthServiceClient, exchange_service_client::ExchangeServiceClient,
    ledger_service_client::LedgerServiceClient,
    partner_registry_service_client::PartnerRegistryServiceClient,
    settlement_service_client::SettlementServiceClient,
};
use tandem_storage::{Database, Location, testing::TestDatabase};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{Code, Request, Status, transport::Channel};

pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
/// Longest a server may take to start (a cold debug build on a busy 2-core machine is slow).
const START_DEADLINE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A fresh database on this backend.
    pub async fn database(self) -> TestDatabase {
        match self {
            Backend::Sqlite => TestDatabase::sqlite(),
            Backend::Postgres => TestDatabase::postgres_required().await,
        }
    }
}

/// A running `tandem serve` with its own database, stopped when dropped.
pub struct TestServer {
    pub child: Child,
    pub address: String,
    pub database: TestDatabase,
    pub channel: Channel,
}

/// Spawns `tandem serve` on `database` with extra flags and environment variables, and waits
/// until it listens.
async fn spawn_serve(
    database: &TestDatabase,
    extra: &[&str],
    environment: &[(&str, &str)],
) -> (Child, String, Channel) {
    let mut command = Command::new(TANDEM);
    command
        .args(storage_args(database))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .envs(environment.iter().copied());
    // Warnings and errors only, so a failing test shows what the server complained about
    // without every request's log line.
    command
        .env("TANDEM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn tandem serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = tokio::time::timeout(START_DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read tandem's stdout") {
            if let Some(address) = line.strip_prefix("tandem listening on ") {
                return address.to_owned();
            }
        }
        panic!("tandem serve exited before listening");
    })
    .await
    .expect("tandem serve announced its address before the deadline");
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to tandem");
    (child, address, channel)
}

/// Another `tandem serve` process on a test server's databases.
pub struct OtherProcess {
    _child: Child,
    pub channel: Channel,
}

impl OtherProcess {
    pub fn exchange(&self) -> ExchangeServiceClient<Channel> {
        ExchangeServiceClient::new(self.channel.clone())
    }

    pub fn registry(&self) -> PartnerRegistryServiceClient<Channel> {
        PartnerRegistryServiceClient::new(self.channel.clone())
    }
}

impl TestServer {
    /// Starts a server on `backend` (PostgreSQL: the server `TANDEM_TEST_DATABASE_URL` names).
    pub async fn start(backend: Backend) -> Self {
        Self::start_on(backend.database().await, &[]).await
    }

    /// Starts a server on `database` with extra `serve` flags.
    pub async fn start_on(database: TestDatabase, extra: &[&str]) -> Self {
        Self::start_with(database, extra, &[]).await
    }

    /// Starts a server on `database` with extra `serve` flags and environment variables.
    pub async fn start_with(
        database: TestDatabase,
        extra: &[&str],
        environment: &[(&str, &str)],
    ) -> Self {
        let (child, address, channel) = spawn_serve(&database, extra, environment).await;
        Self {
            child,
            address,
            database,
            channel,
        }
    }

    /// A second `tandem serve` on this server's databases, as when Tandem runs as several
    /// processes behind a balancer; it stops when dropped.
    pub async fn another_process(&self) -> OtherProcess {
        let (child, _, channel) = spawn_serve(&self.database, &[], &[]).await;
        OtherProcess {
            _child: child,
            channel,
        }
    }

    pub fn registry(&self) -> PartnerRegistryServiceClient<Channel> {
        PartnerRegistryServiceClient::new(self.channel.clone())
    }

    pub fn linking(&self) -> AccountLinkingServiceClient<Channel> {
        AccountLinkingServiceClient::new(self.channel.clone())
    }

    pub fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.channel.clone())
    }

    pub fn settlement(&self) -> SettlementServiceClient<Channel> {
        SettlementServiceClient::new(self.channel.clone())
    }

    /// A token for the ops user `name`: two of them make the four eyes of an approval.
    pub async fn ops_token(&self, name: &str) -> String {
        let caller = Caller::staff(Role::Ops, name).unwrap();
        self.authenticator("tandem")
            .await
            .issue(&caller, HOUR)
            .await
            .unwrap()
            .token
    }

    /// A token for partner `partner_id`, as AuthService would issue it.
    pub async fn partner_token_for(&self, partner_id: &str) -> String {
        let caller = Caller::partner(partner_id.parse().unwrap(), "test-partner");
        self.authenticator("tandem")
            .await
            .issue(&caller, HOUR)
            .await
            .unwrap()
            .token
    }

    pub fn exchange(&self) -> ExchangeServiceClient<Channel> {
        ExchangeServiceClient::new(self.channel.clone())
    }

    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    /// An authenticator on this server's own key store, as the CLI has.
    pub async fn authenticator(&self, audience: &str) -> Authenticator {
        let database = Database::open(self.database.location(), "auth", &tandem_auth::MIGRATOR)
            .await
            .expect("open the auth database");
        Authenticator::load(
            KeyStore::new(database),
            TokenSettings {
                audience: audience.to_owned(),
            },
        )
        .await
        .expect("load keys")
    }

    pub async fn staff_token(&self, role: Role) -> String {
        let caller = Caller::staff(role, format!("test-{role}")).unwrap();
        self.authenticator("tandem")
            .await
            .issue(&caller, HOUR)
            .await
            .unwrap()
            .token
    }

    /// The token a partner gets from AuthService.IssueToken with its credentials.
    pub async fn partner_token(&self, credentials: &pb::ClientCredentials) -> String {
        let request = pb::IssueTokenRequest {
            client_id: credentials.client_id.clone(),
            client_secret: credentials.client_secret.clone(),
        };
        self.auth()
            .issue_token(request)
            .await
            .expect("issue a partner token")
            .into_inner()
            .access_token
    }
}

/// The storage flags that point a `tandem` command at `database`.
pub fn storage_args(database: &TestDatabase) -> Vec<String> {
    match database.location() {
        Location::SqliteDirectory(directory) => {
            vec!["--data-dir".to_owned(), directory.display().to_string()]
        }
        Location::Postgres(_) => vec![
            "--database-url".to_owned(),
            database.url().expect("a postgres url"),
        ],
    }
}

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a valid header"),
    );
    request
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The fields named by a status's `BadRequest` violations.
pub fn violated_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

pub fn create_partner_request(
    code: &str,
    category: pb::PartnerCategory,
    program_code: &str,
) -> pb::CreatePartnerRequest {
    pb::CreatePartnerRequest {
        code: code.to_owned(),
        display_name: format!("{code} brand"),
        category: category.into(),
        program: Some(pb::Program {
            code: program_code.to_owned(),
            name: format!("{code} points"),
            scale: 0,
        }),
        settlement_currency: "USD".to_owned(),
        gateway_endpoint: String::new(),
    }
}

/// Registers a partner as admin; returns it and its credentials.
pub async fn create_partner(
    server: &TestServer,
    admin: &str,
    code: &str,
    category: pb::PartnerCategory,
    program_code: &str,
) -> (pb::Partner, pb::ClientCredentials) {
    let response = server
        .registry()
        .create_partner(authed(
            admin,
            create_partner_request(code, category, program_code),
        ))
        .await
        .expect("create a partner")
        .into_inner();
    (response.partner.unwrap(), response.credentials.unwrap())
}

/// The pair most tests start from: Skyline Hotels and Zoom Rides, registered by `admin`.
pub async fn hotel_and_rideshare(
    server: &TestServer,
    admin: &str,
) -> (
    (pb::Partner, pb::ClientCredentials),
    (pb::Partner, pb::ClientCredentials),
) {
    let hotel = create_partner(
        server,
        admin,
        "skyline-hotels",
        pb::PartnerCategory::Hotel,
        "SKYLINE_PTS",
    )
    .await;
    let ride = create_partner(
        server,
        admin,
        "zoom-rides",
        pb::PartnerCategory::Rideshare,
        "ZOOM_MILES",
    )
    .await;
    (hotel, ride)
}

/// `source` proposes `terms` to `target` and `target` accepts version 1; each is (partner id,
/// token).
pub async fn agree(
    server: &TestServer,
    source: (&str, &str),
    target: (&str, &str),
    terms: pb::AgreementTerms,
) {
    let agreement = server
        .registry()
        .propose_agreement(authed(
            source.1,
            pb::ProposeAgreementRequest {
                source_partner_id: source.0.to_owned(),
                target_partner_id: target.0.to_owned(),
                terms: Some(terms),
                effective_time: None,
            },
        ))
        .await
        .expect("propose")
        .into_inner()
        .agreement
        .unwrap();
    server
        .registry()
        .accept_agreement(authed(
            target.1,
            pb::AcceptAgreementRequest {
                agreement_id: agreement.agreement_id,
                terms_version: 1,
            },
        ))
        .await
        .expect("accept");
}

pub fn terms(rate: &str) -> pb::AgreementTerms {
    pb::AgreementTerms {
        conversion_rate: rate.to_owned(),
        minimum_source_points: 1000,
        increment_source_points: 100,
        member_daily_cap_points: Some(50_000),
        agreement_monthly_cap_points: None,
        settlement_price: "0.0085".to_owned(),
        exchange_fee_basis_points: 150,
        earn_rules: None,
        conversion_reversal_hours: 72,
    }
}

/// Defines each named suite function twice: on SQLite, and on PostgreSQL when configured.
#[macro_export]
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $test() {
                let server = super::helpers::TestServer::start(super::helpers::Backend::Sqlite).await;
                super::$test(server).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            #[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
            async fn $test() {
                let server = super::helpers::TestServer::start(super::helpers::Backend::Postgres).await;
                super::$test(server).await;
            })*
        }
    };
}

/// SIGKILLs the server while `calls` wait on it, checks that each caller saw its connection
/// drop, and hands back the server's databases for a new server.
pub async fn kill_while_waiting<T: std::fmt::Debug>(
    server: TestServer,
    calls: Vec<tokio::task::JoinHandle<Result<T, tonic::Status>>>,
) -> TestDatabase {
    let TestServer {
        mut child,
        database,
        ..
    } = server;
    child.start_kill().expect("SIGKILL the server");
    child.wait().await.expect("the server exits");
    for call in calls {
        assert!(
            call.await.unwrap().is_err(),
            "the caller saw the connection drop"
        );
    }
    database
}

/// Where a server started by [`TestServer::pausing_at`] says it paused.
pub struct Pause {
    pub folder: tempfile::TempDir,
    file: std::path::PathBuf,
}

impl Pause {
    /// Waits until the server stands at the moment, failing after a minute.
    pub async fn reached(&self) {
        eventually(Duration::from_secs(60), "the server to pause", || async {
            self.file.exists().then_some(())
        })
        .await;
    }
}

impl TestServer {
    /// A server, with `extra` flags, that stops for good at `moment` (a step applied, its record
    /// not yet landed; `tandem_storage::test_pause`), so a test can kill it exactly there.
    pub async fn pausing_at(database: TestDatabase, extra: &[&str], moment: &str) -> (Self, Pause) {
        let folder = tempfile::tempdir().expect("a scratch directory");
        let file = folder.path().join("paused");
        let path = file.to_str().expect("a UTF-8 path").to_owned();
        let server = Self::start_with(
            database,
            extra,
            &[
                ("TANDEM_TEST_PAUSE_AT", moment),
                ("TANDEM_TEST_PAUSE_FILE", &path),
            ],
        )
        .await;
        (server, Pause { folder, file })
    }
}

/// A running `tandem partner-sim` for the program HOTEL_PTS, calling back to `server` for keys.
pub struct Simulator {
    _child: Child,
    pub address: String,
    pub channel: Channel,
}

impl Simulator {
    pub async fn start(server: &TestServer) -> Self {
        Self::start_for(server, "HOTEL_PTS").await
    }

    /// A simulator of `program`, with its own wallet store beside the server's databases.
    pub async fn start_for(server: &TestServer, program: &str) -> Self {
        let mut child = Command::new(TANDEM)
            .args(storage_args(&server.database))
            .args([
                "partner-sim",
                "--program",
                program,
                "--tandem",
                &format!("http://{}", server.address),
            ])
            .env("TANDEM_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tandem partner-sim");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let address = tokio::time::timeout(START_DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("read partner-sim's stdout") {
                if let Some(address) = line.strip_prefix("partner-sim listening on ") {
                    return address.to_owned();
                }
            }
            panic!("partner-sim exited before listening");
        })
        .await
        .expect("partner-sim announced its address before the deadline");
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to partner-sim");
        Self {
            _child: child,
            address,
            channel,
        }
    }

    /// Creates or replaces a member of the simulated program.
    pub async fn put_member(&self, member_id: &str, balance_minor: i64, in_good_standing: bool) {
        use tandem_proto::sim::v1 as sim;
        let member = sim::Member {
            member_id: member_id.to_owned(),
            balance_minor,
            in_good_standing,
        };
        sim::partner_sim_service_client::PartnerSimServiceClient::new(self.channel.clone())
            .put_member(sim::PutMemberRequest {
                member: Some(member),
            })
            .await
            .expect("put a member");
    }

    /// A member's balance now.
    pub async fn balance(&self, member_id: &str) -> i64 {
        use tandem_proto::sim::v1 as sim;
        sim::partner_sim_service_client::PartnerSimServiceClient::new(self.channel.clone())
            .get_member(sim::GetMemberRequest {
                member_id: member_id.to_owned(),
            })
            .await
            .expect("get a member")
            .into_inner()
            .member
            .expect("a member")
            .balance_minor
    }

    /// Arms a fault on one gateway RPC for the next `times` calls (0: until cleared).
    pub async fn set_fault(
        &self,
        rpc: &str,
        fault: tandem_proto::sim::v1::Fault,
        times: i32,
        delay_ms: i32,
    ) {
        self.arm_fault(rpc, fault, times, delay_ms, false).await;
    }

    /// Arms a fault on one gateway RPC for `times` calls (0: until cleared) after the faults
    /// already armed on it.
    pub async fn queue_fault(&self, rpc: &str, fault: tandem_proto::sim::v1::Fault, times: i32) {
        self.arm_fault(rpc, fault, times, 0, true).await;
    }

    /// Makes `rpc` apply its next call and fail to answer, then refuse every call after, even of
    /// the key it applied: a gateway that forgot (it breaks the contract on purpose).
    pub async fn forget_after_applying(&self, rpc: &str) {
        use tandem_proto::sim::v1::Fault;
        self.queue_fault(rpc, Fault::FailAfterApplying, 1).await;
        self.queue_fault(rpc, Fault::Forgetful, 0).await;
    }

    async fn arm_fault(
        &self,
        rpc: &str,
        fault: tandem_proto::sim::v1::Fault,
        times: i32,
        delay_ms: i32,
        queue: bool,
    ) {
        use tandem_proto::sim::v1 as sim;
        sim::partner_sim_service_client::PartnerSimServiceClient::new(self.channel.clone())
            .set_fault(sim::SetFaultRequest {
                rpc: rpc.to_owned(),
                fault: fault.into(),
                times,
                delay_ms,
                queue,
            })
            .await
            .expect("set a fault");
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up waiting after {deadline:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of a refused call, checked for what every refusal Tandem sends carries: the
/// expected code, an `ErrorInfo` reason, and a message small enough for any client's header
/// limits.
pub fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("the request is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        !reason(&status).is_empty(),
        "an ErrorInfo reason: {status:?}"
    );
    assert!(
        status.message().len() + status.details().len() < 4_096,
        "a small error: {} bytes of message and {} of details",
        status.message().len(),
        status.details().len()
    );
    status
}
