//! End to end through the real `tandem serve`: partners register, get tokens with their
//! credentials, propose, amend and accept agreements, and read which terms apply when.

mod helpers;

use std::time::Duration;

use helpers::{
    HOUR, TestServer, authed, create_partner, create_partner_request, hotel_and_rideshare, reason,
    terms, violated_fields,
};
use tandem_auth::Role;
use tandem_proto::{
    time::{ProtoTimestamp, timestamp},
    v1::{self as pb, PartnerCategory},
};
use tonic::Code;

fn at(offset: Duration) -> Option<ProtoTimestamp> {
    Some(timestamp(
        chrono::Utc::now() + chrono::Duration::from_std(offset).unwrap(),
    ))
}

fn before(offset: Duration) -> Option<ProtoTimestamp> {
    Some(timestamp(
        chrono::Utc::now() - chrono::Duration::from_std(offset).unwrap(),
    ))
}

async fn terms_version_at(
    server: &TestServer,
    token: &str,
    agreement_id: &str,
    when: Option<ProtoTimestamp>,
) -> Result<i32, tonic::Status> {
    let request = pb::GetTermsInForceRequest {
        agreement_id: agreement_id.to_owned(),
        at_time: when,
    };
    let response = server
        .registry()
        .get_terms_in_force(authed(token, request))
        .await?;
    Ok(response.into_inner().terms_version.unwrap().version)
}

async fn a_hotel_and_a_rideshare_agree_amend_and_the_right_terms_apply(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let ((hotel, hotel_credentials), (ride, ride_credentials)) =
        hotel_and_rideshare(&server, &admin).await;
    assert_eq!(hotel.status, pb::PartnerStatus::Active as i32);
    let hotel_token = server.partner_token(&hotel_credentials).await;
    let ride_token = server.partner_token(&ride_credentials).await;

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
    assert_eq!(agreement.status, pb::AgreementStatus::Proposed as i32);
    let id = agreement.agreement_id.clone();
    let before_acceptance = terms_version_at(&server, &hotel_token, &id, None)
        .await
        .unwrap_err();
    assert_eq!(
        (
            before_acceptance.code(),
            reason(&before_acceptance).as_str()
        ),
        (Code::FailedPrecondition, "NO_TERMS_IN_FORCE")
    );

    // The proposer cannot accept its own terms; the target can.
    let own = server
        .registry()
        .accept_agreement(authed(
            &hotel_token,
            pb::AcceptAgreementRequest {
                agreement_id: id.clone(),
                terms_version: 1,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (own.code(), reason(&own).as_str()),
        (Code::FailedPrecondition, "OWN_PROPOSAL")
    );
    let accepted = server
        .registry()
        .accept_agreement(authed(
            &ride_token,
            pb::AcceptAgreementRequest {
                agreement_id: id.clone(),
                terms_version: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    assert_eq!(accepted.status, pb::AgreementStatus::Active as i32);

    // The rideshare proposes better terms from two hours on; the hotel accepts.
    let amendment = pb::AmendAgreementRequest {
        agreement_id: id.clone(),
        terms: Some(terms("0.3")),
        effective_time: at(2 * HOUR),
    };
    let amended = server
        .registry()
        .amend_agreement(authed(&ride_token, amendment))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    assert_eq!(
        amended.terms_versions[1].status,
        pb::TermsVersionStatus::Proposed as i32
    );
    assert_eq!(
        terms_version_at(&server, &hotel_token, &id, at(3 * HOUR))
            .await
            .unwrap(),
        1,
        "an amendment applies only once accepted"
    );
    server
        .registry()
        .accept_agreement(authed(
            &hotel_token,
            pb::AcceptAgreementRequest {
                agreement_id: id.clone(),
                terms_version: 2,
            },
        ))
        .await
        .unwrap();

    assert_eq!(
        terms_version_at(&server, &ride_token, &id, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        terms_version_at(&server, &ride_token, &id, at(HOUR))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        terms_version_at(&server, &ride_token, &id, at(3 * HOUR))
            .await
            .unwrap(),
        2
    );
    assert!(
        terms_version_at(&server, &ride_token, &id, before(HOUR))
            .await
            .is_err(),
        "nothing applied before acceptance"
    );

    // Either side ends it a day from now; after that no terms apply.
    let termination = pb::TerminateAgreementRequest {
        agreement_id: id.clone(),
        effective_time: at(24 * HOUR),
        reason: "season over".to_owned(),
    };
    let terminating = server
        .registry()
        .terminate_agreement(authed(&hotel_token, termination))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    assert_eq!(
        terminating.status,
        pb::AgreementStatus::Active as i32,
        "still active until the termination takes effect"
    );
    assert_eq!(
        terms_version_at(&server, &ride_token, &id, at(23 * HOUR))
            .await
            .unwrap(),
        2
    );
    assert!(
        terms_version_at(&server, &ride_token, &id, at(25 * HOUR))
            .await
            .is_err()
    );

    // Both sides, and ops, see the agreement with its whole history.
    for token in [
        &hotel_token,
        &ride_token,
        &server.staff_token(Role::Ops).await,
    ] {
        let seen = server
            .registry()
            .get_agreement(authed(
                token,
                pb::GetAgreementRequest {
                    agreement_id: id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .agreement
            .unwrap();
        assert_eq!(seen.terms_versions.len(), 2);
        assert_eq!(
            seen.terms_versions[0]
                .terms
                .as_ref()
                .unwrap()
                .conversion_rate,
            "0.25"
        );
        assert_eq!(
            seen.terms_versions[1]
                .terms
                .as_ref()
                .unwrap()
                .conversion_rate,
            "0.3"
        );
    }
    let listed = server
        .registry()
        .list_agreements(authed(&ride_token, pb::ListAgreementsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .agreements
            .iter()
            .map(|agreement| agreement.agreement_id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
}

async fn bad_input_names_each_field_and_writes_nothing(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let mut bad = create_partner_request("Not A Slug", PartnerCategory::Unspecified, "x");
    bad.settlement_currency = "ZZZ".to_owned();
    bad.gateway_endpoint = "ftp://gateway".to_owned();
    bad.program.as_mut().unwrap().scale = 9;
    let refused = server
        .registry()
        .create_partner(authed(&admin, bad))
        .await
        .unwrap_err();
    let mut fields = violated_fields(&refused);
    fields.sort();
    assert_eq!(
        fields,
        [
            "category",
            "code",
            "gateway_endpoint",
            "program.code",
            "program.scale",
            "settlement_currency"
        ]
    );
    let listed = server
        .registry()
        .list_partners(authed(&admin, pb::ListPartnersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.partners.is_empty(),
        "a rejected request writes nothing"
    );

    let ((hotel, hotel_credentials), (ride, _)) = hotel_and_rideshare(&server, &admin).await;
    let hotel_token = server.partner_token(&hotel_credentials).await;
    let mut bad_terms = terms("0");
    bad_terms.exchange_fee_basis_points = 20_000;
    bad_terms.minimum_source_points = -5;
    bad_terms.earn_rules = Some(pb::EarnRules {
        points_per_spend_unit: "2".to_owned(),
        spend_currency: "usd".to_owned(),
        hold_days: 400,
        ..Default::default()
    });
    let proposal = pb::ProposeAgreementRequest {
        source_partner_id: hotel.partner_id.clone(),
        target_partner_id: ride.partner_id.clone(),
        terms: Some(bad_terms),
        effective_time: None,
    };
    let refused = server
        .registry()
        .propose_agreement(authed(&hotel_token, proposal))
        .await
        .unwrap_err();
    let mut fields = violated_fields(&refused);
    fields.sort();
    assert_eq!(
        fields,
        [
            "terms.conversion_rate",
            "terms.earn_rules.spend_currency",
            "terms.exchange_fee_basis_points",
            "terms.minimum_source_points"
        ]
    );
    let listed = server
        .registry()
        .list_agreements(authed(&admin, pb::ListAgreementsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.agreements.is_empty(),
        "a rejected proposal writes nothing"
    );

    let bad_id = server
        .registry()
        .get_partner(authed(
            &admin,
            pb::GetPartnerRequest {
                partner_id: "42".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_id), ["partner_id"]);
    let bad_page = server
        .registry()
        .list_partners(authed(
            &admin,
            pb::ListPartnersRequest {
                page_token: "garbage".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_page), ["page_token"]);
    let missing = server
        .registry()
        .get_partner(authed(
            &admin,
            pb::GetPartnerRequest {
                partner_id: "01a20560-0000-7000-8000-000000000000".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "PARTNER_NOT_FOUND")
    );
}

async fn duplicates_competitors_and_suspended_partners_are_refused(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let ((hotel, hotel_credentials), (ride, ride_credentials)) =
        hotel_and_rideshare(&server, &admin).await;
    let (other_hotel, _) = create_partner(
        &server,
        &admin,
        "harbor-inns",
        PartnerCategory::Hotel,
        "HARBOR_PTS",
    )
    .await;
    let hotel_token = server.partner_token(&hotel_credentials).await;
    let ride_token = server.partner_token(&ride_credentials).await;

    let duplicate = server
        .registry()
        .create_partner(authed(
            &admin,
            create_partner_request("skyline-hotels", PartnerCategory::Airline, "NEW_PTS"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (duplicate.code(), reason(&duplicate).as_str()),
        (Code::AlreadyExists, "PARTNER_CODE_TAKEN")
    );

    let propose = |target: &pb::Partner| pb::ProposeAgreementRequest {
        source_partner_id: hotel.partner_id.clone(),
        target_partner_id: target.partner_id.clone(),
        terms: Some(terms("0.25")),
        effective_time: None,
    };
    let competitors = server
        .registry()
        .propose_agreement(authed(&hotel_token, propose(&other_hotel)))
        .await
        .unwrap_err();
    assert_eq!(
        (competitors.code(), reason(&competitors).as_str()),
        (Code::FailedPrecondition, "SAME_CATEGORY")
    );

    let agreement = server
        .registry()
        .propose_agreement(authed(&hotel_token, propose(&ride)))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    let again = server
        .registry()
        .propose_agreement(authed(&hotel_token, propose(&ride)))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::AlreadyExists, "AGREEMENT_EXISTS")
    );

    let suspend = pb::SuspendPartnerRequest {
        partner_id: ride.partner_id.clone(),
        reason: "compliance review".to_owned(),
    };
    let suspended = server
        .registry()
        .suspend_partner(authed(&admin, suspend))
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap();
    assert_eq!(suspended.status, pb::PartnerStatus::Suspended as i32);
    let accept = || pb::AcceptAgreementRequest {
        agreement_id: agreement.agreement_id.clone(),
        terms_version: 1,
    };
    let while_suspended = server
        .registry()
        .accept_agreement(authed(&ride_token, accept()))
        .await
        .unwrap_err();
    assert_eq!(
        (while_suspended.code(), reason(&while_suspended).as_str()),
        (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE")
    );

    let reactivate = pb::ReactivatePartnerRequest {
        partner_id: ride.partner_id.clone(),
        reason: "review passed".to_owned(),
    };
    server
        .registry()
        .reactivate_partner(authed(&admin, reactivate))
        .await
        .unwrap();
    let accepted = server
        .registry()
        .accept_agreement(authed(&ride_token, accept()))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    assert_eq!(accepted.status, pb::AgreementStatus::Active as i32);
}

async fn credentials_rotate_and_offboarding_ends_everything(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let ((hotel, old_credentials), (ride, ride_credentials)) =
        hotel_and_rideshare(&server, &admin).await;
    let hotel_token = server.partner_token(&old_credentials).await;

    let rotated = server
        .registry()
        .rotate_partner_credentials(authed(
            &hotel_token,
            pb::RotatePartnerCredentialsRequest {
                partner_id: hotel.partner_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    let old = server
        .auth()
        .issue_token(pb::IssueTokenRequest {
            client_id: old_credentials.client_id.clone(),
            client_secret: old_credentials.client_secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (old.code(), reason(&old).as_str()),
        (Code::Unauthenticated, "INVALID_CLIENT_CREDENTIALS")
    );
    let hotel_token = server.partner_token(&rotated).await;

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
    let ride_token = server.partner_token(&ride_credentials).await;
    server
        .registry()
        .accept_agreement(authed(
            &ride_token,
            pb::AcceptAgreementRequest {
                agreement_id: agreement.agreement_id.clone(),
                terms_version: 1,
            },
        ))
        .await
        .unwrap();

    let offboard = pb::OffboardPartnerRequest {
        partner_id: hotel.partner_id.clone(),
        reason: "left the coalition".to_owned(),
    };
    let offboarded = server
        .registry()
        .offboard_partner(authed(&admin, offboard))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offboarded.terminated_agreements, 1);
    assert_eq!(
        offboarded.partner.unwrap().status,
        pb::PartnerStatus::Offboarded as i32
    );
    let after = server
        .auth()
        .issue_token(pb::IssueTokenRequest {
            client_id: rotated.client_id.clone(),
            client_secret: rotated.client_secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);
    // A token issued before the offboarding, still unexpired, stops working at once.
    let barred = server
        .registry()
        .get_partner(authed(
            &hotel_token,
            pb::GetPartnerRequest {
                partner_id: hotel.partner_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (barred.code(), helpers::reason(&barred).as_str()),
        (Code::Unauthenticated, "PARTNER_OFFBOARDED")
    );
    let ended = server
        .registry()
        .get_agreement(authed(
            &ride_token,
            pb::GetAgreementRequest {
                agreement_id: agreement.agreement_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .agreement
        .unwrap();
    assert_eq!(ended.status, pb::AgreementStatus::Terminated as i32);
    assert!(ended.termination_reason.contains("left the coalition"));
}

async fn partners_page_newest_first(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let categories = [
        PartnerCategory::Hotel,
        PartnerCategory::Rideshare,
        PartnerCategory::Airline,
        PartnerCategory::Dining,
    ];
    let mut created = Vec::new();
    for (index, category) in categories.iter().cycle().take(5).enumerate() {
        let (partner, _) = create_partner(
            &server,
            &admin,
            &format!("brand-{index}"),
            *category,
            &format!("BRAND_{index}"),
        )
        .await;
        created.push(partner.partner_id);
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let request = pb::ListPartnersRequest {
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = server
            .registry()
            .list_partners(authed(&admin, request))
            .await
            .unwrap()
            .into_inner();
        assert!(page.partners.len() <= 2);
        seen.extend(page.partners.into_iter().map(|partner| partner.partner_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created);
    let hotels = pb::ListPartnersRequest {
        category: PartnerCategory::Hotel.into(),
        ..Default::default()
    };
    assert_eq!(
        server
            .registry()
            .list_partners(authed(&admin, hotels))
            .await
            .unwrap()
            .into_inner()
            .partners
            .len(),
        2
    );
}

/// Tandem behind a balancer: a partner offboarded through one process is refused by every other
/// process on the same registry within a second or so, whatever its tokens have left to run.
async fn an_offboarding_bars_the_partner_in_every_process(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let ((hotel, credentials), _) = hotel_and_rideshare(&server, &admin).await;
    let hotel_token = server.partner_token(&credentials).await;
    let other = server.another_process().await;
    let read_itself = || {
        let mut registry = other.registry();
        let request = authed(
            &hotel_token,
            pb::GetPartnerRequest {
                partner_id: hotel.partner_id.clone(),
            },
        );
        async move { registry.get_partner(request).await }
    };
    read_itself()
        .await
        .expect("the other process serves the partner before it leaves");

    server
        .registry()
        .offboard_partner(authed(
            &admin,
            pb::OffboardPartnerRequest {
                partner_id: hotel.partner_id.clone(),
                reason: "the pilot ended".to_owned(),
            },
        ))
        .await
        .expect("offboard the hotel");

    let refused = helpers::eventually(
        Duration::from_secs(10),
        "the other process to refuse the offboarded partner's token",
        || async { read_itself().await.err() },
    )
    .await;
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "PARTNER_OFFBOARDED")
    );
}

on_every_backend!(
    an_offboarding_bars_the_partner_in_every_process,
    a_hotel_and_a_rideshare_agree_amend_and_the_right_terms_apply,
    bad_input_names_each_field_and_writes_nothing,
    duplicates_competitors_and_suspended_partners_are_refused,
    credentials_rotate_and_offboarding_ends_everything,
    partners_page_newest_first,
);
