//! Where results go: Parquet logs that analysts query (`events/`,
//! `rejected/`, `views/<view>/`), written exactly once.

pub mod parquet;
pub mod webhooks;

pub use parquet::{ParquetConfig, SinkError};
