//! coldstream's server, as a library: configuration, the server that wires
//! the gateway, the event log, the archiver and the pipeline together; the
//! pipeline (timely workers, the view sink, checkpoints), the rebuild from
//! the archive, and SQL over the Parquet logs. The tools that drive it
//! (demo, simulate, chaos, bench, receive) are commands of the binary, in
//! `commands/`, one file or folder each.

pub mod archiver;
pub mod checkpoint;
pub mod config;
pub mod flight_sql;
pub mod machine;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod query;
pub mod rebuild;
pub mod server;
pub mod supervise;
pub mod udf;
pub mod verify;
pub mod view_sink;
pub mod workers;
