//! Everyone the exchange talks to, each over its gRPC client with the exchange's service token:
//! the registry (partners, agreements, terms), linking (links, both members), the ledger, and
//! the partners' gateways. In one process too, so services can be split without a code change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tandem_auth::{Authenticator, ServiceToken};
use tandem_proto::{
    status,
    v1::{
        self as pb, account_linking_service_client::AccountLinkingServiceClient,
        ledger_service_client::LedgerServiceClient,
        partner_gateway_service_client::PartnerGatewayServiceClient,
        partner_registry_service_client::PartnerRegistryServiceClient,
    },
};
use tonic::{Code, Status, transport::Channel};

/// How long the exchange waits for a partner's gateway before the outcome counts as unknown.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway's answer. `Unknown` means the call may or may not have been applied: the saga must
/// ask again with the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAnswer {
    Applied,
    Refused(String),
    Unknown(String),
}

/// The exchange's ledger accounts, named by owner, purpose and unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountName {
    pub owner: String,
    pub purpose: pb::AccountPurpose,
    pub unit: String,
    pub scale: u32,
}

#[derive(Clone)]
pub struct Peers {
    registry: PartnerRegistryServiceClient<Channel>,
    linking: AccountLinkingServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    token: ServiceToken,
    gateways: Arc<Mutex<HashMap<String, Channel>>>,
    accounts: Arc<Mutex<HashMap<AccountName, String>>>,
    partners: Arc<Mutex<Lookups<String, pb::Partner>>>,
    agreements: Arc<Mutex<AgreementLookups>>,
}

/// The ACTIVE agreement (or none) by source and target partner.
type AgreementLookups = Lookups<(String, String), Option<pb::Agreement>>;

/// Registry answers by key, with when they were read.
type Lookups<K, V> = HashMap<K, (Instant, V)>;

/// How long a partner or an agreement read from the registry is reused. Every quote needs both
/// partners and the agreement, and asking the registry each time made it the busiest service;
/// a change (a suspension, an accepted amendment) is seen within this long. Links are never
/// reused: consent is checked afresh every time.
const LOOKUP_TTL: Duration = Duration::from_secs(1);

fn fresh<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Mutex<HashMap<K, (Instant, V)>>,
    key: &K,
) -> Option<V> {
    let cache = cache.lock().expect("lookup cache lock");
    cache
        .get(key)
        .filter(|(at, _)| at.elapsed() < LOOKUP_TTL)
        .map(|(_, value)| value.clone())
}

/// The accepted terms version of `agreement` in force at `at_micros`: the one with the latest
/// effective time not after it (versions take effect in order), unless the agreement has been
/// terminated by then. The registry's own rule, applied to the agreement it returned.
pub(crate) fn terms_at(agreement: &pb::Agreement, at_micros: i64) -> Option<&pb::TermsVersion> {
    let micros = |timestamp: &tandem_proto::time::ProtoTimestamp| {
        tandem_proto::time::datetime(timestamp)
            .ok()
            .map(tandem_domain::to_unix_micros)
    };
    if agreement
        .terminate_time
        .as_ref()
        .and_then(micros)
        .is_some_and(|end| end <= at_micros)
    {
        return None;
    }
    agreement
        .terms_versions
        .iter()
        .filter(|version| version.status == pb::TermsVersionStatus::Accepted as i32)
        .filter_map(|version| {
            let effective = version.effective_time.as_ref().and_then(micros)?;
            (effective <= at_micros).then_some((effective, version))
        })
        .max_by_key(|(effective, version)| (*effective, version.version))
        .map(|(_, version)| version)
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// A peer service failed: UNAVAILABLE to our caller, with the cause logged.
fn peer_unavailable(peer: &str, status: &Status) -> Status {
    tracing::warn!(peer, code = ?status.code(), message = status.message(), "peer call failed");
    status::with_reason(
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
        format!("the {peer} could not answer; try again"),
    )
}

impl Peers {
    /// `channel` reaches the registry, linking and ledger services (one Tandem process, or a
    /// balancer in front of several).
    pub fn new(channel: Channel, authenticator: Arc<Authenticator>) -> Self {
        Self {
            registry: PartnerRegistryServiceClient::new(channel.clone()),
            linking: AccountLinkingServiceClient::new(channel.clone()),
            ledger: LedgerServiceClient::new(channel),
            token: ServiceToken::new(authenticator, "exchange"),
            gateways: Arc::default(),
            accounts: Arc::default(),
            partners: Arc::default(),
            agreements: Arc::default(),
        }
    }

    async fn authed<T>(&self, message: T) -> Result<tonic::Request<T>, Status> {
        self.token
            .authorize(message)
            .await
            .map_err(|error| status::internal(&error))
    }

    /// A partner, or NOT_FOUND.
    pub async fn partner(&self, partner_id: &str) -> Result<pb::Partner, Status> {
        if let Some(partner) = fresh(&self.partners, &partner_id.to_owned()) {
            return Ok(partner);
        }
        let partner = self.fetch_partner(partner_id).await?;
        self.partners
            .lock()
            .expect("lookup cache lock")
            .insert(partner_id.to_owned(), (Instant::now(), partner.clone()));
        Ok(partner)
    }

    async fn fetch_partner(&self, partner_id: &str) -> Result<pb::Partner, Status> {
        let request = self
            .authed(pb::GetPartnerRequest {
                partner_id: partner_id.to_owned(),
            })
            .await?;
        match self.registry.clone().get_partner(request).await {
            Ok(response) => response
                .into_inner()
                .partner
                .ok_or_else(|| status::internal(&"registry answered without a partner")),
            Err(error) if error.code() == Code::NotFound => Err(status::with_reason(
                Code::NotFound,
                "PARTNER_NOT_FOUND",
                format!("partner {partner_id} not found"),
            )),
            Err(error) => Err(peer_unavailable("partner registry", &error)),
        }
    }

    /// A link with both members, or NOT_FOUND.
    pub async fn link(&self, link_id: &str) -> Result<pb::Link, Status> {
        let request = self
            .authed(pb::GetLinkRequest {
                link_id: link_id.to_owned(),
            })
            .await?;
        match self.linking.clone().get_link(request).await {
            Ok(response) => response
                .into_inner()
                .link
                .ok_or_else(|| status::internal(&"linking answered without a link")),
            Err(error) if matches!(error.code(), Code::NotFound | Code::InvalidArgument) => {
                Err(status::with_reason(
                    Code::NotFound,
                    "LINK_NOT_FOUND",
                    format!("link {link_id} not found"),
                ))
            }
            Err(error) => Err(peer_unavailable("linking service", &error)),
        }
    }

    /// The member's ACTIVE links.
    pub async fn active_links(
        &self,
        partner_id: &str,
        member_id: &str,
    ) -> Result<Vec<pb::Link>, Status> {
        let mut links = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self
                .authed(pb::ListLinksRequest {
                    partner_id: partner_id.to_owned(),
                    member_id: member_id.to_owned(),
                    status: pb::LinkStatus::Active.into(),
                    page_size: 500,
                    page_token,
                    member_ids: Vec::new(),
                })
                .await?;
            let page = self
                .linking
                .clone()
                .list_links(request)
                .await
                .map_err(|error| peer_unavailable("linking service", &error))?
                .into_inner();
            links.extend(page.links);
            if page.next_page_token.is_empty() {
                return Ok(links);
            }
            page_token = page.next_page_token;
        }
    }

    /// The ACTIVE agreement from `source` to `target`, if there is one.
    pub async fn agreement(
        &self,
        source: &str,
        target: &str,
    ) -> Result<Option<pb::Agreement>, Status> {
        let key = (source.to_owned(), target.to_owned());
        if let Some(agreement) = fresh(&self.agreements, &key) {
            return Ok(agreement);
        }
        let agreement = self.fetch_agreement(source, target).await?;
        self.agreements
            .lock()
            .expect("lookup cache lock")
            .insert(key, (Instant::now(), agreement.clone()));
        Ok(agreement)
    }

    async fn fetch_agreement(
        &self,
        source: &str,
        target: &str,
    ) -> Result<Option<pb::Agreement>, Status> {
        let mut page_token = String::new();
        loop {
            let request = self
                .authed(pb::ListAgreementsRequest {
                    partner_id: source.to_owned(),
                    status: pb::AgreementStatus::Active.into(),
                    page_size: 500,
                    page_token,
                })
                .await?;
            let page = self
                .registry
                .clone()
                .list_agreements(request)
                .await
                .map_err(|error| peer_unavailable("partner registry", &error))?
                .into_inner();
            if let Some(agreement) = page.agreements.into_iter().find(|agreement| {
                agreement.source_partner_id == source && agreement.target_partner_id == target
            }) {
                return Ok(Some(agreement));
            }
            if page.next_page_token.is_empty() {
                return Ok(None);
            }
            page_token = page.next_page_token;
        }
    }

    fn gateway(&self, endpoint: &str) -> Result<PartnerGatewayServiceClient<Channel>, String> {
        let mut gateways = self.gateways.lock().expect("gateway cache lock");
        if let Some(channel) = gateways.get(endpoint) {
            return Ok(PartnerGatewayServiceClient::new(channel.clone()));
        }
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|error| format!("gateway endpoint {endpoint:?}: {error}"))?
            .connect_timeout(GATEWAY_TIMEOUT)
            .timeout(GATEWAY_TIMEOUT)
            .connect_lazy();
        gateways.insert(endpoint.to_owned(), channel.clone());
        Ok(PartnerGatewayServiceClient::new(channel))
    }

    /// Debits (`credit == false`) or credits a member at a partner's gateway.
    pub async fn move_points(
        &self,
        endpoint: &str,
        credit: bool,
        key: String,
        member_id: &str,
        amount_minor: i64,
        description: &str,
    ) -> GatewayAnswer {
        let mut client = match self.gateway(endpoint) {
            Ok(client) => client,
            Err(error) => return GatewayAnswer::Unknown(error),
        };
        let result = if credit {
            let request = pb::CreditPointsRequest {
                transaction_key: key,
                member_id: member_id.to_owned(),
                amount_minor,
                description: description.to_owned(),
            };
            match self.authed(request).await {
                Ok(request) => client.credit_points(request).await.map(|response| {
                    let answer = response.into_inner();
                    (answer.outcome, answer.refusal_reason)
                }),
                Err(error) => Err(error),
            }
        } else {
            let request = pb::DebitPointsRequest {
                transaction_key: key,
                member_id: member_id.to_owned(),
                amount_minor,
                description: description.to_owned(),
            };
            match self.authed(request).await {
                Ok(request) => client.debit_points(request).await.map(|response| {
                    let answer = response.into_inner();
                    (answer.outcome, answer.refusal_reason)
                }),
                Err(error) => Err(error),
            }
        };
        answer(result)
    }

    /// Undoes an earlier debit or credit at a partner's gateway (and voids it if it never
    /// arrived). A reversal of something already reversed counts as applied.
    pub async fn reverse_points(
        &self,
        endpoint: &str,
        key: String,
        original: String,
    ) -> GatewayAnswer {
        let mut client = match self.gateway(endpoint) {
            Ok(client) => client,
            Err(error) => return GatewayAnswer::Unknown(error),
        };
        let request = pb::ReversePointsRequest {
            transaction_key: key,
            original_transaction_key: original,
        };
        let result = match self.authed(request).await {
            Ok(request) => client.reverse_points(request).await.map(|response| {
                let answer = response.into_inner();
                (answer.outcome, answer.refusal_reason)
            }),
            Err(error) => Err(error),
        };
        match answer(result) {
            GatewayAnswer::Refused(reason)
                if reason == pb::RefusalReason::AlreadyReversed.as_str_name() =>
            {
                GatewayAnswer::Applied
            }
            other => other,
        }
    }

    /// The id of an account, opening it on first use.
    pub async fn account(&self, name: &AccountName) -> Result<String, Status> {
        if let Some(id) = self.accounts.lock().expect("account cache lock").get(name) {
            return Ok(id.clone());
        }
        let request = self
            .authed(pb::OpenAccountRequest {
                owner: name.owner.clone(),
                purpose: name.purpose.into(),
                unit: name.unit.clone(),
                unit_scale: name.scale,
                guard: pb::BalanceGuard::Unspecified.into(),
                overdraft_limit_minor: 0,
            })
            .await?;
        let account = self
            .ledger
            .clone()
            .open_account(request)
            .await
            .map_err(|error| ledger_error(&error))?
            .into_inner()
            .account
            .ok_or_else(|| status::internal(&"ledger answered without an account"))?;
        self.accounts
            .lock()
            .expect("account cache lock")
            .insert(name.clone(), account.account_id.clone());
        Ok(account.account_id)
    }

    /// Posts a transaction; the same key returns the original.
    pub async fn post(
        &self,
        request: pb::PostTransactionRequest,
    ) -> Result<pb::Transaction, Status> {
        let request = self.authed(request).await?;
        self.ledger
            .clone()
            .post_transaction(request)
            .await
            .map_err(|error| ledger_error(&error))?
            .into_inner()
            .transaction
            .ok_or_else(|| status::internal(&"ledger answered without a transaction"))
    }

    /// Posts or voids a pending transaction.
    pub async fn resolve(
        &self,
        key: String,
        pending_transaction_id: &str,
        resolution: pb::PendingResolution,
    ) -> Result<pb::Transaction, Status> {
        let request = self
            .authed(pb::ResolvePendingRequest {
                idempotency_key: key,
                pending_transaction_id: pending_transaction_id.to_owned(),
                resolution: resolution.into(),
            })
            .await?;
        self.ledger
            .clone()
            .resolve_pending(request)
            .await
            .map_err(|error| ledger_error(&error))?
            .into_inner()
            .transaction
            .ok_or_else(|| status::internal(&"ledger answered without a transaction"))
    }

    /// Reverses a posted transaction.
    pub async fn reverse(
        &self,
        key: String,
        transaction_id: &str,
        reason: &str,
    ) -> Result<pb::Transaction, Status> {
        let request = self
            .authed(pb::ReverseTransactionRequest {
                idempotency_key: key,
                transaction_id: transaction_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        self.ledger
            .clone()
            .reverse_transaction(request)
            .await
            .map_err(|error| ledger_error(&error))?
            .into_inner()
            .transaction
            .ok_or_else(|| status::internal(&"ledger answered without a transaction"))
    }
}

/// The ledger's own status, kept as is so a saga can tell a refusal (which will never succeed)
/// from an outage (which may).
fn ledger_error(status: &Status) -> Status {
    if matches!(
        status.code(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound
    ) {
        tracing::error!(code = ?status.code(), message = status.message(), "ledger refused the exchange");
        Status::new(status.code(), format!("ledger: {}", status.message()))
    } else {
        Status::new(Code::Unavailable, format!("ledger: {}", status.message()))
    }
}

/// Whether a ledger error will never go away by retrying.
pub fn ledger_refused(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound
    )
}

fn answer(result: Result<(i32, i32), Status>) -> GatewayAnswer {
    match result {
        Ok((outcome, refusal)) => match pb::GatewayOutcome::try_from(outcome) {
            Ok(pb::GatewayOutcome::Applied | pb::GatewayOutcome::AlreadyApplied) => {
                GatewayAnswer::Applied
            }
            Ok(pb::GatewayOutcome::Refused) => GatewayAnswer::Refused(
                pb::RefusalReason::try_from(refusal)
                    .unwrap_or(pb::RefusalReason::Unspecified)
                    .as_str_name()
                    .to_owned(),
            ),
            _ => GatewayAnswer::Unknown(format!("gateway answered outcome {outcome}")),
        },
        // A gateway that says the request itself is malformed will say so again: that is a
        // refusal, not an unknown outcome.
        Err(status) if status.code() == Code::InvalidArgument => {
            GatewayAnswer::Refused(format!("INVALID_REQUEST: {}", status.message()))
        }
        Err(status) => GatewayAnswer::Unknown(format!(
            "gateway call failed ({:?}): {}",
            status.code(),
            status.message()
        )),
    }
}
