//! Tandem's Rust SDK for partners.
//!
//! A [`TandemClient`] holds one partner's credentials. It fetches a token from
//! `AuthService.IssueToken`, refreshes it a minute before it expires (and once more if the server
//! says it is no longer valid), and attaches it to every call. Calls that change something carry
//! an idempotency key: a conversion's key is generated once per [`TandemClient::convert`] and
//! reused on every retry, and an activity is idempotent by the partner's own external id. Retries
//! happen only where the error says the call may not have been carried out and trying again is
//! safe: UNAVAILABLE, ABORTED, and DEADLINE_EXCEEDED, and only for idempotent calls.
//!
//! ```no_run
//! # async fn run() -> Result<(), tandem_client::Error> {
//! use tandem_client::{Credentials, TandemClient};
//! let client = TandemClient::connect(
//!     "http://127.0.0.1:50051",
//!     "0190f1c2-…-partner-id",
//!     Credentials::new("client-id", "client-secret"),
//! )
//! .await?;
//! let quote = client.quote_source_points("link-id", 10_000).await?;
//! let conversion = client.convert(&quote.quote_id).await?;
//! println!("{:?}", conversion.status());
//! # Ok(())
//! # }
//! ```

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tandem_proto::v1::{
    self as pb, account_linking_service_client::AccountLinkingServiceClient,
    auth_service_client::AuthServiceClient, exchange_service_client::ExchangeServiceClient,
};
use tokio::sync::Mutex;
use tonic::{
    Code, Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

pub use tandem_proto::v1 as proto;

/// A partner's client id and secret, as shown once at registration.
#[derive(Clone)]
pub struct Credentials {
    client_id: String,
    client_secret: String,
}

impl Credentials {
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tandem answered with an error status (after any retries).
    #[error("tandem refused the call: {0}")]
    Status(#[from] Status),
    /// The endpoint could not be used.
    #[error("cannot reach tandem: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// The gRPC code, for a status error.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            Error::Transport(_) => None,
        }
    }
}

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles, with jitter, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: doubling, capped, with up to half of it random so
    /// that many clients recovering together do not retry in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .first_backoff
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        let mut byte = [255_u8; 1];
        // Without randomness the full wait is used; jitter only spreads clients out.
        let _ = getrandom::fill(&mut byte);
        base.mul_f64(0.5 + f64::from(byte[0]) / 510.0)
    }
}

/// Whether a call that failed with `code` may be retried, given that it is idempotent: the call
/// may not have been carried out (UNAVAILABLE, DEADLINE_EXCEEDED) or lost a race that a retry
/// wins (ABORTED). Anything else will fail the same way again.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded
    )
}

/// Refresh a token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The `authorization` header in use and when its token expires.
type CurrentToken = Option<(MetadataValue<Ascii>, Instant)>;

#[derive(Clone)]
struct Tokens {
    auth: AuthServiceClient<Channel>,
    credentials: Arc<Credentials>,
    current: Arc<Mutex<CurrentToken>>,
}

impl Tokens {
    /// The `authorization` header, fetching a new token when there is none, it is about to
    /// expire, or `stale` (the server refused it).
    async fn header(&self, stale: bool) -> Result<MetadataValue<Ascii>, Status> {
        let mut current = self.current.lock().await;
        if let Some((header, expires)) = current.as_ref()
            && !stale
            && Instant::now() + REFRESH_MARGIN < *expires
        {
            return Ok(header.clone());
        }
        let issued = self
            .auth
            .clone()
            .issue_token(pb::IssueTokenRequest {
                client_id: self.credentials.client_id.clone(),
                client_secret: self.credentials.client_secret.clone(),
            })
            .await?
            .into_inner();
        let header: MetadataValue<Ascii> = format!("Bearer {}", issued.access_token)
            .parse()
            .map_err(|_| Status::internal("the issued token is not a header value"))?;
        let lifetime = Duration::from_secs(issued.expires_in_seconds.max(0) as u64);
        *current = Some((header.clone(), Instant::now() + lifetime));
        Ok(header)
    }
}

/// One partner's connection to Tandem.
#[derive(Clone)]
pub struct TandemClient {
    channel: Channel,
    partner_id: String,
    tokens: Tokens,
    retry: RetryPolicy,
}

impl std::fmt::Debug for TandemClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TandemClient")
            .field("partner_id", &self.partner_id)
            .finish_non_exhaustive()
    }
}

impl TandemClient {
    /// Connects to Tandem at `endpoint` (such as `http://127.0.0.1:50051`) as `partner_id`.
    pub async fn connect(
        endpoint: impl Into<String>,
        partner_id: impl Into<String>,
        credentials: Credentials,
    ) -> Result<Self, Error> {
        let channel = Endpoint::from_shared(endpoint.into())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(Self::with_channel(channel, partner_id, credentials))
    }

    /// A client over an existing channel.
    pub fn with_channel(
        channel: Channel,
        partner_id: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        Self {
            tokens: Tokens {
                auth: AuthServiceClient::new(channel.clone()),
                credentials: Arc::new(credentials),
                current: Arc::default(),
            },
            channel,
            partner_id: partner_id.into(),
            retry: RetryPolicy::default(),
        }
    }

    /// The same client with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn partner_id(&self) -> &str {
        &self.partner_id
    }

    /// The current access token, fetched or refreshed as needed, for calls this SDK does not
    /// wrap (the registry's agreement calls, say).
    pub async fn access_token(&self) -> Result<String, Error> {
        let header = self.tokens.header(false).await?;
        let value = header
            .to_str()
            .map_err(|_| Status::internal("the token is not text"))?;
        Ok(value.trim_start_matches("Bearer ").to_owned())
    }

    /// Runs `call` with a fresh token, refreshing it once if Tandem says it is no longer valid,
    /// and retrying an `idempotent` call while the error allows it.
    async fn call<T, M, F, Fut>(&self, idempotent: bool, message: M, call: F) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        run_with_retries(self.retry, idempotent, |attempt_is_stale| {
            let message = message.clone();
            let call = &call;
            async move {
                let header = self.tokens.header(attempt_is_stale).await?;
                let mut request = Request::new(message);
                request.metadata_mut().insert("authorization", header);
                call(request).await.map(Response::into_inner)
            }
        })
        .await
    }

    fn exchange(&self) -> ExchangeServiceClient<Channel> {
        ExchangeServiceClient::new(self.channel.clone())
    }

    fn linking(&self) -> AccountLinkingServiceClient<Channel> {
        AccountLinkingServiceClient::new(self.channel.clone())
    }

    /// Starts a link for one of this partner's members; the code goes to the customer. Not
    /// retried: each call makes a new code.
    pub async fn start_link(
        &self,
        member_id: &str,
        target_partner_id: &str,
    ) -> Result<pb::StartLinkResponse, Error> {
        let message = pb::StartLinkRequest {
            partner_id: self.partner_id.clone(),
            member_id: member_id.to_owned(),
            target_partner_id: target_partner_id.to_owned(),
        };
        self.call(false, message, |request| async move {
            self.linking().start_link(request).await
        })
        .await
    }

    /// Completes a link with the code the customer brought.
    pub async fn complete_link(&self, member_id: &str, code: &str) -> Result<pb::Link, Error> {
        let message = pb::CompleteLinkRequest {
            partner_id: self.partner_id.clone(),
            member_id: member_id.to_owned(),
            code: code.to_owned(),
        };
        // A code works once, so a retry after a lost answer would fail: not retried.
        let response = self
            .call(false, message, |request| async move {
                self.linking().complete_link(request).await
            })
            .await?;
        response
            .link
            .ok_or_else(|| Error::Status(Status::internal("answer without a link")))
    }

    async fn quote(
        &self,
        link_id: &str,
        amount: pb::get_quote_request::Amount,
    ) -> Result<pb::Quote, Error> {
        let message = pb::GetQuoteRequest {
            partner_id: self.partner_id.clone(),
            link_id: link_id.to_owned(),
            amount: Some(amount),
        };
        let response = self
            .call(true, message, |request| async move {
                self.exchange().get_quote(request).await
            })
            .await?;
        response
            .quote
            .ok_or_else(|| Error::Status(Status::internal("answer without a quote")))
    }

    /// Prices spending `source_points` of a linked member's points.
    pub async fn quote_source_points(
        &self,
        link_id: &str,
        source_points: i64,
    ) -> Result<pb::Quote, Error> {
        self.quote(
            link_id,
            pb::get_quote_request::Amount::SourcePoints(source_points),
        )
        .await
    }

    /// Prices receiving at least `target_points` at the other brand.
    pub async fn quote_target_points(
        &self,
        link_id: &str,
        target_points: i64,
    ) -> Result<pb::Quote, Error> {
        self.quote(
            link_id,
            pb::get_quote_request::Amount::TargetPoints(target_points),
        )
        .await
    }

    /// Executes a quote under a new idempotency key, reused on every retry of this call.
    pub async fn convert(&self, quote_id: &str) -> Result<pb::Conversion, Error> {
        self.convert_with_key(quote_id, &uuid::Uuid::new_v4().to_string())
            .await
    }

    /// Executes a quote under the caller's own idempotency key (for example one stored with the
    /// member's request, so that a restarted app retries the same conversion).
    pub async fn convert_with_key(
        &self,
        quote_id: &str,
        idempotency_key: &str,
    ) -> Result<pb::Conversion, Error> {
        let message = pb::ExecuteConversionRequest {
            partner_id: self.partner_id.clone(),
            quote_id: quote_id.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let response = self
            .call(true, message, |request| async move {
                self.exchange().execute_conversion(request).await
            })
            .await?;
        response
            .conversion
            .ok_or_else(|| Error::Status(Status::internal("answer without a conversion")))
    }

    pub async fn conversion(&self, conversion_id: &str) -> Result<pb::Conversion, Error> {
        let message = pb::GetConversionRequest {
            conversion_id: conversion_id.to_owned(),
        };
        let response = self
            .call(true, message, |request| async move {
                self.exchange().get_conversion(request).await
            })
            .await?;
        response
            .conversion
            .ok_or_else(|| Error::Status(Status::internal("answer without a conversion")))
    }

    /// One page of this partner's conversions; `partner_id` is filled in.
    pub async fn conversions(
        &self,
        mut filter: pb::ListConversionsRequest,
    ) -> Result<pb::ListConversionsResponse, Error> {
        filter.partner_id = self.partner_id.clone();
        self.call(true, filter, |request| async move {
            self.exchange().list_conversions(request).await
        })
        .await
    }

    /// Reverses a completed conversion inside its window. Safe to retry: a conversion already
    /// reversing or reversed is returned as it stands.
    pub async fn reverse_conversion(
        &self,
        conversion_id: &str,
        reason: &str,
    ) -> Result<pb::Conversion, Error> {
        let message = pb::ReverseConversionRequest {
            conversion_id: conversion_id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self
            .call(true, message, |request| async move {
                self.exchange().reverse_conversion(request).await
            })
            .await?;
        response
            .conversion
            .ok_or_else(|| Error::Status(Status::internal("answer without a conversion")))
    }

    /// Reports a purchase; `partner_id` is filled in. Idempotent by `external_id`.
    pub async fn record_activity(
        &self,
        mut activity: pb::RecordActivityRequest,
    ) -> Result<pb::Activity, Error> {
        activity.partner_id = self.partner_id.clone();
        let response = self
            .call(true, activity, |request| async move {
                self.exchange().record_activity(request).await
            })
            .await?;
        response
            .activity
            .ok_or_else(|| Error::Status(Status::internal("answer without an activity")))
    }

    /// Reports many purchases on one stream (at most 20,000); `partner_id` is filled in. Each
    /// record is idempotent by its external id, so the whole stream is retried as a unit.
    pub async fn record_activities(
        &self,
        activities: Vec<pb::RecordActivityRequest>,
    ) -> Result<pb::RecordActivitiesResponse, Error> {
        let records: Vec<pb::RecordActivitiesRequest> = activities
            .into_iter()
            .map(|mut activity| {
                activity.partner_id = self.partner_id.clone();
                pb::RecordActivitiesRequest {
                    activity: Some(activity),
                }
            })
            .collect();
        self.call(true, records, |request| async move {
            let (metadata, extensions, records) = request.into_parts();
            let streamed =
                Request::from_parts(metadata, extensions, futures::stream::iter(records));
            self.exchange().record_activities(streamed).await
        })
        .await
    }

    /// Reports a refund of an earlier purchase.
    pub async fn reverse_activity(
        &self,
        external_id: &str,
        reason: &str,
    ) -> Result<pb::Activity, Error> {
        let message = pb::ReverseActivityRequest {
            partner_id: self.partner_id.clone(),
            external_id: external_id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self
            .call(true, message, |request| async move {
                self.exchange().reverse_activity(request).await
            })
            .await?;
        response
            .activity
            .ok_or_else(|| Error::Status(Status::internal("answer without an activity")))
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy runs out. `attempt` is told
/// whether the last failure was UNAUTHENTICATED, so it fetches a new token; that happens once
/// and does not count as a retry.
async fn run_with_retries<T, F, Fut>(
    policy: RetryPolicy,
    idempotent: bool,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut attempts = 0;
    let mut refreshed = false;
    let mut stale = false;
    loop {
        attempts += 1;
        match attempt(stale).await {
            Ok(value) => return Ok(value),
            Err(status) if status.code() == Code::Unauthenticated && !refreshed => {
                refreshed = true;
                stale = true;
                attempts -= 1;
            }
            Err(status)
                if idempotent && retryable(status.code()) && attempts < policy.max_attempts =>
            {
                stale = false;
                let wait = policy.backoff(attempts);
                tracing::debug!(code = ?status.code(), attempts, ?wait, "retrying a Tandem call");
                tokio::time::sleep(wait).await;
            }
            Err(status) => return Err(Error::Status(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn an_idempotent_call_is_retried_with_the_same_message_until_it_succeeds() {
        let seen = StdMutex::new(Vec::new());
        let key = "key-1".to_owned();
        let result = run_with_retries(quick(), true, |_| {
            let mut seen = seen.lock().unwrap();
            seen.push(key.clone());
            let fail = seen.len() < 3;
            async move {
                if fail {
                    Err(Status::unavailable("down"))
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(*seen.lock().unwrap(), ["key-1", "key-1", "key-1"]);
    }

    #[tokio::test]
    async fn errors_that_will_not_clear_are_not_retried() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::PermissionDenied,
        ] {
            let calls = StdMutex::new(0);
            let result: Result<(), Error> = run_with_retries(quick(), true, |_| {
                *calls.lock().unwrap() += 1;
                async move { Err(Status::new(code, "no")) }
            })
            .await;
            assert_eq!(result.unwrap_err().code(), Some(code));
            assert_eq!(*calls.lock().unwrap(), 1, "{code:?} must not be retried");
        }
    }

    #[tokio::test]
    async fn a_call_that_is_not_idempotent_is_never_retried() {
        let calls = StdMutex::new(0);
        let result: Result<(), Error> = run_with_retries(quick(), false, |_| {
            *calls.lock().unwrap() += 1;
            async move { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Some(Code::Unavailable));
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_policy_limit() {
        let calls = StdMutex::new(0);
        let result: Result<(), Error> = run_with_retries(quick(), true, |_| {
            *calls.lock().unwrap() += 1;
            async move { Err(Status::aborted("conflict")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Some(Code::Aborted));
        assert_eq!(*calls.lock().unwrap(), 4);
    }

    #[tokio::test]
    async fn a_refused_token_is_refreshed_once() {
        let stale_flags = StdMutex::new(Vec::new());
        let result: Result<(), Error> = run_with_retries(quick(), false, |stale| {
            stale_flags.lock().unwrap().push(stale);
            async move { Err(Status::unauthenticated("expired")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Some(Code::Unauthenticated));
        assert_eq!(*stale_flags.lock().unwrap(), [false, true]);
    }
}
