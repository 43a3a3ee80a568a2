//! The gateway Tandem calls, and the control service tests use.

use std::sync::Arc;

use tandem_proto::{
    sim::v1::{self as sim, partner_sim_service_server::PartnerSimService},
    status,
    v1::{self as pb, partner_gateway_service_server::PartnerGatewayService},
};
use tonic::{Request, Response, Status};

use crate::{
    Faults, Move, Movement, Operation, Outcome, Refusal, TandemVerifier, Wallets, faults::Fault,
};

/// `PartnerGatewayService` over the simulated program's wallets.
pub struct GatewayGrpc {
    wallets: Wallets,
    faults: Faults,
    verifier: Arc<TandemVerifier>,
}

impl GatewayGrpc {
    pub fn new(wallets: Wallets, faults: Faults, verifier: Arc<TandemVerifier>) -> Self {
        Self {
            wallets,
            faults,
            verifier,
        }
    }

    /// The shared body of DebitPoints and CreditPoints: check the request, move the points unless
    /// a fault refuses, and let a fault fail the call after the points moved.
    async fn move_points(
        &self,
        fault: Option<Fault>,
        requested: Move,
    ) -> Result<(i32, i32, i64), Status> {
        valid_move(&requested)?;
        let outcome = if self.refuses(fault, &requested.key).await? {
            Outcome::Refused(Refusal::PartnerRule)
        } else {
            self.wallets
                .apply(&requested)
                .await
                .map_err(storage_status)?
        };
        Ok(outcome_to_pb(after(fault, outcome)?))
    }

    /// Whether a refusing fault refuses the call with `key`: a forgetful gateway refuses every
    /// call, an honest refusal only a key the program has not stored.
    async fn refuses(&self, fault: Option<Fault>, key: &str) -> Result<bool, Status> {
        match fault {
            Some(Fault::Forgetful) => Ok(true),
            Some(Fault::Refuse) => Ok(!self.wallets.knows(key).await.map_err(storage_status)?),
            _ => Ok(false),
        }
    }

    /// Authenticates the caller and applies an armed fault that acts before the call. Returns
    /// whether the call must fail after applying.
    async fn before<T>(&self, rpc: &str, request: &Request<T>) -> Result<Option<Fault>, Status> {
        self.verifier.verify(request.metadata()).await?;
        match self.faults.take(rpc) {
            Some(Fault::Fail) => Err(Status::unavailable("simulated failure: not applied")),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            // A partner's gateway built before an RPC existed answers it UNIMPLEMENTED (what
            // tonic answers for a method it does not know); this fault stands in for one, so the
            // exchange's fall-back from BatchMovePoints to single calls is tested.
            Some(Fault::Unimplemented) => Err(Status::unimplemented(format!(
                "simulated gateway without {rpc}"
            ))),
            other => Ok(other),
        }
    }
}

/// Most movements one BatchMovePoints call carries.
pub const MAX_BATCH_MOVEMENTS: usize = 1_000;

/// A movement of a batch as the wallets take it, with the single RPC whose faults act on it; or
/// `None` when it is malformed.
fn operation_of(movement: pb::PointMovement) -> Option<(&'static str, Operation)> {
    let moved = |rpc, requested: Move| {
        valid_move(&requested).ok()?;
        Some((rpc, Operation::Move(requested)))
    };
    match movement.operation? {
        pb::point_movement::Operation::Debit(debit) => moved(
            "DebitPoints",
            Move {
                key: debit.transaction_key,
                member: debit.member_id,
                amount_minor: debit.amount_minor,
                movement: Movement::Debit,
                tandem_reference: debit.tandem_reference,
                tandem_kind: debit.kind,
            },
        ),
        pb::point_movement::Operation::Credit(credit) => moved(
            "CreditPoints",
            Move {
                key: credit.transaction_key,
                member: credit.member_id,
                amount_minor: credit.amount_minor,
                movement: Movement::Credit,
                tandem_reference: credit.tandem_reference,
                tandem_kind: credit.kind,
            },
        ),
        pb::point_movement::Operation::Reverse(reverse) => {
            valid_operation(&reverse.transaction_key, "-", 1).ok()?;
            if reverse.original_transaction_key.is_empty()
                || reverse.original_transaction_key.len() > 200
            {
                return None;
            }
            Some((
                "ReversePoints",
                Operation::Reverse {
                    key: reverse.transaction_key,
                    original: reverse.original_transaction_key,
                },
            ))
        }
    }
}

fn movement_result(outcome: Outcome) -> pb::PointMovementResult {
    let (outcome, refusal_reason, balance_after_minor) = outcome_to_pb(outcome);
    pb::PointMovementResult {
        outcome,
        refusal_reason,
        balance_after_minor,
    }
}

fn refusal_to_pb(refusal: Refusal) -> pb::RefusalReason {
    match refusal {
        Refusal::UnknownMember => pb::RefusalReason::UnknownMember,
        Refusal::MemberBlocked => pb::RefusalReason::MemberBlocked,
        Refusal::InsufficientPoints => pb::RefusalReason::InsufficientPoints,
        Refusal::KeyConflict => pb::RefusalReason::KeyConflict,
        Refusal::AlreadyReversed => pb::RefusalReason::AlreadyReversed,
        Refusal::PartnerRule => pb::RefusalReason::PartnerRule,
        Refusal::InvalidRequest => pb::RefusalReason::InvalidRequest,
    }
}

/// (outcome, refusal reason, balance after)
fn outcome_to_pb(outcome: Outcome) -> (i32, i32, i64) {
    match outcome {
        Outcome::Applied {
            balance_after_minor,
        } => (pb::GatewayOutcome::Applied.into(), 0, balance_after_minor),
        Outcome::AlreadyApplied {
            balance_after_minor,
        } => (
            pb::GatewayOutcome::AlreadyApplied.into(),
            0,
            balance_after_minor,
        ),
        Outcome::Refused(refusal) => (
            pb::GatewayOutcome::Refused.into(),
            refusal_to_pb(refusal).into(),
            0,
        ),
    }
}

/// A move's own checks, and those of what Tandem says it is for (empty from a Tandem that did
/// not send it yet).
fn valid_move(requested: &Move) -> Result<(), Status> {
    valid_operation(&requested.key, &requested.member, requested.amount_minor)?;
    let mut violations = Vec::new();
    if requested.tandem_reference.len() > 200 {
        violations.push(("tandem_reference", "must be at most 200 characters"));
    }
    if requested.tandem_kind.len() > 32 {
        violations.push(("kind", "must be at most 32 characters"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(status::invalid_argument(violations))
    }
}

fn valid_operation(key: &str, member: &str, amount_minor: i64) -> Result<(), Status> {
    let mut violations = Vec::new();
    if key.is_empty() || key.len() > 200 {
        violations.push(("transaction_key", "must be 1 to 200 characters"));
    }
    if member.is_empty() || member.len() > 128 {
        violations.push(("member_id", "must be 1 to 128 characters"));
    }
    if amount_minor < 1 {
        violations.push(("amount_minor", "must be at least 1"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(status::invalid_argument(violations))
    }
}

/// What a fault does after the wallets answered.
fn after(fault: Option<Fault>, outcome: Outcome) -> Result<Outcome, Status> {
    match fault {
        Some(Fault::FailAfterApplying) => {
            Err(Status::unavailable("simulated failure after applying"))
        }
        _ => Ok(outcome),
    }
}

#[tonic::async_trait]
impl PartnerGatewayService for GatewayGrpc {
    async fn validate_member(
        &self,
        request: Request<pb::ValidateMemberRequest>,
    ) -> Result<Response<pb::ValidateMemberResponse>, Status> {
        let fault = self.before("ValidateMember", &request).await?;
        let member = self
            .wallets
            .member(&request.get_ref().member_id)
            .await
            .map_err(storage_status)?;
        let standing = match (fault, member) {
            (Some(Fault::Refuse | Fault::Forgetful), _) => pb::MemberStanding::Blocked,
            (_, None) => pb::MemberStanding::Unknown,
            (_, Some((_, false))) => pb::MemberStanding::Blocked,
            (_, Some((_, true))) => pb::MemberStanding::Good,
        };
        Ok(Response::new(pb::ValidateMemberResponse {
            standing: standing.into(),
            reason: String::new(),
        }))
    }

    async fn debit_points(
        &self,
        request: Request<pb::DebitPointsRequest>,
    ) -> Result<Response<pb::DebitPointsResponse>, Status> {
        let fault = self.before("DebitPoints", &request).await?;
        let request = request.into_inner();
        let requested = Move {
            key: request.transaction_key,
            member: request.member_id,
            amount_minor: request.amount_minor,
            movement: Movement::Debit,
            tandem_reference: request.tandem_reference,
            tandem_kind: request.kind,
        };
        let (outcome, refusal_reason, balance_after_minor) =
            self.move_points(fault, requested).await?;
        Ok(Response::new(pb::DebitPointsResponse {
            outcome,
            refusal_reason,
            balance_after_minor,
        }))
    }

    async fn credit_points(
        &self,
        request: Request<pb::CreditPointsRequest>,
    ) -> Result<Response<pb::CreditPointsResponse>, Status> {
        let fault = self.before("CreditPoints", &request).await?;
        let request = request.into_inner();
        let requested = Move {
            key: request.transaction_key,
            member: request.member_id,
            amount_minor: request.amount_minor,
            movement: Movement::Credit,
            tandem_reference: request.tandem_reference,
            tandem_kind: request.kind,
        };
        let (outcome, refusal_reason, balance_after_minor) =
            self.move_points(fault, requested).await?;
        Ok(Response::new(pb::CreditPointsResponse {
            outcome,
            refusal_reason,
            balance_after_minor,
        }))
    }

    async fn batch_move_points(
        &self,
        request: Request<pb::BatchMovePointsRequest>,
    ) -> Result<Response<pb::BatchMovePointsResponse>, Status> {
        let fault = self.before("BatchMovePoints", &request).await?;
        let movements = request.into_inner().movements;
        if !(1..=MAX_BATCH_MOVEMENTS).contains(&movements.len()) {
            return Err(status::invalid_argument([(
                "movements",
                "must hold 1 to 1000 movements",
            )]));
        }
        // Faults armed on the single RPCs act on each movement of their kind.
        let mut results = vec![pb::PointMovementResult::default(); movements.len()];
        let mut operations = Vec::with_capacity(movements.len());
        let mut positions = Vec::with_capacity(movements.len());
        let mut fail_after_applying = fault == Some(Fault::FailAfterApplying);
        let mut delay = None;
        for (position, movement) in movements.into_iter().enumerate() {
            let Some((rpc, operation)) = operation_of(movement) else {
                results[position] = movement_result(Outcome::Refused(Refusal::InvalidRequest));
                continue;
            };
            match self.faults.take(rpc) {
                refusing @ Some(Fault::Refuse | Fault::Forgetful)
                    if self.refuses(refusing, operation.key()).await? =>
                {
                    results[position] = movement_result(Outcome::Refused(Refusal::PartnerRule));
                    continue;
                }
                Some(Fault::Refuse | Fault::Forgetful) => {}
                Some(Fault::Fail | Fault::Unimplemented) => {
                    return Err(Status::unavailable("simulated failure: not applied"));
                }
                Some(Fault::FailAfterApplying) => fail_after_applying = true,
                Some(Fault::Delay(wait)) => delay = delay.max(Some(wait)),
                None => {}
            }
            operations.push(operation);
            positions.push(position);
        }
        if let Some(wait) = delay {
            tokio::time::sleep(wait).await;
        }
        let outcomes = self
            .wallets
            .apply_batch(&operations)
            .await
            .map_err(storage_status)?;
        for (position, outcome) in positions.into_iter().zip(outcomes) {
            results[position] = movement_result(outcome);
        }
        if fail_after_applying {
            return Err(Status::unavailable("simulated failure after applying"));
        }
        Ok(Response::new(pb::BatchMovePointsResponse { results }))
    }

    async fn reverse_points(
        &self,
        request: Request<pb::ReversePointsRequest>,
    ) -> Result<Response<pb::ReversePointsResponse>, Status> {
        let fault = self.before("ReversePoints", &request).await?;
        let request = request.into_inner();
        valid_operation(&request.transaction_key, "-", 1)?;
        if request.original_transaction_key.is_empty() {
            return Err(status::invalid_argument([(
                "original_transaction_key",
                "is required",
            )]));
        }
        let outcome = if self.refuses(fault, &request.transaction_key).await? {
            Outcome::Refused(Refusal::PartnerRule)
        } else {
            self.wallets
                .reverse(&request.transaction_key, &request.original_transaction_key)
                .await
                .map_err(storage_status)?
        };
        let (outcome, refusal_reason, _) = outcome_to_pb(after(fault, outcome)?);
        Ok(Response::new(pb::ReversePointsResponse {
            outcome,
            refusal_reason,
        }))
    }
}

/// `PartnerSimService`: seeding members and arming faults. It serves the simulator's own tests
/// and demos only; run the simulator on loopback.
pub struct SimControlGrpc {
    wallets: Wallets,
    faults: Faults,
}

impl SimControlGrpc {
    pub fn new(wallets: Wallets, faults: Faults) -> Self {
        Self { wallets, faults }
    }
}

#[tonic::async_trait]
impl PartnerSimService for SimControlGrpc {
    async fn put_member(
        &self,
        request: Request<sim::PutMemberRequest>,
    ) -> Result<Response<sim::PutMemberResponse>, Status> {
        let member = request
            .into_inner()
            .member
            .ok_or_else(|| status::invalid_argument([("member", "is required")]))?;
        if member.member_id.is_empty() || member.member_id.len() > 128 {
            return Err(status::invalid_argument([(
                "member.member_id",
                "must be 1 to 128 characters",
            )]));
        }
        self.wallets
            .put_member(
                &member.member_id,
                member.balance_minor,
                member.in_good_standing,
            )
            .await
            .map_err(storage_status)?;
        Ok(Response::new(sim::PutMemberResponse {
            member: Some(member),
        }))
    }

    async fn get_member(
        &self,
        request: Request<sim::GetMemberRequest>,
    ) -> Result<Response<sim::GetMemberResponse>, Status> {
        let member_id = request.into_inner().member_id;
        let (balance_minor, in_good_standing) = self
            .wallets
            .member(&member_id)
            .await
            .map_err(storage_status)?
            .ok_or_else(|| Status::not_found(format!("no member {member_id:?}")))?;
        Ok(Response::new(sim::GetMemberResponse {
            member: Some(sim::Member {
                member_id,
                balance_minor,
                in_good_standing,
            }),
        }))
    }

    async fn set_fault(
        &self,
        request: Request<sim::SetFaultRequest>,
    ) -> Result<Response<sim::SetFaultResponse>, Status> {
        let request = request.into_inner();
        if ![
            "ValidateMember",
            "DebitPoints",
            "CreditPoints",
            "ReversePoints",
            "BatchMovePoints",
        ]
        .contains(&request.rpc.as_str())
        {
            return Err(status::invalid_argument([(
                "rpc",
                "must be ValidateMember, DebitPoints, CreditPoints, ReversePoints or \
                 BatchMovePoints",
            )]));
        }
        let fault = match sim::Fault::try_from(request.fault) {
            Ok(sim::Fault::Unspecified) => None,
            Ok(sim::Fault::Refuse) => Some(Fault::Refuse),
            Ok(sim::Fault::Forgetful) => Some(Fault::Forgetful),
            Ok(sim::Fault::Fail) => Some(Fault::Fail),
            Ok(sim::Fault::FailAfterApplying) => Some(Fault::FailAfterApplying),
            Ok(sim::Fault::Unimplemented) => Some(Fault::Unimplemented),
            Ok(sim::Fault::Delay) if (1..=60_000).contains(&request.delay_ms) => Some(
                Fault::Delay(std::time::Duration::from_millis(request.delay_ms as u64)),
            ),
            Ok(sim::Fault::Delay) => {
                return Err(status::invalid_argument([(
                    "delay_ms",
                    "must be 1 to 60000 for FAULT_DELAY",
                )]));
            }
            Err(_) => return Err(status::invalid_argument([("fault", "unknown fault")])),
        };
        let times = u32::try_from(request.times)
            .map_err(|_| status::invalid_argument([("times", "must not be negative")]))?;
        match (fault, request.queue) {
            (Some(fault), true) => self.faults.queue(&request.rpc, fault, times),
            (None, true) => {
                return Err(status::invalid_argument([(
                    "fault",
                    "must be set to queue a fault",
                )]));
            }
            (fault, false) => self.faults.set(&request.rpc, fault, times),
        }
        Ok(Response::new(sim::SetFaultResponse {}))
    }
}

/// A wallet store failure: UNAVAILABLE when no connection came free in time (overload, which
/// passes), INTERNAL otherwise. Under the gateway contract either is an unknown outcome to Tandem,
/// which asks again with the same key.
fn storage_status(error: sqlx::Error) -> Status {
    if tandem_storage::is_pool_exhausted(&error) {
        return Status::unavailable("the program's wallet store is busy; retry shortly");
    }
    status::internal(&error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_wallet_store_is_unavailable_and_other_failures_internal() {
        assert_eq!(
            storage_status(sqlx::Error::PoolTimedOut).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            storage_status(sqlx::Error::RowNotFound).code(),
            tonic::Code::Internal
        );
    }
}
