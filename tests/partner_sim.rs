//! The reference partner as a process beside the real server: wallets that apply each key once
//! with a definite outcome, alone or in batches, reversals that are never overtaken, Tandem's
//! token checked against Tandem's published keys, and the faults the exchange's tests will need.

mod helpers;

use helpers::{HOUR, TestServer, authed};
use tandem_auth::{Caller, Role};
use tandem_proto::{
    sim::v1::{self as sim, partner_sim_service_client::PartnerSimServiceClient},
    v1::{self as pb, partner_gateway_service_client::PartnerGatewayServiceClient},
};
use tandem_storage::testing::TestDatabase;
use tonic::{Code, transport::Channel};

struct Simulator {
    _process: helpers::Simulator,
    gateway: PartnerGatewayServiceClient<Channel>,
    control: PartnerSimServiceClient<Channel>,
    token: String,
}

async fn simulator(server: &TestServer) -> Simulator {
    let process = helpers::Simulator::start(server).await;
    let token = server.staff_token(Role::Service).await;
    Simulator {
        gateway: PartnerGatewayServiceClient::new(process.channel.clone()),
        control: PartnerSimServiceClient::new(process.channel.clone()),
        _process: process,
        token,
    }
}

impl Simulator {
    async fn put(&mut self, member: &str, balance_minor: i64, in_good_standing: bool) {
        let member = sim::Member {
            member_id: member.to_owned(),
            balance_minor,
            in_good_standing,
        };
        self.control
            .put_member(sim::PutMemberRequest {
                member: Some(member),
            })
            .await
            .unwrap();
    }

    async fn balance(&mut self, member: &str) -> i64 {
        self.control
            .get_member(sim::GetMemberRequest {
                member_id: member.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap()
            .balance_minor
    }

    async fn debit(
        &mut self,
        key: &str,
        member: &str,
        amount_minor: i64,
    ) -> Result<(pb::GatewayOutcome, pb::RefusalReason, i64), tonic::Status> {
        let request = pb::DebitPointsRequest {
            transaction_key: key.to_owned(),
            member_id: member.to_owned(),
            amount_minor,
            description: "conversion".to_owned(),
            ..Default::default()
        };
        let response = self
            .gateway
            .debit_points(authed(&self.token, request))
            .await?
            .into_inner();
        Ok((
            response.outcome(),
            response.refusal_reason(),
            response.balance_after_minor,
        ))
    }

    async fn credit(
        &mut self,
        key: &str,
        member: &str,
        amount_minor: i64,
    ) -> (pb::GatewayOutcome, pb::RefusalReason, i64) {
        let request = pb::CreditPointsRequest {
            transaction_key: key.to_owned(),
            member_id: member.to_owned(),
            amount_minor,
            description: "earn".to_owned(),
            ..Default::default()
        };
        let response = self
            .gateway
            .credit_points(authed(&self.token, request))
            .await
            .unwrap()
            .into_inner();
        (
            response.outcome(),
            response.refusal_reason(),
            response.balance_after_minor,
        )
    }

    async fn reverse(
        &mut self,
        key: &str,
        original: &str,
    ) -> (pb::GatewayOutcome, pb::RefusalReason) {
        let request = pb::ReversePointsRequest {
            transaction_key: key.to_owned(),
            original_transaction_key: original.to_owned(),
        };
        let response = self
            .gateway
            .reverse_points(authed(&self.token, request))
            .await
            .unwrap()
            .into_inner();
        (response.outcome(), response.refusal_reason())
    }

    async fn batch(
        &mut self,
        movements: Vec<pb::PointMovement>,
    ) -> Result<Vec<(pb::GatewayOutcome, pb::RefusalReason, i64)>, tonic::Status> {
        let request = pb::BatchMovePointsRequest { movements };
        let response = self
            .gateway
            .batch_move_points(authed(&self.token, request))
            .await?
            .into_inner();
        Ok(response
            .results
            .iter()
            .map(|result| {
                (
                    result.outcome(),
                    result.refusal_reason(),
                    result.balance_after_minor,
                )
            })
            .collect())
    }

    async fn fault(&mut self, rpc: &str, fault: sim::Fault, times: i32) {
        let request = sim::SetFaultRequest {
            rpc: rpc.to_owned(),
            fault: fault.into(),
            times,
            delay_ms: 50,
            queue: false,
        };
        self.control.set_fault(request).await.unwrap();
    }
}

use pb::{GatewayOutcome as Outcome, RefusalReason as Refusal};

fn debit(key: &str, member: &str, amount_minor: i64) -> pb::PointMovement {
    pb::PointMovement {
        operation: Some(pb::point_movement::Operation::Debit(
            pb::DebitPointsRequest {
                transaction_key: key.to_owned(),
                member_id: member.to_owned(),
                amount_minor,
                description: "conversion".to_owned(),
                ..Default::default()
            },
        )),
    }
}

fn credit(key: &str, member: &str, amount_minor: i64) -> pb::PointMovement {
    pb::PointMovement {
        operation: Some(pb::point_movement::Operation::Credit(
            pb::CreditPointsRequest {
                transaction_key: key.to_owned(),
                member_id: member.to_owned(),
                amount_minor,
                description: "earn".to_owned(),
                ..Default::default()
            },
        )),
    }
}

fn reverse(key: &str, original: &str) -> pb::PointMovement {
    pb::PointMovement {
        operation: Some(pb::point_movement::Operation::Reverse(
            pb::ReversePointsRequest {
                transaction_key: key.to_owned(),
                original_transaction_key: original.to_owned(),
            },
        )),
    }
}

async fn each_key_applies_once_with_a_definite_outcome(server: TestServer) {
    let mut sim = simulator(&server).await;
    sim.put("M-1", 1_000, true).await;
    sim.put("M-BLOCKED", 1_000, false).await;
    assert_eq!(
        sim.debit("k1", "M-1", 300).await.unwrap(),
        (Outcome::Applied, Refusal::Unspecified, 700)
    );
    assert_eq!(
        sim.debit("k1", "M-1", 300).await.unwrap(),
        (Outcome::AlreadyApplied, Refusal::Unspecified, 700)
    );
    assert_eq!(
        sim.debit("k1", "M-1", 301).await.unwrap().1,
        Refusal::KeyConflict
    );
    assert_eq!(
        sim.debit("k2", "M-1", 701).await.unwrap().1,
        Refusal::InsufficientPoints
    );
    assert_eq!(
        sim.debit("k3", "NOBODY", 1).await.unwrap().1,
        Refusal::UnknownMember
    );
    assert_eq!(
        sim.debit("k4", "M-BLOCKED", 1).await.unwrap().1,
        Refusal::MemberBlocked
    );
    assert_eq!(
        sim.credit("k5", "M-1", 50).await,
        (Outcome::Applied, Refusal::Unspecified, 750)
    );
    assert_eq!(sim.balance("M-1").await, 750);

    assert_eq!(
        sim.reverse("r1", "k1").await,
        (Outcome::Applied, Refusal::Unspecified)
    );
    assert_eq!(sim.balance("M-1").await, 1_050, "the debit is undone");
    assert_eq!(sim.reverse("r1", "k1").await.0, Outcome::AlreadyApplied);
    assert_eq!(
        sim.reverse("r2", "k1").await,
        (Outcome::Refused, Refusal::AlreadyReversed)
    );
    // A reversal that overtakes its original voids the key: the original, arriving late, is refused.
    assert_eq!(sim.reverse("r3", "k-late").await.0, Outcome::Applied);
    assert_eq!(
        sim.debit("k-late", "M-1", 100).await.unwrap().1,
        Refusal::KeyConflict
    );
    assert_eq!(sim.balance("M-1").await, 1_050);
}

async fn only_tandems_services_may_call(server: TestServer) {
    let mut sim = simulator(&server).await;
    sim.put("M-1", 1_000, true).await;
    let request = || pb::DebitPointsRequest {
        transaction_key: "k".to_owned(),
        member_id: "M-1".to_owned(),
        amount_minor: 1,
        description: String::new(),
        ..Default::default()
    };
    assert_eq!(
        sim.gateway
            .debit_points(request())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let ops = server.staff_token(Role::Ops).await;
    assert_eq!(
        sim.gateway
            .debit_points(authed(&ops, request()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let foreign_database = TestDatabase::sqlite();
    let foreign_store =
        tandem_storage::Database::open(foreign_database.location(), "auth", &tandem_auth::MIGRATOR)
            .await
            .unwrap();
    let foreign = tandem_auth::Authenticator::load(
        tandem_auth::KeyStore::new(foreign_store),
        tandem_auth::TokenSettings {
            audience: "tandem".to_owned(),
        },
    )
    .await
    .unwrap();
    let forged = foreign
        .issue(&Caller::staff(Role::Service, "intruder").unwrap(), HOUR)
        .await
        .unwrap()
        .token;
    assert_eq!(
        sim.gateway
            .debit_points(authed(&forged, request()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        sim.balance("M-1").await,
        1_000,
        "no refused call moved points"
    );
}

async fn faults_misbehave_as_switched(server: TestServer) {
    let mut sim = simulator(&server).await;
    sim.put("M-1", 1_000, true).await;
    sim.fault("DebitPoints", sim::Fault::Fail, 1).await;
    assert_eq!(
        sim.debit("k1", "M-1", 100).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(sim.balance("M-1").await, 1_000, "FAIL applies nothing");
    assert_eq!(
        sim.debit("k1", "M-1", 100).await.unwrap().0,
        Outcome::Applied,
        "the fault lasted one call"
    );

    sim.fault("DebitPoints", sim::Fault::FailAfterApplying, 1)
        .await;
    assert_eq!(
        sim.debit("k2", "M-1", 100).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(
        sim.balance("M-1").await,
        800,
        "applied although the caller saw a failure"
    );
    assert_eq!(
        sim.debit("k2", "M-1", 100).await.unwrap(),
        (Outcome::AlreadyApplied, Refusal::Unspecified, 800),
        "a retry finds it applied, once"
    );

    sim.fault("DebitPoints", sim::Fault::Refuse, 0).await;
    assert_eq!(
        sim.debit("k3", "M-1", 100).await.unwrap().1,
        Refusal::PartnerRule
    );
    assert_eq!(
        sim.debit("k4", "M-1", 100).await.unwrap().1,
        Refusal::PartnerRule
    );
    assert_eq!(
        sim.debit("k2", "M-1", 100).await.unwrap().0,
        Outcome::AlreadyApplied,
        "a refusing program still answers a key it stored as stored"
    );
    sim.fault("DebitPoints", sim::Fault::Forgetful, 1).await;
    assert_eq!(
        sim.debit("k2", "M-1", 100).await.unwrap().1,
        Refusal::PartnerRule,
        "a forgetful gateway refuses even a key it applied"
    );
    assert_eq!(sim.balance("M-1").await, 800, "refusals move nothing");
    sim.fault("DebitPoints", sim::Fault::Unspecified, 0).await;
    sim.fault("DebitPoints", sim::Fault::Delay, 1).await;
    assert_eq!(
        sim.debit("k5", "M-1", 100).await.unwrap().0,
        Outcome::Applied
    );
    assert_eq!(sim.balance("M-1").await, 700);
}

/// Many movements on one member at once, as when the exchange drives several sagas side by side:
/// every one counts, and two reversals of one original undo it once.
async fn concurrent_movements_on_one_member_all_count(server: TestServer) {
    let mut sim = simulator(&server).await;
    sim.put("M-1", 1_000, true).await;
    let gateway = sim.gateway.clone();
    let token = sim.token.clone();
    let calls = (0..20).map(|index| {
        let mut gateway = gateway.clone();
        let token = token.clone();
        async move {
            let (key, amount) = (format!("move-{index}"), 10 + index);
            let outcome = if index % 2 == 0 {
                let request = pb::CreditPointsRequest {
                    transaction_key: key,
                    member_id: "M-1".to_owned(),
                    amount_minor: amount,
                    description: "earn".to_owned(),
                    ..Default::default()
                };
                gateway
                    .credit_points(authed(&token, request))
                    .await
                    .unwrap()
                    .into_inner()
                    .outcome()
            } else {
                let request = pb::DebitPointsRequest {
                    transaction_key: key,
                    member_id: "M-1".to_owned(),
                    amount_minor: amount,
                    description: "conversion".to_owned(),
                    ..Default::default()
                };
                gateway
                    .debit_points(authed(&token, request))
                    .await
                    .unwrap()
                    .into_inner()
                    .outcome()
            };
            assert_eq!(outcome, Outcome::Applied);
        }
    });
    futures::future::join_all(calls).await;
    // Credits of 10, 12, …, 28 and debits of 11, 13, …, 29: ten points less than before.
    assert_eq!(sim.balance("M-1").await, 990);

    let reversals = (0..2).map(|index| {
        let mut gateway = gateway.clone();
        let token = token.clone();
        async move {
            let request = pb::ReversePointsRequest {
                transaction_key: format!("undo-{index}"),
                original_transaction_key: "move-0".to_owned(),
            };
            gateway
                .reverse_points(authed(&token, request))
                .await
                .unwrap()
                .into_inner()
                .outcome()
        }
    });
    let outcomes = futures::future::join_all(reversals).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == Outcome::Applied)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        sim.balance("M-1").await,
        980,
        "the credit of 10 is undone once"
    );
}

/// A batch answers each movement as its own call would, in order: a later movement sees the
/// balance an earlier one left, a key repeated inside the batch is already applied, and a
/// malformed movement is refused without stopping the rest.
async fn a_batch_applies_each_movement_once_in_order(server: TestServer) {
    let mut sim = simulator(&server).await;
    sim.put("M-1", 100, true).await;
    sim.put("M-2", 0, true).await;
    let movements = vec![
        credit("k1", "M-1", 50),
        debit("k2", "M-1", 120),
        debit("k3", "M-1", 40),
        credit("k1", "M-1", 50),
        credit("k1", "M-1", 51),
        credit("k4", "M-2", 7),
        reverse("r1", "k2"),
        reverse("r2", "k2"),
        reverse("r3", "k-late"),
        debit("k-late", "M-1", 1),
        credit("k5", "NOBODY", 1),
        credit("k6", "M-1", 0),
        pb::PointMovement { operation: None },
    ];
    let expected = vec![
        (Outcome::Applied, Refusal::Unspecified, 150),
        (Outcome::Applied, Refusal::Unspecified, 30),
        (Outcome::Refused, Refusal::InsufficientPoints, 0),
        (Outcome::AlreadyApplied, Refusal::Unspecified, 30),
        (Outcome::Refused, Refusal::KeyConflict, 0),
        (Outcome::Applied, Refusal::Unspecified, 7),
        (Outcome::Applied, Refusal::Unspecified, 0),
        (Outcome::Refused, Refusal::AlreadyReversed, 0),
        (Outcome::Applied, Refusal::Unspecified, 0),
        (Outcome::Refused, Refusal::KeyConflict, 0),
        (Outcome::Refused, Refusal::UnknownMember, 0),
        (Outcome::Refused, Refusal::InvalidRequest, 0),
        (Outcome::Refused, Refusal::InvalidRequest, 0),
    ];
    let outcomes = sim.batch(movements.clone()).await.unwrap();
    // A reversal's balance is its member's after it; only the outcome and reason are compared.
    let without_reversal_balances = |outcomes: Vec<(Outcome, Refusal, i64)>| {
        outcomes
            .into_iter()
            .enumerate()
            .map(|(index, (outcome, refusal, balance))| {
                (outcome, refusal, if index == 6 { 0 } else { balance })
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_reversal_balances(outcomes), expected);
    assert_eq!(sim.balance("M-1").await, 150, "the debit of 120 is undone");
    assert_eq!(sim.balance("M-2").await, 7);

    // The same batch again: what applied is already applied. A refusal is not remembered, so
    // the debit of 40, refused for want of points, now finds them.
    let again = sim.batch(movements).await.unwrap();
    assert_eq!(again[0].0, Outcome::AlreadyApplied);
    assert_eq!(again[1].0, Outcome::AlreadyApplied);
    assert_eq!(again[2], (Outcome::Applied, Refusal::Unspecified, 110));
    assert_eq!(again[5].0, Outcome::AlreadyApplied);
    assert_eq!(again[6].0, Outcome::AlreadyApplied);
    assert_eq!(again[8].0, Outcome::AlreadyApplied);
    assert_eq!(
        (sim.balance("M-1").await, sim.balance("M-2").await),
        (110, 7)
    );
    // A single call sees what the batch did.
    assert_eq!(
        sim.debit("k2", "M-1", 120).await.unwrap().0,
        Outcome::AlreadyApplied
    );

    for size in [0, 1_001] {
        let error = sim
            .batch(vec![credit("k-size", "M-1", 1); size])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{size} movements");
    }
    let unauthenticated = sim
        .gateway
        .batch_move_points(pb::BatchMovePointsRequest {
            movements: vec![credit("k-anon", "M-1", 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    assert_eq!(sim.balance("M-1").await, 110);
}

/// Faults armed on a single RPC act on the movements of its kind inside a batch.
async fn faults_act_on_the_movements_of_a_batch(server: TestServer) {
    let mut sim = simulator(&server).await;
    sim.put("M-1", 1_000, true).await;
    sim.fault("CreditPoints", sim::Fault::Refuse, 1).await;
    let outcomes = sim
        .batch(vec![credit("c1", "M-1", 10), credit("c2", "M-1", 10)])
        .await
        .unwrap();
    assert_eq!(
        (outcomes[0].1, outcomes[1].0),
        (Refusal::PartnerRule, Outcome::Applied),
        "the refusal lasted one movement"
    );

    sim.fault("DebitPoints", sim::Fault::Fail, 1).await;
    let failed = sim
        .batch(vec![credit("c3", "M-1", 10), debit("d1", "M-1", 10)])
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable);
    assert_eq!(
        sim.balance("M-1").await,
        1_010,
        "FAIL applies nothing of the batch"
    );

    sim.fault("DebitPoints", sim::Fault::FailAfterApplying, 1)
        .await;
    let failed = sim
        .batch(vec![credit("c3", "M-1", 10), debit("d1", "M-1", 10)])
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable);
    assert_eq!(sim.balance("M-1").await, 1_010, "+10 -10: both applied");
    let retried = sim
        .batch(vec![credit("c3", "M-1", 10), debit("d1", "M-1", 10)])
        .await
        .unwrap();
    assert!(
        retried
            .iter()
            .all(|outcome| outcome.0 == Outcome::AlreadyApplied),
        "a retry finds both applied, once: {retried:?}"
    );

    sim.fault("BatchMovePoints", sim::Fault::Unimplemented, 0)
        .await;
    let unimplemented = sim.batch(vec![credit("c4", "M-1", 10)]).await.unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
    sim.fault("BatchMovePoints", sim::Fault::Unspecified, 0)
        .await;
    assert_eq!(sim.balance("M-1").await, 1_010);
}

/// Batches racing on the same members and the same keys: every key applies once and every
/// movement counts.
async fn concurrent_batches_apply_each_key_once(server: TestServer) {
    let mut sim = simulator(&server).await;
    for member in ["M-1", "M-2", "M-3"] {
        sim.put(member, 10_000, true).await;
    }
    let gateway = sim.gateway.clone();
    let token = sim.token.clone();
    // Eight batches; batch b credits keys b and b+1 of 0..9, so each key is sent twice, and
    // debits 5 from a member under a key of its own.
    let batches = (0..8).map(|batch| {
        let mut gateway = gateway.clone();
        let token = token.clone();
        async move {
            let members = ["M-1", "M-2", "M-3"];
            let movements = vec![
                credit(&format!("shared-{batch}"), members[batch % 3], 10),
                credit(
                    &format!("shared-{}", batch + 1),
                    members[(batch + 1) % 3],
                    10,
                ),
                debit(&format!("own-{batch}"), members[(batch + 2) % 3], 5),
            ];
            let request = pb::BatchMovePointsRequest { movements };
            gateway
                .batch_move_points(authed(&token, request))
                .await
                .unwrap()
                .into_inner()
                .results
        }
    });
    let results: Vec<_> = futures::future::join_all(batches).await;
    let applied = results
        .iter()
        .flatten()
        .filter(|result| result.outcome() == Outcome::Applied)
        .count();
    assert_eq!(
        applied,
        9 + 8,
        "nine shared keys and eight own debits, once each"
    );
    assert!(
        results
            .iter()
            .flatten()
            .all(|result| matches!(result.outcome(), Outcome::Applied | Outcome::AlreadyApplied))
    );
    let mut total = 0;
    for member in ["M-1", "M-2", "M-3"] {
        total += sim.balance(member).await;
    }
    assert_eq!(total, 30_000 + 9 * 10 - 8 * 5);
}

on_every_backend!(
    a_batch_applies_each_movement_once_in_order,
    faults_act_on_the_movements_of_a_batch,
    concurrent_batches_apply_each_key_once,
    each_key_applies_once_with_a_definite_outcome,
    only_tandems_services_may_call,
    faults_misbehave_as_switched,
    concurrent_movements_on_one_member_all_count
);
