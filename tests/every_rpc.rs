//! Every RPC Tandem serves, sent what a client in another language (or a broken one) can send:
//! the empty request, and each top-level field of the request in turn empty, 10,000 characters
//! long, with a NUL byte, with a control character, not UTF-8, at -1, at its maximum, or an enum
//! value the contract does not define. Each is sent with an admin, an ops, a service and a
//! partner token, so it meets both the authorization and the validation of the RPC. Whatever the
//! request, the answer is never INTERNAL or UNKNOWN, every error carries an `ErrorInfo` reason,
//! every message is small, and INVALID_ARGUMENT adds no row to any table, on both backends.
//!
//! The requests are built from the contract itself (the descriptors `tandem-proto` compiles),
//! so an RPC or a field added tomorrow is covered without a line here.

mod helpers;

use helpers::{TestServer, create_partner, reason};
use prost::{
    Message,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MethodDescriptor, Value,
};
use tandem_auth::Role;
use tandem_proto::v1 as pb;
use tonic::{Code, codegen::http::uri::PathAndQuery};

/// A request already encoded, sent as it is: how a client sends bytes no generated type would.
#[derive(Debug, Clone, Default, PartialEq)]
struct Encoded(Vec<u8>);

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Answers are not read, only their status.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Stands in a string field where the encoded bytes are then replaced by ones that are not UTF-8.
const NOT_UTF8_MARK: &str = "\u{1}@@@";

/// One malformed request: what it is, and its bytes.
struct Probe {
    what: String,
    bytes: Vec<u8>,
}

fn encode(message: &DynamicMessage) -> Vec<u8> {
    message.encode_to_vec()
}

/// The string values a field is tried with.
fn strings() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("10,000 characters", "a".repeat(10_000)),
        ("a NUL byte", "a\u{0}b".to_owned()),
        ("a control character", "a\u{7}b".to_owned()),
    ]
}

/// The malformed requests of one RPC: the empty one, then each top-level scalar field mutated.
fn probes(method: &MethodDescriptor) -> Vec<Probe> {
    let input = method.input();
    let mut probes = vec![Probe {
        what: "the empty request".to_owned(),
        bytes: Vec::new(),
    }];
    for field in input.fields() {
        if field.is_list() || field.is_map() {
            continue;
        }
        for (what, value) in values_for(&field) {
            let mut message = DynamicMessage::new(input.clone());
            message.set_field(&field, value);
            let mut bytes = encode(&message);
            if what == "not UTF-8" {
                let mark = NOT_UTF8_MARK.as_bytes();
                if let Some(at) = bytes.windows(mark.len()).position(|window| window == mark) {
                    bytes[at..at + mark.len()].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
                }
            }
            probes.push(Probe {
                what: format!("{} {what}", field.name()),
                bytes,
            });
        }
    }
    probes
}

/// The values one field is tried with.
fn values_for(field: &FieldDescriptor) -> Vec<(String, Value)> {
    let mut values = Vec::new();
    match field.kind() {
        Kind::String => {
            for (what, text) in strings() {
                values.push((what.to_owned(), Value::String(text)));
            }
            values.push((
                "not UTF-8".to_owned(),
                Value::String(NOT_UTF8_MARK.to_owned()),
            ));
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            values.push(("at -1".to_owned(), Value::I32(-1)));
            values.push(("at its maximum".to_owned(), Value::I32(i32::MAX)));
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            values.push(("at -1".to_owned(), Value::I64(-1)));
            values.push(("at its maximum".to_owned(), Value::I64(i64::MAX)));
        }
        Kind::Uint32 | Kind::Fixed32 => {
            values.push(("at its maximum".to_owned(), Value::U32(u32::MAX)));
        }
        Kind::Uint64 | Kind::Fixed64 => {
            values.push(("at its maximum".to_owned(), Value::U64(u64::MAX)));
        }
        Kind::Enum(_) => {
            values.push(("an undefined enum value".to_owned(), Value::EnumNumber(999)));
        }
        _ => {}
    }
    values
}

/// The RPCs `tandem serve` serves: every method of the `tandem.v1` services but the gateway's,
/// which partners serve.
fn served_methods(pool: &DescriptorPool) -> Vec<MethodDescriptor> {
    pool.services()
        .filter(|service| {
            service.package_name() == "tandem.v1" && service.name() != "PartnerGatewayService"
        })
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .collect()
}

async fn call(
    server: &TestServer,
    token: &str,
    method: &MethodDescriptor,
    bytes: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.expect("the server is ready");
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let codec = tonic_prost::ProstCodec::<Encoded, Encoded>::default();
    grpc.unary(
        helpers::authed(token, Encoded(bytes)),
        PathAndQuery::try_from(path).expect("a method path"),
        codec,
    )
    .await
    .map(drop)
}

/// How many rows every table of every service holds: what a refused request must leave as it
/// found it. (Rows changed in place would not show; every write Tandem makes on a request
/// inserts at least one row, an audit or a record.)
struct RowCounts {
    databases: Vec<(&'static str, tandem_storage::Database)>,
}

impl RowCounts {
    async fn open(server: &TestServer) -> Self {
        let location = server.database.location();
        let mut databases = Vec::new();
        for (service, migrator) in [
            ("auth", &tandem_auth::MIGRATOR),
            ("registry", &tandem_registry::MIGRATOR),
            ("linking", &tandem_linking::MIGRATOR),
            ("settlement", &tandem_ledger::MIGRATOR),
            ("exchange", &tandem_exchange::MIGRATOR),
        ] {
            let database = tandem_storage::Database::open(location, service, migrator)
                .await
                .expect("open a service's database");
            databases.push((service, database));
        }
        Self { databases }
    }

    async fn now(&self) -> std::collections::BTreeMap<String, i64> {
        let mut counts = std::collections::BTreeMap::new();
        for (service, database) in &self.databases {
            let tables: Vec<String> = match database.backend() {
                tandem_storage::Backend::Sqlite => sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                ),
                tandem_storage::Backend::Postgres => sqlx::query_scalar(
                    "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                     WHERE table_schema = current_schema()",
                ),
            }
            .fetch_all(database.pool())
            .await
            .expect("list the tables");
            for table in tables {
                let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM \"{table}\""
                )))
                .fetch_one(database.pool())
                .await
                .expect("count a table's rows");
                counts.insert(format!("{service}.{table}"), count);
            }
        }
        counts
    }
}

async fn no_request_gets_an_error_outside_the_contract(server: TestServer) {
    let pool = DescriptorPool::decode(tandem_proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptors");
    let admin = server.staff_token(Role::Admin).await;
    let (_, credentials) = create_partner(
        &server,
        &admin,
        "probe-hotel",
        pb::PartnerCategory::Hotel,
        "PROBE_PTS",
    )
    .await;
    let tokens = [
        ("admin", admin),
        ("ops", server.staff_token(Role::Ops).await),
        ("service", server.staff_token(Role::Service).await),
        ("partner", server.partner_token(&credentials).await),
    ];
    let rows = RowCounts::open(&server).await;
    let mut counted = rows.now().await;
    assert_eq!(
        counted.get("registry.partners"),
        Some(&1),
        "the row counts see the partner registered above: {counted:?}"
    );
    let mut broken = Vec::new();
    let mut calls = 0;
    for method in served_methods(&pool) {
        for probe in probes(&method) {
            for (role, token) in &tokens {
                calls += 1;
                let answer = call(&server, token, &method, probe.bytes.clone()).await;
                let after = rows.now().await;
                let wrote = after != counted;
                counted = after;
                let Err(status) = answer else {
                    continue;
                };
                let wrong = if status.code() == Code::InvalidArgument && wrote {
                    Some("INVALID_ARGUMENT after writing")
                } else if matches!(status.code(), Code::Internal | Code::Unknown) {
                    Some("an INTERNAL or UNKNOWN status")
                } else if reason(&status).is_empty() {
                    Some("no ErrorInfo reason")
                } else if status.message().len() >= 4_096 {
                    Some("a message of 4 KiB or more")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    broken.push(format!(
                        "{} with {} as {role}: {wrong}: {:?} {}",
                        method.full_name(),
                        probe.what,
                        status.code(),
                        status.message().chars().take(200).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(calls > 1_000, "every RPC was probed ({calls} calls)");
    assert!(
        broken.is_empty(),
        "{} of {calls} calls broke the error contract:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

on_every_backend!(no_request_gets_an_error_outside_the_contract);
