//! The operations staff's commands against a running server: the ledger's accounts, partners'
//! positions and the trial balance; adjustments and their approval; the audit trail.
//!
//! Each prints a table for people, or `--output json|csv` for scripts. Exit codes: 0 done, 1 the
//! server refused or could not be reached (the one-line error says why and what to fix), 2 bad
//! settings or flags.

use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tandem_proto::v1::{self as pb, settlement_service_client::SettlementServiceClient};
use tonic::{Request, transport::Channel};

use crate::settings::Settings;

/// How an ops command reaches the server, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The Tandem server to talk to.
    #[arg(
        long,
        env = "TANDEM_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// An ops token; without one, a token is minted from the local key store (the same
    /// --data-dir or --database-url as the server's) for the user named by --as.
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The ops user a minted token is for, recorded in the audit trail [default: $USER].
    #[arg(long = "as", env = "TANDEM_OPS_USER", global = true)]
    pub user: Option<String>,
    /// How to print: table (for people), json or csv (for scripts) [default: table; csv for
    /// statement exports].
    #[arg(long, value_enum, global = true)]
    pub output: Option<Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Subcommand)]
pub enum LedgerCommand {
    /// List the ledger's accounts, oldest first.
    Accounts {
        /// Only this owner's: "exchange" or a partner id.
        #[arg(long)]
        owner: Option<String>,
        /// Only this purpose: settlement, program-clearing, fees, bank or adjustments.
        #[arg(long)]
        purpose: Option<String>,
        /// Only this unit: a currency (USD) or a program code.
        #[arg(long)]
        unit: Option<String>,
    },
    /// Each partner's settlement position per currency: positive when the coalition owes the
    /// partner.
    Positions {
        /// Only this currency.
        #[arg(long)]
        currency: Option<String>,
        /// Only this partner.
        #[arg(long)]
        partner: Option<String>,
        /// As of this time (RFC 3339, such as 2026-12-01T00:00:00Z); now when not given.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Posted debits and credits per unit across the ledger; every unit nets to zero.
    TrialBalance,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdjustCommand {
    /// Request an adjustment: a balanced transaction with a reason. Above the deployment's
    /// threshold it waits for another ops user's approval.
    Post {
        /// Unique per adjustment; asking again with it returns the original.
        #[arg(long)]
        key: String,
        /// A leg as ACCOUNT_ID:debit:AMOUNT_MINOR or ACCOUNT_ID:credit:AMOUNT_MINOR; two or more.
        #[arg(long = "leg", required = true)]
        legs: Vec<String>,
        /// Why, for the audit trail and the partners' statements.
        #[arg(long)]
        reason: String,
        /// What it corrects: a conversion id, an activity id, a discrepancy id.
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// Approve and post an adjustment another ops user requested.
    Approve { adjustment_id: String },
    /// Reject an adjustment awaiting approval; nothing is posted.
    Reject {
        adjustment_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Show one adjustment.
    Show { adjustment_id: String },
    /// List adjustments, newest first.
    List {
        /// Only this status: awaiting-approval, posting, posted, rejected or failed.
        #[arg(long)]
        status: Option<String>,
    },
}

/// Most rows a listing prints; pages are followed until then.
pub(crate) const MAX_ROWS: usize = 10_000;

/// A connected client and the token its calls carry.
pub(crate) struct Ops {
    pub(crate) client: SettlementServiceClient<Channel>,
    ledger: pb::ledger_service_client::LedgerServiceClient<Channel>,
    token: String,
    pub(crate) output: Output,
}

impl Ops {
    pub(crate) async fn connect(settings: &Settings, args: &ServerArgs) -> anyhow::Result<Self> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let user = args
                    .user
                    .clone()
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_else(|| "operator".to_owned());
                crate::keys::mint_operator_token(settings, "ops", &user, Duration::from_secs(3600))
                    .await
                    .context("minting an ops token (pass --token to use one you have)")?
            }
        };
        let channel = Channel::from_shared(args.server.clone())
            .with_context(|| format!("--server: {:?} is not a URL", args.server))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach Tandem at {}", args.server))?;
        Ok(Self {
            client: SettlementServiceClient::new(channel.clone()),
            ledger: pb::ledger_service_client::LedgerServiceClient::new(channel),
            token,
            output: args.output.unwrap_or(Output::Table),
        })
    }

    pub(crate) fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .context("--token is not a valid header value")?,
        );
        Ok(request)
    }
}

/// Every page of a listing, asked with each next page token in turn, up to [`MAX_ROWS`] items.
pub(crate) async fn every_page<T, Page>(
    mut page: impl FnMut(String) -> Page,
) -> anyhow::Result<Vec<T>>
where
    Page: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let (more, next) = page(page_token).await?;
        items.extend(more);
        if next.is_empty() || items.len() >= MAX_ROWS {
            return Ok(items);
        }
        page_token = next;
    }
}

/// A refusal as one line: the reason programs match on, and the server's message.
pub(crate) fn refused(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| format!("{:?}", status.code()));
    anyhow::anyhow!("{reason}: {}", status.message())
}

/// Rows under headers, printed as `output` asks.
pub(crate) struct Listing {
    pub(crate) headers: Vec<&'static str>,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Listing {
    pub(crate) fn print(&self, output: Output) {
        match output {
            Output::Table => {
                let mut table = Table::new();
                table.load_preset(UTF8_FULL_CONDENSED);
                table.set_header(&self.headers);
                for row in &self.rows {
                    table.add_row(row);
                }
                println!("{table}");
            }
            Output::Json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&self.rows_as_json()).expect("strings serialize")
                );
            }
            Output::Csv => self.print_csv(true),
        }
    }

    /// Each row as a JSON object keyed by the headers.
    pub(crate) fn rows_as_json(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.rows
            .iter()
            .map(|row| {
                self.headers
                    .iter()
                    .zip(row)
                    .map(|(header, value)| {
                        ((*header).to_owned(), serde_json::Value::from(value.clone()))
                    })
                    .collect()
            })
            .collect()
    }

    /// The rows as CSV lines, after the header line when `with_header`.
    pub(crate) fn print_csv(&self, with_header: bool) {
        if with_header {
            println!("{}", csv_line(self.headers.iter().copied()));
        }
        for row in &self.rows {
            println!("{}", csv_line(row.iter().map(String::as_str)));
        }
    }
}

/// One CSV line (RFC 4180): a field with a comma, a quote or a line break is quoted, its quotes
/// doubled.
fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    fields
        .map(|field| {
            if field.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `amount_minor` at `scale` decimal places, as people read money: 12345 at 2 is "123.45".
pub(crate) fn decimal(amount_minor: i64, scale: u32) -> String {
    if scale == 0 {
        return amount_minor.to_string();
    }
    let sign = if amount_minor < 0 { "-" } else { "" };
    let magnitude = amount_minor.unsigned_abs();
    let unit = 10_u64.pow(scale);
    format!(
        "{sign}{}.{:0width$}",
        magnitude / unit,
        magnitude % unit,
        width = scale as usize
    )
}

pub(crate) fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|timestamp| tandem_proto::time::datetime(timestamp).ok())
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn purpose_from_flag(text: &str) -> anyhow::Result<pb::AccountPurpose> {
    let name = format!("ACCOUNT_PURPOSE_{}", text.to_uppercase().replace('-', "_"));
    match pb::AccountPurpose::from_str_name(&name) {
        Some(pb::AccountPurpose::Unspecified) | None => bail!(
            "--purpose: {text:?} is not a purpose; write settlement, program-clearing, fees, \
             bank or adjustments"
        ),
        Some(purpose) => Ok(purpose),
    }
}

fn purpose_name(value: i32) -> String {
    pb::AccountPurpose::try_from(value)
        .map(|purpose| {
            purpose
                .as_str_name()
                .trim_start_matches("ACCOUNT_PURPOSE_")
                .to_owned()
        })
        .unwrap_or_else(|_| value.to_string())
}

pub async fn ledger(
    settings: &Settings,
    args: &ServerArgs,
    command: LedgerCommand,
) -> anyhow::Result<()> {
    let mut ops = Ops::connect(settings, args).await?;
    let listing = match command {
        LedgerCommand::Accounts {
            owner,
            purpose,
            unit,
        } => {
            let purpose = purpose.as_deref().map(purpose_from_flag).transpose()?;
            accounts(&mut ops, owner, purpose, unit).await?
        }
        LedgerCommand::Positions {
            currency,
            partner,
            as_of,
        } => positions(&mut ops, currency, partner, as_of).await?,
        LedgerCommand::TrialBalance => {
            let (listing, balanced) = trial_balance(&mut ops).await?;
            listing.print(ops.output);
            if !balanced {
                bail!("NOT BALANCED: a unit does not net to zero; the ledger needs attention");
            }
            eprintln!("balanced: every unit nets to zero");
            return Ok(());
        }
    };
    listing.print(ops.output);
    Ok(())
}

async fn accounts(
    ops: &mut Ops,
    owner: Option<String>,
    purpose: Option<pb::AccountPurpose>,
    unit: Option<String>,
) -> anyhow::Result<Listing> {
    let accounts = every_page(|page_token| {
        let mut client = ops.client.clone();
        let request = ops.request(pb::ListAccountsRequest {
            owner: owner.clone().unwrap_or_default(),
            purpose: purpose.unwrap_or(pb::AccountPurpose::Unspecified).into(),
            unit: unit.clone().unwrap_or_default(),
            page_size: 500,
            page_token,
        });
        async move {
            let page = client.list_accounts(request?).await.map_err(refused)?;
            let page = page.into_inner();
            Ok((page.accounts, page.next_page_token))
        }
    })
    .await?;
    let rows = accounts
        .iter()
        .map(|account| {
            vec![
                account.account_id.clone(),
                account.owner.clone(),
                purpose_name(account.purpose),
                account.unit.clone(),
                account.unit_scale.to_string(),
                time(account.create_time.as_ref()),
            ]
        })
        .collect();
    Ok(Listing {
        headers: vec!["account_id", "owner", "purpose", "unit", "scale", "opened"],
        rows,
    })
}

async fn positions(
    ops: &mut Ops,
    currency: Option<String>,
    partner: Option<String>,
    as_of: Option<String>,
) -> anyhow::Result<Listing> {
    let as_of_time = match as_of {
        Some(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(&text)
                .with_context(|| format!("--as-of: {text:?} is not an RFC 3339 time"))?;
            Some(tandem_proto::time::timestamp(
                at.with_timezone(&chrono::Utc),
            ))
        }
        None => None,
    };
    let request = ops.request(pb::ListPositionsRequest {
        currency: currency.unwrap_or_default(),
        partner_id: partner.unwrap_or_default(),
        as_of_time,
    })?;
    let answer = ops
        .client
        .list_positions(request)
        .await
        .map_err(refused)?
        .into_inner();
    let rows = answer
        .positions
        .iter()
        .map(|position| {
            let scale = position.currency_scale;
            vec![
                position.partner_id.clone(),
                position.currency.clone(),
                decimal(position.posted_debits_minor, scale),
                decimal(position.posted_credits_minor, scale),
                decimal(position.net_minor, scale),
                position.account_id.clone(),
            ]
        })
        .collect();
    eprintln!("positions as of {}", time(answer.as_of_time.as_ref()));
    Ok(Listing {
        headers: vec![
            "partner_id",
            "currency",
            "debits",
            "credits",
            "net",
            "account_id",
        ],
        rows,
    })
}

/// The trial balance comes from LedgerService, on the same server and token; with whether every
/// unit nets to zero.
async fn trial_balance(ops: &mut Ops) -> anyhow::Result<(Listing, bool)> {
    let request = ops.request(pb::GetTrialBalanceRequest {})?;
    let answer = ops
        .ledger
        .get_trial_balance(request)
        .await
        .map_err(refused)?
        .into_inner();
    let rows = answer
        .units
        .iter()
        .map(|unit| {
            vec![
                unit.unit.clone(),
                unit.posted_debits_minor.to_string(),
                unit.posted_credits_minor.to_string(),
                unit.net_minor.to_string(),
            ]
        })
        .collect();
    let listing = Listing {
        headers: vec!["unit", "debits_minor", "credits_minor", "net_minor"],
        rows,
    };
    Ok((listing, answer.balanced))
}

/// A `--leg` flag: ACCOUNT_ID:debit|credit:AMOUNT_MINOR.
fn leg_from_flag(text: &str) -> anyhow::Result<pb::Leg> {
    let wrong = || {
        anyhow::anyhow!(
            "--leg {text:?}: write ACCOUNT_ID:debit:AMOUNT_MINOR or ACCOUNT_ID:credit:AMOUNT_MINOR"
        )
    };
    let mut parts = text.split(':');
    let (Some(account_id), Some(direction), Some(amount), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(wrong());
    };
    let direction = match direction.to_ascii_lowercase().as_str() {
        "debit" => pb::Direction::Debit,
        "credit" => pb::Direction::Credit,
        _ => return Err(wrong()),
    };
    Ok(pb::Leg {
        account_id: account_id.to_owned(),
        direction: direction.into(),
        amount_minor: amount.parse().map_err(|_| wrong())?,
    })
}

fn adjustment_status_name(value: i32) -> String {
    pb::AdjustmentStatus::try_from(value)
        .map(|status| {
            status
                .as_str_name()
                .trim_start_matches("ADJUSTMENT_STATUS_")
                .to_owned()
        })
        .unwrap_or_else(|_| value.to_string())
}

fn adjustments_listing(adjustments: &[pb::Adjustment]) -> Listing {
    let legs = |adjustment: &pb::Adjustment| {
        adjustment
            .legs
            .iter()
            .map(|leg| {
                let direction = if leg.direction == pb::Direction::Debit as i32 {
                    "debit"
                } else {
                    "credit"
                };
                format!("{}:{direction}:{}", leg.account_id, leg.amount_minor)
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    Listing {
        headers: vec![
            "adjustment_id",
            "status",
            "amount_minor",
            "requested_by",
            "decided_by",
            "reason",
            "reference",
            "transaction_id",
            "note",
            "legs",
        ],
        rows: adjustments
            .iter()
            .map(|adjustment| {
                vec![
                    adjustment.adjustment_id.clone(),
                    adjustment_status_name(adjustment.status),
                    adjustment.amount_minor.to_string(),
                    adjustment.requested_by.clone(),
                    adjustment.decided_by.clone(),
                    adjustment.reason.clone(),
                    adjustment.reference.clone(),
                    adjustment.transaction_id.clone(),
                    adjustment.rejection_reason.clone(),
                    legs(adjustment),
                ]
            })
            .collect(),
    }
}

pub async fn adjust(
    settings: &Settings,
    args: &ServerArgs,
    command: AdjustCommand,
) -> anyhow::Result<()> {
    let mut ops = Ops::connect(settings, args).await?;
    let adjustments = match command {
        AdjustCommand::Post {
            key,
            legs,
            reason,
            reference,
        } => vec![post_adjustment(&mut ops, key, &legs, reason, reference).await?],
        AdjustCommand::Approve { adjustment_id } => {
            let request = ops.request(pb::ApproveAdjustmentRequest { adjustment_id })?;
            let answer = ops.client.approve_adjustment(request).await;
            vec![
                answer
                    .map_err(refused)?
                    .into_inner()
                    .adjustment
                    .unwrap_or_default(),
            ]
        }
        AdjustCommand::Reject {
            adjustment_id,
            reason,
        } => {
            let request = ops.request(pb::RejectAdjustmentRequest {
                adjustment_id,
                reason,
            })?;
            let answer = ops.client.reject_adjustment(request).await;
            vec![
                answer
                    .map_err(refused)?
                    .into_inner()
                    .adjustment
                    .unwrap_or_default(),
            ]
        }
        AdjustCommand::Show { adjustment_id } => {
            let request = ops.request(pb::GetAdjustmentRequest { adjustment_id })?;
            let answer = ops.client.get_adjustment(request).await;
            vec![
                answer
                    .map_err(refused)?
                    .into_inner()
                    .adjustment
                    .unwrap_or_default(),
            ]
        }
        AdjustCommand::List { status } => list_adjustments(&mut ops, status).await?,
    };
    adjustments_listing(&adjustments).print(ops.output);
    Ok(())
}

/// Requests one adjustment; the original when its key was used before with the same content.
async fn post_adjustment(
    ops: &mut Ops,
    key: String,
    legs: &[String],
    reason: String,
    reference: String,
) -> anyhow::Result<pb::Adjustment> {
    let legs = legs
        .iter()
        .map(|leg| leg_from_flag(leg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = ops.request(pb::PostAdjustmentRequest {
        idempotency_key: key,
        legs,
        reason,
        reference,
    })?;
    let answer = ops
        .client
        .post_adjustment(request)
        .await
        .map_err(refused)?
        .into_inner();
    if answer.replayed {
        eprintln!("this key was used before with the same content: the original follows");
    }
    Ok(answer.adjustment.unwrap_or_default())
}

async fn list_adjustments(
    ops: &mut Ops,
    status: Option<String>,
) -> anyhow::Result<Vec<pb::Adjustment>> {
    let status = match status {
        Some(text) => {
            let name = format!(
                "ADJUSTMENT_STATUS_{}",
                text.to_uppercase().replace('-', "_")
            );
            match pb::AdjustmentStatus::from_str_name(&name) {
                Some(pb::AdjustmentStatus::Unspecified) | None => bail!(
                    "--status: {text:?} is not a status; write awaiting-approval, posting, \
                     posted, rejected or failed"
                ),
                Some(status) => status,
            }
        }
        None => pb::AdjustmentStatus::Unspecified,
    };
    every_page(|page_token| {
        let mut client = ops.client.clone();
        let request = ops.request(pb::ListAdjustmentsRequest {
            status: status.into(),
            page_size: 500,
            page_token,
        });
        async move {
            let page = client.list_adjustments(request?).await.map_err(refused)?;
            let page = page.into_inner();
            Ok((page.adjustments, page.next_page_token))
        }
    })
    .await
}

/// Flags of `tandem audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Only this ops user's actions.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only actions on this object (an adjustment id).
    #[arg(long)]
    pub object: Option<String>,
    /// Most events to print, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

pub async fn audit(settings: &Settings, args: &ServerArgs, audit: AuditArgs) -> anyhow::Result<()> {
    let mut ops = Ops::connect(settings, args).await?;
    let mut rows = Vec::new();
    let mut page_token = String::new();
    let limit = audit.limit.min(MAX_ROWS);
    while rows.len() < limit {
        let request = ops.request(pb::ListAuditEventsRequest {
            actor: audit.actor.clone().unwrap_or_default(),
            object_id: audit.object.clone().unwrap_or_default(),
            page_size: 500,
            page_token,
        })?;
        let page = ops
            .client
            .list_audit_events(request)
            .await
            .map_err(refused)?
            .into_inner();
        rows.extend(page.events.into_iter().map(|event| {
            let details: Vec<String> = event
                .details
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            vec![
                time(event.event_time.as_ref()),
                event.actor,
                event.action,
                event.object_id,
                event.reason,
                details.join(" "),
            ]
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    rows.truncate(limit);
    Listing {
        headers: vec!["time", "actor", "action", "object_id", "reason", "details"],
        rows,
    }
    .print(ops.output);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_at_their_scale() {
        assert_eq!(decimal(12_345, 2), "123.45");
        assert_eq!(decimal(-5, 2), "-0.05");
        assert_eq!(decimal(700, 0), "700");
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(
            csv_line(["plain", "a,b", "say \"hi\""].into_iter()),
            "plain,\"a,b\",\"say \"\"hi\"\"\""
        );
    }

    #[test]
    fn legs_parse_from_flags() {
        let leg = leg_from_flag("0190-ab:debit:250").unwrap();
        assert_eq!(leg.direction, pb::Direction::Debit as i32);
        assert_eq!(leg.amount_minor, 250);
        assert!(leg_from_flag("0190-ab:sideways:250").is_err());
        assert!(leg_from_flag("0190-ab:debit").is_err());
    }
}
