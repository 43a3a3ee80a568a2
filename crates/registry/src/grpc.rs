//! The gRPC edge of `PartnerRegistryService`: proto in, domain types to [`Registry`], proto out.
//! Malformed input becomes INVALID_ARGUMENT with a field violation per problem; nothing here
//! decides who may do what.

use std::sync::Arc;

use tandem_auth::{Authenticator, Caller};
use tandem_domain::{
    Agreement, AgreementId, AgreementStatus, BasisPoints, Category, EarnRules, GatewayEndpoint,
    Partner, PartnerCode, PartnerId, PartnerStatus, Points, Program, ProgramCode, PromotionWindow,
    Reason, Scale, Terms, TermsVersion, TermsVersionStatus, Text, TierMultiplier, Timestamp,
    Violations,
};
use tandem_proto::{
    time::{ProtoTimestamp, datetime, timestamp},
    v1::{self as pb, partner_registry_service_server::PartnerRegistryService},
};
use tonic::{Request, Response, Status};

use crate::{
    AgreementFilter, NewPartner, PageRequest, PartnerChanges, Registry, RegistryError, StatusChange,
};

/// `PartnerRegistryService` over gRPC.
pub struct RegistryGrpc {
    registry: Registry,
    authenticator: Arc<Authenticator>,
}

impl RegistryGrpc {
    pub fn new(registry: Registry, authenticator: Arc<Authenticator>) -> Self {
        Self {
            registry,
            authenticator,
        }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.authenticator.authenticate(request.metadata()).await?)
    }

    /// The shared body of the suspend, reactivate and offboard RPCs.
    async fn change_status<T>(
        &self,
        request: &Request<T>,
        partner_id: &str,
        reason: &str,
        change: StatusChange,
    ) -> Result<(Partner, usize), Status> {
        let caller = self.caller(request).await?;
        let id = parse_id("partner_id", partner_id)?;
        let reason = parse_reason("reason", reason)?;
        Ok(self
            .registry
            .change_status(&caller, id, change, reason)
            .await?)
    }
}

fn invalid(violations: Violations) -> Status {
    RegistryError::InvalidArgument(violations).into()
}

fn parse_id<T: std::str::FromStr<Err = tandem_domain::IdParseError>>(
    field: &str,
    text: &str,
) -> Result<T, Status> {
    text.parse().map_err(|error: tandem_domain::IdParseError| {
        invalid(Violations::single(field, error.to_string()))
    })
}

fn parse_reason(field: &str, text: &str) -> Result<Reason, Status> {
    Reason::parse(text).map_err(|error| invalid(Violations::single(field, error)))
}

fn optional_reason(field: &str, text: &str) -> Result<Option<Reason>, Status> {
    if text.trim().is_empty() {
        Ok(None)
    } else {
        parse_reason(field, text).map(Some)
    }
}

fn optional_time(field: &str, value: Option<&ProtoTimestamp>) -> Result<Option<Timestamp>, Status> {
    value
        .map(datetime)
        .transpose()
        .map_err(|error| invalid(Violations::single(field, error)))
}

fn version_number(field: &str, version: i32) -> Result<u32, Status> {
    u32::try_from(version)
        .ok()
        .filter(|version| *version >= 1)
        .ok_or_else(|| {
            invalid(Violations::single(
                field,
                "must be a version number, 1 or more",
            ))
        })
}

fn page(page_size: i32, page_token: &str) -> Result<PageRequest, Status> {
    PageRequest::parse(page_size, page_token)
        .map_err(|(field, error)| invalid(Violations::single(field, error)))
}

fn category_from_pb(value: i32) -> Result<Option<Category>, String> {
    Ok(
        match pb::PartnerCategory::try_from(value)
            .map_err(|_| format!("unknown category {value}"))?
        {
            pb::PartnerCategory::Unspecified => None,
            pb::PartnerCategory::Hotel => Some(Category::Hotel),
            pb::PartnerCategory::Rideshare => Some(Category::Rideshare),
            pb::PartnerCategory::Airline => Some(Category::Airline),
            pb::PartnerCategory::Retail => Some(Category::Retail),
            pb::PartnerCategory::Dining => Some(Category::Dining),
            pb::PartnerCategory::Grocery => Some(Category::Grocery),
            pb::PartnerCategory::CarRental => Some(Category::CarRental),
            pb::PartnerCategory::Fuel => Some(Category::Fuel),
        },
    )
}

fn category_to_pb(category: Category) -> pb::PartnerCategory {
    match category {
        Category::Hotel => pb::PartnerCategory::Hotel,
        Category::Rideshare => pb::PartnerCategory::Rideshare,
        Category::Airline => pb::PartnerCategory::Airline,
        Category::Retail => pb::PartnerCategory::Retail,
        Category::Dining => pb::PartnerCategory::Dining,
        Category::Grocery => pb::PartnerCategory::Grocery,
        Category::CarRental => pb::PartnerCategory::CarRental,
        Category::Fuel => pb::PartnerCategory::Fuel,
    }
}

fn partner_status_from_pb(value: i32) -> Result<Option<PartnerStatus>, String> {
    Ok(
        match pb::PartnerStatus::try_from(value)
            .map_err(|_| format!("unknown partner status {value}"))?
        {
            pb::PartnerStatus::Unspecified => None,
            pb::PartnerStatus::Active => Some(PartnerStatus::Active),
            pb::PartnerStatus::Suspended => Some(PartnerStatus::Suspended),
            pb::PartnerStatus::Offboarded => Some(PartnerStatus::Offboarded),
        },
    )
}

fn partner_status_to_pb(status: PartnerStatus) -> pb::PartnerStatus {
    match status {
        PartnerStatus::Active => pb::PartnerStatus::Active,
        PartnerStatus::Suspended => pb::PartnerStatus::Suspended,
        PartnerStatus::Offboarded => pb::PartnerStatus::Offboarded,
    }
}

fn agreement_status_from_pb(value: i32) -> Result<Option<AgreementStatus>, String> {
    Ok(
        match pb::AgreementStatus::try_from(value)
            .map_err(|_| format!("unknown agreement status {value}"))?
        {
            pb::AgreementStatus::Unspecified => None,
            pb::AgreementStatus::Proposed => Some(AgreementStatus::Proposed),
            pb::AgreementStatus::Active => Some(AgreementStatus::Active),
            pb::AgreementStatus::Rejected => Some(AgreementStatus::Rejected),
            pb::AgreementStatus::Terminated => Some(AgreementStatus::Terminated),
        },
    )
}

fn agreement_status_to_pb(status: AgreementStatus) -> pb::AgreementStatus {
    match status {
        AgreementStatus::Proposed => pb::AgreementStatus::Proposed,
        AgreementStatus::Active => pb::AgreementStatus::Active,
        AgreementStatus::Rejected => pb::AgreementStatus::Rejected,
        AgreementStatus::Terminated => pb::AgreementStatus::Terminated,
    }
}

fn new_partner_from_pb(request: pb::CreatePartnerRequest) -> Result<NewPartner, Violations> {
    let mut violations = Violations::new();
    let code = violations.check("code", PartnerCode::parse(&request.code));
    let display_name = violations.check("display_name", Text::parse(&request.display_name));
    let category = violations.check(
        "category",
        category_from_pb(request.category)
            .and_then(|category| category.ok_or_else(|| "is required".to_owned())),
    );
    let program = match request.program {
        Some(program) => violations.absorb("program", program_from_pb(program)),
        None => violations.check::<Program, _>("program", Err("is required")),
    };
    let settlement_currency =
        violations.check("settlement_currency", request.settlement_currency.parse());
    let gateway_endpoint = if request.gateway_endpoint.is_empty() {
        Some(None)
    } else {
        violations
            .check(
                "gateway_endpoint",
                GatewayEndpoint::parse(&request.gateway_endpoint),
            )
            .map(Some)
    };
    match (
        code,
        display_name,
        category,
        program,
        settlement_currency,
        gateway_endpoint,
    ) {
        (
            Some(code),
            Some(display_name),
            Some(category),
            Some(program),
            Some(settlement_currency),
            Some(gateway_endpoint),
        ) if violations.is_empty() => Ok(NewPartner {
            code,
            display_name,
            category,
            program,
            settlement_currency,
            gateway_endpoint,
        }),
        _ => Err(violations),
    }
}

fn program_from_pb(program: pb::Program) -> Result<Program, Violations> {
    let mut violations = Violations::new();
    let code = violations.check("code", ProgramCode::parse(&program.code));
    let name = violations.check("name", Text::parse(&program.name));
    let scale = violations.check("scale", Scale::new(program.scale));
    match (code, name, scale) {
        (Some(code), Some(name), Some(scale)) => Ok(Program { code, name, scale }),
        _ => Err(violations),
    }
}

/// An optional positive amount of points: `Some(None)` when unset, `None` (with a violation)
/// when set and not positive.
fn optional_points(
    violations: &mut Violations,
    field: &str,
    value: Option<i64>,
) -> Option<Option<Points>> {
    violations.check(field, value.map(Points::positive).transpose())
}

fn terms_from_pb(terms: pb::AgreementTerms) -> Result<Terms, Violations> {
    let mut violations = Violations::new();
    let rate = violations.check("conversion_rate", terms.conversion_rate.parse());
    let minimum = violations.check(
        "minimum_source_points",
        Points::positive(terms.minimum_source_points),
    );
    let increment = violations.check(
        "increment_source_points",
        Points::positive(terms.increment_source_points),
    );
    let daily_cap = optional_points(
        &mut violations,
        "member_daily_cap_points",
        terms.member_daily_cap_points,
    );
    let monthly_cap = optional_points(
        &mut violations,
        "agreement_monthly_cap_points",
        terms.agreement_monthly_cap_points,
    );
    let price = violations.check("settlement_price", terms.settlement_price.parse());
    let fee = violations.check(
        "exchange_fee_basis_points",
        BasisPoints::new(terms.exchange_fee_basis_points),
    );
    let earn_rules = match terms.earn_rules {
        Some(rules) => violations
            .absorb("earn_rules", earn_rules_from_pb(rules))
            .map(Some),
        None => Some(None),
    };
    let (
        Some(rate),
        Some(minimum),
        Some(increment),
        Some(daily_cap),
        Some(monthly_cap),
        Some(price),
        Some(fee),
        Some(earn_rules),
    ) = (
        rate,
        minimum,
        increment,
        daily_cap,
        monthly_cap,
        price,
        fee,
        earn_rules,
    )
    else {
        return Err(violations);
    };
    if !violations.is_empty() {
        return Err(violations);
    }
    Terms::new(
        rate,
        minimum,
        increment,
        daily_cap,
        monthly_cap,
        price,
        fee,
        earn_rules,
    )?
    .with_conversion_reversal_hours(terms.conversion_reversal_hours)
}

fn earn_rules_from_pb(rules: pb::EarnRules) -> Result<EarnRules, Violations> {
    let mut violations = Violations::new();
    let rate = violations.check("points_per_spend_unit", rules.points_per_spend_unit.parse());
    let currency = violations.check("spend_currency", rules.spend_currency.parse());
    let mut tiers = Vec::new();
    for (index, entry) in rules.tier_multipliers.iter().enumerate() {
        let tier = violations.check(
            &format!("tier_multipliers[{index}].tier"),
            Text::parse(&entry.tier),
        );
        let multiplier = violations.check(
            &format!("tier_multipliers[{index}].multiplier"),
            entry.multiplier.parse(),
        );
        if let (Some(tier), Some(multiplier)) = (tier, multiplier) {
            tiers.push(TierMultiplier { tier, multiplier });
        }
    }
    let mut promotions = Vec::new();
    for (index, window) in rules.promotions.iter().enumerate() {
        let field = |name: &str| format!("promotions[{index}].{name}");
        let name = violations.check(&field("name"), Text::parse(&window.name));
        let starts_at = violations.check(
            &field("start_time"),
            window
                .start_time
                .as_ref()
                .ok_or_else(|| "is required".to_owned())
                .and_then(datetime),
        );
        let ends_at = violations.check(
            &field("end_time"),
            window
                .end_time
                .as_ref()
                .ok_or_else(|| "is required".to_owned())
                .and_then(datetime),
        );
        let multiplier = violations.check(&field("multiplier"), window.multiplier.parse());
        if let (Some(name), Some(starts_at), Some(ends_at), Some(multiplier)) =
            (name, starts_at, ends_at, multiplier)
        {
            promotions.push(PromotionWindow {
                name,
                starts_at,
                ends_at,
                multiplier,
            });
        }
    }
    let mut excluded = Vec::new();
    for (index, category) in rules.excluded_spend_categories.iter().enumerate() {
        excluded.extend(violations.check(
            &format!("excluded_spend_categories[{index}]"),
            Text::parse(category),
        ));
    }
    match (rate, currency) {
        (Some(rate), Some(currency)) if violations.is_empty() => EarnRules::new(
            rate,
            currency,
            tiers,
            promotions,
            excluded,
            rules.annual_spend_cap_minor,
            rules.hold_days,
        ),
        _ => Err(violations),
    }
}

fn terms_to_pb(terms: &Terms) -> pb::AgreementTerms {
    pb::AgreementTerms {
        conversion_rate: terms.conversion_rate().to_string(),
        minimum_source_points: terms.minimum_source_points().minor_units(),
        increment_source_points: terms.increment_source_points().minor_units(),
        member_daily_cap_points: terms.member_daily_cap_points().map(Points::minor_units),
        agreement_monthly_cap_points: terms
            .agreement_monthly_cap_points()
            .map(Points::minor_units),
        settlement_price: terms.settlement_price().to_string(),
        exchange_fee_basis_points: terms.exchange_fee().value(),
        conversion_reversal_hours: terms.conversion_reversal_hours(),
        earn_rules: terms.earn_rules().map(|rules| pb::EarnRules {
            points_per_spend_unit: rules.points_per_spend_unit().to_string(),
            spend_currency: rules.spend_currency().code().to_owned(),
            tier_multipliers: rules
                .tier_multipliers()
                .iter()
                .map(|entry| pb::TierMultiplier {
                    tier: entry.tier.to_string(),
                    multiplier: entry.multiplier.to_string(),
                })
                .collect(),
            promotions: rules
                .promotions()
                .iter()
                .map(|window| pb::PromotionWindow {
                    name: window.name.to_string(),
                    start_time: Some(timestamp(window.starts_at)),
                    end_time: Some(timestamp(window.ends_at)),
                    multiplier: window.multiplier.to_string(),
                })
                .collect(),
            excluded_spend_categories: rules
                .excluded_spend_categories()
                .iter()
                .map(ToString::to_string)
                .collect(),
            annual_spend_cap_minor: rules.annual_spend_cap_minor(),
            hold_days: rules.hold_days(),
        }),
    }
}

fn version_to_pb(version: &TermsVersion) -> pb::TermsVersion {
    let status = match version.status {
        TermsVersionStatus::Proposed => pb::TermsVersionStatus::Proposed,
        TermsVersionStatus::Accepted => pb::TermsVersionStatus::Accepted,
        TermsVersionStatus::Rejected => pb::TermsVersionStatus::Rejected,
        TermsVersionStatus::Withdrawn => pb::TermsVersionStatus::Withdrawn,
    };
    pb::TermsVersion {
        version: version.version as i32,
        terms: Some(terms_to_pb(&version.terms)),
        status: status.into(),
        proposed_by_partner_id: version.proposed_by.to_string(),
        propose_time: Some(timestamp(version.proposed_at)),
        requested_effective_time: version.requested_effective_at.map(timestamp),
        effective_time: version.effective_at.map(timestamp),
        decide_time: version.decided_at.map(timestamp),
        decision_reason: version.decision_reason.clone().unwrap_or_default(),
    }
}

fn agreement_to_pb(agreement: &Agreement) -> pb::Agreement {
    pb::Agreement {
        agreement_id: agreement.id.to_string(),
        source_partner_id: agreement.source.to_string(),
        target_partner_id: agreement.target.to_string(),
        status: agreement_status_to_pb(agreement.status_at(tandem_domain::now())).into(),
        terms_versions: agreement.versions.iter().map(version_to_pb).collect(),
        terminate_time: agreement.terminate_at.map(timestamp),
        terminated_by_partner_id: agreement
            .terminated_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        termination_reason: agreement.termination_reason.clone().unwrap_or_default(),
        create_time: Some(timestamp(agreement.created_at)),
    }
}

fn partner_to_pb(partner: &Partner) -> pb::Partner {
    pb::Partner {
        partner_id: partner.id.to_string(),
        code: partner.code.to_string(),
        display_name: partner.display_name.to_string(),
        category: category_to_pb(partner.category).into(),
        program: Some(pb::Program {
            code: partner.program.code.to_string(),
            name: partner.program.name.to_string(),
            scale: partner.program.scale.places(),
        }),
        settlement_currency: partner.settlement_currency.code().to_owned(),
        gateway_endpoint: partner
            .gateway_endpoint
            .as_ref()
            .map(|endpoint| endpoint.as_str().to_owned())
            .unwrap_or_default(),
        status: partner_status_to_pb(partner.status).into(),
        status_reason: partner.status_reason.clone().unwrap_or_default(),
        create_time: Some(timestamp(partner.created_at)),
        update_time: Some(timestamp(partner.updated_at)),
    }
}

fn credentials_to_pb(credentials: tandem_auth::ClientCredentials) -> pb::ClientCredentials {
    pb::ClientCredentials {
        client_id: credentials.client_id,
        client_secret: credentials.client_secret,
    }
}

#[tonic::async_trait]
impl PartnerRegistryService for RegistryGrpc {
    async fn create_partner(
        &self,
        request: Request<pb::CreatePartnerRequest>,
    ) -> Result<Response<pb::CreatePartnerResponse>, Status> {
        let caller = self.caller(&request).await?;
        let new = new_partner_from_pb(request.into_inner()).map_err(invalid)?;
        let (partner, credentials) = self.registry.create_partner(&caller, new).await?;
        Ok(Response::new(pb::CreatePartnerResponse {
            partner: Some(partner_to_pb(&partner)),
            credentials: Some(credentials_to_pb(credentials)),
        }))
    }

    async fn get_partner(
        &self,
        request: Request<pb::GetPartnerRequest>,
    ) -> Result<Response<pb::GetPartnerResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = parse_id("partner_id", &request.get_ref().partner_id)?;
        let partner = self.registry.get_partner(&caller, id).await?;
        Ok(Response::new(pb::GetPartnerResponse {
            partner: Some(partner_to_pb(&partner)),
        }))
    }

    async fn list_partners(
        &self,
        request: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let status = violations.check("status", partner_status_from_pb(request.status));
        let category = violations.check("category", category_from_pb(request.category));
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let page = page(request.page_size, &request.page_token)?;
        let (partners, next) = self
            .registry
            .list_partners(&caller, status.flatten(), category.flatten(), &page)
            .await?;
        Ok(Response::new(pb::ListPartnersResponse {
            partners: partners.iter().map(partner_to_pb).collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    async fn update_partner(
        &self,
        request: Request<pb::UpdatePartnerRequest>,
    ) -> Result<Response<pb::UpdatePartnerResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let id = parse_id("partner_id", &request.partner_id)?;
        let mut violations = Violations::new();
        let display_name = request
            .display_name
            .as_deref()
            .and_then(|name| violations.check("display_name", Text::parse(name)));
        let gateway_endpoint = match request.gateway_endpoint.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(endpoint) => violations
                .check("gateway_endpoint", GatewayEndpoint::parse(endpoint))
                .map(Some),
        };
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let partner = self
            .registry
            .update_partner(
                &caller,
                id,
                PartnerChanges {
                    display_name,
                    gateway_endpoint,
                },
            )
            .await?;
        Ok(Response::new(pb::UpdatePartnerResponse {
            partner: Some(partner_to_pb(&partner)),
        }))
    }

    async fn suspend_partner(
        &self,
        request: Request<pb::SuspendPartnerRequest>,
    ) -> Result<Response<pb::SuspendPartnerResponse>, Status> {
        let (partner, _) = self
            .change_status(
                &request,
                &request.get_ref().partner_id,
                &request.get_ref().reason,
                StatusChange::Suspend,
            )
            .await?;
        Ok(Response::new(pb::SuspendPartnerResponse {
            partner: Some(partner_to_pb(&partner)),
        }))
    }

    async fn reactivate_partner(
        &self,
        request: Request<pb::ReactivatePartnerRequest>,
    ) -> Result<Response<pb::ReactivatePartnerResponse>, Status> {
        let (partner, _) = self
            .change_status(
                &request,
                &request.get_ref().partner_id,
                &request.get_ref().reason,
                StatusChange::Reactivate,
            )
            .await?;
        Ok(Response::new(pb::ReactivatePartnerResponse {
            partner: Some(partner_to_pb(&partner)),
        }))
    }

    async fn offboard_partner(
        &self,
        request: Request<pb::OffboardPartnerRequest>,
    ) -> Result<Response<pb::OffboardPartnerResponse>, Status> {
        let (partner, terminated) = self
            .change_status(
                &request,
                &request.get_ref().partner_id,
                &request.get_ref().reason,
                StatusChange::Offboard,
            )
            .await?;
        // Its tokens stop working now, not when they expire.
        self.authenticator.bar_partners([partner.id]);
        Ok(Response::new(pb::OffboardPartnerResponse {
            partner: Some(partner_to_pb(&partner)),
            terminated_agreements: terminated as i32,
        }))
    }

    async fn rotate_partner_credentials(
        &self,
        request: Request<pb::RotatePartnerCredentialsRequest>,
    ) -> Result<Response<pb::RotatePartnerCredentialsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = parse_id("partner_id", &request.get_ref().partner_id)?;
        let credentials = self.registry.rotate_credentials(&caller, id).await?;
        Ok(Response::new(pb::RotatePartnerCredentialsResponse {
            credentials: Some(credentials_to_pb(credentials)),
        }))
    }

    async fn propose_agreement(
        &self,
        request: Request<pb::ProposeAgreementRequest>,
    ) -> Result<Response<pb::ProposeAgreementResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let source: PartnerId = parse_id("source_partner_id", &request.source_partner_id)?;
        let target: PartnerId = parse_id("target_partner_id", &request.target_partner_id)?;
        let terms = terms_from_pb(
            request
                .terms
                .ok_or_else(|| invalid(Violations::single("terms", "is required")))?,
        )
        .map_err(|violations| invalid(prefixed("terms", violations)))?;
        let effective_at = optional_time("effective_time", request.effective_time.as_ref())?;
        let agreement = self
            .registry
            .propose_agreement(&caller, source, target, terms, effective_at)
            .await?;
        Ok(Response::new(pb::ProposeAgreementResponse {
            agreement: Some(agreement_to_pb(&agreement)),
        }))
    }

    async fn accept_agreement(
        &self,
        request: Request<pb::AcceptAgreementRequest>,
    ) -> Result<Response<pb::AcceptAgreementResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id: AgreementId = parse_id("agreement_id", &request.get_ref().agreement_id)?;
        let version = version_number("terms_version", request.get_ref().terms_version)?;
        let agreement = self.registry.accept_agreement(&caller, id, version).await?;
        Ok(Response::new(pb::AcceptAgreementResponse {
            agreement: Some(agreement_to_pb(&agreement)),
        }))
    }

    async fn reject_agreement(
        &self,
        request: Request<pb::RejectAgreementRequest>,
    ) -> Result<Response<pb::RejectAgreementResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id: AgreementId = parse_id("agreement_id", &request.get_ref().agreement_id)?;
        let version = version_number("terms_version", request.get_ref().terms_version)?;
        let reason = optional_reason("reason", &request.get_ref().reason)?;
        let agreement = self
            .registry
            .reject_agreement(&caller, id, version, reason)
            .await?;
        Ok(Response::new(pb::RejectAgreementResponse {
            agreement: Some(agreement_to_pb(&agreement)),
        }))
    }

    async fn amend_agreement(
        &self,
        request: Request<pb::AmendAgreementRequest>,
    ) -> Result<Response<pb::AmendAgreementResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let id: AgreementId = parse_id("agreement_id", &request.agreement_id)?;
        let terms = terms_from_pb(
            request
                .terms
                .ok_or_else(|| invalid(Violations::single("terms", "is required")))?,
        )
        .map_err(|violations| invalid(prefixed("terms", violations)))?;
        let effective_at = optional_time("effective_time", request.effective_time.as_ref())?;
        let agreement = self
            .registry
            .amend_agreement(&caller, id, terms, effective_at)
            .await?;
        Ok(Response::new(pb::AmendAgreementResponse {
            agreement: Some(agreement_to_pb(&agreement)),
        }))
    }

    async fn terminate_agreement(
        &self,
        request: Request<pb::TerminateAgreementRequest>,
    ) -> Result<Response<pb::TerminateAgreementResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let id: AgreementId = parse_id("agreement_id", &request.agreement_id)?;
        let effective_at = optional_time("effective_time", request.effective_time.as_ref())?;
        let reason = parse_reason("reason", &request.reason)?;
        let agreement = self
            .registry
            .terminate_agreement(&caller, id, effective_at, reason)
            .await?;
        Ok(Response::new(pb::TerminateAgreementResponse {
            agreement: Some(agreement_to_pb(&agreement)),
        }))
    }

    async fn get_agreement(
        &self,
        request: Request<pb::GetAgreementRequest>,
    ) -> Result<Response<pb::GetAgreementResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id: AgreementId = parse_id("agreement_id", &request.get_ref().agreement_id)?;
        let agreement = self.registry.get_agreement(&caller, id).await?;
        Ok(Response::new(pb::GetAgreementResponse {
            agreement: Some(agreement_to_pb(&agreement)),
        }))
    }

    async fn list_agreements(
        &self,
        request: Request<pb::ListAgreementsRequest>,
    ) -> Result<Response<pb::ListAgreementsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let party = if request.partner_id.is_empty() {
            None
        } else {
            Some(parse_id("partner_id", &request.partner_id)?)
        };
        let status = agreement_status_from_pb(request.status)
            .map_err(|error| invalid(Violations::single("status", error)))?;
        let page = page(request.page_size, &request.page_token)?;
        let (agreements, next) = self
            .registry
            .list_agreements(&caller, AgreementFilter { party, status }, &page)
            .await?;
        Ok(Response::new(pb::ListAgreementsResponse {
            agreements: agreements.iter().map(agreement_to_pb).collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    async fn get_terms_in_force(
        &self,
        request: Request<pb::GetTermsInForceRequest>,
    ) -> Result<Response<pb::GetTermsInForceResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id: AgreementId = parse_id("agreement_id", &request.get_ref().agreement_id)?;
        let at = optional_time("at_time", request.get_ref().at_time.as_ref())?;
        let version = self.registry.terms_in_force(&caller, id, at).await?;
        Ok(Response::new(pb::GetTermsInForceResponse {
            terms_version: Some(version_to_pb(&version)),
        }))
    }
}

fn prefixed(prefix: &str, violations: Violations) -> Violations {
    let mut all = Violations::new();
    all.absorb::<()>(prefix, Err(violations));
    all
}
