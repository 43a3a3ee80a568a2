//! Every RPC Tandem serves, sent what a client in another language (or a broken one) can send:
//! the empty request, and each field of the request in turn (at the top, and inside the
//! messages, lists and maps it holds) empty, 10,000 characters long, with a NUL byte, with a
//! control character, not UTF-8, at -1, at its maximum, or an enum value the contract does not
//! define. Each is sent with an admin, an ops, a service and a
//! partner token, so it meets both the authorization and the validation of the RPC. Whatever the
//! request, the answer is never INTERNAL or UNKNOWN, every error carries an `ErrorInfo` reason,
//! every message is small, and INVALID_ARGUMENT changes no row of any table, on both backends.
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
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
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

/// How deep the probes reach into messages inside the request: a leg of a transaction, a
/// term of an agreement, the seconds of a timestamp inside either.
const NESTING: usize = 3;

/// The malformed requests of one RPC: the empty one, then each field mutated, at the top and
/// inside the messages, lists and maps the request holds.
fn probes(method: &MethodDescriptor) -> Vec<Probe> {
    let mut probes = vec![Probe {
        what: "the empty request".to_owned(),
        bytes: Vec::new(),
    }];
    for (what, message) in mutations(&method.input(), NESTING) {
        let mut bytes = encode(&message);
        let mark = NOT_UTF8_MARK.as_bytes();
        while let Some(at) = bytes.windows(mark.len()).position(|window| window == mark) {
            bytes[at..at + mark.len()].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
        }
        probes.push(Probe { what, bytes });
    }
    probes
}

/// Messages of type `input`, each with one field (or one field of a message it holds, down to
/// `depth` levels) set to a malformed value; a list holds that one value, a map one entry with it
/// as key or as value.
fn mutations(input: &MessageDescriptor, depth: usize) -> Vec<(String, DynamicMessage)> {
    let mut mutated = Vec::new();
    for field in input.fields() {
        let values: Vec<(String, Value)> = match field.kind() {
            Kind::Message(inner) if field.is_map() => map_values(&inner)
                .into_iter()
                .map(|(what, map)| (format!(" {what}"), map))
                .collect(),
            Kind::Message(inner) if depth > 1 => mutations(&inner, depth - 1)
                .into_iter()
                .map(|(what, message)| (format!(".{what}"), Value::Message(message)))
                .collect(),
            Kind::Message(_) => Vec::new(),
            _ => values_for(&field)
                .into_iter()
                .map(|(what, value)| (format!(" {what}"), value))
                .collect(),
        };
        for (what, value) in values {
            let value = if field.is_list() {
                Value::List(vec![value])
            } else {
                value
            };
            let mut message = DynamicMessage::new(input.clone());
            message.set_field(&field, value);
            mutated.push((format!("{}{what}", field.name()), message));
        }
    }
    mutated
}

/// A map field's malformed entries: each malformed string as a key and as a value.
fn map_values(entry: &MessageDescriptor) -> Vec<(String, Value)> {
    let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
    let mut entries = Vec::new();
    for (what, bad) in values_for(&key) {
        let Value::String(bad) = bad else { continue };
        let map = std::collections::HashMap::from([(
            prost_reflect::MapKey::String(bad),
            Value::String("value".to_owned()),
        )]);
        entries.push((format!("key {what}"), Value::Map(map)));
    }
    for (what, bad) in values_for(&value) {
        let map = std::collections::HashMap::from([(
            prost_reflect::MapKey::String("key".to_owned()),
            bad,
        )]);
        entries.push((format!("value {what}"), Value::Map(map)));
    }
    entries
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

/// Tables the server writes by itself, whatever the requests.
const BACKGROUND_TABLES: [&str; 2] = ["ledger_commit_seal", "ledger_checkpoints"];

/// What every table of every service holds, row by row: what a refused request must leave as it
/// found it, whether it would insert a row or change one in place.
struct Contents {
    databases: Vec<(&'static str, tandem_storage::Database)>,
}

impl Contents {
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

    /// Each table's rows, as one text (SQLite) or its digest (PostgreSQL), by table.
    async fn now(&self) -> std::collections::BTreeMap<String, String> {
        let mut contents = std::collections::BTreeMap::new();
        for (service, database) in &self.databases {
            let backend = database.backend();
            let tables: Vec<String> = match backend {
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
            // Kept by the server on its own schedule, not by any request: the ledger's commit
            // seal and balance checkpoints (taken every hour, or at once when there is none).
            for table in tables
                .into_iter()
                .filter(|table| !BACKGROUND_TABLES.contains(&table.as_str()))
            {
                let query = match backend {
                    tandem_storage::Backend::Sqlite => {
                        let columns: Vec<String> = sqlx::query_scalar(
                            "SELECT name FROM pragma_table_info($1) ORDER BY cid",
                        )
                        .bind(&table)
                        .fetch_all(database.pool())
                        .await
                        .expect("list a table's columns");
                        let row = columns
                            .iter()
                            .map(|column| format!("quote(\"{column}\")"))
                            .collect::<Vec<_>>()
                            .join(" || ',' || ");
                        format!(
                            "SELECT COALESCE(group_concat(r, '|'), '') FROM \
                             (SELECT {row} AS r FROM \"{table}\" ORDER BY r)"
                        )
                    }
                    tandem_storage::Backend::Postgres => format!(
                        "SELECT md5(COALESCE(string_agg(CAST(t AS TEXT), '|' ORDER BY CAST(t AS TEXT)), '')) \
                         FROM \"{table}\" t"
                    ),
                };
                let content: String = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                    .fetch_one(database.pool())
                    .await
                    .expect("read a table's rows");
                contents.insert(format!("{service}.{table}"), content);
            }
        }
        contents
    }
}

#[test]
fn the_probes_reach_inside_lists_maps_and_messages() {
    let pool = DescriptorPool::decode(tandem_proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptors");
    let method = pool
        .get_service_by_name("tandem.v1.LedgerService")
        .and_then(|service| {
            service
                .methods()
                .find(|method| method.name() == "PostTransaction")
        })
        .expect("PostTransaction is in the contract");
    let probed: Vec<String> = probes(&method)
        .into_iter()
        .map(|probe| probe.what)
        .collect();
    for expected in [
        "legs.account_id a NUL byte",
        "legs.amount_minor at -1",
        "legs.direction an undefined enum value",
        "metadata key 10,000 characters",
        "metadata value not UTF-8",
        "effective_time.seconds at its maximum",
    ] {
        assert!(
            probed.iter().any(|what| what == expected),
            "{expected} is among the probes: {probed:?}"
        );
    }
}

async fn no_request_gets_an_error_outside_the_contract(server: TestServer) {
    let pool = DescriptorPool::decode(tandem_proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptors");
    let admin = server.staff_token(Role::Admin).await;
    let (partner, credentials) = create_partner(
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
    let contents = Contents::open(&server).await;
    let mut before = contents.now().await;
    assert!(
        before
            .get("registry.partners")
            .is_some_and(|rows| !rows.is_empty()),
        "the contents read see the partner registered above: {before:?}"
    );
    let mut broken = Vec::new();
    server
        .registry()
        .update_partner(helpers::authed(
            &tokens[0].1,
            pb::UpdatePartnerRequest {
                partner_id: partner.partner_id.clone(),
                display_name: Some("Probe Hotels, renamed".to_owned()),
                gateway_endpoint: None,
            },
        ))
        .await
        .expect("rename the partner");
    let renamed = contents.now().await;
    assert_ne!(
        renamed, before,
        "the contents read see a row changed in place"
    );
    before = renamed;
    let mut calls = 0;
    for method in served_methods(&pool) {
        for probe in probes(&method) {
            for (role, token) in &tokens {
                calls += 1;
                let answer = call(&server, token, &method, probe.bytes.clone()).await;
                let after = contents.now().await;
                let wrote = after != before;
                before = after;
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
