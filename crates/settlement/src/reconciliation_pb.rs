//! Partner reports, reconciliations and discrepancies between proto and settlement types.

use tandem_auth::{Caller, Role};
use tandem_domain::{FieldViolation, PartnerId, Violations};
use tandem_proto::{
    time::{datetime, timestamp},
    v1 as pb,
};

use crate::{
    Discrepancy, DiscrepancyClass, PartnerRecord, RECORD_KINDS, Reconciliation, ReportHeader,
    SettlementError,
};

/// The time tolerance when the header gives none.
const DEFAULT_TIME_TOLERANCE_SECONDS: i64 = 300;

/// A report's header, checked: the partner (a partner caller names itself), a period that has
/// ended, tolerances not negative.
pub(crate) fn header(
    caller: &Caller,
    header: Option<pb::ReportHeader>,
) -> Result<ReportHeader, SettlementError> {
    let Some(header) = header else {
        return Err(SettlementError::invalid(
            "header",
            "the first message must carry the report's header",
        ));
    };
    let mut violations = Violations::new();
    let partner = violations.check("header.partner_id", header.partner_id.parse::<PartnerId>());
    let (start, end) = period(&mut violations, &header);
    if header.amount_tolerance_minor < 0 {
        violations.push(FieldViolation::new(
            "header.amount_tolerance_minor",
            "must not be negative",
        ));
    }
    if header.time_tolerance_seconds < 0 {
        violations.push(FieldViolation::new(
            "header.time_tolerance_seconds",
            "must not be negative",
        ));
    }
    let (Some(partner), Some(start), Some(end)) = (partner, start, end) else {
        return Err(SettlementError::InvalidArgument(violations));
    };
    if !violations.is_empty() {
        return Err(SettlementError::InvalidArgument(violations));
    }
    if caller.role() == Role::Partner && !caller.is_partner(partner) {
        return Err(SettlementError::PermissionDenied(
            "a partner reports only its own records: partner_id must be your own",
        ));
    }
    Ok(ReportHeader {
        partner,
        start,
        end,
        dry_run: header.dry_run,
        amount_tolerance_minor: header.amount_tolerance_minor,
        time_tolerance_seconds: if header.time_tolerance_seconds == 0 {
            DEFAULT_TIME_TOLERANCE_SECONDS
        } else {
            header.time_tolerance_seconds
        },
    })
}

/// A header's period: both ends given, not in the future, the start before the end.
fn period(
    violations: &mut Violations,
    header: &pb::ReportHeader,
) -> (
    Option<tandem_domain::Timestamp>,
    Option<tandem_domain::Timestamp>,
) {
    let now = tandem_domain::now();
    let mut time = |field: &str, value: Option<&tandem_proto::time::ProtoTimestamp>| match value
        .map(datetime)
        .transpose()
    {
        Ok(Some(at)) if at > now => {
            violations.push(FieldViolation::new(field, "must not be in the future"));
            None
        }
        Ok(Some(at)) => Some(at),
        Ok(None) => {
            violations.push(FieldViolation::new(field, "is required"));
            None
        }
        Err(error) => {
            violations.push(FieldViolation::new(field, error));
            None
        }
    };
    let start = time("header.start_time", header.start_time.as_ref());
    let end = time("header.end_time", header.end_time.as_ref());
    if let (Some(start), Some(end)) = (start, end)
        && start >= end
    {
        violations.push(FieldViolation::new(
            "header.start_time",
            "must be before end_time",
        ));
    }
    (start, end)
}

/// Record number `line` (1 for the first record of the report), checked; a violation names the
/// line and the field.
pub(crate) fn record(
    line: i64,
    record: pb::PartnerRecord,
) -> Result<PartnerRecord, SettlementError> {
    let mut violations = Violations::new();
    let field = |name: &str| format!("records[line {line}].{name}");
    let id = violations.check(
        &field("partner_record_id"),
        tandem_domain::ExternalId::parse(&record.partner_record_id),
    );
    let reference = violations.check(
        &field("tandem_reference"),
        tandem_domain::ExternalId::parse(&record.tandem_reference),
    );
    if !RECORD_KINDS.contains(&record.kind.as_str()) {
        violations.push(FieldViolation::new(
            field("kind"),
            format!("must be one of {}", RECORD_KINDS.join(", ")),
        ));
    }
    let at = match record.time.as_ref().map(datetime).transpose() {
        Ok(Some(at)) => Some(at),
        Ok(None) => {
            violations.push(FieldViolation::new(field("time"), "is required"));
            None
        }
        Err(error) => {
            violations.push(FieldViolation::new(field("time"), error));
            None
        }
    };
    match (id, reference, at) {
        (Some(id), Some(reference), Some(at)) if violations.is_empty() => Ok(PartnerRecord {
            partner_record_id: id.into_string(),
            reference: reference.into_string(),
            kind: record.kind,
            points: record.points,
            money_minor: record.money_minor,
            at,
        }),
        _ => Err(SettlementError::InvalidArgument(violations)),
    }
}

fn class_to_pb(class: DiscrepancyClass) -> pb::DiscrepancyClass {
    match class {
        DiscrepancyClass::Matched => pb::DiscrepancyClass::Matched,
        DiscrepancyClass::MissingOurs => pb::DiscrepancyClass::MissingOurs,
        DiscrepancyClass::MissingTheirs => pb::DiscrepancyClass::MissingTheirs,
        DiscrepancyClass::AmountMismatch => pb::DiscrepancyClass::AmountMismatch,
        DiscrepancyClass::TimeMismatch => pb::DiscrepancyClass::TimeMismatch,
        DiscrepancyClass::Duplicate => pb::DiscrepancyClass::Duplicate,
    }
}

pub(crate) fn class_filter(value: i32) -> Result<Option<DiscrepancyClass>, SettlementError> {
    let class = pb::DiscrepancyClass::try_from(value).map_err(|_| {
        SettlementError::invalid("class", format!("{value} is not a discrepancy class"))
    })?;
    Ok(DiscrepancyClass::ALL
        .into_iter()
        .find(|candidate| class_to_pb(*candidate) == class))
}

pub(crate) fn reconciliation_to_pb(reconciliation: Reconciliation) -> pb::Reconciliation {
    pb::Reconciliation {
        counts: DiscrepancyClass::ALL
            .iter()
            .map(|class| pb::ClassCount {
                class: class_to_pb(*class).into(),
                count: reconciliation
                    .counts
                    .get(class.as_str())
                    .copied()
                    .unwrap_or(0),
            })
            .collect(),
        reconciliation_id: reconciliation.reconciliation_id,
        partner_id: reconciliation.partner_id,
        start_time: Some(timestamp(reconciliation.start)),
        end_time: Some(timestamp(reconciliation.end)),
        partner_record_count: reconciliation.partner_record_count,
        tandem_record_count: reconciliation.tandem_record_count,
        submitted_by: reconciliation.submitted_by,
        create_time: Some(timestamp(reconciliation.created_at)),
        dry_run: reconciliation.dry_run,
    }
}

pub(crate) fn discrepancy_to_pb(
    discrepancy: Discrepancy,
) -> Result<pb::Discrepancy, SettlementError> {
    let class = DiscrepancyClass::parse(&discrepancy.class)?;
    let status = match discrepancy.status.as_str() {
        "OPEN" => pb::DiscrepancyStatus::Open,
        "ADJUSTED" => pb::DiscrepancyStatus::Adjusted,
        "ACCEPTED" => pb::DiscrepancyStatus::Accepted,
        other => {
            return Err(SettlementError::Internal(format!(
                "unknown discrepancy status {other:?} in storage"
            )));
        }
    };
    let time = |micros: Option<i64>| {
        micros.map(|micros| timestamp(tandem_domain::from_unix_micros(micros)))
    };
    Ok(pb::Discrepancy {
        discrepancy_id: discrepancy.discrepancy_id,
        reconciliation_id: discrepancy.reconciliation_id,
        class: class_to_pb(class).into(),
        tandem_reference: discrepancy.reference,
        kind: discrepancy.kind,
        partner_record_id: discrepancy.partner_record_id,
        line: discrepancy.line,
        our_points: discrepancy.our_points,
        their_points: discrepancy.their_points,
        our_money_minor: discrepancy.our_money_minor,
        their_money_minor: discrepancy.their_money_minor,
        our_time: time(discrepancy.our_at_micros),
        their_time: time(discrepancy.their_at_micros),
        status: status.into(),
        adjustment_id: discrepancy.adjustment_id,
        resolved_by: discrepancy.resolved_by,
        resolution_reason: discrepancy.resolution_reason,
    })
}
