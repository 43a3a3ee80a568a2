//! Bad input across the services, as a partner's engineer (or a client in another language)
//! sends it: values PostgreSQL cannot store, identifiers of 10,000 characters, requests with
//! thousands of faults. Each is refused with a code a client must not retry, an `ErrorInfo`
//! reason, and a message small enough for any gRPC client's header limits, on both backends.
//! The exchange's share (activities, conversions, quotes) is in `tests/exchange.rs`.

mod helpers;

use helpers::{TestServer, authed, create_partner_request, reason, refused, violated_fields};
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

on_every_backend!(
    framework_errors_carry_the_contract,
    nul_bytes_are_refused_before_any_database,
    errors_stay_small_whatever_the_request,
);
