//! The Parquet sink: the public, analyst-facing record of what happened.
//!
//! Files are ZSTD-compressed and appear atomically: each is written under a
//! hidden temporary name, fsynced, renamed into place, and the folder is
//! fsynced, so a reader never sees half a file. Each file's name records
//! what it covers — a range of log offsets for `events/` and `rejected/`, a
//! range of logical times for `views/` — and that is how a restart knows
//! where to resume: it neither loses nor repeats rows.

pub mod archive;
pub mod changelog;
pub mod schema;
pub mod views;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub use archive::{EventArchive, RejectedRow};
pub use changelog::{Cell, ChangeRow, Changelog, Value, changelog_schema, decode_rows};
pub use views::{ViewChangelogs, view_tables};

/// Settings of the Parquet sink.
#[derive(Clone, Debug)]
pub struct ParquetConfig {
    /// A file is closed once it holds about this many bytes (encoded and
    /// compressed: rows are written into it as they come, not held in
    /// memory until it closes).
    pub roll_bytes: usize,
    /// A file is closed once its oldest row has waited this long.
    pub roll_age: Duration,
    /// ZSTD compression level (1 to 22).
    pub zstd_level: i32,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig { roll_bytes: 64 << 20, roll_age: Duration::from_secs(30), zstd_level: 3 }
    }
}

/// What can go wrong writing Parquet.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding Parquet failed.
    #[error("writing {file}: {source}")]
    Parquet {
        /// The file.
        file: String,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building a record batch failed.
    #[error("building rows for {table}: {source}")]
    Arrow {
        /// The table.
        table: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The configuration is not usable.
    #[error("parquet settings: {0}")]
    Config(String),
    /// A checkpoint's part for this sink is unusable.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The webhook outbox failed.
    #[error("{0}")]
    Outbox(#[from] crate::webhooks::OutboxError),
}

impl SinkError {
    /// Whether trying again later may succeed (a full disk may be freed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Io { .. } | SinkError::Outbox(_))
    }

    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io { context: context.into(), source }
    }
}

/// `part-<from>-<to>.parquet`: the name of a file covering `from..to`.
pub fn part_name(from: u64, to: u64) -> String {
    format!("part-{from:020}-{to:020}.parquet")
}

/// The range a part file covers, from its name.
pub fn parse_part_name(name: &str) -> Option<(u64, u64)> {
    let range = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (from, to) = range.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// The folders part files may be in: `dir` and its partition folders.
fn part_folders(dir: &Path) -> Result<Vec<PathBuf>, SinkError> {
    let mut folders = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).map_err(|e| SinkError::io(format!("listing {}", dir.display()), e))? {
        let entry = entry.map_err(|e| SinkError::io(format!("listing {}", dir.display()), e))?;
        if entry.path().is_dir() {
            folders.push(entry.path());
        }
    }
    Ok(folders)
}

/// The names of the files in `folder`, with their paths.
fn files_in(folder: &Path) -> Result<Vec<(String, PathBuf)>, SinkError> {
    let listing = |e| SinkError::io(format!("listing {}", folder.display()), e);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        files.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
    }
    Ok(files)
}

/// Every part file below `dir` (one level of partition folders deep), with
/// its range. Only reads: a reader (an analyst's query) may list while the
/// server writes, and a temporary file is a write in progress.
pub fn list_parts(dir: &Path) -> Result<Vec<(PathBuf, u64, u64)>, SinkError> {
    let mut parts = Vec::new();
    if !dir.exists() {
        return Ok(parts);
    }
    for folder in part_folders(dir)? {
        for (name, path) in files_in(&folder)? {
            if let Some((from, to)) = parse_part_name(&name) {
                parts.push((path, from, to));
            }
        }
    }
    Ok(parts)
}

/// Removes the temporary files a crash left below `dir`: for the writer of
/// `dir` alone, when it opens (the server holds the data directory's lock).
pub fn remove_leftovers(dir: &Path) -> Result<(), SinkError> {
    if !dir.exists() {
        return Ok(());
    }
    for folder in part_folders(dir)? {
        for (name, path) in files_in(&folder)? {
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(|e| SinkError::io(format!("removing {}", path.display()), e))?;
            }
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| SinkError::io(format!("fsync of {}", dir.display()), e))
}

/// Rows in one row group of a part file. The writer holds a row group's
/// encoded, compressed pages in memory until it is complete, so this
/// bounds what a part costs in memory while it is written, whatever the
/// file's size.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// A part file being written: rows are encoded and compressed into a
/// hidden temporary file as they come, and the file appears under its name
/// only when [`OpenPart::commit`] has fsynced it. A part dropped without a
/// commit removes its temporary file; one a crash left is removed by
/// [`remove_leftovers`] when its writer opens again.
pub struct OpenPart {
    dir: PathBuf,
    temporary: PathBuf,
    /// `None` once committed.
    writer: Option<ArrowWriter<File>>,
}

impl OpenPart {
    /// Starts a part of `schema` in `dir`.
    pub fn create(dir: &Path, schema: SchemaRef, config: &ParquetConfig) -> Result<Self, SinkError> {
        static OPENED: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir).map_err(|e| SinkError::io(format!("creating {}", dir.display()), e))?;
        let temporary =
            dir.join(format!(".open-{}-{}.tmp", std::process::id(), OPENED.fetch_add(1, Ordering::Relaxed)));
        let file =
            File::create(&temporary).map_err(|e| SinkError::io(format!("creating {}", temporary.display()), e))?;
        let level = ZstdLevel::try_new(config.zstd_level).map_err(|e| SinkError::Config(e.to_string()))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(properties))
            .map_err(|source| SinkError::Parquet { file: temporary.display().to_string(), source })?;
        Ok(OpenPart { dir: dir.to_path_buf(), temporary, writer: Some(writer) })
    }

    fn parquet_error(&self, source: parquet::errors::ParquetError) -> SinkError {
        SinkError::Parquet { file: self.temporary.display().to_string(), source }
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        let written = writer.write(batch);
        written.map_err(|e| self.parquet_error(e))
    }

    /// About how many bytes the file will hold: those written, and those
    /// encoded in memory for the row group in progress.
    pub fn bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, |writer| writer.bytes_written() + writer.in_progress_size())
    }

    /// Closes the file, fsyncs it and renames it to `name` in its folder.
    /// Returns false, leaving nothing behind, if a file of that name is
    /// already there (committed before a crash, from the same log range,
    /// so with the same rows).
    pub fn commit(mut self, name: &str) -> Result<bool, SinkError> {
        let path = self.dir.join(name);
        if path.exists() {
            return Ok(false); // dropping `self` removes the temporary file
        }
        let Some(writer) = self.writer.take() else { return Ok(false) };
        let file = writer.into_inner().map_err(|e| self.parquet_error(e))?;
        file.sync_all().map_err(|e| SinkError::io(format!("fsync of {}", self.temporary.display()), e))?;
        drop(file);
        std::fs::rename(&self.temporary, &path)
            .map_err(|e| SinkError::io(format!("renaming to {}", path.display()), e))?;
        fsync_dir(&self.dir)?;
        Ok(true)
    }
}

impl Drop for OpenPart {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `batch` to `dir/name` atomically. Returns false, writing nothing,
/// if the file already exists (it was committed before a crash and its
/// content is the same, since it is derived from the same log range).
pub fn write_part(dir: &Path, name: &str, batch: &RecordBatch, config: &ParquetConfig) -> Result<bool, SinkError> {
    if dir.join(name).exists() {
        return Ok(false);
    }
    let mut part = OpenPart::create(dir, batch.schema(), config)?;
    part.write(batch)?;
    part.commit(name)
}

/// The temporary files below `dir` (one level of partition folders deep):
/// parts being written.
#[cfg(test)]
fn temporary_files(dir: &Path) -> usize {
    part_folders(dir)
        .expect("lists")
        .iter()
        .flat_map(|folder| files_in(folder).expect("lists"))
        .filter(|(name, _)| name.ends_with(".tmp"))
        .count()
}

/// An empty batch of `schema`, for tables with no rows yet.
pub fn empty(schema: &SchemaRef) -> RecordBatch {
    RecordBatch::new_empty(Arc::clone(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An analyst's query lists parts while the server writes one: the
    /// listing must leave the write in progress alone.
    #[test]
    fn listing_parts_leaves_a_write_in_progress_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let day = dir.path().join("dt=2026-03-01");
        std::fs::create_dir_all(&day).expect("creates");
        let writing = day.join(format!(".{}.tmp", part_name(0, 5)));
        std::fs::write(&writing, b"half a file").expect("writes");
        std::fs::write(day.join(part_name(5, 9)), b"a part").expect("writes");
        let parts = list_parts(dir.path()).expect("lists");
        assert_eq!(parts.iter().map(|(_, from, to)| (*from, *to)).collect::<Vec<_>>(), [(5, 9)]);
        assert!(writing.exists(), "a listing removed the writer's temporary file");
        remove_leftovers(dir.path()).expect("removes");
        assert!(!writing.exists(), "the writer, at open, removes what a crash left");
        assert_eq!(list_parts(dir.path()).expect("lists").len(), 1);
    }

    #[test]
    fn part_names_round_trip_and_sort_by_range() {
        assert_eq!(parse_part_name(&part_name(7, 42)), Some((7, 42)));
        assert!(part_name(9, 10) < part_name(10, 11));
        assert_eq!(parse_part_name(".part-1-2.parquet.tmp"), None);
    }
}
