//! coldstream's server side: configuration, the pipeline server that wires
//! the gateway, the event log, the timely workers and the sinks together,
//! the fleet simulator, and SQL over the Parquet logs. The command line in
//! `main.rs` is a thin layer over these.

pub mod archiver;
pub mod bench;
pub mod chaos;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod machine;
pub mod pipeline;
pub mod query;
pub mod rebuild;
pub mod receive;
pub mod runtime;
pub mod server;
pub mod simulate;
pub mod view_sink;
