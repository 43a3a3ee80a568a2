//! Signing keys, kept in the auth database so every Tandem process (and the CLI) shares them.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use sqlx::Row;
use tandem_domain::{Timestamp, from_unix_micros, to_unix_micros};
use tandem_storage::Database;

/// The public half of a signing key, as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyInfo {
    pub kid: String,
    /// The 32-byte Ed25519 public key, base64url without padding.
    pub public_key: String,
    pub created_at: Timestamp,
}

/// A key as stored: the private half too.
pub(crate) struct StoredKey {
    pub(crate) info: SigningKeyInfo,
    pub(crate) private_key_pkcs8: Vec<u8>,
    pub(crate) public_key_raw: Vec<u8>,
}

/// The signing keys of one Tandem deployment.
#[derive(Debug, Clone)]
pub struct KeyStore {
    database: Database,
}

impl KeyStore {
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// Every key, oldest first. The last one signs.
    pub(crate) async fn load(&self) -> Result<Vec<StoredKey>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT kid, private_key_pkcs8, public_key, created_at_micros FROM signing_keys ORDER BY created_at_micros, kid",
        )
        .fetch_all(self.database.pool())
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let kid: String = row.try_get("kid")?;
            let corrupt = |what: &str| {
                sqlx::Error::Decode(format!("signing key {kid}: {what} is not valid base64").into())
            };
            let private_key_pkcs8 = STANDARD
                .decode(row.try_get::<String, _>("private_key_pkcs8")?)
                .map_err(|_| corrupt("private key"))?;
            let public_key: String = row.try_get("public_key")?;
            let public_key_raw = URL_SAFE_NO_PAD
                .decode(&public_key)
                .map_err(|_| corrupt("public key"))?;
            let created_at = from_unix_micros(row.try_get("created_at_micros")?);
            keys.push(StoredKey {
                info: SigningKeyInfo {
                    kid,
                    public_key,
                    created_at,
                },
                private_key_pkcs8,
                public_key_raw,
            });
        }
        Ok(keys)
    }

    /// Adds a new key, which signs from now on. Older keys keep verifying the tokens they signed.
    pub async fn rotate(&self) -> Result<SigningKeyInfo, sqlx::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source");
        let signing_key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let private_key = signing_key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        let info = SigningKeyInfo {
            kid: uuid::Uuid::now_v7().to_string(),
            public_key: URL_SAFE_NO_PAD.encode(signing_key.verifying_key().to_bytes()),
            created_at: tandem_domain::now(),
        };
        sqlx::query("INSERT INTO signing_keys (kid, private_key_pkcs8, public_key, created_at_micros) VALUES ($1, $2, $3, $4)")
            .bind(&info.kid)
            .bind(STANDARD.encode(private_key.as_bytes()))
            .bind(&info.public_key)
            .bind(to_unix_micros(info.created_at))
            .execute(self.database.pool())
            .await?;
        tracing::info!(kid = %info.kid, "signing key added");
        Ok(info)
    }

    /// How many signing keys there are.
    pub async fn key_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys")
            .fetch_one(self.database.pool())
            .await
    }

    /// Makes sure a key exists, creating the first one on a fresh deployment.
    pub async fn ensure_key(&self) -> Result<(), sqlx::Error> {
        if self.key_count().await? == 0 {
            self.rotate().await?;
        }
        Ok(())
    }
}
