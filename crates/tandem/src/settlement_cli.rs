//! `tandem settlement` and `tandem statement`: closing a period, four eyes, settling, and each
//! party's statement, against a running server.

use std::collections::HashMap;

use anyhow::{Context, bail};
use tandem_proto::v1 as pb;

use crate::{
    ops::{Listing, Ops, Output, ServerArgs, decimal, every_page, refused, time},
    settings::Settings,
};

#[derive(Debug, clap::Subcommand)]
pub enum SettlementCommand {
    /// Close a period: take every unsettled entry in the currency before the cut-off, net each
    /// party's position, and store the run as DRAFT.
    Run {
        /// The currency, such as USD.
        #[arg(long)]
        currency: String,
        /// The cut-off (RFC 3339, such as 2026-12-01T00:00:00Z); not in the future.
        #[arg(long)]
        cutoff: String,
        /// Unique per run; asking again with it returns the original.
        #[arg(long)]
        key: String,
    },
    /// List runs, newest first.
    List {
        /// Only this status: draft, approved, settling, settled or cancelled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one run: each party's position and who owes whom.
    Show { run_id: String },
    /// Approve a DRAFT run another ops user created.
    Approve { run_id: String },
    /// Record the payments of an APPROVED run and zero every position through the ledger.
    Settle {
        run_id: String,
        /// A payment as PARTY=REFERENCE (a partner id, or "exchange"); one per party with a net.
        #[arg(long = "payment", required = true)]
        payments: Vec<String>,
    },
    /// Cancel a DRAFT run; its entries go to the next run.
    Cancel {
        run_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Flags of `tandem statement export`.
#[derive(Debug, clap::Subcommand)]
pub enum StatementCommand {
    /// Every line of one party's statement in a run, in commit order (CSV unless --output says
    /// otherwise). Columns: transaction_id, kind, external_reference, debit_minor, credit_minor,
    /// commit_time.
    Export {
        /// The run.
        #[arg(long)]
        run: String,
        /// A partner id, or "exchange".
        #[arg(long)]
        party: String,
    },
}

fn run_listing(runs: &[pb::SettlementRun]) -> Listing {
    Listing {
        headers: vec![
            "run_id",
            "status",
            "currency",
            "period_start",
            "cutoff",
            "entries",
            "created_by",
            "approved_by",
            "settled_by",
        ],
        rows: runs
            .iter()
            .map(|run| {
                vec![
                    run.run_id.clone(),
                    status_name(run.status),
                    run.currency.clone(),
                    time(run.period_start_time.as_ref()),
                    time(run.cutoff_time.as_ref()),
                    run.entry_count.to_string(),
                    run.created_by.clone(),
                    run.approved_by.clone(),
                    run.settled_by.clone(),
                ]
            })
            .collect(),
    }
}

fn status_name(value: i32) -> String {
    pb::SettlementRunStatus::try_from(value)
        .map(|status| {
            status
                .as_str_name()
                .trim_start_matches("SETTLEMENT_RUN_STATUS_")
                .to_owned()
        })
        .unwrap_or_else(|_| value.to_string())
}

/// One run in full: its header, then each party's position, then who owes whom.
fn print_run(run: &pb::SettlementRun, output: Output) {
    if output != Output::Table {
        run_listing(std::slice::from_ref(run)).print(output);
        return;
    }
    run_listing(std::slice::from_ref(run)).print(output);
    let scale = run.currency_scale;
    Listing {
        headers: vec!["party", "debits", "credits", "net", "payment_reference"],
        rows: run
            .positions
            .iter()
            .map(|position| {
                vec![
                    position.party.clone(),
                    decimal(position.debits_minor, scale),
                    decimal(position.credits_minor, scale),
                    decimal(position.net_minor, scale),
                    position.payment_reference.clone(),
                ]
            })
            .collect(),
    }
    .print(output);
    Listing {
        headers: vec!["debtor", "creditor", "amount"],
        rows: run
            .bilateral
            .iter()
            .map(|amount| {
                vec![
                    amount.debtor.clone(),
                    amount.creditor.clone(),
                    decimal(amount.amount_minor, scale),
                ]
            })
            .collect(),
    }
    .print(output);
}

fn cutoff(text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("--cutoff: {text:?} is not an RFC 3339 time"))?;
    Ok(tandem_proto::time::timestamp(
        at.with_timezone(&chrono::Utc),
    ))
}

fn payments(given: &[String]) -> anyhow::Result<HashMap<String, String>> {
    given
        .iter()
        .map(|payment| {
            payment
                .split_once('=')
                .map(|(party, reference)| (party.to_owned(), reference.to_owned()))
                .with_context(|| format!("--payment {payment:?}: write PARTY=REFERENCE"))
        })
        .collect()
}

pub async fn settlement(
    settings: &Settings,
    args: &ServerArgs,
    command: SettlementCommand,
) -> anyhow::Result<()> {
    let mut ops = Ops::connect(settings, args).await?;
    let run = match command {
        SettlementCommand::Run {
            currency,
            cutoff: at,
            key,
        } => {
            let request = ops.request(pb::CreateSettlementRunRequest {
                idempotency_key: key,
                currency,
                cutoff_time: Some(cutoff(&at)?),
            })?;
            let answer = ops.client.create_settlement_run(request).await;
            let answer = answer.map_err(refused)?.into_inner();
            if answer.replayed {
                eprintln!("this key was used before with the same run: the original follows");
            }
            answer.run
        }
        SettlementCommand::List { status } => {
            let runs = list(&mut ops, status).await?;
            run_listing(&runs).print(ops.output);
            return Ok(());
        }
        SettlementCommand::Show { run_id } => {
            let request = ops.request(pb::GetSettlementRunRequest { run_id })?;
            let answer = ops.client.get_settlement_run(request).await;
            answer.map_err(refused)?.into_inner().run
        }
        SettlementCommand::Approve { run_id } => {
            let request = ops.request(pb::ApproveSettlementRunRequest { run_id })?;
            let answer = ops.client.approve_settlement_run(request).await;
            answer.map_err(refused)?.into_inner().run
        }
        SettlementCommand::Settle {
            run_id,
            payments: given,
        } => {
            let request = ops.request(pb::SettleSettlementRunRequest {
                run_id,
                payment_references: payments(&given)?,
            })?;
            let answer = ops.client.settle_settlement_run(request).await;
            answer.map_err(refused)?.into_inner().run
        }
        SettlementCommand::Cancel { run_id, reason } => {
            let request = ops.request(pb::CancelSettlementRunRequest { run_id, reason })?;
            let answer = ops.client.cancel_settlement_run(request).await;
            answer.map_err(refused)?.into_inner().run
        }
    };
    print_run(&run.unwrap_or_default(), ops.output);
    Ok(())
}

async fn list(ops: &mut Ops, status: Option<String>) -> anyhow::Result<Vec<pb::SettlementRun>> {
    let status = match status {
        Some(text) => {
            let name = format!("SETTLEMENT_RUN_STATUS_{}", text.to_uppercase());
            match pb::SettlementRunStatus::from_str_name(&name) {
                Some(pb::SettlementRunStatus::Unspecified) | None => bail!(
                    "--status: {text:?} is not a status; write draft, approved, settling, \
                     settled or cancelled"
                ),
                Some(status) => status,
            }
        }
        None => pb::SettlementRunStatus::Unspecified,
    };
    every_page(|page_token| {
        let mut client = ops.client.clone();
        let request = ops.request(pb::ListSettlementRunsRequest {
            status: status.into(),
            page_size: 500,
            page_token,
        });
        async move {
            let page = client
                .list_settlement_runs(request?)
                .await
                .map_err(refused)?;
            let page = page.into_inner();
            Ok((page.runs, page.next_page_token))
        }
    })
    .await
}

/// A statement's lines under their stable columns.
fn statement_listing(lines: &[pb::StatementLine]) -> Listing {
    Listing {
        headers: vec![
            "transaction_id",
            "kind",
            "external_reference",
            "debit_minor",
            "credit_minor",
            "commit_time",
        ],
        rows: lines
            .iter()
            .map(|line| {
                vec![
                    line.transaction_id.clone(),
                    line.kind.clone(),
                    line.external_reference.clone(),
                    line.debit_minor.to_string(),
                    line.credit_minor.to_string(),
                    time(line.commit_time.as_ref()),
                ]
            })
            .collect(),
    }
}

/// Prints every line of a statement, a page at a time: memory holds one page, whatever the
/// statement's length. Table output prints one table per page.
pub async fn statement(
    settings: &Settings,
    args: &ServerArgs,
    command: StatementCommand,
) -> anyhow::Result<()> {
    let StatementCommand::Export { run, party } = command;
    let mut args = args.clone();
    args.output = Some(args.output.unwrap_or(Output::Csv));
    let mut ops = Ops::connect(settings, &args).await?;
    let mut page_token = String::new();
    let mut first = true;
    let mut json_lines = Vec::new();
    loop {
        let request = ops.request(pb::GetStatementRequest {
            run_id: run.clone(),
            party: party.clone(),
            page_size: 500,
            page_token,
        })?;
        let page = ops.client.get_statement(request).await;
        let page = page.map_err(refused)?.into_inner();
        if first {
            let position = page.position.clone().unwrap_or_default();
            eprintln!(
                "statement of {party} in run {run} ({}, {}): net {} {}",
                status_name(page.status),
                page.currency,
                decimal(position.net_minor, page.currency_scale),
                page.currency
            );
        }
        let listing = statement_listing(&page.lines);
        match ops.output {
            Output::Csv => listing.print_csv(first),
            Output::Table => listing.print(Output::Table),
            // JSON is one array: lines gather until the last page.
            Output::Json => json_lines.extend(listing.rows_as_json()),
        }
        first = false;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if ops.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_lines).expect("strings serialize")
        );
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Points each partner program got and gave through the exchange in a period, the points
    /// outstanding at its end, and their money value, for booking deferred revenue.
    Liability {
        /// Only this partner's programs.
        #[arg(long)]
        partner: Option<String>,
        /// The period's start (RFC 3339), inclusive; the ledger's beginning when not given.
        #[arg(long)]
        from: Option<String>,
        /// The period's end (RFC 3339), exclusive; now when not given.
        #[arg(long)]
        to: Option<String>,
    },
}

fn rfc3339(flag: &str, text: Option<String>) -> anyhow::Result<Option<prost_types::Timestamp>> {
    text.map(|text| {
        let at = chrono::DateTime::parse_from_rfc3339(&text)
            .with_context(|| format!("{flag}: {text:?} is not an RFC 3339 time"))?;
        Ok(tandem_proto::time::timestamp(
            at.with_timezone(&chrono::Utc),
        ))
    })
    .transpose()
}

pub async fn report(
    settings: &Settings,
    args: &ServerArgs,
    command: ReportCommand,
) -> anyhow::Result<()> {
    let ReportCommand::Liability { partner, from, to } = command;
    let mut ops = Ops::connect(settings, args).await?;
    let request = ops.request(pb::GetLiabilityReportRequest {
        partner_id: partner.unwrap_or_default(),
        start_time: rfc3339("--from", from)?,
        end_time: rfc3339("--to", to)?,
    })?;
    let answer = ops.client.get_liability_report(request).await;
    let answer = answer.map_err(refused)?.into_inner();
    eprintln!(
        "points liability from {} to {}",
        answer
            .start_time
            .as_ref()
            .map_or_else(|| "the beginning".to_owned(), |at| time(Some(at))),
        time(answer.end_time.as_ref())
    );
    Listing {
        headers: vec![
            "partner_id",
            "program",
            "issued",
            "redeemed",
            "outstanding",
            "currency",
            "value_issued",
            "value_redeemed",
        ],
        rows: answer
            .programs
            .iter()
            .map(|program| {
                let points = |amount| decimal(amount, program.program_scale);
                let money = |amount| decimal(amount, program.currency_scale);
                vec![
                    program.partner_id.clone(),
                    program.program.clone(),
                    points(program.points_issued),
                    points(program.points_redeemed),
                    points(program.points_outstanding),
                    program.currency.clone(),
                    money(program.value_issued_minor),
                    money(program.value_redeemed_minor),
                ]
            })
            .collect(),
    }
    .print(ops.output);
    Ok(())
}
