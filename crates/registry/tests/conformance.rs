//! The registry's storage conformance suite: every test runs on SQLite and, when
//! `TANDEM_TEST_DATABASE_URL` is set, on a fresh PostgreSQL database, through the same code.

use tandem_auth::{Caller, CredentialVerifier, Role};
use tandem_domain::{
    AgreementStatus, BasisPoints, Category, PartnerCode, PartnerId, PartnerStatus, Points, Program,
    ProgramCode, Reason, Scale, Terms, TermsVersionStatus, Text,
};
use tandem_registry::{
    AgreementFilter, MIGRATOR, NewPartner, PageRequest, Registry, RegistryError, StatusChange,
};
use tandem_storage::{Database, testing::TestDatabase};

async fn registry(database: &TestDatabase) -> Registry {
    Registry::new(
        Database::open(database.location(), "registry", &MIGRATOR)
            .await
            .expect("open the registry database"),
    )
}

fn admin() -> Caller {
    Caller::staff(Role::Admin, "admin").unwrap()
}

fn new_partner(code: &str, category: Category) -> NewPartner {
    NewPartner {
        code: PartnerCode::parse(code).unwrap(),
        display_name: Text::parse(&format!("{code} brand")).unwrap(),
        category,
        program: Program {
            code: ProgramCode::parse(&code.to_uppercase().replace('-', "_")).unwrap(),
            name: Text::parse("points").unwrap(),
            scale: Scale::new(0).unwrap(),
        },
        settlement_currency: "USD".parse().unwrap(),
        gateway_endpoint: None,
    }
}

fn terms(rate: &str) -> Terms {
    Terms::new(
        rate.parse().unwrap(),
        Points::positive(1000).unwrap(),
        Points::positive(100).unwrap(),
        None,
        None,
        "0.01".parse().unwrap(),
        BasisPoints::new(100).unwrap(),
        None,
    )
    .unwrap()
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

async fn partners_are_stored_and_unique_by_code_and_program(database: TestDatabase) {
    let registry = registry(&database).await;
    let (hotel, credentials) = registry
        .create_partner(&admin(), new_partner("skyline", Category::Hotel))
        .await
        .unwrap();
    assert_eq!(
        registry.get_partner(&admin(), hotel.id).await.unwrap(),
        hotel
    );

    let mut same_code = new_partner("skyline", Category::Rideshare);
    same_code.program.code = ProgramCode::parse("OTHER_PTS").unwrap();
    let duplicate_code = registry
        .create_partner(&admin(), same_code)
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate_code, RegistryError::PartnerCodeTaken(_)),
        "{duplicate_code:?}"
    );
    let mut same_program = new_partner("zoom", Category::Rideshare);
    same_program.program.code = hotel.program.code.clone();
    let duplicate_program = registry
        .create_partner(&admin(), same_program)
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate_program, RegistryError::ProgramCodeTaken(_)),
        "{duplicate_program:?}"
    );

    assert_eq!(
        registry
            .partner_for_credentials(&credentials.client_id, &credentials.client_secret)
            .await
            .unwrap(),
        Some(hotel.id)
    );
    assert_eq!(
        registry
            .partner_for_credentials(&credentials.client_id, "ts_wrong")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        registry
            .partner_for_credentials("tc_unknown", &credentials.client_secret)
            .await
            .unwrap(),
        None
    );
}

async fn listing_pages_through_every_partner_once_with_filters(database: TestDatabase) {
    let registry = registry(&database).await;
    let categories = [Category::Hotel, Category::Rideshare, Category::Airline];
    let mut created = Vec::new();
    for index in 0..7 {
        let (partner, _) = registry
            .create_partner(
                &admin(),
                new_partner(&format!("brand-{index}"), categories[index % 3]),
            )
            .await
            .unwrap();
        created.push(partner.id);
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::parse(3, "").unwrap();
    loop {
        let (partners, next) = registry
            .list_partners(&admin(), None, None, &page)
            .await
            .unwrap();
        assert!(partners.len() <= 3);
        seen.extend(partners.iter().map(|partner| partner.id));
        match next {
            Some(cursor) => page = PageRequest::parse(3, &cursor.encode()).unwrap(),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each exactly once");

    let (hotels, _) = registry
        .list_partners(
            &admin(),
            None,
            Some(Category::Hotel),
            &PageRequest::parse(0, "").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(hotels.len(), 3);
    registry
        .change_status(&admin(), created[0], StatusChange::Suspend, reason("audit"))
        .await
        .unwrap();
    let (suspended, _) = registry
        .list_partners(
            &admin(),
            Some(PartnerStatus::Suspended),
            None,
            &PageRequest::parse(0, "").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        suspended
            .iter()
            .map(|partner| partner.id)
            .collect::<Vec<_>>(),
        [created[0]]
    );
}

async fn agreements_keep_every_version_and_one_live_agreement_per_direction(
    database: TestDatabase,
) {
    let registry = registry(&database).await;
    let (hotel, _) = registry
        .create_partner(&admin(), new_partner("skyline", Category::Hotel))
        .await
        .unwrap();
    let (ride, _) = registry
        .create_partner(&admin(), new_partner("zoom", Category::Rideshare))
        .await
        .unwrap();
    let hotel_caller = Caller::partner(hotel.id, "hotel");
    let ride_caller = Caller::partner(ride.id, "ride");

    let proposed = registry
        .propose_agreement(&hotel_caller, hotel.id, ride.id, terms("0.25"), None)
        .await
        .unwrap();
    let again = registry
        .propose_agreement(&hotel_caller, hotel.id, ride.id, terms("0.3"), None)
        .await
        .unwrap_err();
    assert!(matches!(again, RegistryError::AgreementExists), "{again:?}");
    // The other direction is a different agreement.
    registry
        .propose_agreement(&ride_caller, ride.id, hotel.id, terms("4"), None)
        .await
        .unwrap();

    registry
        .accept_agreement(&ride_caller, proposed.id, 1)
        .await
        .unwrap();
    registry
        .amend_agreement(&ride_caller, proposed.id, terms("0.2"), None)
        .await
        .unwrap();
    registry
        .accept_agreement(&hotel_caller, proposed.id, 2)
        .await
        .unwrap();
    let stored = registry
        .get_agreement(&hotel_caller, proposed.id)
        .await
        .unwrap();
    assert_eq!(stored.versions.len(), 2);
    assert_eq!(stored.versions[1].status, TermsVersionStatus::Accepted);
    assert_eq!(stored.versions[1].terms, terms("0.2"));
    assert_eq!(
        stored.versions[0].terms,
        terms("0.25"),
        "earlier versions are kept as they were"
    );
    assert_eq!(
        registry
            .terms_in_force(&ride_caller, proposed.id, None)
            .await
            .unwrap()
            .version,
        2
    );

    registry
        .terminate_agreement(&hotel_caller, proposed.id, None, reason("ending"))
        .await
        .unwrap();
    let ended = registry.get_agreement(&admin(), proposed.id).await.unwrap();
    assert_eq!(
        ended.status_at(chrono::Utc::now()),
        AgreementStatus::Terminated
    );
    // Once terminated, the same direction may be agreed afresh.
    registry
        .propose_agreement(&hotel_caller, hotel.id, ride.id, terms("0.3"), None)
        .await
        .unwrap();

    let filter = AgreementFilter {
        party: None,
        status: Some(AgreementStatus::Terminated),
    };
    let (terminated, _) = registry
        .list_agreements(&admin(), filter, &PageRequest::parse(0, "").unwrap())
        .await
        .unwrap();
    assert_eq!(
        terminated
            .iter()
            .map(|agreement| agreement.id)
            .collect::<Vec<_>>(),
        [proposed.id]
    );
}

async fn concurrent_acceptances_apply_once(database: TestDatabase) {
    let registry = registry(&database).await;
    let (hotel, _) = registry
        .create_partner(&admin(), new_partner("skyline", Category::Hotel))
        .await
        .unwrap();
    let (ride, _) = registry
        .create_partner(&admin(), new_partner("zoom", Category::Rideshare))
        .await
        .unwrap();
    let proposed = registry
        .propose_agreement(
            &Caller::partner(hotel.id, "hotel"),
            hotel.id,
            ride.id,
            terms("0.25"),
            None,
        )
        .await
        .unwrap();
    let ride_caller = Caller::partner(ride.id, "ride");
    let attempts = (0..6).map(|_| registry.accept_agreement(&ride_caller, proposed.id, 1));
    // Polled together, so every acceptance reads the agreement before any of them commits.
    let outcomes = futures::future::join_all(attempts).await;
    let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(accepted, 1, "exactly one acceptance wins: {outcomes:?}");
    for outcome in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert!(
            matches!(
                outcome,
                RegistryError::AgreementRule(_) | RegistryError::Conflict
            ),
            "{outcome:?}"
        );
    }
    let stored = registry
        .get_agreement(&ride_caller, proposed.id)
        .await
        .unwrap();
    assert_eq!(stored.revision, 1, "one change stored");
}

async fn offboarding_revokes_credentials_and_ends_agreements_together(database: TestDatabase) {
    let registry = registry(&database).await;
    let (hotel, credentials) = registry
        .create_partner(&admin(), new_partner("skyline", Category::Hotel))
        .await
        .unwrap();
    let (ride, _) = registry
        .create_partner(&admin(), new_partner("zoom", Category::Rideshare))
        .await
        .unwrap();
    let agreement = registry
        .propose_agreement(
            &Caller::partner(hotel.id, "hotel"),
            hotel.id,
            ride.id,
            terms("0.25"),
            None,
        )
        .await
        .unwrap();
    registry
        .accept_agreement(&Caller::partner(ride.id, "ride"), agreement.id, 1)
        .await
        .unwrap();

    let (offboarded, terminated) = registry
        .change_status(&admin(), hotel.id, StatusChange::Offboard, reason("left"))
        .await
        .unwrap();
    assert_eq!(offboarded.status, PartnerStatus::Offboarded);
    assert_eq!(terminated, 1);
    assert_eq!(
        registry
            .partner_for_credentials(&credentials.client_id, &credentials.client_secret)
            .await
            .unwrap(),
        None
    );
    let ended = registry
        .get_agreement(&admin(), agreement.id)
        .await
        .unwrap();
    assert_eq!(
        ended.status_at(chrono::Utc::now()),
        AgreementStatus::Terminated
    );
    assert!(
        registry
            .change_status(&admin(), hotel.id, StatusChange::Reactivate, reason("oops"))
            .await
            .is_err()
    );
    assert!(matches!(
        registry.get_partner(&admin(), PartnerId::generate()).await,
        Err(RegistryError::PartnerNotFound(_))
    ));
}

async fn rotation_replaces_the_secret(database: TestDatabase) {
    let registry = registry(&database).await;
    let (hotel, old) = registry
        .create_partner(&admin(), new_partner("skyline", Category::Hotel))
        .await
        .unwrap();
    let new = registry
        .rotate_credentials(&Caller::partner(hotel.id, "hotel"), hotel.id)
        .await
        .unwrap();
    assert_eq!(
        registry
            .partner_for_credentials(&old.client_id, &old.client_secret)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        registry
            .partner_for_credentials(&new.client_id, &new.client_secret)
            .await
            .unwrap(),
        Some(hotel.id)
    );
}

tandem_storage::on_every_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)];
    partners_are_stored_and_unique_by_code_and_program,
    listing_pages_through_every_partner_once_with_filters,
    agreements_keep_every_version_and_one_live_agreement_per_direction,
    concurrent_acceptances_apply_once,
    offboarding_revokes_credentials_and_ends_agreements_together,
    rotation_replaces_the_secret,
);
