//! `views/<view>/`: every change to a view as `(columns…, time, diff)`.
//!
//! Changes are buffered until the dataflow's frontier passes their logical
//! time (they are final then), and written as `part-<from>-<to>.parquet`
//! holding every change with `from <= time < to`. On restart the highest
//! `to` is where the view resumes: replaying the log reproduces the same
//! changes at the same times, and those below it are dropped, so no change
//! is written twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use coldstream_pipelines::views::InventoryKey;

use super::{ParquetConfig, SinkError, list_parts, part_name, schema, write_part};

/// A view row type that has a Parquet changelog.
pub trait ChangeRow: Sized {
    /// The view's name: its folder under `views/` and its SQL table.
    const VIEW: &'static str;
    /// The changelog's columns (the row's, then `time` and `diff`).
    fn schema() -> SchemaRef;
    /// Changes as a batch of [`ChangeRow::schema`].
    fn batch(changes: &[(Self, u64, i64)]) -> Result<RecordBatch, SinkError>;
}

impl ChangeRow for (InventoryKey, i64) {
    const VIEW: &'static str = "inventory";

    fn schema() -> SchemaRef {
        Arc::clone(&schema::INVENTORY)
    }

    fn batch(changes: &[(Self, u64, i64)]) -> Result<RecordBatch, SinkError> {
        let mut fridge_id = StringBuilder::new();
        let mut sku = StringBuilder::new();
        let mut on_hand = Int64Builder::with_capacity(changes.len());
        let mut time = TimestampMillisecondBuilder::with_capacity(changes.len()).with_timezone("UTC");
        let mut diff = Int64Builder::with_capacity(changes.len());
        for (((fridge, item), count), at, change) in changes {
            fridge_id.append_value(fridge);
            sku.append_value(item);
            on_hand.append_value(*count);
            time.append_value(*at as i64);
            diff.append_value(*change);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(fridge_id.finish()),
            Arc::new(sku.finish()),
            Arc::new(on_hand.finish()),
            Arc::new(time.finish()),
            Arc::new(diff.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
            .map_err(|source| SinkError::Arrow { table: Self::VIEW.into(), source })
    }
}

/// The crash-safe changelog writer of one view.
pub struct Changelog<R: ChangeRow> {
    dir: PathBuf,
    config: ParquetConfig,
    covered: u64,
    buffer: Vec<(R, u64, i64)>,
    oldest: Option<Instant>,
}

impl<R: ChangeRow> Changelog<R> {
    /// Opens the changelog of `R::VIEW` under the data directory `root`.
    pub fn open(root: &Path, config: ParquetConfig) -> Result<Self, SinkError> {
        let dir = root.join("views").join(R::VIEW);
        let covered = list_parts(&dir)?.into_iter().map(|(_, _, to)| to).max().unwrap_or(0);
        Ok(Changelog { dir, config, covered, buffer: Vec::new(), oldest: None })
    }

    /// Every change before this logical time is already in a file.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Buffers a change; one that is already committed is dropped.
    pub fn push(&mut self, row: R, time: u64, diff: i64) {
        if time >= self.covered {
            self.oldest.get_or_insert_with(Instant::now);
            self.buffer.push((row, time, diff));
        }
    }

    /// Called when the view's frontier reaches `frontier`: every change
    /// before it is final. Writes them if the buffer is due (or `force`).
    /// Returns whether a file was written.
    pub fn advance(&mut self, frontier: u64, force: bool) -> Result<bool, SinkError> {
        if frontier <= self.covered {
            return Ok(false);
        }
        let due = force
            || self.buffer.len() * 64 >= self.config.roll_bytes
            || self.oldest.is_some_and(|t| t.elapsed() >= self.config.roll_age);
        if !due {
            return Ok(false);
        }
        let (ready, later): (Vec<_>, Vec<_>) = self.buffer.drain(..).partition(|(_, time, _)| *time < frontier);
        self.buffer = later;
        let mut written = false;
        if !ready.is_empty() {
            let batch = R::batch(&ready)?;
            written = write_part(&self.dir, &part_name(self.covered, frontier), &batch, &self.config)?;
        }
        self.covered = frontier;
        self.oldest = if self.buffer.is_empty() { None } else { Some(Instant::now()) };
        Ok(written)
    }
}
