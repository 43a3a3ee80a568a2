//! Who may call what: every RPC of every service Tandem serves, called with every kind of
//! token, against the real server. Bad tokens are UNAUTHENTICATED everywhere; a valid token
//! without the right is PERMISSION_DENIED; an allowed caller gets past both (its call may still
//! fail for a business reason, which this table does not judge).

mod helpers;

use std::{future::Future, pin::Pin};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use helpers::{
    HOUR, Simulator, TestServer, authed, create_partner, create_partner_request,
    hotel_and_rideshare, terms,
};
use tandem_auth::{Caller, Role};
use tandem_proto::v1::{self as pb, PartnerCategory};
use tandem_storage::testing::TestDatabase;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    None,
    Expired,
    WrongAudience,
    AlgNone,
    UnknownKey,
    Admin,
    Ops,
    Service,
    ThePartner,
    AnotherPartner,
}

const BAD_TOKENS: [TokenKind; 5] = [
    TokenKind::None,
    TokenKind::Expired,
    TokenKind::WrongAudience,
    TokenKind::AlgNone,
    TokenKind::UnknownKey,
];
const VALID_TOKENS: [TokenKind; 5] = [
    TokenKind::Admin,
    TokenKind::Ops,
    TokenKind::Service,
    TokenKind::ThePartner,
    TokenKind::AnotherPartner,
];

/// The world every row acts on: "the partner" is the hotel, which proposed an agreement to the
/// rideshare; "another partner" is an airline that has nothing to do with either.
struct World {
    server: TestServer,
    tokens: Vec<(TokenKind, Option<String>)>,
    hotel: pb::Partner,
    hotel_credentials: pb::ClientCredentials,
    airline: pb::Partner,
    agreement_id: String,
    ledger: LedgerFixture,
    link_id: String,
    exchange: ExchangeFixture,
}

/// Gateways for the hotel and the rideshare, a completed conversion, and a recorded activity.
struct ExchangeFixture {
    _gateways: (Simulator, Simulator),
    quote_id: String,
    conversion_id: String,
}

impl ExchangeFixture {
    async fn new(
        server: &TestServer,
        hotel: &pb::Partner,
        ride: &pb::Partner,
        tokens: &[(TokenKind, Option<String>)],
        link_id: &str,
    ) -> Self {
        let token = |wanted: TokenKind| {
            tokens
                .iter()
                .find(|(kind, _)| *kind == wanted)
                .and_then(|(_, token)| token.clone())
                .unwrap()
        };
        let (admin, hotel_token) = (token(Admin), token(ThePartner));
        let hotel_gateway = Simulator::start_for(server, "SKYLINE_PTS").await;
        let ride_gateway = Simulator::start_for(server, "ZOOM_MILES").await;
        for (partner, gateway) in [(hotel, &hotel_gateway), (ride, &ride_gateway)] {
            let update = pb::UpdatePartnerRequest {
                partner_id: partner.partner_id.clone(),
                display_name: None,
                gateway_endpoint: Some(format!("http://{}", gateway.address)),
            };
            server
                .registry()
                .update_partner(authed(&admin, update))
                .await
                .unwrap();
        }
        hotel_gateway.put_member("H-1", 100_000, true).await;
        ride_gateway.put_member("R-1", 0, true).await;
        let mut exchange = server.exchange();
        let quote = pb::GetQuoteRequest {
            partner_id: hotel.partner_id.clone(),
            link_id: link_id.to_owned(),
            amount: Some(pb::get_quote_request::Amount::SourcePoints(1_000)),
        };
        let quote_id = exchange
            .get_quote(authed(&hotel_token, quote))
            .await
            .unwrap()
            .into_inner()
            .quote
            .unwrap()
            .quote_id;
        let execute = pb::ExecuteConversionRequest {
            partner_id: hotel.partner_id.clone(),
            quote_id: quote_id.clone(),
            idempotency_key: "fixture".to_owned(),
        };
        let conversion_id = exchange
            .execute_conversion(authed(&hotel_token, execute))
            .await
            .unwrap()
            .into_inner()
            .conversion
            .unwrap()
            .conversion_id;
        Self {
            _gateways: (hotel_gateway, ride_gateway),
            quote_id,
            conversion_id,
        }
    }
}

fn activity(world: &World, external_id: String) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        partner_id: world.hotel.partner_id.clone(),
        external_id,
        member_id: "H-1".to_owned(),
        spend_amount_minor: 10_000,
        spend_currency: "USD".to_owned(),
        category: "STAY".to_owned(),
        member_tier: String::new(),
        activity_time: Some(tandem_proto::time::timestamp(chrono::Utc::now())),
    }
}

/// The rideshare accepts the hotel's agreement, and a hotel member links to a rider.
async fn link_fixture(
    server: &TestServer,
    hotel: &pb::Partner,
    ride: &pb::Partner,
    ride_credentials: &pb::ClientCredentials,
    tokens: &[(TokenKind, Option<String>)],
    agreement_id: &str,
) -> String {
    let ride_token = server.partner_token(ride_credentials).await;
    let hotel_token = tokens
        .iter()
        .find(|(kind, _)| *kind == ThePartner)
        .and_then(|(_, token)| token.clone())
        .unwrap();
    let accept = pb::AcceptAgreementRequest {
        agreement_id: agreement_id.to_owned(),
        terms_version: 1,
    };
    server
        .registry()
        .accept_agreement(authed(&ride_token, accept))
        .await
        .unwrap();
    let mut linking = server.linking();
    let start = pb::StartLinkRequest {
        partner_id: hotel.partner_id.clone(),
        member_id: "H-1".to_owned(),
        target_partner_id: ride.partner_id.clone(),
    };
    let code = linking
        .start_link(authed(&hotel_token, start))
        .await
        .unwrap()
        .into_inner()
        .code;
    let complete = pb::CompleteLinkRequest {
        partner_id: ride.partner_id.clone(),
        member_id: "R-1".to_owned(),
        code,
    };
    linking
        .complete_link(authed(&ride_token, complete))
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap()
        .link_id
}

/// Two ledger accounts, a posted transaction between them, and a pending one.
struct LedgerFixture {
    from: String,
    to: String,
    posted: String,
    pending: String,
}

impl LedgerFixture {
    /// A transfer of one cent between the fixture's two accounts.
    fn transfer(&self, idempotency_key: String) -> pb::PostTransactionRequest {
        pb::PostTransactionRequest {
            idempotency_key,
            legs: vec![
                pb::Leg {
                    account_id: self.from.clone(),
                    direction: pb::Direction::Debit.into(),
                    amount_minor: 1,
                },
                pb::Leg {
                    account_id: self.to.clone(),
                    direction: pb::Direction::Credit.into(),
                    amount_minor: 1,
                },
            ],
            ..Default::default()
        }
    }

    async fn new(server: &TestServer) -> Self {
        let service = server.staff_token(Role::Service).await;
        let mut ledger = server.ledger();
        let mut open = async |owner: &str| {
            let request = pb::OpenAccountRequest {
                owner: owner.to_owned(),
                purpose: pb::AccountPurpose::Settlement.into(),
                unit: "USD".to_owned(),
                unit_scale: 2,
                ..Default::default()
            };
            ledger
                .open_account(authed(&service, request))
                .await
                .unwrap()
                .into_inner()
                .account
                .unwrap()
                .account_id
        };
        let (from, to) = (
            open("exchange").await,
            open("01a20560-0000-7000-8000-000000000001").await,
        );
        let post = |key: &str, kind: pb::TransactionKind| pb::PostTransactionRequest {
            idempotency_key: key.to_owned(),
            legs: vec![
                pb::Leg {
                    account_id: from.clone(),
                    direction: pb::Direction::Debit.into(),
                    amount_minor: 100,
                },
                pb::Leg {
                    account_id: to.clone(),
                    direction: pb::Direction::Credit.into(),
                    amount_minor: 100,
                },
            ],
            kind: kind.into(),
            pending_timeout_seconds: 3600,
            ..Default::default()
        };
        let posted = ledger
            .post_transaction(authed(
                &service,
                post("fixture-posted", pb::TransactionKind::Posted),
            ))
            .await
            .unwrap()
            .into_inner()
            .transaction
            .unwrap()
            .transaction_id;
        let pending = ledger
            .post_transaction(authed(
                &service,
                post("fixture-pending", pb::TransactionKind::Pending),
            ))
            .await
            .unwrap()
            .into_inner()
            .transaction
            .unwrap()
            .transaction_id;
        Self {
            from,
            to,
            posted,
            pending,
        }
    }
}

impl World {
    async fn new(server: TestServer) -> Self {
        let admin = server.staff_token(Role::Admin).await;
        let ((hotel, hotel_credentials), (ride, ride_credentials)) =
            hotel_and_rideshare(&server, &admin).await;
        let (airline, airline_credentials) = create_partner(
            &server,
            &admin,
            "blue-air",
            PartnerCategory::Airline,
            "BLUE_MILES",
        )
        .await;
        let hotel_token = server.partner_token(&hotel_credentials).await;
        let proposal = pb::ProposeAgreementRequest {
            source_partner_id: hotel.partner_id.clone(),
            target_partner_id: ride.partner_id.clone(),
            terms: Some(terms("0.25")),
            effective_time: None,
        };
        let agreement = server
            .registry()
            .propose_agreement(authed(&hotel_token, proposal))
            .await
            .unwrap()
            .into_inner()
            .agreement
            .unwrap();

        let real = server.authenticator("tandem").await;
        let ops = Caller::staff(Role::Ops, "ops").unwrap();
        let expired = real
            .issue_at(&ops, chrono::Utc::now() - chrono::Duration::hours(3), HOUR)
            .await
            .unwrap()
            .token;
        let wrong_audience = server
            .authenticator("some-other-exchange")
            .await
            .issue(&ops, HOUR)
            .await
            .unwrap()
            .token;
        // Signed by a key this deployment has never seen, as an attacker's own key would be.
        let foreign_database = TestDatabase::sqlite();
        let foreign_store = tandem_storage::Database::open(
            foreign_database.location(),
            "auth",
            &tandem_auth::MIGRATOR,
        )
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
        let unknown_key = foreign
            .issue(&Caller::staff(Role::Admin, "intruder").unwrap(), HOUR)
            .await
            .unwrap()
            .token;
        let admin_claims = admin.split('.').nth(1).unwrap().to_owned();
        let alg_none = format!(
            "{}.{admin_claims}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#)
        );

        let tokens = vec![
            (TokenKind::None, None),
            (TokenKind::Expired, Some(expired)),
            (TokenKind::WrongAudience, Some(wrong_audience)),
            (TokenKind::AlgNone, Some(alg_none)),
            (TokenKind::UnknownKey, Some(unknown_key)),
            (TokenKind::Admin, Some(admin)),
            (TokenKind::Ops, Some(server.staff_token(Role::Ops).await)),
            (
                TokenKind::Service,
                Some(server.staff_token(Role::Service).await),
            ),
            (TokenKind::ThePartner, Some(hotel_token)),
            (
                TokenKind::AnotherPartner,
                Some(server.partner_token(&airline_credentials).await),
            ),
        ];
        let ledger = LedgerFixture::new(&server).await;
        let link_id = link_fixture(
            &server,
            &hotel,
            &ride,
            &ride_credentials,
            &tokens,
            &agreement.agreement_id,
        )
        .await;
        let exchange = ExchangeFixture::new(&server, &hotel, &ride, &tokens, &link_id).await;
        Self {
            server,
            tokens,
            hotel,
            hotel_credentials,
            airline,
            agreement_id: agreement.agreement_id,
            ledger,
            link_id,
            exchange,
        }
    }
}

fn request_with<T>(token: &Option<String>, message: T) -> tonic::Request<T> {
    match token {
        Some(token) => authed(token, message),
        None => tonic::Request::new(message),
    }
}

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), Status>> + 'a>>;

/// One RPC: how to call it, and which valid tokens may.
struct Row {
    rpc: &'static str,
    allowed: &'static [TokenKind],
    call: for<'a> fn(&'a World, &'a Option<String>, usize) -> Call<'a>,
}

use TokenKind::{Admin, AnotherPartner, Ops, Service, ThePartner};

const ANYONE: &[TokenKind] = &[
    TokenKind::None,
    TokenKind::Expired,
    TokenKind::WrongAudience,
    TokenKind::AlgNone,
    TokenKind::UnknownKey,
    Admin,
    Ops,
    Service,
    ThePartner,
    AnotherPartner,
];
const STAFF_READERS: &[TokenKind] = &[Admin, Ops, Service];
const READERS_AND_SELF: &[TokenKind] = &[Admin, Ops, Service, ThePartner];
const LEDGER_WRITERS: &[TokenKind] = &[Service];
const LEDGER_READERS: &[TokenKind] = &[Ops, Service];
const LINK_READERS: &[TokenKind] = &[Ops, Service, ThePartner];

fn rows() -> Vec<Row> {
    vec![
        // Settlement first: rows further down suspend and offboard the partner, whose token
        // is then refused outright.
        Row {
            rpc: "SettlementService.SubmitPartnerReport",
            allowed: &[Ops, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let header = pb::ReportHeader {
                        partner_id: world.hotel.partner_id.clone(),
                        start_time: Some(prost_types::Timestamp {
                            seconds: 1_700_000_000,
                            nanos: 0,
                        }),
                        end_time: Some(tandem_proto::time::timestamp(tandem_domain::now())),
                        dry_run: true,
                        ..Default::default()
                    };
                    let messages = vec![pb::SubmitPartnerReportRequest {
                        header: Some(header),
                        records: Vec::new(),
                    }];
                    world
                        .server
                        .settlement()
                        .submit_partner_report(request_with(token, futures::stream::iter(messages)))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.GetReconciliation",
            allowed: &[Ops, ThePartner, AnotherPartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetReconciliationRequest {
                        reconciliation_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .get_reconciliation(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ListDiscrepancies",
            allowed: &[Ops, ThePartner, AnotherPartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListDiscrepanciesRequest {
                        reconciliation_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                        ..Default::default()
                    };
                    world
                        .server
                        .settlement()
                        .list_discrepancies(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ResolveDiscrepancy",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ResolveDiscrepancyRequest {
                        discrepancy_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                        reason: "table".to_owned(),
                        ..Default::default()
                    };
                    world
                        .server
                        .settlement()
                        .resolve_discrepancy(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.GetLiabilityReport",
            allowed: &[Ops, Service, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetLiabilityReportRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .settlement()
                        .get_liability_report(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.CreateSettlementRun",
            allowed: &[Ops],
            call: |world, token, attempt| {
                Box::pin(async move {
                    let request = pb::CreateSettlementRunRequest {
                        idempotency_key: format!("table-run-{attempt}"),
                        currency: "USD".to_owned(),
                        cutoff_time: Some(tandem_proto::time::timestamp(tandem_domain::now())),
                    };
                    world
                        .server
                        .settlement()
                        .create_settlement_run(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.GetSettlementRun",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetSettlementRunRequest {
                        run_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .get_settlement_run(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ListSettlementRuns",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListSettlementRunsRequest::default();
                    world
                        .server
                        .settlement()
                        .list_settlement_runs(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ApproveSettlementRun",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ApproveSettlementRunRequest {
                        run_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .approve_settlement_run(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.SettleSettlementRun",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::SettleSettlementRunRequest {
                        run_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                        ..Default::default()
                    };
                    world
                        .server
                        .settlement()
                        .settle_settlement_run(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.CancelSettlementRun",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::CancelSettlementRunRequest {
                        run_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                        reason: "table".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .cancel_settlement_run(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.GetStatement",
            allowed: &[Ops, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetStatementRequest {
                        run_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                        party: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .settlement()
                        .get_statement(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ListAccounts",
            allowed: LEDGER_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListAccountsRequest::default();
                    world
                        .server
                        .settlement()
                        .list_accounts(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ListPositions",
            allowed: &[Ops, Service, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListPositionsRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .settlement()
                        .list_positions(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.PostAdjustment",
            allowed: &[Ops],
            call: |world, token, attempt| {
                Box::pin(async move {
                    let request = pb::PostAdjustmentRequest {
                        idempotency_key: format!("table-adjustment-{attempt}"),
                        legs: world.ledger.transfer(String::new()).legs,
                        reason: "table".to_owned(),
                        reference: String::new(),
                    };
                    world
                        .server
                        .settlement()
                        .post_adjustment(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ApproveAdjustment",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ApproveAdjustmentRequest {
                        adjustment_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .approve_adjustment(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.RejectAdjustment",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::RejectAdjustmentRequest {
                        adjustment_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                        reason: "table".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .reject_adjustment(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.GetAdjustment",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetAdjustmentRequest {
                        adjustment_id: "01a20560-0000-7000-8000-0000000000ee".to_owned(),
                    };
                    world
                        .server
                        .settlement()
                        .get_adjustment(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ListAdjustments",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListAdjustmentsRequest::default();
                    world
                        .server
                        .settlement()
                        .list_adjustments(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SettlementService.ListAuditEvents",
            allowed: &[Ops],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListAuditEventsRequest::default();
                    world
                        .server
                        .settlement()
                        .list_audit_events(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AuthService.IssueToken",
            allowed: ANYONE,
            call: |world, token, _| {
                Box::pin(async move {
                    let credentials = &world.hotel_credentials;
                    world
                        .server
                        .auth()
                        .issue_token(request_with(
                            token,
                            pb::IssueTokenRequest {
                                client_id: credentials.client_id.clone(),
                                client_secret: credentials.client_secret.clone(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AuthService.ListSigningKeys",
            allowed: ANYONE,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .auth()
                        .list_signing_keys(request_with(token, pb::ListSigningKeysRequest {}))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "CreatePartner",
            allowed: &[Admin],
            call: |world, token, attempt| {
                Box::pin(async move {
                    let code = format!("new-brand-{attempt}");
                    let program = format!("NEW_{attempt}");
                    world
                        .server
                        .registry()
                        .create_partner(request_with(
                            token,
                            create_partner_request(&code, PartnerCategory::Retail, &program),
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "GetPartner",
            allowed: READERS_AND_SELF,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .get_partner(request_with(
                            token,
                            pb::GetPartnerRequest {
                                partner_id: world.hotel.partner_id.clone(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ListPartners",
            allowed: STAFF_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .list_partners(request_with(token, pb::ListPartnersRequest::default()))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "UpdatePartner",
            allowed: &[Admin, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let update = pb::UpdatePartnerRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        display_name: Some("Skyline".to_owned()),
                        gateway_endpoint: None,
                    };
                    world
                        .server
                        .registry()
                        .update_partner(request_with(token, update))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "RotatePartnerCredentials",
            allowed: &[Admin, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    // IssueToken's row ran earlier, so rotating the hotel's secret here breaks nothing.
                    world
                        .server
                        .registry()
                        .rotate_partner_credentials(request_with(
                            token,
                            pb::RotatePartnerCredentialsRequest {
                                partner_id: world.hotel.partner_id.clone(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ProposeAgreement",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let proposal = pb::ProposeAgreementRequest {
                        source_partner_id: world.hotel.partner_id.clone(),
                        target_partner_id: world.airline.partner_id.clone(),
                        terms: Some(terms("2")),
                        effective_time: None,
                    };
                    world
                        .server
                        .registry()
                        .propose_agreement(request_with(token, proposal))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "GetAgreement",
            allowed: READERS_AND_SELF,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .get_agreement(request_with(
                            token,
                            pb::GetAgreementRequest {
                                agreement_id: world.agreement_id.clone(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ListAgreements",
            allowed: READERS_AND_SELF,
            call: |world, token, _| {
                Box::pin(async move {
                    let list = pb::ListAgreementsRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .registry()
                        .list_agreements(request_with(token, list))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "GetTermsInForce",
            allowed: READERS_AND_SELF,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .get_terms_in_force(request_with(
                            token,
                            pb::GetTermsInForceRequest {
                                agreement_id: world.agreement_id.clone(),
                                at_time: None,
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AcceptAgreement",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .accept_agreement(request_with(
                            token,
                            pb::AcceptAgreementRequest {
                                agreement_id: world.agreement_id.clone(),
                                terms_version: 1,
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AmendAgreement",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let amendment = pb::AmendAgreementRequest {
                        agreement_id: world.agreement_id.clone(),
                        terms: Some(terms("0.3")),
                        effective_time: None,
                    };
                    world
                        .server
                        .registry()
                        .amend_agreement(request_with(token, amendment))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "RejectAgreement",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .reject_agreement(request_with(
                            token,
                            pb::RejectAgreementRequest {
                                agreement_id: world.agreement_id.clone(),
                                terms_version: 1,
                                reason: String::new(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "TerminateAgreement",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let termination = pb::TerminateAgreementRequest {
                        agreement_id: world.agreement_id.clone(),
                        effective_time: None,
                        reason: "test".to_owned(),
                    };
                    world
                        .server
                        .registry()
                        .terminate_agreement(request_with(token, termination))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "SuspendPartner",
            allowed: &[Admin],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .suspend_partner(request_with(
                            token,
                            pb::SuspendPartnerRequest {
                                partner_id: world.hotel.partner_id.clone(),
                                reason: "test".to_owned(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ReactivatePartner",
            allowed: &[Admin],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .reactivate_partner(request_with(
                            token,
                            pb::ReactivatePartnerRequest {
                                partner_id: world.hotel.partner_id.clone(),
                                reason: "test".to_owned(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.OpenAccount",
            allowed: LEDGER_WRITERS,
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::OpenAccountRequest {
                        owner: "exchange".to_owned(),
                        purpose: pb::AccountPurpose::Fees.into(),
                        unit: "USD".to_owned(),
                        unit_scale: 2,
                        ..Default::default()
                    };
                    world
                        .server
                        .ledger()
                        .open_account(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.PostTransaction",
            allowed: LEDGER_WRITERS,
            call: |world, token, attempt| {
                Box::pin(async move {
                    let request = world.ledger.transfer(format!("table-{attempt}"));
                    world
                        .server
                        .ledger()
                        .post_transaction(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.PostTransactions",
            allowed: LEDGER_WRITERS,
            call: |world, token, attempt| {
                Box::pin(async move {
                    let transaction = world.ledger.transfer(format!("table-batch-{attempt}"));
                    let request = pb::PostTransactionsRequest {
                        transactions: vec![transaction],
                        ..Default::default()
                    };
                    world
                        .server
                        .ledger()
                        .post_transactions(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.ResolvePending",
            allowed: LEDGER_WRITERS,
            call: |world, token, attempt| {
                Box::pin(async move {
                    let request = pb::ResolvePendingRequest {
                        idempotency_key: format!("table-{attempt}"),
                        pending_transaction_id: world.ledger.pending.clone(),
                        resolution: pb::PendingResolution::Post.into(),
                    };
                    world
                        .server
                        .ledger()
                        .resolve_pending(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.ReverseTransaction",
            allowed: LEDGER_WRITERS,
            call: |world, token, attempt| {
                Box::pin(async move {
                    let request = pb::ReverseTransactionRequest {
                        idempotency_key: format!("table-{attempt}"),
                        transaction_id: world.ledger.posted.clone(),
                        reason: "table".to_owned(),
                    };
                    world
                        .server
                        .ledger()
                        .reverse_transaction(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.GetBalance",
            allowed: LEDGER_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .ledger()
                        .get_balance(request_with(
                            token,
                            pb::GetBalanceRequest {
                                account_id: world.ledger.from.clone(),
                                as_of_time: None,
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.ListEntries",
            allowed: LEDGER_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .ledger()
                        .list_entries(request_with(
                            token,
                            pb::ListEntriesRequest {
                                account_id: world.ledger.to.clone(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.ListTransactions",
            allowed: LEDGER_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .ledger()
                        .list_transactions(request_with(
                            token,
                            pb::ListTransactionsRequest {
                                external_reference: "none".to_owned(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "LedgerService.GetTrialBalance",
            allowed: LEDGER_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .ledger()
                        .get_trial_balance(request_with(token, pb::GetTrialBalanceRequest {}))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.StartLink",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::StartLinkRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        member_id: "H-2".to_owned(),
                        target_partner_id: world.airline.partner_id.clone(),
                    };
                    world
                        .server
                        .linking()
                        .start_link(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.CompleteLink",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::CompleteLinkRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        member_id: "H-3".to_owned(),
                        code: "ZZZZ-ZZZZZZ".to_owned(),
                    };
                    world
                        .server
                        .linking()
                        .complete_link(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.GetLink",
            allowed: LINK_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .linking()
                        .get_link(request_with(
                            token,
                            pb::GetLinkRequest {
                                link_id: world.link_id.clone(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.BatchGetLinks",
            // Another partner is let through and finds nothing: the links it may not read are
            // left out of the answer.
            allowed: &[Ops, Service, ThePartner, AnotherPartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::BatchGetLinksRequest {
                        link_ids: vec![world.link_id.clone()],
                    };
                    world
                        .server
                        .linking()
                        .batch_get_links(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.ListLinks",
            allowed: LINK_READERS,
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListLinksRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .linking()
                        .list_links(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.SetLinkPolicy",
            allowed: &[Admin, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let policy = pb::LinkPolicy {
                        partner_id: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .linking()
                        .set_link_policy(request_with(
                            token,
                            pb::SetLinkPolicyRequest {
                                policy: Some(policy),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.GetLinkPolicy",
            allowed: &[Admin, Ops, Service, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .linking()
                        .get_link_policy(request_with(
                            token,
                            pb::GetLinkPolicyRequest {
                                partner_id: world.hotel.partner_id.clone(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.Unlink",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .linking()
                        .unlink(request_with(
                            token,
                            pb::UnlinkRequest {
                                link_id: world.link_id.clone(),
                                reason: "table".to_owned(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "AccountLinkingService.ForgetMember",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ForgetMemberRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        member_id: "H-1".to_owned(),
                    };
                    world
                        .server
                        .linking()
                        .forget_member(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.GetQuote",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetQuoteRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        link_id: world.link_id.clone(),
                        amount: Some(pb::get_quote_request::Amount::SourcePoints(1_000)),
                    };
                    world
                        .server
                        .exchange()
                        .get_quote(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.ExecuteConversion",
            allowed: &[ThePartner],
            call: |world, token, attempt| {
                Box::pin(async move {
                    let request = pb::ExecuteConversionRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        quote_id: world.exchange.quote_id.clone(),
                        idempotency_key: format!("table-{attempt}"),
                    };
                    world
                        .server
                        .exchange()
                        .execute_conversion(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.GetConversion",
            allowed: &[Ops, Service, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::GetConversionRequest {
                        conversion_id: world.exchange.conversion_id.clone(),
                    };
                    world
                        .server
                        .exchange()
                        .get_conversion(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.ListConversions",
            allowed: &[Ops, Service, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ListConversionsRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        ..Default::default()
                    };
                    world
                        .server
                        .exchange()
                        .list_conversions(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.ReverseConversion",
            allowed: &[Ops, ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ReverseConversionRequest {
                        conversion_id: world.exchange.conversion_id.clone(),
                        reason: "table".to_owned(),
                    };
                    world
                        .server
                        .exchange()
                        .reverse_conversion(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.RecordActivity",
            allowed: &[ThePartner],
            call: |world, token, attempt| {
                Box::pin(async move {
                    world
                        .server
                        .exchange()
                        .record_activity(request_with(
                            token,
                            activity(world, format!("stay-{attempt}")),
                        ))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.RecordActivities",
            allowed: &[ThePartner],
            call: |world, token, attempt| {
                Box::pin(async move {
                    let records = vec![pb::RecordActivitiesRequest {
                        activity: Some(activity(world, format!("stays-{attempt}"))),
                    }];
                    let response = world
                        .server
                        .exchange()
                        .record_activities(request_with(token, futures::stream::iter(records)))
                        .await?
                        .into_inner();
                    // A refusal inside the stream is a refusal of the caller too.
                    match response
                        .results
                        .first()
                        .map(|result| Code::from(result.code))
                    {
                        Some(code) if code != Code::Ok => Err(Status::new(code, "refused")),
                        _ => Ok(()),
                    }
                })
            },
        },
        Row {
            rpc: "ExchangeService.GetActivity",
            allowed: &[Ops, Service, ThePartner],
            call: |world, token, attempt| {
                Box::pin(async move {
                    // The hotel's own report of this attempt, read back with the token under test.
                    let hotel = world
                        .tokens
                        .iter()
                        .find(|(kind, _)| *kind == ThePartner)
                        .and_then(|(_, token)| token.clone())
                        .unwrap();
                    let activity_id = world
                        .server
                        .exchange()
                        .record_activity(authed(&hotel, activity(world, format!("read-{attempt}"))))
                        .await
                        .unwrap()
                        .into_inner()
                        .activity
                        .unwrap()
                        .activity_id;
                    world
                        .server
                        .exchange()
                        .get_activity(request_with(token, pb::GetActivityRequest { activity_id }))
                        .await
                        .map(drop)
                })
            },
        },
        Row {
            rpc: "ExchangeService.ReverseActivity",
            allowed: &[ThePartner],
            call: |world, token, _| {
                Box::pin(async move {
                    let request = pb::ReverseActivityRequest {
                        partner_id: world.hotel.partner_id.clone(),
                        external_id: "stay-1".to_owned(),
                        reason: "table".to_owned(),
                    };
                    world
                        .server
                        .exchange()
                        .reverse_activity(request_with(token, request))
                        .await
                        .map(drop)
                })
            },
        },
        // Last: it ends the hotel's partnership.
        Row {
            rpc: "OffboardPartner",
            allowed: &[Admin],
            call: |world, token, _| {
                Box::pin(async move {
                    world
                        .server
                        .registry()
                        .offboard_partner(request_with(
                            token,
                            pb::OffboardPartnerRequest {
                                partner_id: world.hotel.partner_id.clone(),
                                reason: "test".to_owned(),
                            },
                        ))
                        .await
                        .map(drop)
                })
            },
        },
    ]
}

async fn every_rpc_refuses_bad_tokens_and_callers_without_the_right(server: TestServer) {
    let world = World::new(server).await;
    let mut failures = Vec::new();
    let mut attempt = 0;
    for row in rows() {
        // Refusals first: they change nothing, so the allowed calls after them see the world as set up.
        let (allowed, refused): (Vec<_>, Vec<_>) = world
            .tokens
            .iter()
            .partition(|(kind, _)| row.allowed.contains(kind));
        for (kind, token) in refused.into_iter().chain(allowed) {
            attempt += 1;
            let outcome = (row.call)(&world, token, attempt).await;
            let code = outcome.as_ref().err().map_or(Code::Ok, Status::code);
            let expected_refusal = if row.allowed.contains(kind) {
                None
            } else if BAD_TOKENS.contains(kind) {
                Some(Code::Unauthenticated)
            } else {
                Some(Code::PermissionDenied)
            };
            let correct = match expected_refusal {
                Some(expected) => code == expected,
                None => !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            };
            if !correct {
                failures.push(format!(
                    "{} with {kind:?}: got {code:?}, expected {}",
                    row.rpc,
                    expected_refusal
                        .map_or("to be let through".to_owned(), |code| format!("{code:?}"))
                ));
            }
        }
    }
    assert!(VALID_TOKENS.len() + BAD_TOKENS.len() == world.tokens.len());
    assert!(
        failures.is_empty(),
        "auth table mismatches:\n{}",
        failures.join("\n")
    );
}

on_every_backend!(every_rpc_refuses_bad_tokens_and_callers_without_the_right);

/// The table above covers every RPC of every service Tandem serves (the partner gateway is
/// served by partners, and its token check is the reference partner's own suite): a new RPC
/// without a row fails here.
#[test]
fn the_table_has_a_row_for_every_rpc() {
    use prost::Message;
    let descriptors = prost_types::FileDescriptorSet::decode(tandem_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut served: Vec<String> = descriptors
        .file
        .iter()
        .filter(|file| file.package() == "tandem.v1")
        .flat_map(|file| file.service.iter())
        .filter(|service| service.name() != "PartnerGatewayService")
        .flat_map(|service| {
            service
                .method
                .iter()
                .map(move |method| format!("{}.{}", service.name(), method.name()))
        })
        .collect();
    served.sort();
    let mut covered: Vec<String> = rows()
        .iter()
        .map(|row| {
            // Rows of the registry name the RPC alone.
            if row.rpc.contains('.') {
                row.rpc.to_owned()
            } else {
                format!("PartnerRegistryService.{}", row.rpc)
            }
        })
        .collect();
    covered.sort();
    covered.dedup();
    let missing: Vec<&String> = served.iter().filter(|rpc| !covered.contains(rpc)).collect();
    assert!(missing.is_empty(), "RPCs without a row: {missing:?}");
}
