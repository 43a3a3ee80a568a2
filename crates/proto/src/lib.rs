//! Tandem's public gRPC contract, generated from `proto/tandem/v1`, with the few helpers every
//! service edge shares: timestamps and error statuses.
//!
//! Partners and Tandem's own services use the clients; the `tandem` binary mounts the servers.

pub mod channel;
pub mod framework_errors;
pub mod status;
pub mod time;

/// Version 1 of the contract: package `tandem.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tandem.v1");
}

/// The partner simulator's control service: package `tandem.sim.v1`.
pub mod sim {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("tandem.sim.v1");
    }
}

/// The encoded file descriptor set of every Tandem proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tandem_descriptor.bin"));
