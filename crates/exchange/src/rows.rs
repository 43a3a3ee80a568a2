//! The exchange's rows as stored, and how each partner sees them.

use tandem_domain::from_unix_micros;
use tandem_proto::{time::timestamp, v1 as pb};

use crate::{
    ExchangeError,
    saga::conversion::{ConversionSaga, ConversionStatus, ConversionStep, UnknownValue},
};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub(crate) struct QuoteRow {
    pub quote_id: String,
    pub link_id: String,
    pub source_partner_id: String,
    pub source_member_id: String,
    pub source_gateway: String,
    pub source_program: String,
    pub source_scale: i64,
    pub source_points: i64,
    pub target_partner_id: String,
    pub target_member_id: String,
    pub target_gateway: String,
    pub target_program: String,
    pub target_scale: i64,
    pub target_points: i64,
    pub agreement_id: String,
    pub terms_version: i64,
    pub conversion_rate: String,
    pub settlement_currency: String,
    pub currency_scale: i64,
    pub settlement_amount_minor: i64,
    pub fee_amount_minor: i64,
    pub member_daily_cap_points: Option<i64>,
    pub agreement_monthly_cap_points: Option<i64>,
    pub reversal_hours: i64,
    pub created_at_micros: i64,
    pub expires_at_micros: i64,
}

pub(crate) const QUOTE_COLUMNS: &str = "quote_id, link_id, source_partner_id, source_member_id, \
     source_gateway, source_program, source_scale, source_points, target_partner_id, \
     target_member_id, target_gateway, target_program, target_scale, target_points, agreement_id, \
     terms_version, conversion_rate, settlement_currency, currency_scale, settlement_amount_minor, \
     fee_amount_minor, member_daily_cap_points, agreement_monthly_cap_points, reversal_hours, \
     created_at_micros, expires_at_micros";

/// Who is looking: each partner sees only its own member id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Viewer<'a> {
    Staff,
    Partner(&'a str),
}

impl Viewer<'_> {
    fn sees(&self, partner_id: &str) -> bool {
        match self {
            Viewer::Staff => true,
            Viewer::Partner(own) => *own == partner_id,
        }
    }
}

impl QuoteRow {
    pub fn to_pb(&self, viewer: Viewer<'_>) -> pb::Quote {
        let shown = |partner: &str, member: &str| {
            if viewer.sees(partner) {
                member.to_owned()
            } else {
                String::new()
            }
        };
        pb::Quote {
            quote_id: self.quote_id.clone(),
            link_id: self.link_id.clone(),
            source_partner_id: self.source_partner_id.clone(),
            source_member_id: shown(&self.source_partner_id, &self.source_member_id),
            target_partner_id: self.target_partner_id.clone(),
            agreement_id: self.agreement_id.clone(),
            terms_version: self.terms_version as i32,
            source_program: self.source_program.clone(),
            source_points: self.source_points,
            target_program: self.target_program.clone(),
            target_points: self.target_points,
            conversion_rate: self.conversion_rate.clone(),
            settlement_currency: self.settlement_currency.clone(),
            settlement_amount_minor: self.settlement_amount_minor,
            fee_amount_minor: self.fee_amount_minor,
            create_time: Some(timestamp(from_unix_micros(self.created_at_micros))),
            expire_time: Some(timestamp(from_unix_micros(self.expires_at_micros))),
            target_member_id: shown(&self.target_partner_id, &self.target_member_id),
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ConversionRow {
    pub conversion_id: String,
    pub quote_id: String,
    pub source_partner_id: String,
    pub idempotency_key: String,
    pub target_partner_id: String,
    pub status: String,
    pub step: String,
    pub attempts: i64,
    pub last_error: String,
    pub failure_reason: String,
    pub ledger_transaction_id: String,
    pub reversal_transaction_id: String,
    pub reverse_reason: String,
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
    pub finished_at_micros: Option<i64>,
}

pub(crate) const CONVERSION_COLUMNS: &str = "conversion_id, quote_id, source_partner_id, \
     idempotency_key, target_partner_id, status, step, attempts, last_error, failure_reason, \
     ledger_transaction_id, reversal_transaction_id, reverse_reason, created_at_micros, \
     updated_at_micros, finished_at_micros";

pub(crate) fn conversion_status(text: &str) -> pb::ConversionStatus {
    pb::ConversionStatus::from_str_name(&format!("CONVERSION_STATUS_{text}"))
        .unwrap_or(pb::ConversionStatus::Unspecified)
}

pub(crate) fn conversion_step(text: &str) -> pb::ConversionStep {
    pb::ConversionStep::from_str_name(&format!("CONVERSION_STEP_{text}"))
        .unwrap_or(pb::ConversionStep::Unspecified)
}

impl ConversionRow {
    /// The saga as stored; a status or step this version does not know is an error.
    pub fn saga(&self) -> Result<ConversionSaga, ExchangeError> {
        let unknown = |error: UnknownValue| ExchangeError::internal(error);
        Ok(ConversionSaga {
            status: ConversionStatus::parse(&self.status).map_err(unknown)?,
            step: ConversionStep::parse(&self.step).map_err(unknown)?,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            failure_reason: self.failure_reason.clone(),
            ledger_transaction_id: self.ledger_transaction_id.clone(),
            reversal_transaction_id: self.reversal_transaction_id.clone(),
        })
    }

    /// The row of a conversion just inserted, its saga at `started`.
    pub fn started(new: &crate::writes::NewConversion, started: ConversionSaga) -> Self {
        Self {
            conversion_id: new.conversion_id.clone(),
            quote_id: new.quote_id.clone(),
            source_partner_id: new.source_partner_id.clone(),
            idempotency_key: new.idempotency_key.clone(),
            target_partner_id: new.target_partner_id.clone(),
            status: started.status.as_str().to_owned(),
            step: started.step.as_str().to_owned(),
            attempts: started.attempts,
            last_error: started.last_error,
            failure_reason: started.failure_reason,
            ledger_transaction_id: started.ledger_transaction_id,
            reversal_transaction_id: started.reversal_transaction_id,
            reverse_reason: String::new(),
            created_at_micros: new.created_at_micros,
            updated_at_micros: new.created_at_micros,
            finished_at_micros: None,
        }
    }

    /// The row as `saga` was written at `written_at_micros`.
    pub fn record(&mut self, saga: &ConversionSaga, written_at_micros: i64) {
        self.status = saga.status.as_str().to_owned();
        self.step = saga.step.as_str().to_owned();
        self.attempts = saga.attempts;
        self.last_error = saga.last_error.clone();
        self.failure_reason = saga.failure_reason.clone();
        self.ledger_transaction_id = saga.ledger_transaction_id.clone();
        self.reversal_transaction_id = saga.reversal_transaction_id.clone();
        self.updated_at_micros = written_at_micros;
        self.finished_at_micros = saga.is_done().then_some(written_at_micros);
    }

    pub fn to_pb(&self, quote: &QuoteRow, viewer: Viewer<'_>) -> pb::Conversion {
        pb::Conversion {
            conversion_id: self.conversion_id.clone(),
            quote: Some(quote.to_pb(viewer)),
            idempotency_key: if viewer.sees(&self.source_partner_id) {
                self.idempotency_key.clone()
            } else {
                String::new()
            },
            status: conversion_status(&self.status).into(),
            step: conversion_step(&self.step).into(),
            attempts: self.attempts as i32,
            last_error: self.last_error.clone(),
            failure_reason: self.failure_reason.clone(),
            ledger_transaction_id: self.ledger_transaction_id.clone(),
            reversal_transaction_id: self.reversal_transaction_id.clone(),
            create_time: Some(timestamp(from_unix_micros(self.created_at_micros))),
            update_time: Some(timestamp(from_unix_micros(self.updated_at_micros))),
            finish_time: self
                .finished_at_micros
                .map(|micros| timestamp(from_unix_micros(micros))),
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ActivityRow {
    pub activity_id: String,
    pub partner_id: String,
    pub external_id: String,
    pub member_id: String,
    pub spend_amount_minor: i64,
    pub spend_currency: String,
    pub category: String,
    pub member_tier: String,
    pub activity_at_micros: i64,
    pub recorded_at_micros: i64,
    pub status: String,
    pub reverse_reason: String,
}

pub(crate) const ACTIVITY_COLUMNS: &str = "activity_id, partner_id, external_id, member_id, \
     spend_amount_minor, spend_currency, category, member_tier, activity_at_micros, \
     recorded_at_micros, status, reverse_reason";

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub(crate) struct EarningRow {
    pub earning_id: String,
    pub activity_id: String,
    pub source_partner_id: String,
    pub source_member_id: String,
    pub target_partner_id: String,
    pub target_member_id: String,
    pub target_gateway: String,
    pub link_id: String,
    pub agreement_id: String,
    pub terms_version: i64,
    pub target_program: String,
    pub target_scale: i64,
    pub points: i64,
    pub eligible_spend_minor: i64,
    pub spend_year: i64,
    pub multiplier: String,
    pub settlement_currency: String,
    pub currency_scale: i64,
    pub settlement_amount_minor: i64,
    pub fee_amount_minor: i64,
    pub status: String,
    pub step: String,
    pub refund_requested: i64,
    pub hold_until_micros: Option<i64>,
    pub note: String,
    pub ledger_transaction_id: String,
    pub attempts: i64,
    pub last_error: String,
}

pub(crate) const EARNING_COLUMNS: &str = "earning_id, activity_id, source_partner_id, \
     source_member_id, target_partner_id, target_member_id, target_gateway, link_id, \
     agreement_id, terms_version, target_program, target_scale, points, eligible_spend_minor, \
     spend_year, multiplier, settlement_currency, currency_scale, settlement_amount_minor, \
     fee_amount_minor, status, step, refund_requested, hold_until_micros, note, \
     ledger_transaction_id, attempts, last_error";

impl EarningRow {
    pub fn to_pb(&self) -> pb::Earning {
        pb::Earning {
            earning_id: self.earning_id.clone(),
            target_partner_id: self.target_partner_id.clone(),
            link_id: self.link_id.clone(),
            agreement_id: self.agreement_id.clone(),
            terms_version: self.terms_version as i32,
            target_program: self.target_program.clone(),
            points: self.points,
            eligible_spend_minor: self.eligible_spend_minor,
            multiplier: self.multiplier.clone(),
            settlement_currency: self.settlement_currency.clone(),
            settlement_amount_minor: self.settlement_amount_minor,
            fee_amount_minor: self.fee_amount_minor,
            status: pb::EarningStatus::from_str_name(&format!("EARNING_STATUS_{}", self.status))
                .unwrap_or(pb::EarningStatus::Unspecified)
                .into(),
            hold_until: self
                .hold_until_micros
                .map(|micros| timestamp(from_unix_micros(micros))),
            note: self.note.clone(),
            ledger_transaction_id: self.ledger_transaction_id.clone(),
        }
    }
}

impl ActivityRow {
    pub fn to_pb(&self, earnings: &[EarningRow]) -> pb::Activity {
        pb::Activity {
            activity_id: self.activity_id.clone(),
            partner_id: self.partner_id.clone(),
            external_id: self.external_id.clone(),
            member_id: self.member_id.clone(),
            spend_amount_minor: self.spend_amount_minor,
            spend_currency: self.spend_currency.clone(),
            category: self.category.clone(),
            member_tier: self.member_tier.clone(),
            activity_time: Some(timestamp(from_unix_micros(self.activity_at_micros))),
            record_time: Some(timestamp(from_unix_micros(self.recorded_at_micros))),
            status: pb::ActivityStatus::from_str_name(&format!("ACTIVITY_STATUS_{}", self.status))
                .unwrap_or(pb::ActivityStatus::Unspecified)
                .into(),
            earnings: earnings.iter().map(EarningRow::to_pb).collect(),
            reverse_reason: self.reverse_reason.clone(),
        }
    }
}
