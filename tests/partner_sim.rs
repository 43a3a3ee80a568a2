//! The reference partner as a process beside the real server: wallets that apply each key once
//! with a definite outcome, reversals that are never overtaken, Tandem's token checked against
//! Tandem's published keys, and the faults the exchange's tests will need.

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

    async fn fault(&mut self, rpc: &str, fault: sim::Fault, times: i32) {
        let request = sim::SetFaultRequest {
            rpc: rpc.to_owned(),
            fault: fault.into(),
            times,
            delay_ms: 50,
        };
        self.control.set_fault(request).await.unwrap();
    }
}

use pb::{GatewayOutcome as Outcome, RefusalReason as Refusal};

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

on_every_backend!(
    each_key_applies_once_with_a_definite_outcome,
    only_tandems_services_may_call,
    faults_misbehave_as_switched,
    concurrent_movements_on_one_member_all_count
);
