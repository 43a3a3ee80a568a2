//! Cross-brand earn: a partner reports a member's purchase, and every linked partner whose
//! agreement from the reporter has earn rules credits its points.
//!
//! Each earning is a saga like a conversion. Without a hold: post the ledger transaction in which
//! the reporter owes the target, then credit the member at the target's gateway. With a hold: the
//! ledger transaction is posted PENDING at once (the obligation is visible), and when the hold
//! ends the worker credits the member and posts it. A refund inside the hold voids it; after it,
//! the points are debited back and the ledger transaction reversed.
//!
//! The credit is the last movement, so a refused credit, which may follow a credit that applied
//! without an answer, is reversed by key, and the ledger transaction reversed (or voided) after
//! it; a refused clawback is likewise reversed by key. Whatever a gateway answers, the member's
//! points and the ledger agree.

use std::collections::HashMap;

use chrono::Datelike;
use rust_decimal::Decimal;
use tandem_auth::Caller;
use tandem_domain::{Currency, ExternalId, MemberId, Text, from_unix_micros, to_unix_micros};
use tandem_proto::{time::datetime, v1 as pb};
use tandem_storage::{Backend, ColumnType, JsonRows};
use tonic::Code;

use crate::{
    Exchange, ExchangeError,
    conversions::{currency_scale, decimal, require_active, sides},
    is_staff, new_id, now_micros, own_partner,
    peers::terms_at,
    pricing, require_partner,
    rows::{ACTIVITY_COLUMNS, ActivityRow, EARNING_COLUMNS, EarningRow},
    saga::{SagaTable, earning::EarningSaga},
    writes::{EarningProgress, SagaProgress},
};

/// How far in the future an activity time may be, for clock differences between systems.
const CLOCK_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;
/// How long the pending ledger transaction of a held earning lives: the ledger's longest, 400
/// days, which outlives the longest hold (365 days from the activity) by more than a month, so a
/// worker that is down for a while still finds it open. It is the same for every attempt: a retry
/// must send the very same request, or the ledger refuses the key as reused.
pub(crate) const HOLD_TIMEOUT_SECONDS: i64 = 400 * 24 * 3600;
const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;
/// The earliest activity time accepted, 2000-01-01T00:00:00Z: no loyalty purchase older than
/// Tandem's partners' programs is reported, and a time near year 0 is a client's bug (an unset
/// date), not a purchase.
const EARLIEST_ACTIVITY_MICROS: i64 = 946_684_800 * 1_000_000;

/// What became of one report that was recorded (or had been).
#[derive(Debug)]
pub(crate) struct Recorded {
    activity_id: String,
    replayed: bool,
    /// For a new activity: the lease owner of its earnings, and the earnings as written.
    new_earnings: Option<(String, Vec<EarningRow>)>,
}

/// A recorded report, or why it was refused.
type RecordOutcome = Result<Recorded, ExchangeError>;

/// A checked activity report.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub partner_id: String,
    pub external_id: String,
    pub member_id: String,
    pub spend_minor: i64,
    pub currency: Currency,
    pub category: String,
    pub tier: String,
    pub at_micros: i64,
}

impl Report {
    pub fn parse(request: pb::RecordActivityRequest) -> Result<Self, ExchangeError> {
        let mut violations: Vec<(&str, String)> = Vec::new();
        // The same rules as every service's: linking refuses the member ids this would let by.
        if let Err(error) = ExternalId::parse(&request.external_id) {
            violations.push(("external_id", error));
        }
        if let Err(error) = MemberId::parse(&request.member_id) {
            violations.push(("member_id", error));
        }
        if request.spend_amount_minor < 1 {
            violations.push(("spend_amount_minor", "must be at least 1".into()));
        }
        let currency = request.spend_currency.parse::<Currency>();
        if let Err(error) = &currency {
            violations.push(("spend_currency", error.to_string()));
        }
        let category = Text::<32>::parse(&request.category);
        if let Err(error) = &category {
            violations.push(("category", error.clone()));
        }
        // The tier is optional: empty means none.
        let tier = match request.member_tier.as_str() {
            "" => Ok(String::new()),
            tier => Text::<32>::parse(tier).map(|tier| tier.as_str().to_owned()),
        };
        if let Err(error) = &tier {
            violations.push(("member_tier", error.clone()));
        }
        let at = match request.activity_time.as_ref().map(datetime) {
            None => {
                violations.push(("activity_time", "is required".into()));
                None
            }
            Some(Err(error)) => {
                violations.push(("activity_time", error));
                None
            }
            Some(Ok(at)) if to_unix_micros(at) < EARLIEST_ACTIVITY_MICROS => {
                violations.push((
                    "activity_time",
                    "must be on or after 2000-01-01T00:00:00Z".into(),
                ));
                None
            }
            Some(Ok(at)) if to_unix_micros(at) > now_micros() + CLOCK_SKEW_MICROS => {
                violations.push(("activity_time", "must not be in the future".into()));
                None
            }
            Some(Ok(at)) => Some(to_unix_micros(at)),
        };
        match (currency, at, category, tier) {
            (Ok(currency), Some(at_micros), Ok(category), Ok(tier)) if violations.is_empty() => {
                Ok(Self {
                    partner_id: request.partner_id,
                    external_id: request.external_id,
                    member_id: request.member_id,
                    spend_minor: request.spend_amount_minor,
                    currency,
                    category: category.as_str().to_owned(),
                    tier,
                    at_micros,
                })
            }
            _ => Err(ExchangeError::violations(violations)),
        }
    }

    fn same_as(&self, row: &ActivityRow) -> bool {
        row.member_id == self.member_id
            && row.spend_amount_minor == self.spend_minor
            && row.spend_currency == self.currency.code()
            && row.category == self.category
            && row.member_tier == self.tier
            && row.activity_at_micros == self.at_micros
    }
}

/// An earning worked out before the annual cap is applied (which happens inside the write).
#[derive(Debug, Clone)]
struct Plan {
    row: EarningRow,
    points_per_spend_unit: Decimal,
    multiplier: Decimal,
    price: Decimal,
    fee_basis_points: u32,
    spend_scale: u32,
    annual_cap: Option<i64>,
}

/// Where an activity earns: the link to the partner, that partner, and the agreement's terms in
/// force at the activity time with their earn rules.
struct EarnSite<'a> {
    link: &'a pb::Link,
    target: &'a pb::Partner,
    target_member_id: String,
    agreement_id: &'a str,
    terms_version: i32,
    terms: &'a pb::AgreementTerms,
    rules: &'a pb::EarnRules,
}

/// The member links one stream (or one call) has already looked up, by (partner, member), so a
/// day of rides asks linking once per group for the members it has not seen rather than once
/// per ride. Partners and agreements come from the registry lookups `Peers` already reuses.
#[derive(Default)]
pub(crate) struct Lookups {
    links: HashMap<(String, String), Vec<pb::Link>>,
}

impl Lookups {
    /// Looks up, in one call per partner, the links of every member of `reports` not yet known.
    async fn fill(
        &mut self,
        peers: &crate::Peers,
        reports: &[&Report],
    ) -> Result<(), ExchangeError> {
        let mut missing: HashMap<&str, Vec<String>> = HashMap::new();
        for report in reports {
            let key = (report.partner_id.clone(), report.member_id.clone());
            if !self.links.contains_key(&key) {
                let members = missing.entry(report.partner_id.as_str()).or_default();
                if !members.contains(&report.member_id) {
                    members.push(report.member_id.clone());
                }
            }
        }
        for (partner, members) in missing {
            let mut found = peers.active_links_of(partner, &members).await?;
            for member in members {
                let links = found.remove(&member).unwrap_or_default();
                self.links.insert((partner.to_owned(), member), links);
            }
        }
        Ok(())
    }
}

/// Spend already earned on, by (agreement, member, year), for the annual caps of one group.
type SpendUsed = HashMap<(String, String, i64), i64>;

fn in_window(window: &pb::PromotionWindow, at: i64) -> bool {
    let micros = |t: &Option<tandem_proto::time::ProtoTimestamp>| {
        t.as_ref()
            .and_then(|t| datetime(t).ok())
            .map(to_unix_micros)
    };
    matches!((micros(&window.start_time), micros(&window.end_time)), (Some(start), Some(end)) if start <= at && at < end)
}

impl Exchange {
    /// The earnings an activity makes: one outcome per partner the member is linked to.
    async fn plan(
        &self,
        lookups: &Lookups,
        report: &Report,
        activity_id: &str,
    ) -> Result<Vec<Plan>, ExchangeError> {
        let no_links = Vec::new();
        let links = lookups
            .links
            .get(&(report.partner_id.clone(), report.member_id.clone()))
            .unwrap_or(&no_links);
        let mut plans = Vec::new();
        for link in links {
            if let Some(plan) = self.plan_at(report, activity_id, link).await? {
                plans.push(plan);
            }
        }
        Ok(plans)
    }

    /// The earning at the other side of `link`, or why it earns nothing there; `None` when the
    /// link is not the reporter's.
    async fn plan_at(
        &self,
        report: &Report,
        activity_id: &str,
        link: &pb::Link,
    ) -> Result<Option<Plan>, ExchangeError> {
        let Some((_, target_partner_id, target_member_id)) = sides(link, &report.partner_id) else {
            return Ok(None);
        };
        // Every linked partner gets an outcome; one that earns nothing says why.
        let nothing = |note: String| {
            Self::not_earned(
                report,
                activity_id,
                link,
                &target_partner_id,
                &target_member_id,
                note,
            )
        };
        let Some(agreement) = self
            .peers
            .agreement(&report.partner_id, &target_partner_id)
            .await?
        else {
            return Ok(Some(nothing(
                "no ACTIVE agreement from the reporter to this partner".to_owned(),
            )));
        };
        let Some((version, terms)) = terms_at(&agreement, report.at_micros)
            .and_then(|version| version.terms.as_ref().map(|terms| (version, terms)))
        else {
            return Ok(Some(nothing(format!(
                "no terms of agreement {} were in force at activity_time",
                agreement.agreement_id
            ))));
        };
        let Some(rules) = terms.earn_rules.as_ref() else {
            return Ok(Some(nothing(format!(
                "the terms of agreement {} in force at activity_time have no earn rules",
                agreement.agreement_id
            ))));
        };
        let target = self.peers.partner(&target_partner_id).await?;
        if let Err(refusal) = require_active(&target) {
            return Ok(Some(nothing(refusal.to_string())));
        }
        let site = EarnSite {
            link,
            target: &target,
            target_member_id,
            agreement_id: &agreement.agreement_id,
            terms_version: version.version,
            terms,
            rules,
        };
        Self::earning_plan(report, activity_id, site).map(Some)
    }

    /// The earning at `target` under `rules`, priced before the annual cap is applied; with a
    /// note and nothing to earn when the spend's currency or category earns nothing.
    fn earning_plan(
        report: &Report,
        activity_id: &str,
        site: EarnSite<'_>,
    ) -> Result<Plan, ExchangeError> {
        let EarnSite {
            link,
            target,
            target_member_id,
            agreement_id,
            terms_version,
            terms,
            rules,
        } = site;
        let target_scale = target.program.as_ref().map_or(0, |program| program.scale);
        let (multiplier, note) = Self::multiplier_and_note(report, rules)?;
        let hold_until = (rules.hold_days > 0)
            .then(|| report.at_micros + i64::from(rules.hold_days) * DAY_MICROS);
        let target_program = target.program.as_ref().map(|program| program.code.clone());
        let earned = note.is_empty();
        let row = EarningRow {
            earning_id: new_id(),
            activity_id: activity_id.to_owned(),
            source_partner_id: report.partner_id.clone(),
            source_member_id: report.member_id.clone(),
            target_partner_id: target.partner_id.clone(),
            target_member_id,
            target_gateway: target.gateway_endpoint.clone(),
            link_id: link.link_id.clone(),
            agreement_id: agreement_id.to_owned(),
            terms_version: terms_version.into(),
            target_program: target_program.unwrap_or_default(),
            target_scale: target_scale.into(),
            points: 0,
            eligible_spend_minor: if earned { report.spend_minor } else { 0 },
            spend_year: from_unix_micros(report.at_micros).year().into(),
            multiplier: multiplier.normalize().to_string(),
            settlement_currency: target.settlement_currency.clone(),
            currency_scale: currency_scale(target)?.into(),
            settlement_amount_minor: 0,
            fee_amount_minor: 0,
            status: if earned { "CREDITING" } else { "NOT_EARNED" }.to_owned(),
            step: "DONE".to_owned(),
            refund_requested: 0,
            hold_until_micros: hold_until,
            note,
            ledger_transaction_id: String::new(),
            attempts: 0,
            last_error: String::new(),
        };
        Ok(Plan {
            row,
            points_per_spend_unit: decimal(&rules.points_per_spend_unit, "earn rate")?,
            multiplier,
            price: decimal(&terms.settlement_price, "settlement price")?,
            fee_basis_points: terms.exchange_fee_basis_points,
            spend_scale: report.currency.exponent(),
            annual_cap: rules.annual_spend_cap_minor,
        })
    }

    /// The multiplier the member's tier and the promotions running at the activity time give,
    /// and why the spend earns nothing (another currency, an excluded category), if it does not.
    fn multiplier_and_note(
        report: &Report,
        rules: &pb::EarnRules,
    ) -> Result<(Decimal, String), ExchangeError> {
        let tier = rules
            .tier_multipliers
            .iter()
            .find(|entry| !report.tier.is_empty() && entry.tier == report.tier)
            .map(|entry| decimal(&entry.multiplier, "tier multiplier"))
            .transpose()?;
        let mut promotions = Vec::new();
        for window in rules
            .promotions
            .iter()
            .filter(|window| in_window(window, report.at_micros))
        {
            promotions.push(decimal(&window.multiplier, "promotion multiplier")?);
        }
        let multiplier = pricing::earn_multiplier(tier, promotions.into_iter());
        let mut note = String::new();
        if rules.spend_currency != report.currency.code() {
            note = format!(
                "spend in {} does not earn: the earn rules count spend in {}",
                report.currency.code(),
                rules.spend_currency
            );
        } else if rules
            .excluded_spend_categories
            .iter()
            .any(|category| category.eq_ignore_ascii_case(&report.category))
        {
            note = format!("category {} is excluded from earning", report.category);
        }
        Ok((multiplier, note))
    }

    /// The outcome at a linked partner where the activity earns nothing, saying why.
    fn not_earned(
        report: &Report,
        activity_id: &str,
        link: &pb::Link,
        target_partner_id: &str,
        target_member_id: &str,
        note: String,
    ) -> Plan {
        let row = EarningRow {
            earning_id: new_id(),
            activity_id: activity_id.to_owned(),
            source_partner_id: report.partner_id.clone(),
            source_member_id: report.member_id.clone(),
            target_partner_id: target_partner_id.to_owned(),
            target_member_id: target_member_id.to_owned(),
            target_gateway: String::new(),
            link_id: link.link_id.clone(),
            agreement_id: String::new(),
            terms_version: 0,
            target_program: String::new(),
            target_scale: 0,
            points: 0,
            eligible_spend_minor: 0,
            spend_year: from_unix_micros(report.at_micros).year().into(),
            multiplier: "1".to_owned(),
            settlement_currency: String::new(),
            currency_scale: 0,
            settlement_amount_minor: 0,
            fee_amount_minor: 0,
            status: "NOT_EARNED".to_owned(),
            step: "DONE".to_owned(),
            refund_requested: 0,
            hold_until_micros: None,
            note,
            ledger_transaction_id: String::new(),
            attempts: 0,
            last_error: String::new(),
        };
        Plan {
            row,
            points_per_spend_unit: Decimal::ZERO,
            multiplier: Decimal::ONE,
            price: Decimal::ZERO,
            fee_basis_points: 0,
            spend_scale: report.currency.exponent(),
            annual_cap: None,
        }
    }

    /// Applies the annual cap (against the spend `used` so far, which it adds to) and prices the
    /// earning.
    fn finish_plan(plan: &mut Plan, used: &mut SpendUsed) -> Result<(), ExchangeError> {
        if plan.row.status == "NOT_EARNED" {
            return Ok(());
        }
        if let Some(cap) = plan.annual_cap {
            let row = &mut plan.row;
            let spent = used
                .entry((
                    row.agreement_id.clone(),
                    row.source_member_id.clone(),
                    row.spend_year,
                ))
                .or_default();
            let left = (cap - *spent).max(0);
            if left < row.eligible_spend_minor {
                row.eligible_spend_minor = left;
                row.note = format!("the annual spend cap of {cap} minor units limited what earns");
            }
            *spent += row.eligible_spend_minor;
        }
        let priced = Self::price_plan(plan, plan.row.eligible_spend_minor)?;
        let row = &mut plan.row;
        let Some((points, settlement, fee)) = priced else {
            row.status = "NOT_EARNED".to_owned();
            if row.note.is_empty() {
                row.note = "the spend earns less than one point".to_owned();
            } else if row.eligible_spend_minor == 0 {
                row.note = "the annual spend cap is reached: nothing earns".to_owned();
            }
            row.eligible_spend_minor = 0;
            return Ok(());
        };
        row.points = points;
        row.settlement_amount_minor = settlement;
        row.fee_amount_minor = fee;
        // See `saga::earning` for why the ledger goes first when there is no hold.
        let start = EarningSaga::start(row.hold_until_micros.is_some());
        row.status = start.status.as_str().to_owned();
        row.step = start.step.as_str().to_owned();
        Ok(())
    }

    /// Refuses a plan that could not be priced even before any of its annual cap is used: the
    /// most it could earn on. Less spend can only price lower, so a plan that passes here is
    /// priced when the group is written, whatever spend the cap leaves it.
    fn check_plan(plan: &Plan) -> Result<(), ExchangeError> {
        if plan.row.status == "NOT_EARNED" {
            return Ok(());
        }
        let most = match plan.annual_cap {
            Some(cap) => plan.row.eligible_spend_minor.min(cap.max(0)),
            None => plan.row.eligible_spend_minor,
        };
        Self::price_plan(plan, most).map(|_| ())
    }

    /// The (points, settlement, fee) that `eligible_spend_minor` earns under `plan`, or None
    /// below one point.
    fn price_plan(
        plan: &Plan,
        eligible_spend_minor: i64,
    ) -> Result<Option<(i64, i64, i64)>, ExchangeError> {
        let too_large = || ExchangeError::invalid("spend_amount_minor", "is too large to earn on");
        let points = pricing::earned_points(
            plan.points_per_spend_unit,
            eligible_spend_minor,
            plan.spend_scale,
            plan.multiplier,
            plan.row.target_scale as u32,
        )
        .ok_or_else(too_large)?;
        if points < 1 {
            return Ok(None);
        }
        let (settlement, fee) = pricing::settlement(
            points,
            plan.row.target_scale as u32,
            plan.price,
            plan.row.currency_scale as u32,
            plan.fee_basis_points,
        )
        .ok_or_else(too_large)?;
        Ok(Some((points, settlement, fee)))
    }

    /// The spend already earned on under each capped agreement by the members of `plans`, read
    /// with the agreements' cap locks held (taken in agreement order, so groups never deadlock
    /// on them).
    async fn spend_used(
        &self,
        transaction: &mut sqlx::AnyConnection,
        plans: &[&Plan],
    ) -> Result<SpendUsed, ExchangeError> {
        let mut capped: Vec<(&str, &str, i64)> = plans
            .iter()
            .filter(|plan| plan.annual_cap.is_some() && plan.row.status != "NOT_EARNED")
            .map(|plan| {
                (
                    plan.row.agreement_id.as_str(),
                    plan.row.source_member_id.as_str(),
                    plan.row.spend_year,
                )
            })
            .collect();
        capped.sort_unstable();
        capped.dedup();
        let mut agreements: Vec<&str> = capped.iter().map(|(agreement, _, _)| *agreement).collect();
        agreements.dedup();
        for agreement in &agreements {
            self.lock_caps(transaction, agreement).await?;
        }
        let mut used = SpendUsed::new();
        for (agreement, member, year) in capped {
            let spent: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(SUM(eligible_spend_minor) AS BIGINT) FROM earnings \
                 WHERE agreement_id = $1 AND source_member_id = $2 AND spend_year = $3 \
                 AND status NOT IN ('VOIDED', 'REVERSED', 'FAILED')",
            )
            .bind(agreement)
            .bind(member)
            .bind(year)
            .fetch_one(&mut *transaction)
            .await
            .map_err(ExchangeError::from)?;
            used.insert(
                (agreement.to_owned(), member.to_owned(), year),
                spent.unwrap_or(0),
            );
        }
        Ok(used)
    }

    async fn activity_by_external_id(
        &self,
        partner_id: &str,
        external_id: &str,
    ) -> Result<Option<ActivityRow>, ExchangeError> {
        sqlx::query_as::<_, ActivityRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activities WHERE partner_id = $1 AND external_id = $2"
        )))
        .bind(partner_id)
        .bind(external_id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(ExchangeError::from)
    }

    async fn earnings_of(&self, activity_id: &str) -> Result<Vec<EarningRow>, ExchangeError> {
        sqlx::query_as::<_, EarningRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {EARNING_COLUMNS} FROM earnings WHERE activity_id = $1 ORDER BY earning_id"
        )))
        .bind(activity_id)
        .fetch_all(self.database.pool())
        .await
        .map_err(ExchangeError::from)
    }

    async fn activity_pb(&self, row: &ActivityRow) -> Result<pb::Activity, ExchangeError> {
        Ok(row.to_pb(&self.earnings_of(&row.activity_id).await?))
    }

    fn check_replay(report: &Report, existing: &ActivityRow) -> Result<(), ExchangeError> {
        if report.same_as(existing) {
            Ok(())
        } else {
            Err(ExchangeError::ExternalIdReused(report.external_id.clone()))
        }
    }

    pub async fn record_activity(
        &self,
        caller: &Caller,
        request: pb::RecordActivityRequest,
    ) -> Result<(pb::Activity, bool), ExchangeError> {
        require_partner(caller, &request.partner_id)?;
        let report = Report::parse(request)?;
        let mut lookups = Lookups::default();
        let recorded = self
            .record_group(&mut lookups, std::slice::from_ref(&report))
            .await?
            .pop()
            .ok_or_else(|| ExchangeError::internal("report not handled"))??;
        let replayed = recorded.replayed;
        if let Some((owner, earnings)) = recorded.new_earnings {
            self.drive_earnings(earnings, &owner).await?;
        }
        let row = self
            .activity_by_external_id(&report.partner_id, &report.external_id)
            .await?
            .ok_or_else(|| ExchangeError::internal("activity vanished"))?;
        Ok((self.activity_pb(&row).await?, replayed))
    }

    /// The reporters of `reports` that may not report now (SUSPENDED or OFFBOARDED since their
    /// token was issued), each with its refusal. The registry is asked at most once a second
    /// per partner (`Peers`), so a suspension takes effect within a second.
    async fn inactive_reporters(
        &self,
        reports: &[Report],
    ) -> Result<HashMap<String, ExchangeError>, ExchangeError> {
        let mut partners: Vec<&str> = reports
            .iter()
            .map(|report| report.partner_id.as_str())
            .collect();
        partners.sort_unstable();
        partners.dedup();
        let mut inactive = HashMap::new();
        for partner_id in partners {
            let partner = self.peers.partner(partner_id).await?;
            if partner.status != pb::PartnerStatus::Active as i32 {
                inactive.insert(
                    partner_id.to_owned(),
                    ExchangeError::ReporterNotActive(partner_id.to_owned()),
                );
            }
        }
        Ok(inactive)
    }

    /// Records checked reports in one write transaction: for each, (activity id, replayed,
    /// lease owner of its new earnings) or why it was refused. A report whose external id is
    /// already recorded (before, or earlier in the group) is a replay when its content matches.
    pub(crate) async fn record_group(
        &self,
        lookups: &mut Lookups,
        reports: &[Report],
    ) -> Result<Vec<RecordOutcome>, ExchangeError> {
        let mut outcomes: Vec<Option<RecordOutcome>> = (0..reports.len()).map(|_| None).collect();
        // Every report is planned as new; one whose external id is already recorded finds it
        // taken when its activity is inserted, and is answered as a replay then. Replays are
        // rare, so looking them up first would cost every group a query for nothing.
        let inactive = self.inactive_reporters(reports).await?;
        let mut fresh = Vec::with_capacity(reports.len());
        for (index, report) in reports.iter().enumerate() {
            match inactive.get(&report.partner_id) {
                Some(refusal) => outcomes[index] = Some(Err(refusal.clone())),
                None => fresh.push(index),
            }
        }
        let fresh_reports: Vec<&Report> = fresh.iter().map(|index| &reports[*index]).collect();
        lookups.fill(&self.peers, &fresh_reports).await?;
        let mut planned = Vec::with_capacity(fresh.len());
        for index in fresh {
            let activity_id = new_id();
            let plans = match self.plan(lookups, &reports[index], &activity_id).await {
                Ok(plans) => plans,
                Err(error) if error.code() == Code::Unavailable => return Err(error),
                Err(status) => {
                    outcomes[index] = Some(Err(status));
                    continue;
                }
            };
            // Priced at the most it could earn (no spend used yet): a report that fails here
            // is refused before anything is written.
            let refusal = plans.iter().find_map(|plan| Self::check_plan(plan).err());
            match refusal {
                Some(status) => outcomes[index] = Some(Err(status)),
                None => planned.push((index, activity_id, plans)),
            }
        }
        let collided = if planned.is_empty() {
            Vec::new()
        } else {
            self.write_group(reports, &mut planned, &mut outcomes)
                .await?
        };
        // Reported twice (in this group, or concurrently elsewhere): the first one stands.
        for index in collided {
            let report = &reports[index];
            let existing = self
                .activity_by_external_id(&report.partner_id, &report.external_id)
                .await?
                .ok_or_else(|| ExchangeError::internal("activity vanished"))?;
            outcomes[index] = Some(Self::check_replay(report, &existing).map(|()| Recorded {
                activity_id: existing.activity_id,
                replayed: true,
                new_earnings: None,
            }));
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| Err(ExchangeError::internal("report not handled")))
            })
            .collect())
    }

    /// Writes a group's activities and earnings in one transaction: the cap locks first, then
    /// the activities (one whose external id is taken is skipped and returned as collided), then
    /// the caps applied in order and the earnings of the activities that landed.
    async fn write_group(
        &self,
        reports: &[Report],
        planned: &mut [(usize, String, Vec<Plan>)],
        outcomes: &mut [Option<RecordOutcome>],
    ) -> Result<Vec<usize>, ExchangeError> {
        let owner = new_id();
        let now = now_micros();
        let lease_until = self.lease_until();
        let mut transaction = self
            .database
            .begin_write()
            .await
            .map_err(ExchangeError::from)?;
        let all_plans: Vec<&Plan> = planned
            .iter()
            .flat_map(|(_, _, plans)| plans.iter())
            .collect();
        let mut used = self.spend_used(&mut transaction, &all_plans).await?;
        let activities: Vec<(&Report, &str)> = planned
            .iter()
            .map(|(index, activity_id, _)| (&reports[*index], activity_id.as_str()))
            .collect();
        let backend = self.database.backend();
        let inserted = insert_activities(&mut transaction, backend, &activities, now)
            .await
            .map_err(ExchangeError::from)?;
        let landed = |activity_id: &str| inserted.contains(activity_id);
        let mut collided = Vec::new();
        for (index, activity_id, plans) in planned.iter_mut() {
            if !landed(activity_id) {
                collided.push(*index);
                continue;
            }
            for plan in plans.iter_mut() {
                Self::finish_plan(plan, &mut used)?;
            }
        }
        let earnings: Vec<&EarningRow> = planned
            .iter()
            .filter(|(_, activity_id, _)| landed(activity_id))
            .flat_map(|(_, _, plans)| plans.iter().map(|plan| &plan.row))
            .collect();
        insert_earnings(
            &mut transaction,
            backend,
            &earnings,
            now,
            &owner,
            lease_until,
        )
        .await
        .map_err(ExchangeError::from)?;
        transaction.commit().await.map_err(ExchangeError::from)?;
        // Committed: each landed report's earnings move to its outcome, to be driven.
        for (index, activity_id, plans) in planned.iter_mut() {
            if !landed(activity_id) {
                continue;
            }
            outcomes[*index] = Some(Ok(Recorded {
                activity_id: std::mem::take(activity_id),
                replayed: false,
                new_earnings: Some((
                    owner.clone(),
                    plans.drain(..).map(|plan| plan.row).collect(),
                )),
            }));
        }
        Ok(collided)
    }

    /// Drives every unfinished earning `owner` leases, side by side.
    async fn drive_earnings(
        &self,
        earnings: Vec<EarningRow>,
        owner: &str,
    ) -> Result<(), ExchangeError> {
        let drives = earnings
            .into_iter()
            .filter(|earning| earning.step != "DONE")
            .map(|earning| async move { self.drive_earning(earning, owner).await });
        for result in futures::future::join_all(drives).await {
            result?;
        }
        Ok(())
    }

    async fn load_earning(&self, id: &str) -> Result<Option<EarningRow>, ExchangeError> {
        sqlx::query_as::<_, EarningRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {EARNING_COLUMNS} FROM earnings WHERE earning_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(ExchangeError::from)
    }

    pub(crate) async fn resume_earning(&self, id: &str) -> Result<(), ExchangeError> {
        if let Some(owner) = self.claim(SagaTable::Earnings, id).await?
            && let Some(earning) = self.load_earning(id).await?
        {
            self.drive_earning(earning, &owner).await?;
        }
        Ok(())
    }

    /// Writes an earning's progress if `owner` still holds it; `wait` releases the lease and
    /// says when the worker may try again.
    pub(crate) async fn record_earning(
        &self,
        earning: &EarningRow,
        owner: &str,
        wait: Option<std::time::Duration>,
        next_at: Option<i64>,
    ) -> Result<bool, ExchangeError> {
        let now = now_micros();
        let (next_attempt, lease_until) = match (wait, next_at) {
            (_, Some(at)) => (at, 0),
            (Some(wait), None) => (now + wait.as_micros() as i64, 0),
            (None, None) => (now, self.lease_until()),
        };
        self.writers
            .progress(SagaProgress::Earning(EarningProgress {
                earning_id: earning.earning_id.clone(),
                lease_owner: owner.to_owned(),
                status: earning.status.clone(),
                step: earning.step.clone(),
                attempts: earning.attempts,
                last_error: earning.last_error.clone(),
                note: earning.note.clone(),
                ledger_transaction_id: earning.ledger_transaction_id.clone(),
                next_attempt_micros: next_attempt,
                lease_until_micros: lease_until,
                updated_at_micros: now,
            }))
            .await
    }

    pub(crate) async fn earning_transaction(
        &self,
        earning: &EarningRow,
        key: String,
        kind: pb::TransactionKind,
        timeout_seconds: i64,
    ) -> Result<pb::PostTransactionRequest, ExchangeError> {
        let mut legs = Vec::with_capacity(5);
        legs.extend(
            self.points_legs(
                &earning.target_partner_id,
                &earning.target_program,
                earning.target_scale as u32,
                earning.points,
                true,
            )
            .await?,
        );
        legs.extend(
            self.money_legs(
                &earning.source_partner_id,
                &earning.target_partner_id,
                &earning.settlement_currency,
                earning.currency_scale as u32,
                earning.settlement_amount_minor,
                earning.fee_amount_minor,
            )
            .await?,
        );
        Ok(pb::PostTransactionRequest {
            idempotency_key: key,
            legs,
            kind: kind.into(),
            type_code: "EARN".to_owned(),
            external_reference: earning.activity_id.clone(),
            effective_time: None,
            metadata: [
                ("earning_id".to_owned(), earning.earning_id.clone()),
                ("agreement_id".to_owned(), earning.agreement_id.clone()),
                (
                    "terms_version".to_owned(),
                    earning.terms_version.to_string(),
                ),
            ]
            .into(),
            pending_timeout_seconds: timeout_seconds,
        })
    }

    pub async fn get_activity(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<pb::Activity, ExchangeError> {
        let denied = || {
            ExchangeError::PermissionDenied(
                "activities are read by ops, the reporting partner and the partners where they \
                 earned",
            )
        };
        let own = own_partner(caller);
        if own.is_none() && !is_staff(caller) {
            return Err(denied());
        }
        let not_found = || ExchangeError::ActivityNotFound(id.to_owned());
        // An id Tandem never made names no activity, and never reaches the database.
        if !tandem_domain::is_server_id(id) {
            return Err(not_found());
        }
        let row = sqlx::query_as::<_, ActivityRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activities WHERE activity_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.database.pool())
        .await
        .map_err(ExchangeError::from)?
        .ok_or_else(not_found)?;
        let earnings = self.earnings_of(&row.activity_id).await?;
        match own {
            Some(own) if own != row.partner_id => {
                // A partner where the member earned reads the activity as its own member's,
                // with its own earning only: never the reporter's member id.
                let Some(earning) = earnings
                    .iter()
                    .find(|earning| earning.target_partner_id == own)
                else {
                    return Err(denied());
                };
                let mut activity = row.to_pb(std::slice::from_ref(earning));
                activity.member_id = earning.target_member_id.clone();
                activity.member_tier.clear();
                Ok(activity)
            }
            _ => Ok(row.to_pb(&earnings)),
        }
    }

    pub async fn reverse_activity(
        &self,
        caller: &Caller,
        request: pb::ReverseActivityRequest,
    ) -> Result<pb::Activity, ExchangeError> {
        require_partner(caller, &request.partner_id)?;
        let mut violations = Vec::new();
        if let Err(error) = ExternalId::parse(&request.external_id) {
            violations.push(("external_id", error));
        }
        if let Err(error) = tandem_domain::Reason::parse(&request.reason) {
            violations.push(("reason", error));
        }
        if !violations.is_empty() {
            return Err(ExchangeError::violations(violations));
        }
        let row = self
            .activity_by_external_id(&request.partner_id, &request.external_id)
            .await?
            .ok_or_else(|| ExchangeError::ExternalIdNotFound(request.external_id.clone()))?;
        if row.status == "RECORDED" {
            self.record_refund(&row.activity_id, &request.reason)
                .await?;
        }
        // Drive what can be driven now; earnings another driver holds finish there.
        for earning in self.earnings_of(&row.activity_id).await? {
            if earning.step != "DONE" {
                self.resume_earning(&earning.earning_id).await?;
            }
        }
        let row = self
            .activity_by_external_id(&request.partner_id, &request.external_id)
            .await?
            .ok_or_else(|| ExchangeError::internal("activity vanished"))?;
        self.activity_pb(&row).await
    }

    /// Marks an activity refunded and sends its earnings back to their sagas, in one write
    /// transaction: posted earnings are to be clawed back, the rest notice the flag.
    async fn record_refund(&self, activity_id: &str, reason: &str) -> Result<(), ExchangeError> {
        let now = now_micros();
        let mut transaction = self
            .database
            .begin_write()
            .await
            .map_err(ExchangeError::from)?;
        sqlx::query(
            "UPDATE activities SET status = 'REVERSED', reverse_reason = $1 \
             WHERE activity_id = $2 AND status = 'RECORDED'",
        )
        .bind(reason)
        .bind(activity_id)
        .execute(&mut *transaction)
        .await
        .map_err(ExchangeError::from)?;
        // Posted earnings re-enter the saga to be clawed back; the rest notice the flag.
        sqlx::query(
            "UPDATE earnings SET refund_requested = 1, \
             step = CASE WHEN step = 'DONE' AND status = 'POSTED' THEN 'CLAWBACK' ELSE step END, \
             status = CASE WHEN step = 'DONE' AND status = 'POSTED' THEN 'CLAWING_BACK' ELSE status END, \
             next_attempt_micros = $1 WHERE activity_id = $2",
        )
        .bind(now)
        .bind(activity_id)
        .execute(&mut *transaction)
        .await
        .map_err(ExchangeError::from)?;
        // A posted earning just sent back to its saga is due again, and one still in its
        // saga is due now.
        sqlx::query(
            "INSERT INTO earnings_due (earning_id, next_attempt_micros) \
             SELECT earning_id, $1 FROM earnings WHERE activity_id = $2 AND step <> 'DONE' \
             ON CONFLICT (earning_id) DO UPDATE \
             SET next_attempt_micros = excluded.next_attempt_micros",
        )
        .bind(now)
        .bind(activity_id)
        .execute(&mut *transaction)
        .await
        .map_err(ExchangeError::from)?;
        transaction.commit().await.map_err(ExchangeError::from)?;
        Ok(())
    }

    /// Records a stream of reports in groups: lookups are shared across the stream, and each
    /// group's earnings are driven side by side.
    pub async fn record_activities(
        &self,
        caller: &Caller,
        requests: Vec<pb::RecordActivityRequest>,
    ) -> Result<pb::RecordActivitiesResponse, ExchangeError> {
        let mut lookups = Lookups::default();
        let mut results = Vec::with_capacity(requests.len());
        for group in requests.chunks(GROUP_SIZE) {
            results.extend(
                self.record_stream_group(caller, &mut lookups, group)
                    .await?,
            );
        }
        let refused = results
            .iter()
            .filter(|result| result.activity_id.is_empty())
            .count();
        Ok(pb::RecordActivitiesResponse {
            recorded: (results.len() - refused) as i32,
            refused: refused as i32,
            results,
        })
    }

    /// Records one group of a stream's reports, each answered on its own: a malformed or
    /// refused report gets its status, and the rest are recorded and their earnings driven.
    async fn record_stream_group(
        &self,
        caller: &Caller,
        lookups: &mut Lookups,
        group: &[pb::RecordActivityRequest],
    ) -> Result<Vec<pb::ActivityResult>, ExchangeError> {
        let mut results = Vec::with_capacity(group.len());
        let mut reports = Vec::with_capacity(group.len());
        let mut positions = Vec::with_capacity(group.len());
        for request in group {
            let parsed = require_partner(caller, &request.partner_id)
                .and_then(|()| Report::parse(request.clone()));
            match parsed {
                Ok(report) => {
                    positions.push(results.len());
                    reports.push(report);
                    results.push(pb::ActivityResult {
                        external_id: request.external_id.clone(),
                        ..Default::default()
                    });
                }
                Err(status) => results.push(refused_result(&request.external_id, &status)),
            }
        }
        let outcomes = self.record_group(lookups, &reports).await?;
        let mut owned = Vec::new();
        let mut replays = Vec::new();
        for (position, outcome) in positions.into_iter().zip(outcomes) {
            let result = &mut results[position];
            match outcome {
                Ok(recorded) => {
                    result.activity_id = recorded.activity_id;
                    result.replayed = recorded.replayed;
                    match recorded.new_earnings {
                        Some((owner, earnings)) => {
                            result.points = earnings.iter().map(|earning| earning.points).sum();
                            owned.push((owner, earnings));
                        }
                        None => replays.push(position),
                    }
                }
                Err(status) => *result = refused_result(&result.external_id, &status),
            }
        }
        let drives = owned
            .into_iter()
            .map(|(owner, earnings)| async move { self.drive_earnings(earnings, &owner).await });
        for result in futures::future::join_all(drives).await {
            result?;
        }
        for position in replays {
            let result = &mut results[position];
            result.points = self
                .earnings_of(&result.activity_id)
                .await?
                .iter()
                .map(|earning| earning.points)
                .sum();
        }
        Ok(results)
    }
}

fn refused_result(external_id: &str, error: &ExchangeError) -> pb::ActivityResult {
    let status = tonic::Status::from(error.clone());
    pb::ActivityResult {
        external_id: external_id.to_owned(),
        code: status.code() as i32,
        message: status.message().to_owned(),
        ..Default::default()
    }
}

/// Reports recorded in one transaction, whose earnings are then driven side by side: a stream of
/// the default bench size is one group.
const GROUP_SIZE: usize = 1_000;

/// An activity row as the group insert reads it.
#[derive(serde::Serialize)]
struct NewActivity<'a> {
    activity_id: &'a str,
    partner_id: &'a str,
    external_id: &'a str,
    member_id: &'a str,
    spend_amount_minor: i64,
    spend_currency: &'a str,
    category: &'a str,
    member_tier: &'a str,
    activity_at_micros: i64,
    recorded_at_micros: i64,
}

const ACTIVITY_ROWS: JsonRows = JsonRows::new(&[
    ("activity_id", ColumnType::Text),
    ("partner_id", ColumnType::Text),
    ("external_id", ColumnType::Text),
    ("member_id", ColumnType::Text),
    ("spend_amount_minor", ColumnType::BigInt),
    ("spend_currency", ColumnType::Text),
    ("category", ColumnType::Text),
    ("member_tier", ColumnType::Text),
    ("activity_at_micros", ColumnType::BigInt),
    ("recorded_at_micros", ColumnType::BigInt),
]);

/// Inserts activities, skipping any whose external id is already taken (`ON CONFLICT DO
/// NOTHING`, so one taken id never aborts the group); the ids of those inserted. The conflict is
/// named, so PostgreSQL checks only that unique index before each insert: the activity id is new.
async fn insert_activities(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    activities: &[(&Report, &str)],
    now: i64,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let rows: Vec<NewActivity<'_>> = activities
        .iter()
        .map(|(report, activity_id)| NewActivity {
            activity_id,
            partner_id: &report.partner_id,
            external_id: &report.external_id,
            member_id: &report.member_id,
            spend_amount_minor: report.spend_minor,
            spend_currency: report.currency.code(),
            category: &report.category,
            member_tier: &report.tier,
            activity_at_micros: report.at_micros,
            recorded_at_micros: now,
        })
        .collect();
    let query = format!(
        "INSERT INTO activities ({}, status, reverse_reason) SELECT {}, 'RECORDED', '' FROM {} \
         WHERE true ON CONFLICT (partner_id, external_id) DO NOTHING RETURNING activity_id",
        ACTIVITY_ROWS.names(),
        ACTIVITY_ROWS.columns("new_activity"),
        ACTIVITY_ROWS.source(backend, 1, "new_activity")
    );
    let inserted: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(ACTIVITY_ROWS.to_json(&rows))
        .fetch_all(connection)
        .await?;
    Ok(inserted.into_iter().collect())
}

const EARNING_ROWS: JsonRows = JsonRows::new(&[
    ("earning_id", ColumnType::Text),
    ("activity_id", ColumnType::Text),
    ("source_partner_id", ColumnType::Text),
    ("source_member_id", ColumnType::Text),
    ("target_partner_id", ColumnType::Text),
    ("target_member_id", ColumnType::Text),
    ("target_gateway", ColumnType::Text),
    ("link_id", ColumnType::Text),
    ("agreement_id", ColumnType::Text),
    ("terms_version", ColumnType::BigInt),
    ("target_program", ColumnType::Text),
    ("target_scale", ColumnType::BigInt),
    ("points", ColumnType::BigInt),
    ("eligible_spend_minor", ColumnType::BigInt),
    ("spend_year", ColumnType::BigInt),
    ("multiplier", ColumnType::Text),
    ("settlement_currency", ColumnType::Text),
    ("currency_scale", ColumnType::BigInt),
    ("settlement_amount_minor", ColumnType::BigInt),
    ("fee_amount_minor", ColumnType::BigInt),
    ("status", ColumnType::Text),
    ("step", ColumnType::Text),
    ("refund_requested", ColumnType::BigInt),
    ("hold_until_micros", ColumnType::BigInt),
    ("note", ColumnType::Text),
    ("ledger_transaction_id", ColumnType::Text),
    ("attempts", ColumnType::BigInt),
    ("last_error", ColumnType::Text),
]);

/// The earnings queued for their saga: just their ids. Each is queued for when its driver's
/// lease ends: the recovery worker takes only earnings whose lease has lapsed.
const DUE_ROWS: JsonRows = JsonRows::new(&[("earning_id", ColumnType::Text)]);

/// Inserts earnings with their saga state, leased to `owner` until `lease_until`, and queues
/// those whose saga has steps to take (`earnings_due`). On PostgreSQL both go as one statement.
async fn insert_earnings(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    earnings: &[&EarningRow],
    now: i64,
    owner: &str,
    lease_until: i64,
) -> Result<(), sqlx::Error> {
    if earnings.is_empty() {
        return Ok(());
    }
    let insert = format!(
        "INSERT INTO earnings ({}, next_attempt_micros, lease_owner, lease_until_micros, \
         updated_at_micros) SELECT {}, $2, $3, $4, $2 FROM {}",
        EARNING_ROWS.names(),
        EARNING_ROWS.columns("new_earning"),
        EARNING_ROWS.source(backend, 1, "new_earning")
    );
    let due: Vec<&EarningRow> = earnings
        .iter()
        .copied()
        .filter(|earning| earning.step != "DONE")
        .collect();
    // Queued at the end of the lease, the parameter after the rows.
    let queue = |parameter: usize| {
        format!(
            "INSERT INTO earnings_due (earning_id, next_attempt_micros) \
             SELECT due.earning_id, ${} FROM {}",
            parameter + 1,
            DUE_ROWS.source(backend, parameter, "due")
        )
    };
    match backend {
        Backend::Postgres => {
            let query = format!("WITH new_earnings AS ({insert}) {}", queue(5));
            sqlx::query(sqlx::AssertSqlSafe(query))
                .bind(EARNING_ROWS.to_json(earnings))
                .bind(now)
                .bind(owner)
                .bind(lease_until)
                .bind(DUE_ROWS.to_json(&due))
                .bind(lease_until)
                .execute(connection)
                .await?;
        }
        Backend::Sqlite => {
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind(EARNING_ROWS.to_json(earnings))
                .bind(now)
                .bind(owner)
                .bind(lease_until)
                .execute(&mut *connection)
                .await?;
            if !due.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(queue(1)))
                    .bind(DUE_ROWS.to_json(&due))
                    .bind(lease_until)
                    .execute(&mut *connection)
                    .await?;
            }
        }
    }
    Ok(())
}
