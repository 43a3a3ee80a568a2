//! The partner registry: who is in the coalition, with which program, and on which terms they
//! agreed with each other.
//!
//! [`Registry`] is the service logic: it takes domain types and a [`Caller`], decides who may do
//! what, and returns domain types or a [`RegistryError`]. `grpc` is the edge that speaks proto.

mod error;
mod grpc;
mod store;
mod terms_document;

use tandem_auth::{
    Caller, ClientCredentials, CredentialVerifier, Role, hash_secret, verify_secret,
};
use tandem_domain::{
    Agreement, AgreementId, AgreementRuleError, Category, Currency, GatewayEndpoint, Partner,
    PartnerCode, PartnerId, PartnerStatus, Program, Reason, Terms, TermsVersion, Text, Timestamp,
};
use tandem_storage::Database;

pub use error::RegistryError;
pub use grpc::RegistryGrpc;
use store::{AgreementStatusFilter, Store, StoreError};
pub use tandem_storage::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageCursor, PageRequest};

/// The registry database's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many times a change to an agreement is re-applied to fresh state when a concurrent change
/// got there first, before the caller is told to retry (ABORTED).
const CONFLICT_RETRIES: usize = 3;

type Result<T> = std::result::Result<T, RegistryError>;

/// A partner to register.
#[derive(Debug, Clone)]
pub struct NewPartner {
    pub code: PartnerCode,
    pub display_name: Text<100>,
    pub category: Category,
    pub program: Program,
    pub settlement_currency: Currency,
    pub gateway_endpoint: Option<GatewayEndpoint>,
}

/// Changes to a partner's profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PartnerChanges {
    pub display_name: Option<Text<100>>,
    /// `Some(None)` clears the endpoint.
    pub gateway_endpoint: Option<Option<GatewayEndpoint>>,
}

/// An administrative status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Suspend,
    Reactivate,
    Offboard,
}

/// Filters for listing agreements.
#[derive(Debug, Clone, Copy)]
pub struct AgreementFilter {
    pub party: Option<PartnerId>,
    pub status: Option<tandem_domain::AgreementStatus>,
}

/// Which partners must be ACTIVE for a change to an agreement: a suspended partner cannot
/// propose or accept terms, but may still reject or terminate.
#[derive(Debug, Clone, Copy)]
enum ActivePartners {
    None,
    Caller,
    Both,
}

/// The registry service.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
}

fn now() -> Timestamp {
    tandem_domain::now()
}

fn require(caller: &Caller, roles: &[Role], action: &'static str) -> Result<()> {
    if caller.is_any(roles) {
        Ok(())
    } else {
        Err(RegistryError::PermissionDenied(action))
    }
}

/// Staff with read access, or the partner itself.
fn require_reader_of(caller: &Caller, partner: PartnerId, action: &'static str) -> Result<()> {
    if caller.is_any(&[Role::Admin, Role::Ops, Role::Service]) || caller.is_partner(partner) {
        Ok(())
    } else {
        Err(RegistryError::PermissionDenied(action))
    }
}

/// The partner a partner caller acts for; other roles act for no partner and are refused.
fn acting_partner(caller: &Caller, action: &'static str) -> Result<PartnerId> {
    caller
        .partner_id()
        .filter(|_| caller.role() == Role::Partner)
        .ok_or(RegistryError::PermissionDenied(action))
}

impl Registry {
    pub fn new(database: Database) -> Self {
        Self {
            store: Store::new(database),
        }
    }

    /// Every offboarded partner's id: their tokens are refused from the moment they leave, so
    /// a server starting up bars them before it serves (see `Authenticator::bar_partners`).
    pub async fn offboarded_partner_ids(&self) -> Result<Vec<PartnerId>> {
        Ok(self.store.offboarded_partner_ids().await?)
    }

    /// Registers a partner, ACTIVE, and returns it with its first credentials. Callers: admin.
    pub async fn create_partner(
        &self,
        caller: &Caller,
        new: NewPartner,
    ) -> Result<(Partner, ClientCredentials)> {
        require(caller, &[Role::Admin], "only an admin creates partners")?;
        let at = now();
        let partner = Partner {
            id: PartnerId::generate(),
            code: new.code,
            display_name: new.display_name,
            category: new.category,
            program: new.program,
            settlement_currency: new.settlement_currency,
            gateway_endpoint: new.gateway_endpoint,
            status: PartnerStatus::Active,
            status_reason: None,
            created_at: at,
            updated_at: at,
        };
        let credentials = ClientCredentials::generate();
        let hash = hash_off_thread(credentials.client_secret.clone()).await?;
        self.store
            .insert_partner(&partner, &credentials.client_id, &hash)
            .await?;
        tracing::info!(partner_id = %partner.id, code = %partner.code, by = caller.subject(), "partner created");
        Ok((partner, credentials))
    }

    async fn existing_partner(&self, id: PartnerId) -> Result<Partner> {
        self.store
            .partner(id)
            .await?
            .ok_or(RegistryError::PartnerNotFound(id))
    }

    /// Callers: admin, ops, service, the partner itself.
    pub async fn get_partner(&self, caller: &Caller, id: PartnerId) -> Result<Partner> {
        require_reader_of(caller, id, "a partner may read only its own profile")?;
        self.existing_partner(id).await
    }

    /// Callers: admin, ops, service.
    pub async fn list_partners(
        &self,
        caller: &Caller,
        status: Option<PartnerStatus>,
        category: Option<Category>,
        page: &PageRequest,
    ) -> Result<(Vec<Partner>, Option<PageCursor>)> {
        require(
            caller,
            &[Role::Admin, Role::Ops, Role::Service],
            "only staff list partners",
        )?;
        Ok(self.store.partners(status, category, page).await?)
    }

    /// Callers: admin, the partner itself.
    pub async fn update_partner(
        &self,
        caller: &Caller,
        id: PartnerId,
        changes: PartnerChanges,
    ) -> Result<Partner> {
        if !(caller.role() == Role::Admin || caller.is_partner(id)) {
            return Err(RegistryError::PermissionDenied(
                "only an admin or the partner itself changes a profile",
            ));
        }
        let mut partner = self.existing_partner(id).await?;
        if partner.status == PartnerStatus::Offboarded {
            return Err(RegistryError::PartnerNotActive(
                id,
                PartnerStatus::Offboarded,
            ));
        }
        if let Some(display_name) = changes.display_name {
            partner.display_name = display_name;
        }
        if let Some(gateway_endpoint) = changes.gateway_endpoint {
            partner.gateway_endpoint = gateway_endpoint;
        }
        partner.updated_at = now();
        self.store.update_partner_profile(&partner).await?;
        tracing::info!(partner_id = %id, by = caller.subject(), "partner updated");
        Ok(partner)
    }

    /// Suspends, reactivates or offboards a partner. Offboarding also revokes its credentials and
    /// terminates its live agreements now, in the same transaction. Callers: admin.
    pub async fn change_status(
        &self,
        caller: &Caller,
        id: PartnerId,
        change: StatusChange,
        reason: Reason,
    ) -> Result<(Partner, usize)> {
        require(
            caller,
            &[Role::Admin],
            "only an admin changes a partner's status",
        )?;
        let mut partner = self.existing_partner(id).await?;
        let from = partner.status;
        partner.status = match change {
            StatusChange::Suspend => from.suspend(),
            StatusChange::Reactivate => from.reactivate(),
            StatusChange::Offboard => from.offboard(),
        }
        .map_err(|message| RegistryError::StatusTransition(id, message))?;
        let at = now();
        partner.status_reason = Some(reason.to_string());
        partner.updated_at = at;

        let mut transaction = self.store.begin().await?;
        self.store
            .change_status(&mut transaction, &partner, from)
            .await?;
        let mut terminated = 0;
        if change == StatusChange::Offboard {
            self.store
                .revoke_credentials(&mut transaction, id, at)
                .await?;
            for mut agreement in self.store.live_agreements_of(id, at).await? {
                agreement.end_now(format!("partner offboarded: {reason}"), at);
                self.store
                    .update_agreement(&mut transaction, &agreement, at)
                    .await?;
                terminated += 1;
            }
        }
        transaction.commit().await.map_err(StoreError::from)?;
        tracing::info!(partner_id = %id, status = partner.status.as_str(), terminated_agreements = terminated, by = caller.subject(), "partner status changed");
        Ok((partner, terminated))
    }

    /// Revokes the partner's secret and returns new credentials. Callers: admin, the partner.
    pub async fn rotate_credentials(
        &self,
        caller: &Caller,
        id: PartnerId,
    ) -> Result<ClientCredentials> {
        if !(caller.role() == Role::Admin || caller.is_partner(id)) {
            return Err(RegistryError::PermissionDenied(
                "only an admin or the partner itself rotates credentials",
            ));
        }
        let partner = self.existing_partner(id).await?;
        if partner.status == PartnerStatus::Offboarded {
            return Err(RegistryError::PartnerNotActive(
                id,
                PartnerStatus::Offboarded,
            ));
        }
        let credentials = ClientCredentials::generate();
        let hash = hash_off_thread(credentials.client_secret.clone()).await?;
        self.store
            .replace_credentials(id, &credentials.client_id, &hash, now())
            .await?;
        tracing::info!(partner_id = %id, by = caller.subject(), "partner credentials rotated");
        Ok(credentials)
    }

    async fn active_partner(&self, id: PartnerId) -> Result<Partner> {
        let partner = self.existing_partner(id).await?;
        if partner.status != PartnerStatus::Active {
            return Err(RegistryError::PartnerNotActive(id, partner.status));
        }
        Ok(partner)
    }

    /// The calling partner proposes terms to `target`. Both must be ACTIVE and of different
    /// categories. Callers: the source partner.
    pub async fn propose_agreement(
        &self,
        caller: &Caller,
        source: PartnerId,
        target: PartnerId,
        terms: Terms,
        effective_at: Option<Timestamp>,
    ) -> Result<Agreement> {
        if !caller.is_partner(source) {
            return Err(RegistryError::PermissionDenied(
                "only the source partner proposes an agreement",
            ));
        }
        if source == target {
            return Err(RegistryError::SamePartner);
        }
        let source_partner = self.active_partner(source).await?;
        let target_partner = self.active_partner(target).await?;
        if source_partner.category == target_partner.category {
            return Err(RegistryError::SameCategory(source_partner.category));
        }
        let at = now();
        let agreement = Agreement::propose(source, target, terms, effective_at, at);
        self.store.insert_agreement(&agreement, at).await?;
        tracing::info!(agreement_id = %agreement.id, %source, %target, "agreement proposed");
        Ok(agreement)
    }

    /// Loads an agreement the caller may act on as a party, checks that the partners `needs` are
    /// ACTIVE, applies `change`, and saves it; when a concurrent change got there first, does it
    /// all again on the fresh state.
    async fn change_agreement(
        &self,
        caller: &Caller,
        id: AgreementId,
        action: &'static str,
        needs: ActivePartners,
        mut change: impl FnMut(
            &mut Agreement,
            PartnerId,
            Timestamp,
        ) -> std::result::Result<(), AgreementRuleError>,
    ) -> Result<Agreement> {
        let party = acting_partner(caller, action)?;
        for _ in 0..CONFLICT_RETRIES {
            let mut agreement = self
                .store
                .agreement(id)
                .await?
                .ok_or(RegistryError::AgreementNotFound(id))?;
            if !agreement.is_party(party) {
                return Err(RegistryError::PermissionDenied(action));
            }
            match needs {
                ActivePartners::None => {}
                ActivePartners::Caller => {
                    self.active_partner(party).await?;
                }
                ActivePartners::Both => {
                    self.active_partner(agreement.source).await?;
                    self.active_partner(agreement.target).await?;
                }
            }
            let at = now();
            change(&mut agreement, party, at)?;
            let mut transaction = self.store.begin().await?;
            match self
                .store
                .update_agreement(&mut transaction, &agreement, at)
                .await
            {
                Ok(()) => {
                    transaction.commit().await.map_err(StoreError::from)?;
                    agreement.revision += 1;
                    return Ok(agreement);
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// The counterparty of the proposer accepts a PROPOSED version; both partners must be ACTIVE.
    pub async fn accept_agreement(
        &self,
        caller: &Caller,
        id: AgreementId,
        version: u32,
    ) -> Result<Agreement> {
        let agreement = self
            .change_agreement(
                caller,
                id,
                "only a party to the agreement accepts its terms",
                ActivePartners::Both,
                |agreement, party, at| agreement.accept(party, version, at),
            )
            .await?;
        tracing::info!(agreement_id = %id, version, by = caller.subject(), "agreement terms accepted");
        Ok(agreement)
    }

    /// Either party declines (or, as the proposer, withdraws) a PROPOSED version.
    pub async fn reject_agreement(
        &self,
        caller: &Caller,
        id: AgreementId,
        version: u32,
        reason: Option<Reason>,
    ) -> Result<Agreement> {
        let reason = reason.map(|reason| reason.to_string());
        let agreement = self
            .change_agreement(
                caller,
                id,
                "only a party to the agreement rejects its terms",
                ActivePartners::None,
                |agreement, party, at| agreement.reject(party, version, reason.clone(), at),
            )
            .await?;
        tracing::info!(agreement_id = %id, version, by = caller.subject(), "agreement terms rejected");
        Ok(agreement)
    }

    /// Either party proposes new terms for an ACTIVE agreement; the proposer must be ACTIVE.
    pub async fn amend_agreement(
        &self,
        caller: &Caller,
        id: AgreementId,
        terms: Terms,
        effective_at: Option<Timestamp>,
    ) -> Result<Agreement> {
        let agreement = self
            .change_agreement(
                caller,
                id,
                "only a party to the agreement amends it",
                ActivePartners::Caller,
                |agreement, party, at| {
                    agreement
                        .amend(party, terms.clone(), effective_at, at)
                        .map(|_| ())
                },
            )
            .await?;
        tracing::info!(agreement_id = %id, by = caller.subject(), "agreement amendment proposed");
        Ok(agreement)
    }

    /// Either party ends the agreement at `effective_at` (now when unset or past).
    pub async fn terminate_agreement(
        &self,
        caller: &Caller,
        id: AgreementId,
        effective_at: Option<Timestamp>,
        reason: Reason,
    ) -> Result<Agreement> {
        let agreement = self
            .change_agreement(
                caller,
                id,
                "only a party to the agreement terminates it",
                ActivePartners::None,
                |agreement, party, at| {
                    agreement.terminate(party, effective_at, reason.to_string(), at)
                },
            )
            .await?;
        tracing::info!(agreement_id = %id, by = caller.subject(), "agreement termination recorded");
        Ok(agreement)
    }

    async fn readable_agreement(&self, caller: &Caller, id: AgreementId) -> Result<Agreement> {
        let agreement = self
            .store
            .agreement(id)
            .await?
            .ok_or(RegistryError::AgreementNotFound(id))?;
        let may_read = caller.is_any(&[Role::Admin, Role::Ops, Role::Service])
            || caller
                .partner_id()
                .is_some_and(|party| caller.role() == Role::Partner && agreement.is_party(party));
        if !may_read {
            return Err(RegistryError::PermissionDenied(
                "a partner reads only agreements it is a party to",
            ));
        }
        Ok(agreement)
    }

    /// Callers: admin, ops, service, either party.
    pub async fn get_agreement(&self, caller: &Caller, id: AgreementId) -> Result<Agreement> {
        self.readable_agreement(caller, id).await
    }

    /// A partner sees only its own agreements; staff see all. Callers: admin, ops, service, partners.
    pub async fn list_agreements(
        &self,
        caller: &Caller,
        filter: AgreementFilter,
        page: &PageRequest,
    ) -> Result<(Vec<Agreement>, Option<PageCursor>)> {
        let party = match caller.role() {
            Role::Partner => {
                let own = acting_partner(caller, "partner token without a partner")?;
                if filter.party.is_some_and(|party| party != own) {
                    return Err(RegistryError::PermissionDenied(
                        "a partner lists only its own agreements",
                    ));
                }
                Some(own)
            }
            Role::Admin | Role::Ops | Role::Service => filter.party,
        };
        let status = filter
            .status
            .map_or(AgreementStatusFilter::Any, AgreementStatusFilter::Is);
        Ok(self.store.agreements(party, status, now(), page).await?)
    }

    /// The terms version in force at `at` (now when unset). Callers: admin, ops, service, parties.
    pub async fn terms_in_force(
        &self,
        caller: &Caller,
        id: AgreementId,
        at: Option<Timestamp>,
    ) -> Result<TermsVersion> {
        let agreement = self.readable_agreement(caller, id).await?;
        let at = at.unwrap_or_else(now);
        agreement
            .terms_in_force(at)
            .cloned()
            .ok_or(RegistryError::NoTermsInForce(id, at))
    }
}

async fn hash_off_thread(secret: String) -> Result<tandem_auth::SecretHash> {
    // Argon2 is deliberately slow; on the executor it would stall every other request.
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|error| RegistryError::Internal(error.to_string()))
}

impl From<AgreementRuleError> for RegistryError {
    fn from(error: AgreementRuleError) -> Self {
        RegistryError::AgreementRule(error)
    }
}

impl CredentialVerifier for Registry {
    async fn partner_for_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> std::result::Result<Option<PartnerId>, sqlx::Error> {
        let found = match self.store.live_credentials(client_id).await {
            Ok(found) => found,
            Err(StoreError::Database(error)) => return Err(error),
            Err(other) => return Err(sqlx::Error::Protocol(other.to_string())),
        };
        let secret = client_secret.to_owned();
        let hash = found.as_ref().map(|(_, hash)| hash.clone());
        // The hash is verified even for an unknown client id, so timing reveals nothing.
        let matches = tokio::task::spawn_blocking(move || verify_secret(&secret, hash.as_ref()))
            .await
            .unwrap_or(false);
        Ok(found.filter(|_| matches).map(|(partner_id, _)| partner_id))
    }
}
