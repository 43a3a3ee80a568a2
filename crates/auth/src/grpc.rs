//! The gRPC edge of `AuthService`.

use std::{future::Future, sync::Arc, time::Duration};

use tandem_domain::PartnerId;
use tandem_proto::{
    status,
    time::timestamp,
    v1::{
        IssueTokenRequest, IssueTokenResponse, JsonWebKey, ListSigningKeysRequest,
        ListSigningKeysResponse, auth_service_server::AuthService,
    },
};
use tonic::{Code, Request, Response, Status};

use crate::{Authenticator, Caller};

/// Longest client id or secret accepted; real ones are far shorter, and the bound keeps a
/// hostile request from feeding megabytes to the password hash.
const MAX_CREDENTIAL_LENGTH: usize = 200;

/// Checks client credentials. The registry implements it: it owns the credentials.
pub trait CredentialVerifier: Send + Sync + 'static {
    /// The partner whose live credentials these are, or `None` when they are wrong, revoked, or
    /// belong to an offboarded partner.
    fn partner_for_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> impl Future<Output = Result<Option<PartnerId>, sqlx::Error>> + Send;
}

/// `AuthService`: tokens for partners, and the public keys that verify them.
pub struct AuthGrpc<V> {
    authenticator: Arc<Authenticator>,
    verifier: V,
    partner_token_ttl: Duration,
}

impl<V: CredentialVerifier> AuthGrpc<V> {
    pub fn new(
        authenticator: Arc<Authenticator>,
        verifier: V,
        partner_token_ttl: Duration,
    ) -> Self {
        Self {
            authenticator,
            verifier,
            partner_token_ttl,
        }
    }
}

fn validate_credentials(request: &IssueTokenRequest) -> Result<(), Status> {
    let mut violations = Vec::new();
    for (field, value) in [
        ("client_id", &request.client_id),
        ("client_secret", &request.client_secret),
    ] {
        if !tandem_domain::is_printable_identifier(value, MAX_CREDENTIAL_LENGTH) {
            violations.push((
                field,
                "must be 1 to 200 printable ASCII characters without spaces",
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(status::invalid_argument(violations))
    }
}

#[tonic::async_trait]
impl<V: CredentialVerifier> AuthService for AuthGrpc<V> {
    /// Callers: anyone holding client credentials; no token needed.
    async fn issue_token(
        &self,
        request: Request<IssueTokenRequest>,
    ) -> Result<Response<IssueTokenResponse>, Status> {
        let request = request.into_inner();
        validate_credentials(&request)?;
        let partner_id = self
            .verifier
            .partner_for_credentials(&request.client_id, &request.client_secret)
            .await
            .map_err(|error| status::internal(&error))?;
        let Some(partner_id) = partner_id else {
            tracing::info!(client_id = %request.client_id, "token refused: invalid client credentials");
            return Err(status::with_reason(
                Code::Unauthenticated,
                "INVALID_CLIENT_CREDENTIALS",
                "the client id or secret is wrong, revoked, or belongs to an offboarded partner",
            ));
        };
        let caller = Caller::partner(partner_id, request.client_id);
        let issued = self
            .authenticator
            .issue(&caller, self.partner_token_ttl)
            .await
            .map_err(|error| status::internal(&error))?;
        tracing::info!(%partner_id, "partner token issued");
        Ok(Response::new(IssueTokenResponse {
            access_token: issued.token,
            token_type: "Bearer".to_owned(),
            expires_in_seconds: self.partner_token_ttl.as_secs() as i64,
            expires_at: Some(timestamp(issued.expires_at)),
        }))
    }

    /// Callers: anyone; public keys are public.
    async fn list_signing_keys(
        &self,
        _request: Request<ListSigningKeysRequest>,
    ) -> Result<Response<ListSigningKeysResponse>, Status> {
        let keys = self
            .authenticator
            .public_keys()
            .await
            .map_err(|error| status::internal(&error))?;
        let keys = keys
            .into_iter()
            .map(|key| JsonWebKey {
                kty: "OKP".to_owned(),
                crv: "Ed25519".to_owned(),
                x: key.public_key,
                kid: key.kid,
                alg: "EdDSA".to_owned(),
                r#use: "sig".to_owned(),
                created_at: Some(timestamp(key.created_at)),
            })
            .collect();
        Ok(Response::new(ListSigningKeysResponse { keys }))
    }
}
