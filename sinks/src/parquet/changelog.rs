//! `views/<view>/`: every change to a view as `(columns…, time, diff)`.
//!
//! Changes are buffered until the dataflow's frontier passes their logical
//! time (they are final then), consolidated, and written as
//! `part-<from>-<to>.parquet` holding every change with `from <= time <
//! to`. On restart the highest `to` is where the view resumes: replaying
//! the log reproduces the same changes at the same times, and those below
//! it are dropped, so no change is written twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use coldstream_pipelines::views::View;

use super::{OpenPart, ParquetConfig, SinkError, list_parts, part_name, schema};

/// One value of a changelog row; the column's type says how it is stored
/// (an `Int` in a timestamp column is its count of the column's unit).
#[derive(Clone, Copy, Debug)]
pub enum Cell<'a> {
    /// A string, or null.
    Str(Option<&'a str>),
    /// An integer or timestamp, or null.
    Int(Option<i64>),
    /// A float, or null.
    Float(Option<f32>),
    /// A boolean, or null.
    Bool(Option<bool>),
}

/// One value read back from a changelog: [`Cell`], owned.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string, or null.
    Str(Option<String>),
    /// An integer or timestamp, or null.
    Int(Option<i64>),
    /// A float, or null.
    Float(Option<f32>),
    /// A boolean, or null.
    Bool(Option<bool>),
}

impl Value {
    /// The string, if this is a non-null string.
    pub fn str(&self) -> Option<&str> {
        if let Value::Str(Some(text)) = self { Some(text) } else { None }
    }

    /// The integer or timestamp, if this is a non-null one.
    pub fn int(&self) -> Option<i64> {
        self.nullable_int().flatten()
    }

    /// The integer or timestamp, or `Some(None)` for a null one.
    pub fn nullable_int(&self) -> Option<Option<i64>> {
        if let Value::Int(value) = self { Some(*value) } else { None }
    }

    /// The nullable string.
    pub fn nullable_str(&self) -> Option<Option<&str>> {
        if let Value::Str(value) = self { Some(value.as_deref()) } else { None }
    }

    /// The float, if this is a non-null float.
    pub fn float(&self) -> Option<f32> {
        if let Value::Float(value) = self { *value } else { None }
    }
}

/// A view with a Parquet changelog: the columns of its records (a public
/// interface, documented in the README), how a record fills them, and how
/// a row is read back into a record.
pub trait ChangeRow: View {
    /// The record's columns (the changelog adds `time` and `diff`).
    fn columns() -> Vec<Field>;
    /// The record's values, one per column.
    fn cells<'a>(record: &'a Self::Record, out: &mut Vec<Cell<'a>>);
    /// The record a row of [`ChangeRow::columns`] holds; `None` if the
    /// values do not make one.
    fn decode(row: &[Value]) -> Option<Self::Record>;
}

/// The changelog's full schema: the row's columns, then `time` and `diff`.
pub fn changelog_schema<R: ChangeRow>() -> SchemaRef {
    let mut fields = R::columns();
    fields.extend(schema::change_columns());
    Arc::new(Schema::new(fields))
}

/// The records of a view's rows (columns from [`ChangeRow::columns`],
/// in that order; any columns after them, such as `time` and `diff`, are
/// not read).
pub fn decode_rows<R: ChangeRow>(batch: &RecordBatch) -> Result<Vec<R::Record>, SinkError> {
    let width = R::columns().len();
    let arrow_error = |source| SinkError::Arrow { table: R::NAME.into(), source };
    if batch.num_columns() < width {
        return Err(arrow_error(ArrowError::SchemaError(format!(
            "{} columns, the view has {width}",
            batch.num_columns()
        ))));
    }
    let columns: Vec<Vec<Value>> = batch.columns()[..width]
        .iter()
        .map(|column| values(column.as_ref()))
        .collect::<Result<_, _>>()
        .map_err(arrow_error)?;
    (0..batch.num_rows())
        .map(|row| {
            let values: Vec<Value> = columns.iter().map(|column| column[row].clone()).collect();
            R::decode(&values).ok_or_else(|| {
                arrow_error(ArrowError::ParseError(format!("row {row} is not a record of the view: {values:?}")))
            })
        })
        .collect()
}

/// Every value of one column.
fn values(column: &dyn Array) -> Result<Vec<Value>, ArrowError> {
    fn typed<A: 'static>(column: &dyn Array) -> Result<&A, ArrowError> {
        column.as_any().downcast_ref::<A>().ok_or_else(|| ArrowError::CastError("a column of another type".into()))
    }
    let valid = |row: usize| column.is_valid(row);
    let rows = 0..column.len();
    Ok(match column.data_type() {
        DataType::Utf8 => {
            let array = typed::<StringArray>(column)?;
            rows.map(|row| Value::Str(valid(row).then(|| array.value(row).to_owned()))).collect()
        }
        DataType::Int64 => {
            let array = typed::<Int64Array>(column)?;
            rows.map(|row| Value::Int(valid(row).then(|| array.value(row)))).collect()
        }
        DataType::Float32 => {
            let array = typed::<Float32Array>(column)?;
            rows.map(|row| Value::Float(valid(row).then(|| array.value(row)))).collect()
        }
        DataType::Boolean => {
            let array = typed::<BooleanArray>(column)?;
            rows.map(|row| Value::Bool(valid(row).then(|| array.value(row)))).collect()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let array = typed::<TimestampMicrosecondArray>(column)?;
            rows.map(|row| Value::Int(valid(row).then(|| array.value(row)))).collect()
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let array = typed::<TimestampMillisecondArray>(column)?;
            rows.map(|row| Value::Int(valid(row).then(|| array.value(row)))).collect()
        }
        other => return Err(ArrowError::SchemaError(format!("column type {other} is not supported"))),
    })
}

/// Builds one column from the cells at `index` of every row.
fn column(field: &Field, rows: &[Vec<Cell<'_>>], index: usize) -> Result<ArrayRef, ArrowError> {
    let mismatch = || ArrowError::SchemaError(format!("a value of column {} does not fit its type", field.name()));
    let ints = || -> Result<Vec<Option<i64>>, ArrowError> {
        rows.iter().map(|row| if let Cell::Int(v) = row[index] { Ok(v) } else { Err(mismatch()) }).collect()
    };
    Ok(match field.data_type() {
        DataType::Utf8 => Arc::new(
            rows.iter()
                .map(|row| if let Cell::Str(v) = row[index] { Ok(v) } else { Err(mismatch()) })
                .collect::<Result<StringArray, _>>()?,
        ),
        DataType::Int64 => Arc::new(Int64Array::from(ints()?)),
        DataType::Float32 => Arc::new(
            rows.iter()
                .map(|row| if let Cell::Float(v) = row[index] { Ok(v) } else { Err(mismatch()) })
                .collect::<Result<Float32Array, _>>()?,
        ),
        DataType::Boolean => Arc::new(
            rows.iter()
                .map(|row| if let Cell::Bool(v) = row[index] { Ok(v) } else { Err(mismatch()) })
                .collect::<Result<BooleanArray, _>>()?,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            Arc::new(TimestampMicrosecondArray::from(ints()?).with_timezone_opt(zone.clone()))
        }
        DataType::Timestamp(TimeUnit::Millisecond, zone) => {
            Arc::new(TimestampMillisecondArray::from(ints()?).with_timezone_opt(zone.clone()))
        }
        other => return Err(ArrowError::SchemaError(format!("column type {other} is not supported"))),
    })
}

/// Changes as a batch of [`changelog_schema`].
pub fn changes_batch<R: ChangeRow>(
    schema: &SchemaRef,
    changes: &[(R::Record, u64, i64)],
) -> Result<RecordBatch, SinkError> {
    let rows: Vec<Vec<Cell<'_>>> = changes
        .iter()
        .map(|(record, time, diff)| {
            let mut cells = Vec::with_capacity(schema.fields().len());
            R::cells(record, &mut cells);
            cells.push(Cell::Int(Some(*time as i64)));
            cells.push(Cell::Int(Some(*diff)));
            cells
        })
        .collect();
    let arrow_error = |source| SinkError::Arrow { table: R::NAME.into(), source };
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| column(field, &rows, index))
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow_error)?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(arrow_error)
}

/// Sorts changes by time, then record, summing the diffs of equal pairs
/// and dropping those that sum to zero.
fn consolidate<R: Ord>(mut changes: Vec<(R, u64, i64)>) -> Vec<(R, u64, i64)> {
    changes.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut net: Vec<(R, u64, i64)> = Vec::with_capacity(changes.len());
    for (row, time, diff) in changes {
        match net.last_mut() {
            Some(last) if last.1 == time && last.0 == row => last.2 += diff,
            _ => {
                if net.last().is_some_and(|last| last.2 == 0) {
                    net.pop();
                }
                net.push((row, time, diff));
            }
        }
    }
    if net.last().is_some_and(|last| last.2 == 0) {
        net.pop();
    }
    net
}

/// The crash-safe changelog writer of one view.
///
/// Final changes are written into an open part file a batch at a time, so
/// a view's changelog holds at most a batch of changes in memory whatever
/// its rate; the part is committed, covering `covered..written`, when it
/// is big or old enough, or before a checkpoint.
pub struct Changelog<R: ChangeRow> {
    dir: PathBuf,
    schema: SchemaRef,
    config: ParquetConfig,
    /// Every change before this time is in a committed file.
    covered: u64,
    /// Every change before this time is in a file, committed or open.
    written: u64,
    /// Changes before this time came back from a checkpoint; a replay's
    /// copies of them are dropped.
    restored: u64,
    /// Changes not yet in a file, final or not.
    buffer: Vec<(R::Record, u64, i64)>,
    /// The part holding `covered..written`, if that range has changes.
    open: Option<OpenPart>,
    /// When the oldest change not in a committed file arrived.
    oldest: Option<Instant>,
}

/// Final changes are written to the open part once this many are buffered.
const BATCH_ROWS: usize = 16 * 1024;

/// A changelog buffering more changes than this is written out before a
/// checkpoint rather than copied into it.
const CHECKPOINT_ROWS: usize = 50_000;

impl<R: ChangeRow> Changelog<R> {
    /// Opens the changelog of `R::NAME` under the data directory `root`.
    pub fn open(root: &Path, config: ParquetConfig) -> Result<Self, SinkError> {
        let dir = root.join("views").join(R::NAME);
        super::remove_leftovers(&dir)?;
        let covered = list_parts(&dir)?.into_iter().map(|(_, _, to)| to).max().unwrap_or(0);
        Ok(Changelog {
            dir,
            schema: changelog_schema::<R>(),
            config,
            covered,
            written: covered,
            restored: 0,
            buffer: Vec::new(),
            open: None,
            oldest: None,
        })
    }

    /// Every change before this logical time is already in a file.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Buffers a change; one that is already in a file is dropped.
    pub fn push(&mut self, row: R::Record, time: u64, diff: i64) {
        if time >= self.written.max(self.restored) {
            self.oldest.get_or_insert_with(Instant::now);
            self.buffer.push((row, time, diff));
        }
    }

    /// The buffered changes before `frontier`, for a checkpoint. If many
    /// changes are buffered, or some are in an open part, every change
    /// before `frontier` is committed to a file first and none are
    /// returned.
    pub fn checkpoint(&mut self, frontier: u64) -> Result<Vec<(R::Record, u64, i64)>, SinkError> {
        if self.open.is_some() || self.buffer.len() > CHECKPOINT_ROWS {
            self.advance(frontier, true)?;
        }
        Ok(self.buffer.iter().filter(|(_, time, _)| *time < frontier).cloned().collect())
    }

    /// Takes back the changes of a checkpoint taken at `frontier`; those
    /// already in files are dropped.
    pub fn restore(&mut self, changes: Vec<(R::Record, u64, i64)>, frontier: u64) {
        self.restored = frontier;
        self.buffer.retain(|(_, time, _)| *time >= frontier);
        self.buffer.extend(changes.into_iter().filter(|(_, time, _)| *time >= self.written));
        if !self.buffer.is_empty() {
            self.oldest = Some(Instant::now());
        }
    }

    /// Called when the view's frontier reaches `frontier`: every change
    /// before it is final. Writes them into the open part once a batch
    /// has gathered, and commits the part when it is due (or `force`).
    /// Returns whether a file was committed.
    pub fn advance(&mut self, frontier: u64, force: bool) -> Result<bool, SinkError> {
        let due = force
            || self.open.as_ref().is_some_and(|part| part.bytes() >= self.config.roll_bytes)
            || self.oldest.is_some_and(|t| t.elapsed() >= self.config.roll_age);
        if frontier > self.written && (due || self.buffer.len() >= BATCH_ROWS) {
            self.write_final(frontier)?;
        }
        if !due || self.written == self.covered {
            return Ok(false);
        }
        let committed = match self.open.take() {
            Some(part) => part.commit(&part_name(self.covered, self.written))?,
            None => false,
        };
        self.covered = self.written;
        self.oldest = if self.buffer.is_empty() { None } else { Some(Instant::now()) };
        Ok(committed)
    }

    /// Writes every buffered change before `frontier` into the open part.
    fn write_final(&mut self, frontier: u64) -> Result<(), SinkError> {
        // Usually every buffered change is final: then the buffer is taken
        // whole rather than copied change by change into two new ones.
        let mut ready = std::mem::take(&mut self.buffer);
        if ready.iter().any(|(_, time, _)| *time >= frontier) {
            let later;
            (ready, later) = ready.into_iter().partition(|(_, time, _)| *time < frontier);
            self.buffer = later;
        }
        // Workers may split one change into parts that cancel; the file
        // holds the net change of each record at each time.
        let ready = consolidate(ready);
        if !ready.is_empty() {
            let batch = changes_batch::<R>(&self.schema, &ready)?;
            drop(ready);
            let part = match &mut self.open {
                Some(part) => part,
                open => open.insert(OpenPart::create(&self.dir, Arc::clone(&self.schema), &self.config)?),
            };
            part.write(&batch)?;
        }
        self.written = frontier;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use coldstream_pipelines::views::Inventory;

    use super::*;

    type Shelf = ((String, String), i64);

    /// Every change in the changelog's files, with its time and diff.
    fn written(root: &Path) -> Vec<(Shelf, i64, i64)> {
        let mut all = Vec::new();
        for (path, _, _) in list_parts(&root.join("views").join("inventory")).expect("lists") {
            let file = std::fs::File::open(&path).expect("opens");
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|builder| builder.build())
                .expect("reads");
            for batch in reader {
                let batch = batch.expect("a batch");
                let records = decode_rows::<Inventory>(&batch).expect("decodes");
                let (times, diffs) = (batch.column(3), batch.column(4));
                let times = times.as_any().downcast_ref::<TimestampMillisecondArray>().expect("times");
                let diffs = diffs.as_any().downcast_ref::<Int64Array>().expect("diffs");
                for (row, record) in records.into_iter().enumerate() {
                    all.push((record, times.value(row), diffs.value(row)));
                }
            }
        }
        all.sort_by_key(|(record, time, _)| (*time, record.clone()));
        all
    }

    fn change(time: u64, on_hand: i64) -> (Shelf, u64, i64) {
        ((("FR-1".to_owned(), "cola".to_owned()), on_hand), time, 1)
    }

    #[test]
    fn a_reopened_changelog_resumes_after_its_files_and_drops_what_a_replay_repeats() {
        let dir = tempfile::tempdir().expect("temp dir");
        let changes: Vec<_> = (1..=5).map(|t| change(t, t as i64)).collect();
        {
            let mut log = Changelog::<Inventory>::open(dir.path(), ParquetConfig::default()).expect("opens");
            for (record, time, diff) in changes.clone() {
                log.push(record, time, diff);
            }
            assert!(log.advance(3, true).expect("writes"), "times 1 and 2 are final and written");
            // A crash: times 3 to 5 were only buffered.
        }
        let mut log = Changelog::<Inventory>::open(dir.path(), ParquetConfig::default()).expect("reopens");
        assert_eq!(log.covered(), 3, "the files say where the view resumes");
        // The replay of the log gives every change again.
        for (record, time, diff) in changes {
            log.push(record, time, diff);
        }
        assert!(log.advance(6, true).expect("writes"));
        let expected: Vec<_> = (1..=5).map(|t| change(t, t as i64)).map(|(r, t, d)| (r, t as i64, d)).collect();
        assert_eq!(written(dir.path()), expected, "every change once, none lost");
    }

    #[test]
    fn changes_at_or_after_the_frontier_wait_for_it_and_are_written_once_it_passes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Changelog::<Inventory>::open(dir.path(), ParquetConfig::default()).expect("opens");
        for (record, time, diff) in [change(4, 4), change(1, 1), change(5, 5), change(2, 2), change(3, 3)] {
            log.push(record, time, diff);
        }
        assert!(log.advance(3, true).expect("writes"));
        let first: Vec<_> = [1, 2].map(|t| change(t, t as i64)).map(|(r, t, d)| (r, t as i64, d)).into();
        assert_eq!(written(dir.path()), first, "only the changes before the frontier");
        assert_eq!(log.buffer.len(), 3, "the later ones wait");
        assert!(log.advance(6, true).expect("writes"));
        let all: Vec<_> = (1..=5).map(|t| change(t, t as i64)).map(|(r, t, d)| (r, t as i64, d)).collect();
        assert_eq!(written(dir.path()), all, "every change once");
    }

    #[test]
    fn changes_that_cancel_within_a_time_are_not_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Changelog::<Inventory>::open(dir.path(), ParquetConfig::default()).expect("opens");
        let (record, time, _) = change(1, 7);
        log.push(record.clone(), time, 1);
        log.push(record, time, -1);
        let (other, time, diff) = change(2, 8);
        log.push(other, time, diff);
        log.advance(3, true).expect("writes");
        assert_eq!(written(dir.path()), [(change(2, 8).0, 2, 1)]);
    }

    /// The changelog's open parts.
    fn open_parts(root: &Path) -> usize {
        super::super::temporary_files(&root.join("views").join("inventory"))
    }

    #[test]
    fn final_changes_go_to_an_open_part_a_batch_at_a_time_and_a_crash_loses_none_of_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rows = 2 * BATCH_ROWS as u64;
        let config = ParquetConfig { roll_age: std::time::Duration::from_secs(3600), ..ParquetConfig::default() };
        {
            let mut log = Changelog::<Inventory>::open(dir.path(), config.clone()).expect("opens");
            for t in 1..=rows {
                let (record, time, diff) = change(t, t as i64);
                log.push(record, time, diff);
                assert!(!log.advance(t + 1, false).expect("advances"), "nothing is due yet");
            }
            assert!(log.buffer.len() < BATCH_ROWS, "{} changes held in memory", log.buffer.len());
            assert_eq!(open_parts(dir.path()), 1, "the final changes are in an open part");
            assert_eq!(log.covered(), 0, "and none is committed");
            // A crash: the open part is not a file of the changelog.
        }
        let mut log = Changelog::<Inventory>::open(dir.path(), config).expect("reopens");
        assert_eq!((log.covered(), open_parts(dir.path())), (0, 0), "the crash's open part is gone");
        for t in 1..=rows {
            let (record, time, diff) = change(t, t as i64);
            log.push(record, time, diff);
        }
        assert!(log.advance(rows + 1, true).expect("writes"));
        let expected: Vec<_> = (1..=rows).map(|t| change(t, t as i64)).map(|(r, t, d)| (r, t as i64, d)).collect();
        assert_eq!(written(dir.path()), expected, "every change once, none lost");
    }

    #[test]
    fn an_open_part_is_committed_when_it_is_old_enough_though_the_frontier_stands_still() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ParquetConfig { roll_age: std::time::Duration::from_millis(50), ..ParquetConfig::default() };
        let mut log = Changelog::<Inventory>::open(dir.path(), config).expect("opens");
        for t in 1..=BATCH_ROWS as u64 {
            let (record, time, diff) = change(t, t as i64);
            log.push(record, time, diff);
        }
        let frontier = BATCH_ROWS as u64 + 1;
        log.advance(frontier, false).expect("advances");
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(log.advance(frontier, false).expect("commits"), "the same frontier again commits the old part");
        assert_eq!(log.covered(), frontier);
        assert_eq!(written(dir.path()).len(), BATCH_ROWS);
        assert_eq!(open_parts(dir.path()), 0);
    }

    #[test]
    fn a_checkpoint_commits_the_open_part_and_holds_only_what_is_not_in_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = Changelog::<Inventory>::open(dir.path(), ParquetConfig::default()).expect("opens");
        for t in 1..=BATCH_ROWS as u64 + 10 {
            let (record, time, diff) = change(t, t as i64);
            log.push(record, time, diff);
        }
        log.advance(BATCH_ROWS as u64, false).expect("advances");
        assert_eq!(open_parts(dir.path()), 1);
        let held = log.checkpoint(BATCH_ROWS as u64 + 5).expect("checkpoints");
        assert!(held.is_empty(), "every change before the checkpoint is in a committed file");
        assert_eq!(log.covered(), BATCH_ROWS as u64 + 5);
        assert_eq!(written(dir.path()).len(), BATCH_ROWS + 4);
    }
}
