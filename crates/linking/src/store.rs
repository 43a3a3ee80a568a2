//! Linking's SQL. Rows stay here.

use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, FromRow};
use tandem_domain::{Category, PartnerId, Timestamp, from_unix_micros, to_unix_micros};
use tandem_storage::{Backend, Database, PageCursor};

use crate::{
    LinkingError,
    model::{Link, LinkCode, LinkEvent, LinkPolicy, LinkSide, LinkStatus, MemberId},
};

/// Wrong codes a request takes before it locks.
pub const MAX_FAILED_ATTEMPTS: i64 = 5;

pub(crate) fn secret_hash(request_id: &str, secret: &str) -> String {
    let digest = Sha256::digest(format!("{request_id}:{secret}").as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

#[derive(FromRow)]
struct LinkRow {
    link_id: String,
    initiator_partner_id: String,
    initiator_member_id: String,
    initiator_category: String,
    acceptor_partner_id: String,
    acceptor_member_id: String,
    acceptor_category: String,
    status: String,
    created_at_micros: i64,
    ended_at_micros: Option<i64>,
}

const LINK_COLUMNS: &str = "link_id, initiator_partner_id, initiator_member_id, initiator_category, acceptor_partner_id, acceptor_member_id, \
     acceptor_category, status, created_at_micros, ended_at_micros";

impl LinkRow {
    fn into_link(self) -> Result<Link, sqlx::Error> {
        let bad = |field: &str| corrupt(format!("link {}: {field}", self.link_id));
        let side = |partner: &str, member: &str, category: &str| -> Result<LinkSide, sqlx::Error> {
            Ok(LinkSide {
                partner: partner.parse().map_err(|_| bad("partner"))?,
                member: MemberId::parse(member).map_err(|_| bad("member"))?,
                category: category.parse().map_err(|_| bad("category"))?,
            })
        };
        Ok(Link {
            initiator: side(
                &self.initiator_partner_id,
                &self.initiator_member_id,
                &self.initiator_category,
            )?,
            acceptor: side(
                &self.acceptor_partner_id,
                &self.acceptor_member_id,
                &self.acceptor_category,
            )?,
            status: if self.status == "ACTIVE" {
                LinkStatus::Active
            } else {
                LinkStatus::Ended
            },
            created_at: from_unix_micros(self.created_at_micros),
            ended_at: self.ended_at_micros.map(from_unix_micros),
            events: Vec::new(),
            id: self.link_id,
        })
    }
}

/// A link request as stored.
pub(crate) struct RequestRow {
    pub(crate) request_id: String,
    pub(crate) initiator_partner: PartnerId,
    pub(crate) initiator_member: MemberId,
    pub(crate) target_partner: PartnerId,
    pub(crate) secret_hash: String,
    pub(crate) failed_attempts: i64,
    pub(crate) status: String,
    pub(crate) expires_at: Timestamp,
    pub(crate) created_at: Timestamp,
    pub(crate) started_by: String,
}

pub(crate) async fn policy(
    connection: &mut AnyConnection,
    partner: PartnerId,
) -> Result<LinkPolicy, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as("SELECT allow_multiple_accounts_per_partner, exclusive_categories FROM link_policies WHERE partner_id = $1")
        .bind(partner.to_string())
        .fetch_optional(connection)
        .await?;
    let Some((multiple, categories)) = row else {
        return Ok(LinkPolicy::default());
    };
    let exclusive_categories = categories
        .split(',')
        .filter(|text| !text.is_empty())
        .map(|text| {
            text.parse::<Category>()
                .map_err(|_| corrupt(format!("policy of {partner}: category {text}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LinkPolicy {
        allow_multiple_accounts_per_partner: multiple != 0,
        exclusive_categories,
    })
}

pub(crate) async fn set_policy(
    database: &Database,
    partner: PartnerId,
    policy: &LinkPolicy,
) -> Result<(), sqlx::Error> {
    let categories: Vec<&str> = policy
        .exclusive_categories
        .iter()
        .map(|category| category.as_str())
        .collect();
    sqlx::query(
        "INSERT INTO link_policies (partner_id, allow_multiple_accounts_per_partner, exclusive_categories) VALUES ($1, $2, $3) \
         ON CONFLICT (partner_id) DO UPDATE SET allow_multiple_accounts_per_partner = excluded.allow_multiple_accounts_per_partner, \
         exclusive_categories = excluded.exclusive_categories",
    )
    .bind(partner.to_string())
    .bind(i64::from(policy.allow_multiple_accounts_per_partner))
    .bind(categories.join(","))
    .execute(database.pool())
    .await?;
    Ok(())
}

/// Stores a new request under a fresh code, freeing the handle first if an expired request
/// still holds it. Returns the code (its secret exists only in this value).
pub(crate) async fn insert_request(
    database: &Database,
    started_by: &str,
    initiator: PartnerId,
    member: &MemberId,
    target: PartnerId,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(String, LinkCode), LinkingError> {
    for _ in 0..8 {
        let code = LinkCode::generate();
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut transaction = database.begin_write().await?;
        sqlx::query("UPDATE link_requests SET open_handle = NULL WHERE open_handle = $1 AND expires_at_micros <= $2")
            .bind(&code.handle)
            .bind(to_unix_micros(now))
            .execute(&mut *transaction)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO link_requests (request_id, initiator_partner_id, initiator_member_id, target_partner_id, handle, open_handle, \
             secret_hash, failed_attempts, status, expires_at_micros, created_at_micros, started_by) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, 0, 'OPEN', $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&request_id)
        .bind(initiator.to_string())
        .bind(member.as_str())
        .bind(target.to_string())
        .bind(&code.handle)
        .bind(secret_hash(&request_id, &code.secret))
        .bind(to_unix_micros(expires_at))
        .bind(to_unix_micros(now))
        .bind(started_by)
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 1 {
            transaction.commit().await?;
            return Ok((request_id, code));
        }
        // The handle is held by a live request: draw another code.
    }
    Err(LinkingError::Internal(
        "no free link code after 8 draws".to_owned(),
    ))
}

/// The newest request with this handle, locked for the rest of the transaction.
pub(crate) async fn request_by_handle(
    connection: &mut AnyConnection,
    backend: Backend,
    handle: &str,
) -> Result<Option<RequestRow>, sqlx::Error> {
    let lock = if backend == Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let query = format!(
        "SELECT request_id, initiator_partner_id, initiator_member_id, target_partner_id, secret_hash, failed_attempts, status, expires_at_micros \
         , created_at_micros, started_by FROM link_requests WHERE handle = $1 ORDER BY created_at_micros DESC LIMIT 1{lock}"
    );
    let row: Option<RequestSqlRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(handle)
        .fetch_optional(connection)
        .await?;
    row.map(|row| {
        let bad = |field: &str| corrupt(format!("link request {}: {field}", row.request_id));
        Ok(RequestRow {
            initiator_partner: row
                .initiator_partner_id
                .parse()
                .map_err(|_| bad("initiator"))?,
            initiator_member: MemberId::parse(&row.initiator_member_id)
                .map_err(|_| bad("member"))?,
            target_partner: row.target_partner_id.parse().map_err(|_| bad("target"))?,
            secret_hash: row.secret_hash,
            failed_attempts: row.failed_attempts,
            status: row.status,
            expires_at: from_unix_micros(row.expires_at_micros),
            created_at: from_unix_micros(row.created_at_micros),
            started_by: row.started_by,
            request_id: row.request_id,
        })
    })
    .transpose()
}

#[derive(FromRow)]
struct RequestSqlRow {
    request_id: String,
    initiator_partner_id: String,
    initiator_member_id: String,
    target_partner_id: String,
    secret_hash: String,
    failed_attempts: i64,
    status: String,
    expires_at_micros: i64,
    created_at_micros: i64,
    started_by: String,
}

/// Counts a wrong secret; the request locks at the limit. Returns the attempts left.
pub(crate) async fn record_failure(
    connection: &mut AnyConnection,
    request: &RequestRow,
) -> Result<i64, sqlx::Error> {
    let failed = request.failed_attempts + 1;
    let locked = failed >= MAX_FAILED_ATTEMPTS;
    sqlx::query("UPDATE link_requests SET failed_attempts = $1, status = $2, open_handle = CASE WHEN $3 = 1 THEN NULL ELSE open_handle END WHERE request_id = $4")
        .bind(failed)
        .bind(if locked { "LOCKED" } else { "OPEN" })
        .bind(i64::from(locked))
        .bind(&request.request_id)
        .execute(connection)
        .await?;
    Ok(MAX_FAILED_ATTEMPTS - failed)
}

/// Marks the request used, if nobody did first. False when a concurrent completion won.
pub(crate) async fn mark_completed(
    connection: &mut AnyConnection,
    request_id: &str,
    link_id: &str,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query("UPDATE link_requests SET status = 'COMPLETED', open_handle = NULL, link_id = $1 WHERE request_id = $2 AND status = 'OPEN'")
        .bind(link_id)
        .bind(request_id)
        .execute(connection)
        .await?;
    Ok(changed.rows_affected() == 1)
}

/// Locks both members (creating their rows on first sight) in one order, so the link rules are
/// checked and applied by one transaction at a time per member.
pub(crate) async fn lock_members(
    connection: &mut AnyConnection,
    backend: Backend,
    members: [(&PartnerId, &MemberId); 2],
) -> Result<(), sqlx::Error> {
    let mut members = members.map(|(partner, member)| (partner.to_string(), member.to_string()));
    members.sort();
    for (partner, member) in &members {
        sqlx::query("INSERT INTO link_members (partner_id, member_id) VALUES ($1, $2) ON CONFLICT DO NOTHING").bind(partner).bind(member).execute(&mut *connection).await?;
    }
    if backend == Backend::Postgres {
        for (partner, member) in &members {
            sqlx::query("SELECT partner_id FROM link_members WHERE partner_id = $1 AND member_id = $2 FOR UPDATE").bind(partner).bind(member).fetch_all(&mut *connection).await?;
        }
    }
    Ok(())
}

/// Active links of a member: the other side's partner and category of each.
pub(crate) async fn active_counterparties(
    connection: &mut AnyConnection,
    partner: PartnerId,
    member: &MemberId,
) -> Result<Vec<(PartnerId, Category)>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT acceptor_partner_id, acceptor_category FROM links WHERE status = 'ACTIVE' AND initiator_partner_id = $1 AND initiator_member_id = $2 \
         UNION ALL \
         SELECT initiator_partner_id, initiator_category FROM links WHERE status = 'ACTIVE' AND acceptor_partner_id = $1 AND acceptor_member_id = $2",
    )
    .bind(partner.to_string())
    .bind(member.as_str())
    .fetch_all(connection)
    .await?;
    rows.into_iter()
        .map(|(partner, category)| {
            Ok((
                partner
                    .parse()
                    .map_err(|_| corrupt(format!("link partner {partner}")))?,
                category
                    .parse()
                    .map_err(|_| corrupt(format!("category {category}")))?,
            ))
        })
        .collect()
}

pub(crate) async fn insert_link(
    connection: &mut AnyConnection,
    link: &Link,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO links (link_id, initiator_partner_id, initiator_member_id, initiator_category, acceptor_partner_id, acceptor_member_id, \
         acceptor_category, status, created_at_micros) VALUES ($1, $2, $3, $4, $5, $6, $7, 'ACTIVE', $8)",
    )
    .bind(&link.id)
    .bind(link.initiator.partner.to_string())
    .bind(link.initiator.member.as_str())
    .bind(link.initiator.category.as_str())
    .bind(link.acceptor.partner.to_string())
    .bind(link.acceptor.member.as_str())
    .bind(link.acceptor.category.as_str())
    .bind(to_unix_micros(link.created_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub(crate) async fn insert_event(
    connection: &mut AnyConnection,
    link_id: &str,
    event: &LinkEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO link_events (event_id, link_id, kind, actor_partner_id, actor, reason, at_micros) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(link_id)
        .bind(&event.kind)
        .bind(event.actor_partner.map(|id| id.to_string()))
        .bind(&event.actor)
        .bind(event.reason.clone())
        .bind(to_unix_micros(event.at))
        .execute(connection)
        .await?;
    Ok(())
}

/// Ends an active link. False when it was not active.
pub(crate) async fn end_link(
    connection: &mut AnyConnection,
    link_id: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query("UPDATE links SET status = 'ENDED', ended_at_micros = $1 WHERE link_id = $2 AND status = 'ACTIVE'")
        .bind(to_unix_micros(now))
        .bind(link_id)
        .execute(connection)
        .await?;
    Ok(changed.rows_affected() == 1)
}

pub(crate) async fn link(
    connection: &mut AnyConnection,
    link_id: &str,
) -> Result<Option<Link>, sqlx::Error> {
    let query = format!("SELECT {LINK_COLUMNS} FROM links WHERE link_id = $1");
    let row: Option<LinkRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(link_id)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(mut link) = row.map(LinkRow::into_link).transpose()? else {
        return Ok(None);
    };
    let events: Vec<EventRow> = sqlx::query_as("SELECT kind, actor_partner_id, actor, reason, at_micros FROM link_events WHERE link_id = $1 ORDER BY at_micros, event_id")
        .bind(link_id)
        .fetch_all(connection)
        .await?;
    link.events = events
        .into_iter()
        .map(|row| LinkEvent {
            kind: row.kind,
            actor_partner: row.actor_partner_id.and_then(|id| id.parse().ok()),
            actor: row.actor,
            reason: row.reason,
            at: from_unix_micros(row.at_micros),
        })
        .collect();
    Ok(Some(link))
}

#[derive(FromRow)]
struct EventRow {
    kind: String,
    actor_partner_id: Option<String>,
    actor: String,
    reason: Option<String>,
    at_micros: i64,
}

/// A page of a partner's links (either side), newest first.
/// The links with these ids, without their history.
pub(crate) async fn links_by_id(
    connection: &mut AnyConnection,
    ids: &[&str],
) -> Result<Vec<Link>, sqlx::Error> {
    let mut links = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1_000) {
        let query = format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE link_id IN ({})",
            tandem_storage::placeholders(chunk.len(), 1)
        );
        let mut statement = sqlx::query_as::<_, LinkRow>(sqlx::AssertSqlSafe(query))
            .persistent(tandem_storage::REPLANNED);
        for id in chunk {
            statement = statement.bind(*id);
        }
        for row in statement.fetch_all(&mut *connection).await? {
            links.push(row.into_link()?);
        }
    }
    Ok(links)
}

/// A page of links, newest first: all of them, or `partner`'s, or (with `members`) those of
/// these members of `partner`.
/// A value a listing binds, in the order of its placeholders.
enum Value {
    Text(String),
    Number(i64),
}

/// The links of `partner`, or of these of its members: `placeholder` numbers each value bound.
fn partner_condition(
    placeholder: &mut impl FnMut(Value) -> String,
    partner: PartnerId,
    members: &[MemberId],
) -> String {
    let partner = placeholder(Value::Text(partner.to_string()));
    if members.is_empty() {
        return format!("(initiator_partner_id = {partner} OR acceptor_partner_id = {partner})");
    }
    let listed: Vec<String> = members
        .iter()
        .map(|member| placeholder(Value::Text(member.to_string())))
        .collect();
    let listed = listed.join(", ");
    format!(
        "((initiator_partner_id = {partner} AND initiator_member_id IN ({listed})) \
         OR (acceptor_partner_id = {partner} AND acceptor_member_id IN ({listed})))"
    )
}

pub(crate) async fn links(
    connection: &mut AnyConnection,
    partner: Option<PartnerId>,
    members: &[MemberId],
    status: Option<LinkStatus>,
    after: Option<&PageCursor>,
    limit: usize,
) -> Result<Vec<Link>, sqlx::Error> {
    // Each filter is written only when it applies, so the planner sees plain conditions it can
    // answer from the indexes by partner and member. Values are numbered in the order bound.
    let mut values = Vec::new();
    let mut placeholder = |value: Value| {
        values.push(value);
        format!("${}", values.len())
    };
    let mut conditions = Vec::new();
    if let Some(partner) = partner {
        conditions.push(partner_condition(&mut placeholder, partner, members));
    }
    if let Some(status) = status {
        let status = match status {
            LinkStatus::Active => "ACTIVE",
            LinkStatus::Ended => "ENDED",
        };
        conditions.push(format!(
            "status = {}",
            placeholder(Value::Text(status.to_owned()))
        ));
    }
    if let Some(cursor) = after {
        let at = placeholder(Value::Number(cursor.created_at_micros));
        let id = placeholder(Value::Text(cursor.id.clone()));
        conditions.push(format!(
            "(created_at_micros < {at} OR (created_at_micros = {at} AND link_id < {id}))"
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let limit = placeholder(Value::Number(limit as i64));
    let query = format!(
        "SELECT {LINK_COLUMNS} FROM links {filter} \
         ORDER BY created_at_micros DESC, link_id DESC LIMIT {limit}"
    );
    let mut statement = sqlx::query_as::<_, LinkRow>(sqlx::AssertSqlSafe(query))
        .persistent(tandem_storage::REPLANNED);
    for value in values {
        statement = match value {
            Value::Text(text) => statement.bind(text),
            Value::Number(number) => statement.bind(number),
        };
    }
    let rows = statement.fetch_all(connection).await?;
    rows.into_iter().map(LinkRow::into_link).collect()
}

/// Ids of a member's active links.
pub(crate) async fn active_link_ids(
    connection: &mut AnyConnection,
    partner: PartnerId,
    member: &MemberId,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT link_id FROM links WHERE status = 'ACTIVE' AND ((initiator_partner_id = $1 AND initiator_member_id = $2) \
         OR (acceptor_partner_id = $1 AND acceptor_member_id = $2)) ORDER BY link_id",
    )
    .bind(partner.to_string())
    .bind(member.as_str())
    .fetch_all(connection)
    .await
}

/// Replaces a member id by a pseudonym in every record; returns how many rows changed.
pub(crate) async fn pseudonymize(
    connection: &mut AnyConnection,
    partner: PartnerId,
    member: &MemberId,
    pseudonym: &MemberId,
) -> Result<u64, sqlx::Error> {
    let statements = [
        "UPDATE links SET initiator_member_id = $3 WHERE initiator_partner_id = $1 AND initiator_member_id = $2",
        "UPDATE links SET acceptor_member_id = $3 WHERE acceptor_partner_id = $1 AND acceptor_member_id = $2",
        "UPDATE link_requests SET initiator_member_id = $3 WHERE initiator_partner_id = $1 AND initiator_member_id = $2",
        "UPDATE link_members SET member_id = $3 WHERE partner_id = $1 AND member_id = $2",
    ];
    let mut changed = 0;
    for statement in statements {
        changed += sqlx::query(statement)
            .bind(partner.to_string())
            .bind(member.as_str())
            .bind(pseudonym.as_str())
            .execute(&mut *connection)
            .await?
            .rows_affected();
    }
    Ok(changed)
}
