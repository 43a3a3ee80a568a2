//! The token one Tandem service presents when it calls another, or a partner's gateway.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tonic::{Request, metadata::MetadataValue};

use crate::{Authenticator, Caller, Role};

/// Service tokens live this long.
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// A token this close to expiry is replaced before use, so a call never carries one that expires
/// in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The header value of the token in use, and when it was minted.
type CurrentToken = Option<(MetadataValue<tonic::metadata::Ascii>, Instant)>;

/// Mints a `service` token for one named Tandem service and reuses it until it nears expiry.
#[derive(Clone)]
pub struct ServiceToken {
    authenticator: Arc<Authenticator>,
    subject: &'static str,
    current: Arc<Mutex<CurrentToken>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    /// `subject` names the calling service in the token ("linking", "exchange").
    pub fn new(authenticator: Arc<Authenticator>, subject: &'static str) -> Self {
        Self {
            authenticator,
            subject,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// `message` as a request carrying `authorization: Bearer <service token>`.
    pub async fn authorize<T>(&self, message: T) -> Result<Request<T>, sqlx::Error> {
        let mut current = self.current.lock().await;
        let fresh = current
            .as_ref()
            .is_some_and(|(_, minted)| minted.elapsed() + REFRESH_MARGIN < SERVICE_TOKEN_TTL);
        if !fresh {
            let caller = Caller::staff(Role::Service, self.subject).expect("service is staff");
            let issued = self.authenticator.issue(&caller, SERVICE_TOKEN_TTL).await?;
            let header = format!("Bearer {}", issued.token)
                .parse()
                .expect("a JWT is a valid header value");
            *current = Some((header, Instant::now()));
        }
        let mut request = Request::new(message);
        let header = current.as_ref().expect("just set").0.clone();
        request.metadata_mut().insert("authorization", header);
        Ok(request)
    }
}
