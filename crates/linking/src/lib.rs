//! Account linking: a customer joins their membership at one brand to their membership at
//! another, with consent on both sides, and neither brand learns the other's member id.
//!
//! Partner A starts a link for its member and receives a one-time code; the customer, signed in
//! at partner B, completes it there. The rules a partner sets for its members (one account per
//! other partner, one partner per category) are checked with both members locked, so they hold
//! under concurrency. Every change is an event in the link's history.

mod directory;
mod grpc;
mod model;
mod store;

use std::time::Duration;

use tandem_auth::{Caller, Role};
use tandem_domain::{PartnerId, PartnerStatus, Timestamp};
use tandem_storage::{Database, PageCursor, PageRequest};

pub use directory::{PartnerDirectory, PartnerFacts, RegistryDirectory};
pub use grpc::LinkingGrpc;
pub use model::{Link, LinkCode, LinkEvent, LinkPolicy, LinkSide, LinkStatus, MemberId};
pub use store::MAX_FAILED_ATTEMPTS;

/// The linking database's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a link code works unless configured otherwise.
pub const DEFAULT_CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkingError {
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    #[error("partner {0} not found")]
    PartnerNotFound(PartnerId),
    #[error("partner {0} is not ACTIVE")]
    PartnerNotActive(PartnerId),
    #[error("there is no ACTIVE agreement between these partners, in either direction")]
    NoActiveAgreement,
    #[error("no link code like that was issued to this partner")]
    CodeNotFound,
    #[error("the link code has expired; start the link again")]
    CodeExpired,
    #[error("the link code was already used")]
    CodeUsed,
    #[error("too many wrong codes: the link request is locked; start the link again")]
    RequestLocked,
    #[error("wrong link code; {0} attempts left before the request locks")]
    WrongCode(i64),
    #[error("the member already has an active link to this partner")]
    AlreadyLinked,
    #[error("the member already has an active link to a partner of category {0}")]
    CategoryTaken(&'static str),
    #[error("the member's own brand says they cannot link (unknown, closed or blocked)")]
    MemberNotEligible,
    #[error("a member cannot link to the same partner")]
    SamePartner,
    #[error("link {0} not found")]
    LinkNotFound(String),
    #[error("link {0} is already ended")]
    LinkEnded(String),
    #[error("the partner's gateway could not answer: {0}")]
    GatewayUnavailable(String),
    #[error("the partner registry could not be reached: {0}")]
    DirectoryUnavailable(String),
    #[error("the linking service's database is busy; retry shortly")]
    DatabaseBusy,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for LinkingError {
    fn from(error: sqlx::Error) -> Self {
        if tandem_storage::is_pool_exhausted(&error) {
            return LinkingError::DatabaseBusy;
        }
        LinkingError::Internal(error.to_string())
    }
}

type Result<T> = std::result::Result<T, LinkingError>;

/// The linking service.
#[derive(Debug, Clone)]
pub struct Linking<D> {
    database: Database,
    directory: D,
    code_lifetime: Duration,
}

fn acting_partner(caller: &Caller, named: PartnerId, action: &'static str) -> Result<PartnerId> {
    if caller.is_partner(named) {
        Ok(named)
    } else {
        Err(LinkingError::PermissionDenied(action))
    }
}

impl<D: PartnerDirectory> Linking<D> {
    pub fn new(database: Database, directory: D, code_lifetime: Duration) -> Self {
        Self {
            database,
            directory,
            code_lifetime,
        }
    }

    async fn active_partner(&self, id: PartnerId) -> Result<PartnerFacts> {
        let facts = self
            .directory
            .partner(id)
            .await?
            .ok_or(LinkingError::PartnerNotFound(id))?;
        if facts.status != PartnerStatus::Active {
            return Err(LinkingError::PartnerNotActive(id));
        }
        Ok(facts)
    }

    /// Both partners ACTIVE and an ACTIVE agreement between them in either direction.
    async fn check_partnership(
        &self,
        a: PartnerId,
        b: PartnerId,
    ) -> Result<(PartnerFacts, PartnerFacts)> {
        if a == b {
            return Err(LinkingError::SamePartner);
        }
        let (first, second) = (self.active_partner(a).await?, self.active_partner(b).await?);
        if !self.directory.active_agreement_between(a, b).await? {
            return Err(LinkingError::NoActiveAgreement);
        }
        Ok((first, second))
    }

    /// Partner A starts a link for its member to `target`; returns the request id, the code and
    /// its expiry.
    pub async fn start_link(
        &self,
        caller: &Caller,
        partner: PartnerId,
        member: MemberId,
        target: PartnerId,
    ) -> Result<(String, LinkCode, Timestamp)> {
        let partner = acting_partner(
            caller,
            partner,
            "a partner starts links only for its own members",
        )?;
        self.check_partnership(partner, target).await?;
        let now = tandem_domain::now();
        let expires_at =
            now + chrono::Duration::from_std(self.code_lifetime).unwrap_or(chrono::Duration::MAX);
        let (request_id, code) = store::insert_request(
            &self.database,
            caller.subject(),
            partner,
            &member,
            target,
            now,
            expires_at,
        )
        .await?;
        tracing::info!(request_id, %partner, %target, "link started");
        Ok((request_id, code, expires_at))
    }

    /// Checks a presented code against its request, recording a wrong secret (the lockout
    /// counts it even though the call fails). Returns the request when the code is right.
    async fn verify_code(
        &self,
        partner: PartnerId,
        code: &LinkCode,
        now: Timestamp,
    ) -> Result<store::RequestRow> {
        let mut transaction = self.database.begin_write().await?;
        let request =
            store::request_by_handle(&mut transaction, self.database.backend(), &code.handle)
                .await?;
        let Some(request) = request.filter(|request| request.target_partner == partner) else {
            return Err(LinkingError::CodeNotFound);
        };
        match request.status.as_str() {
            "COMPLETED" => return Err(LinkingError::CodeUsed),
            "LOCKED" => return Err(LinkingError::RequestLocked),
            _ if request.expires_at <= now => return Err(LinkingError::CodeExpired),
            _ => {}
        }
        if store::secret_hash(&request.request_id, &code.secret) != request.secret_hash {
            let left = store::record_failure(&mut transaction, &request).await?;
            transaction.commit().await?;
            tracing::warn!(request_id = request.request_id, left, "wrong link code");
            return Err(if left <= 0 {
                LinkingError::RequestLocked
            } else {
                LinkingError::WrongCode(left)
            });
        }
        Ok(request)
    }

    /// Partner B completes a link for its member with the customer's code.
    pub async fn complete_link(
        &self,
        caller: &Caller,
        partner: PartnerId,
        member: MemberId,
        code: LinkCode,
    ) -> Result<Link> {
        let partner = acting_partner(
            caller,
            partner,
            "a partner completes links only for its own members",
        )?;
        let now = tandem_domain::now();
        let request = self.verify_code(partner, &code, now).await?;
        // Calls to the registry and the partner's gateway run with no transaction open: the
        // partnership may have changed since the link was started, and the member must be in
        // good standing at their own brand.
        let (initiator_facts, acceptor_facts) = self
            .check_partnership(request.initiator_partner, partner)
            .await?;
        self.check_member_eligible(&acceptor_facts, &member).await?;

        let mut transaction = self.database.begin_write().await?;
        self.lock_open_request(&mut transaction, &request, &code, (&partner, &member))
            .await?;
        let initiator = LinkSide {
            partner: request.initiator_partner,
            member: request.initiator_member.clone(),
            category: initiator_facts.category,
        };
        let acceptor = LinkSide {
            partner,
            member,
            category: acceptor_facts.category,
        };
        self.check_rules(&mut transaction, &initiator, &acceptor)
            .await?;
        self.check_rules(&mut transaction, &acceptor, &initiator)
            .await?;

        let link = Link {
            id: uuid::Uuid::now_v7().to_string(),
            initiator,
            acceptor,
            status: LinkStatus::Active,
            created_at: now,
            ended_at: None,
            events: Vec::new(),
        };
        if !store::mark_completed(&mut transaction, &request.request_id, &link.id).await? {
            return Err(LinkingError::CodeUsed);
        }
        store::insert_link(&mut transaction, &link).await?;
        let (started, completed) = link_events(&request, &link, caller, now);
        store::insert_event(&mut transaction, &link.id, &started).await?;
        store::insert_event(&mut transaction, &link.id, &completed).await?;
        transaction.commit().await?;
        tracing::info!(link_id = link.id, "link completed");
        let mut link = link;
        link.events = vec![started, completed];
        Ok(link)
    }

    /// Refuses a member its own brand's gateway does not vouch for, when the brand has one.
    /// Within the completing transaction: `request`, read again and locked, is still OPEN (a
    /// concurrent completion may have used it meanwhile), and both members are locked.
    async fn lock_open_request(
        &self,
        transaction: &mut sqlx::AnyConnection,
        request: &store::RequestRow,
        code: &LinkCode,
        (partner, member): (&PartnerId, &MemberId),
    ) -> Result<()> {
        let backend = self.database.backend();
        let current = store::request_by_handle(transaction, backend, &code.handle).await?;
        if current.as_ref().is_none_or(|current| {
            current.request_id != request.request_id || current.status != "OPEN"
        }) {
            return Err(LinkingError::CodeUsed);
        }
        store::lock_members(
            transaction,
            backend,
            [
                (&request.initiator_partner, &request.initiator_member),
                (partner, member),
            ],
        )
        .await?;
        Ok(())
    }

    async fn check_member_eligible(&self, facts: &PartnerFacts, member: &MemberId) -> Result<()> {
        if let Some(endpoint) = &facts.gateway_endpoint
            && !self
                .directory
                .member_in_good_standing(endpoint, member)
                .await?
        {
            return Err(LinkingError::MemberNotEligible);
        }
        Ok(())
    }

    /// The rules `side`'s partner set for its members, against `other`.
    async fn check_rules(
        &self,
        connection: &mut sqlx::AnyConnection,
        side: &LinkSide,
        other: &LinkSide,
    ) -> Result<()> {
        let policy = store::policy(connection, side.partner).await?;
        let existing = store::active_counterparties(connection, side.partner, &side.member).await?;
        if !policy.allow_multiple_accounts_per_partner
            && existing
                .iter()
                .any(|(partner, _)| *partner == other.partner)
        {
            return Err(LinkingError::AlreadyLinked);
        }
        if policy.exclusive_categories.contains(&other.category)
            && existing
                .iter()
                .any(|(_, category)| *category == other.category)
        {
            return Err(LinkingError::CategoryTaken(other.category.as_str()));
        }
        Ok(())
    }

    async fn readable_link(&self, caller: &Caller, link_id: &str) -> Result<Link> {
        // A role that may read no link is refused before the look-up, so it cannot learn
        // whether a link id exists.
        if !caller.is_any(&[Role::Ops, Role::Service, Role::Partner]) {
            return Err(LinkingError::PermissionDenied(
                "links are read by their partners, ops and services",
            ));
        }
        if !tandem_domain::is_server_id(link_id) {
            return Err(LinkingError::LinkNotFound(link_id.to_owned()));
        }
        let mut connection = self.database.pool().acquire().await?;
        let link = store::link(&mut connection, link_id)
            .await?
            .ok_or_else(|| LinkingError::LinkNotFound(link_id.to_owned()))?;
        let staff = caller.is_any(&[Role::Ops, Role::Service]);
        let party = caller
            .partner_id()
            .is_some_and(|partner| caller.role() == Role::Partner && link.involves(partner));
        if !(staff || party) {
            return Err(LinkingError::PermissionDenied(
                "a partner reads only its own links",
            ));
        }
        Ok(link)
    }

    pub async fn get_link(&self, caller: &Caller, link_id: &str) -> Result<Link> {
        self.readable_link(caller, link_id).await
    }

    /// Links by id, without history: those that exist and `caller` may read.
    pub async fn links_by_id(&self, caller: &Caller, ids: &[&str]) -> Result<Vec<Link>> {
        let staff = caller.is_any(&[Role::Ops, Role::Service]);
        let own = caller
            .partner_id()
            .filter(|_| caller.role() == Role::Partner);
        if !staff && own.is_none() {
            return Err(LinkingError::PermissionDenied(
                "links are read by partners, ops and services",
            ));
        }
        // An id Tandem never made names no link.
        let ids: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| tandem_domain::is_server_id(id))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.database.pool().acquire().await?;
        let links = store::links_by_id(&mut connection, &ids).await?;
        Ok(links
            .into_iter()
            .filter(|link| staff || own.is_some_and(|partner| link.involves(partner)))
            .collect())
    }

    /// A page of links of `partner` (newest first), of some of its `members` when any are
    /// named, with the cursor of the next page.
    pub async fn list_links(
        &self,
        caller: &Caller,
        partner: Option<PartnerId>,
        members: &[MemberId],
        status: Option<LinkStatus>,
        page: &PageRequest,
    ) -> Result<(Vec<Link>, Option<PageCursor>)> {
        let partner = match caller.role() {
            Role::Partner => {
                let own = caller.partner_id().ok_or(LinkingError::PermissionDenied(
                    "a partner token names its partner",
                ))?;
                Some(acting_partner(
                    caller,
                    partner.unwrap_or(own),
                    "a partner lists only its own links",
                )?)
            }
            Role::Ops | Role::Service => partner,
            Role::Admin => {
                return Err(LinkingError::PermissionDenied(
                    "links are read by partners, ops and services",
                ));
            }
        };
        let mut connection = self.database.pool().acquire().await?;
        if partner.is_none() && !members.is_empty() {
            return Err(LinkingError::InvalidArgument {
                field: "partner_id",
                message: "is required to list members' links: a member id belongs to a partner"
                    .to_owned(),
            });
        }
        let links = store::links(
            &mut connection,
            partner,
            members,
            status,
            page.after.as_ref(),
            page.size + 1,
        )
        .await?;
        Ok(page.split(links, |link| PageCursor {
            created_at_micros: tandem_domain::to_unix_micros(link.created_at),
            id: link.id.clone(),
        }))
    }

    /// Either partner ends an active link.
    pub async fn unlink(&self, caller: &Caller, link_id: &str, reason: String) -> Result<Link> {
        let link = self.readable_link(caller, link_id).await?;
        let partner = caller
            .partner_id()
            .filter(|_| caller.role() == Role::Partner)
            .ok_or(LinkingError::PermissionDenied(
                "only a partner of the link unlinks it",
            ))?;
        let now = tandem_domain::now();
        let mut transaction = self.database.begin_write().await?;
        if !store::end_link(&mut transaction, &link.id, now).await? {
            return Err(LinkingError::LinkEnded(link.id));
        }
        let event = LinkEvent {
            kind: "UNLINKED".to_owned(),
            actor_partner: Some(partner),
            actor: caller.subject().to_owned(),
            reason: Some(reason),
            at: now,
        };
        store::insert_event(&mut transaction, &link.id, &event).await?;
        transaction.commit().await?;
        tracing::info!(link_id = link.id, %partner, "link ended");
        self.readable_link(caller, link_id).await
    }

    /// Erases a member of the caller's: active links end, and the member id becomes a
    /// pseudonym in every record. Returns (links ended, records changed).
    pub async fn forget_member(
        &self,
        caller: &Caller,
        partner: PartnerId,
        member: MemberId,
    ) -> Result<(usize, u64)> {
        let partner = acting_partner(caller, partner, "a partner forgets only its own members")?;
        let now = tandem_domain::now();
        // Random, so nothing leads back from the pseudonym to the member.
        let pseudonym = MemberId::parse(&format!("forgotten-{}", uuid::Uuid::new_v4().simple()))
            .expect("a valid member id");
        let mut transaction = self.database.begin_write().await?;
        let active = store::active_link_ids(&mut transaction, partner, &member).await?;
        for link_id in &active {
            store::end_link(&mut transaction, link_id, now).await?;
            let event = LinkEvent {
                kind: "FORGOTTEN".to_owned(),
                actor_partner: Some(partner),
                actor: caller.subject().to_owned(),
                reason: Some("member erased at their request".to_owned()),
                at: now,
            };
            store::insert_event(&mut transaction, link_id, &event).await?;
        }
        let changed = store::pseudonymize(&mut transaction, partner, &member, &pseudonym).await?;
        transaction.commit().await?;
        tracing::info!(%partner, ended_links = active.len(), "member forgotten");
        Ok((active.len(), changed))
    }

    pub async fn set_policy(
        &self,
        caller: &Caller,
        partner: PartnerId,
        policy: LinkPolicy,
    ) -> Result<LinkPolicy> {
        if !(caller.is_partner(partner) || caller.role() == Role::Admin) {
            return Err(LinkingError::PermissionDenied(
                "a partner sets only its own link policy",
            ));
        }
        store::set_policy(&self.database, partner, &policy).await?;
        Ok(policy)
    }

    pub async fn policy(&self, caller: &Caller, partner: PartnerId) -> Result<LinkPolicy> {
        if !(caller.is_partner(partner) || caller.is_any(&[Role::Admin, Role::Ops, Role::Service]))
        {
            return Err(LinkingError::PermissionDenied(
                "a partner reads only its own link policy",
            ));
        }
        let mut connection = self.database.pool().acquire().await?;
        Ok(store::policy(&mut connection, partner).await?)
    }
}

/// The two events of a completed link: started by the initiator's partner when the request was
/// made, completed by the caller now.
fn link_events(
    request: &store::RequestRow,
    link: &Link,
    caller: &Caller,
    now: Timestamp,
) -> (LinkEvent, LinkEvent) {
    let started = LinkEvent {
        kind: "STARTED".to_owned(),
        actor_partner: Some(link.initiator.partner),
        actor: request.started_by.clone(),
        reason: None,
        at: request.created_at,
    };
    let completed = LinkEvent {
        kind: "COMPLETED".to_owned(),
        actor_partner: Some(link.acceptor.partner),
        actor: caller.subject().to_owned(),
        reason: None,
        at: now,
    };
    (started, completed)
}
