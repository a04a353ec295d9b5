//! coldstream's integration tests: real servers on loopback ports, real
//! files, real Parquet read back through DataFusion. One test binary.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod bench;
mod cli;
mod cluster;
mod compare;
mod contract;
mod durability;
mod faults;
mod flight_sql;
mod fluvio;
mod fuzz;
mod gateway;
mod golden;
mod hostile;
mod log;
mod operate;
mod other_engine;
mod recovery;
mod replay;
mod support;
mod tls;
mod udf;
mod webhooks;
