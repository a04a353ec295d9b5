//! Restock recomputed with DataFusion SQL over the `events/` Parquet
//! archive (`queries/restock_from_events.sql`), as a team without a
//! streaming engine would: the whole history is read again every time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};

/// The query, as shipped in `queries/`.
pub const RESTOCK_SQL: &str = include_str!("../../queries/restock_from_events.sql");

/// Runs the query over the data directory `data_dir`: its lines and how
/// long the query took (planning, reading and computing).
pub async fn restock_lines(data_dir: &Path) -> anyhow::Result<(BTreeMap<(String, String), i64>, Duration)> {
    let started = Instant::now();
    let ctx = coldstream::query::context(data_dir).await?;
    let batches = coldstream::query::run(&ctx, RESTOCK_SQL).await?;
    let took = started.elapsed();
    let mut lines = BTreeMap::new();
    for batch in &batches {
        let (fridge, sku) = (cast(batch.column(0), &DataType::Utf8)?, cast(batch.column(1), &DataType::Utf8)?);
        let (fridge, sku) = (fridge.as_string::<i32>(), sku.as_string::<i32>());
        let qty = cast(batch.column(2), &DataType::Int64)?;
        let qty = qty.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            if !qty.is_null(row) {
                lines.insert((fridge.value(row).to_owned(), sku.value(row).to_owned()), qty.value(row));
            }
        }
    }
    Ok((lines, took))
}
