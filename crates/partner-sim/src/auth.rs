//! How a partner verifies that a call really comes from Tandem: the bearer token must be an
//! EdDSA JWT signed by one of the keys Tandem publishes (`AuthService.ListSigningKeys`), for
//! Tandem's audience, unexpired, with the `service` role.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tandem_proto::v1::{ListSigningKeysRequest, auth_service_client::AuthServiceClient};
use tonic::{Status, metadata::MetadataMap, transport::Channel};

/// Tokens naming an unknown key trigger at most one key refresh this often.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Claims {
    role: String,
}

/// Verifies Tandem's tokens with Tandem's published keys.
pub struct TandemVerifier {
    client: AuthServiceClient<Channel>,
    audience: String,
    keys: Mutex<HashMap<String, DecodingKey>>,
    /// When the keys were last fetched. Held across the fetch, so calls that arrive during one
    /// wait for it instead of failing for want of a key it is about to bring.
    refreshed_at: tokio::sync::Mutex<Option<Instant>>,
}

impl TandemVerifier {
    pub fn new(channel: Channel, audience: String) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
            audience,
            keys: Mutex::new(HashMap::new()),
            refreshed_at: tokio::sync::Mutex::new(None),
        }
    }

    async fn refresh(&self, kid: &str) -> Result<(), Status> {
        let mut refreshed_at = self.refreshed_at.lock().await;
        if self.key(kid).is_some() {
            // A refresh that finished while this call waited brought the key.
            return Ok(());
        }
        if refreshed_at.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        *refreshed_at = Some(Instant::now());
        let keys = self
            .client
            .clone()
            .list_signing_keys(ListSigningKeysRequest {})
            .await?
            .into_inner()
            .keys;
        let mut decoded = HashMap::new();
        for key in keys {
            if let Ok(decoding) = DecodingKey::from_ed_components(&key.x) {
                decoded.insert(key.kid, decoding);
            }
        }
        *self.keys.lock().expect("keys lock") = decoded;
        Ok(())
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.lock().expect("keys lock").get(kid).cloned()
    }

    /// Ok when the request carries a valid Tandem service token.
    pub async fn verify(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let token = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("a Tandem bearer token is required"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Status::unauthenticated("malformed token"))?;
        let kid = header
            .kid
            .ok_or_else(|| Status::unauthenticated("the token names no key"))?;
        if self.key(&kid).is_none() {
            self.refresh(&kid).await.map_err(|status| {
                Status::unavailable(format!("cannot fetch Tandem's keys: {}", status.message()))
            })?;
        }
        let key = self
            .key(&kid)
            .ok_or_else(|| Status::unauthenticated("the token was not signed by Tandem"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|error| Status::unauthenticated(format!("invalid token: {error}")))?
            .claims;
        if claims.role != "service" {
            return Err(Status::permission_denied(
                "only Tandem's services call this gateway",
            ));
        }
        Ok(())
    }
}
