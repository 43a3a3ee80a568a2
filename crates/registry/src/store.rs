//! The registry's storage: partners, credentials, agreements and terms versions. Row types are
//! private; everything leaving this module is a domain type.

use sqlx::{Any, AnyConnection, FromRow, Transaction};
use tandem_auth::SecretHash;
use tandem_domain::{
    Agreement, AgreementId, AgreementState, Category, GatewayEndpoint, Partner, PartnerCode,
    PartnerId, PartnerStatus, Program, ProgramCode, Scale, TermsVersion, TermsVersionStatus, Text,
    Timestamp, from_unix_micros, to_unix_micros,
};
use tandem_storage::{Database, is_retryable_conflict, violates_unique};

use tandem_storage::{PageCursor, PageRequest};

use crate::terms_document::TermsDocument;

/// What the store reports beyond plain database failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("partner code {0:?} is already registered")]
    PartnerCodeTaken(String),
    #[error("program code {0:?} is already registered")]
    ProgramCodeTaken(String),
    #[error("a live agreement from this source to this target already exists")]
    AgreementLive,
    #[error("the record changed concurrently; retry")]
    Conflict,
    #[error("a stored row is damaged: {0}")]
    Corrupt(String),
    #[error("no database connection came free in time")]
    Busy,
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_retryable_conflict(&error) {
            StoreError::Conflict
        } else if tandem_storage::is_pool_exhausted(&error) {
            StoreError::Busy
        } else {
            StoreError::Database(error)
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

#[derive(FromRow)]
struct PartnerRow {
    partner_id: String,
    code: String,
    display_name: String,
    category: String,
    program_code: String,
    program_name: String,
    program_scale: i64,
    settlement_currency: String,
    gateway_endpoint: Option<String>,
    status: String,
    status_reason: Option<String>,
    created_at_micros: i64,
    updated_at_micros: i64,
}

const PARTNER_COLUMNS: &str = "partner_id, code, display_name, category, program_code, program_name, program_scale, \
     settlement_currency, gateway_endpoint, status, status_reason, created_at_micros, updated_at_micros";

impl PartnerRow {
    fn into_partner(self) -> Result<Partner> {
        let corrupt = |field: &str, error: String| {
            StoreError::Corrupt(format!("partner {}: {field}: {error}", self.partner_id))
        };
        Ok(Partner {
            id: self
                .partner_id
                .parse()
                .map_err(|error: tandem_domain::IdParseError| corrupt("id", error.to_string()))?,
            code: PartnerCode::parse(&self.code).map_err(|error| corrupt("code", error))?,
            display_name: Text::parse(&self.display_name)
                .map_err(|error| corrupt("display_name", error))?,
            category: self
                .category
                .parse()
                .map_err(|error| corrupt("category", error))?,
            program: Program {
                code: ProgramCode::parse(&self.program_code)
                    .map_err(|error| corrupt("program_code", error))?,
                name: Text::parse(&self.program_name)
                    .map_err(|error| corrupt("program_name", error))?,
                scale: Scale::new(u32::try_from(self.program_scale).unwrap_or(u32::MAX))
                    .map_err(|error| corrupt("program_scale", error))?,
            },
            settlement_currency: self
                .settlement_currency
                .parse()
                .map_err(|error| corrupt("settlement_currency", error))?,
            gateway_endpoint: self
                .gateway_endpoint
                .as_deref()
                .map(GatewayEndpoint::parse)
                .transpose()
                .map_err(|error| corrupt("gateway_endpoint", error))?,
            status: self
                .status
                .parse()
                .map_err(|error| corrupt("status", error))?,
            status_reason: self.status_reason,
            created_at: from_unix_micros(self.created_at_micros),
            updated_at: from_unix_micros(self.updated_at_micros),
        })
    }
}

#[derive(FromRow)]
struct AgreementRow {
    agreement_id: String,
    source_partner_id: String,
    target_partner_id: String,
    state: String,
    terminate_at_micros: Option<i64>,
    terminated_by_partner_id: Option<String>,
    termination_reason: Option<String>,
    created_at_micros: i64,
    revision: i64,
}

const AGREEMENT_COLUMNS: &str = "agreement_id, source_partner_id, target_partner_id, state, terminate_at_micros, \
     terminated_by_partner_id, termination_reason, created_at_micros, revision";

#[derive(FromRow)]
struct TermsRow {
    agreement_id: String,
    version: i64,
    terms_json: String,
    status: String,
    proposed_by_partner_id: String,
    proposed_at_micros: i64,
    requested_effective_at_micros: Option<i64>,
    effective_at_micros: Option<i64>,
    decided_at_micros: Option<i64>,
    decision_reason: Option<String>,
}

const TERMS_COLUMNS: &str = "agreement_id, version, terms_json, status, proposed_by_partner_id, proposed_at_micros, \
     requested_effective_at_micros, effective_at_micros, decided_at_micros, decision_reason";

impl TermsRow {
    fn into_version(self) -> Result<TermsVersion> {
        let corrupt = |field: &str, error: String| {
            StoreError::Corrupt(format!(
                "agreement {} v{}: {field}: {error}",
                self.agreement_id, self.version
            ))
        };
        let document: TermsDocument = serde_json::from_str(&self.terms_json)
            .map_err(|error| corrupt("terms_json", error.to_string()))?;
        Ok(TermsVersion {
            version: u32::try_from(self.version)
                .map_err(|error| corrupt("version", error.to_string()))?,
            terms: document
                .into_terms()
                .map_err(|error| corrupt("terms", error))?,
            status: TermsVersionStatus::parse(&self.status)
                .ok_or_else(|| corrupt("status", self.status.clone()))?,
            proposed_by: self
                .proposed_by_partner_id
                .parse()
                .map_err(|_| corrupt("proposed_by", self.proposed_by_partner_id.clone()))?,
            proposed_at: from_unix_micros(self.proposed_at_micros),
            requested_effective_at: self.requested_effective_at_micros.map(from_unix_micros),
            effective_at: self.effective_at_micros.map(from_unix_micros),
            decided_at: self.decided_at_micros.map(from_unix_micros),
            decision_reason: self.decision_reason,
        })
    }
}

fn agreement_from_rows(row: AgreementRow, versions: Vec<TermsVersion>) -> Result<Agreement> {
    let corrupt =
        |field: &str| StoreError::Corrupt(format!("agreement {}: {field}", row.agreement_id));
    Ok(Agreement {
        id: row.agreement_id.parse().map_err(|_| corrupt("id"))?,
        source: row
            .source_partner_id
            .parse()
            .map_err(|_| corrupt("source_partner_id"))?,
        target: row
            .target_partner_id
            .parse()
            .map_err(|_| corrupt("target_partner_id"))?,
        state: AgreementState::parse(&row.state).ok_or_else(|| corrupt("state"))?,
        versions,
        terminate_at: row.terminate_at_micros.map(from_unix_micros),
        terminated_by: row
            .terminated_by_partner_id
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|_| corrupt("terminated_by"))?,
        termination_reason: row.termination_reason,
        created_at: from_unix_micros(row.created_at_micros),
        revision: row.revision,
    })
}

/// The text that holds the one-live-agreement-per-direction constraint; `None` once the
/// agreement can no longer be used (rejected, or its termination has taken effect).
fn live_pair(agreement: &Agreement, now: Timestamp) -> Option<String> {
    let open = agreement.state != AgreementState::Rejected
        && agreement.terminate_at.is_none_or(|end| end > now);
    open.then(|| format!("{}/{}", agreement.source, agreement.target))
}

/// A filter on agreement status, as the list RPC offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgreementStatusFilter {
    Any,
    Is(tandem_domain::AgreementStatus),
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    database: Database,
}

impl Store {
    pub(crate) fn new(database: Database) -> Self {
        Self { database }
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(self.database.begin_write().await?)
    }

    pub(crate) async fn insert_partner(
        &self,
        partner: &Partner,
        client_id: &str,
        secret_hash: &SecretHash,
    ) -> Result<()> {
        let mut transaction = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO partners (partner_id, code, display_name, category, program_code, program_name, program_scale, \
             settlement_currency, gateway_endpoint, status, status_reason, created_at_micros, updated_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(partner.id.to_string())
        .bind(partner.code.as_str())
        .bind(partner.display_name.as_str())
        .bind(partner.category.as_str())
        .bind(partner.program.code.as_str())
        .bind(partner.program.name.as_str())
        .bind(i64::from(partner.program.scale.places()))
        .bind(partner.settlement_currency.code())
        .bind(partner.gateway_endpoint.as_ref().map(|endpoint| endpoint.as_str().to_owned()))
        .bind(partner.status.as_str())
        .bind(partner.status_reason.clone())
        .bind(to_unix_micros(partner.created_at))
        .bind(to_unix_micros(partner.updated_at))
        .execute(&mut *transaction)
        .await;
        if let Err(error) = inserted {
            return Err(
                if violates_unique(&error, "partners_code_key", "partners.code") {
                    StoreError::PartnerCodeTaken(partner.code.to_string())
                } else if violates_unique(
                    &error,
                    "partners_program_code_key",
                    "partners.program_code",
                ) {
                    StoreError::ProgramCodeTaken(partner.program.code.to_string())
                } else {
                    error.into()
                },
            );
        }
        insert_credentials(
            &mut transaction,
            partner.id,
            client_id,
            secret_hash,
            partner.created_at,
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(crate) async fn partner(&self, id: PartnerId) -> Result<Option<Partner>> {
        let query = format!("SELECT {PARTNER_COLUMNS} FROM partners WHERE partner_id = $1");
        let row: Option<PartnerRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(id.to_string())
            .fetch_optional(self.database.pool())
            .await?;
        row.map(PartnerRow::into_partner).transpose()
    }

    /// Every offboarded partner's id.
    pub(crate) async fn offboarded_partner_ids(&self) -> Result<Vec<PartnerId>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT partner_id FROM partners WHERE status = $1")
                .bind(PartnerStatus::Offboarded.as_str())
                .fetch_all(self.database.pool())
                .await?;
        ids.iter()
            .map(|id| {
                id.parse()
                    .map_err(|_| StoreError::Corrupt(format!("partner id {id:?}")))
            })
            .collect()
    }

    /// One page of partners, newest first.
    pub(crate) async fn partners(
        &self,
        status: Option<PartnerStatus>,
        category: Option<Category>,
        page: &PageRequest,
    ) -> Result<(Vec<Partner>, Option<PageCursor>)> {
        let query = format!(
            "SELECT {PARTNER_COLUMNS} FROM partners \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR category = $2) \
               AND ($3 IS NULL OR created_at_micros < $3 OR (created_at_micros = $3 AND partner_id < $4)) \
             ORDER BY created_at_micros DESC, partner_id DESC LIMIT $5"
        );
        let rows: Vec<PartnerRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(status.map(|status| status.as_str().to_owned()))
            .bind(category.map(|category| category.as_str().to_owned()))
            .bind(page.after.as_ref().map(|cursor| cursor.created_at_micros))
            .bind(
                page.after
                    .as_ref()
                    .map(|cursor| cursor.id.clone())
                    .unwrap_or_default(),
            )
            .bind(page.size as i64 + 1)
            .fetch_all(self.database.pool())
            .await?;
        let partners = rows
            .into_iter()
            .map(PartnerRow::into_partner)
            .collect::<Result<Vec<_>>>()?;
        Ok(page.split(partners, |partner| PageCursor {
            created_at_micros: to_unix_micros(partner.created_at),
            id: partner.id.to_string(),
        }))
    }

    pub(crate) async fn update_partner_profile(&self, partner: &Partner) -> Result<()> {
        sqlx::query("UPDATE partners SET display_name = $1, gateway_endpoint = $2, updated_at_micros = $3 WHERE partner_id = $4")
            .bind(partner.display_name.as_str())
            .bind(partner.gateway_endpoint.as_ref().map(|endpoint| endpoint.as_str().to_owned()))
            .bind(to_unix_micros(partner.updated_at))
            .bind(partner.id.to_string())
            .execute(self.database.pool())
            .await?;
        Ok(())
    }

    /// Moves a partner from `from` to its current status, refusing if someone else changed the
    /// status in between.
    pub(crate) async fn change_status(
        &self,
        transaction: &mut AnyConnection,
        partner: &Partner,
        from: PartnerStatus,
    ) -> Result<()> {
        let changed = sqlx::query("UPDATE partners SET status = $1, status_reason = $2, updated_at_micros = $3 WHERE partner_id = $4 AND status = $5")
            .bind(partner.status.as_str())
            .bind(partner.status_reason.clone())
            .bind(to_unix_micros(partner.updated_at))
            .bind(partner.id.to_string())
            .bind(from.as_str())
            .execute(transaction)
            .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    /// Revokes every live credential of a partner, as of `now`.
    pub(crate) async fn revoke_credentials(
        &self,
        transaction: &mut AnyConnection,
        partner: PartnerId,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query("UPDATE partner_credentials SET revoked_at_micros = $1 WHERE partner_id = $2 AND revoked_at_micros IS NULL")
            .bind(to_unix_micros(now))
            .bind(partner.to_string())
            .execute(transaction)
            .await?;
        Ok(())
    }

    pub(crate) async fn replace_credentials(
        &self,
        partner: PartnerId,
        client_id: &str,
        secret_hash: &SecretHash,
        now: Timestamp,
    ) -> Result<()> {
        let mut transaction = self.begin().await?;
        self.revoke_credentials(&mut transaction, partner, now)
            .await?;
        insert_credentials(&mut transaction, partner, client_id, secret_hash, now).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The partner and secret hash behind a live client id, unless the partner is offboarded.
    pub(crate) async fn live_credentials(
        &self,
        client_id: &str,
    ) -> Result<Option<(PartnerId, SecretHash)>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT c.partner_id, c.secret_hash FROM partner_credentials c JOIN partners p ON p.partner_id = c.partner_id \
             WHERE c.client_id = $1 AND c.revoked_at_micros IS NULL AND p.status <> 'OFFBOARDED'",
        )
        .bind(client_id)
        .fetch_optional(self.database.pool())
        .await?;
        row.map(|(partner_id, hash)| {
            let partner_id = partner_id
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("credentials {client_id}: partner id")))?;
            Ok((partner_id, SecretHash(hash)))
        })
        .transpose()
    }

    /// Records a new agreement, unless a live one already joins the same source to the same target.
    pub(crate) async fn insert_agreement(
        &self,
        agreement: &Agreement,
        now: Timestamp,
    ) -> Result<()> {
        let mut transaction = self.begin().await?;
        let pair = live_pair(agreement, now);
        // A termination that has taken effect since it was scheduled frees the pair now.
        sqlx::query("UPDATE agreements SET live_pair = NULL WHERE live_pair = $1 AND terminate_at_micros IS NOT NULL AND terminate_at_micros <= $2")
            .bind(pair.clone())
            .bind(to_unix_micros(now))
            .execute(&mut *transaction)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO agreements (agreement_id, source_partner_id, target_partner_id, state, live_pair, terminate_at_micros, \
             terminated_by_partner_id, termination_reason, created_at_micros, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(agreement.id.to_string())
        .bind(agreement.source.to_string())
        .bind(agreement.target.to_string())
        .bind(agreement.state.as_str())
        .bind(pair)
        .bind(agreement.terminate_at.map(to_unix_micros))
        .bind(agreement.terminated_by.map(|id| id.to_string()))
        .bind(agreement.termination_reason.clone())
        .bind(to_unix_micros(agreement.created_at))
        .bind(agreement.revision)
        .execute(&mut *transaction)
        .await;
        if let Err(error) = inserted {
            return Err(
                if violates_unique(&error, "agreements_live_pair_key", "agreements.live_pair") {
                    StoreError::AgreementLive
                } else {
                    error.into()
                },
            );
        }
        upsert_versions(&mut transaction, agreement).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Writes a changed agreement loaded at `agreement.revision`, refusing if anyone changed it
    /// since; on success the stored revision is one higher.
    pub(crate) async fn update_agreement(
        &self,
        transaction: &mut AnyConnection,
        agreement: &Agreement,
        now: Timestamp,
    ) -> Result<()> {
        let changed = sqlx::query(
            "UPDATE agreements SET state = $1, live_pair = $2, terminate_at_micros = $3, terminated_by_partner_id = $4, \
             termination_reason = $5, revision = revision + 1 WHERE agreement_id = $6 AND revision = $7",
        )
        .bind(agreement.state.as_str())
        .bind(live_pair(agreement, now))
        .bind(agreement.terminate_at.map(to_unix_micros))
        .bind(agreement.terminated_by.map(|id| id.to_string()))
        .bind(agreement.termination_reason.clone())
        .bind(agreement.id.to_string())
        .bind(agreement.revision)
        .execute(&mut *transaction)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        upsert_versions(transaction, agreement).await
    }

    pub(crate) async fn agreement(&self, id: AgreementId) -> Result<Option<Agreement>> {
        let query = format!("SELECT {AGREEMENT_COLUMNS} FROM agreements WHERE agreement_id = $1");
        let row: Option<AgreementRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(id.to_string())
            .fetch_optional(self.database.pool())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut agreements = self.with_versions(vec![row]).await?;
        Ok(agreements.pop())
    }

    /// Agreements a partner is a party to that are still live at `now`: offboarding ends them.
    pub(crate) async fn live_agreements_of(
        &self,
        partner: PartnerId,
        now: Timestamp,
    ) -> Result<Vec<Agreement>> {
        let query = format!(
            "SELECT {AGREEMENT_COLUMNS} FROM agreements WHERE (source_partner_id = $1 OR target_partner_id = $1) \
             AND state <> 'REJECTED' AND (terminate_at_micros IS NULL OR terminate_at_micros > $2) ORDER BY agreement_id"
        );
        let rows: Vec<AgreementRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(partner.to_string())
            .bind(to_unix_micros(now))
            .fetch_all(self.database.pool())
            .await?;
        self.with_versions(rows).await
    }

    /// One page of agreements, newest first, optionally of one partner and one status at `now`.
    pub(crate) async fn agreements(
        &self,
        party: Option<PartnerId>,
        status: AgreementStatusFilter,
        now: Timestamp,
        page: &PageRequest,
    ) -> Result<(Vec<Agreement>, Option<PageCursor>)> {
        use tandem_domain::AgreementStatus;
        // Status is derived from the stored state and the termination time, as
        // `Agreement::status_at` derives it; each clause below is that rule in SQL.
        let status_clause = match status {
            AgreementStatusFilter::Any => "",
            AgreementStatusFilter::Is(AgreementStatus::Proposed) => {
                "AND state = 'PROPOSED' AND (terminate_at_micros IS NULL OR terminate_at_micros > $5)"
            }
            AgreementStatusFilter::Is(AgreementStatus::Active) => {
                "AND state = 'ACTIVE' AND (terminate_at_micros IS NULL OR terminate_at_micros > $5)"
            }
            AgreementStatusFilter::Is(AgreementStatus::Rejected) => "AND state = 'REJECTED'",
            AgreementStatusFilter::Is(AgreementStatus::Terminated) => {
                "AND state <> 'REJECTED' AND terminate_at_micros <= $5"
            }
        };
        let query = format!(
            "SELECT {AGREEMENT_COLUMNS} FROM agreements \
             WHERE ($1 IS NULL OR source_partner_id = $1 OR target_partner_id = $1) \
               AND ($2 IS NULL OR created_at_micros < $2 OR (created_at_micros = $2 AND agreement_id < $3)) \
               {status_clause} \
             ORDER BY created_at_micros DESC, agreement_id DESC LIMIT $4"
        );
        let mut statement = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(party.map(|id| id.to_string()))
            .bind(page.after.as_ref().map(|cursor| cursor.created_at_micros))
            .bind(
                page.after
                    .as_ref()
                    .map(|cursor| cursor.id.clone())
                    .unwrap_or_default(),
            )
            .bind(page.size as i64 + 1);
        if status_clause.contains("$5") {
            statement = statement.bind(to_unix_micros(now));
        }
        let rows: Vec<AgreementRow> = statement.fetch_all(self.database.pool()).await?;
        let agreements = self.with_versions(rows).await?;
        Ok(page.split(agreements, |agreement| PageCursor {
            created_at_micros: to_unix_micros(agreement.created_at),
            id: agreement.id.to_string(),
        }))
    }

    /// Attaches every terms version to each agreement, reading all of them in one query.
    async fn with_versions(&self, rows: Vec<AgreementRow>) -> Result<Vec<Agreement>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=rows.len()).map(|index| format!("${index}")).collect();
        let query = format!(
            "SELECT {TERMS_COLUMNS} FROM agreement_terms WHERE agreement_id IN ({}) ORDER BY agreement_id, version",
            placeholders.join(", ")
        );
        let mut statement = sqlx::query_as(sqlx::AssertSqlSafe(query));
        for row in &rows {
            statement = statement.bind(row.agreement_id.clone());
        }
        let terms_rows: Vec<TermsRow> = statement.fetch_all(self.database.pool()).await?;
        let mut versions_by_agreement: std::collections::HashMap<String, Vec<TermsVersion>> =
            std::collections::HashMap::new();
        for terms_row in terms_rows {
            let agreement_id = terms_row.agreement_id.clone();
            versions_by_agreement
                .entry(agreement_id)
                .or_default()
                .push(terms_row.into_version()?);
        }
        rows.into_iter()
            .map(|row| {
                let versions = versions_by_agreement
                    .remove(&row.agreement_id)
                    .unwrap_or_default();
                agreement_from_rows(row, versions)
            })
            .collect()
    }
}

async fn insert_credentials(
    transaction: &mut AnyConnection,
    partner: PartnerId,
    client_id: &str,
    secret_hash: &SecretHash,
    now: Timestamp,
) -> Result<()> {
    sqlx::query("INSERT INTO partner_credentials (client_id, partner_id, secret_hash, created_at_micros) VALUES ($1, $2, $3, $4)")
        .bind(client_id)
        .bind(partner.to_string())
        .bind(&secret_hash.0)
        .bind(to_unix_micros(now))
        .execute(transaction)
        .await?;
    Ok(())
}

/// Inserts new versions and records decisions on existing ones. A version's terms are written
/// once and never changed.
async fn upsert_versions(transaction: &mut AnyConnection, agreement: &Agreement) -> Result<()> {
    for version in &agreement.versions {
        let document = serde_json::to_string(&TermsDocument::from(&version.terms))
            .expect("terms always serialize");
        sqlx::query(
            "INSERT INTO agreement_terms (agreement_id, version, terms_json, status, proposed_by_partner_id, proposed_at_micros, \
             requested_effective_at_micros, effective_at_micros, decided_at_micros, decision_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (agreement_id, version) DO UPDATE SET status = excluded.status, effective_at_micros = excluded.effective_at_micros, \
             decided_at_micros = excluded.decided_at_micros, decision_reason = excluded.decision_reason",
        )
        .bind(agreement.id.to_string())
        .bind(i64::from(version.version))
        .bind(document)
        .bind(version.status.as_str())
        .bind(version.proposed_by.to_string())
        .bind(to_unix_micros(version.proposed_at))
        .bind(version.requested_effective_at.map(to_unix_micros))
        .bind(version.effective_at.map(to_unix_micros))
        .bind(version.decided_at.map(to_unix_micros))
        .bind(version.decision_reason.clone())
        .execute(&mut *transaction)
        .await?;
    }
    Ok(())
}
