//! Errors that tonic itself answers, before any Tandem code sees a request, given the contract
//! every Tandem error keeps: a code chosen by meaning and an `ErrorInfo` with a stable reason.
//!
//! tonic answers a request whose bytes are not a valid message of the RPC's type (a string field
//! that is not UTF-8, say) with INTERNAL "failed to decode Protobuf message", and one larger than
//! the server accepts with OUT_OF_RANGE; neither carries an `ErrorInfo`, and INTERNAL tells a
//! partner the fault is Tandem's. [`FrameworkErrorsLayer`] rewrites those answers as
//! INVALID_ARGUMENT `MALFORMED_REQUEST` and RESOURCE_EXHAUSTED `REQUEST_TOO_LARGE`, and gives a
//! call to an RPC Tandem does not serve the reason `UNKNOWN_RPC`. Every other answer passes
//! through untouched.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    Code, Status,
    codegen::http::{Request, Response},
};
use tower::{Layer, Service};

use crate::status;

/// Wraps a server's services so that tonic's own errors carry Tandem's error contract.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameworkErrorsLayer;

impl<S> Layer<S> for FrameworkErrorsLayer {
    type Service = FrameworkErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FrameworkErrors { inner }
    }
}

/// The service [`FrameworkErrorsLayer`] makes.
#[derive(Debug, Clone)]
pub struct FrameworkErrors<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<Request<RequestBody>> for FrameworkErrors<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Default,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move { answer.await.map(with_contract) })
    }
}

/// The response, or its replacement when it is one of tonic's own errors.
fn with_contract<B: Default>(response: Response<B>) -> Response<B> {
    match Status::from_header_map(response.headers()).and_then(|answered| replacement(&answered)) {
        Some(replacement) => replacement.into_http(),
        None => response,
    }
}

/// What a status tonic answered by itself becomes; `None` for every other status.
pub fn replacement(answered: &Status) -> Option<Status> {
    if answered.code() == Code::Ok || !status::reason(answered).is_empty() {
        return None;
    }
    let message = answered.message();
    match answered.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some(status::with_reason(
                Code::InvalidArgument,
                "MALFORMED_REQUEST",
                "the request is not a valid message of this RPC's request type (every string \
                 field must be valid UTF-8)",
            ))
        }
        Code::OutOfRange if message.contains("message length too large") => {
            Some(status::with_reason(
                Code::ResourceExhausted,
                "REQUEST_TOO_LARGE",
                "the request is larger than Tandem accepts (4 MiB); send less in one call",
            ))
        }
        Code::Unimplemented => Some(status::with_reason(
            Code::Unimplemented,
            "UNKNOWN_RPC",
            "this server does not serve that RPC; check the service and method names against \
             proto/tandem/v1",
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_own_errors_get_a_code_by_meaning_and_a_reason() {
        let decode = replacement(&Status::internal(
            "failed to decode Protobuf message: GetLinkRequest.link_id: invalid string value",
        ))
        .unwrap();
        assert_eq!(
            (decode.code(), status::reason(&decode).as_str()),
            (Code::InvalidArgument, "MALFORMED_REQUEST")
        );
        let large = replacement(&Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ))
        .unwrap();
        assert_eq!(
            (large.code(), status::reason(&large).as_str()),
            (Code::ResourceExhausted, "REQUEST_TOO_LARGE")
        );
        // What tonic's router answers for a method it does not serve: the code, no message.
        let unknown = replacement(&Status::new(Code::Unimplemented, String::new())).unwrap();
        assert_eq!(status::reason(&unknown), "UNKNOWN_RPC");
    }

    #[test]
    fn tandems_own_errors_pass_untouched() {
        assert!(replacement(&status::with_reason(Code::Internal, "INTERNAL", "x")).is_none());
        assert!(replacement(&Status::internal("something else")).is_none());
        assert!(replacement(&Status::ok("")).is_none());
    }
}
