//! The column layout of every Parquet table: a public interface, documented
//! in the README. Columns are only ever added.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A UTC timestamp of `unit`.
pub fn utc(unit: TimeUnit) -> DataType {
    DataType::Timestamp(unit, Some("UTC".into()))
}

/// `events/`: every accepted event, one wide table.
pub static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("source_id", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("fridge_id", DataType::Utf8, true),
        Field::new("event_time", utc(TimeUnit::Microsecond), false),
        Field::new("ingest_time", utc(TimeUnit::Millisecond), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("session_id", DataType::Utf8, true),
        Field::new("sku", DataType::Utf8, true),
        Field::new("qty", DataType::Int64, true),
        Field::new("amount_cents", DataType::Int64, true),
        Field::new("price_cents", DataType::Int64, true),
        Field::new("temperature_c", DataType::Float32, true),
        Field::new("door_open", DataType::Boolean, true),
        Field::new("order_id", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("par", DataType::Int64, true),
        Field::new("min", DataType::Int64, true),
        Field::new("perishable", DataType::Boolean, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("site", DataType::Utf8, true),
        // Null in files written before incarnations existed.
        Field::new("incarnation", DataType::UInt64, true),
    ]))
});

/// `rejected/`: the dead letter — what was received, when, from whom, and why.
pub static REJECTED: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("received_at", utc(TimeUnit::Millisecond), false),
        Field::new("principal", DataType::Utf8, false),
        Field::new("source_id", DataType::Utf8, true),
        Field::new("seq", DataType::UInt64, true),
        Field::new("event_time", utc(TimeUnit::Microsecond), true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("reason_code", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
    ]))
});

/// `webhooks_failed/`: deliveries the receiver refused for good (a 4xx
/// other than 408 and 429), with its answer.
pub static WEBHOOKS_FAILED: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("failed_at", utc(TimeUnit::Millisecond), false),
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("webhook_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("time", utc(TimeUnit::Millisecond), false),
        Field::new("body", DataType::Utf8, false),
        Field::new("status", DataType::UInt16, false),
        Field::new("answer", DataType::Utf8, false),
    ]))
});

/// The two columns every view changelog ends with.
pub fn change_columns() -> [Field; 2] {
    [Field::new("time", utc(TimeUnit::Millisecond), false), Field::new("diff", DataType::Int64, false)]
}
