//! Bad input across the services, as a partner's engineer (or a client in another language)
//! sends it: values PostgreSQL cannot store, identifiers of 10,000 characters, requests with
//! thousands of faults. Each is refused with a code a client must not retry, an `ErrorInfo`
//! reason, and a message small enough for any gRPC client's header limits, on both backends.
//! The exchange's share (activities, conversions, quotes) is in `tests/exchange.rs`.

mod helpers;

use helpers::{
    TestServer, authed, create_partner_request, hotel_and_rideshare, reason, refused,
    violated_fields,
};
use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::TestRunner,
};
use tandem_auth::Role;
use tandem_proto::v1 as pb;
use tonic::Code;

/// Client credentials and link ids with a NUL byte: refused as malformed or not found, never
/// INTERNAL (PostgreSQL cannot store a NUL; SQLite can, and the two must answer alike).
async fn nul_bytes_are_refused_before_any_database(server: TestServer) {
    let status = refused(
        server
            .auth()
            .issue_token(pb::IssueTokenRequest {
                client_id: "tc_\u{0}".to_owned(),
                client_secret: "secret".to_owned(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["client_id"]);
    // A role that may read no link learns nothing of whether one exists.
    let admin = server.staff_token(Role::Admin).await;
    refused(
        server
            .linking()
            .get_link(authed(
                &admin,
                pb::GetLinkRequest {
                    link_id: "0192f0c4-8a1e-7c3a-9b5e-1d2f3a4b5c6d".to_owned(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    let ops = server.staff_token(Role::Ops).await;
    for link_id in ["link\u{0}".to_owned(), "l".repeat(10_000)] {
        refused(
            server
                .linking()
                .get_link(authed(&ops, pb::GetLinkRequest { link_id }))
                .await,
            Code::NotFound,
        );
    }
}

/// An identifier of 10,000 characters is not echoed back whole, and a request with 10,000 faults
/// lists a few of them and counts the rest.
async fn errors_stay_small_whatever_the_request(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let long_code = "a".repeat(10_000);
    let status = refused(
        server
            .registry()
            .create_partner(authed(
                &admin,
                create_partner_request(&long_code, pb::PartnerCategory::Hotel, "HOTEL_PTS"),
            ))
            .await,
        Code::InvalidArgument,
    );
    // The request's display name and program name are made from the code, so they are long too.
    assert!(violated_fields(&status).contains(&"code".to_owned()));
    let service = server.staff_token(Role::Service).await;
    let legs = (0..10_000)
        .map(|index| pb::Leg {
            account_id: format!("no-such-account-{index}"),
            direction: pb::Direction::Debit.into(),
            amount_minor: 0,
        })
        .collect();
    let status = refused(
        server
            .ledger()
            .post_transaction(authed(
                &service,
                pb::PostTransactionRequest {
                    idempotency_key: "ten-thousand-legs".to_owned(),
                    legs,
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    let fields = violated_fields(&status);
    assert!(fields.len() <= 21, "{} violations listed", fields.len());
}

/// A message whose field 1 is any bytes: what a client in another language (or a broken one)
/// can send where a request's first field is a string.
#[derive(Clone, PartialEq, prost::Message)]
struct FirstFieldBytes {
    #[prost(bytes = "vec", tag = "1")]
    first_field: Vec<u8>,
}

/// Calls `path` with `first_field` as the request's first field; the refusal.
async fn call_with_raw_first_field(
    server: &TestServer,
    token: &str,
    path: &'static str,
    first_field: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.expect("the server is ready");
    let codec = tonic_prost::ProstCodec::<FirstFieldBytes, pb::GetLinkResponse>::default();
    grpc.unary(
        authed(token, FirstFieldBytes { first_field }),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("the request is refused")
}

/// A string field that is not UTF-8, a request past the size limit and an RPC Tandem does not
/// serve are answered by the framework; they carry the same contract as Tandem's own errors.
async fn framework_errors_carry_the_contract(server: TestServer) {
    let ops = server.staff_token(Role::Ops).await;
    let not_utf8 = call_with_raw_first_field(
        &server,
        &ops,
        "/tandem.v1.AccountLinkingService/GetLink",
        vec![0xff, 0xfe, 0x00],
    )
    .await;
    assert_eq!(
        (not_utf8.code(), reason(&not_utf8).as_str()),
        (Code::InvalidArgument, "MALFORMED_REQUEST"),
        "{not_utf8:?}"
    );
    let too_large = call_with_raw_first_field(
        &server,
        &ops,
        "/tandem.v1.AccountLinkingService/GetLink",
        vec![b'a'; 5 * 1024 * 1024],
    )
    .await;
    assert_eq!(
        (too_large.code(), reason(&too_large).as_str()),
        (Code::ResourceExhausted, "REQUEST_TOO_LARGE"),
        "{too_large:?}"
    );
    let unknown = call_with_raw_first_field(
        &server,
        &ops,
        "/tandem.v1.AccountLinkingService/NoSuchMethod",
        Vec::new(),
    )
    .await;
    assert_eq!(
        (unknown.code(), reason(&unknown).as_str()),
        (Code::Unimplemented, "UNKNOWN_RPC"),
        "{unknown:?}"
    );
}

/// Texts a partner might send as a member id: mostly well formed, and otherwise with a space, a
/// control character, a NUL, a character outside ASCII, or too many characters.
fn member_ids(count: usize) -> Vec<String> {
    let texts = proptest::prop_oneof![
        "[!-~]{1,128}",
        "[!-~]{125,135}",
        "[!-~]{0,8}[ \\x00-\\x1f\\x7f][!-~]{0,8}",
        "[!-~]{0,8}[\\u{80}-\\u{10ffff}][!-~]{0,8}",
        // Not empty: an empty member id filter on a listing means "every member".
        ".{1,12}",
    ];
    // A fixed seed: the same texts in every run, so a failure is the same failure again.
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| texts.new_tree(&mut runner).expect("a member id").current())
        .collect()
}

/// Whether a service refused a request for its member id field.
fn refused_member_id<T>(answer: &Result<T, tonic::Status>, field: &str) -> bool {
    match answer {
        Ok(_) => false,
        Err(status) => {
            status.code() == Code::InvalidArgument
                && violated_fields(status)
                    .iter()
                    .any(|violated| violated == field)
        }
    }
}

/// One rule for member ids across the services: for a few hundred texts, linking (listing a
/// member's links) refuses a member id exactly when the exchange (recording the member's
/// activity) does, through the real server.
async fn a_member_id_is_accepted_by_one_service_exactly_when_by_all(server: TestServer) {
    let admin = server.staff_token(Role::Admin).await;
    let ((hotel, hotel_credentials), (ride, ride_credentials)) =
        hotel_and_rideshare(&server, &admin).await;
    let hotel_token = server.partner_token(&hotel_credentials).await;
    let ride_token = server.partner_token(&ride_credentials).await;
    let activity_time = tandem_proto::time::timestamp(chrono::Utc::now());
    let mut disagreements = Vec::new();
    let mut refusals = 0;
    for (index, member_id) in member_ids(300).into_iter().enumerate() {
        let by_linking = server
            .linking()
            .list_links(authed(
                &hotel_token,
                pb::ListLinksRequest {
                    partner_id: hotel.partner_id.clone(),
                    member_id: member_id.clone(),
                    ..Default::default()
                },
            ))
            .await;
        let by_exchange = server
            .exchange()
            .record_activity(authed(
                &ride_token,
                pb::RecordActivityRequest {
                    partner_id: ride.partner_id.clone(),
                    external_id: format!("ride-{index}"),
                    member_id: member_id.clone(),
                    spend_amount_minor: 1_000,
                    spend_currency: "USD".to_owned(),
                    category: "RIDE".to_owned(),
                    member_tier: String::new(),
                    activity_time: Some(activity_time),
                },
            ))
            .await;
        let linking_refused = refused_member_id(&by_linking, "member_id");
        let exchange_refused = refused_member_id(&by_exchange, "member_id");
        refusals += usize::from(linking_refused);
        if linking_refused != exchange_refused {
            disagreements.push(format!(
                "{member_id:?}: linking {:?}, exchange {:?}",
                by_linking.err(),
                by_exchange.err()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "linking and the exchange disagree on {} member ids:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(
        (50..250).contains(&refusals),
        "the texts try both sides of the rule: {refusals} of 300 refused"
    );
}

on_every_backend!(
    a_member_id_is_accepted_by_one_service_exactly_when_by_all,
    framework_errors_carry_the_contract,
    nul_bytes_are_refused_before_any_database,
    errors_stay_small_whatever_the_request,
);
