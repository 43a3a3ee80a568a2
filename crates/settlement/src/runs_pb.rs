//! Settlement runs and statements between proto and settlement types.

use std::collections::BTreeMap;

use tandem_domain::{FieldViolation, Violations};
use tandem_ledger::Unit;
use tandem_proto::{
    time::{datetime, timestamp},
    v1 as pb,
};

use crate::{
    KindTotals, NewRun, RunStatus, SettlementError, SettlementRun, StatementLine,
    netting::PartyTotals,
};

pub(crate) fn new_run(request: &pb::CreateSettlementRunRequest) -> Result<NewRun, SettlementError> {
    let mut violations = Violations::new();
    let key = violations.check(
        "idempotency_key",
        tandem_domain::IdempotencyKey::parse(&request.idempotency_key),
    );
    let currency = violations.check(
        "currency",
        request.currency.parse::<tandem_domain::Currency>(),
    );
    let cutoff = match request.cutoff_time.as_ref().map(datetime).transpose() {
        Ok(Some(at)) if at > tandem_domain::now() => {
            violations.push(FieldViolation::new(
                "cutoff_time",
                "must not be in the future: a run closes a period that has ended",
            ));
            None
        }
        Ok(Some(at)) => Some(at),
        Ok(None) => {
            violations.push(FieldViolation::new("cutoff_time", "is required"));
            None
        }
        Err(error) => {
            violations.push(FieldViolation::new("cutoff_time", error));
            None
        }
    };
    match (key, currency, cutoff) {
        (Some(key), Some(currency), Some(cutoff)) if violations.is_empty() => Ok(NewRun {
            idempotency_key: key.into_string(),
            currency: Unit::parse(currency.code())
                .map_err(|error| SettlementError::invalid("currency", error))?,
            currency_scale: currency.exponent(),
            cutoff,
        }),
        _ => Err(SettlementError::InvalidArgument(violations)),
    }
}

pub(crate) fn status_to_pb(status: RunStatus) -> pb::SettlementRunStatus {
    match status {
        RunStatus::Draft => pb::SettlementRunStatus::Draft,
        RunStatus::Approved => pb::SettlementRunStatus::Approved,
        RunStatus::Settling => pb::SettlementRunStatus::Settling,
        RunStatus::Settled => pb::SettlementRunStatus::Settled,
        RunStatus::Cancelled => pb::SettlementRunStatus::Cancelled,
    }
}

pub(crate) fn status_filter(value: i32) -> Result<Option<RunStatus>, SettlementError> {
    Ok(match pb::SettlementRunStatus::try_from(value) {
        Ok(pb::SettlementRunStatus::Unspecified) => None,
        Ok(pb::SettlementRunStatus::Draft) => Some(RunStatus::Draft),
        Ok(pb::SettlementRunStatus::Approved) => Some(RunStatus::Approved),
        Ok(pb::SettlementRunStatus::Settling) => Some(RunStatus::Settling),
        Ok(pb::SettlementRunStatus::Settled) => Some(RunStatus::Settled),
        Ok(pb::SettlementRunStatus::Cancelled) => Some(RunStatus::Cancelled),
        Err(_) => {
            return Err(SettlementError::invalid(
                "status",
                format!("{value} is not a settlement run status"),
            ));
        }
    })
}

pub(crate) fn position_to_pb(
    party: &str,
    totals: &PartyTotals,
    references: &BTreeMap<String, String>,
) -> pb::RunPosition {
    pb::RunPosition {
        party: party.to_owned(),
        debits_minor: totals.debits_minor,
        credits_minor: totals.credits_minor,
        net_minor: totals.net_minor(),
        payment_reference: references.get(party).cloned().unwrap_or_default(),
    }
}

pub(crate) fn totals_to_pb(totals: &BTreeMap<String, KindTotals>) -> Vec<pb::KindTotal> {
    totals
        .iter()
        .map(|(kind, totals)| pb::KindTotal {
            kind: kind.clone(),
            debits_minor: totals.debits_minor,
            credits_minor: totals.credits_minor,
            entry_count: totals.entry_count,
        })
        .collect()
}

pub(crate) fn run_to_pb(run: SettlementRun) -> pb::SettlementRun {
    pb::SettlementRun {
        positions: run
            .summary
            .positions
            .iter()
            .map(|(party, totals)| position_to_pb(party, totals, &run.payment_references))
            .collect(),
        bilateral: run
            .summary
            .bilateral
            .iter()
            .map(|(debtor, creditor, amount)| pb::BilateralAmount {
                debtor: debtor.clone(),
                creditor: creditor.clone(),
                amount_minor: *amount,
            })
            .collect(),
        totals: totals_to_pb(&run.summary.totals),
        run_id: run.run_id,
        idempotency_key: run.idempotency_key,
        currency: run.currency,
        currency_scale: run.currency_scale,
        cutoff_time: Some(timestamp(run.cutoff)),
        period_start_time: Some(timestamp(run.start)),
        status: status_to_pb(run.status).into(),
        created_by: run.created_by,
        approved_by: run.approved_by,
        settled_by: run.settled_by,
        cancelled_by: run.cancelled_by,
        cancel_reason: run.cancel_reason,
        entry_count: run.entry_count,
        settlement_transaction_ids: run.settlement_transaction_ids,
        create_time: Some(timestamp(run.created_at)),
        decide_time: run.decided_at.map(timestamp),
    }
}

pub(crate) fn line_to_pb(line: StatementLine) -> pb::StatementLine {
    pb::StatementLine {
        transaction_id: line.transaction_id,
        kind: line.kind,
        external_reference: line.external_reference,
        debit_minor: line.debit_minor,
        credit_minor: line.credit_minor,
        commit_time: Some(timestamp(line.committed_at)),
    }
}

/// Payment references as given: each party named once, each reference printable, at most 200
/// characters.
pub(crate) fn payment_references(
    given: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, SettlementError> {
    let mut violations = Violations::new();
    let mut references = BTreeMap::new();
    for (party, reference) in given {
        let field = format!(
            "payment_references[{}]",
            tandem_proto::status::shortened(party, 64)
        );
        if let Some(reference) =
            violations.check(&field, tandem_domain::ExternalId::parse(reference))
        {
            references.insert(party.clone(), reference.into_string());
        }
    }
    if violations.is_empty() {
        Ok(references)
    } else {
        Err(SettlementError::InvalidArgument(violations))
    }
}
