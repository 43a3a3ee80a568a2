//! Operator commands on the signing keys: the bootstrap path for the first admin token.

use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tandem_auth::{Authenticator, Caller, KeyStore, Role, TokenSettings};
use tandem_storage::{Database, Location};

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

/// The deployment's key store, which must exist already. An operator command never creates one:
/// a token signed by a key the running server does not know is refused on every call, so a
/// command run against the wrong folder or database must say so rather than mint such a token.
async fn existing_key_store(settings: &Settings) -> anyhow::Result<KeyStore> {
    let remedy = "start `tandem serve` with the same --data-dir or --database-url first (it \
                  creates the keys), run `tandem keys init`, or point --data-dir / \
                  --database-url at the running server's storage";
    if let Location::SqliteDirectory(directory) = &settings.location {
        let file = directory.join("auth.db");
        if !file.exists() {
            bail!("no key store at {}: {remedy}", file.display());
        }
    }
    let store = key_store(settings).await?;
    if store.key_count().await? == 0 {
        bail!(
            "the key store ({}) holds no signing key: {remedy}",
            settings.location.describe()
        );
    }
    Ok(store)
}

/// Creates the deployment's key store and its first signing key, unless they exist.
pub async fn init(settings: &Settings) -> anyhow::Result<()> {
    let store = key_store(settings).await?;
    if store.key_count().await? > 0 {
        eprintln!(
            "the key store ({}) already holds signing keys; nothing changed",
            settings.location.describe()
        );
        return Ok(());
    }
    let key = store.rotate().await?;
    println!("{}", key.kid);
    eprintln!(
        "created the key store ({}) with signing key {}",
        settings.location.describe(),
        key.kid
    );
    Ok(())
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
        existing_key_store(settings).await?,
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
    let store = existing_key_store(settings).await?;
    let key = store.rotate().await?;
    println!("{}", key.kid);
    eprintln!(
        "new signing key {} signs from now on; running servers pick it up within 30s, and tokens signed earlier stay valid until they expire",
        key.kid
    );
    Ok(())
}

pub async fn list(settings: &Settings) -> anyhow::Result<()> {
    let store = existing_key_store(settings).await?;
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
