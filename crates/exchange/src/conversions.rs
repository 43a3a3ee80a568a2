//! Quotes and conversions.
//!
//! Pricing a quote, executing it as a conversion, reading conversions back and reversing them.
//! The conversion's saga (debit the source, credit the target, post the ledger transaction) is a
//! state machine in `saga::conversion`, driven by `saga::conversion_driver`.

use std::collections::HashMap;

use chrono::{Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use tandem_auth::Caller;
use tandem_domain::{Currency, IdempotencyKey, from_unix_micros};
use tandem_proto::v1 as pb;
use tandem_storage::Backend;

use crate::{
    Exchange, ExchangeError, is_staff, new_id, now_micros, own_partner,
    peers::{AccountName, terms_at},
    pricing::{self, Amount, ConversionTerms, PricingError, Scales},
    require_partner,
    rows::{CONVERSION_COLUMNS, ConversionRow, QUOTE_COLUMNS, QuoteRow, Viewer},
    saga::conversion::{ConversionSaga, ConversionStatus},
    store::{self, ConversionFilter},
    writes::NewConversion,
};

/// The owner name of the exchange's own ledger accounts.
pub(crate) const EXCHANGE_OWNER: &str = "exchange";

/// The link's two sides as the source partner sees them: (source member, target partner,
/// target member).
pub(crate) fn sides(link: &pb::Link, partner_id: &str) -> Option<(String, String, String)> {
    let initiator = link.initiator.as_ref()?;
    let acceptor = link.acceptor.as_ref()?;
    if initiator.partner_id == partner_id {
        Some((
            initiator.member_id.clone(),
            acceptor.partner_id.clone(),
            acceptor.member_id.clone(),
        ))
    } else if acceptor.partner_id == partner_id {
        Some((
            acceptor.member_id.clone(),
            initiator.partner_id.clone(),
            initiator.member_id.clone(),
        ))
    } else {
        None
    }
}

pub(crate) fn require_active(partner: &pb::Partner) -> Result<(), ExchangeError> {
    if partner.status != pb::PartnerStatus::Active as i32 {
        return Err(ExchangeError::PartnerNotActive(partner.partner_id.clone()));
    }
    if partner.gateway_endpoint.is_empty() {
        return Err(ExchangeError::GatewayNotConfigured(
            partner.partner_id.clone(),
        ));
    }
    Ok(())
}

pub(crate) fn decimal(text: &str, what: &str) -> Result<Decimal, ExchangeError> {
    text.parse()
        .map_err(|_| ExchangeError::internal(format!("terms carry an unreadable {what}: {text:?}")))
}

pub(crate) fn currency_scale(partner: &pb::Partner) -> Result<u32, ExchangeError> {
    partner
        .settlement_currency
        .parse::<Currency>()
        .map(|currency| currency.exponent())
        .map_err(ExchangeError::internal)
}

fn pricing_error(field: &str, error: PricingError) -> ExchangeError {
    ExchangeError::invalid(field, error)
}

/// Midnight UTC of the day and the first of the month of `micros`.
fn day_and_month_start(micros: i64) -> (i64, i64) {
    let at = from_unix_micros(micros);
    let day = Utc
        .with_ymd_and_hms(at.year(), at.month(), at.day(), 0, 0, 0)
        .single()
        .unwrap_or(at);
    let month = Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(at);
    (
        tandem_domain::to_unix_micros(day),
        tandem_domain::to_unix_micros(month),
    )
}

/// Who a quote is between and under which terms, as `Exchange::quote_parties` found them.
struct QuoteParties {
    link_id: String,
    source_member: String,
    target_member: String,
    source: std::sync::Arc<pb::Partner>,
    target: std::sync::Arc<pb::Partner>,
    agreement_id: String,
    version: pb::TermsVersion,
}

/// A partner's program code and scale.
fn program_scale(partner: &pb::Partner) -> Result<(String, u32), ExchangeError> {
    partner
        .program
        .as_ref()
        .map(|program| (program.code.clone(), program.scale))
        .ok_or_else(|| ExchangeError::internal("partner without a program"))
}

/// Quotes this process priced lately, so that executing one (moments later, as a rule) need not
/// read it back. Quotes never change once stored, and one not found here is read from the
/// database, so a quote priced by another process executes all the same.
///
/// GetQuote answers as soon as it has priced the quote; the quote is stored in the writer's next
/// batch, off the caller's path, and each remembered quote carries how its storing went. A quote
/// is an offer, not a movement of points: were this process to stop before the quote is stored,
/// the caller would be told the quote is not found and would ask for another.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecentQuotes {
    quotes: std::sync::Arc<std::sync::Mutex<HashMap<String, RecentQuote>>>,
}

#[derive(Debug)]
struct RecentQuote {
    quote: QuoteRow,
    /// None while the quote is being stored; then whether it was.
    stored: tokio::sync::watch::Receiver<Option<bool>>,
}

/// Most quotes remembered; past it, expired ones are dropped, and new ones are not remembered
/// (they are stored before GetQuote answers) until there is room.
const RECENT_QUOTES: usize = 10_000;

impl RecentQuotes {
    /// Remembers a quote about to be stored; `None` when there is no room, and the caller must
    /// store it itself before answering.
    fn remember(&self, quote: &QuoteRow) -> Option<tokio::sync::watch::Sender<Option<bool>>> {
        let mut quotes = self.quotes.lock().expect("recent quotes lock");
        if quotes.len() >= RECENT_QUOTES {
            let now = now_micros();
            quotes.retain(|_, recent| recent.quote.expires_at_micros > now);
        }
        if quotes.len() >= RECENT_QUOTES {
            return None;
        }
        let (stored, receiver) = tokio::sync::watch::channel(None);
        quotes.insert(
            quote.quote_id.clone(),
            RecentQuote {
                quote: quote.clone(),
                stored: receiver,
            },
        );
        Some(stored)
    }

    /// Forgets a quote that could not be stored.
    fn forget(&self, quote_id: &str) {
        self.quotes
            .lock()
            .expect("recent quotes lock")
            .remove(quote_id);
    }

    /// The quote, if remembered, with how its storing goes; it is forgotten, since a quote
    /// executes once.
    fn take(
        &self,
        quote_id: &str,
    ) -> Option<(QuoteRow, tokio::sync::watch::Receiver<Option<bool>>)> {
        let recent = self
            .quotes
            .lock()
            .expect("recent quotes lock")
            .remove(quote_id)?;
        Some((recent.quote, recent.stored))
    }
}

/// Waits until a remembered quote is stored; `Err` when storing it failed.
async fn stored(
    landing: Option<tokio::sync::watch::Receiver<Option<bool>>>,
) -> Result<(), ExchangeError> {
    let Some(mut landing) = landing else {
        return Ok(());
    };
    let stored = landing
        .wait_for(|stored| stored.is_some())
        .await
        .map(|stored| *stored == Some(true))
        .unwrap_or(false);
    if stored {
        Ok(())
    } else {
        Err(ExchangeError::QuoteNotStored)
    }
}

/// How long after its pricing a quote that is not found may still be on its way to the database
/// (priced by another process moments ago): a look-up waits this long at most, from the time the
/// quote's id says it was made, before answering QUOTE_NOT_FOUND.
const QUOTE_LANDING: std::time::Duration = std::time::Duration::from_secs(2);

/// Statuses whose points count against caps: everything not undone.
const COUNTS_AGAINST_CAPS: &str = "status NOT IN ('FAILED', 'REVERSED')";

impl Exchange {
    pub(crate) async fn load_quote(
        &self,
        quote_id: &str,
    ) -> Result<Option<QuoteRow>, ExchangeError> {
        if !tandem_domain::is_server_id(quote_id) {
            return Ok(None);
        }
        sqlx::query_as::<_, QuoteRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {QUOTE_COLUMNS} FROM quotes WHERE quote_id = $1"
        )))
        .bind(quote_id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(ExchangeError::from)
    }

    pub(crate) async fn load_conversion(
        &self,
        id: &str,
    ) -> Result<Option<ConversionRow>, ExchangeError> {
        // An id Tandem never made names no conversion, and never reaches the database.
        if !tandem_domain::is_server_id(id) {
            return Ok(None);
        }
        sqlx::query_as::<_, ConversionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CONVERSION_COLUMNS} FROM conversions WHERE conversion_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(ExchangeError::from)
    }

    /// Source points a member (or the whole agreement) has converted since `since`.
    async fn used_points(
        connection: &mut sqlx::AnyConnection,
        agreement_id: &str,
        member: Option<&str>,
        since: i64,
    ) -> Result<i64, sqlx::Error> {
        let total: Option<i64> = match member {
            Some(member) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(SUM(source_points) AS BIGINT) FROM conversions \
                     WHERE agreement_id = $1 AND source_member_id = $2 \
                     AND created_at_micros >= $3 AND {COUNTS_AGAINST_CAPS}"
                )))
                .bind(agreement_id)
                .bind(member)
                .bind(since)
                .fetch_one(&mut *connection)
                .await?
            }
            None => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(SUM(source_points) AS BIGINT) FROM conversions \
                     WHERE agreement_id = $1 AND created_at_micros >= $2 AND {COUNTS_AGAINST_CAPS}"
                )))
                .bind(agreement_id)
                .bind(since)
                .fetch_one(&mut *connection)
                .await?
            }
        };
        Ok(total.unwrap_or(0))
    }

    /// Takes the agreement's cap lock for the rest of `transaction`: caps are checked and taken
    /// under it, so two conversions (or earnings) cannot both fit under the last of a cap.
    /// SQLite's write transaction already serializes every writer.
    pub(crate) async fn lock_caps(
        &self,
        transaction: &mut sqlx::AnyConnection,
        agreement_id: &str,
    ) -> Result<(), ExchangeError> {
        if self.database.backend() != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("INSERT INTO cap_locks (agreement_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(agreement_id)
            .execute(&mut *transaction)
            .await
            .map_err(ExchangeError::from)?;
        sqlx::query("SELECT agreement_id FROM cap_locks WHERE agreement_id = $1 FOR UPDATE")
            .bind(agreement_id)
            .fetch_all(&mut *transaction)
            .await
            .map_err(ExchangeError::from)?;
        Ok(())
    }

    /// RESOURCE_EXHAUSTED when converting `quote` would pass the member's daily or the
    /// agreement's monthly cap.
    async fn check_caps(
        connection: &mut sqlx::AnyConnection,
        quote: &QuoteRow,
        now: i64,
    ) -> Result<(), ExchangeError> {
        let (day, month) = day_and_month_start(now);
        if let Some(cap) = quote.member_daily_cap_points {
            let used = Self::used_points(
                connection,
                &quote.agreement_id,
                Some(&quote.source_member_id),
                day,
            )
            .await
            .map_err(ExchangeError::from)?;
            if used + quote.source_points > cap {
                return Err(ExchangeError::MemberDailyCapReached {
                    cap,
                    used,
                    points: quote.source_points,
                });
            }
        }
        if let Some(cap) = quote.agreement_monthly_cap_points {
            let used = Self::used_points(connection, &quote.agreement_id, None, month)
                .await
                .map_err(ExchangeError::from)?;
            if used + quote.source_points > cap {
                return Err(ExchangeError::AgreementMonthlyCapReached {
                    cap,
                    used,
                    points: quote.source_points,
                });
            }
        }
        Ok(())
    }

    pub async fn get_quote(
        &self,
        caller: &Caller,
        request: pb::GetQuoteRequest,
    ) -> Result<pb::Quote, ExchangeError> {
        require_partner(caller, &request.partner_id)?;
        if request.link_id.is_empty() {
            return Err(ExchangeError::invalid("link_id", "is required"));
        }
        let amount = match request.amount {
            Some(pb::get_quote_request::Amount::SourcePoints(points)) => Amount::Source(points),
            Some(pb::get_quote_request::Amount::TargetPoints(points)) => Amount::Target(points),
            None => {
                return Err(ExchangeError::invalid(
                    "amount",
                    "set source_points or target_points",
                ));
            }
        };
        let parties = self.quote_parties(&request).await?;
        let now = now_micros();
        let quote = self.price_quote(parties, amount, now)?;
        if quote.member_daily_cap_points.is_some() || quote.agreement_monthly_cap_points.is_some() {
            let mut connection = self
                .database
                .pool()
                .acquire()
                .await
                .map_err(ExchangeError::from)?;
            Self::check_caps(connection.as_mut(), &quote, now).await?;
        }
        match self.recent_quotes.remember(&quote) {
            Some(stored) => self.store_in_background(quote.clone(), stored),
            None => self.writers.quote(quote.clone()).await?,
        }
        Ok(quote.to_pb(Viewer::Partner(&request.partner_id)))
    }

    /// Who a quote is between and under which terms: the caller's ACTIVE link, both partners
    /// ACTIVE with a gateway, the ACTIVE agreement from the caller and its terms in force now.
    async fn quote_parties(
        &self,
        request: &pb::GetQuoteRequest,
    ) -> Result<QuoteParties, ExchangeError> {
        let link_not_found = || ExchangeError::LinkNotFound(request.link_id.clone());
        // Checked before it joins a batch of look-ups, which one malformed id would fail.
        if !tandem_domain::is_server_id(&request.link_id) {
            return Err(link_not_found());
        }
        let link = self.peers.link(&request.link_id).await?;
        let Some((source_member, target_partner_id, target_member)) =
            sides(&link, &request.partner_id)
        else {
            return Err(link_not_found());
        };
        if link.status != pb::LinkStatus::Active as i32 {
            return Err(ExchangeError::LinkNotActive);
        }
        let (source, target) = tokio::try_join!(
            self.peers.partner(&request.partner_id),
            self.peers.partner(&target_partner_id)
        )?;
        require_active(&source)?;
        require_active(&target)?;
        let Some(agreement) = self
            .peers
            .agreement(&source.partner_id, &target.partner_id)
            .await?
        else {
            return Err(ExchangeError::NoActiveAgreement);
        };
        let Some(version) = terms_at(&agreement, now_micros()).cloned() else {
            return Err(ExchangeError::NoTermsInForce);
        };
        Ok(QuoteParties {
            link_id: link.link_id,
            source_member,
            target_member,
            source,
            target,
            agreement_id: agreement.agreement_id.clone(),
            version,
        })
    }

    /// The quote of `amount` between `parties`, priced under their terms at `now`.
    fn price_quote(
        &self,
        parties: QuoteParties,
        amount: Amount,
        now: i64,
    ) -> Result<QuoteRow, ExchangeError> {
        let QuoteParties {
            link_id,
            source_member,
            target_member,
            source,
            target,
            agreement_id,
            version,
        } = parties;
        let terms = version
            .terms
            .as_ref()
            .ok_or_else(|| ExchangeError::internal("terms version without terms"))?;
        let conversion_terms = ConversionTerms {
            rate: decimal(&terms.conversion_rate, "conversion rate")?,
            minimum_source_points: terms.minimum_source_points,
            increment_source_points: terms.increment_source_points.max(1),
            settlement_price: decimal(&terms.settlement_price, "settlement price")?,
            fee_basis_points: terms.exchange_fee_basis_points,
        };
        let (source_program, source_scale) = program_scale(&source)?;
        let (target_program, target_scale) = program_scale(&target)?;
        let scales = Scales {
            source_points: source_scale,
            target_points: target_scale,
            currency: currency_scale(&target)?,
        };
        let field = match amount {
            Amount::Source(_) => "source_points",
            Amount::Target(_) => "target_points",
        };
        let priced = pricing::price_conversion(&conversion_terms, amount, scales)
            .map_err(|error| pricing_error(field, error))?;
        Ok(QuoteRow {
            quote_id: new_id(),
            link_id,
            source_partner_id: source.partner_id.clone(),
            source_member_id: source_member,
            source_gateway: source.gateway_endpoint.clone(),
            source_program,
            source_scale: source_scale.into(),
            source_points: priced.source_points,
            target_partner_id: target.partner_id.clone(),
            target_member_id: target_member,
            target_gateway: target.gateway_endpoint.clone(),
            target_program,
            target_scale: target_scale.into(),
            target_points: priced.target_points,
            agreement_id,
            terms_version: version.version.into(),
            conversion_rate: conversion_terms.rate.to_string(),
            settlement_currency: target.settlement_currency.clone(),
            currency_scale: scales.currency.into(),
            settlement_amount_minor: priced.settlement_minor,
            fee_amount_minor: priced.fee_minor,
            member_daily_cap_points: terms.member_daily_cap_points,
            agreement_monthly_cap_points: terms.agreement_monthly_cap_points,
            reversal_hours: terms.conversion_reversal_hours.into(),
            created_at_micros: now,
            expires_at_micros: now + self.options.quote_lifetime.as_micros() as i64,
        })
    }

    /// Stores a quote GetQuote has already answered with.
    fn store_in_background(
        &self,
        quote: QuoteRow,
        stored: tokio::sync::watch::Sender<Option<bool>>,
    ) {
        let exchange = self.clone();
        tokio::spawn(async move {
            let quote_id = quote.quote_id.clone();
            let outcome = exchange.writers.quote(quote).await;
            if let Err(error) = &outcome {
                tracing::warn!(quote = %quote_id, %error, "a quote could not be stored");
                exchange.recent_quotes.forget(&quote_id);
            }
            let _ = stored.send(Some(outcome.is_ok()));
        });
    }

    /// A quote from the database, waiting for one priced moments ago by another process that
    /// may still be on its way there.
    async fn load_landing_quote(&self, quote_id: &str) -> Result<Option<QuoteRow>, ExchangeError> {
        let made_at_micros = uuid::Uuid::parse_str(quote_id)
            .ok()
            .and_then(|id| id.get_timestamp())
            .map(|timestamp| {
                let (seconds, nanos) = timestamp.to_unix();
                seconds as i64 * 1_000_000 + i64::from(nanos / 1_000)
            });
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            if let Some(quote) = self.load_quote(quote_id).await? {
                return Ok(Some(quote));
            }
            let landing_until =
                made_at_micros.map_or(0, |made| made + QUOTE_LANDING.as_micros() as i64);
            if now_micros() + pause.as_micros() as i64 > landing_until {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
    }

    /// The conversion a partner made with `key`, if any.
    async fn conversion_by_key(
        &self,
        partner_id: &str,
        key: &str,
    ) -> Result<Option<ConversionRow>, ExchangeError> {
        self.fetch_conversion_by_key(partner_id, key).await
    }

    async fn fetch_conversion_by_key(
        &self,
        partner_id: &str,
        key: &str,
    ) -> Result<Option<ConversionRow>, ExchangeError> {
        sqlx::query_as::<_, ConversionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CONVERSION_COLUMNS} FROM conversions \
             WHERE source_partner_id = $1 AND idempotency_key = $2"
        )))
        .bind(partner_id)
        .bind(key)
        .fetch_optional(self.database.pool())
        .await
        .map_err(ExchangeError::from)
    }

    fn replay(existing: &ConversionRow, quote_id: &str) -> Result<(), ExchangeError> {
        if existing.quote_id == quote_id {
            Ok(())
        } else {
            Err(ExchangeError::IdempotencyKeyReused {
                key: existing.idempotency_key.clone(),
                quote_id: existing.quote_id.clone(),
            })
        }
    }

    pub async fn execute_conversion(
        &self,
        caller: &Caller,
        request: pb::ExecuteConversionRequest,
    ) -> Result<(pb::Conversion, bool), ExchangeError> {
        require_partner(caller, &request.partner_id)?;
        let (quote, landing) = self.quote_to_execute(&request).await?;
        let viewer = Viewer::Partner(&request.partner_id);
        let capped =
            quote.member_daily_cap_points.is_some() || quote.agreement_monthly_cap_points.is_some();
        // A retry is recognised before anything that may have changed since the original: the
        // quote's expiry, the link, the caps the original itself used up.
        let replay = |existing: ConversionRow| async move {
            Self::replay(&existing, &request.quote_id)?;
            Ok((self.conversion_pb(&existing, viewer).await?, true))
        };
        let by_key = || self.conversion_by_key(&request.partner_id, &request.idempotency_key);
        if capped && let Some(existing) = by_key().await? {
            return replay(existing).await;
        }
        // Consent is checked again while a quote priced here moments ago is being stored.
        let (executable, quote_stored) =
            tokio::join!(self.still_executable(&quote), stored(landing));
        quote_stored?;
        if let Err(refusal) = executable {
            return match by_key().await? {
                Some(existing) => replay(existing).await,
                None => Err(refusal),
            };
        }
        let new = self.new_conversion(&quote, &request.idempotency_key);
        let inserted = if capped {
            self.insert_capped(&new, &quote).await?
        } else {
            self.writers.conversion(new.clone()).await?
        };
        if !inserted {
            // The key was taken first (a concurrent retry: it is the original), or the quote
            // was executed under another key.
            return match by_key().await? {
                Some(existing) => replay(existing).await,
                None => Err(ExchangeError::QuoteAlreadyExecuted),
            };
        }
        let row = self.drive_new(&new, &quote).await?;
        Ok((row.to_pb(&quote, viewer), false))
    }

    /// The caller's quote that `request` executes, with how its storing goes when this process
    /// priced it moments ago; INVALID_ARGUMENT or QUOTE_NOT_FOUND otherwise.
    async fn quote_to_execute(
        &self,
        request: &pb::ExecuteConversionRequest,
    ) -> Result<(QuoteRow, Option<tokio::sync::watch::Receiver<Option<bool>>>), ExchangeError> {
        let mut violations = Vec::new();
        if request.quote_id.is_empty() {
            violations.push(("quote_id", "is required"));
        }
        let key = IdempotencyKey::parse(&request.idempotency_key);
        if let Err(error) = &key {
            violations.push(("idempotency_key", error.as_str()));
        }
        if !violations.is_empty() {
            return Err(ExchangeError::violations(violations));
        }
        let (quote, landing) = match self.recent_quotes.take(&request.quote_id) {
            Some((quote, landing)) => (Some(quote), Some(landing)),
            None => (self.load_landing_quote(&request.quote_id).await?, None),
        };
        match quote.filter(|quote| quote.source_partner_id == request.partner_id) {
            Some(quote) => Ok((quote, landing)),
            // A quote nobody priced for this partner was never executed by it either.
            None => Err(ExchangeError::QuoteNotFound(request.quote_id.clone())),
        }
    }

    /// A conversion of `quote` about to start under `idempotency_key`, its lease held here.
    fn new_conversion(&self, quote: &QuoteRow, idempotency_key: &str) -> NewConversion {
        NewConversion {
            conversion_id: new_id(),
            quote_id: quote.quote_id.clone(),
            source_partner_id: quote.source_partner_id.clone(),
            idempotency_key: idempotency_key.to_owned(),
            source_member_id: quote.source_member_id.clone(),
            target_partner_id: quote.target_partner_id.clone(),
            target_member_id: quote.target_member_id.clone(),
            agreement_id: quote.agreement_id.clone(),
            source_points: quote.source_points,
            lease_owner: new_id(),
            lease_until_micros: self.lease_until(),
            created_at_micros: now_micros(),
        }
    }

    /// Drives a conversion just inserted as far as it goes now; the row as last recorded.
    async fn drive_new(
        &self,
        new: &NewConversion,
        quote: &QuoteRow,
    ) -> Result<ConversionRow, ExchangeError> {
        let mut row = ConversionRow::started(new, ConversionSaga::start());
        match self.drive_loaded(&row, quote, &new.lease_owner).await? {
            // What the drive recorded, without reading it back.
            Some(recorded) => row.record(&recorded.saga, recorded.written_at_micros),
            // Another driver took the saga over: answer what is recorded.
            None => {
                row = self
                    .load_conversion(&row.conversion_id)
                    .await?
                    .ok_or_else(|| ExchangeError::internal("conversion vanished"))?;
            }
        }
        Ok(row)
    }

    /// Why a quote can no longer be executed, if it cannot: it expired, or the member unlinked
    /// since it was priced (consent is checked again).
    async fn still_executable(&self, quote: &QuoteRow) -> Result<(), ExchangeError> {
        if quote.expires_at_micros <= now_micros() {
            return Err(ExchangeError::QuoteExpired);
        }
        let link = self.peers.link(&quote.link_id).await?;
        if link.status != pb::LinkStatus::Active as i32 {
            return Err(ExchangeError::LinkEndedSinceQuote);
        }
        Ok(())
    }

    /// Writes a conversion of a capped agreement: the caps are checked and taken in the same
    /// transaction, under the agreement's cap lock, so two conversions cannot both fit under the
    /// last of a cap. False when the key or the quote was already taken.
    async fn insert_capped(
        &self,
        new: &NewConversion,
        quote: &QuoteRow,
    ) -> Result<bool, ExchangeError> {
        let mut transaction = self
            .database
            .begin_write()
            .await
            .map_err(ExchangeError::from)?;
        self.lock_caps(&mut transaction, &quote.agreement_id)
            .await?;
        Self::check_caps(&mut transaction, quote, new.created_at_micros).await?;
        let inserted = sqlx::query(
            "INSERT INTO conversions (conversion_id, quote_id, source_partner_id, \
             idempotency_key, source_member_id, target_partner_id, target_member_id, \
             agreement_id, source_points, status, step, attempts, last_error, failure_reason, \
             ledger_transaction_id, reversal_transaction_id, reverse_reason, \
             next_attempt_micros, lease_owner, lease_until_micros, created_at_micros, \
             updated_at_micros) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'PENDING', \
             'DEBIT_SOURCE', 0, '', '', '', '', '', $10, $11, $12, $10, $10) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&new.conversion_id)
        .bind(&new.quote_id)
        .bind(&new.source_partner_id)
        .bind(&new.idempotency_key)
        .bind(&new.source_member_id)
        .bind(&new.target_partner_id)
        .bind(&new.target_member_id)
        .bind(&new.agreement_id)
        .bind(new.source_points)
        .bind(new.created_at_micros)
        .bind(&new.lease_owner)
        .bind(new.lease_until_micros)
        .execute(&mut *transaction)
        .await
        .map_err(ExchangeError::from)?
        .rows_affected();
        transaction.commit().await.map_err(ExchangeError::from)?;
        Ok(inserted == 1)
    }

    async fn conversion_pb(
        &self,
        row: &ConversionRow,
        viewer: Viewer<'_>,
    ) -> Result<pb::Conversion, ExchangeError> {
        let quote = self
            .load_quote(&row.quote_id)
            .await?
            .ok_or_else(|| ExchangeError::internal("conversion without its quote"))?;
        Ok(row.to_pb(&quote, viewer))
    }

    /// The ledger transaction of a completed conversion: the source points leg and the target
    /// points leg, each through the exchange's clearing account for the program, and the money
    /// the source owes: the settlement amount to the target, the fee to the exchange.
    pub(crate) async fn conversion_transaction(
        &self,
        id: &str,
        quote: &QuoteRow,
        row: &ConversionRow,
    ) -> Result<pb::PostTransactionRequest, ExchangeError> {
        let mut legs = Vec::with_capacity(7);
        legs.extend(
            self.points_legs(
                &quote.source_partner_id,
                &quote.source_program,
                quote.source_scale as u32,
                quote.source_points,
                false,
            )
            .await?,
        );
        legs.extend(
            self.points_legs(
                &quote.target_partner_id,
                &quote.target_program,
                quote.target_scale as u32,
                quote.target_points,
                true,
            )
            .await?,
        );
        legs.extend(
            self.money_legs(
                &quote.source_partner_id,
                &quote.target_partner_id,
                &quote.settlement_currency,
                quote.currency_scale as u32,
                quote.settlement_amount_minor,
                quote.fee_amount_minor,
            )
            .await?,
        );
        Ok(pb::PostTransactionRequest {
            idempotency_key: format!("tandem:conversion:{id}"),
            legs,
            kind: pb::TransactionKind::Posted.into(),
            type_code: "CONVERSION".to_owned(),
            external_reference: id.to_owned(),
            effective_time: Some(tandem_proto::time::timestamp(from_unix_micros(
                row.created_at_micros,
            ))),
            metadata: [
                ("quote_id".to_owned(), quote.quote_id.clone()),
                ("agreement_id".to_owned(), quote.agreement_id.clone()),
                ("terms_version".to_owned(), quote.terms_version.to_string()),
            ]
            .into(),
            pending_timeout_seconds: 0,
        })
    }

    /// Points leaving (`issued == false`) or entering a partner's program, against the
    /// exchange's clearing account for that program.
    pub(crate) async fn points_legs(
        &self,
        partner_id: &str,
        program: &str,
        scale: u32,
        points: i64,
        issued: bool,
    ) -> Result<[pb::Leg; 2], ExchangeError> {
        let partner_account = self
            .peers
            .account(&AccountName {
                owner: partner_id.to_owned(),
                purpose: pb::AccountPurpose::ProgramClearing,
                unit: program.to_owned(),
                scale,
            })
            .await?;
        let clearing = self
            .peers
            .account(&AccountName {
                owner: EXCHANGE_OWNER.to_owned(),
                purpose: pb::AccountPurpose::ProgramClearing,
                unit: program.to_owned(),
                scale,
            })
            .await?;
        let (debited, credited) = if issued {
            (clearing, partner_account)
        } else {
            (partner_account, clearing)
        };
        Ok([
            leg(debited, pb::Direction::Debit, points),
            leg(credited, pb::Direction::Credit, points),
        ])
    }

    /// What the payer owes: the settlement amount to the payee's settlement account, the fee to
    /// the exchange. Zero amounts have no leg.
    pub(crate) async fn money_legs(
        &self,
        payer: &str,
        payee: &str,
        currency: &str,
        scale: u32,
        settlement_minor: i64,
        fee_minor: i64,
    ) -> Result<Vec<pb::Leg>, ExchangeError> {
        let mut legs = Vec::with_capacity(3);
        let total = settlement_minor + fee_minor;
        if total == 0 {
            return Ok(legs);
        }
        let settlement_account = |owner: &str, purpose: pb::AccountPurpose| AccountName {
            owner: owner.to_owned(),
            purpose,
            unit: currency.to_owned(),
            scale,
        };
        let payer_account = self
            .peers
            .account(&settlement_account(payer, pb::AccountPurpose::Settlement))
            .await?;
        legs.push(leg(payer_account, pb::Direction::Debit, total));
        if settlement_minor > 0 {
            let payee_account = self
                .peers
                .account(&settlement_account(payee, pb::AccountPurpose::Settlement))
                .await?;
            legs.push(leg(payee_account, pb::Direction::Credit, settlement_minor));
        }
        if fee_minor > 0 {
            let fees = self
                .peers
                .account(&settlement_account(
                    EXCHANGE_OWNER,
                    pb::AccountPurpose::Fees,
                ))
                .await?;
            legs.push(leg(fees, pb::Direction::Credit, fee_minor));
        }
        Ok(legs)
    }

    pub async fn get_conversion(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<pb::Conversion, ExchangeError> {
        let not_found = || ExchangeError::ConversionNotFound(id.to_owned());
        let own = own_partner(caller);
        if own.is_none() && !is_staff(caller) {
            return Err(ExchangeError::PermissionDenied(
                "conversions are read by ops and the partners involved",
            ));
        }
        let row = self.load_conversion(id).await?.ok_or_else(not_found)?;
        let viewer = match &own {
            Some(own) if *own == row.source_partner_id || *own == row.target_partner_id => {
                Viewer::Partner(own)
            }
            Some(_) => {
                return Err(ExchangeError::PermissionDenied(
                    "a partner reads only the conversions it takes part in",
                ));
            }
            None => Viewer::Staff,
        };
        self.conversion_pb(&row, viewer).await
    }

    pub async fn list_conversions(
        &self,
        caller: &Caller,
        request: pb::ListConversionsRequest,
    ) -> Result<pb::ListConversionsResponse, ExchangeError> {
        let own = own_partner(caller);
        let viewer = match &own {
            _ if is_staff(caller) => Viewer::Staff,
            Some(own) if request.partner_id == *own => Viewer::Partner(own),
            Some(_) => {
                return Err(ExchangeError::PermissionDenied(
                    "a partner lists only its own conversions: partner_id must be your own",
                ));
            }
            None => {
                return Err(ExchangeError::PermissionDenied(
                    "conversions are listed by ops and the partners involved",
                ));
            }
        };
        let filter = ConversionFilter::parse(&request)?;
        let (rows, next_page_token) =
            store::list_conversions(self.database.pool(), &filter).await?;
        let quotes = store::quotes_by_id(self.database.pool(), &rows).await?;
        let mut conversions = Vec::with_capacity(rows.len());
        for row in &rows {
            let quote = quotes
                .get(&row.quote_id)
                .ok_or_else(|| ExchangeError::internal("conversion without its quote"))?;
            conversions.push(row.to_pb(quote, viewer));
        }
        Ok(pb::ListConversionsResponse {
            conversions,
            next_page_token,
        })
    }

    pub async fn reverse_conversion(
        &self,
        caller: &Caller,
        request: pb::ReverseConversionRequest,
    ) -> Result<pb::Conversion, ExchangeError> {
        if let Err(error) = tandem_domain::Reason::parse(&request.reason) {
            return Err(ExchangeError::invalid("reason", error));
        }
        let not_found = || ExchangeError::ConversionNotFound(request.conversion_id.clone());
        let own = own_partner(caller);
        let only_source = || {
            ExchangeError::PermissionDenied(
                "only the source partner (or ops) may reverse a conversion",
            )
        };
        if own.is_none() && caller.role() != tandem_auth::Role::Ops {
            return Err(only_source());
        }
        let row = self
            .load_conversion(&request.conversion_id)
            .await?
            .ok_or_else(not_found)?;
        let viewer = match &own {
            Some(own) if *own == row.source_partner_id => Viewer::Partner(own),
            Some(_) => return Err(only_source()),
            None => Viewer::Staff,
        };
        let quote = self
            .load_quote(&row.quote_id)
            .await?
            .ok_or_else(|| ExchangeError::internal("conversion without its quote"))?;
        let saga = row.saga()?;
        if matches!(
            saga.status,
            ConversionStatus::Reversing | ConversionStatus::Reversed
        ) {
            return Ok(row.to_pb(&quote, viewer));
        }
        Self::check_reversible(&row, &saga, &quote)?;
        let now = now_micros();
        let owner = new_id();
        if self
            .begin_reversal(&row.conversion_id, saga, &request.reason, &owner, now)
            .await?
        {
            self.drive_conversion(&row.conversion_id, &owner).await?;
        }
        let row = self
            .load_conversion(&row.conversion_id)
            .await?
            .ok_or_else(not_found)?;
        if row.saga()?.status == ConversionStatus::Completed && !row.failure_reason.is_empty() {
            return Err(ExchangeError::ReversalRefused(row.failure_reason.clone()));
        }
        Ok(row.to_pb(&quote, viewer))
    }

    /// Why a COMPLETED conversion cannot be reversed now, if it cannot: a reversal refused
    /// before, a conversion that did not complete, terms that allow none, a window closed.
    fn check_reversible(
        row: &ConversionRow,
        saga: &ConversionSaga,
        quote: &QuoteRow,
    ) -> Result<(), ExchangeError> {
        match saga.status {
            ConversionStatus::Reversing | ConversionStatus::Reversed => {}
            ConversionStatus::Completed if !saga.failure_reason.is_empty() => {
                return Err(ExchangeError::ReversalRefused(saga.failure_reason.clone()));
            }
            ConversionStatus::Completed => {}
            ConversionStatus::Pending | ConversionStatus::Failed => {
                return Err(ExchangeError::ConversionNotCompleted(saga.status.as_str()));
            }
        }
        if quote.reversal_hours == 0 {
            return Err(ExchangeError::ReversalNotAllowed);
        }
        let now = now_micros();
        let deadline = row.finished_at_micros.unwrap_or(row.created_at_micros)
            + quote.reversal_hours * 3_600_000_000;
        if now > deadline {
            return Err(ExchangeError::ReversalWindowClosed(quote.reversal_hours));
        }
        Ok(())
    }

    /// Records REVERSING under a new lease held by `owner`, before any partner is called, so a
    /// crash leaves a reversal to finish. False when the conversion is no longer COMPLETED or
    /// another driver holds it.
    async fn begin_reversal(
        &self,
        conversion_id: &str,
        saga: ConversionSaga,
        reason: &str,
        owner: &str,
        now: i64,
    ) -> Result<bool, ExchangeError> {
        let reversing = saga.start_reversal();
        let started = sqlx::query(
            "UPDATE conversions SET status = $1, step = $2, \
             attempts = 0, last_error = '', reverse_reason = $3, lease_owner = $4, \
             lease_until_micros = $5, updated_at_micros = $6 \
             WHERE conversion_id = $7 AND status = $8 AND failure_reason = '' \
             AND lease_until_micros < $6",
        )
        .bind(reversing.status.as_str())
        .bind(reversing.step.as_str())
        .bind(reason)
        .bind(owner)
        .bind(self.lease_until())
        .bind(now)
        .bind(conversion_id)
        .bind(ConversionStatus::Completed.as_str())
        .execute(self.database.pool())
        .await
        .map_err(ExchangeError::from)?
        .rows_affected();
        Ok(started == 1)
    }
}

pub(crate) fn leg(account_id: String, direction: pb::Direction, amount_minor: i64) -> pb::Leg {
    pb::Leg {
        account_id,
        direction: direction.into(),
        amount_minor,
    }
}
