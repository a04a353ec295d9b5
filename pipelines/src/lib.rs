//! The coldstream domain model and its incremental dataflows.
//!
//! Everything here is a pure function: events in, view changes out. The
//! crate does no I/O and knows nothing of tokio, gRPC or Parquet; the
//! binary wires it to the event log and the sinks. Every view lives in
//! `views/` beside a plain batch reference implementation that the tests
//! compare it with.

pub mod checkpoint;
pub mod dedup;
pub mod event;
pub mod fleet;
#[cfg(test)]
mod fleet_gen;
pub mod harness;
pub mod metrics;
pub mod operators;
pub mod traces;
pub(crate) mod varint;
pub mod vec_map;
pub mod views;

pub use event::{Event, EventKind, Payload, Temperature};

/// The logical time of every dataflow: the ingest time of a log record, in
/// milliseconds since the Unix epoch.
pub type Time = u64;
