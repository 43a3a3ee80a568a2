//! The gRPC edge of `AccountLinkingService`. A partner caller never sees the other brand's
//! member id: it is blanked here, on the way out.

use std::sync::Arc;

use tandem_auth::{Authenticator, Caller, Role};
use tandem_domain::{Category, PartnerId};
use tandem_proto::{
    status,
    time::timestamp,
    v1::{self as pb, account_linking_service_server::AccountLinkingService},
};
use tandem_storage::PageRequest;
use tonic::{Code, Request, Response, Status};

use crate::{
    Link, LinkCode, LinkPolicy, LinkSide, LinkStatus, Linking, LinkingError, MemberId,
    PartnerDirectory,
};

pub struct LinkingGrpc<D> {
    linking: Linking<D>,
    authenticator: Arc<Authenticator>,
}

impl<D: PartnerDirectory> LinkingGrpc<D> {
    pub fn new(linking: Linking<D>, authenticator: Arc<Authenticator>) -> Self {
        Self {
            linking,
            authenticator,
        }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.authenticator.authenticate(request.metadata()).await?)
    }
}

fn to_status(error: LinkingError) -> Status {
    let message = error.to_string();
    let (code, reason) = match &error {
        LinkingError::InvalidArgument { field, message } => {
            return status::invalid_argument([(*field, message.as_str())]);
        }
        LinkingError::Internal(cause) => return status::internal(cause),
        LinkingError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
        LinkingError::PartnerNotFound(_) => (Code::NotFound, "PARTNER_NOT_FOUND"),
        LinkingError::PartnerNotActive(_) => (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE"),
        LinkingError::NoActiveAgreement => (Code::FailedPrecondition, "NO_ACTIVE_AGREEMENT"),
        LinkingError::CodeNotFound => (Code::NotFound, "LINK_CODE_NOT_FOUND"),
        LinkingError::CodeExpired => (Code::FailedPrecondition, "LINK_CODE_EXPIRED"),
        LinkingError::CodeUsed => (Code::FailedPrecondition, "LINK_CODE_USED"),
        LinkingError::RequestLocked => (Code::ResourceExhausted, "LINK_REQUEST_LOCKED"),
        // Not INVALID_ARGUMENT: a wrong secret is recorded (it counts toward the lockout), and
        // INVALID_ARGUMENT promises that nothing was written.
        LinkingError::WrongCode(_) => (Code::PermissionDenied, "LINK_CODE_WRONG"),
        LinkingError::AlreadyLinked => (Code::FailedPrecondition, "ALREADY_LINKED"),
        LinkingError::CategoryTaken(_) => (Code::FailedPrecondition, "CATEGORY_ALREADY_LINKED"),
        LinkingError::SamePartner => (Code::InvalidArgument, "SAME_PARTNER"),
        LinkingError::MemberNotEligible => (Code::FailedPrecondition, "MEMBER_NOT_ELIGIBLE"),
        LinkingError::LinkNotFound(_) => (Code::NotFound, "LINK_NOT_FOUND"),
        LinkingError::LinkEnded(_) => (Code::FailedPrecondition, "LINK_ENDED"),
        LinkingError::DirectoryUnavailable(_) => (Code::Unavailable, "REGISTRY_UNAVAILABLE"),
        LinkingError::GatewayUnavailable(_) => (Code::Unavailable, "GATEWAY_UNAVAILABLE"),
        LinkingError::DatabaseBusy => (Code::Unavailable, "DATABASE_BUSY"),
    };
    status::with_reason(code, reason, message)
}

/// Most ids one BatchGetLinks call names.
const MAX_BATCH_LINKS: usize = 1_000;
/// Most member ids one ListLinks call names.
const MAX_LISTED_MEMBERS: usize = 1_000;

fn invalid(field: &'static str, message: impl Into<String>) -> Status {
    to_status(LinkingError::InvalidArgument {
        field,
        message: message.into(),
    })
}

fn partner_id(field: &'static str, text: &str) -> Result<PartnerId, Status> {
    text.parse()
        .map_err(|error: tandem_domain::IdParseError| invalid(field, error.to_string()))
}

fn member_id(field: &'static str, text: &str) -> Result<MemberId, Status> {
    MemberId::parse(text).map_err(|error| invalid(field, error))
}

fn category_to_pb(category: Category) -> pb::PartnerCategory {
    pb::PartnerCategory::from_str_name(&format!("PARTNER_CATEGORY_{}", category.as_str()))
        .unwrap_or(pb::PartnerCategory::Unspecified)
}

/// The link as `caller` may see it.
fn link_to_pb(link: &Link, caller: &Caller, with_events: bool) -> pb::Link {
    let viewer = caller
        .partner_id()
        .filter(|_| caller.role() == Role::Partner);
    let side = |side: &LinkSide| pb::LinkSide {
        partner_id: side.partner.to_string(),
        member_id: if viewer.is_none_or(|viewer| viewer == side.partner) {
            side.member.to_string()
        } else {
            String::new()
        },
    };
    pb::Link {
        link_id: link.id.clone(),
        initiator: Some(side(&link.initiator)),
        acceptor: Some(side(&link.acceptor)),
        status: match link.status {
            LinkStatus::Active => pb::LinkStatus::Active,
            LinkStatus::Ended => pb::LinkStatus::Ended,
        }
        .into(),
        create_time: Some(timestamp(link.created_at)),
        end_time: link.ended_at.map(timestamp),
        events: if with_events {
            link.events
                .iter()
                .map(|event| pb::LinkEvent {
                    kind: event.kind.clone(),
                    actor_partner_id: event
                        .actor_partner
                        .map(|id| id.to_string())
                        .unwrap_or_default(),
                    actor: event.actor.clone(),
                    reason: event.reason.clone().unwrap_or_default(),
                    event_time: Some(timestamp(event.at)),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

fn policy_to_pb(partner: PartnerId, policy: &LinkPolicy) -> pb::LinkPolicy {
    pb::LinkPolicy {
        partner_id: partner.to_string(),
        allow_multiple_accounts_per_partner: policy.allow_multiple_accounts_per_partner,
        exclusive_categories: policy
            .exclusive_categories
            .iter()
            .map(|category| category_to_pb(*category).into())
            .collect(),
    }
}

#[tonic::async_trait]
impl<D: PartnerDirectory> AccountLinkingService for LinkingGrpc<D> {
    async fn start_link(
        &self,
        request: Request<pb::StartLinkRequest>,
    ) -> Result<Response<pb::StartLinkResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let partner = partner_id("partner_id", &request.partner_id)?;
        let member = member_id("member_id", &request.member_id)?;
        let target = partner_id("target_partner_id", &request.target_partner_id)?;
        let (request_id, code, expires_at) = self
            .linking
            .start_link(&caller, partner, member, target)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::StartLinkResponse {
            link_request_id: request_id,
            code: code.to_string(),
            expire_time: Some(timestamp(expires_at)),
        }))
    }

    async fn complete_link(
        &self,
        request: Request<pb::CompleteLinkRequest>,
    ) -> Result<Response<pb::CompleteLinkResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let partner = partner_id("partner_id", &request.partner_id)?;
        let member = member_id("member_id", &request.member_id)?;
        let code = LinkCode::parse(&request.code).map_err(|error| invalid("code", error))?;
        let link = self
            .linking
            .complete_link(&caller, partner, member, code)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CompleteLinkResponse {
            link: Some(link_to_pb(&link, &caller, true)),
        }))
    }

    async fn get_link(
        &self,
        request: Request<pb::GetLinkRequest>,
    ) -> Result<Response<pb::GetLinkResponse>, Status> {
        let caller = self.caller(&request).await?;
        let link = self
            .linking
            .get_link(&caller, &request.get_ref().link_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetLinkResponse {
            link: Some(link_to_pb(&link, &caller, true)),
        }))
    }

    async fn batch_get_links(
        &self,
        request: Request<pb::BatchGetLinksRequest>,
    ) -> Result<Response<pb::BatchGetLinksResponse>, Status> {
        let caller = self.caller(&request).await?;
        let ids = &request.get_ref().link_ids;
        if !(1..=MAX_BATCH_LINKS).contains(&ids.len()) {
            return Err(invalid(
                "link_ids",
                format!("must hold 1 to {MAX_BATCH_LINKS} link ids"),
            ));
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let links = self
            .linking
            .links_by_id(&caller, &ids)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::BatchGetLinksResponse {
            links: links
                .iter()
                .map(|link| link_to_pb(link, &caller, false))
                .collect(),
        }))
    }

    async fn list_links(
        &self,
        request: Request<pb::ListLinksRequest>,
    ) -> Result<Response<pb::ListLinksResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let partner = if request.partner_id.is_empty() {
            None
        } else {
            Some(partner_id("partner_id", &request.partner_id)?)
        };
        if !request.member_id.is_empty() && !request.member_ids.is_empty() {
            return Err(invalid(
                "member_ids",
                "set member_id or member_ids, not both",
            ));
        }
        if request.member_ids.len() > MAX_LISTED_MEMBERS {
            return Err(invalid(
                "member_ids",
                format!("at most {MAX_LISTED_MEMBERS} member ids"),
            ));
        }
        let mut members = Vec::with_capacity(request.member_ids.len().max(1));
        if !request.member_id.is_empty() {
            members.push(member_id("member_id", &request.member_id)?);
        }
        for member in &request.member_ids {
            members.push(member_id("member_ids", member)?);
        }
        let status = match pb::LinkStatus::try_from(request.status) {
            Ok(pb::LinkStatus::Unspecified) => None,
            Ok(pb::LinkStatus::Active) => Some(LinkStatus::Active),
            Ok(pb::LinkStatus::Ended) => Some(LinkStatus::Ended),
            Err(_) => return Err(invalid("status", "unknown link status")),
        };
        let page = PageRequest::parse(request.page_size, &request.page_token)
            .map_err(|(field, message)| invalid(field, message))?;
        let (links, next) = self
            .linking
            .list_links(&caller, partner, &members, status, &page)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListLinksResponse {
            links: links
                .iter()
                .map(|link| link_to_pb(link, &caller, false))
                .collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    async fn unlink(
        &self,
        request: Request<pb::UnlinkRequest>,
    ) -> Result<Response<pb::UnlinkResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let reason = request.reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(invalid("reason", "must be 1 to 500 characters"));
        }
        let link = self
            .linking
            .unlink(&caller, &request.link_id, reason.to_owned())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UnlinkResponse {
            link: Some(link_to_pb(&link, &caller, true)),
        }))
    }

    async fn forget_member(
        &self,
        request: Request<pb::ForgetMemberRequest>,
    ) -> Result<Response<pb::ForgetMemberResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let partner = partner_id("partner_id", &request.partner_id)?;
        let member = member_id("member_id", &request.member_id)?;
        let (ended, changed) = self
            .linking
            .forget_member(&caller, partner, member)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ForgetMemberResponse {
            ended_links: ended as i32,
            pseudonymized_records: changed as i32,
        }))
    }

    async fn set_link_policy(
        &self,
        request: Request<pb::SetLinkPolicyRequest>,
    ) -> Result<Response<pb::SetLinkPolicyResponse>, Status> {
        let caller = self.caller(&request).await?;
        let policy = request
            .into_inner()
            .policy
            .ok_or_else(|| invalid("policy", "is required"))?;
        let partner = partner_id("policy.partner_id", &policy.partner_id)?;
        let mut categories = Vec::new();
        for value in &policy.exclusive_categories {
            let name = pb::PartnerCategory::try_from(*value)
                .ok()
                .filter(|category| *category != pb::PartnerCategory::Unspecified)
                .map(|category| category.as_str_name());
            let category = name
                .and_then(|name| {
                    name.trim_start_matches("PARTNER_CATEGORY_")
                        .parse::<Category>()
                        .ok()
                })
                .ok_or_else(|| {
                    invalid("policy.exclusive_categories", "must be known categories")
                })?;
            if !categories.contains(&category) {
                categories.push(category);
            }
        }
        let stored = LinkPolicy {
            allow_multiple_accounts_per_partner: policy.allow_multiple_accounts_per_partner,
            exclusive_categories: categories,
        };
        let stored = self
            .linking
            .set_policy(&caller, partner, stored)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SetLinkPolicyResponse {
            policy: Some(policy_to_pb(partner, &stored)),
        }))
    }

    async fn get_link_policy(
        &self,
        request: Request<pb::GetLinkPolicyRequest>,
    ) -> Result<Response<pb::GetLinkPolicyResponse>, Status> {
        let caller = self.caller(&request).await?;
        let partner = partner_id("partner_id", &request.get_ref().partner_id)?;
        let policy = self
            .linking
            .policy(&caller, partner)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetLinkPolicyResponse {
            policy: Some(policy_to_pb(partner, &policy)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_pool_is_unavailable_so_clients_retry() {
        let status = to_status(LinkingError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status::reason(&status), "DATABASE_BUSY");
        assert_eq!(
            to_status(LinkingError::from(sqlx::Error::RowNotFound)).code(),
            Code::Internal
        );
    }
}
