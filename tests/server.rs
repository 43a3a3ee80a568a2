//! The server as a process: health, reflection, clean shutdown, settings errors, and the CLI's
//! bootstrap path (operator tokens and key rotation) against a running server.

mod helpers;

use std::{process::Stdio, time::Duration};

use helpers::{TANDEM, TestServer, authed, storage_args};
use tandem_proto::v1 as pb;
use tandem_storage::testing::TestDatabase;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Longest a stopping server may take to drain and exit.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

async fn health_reports_each_service_serving(server: TestServer) {
    let mut health = HealthClient::new(server.channel.clone());
    for service in [
        "",
        "tandem.v1.AuthService",
        "tandem.v1.PartnerRegistryService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "tandem.v1.NoSuchService".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

async fn reflection_lists_the_services_in_both_versions(server: TestServer) {
    use tonic_reflection::pb::{v1, v1alpha};
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let mut responses = client
        .server_reflection_info(single_message_stream(request))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "tandem.v1.AuthService",
        "tandem.v1.PartnerRegistryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "tandem.v1.PartnerRegistryService".to_owned(),
            ),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let mut responses = client
        .server_reflection_info(single_message_stream(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    assert!(
        matches!(response, v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files) if !files.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

fn single_message_stream<T: Send + 'static>(
    item: T,
) -> impl tonic::IntoStreamingRequest<Message = T> {
    futures::stream::iter([item])
}

async fn sigterm_drains_and_exits_cleanly(mut server: TestServer) {
    let pid = server.child.id().expect("a running server has a pid");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::time::timeout(STOP_DEADLINE, server.child.wait())
        .await
        .expect("the server stops before the deadline")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

async fn operator_tokens_and_key_rotation_work_against_a_running_server(server: TestServer) {
    let storage = storage_args(&server.database);
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(TANDEM)
            .args(&storage)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(output.status.success(), "tandem {args:?} failed");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let before_rotation = cli(&["token", "--role", "admin", "--subject", "alice"]);
    let new_kid = cli(&["keys", "rotate"]);
    let after_rotation = cli(&["token", "--role", "ops", "--subject", "bob"]);
    assert_eq!(
        jsonwebtoken::decode_header(&after_rotation)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    for token in [&before_rotation, &after_rotation] {
        server
            .registry()
            .list_partners(authed(token, pb::ListPartnersRequest::default()))
            .await
            .expect("the running server accepts tokens from before and after the rotation");
    }
    let keys = server
        .auth()
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].kid, new_kid);
    assert_eq!(
        (
            keys[0].kty.as_str(),
            keys[0].crv.as_str(),
            keys[0].alg.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA")
    );

    let refused = std::process::Command::new(TANDEM)
        .args(&storage)
        .args(["token", "--role", "partner"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the CLI does not mint partner tokens"
    );
}

/// `tandem token`, `keys list` and `keys rotate` run against a folder without Tandem's keys say
/// where they looked and fail, creating nothing; `keys init` creates the store, once.
#[tokio::test]
async fn operator_commands_never_create_a_key_store() {
    let database = TestDatabase::sqlite();
    let tandem_storage::Location::SqliteDirectory(directory) = database.location() else {
        unreachable!("a SQLite test database")
    };
    let key_file = directory.join("auth.db");
    let storage = storage_args(&database);
    let run = |args: &[&str]| {
        std::process::Command::new(TANDEM)
            .args(&storage)
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["token", "--role", "admin", "--subject", "alice"][..],
        &["keys", "list"],
        &["keys", "rotate"],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(1), "tandem {args:?}");
        let message = String::from_utf8(output.stderr).unwrap();
        assert!(
            message.contains("no key store at") && message.contains("auth.db"),
            "tandem {args:?} says where it looked: {message}"
        );
        assert!(!key_file.exists(), "tandem {args:?} created no key store");
    }
    let created = run(&["keys", "init"]);
    assert!(created.status.success());
    let kid = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key_file.exists());
    let again = run(&["keys", "init"]);
    assert!(again.status.success());
    assert!(again.stdout.is_empty(), "a second init adds no key");
    let token = run(&["token", "--role", "ops", "--subject", "bob"]);
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(token.trim()).unwrap().kid,
        Some(kid),
        "the token is signed by the key init created"
    );
}

#[tokio::test]
async fn invalid_settings_fail_at_start_with_every_problem_named() {
    let database = TestDatabase::sqlite();
    let output = tokio::process::Command::new(TANDEM)
        .args(storage_args(&database))
        .args([
            "serve",
            "--listen",
            "not-an-address",
            "--partner-token-ttl",
            "forever",
            "--database-url",
            "mysql://x",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8(output.stderr).unwrap();
    for field in ["listen", "partner_token_ttl", "database_url"] {
        assert!(message.contains(field), "{field} not named in: {message}");
    }
}

#[tokio::test]
async fn a_taken_port_fails_fast() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupied.local_addr().unwrap().to_string();
    let database = TestDatabase::sqlite();
    let output = tokio::process::Command::new(TANDEM)
        .args(storage_args(&database))
        .args(["serve", "--listen", &address])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("binding")
    );
}

on_every_backend!(
    health_reports_each_service_serving,
    reflection_lists_the_services_in_both_versions,
    sigterm_drains_and_exits_cleanly,
    operator_tokens_and_key_rotation_work_against_a_running_server,
);
