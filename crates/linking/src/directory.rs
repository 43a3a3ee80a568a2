//! What linking needs to know about partners, and where it asks: the partner registry, over its
//! gRPC client (in one process too, as DESIGN.md has it), with a service token.

use std::{future::Future, sync::Arc, time::Duration};

use tandem_auth::{Authenticator, ServiceToken};
use tandem_domain::{Category, PartnerId, PartnerStatus};
use tandem_proto::v1::{
    self as pb, partner_gateway_service_client::PartnerGatewayServiceClient,
    partner_registry_service_client::PartnerRegistryServiceClient,
};
use tonic::{Code, Request, transport::Channel};

use crate::{LinkingError, MemberId};

/// A partner as linking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerFacts {
    pub status: PartnerStatus,
    pub category: Category,
    /// Where the partner's PartnerGatewayService listens, if it runs one.
    pub gateway_endpoint: Option<String>,
}

pub trait PartnerDirectory: Send + Sync + 'static {
    /// The partner, or `None` when there is no such partner.
    fn partner(
        &self,
        id: PartnerId,
    ) -> impl Future<Output = Result<Option<PartnerFacts>, LinkingError>> + Send;
    /// Whether an ACTIVE agreement joins the two partners, in either direction.
    fn active_agreement_between(
        &self,
        a: PartnerId,
        b: PartnerId,
    ) -> impl Future<Output = Result<bool, LinkingError>> + Send;
    /// Whether the partner's gateway at `endpoint` says the member exists and is in good standing.
    fn member_in_good_standing(
        &self,
        endpoint: &str,
        member: &MemberId,
    ) -> impl Future<Output = Result<bool, LinkingError>> + Send;
}

/// How long Tandem waits for a partner's gateway before the link fails as UNAVAILABLE.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(5);

/// The registry over gRPC.
#[derive(Clone, Debug)]
pub struct RegistryDirectory {
    client: PartnerRegistryServiceClient<Channel>,
    token: ServiceToken,
}

impl RegistryDirectory {
    pub fn new(channel: Channel, authenticator: Arc<Authenticator>) -> Self {
        Self {
            client: PartnerRegistryServiceClient::new(channel),
            token: ServiceToken::new(authenticator, "linking"),
        }
    }

    async fn authed<T>(&self, message: T) -> Result<Request<T>, LinkingError> {
        Ok(self.token.authorize(message).await?)
    }
}

fn unavailable(status: tonic::Status) -> LinkingError {
    LinkingError::DirectoryUnavailable(status.message().to_owned())
}

impl PartnerDirectory for RegistryDirectory {
    async fn partner(&self, id: PartnerId) -> Result<Option<PartnerFacts>, LinkingError> {
        let request = self
            .authed(pb::GetPartnerRequest {
                partner_id: id.to_string(),
            })
            .await?;
        let partner = match self.client.clone().get_partner(request).await {
            Ok(response) => response.into_inner().partner,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(unavailable(status)),
        };
        let Some(partner) = partner else {
            return Ok(None);
        };
        let status = match pb::PartnerStatus::try_from(partner.status) {
            Ok(pb::PartnerStatus::Active) => PartnerStatus::Active,
            Ok(pb::PartnerStatus::Suspended) => PartnerStatus::Suspended,
            _ => PartnerStatus::Offboarded,
        };
        let category_name = pb::PartnerCategory::try_from(partner.category)
            .map(|category| category.as_str_name())
            .unwrap_or_default();
        let category = category_name
            .trim_start_matches("PARTNER_CATEGORY_")
            .parse()
            .map_err(LinkingError::Internal)?;
        let gateway_endpoint =
            Some(partner.gateway_endpoint).filter(|endpoint| !endpoint.is_empty());
        Ok(Some(PartnerFacts {
            status,
            category,
            gateway_endpoint,
        }))
    }

    async fn member_in_good_standing(
        &self,
        endpoint: &str,
        member: &MemberId,
    ) -> Result<bool, LinkingError> {
        let gateway_unavailable = |error: String| LinkingError::GatewayUnavailable(error);
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|error| gateway_unavailable(error.to_string()))?
            .connect_timeout(GATEWAY_TIMEOUT)
            .timeout(GATEWAY_TIMEOUT)
            .connect()
            .await
            .map_err(|error| gateway_unavailable(error.to_string()))?;
        let request = self
            .authed(pb::ValidateMemberRequest {
                member_id: member.to_string(),
            })
            .await?;
        let response = PartnerGatewayServiceClient::new(channel)
            .validate_member(request)
            .await
            .map_err(|status| gateway_unavailable(status.message().to_owned()))?;
        Ok(response.into_inner().standing == pb::MemberStanding::Good as i32)
    }

    async fn active_agreement_between(
        &self,
        a: PartnerId,
        b: PartnerId,
    ) -> Result<bool, LinkingError> {
        let (a, b) = (a.to_string(), b.to_string());
        let mut page_token = String::new();
        loop {
            let list = pb::ListAgreementsRequest {
                partner_id: a.clone(),
                status: pb::AgreementStatus::Active.into(),
                page_size: 500,
                page_token,
            };
            let page = self
                .client
                .clone()
                .list_agreements(self.authed(list).await?)
                .await
                .map_err(unavailable)?
                .into_inner();
            if page.agreements.iter().any(|agreement| {
                agreement.source_partner_id == b || agreement.target_partner_id == b
            }) {
                return Ok(true);
            }
            if page.next_page_token.is_empty() {
                return Ok(false);
            }
            page_token = page.next_page_token;
        }
    }
}
