//! How one Tandem service reaches another: across the network, or inside the same process,
//! through the same generated gRPC clients either way.
//!
//! `tandem serve` runs every service in one process. Its services still call each other through
//! their gRPC clients (so they can be split across processes without changing a line), but
//! there the client talks to the other service's router directly: the request is encoded,
//! authenticated and decoded as over the network, without a socket, an HTTP/2 connection, or a
//! trip through the kernel.

use std::convert::Infallible;

use tonic::{
    body::Body,
    codegen::http::{Request, Response},
    service::Routes,
    transport::Channel,
};
use tower::{ServiceExt, util::BoxCloneSyncService};

/// Why a call could not be made at all: the network failed.
#[derive(Debug)]
pub struct TransportError(tonic::transport::Error);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A way to reach Tandem services, for any generated client: `XServiceClient::new(channel)`.
pub type ServiceChannel = BoxCloneSyncService<Request<Body>, Response<Body>, TransportError>;

/// Services at the other end of a network channel.
pub fn remote(channel: Channel) -> ServiceChannel {
    BoxCloneSyncService::new(channel.map_err(TransportError))
}

/// Services mounted in this process.
pub fn local(routes: Routes) -> ServiceChannel {
    BoxCloneSyncService::new(ServiceExt::<Request<Body>>::map_err(
        routes,
        |never: Infallible| -> TransportError { match never {} },
    ))
}
