//! Account linking end to end through the real server: a hotel member links to a rideshare
//! member with a code; each side sees only its own member id; unlink and re-link; wrong, used,
//! expired and locked codes; agreements and partner status; the one-link rules; forgetting a
//! member; two simultaneous completions with one code; and many links read at once.

mod helpers;

use std::time::Duration;

use helpers::{TestServer, agree, authed, create_partner, hotel_and_rideshare, reason, terms};
use tandem_auth::Role;
use tandem_proto::v1::{
    self as pb, PartnerCategory, account_linking_service_client::AccountLinkingServiceClient,
};
use tandem_storage::testing::TestDatabase;
use tonic::{Code, transport::Channel};

/// A hotel and a rideshare with an ACTIVE agreement, and a second hotel agreed with the rideshare.
struct Coalition {
    server: TestServer,
    hotel: String,
    hotel_token: String,
    ride: String,
    ride_token: String,
    harbor: String,
    harbor_token: String,
}

impl Coalition {
    async fn new(server: TestServer) -> Self {
        let admin = server.staff_token(Role::Admin).await;
        let ((hotel, hotel_credentials), (ride, ride_credentials)) =
            hotel_and_rideshare(&server, &admin).await;
        let (harbor, harbor_credentials) = create_partner(
            &server,
            &admin,
            "harbor-inns",
            PartnerCategory::Hotel,
            "HARBOR_PTS",
        )
        .await;
        let hotel_token = server.partner_token(&hotel_credentials).await;
        let ride_token = server.partner_token(&ride_credentials).await;
        let harbor_token = server.partner_token(&harbor_credentials).await;
        agree(
            &server,
            (&hotel.partner_id, &hotel_token),
            (&ride.partner_id, &ride_token),
            terms("0.25"),
        )
        .await;
        // The other direction, to show either direction counts.
        agree(
            &server,
            (&ride.partner_id, &ride_token),
            (&harbor.partner_id, &harbor_token),
            terms("0.25"),
        )
        .await;
        Self {
            server,
            hotel: hotel.partner_id,
            hotel_token,
            ride: ride.partner_id,
            ride_token,
            harbor: harbor.partner_id,
            harbor_token,
        }
    }

    fn linking(&self) -> AccountLinkingServiceClient<Channel> {
        AccountLinkingServiceClient::new(self.server.channel.clone())
    }

    async fn start(
        &self,
        (partner, token): (&str, &str),
        member: &str,
        target: &str,
    ) -> Result<String, tonic::Status> {
        let request = pb::StartLinkRequest {
            partner_id: partner.to_owned(),
            member_id: member.to_owned(),
            target_partner_id: target.to_owned(),
        };
        Ok(self
            .linking()
            .start_link(authed(token, request))
            .await?
            .into_inner()
            .code)
    }

    async fn complete(
        &self,
        (partner, token): (&str, &str),
        member: &str,
        code: &str,
    ) -> Result<pb::Link, tonic::Status> {
        let request = pb::CompleteLinkRequest {
            partner_id: partner.to_owned(),
            member_id: member.to_owned(),
            code: code.to_owned(),
        };
        Ok(self
            .linking()
            .complete_link(authed(token, request))
            .await?
            .into_inner()
            .link
            .unwrap())
    }

    async fn get(&self, token: &str, link_id: &str) -> pb::Link {
        self.linking()
            .get_link(authed(
                token,
                pb::GetLinkRequest {
                    link_id: link_id.to_owned(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .link
            .unwrap()
    }

    fn hotel(&self) -> (&str, &str) {
        (&self.hotel, &self.hotel_token)
    }
    fn ride(&self) -> (&str, &str) {
        (&self.ride, &self.ride_token)
    }
    fn harbor(&self) -> (&str, &str) {
        (&self.harbor, &self.harbor_token)
    }
}

fn code_of(status: &tonic::Status) -> (Code, String) {
    (status.code(), reason(status))
}

async fn each_side_sees_only_its_own_member_and_links_can_end_and_return(server: TestServer) {
    let world = Coalition::new(server).await;
    let code = world
        .start(world.hotel(), "H-1001", &world.ride)
        .await
        .unwrap();
    // The customer types it in lower case with a space; it still works, once.
    let typed = code.to_lowercase().replace('-', " ");
    let link = world.complete(world.ride(), "R-77", &typed).await.unwrap();
    assert_eq!(link.status, pb::LinkStatus::Active as i32);
    assert_eq!(link.acceptor.as_ref().unwrap().member_id, "R-77");
    assert_eq!(
        link.initiator.as_ref().unwrap().member_id,
        "",
        "the rideshare never sees the hotel's member id"
    );
    let reused = world
        .complete(world.ride(), "R-78", &code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&reused),
        (Code::FailedPrecondition, "LINK_CODE_USED".to_owned())
    );

    let seen_by_hotel = world.get(&world.hotel_token, &link.link_id).await;
    assert_eq!(
        seen_by_hotel.initiator.as_ref().unwrap().member_id,
        "H-1001"
    );
    assert_eq!(
        seen_by_hotel.acceptor.as_ref().unwrap().member_id,
        "",
        "the hotel never sees the rideshare's member id"
    );
    assert_eq!(
        seen_by_hotel.acceptor.as_ref().unwrap().partner_id,
        world.ride
    );
    let seen_by_ops = world
        .get(&world.server.staff_token(Role::Ops).await, &link.link_id)
        .await;
    assert_eq!(
        (
            seen_by_ops.initiator.unwrap().member_id,
            seen_by_ops.acceptor.unwrap().member_id
        ),
        ("H-1001".to_owned(), "R-77".to_owned())
    );
    let outsider = world
        .linking()
        .get_link(authed(
            &world.harbor_token,
            pb::GetLinkRequest {
                link_id: link.link_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(outsider.code(), Code::PermissionDenied);

    // Unlinked from the rideshare's side, with a reason; then linked again as a new link.
    let unlink = pb::UnlinkRequest {
        link_id: link.link_id.clone(),
        reason: "customer asked".to_owned(),
    };
    let ended = world
        .linking()
        .unlink(authed(&world.ride_token, unlink.clone()))
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap();
    assert_eq!(ended.status, pb::LinkStatus::Ended as i32);
    let kinds: Vec<&str> = ended
        .events
        .iter()
        .map(|event| event.kind.as_str())
        .collect();
    assert_eq!(kinds, ["STARTED", "COMPLETED", "UNLINKED"]);
    assert_eq!(ended.events[2].reason, "customer asked");
    // Who started it, and when: the hotel's client, before the rideshare completed it.
    assert!(
        ended.events[0].actor.starts_with("tc_"),
        "{:?}",
        ended.events[0]
    );
    assert_eq!(ended.events[0].actor_partner_id, world.hotel);
    assert!(
        ended.events[0].event_time.as_ref().unwrap().seconds
            <= ended.events[1].event_time.as_ref().unwrap().seconds
    );
    let again = world
        .linking()
        .unlink(authed(&world.hotel_token, unlink))
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&again),
        (Code::FailedPrecondition, "LINK_ENDED".to_owned())
    );

    let code = world
        .start(world.hotel(), "H-1001", &world.ride)
        .await
        .unwrap();
    let relinked = world.complete(world.ride(), "R-77", &code).await.unwrap();
    assert_ne!(relinked.link_id, link.link_id);
    let list = pb::ListLinksRequest {
        member_id: "H-1001".to_owned(),
        ..Default::default()
    };
    let history = world
        .linking()
        .list_links(authed(&world.hotel_token, list))
        .await
        .unwrap()
        .into_inner()
        .links;
    assert_eq!(history.len(), 2, "the ended link stays in the history");
    let first = pb::ListLinksRequest {
        member_id: "H-1001".to_owned(),
        page_size: 1,
        ..Default::default()
    };
    let first = world
        .linking()
        .list_links(authed(&world.hotel_token, first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.links[0].link_id, relinked.link_id, "newest first");
    let second = pb::ListLinksRequest {
        member_id: "H-1001".to_owned(),
        page_size: 1,
        page_token: first.next_page_token,
        ..Default::default()
    };
    let second = world
        .linking()
        .list_links(authed(&world.hotel_token, second))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            second.links[0].link_id.as_str(),
            second.next_page_token.as_str()
        ),
        (link.link_id.as_str(), "")
    );
    // The hotel ends the new one from its side.
    world
        .linking()
        .unlink(authed(
            &world.hotel_token,
            pb::UnlinkRequest {
                link_id: relinked.link_id,
                reason: "moved".to_owned(),
            },
        ))
        .await
        .unwrap();
}

async fn wrong_codes_count_and_lock_the_request(server: TestServer) {
    let world = Coalition::new(server).await;
    let code = world
        .start(world.hotel(), "H-2002", &world.ride)
        .await
        .unwrap();
    let handle = &code[..4];
    let unknown = world
        .complete(world.ride(), "R-1", "ZZZZ-ZZZZZZ")
        .await
        .unwrap_err();
    assert_eq!(code_of(&unknown).1, "LINK_CODE_NOT_FOUND");
    // The right code, but presented by a partner it was not meant for.
    let elsewhere = world
        .complete(world.harbor(), "X-1", &code)
        .await
        .unwrap_err();
    assert_eq!(code_of(&elsewhere).1, "LINK_CODE_NOT_FOUND");
    for attempt in 1..tandem_linking::MAX_FAILED_ATTEMPTS {
        let wrong = world
            .complete(world.ride(), "R-1", &format!("{handle}-222222"))
            .await
            .unwrap_err();
        assert_eq!(
            code_of(&wrong),
            (Code::PermissionDenied, "LINK_CODE_WRONG".to_owned()),
            "attempt {attempt}"
        );
    }
    let locking = world
        .complete(world.ride(), "R-1", &format!("{handle}-222222"))
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&locking),
        (Code::ResourceExhausted, "LINK_REQUEST_LOCKED".to_owned())
    );
    let too_late = world
        .complete(world.ride(), "R-1", &code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&too_late),
        (Code::ResourceExhausted, "LINK_REQUEST_LOCKED".to_owned()),
        "even the right code fails once locked"
    );
    let malformed = world
        .complete(world.ride(), "R-1", "not a code")
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

async fn links_need_an_agreement_and_active_partners(server: TestServer) {
    let world = Coalition::new(server).await;
    // The two hotels have no agreement with each other.
    let none = world
        .start(world.hotel(), "H-1", &world.harbor)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&none),
        (Code::FailedPrecondition, "NO_ACTIVE_AGREEMENT".to_owned())
    );
    // The rideshare–harbor agreement runs from the rideshare; linking works from either side.
    let code = world
        .start(world.harbor(), "HB-1", &world.ride)
        .await
        .unwrap();
    world.complete(world.ride(), "R-5", &code).await.unwrap();

    let admin = world.server.staff_token(Role::Admin).await;
    let pending_code = world
        .start(world.hotel(), "H-3", &world.ride)
        .await
        .unwrap();
    world
        .server
        .registry()
        .suspend_partner(authed(
            &admin,
            pb::SuspendPartnerRequest {
                partner_id: world.ride.clone(),
                reason: "review".to_owned(),
            },
        ))
        .await
        .unwrap();
    let suspended = world
        .start(world.hotel(), "H-4", &world.ride)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&suspended),
        (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE".to_owned())
    );
    let while_suspended = world
        .complete(world.ride(), "R-9", &pending_code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&while_suspended),
        (Code::FailedPrecondition, "PARTNER_NOT_ACTIVE".to_owned())
    );
    // Another partner's member cannot be linked by this partner.
    let impostor = pb::StartLinkRequest {
        partner_id: world.ride.clone(),
        member_id: "R-1".to_owned(),
        target_partner_id: world.hotel.clone(),
    };
    assert_eq!(
        world
            .linking()
            .start_link(authed(&world.hotel_token, impostor))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

async fn one_link_per_partner_and_one_partner_per_category(server: TestServer) {
    let world = Coalition::new(server).await;
    let code = world
        .start(world.hotel(), "H-1", &world.ride)
        .await
        .unwrap();
    world.complete(world.ride(), "R-1", &code).await.unwrap();
    // The same hotel member, a second rideshare account: refused by the default rule.
    let code = world
        .start(world.hotel(), "H-1", &world.ride)
        .await
        .unwrap();
    let second = world
        .complete(world.ride(), "R-2", &code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&second),
        (Code::FailedPrecondition, "ALREADY_LINKED".to_owned())
    );

    // The rideshare allows one hotel partner per rider; R-1 already has Skyline.
    let policy = pb::LinkPolicy {
        partner_id: world.ride.clone(),
        allow_multiple_accounts_per_partner: false,
        exclusive_categories: vec![PartnerCategory::Hotel.into()],
    };
    world
        .linking()
        .set_link_policy(authed(
            &world.ride_token,
            pb::SetLinkPolicyRequest {
                policy: Some(policy),
            },
        ))
        .await
        .unwrap();
    let code = world
        .start(world.harbor(), "HB-1", &world.ride)
        .await
        .unwrap();
    let other_hotel = world
        .complete(world.ride(), "R-1", &code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&other_hotel),
        (
            Code::FailedPrecondition,
            "CATEGORY_ALREADY_LINKED".to_owned()
        )
    );
    // A rider without a hotel link may link Harbor.
    let code = world
        .start(world.harbor(), "HB-2", &world.ride)
        .await
        .unwrap();
    world.complete(world.ride(), "R-3", &code).await.unwrap();
    let read = world
        .linking()
        .get_link_policy(authed(
            &world.hotel_token,
            pb::GetLinkPolicyRequest {
                partner_id: world.ride.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        read.code(),
        Code::PermissionDenied,
        "a partner's rules are its own"
    );
}

async fn forgetting_a_member_leaves_no_readable_member_id(server: TestServer) {
    let world = Coalition::new(server).await;
    let code = world
        .start(world.hotel(), "H-SECRET-9", &world.ride)
        .await
        .unwrap();
    let link = world.complete(world.ride(), "R-1", &code).await.unwrap();
    let forget = pb::ForgetMemberRequest {
        partner_id: world.hotel.clone(),
        member_id: "H-SECRET-9".to_owned(),
    };
    let forgotten = world
        .linking()
        .forget_member(authed(&world.hotel_token, forget))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgotten.ended_links, 1);
    assert!(forgotten.pseudonymized_records >= 2);

    let ops = world.server.staff_token(Role::Ops).await;
    let seen = world.get(&ops, &link.link_id).await;
    assert_eq!(seen.status, pb::LinkStatus::Ended as i32);
    let member = seen.initiator.unwrap().member_id;
    assert!(
        member.starts_with("forgotten-") && !member.contains("SECRET"),
        "{member}"
    );
    assert_eq!(
        seen.acceptor.unwrap().member_id,
        "R-1",
        "the other brand's records keep their integrity"
    );
    assert_eq!(seen.events.last().unwrap().kind, "FORGOTTEN");
    let search = pb::ListLinksRequest {
        partner_id: world.hotel.clone(),
        member_id: "H-SECRET-9".to_owned(),
        ..Default::default()
    };
    assert!(
        world
            .linking()
            .list_links(authed(&ops, search))
            .await
            .unwrap()
            .into_inner()
            .links
            .is_empty()
    );
}

async fn two_simultaneous_completions_make_one_link(server: TestServer) {
    let world = Coalition::new(server).await;
    let code = world
        .start(world.hotel(), "H-1", &world.ride)
        .await
        .unwrap();
    let attempts = (0..4).map(|index| {
        let world = &world;
        let code = code.clone();
        async move {
            world
                .complete(world.ride(), &format!("R-{index}"), &code)
                .await
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    assert_eq!(
        outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    for failure in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(code_of(failure).1, "LINK_CODE_USED");
    }
    let links = world
        .linking()
        .list_links(authed(&world.hotel_token, pb::ListLinksRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .links;
    assert_eq!(links.len(), 1);
}

async fn codes_expire(database: TestDatabase) {
    let server = TestServer::start_on(database, &["--link-code-ttl", "1s"]).await;
    let world = Coalition::new(server).await;
    let request = pb::StartLinkRequest {
        partner_id: world.hotel.clone(),
        member_id: "H-1".to_owned(),
        target_partner_id: world.ride.clone(),
    };
    let started = world
        .linking()
        .start_link(authed(&world.hotel_token, request))
        .await
        .unwrap()
        .into_inner();
    let expires_at = tandem_proto::time::datetime(started.expire_time.as_ref().unwrap()).unwrap();
    // Server and test share this machine's clock: wait until the code's expiry has passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while chrono::Utc::now() <= expires_at {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not reach the code's expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired = world
        .complete(world.ride(), "R-1", &started.code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&expired),
        (Code::FailedPrecondition, "LINK_CODE_EXPIRED".to_owned())
    );
}

async fn the_members_own_brand_must_vouch_for_them(server: TestServer) {
    let world = Coalition::new(server).await;
    // The rideshare's loyalty program: the reference partner, which accepts only calls signed
    // with Tandem's published keys, so a completed link also proves Tandem's token was valid.
    let gateway = helpers::Simulator::start(&world.server).await;
    gateway.put_member("R-7", 0, true).await;
    gateway.put_member("BANNED-7", 0, false).await;
    let address = gateway.address.clone();
    let update = pb::UpdatePartnerRequest {
        partner_id: world.ride.clone(),
        display_name: None,
        gateway_endpoint: Some(format!("http://{address}")),
    };
    world
        .server
        .registry()
        .update_partner(authed(&world.ride_token, update))
        .await
        .unwrap();

    let code = world
        .start(world.hotel(), "H-1", &world.ride)
        .await
        .unwrap();
    let unknown = world
        .complete(world.ride(), "R-NOBODY", &code)
        .await
        .unwrap_err();
    assert_eq!(code_of(&unknown).1, "MEMBER_NOT_ELIGIBLE");
    let blocked = world
        .complete(world.ride(), "BANNED-7", &code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&blocked),
        (Code::FailedPrecondition, "MEMBER_NOT_ELIGIBLE".to_owned())
    );
    world
        .complete(world.ride(), "R-7", &code)
        .await
        .expect("a member in good standing links with the same code");
    // A gateway that does not answer: the link is not made, and the caller may retry later.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let update = pb::UpdatePartnerRequest {
        partner_id: world.ride.clone(),
        display_name: None,
        gateway_endpoint: Some(format!("http://{closed}")),
    };
    world
        .server
        .registry()
        .update_partner(authed(&world.ride_token, update))
        .await
        .unwrap();
    let code = world
        .start(world.hotel(), "H-2", &world.ride)
        .await
        .unwrap();
    let down = world
        .complete(world.ride(), "R-8", &code)
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&down),
        (Code::Unavailable, "GATEWAY_UNAVAILABLE".to_owned())
    );
}

#[tokio::test]
async fn codes_expire_on_sqlite() {
    codes_expire(TestDatabase::sqlite()).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set TANDEM_TEST_DATABASE_URL and pass -- --include-ignored"]
async fn codes_expire_on_postgres() {
    let database = TestDatabase::postgres_required().await;
    codes_expire(database).await;
}

/// Many links at once: by id for the exchange's checks, and by a set of members for a partner
/// reporting a day of purchases. Each caller still sees only what it may.
async fn links_are_read_many_at_once(server: TestServer) {
    let world = Coalition::new(server).await;
    let mut links = Vec::new();
    for index in 0..3 {
        let code = world
            .start(world.hotel(), &format!("H-{index}"), &world.ride)
            .await
            .unwrap();
        links.push(
            world
                .complete(world.ride(), &format!("R-{index}"), &code)
                .await
                .unwrap(),
        );
    }
    // The harbor's own link with the rideshare, which the hotel may not read.
    let code = world
        .start(world.ride(), "R-9", &world.harbor)
        .await
        .unwrap();
    let harbor_link = world.complete(world.harbor(), "B-9", &code).await.unwrap();

    let batch_get = |token: &str, ids: Vec<String>| {
        let mut linking = world.linking();
        let request = authed(token, pb::BatchGetLinksRequest { link_ids: ids });
        async move { linking.batch_get_links(request).await }
    };
    let mut asked: Vec<String> = links.iter().map(|link| link.link_id.clone()).collect();
    asked.push(harbor_link.link_id.clone());
    asked.push("01a20560-0000-7000-8000-00000000dead".to_owned());
    let seen = batch_get(&world.hotel_token, asked.clone())
        .await
        .unwrap()
        .into_inner()
        .links;
    let mut seen_ids: Vec<&str> = seen.iter().map(|link| link.link_id.as_str()).collect();
    seen_ids.sort_unstable();
    let mut own_ids: Vec<&str> = links.iter().map(|link| link.link_id.as_str()).collect();
    own_ids.sort_unstable();
    assert_eq!(seen_ids, own_ids, "the hotel's own links only");
    for link in &seen {
        assert!(link.initiator.as_ref().unwrap().member_id.starts_with("H-"));
        assert_eq!(link.acceptor.as_ref().unwrap().member_id, "");
        assert!(link.events.is_empty(), "no history in a batch");
    }
    let service = world.server.staff_token(Role::Service).await;
    let seen_by_service = batch_get(&service, asked).await.unwrap().into_inner().links;
    assert_eq!(seen_by_service.len(), 4, "every link that exists");
    assert!(
        seen_by_service
            .iter()
            .all(|link| !link.acceptor.as_ref().unwrap().member_id.is_empty())
    );
    for size in [0, 1_001] {
        let error = batch_get(&service, vec![links[0].link_id.clone(); size])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{size} ids");
    }

    // The rideshare's links of two of its riders, one page at a time.
    let list = |token: &str, request: pb::ListLinksRequest| {
        let mut linking = world.linking();
        let request = authed(token, request);
        async move { linking.list_links(request).await }
    };
    let riders = pb::ListLinksRequest {
        partner_id: world.ride.clone(),
        member_ids: vec!["R-0".to_owned(), "R-2".to_owned(), "R-404".to_owned()],
        status: pb::LinkStatus::Active.into(),
        page_size: 1,
        ..Default::default()
    };
    let first = list(&world.ride_token, riders.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.links.len(), 1);
    let second = list(
        &world.ride_token,
        pb::ListLinksRequest {
            page_token: first.next_page_token.clone(),
            ..riders.clone()
        },
    )
    .await
    .unwrap()
    .into_inner();
    let mut listed: Vec<String> = first
        .links
        .iter()
        .chain(&second.links)
        .map(|link| link.acceptor.as_ref().unwrap().member_id.clone())
        .collect();
    listed.sort();
    assert_eq!(listed, ["R-0", "R-2"]);
    assert!(second.next_page_token.is_empty(), "two riders, two pages");

    let both = list(
        &world.ride_token,
        pb::ListLinksRequest {
            member_id: "R-1".to_owned(),
            ..riders.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let without_partner = list(
        &service,
        pb::ListLinksRequest {
            partner_id: String::new(),
            ..riders.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(without_partner.code(), Code::InvalidArgument);
    let too_many = list(
        &world.ride_token,
        pb::ListLinksRequest {
            member_ids: (0..1_001).map(|index| format!("R-{index}")).collect(),
            ..riders
        },
    )
    .await
    .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
}

on_every_backend!(
    links_are_read_many_at_once,
    each_side_sees_only_its_own_member_and_links_can_end_and_return,
    wrong_codes_count_and_lock_the_request,
    links_need_an_agreement_and_active_partners,
    one_link_per_partner_and_one_partner_per_category,
    forgetting_a_member_leaves_no_readable_member_id,
    two_simultaneous_completions_make_one_link,
    the_members_own_brand_must_vouch_for_them,
);
