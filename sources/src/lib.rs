//! Where events come from: the gRPC gateway that fridges and the back office
//! publish to, the fridge client, the acceptance rules, and the event log
//! that makes every accepted event durable before it is acknowledged.

pub mod auth;
pub mod client;
pub mod convert;
pub mod gateway;
pub mod ingest;
pub mod log;
pub mod simulator;

/// The gRPC contract compiled from `proto/coldstream/v1/`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("coldstream.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/coldstream_descriptor.bin"));
}
