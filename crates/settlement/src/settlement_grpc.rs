//! The gRPC edge of `SettlementService`: who may call what, proto in, settlement types out.

use std::sync::Arc;

use tandem_auth::{Authenticator, Caller, Role};
use tandem_domain::{FieldViolation, PartnerId, Violations};
use tandem_ledger::{AccountFilter, AccountId, Owner, Unit};
use tandem_proto::{
    time::{datetime, timestamp},
    v1::{self as pb, settlement_service_server::SettlementService},
};
use tandem_storage::{PageCursor, PageRequest};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    Adjustment, AdjustmentStatus, AuditEvent, AuditFilter, NewAdjustment, Position, Settlement,
    SettlementError,
    ledger_grpc::{account_to_pb, direction_to_pb, legs_from_pb, purpose_from_pb},
    reconciliation_pb, runs_pb,
};

/// `SettlementService` over gRPC.
pub struct SettlementGrpc {
    settlement: Settlement,
    authenticator: Arc<Authenticator>,
}

impl SettlementGrpc {
    pub fn new(settlement: Settlement, authenticator: Arc<Authenticator>) -> Self {
        Self {
            settlement,
            authenticator,
        }
    }

    /// The caller, when it has one of `roles`; PERMISSION_DENIED otherwise, before the request
    /// is looked at.
    async fn require<T>(
        &self,
        request: &Request<T>,
        roles: &[Role],
        action: &'static str,
    ) -> Result<Caller, Status> {
        let caller = self.authenticator.authenticate(request.metadata()).await?;
        if !caller.is_any(roles) {
            return Err(SettlementError::PermissionDenied(action).into());
        }
        Ok(caller)
    }
}

impl SettlementGrpc {
    /// Stages a report's records as they stream in, a batch at a time; how many there were.
    async fn stage(
        &self,
        id: &str,
        first: Vec<pb::PartnerRecord>,
        stream: &mut Streaming<pb::SubmitPartnerReportRequest>,
    ) -> Result<i64, Status> {
        let mut line = 0_i64;
        let mut records = first;
        loop {
            let mut batch = Vec::with_capacity(records.len());
            for record in records {
                line += 1;
                batch.push((line, reconciliation_pb::record(line, record)?));
                if batch.len() == RECORDS_PER_BATCH {
                    self.settlement.stage_records(id, &batch).await?;
                    batch.clear();
                }
            }
            self.settlement.stage_records(id, &batch).await?;
            match stream.message().await? {
                Some(message) if message.header.is_some() => {
                    return Err(SettlementError::invalid(
                        "header",
                        "only the first message carries the header",
                    )
                    .into());
                }
                Some(message) => records = message.records,
                None => return Ok(line),
            }
        }
    }

    /// A reconciliation the caller may read: ops any, a partner its own.
    async fn readable_reconciliation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<crate::Reconciliation, SettlementError> {
        if id.is_empty() {
            return Err(SettlementError::invalid("reconciliation_id", "is required"));
        }
        let reconciliation = self.settlement.reconciliation(id).await?;
        if caller.role() == Role::Partner
            && !reconciliation
                .partner_id
                .parse::<PartnerId>()
                .is_ok_and(|partner| caller.is_partner(partner))
        {
            // Not another partner's business whether it exists.
            return Err(SettlementError::ReconciliationNotFound(id.to_owned()));
        }
        Ok(reconciliation)
    }
}

/// Partner records written to the staging table in one statement.
const RECORDS_PER_BATCH: usize = 500;

const OPS: &[Role] = &[Role::Ops];
const READERS: &[Role] = &[Role::Ops, Role::Service];
const POSITION_READERS: &[Role] = &[Role::Ops, Role::Service, Role::Partner];

fn page_request(page_size: i32, page_token: &str) -> Result<PageRequest, SettlementError> {
    PageRequest::parse(page_size, page_token)
        .map_err(|(field, description)| SettlementError::invalid(field, description))
}

fn next_token(cursor: Option<PageCursor>) -> String {
    cursor.map(|cursor| cursor.encode()).unwrap_or_default()
}

fn account_filter(request: &pb::ListAccountsRequest) -> Result<AccountFilter, SettlementError> {
    let mut violations = Violations::new();
    let owner = (!request.owner.is_empty())
        .then(|| violations.check("owner", request.owner.parse::<Owner>()))
        .flatten();
    let purpose = match pb::AccountPurpose::try_from(request.purpose) {
        Ok(pb::AccountPurpose::Unspecified) => None,
        _ => violations.check("purpose", purpose_from_pb(request.purpose)),
    };
    let unit = (!request.unit.is_empty())
        .then(|| violations.check("unit", Unit::parse(&request.unit)))
        .flatten();
    if !violations.is_empty() {
        return Err(SettlementError::InvalidArgument(violations));
    }
    Ok(AccountFilter {
        owner,
        purpose,
        unit,
    })
}

/// The partner and currency a positions request names, and its time (not in the future).
fn positions_query(
    caller: &Caller,
    request: &pb::ListPositionsRequest,
) -> Result<(Option<PartnerId>, Option<Unit>, tandem_domain::Timestamp), SettlementError> {
    let mut violations = Violations::new();
    let partner = (!request.partner_id.is_empty())
        .then(|| violations.check("partner_id", request.partner_id.parse::<PartnerId>()))
        .flatten();
    let currency = (!request.currency.is_empty())
        .then(|| {
            violations.check(
                "currency",
                request.currency.parse::<tandem_domain::Currency>(),
            )
        })
        .flatten()
        .and_then(|currency| Unit::parse(currency.code()).ok());
    let now = tandem_domain::now();
    let at = match request.as_of_time.as_ref().map(datetime).transpose() {
        Ok(Some(at)) if at > now => {
            violations.push(FieldViolation::new(
                "as_of_time",
                "must not be in the future",
            ));
            now
        }
        Ok(at) => at.unwrap_or(now),
        Err(error) => {
            violations.push(FieldViolation::new("as_of_time", error));
            now
        }
    };
    if !violations.is_empty() {
        return Err(SettlementError::InvalidArgument(violations));
    }
    if caller.role() == Role::Partner {
        match partner {
            Some(partner) if caller.is_partner(partner) => {}
            _ => {
                return Err(SettlementError::PermissionDenied(
                    "a partner reads only its own positions: partner_id must be your own",
                ));
            }
        }
    }
    Ok((partner, currency, at))
}

/// The partner and period a liability report names: the end not in the future, the start
/// before it; a partner only itself.
fn liability_query(
    caller: &Caller,
    request: &pb::GetLiabilityReportRequest,
) -> Result<
    (
        Option<PartnerId>,
        Option<tandem_domain::Timestamp>,
        tandem_domain::Timestamp,
    ),
    SettlementError,
> {
    let mut violations = Violations::new();
    let partner = (!request.partner_id.is_empty())
        .then(|| violations.check("partner_id", request.partner_id.parse::<PartnerId>()))
        .flatten();
    let now = tandem_domain::now();
    let mut time = |field: &str, value: Option<&tandem_proto::time::ProtoTimestamp>| match value
        .map(datetime)
        .transpose()
    {
        Ok(Some(at)) if at > now => {
            violations.push(FieldViolation::new(field, "must not be in the future"));
            None
        }
        Ok(at) => at,
        Err(error) => {
            violations.push(FieldViolation::new(field, error));
            None
        }
    };
    let start = time("start_time", request.start_time.as_ref());
    let end = time("end_time", request.end_time.as_ref()).unwrap_or(now);
    if start.is_some_and(|start| start >= end) {
        violations.push(FieldViolation::new("start_time", "must be before end_time"));
    }
    if !violations.is_empty() {
        return Err(SettlementError::InvalidArgument(violations));
    }
    if caller.role() == Role::Partner && !partner.is_some_and(|partner| caller.is_partner(partner))
    {
        return Err(SettlementError::PermissionDenied(
            "a partner reads only its own liability: partner_id must be your own",
        ));
    }
    Ok((partner, start, end))
}

fn new_adjustment(request: pb::PostAdjustmentRequest) -> Result<NewAdjustment, SettlementError> {
    let mut violations = Violations::new();
    let key = violations.check(
        "idempotency_key",
        tandem_domain::IdempotencyKey::parse(&request.idempotency_key),
    );
    let reason = violations.check("reason", tandem_domain::Reason::parse(&request.reason));
    if !request.reference.is_empty() {
        violations.check(
            "reference",
            tandem_domain::ExternalId::parse(&request.reference),
        );
    }
    let legs = legs_from_pb(&mut violations, &request.legs);
    match (key, reason) {
        (Some(key), Some(reason)) if violations.is_empty() => Ok(NewAdjustment {
            idempotency_key: key.into_string(),
            legs,
            reason: reason.to_string(),
            reference: request.reference,
        }),
        _ => Err(SettlementError::InvalidArgument(violations)),
    }
}

fn status_to_pb(status: AdjustmentStatus) -> pb::AdjustmentStatus {
    match status {
        AdjustmentStatus::AwaitingApproval => pb::AdjustmentStatus::AwaitingApproval,
        AdjustmentStatus::Posting => pb::AdjustmentStatus::Posting,
        AdjustmentStatus::Posted => pb::AdjustmentStatus::Posted,
        AdjustmentStatus::Rejected => pb::AdjustmentStatus::Rejected,
        AdjustmentStatus::Failed => pb::AdjustmentStatus::Failed,
    }
}

fn status_filter(value: i32) -> Result<Option<AdjustmentStatus>, SettlementError> {
    Ok(match pb::AdjustmentStatus::try_from(value) {
        Ok(pb::AdjustmentStatus::Unspecified) => None,
        Ok(pb::AdjustmentStatus::AwaitingApproval) => Some(AdjustmentStatus::AwaitingApproval),
        Ok(pb::AdjustmentStatus::Posting) => Some(AdjustmentStatus::Posting),
        Ok(pb::AdjustmentStatus::Posted) => Some(AdjustmentStatus::Posted),
        Ok(pb::AdjustmentStatus::Rejected) => Some(AdjustmentStatus::Rejected),
        Ok(pb::AdjustmentStatus::Failed) => Some(AdjustmentStatus::Failed),
        Err(_) => {
            return Err(SettlementError::invalid(
                "status",
                format!("{value} is not an adjustment status"),
            ));
        }
    })
}

fn adjustment_to_pb(adjustment: Adjustment) -> pb::Adjustment {
    pb::Adjustment {
        adjustment_id: adjustment.adjustment_id,
        idempotency_key: adjustment.idempotency_key,
        legs: adjustment
            .legs
            .iter()
            .map(|leg| pb::Leg {
                account_id: leg.account.to_string(),
                direction: direction_to_pb(leg.direction).into(),
                amount_minor: leg.amount_minor,
            })
            .collect(),
        reason: adjustment.reason,
        reference: adjustment.reference,
        status: status_to_pb(adjustment.status).into(),
        requested_by: adjustment.requested_by,
        decided_by: adjustment.decided_by,
        rejection_reason: adjustment.rejection_reason,
        transaction_id: adjustment.transaction_id,
        amount_minor: adjustment.amount_minor,
        create_time: Some(timestamp(adjustment.created_at)),
        decide_time: adjustment.decided_at.map(timestamp),
    }
}

fn position_to_pb(position: Position) -> pb::Position {
    let net_minor = position.net_minor();
    pb::Position {
        partner_id: position.partner_id.to_string(),
        account_id: position.account_id.to_string(),
        currency: position.currency,
        currency_scale: position.currency_scale,
        posted_debits_minor: position.posted_debits_minor,
        posted_credits_minor: position.posted_credits_minor,
        net_minor,
    }
}

fn event_to_pb(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: event.event_id,
        event_time: Some(timestamp(event.at)),
        actor: event.actor,
        action: event.action,
        object_id: event.object_id,
        reason: event.reason,
        details: event.details.into_iter().collect(),
    }
}

/// The trail's filters: texts without control characters, at most 200 characters each.
fn audit_filter(request: &pb::ListAuditEventsRequest) -> Result<AuditFilter, SettlementError> {
    let mut violations = Violations::new();
    let mut text = |field: &str, value: &str| {
        if value.is_empty() {
            return None;
        }
        violations
            .check(field, tandem_domain::Text::<200>::parse(value))
            .map(|text| text.to_string())
    };
    let filter = AuditFilter {
        actor: text("actor", &request.actor),
        object_id: text("object_id", &request.object_id),
    };
    if violations.is_empty() {
        Ok(filter)
    } else {
        Err(SettlementError::InvalidArgument(violations))
    }
}

/// A run id as given: one Tandem never made is simply not found.
fn run_id(id: &str) -> Result<&str, SettlementError> {
    if id.is_empty() {
        return Err(SettlementError::invalid("run_id", "is required"));
    }
    Ok(id)
}

/// The party a statement is asked for: "exchange" or a partner id; a partner only itself.
fn statement_party(
    caller: &Caller,
    request: &pb::GetStatementRequest,
) -> Result<String, SettlementError> {
    let party = request
        .party
        .parse::<Owner>()
        .map_err(|error| SettlementError::invalid("party", error))?;
    if caller.role() == Role::Partner {
        match party {
            Owner::Partner(partner) if caller.is_partner(partner) => {}
            _ => {
                return Err(SettlementError::PermissionDenied(
                    "a partner reads only its own statements: party must be your own id",
                ));
            }
        }
    }
    Ok(party.to_string())
}

/// An adjustment id as given: one Tandem never made is simply not found.
fn adjustment_id(id: &str) -> Result<&str, SettlementError> {
    if id.is_empty() {
        return Err(SettlementError::invalid("adjustment_id", "is required"));
    }
    Ok(id)
}

#[tonic::async_trait]
impl SettlementService for SettlementGrpc {
    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        self.require(
            &request,
            READERS,
            "only ops and Tandem's services list accounts",
        )
        .await?;
        let request = request.into_inner();
        let filter = account_filter(&request)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let after = match &page.after {
            Some(cursor) => Some(
                cursor
                    .id
                    .parse::<AccountId>()
                    .map_err(|_| SettlementError::invalid("page_token", "is not a page token"))?,
            ),
            None => None,
        };
        let accounts = self
            .settlement
            .accounts(&filter, after, page.size + 1)
            .await?;
        let (accounts, next) = page.split(accounts, |account| PageCursor {
            created_at_micros: tandem_domain::to_unix_micros(account.created_at),
            id: account.id.to_string(),
        });
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(account_to_pb).collect(),
            next_page_token: next_token(next),
        }))
    }

    async fn list_positions(
        &self,
        request: Request<pb::ListPositionsRequest>,
    ) -> Result<Response<pb::ListPositionsResponse>, Status> {
        let caller = self
            .require(
                &request,
                POSITION_READERS,
                "positions are read by ops, Tandem's services and each partner for itself",
            )
            .await?;
        let (partner, currency, at) = positions_query(&caller, request.get_ref())?;
        let positions = self.settlement.positions(partner, currency, at).await?;
        Ok(Response::new(pb::ListPositionsResponse {
            positions: positions.into_iter().map(position_to_pb).collect(),
            as_of_time: Some(timestamp(at)),
        }))
    }

    async fn post_adjustment(
        &self,
        request: Request<pb::PostAdjustmentRequest>,
    ) -> Result<Response<pb::PostAdjustmentResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops post adjustments")
            .await?;
        let new = new_adjustment(request.into_inner())?;
        let (adjustment, replayed) = self
            .settlement
            .post_adjustment(caller.subject(), new)
            .await?;
        Ok(Response::new(pb::PostAdjustmentResponse {
            adjustment: Some(adjustment_to_pb(adjustment)),
            replayed,
        }))
    }

    async fn approve_adjustment(
        &self,
        request: Request<pb::ApproveAdjustmentRequest>,
    ) -> Result<Response<pb::ApproveAdjustmentResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops approve adjustments")
            .await?;
        let id = adjustment_id(&request.get_ref().adjustment_id)?;
        let adjustment = self
            .settlement
            .approve_adjustment(caller.subject(), id)
            .await?;
        Ok(Response::new(pb::ApproveAdjustmentResponse {
            adjustment: Some(adjustment_to_pb(adjustment)),
        }))
    }

    async fn reject_adjustment(
        &self,
        request: Request<pb::RejectAdjustmentRequest>,
    ) -> Result<Response<pb::RejectAdjustmentResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops reject adjustments")
            .await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.adjustment_id.is_empty() {
            violations.push(FieldViolation::new("adjustment_id", "is required"));
        }
        let reason = violations.check("reason", tandem_domain::Reason::parse(&request.reason));
        let Some(reason) = reason.filter(|_| violations.is_empty()) else {
            return Err(SettlementError::InvalidArgument(violations).into());
        };
        let adjustment = self
            .settlement
            .reject_adjustment(caller.subject(), &request.adjustment_id, reason.as_str())
            .await?;
        Ok(Response::new(pb::RejectAdjustmentResponse {
            adjustment: Some(adjustment_to_pb(adjustment)),
        }))
    }

    async fn get_adjustment(
        &self,
        request: Request<pb::GetAdjustmentRequest>,
    ) -> Result<Response<pb::GetAdjustmentResponse>, Status> {
        self.require(&request, OPS, "only ops read adjustments")
            .await?;
        let id = adjustment_id(&request.get_ref().adjustment_id)?;
        let adjustment = self.settlement.adjustment(id).await?;
        Ok(Response::new(pb::GetAdjustmentResponse {
            adjustment: Some(adjustment_to_pb(adjustment)),
        }))
    }

    async fn list_adjustments(
        &self,
        request: Request<pb::ListAdjustmentsRequest>,
    ) -> Result<Response<pb::ListAdjustmentsResponse>, Status> {
        self.require(&request, OPS, "only ops list adjustments")
            .await?;
        let request = request.into_inner();
        let status = status_filter(request.status)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let (adjustments, next) = self.settlement.adjustments(status, &page).await?;
        Ok(Response::new(pb::ListAdjustmentsResponse {
            adjustments: adjustments.into_iter().map(adjustment_to_pb).collect(),
            next_page_token: next_token(next),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.require(&request, OPS, "only ops read the audit trail")
            .await?;
        let request = request.into_inner();
        let filter = audit_filter(&request)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let (events, next) = self.settlement.audit_events(&filter, &page).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(event_to_pb).collect(),
            next_page_token: next_token(next),
        }))
    }

    async fn create_settlement_run(
        &self,
        request: Request<pb::CreateSettlementRunRequest>,
    ) -> Result<Response<pb::CreateSettlementRunResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops create settlement runs")
            .await?;
        let new = runs_pb::new_run(request.get_ref())?;
        let (run, replayed) = self.settlement.create_run(caller.subject(), new).await?;
        Ok(Response::new(pb::CreateSettlementRunResponse {
            run: Some(runs_pb::run_to_pb(run)),
            replayed,
        }))
    }

    async fn get_settlement_run(
        &self,
        request: Request<pb::GetSettlementRunRequest>,
    ) -> Result<Response<pb::GetSettlementRunResponse>, Status> {
        self.require(&request, OPS, "only ops read settlement runs")
            .await?;
        let id = run_id(&request.get_ref().run_id)?;
        let run = self.settlement.run(id).await?;
        Ok(Response::new(pb::GetSettlementRunResponse {
            run: Some(runs_pb::run_to_pb(run)),
        }))
    }

    async fn list_settlement_runs(
        &self,
        request: Request<pb::ListSettlementRunsRequest>,
    ) -> Result<Response<pb::ListSettlementRunsResponse>, Status> {
        self.require(&request, OPS, "only ops list settlement runs")
            .await?;
        let request = request.into_inner();
        let status = runs_pb::status_filter(request.status)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let (runs, next) = self.settlement.runs(status, &page).await?;
        Ok(Response::new(pb::ListSettlementRunsResponse {
            runs: runs.into_iter().map(runs_pb::run_to_pb).collect(),
            next_page_token: next_token(next),
        }))
    }

    async fn approve_settlement_run(
        &self,
        request: Request<pb::ApproveSettlementRunRequest>,
    ) -> Result<Response<pb::ApproveSettlementRunResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops approve settlement runs")
            .await?;
        let id = run_id(&request.get_ref().run_id)?;
        let run = self.settlement.approve_run(caller.subject(), id).await?;
        Ok(Response::new(pb::ApproveSettlementRunResponse {
            run: Some(runs_pb::run_to_pb(run)),
        }))
    }

    async fn settle_settlement_run(
        &self,
        request: Request<pb::SettleSettlementRunRequest>,
    ) -> Result<Response<pb::SettleSettlementRunResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops settle settlement runs")
            .await?;
        let id = run_id(&request.get_ref().run_id)?;
        let references = runs_pb::payment_references(&request.get_ref().payment_references)?;
        let run = self
            .settlement
            .settle_run(caller.subject(), id, references)
            .await?;
        Ok(Response::new(pb::SettleSettlementRunResponse {
            run: Some(runs_pb::run_to_pb(run)),
        }))
    }

    async fn cancel_settlement_run(
        &self,
        request: Request<pb::CancelSettlementRunRequest>,
    ) -> Result<Response<pb::CancelSettlementRunResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops cancel settlement runs")
            .await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.run_id.is_empty() {
            violations.push(FieldViolation::new("run_id", "is required"));
        }
        let reason = violations.check("reason", tandem_domain::Reason::parse(&request.reason));
        let Some(reason) = reason.filter(|_| violations.is_empty()) else {
            return Err(SettlementError::InvalidArgument(violations).into());
        };
        let run = self
            .settlement
            .cancel_run(caller.subject(), &request.run_id, reason.as_str())
            .await?;
        Ok(Response::new(pb::CancelSettlementRunResponse {
            run: Some(runs_pb::run_to_pb(run)),
        }))
    }

    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::GetStatementResponse>, Status> {
        let caller = self
            .require(
                &request,
                &[Role::Ops, Role::Partner],
                "statements are read by ops and by each partner for itself",
            )
            .await?;
        let request = request.into_inner();
        let party = statement_party(&caller, &request)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let id = run_id(&request.run_id)?;
        let run = self.settlement.run(id).await?;
        // A partner's statement exists once a second ops user approved the run.
        if caller.role() == Role::Partner
            && matches!(
                run.status,
                crate::RunStatus::Draft | crate::RunStatus::Cancelled
            )
        {
            return Err(SettlementError::RunNotFound(id.to_owned()).into());
        }
        let (lines, next) = self.settlement.statement_lines(&run, &party, &page).await?;
        let totals = self.settlement.statement_totals(&run, &party).await?;
        let position = run
            .summary
            .positions
            .get(&party)
            .copied()
            .unwrap_or_default();
        Ok(Response::new(pb::GetStatementResponse {
            position: Some(runs_pb::position_to_pb(
                &party,
                &position,
                &run.payment_references,
            )),
            totals: runs_pb::totals_to_pb(&totals),
            lines: lines.into_iter().map(runs_pb::line_to_pb).collect(),
            next_page_token: next_token(next),
            run_id: run.run_id,
            currency: run.currency,
            currency_scale: run.currency_scale,
            status: runs_pb::status_to_pb(run.status).into(),
        }))
    }

    async fn get_liability_report(
        &self,
        request: Request<pb::GetLiabilityReportRequest>,
    ) -> Result<Response<pb::GetLiabilityReportResponse>, Status> {
        let caller = self
            .require(
                &request,
                POSITION_READERS,
                "the liability report is read by ops, Tandem's services and each partner for itself",
            )
            .await?;
        let (partner, start, end) = liability_query(&caller, request.get_ref())?;
        let programs = self.settlement.liability(partner, start, end).await?;
        Ok(Response::new(pb::GetLiabilityReportResponse {
            programs: programs
                .into_iter()
                .map(|program| pb::ProgramLiability {
                    partner_id: program.partner_id,
                    program: program.program,
                    program_scale: program.program_scale,
                    points_issued: program.points_issued,
                    points_redeemed: program.points_redeemed,
                    points_outstanding: program.points_outstanding,
                    currency: program.currency,
                    currency_scale: program.currency_scale,
                    value_issued_minor: program.value_issued_minor,
                    value_redeemed_minor: program.value_redeemed_minor,
                })
                .collect(),
            start_time: start.map(timestamp),
            end_time: Some(timestamp(end)),
        }))
    }

    async fn submit_partner_report(
        &self,
        request: Request<Streaming<pb::SubmitPartnerReportRequest>>,
    ) -> Result<Response<pb::SubmitPartnerReportResponse>, Status> {
        let caller = self
            .require(
                &request,
                &[Role::Ops, Role::Partner],
                "partner reports are sent by ops and by each partner for itself",
            )
            .await?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.unwrap_or_default();
        let header = reconciliation_pb::header(&caller, first.header)?;
        let id = self.settlement.new_report_id();
        let staged = self.stage(&id, first.records, &mut stream).await;
        let count = match staged {
            Ok(count) => count,
            Err(error) => {
                self.settlement.discard_report(&id).await?;
                return Err(error);
            }
        };
        let reconciliation = self
            .settlement
            .reconcile(caller.subject(), &id, &header, count)
            .await?;
        Ok(Response::new(pb::SubmitPartnerReportResponse {
            reconciliation: Some(reconciliation_pb::reconciliation_to_pb(reconciliation)),
        }))
    }

    async fn get_reconciliation(
        &self,
        request: Request<pb::GetReconciliationRequest>,
    ) -> Result<Response<pb::GetReconciliationResponse>, Status> {
        let caller = self
            .require(
                &request,
                &[Role::Ops, Role::Partner],
                "reconciliations are read by ops and by each partner for itself",
            )
            .await?;
        let reconciliation = self
            .readable_reconciliation(&caller, &request.get_ref().reconciliation_id)
            .await?;
        Ok(Response::new(pb::GetReconciliationResponse {
            reconciliation: Some(reconciliation_pb::reconciliation_to_pb(reconciliation)),
        }))
    }

    async fn list_discrepancies(
        &self,
        request: Request<pb::ListDiscrepanciesRequest>,
    ) -> Result<Response<pb::ListDiscrepanciesResponse>, Status> {
        let caller = self
            .require(
                &request,
                &[Role::Ops, Role::Partner],
                "discrepancies are read by ops and by each partner for itself",
            )
            .await?;
        let request = request.into_inner();
        let class = reconciliation_pb::class_filter(request.class)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let reconciliation = self
            .readable_reconciliation(&caller, &request.reconciliation_id)
            .await?;
        let (discrepancies, next) = self
            .settlement
            .discrepancies(&reconciliation.reconciliation_id, class, &page)
            .await?;
        Ok(Response::new(pb::ListDiscrepanciesResponse {
            discrepancies: discrepancies
                .into_iter()
                .map(reconciliation_pb::discrepancy_to_pb)
                .collect::<Result<_, _>>()?,
            next_page_token: next_token(next),
        }))
    }

    async fn resolve_discrepancy(
        &self,
        request: Request<pb::ResolveDiscrepancyRequest>,
    ) -> Result<Response<pb::ResolveDiscrepancyResponse>, Status> {
        let caller = self
            .require(&request, OPS, "only ops resolve discrepancies")
            .await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.discrepancy_id.is_empty() {
            violations.push(FieldViolation::new("discrepancy_id", "is required"));
        }
        let reason = violations.check("reason", tandem_domain::Reason::parse(&request.reason));
        let Some(reason) = reason.filter(|_| violations.is_empty()) else {
            return Err(SettlementError::InvalidArgument(violations).into());
        };
        let adjustment =
            (!request.adjustment_id.is_empty()).then_some(request.adjustment_id.as_str());
        let discrepancy = self
            .settlement
            .resolve_discrepancy(
                caller.subject(),
                &request.discrepancy_id,
                adjustment,
                reason.as_str(),
            )
            .await?;
        Ok(Response::new(pb::ResolveDiscrepancyResponse {
            discrepancy: Some(reconciliation_pb::discrepancy_to_pb(discrepancy)?),
        }))
    }
}
