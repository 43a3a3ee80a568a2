//! A whole coalition on this machine, for `tandem demo` and the exchange benchmarks: `tandem
//! serve` and two `tandem partner-sim` processes (Skyline Hotels' SKYLINE_PTS and Zoom Rides'
//! ZOOM_MILES), the two partners registered with their gateways, agreements both ways, and
//! members linked through the partner SDK.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use tandem_client::{Credentials, TandemClient};
use tandem_proto::{
    sim::v1::{self as sim, partner_sim_service_client::PartnerSimServiceClient},
    v1::{
        self as pb, ledger_service_client::LedgerServiceClient,
        partner_registry_service_client::PartnerRegistryServiceClient,
    },
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{Request, transport::Channel};

use crate::settings::Settings;

/// Longest a process may take to announce its address.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The processes of a local coalition; they stop when this is dropped.
pub struct Stack {
    _children: Vec<Child>,
    pub address: String,
    pub hotel_gateway: String,
    pub ride_gateway: String,
}

async fn spawn(args: &[String], announcement: &str) -> anyhow::Result<(Child, String)> {
    let executable = std::env::current_exe().context("finding the tandem executable")?;
    let mut child = Command::new(executable)
        .args(args)
        .env("TANDEM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting tandem {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let address = tokio::time::timeout(START_DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(address) = line.strip_prefix(announcement) {
                return Ok(address.to_owned());
            }
        }
        bail!("tandem {} exited before it was listening", args.join(" "))
    })
    .await
    .context("waiting for a process to listen")??;
    Ok((child, address))
}

impl Stack {
    /// Starts the server and both gateways on `storage` (the `--data-dir` or `--database-url`
    /// flags), each on a free port.
    pub async fn start(storage: &[String], serve_flags: &[&str]) -> anyhow::Result<Self> {
        let mut serve: Vec<String> = storage.to_vec();
        serve.extend(["serve", "--listen", "127.0.0.1:0"].map(str::to_owned));
        serve.extend(serve_flags.iter().map(|flag| (*flag).to_owned()));
        let (server, address) = spawn(&serve, "tandem listening on ").await?;
        let mut children = vec![server];
        let mut gateways = Vec::new();
        for program in ["SKYLINE_PTS", "ZOOM_MILES"] {
            let mut args: Vec<String> = storage.to_vec();
            args.extend(
                [
                    "partner-sim",
                    "--program",
                    program,
                    "--tandem",
                    &format!("http://{address}"),
                ]
                .map(str::to_owned),
            );
            let (child, gateway) = spawn(&args, "partner-sim listening on ").await?;
            children.push(child);
            gateways.push(format!("http://{gateway}"));
        }
        let ride_gateway = gateways.pop().expect("two gateways");
        let hotel_gateway = gateways.pop().expect("two gateways");
        Ok(Self {
            _children: children,
            address,
            hotel_gateway,
            ride_gateway,
        })
    }
}

pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a token is a header value"),
    );
    request
}

/// Skyline Hotels and Zoom Rides, agreed both ways.
pub struct Coalition {
    pub channel: Channel,
    pub hotel: TandemClient,
    pub ride: TandemClient,
    /// Where Tandem listens, and each partner's credentials, for more clients of the partners.
    address: String,
    hotel_credentials: Credentials,
    ride_credentials: Credentials,
    pub ops_token: String,
    pub hotel_gateway: Channel,
    pub ride_gateway: Channel,
}

/// The hotel's terms for converting its points into miles: 4 hotel points make 1 mile, from
/// 1,000 points in steps of 100, $0.0085 per mile, a 1.5% fee, reversible for 72 hours.
fn conversion_terms(capped: bool) -> pb::AgreementTerms {
    pb::AgreementTerms {
        conversion_rate: "0.25".to_owned(),
        minimum_source_points: 1_000,
        increment_source_points: 100,
        member_daily_cap_points: capped.then_some(50_000),
        agreement_monthly_cap_points: None,
        settlement_price: "0.0085".to_owned(),
        exchange_fee_basis_points: 150,
        earn_rules: None,
        conversion_reversal_hours: 72,
    }
}

/// The rideshare's terms for earning hotel points on rides: 2 points per dollar, GOLD riders
/// 1.5×, tips excluded, $0.01 per point.
fn earn_terms(hold_days: u32) -> pb::AgreementTerms {
    pb::AgreementTerms {
        conversion_rate: "4".to_owned(),
        minimum_source_points: 100,
        increment_source_points: 100,
        member_daily_cap_points: None,
        agreement_monthly_cap_points: None,
        settlement_price: "0.01".to_owned(),
        exchange_fee_basis_points: 100,
        earn_rules: Some(pb::EarnRules {
            points_per_spend_unit: "2".to_owned(),
            spend_currency: "USD".to_owned(),
            tier_multipliers: vec![pb::TierMultiplier {
                tier: "GOLD".to_owned(),
                multiplier: "1.5".to_owned(),
            }],
            promotions: Vec::new(),
            excluded_spend_categories: vec!["TIPS".to_owned()],
            annual_spend_cap_minor: None,
            hold_days,
        }),
        conversion_reversal_hours: 0,
    }
}

impl Coalition {
    /// Registers both partners with the stack's gateways and agrees terms both ways.
    /// `capped` sets the member daily cap on conversions.
    pub async fn form(
        stack: &Stack,
        settings: &Settings,
        capped: bool,
        hold_days: u32,
    ) -> anyhow::Result<Self> {
        let hour = Duration::from_secs(3600);
        let admin =
            crate::keys::mint_operator_token(settings, "admin", "tandem-demo", hour).await?;
        let ops_token =
            crate::keys::mint_operator_token(settings, "ops", "tandem-demo", hour).await?;
        let channel = Channel::from_shared(format!("http://{}", stack.address))?
            .connect()
            .await?;
        let register = |code, category, program, name, gateway| {
            register_partner(&channel, &admin, code, category, program, name, gateway)
        };
        let (hotel, hotel_credentials) = register(
            "skyline-hotels",
            pb::PartnerCategory::Hotel,
            "SKYLINE_PTS",
            "Skyline Hotels",
            &stack.hotel_gateway,
        )
        .await?;
        let (ride, ride_credentials) = register(
            "zoom-rides",
            pb::PartnerCategory::Rideshare,
            "ZOOM_MILES",
            "Zoom Rides",
            &stack.ride_gateway,
        )
        .await?;
        let coalition = Self {
            hotel_gateway: Channel::from_shared(stack.hotel_gateway.clone())?
                .connect()
                .await?,
            ride_gateway: Channel::from_shared(stack.ride_gateway.clone())?
                .connect()
                .await?,
            channel,
            hotel,
            ride,
            address: format!("http://{}", stack.address),
            hotel_credentials,
            ride_credentials,
            ops_token,
        };
        coalition
            .agree(&coalition.hotel, &coalition.ride, conversion_terms(capped))
            .await?;
        coalition
            .agree(&coalition.ride, &coalition.hotel, earn_terms(hold_days))
            .await?;
        Ok(coalition)
    }

    /// Another client of the hotel, or of the rideshare, on a connection of its own: one
    /// instance of the partner's app.
    pub async fn app(&self, hotel: bool) -> anyhow::Result<TandemClient> {
        let (partner, credentials) = if hotel {
            (&self.hotel, &self.hotel_credentials)
        } else {
            (&self.ride, &self.ride_credentials)
        };
        Ok(TandemClient::connect(
            self.address.clone(),
            partner.partner_id().to_owned(),
            credentials.clone(),
        )
        .await?)
    }

    /// The source proposes, the target accepts; each with its own token.
    async fn agree(
        &self,
        source: &TandemClient,
        target: &TandemClient,
        terms: pb::AgreementTerms,
    ) -> anyhow::Result<()> {
        let mut registry = PartnerRegistryServiceClient::new(self.channel.clone());
        let source_token = partner_token(source).await?;
        let target_token = partner_token(target).await?;
        let agreement = registry
            .propose_agreement(authed(
                &source_token,
                pb::ProposeAgreementRequest {
                    source_partner_id: source.partner_id().to_owned(),
                    target_partner_id: target.partner_id().to_owned(),
                    terms: Some(terms),
                    effective_time: None,
                },
            ))
            .await
            .context("proposing an agreement")?
            .into_inner()
            .agreement
            .context("agreement")?;
        registry
            .accept_agreement(authed(
                &target_token,
                pb::AcceptAgreementRequest {
                    agreement_id: agreement.agreement_id,
                    terms_version: 1,
                },
            ))
            .await
            .context("accepting an agreement")?;
        Ok(())
    }

    /// Creates (or resets) a member's wallet at a gateway.
    pub async fn put_member(
        gateway: &Channel,
        member_id: &str,
        balance_minor: i64,
    ) -> anyhow::Result<()> {
        PartnerSimServiceClient::new(gateway.clone())
            .put_member(sim::PutMemberRequest {
                member: Some(sim::Member {
                    member_id: member_id.to_owned(),
                    balance_minor,
                    in_good_standing: true,
                }),
            })
            .await
            .context("creating a member at a gateway")?;
        Ok(())
    }

    pub async fn balance(gateway: &Channel, member_id: &str) -> anyhow::Result<i64> {
        Ok(PartnerSimServiceClient::new(gateway.clone())
            .get_member(sim::GetMemberRequest {
                member_id: member_id.to_owned(),
            })
            .await
            .context("reading a wallet")?
            .into_inner()
            .member
            .context("member")?
            .balance_minor)
    }

    /// Links a hotel member to a rider the way customers do: the hotel starts, the rideshare
    /// completes with the code. Returns the link id.
    pub async fn link(&self, hotel_member: &str, rider: &str) -> anyhow::Result<String> {
        let started = self
            .hotel
            .start_link(hotel_member, self.ride.partner_id())
            .await?;
        let link = self.ride.complete_link(rider, &started.code).await?;
        Ok(link.link_id)
    }

    pub fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.channel.clone())
    }
}

/// A partner's own token, as its SDK fetches it, for the registry calls the SDK does not wrap.
async fn partner_token(client: &TandemClient) -> anyhow::Result<String> {
    client
        .access_token()
        .await
        .with_context(|| format!("fetching a token for partner {}", client.partner_id()))
}

/// Registers a partner as `admin`; its SDK client on `channel`, and its credentials.
async fn register_partner(
    channel: &Channel,
    admin: &str,
    code: &str,
    category: pb::PartnerCategory,
    program: &str,
    name: &str,
    gateway: &str,
) -> anyhow::Result<(TandemClient, Credentials)> {
    let created = PartnerRegistryServiceClient::new(channel.clone())
        .create_partner(authed(
            admin,
            pb::CreatePartnerRequest {
                code: code.to_owned(),
                display_name: name.to_owned(),
                category: category.into(),
                program: Some(pb::Program {
                    code: program.to_owned(),
                    name: format!("{name} points"),
                    scale: 0,
                }),
                settlement_currency: "USD".to_owned(),
                gateway_endpoint: gateway.to_owned(),
            },
        ))
        .await
        .with_context(|| format!("registering {name}"))?
        .into_inner();
    let credentials = created.credentials.context("credentials")?;
    let partner = created.partner.context("partner")?;
    let credentials = Credentials::new(credentials.client_id, credentials.client_secret);
    Ok((
        TandemClient::with_channel(channel.clone(), partner.partner_id, credentials.clone()),
        credentials,
    ))
}
