//! Issuing and verifying access tokens.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tandem_domain::{PartnerId, Timestamp};
use tonic::metadata::MetadataMap;

use crate::{Caller, KeyStore, Role, SigningKeyInfo};

/// The `iss` of every token Tandem signs.
const ISSUER: &str = "tandem";
/// Clock skew tolerated between the machines that sign and verify.
const LEEWAY_SECONDS: u64 = 5;
/// How often a verifier may re-read the key set because it saw an unknown `kid`; bounds the
/// database load that tokens with made-up key ids can cause.
const UNKNOWN_KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How long the signer keeps using a key set before re-reading it, so a rotation made from the
/// CLI is picked up by a running server.
const SIGNER_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// What tokens look like in this deployment.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The `aud` every token carries and every verifier demands.
    pub audience: String,
}

/// Why a request was not authenticated. Every variant is UNAUTHENTICATED; the reason tells a
/// partner's engineer what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `authorization: Bearer <token>` from AuthService.IssueToken")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is malformed or uses an algorithm other than EdDSA")]
    Malformed,
    #[error("the token was signed by a key Tandem does not know")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired; request a new one")]
    Expired,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
    #[error("the partner was offboarded; its tokens no longer work")]
    PartnerOffboarded,
}

impl AuthError {
    /// The stable `ErrorInfo` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::PartnerOffboarded => "PARTNER_OFFBOARDED",
            _ => "TOKEN_INVALID",
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        tandem_proto::status::with_reason(
            tonic::Code::Unauthenticated,
            error.reason(),
            error.to_string(),
        )
    }
}

/// The claims of a Tandem access token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    jti: String,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partner_id: Option<String>,
}

/// A signed token and when it stops working.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: Timestamp,
}

struct LoadedKey {
    info: SigningKeyInfo,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The keys in memory; the last signs.
struct Keyring {
    keys: Vec<LoadedKey>,
    loaded_at: Instant,
}

impl Keyring {
    fn find(&self, kid: &str) -> Option<&LoadedKey> {
        self.keys.iter().find(|key| key.info.kid == kid)
    }
}

/// Issues and verifies tokens with the deployment's signing keys.
pub struct Authenticator {
    store: KeyStore,
    settings: TokenSettings,
    keyring: RwLock<Arc<Keyring>>,
    last_unknown_key_reload: Mutex<Option<Instant>>,
    /// Tokens already verified, with their callers and expiry (Unix seconds). A service presents
    /// the same token on every call for minutes, and an Ed25519 check per call was a tenth of
    /// the server's time under load. Only successes are kept, only until the token expires.
    verified: Mutex<HashMap<String, (Caller, i64)>>,
    /// Partners whose tokens are refused although signed and unexpired: those offboarded.
    barred: RwLock<std::collections::HashSet<PartnerId>>,
}

/// Most verified tokens kept; past it the set starts again empty, which costs one verification
/// per token in use.
const VERIFIED_TOKENS_KEPT: usize = 10_000;

impl Authenticator {
    /// Loads the key set, creating the first key on a fresh deployment.
    pub async fn load(store: KeyStore, settings: TokenSettings) -> Result<Self, sqlx::Error> {
        store.ensure_key().await?;
        let keyring = read_keyring(&store).await?;
        Ok(Self {
            store,
            settings,
            keyring: RwLock::new(Arc::new(keyring)),
            last_unknown_key_reload: Mutex::new(None),
            verified: Mutex::new(HashMap::new()),
            barred: RwLock::new(std::collections::HashSet::new()),
        })
    }

    fn current(&self) -> Arc<Keyring> {
        self.keyring.read().expect("keyring lock").clone()
    }

    async fn reload(&self) -> Result<Arc<Keyring>, sqlx::Error> {
        let keyring = Arc::new(read_keyring(&self.store).await?);
        *self.keyring.write().expect("keyring lock") = keyring.clone();
        Ok(keyring)
    }

    /// Signs a token for `caller`, valid for `ttl` from now, with the newest key.
    pub async fn issue(&self, caller: &Caller, ttl: Duration) -> Result<IssuedToken, sqlx::Error> {
        self.issue_at(caller, chrono::Utc::now(), ttl).await
    }

    /// Signs a token for `caller` as if issued at `now`, valid for `ttl` from then.
    pub async fn issue_at(
        &self,
        caller: &Caller,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<IssuedToken, sqlx::Error> {
        let mut keyring = self.current();
        if keyring.loaded_at.elapsed() > SIGNER_RELOAD_INTERVAL {
            keyring = self.reload().await?;
        }
        let key = keyring
            .keys
            .last()
            .expect("load() ensures at least one key");
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: caller.subject().to_owned(),
            aud: self.settings.audience.clone(),
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            role: caller.role().as_str().to_owned(),
            partner_id: caller.partner_id().map(|id| id.to_string()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.info.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .expect("an Ed25519 key signs any claims");
        Ok(IssuedToken { token, expires_at })
    }

    /// The public keys, newest first, re-read so a rotation shows at once.
    pub async fn public_keys(&self) -> Result<Vec<SigningKeyInfo>, sqlx::Error> {
        let keyring = self.reload().await?;
        Ok(keyring
            .keys
            .iter()
            .rev()
            .map(|key| key.info.clone())
            .collect())
    }

    /// The caller of a request, from its `authorization: Bearer` header.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let header = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = header.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?
            .trim();
        self.verify(token).await
    }

    /// Refuses the tokens of `partners` from now on, however long they have left to run.
    pub fn bar_partners(&self, partners: impl IntoIterator<Item = PartnerId>) {
        self.barred.write().expect("barred lock").extend(partners);
    }

    /// The caller a token names, if Tandem signed it, it has not expired, it is for this
    /// deployment's audience, and it does not act for an offboarded partner.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let caller = self.verify_signed(token).await?;
        if let Some(partner) = caller.partner_id()
            && self.barred.read().expect("barred lock").contains(&partner)
        {
            return Err(AuthError::PartnerOffboarded);
        }
        Ok(caller)
    }

    /// The caller a token names, if Tandem signed it, it has not expired, and it is for this
    /// deployment's audience.
    async fn verify_signed(&self, token: &str) -> Result<Caller, AuthError> {
        let now = chrono::Utc::now().timestamp();
        if let Some((caller, expires)) = self.verified.lock().expect("verified lock").get(token)
            && now < *expires
        {
            return Ok(caller.clone());
        }
        // Only EdDSA parses: `alg: none` and HMAC tokens fail here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let mut keyring = self.current();
        if keyring.find(&kid).is_none() && self.may_reload_for_unknown_key() {
            keyring = self.reload().await.map_err(|error| {
                tracing::error!(%error, "cannot reload signing keys");
                AuthError::UnknownKey
            })?;
        }
        let key = keyring.find(&kid).ok_or(AuthError::UnknownKey)?;
        let claims = self.decode(token, &key.decoding)?;
        let expires = claims.exp;
        let caller = caller_from_claims(claims)?;
        let mut verified = self.verified.lock().expect("verified lock");
        if verified.len() >= VERIFIED_TOKENS_KEPT {
            verified.clear();
        }
        verified.insert(token.to_owned(), (caller.clone(), expires));
        Ok(caller)
    }

    fn may_reload_for_unknown_key(&self) -> bool {
        let mut last = self.last_unknown_key_reload.lock().expect("reload lock");
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KEY_RELOAD_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_audience(&[&self.settings.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.required_spec_claims =
            HashSet::from(["exp", "aud", "iss", "sub"].map(str::to_owned));
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidIssuer => AuthError::InvalidClaims("wrong issuer".to_owned()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::InvalidClaims(format!("missing {claim}"))
                }
                _ => AuthError::Malformed,
            })
    }
}

fn caller_from_claims(claims: Claims) -> Result<Caller, AuthError> {
    let role: Role = claims.role.parse().map_err(AuthError::InvalidClaims)?;
    match (role, claims.partner_id) {
        (Role::Partner, Some(partner_id)) => {
            let partner_id: PartnerId = partner_id.parse().map_err(|_| {
                AuthError::InvalidClaims("partner_id is not a partner id".to_owned())
            })?;
            Ok(Caller::partner(partner_id, claims.sub))
        }
        (Role::Partner, None) => Err(AuthError::InvalidClaims(
            "a partner token needs partner_id".to_owned(),
        )),
        (_, Some(_)) => Err(AuthError::InvalidClaims(
            "only partner tokens carry partner_id".to_owned(),
        )),
        (role, None) => Caller::staff(role, claims.sub).map_err(AuthError::InvalidClaims),
    }
}

async fn read_keyring(store: &KeyStore) -> Result<Keyring, sqlx::Error> {
    let keys = store
        .load()
        .await?
        .into_iter()
        .map(|stored| LoadedKey {
            encoding: EncodingKey::from_ed_der(&stored.private_key_pkcs8),
            decoding: DecodingKey::from_ed_der(&stored.public_key_raw),
            info: stored.info,
        })
        .collect();
    Ok(Keyring {
        keys,
        loaded_at: Instant::now(),
    })
}
