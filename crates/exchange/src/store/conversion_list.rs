//! Listing conversions: the filter a caller may set, checked, and the query it makes.

use std::collections::HashMap;

use tandem_domain::{MemberId, PartnerId};
use tandem_proto::{time::datetime, v1 as pb};
use tandem_storage::{PageCursor, PageRequest};

use crate::{
    ExchangeError,
    rows::{CONVERSION_COLUMNS, ConversionRow, QUOTE_COLUMNS, QuoteRow},
};

/// What a ListConversions request asks for, checked.
#[derive(Debug)]
pub(crate) struct ConversionFilter {
    partner_id: Option<String>,
    member_id: Option<String>,
    /// The stored status name.
    status: Option<String>,
    start_micros: Option<i64>,
    end_micros: Option<i64>,
    page: PageRequest,
}

impl ConversionFilter {
    /// The filter of `request`, or INVALID_ARGUMENT naming every bad field.
    pub(crate) fn parse(request: &pb::ListConversionsRequest) -> Result<Self, ExchangeError> {
        if !request.member_id.is_empty() && request.partner_id.is_empty() {
            return Err(ExchangeError::invalid(
                "member_id",
                "needs partner_id: a member id belongs to a partner",
            ));
        }
        let mut violations: Vec<(&str, String)> = Vec::new();
        if !request.partner_id.is_empty() && request.partner_id.parse::<PartnerId>().is_err() {
            violations.push(("partner_id", "must be a partner id (a UUID)".to_owned()));
        }
        if !request.member_id.is_empty()
            && let Err(error) = MemberId::parse(&request.member_id)
        {
            violations.push(("member_id", error));
        }
        let status = match pb::ConversionStatus::try_from(request.status) {
            Ok(pb::ConversionStatus::Unspecified) => None,
            Ok(status) => Some(
                status
                    .as_str_name()
                    .trim_start_matches("CONVERSION_STATUS_")
                    .to_owned(),
            ),
            Err(_) => {
                violations.push(("status", "is not a conversion status".to_owned()));
                None
            }
        };
        let mut time = |field, value: &Option<tandem_proto::time::ProtoTimestamp>| match value
            .as_ref()
            .map(datetime)
            .transpose()
        {
            Ok(at) => at.map(tandem_domain::to_unix_micros),
            Err(error) => {
                violations.push((field, error));
                None
            }
        };
        let start_micros = time("start_time", &request.start_time);
        let end_micros = time("end_time", &request.end_time);
        let page = PageRequest::parse(request.page_size, &request.page_token);
        if let Err((field, message)) = &page {
            violations.push((field, message.to_string()));
        }
        match page {
            Ok(page) if violations.is_empty() => Ok(Self {
                partner_id: (!request.partner_id.is_empty()).then(|| request.partner_id.clone()),
                member_id: (!request.member_id.is_empty()).then(|| request.member_id.clone()),
                status,
                start_micros,
                end_micros,
                page,
            }),
            _ => Err(ExchangeError::violations(violations)),
        }
    }
}

/// A statement's conditions and the values its placeholders stand for: texts first, then
/// numbers, numbered in that order.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    texts: Vec<String>,
    numbers: Vec<i64>,
}

impl Conditions {
    /// A placeholder for a text value. Every text is placed before the first number.
    fn text(&mut self, value: String) -> String {
        self.texts.push(value);
        format!("${}", self.texts.len())
    }

    /// A placeholder for a number, numbered after every text.
    fn number(&mut self, value: i64) -> String {
        self.numbers.push(value);
        format!("${}", self.texts.len() + self.numbers.len())
    }

    /// The conditions of `filter`, and the placeholder of the page's row limit.
    fn of(filter: &ConversionFilter) -> (Self, String) {
        let mut conditions = Self::default();
        if let Some(partner) = &filter.partner_id {
            let partner = conditions.text(partner.clone());
            let clause = match &filter.member_id {
                None => format!("(source_partner_id = {partner} OR target_partner_id = {partner})"),
                Some(member) => {
                    let member = conditions.text(member.clone());
                    format!(
                        "((source_partner_id = {partner} AND source_member_id = {member}) OR \
                         (target_partner_id = {partner} AND target_member_id = {member}))"
                    )
                }
            };
            conditions.clauses.push(clause);
        }
        if let Some(status) = &filter.status {
            let status = conditions.text(status.clone());
            conditions.clauses.push(format!("status = {status}"));
        }
        let cursor_id = filter
            .page
            .after
            .as_ref()
            .map(|cursor| conditions.text(cursor.id.clone()));
        // Every text is placed; the numbers follow.
        if let Some(start) = filter.start_micros {
            let start = conditions.number(start);
            conditions
                .clauses
                .push(format!("created_at_micros >= {start}"));
        }
        if let Some(end) = filter.end_micros {
            let end = conditions.number(end);
            conditions
                .clauses
                .push(format!("created_at_micros < {end}"));
        }
        if let (Some(cursor), Some(id)) = (&filter.page.after, cursor_id) {
            let at = conditions.number(cursor.created_at_micros);
            conditions.clauses.push(format!(
                "(created_at_micros < {at} OR (created_at_micros = {at} AND conversion_id < {id}))"
            ));
        }
        let limit = conditions.number(filter.page.size as i64 + 1);
        (conditions, limit)
    }
}

/// A page of conversions, newest first, and the token of the next page (empty at the end).
pub(crate) async fn list_conversions(
    pool: &sqlx::AnyPool,
    filter: &ConversionFilter,
) -> Result<(Vec<ConversionRow>, String), ExchangeError> {
    let (conditions, limit) = Conditions::of(filter);
    let where_clause = if conditions.clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {CONVERSION_COLUMNS} FROM conversions {where_clause} \
         ORDER BY created_at_micros DESC, conversion_id DESC LIMIT {limit}"
    );
    let mut query = sqlx::query_as::<_, ConversionRow>(sqlx::AssertSqlSafe(sql));
    for value in conditions.texts {
        query = query.bind(value);
    }
    for value in conditions.numbers {
        query = query.bind(value);
    }
    let mut rows = query.fetch_all(pool).await.map_err(ExchangeError::from)?;
    if rows.len() <= filter.page.size {
        return Ok((rows, String::new()));
    }
    rows.truncate(filter.page.size);
    let next_page_token = rows
        .last()
        .map(|last| {
            PageCursor {
                created_at_micros: last.created_at_micros,
                id: last.conversion_id.clone(),
            }
            .encode()
        })
        .unwrap_or_default();
    Ok((rows, next_page_token))
}

/// The quotes of `rows`, by id, in one query rather than one per conversion.
pub(crate) async fn quotes_by_id(
    pool: &sqlx::AnyPool,
    rows: &[ConversionRow],
) -> Result<HashMap<String, QuoteRow>, ExchangeError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders: Vec<String> = (1..=rows.len()).map(|index| format!("${index}")).collect();
    let sql = format!(
        "SELECT {QUOTE_COLUMNS} FROM quotes WHERE quote_id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<_, QuoteRow>(sqlx::AssertSqlSafe(sql))
        .persistent(tandem_storage::REPLANNED);
    for row in rows {
        query = query.bind(&row.quote_id);
    }
    let quotes = query.fetch_all(pool).await.map_err(ExchangeError::from)?;
    Ok(quotes
        .into_iter()
        .map(|quote| (quote.quote_id.clone(), quote))
        .collect())
}
