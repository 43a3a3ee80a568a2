//! Everyone the exchange talks to, each over its gRPC client with the exchange's service token:
//! the registry (partners, agreements, terms), linking (links, both members), the ledger, and
//! the partners' gateways. In one process too, so services can be split without a code change.
//!
//! What many sagas ask at once goes in batches (see `batch.rs`): link checks as one
//! BatchGetLinks, ledger posts as one PostTransactions, and the points moved at each gateway as
//! one BatchMovePoints (or one call per movement, to a gateway that does not offer it).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tandem_auth::{Authenticator, ServiceToken};
use tandem_proto::{
    channel::ServiceChannel,
    status,
    v1::{
        self as pb, account_linking_service_client::AccountLinkingServiceClient,
        ledger_service_client::LedgerServiceClient,
        partner_gateway_service_client::PartnerGatewayServiceClient,
        partner_registry_service_client::PartnerRegistryServiceClient,
    },
};
use tonic::{Code, Status, transport::Channel};

use crate::{ExchangeError, batch::Batcher};

/// How long the exchange waits for a partner's gateway before the outcome counts as unknown.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most links one BatchGetLinks call asks for (the service takes up to 1,000).
const LINKS_PER_CALL: usize = 500;
/// Most transactions one PostTransactions call carries (the service takes up to 1,000).
const POSTS_PER_CALL: usize = 1_000;
/// Most movements one BatchMovePoints call carries (a gateway takes up to 1,000).
const MOVEMENTS_PER_CALL: usize = 1_000;
/// Batches of one kind in flight at once: while they run, the next batch fills.
const CALLS_IN_FLIGHT: usize = 1;

/// A gateway's raw answer to one movement: (outcome, refusal reason), or the status of a call
/// whose outcome is unknown.
type MovementAnswer = Result<(i32, i32), Status>;

/// A gateway's answer. `Unknown` means the call may or may not have been applied: the saga must
/// ask again with the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAnswer {
    Applied,
    Refused(String),
    Unknown(String),
}

/// A debit (`credit == false`) or credit of a member at a partner's gateway.
#[derive(Debug, Clone)]
pub struct PointsMovement {
    pub credit: bool,
    /// Tandem's key: the same key is the same movement.
    pub key: String,
    pub member_id: String,
    pub amount_minor: i64,
    /// For the member's statement.
    pub description: String,
    /// The conversion or activity id, for the partner's reconciliation.
    pub tandem_reference: String,
    /// CONVERSION, EARN or REVERSAL.
    pub kind: &'static str,
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
    registry: PartnerRegistryServiceClient<ServiceChannel>,
    linking: AccountLinkingServiceClient<ServiceChannel>,
    ledger: LedgerServiceClient<ServiceChannel>,
    token: ServiceToken,
    gateways: Arc<Mutex<HashMap<String, Batcher<pb::PointMovement, MovementAnswer>>>>,
    accounts: Arc<Mutex<HashMap<AccountName, String>>>,
    partners: Arc<Mutex<Lookups<String, Arc<pb::Partner>>>>,
    agreements: Arc<Mutex<AgreementLookups>>,
    links: Batcher<String, Result<Option<pb::Link>, ExchangeError>>,
    posts: Batcher<pb::PostTransactionRequest, Result<pb::Transaction, ExchangeError>>,
}

/// The ACTIVE agreement (or none) by source and target partner.
type AgreementLookups = Lookups<(String, String), Option<Arc<pb::Agreement>>>;

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

/// A peer service's error as the exchange passes it on, classified by what it means rather than
/// turned into one code: a refusal of the request (INVALID_ARGUMENT, NOT_FOUND,
/// FAILED_PRECONDITION, OUT_OF_RANGE) stays the caller's refusal, with its reason, since asking
/// again would be refused again; only a peer that could not answer (unreachable, overloaded,
/// failing, or refusing the exchange's own credentials) is UNAVAILABLE, which callers may retry.
fn peer_error(peer: &'static str, error: &Status) -> ExchangeError {
    match error.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
            tracing::info!(peer, code = ?error.code(), message = error.message(), "peer refused the request");
            let reason = status::reason(error);
            ExchangeError::PeerRefused {
                peer,
                code: error.code(),
                reason: if reason.is_empty() {
                    "REQUEST_REFUSED".to_owned()
                } else {
                    reason
                },
                message: error.message().to_owned(),
            }
        }
        _ => {
            tracing::warn!(peer, code = ?error.code(), message = error.message(), "peer call failed");
            ExchangeError::PeerUnavailable {
                peer,
                cause: format!("{:?}: {}", error.code(), error.message()),
            }
        }
    }
}

impl Peers {
    /// `channel` reaches the registry, linking and ledger services: in this process, or across
    /// the network (one Tandem process, or a balancer in front of several).
    pub fn new(channel: ServiceChannel, authenticator: Arc<Authenticator>) -> Self {
        let token = ServiceToken::new(authenticator, "exchange");
        let linking = AccountLinkingServiceClient::new(channel.clone());
        let ledger = LedgerServiceClient::new(channel.clone());
        Self {
            registry: PartnerRegistryServiceClient::new(channel),
            links: link_batcher(linking.clone(), token.clone()),
            posts: post_batcher(ledger.clone(), token.clone()),
            linking,
            ledger,
            token,
            gateways: Arc::default(),
            accounts: Arc::default(),
            partners: Arc::default(),
            agreements: Arc::default(),
        }
    }

    async fn authed<T>(&self, message: T) -> Result<tonic::Request<T>, ExchangeError> {
        self.token
            .authorize(message)
            .await
            .map_err(ExchangeError::internal)
    }

    /// A partner, or NOT_FOUND.
    pub async fn partner(&self, partner_id: &str) -> Result<Arc<pb::Partner>, ExchangeError> {
        if let Some(partner) = fresh(&self.partners, &partner_id.to_owned()) {
            return Ok(partner);
        }
        let partner = Arc::new(self.fetch_partner(partner_id).await?);
        self.partners
            .lock()
            .expect("lookup cache lock")
            .insert(partner_id.to_owned(), (Instant::now(), partner.clone()));
        Ok(partner)
    }

    async fn fetch_partner(&self, partner_id: &str) -> Result<pb::Partner, ExchangeError> {
        let request = self
            .authed(pb::GetPartnerRequest {
                partner_id: partner_id.to_owned(),
            })
            .await?;
        match self.registry.clone().get_partner(request).await {
            Ok(response) => response
                .into_inner()
                .partner
                .ok_or_else(|| ExchangeError::internal("registry answered without a partner")),
            Err(error) if error.code() == Code::NotFound => {
                Err(ExchangeError::PartnerNotFound(partner_id.to_owned()))
            }
            Err(error) => Err(peer_error("partner registry", &error)),
        }
    }

    /// A link with both members, or NOT_FOUND. Checks that arrive together are asked together.
    pub async fn link(&self, link_id: &str) -> Result<pb::Link, ExchangeError> {
        match self.links.submit(link_id.to_owned()).await {
            Some(Ok(Some(link))) => Ok(link),
            Some(Ok(None)) => Err(ExchangeError::LinkNotFound(link_id.to_owned())),
            Some(Err(error)) => Err(error),
            None => Err(ExchangeError::PeerUnavailable {
                peer: "linking service",
                cause: "the link batcher stopped".to_owned(),
            }),
        }
    }

    /// The ACTIVE links of each of these members of `partner_id`, asked in as few calls as the
    /// service allows. A member without links has no entry.
    pub async fn active_links_of(
        &self,
        partner_id: &str,
        members: &[String],
    ) -> Result<HashMap<String, Vec<pb::Link>>, ExchangeError> {
        let mut links: HashMap<String, Vec<pb::Link>> = HashMap::new();
        for chunk in members.chunks(LINKS_PER_CALL) {
            let mut page_token = String::new();
            loop {
                let request = self
                    .authed(pb::ListLinksRequest {
                        partner_id: partner_id.to_owned(),
                        member_id: String::new(),
                        status: pb::LinkStatus::Active.into(),
                        page_size: 500,
                        page_token,
                        member_ids: chunk.to_vec(),
                    })
                    .await?;
                let page = self
                    .linking
                    .clone()
                    .list_links(request)
                    .await
                    .map_err(|error| peer_error("linking service", &error))?
                    .into_inner();
                for link in page.links {
                    let side = [&link.initiator, &link.acceptor]
                        .into_iter()
                        .flatten()
                        .find(|side| side.partner_id == partner_id)
                        .map(|side| side.member_id.clone());
                    if let Some(member) = side {
                        links.entry(member).or_default().push(link);
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        Ok(links)
    }

    /// The ACTIVE agreement from `source` to `target`, if there is one.
    pub async fn agreement(
        &self,
        source: &str,
        target: &str,
    ) -> Result<Option<Arc<pb::Agreement>>, ExchangeError> {
        let key = (source.to_owned(), target.to_owned());
        if let Some(agreement) = fresh(&self.agreements, &key) {
            return Ok(agreement);
        }
        let agreement = self.fetch_agreement(source, target).await?.map(Arc::new);
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
    ) -> Result<Option<pb::Agreement>, ExchangeError> {
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
                .map_err(|error| peer_error("partner registry", &error))?
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

    /// The batcher of a gateway's movements, started on first use.
    fn gateway(
        &self,
        endpoint: &str,
    ) -> Result<Batcher<pb::PointMovement, MovementAnswer>, String> {
        let mut gateways = self.gateways.lock().expect("gateway cache lock");
        if let Some(batcher) = gateways.get(endpoint) {
            return Ok(batcher.clone());
        }
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|error| format!("gateway endpoint {endpoint:?}: {error}"))?
            .connect_timeout(GATEWAY_TIMEOUT)
            .timeout(GATEWAY_TIMEOUT)
            .connect_lazy();
        let batcher = movement_batcher(
            PartnerGatewayServiceClient::new(channel),
            self.token.clone(),
            endpoint.to_owned(),
        );
        gateways.insert(endpoint.to_owned(), batcher.clone());
        Ok(batcher)
    }

    /// One movement at a gateway, sent with the others that arrive together.
    async fn movement(&self, endpoint: &str, movement: pb::PointMovement) -> MovementAnswer {
        let batcher = self.gateway(endpoint).map_err(Status::invalid_argument)?;
        batcher
            .submit(movement)
            .await
            .unwrap_or_else(|| Err(Status::unavailable("the gateway's batcher stopped")))
    }

    /// Debits or credits a member at a partner's gateway.
    pub async fn move_points(&self, endpoint: &str, movement: PointsMovement) -> GatewayAnswer {
        let PointsMovement {
            credit,
            key,
            member_id,
            amount_minor,
            description,
            tandem_reference,
            kind,
        } = movement;
        let operation = if credit {
            pb::point_movement::Operation::Credit(pb::CreditPointsRequest {
                transaction_key: key,
                member_id,
                amount_minor,
                description,
                tandem_reference,
                kind: kind.to_owned(),
            })
        } else {
            pb::point_movement::Operation::Debit(pb::DebitPointsRequest {
                transaction_key: key,
                member_id,
                amount_minor,
                description,
                tandem_reference,
                kind: kind.to_owned(),
            })
        };
        let movement = pb::PointMovement {
            operation: Some(operation),
        };
        answer(self.movement(endpoint, movement).await)
    }

    /// Undoes an earlier debit or credit at a partner's gateway (and voids it if it never
    /// arrived). A reversal of something already reversed counts as applied.
    pub async fn reverse_points(
        &self,
        endpoint: &str,
        key: String,
        original: String,
    ) -> GatewayAnswer {
        let movement = pb::PointMovement {
            operation: Some(pb::point_movement::Operation::Reverse(
                pb::ReversePointsRequest {
                    transaction_key: key,
                    original_transaction_key: original,
                },
            )),
        };
        match answer(self.movement(endpoint, movement).await) {
            GatewayAnswer::Refused(reason)
                if reason == pb::RefusalReason::AlreadyReversed.as_str_name() =>
            {
                GatewayAnswer::Applied
            }
            other => other,
        }
    }

    /// The id of an account, opening it on first use.
    pub async fn account(&self, name: &AccountName) -> Result<String, ExchangeError> {
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
            .ok_or_else(|| ExchangeError::internal("ledger answered without an account"))?;
        self.accounts
            .lock()
            .expect("account cache lock")
            .insert(name.clone(), account.account_id.clone());
        Ok(account.account_id)
    }

    /// Posts a transaction; the same key returns the original. Posts that arrive together go
    /// to the ledger in one call.
    pub async fn post(
        &self,
        request: pb::PostTransactionRequest,
    ) -> Result<pb::Transaction, ExchangeError> {
        self.posts.submit(request).await.unwrap_or_else(|| {
            Err(ExchangeError::PeerUnavailable {
                peer: "ledger",
                cause: "the batcher of posts stopped".to_owned(),
            })
        })
    }

    /// Posts or voids a pending transaction.
    pub async fn resolve(
        &self,
        key: String,
        pending_transaction_id: &str,
        resolution: pb::PendingResolution,
    ) -> Result<pb::Transaction, ExchangeError> {
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
            .ok_or_else(|| ExchangeError::internal("ledger answered without a transaction"))
    }

    /// Reverses a posted transaction.
    pub async fn reverse(
        &self,
        key: String,
        transaction_id: &str,
        reason: &str,
    ) -> Result<pb::Transaction, ExchangeError> {
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
            .ok_or_else(|| ExchangeError::internal("ledger answered without a transaction"))
    }
}

/// Link checks asked together, as one BatchGetLinks call.
fn link_batcher(
    linking: AccountLinkingServiceClient<ServiceChannel>,
    token: ServiceToken,
) -> Batcher<String, Result<Option<pb::Link>, ExchangeError>> {
    Batcher::start(LINKS_PER_CALL, CALLS_IN_FLIGHT, move |ids: Vec<String>| {
        let (mut linking, token) = (linking.clone(), token.clone());
        async move {
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let answer = match token
                .authorize(pb::BatchGetLinksRequest { link_ids: unique })
                .await
            {
                Ok(request) => linking
                    .batch_get_links(request)
                    .await
                    .map_err(|error| peer_error("linking service", &error)),
                Err(error) => Err(ExchangeError::internal(error)),
            };
            match answer {
                Ok(response) => {
                    let found: HashMap<String, pb::Link> = response
                        .into_inner()
                        .links
                        .into_iter()
                        .map(|link| (link.link_id.clone(), link))
                        .collect();
                    ids.iter().map(|id| Ok(found.get(id).cloned())).collect()
                }
                Err(status) => ids.iter().map(|_| Err(status.clone())).collect(),
            }
        }
    })
}

/// Ledger posts asked together, as one PostTransactions call; each keeps its own outcome.
fn post_batcher(
    ledger: LedgerServiceClient<ServiceChannel>,
    token: ServiceToken,
) -> Batcher<pb::PostTransactionRequest, Result<pb::Transaction, ExchangeError>> {
    Batcher::start(
        POSTS_PER_CALL,
        CALLS_IN_FLIGHT,
        move |transactions: Vec<pb::PostTransactionRequest>| {
            let (mut ledger, token) = (ledger.clone(), token.clone());
            async move {
                let count = transactions.len();
                let request = match token
                    .authorize(pb::PostTransactionsRequest {
                        transactions,
                        // The sagas keep only the transaction's id.
                        view: pb::TransactionView::Basic.into(),
                    })
                    .await
                {
                    Ok(request) => request,
                    Err(error) => {
                        let status = ExchangeError::internal(error);
                        return (0..count).map(|_| Err(status.clone())).collect();
                    }
                };
                match ledger.post_transactions(request).await {
                    Ok(response) => {
                        let results = response.into_inner().results;
                        if results.len() != count {
                            let status = ExchangeError::PeerUnavailable {
                                peer: "ledger",
                                cause: "answered a batch with the wrong number of results"
                                    .to_owned(),
                            };
                            return (0..count).map(|_| Err(status.clone())).collect();
                        }
                        results.into_iter().map(post_result).collect()
                    }
                    Err(error) => {
                        let status = ledger_error(&error);
                        (0..count).map(|_| Err(status.clone())).collect()
                    }
                }
            }
        },
    )
}

/// One transaction's answer in a PostTransactions call, as PostTransaction would have answered.
fn post_result(result: pb::PostTransactionResult) -> Result<pb::Transaction, ExchangeError> {
    if result.code == Code::Ok as i32 {
        return result
            .transaction
            .ok_or_else(|| ExchangeError::internal("ledger answered without a transaction"));
    }
    let code = Code::from_i32(result.code);
    let error = if result.reason.is_empty() {
        Status::new(code, result.message)
    } else {
        status::with_reason(code, &result.reason, result.message)
    };
    Err(ledger_error(&error))
}

/// A gateway's movements asked together, as one BatchMovePoints call; to a gateway that answers
/// UNIMPLEMENTED, one call per movement from then on.
fn movement_batcher(
    gateway: PartnerGatewayServiceClient<Channel>,
    token: ServiceToken,
    endpoint: String,
) -> Batcher<pb::PointMovement, MovementAnswer> {
    let batches = Arc::new(AtomicBool::new(true));
    Batcher::start(
        MOVEMENTS_PER_CALL,
        CALLS_IN_FLIGHT,
        move |movements: Vec<pb::PointMovement>| {
            let (gateway, token, batches) = (gateway.clone(), token.clone(), batches.clone());
            let endpoint = endpoint.clone();
            async move {
                if batches.load(Ordering::Relaxed) {
                    match batch_call(gateway.clone(), &token, movements.clone()).await {
                        Err(status) if status.code() == Code::Unimplemented => {
                            tracing::info!(gateway = %endpoint, "gateway takes no batches; moving points one call at a time");
                            batches.store(false, Ordering::Relaxed);
                        }
                        Ok(answers) => return answers,
                        Err(status) => {
                            return movements.iter().map(|_| Err(status.clone())).collect();
                        }
                    }
                }
                let calls = movements
                    .into_iter()
                    .map(|movement| single_call(gateway.clone(), &token, movement));
                futures::future::join_all(calls).await
            }
        },
    )
}

async fn batch_call(
    mut gateway: PartnerGatewayServiceClient<Channel>,
    token: &ServiceToken,
    movements: Vec<pb::PointMovement>,
) -> Result<Vec<MovementAnswer>, Status> {
    let count = movements.len();
    let request = token
        .authorize(pb::BatchMovePointsRequest { movements })
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
    let results = gateway
        .batch_move_points(request)
        .await?
        .into_inner()
        .results;
    if results.len() != count {
        return Err(Status::unavailable(format!(
            "gateway answered {} movements with {} results",
            count,
            results.len()
        )));
    }
    Ok(results
        .into_iter()
        .map(|result| Ok((result.outcome, result.refusal_reason)))
        .collect())
}

/// A movement as its own call, for a gateway that takes no batches.
async fn single_call(
    mut gateway: PartnerGatewayServiceClient<Channel>,
    token: &ServiceToken,
    movement: pb::PointMovement,
) -> MovementAnswer {
    let authorize = |error: sqlx::Error| Status::internal(error.to_string());
    match movement.operation {
        Some(pb::point_movement::Operation::Debit(debit)) => {
            let request = token.authorize(debit).await.map_err(authorize)?;
            let answer = gateway.debit_points(request).await?.into_inner();
            Ok((answer.outcome, answer.refusal_reason))
        }
        Some(pb::point_movement::Operation::Credit(credit)) => {
            let request = token.authorize(credit).await.map_err(authorize)?;
            let answer = gateway.credit_points(request).await?.into_inner();
            Ok((answer.outcome, answer.refusal_reason))
        }
        Some(pb::point_movement::Operation::Reverse(reverse)) => {
            let request = token.authorize(reverse).await.map_err(authorize)?;
            let answer = gateway.reverse_points(request).await?.into_inner();
            Ok((answer.outcome, answer.refusal_reason))
        }
        None => Err(Status::invalid_argument("a movement without an operation")),
    }
}

/// A ledger error as the exchange reads it: the ledger's own refusals of the request (by the
/// reason they carry) are certain and keep their code and reason; anything else may stand beside
/// a transaction that exists, so its outcome is unknown and a saga asks again.
fn ledger_error(error: &Status) -> ExchangeError {
    let reason = status::reason(error);
    if ledger_refused(&reason) {
        tracing::error!(code = ?error.code(), %reason, message = error.message(), "ledger refused the exchange");
        return ExchangeError::PeerRefused {
            peer: "ledger",
            code: error.code(),
            reason,
            message: error.message().to_owned(),
        };
    }
    ExchangeError::PeerUnavailable {
        peer: "ledger",
        cause: if reason.is_empty() {
            error.message().to_owned()
        } else {
            format!("{reason}: {}", error.message())
        },
    }
}

/// The reasons with which the ledger refuses a request itself: asked again, it refuses again, and
/// nothing was written. Any other error (an unreachable or busy ledger, a key it already holds
/// with other content, something already reversed or resolved) may stand beside a transaction
/// that exists, so a saga asks again rather than compensating.
const LEDGER_REFUSALS: &[&str] = &[
    "INVALID_ARGUMENT",
    "ACCOUNT_NOT_FOUND",
    "TRANSACTION_NOT_FOUND",
    "UNIT_SCALE_MISMATCH",
    "INSUFFICIENT_BALANCE",
    "NOT_PENDING",
    "PENDING_EXPIRED",
    "NOT_REVERSIBLE",
];

/// Whether a ledger error's reason is a refusal of the request.
fn ledger_refused(reason: &str) -> bool {
    LEDGER_REFUSALS.contains(&reason)
}

fn answer(result: MovementAnswer) -> GatewayAnswer {
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
