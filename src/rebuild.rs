//! `coldstream rebuild`: recomputes every view from the Parquet archive
//! alone, for when the checkpoints are lost or the view definitions or
//! settings change.
//!
//! The archive (`events/`, `rejected/`) holds every log record with its
//! ingest time, in ranges of log offsets. [`ArchiveLog`] serves it as a
//! read-only log, so the rebuild runs the very dataflow the server runs,
//! at the same logical times: the changes, the order ids and the webhook
//! ids come out as they did live. The old `views/` is moved to
//! `views.before-rebuild/`, new changelogs are written, webhook messages
//! newer than the outbox's covered time are queued for the next start,
//! and a checkpoint at the archive's end lets `coldstream run` go on from
//! the log after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use coldstream_pipelines::{Event, Time};
use coldstream_sinks::parquet::archive::{ArchivedRanges, read_events};
use coldstream_sinks::parquet::{ViewChangelogs, list_parts};
use coldstream_sinks::webhooks::Webhooks;
use coldstream_sources::ingest::SeqSnapshot;
use coldstream_sources::log::LogError;
use coldstream_sources::log::archive::{ArchiveLog, ArchiveStore, ArchivedRange, RangeContents};

use crate::checkpoint::{CheckpointStore, ViewsFingerprint};
use crate::config::Config;
use crate::pipeline::{CheckpointPolicy, Pipeline, PipelineSpec, ResumePoint};
use crate::server::{DataDirLock, Progress, ServerError};
use crate::view_sink::ViewSinks;

/// The Parquet archive of a data directory (`events/`, `rejected/`), as
/// ranges of log offsets for an [`ArchiveLog`].
pub struct ParquetArchive {
    ranges: Vec<ArchivedRange>,
    files: Vec<(Vec<PathBuf>, usize)>,
}

impl ParquetArchive {
    /// Lists the archive under the data directory `root`; it must run from
    /// offset 0 without a gap.
    pub fn list(root: &Path) -> Result<ParquetArchive, ServerError> {
        let archived = ArchivedRanges::list(root)?;
        archived.check_contiguous()?;
        let (ranges, files) =
            archived.ranges.into_iter().map(|((from, to), files)| (ArchivedRange { from, to }, files)).unzip();
        Ok(ParquetArchive { ranges, files })
    }
}

impl ArchiveStore for ParquetArchive {
    fn ranges(&self) -> &[ArchivedRange] {
        &self.ranges
    }

    fn load(&self, index: usize) -> Result<RangeContents, LogError> {
        let (files, rejected) = &self.files[index];
        let mut events = Vec::new();
        for file in files {
            events.extend(read_events(file).map_err(|e| LogError::Corrupt {
                file: file.display().to_string(),
                position: 0,
                reason: e.to_string(),
            })?);
        }
        Ok(RangeContents { events, rejected: *rejected })
    }
}

/// The position of every source in the archive, covering the log up to `offset`.
fn archived_seqs(root: &Path, offset: u64) -> Result<SeqSnapshot, ServerError> {
    let mut seqs = SeqSnapshot { offset, ..SeqSnapshot::default() };
    for (path, _, _) in list_parts(&root.join("events"))? {
        for (_, event) in read_events(&path)? {
            seqs.observe(&event);
        }
    }
    Ok(seqs)
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    /// Log records replayed from the archive.
    pub records: u64,
    /// The checkpoint's logical time.
    pub time: Time,
    /// Where the log resumes.
    pub offset: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Recomputes every view of `config.data_dir` from its archive.
pub async fn rebuild(config: &Config) -> Result<Rebuilt, ServerError> {
    let started = Instant::now();
    let root = config.data_dir.clone();
    let _lock = DataDirLock::take(&root)?;
    let log = ArchiveLog::open(ParquetArchive::list(&root)?)?;
    if log.end() == 0 {
        return Err(ServerError::Inconsistent(format!(
            "{} holds no archived events (events/ is empty or missing); nothing to rebuild from",
            root.display()
        )));
    }
    let views_dir = root.join("views");
    if views_dir.exists() {
        let aside = root.join("views.before-rebuild");
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| io(format!("removing {}", aside.display()), e))?;
        }
        std::fs::rename(&views_dir, &aside).map_err(|e| io(format!("moving {} aside", views_dir.display()), e))?;
    }
    let store = CheckpointStore::open(&root, config.checkpoint.keep)?;
    let checkpoints_dir = store.dir().to_path_buf();
    std::fs::remove_dir_all(&checkpoints_dir).map_err(|e| io(format!("removing {}", checkpoints_dir.display()), e))?;
    let store = CheckpointStore::open(&root, config.checkpoint.keep)?;

    let parquet = config.parquet();
    let changelogs = ViewChangelogs::open(&root, parquet.clone())?;
    let (webhooks, dispatchers) =
        Webhooks::start(&root, &config.webhooks()?, parquet, Arc::new(AtomicBool::new(false)))?;
    // The server delivers what the rebuild queues, at its next start.
    for dispatcher in dispatchers {
        dispatcher.abort();
    }
    webhooks.stopping().store(true, std::sync::atomic::Ordering::Release);

    let seqs = archived_seqs(&root, log.end())?;
    let views = config.views()?;
    let fingerprint = ViewsFingerprint::of(&views);
    let pipeline = Pipeline::start(PipelineSpec {
        log: Arc::new(log.clone()),
        resume: ResumePoint { fingerprint: fingerprint.clone(), checkpoint: None },
        views,
        workers: config.worker_threads(),
        cluster: Default::default(),
        sinks: ViewSinks::new(vec![Box::new(webhooks), Box::new(changelogs)]),
        // One checkpoint, at the end.
        checkpoints: CheckpointPolicy {
            store,
            every_ms: u64::MAX,
            every_records: u64::MAX,
            seqs: Box::new(move || seqs.clone()),
            retention_ms: None,
        },
        progress: Arc::new(Progress::default()),
        failures: Default::default(),
    })?;
    tokio::task::spawn_blocking(move || pipeline.stop())
        .await
        .map_err(|e| ServerError::Inconsistent(format!("the rebuild's workers failed: {e}")))??;
    let written = store_newest(&root, config, &fingerprint)?;
    let (time, offset) = written.ok_or_else(|| {
        ServerError::Inconsistent("the rebuild finished but wrote no checkpoint; run it again".into())
    })?;
    Ok(Rebuilt { records: log.end(), time, offset, elapsed: started.elapsed() })
}

/// The newest checkpoint's time and log offset.
fn store_newest(
    root: &Path,
    config: &Config,
    fingerprint: &ViewsFingerprint,
) -> Result<Option<(Time, u64)>, ServerError> {
    let store = CheckpointStore::open(root, config.checkpoint.keep)?;
    Ok(store.load(fingerprint, &mut Vec::new())?.map(|(_, c)| (c.dataflow.time, c.offset)))
}

fn io(context: String, source: std::io::Error) -> ServerError {
    ServerError::Inconsistent(format!("{context}: {source}"))
}

/// Every archived event with its ingest time, in ingest order: what the
/// batch references are computed from.
pub fn archived_events(root: &Path) -> Result<Vec<(u64, Event)>, ServerError> {
    let mut all = Vec::new();
    for (path, _, _) in list_parts(&root.join("events"))? {
        all.extend(read_events(&path)?);
    }
    all.sort_by_key(|(ingest_ms, _)| *ingest_ms);
    Ok(all)
}

/// Counts every archived event by `(source_id, seq)`.
pub fn archived_counts(events: &[(u64, Event)]) -> BTreeMap<(String, u64), usize> {
    let mut counts = BTreeMap::new();
    for (_, event) in events {
        *counts.entry((event.source_id.clone(), event.seq)).or_insert(0) += 1;
    }
    counts
}
