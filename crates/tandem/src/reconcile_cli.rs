//! `tandem reconcile`: send a partner's file of its own records to be compared with Tandem's,
//! read the result, resolve discrepancies.
//!
//! The file is CSV with a header line and the columns `partner_record_id`, `tandem_reference`,
//! `kind` (CONVERSION, EARN, ADJUSTMENT or REVERSAL), `points` (credited to the partner's members
//! positive, debited negative), `money_minor` (empty when the partner does not track it) and
//! `time` (RFC 3339). It is read and sent a batch at a time, so memory does not grow with it.

use std::{fs::File, path::PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tandem_proto::v1 as pb;

use crate::{
    ops::{Listing, Ops, ServerArgs, every_page, refused, time},
    settings::Settings,
};

#[derive(Debug, clap::Subcommand)]
pub enum ReconcileCommand {
    /// Compare a partner's CSV file of a period with Tandem's records.
    Submit {
        /// The partner whose records these are.
        #[arg(long)]
        partner: String,
        /// The CSV file.
        #[arg(long)]
        file: PathBuf,
        /// The period's start (RFC 3339), inclusive.
        #[arg(long)]
        from: String,
        /// The period's end (RFC 3339), exclusive.
        #[arg(long)]
        to: String,
        /// Amounts within this many minor units match.
        #[arg(long, default_value_t = 0)]
        amount_tolerance: i64,
        /// Times within this many seconds match.
        #[arg(long, default_value_t = 300)]
        time_tolerance_seconds: i64,
        /// Show the result without storing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a reconciliation's counts per class.
    Show { reconciliation_id: String },
    /// List a reconciliation's discrepancies.
    Discrepancies {
        reconciliation_id: String,
        /// Only this class: missing-ours, missing-theirs, amount-mismatch, time-mismatch or
        /// duplicate.
        #[arg(long)]
        class: Option<String>,
    },
    /// Resolve a discrepancy by an adjustment, or accept it as it is.
    Resolve {
        discrepancy_id: String,
        /// The adjustment that corrects it (see `tandem adjust post`).
        #[arg(long, conflicts_with = "accept")]
        adjustment: Option<String>,
        /// Accept it as it is.
        #[arg(long)]
        accept: bool,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Records sent per message.
const RECORDS_PER_MESSAGE: usize = 1_000;

#[derive(Debug, serde::Deserialize)]
struct CsvRecord {
    partner_record_id: String,
    tandem_reference: String,
    kind: String,
    points: i64,
    money_minor: Option<i64>,
    time: String,
}

fn rfc3339(flag: &str, text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{flag}: {text:?} is not an RFC 3339 time"))?;
    Ok(tandem_proto::time::timestamp(
        at.with_timezone(&chrono::Utc),
    ))
}

/// The file's records as messages of up to [`RECORDS_PER_MESSAGE`], read lazily; a malformed
/// line stops the stream with an error naming its line and field.
fn messages(
    path: PathBuf,
    progress: ProgressBar,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<pb::SubmitPartnerReportRequest>>> {
    let file =
        File::open(&path).with_context(|| format!("--file: cannot open {}", path.display()))?;
    let reader = csv::Reader::from_reader(progress.wrap_read(file));
    let mut records = reader.into_deserialize::<CsvRecord>();
    let mut finished = false;
    // The header is line 1; record n is on line n + 1.
    let mut line = 1_u64;
    Ok(std::iter::from_fn(move || {
        if finished {
            return None;
        }
        let mut batch = Vec::with_capacity(RECORDS_PER_MESSAGE);
        while batch.len() < RECORDS_PER_MESSAGE {
            match records.next() {
                None => {
                    finished = true;
                    break;
                }
                Some(Err(error)) => {
                    finished = true;
                    let line = error.position().map_or(0, |position| position.line());
                    return Some(Err(anyhow::anyhow!(
                        "{}: line {line}: {error}",
                        path.display()
                    )));
                }
                Some(Ok(record)) => {
                    line += 1;
                    let at = match rfc3339("time", &record.time) {
                        Ok(at) => at,
                        Err(error) => {
                            finished = true;
                            return Some(Err(anyhow::anyhow!(
                                "{}: line {line}: field time: {error:#}",
                                path.display()
                            )));
                        }
                    };
                    batch.push(pb::PartnerRecord {
                        partner_record_id: record.partner_record_id,
                        tandem_reference: record.tandem_reference,
                        kind: record.kind,
                        points: record.points,
                        money_minor: record.money_minor,
                        time: Some(at),
                    });
                }
            }
        }
        if batch.is_empty() && finished {
            return None;
        }
        Some(Ok(pb::SubmitPartnerReportRequest {
            header: None,
            records: batch,
        }))
    }))
}

pub async fn reconcile(
    settings: &Settings,
    args: &ServerArgs,
    command: ReconcileCommand,
) -> anyhow::Result<()> {
    let mut ops = Ops::connect(settings, args).await?;
    match command {
        ReconcileCommand::Submit {
            partner,
            file,
            from,
            to,
            amount_tolerance,
            time_tolerance_seconds,
            dry_run,
        } => {
            let header = pb::ReportHeader {
                partner_id: partner,
                start_time: Some(rfc3339("--from", &from)?),
                end_time: Some(rfc3339("--to", &to)?),
                dry_run,
                amount_tolerance_minor: amount_tolerance,
                time_tolerance_seconds,
            };
            let reconciliation = submit(&mut ops, header, &file).await?;
            print_reconciliation(&reconciliation, &ops);
        }
        ReconcileCommand::Show { reconciliation_id } => {
            let request = ops.request(pb::GetReconciliationRequest { reconciliation_id })?;
            let answer = ops.client.get_reconciliation(request).await;
            let reconciliation = answer.map_err(refused)?.into_inner().reconciliation;
            print_reconciliation(&reconciliation.unwrap_or_default(), &ops);
        }
        ReconcileCommand::Discrepancies {
            reconciliation_id,
            class,
        } => {
            let discrepancies = list(&mut ops, reconciliation_id, class).await?;
            discrepancy_listing(&discrepancies).print(ops.output);
        }
        ReconcileCommand::Resolve {
            discrepancy_id,
            adjustment,
            accept,
            reason,
        } => {
            if adjustment.is_none() && !accept {
                bail!("give --adjustment <adjustment id> or --accept");
            }
            let request = ops.request(pb::ResolveDiscrepancyRequest {
                discrepancy_id,
                adjustment_id: adjustment.unwrap_or_default(),
                reason,
            })?;
            let answer = ops.client.resolve_discrepancy(request).await;
            let discrepancy = answer.map_err(refused)?.into_inner().discrepancy;
            discrepancy_listing(&[discrepancy.unwrap_or_default()]).print(ops.output);
        }
    }
    Ok(())
}

/// Streams the header and the file's records; a malformed line stops the stream, and the
/// server then stores nothing.
async fn submit(
    ops: &mut Ops,
    header: pb::ReportHeader,
    file: &PathBuf,
) -> anyhow::Result<pb::Reconciliation> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("--file: cannot read {}", file.display()))?
        .len();
    let progress = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .expect("a valid template"),
    );
    let records = messages(file.clone(), progress.clone())?;
    let (failure_sender, mut failure) = tokio::sync::oneshot::channel();
    let mut failure_sender = Some(failure_sender);
    let first = pb::SubmitPartnerReportRequest {
        header: Some(header),
        records: Vec::new(),
    };
    // A malformed line ends the stream early; the error is kept to report instead of the
    // server's answer to a short stream.
    let stream = std::iter::once(first).chain(records.map_while(move |message| match message {
        Ok(message) => Some(message),
        Err(error) => {
            if let Some(sender) = failure_sender.take() {
                let _ = sender.send(error);
            }
            None
        }
    }));
    let request = ops.request(futures::stream::iter(stream))?;
    let answer = ops.client.submit_partner_report(request).await;
    progress.finish_and_clear();
    if let Ok(error) = failure.try_recv() {
        bail!("{error:#}; nothing was stored");
    }
    Ok(answer
        .map_err(refused)?
        .into_inner()
        .reconciliation
        .unwrap_or_default())
}

fn class_name(value: i32) -> String {
    pb::DiscrepancyClass::try_from(value)
        .map(|class| {
            class
                .as_str_name()
                .trim_start_matches("DISCREPANCY_CLASS_")
                .to_owned()
        })
        .unwrap_or_else(|_| value.to_string())
}

fn print_reconciliation(reconciliation: &pb::Reconciliation, ops: &Ops) {
    eprintln!(
        "{} of {}: {} records of theirs, {} of Tandem's{}",
        if reconciliation.dry_run {
            "dry run (nothing stored)".to_owned()
        } else {
            format!("reconciliation {}", reconciliation.reconciliation_id)
        },
        reconciliation.partner_id,
        reconciliation.partner_record_count,
        reconciliation.tandem_record_count,
        format_args!(
            ", {} to {}",
            time(reconciliation.start_time.as_ref()),
            time(reconciliation.end_time.as_ref())
        )
    );
    Listing {
        headers: vec!["class", "count"],
        rows: reconciliation
            .counts
            .iter()
            .map(|count| vec![class_name(count.class), count.count.to_string()])
            .collect(),
    }
    .print(ops.output);
}

async fn list(
    ops: &mut Ops,
    reconciliation_id: String,
    class: Option<String>,
) -> anyhow::Result<Vec<pb::Discrepancy>> {
    let class = match class {
        Some(text) => {
            let name = format!(
                "DISCREPANCY_CLASS_{}",
                text.to_uppercase().replace('-', "_")
            );
            match pb::DiscrepancyClass::from_str_name(&name) {
                Some(pb::DiscrepancyClass::Unspecified) | None => bail!(
                    "--class: {text:?} is not a class; write missing-ours, missing-theirs, \
                     amount-mismatch, time-mismatch or duplicate"
                ),
                Some(class) => class,
            }
        }
        None => pb::DiscrepancyClass::Unspecified,
    };
    every_page(|page_token| {
        let mut client = ops.client.clone();
        let request = ops.request(pb::ListDiscrepanciesRequest {
            reconciliation_id: reconciliation_id.clone(),
            class: class.into(),
            page_size: 500,
            page_token,
        });
        async move {
            let page = client.list_discrepancies(request?).await.map_err(refused)?;
            let page = page.into_inner();
            Ok((page.discrepancies, page.next_page_token))
        }
    })
    .await
}

fn discrepancy_listing(discrepancies: &[pb::Discrepancy]) -> Listing {
    Listing {
        headers: vec![
            "discrepancy_id",
            "class",
            "tandem_reference",
            "kind",
            "partner_record_id",
            "line",
            "our_points",
            "their_points",
            "our_money_minor",
            "their_money_minor",
            "status",
            "adjustment_id",
        ],
        rows: discrepancies
            .iter()
            .map(|discrepancy| {
                vec![
                    discrepancy.discrepancy_id.clone(),
                    class_name(discrepancy.class),
                    discrepancy.tandem_reference.clone(),
                    discrepancy.kind.clone(),
                    discrepancy.partner_record_id.clone(),
                    discrepancy.line.to_string(),
                    discrepancy.our_points.to_string(),
                    discrepancy.their_points.to_string(),
                    discrepancy.our_money_minor.to_string(),
                    discrepancy
                        .their_money_minor
                        .map(|money| money.to_string())
                        .unwrap_or_default(),
                    pb::DiscrepancyStatus::try_from(discrepancy.status)
                        .map(|status| {
                            status
                                .as_str_name()
                                .trim_start_matches("DISCREPANCY_STATUS_")
                                .to_owned()
                        })
                        .unwrap_or_default(),
                    discrepancy.adjustment_id.clone(),
                ]
            })
            .collect(),
    }
}
