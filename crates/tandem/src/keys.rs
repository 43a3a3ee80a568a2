//! Operator commands on the signing keys: the bootstrap path for the first admin token.

use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tandem_auth::{Authenticator, Caller, KeyStore, Role, TokenSettings};
use tandem_storage::Database;

use crate::settings::Settings;

/// Operator tokens may live at most this long; a leaked admin token is the worst leak there is.
const MAX_OPERATOR_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

async fn key_store(settings: &Settings) -> anyhow::Result<KeyStore> {
    let database = Database::open(&settings.location, "auth", &tandem_auth::MIGRATOR)
        .await
        .with_context(|| {
            format!(
                "opening the auth database ({})",
                settings.location.describe()
            )
        })?;
    Ok(KeyStore::new(database))
}

pub async fn mint_operator_token(
    settings: &Settings,
    role: &str,
    subject: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let role: Role = role
        .parse()
        .map_err(|error: String| anyhow::anyhow!("--role: {error}"))?;
    if !matches!(role, Role::Admin | Role::Ops) {
        bail!(
            "--role: the CLI mints admin or ops tokens; partners get theirs from AuthService.IssueToken with their client credentials"
        );
    }
    if ttl.is_zero() || ttl > MAX_OPERATOR_TOKEN_TTL {
        bail!("--ttl: must be longer than zero and at most 12h");
    }
    let subject = subject.trim();
    if subject.is_empty() || subject.len() > 100 {
        bail!("--subject: must be 1 to 100 characters");
    }
    let caller = Caller::staff(role, subject).map_err(anyhow::Error::msg)?;
    let authenticator = Authenticator::load(
        key_store(settings).await?,
        TokenSettings {
            audience: settings.token_audience.clone(),
        },
    )
    .await?;
    let issued = authenticator.issue(&caller, ttl).await?;
    eprintln!(
        "{role} token for {subject:?}, valid until {}",
        issued.expires_at.to_rfc3339()
    );
    Ok(issued.token)
}

pub async fn rotate(settings: &Settings) -> anyhow::Result<()> {
    let store = key_store(settings).await?;
    store.ensure_key().await?;
    let key = store.rotate().await?;
    println!("{}", key.kid);
    eprintln!(
        "new signing key {} signs from now on; running servers pick it up within 30s, and tokens signed earlier stay valid until they expire",
        key.kid
    );
    Ok(())
}

pub async fn list(settings: &Settings) -> anyhow::Result<()> {
    let store = key_store(settings).await?;
    store.ensure_key().await?;
    let authenticator = Authenticator::load(
        store,
        TokenSettings {
            audience: settings.token_audience.clone(),
        },
    )
    .await?;
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["kid", "created", "use"]);
    for (index, key) in authenticator.public_keys().await?.into_iter().enumerate() {
        let usage = if index == 0 {
            "signs and verifies"
        } else {
            "verifies"
        };
        table.add_row([key.kid, key.created_at.to_rfc3339(), usage.to_owned()]);
    }
    println!("{table}");
    Ok(())
}
